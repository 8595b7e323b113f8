//! The access checks a request passes, globally in `admit` and per route in `route`: the
//! allow and deny lists, the runtime blocks and the rate limits.

use std::net::IpAddr;

use actix_web::HttpRequest;

use super::ProxyError;
use crate::pool;
use crate::security::{AccessList, EdgeState, RateLimit};

/// The allow and deny lists (403) and rate limits (429) of `[security]` or of a route, and
/// the runtime blocks. Nothing to check costs two loads.
pub fn guard(
    req: &HttpRequest,
    client: Option<IpAddr>,
    access: &AccessList,
    limits: &[RateLimit],
    edge: &EdgeState,
) -> Result<(), ProxyError> {
    if let Some(ip) = client {
        if (!access.is_empty() && !access.admits(ip)) || edge.denies.blocks(ip) {
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
