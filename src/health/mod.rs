//! Active health checks (`[pools.NAME.health]`): probes that decide whether a server may take
//! traffic, apart from the operator's state (docs/health.md).
//!
//! Three parts: a pure rise/fall state machine ([`RiseFall`]) with the response rules it is
//! fed by ([`Expectations`]), a probe ([`Probe`], HTTP today), and the [`Checker`] actor that
//! schedules probes, one per pool with checks. Verdicts are written to each server's
//! condition, which the request path reads on every pick.
//!
//! Beside them, [`passive`]: what live traffic's failures decide (passive ejection), called
//! by the request path after each try.

mod checker;
mod expect;
pub mod passive;
mod probe;
mod rise_fall;
mod roster;

use std::sync::Arc;

use actix::prelude::*;

pub use checker::{Checker, Retune, Stop};
pub use expect::{ExpectError, Expectations, Mismatch, ProbeResponse};
pub use probe::{HttpProbe, Probe, ProbeFailure, BODY_LIMIT};
pub use rise_fall::{RiseFall, Transition};

use crate::pool::PoolHandle;
use crate::settings::{HealthSettings, UpstreamTlsError, UpstreamTlsSettings};
use crate::upstream::UpstreamTls;

/// Why a pool's health checks could not start or take new settings.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Expect(#[from] ExpectError),
    #[error("TLS to the servers: {0}")]
    Tls(#[from] UpstreamTlsError),
    #[error("the health checker is not running")]
    Stopped,
}

/// A typed handle on one pool's running health checks.
#[derive(Clone)]
pub struct HealthHandle {
    addr: Addr<Checker<HttpProbe>>,
}

/// The probe for a pool's settings, over TLS when the pool has it.
fn probe(
    settings: &HealthSettings,
    tls: Option<&UpstreamTlsSettings>,
) -> Result<HttpProbe, HealthError> {
    let tls = tls.map(UpstreamTls::new).transpose()?.map(Arc::new);
    Ok(HttpProbe::new(settings)?.with_tls(tls))
}

/// A pool's health checks ready to start, or to retune the running ones with: the probe is
/// built (expectations compiled, TLS context loaded), so nothing can fail after this.
pub struct PreparedChecks {
    settings: Arc<HealthSettings>,
    probe: HttpProbe,
}

impl PreparedChecks {
    /// Builds the probe for `settings`, over the pool's `tls`; fails as starting would.
    pub fn new(
        settings: &HealthSettings,
        tls: Option<&UpstreamTlsSettings>,
    ) -> Result<Self, HealthError> {
        Ok(Self {
            probe: probe(settings, tls)?,
            settings: Arc::new(settings.clone()),
        })
    }
}

impl HealthHandle {
    /// Starts probing `pool`'s servers on the current arbiter.
    pub fn start(pool: PoolHandle, checks: PreparedChecks) -> Self {
        let addr = Checker::new(pool, checks.settings, checks.probe).start();
        Self { addr }
    }

    /// Gives the running checks new settings; counters and verdicts are kept.
    pub async fn retune(&self, checks: PreparedChecks) -> Result<(), HealthError> {
        let msg = Retune {
            settings: checks.settings,
            probe: checks.probe,
        };
        self.addr.send(msg).await.map_err(|_| HealthError::Stopped)
    }

    /// Stops the checks; once this returns, they write no more verdicts.
    pub async fn stop(&self) {
        // A checker that is already gone has nothing left to stop.
        let _ = self.addr.send(Stop).await;
    }
}
