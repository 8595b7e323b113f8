//! Forwarding one request to a server and turning its answer into the client's response.

use std::time::Instant;

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::uri::{PathAndQuery, Uri};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::{ConnectError, SendRequestError};
use futures_util::future::{select, Either};

use super::body::{BodyFault, Framing, RequestBody, ResponseBody};
use super::connector::UpstreamConnector;
use super::headers::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use super::{upgrade, Exchange, PoolTarget, Proxy, ProxyError, Upstreams};
use crate::pool::{InFlight, PickError, Server};
use crate::settings::PoolSettings;

/// `Via` on forwarded requests, per received protocol (RFC 9110 7.6.3).
const VIA_HTTP_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
const VIA_HTTP_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
const VIA_HTTP_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

/// Builds a worker's client for one pool from its settings.
pub fn client(settings: &PoolSettings) -> awc::Client {
    // awc bounds every call of the connector service by `timeout`, name resolution included.
    let connector = awc::Connector::new()
        .connector(UpstreamConnector::default())
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
    admit(req, proxy.max_header_bytes)?;
    let host = request_host(req);
    if host.is_some_and(|host| !is_valid_host(host)) {
        return Err(ProxyError::BadHost);
    }
    let path = req.uri().path();
    let route = proxy.routes.find(host, path).ok_or(ProxyError::NoRoute)?;
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
    let claim = pick(pool, req).await?;
    let server = claim.server().clone();
    exchange.record.upstream = Some(server.address.clone());
    let upstream_headers = upstream_headers(req, host, pool, &exchange.request_id);

    if upgrade::is_websocket(req) {
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

    let client = upstreams.client(pool);
    let mut request = client.request(req.method().clone(), upstream_uri(req, &server));
    *request.headers_mut() = upstream_headers;

    let sent_at = proxy.log.enabled().then(Instant::now);
    let response_timeout = pool.settings.response_timeout.get();
    let framing = RequestFraming::of(req, declared);
    let response = match send(
        request,
        payload,
        framing,
        route.max_body_size,
        response_timeout,
    )
    .await
    {
        Ok(response) => response,
        Err(err) => {
            if err.is_server_failure() {
                claim.failed();
                log::warn!("upstream {} in pool {}: {err}", server.address, pool.name);
            }
            return Err(err);
        }
    };
    claim.observe_head();

    exchange.record.status = response.status().as_u16();
    exchange.record.upstream_status = Some(response.status().as_u16());
    exchange.record.upstream_time = sent_at.map(|t| t.elapsed());
    Ok(respond(
        req.method(),
        response,
        pool,
        exchange.completion(proxy.log, Some(claim)),
    ))
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
            None => Self::None,
        }
    }
}

/// Sends the request and waits for the response head, at most `response_timeout` after the
/// request body has been sent (an upload of any length does not count against it).
async fn send(
    request: awc::ClientRequest,
    payload: web::Payload,
    framing: RequestFraming,
    limit: Option<u64>,
    response_timeout: std::time::Duration,
) -> Result<awc::ClientResponse, ProxyError> {
    let sending = match framing {
        RequestFraming::None | RequestFraming::Length(0) => {
            let sending = match framing {
                RequestFraming::Length(0) => request.send_body(bytes::Bytes::new()),
                _ => request.send_body(actix_web::body::None::new()),
            };
            return match actix_rt::time::timeout(response_timeout, sending).await {
                Ok(result) => result.map_err(|err| upstream_error(err, None)),
                Err(_) => Err(ProxyError::ResponseTimeout),
            };
        }
        RequestFraming::Length(length) => {
            let (body, fault, sent) = RequestBody::new(payload, limit);
            (
                request.send_body(SizedStream::new(length, body)),
                fault,
                sent,
            )
        }
        RequestFraming::Chunked => {
            let (body, fault, sent) = RequestBody::new(payload, limit);
            (request.send_body(BodyStream::new(body)), fault, sent)
        }
    };
    let (sending, fault, body_sent) = sending;
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
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + 11;
    let mut size = line;
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
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
    match fault {
        Some(BodyFault::TooLarge) => return ProxyError::BodyTooLarge,
        Some(BodyFault::Client(reason)) => return ProxyError::BadRequestBody(reason),
        None => {}
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
    method: &Method,
    upstream: awc::ClientResponse,
    pool: &PoolTarget,
    completion: super::body::Completion,
) -> HttpResponse {
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
    let idle = pool.settings.response_timeout.get();
    let body = ResponseBody::new(upstream, idle, completion).framed_by(framing);
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
