//! Active health checks (`[pools.NAME.health]`): probes that decide whether a server may take
//! traffic, apart from the operator's state (docs/health.md).
//!
//! Three parts: a pure rise/fall state machine ([`RiseFall`]) with the response rules it is
//! fed by ([`Expectations`]), a probe ([`Probe`], HTTP today), and the [`Checker`] actor that
//! schedules probes, one per pool with checks. Verdicts are written to each server's
//! condition, which the request path reads on every pick.

mod checker;
mod expect;
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
use crate::settings::HealthSettings;

/// Why a pool's health checks could not start or take new settings.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Expect(#[from] ExpectError),
    #[error("the health checker is not running")]
    Stopped,
}

/// A typed handle on one pool's running health checks, with the settings they run on.
#[derive(Clone)]
pub struct HealthHandle {
    addr: Addr<Checker<HttpProbe>>,
    settings: Arc<HealthSettings>,
}

impl HealthHandle {
    /// Starts probing `pool`'s servers on the current arbiter.
    pub fn start(pool: PoolHandle, settings: &HealthSettings) -> Result<Self, HealthError> {
        let probe = HttpProbe::new(settings)?;
        let settings = Arc::new(settings.clone());
        let addr = Checker::new(pool, settings.clone(), probe).start();
        Ok(Self { addr, settings })
    }

    /// The settings the checks run on.
    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// Gives the running checks new settings; counters and verdicts are kept.
    pub async fn retune(&self, settings: &HealthSettings) -> Result<Self, HealthError> {
        let probe = HttpProbe::new(settings)?;
        let settings = Arc::new(settings.clone());
        let msg = Retune {
            settings: settings.clone(),
            probe,
        };
        self.addr
            .send(msg)
            .await
            .map_err(|_| HealthError::Stopped)?;
        Ok(Self {
            addr: self.addr.clone(),
            settings,
        })
    }

    /// Stops the checks; once this returns, they write no more verdicts.
    pub async fn stop(&self) {
        // A checker that is already gone has nothing left to stop.
        let _ = self.addr.send(Stop).await;
    }
}
