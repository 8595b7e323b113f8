//! Phase `tries`: the request sent to the picked server and, when the pool's retry settings
//! allow and the try failed in a way that may be retried, to another server not tried yet.
//! Each try's outcome is classified once, for passive detection and for the retry decision.
//! The request body goes up with the framing it came with, counted against the route's
//! `max_body_size` (413) and the client's pace as it streams.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header;
use actix_web::http::uri::{PathAndQuery, Uri};
use actix_web::http::Method;
use actix_web::{web, HttpMessage as _, HttpRequest};
use awc::error::SendRequestError;
use bytes::Bytes;
use futures_util::future::{select, Either};

use super::super::body::{BodyFault, Intake, RequestBody};
use super::super::exchange::{observe, upstream_headers};
use super::super::route::Route;
use super::super::{PoolTarget, ProxyError, RequestCtx, Upstreams};
use crate::conn::UndeclaredBody;
use crate::pool::{self, InFlight, Server};
use crate::settings::{RetryOn, RetrySettings};
use crate::upstream::{Outcome, UpstreamError};

/// The server's answer to the last try, and the claim on that server.
pub struct Answer {
    pub response: awc::ClientResponse,
    pub claim: InFlight,
}

/// Sends the request to the picked server, retrying elsewhere when allowed. One `async`
/// function for every try: each nested future is one more copy of its state per request.
pub async fn tries(
    ctx: &mut RequestCtx<'_>,
    route: &Route<PoolTarget>,
    mut claim: InFlight,
    payload: web::Payload,
    upstreams: &Upstreams,
) -> Result<Answer, ProxyError> {
    let (req, pool) = (ctx.req, &route.target);
    let settings = &pool.settings;
    if settings.retry.attempts > 1 {
        pool.handle.budget().request();
    }
    let framing = RequestFraming::of(req, ctx.declared_length);
    let intake = Intake::new(req, route.max_body_size, &ctx.proxy.security.settings);
    let mut body = OutgoingBody::prepare(payload, framing, intake, &settings.retry).await?;
    let sent_at = ctx.proxy.log.enabled().then(Instant::now);
    let deadline = settings
        .retry
        .per_try_timeout
        .unwrap_or(settings.response_timeout)
        .get();
    let mut tried: Vec<Arc<Server>> = Vec::new();
    let result = loop {
        let client = upstreams.client(pool);
        let uri = upstream_uri(req, claim.server());
        let mut request = client.request(req.method().clone(), uri);
        *request.headers_mut() = upstream_headers(ctx, pool);
        let result = send(request, body.for_try(), deadline).await;
        let status = result.as_ref().map(|response| response.status().as_u16());
        let outcome = Outcome::of(status, &settings.passive.fail_statuses);
        observe(ctx, pool, &claim, &outcome, "");
        let Some(cause) = outcome.retry_cause() else {
            break result;
        };
        if !may_retry(pool, req.method(), cause, &body, tried.len() + 1) {
            break result;
        }
        let Some(snapshot) = &ctx.snapshot else {
            break result;
        };
        tried.push(claim.server().clone());
        match snapshot.pick_other(req, &tried) {
            Ok(next) => {
                log::debug!(
                    "retrying {} {} in pool {} after {}",
                    req.method(),
                    req.uri().path(),
                    pool.name,
                    String::from(cause)
                );
                ctx.record.upstream = Some(tried_list(&tried, next.server()));
                claim = next;
            }
            Err(_) => break result,
        }
    };
    let response = result?;
    claim.observe_head();
    let status = response.status().as_u16();
    ctx.record.status = status;
    ctx.record.upstream_status = Some(status);
    ctx.record.upstream_time = sent_at.map(|t| t.elapsed());
    Ok(Answer { response, claim })
}

/// Whether a try that failed by `cause` may be followed by another. A request whose body
/// was streamed cannot be sent again; one that reached a server is sent again only if its
/// method is idempotent; and the pool's budget must allow one more retry.
fn may_retry(
    pool: &PoolTarget,
    method: &Method,
    cause: RetryOn,
    body: &OutgoingBody,
    tries: usize,
) -> bool {
    let retry = &pool.settings.retry;
    retry_allowed(retry, method, cause, body.replayable(), tries)
        && pool
            .handle
            .budget()
            .try_retry(pool::clock(), retry.budget_percent, retry.budget_floor)
}

/// Whether the retry settings allow one more try after `tries` tries, the last of which
/// failed by `cause`; the budget is asked only after this says yes.
fn retry_allowed(
    retry: &RetrySettings,
    method: &Method,
    cause: RetryOn,
    replayable: bool,
    tries: usize,
) -> bool {
    tries < retry.attempts as usize
        && retry.on.contains(&cause)
        && replayable
        && (cause == RetryOn::ConnectError || is_idempotent(method))
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
            return Err(UpstreamError::Reset("the request body was already sent".into()).into())
        }
    };
    match actix_rt::time::timeout(response_timeout, sending).await {
        Ok(result) => result.map_err(|err| upstream_error(err, None)),
        Err(_) => Err(UpstreamError::ResponseTimeout.into()),
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
        Either::Right(_) => Err(UpstreamError::ResponseTimeout.into()),
    }
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

/// Maps a failed exchange to the error the client sees, blaming the client when its body broke.
fn upstream_error(err: SendRequestError, fault: Option<BodyFault>) -> ProxyError {
    match fault {
        Some(fault) => fault.into(),
        None => UpstreamError::from(err).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(attempts: u32, on: &[RetryOn]) -> RetrySettings {
        RetrySettings {
            attempts,
            on: on.to_vec(),
            ..RetrySettings::default()
        }
    }

    #[test]
    fn a_failed_try_is_retried_only_when_every_rule_allows_it() {
        use RetryOn::{ConnectError, Reset, Timeout};
        let retry = retries(3, &[ConnectError, Timeout, Reset]);
        let (get, post) = (&Method::GET, &Method::POST);
        // (method, cause, body replayable, tries so far) -> allowed
        let table = [
            (get, ConnectError, true, 1, true),
            (get, Timeout, true, 2, true),
            (get, Timeout, true, 3, false),      // attempts used up
            (get, Reset, false, 1, false),       // the body went with the first try
            (post, Timeout, true, 1, false),     // it reached a server and is not idempotent
            (post, ConnectError, true, 1, true), // it never reached one
            (get, RetryOn::Status(503), true, 1, false), // not listed in `on`
        ];
        for (method, cause, replayable, tries, allowed) in table {
            assert_eq!(
                retry_allowed(&retry, method, cause, replayable, tries),
                allowed,
                "{method} after {tries} tries, {}",
                String::from(cause)
            );
        }
        assert!(!retry_allowed(
            &retries(1, &[ConnectError]),
            get,
            ConnectError,
            true,
            1
        ));
    }

    #[test]
    fn idempotent_methods_are_those_of_rfc_9110() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&method), "{method}");
        }
    }
}
