//! The request path: a request goes through the phases in [`phase`], in order, over one
//! [`RequestCtx`]; [`handle`] is the whole path in a few lines. [`Proxy`] is the state every
//! request reads, published whole by the Supervisor.

mod access;
mod body;
mod context;
mod error;
mod exchange;
mod headers;
mod hide;
pub mod phase;
mod redirect;
pub mod route;
mod strict;
mod upgrade;
mod upstreams;

use std::sync::Arc;

use actix_web::body::{BodySize, MessageBody as _};
use actix_web::http::header::HeaderValue;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

pub use context::RequestCtx;
pub use error::ProxyError;
pub use upstreams::Upstreams;

use crate::access_log::AccessLog;
use crate::affinity::Affinity;
use crate::compression::Compression;
use crate::pool::PoolHandle;
use crate::security::{EdgeState, RateLimit, Security};
use crate::settings::{PoolSettings, Settings, StatusRange};
use phase::pick::{Picked, Wait};
use phase::respond::{self, Source};
use phase::Early;
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
    /// `[security]`'s `intercept_errors`; routes may replace it.
    pub intercept_errors: Vec<StatusRange>,
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
            intercept_errors: settings.security.intercept_errors.clone(),
        })
    }
}

/// The request path's state as published: swapped whole by a reload, read per request.
pub type SharedProxy = arc_swap::ArcSwap<Proxy>;

/// The handler for every request on a client listener: the phases in order.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<SharedProxy>,
    upstreams: web::Data<Upstreams>,
) -> HttpResponse {
    let proxy = shared.load_full();
    let mut ctx = RequestCtx::new(&req, &proxy);
    let (mut response, source) = match serve(&mut ctx, payload, &upstreams).await {
        Ok(reply) => reply,
        Err(Early::Answered(response)) => {
            ctx.record.status = response.status().as_u16();
            ctx.finish(None).finish(0);
            (*response, Source::Own)
        }
        Err(Early::Refused(err)) => (refuse(&mut ctx, &err), Source::Own),
    };
    respond::header_rules(&mut ctx, &mut response, source);
    response
}

/// Phases `admit` to `respond`; `finish` runs when the response body ends.
async fn serve<'r>(
    ctx: &mut RequestCtx<'r>,
    payload: web::Payload,
    upstreams: &Upstreams,
) -> Result<(HttpResponse, Source<'r>), Early> {
    phase::admit::admit(ctx)?;
    let route = phase::route::route(ctx)?;
    // A cache lookup goes here: a fresh stored response is answered without a server.
    let Picked { claim, session } = match phase::pick::pick(ctx, &route.target) {
        Ok(picked) => picked,
        Err(Wait::Saturated(session)) => phase::pick::queued(ctx, &route.target, session).await?,
        Err(Wait::Refused(err)) => return Err(err.into()),
    };
    if upgrade::is_websocket(ctx.req) {
        let response = upgrade::relay(ctx, payload, &route.target, claim, upstreams).await?;
        return Ok((response, Source::Upgraded));
    }
    let answer = phase::tries::tries(ctx, route, claim, payload, upstreams).await?;
    Ok(respond::proxied(ctx, route, answer, session))
}

/// Gatehouse's own error page for `err`, logged; a request body a slow client left unread is
/// held until the page is sent, so the connection closes after it.
fn refuse(ctx: &mut RequestCtx<'_>, err: &ProxyError) -> HttpResponse {
    log::debug!("{} {}: {err}", ctx.req.method(), ctx.req.uri());
    let response = err.error_response();
    ctx.record.status = response.status().as_u16();
    let sent = match response.body().size() {
        BodySize::Sized(n) => n,
        _ => 0,
    };
    ctx.finish(None).finish(sent);
    body::holding_unread(ctx.req, response)
}

/// The request path's state built from settings, with running pools and their servers, for
/// unit tests of the phases (inside an actix system: the pools are actors).
#[cfg(test)]
pub(crate) async fn test_proxy(toml: &str) -> Proxy {
    let settings = crate::settings::from_toml(toml);
    let mut pools = Vec::new();
    for (index, (name, pool)) in settings.pools.iter().enumerate() {
        let handle = PoolHandle::from_settings(name, pool)
            .await
            .expect("test pools start");
        let affinity = pool
            .sticky
            .as_ref()
            .map(|sticky| Arc::new(Affinity::new(sticky)));
        pools.push(PoolTarget::new(
            index,
            name,
            handle,
            Arc::new(pool.clone()),
            affinity,
        ));
    }
    Proxy::new(&settings, pools, Arc::default()).expect("test routes name their pools")
}
