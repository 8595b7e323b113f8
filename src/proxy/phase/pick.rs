//! Phase `pick`: the server for the request — the one its session is bound to when the pool
//! keeps sessions and that server can take it, else the balancer's choice (503 when none can).
//! When every server is at its `max_connections`, the request waits up to the pool's
//! `queue_timeout` for a free slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Claims a server of `pool` for the request. The pool's snapshot is loaded here, once, and
/// kept in the context for the tries.
pub async fn pick(ctx: &mut RequestCtx<'_>, pool: &PoolTarget) -> Result<Picked, ProxyError> {
    let snapshot = arc_swap::Guard::into_inner(pool.handle.snapshot());
    let session = pool
        .affinity
        .as_ref()
        .map(|affinity| affinity.lookup(ctx.req, &snapshot));
    let (claim, snapshot) = match bound_claim(&snapshot, pool, session.as_ref()) {
        Some(claim) => (claim, snapshot),
        None => balanced(ctx, pool, snapshot).await?,
    };
    ctx.record.upstream = Some(claim.server().address.clone());
    ctx.snapshot = Some(snapshot);
    Ok(Picked { claim, session })
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

/// The balancer's choice and the snapshot it was made in; while the pool is saturated,
/// looked for again in the pool as it is then.
async fn balanced(
    ctx: &RequestCtx<'_>,
    pool: &PoolTarget,
    mut current: Arc<PoolSnapshot>,
) -> Result<(InFlight, Arc<PoolSnapshot>), ProxyError> {
    let mut deadline = None;
    loop {
        match current.pick(ctx.req) {
            Ok(claim) => return Ok((claim, current)),
            Err(PickError::Saturated) => {
                let queue_timeout = pool.settings.queue_timeout.get();
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + queue_timeout);
                if Instant::now() >= deadline {
                    return Err(ProxyError::NoServer);
                }
                actix_rt::time::sleep(QUEUE_POLL).await;
                current = arc_swap::Guard::into_inner(pool.handle.snapshot());
            }
            Err(PickError::Unavailable) => return Err(ProxyError::NoServer),
        }
    }
}
