//! The request path. Its steps, in order:
//!
//! 1. **admit** — check the request line ([`strict`]: 414, 400) and the head against the
//!    listener's limits (431).
//! 2. **route** — match host and path prefix to a route (404).
//! 3. **pick** — take a server from the route's pool snapshot (503), counted in flight.
//! 4. **forward** — build the upstream request (end-to-end headers, forwarding headers, the
//!    request id) and stream the body up, framed as it came (413 over the route's limit).
//! 5. **respond** — stream the server's response down, hop-by-hop headers removed (502/504
//!    when the server fails; an aborted connection when it fails mid-body).
//! 6. **log** — when the response body ends: the access log line, the server released.
//!
//! WebSocket upgrades leave at step 4 for [`upgrade`], which relays bytes both ways.

mod body;
mod connector;
mod error;
mod forward;
mod headers;
mod hide;
mod interim;
pub mod route;
mod strict;
mod upgrade;

use std::cell::{OnceCell, RefCell, RefMut};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::body::{BodySize, MessageBody as _};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Version;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};

pub use body::UndeclaredBody;
pub use connector::{UpstreamTls, UpstreamTlsError};
pub use error::ProxyError;
pub use headers::X_FORWARDED_FOR;

use crate::access_log::{AccessLog, AccessRecord};
use crate::affinity::Affinity;
use crate::compression::Compression;
use crate::pool::{InFlight, PoolHandle};
use crate::security::{ClientIp, EdgeState, RateLimit, Security};
use crate::settings::{PoolSettings, Settings};
use body::Completion;
use connector::TlsContext;
use headers::X_REQUEST_ID;
use route::RouteTable;

/// A pool as the request path needs it.
#[derive(Clone)]
pub struct PoolTarget {
    pub handle: PoolHandle,
    /// The pool's slot in each worker's [`Upstreams`]; kept for the pool's whole life, across
    /// reloads, so its idle connections are kept too.
    pub index: usize,
    pub name: Arc<str>,
    pub settings: Arc<PoolSettings>,
    pub host_header: Option<HeaderValue>,
    /// Session persistence, when the pool has `[pools.NAME.sticky]`.
    pub affinity: Option<Arc<Affinity>>,
}

impl PoolTarget {
    pub fn new(
        index: usize,
        name: &str,
        handle: PoolHandle,
        settings: Arc<PoolSettings>,
        affinity: Option<Arc<Affinity>>,
    ) -> Self {
        let host_header = settings
            .host_header
            .as_deref()
            .and_then(|host| HeaderValue::from_str(host).ok());
        Self {
            handle,
            index,
            name: name.into(),
            settings,
            host_header,
            affinity,
        }
    }
}

/// Everything the request path reads, shared by all workers. Never written: a reload
/// publishes a new one, and requests already running keep the one they started with.
pub struct Proxy {
    pub routes: RouteTable<PoolTarget>,
    pub security: Security,
    /// `[security]`'s response rules: hidden headers and rewritten redirects.
    pub hiding: hide::Hiding,
    /// `[security]`'s rate limits, applied to every request.
    pub rate_limits: Vec<RateLimit>,
    /// `[compression]`, when it is on; routes may override it.
    pub compression: Option<Arc<Compression>>,
    pub pools: Vec<PoolTarget>,
    pub log: AccessLog,
    pub server_header: Option<HeaderValue>,
    pub max_header_bytes: usize,
}

impl Proxy {
    /// Builds the request path's state from settings and the running pools.
    /// `edge` is what outlives reloads: the admin API's runtime blocks.
    pub fn new(
        settings: &Settings,
        pools: Vec<PoolTarget>,
        edge: Arc<EdgeState>,
    ) -> Result<Self, String> {
        let routes = RouteTable::new(&settings.routes, |name| {
            pools.iter().find(|pool| &*pool.name == name).cloned()
        })?;
        let server_header = Some(settings.server.server_header.as_str())
            .filter(|value| !value.is_empty())
            .and_then(|value| HeaderValue::from_str(value).ok());
        Ok(Self {
            routes,
            security: Security::new(&settings.security, edge),
            hiding: hide::Hiding::new(&settings.security),
            rate_limits: settings
                .security
                .rate_limits
                .iter()
                .map(RateLimit::new)
                .collect(),
            compression: Compression::new(&settings.compression).map(Arc::new),
            pools,
            log: AccessLog::new(settings.log.access),
            server_header,
            max_header_bytes: settings.server.max_request_header_size.get() as usize,
        })
    }
}

/// The request path's state as published: swapped whole by a reload, read per request.
pub type SharedProxy = arc_swap::ArcSwap<Proxy>;

/// Each worker's HTTP clients, one per pool, so every pool has its own connection pool and
/// connect timeout. `awc::Client` is not `Send`: each worker builds its own, on first use and
/// again when a reload changes the pool's settings.
#[derive(Default)]
pub struct Upstreams {
    clients: RefCell<Vec<Option<PoolClient>>>,
}

/// Whether a client built for `old` serves `new` as it is: only the connection settings
/// count (timeouts and TLS), so a reload that changes a pool's servers keeps its idle
/// connections.
fn same_connections(old: &Arc<PoolSettings>, new: &Arc<PoolSettings>) -> bool {
    Arc::ptr_eq(old, new)
        || (old.connect_timeout == new.connect_timeout
            && old.keepalive_timeout == new.keepalive_timeout
            && old.tls == new.tls)
}

/// A worker's client for one pool, with the settings it was built from.
struct PoolClient {
    settings: Arc<PoolSettings>,
    client: awc::Client,
    /// The TLS context of the pool's WebSocket relays, which connect outside awc; built for
    /// the first one.
    relay_tls: OnceCell<Option<TlsContext>>,
}

impl Upstreams {
    /// The worker's client for `pool` (a cheap handle on a shared connection pool).
    fn client(&self, pool: &PoolTarget) -> awc::Client {
        self.current(pool).client.clone()
    }

    /// The TLS context for WebSocket relays to `pool`'s servers; `None` for a plain pool.
    fn relay_tls(&self, pool: &PoolTarget) -> Option<TlsContext> {
        let entry = self.current(pool);
        let tls = entry
            .relay_tls
            .get_or_init(|| pool.settings.tls.as_ref().map(connector::tls_context));
        tls.clone()
    }

    /// The worker's entry for `pool`, built anew when the pool's connection settings changed.
    fn current(&self, pool: &PoolTarget) -> RefMut<'_, PoolClient> {
        let mut clients = self.clients.borrow_mut();
        if clients.len() <= pool.index {
            clients.resize_with(pool.index + 1, || None);
        }
        match &mut clients[pool.index] {
            Some(entry) if same_connections(&entry.settings, &pool.settings) => {
                if !Arc::ptr_eq(&entry.settings, &pool.settings) {
                    entry.settings = pool.settings.clone();
                }
            }
            slot => {
                *slot = Some(PoolClient {
                    settings: pool.settings.clone(),
                    client: forward::client(&pool.settings),
                    relay_tls: OnceCell::new(),
                });
            }
        }
        RefMut::map(clients, |clients| {
            clients[pool.index]
                .as_mut()
                .expect("the pool's entry was just made")
        })
    }
}

/// One request on its way through: what the access log and the error page need.
struct Exchange {
    /// When the request arrived; only taken when the access log needs it.
    started: Option<Instant>,
    request_id: HeaderValue,
    record: AccessRecord,
    /// The client's address (behind trusted proxies, the one they name).
    client: Option<IpAddr>,
}

impl Exchange {
    fn new(req: &HttpRequest, log: &AccessLog, client: Option<IpAddr>) -> Self {
        let request_id = req
            .headers()
            .get(X_REQUEST_ID)
            .filter(|id| is_usable_request_id(id))
            .cloned()
            .unwrap_or_else(new_request_id);
        let mut record = AccessRecord::default();
        if log.enabled() {
            let text = |name| {
                req.headers()
                    .get(name)
                    .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            record = AccessRecord {
                time: Some(SystemTime::now()),
                client,
                method: req.method().to_string(),
                target: req
                    .uri()
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_string(),
                protocol: protocol_name(req.version()),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                user_agent: text(header::USER_AGENT),
                referer: text(header::REFERER),
                ..AccessRecord::default()
            };
        }
        Self {
            started: log.enabled().then(Instant::now),
            request_id,
            record,
            client,
        }
    }

    /// Hands the record to the response body, which logs it when the body ends.
    fn completion(&mut self, log: AccessLog, claim: Option<InFlight>) -> Completion {
        Completion {
            claim,
            record: std::mem::take(&mut self.record),
            log,
            started: self.started,
        }
    }

    /// Answers with gatehouse's own error page and logs it.
    fn refuse(&mut self, req: &HttpRequest, err: &ProxyError, log: AccessLog) -> HttpResponse {
        log::debug!("{} {}: {err}", req.method(), req.uri());
        let response = err.error_response();
        self.record.status = response.status().as_u16();
        let sent = match response.body().size() {
            BodySize::Sized(n) => n,
            _ => 0,
        };
        self.completion(log, None).finish(sent);
        response
    }
}

/// Accepts a client's request id if it is short printable ASCII, so logs stay clean.
fn is_usable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= 200 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    HeaderValue::from_bytes(id.simple().encode_lower(&mut buf).as_bytes())
        .expect("a hex string is a valid header value")
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The client's address, settled once: behind trusted proxies, the one they name, kept in the
/// request so balancing, affinity and logs all use it.
fn client_address(req: &HttpRequest, security: &Security) -> Option<IpAddr> {
    if security.settings.trusted_proxies.is_empty() {
        return req.peer_addr().map(|peer| peer.ip().to_canonical());
    }
    let client = security.client_ip(req)?;
    req.extensions_mut().insert(ClientIp(client));
    Some(client)
}

/// The handler for every request on a client listener.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<SharedProxy>,
    upstreams: web::Data<Upstreams>,
) -> HttpResponse {
    let proxy = shared.load_full();
    let client = client_address(&req, &proxy.security);
    let mut exchange = Exchange::new(&req, &proxy.log, client);
    let result = forward::forward(&req, payload, &proxy, &upstreams, &mut exchange).await;
    let mut response = result
        .unwrap_or_else(|err| body::holding_unread(&req, exchange.refuse(&req, &err, proxy.log)));
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID, exchange.request_id);
    proxy.hiding.strip(headers);
    if let Some(server) = &proxy.server_header {
        headers.insert(header::SERVER, server.clone());
    }
    response
}
