//! The origin most tests forward to: an actix-web application that counts requests, with
//! endpoints for echoing, streaming, failing and sleeping, and a switchable health endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{spawn, Serve, Spawned};
use crate::helpers::DEADLINE;

/// Size of each piece `/bytes/N` streams.
const CHUNK: u64 = 64 * 1024;

/// A real origin server (actix-web) that counts requests and offers test endpoints:
/// - `/name` says the origin's name;
/// - `/echo` answers JSON with method, target, headers and the body's size;
/// - `/bytes/N` streams N bytes (`?sized=1` with Content-Length, else chunked);
/// - `/status/N` answers status N with no body;
/// - `/sleep/MS` waits before answering;
/// - `/abort` promises 1 MiB and breaks off after 64 KiB;
/// - `/cookies` sets two cookies; `/gzip` returns a gzip-encoded body as is;
/// - `/health` and `/health/...` answer as [`HealthEndpoint`] says, and are not counted in
///   `hits`.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// What `/health` answers, switchable while the origin runs; what it was asked.
    pub health: Arc<HealthEndpoint>,
    _server: Spawned,
}

#[derive(Clone)]
struct OriginState {
    name: String,
    hits: Arc<AtomicUsize>,
    health: Arc<HealthEndpoint>,
}

impl Origin {
    /// An origin whose `/name` answers `name`.
    pub fn start(name: &str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(HealthEndpoint::default());
        let state = OriginState {
            name: name.to_string(),
            hits: hits.clone(),
            health: health.clone(),
        };
        let server = spawn(Serve::app(move |config| {
            config.app_data(web::Data::new(state.clone())).service(
                web::scope("")
                    .wrap_fn(|req, srv| {
                        if !req.path().starts_with("/health") {
                            let state = req.app_data::<web::Data<OriginState>>().unwrap();
                            state.hits.fetch_add(1, Ordering::SeqCst);
                        }
                        srv.call(req)
                    })
                    .route("/name", web::to(name_handler))
                    .route("/echo", web::to(echo_handler))
                    .route("/echo/{tail:.*}", web::to(echo_handler))
                    .route("/bytes/{n}", web::to(bytes))
                    .route("/status/{n}", web::to(status))
                    .route("/sleep/{ms}", web::to(sleep))
                    .route("/abort", web::to(abort))
                    .route("/cookies", web::to(cookies))
                    .route("/gzip", web::to(gzip))
                    .route("/health", web::to(health_handler))
                    .route("/health/{tail:.*}", web::to(health_handler))
                    .default_service(web::to(echo_handler)),
            );
        }));
        Self {
            addr: server.addr,
            hits,
            health,
            _server: server,
        }
    }

    /// Requests received, `/health` aside.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A health endpoint whose answer tests switch at runtime: a status, a body, extra headers,
/// or no answer at all (`hang`). It records each request it gets and each status it sends.
pub struct HealthEndpoint {
    status: AtomicU16,
    body: Mutex<String>,
    headers: Mutex<Vec<(String, String)>>,
    hang: AtomicBool,
    requests: Mutex<Vec<HealthRequest>>,
    answered: Mutex<Vec<u16>>,
}

/// One request the health endpoint received.
#[derive(Clone, Debug)]
pub struct HealthRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl HealthRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Default for HealthEndpoint {
    fn default() -> Self {
        Self {
            status: AtomicU16::new(200),
            body: Mutex::new("ok".into()),
            headers: Mutex::new(Vec::new()),
            hang: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            answered: Mutex::new(Vec::new()),
        }
    }
}

impl HealthEndpoint {
    /// Answers `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: &str) {
        self.status.store(status, Ordering::SeqCst);
        *self.body.lock().unwrap() = body.to_string();
    }

    /// Answers `status` from now on, with the body it had.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Adds a header to every answer from now on.
    pub fn add_header(&self, name: &str, value: &str) {
        self.headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// While on, requests get no answer (until the client gives up or the deadline).
    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn probes(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<HealthRequest> {
        self.requests.lock().unwrap().last().cloned()
    }

    /// Statuses sent so far, in order.
    pub fn answered(&self) -> Vec<u16> {
        self.answered.lock().unwrap().clone()
    }
}

fn headers_of(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn health_handler(req: HttpRequest, state: web::Data<OriginState>) -> HttpResponse {
    let health = &state.health;
    health.requests.lock().unwrap().push(HealthRequest {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: headers_of(&req),
    });
    let started = Instant::now();
    while health.hang.load(Ordering::SeqCst) && started.elapsed() < DEADLINE {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let status = health.status.load(Ordering::SeqCst);
    health.answered.lock().unwrap().push(status);
    let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap());
    for header in health.headers.lock().unwrap().iter() {
        response.append_header(header.clone());
    }
    response.body(health.body.lock().unwrap().clone())
}

async fn name_handler(state: web::Data<OriginState>) -> HttpResponse {
    HttpResponse::Ok().body(state.name.clone())
}

async fn echo_handler(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<OriginState>,
) -> HttpResponse {
    let mut received = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => received.extend_from_slice(&chunk),
            Err(_) => return HttpResponse::BadRequest().finish(),
        }
    }
    let reply = serde_json::json!({
        "origin": state.name,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers_of(&req),
        "body_len": received.len(),
        "body": String::from_utf8_lossy(&received[..received.len().min(4096)]),
    });
    HttpResponse::Ok().json(reply)
}

async fn bytes(req: HttpRequest, path: web::Path<u64>) -> HttpResponse {
    let total = path.into_inner();
    let sized = req.query_string().contains("sized=1");
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK);
            Some((Ok::<_, std::io::Error>(chunk.slice(..n as usize)), sent + n))
        }
    });
    if sized {
        HttpResponse::Ok().body(actix_web::body::SizedStream::new(total, stream))
    } else {
        HttpResponse::Ok().streaming(stream)
    }
}

async fn status(path: web::Path<u16>) -> HttpResponse {
    let status = StatusCode::from_u16(path.into_inner()).unwrap();
    HttpResponse::build(status)
        .insert_header(("etag", "\"v1\""))
        .finish()
}

async fn sleep(path: web::Path<u64>) -> HttpResponse {
    actix_rt::time::sleep(Duration::from_millis(path.into_inner())).await;
    HttpResponse::Ok().body("slept")
}

async fn abort() -> HttpResponse {
    let chunks = futures_util::stream::iter(0..2).then(|i| async move {
        if i == 0 {
            Ok(Bytes::from(vec![b'a'; 64 * 1024]))
        } else {
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("origin dies"))
        }
    });
    HttpResponse::Ok().body(actix_web::body::SizedStream::new(1024 * 1024, chunks))
}

async fn cookies() -> HttpResponse {
    HttpResponse::Ok()
        .append_header(("set-cookie", "a=1; Path=/"))
        .append_header(("set-cookie", "b=2; Path=/"))
        .body("cookies")
}

/// A gzip stream of "hello\n" (RFC 1952), sent as is with Content-Encoding.
pub const GZIP_HELLO: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7,
    0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
];

async fn gzip() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-encoding", "gzip"))
        .content_type("text/plain")
        .body(GZIP_HELLO)
}
