//! WebSocket upgrades: the handshake goes to the server over a fresh connection (TLS for a
//! pool with `[pools.NAME.tls]`), and after its `101 Switching Protocols` bytes are relayed
//! both ways until either side closes.
//!
//! actix-http hands gatehouse the raw client bytes only for `Upgrade: websocket`; other
//! upgrade tokens are forwarded as ordinary requests with `Upgrade` removed, which a server
//! must treat as a request that did not ask to upgrade (RFC 9110 7.8).

use std::pin::Pin;
use std::time::Instant;

use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::body::ResponseBody;
use super::connector::{self, tls_context, UpstreamTls};
use super::headers;
use super::{Exchange, PoolTarget, ProxyError, Upstreams};
use crate::access_log::AccessLog;
use crate::health::passive::{report_failure, report_success};
use crate::pool::{InFlight, Server};

/// The largest response head accepted from a server during a handshake.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 96;
const READ_CHUNK: usize = 16 * 1024;
/// How long a relay stays open after the client has closed its side, for the server to finish
/// (a WebSocket close handshake takes one round trip).
const CLIENT_GONE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the request asks to upgrade to WebSocket over HTTP/1.1.
pub fn is_websocket(req: &HttpRequest) -> bool {
    req.version() == actix_web::http::Version::HTTP_11
        && req.head().upgrade()
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("websocket"))
}

/// Sends the handshake and, on 101, relays the connection until either side closes.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    req: &HttpRequest,
    payload: web::Payload,
    server: &Server,
    mut upstream_headers: HeaderMap,
    pool: &PoolTarget,
    claim: InFlight,
    exchange: &mut Exchange,
    log: AccessLog,
) -> Result<HttpResponse, ProxyError> {
    let settings = &pool.settings;
    if let Some(upgrade) = req.headers().get(header::UPGRADE) {
        upstream_headers.insert(header::UPGRADE, upgrade.clone());
    }
    upstream_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let head = request_head(req, &upstream_headers);
    let tls = match req.app_data::<web::Data<Upstreams>>() {
        Some(upstreams) => upstreams.relay_tls(pool),
        None => settings.tls.as_ref().map(tls_context),
    };
    let tls = match tls.transpose() {
        Ok(tls) => tls,
        Err(reason) => {
            let err = ProxyError::Connect(format!("TLS: {reason}"));
            return Err(failed(&claim, pool, err));
        }
    };

    // As for other requests, `connect_timeout` covers the TCP connect and the TLS handshake.
    let deadline = tokio::time::Instant::now() + settings.connect_timeout.get();
    let connect = async {
        let socket = TcpStream::connect(&*server.address)
            .await
            .map_err(|err| ProxyError::Connect(err.to_string()))?;
        // As in the upstream connector: on loopback a connect to a free port can succeed
        // with the socket connected to itself.
        if connector::is_self_connect(socket.local_addr(), socket.peer_addr()) {
            return Err(ProxyError::Connect(connector::SELF_CONNECTED.into()));
        }
        Ok(socket)
    };
    let socket = match by(deadline, connect).await {
        Ok(socket) => socket,
        Err(err) => return Err(failed(&claim, pool, err)),
    };
    let _ = socket.set_nodelay(true);
    let relay = Relay {
        payload,
        head,
        pool,
        claim,
        exchange,
        log,
    };
    let Some(tls) = tls else {
        return relay_over(relay, socket).await;
    };
    match by(deadline, handshake(&tls, socket, server)).await {
        Ok(stream) => relay_over(relay, stream).await,
        Err(err) => Err(failed(&relay.claim, pool, err)),
    }
}

/// `step` by `deadline`, or a connect timeout.
async fn by<T>(
    deadline: tokio::time::Instant,
    step: impl std::future::Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or(Err(ProxyError::ConnectTimeout))
}

/// The TLS handshake with a server of a pool with `[pools.NAME.tls]`: named and verified as
/// for every other request. A failure is a connect failure, reported in OpenSSL's words.
async fn handshake(
    tls: &UpstreamTls,
    socket: TcpStream,
    server: &Server,
) -> Result<SslStream<TcpStream>, ProxyError> {
    let mut stream = tls
        .stream(socket, server.authority.host())
        .map_err(|err| ProxyError::Connect(format!("TLS: {err}")))?;
    match Pin::new(&mut stream).connect().await {
        Ok(()) => Ok(stream),
        Err(err) => Err(ProxyError::Connect(tls.failure(&stream, &err))),
    }
}

/// What a relay needs once its connection to the server is made.
struct Relay<'a> {
    payload: web::Payload,
    /// The request head to send.
    head: Vec<u8>,
    pool: &'a PoolTarget,
    claim: InFlight,
    exchange: &'a mut Exchange,
    log: AccessLog,
}

/// Sends the head over `socket`, plain or TLS; on 101, relays bytes both ways.
async fn relay_over<S>(relay: Relay<'_>, mut socket: S) -> Result<HttpResponse, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Relay {
        payload,
        head,
        pool,
        claim,
        exchange,
        log,
    } = relay;
    let settings = &pool.settings;
    let sent_at = Instant::now();
    let handshake = async {
        socket.write_all(&head).await?;
        read_response_head(&mut socket).await
    };
    let (status, response_headers, leftover) =
        match actix_rt::time::timeout(settings.response_timeout.get(), handshake).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(err)) => {
                return Err(failed(&claim, pool, ProxyError::Upstream(err.to_string())))
            }
            Err(_) => return Err(failed(&claim, pool, ProxyError::ResponseTimeout)),
        };
    exchange.record.status = status.as_u16();
    exchange.record.upstream_status = Some(status.as_u16());
    exchange.record.upstream_time = Some(sent_at.elapsed());

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let length = response_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !switching && length.is_none() && response_headers.contains_key(header::TRANSFER_ENCODING) {
        // A refused handshake answered with a chunked body: not relayed, see docs/architecture.md.
        let err = ProxyError::Upstream("refused upgrade answered with a chunked body".into());
        return Err(failed(&claim, pool, err));
    }
    answered(&claim, pool, status);

    // A TLS stream has no owned halves as a TCP one has: the two share it, a turn each.
    let (upstream_read, mut upstream_write) = tokio::io::split(socket);
    let from_server = stream::once(async move { Ok::<_, std::io::Error>(leftover) })
        .chain(stream::unfold(
            upstream_read,
            |mut upstream_read| async move {
                let mut buf = BytesMut::with_capacity(READ_CHUNK);
                match upstream_read.read_buf(&mut buf).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(buf.freeze()), upstream_read)),
                    Err(err) => Some((Err(err), upstream_read)),
                }
            },
        ))
        .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())));
    let (client_gone, client_gone_rx) = tokio::sync::oneshot::channel::<()>();
    let downstream: ByteStream = match (switching, length) {
        // The relay ends when the server closes, or a grace period after the client has.
        (true, _) => Box::pin(from_server.take_until(async move {
            let _ = client_gone_rx.await;
            actix_rt::time::sleep(CLIENT_GONE_GRACE).await;
        })),
        // A refusal's body ends at its length, whether or not the server then closes.
        (false, Some(length)) => Box::pin(at_most(Box::pin(from_server), length)),
        (false, None) => Box::pin(stream::empty()),
    };
    let idle = if switching {
        settings.upgrade_timeout.get()
    } else {
        settings.response_timeout.get()
    };
    let body = ResponseBody::new(downstream, idle, exchange.completion(log, Some(claim)));

    let mut response = HttpResponse::with_body(
        status,
        match (switching, length) {
            (true, _) => BoxBody::new(BodyStream::new(body)),
            (false, Some(length)) => BoxBody::new(SizedStream::new(length, body)),
            (false, None) => {
                drop(body);
                BoxBody::new(actix_web::body::None::new())
            }
        },
    );
    let mut response_headers = response_headers;
    headers::strip_hop_by_hop(&mut response_headers, switching);
    response_headers.remove(header::CONTENT_LENGTH);
    response_headers.remove(header::SERVER);
    *response.headers_mut() = response_headers;
    if switching {
        // Otherwise actix-http would announce "close, upgrade", which clients reject.
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Upgrade);
        // The client's bytes after the handshake belong to the server from here on.
        actix_rt::spawn(async move {
            let mut payload = payload;
            while let Some(Ok(chunk)) = payload.next().await {
                if upstream_write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = upstream_write.shutdown().await;
            let _ = client_gone.send(());
        });
    }
    Ok(response)
}

/// Bytes from the server's socket, as the client's response body reads them.
type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>>>>;

/// At most `limit` bytes of `inner`.
fn at_most(inner: ByteStream, limit: u64) -> impl Stream<Item = std::io::Result<Bytes>> {
    stream::unfold((inner, limit), |(mut inner, left)| async move {
        if left == 0 {
            return None;
        }
        match inner.next().await? {
            Ok(mut bytes) => {
                if bytes.len() as u64 > left {
                    bytes.truncate(left as usize);
                }
                let left = left - bytes.len() as u64;
                Some((Ok(bytes), (inner, left)))
            }
            Err(err) => Some((Err(err), (inner, 0))),
        }
    })
}

/// Counts a failed handshake against the server, in its counters and in passive detection,
/// as a failed try of any other request is.
fn failed(claim: &InFlight, pool: &PoolTarget, err: ProxyError) -> ProxyError {
    let server = claim.server();
    let reason = err.to_string();
    claim.failed();
    log::warn!(
        "upstream {} in pool {}: upgrade: {reason}",
        server.address,
        pool.name
    );
    let passive = &pool.settings.passive;
    report_failure(&pool.handle.snapshot(), server, &reason, passive);
    err
}

/// Tells passive detection of the server's answer to a handshake: a failure when its status
/// is in `fail_statuses`, as for other requests, else a success.
fn answered(claim: &InFlight, pool: &PoolTarget, status: StatusCode) {
    let server = claim.server();
    let passive = &pool.settings.passive;
    let status = status.as_u16();
    if passive
        .fail_statuses
        .iter()
        .any(|range| range.contains(status))
    {
        claim.failed();
        let reason = format!("status {status}");
        log::debug!(
            "upstream {} in pool {}: upgrade: {reason}",
            server.address,
            pool.name
        );
        report_failure(&pool.handle.snapshot(), server, &reason, passive);
    } else {
        report_success(server);
    }
}

/// The HTTP/1.1 request head for the handshake.
fn request_head(req: &HttpRequest, headers: &HeaderMap) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Reads the server's response head; returns it and any bytes that followed it.
async fn read_response_head(
    socket: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<(StatusCode, HeaderMap, Bytes)> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if socket.read_buf(&mut buf).await? == 0 {
            return Err(invalid("connection closed before the response head"));
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed
            .parse(&buf)
            .map_err(|err| invalid(&err.to_string()))?
        {
            httparse::Status::Complete(head_len) => {
                let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
                    .map_err(|_| invalid("bad status code"))?;
                let mut headers = HeaderMap::new();
                for h in parsed.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| invalid("bad header name"))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| invalid("bad header value"))?;
                    headers.append(name, value);
                }
                let leftover = buf.split_off(head_len).freeze();
                return Ok((status, headers, leftover));
            }
            httparse::Status::Partial if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(invalid("response head too large"));
            }
            httparse::Status::Partial => {}
        }
    }
}
