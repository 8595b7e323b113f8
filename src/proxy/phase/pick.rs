//! Phase `pick`: the server for the request — the one its session is bound to when the pool
//! keeps sessions and that server can take it, else the balancer's choice (503 when none can).
//! When every server is at its `max_connections`, the request waits up to the pool's
//! `queue_timeout` for a free slot.

use std::sync::Arc;
use std::time::Duration;

// Tokio's instant: the queue's deadline runs on the runtime's clock, which tests pause.
use actix_rt::time::Instant;

use super::super::{PoolTarget, ProxyError, RequestCtx};
use crate::affinity::Session;
use crate::pool::{InFlight, PickError, PoolSnapshot};

/// How often a request queued for a full pool looks for a free slot again. Queueing happens
/// only when every server is at its `max_connections`, so the polling costs nothing otherwise.
const QUEUE_POLL: Duration = Duration::from_millis(5);

/// A server claimed for the request, and the session it belongs to (sticky pools).
pub struct Picked {
    pub claim: InFlight,
    pub session: Option<Session>,
}

/// Claims a server of `pool` for the request, or says to wait in [`queued`] when every
/// server is at its limit. The pool's snapshot is loaded here, once, and kept in the context
/// for the tries. Not `async`: nearly every request is picked at once, and a future would be
/// one more copy of the request's state.
pub fn pick(ctx: &mut RequestCtx<'_>, pool: &PoolTarget) -> Result<Picked, Wait> {
    let snapshot = arc_swap::Guard::into_inner(pool.handle.snapshot());
    let session = pool
        .affinity
        .as_ref()
        .map(|affinity| affinity.lookup(ctx.req, &snapshot));
    let claim = match bound_claim(&snapshot, pool, session.as_ref()) {
        Some(claim) => claim,
        None => match snapshot.pick(ctx.req) {
            Ok(claim) => claim,
            Err(PickError::Saturated) => return Err(Wait::Saturated(session)),
            Err(PickError::Unavailable) => return Err(Wait::Refused(ProxyError::NoServer)),
        },
    };
    Ok(picked(ctx, snapshot, claim, session))
}

/// Why [`pick`] found no server now.
pub enum Wait {
    /// Every server is at its limit: wait in [`queued`] (with the request's session).
    Saturated(Option<Session>),
    /// None can take the request.
    Refused(ProxyError),
}

/// Waits up to the pool's `queue_timeout` for a server with a free slot, looking at the pool
/// as it is each time.
pub async fn queued(
    ctx: &mut RequestCtx<'_>,
    pool: &PoolTarget,
    session: Option<Session>,
) -> Result<Picked, ProxyError> {
    let deadline = Instant::now() + pool.settings.queue_timeout.get();
    loop {
        if Instant::now() >= deadline {
            return Err(ProxyError::NoServer);
        }
        actix_rt::time::sleep(QUEUE_POLL).await;
        let snapshot = arc_swap::Guard::into_inner(pool.handle.snapshot());
        match snapshot.pick(ctx.req) {
            Ok(claim) => return Ok(picked(ctx, snapshot, claim, session)),
            Err(PickError::Saturated) => {}
            Err(PickError::Unavailable) => return Err(ProxyError::NoServer),
        }
    }
}

/// The claim made, noted in the log record and the context.
fn picked(
    ctx: &mut RequestCtx<'_>,
    snapshot: Arc<PoolSnapshot>,
    claim: InFlight,
    session: Option<Session>,
) -> Picked {
    ctx.record.upstream = Some(claim.server().address.clone());
    ctx.snapshot = Some(snapshot);
    Picked { claim, session }
}

/// The server a session is bound to, if it can take the request.
fn bound_claim(
    snapshot: &Arc<PoolSnapshot>,
    pool: &PoolTarget,
    session: Option<&Session>,
) -> Option<InFlight> {
    let address = session?.bound.as_deref()?;
    snapshot.claim_bound(address, pool.settings.drain_timeout.get())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use actix_web::HttpResponse;

    use tokio::time::Instant;

    use super::*;
    use crate::proxy::test_proxy;

    /// A pool of one server that takes one request at a time.
    fn full_pool(queue_timeout: &str) -> String {
        format!(
            r#"
            [[routes]]
            path = "/"
            pool = "web"
            [pools.web]
            queue_timeout = "{queue_timeout}"
            servers = [{{ address = "127.0.0.1:9001", max_connections = 1 }}]
            "#
        )
    }

    /// The pick as the request path makes it: at once, else queued.
    async fn pick_or_wait(
        ctx: &mut RequestCtx<'_>,
        pool: &PoolTarget,
    ) -> Result<Picked, ProxyError> {
        match pick(ctx, pool) {
            Ok(picked) => Ok(picked),
            Err(Wait::Saturated(session)) => queued(ctx, pool, session).await,
            Err(Wait::Refused(err)) => Err(err),
        }
    }

    async fn pick_for_get(proxy: &crate::proxy::Proxy) -> Result<Picked, ProxyError> {
        let req = TestRequest::get().to_http_request();
        pick_or_wait(&mut RequestCtx::new(&req, proxy), &proxy.pools[0]).await
    }

    #[actix_rt::test]
    async fn a_queued_request_gets_no_server_when_queue_timeout_passes() {
        let proxy = test_proxy(&full_pool("200ms")).await;
        tokio::time::pause();
        let _held = pick_for_get(&proxy).await.expect("the free slot");
        let queued = Instant::now();
        let refused = pick_for_get(&proxy).await;
        assert!(matches!(refused, Err(ProxyError::NoServer)));
        let waited = queued.elapsed();
        let timeout = Duration::from_millis(200);
        assert!(
            waited >= timeout && waited <= timeout + QUEUE_POLL,
            "{waited:?}"
        );
    }

    #[actix_rt::test]
    async fn a_queued_request_takes_the_slot_freed_before_queue_timeout() {
        let proxy = test_proxy(&full_pool("10s")).await;
        tokio::time::pause();
        let held = pick_for_get(&proxy).await.expect("the free slot");
        let queued = Instant::now();
        let release = async move {
            actix_rt::time::sleep(Duration::from_millis(500)).await;
            drop(held);
        };
        let (picked, ()) = futures_util::future::join(pick_for_get(&proxy), release).await;
        assert!(picked.is_ok(), "the freed slot");
        let waited = queued.elapsed();
        let freed = Duration::from_millis(500);
        assert!(
            waited >= freed && waited <= freed + QUEUE_POLL,
            "{waited:?}"
        );
    }

    const STICKY: &str = r#"
        [[routes]]
        path = "/"
        pool = "web"
        [pools.web]
        servers = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }]
        [pools.web.sticky]
        mode = "header"
        header_name = "x-session"
    "#;

    /// Picks for a request carrying `session` (or none), binds the session to the server as
    /// the respond phase does, and names the server.
    async fn served(proxy: &crate::proxy::Proxy, session: Option<&str>) -> String {
        let mut request = TestRequest::get();
        if let Some(session) = session {
            request = request.insert_header(("x-session", session));
        }
        let req = request.to_http_request();
        let mut ctx = RequestCtx::new(&req, proxy);
        let pool = &proxy.pools[0];
        let Picked { claim, session } = pick_or_wait(&mut ctx, pool).await.expect("a server");
        let affinity = pool.affinity.as_ref().expect("the pool is sticky");
        if let Some(session) = &session {
            affinity.bind(session, claim.server(), &mut HttpResponse::Ok().finish());
        }
        assert!(ctx.snapshot.is_some(), "the snapshot is kept for the tries");
        claim.server().address.to_string()
    }

    #[actix_rt::test]
    async fn a_bound_session_keeps_its_server_and_others_are_balanced() {
        let proxy = test_proxy(STICKY).await;
        let first = served(&proxy, Some("cart-1")).await;
        for _ in 0..4 {
            assert_eq!(served(&proxy, Some("cart-1")).await, first);
        }
        // Without a session the balancer alternates as round robin does.
        let a = served(&proxy, None).await;
        let b = served(&proxy, None).await;
        assert_ne!(a, b);
    }

    #[actix_rt::test]
    async fn a_session_whose_server_cannot_take_it_moves_and_stays_moved() {
        let proxy = test_proxy(STICKY).await;
        let first = served(&proxy, Some("cart-2")).await;
        let pool = &proxy.pools[0];
        let server = pool.handle.server(&first).expect("the bound server");
        server
            .condition()
            .set_probe(crate::pool::ProbeVerdict::Down);
        let moved = served(&proxy, Some("cart-2")).await;
        assert_ne!(moved, first);
        server.condition().set_probe(crate::pool::ProbeVerdict::Up);
        assert_eq!(served(&proxy, Some("cart-2")).await, moved);
    }
}
