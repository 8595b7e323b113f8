//! The request context: what the phases of one request share, settled once when the request
//! arrives — the published state, the client's address, the host, the request id, and the
//! access log record the phases fill in as they go.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Version;
use actix_web::{HttpMessage as _, HttpRequest};

use super::headers::{self, X_REQUEST_ID};
use super::phase::Finish;
use super::Proxy;
use crate::access_log::AccessRecord;
use crate::conn::came_over_tls;
use crate::pool::{InFlight, PoolSnapshot};
use crate::security::{ClientIp, Security};

/// One request on its way through the phases.
pub struct RequestCtx<'r> {
    pub req: &'r HttpRequest,
    /// The request path's state as published when the request arrived; a reload during the
    /// request does not change it.
    pub proxy: &'r Proxy,
    /// The client's address (behind trusted proxies, the one they name).
    pub client: Option<IpAddr>,
    /// The host the request is for: the absolute-form target's, else `Host`.
    pub host: Option<&'r str>,
    pub over_tls: bool,
    pub request_id: HeaderValue,
    /// The route's pool as it was when the request was picked: loaded once, so the affinity
    /// lookup, the claim and the retries all see the same servers.
    pub snapshot: Option<Arc<PoolSnapshot>>,
    /// The request body's declared `Content-Length`.
    pub declared_length: Option<u64>,
    /// The access log line, filled in by the phases; empty when the log is off.
    pub record: AccessRecord,
    /// When the request arrived; only taken when the access log needs it.
    started: Option<Instant>,
    /// Whether [`Self::finish`] has handed the record on: it is written once per request.
    finished: bool,
}

impl<'r> RequestCtx<'r> {
    pub fn new(req: &'r HttpRequest, proxy: &'r Proxy) -> Self {
        let client = client_address(req, &proxy.security);
        let request_id = req
            .headers()
            .get(X_REQUEST_ID)
            .filter(|id| is_usable_request_id(id))
            .cloned()
            .unwrap_or_else(new_request_id);
        let log = proxy.log;
        let record = if log.enabled() {
            first_record(req, client, &request_id)
        } else {
            AccessRecord::default()
        };
        Self {
            req,
            proxy,
            client,
            host: request_host(req),
            over_tls: came_over_tls(req),
            request_id,
            declared_length: headers::content_length(req.headers()),
            snapshot: None,
            record,
            started: log.enabled().then(Instant::now),
            finished: false,
        }
    }

    /// Hands the log line and the claim on a server to whatever ends the request: the
    /// response body when it ends, or at once for gatehouse's own answers.
    pub fn finish(&mut self, claim: Option<InFlight>) -> Finish {
        debug_assert!(!self.finished, "a request's log line is handed on once");
        self.finished = true;
        Finish {
            claim,
            record: std::mem::take(&mut self.record),
            log: self.proxy.log,
            started: self.started,
        }
    }
}

/// The access log line's fields known when the request arrives.
fn first_record(
    req: &HttpRequest,
    client: Option<IpAddr>,
    request_id: &HeaderValue,
) -> AccessRecord {
    let text = |name| {
        req.headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    AccessRecord {
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
    }
}

/// The host the request is for: the absolute-form target's, else `Host` (RFC 9112 3.2.2).
fn request_host(req: &HttpRequest) -> Option<&str> {
    req.uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
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
