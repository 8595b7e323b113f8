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
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::ResponseBody;
use super::exchange::{observe, upstream_headers};
use super::headers;
use super::{PoolTarget, ProxyError, RequestCtx, Upstreams};
use crate::pool::InFlight;
use crate::upstream::{self, head, Outcome, UpstreamError, Wire};

/// Header slots for a handshake's response head: as many as awc reads for other responses.
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
pub async fn relay(
    ctx: &mut RequestCtx<'_>,
    payload: web::Payload,
    pool: &PoolTarget,
    claim: InFlight,
    upstreams: &Upstreams,
) -> Result<HttpResponse, ProxyError> {
    let req = ctx.req;
    let server = claim.server().clone();
    let server = &*server;
    let mut upstream_headers = upstream_headers(ctx, pool);
    let settings = &pool.settings;
    if let Some(upgrade) = req.headers().get(header::UPGRADE) {
        upstream_headers.insert(header::UPGRADE, upgrade.clone());
    }
    upstream_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let head = request_head(req, &upstream_headers);
    let tls = upstreams.relay_tls(pool);
    let tls = match tls.as_ref().map(upstream::usable_tls).transpose() {
        Ok(tls) => tls,
        Err(err) => return Err(failed(ctx, &claim, pool, err)),
    };
    // As for other requests, `connect_timeout` covers the TCP connect and the TLS handshake.
    let connecting = upstream::connect_within(
        settings.connect_timeout.get(),
        &server.address,
        tls.as_deref(),
        server.authority.host(),
    );
    let wire = match connecting.await {
        Ok(wire) => wire,
        Err(err) => return Err(failed(ctx, &claim, pool, err)),
    };
    let relay = Relay {
        payload,
        head,
        pool,
        claim,
        ctx,
    };
    relay_over(relay, wire).await
}

/// What a relay needs once its connection to the server is made.
struct Relay<'a, 'b> {
    payload: web::Payload,
    /// The request head to send.
    head: Vec<u8>,
    pool: &'a PoolTarget,
    claim: InFlight,
    ctx: &'a mut RequestCtx<'b>,
}

/// Sends the head over `socket`, plain or TLS; on 101, relays bytes both ways.
async fn relay_over(relay: Relay<'_, '_>, mut socket: Wire) -> Result<HttpResponse, ProxyError> {
    let Relay {
        payload,
        head,
        pool,
        claim,
        ctx,
    } = relay;
    let settings = &pool.settings;
    let sent_at = Instant::now();
    let handshake = async {
        socket
            .write_all(&head)
            .await
            .map_err(|err| UpstreamError::Reset(err.to_string()))?;
        read_response_head(&mut socket).await
    };
    let (status, response_headers, leftover) =
        match actix_rt::time::timeout(settings.response_timeout.get(), handshake).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(err)) => return Err(failed(ctx, &claim, pool, err)),
            Err(_) => {
                let err = UpstreamError::ResponseTimeout;
                return Err(failed(ctx, &claim, pool, err));
            }
        };
    ctx.record.status = status.as_u16();
    ctx.record.upstream_status = Some(status.as_u16());
    ctx.record.upstream_time = Some(sent_at.elapsed());

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let length = headers::content_length(&response_headers);
    if !switching && length.is_none() && response_headers.contains_key(header::TRANSFER_ENCODING) {
        // A refused handshake answered with a chunked body: not relayed, see docs/architecture.md.
        let err = UpstreamError::Reset("refused upgrade answered with a chunked body".into());
        return Err(failed(ctx, &claim, pool, err));
    }
    let fail_statuses = &settings.passive.fail_statuses;
    let outcome = Outcome::answered(status.as_u16(), fail_statuses);
    observe(ctx, pool, &claim, &outcome, UPGRADE);

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
    let body = ResponseBody::new(downstream, idle, ctx.finish(Some(claim)));

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
    // The header rules are the respond phase's.
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

/// How a handshake's try is named in passive detection's log lines.
const UPGRADE: &str = "upgrade: ";

/// Counts a failed handshake against the server, as a failed try of any other request is.
fn failed(
    ctx: &RequestCtx<'_>,
    claim: &InFlight,
    pool: &PoolTarget,
    err: UpstreamError,
) -> ProxyError {
    observe(ctx, pool, claim, &Outcome::failed(&err), UPGRADE);
    err.into()
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
    socket: &mut Wire,
) -> Result<(StatusCode, HeaderMap, Bytes), UpstreamError> {
    let mut buf = BytesMut::with_capacity(4096);
    let (status, headers) = head::read_final::<MAX_RESPONSE_HEADERS, _>(socket, &mut buf, |head| {
        Ok((head.status_code()?, head.header_map()?))
    })
    .await?;
    Ok((status, headers, buf.freeze()))
}
