//! What every exchange with a server shares, whether the tries phase forwards it over awc or
//! the WebSocket relay sends it: the request headers the server gets, and how the outcome of
//! one try is reported to passive detection.

use actix_web::http::header::{self, HeaderMap, HeaderValue};

use super::headers::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use super::{PoolTarget, RequestCtx};
use crate::health::passive;
use crate::pool::InFlight;
use crate::upstream::Outcome;

/// `Via` on forwarded requests, per received protocol (RFC 9110 7.6.3).
const VIA_HTTP_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
const VIA_HTTP_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
const VIA_HTTP_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

/// The upstream request's headers: end-to-end headers appended (repeats kept), then the
/// ones gatehouse sets.
pub fn upstream_headers(ctx: &RequestCtx<'_>, pool: &PoolTarget) -> HeaderMap {
    let req = ctx.req;
    let incoming = req.headers();
    let mut out = headers::upstream_request_headers(incoming);
    let host_value = ctx.host.and_then(|host| HeaderValue::from_str(host).ok());
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
    let proto = if ctx.over_tls { "https" } else { "http" };
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let via = match req.version() {
        actix_web::http::Version::HTTP_10 => VIA_HTTP_10,
        actix_web::http::Version::HTTP_2 => VIA_HTTP_2,
        _ => VIA_HTTP_11,
    };
    out.append(header::VIA, via);
    out.insert(X_REQUEST_ID, ctx.request_id.clone());
    out
}

/// Tells passive detection how a try went (`what` names a kind of try in the log line), and
/// counts a failure against the server.
pub fn observe(
    ctx: &RequestCtx<'_>,
    pool: &PoolTarget,
    claim: &InFlight,
    outcome: &Outcome,
    what: &str,
) {
    let server = claim.server();
    if outcome.side().is_none() {
        passive::report_success(server);
        return;
    }
    let Some(reason) = outcome.passive_failure() else {
        return;
    };
    claim.failed();
    // A server answering errors is not news for each request; a broken exchange is.
    let level = match outcome {
        Outcome::Answered { .. } => log::Level::Debug,
        Outcome::Failed { .. } => log::Level::Warn,
    };
    let (address, name) = (&server.address, &pool.name);
    log::log!(level, "upstream {address} in pool {name}: {what}{reason}");
    if let Some(snapshot) = &ctx.snapshot {
        passive::report_failure(snapshot, server, reason, &pool.settings.passive);
    }
}
