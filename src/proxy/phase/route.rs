//! Phase `route`: the route for the request's host and path (404), the route's own access
//! lists and rate limits (403, 429), `redirect_https` (308), and the route's body limit
//! against a declared `Content-Length` (413).

use actix_web::http::header;

use super::super::route::Route;
use super::super::{redirect, PoolTarget, ProxyError, RequestCtx};
use super::admit::guard;
use super::Early;

/// The request's route, or the early answer that ends it here.
pub fn route<'r>(ctx: &mut RequestCtx<'r>) -> Result<&'r Route<PoolTarget>, Early> {
    let proxy = ctx.proxy;
    let route = proxy
        .routes
        .find(ctx.host, ctx.req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    if !route.access.is_empty() || !route.rate_limits.is_empty() {
        let edge = &proxy.security.edge;
        guard(ctx.req, ctx.client, &route.access, &route.rate_limits, edge)?;
    }
    if route.redirect_https && !ctx.over_tls {
        if let Some(response) = redirect::redirect(ctx.req, ctx.host) {
            return Err(Early::Answered(Box::new(response)));
        }
    }
    if proxy.log.enabled() {
        ctx.record.route = Some(route.label.clone());
        ctx.record.pool = Some(route.target.name.clone());
    }
    if let (Some(limit), Some(length)) = (route.max_body_size, declared_length(ctx)) {
        if length > limit {
            return Err(ProxyError::BodyTooLarge.into());
        }
    }
    Ok(route)
}

/// The request's `Content-Length`, which actix-http has already checked is a single number.
pub fn declared_length(ctx: &RequestCtx<'_>) -> Option<u64> {
    ctx.req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}
