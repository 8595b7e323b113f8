//! Forwarding one request to a server and turning its answer into the client's response.

use std::time::Instant;

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::uri::{PathAndQuery, Uri};
use actix_web::http::Method;
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};
use awc::error::{ConnectError, SendRequestError};
use futures_util::future::{select, Either};

use super::body::{BodyFault, Framing, Intake, RequestBody, ResponseBody, UndeclaredBody};
use super::connector::{UpstreamConnector, UpstreamTls};
use super::headers::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use super::{strict, upgrade, Exchange, PoolTarget, Proxy, ProxyError, Upstreams};
use std::sync::Arc;

use bytes::Bytes;

use std::net::IpAddr;

use crate::affinity::Session;
use crate::compression::{self, Compress, Compression, Encoder};
use crate::health::passive;
use crate::pool::{self, InFlight, PickError, Server};
use crate::security::{AccessList, RateLimit};
use crate::settings::{PoolSettings, RetryOn, RetrySettings, StatusRange};
use crate::tls;

/// `Via` on forwarded requests, per received protocol (RFC 9110 7.6.3).
const VIA_HTTP_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
const VIA_HTTP_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
const VIA_HTTP_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

/// Builds a worker's client for one pool from its settings.
pub fn client(settings: &PoolSettings) -> awc::Client {
    let tls = settings
        .tls
        .as_ref()
        .map(|tls| match UpstreamTls::new(tls) {
            Ok(tls) => Ok(Arc::new(tls)),
            // The files were read when the settings were loaded; they have changed since.
            Err(err) => {
                log::error!("upstream TLS: {err}");
                Err(err.to_string())
            }
        });
    // awc bounds every call of the connector service by `timeout`, name resolution and the
    // TLS handshake included.
    let connector = awc::Connector::new()
        .connector(UpstreamConnector::new(tls))
        .timeout(settings.connect_timeout.get())
        .conn_keep_alive(settings.keepalive_timeout.get())
        .limit(0);
    awc::Client::builder()
        .connector(connector)
        .no_default_headers()
        .disable_redirects()
        // The response timeout is gatehouse's own: it starts when the request body is sent.
        .disable_timeout()
        .finish()
}

/// Steps 1-5 of the request path (see the module docs of `proxy`).
pub async fn forward(
    req: &HttpRequest,
    payload: web::Payload,
    proxy: &Proxy,
    upstreams: &Upstreams,
    exchange: &mut Exchange,
) -> Result<HttpResponse, ProxyError> {
    strict::check_request_line(req, &proxy.security.settings)?;
    admit(req, proxy.max_header_bytes)?;
    let client = exchange.client;
    guard(
        req,
        client,
        &proxy.security.access,
        &proxy.rate_limits,
        proxy,
    )?;
    let host = request_host(req);
    if host.is_some_and(|host| !is_valid_host(host)) {
        return Err(ProxyError::BadHost);
    }
    let path = req.uri().path();
    let route = proxy.routes.find(host, path).ok_or(ProxyError::NoRoute)?;
    if !route.access.is_empty() || !route.rate_limits.is_empty() {
        guard(req, client, &route.access, &route.rate_limits, proxy)?;
    }
    let over_tls = tls::came_over_tls(req);
    if route.redirect_https && !over_tls {
        if let Some(response) = tls::redirect(req, host) {
            exchange.record.status = response.status().as_u16();
            exchange.completion(proxy.log, None).finish(0);
            return Ok(response);
        }
    }
    let pool = &route.target;
    if proxy.log.enabled() {
        exchange.record.route = Some(route.label.clone());
        exchange.record.pool = Some(pool.name.clone());
    }
    let declared = declared_length(req.headers());
    if let (Some(limit), Some(length)) = (route.max_body_size, declared) {
        if length > limit {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let session = pool
        .affinity
        .as_ref()
        .map(|affinity| affinity.lookup(req, &pool.handle.snapshot()));
    let claim = match bound_claim(pool, session.as_ref()) {
        Some(claim) => claim,
        None => pick(pool, req).await?,
    };
    exchange.record.upstream = Some(claim.server().address.clone());

    if upgrade::is_websocket(req) {
        let server = claim.server().clone();
        let upstream_headers = upstream_headers(req, host, pool, &exchange.request_id);
        return upgrade::relay(
            req,
            payload,
            &server,
            upstream_headers,
            pool,
            claim,
            exchange,
            proxy.log,
        )
        .await;
    }

    let retry = &pool.settings.retry;
    if retry.attempts > 1 {
        pool.handle.budget().request();
    }
    let framing = RequestFraming::of(req, declared);
    let intake = Intake::new(req, route.max_body_size, &proxy.security.settings);
    let body = OutgoingBody::prepare(payload, framing, intake, retry).await?;
    let sent_at = proxy.log.enabled().then(Instant::now);
    let tries = Tries {
        req,
        host,
        pool,
        upstreams,
    };
    let (response, claim) = tries.run(claim, body, exchange).await?;
    claim.observe_head();

    exchange.record.status = response.status().as_u16();
    exchange.record.upstream_status = Some(response.status().as_u16());
    exchange.record.upstream_time = sent_at.map(|t| t.elapsed());
    let server = claim.server().clone();
    let compression = route.compression.or(proxy.compression.as_ref());
    let mut response = respond(
        req,
        response,
        pool,
        compression.map(|rules| &**rules),
        exchange.completion(proxy.log, Some(claim)),
    );
    if let (Some(affinity), Some(session)) = (&pool.affinity, &session) {
        affinity.bind(session, &server, &mut response);
    }
    proxy
        .hiding
        .rewrite_redirects(response.headers_mut(), &server.authority, host);
    if let (true, Some(hsts)) = (over_tls, &route.hsts) {
        let headers = response.headers_mut();
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    Ok(response)
}

/// Step 3 for a request of a session bound to a server: that server, if it can take it.
fn bound_claim(pool: &PoolTarget, session: Option<&Session>) -> Option<InFlight> {
    let address = session?.bound.as_deref()?;
    pool.handle
        .snapshot()
        .claim_bound(address, pool.settings.drain_timeout.get())
}

/// One request's tries: the first on the picked server, then, when the pool's retry settings
/// allow, each on a server not tried yet.
struct Tries<'a> {
    req: &'a HttpRequest,
    host: Option<&'a str>,
    pool: &'a PoolTarget,
    upstreams: &'a Upstreams,
}

impl Tries<'_> {
    async fn run(
        &self,
        mut claim: InFlight,
        mut body: OutgoingBody,
        exchange: &mut Exchange,
    ) -> Result<(awc::ClientResponse, InFlight), ProxyError> {
        let settings = &self.pool.settings;
        let deadline = settings
            .retry
            .per_try_timeout
            .unwrap_or(settings.response_timeout)
            .get();
        let mut tried: Vec<Arc<Server>> = Vec::new();
        loop {
            let server = claim.server().clone();
            let client = self.upstreams.client(self.pool);
            let mut request =
                client.request(self.req.method().clone(), upstream_uri(self.req, &server));
            *request.headers_mut() =
                upstream_headers(self.req, self.host, self.pool, &exchange.request_id);
            let result = send(request, body.for_try(), deadline).await;
            let outcome = Outcome::of(&result, &settings.passive.fail_statuses);
            self.observe(&claim, &outcome);
            let Some(cause) = outcome.retry_cause() else {
                return result.map(|response| (response, claim));
            };
            if !self.may_retry(cause, &body, tried.len() + 1) {
                return result.map(|response| (response, claim));
            }
            tried.push(server);
            match self.pool.handle.snapshot().pick_other(self.req, &tried) {
                Ok(next) => {
                    log::debug!(
                        "retrying {} {} in pool {} after {}",
                        self.req.method(),
                        self.req.uri().path(),
                        self.pool.name,
                        String::from(cause)
                    );
                    exchange.record.upstream = Some(tried_list(&tried, next.server()));
                    claim = next;
                }
                Err(_) => return result.map(|response| (response, claim)),
            }
        }
    }

    /// Tells passive detection how the try went, and counts a failure against the server.
    fn observe(&self, claim: &InFlight, outcome: &Outcome) {
        let server = claim.server();
        match outcome {
            Outcome::Answered { failure: None, .. } => passive::report_success(server),
            Outcome::Answered {
                failure: Some(reason),
                ..
            }
            | Outcome::Failed { reason, .. } => {
                claim.failed();
                // A server answering errors is not news for each request; a broken
                // exchange is.
                let level = match outcome {
                    Outcome::Answered { .. } => log::Level::Debug,
                    _ => log::Level::Warn,
                };
                log::log!(
                    level,
                    "upstream {} in pool {}: {reason}",
                    server.address,
                    self.pool.name
                );
                let snapshot = self.pool.handle.snapshot();
                passive::report_failure(&snapshot, server, reason, &self.pool.settings.passive);
            }
            Outcome::ClientFault => {}
        }
    }

    /// Whether a try that failed by `cause` may be followed by another. A request whose body
    /// was streamed cannot be sent again; one that reached a server is sent again only if
    /// its method is idempotent; and the pool's budget must allow one more retry.
    fn may_retry(&self, cause: RetryOn, body: &OutgoingBody, tries: usize) -> bool {
        let retry = &self.pool.settings.retry;
        tries < retry.attempts as usize
            && retry.on.contains(&cause)
            && body.replayable()
            && (cause == RetryOn::ConnectError || is_idempotent(self.req.method()))
            && self.pool.handle.budget().try_retry(
                pool::clock(),
                retry.budget_percent,
                retry.budget_floor,
            )
    }
}

/// The servers a request went to, in order, as NGINX's `$upstream_addr` lists them.
fn tried_list(tried: &[Arc<Server>], current: &Server) -> Arc<str> {
    let mut list: Vec<&str> = tried.iter().map(|s| &*s.address).collect();
    list.push(&current.address);
    list.join(", ").into()
}

/// Methods whose request may be sent twice without changing the outcome (RFC 9110 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// How one try went, as passive detection and retries see it.
enum Outcome {
    /// The server answered; `failure` names why the answer counts as a failure
    /// (its status is in `fail_statuses`).
    Answered {
        status: u16,
        failure: Option<String>,
    },
    /// The exchange failed on the server's side.
    Failed { reason: String, cause: RetryOn },
    /// The client's request body was at fault; the server is not to blame.
    ClientFault,
}

impl Outcome {
    fn of(result: &Result<awc::ClientResponse, ProxyError>, fail_statuses: &[StatusRange]) -> Self {
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let failure = fail_statuses
                    .iter()
                    .any(|range| range.contains(status))
                    .then(|| format!("status {status}"));
                Self::Answered { status, failure }
            }
            Err(err) => {
                let cause = match err {
                    ProxyError::Connect(_) | ProxyError::ConnectTimeout => RetryOn::ConnectError,
                    ProxyError::ResponseTimeout => RetryOn::Timeout,
                    ProxyError::Upstream(_) => RetryOn::Reset,
                    _ => return Self::ClientFault,
                };
                Self::Failed {
                    reason: err.to_string(),
                    cause,
                }
            }
        }
    }

    /// The retry condition this outcome meets, if any.
    fn retry_cause(&self) -> Option<RetryOn> {
        match self {
            Self::Answered { status, .. } if *status >= 500 => Some(RetryOn::Status(*status)),
            Self::Failed { cause, .. } => Some(*cause),
            _ => None,
        }
    }
}

/// The request body as the tries send it: nothing, bytes kept so every try can send them,
/// or the client's stream, which only the first try can send.
enum OutgoingBody {
    Empty { zero_length: bool },
    Kept(Bytes),
    Streamed(Option<StreamedBody>),
}

struct StreamedBody {
    payload: web::Payload,
    framing: RequestFraming,
    intake: Intake,
}

/// What one try sends.
enum TryBody {
    Empty {
        zero_length: bool,
    },
    Kept(Bytes),
    Streamed(StreamedBody),
    /// The stream went with an earlier try; never sent (a retry is refused first).
    Gone,
}

impl OutgoingBody {
    /// Keeps a body of known length up to `retry_body_limit` when retries are on, reading it
    /// whole before the first try (so a slow client holds no server connection meanwhile);
    /// other bodies stream.
    async fn prepare(
        payload: web::Payload,
        framing: RequestFraming,
        intake: Intake,
        retry: &RetrySettings,
    ) -> Result<Self, ProxyError> {
        match framing {
            RequestFraming::None => Ok(Self::Empty { zero_length: false }),
            RequestFraming::Length(0) => Ok(Self::Empty { zero_length: true }),
            RequestFraming::Length(length)
                if retry.attempts > 1 && length <= retry.retry_body_limit.get() =>
            {
                read_whole(payload, length, intake).await.map(Self::Kept)
            }
            _ => Ok(Self::Streamed(Some(StreamedBody {
                payload,
                framing,
                intake,
            }))),
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, Self::Streamed(_))
    }

    fn for_try(&mut self) -> TryBody {
        match self {
            Self::Empty { zero_length } => TryBody::Empty {
                zero_length: *zero_length,
            },
            Self::Kept(bytes) => TryBody::Kept(bytes.clone()),
            Self::Streamed(stream) => stream.take().map_or(TryBody::Gone, TryBody::Streamed),
        }
    }
}

/// Reads a body of `length` bytes whole, within the route's limit and the client's pace.
async fn read_whole(
    payload: web::Payload,
    length: u64,
    intake: Intake,
) -> Result<Bytes, ProxyError> {
    use futures_util::StreamExt as _;
    let (mut body, _, _) = RequestBody::new(payload, intake);
    let mut kept = bytes::BytesMut::with_capacity(length as usize);
    while let Some(chunk) = body.next().await {
        kept.extend_from_slice(&chunk?);
    }
    Ok(kept.freeze())
}

/// The allow and deny lists (403) and rate limits (429) of `[security]` or of a route, and
/// the runtime blocks. Nothing to check costs two loads.
fn guard(
    req: &HttpRequest,
    client: Option<IpAddr>,
    access: &AccessList,
    limits: &[RateLimit],
    proxy: &Proxy,
) -> Result<(), ProxyError> {
    if let Some(ip) = client {
        if (!access.is_empty() && !access.admits(ip)) || proxy.security.edge.denies.blocks(ip) {
            return Err(ProxyError::Forbidden);
        }
    }
    if limits.is_empty() {
        return Ok(());
    }
    let now = pool::clock();
    for limit in limits {
        limit
            .check(req, client, now)
            .map_err(ProxyError::TooManyRequests)?;
    }
    Ok(())
}

/// How often a request queued for a full pool looks for a free slot again. Queueing happens
/// only when every server is at its `max_connections`, so the polling costs nothing otherwise.
const QUEUE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Step 3: a server for the request. When every server is at its limit, the request waits up
/// to the pool's `queue_timeout` for one to free a slot.
async fn pick(pool: &PoolTarget, req: &HttpRequest) -> Result<InFlight, ProxyError> {
    let mut deadline = None;
    loop {
        match pool.handle.snapshot().pick(req) {
            Ok(claim) => return Ok(claim),
            Err(PickError::Saturated) => {
                let queue_timeout = pool.settings.queue_timeout.get();
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + queue_timeout);
                if Instant::now() >= deadline {
                    return Err(ProxyError::NoServer);
                }
                actix_rt::time::sleep(QUEUE_POLL).await;
            }
            Err(PickError::Unavailable) => return Err(ProxyError::NoServer),
        }
    }
}

/// How the client framed its request body; the upstream request keeps the same framing.
#[derive(Clone, Copy)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    fn of(req: &HttpRequest, declared: Option<u64>) -> Self {
        match declared {
            _ if req.headers().contains_key(header::TRANSFER_ENCODING) => Self::Chunked,
            // An explicit `Content-Length: 0` is kept: some servers answer a POST without
            // a length with 411.
            Some(length) => Self::Length(length),
            None if req.version() == actix_web::http::Version::HTTP_2
                && req.extensions().contains::<UndeclaredBody>() =>
            {
                Self::Chunked
            }
            None => Self::None,
        }
    }
}

/// Sends the request and waits for the response head, at most `response_timeout` after the
/// request body has been sent (an upload of any length does not count against it).
async fn send(
    request: awc::ClientRequest,
    body: TryBody,
    response_timeout: std::time::Duration,
) -> Result<awc::ClientResponse, ProxyError> {
    let sending = match body {
        TryBody::Empty { zero_length: true } => request.send_body(Bytes::new()),
        TryBody::Empty { zero_length: false } => request.send_body(actix_web::body::None::new()),
        TryBody::Kept(bytes) => request.send_body(bytes),
        TryBody::Streamed(body) => return send_stream(request, body, response_timeout).await,
        TryBody::Gone => {
            return Err(ProxyError::Upstream(
                "the request body was already sent".into(),
            ))
        }
    };
    match actix_rt::time::timeout(response_timeout, sending).await {
        Ok(result) => result.map_err(|err| upstream_error(err, None)),
        Err(_) => Err(ProxyError::ResponseTimeout),
    }
}

/// [`send`] for a body streamed from the client as it arrives, framed as it came.
async fn send_stream(
    request: awc::ClientRequest,
    body: StreamedBody,
    response_timeout: std::time::Duration,
) -> Result<awc::ClientResponse, ProxyError> {
    let (stream, fault, body_sent) = RequestBody::new(body.payload, body.intake);
    let sending = match body.framing {
        RequestFraming::Length(length) => request.send_body(SizedStream::new(length, stream)),
        _ => request.send_body(BodyStream::new(stream)),
    };
    let deadline = std::pin::pin!(async move {
        let _ = body_sent.await;
        actix_rt::time::sleep(response_timeout).await;
    });
    match select(sending, deadline).await {
        Either::Left((result, _)) => {
            result.map_err(|err| upstream_error(err, fault.borrow_mut().take()))
        }
        Either::Right(_) => Err(ProxyError::ResponseTimeout),
    }
}

/// Step 1: the request head's size against `max_request_header_size`.
fn admit(req: &HttpRequest, max_header_bytes: usize) -> Result<(), ProxyError> {
    // The line and its CRLF, then each header with its ": " and CRLF.
    let mut size = strict::request_line_len(req) + 2;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
        if size > max_header_bytes {
            return Err(ProxyError::HeaderTooLarge);
        }
    }
    Ok(())
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

/// Whether a Host value is a host name or IP literal with an optional port (RFC 9110 7.2):
/// never empty, never a list, never carrying user information or a path.
fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, port)) => {
                let valid = !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !valid {
                    return false;
                }
                ("ipv6", port)
            }
            None => return false,
        },
        None => match host.rfind(':') {
            Some(at) => (&host[..at], &host[at..]),
            None => (host, ""),
        },
    };
    let port_ok = port.is_empty()
        || (port.len() > 1
            && port.len() <= 6
            && port[1..].bytes().all(|b| b.is_ascii_digit())
            && port.starts_with(':'));
    !name.is_empty()
        && port_ok
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
}

/// The request's `Content-Length`, which actix-http has already checked is a single number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// The server's URI with the request target as received, byte for byte.
fn upstream_uri(req: &HttpRequest, server: &Server) -> Uri {
    let target = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(server.authority.clone())
        .path_and_query(target)
        .build()
        .expect("scheme, authority and target come from parsed parts")
}

/// The upstream request's headers: end-to-end headers appended (repeats kept), then the
/// ones gatehouse sets.
fn upstream_headers(
    req: &HttpRequest,
    host: Option<&str>,
    pool: &PoolTarget,
    request_id: &HeaderValue,
) -> HeaderMap {
    let incoming = req.headers();
    let mut out = headers::upstream_request_headers(incoming);
    let host_value = host.and_then(|host| HeaderValue::from_str(host).ok());
    if let Some(value) = pool.host_header.clone().or_else(|| host_value.clone()) {
        out.insert(header::HOST, value);
    }
    if let Some(value) = host_value {
        out.insert(X_FORWARDED_HOST, value);
    }
    if let Some(peer) = req.peer_addr() {
        if let Some(value) = headers::x_forwarded_for(incoming, &peer.ip().to_string()) {
            out.insert(X_FORWARDED_FOR, value);
        }
    }
    let proto = if tls::came_over_tls(req) {
        "https"
    } else {
        "http"
    };
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let via = match req.version() {
        actix_web::http::Version::HTTP_10 => VIA_HTTP_10,
        actix_web::http::Version::HTTP_2 => VIA_HTTP_2,
        _ => VIA_HTTP_11,
    };
    out.append(header::VIA, via);
    out.insert(X_REQUEST_ID, request_id.clone());
    out
}

/// Maps a failed exchange to the error the client sees, blaming the client when its body broke.
fn upstream_error(err: SendRequestError, fault: Option<BodyFault>) -> ProxyError {
    if let Some(fault) = fault {
        return fault.into();
    }
    match err {
        SendRequestError::Connect(ConnectError::Timeout) => ProxyError::ConnectTimeout,
        SendRequestError::Connect(err) => ProxyError::Connect(err.to_string()),
        SendRequestError::Timeout => ProxyError::ResponseTimeout,
        other => ProxyError::Upstream(other.to_string()),
    }
}

/// Step 5: the client's response from the server's, body streamed with the framing it had.
fn respond(
    req: &HttpRequest,
    upstream: awc::ClientResponse,
    pool: &PoolTarget,
    compression: Option<&Compression>,
    completion: super::body::Completion,
) -> HttpResponse {
    let method = req.method();
    let status = upstream.status();
    let framing = Framing::of(upstream.version(), upstream.headers());
    // A chunked body's Content-Length, if the server sent both, means nothing (RFC 9112 6.3).
    let length = match framing {
        Framing::Length => declared_length(upstream.headers()),
        _ => None,
    };
    // The server's header map is taken, not copied: the body no longer needs it.
    let mut headers = HeaderMap::new();
    let upstream = upstream.map_body(|head, payload| {
        headers = std::mem::take(&mut head.headers);
        payload
    });
    headers::downstream_response_headers(&mut headers);
    let encoder =
        compression.and_then(|rules| compress(req, status.as_u16(), &mut headers, length, rules));
    let idle = pool.settings.response_timeout.get();
    let body = ResponseBody::new(upstream, idle, completion).framed_by(framing);
    if let Some(encoder) = encoder {
        let body = BoxBody::new(BodyStream::new(Compress::new(body, encoder)));
        let mut response = HttpResponse::with_body(status, body);
        *response.headers_mut() = headers;
        return response;
    }
    let body = if headers::response_has_no_body(method, status.as_u16()) {
        match length {
            // A HEAD response keeps the length the body would have had.
            Some(length) if method == Method::HEAD => BoxBody::new(SizedStream::new(length, body)),
            _ => {
                drop(body);
                BoxBody::new(actix_web::body::None::new())
            }
        }
    } else {
        match length {
            Some(length) => BoxBody::new(SizedStream::new(length, body)),
            None => BoxBody::new(BodyStream::new(body)),
        }
    };
    let mut response = HttpResponse::with_body(status, body);
    *response.headers_mut() = headers;
    response
}

/// Applies the compression rules to a response's headers; the encoder for its body, if it
/// is to be compressed.
fn compress(
    req: &HttpRequest,
    status: u16,
    headers: &mut HeaderMap,
    length: Option<u64>,
    rules: &Compression,
) -> Option<Encoder> {
    let accept = req.headers().get(header::ACCEPT_ENCODING);
    let plan = rules.plan(req.method(), status, headers, length, accept);
    if plan.vary {
        compression::add_vary(headers);
    }
    let algorithm = plan.encode?;
    match Encoder::new(algorithm, &rules.settings().levels) {
        Ok(encoder) => {
            compression::encoded_headers(headers, algorithm);
            Some(encoder)
        }
        Err(err) => {
            log::warn!("cannot start a {} encoder: {err}", algorithm.token());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_host;

    #[test]
    fn hosts_are_names_or_literals_with_an_optional_port() {
        for good in [
            "example.com",
            "a.example.com:8080",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "my_host",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.com, www.example.com",
            "evil.com/x?www.example.com",
            "evil.com@www.example.com",
            "evil.com www.example.com",
            "example.com:",
            "example.com:80x",
            "[::1",
            "[]",
            ":80",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }
}
