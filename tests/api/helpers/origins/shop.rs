//! A shop's application server that keeps baskets in its own memory, keyed by its own session
//! cookie, as many applications do: a request that reaches another server finds no basket.
//! And the shoppers that fill baskets through gatehouse, as browsers would.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};

use super::{spawn, Serve, Spawned};
use crate::helpers::{connect_from, Conn, Response};

/// One application server: `POST /basket/add?item=N` and `GET /basket`, a session cookie
/// `SID` set on the first request of a session it does not know.
pub struct Shop {
    pub addr: SocketAddr,
    baskets: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    /// The number of the next session it opens.
    next: Arc<AtomicUsize>,
    server: Spawned,
}

#[derive(Clone)]
struct ShopState {
    name: String,
    baskets: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    next: Arc<AtomicUsize>,
}

impl Shop {
    /// A shop called `name`, its baskets empty.
    pub fn start(name: &str) -> Self {
        let baskets: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
        let next: Arc<AtomicUsize> = Arc::default();
        let state = ShopState {
            name: name.to_string(),
            baskets: baskets.clone(),
            next: next.clone(),
        };
        let server = spawn(Serve::app(move |config| {
            config
                .app_data(web::Data::new(state.clone()))
                .route("/basket/add", web::post().to(add))
                .route("/basket", web::get().to(show));
        }));
        Self {
            addr: server.addr,
            baskets,
            next,
            server,
        }
    }

    /// Starts serving again on its address: a restarted process, its memory empty.
    pub fn open(&mut self) {
        self.baskets.lock().unwrap().clear();
        self.next.store(0, Ordering::SeqCst);
        self.server.reopen();
    }

    /// Stops the process: its address refuses connections.
    pub fn close(&mut self) {
        self.server.close();
    }
}

fn session(req: &HttpRequest, state: &ShopState) -> (String, bool) {
    let sid = req
        .headers()
        .get_all("cookie")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("SID="));
    if let Some(sid) = sid {
        if state.baskets.lock().unwrap().contains_key(sid) {
            return (sid.to_string(), false);
        }
    }
    let id = format!(
        "{}-{}",
        state.name,
        state.next.fetch_add(1, Ordering::SeqCst)
    );
    state.baskets.lock().unwrap().insert(id.clone(), Vec::new());
    (id, true)
}

fn reply(state: &ShopState, id: &str, new: bool) -> HttpResponse {
    let items = state.baskets.lock().unwrap()[id].clone();
    let mut response = HttpResponse::Ok();
    if new {
        response.insert_header(("set-cookie", format!("SID={id}; Path=/; HttpOnly")));
    }
    response.json(serde_json::json!({ "server": state.name, "items": items }))
}

async fn add(req: HttpRequest, state: web::Data<ShopState>) -> HttpResponse {
    let item: u32 = req
        .query_string()
        .strip_prefix("item=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (id, new) = session(&req, &state);
    state
        .baskets
        .lock()
        .unwrap()
        .get_mut(&id)
        .unwrap()
        .push(item);
    reply(&state, &id, new)
}

async fn show(req: HttpRequest, state: web::Data<ShopState>) -> HttpResponse {
    let (id, new) = session(&req, &state);
    reply(&state, &id, new)
}

/// A browser's view of one shopper: its cookies, its source address, its session header.
pub struct Shopper {
    pub cookies: HashMap<String, String>,
    /// The loopback address its connections come from.
    pub source: Option<std::net::IpAddr>,
    /// A header sent on every request (`header` mode).
    pub header: Option<(String, String)>,
    /// Every `Set-Cookie` it received, as sent.
    pub set_cookies: Vec<String>,
}

impl Shopper {
    /// A shopper with no cookies yet, connecting from 127.0.0.1.
    pub fn new() -> Self {
        Self {
            cookies: HashMap::new(),
            source: None,
            header: None,
            set_cookies: Vec::new(),
        }
    }

    fn connect(&self, proxy: SocketAddr) -> Conn {
        let stream = match self.source {
            None => TcpStream::connect(proxy).expect("connect"),
            Some(ip) => connect_from(ip, proxy),
        };
        Conn::from_stream(stream)
    }

    /// One request through gatehouse, cookies sent and kept as a browser would.
    pub fn request(&mut self, proxy: SocketAddr, method: &str, target: &str) -> Response {
        let mut conn = self.connect(proxy);
        let cookie = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
        if !cookie.is_empty() {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if let Some((name, value)) = &self.header {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        conn.send(head.as_bytes());
        let response = conn.read(false);
        for set in response.all("set-cookie") {
            self.set_cookies.push(set.to_string());
            let pair = set.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        response
    }

    /// Adds `item` to the basket; the answer's server and whether it succeeded.
    pub fn add(&mut self, proxy: SocketAddr, item: u32) -> (u16, String) {
        let response = self.request(proxy, "POST", &format!("/basket/add?item={item}"));
        let server = if response.status == 200 {
            response.json()["server"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        (response.status, server)
    }

    /// The items in the basket as the server that answers sees it.
    pub fn basket(&mut self, proxy: SocketAddr) -> Vec<u32> {
        let response = self.request(proxy, "GET", "/basket");
        assert_eq!(response.status, 200);
        response.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }
}
