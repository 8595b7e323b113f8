//! Test helpers: real origin servers and a real gatehouse on loopback ephemeral ports, and a
//! small raw HTTP/1.1 client that shows exactly what crossed the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use gatehouse::settings::{Settings, Sources};

/// Deadline for anything that could hang; never a measure of speed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gatehouse-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings from TOML text, through the same layering and validation as the binary
/// (no settings folder, no environment).
pub fn settings(toml: &str) -> Settings {
    let dir = TempDir::new();
    let file = dir.write("test.toml", toml);
    let sources = Sources {
        settings_dir: Some(dir.0.join("none")),
        config: Some(file),
        env: Some(test_env()),
    };
    match gatehouse::supervisor::load(&sources) {
        Ok(loaded) => loaded.settings,
        Err(err) => panic!("test settings invalid: {err}"),
    }
}

/// The environment every test gatehouse gets: its admin API on an ephemeral port.
fn test_env() -> HashMap<String, String> {
    HashMap::from([(
        "GATEHOUSE__ADMIN__LISTEN".to_string(),
        "127.0.0.1:0".to_string(),
    )])
}

/// Settings for one pool `web` of the given servers behind a listener on port 0.
pub fn one_pool(servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    pool_of(&servers, extra)
}

/// `toml` from [`one_pool`] or [`pool_of`] with more `[server]` keys, one per line.
pub fn with_server(toml: &str, keys: &str) -> String {
    toml.replacen("workers = 1\n", &format!("workers = 1\n{keys}\n"), 1)
}

/// [`one_pool`] for server addresses as settings write them (names allowed).
pub fn pool_of(servers: &[String], extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ address = \"{s}\" }}"))
        .collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[log]\naccess = \"off\"\n\
         [[routes]]\npool = \"web\"\n[pools.web]\nservers = [{}]\n{extra}",
        servers.join(", ")
    )
}

/// A gatehouse running in-process on its own actix system thread; stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Every client listener's address, in the order of `listen`.
    pub listeners: Vec<SocketAddr>,
    /// Every TLS listener's address, in the order of `tls.listen`.
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stopper: gatehouse::server::Stopper,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(settings: Settings) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let gatehouse = gatehouse::Gatehouse::start(settings)
                    .await
                    .expect("gatehouse starts");
                let addrs = (
                    gatehouse.listeners().to_vec(),
                    gatehouse.tls_listeners().to_vec(),
                    gatehouse.admin_address(),
                );
                tx.send((addrs, gatehouse.stopper())).unwrap();
                gatehouse.run_until_stopped().await.unwrap();
            })
        });
        let ((listeners, tls, admin), stopper) =
            rx.recv_timeout(DEADLINE).expect("gatehouse started");
        Self {
            addr: listeners[0],
            listeners,
            tls,
            admin,
            stopper,
            thread: Some(thread),
        }
    }

    pub fn from_toml(toml: &str) -> Self {
        Self::start(settings(toml))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopper.stop(false);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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
    pub hits: Arc<AtomicUsize>,
    /// What `/health` answers, switchable while the origin runs; what it was asked.
    pub health: Arc<HealthEndpoint>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct OriginState {
    name: String,
    hits: Arc<AtomicUsize>,
    health: Arc<HealthEndpoint>,
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

    pub fn last_request(&self) -> Option<HealthRequest> {
        self.requests.lock().unwrap().last().cloned()
    }

    /// Statuses sent so far, in order.
    pub fn answered(&self) -> Vec<u16> {
        self.answered.lock().unwrap().clone()
    }
}

impl Origin {
    pub fn start(name: &str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(HealthEndpoint::default());
        let state = OriginState {
            name: name.to_string(),
            hits: hits.clone(),
            health: health.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(state.clone()))
                        .wrap_fn(|req, srv| {
                            use actix_web::dev::Service;
                            let state = req.app_data::<web::Data<OriginState>>().unwrap().clone();
                            if !req.path().starts_with("/health") {
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
                        .default_service(web::to(echo_handler))
                })
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                server.await.unwrap();
            })
        });
        let (addr, handle) = rx.recv_timeout(DEADLINE).expect("origin started");
        Self {
            addr,
            hits,
            health,
            handle,
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let _ = thread::spawn(move || actix_rt::System::new().block_on(handle.stop(false))).join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn health_handler(req: HttpRequest, state: web::Data<OriginState>) -> HttpResponse {
    let health = &state.health;
    health.requests.lock().unwrap().push(HealthRequest {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let started = Instant::now();
    while health.hang.load(Ordering::SeqCst) && started.elapsed() < DEADLINE {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let status = health.status.load(Ordering::SeqCst);
    health.answered.lock().unwrap().push(status);
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
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
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let reply = serde_json::json!({
        "origin": state.name,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "body_len": received.len(),
        "body": String::from_utf8_lossy(&received[..received.len().min(4096)]),
    });
    HttpResponse::Ok().json(reply)
}

async fn bytes(req: HttpRequest, path: web::Path<u64>) -> HttpResponse {
    let total = path.into_inner();
    let sized = req.query_string().contains("sized=1");
    const CHUNK: u64 = 64 * 1024;
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
    let status = actix_web::http::StatusCode::from_u16(path.into_inner()).unwrap();
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

/// An origin that answers every request on a connection with the same raw bytes, for
/// responses a well-behaved server library would not send (hop-by-hop headers, bad framing).
pub struct RawOrigin {
    pub addr: SocketAddr,
    /// Every request head it received, as text.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    /// Answers every request on a connection with `response`.
    pub fn start(response: &'static [u8]) -> Self {
        Self::serve(response, false)
    }

    /// Answers the first request with `response`, then closes the connection.
    pub fn start_then_close(response: &'static [u8]) -> Self {
        Self::serve(response, true)
    }

    fn serve(response: &'static [u8], close: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(DEADLINE));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    while let Some(head) = read_head(&mut reader) {
                        seen.lock().unwrap().push(head);
                        if stream.write_all(response).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, requests }
    }
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
}

/// What the origin's `/echo` saw.
pub struct Echo(pub serde_json::Value);

impl Echo {
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

/// One keep-alive client connection speaking raw HTTP/1.1.
pub struct Conn {
    reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a connection opened elsewhere (from a chosen source address, say).
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write request");
    }

    /// Reads one response; `head_only` for responses to HEAD.
    pub fn read(&mut self, head_only: bool) -> Response {
        self.try_read(head_only).expect("read response")
    }

    pub fn try_read(&mut self, head_only: bool) -> std::io::Result<Response> {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        parsed.parse(&head).expect("valid response head");
        let status = parsed.code.unwrap();
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 100 {
            return Ok(response);
        }
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        if let Some(length) = response.header("content-length") {
            let mut body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut body)?;
            response.body = body;
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            response.body = self.read_chunked()?;
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk)?;
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    /// Reads until the peer closes; true if it closed (rather than timing out).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// A connection to `addr` from the local address `source` (port chosen by the kernel), for
/// tests of per-client rules on loopback: every 127.0.0.0/8 address is the machine's own.
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|err| panic!("bind {source}: {err}"));
    socket
        .connect_timeout(&addr.into(), DEADLINE)
        .unwrap_or_else(|err| panic!("connect {source} -> {addr}: {err}"));
    socket.into()
}

/// Whether the server closed `stream` without sending a byte: end of file or a reset. A
/// response, if there is one, is left unread. Fails the test if nothing happens within the
/// deadline.
pub fn closed_without_response(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            true
        }
        Err(err) => panic!("neither answered nor closed: {err}"),
    }
}

/// Sends one raw request on a fresh connection and reads the response.
pub fn raw(addr: SocketAddr, request: &str) -> Response {
    let mut conn = Conn::open(addr);
    conn.send(request.as_bytes());
    conn.read(request.starts_with("HEAD "))
}

/// A GET with the given path on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
    )
}

/// `/echo` through the proxy with extra request headers (each line ending in \r\n).
pub fn echo(addr: SocketAddr, extra_headers: &str) -> (Response, Echo) {
    let response = raw(
        addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: test.local\r\n{extra_headers}Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = Echo(response.json());
    (response, echo)
}

/// Polls `condition` until it holds; fails the test with `what` at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "never happened: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A JSON call to the admin API on a fresh connection.
pub fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    admin_call_as(admin, method, path, body, None)
}

/// [`admin_call`] with `Authorization: Bearer TOKEN` when a token is given.
pub fn admin_call_as(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// One server of a pool as the admin API describes it.
pub fn admin_server(admin: SocketAddr, pool: &str, address: SocketAddr) -> serde_json::Value {
    let response = admin_call(admin, "GET", &format!("/pools/{pool}"), "");
    assert_eq!(response.status, 200, "{}", response.text());
    let pool = response.json();
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == address.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{address} not listed in {pool}"))
}

/// A loopback port that nothing listens on.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The gatehouse binary running with a settings file, its stdout (the access log) collected.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// The first TLS listener, when the settings have `[tls]`.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The settings file it runs with; rewrite it and send SIGHUP to reload.
    pub config: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_closed: mpsc::Receiver<()>,
    _dir: TempDir,
}

impl Process {
    pub fn start(toml: &str) -> Self {
        let dir = TempDir::new();
        let config = dir.write("gatehouse.toml", toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("--config")
            .arg(&config)
            .current_dir(&dir.0)
            .envs(test_env())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gatehouse binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (kind, marker) in [
                    ("admin", "admin API on http://"),
                    ("proxy", "listening on http://"),
                    ("tls", "listening on https://"),
                ] {
                    if let Some((_, rest)) = line.split_once(marker) {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send((kind, addr));
                    }
                }
            }
        });
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let sink = stdout_lines.clone();
        let stdout = child.stdout.take().unwrap();
        let (closed_tx, stdout_closed) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
            let _ = closed_tx.send(());
        });
        let (mut addr, mut admin, mut tls) = (None, None, None);
        let wants_tls = toml.contains("[tls]");
        while addr.is_none() || admin.is_none() || (wants_tls && tls.is_none()) {
            let (kind, bound) = rx
                .recv_timeout(DEADLINE)
                .expect("gatehouse binary listening");
            let bound: SocketAddr = bound.parse().unwrap();
            match kind {
                "admin" => admin = Some(bound),
                "tls" => tls = tls.or(Some(bound)),
                _ => addr = Some(bound),
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            tls,
            admin: admin.unwrap(),
            config,
            stdout: stdout_lines,
            stdout_closed,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for exit, up to the deadline; returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the process with SIGTERM and returns every line it wrote to stdout.
    pub fn stdout_until_exit(self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        self.stdout_closed
            .recv_timeout(DEADLINE)
            .expect("stdout closes when gatehouse exits");
        let lines = self.stdout.lock().unwrap().clone();
        lines
    }

    /// Waits until at least `n` stdout lines arrived; returns them.
    pub fn stdout_lines(&self, n: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.len() >= n || started.elapsed() > DEADLINE {
                return lines;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with args, in `dir`, with extra environment.
pub fn run_binary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("gatehouse binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bounded keep-alive load on a proxy from a few client threads, counting failed requests;
/// for proving that a change made while traffic flows fails no request.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    clients: Vec<thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads, each sending at most 5,000 `GET /name` on one connection
    /// (a fresh one after a failure).
    pub fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
                thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    for _ in 0..5_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
                        match conn.try_read(false) {
                            Ok(response) if response.status == 200 => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                conn = Conn::open(addr);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            failures,
            done,
            clients,
        }
    }

    /// Waits until `n` more requests have been answered (or the clients have all finished).
    pub fn wait_for(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        while self.done.load(Ordering::Relaxed) < target
            && !self.clients.iter().all(|c| c.is_finished())
        {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients and returns how many requests failed.
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        self.failures.load(Ordering::Relaxed)
    }
}

/// An origin that reads each request whole (a `Content-Length` or chunked body) and records
/// every head as it arrives and every request once its body is complete, so a test can tell
/// what reached a server and whether it was a whole request. It answers each request with the
/// bytes `answer` builds from its own address (for responses that name it, like redirects).
pub struct RecordingOrigin {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    complete: Arc<Mutex<Vec<WholeRequest>>>,
}

/// A request head and its whole body.
pub type WholeRequest = (String, Vec<u8>);

impl RecordingOrigin {
    /// Answers every request with 200 and `ok`.
    pub fn start() -> Self {
        Self::answering(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    }

    pub fn answering(answer: impl Fn(SocketAddr) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let complete = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer(addr));
        let (seen, done) = (heads.clone(), complete.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (seen, done, answer) = (seen.clone(), done.clone(), answer.clone());
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(DEADLINE));
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    while let Some(head) = read_head(&mut reader) {
                        seen.lock().unwrap().push(head.clone());
                        let Some(body) = read_body(&mut reader, &head) else {
                            return;
                        };
                        done.lock().unwrap().push((head, body));
                        if writer.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            heads,
            complete,
        }
    }

    /// Every request head received, whole or not.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Every request received whole: its head and its body.
    pub fn complete(&self) -> Vec<WholeRequest> {
        self.complete.lock().unwrap().clone()
    }
}

/// One request head up to its blank line; `None` when the connection ends or fails first.
pub fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
    }
}

/// The body a head announces, read whole (a `Content-Length`, or chunks up to the last);
/// `None` when the connection ends or the framing is broken.
fn read_body(reader: &mut BufReader<TcpStream>, head: &str) -> Option<Vec<u8>> {
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let length: usize = header("content-length").map_or(Some(0), |n| n.parse().ok())?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// A certificate authority made for one test: EC P-256 keys, certificates valid for a day.
pub struct Authority {
    pub cert: openssl::x509::X509,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

fn ec_key() -> openssl::pkey::PKey<openssl::pkey::Private> {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    openssl::pkey::PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn certificate_builder(
    name: &str,
    key: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
) -> openssl::x509::X509Builder {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    let mut builder = openssl::x509::X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&subject(name)).unwrap();
    builder.set_pubkey(key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    builder
}

impl Authority {
    pub fn new(name: &str) -> Self {
        use openssl::hash::MessageDigest;
        use openssl::x509::extension::{BasicConstraints, KeyUsage};
        let key = ec_key();
        let mut builder = certificate_builder(name, &key);
        builder.set_issuer_name(&subject(name)).unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            cert: builder.build(),
            key,
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue("localhost", true)
    }

    /// A client certificate, for servers that require one.
    pub fn client(&self) -> Issued {
        self.issue("gatehouse", false)
    }

    fn issue(&self, name: &str, server: bool) -> Issued {
        use openssl::hash::MessageDigest;
        use openssl::x509::extension::{ExtendedKeyUsage, SubjectAlternativeName};
        let key = ec_key();
        let mut builder = certificate_builder(name, &key);
        builder.set_issuer_name(self.cert.subject_name()).unwrap();
        let context = builder.x509v3_context(Some(&self.cert), None);
        let names = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&context)
            .unwrap();
        if server {
            builder.append_extension(names).unwrap();
            builder
                .append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
                .unwrap();
        } else {
            builder
                .append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
                .unwrap();
        }
        builder.sign(&self.key, MessageDigest::sha256()).unwrap();
        Issued {
            cert_pem: builder.build().to_pem().unwrap(),
            key_pem: key.private_key_to_pem_pkcs8().unwrap(),
        }
    }
}

fn subject(name: &str) -> openssl::x509::X509Name {
    let mut subject = openssl::x509::X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    subject.build()
}

/// An HTTP/1.1 origin over TLS (OpenSSL on std threads) with keep-alive. `/health` answers
/// `ok` and is not counted; every other request is counted and answered with the origin's
/// name. It counts handshakes that completed, and keeps the SNI name of each.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    names: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
}

/// A TLS server's side of the handshake with `identity`; with `client_ca`, a client
/// certificate from that CA is required.
pub fn tls_acceptor(
    identity: &Issued,
    client_ca: Option<&Authority>,
) -> Arc<openssl::ssl::SslAcceptor> {
    use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    let cert = openssl::x509::X509::from_pem(&identity.cert_pem).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(&identity.key_pem).unwrap();
    acceptor.set_certificate(&cert).unwrap();
    acceptor.set_private_key(&key).unwrap();
    if let Some(ca) = client_ca {
        let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
        store.add_cert(ca.cert.clone()).unwrap();
        acceptor.set_verify_cert_store(store.build()).unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Arc::new(acceptor.build())
}

impl TlsOrigin {
    /// Serves with `identity`; with `client_ca`, a client certificate from that CA is required.
    pub fn start(name: &str, identity: &Issued, client_ca: Option<&Authority>) -> Self {
        let acceptor = tls_acceptor(identity, client_ca);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = Self {
            addr,
            hits: Arc::default(),
            health: Arc::default(),
            handshakes: Arc::default(),
            names: Arc::default(),
            stop: Arc::default(),
        };
        let (hits, health, handshakes, names, stop) = (
            origin.hits.clone(),
            origin.health.clone(),
            origin.handshakes.clone(),
            origin.names.clone(),
            origin.stop.clone(),
        );
        let body = name.to_string();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let (acceptor, hits, health, handshakes, names, body) = (
                    acceptor.clone(),
                    hits.clone(),
                    health.clone(),
                    handshakes.clone(),
                    names.clone(),
                    body.clone(),
                );
                thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(DEADLINE));
                    let Ok(tls) = acceptor.accept(stream) else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let sni = tls
                        .ssl()
                        .servername(openssl::ssl::NameType::HOST_NAME)
                        .map(str::to_string);
                    names.lock().unwrap().push(sni);
                    let mut reader = BufReader::new(tls);
                    while let Some(head) = read_head(&mut reader) {
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let text = if path.starts_with("/health") {
                            health.fetch_add(1, Ordering::SeqCst);
                            "ok".to_string()
                        } else {
                            hits.fetch_add(1, Ordering::SeqCst);
                            body.clone()
                        };
                        let close = head.to_ascii_lowercase().contains("connection: close");
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        let stream = reader.get_mut();
                        if stream.write_all(response.as_bytes()).is_err() || close {
                            let _ = stream.shutdown();
                            return;
                        }
                    }
                });
            }
        });
        origin
    }

    /// Requests answered, `/health` aside.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `/health` requests answered.
    pub fn health_checks(&self) -> usize {
        self.health.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The SNI name of each completed handshake (`None`: the client sent none).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.names.lock().unwrap().clone()
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
