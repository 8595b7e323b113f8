//! What health checks and live traffic say about a server, kept apart from the operator's
//! state: either can take a server out, and only the one that took it out brings it back.
//!
//! The request path reads a server's condition on every pick, so the verdicts are atomics;
//! the failure window behind passive ejection sits behind a mutex taken only on failures
//! and during a trial.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use super::latency;

/// What active health checks say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVerdict {
    /// The pool has no health checks.
    Unchecked = 0,
    Up = 1,
    Down = 2,
}

impl ProbeVerdict {
    /// The verdict an atomic holds as its discriminant.
    fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Unchecked,
        }
    }
}

/// What live traffic says (passive detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PassiveVerdict {
    Healthy = 0,
    /// Takes no requests until `ejected_until`.
    Ejected = 1,
    /// Back on probation: one request at a time, whose outcome decides.
    Trial = 2,
}

/// The last probe of a server, for the admin API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeReport {
    pub passed: bool,
    /// Why it failed (`status 500`, `body mismatch`, ...) or `ok`.
    pub detail: String,
    /// When it finished, in seconds since the Unix epoch.
    pub at: u64,
    pub consecutive_passes: u32,
    pub consecutive_failures: u32,
}

/// A server's health, shared by every object that stands for the same server across
/// membership changes (as its counters are).
#[derive(Debug, Default)]
pub struct Condition {
    /// The pool and address of the server, for log lines written on the request path.
    owner: OnceLock<(Arc<str>, Arc<str>)>,
    probe: AtomicU8,
    passive: AtomicU8,
    /// End of the current ejection, on the [`latency`] clock.
    ejected_until: AtomicU64,
    /// When the server last came back, on the [`latency`] clock; 0 when it is not ramping up.
    returned_at: AtomicU64,
    window: Mutex<FailureWindow>,
    last_probe: Mutex<Option<ProbeReport>>,
}

impl Condition {
    /// A condition whose probe verdict starts as `probe`.
    pub fn new(probe: ProbeVerdict) -> Self {
        let condition = Self::default();
        condition.probe.store(probe as u8, Ordering::Relaxed);
        condition
    }

    /// Names the pool and the server's address for log lines; the first names given stick.
    pub fn set_owner(&self, pool: &Arc<str>, address: &Arc<str>) {
        let _ = self.owner.set((pool.clone(), address.clone()));
    }

    /// The name of the pool the server belongs to.
    pub fn pool(&self) -> &str {
        self.owner.get().map_or("?", |(pool, _)| pool)
    }

    fn address(&self) -> &str {
        self.owner.get().map_or("?", |(_, address)| address)
    }

    pub fn probe(&self) -> ProbeVerdict {
        ProbeVerdict::from_byte(self.probe.load(Ordering::Relaxed))
    }

    /// Records the active checks' verdict and returns the one it replaced. A server that
    /// probes bring back starts its slow start.
    pub fn set_probe(&self, verdict: ProbeVerdict) -> ProbeVerdict {
        let before = self.probe.swap(verdict as u8, Ordering::Relaxed);
        if before == ProbeVerdict::Down as u8 && verdict != ProbeVerdict::Down {
            self.came_back(latency::now());
        }
        ProbeVerdict::from_byte(before)
    }

    pub fn set_last_probe(&self, report: ProbeReport) {
        *self.last_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    pub fn last_probe(&self) -> Option<ProbeReport> {
        self.last_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn passive(&self) -> PassiveVerdict {
        match self.passive.load(Ordering::Relaxed) {
            1 => PassiveVerdict::Ejected,
            2 => PassiveVerdict::Trial,
            _ => PassiveVerdict::Healthy,
        }
    }

    /// When the current ejection ends, if the server is ejected.
    pub fn ejected_until(&self) -> Option<SystemTime> {
        if self.passive() != PassiveVerdict::Ejected {
            return None;
        }
        let left = self
            .ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(latency::now());
        Some(SystemTime::now() + Duration::from_nanos(left))
    }

    /// Whether health checks and live traffic let the server take new requests. An ejection
    /// that has run out turns into a trial here, the first time anyone looks.
    pub fn admits(&self) -> bool {
        if self.probe.load(Ordering::Relaxed) == ProbeVerdict::Down as u8 {
            return false;
        }
        match self.passive.load(Ordering::Relaxed) {
            0 | 2 => true,
            _ => self.end_ejection_if_due(latency::now()),
        }
    }

    /// Whether an ejection is over at `now` (on the pool clock); one that is turns into a
    /// trial here.
    pub fn end_ejection_if_due(&self, now: u64) -> bool {
        if now < self.ejected_until.load(Ordering::Relaxed) {
            return false;
        }
        let ended = self
            .passive
            .compare_exchange(
                PassiveVerdict::Ejected as u8,
                PassiveVerdict::Trial as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if ended {
            log::info!(
                "server {} in pool {}: ejection over, on trial",
                self.address(),
                self.pool()
            );
        }
        true
    }

    /// Whether the server is on trial, when it takes one request at a time.
    pub fn on_trial(&self) -> bool {
        self.passive.load(Ordering::Relaxed) == PassiveVerdict::Trial as u8
    }

    /// The failures passive detection remembers, locked: taken only on failures and during
    /// a trial.
    pub fn window(&self) -> MutexGuard<'_, FailureWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the server out until `until` (on the pool clock, [`crate::pool::clock`]); its slow start, if it
    /// was ramping, is over.
    pub fn eject(&self, until: u64) {
        self.ejected_until.store(until, Ordering::Relaxed);
        self.passive
            .store(PassiveVerdict::Ejected as u8, Ordering::Relaxed);
        self.returned_at.store(0, Ordering::Relaxed);
    }

    /// Ends a trial with the server back; false if it was not on trial (another request
    /// ended it first).
    pub fn end_trial(&self) -> bool {
        self.passive
            .compare_exchange(
                PassiveVerdict::Trial as u8,
                PassiveVerdict::Healthy as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Forgets passive ejection (the pool turned it off).
    pub fn clear_ejection(&self) {
        self.passive
            .store(PassiveVerdict::Healthy as u8, Ordering::Relaxed);
        *self.window() = FailureWindow::default();
    }

    /// The server is taking traffic again after being out, since `now` (on the pool clock):
    /// its slow start begins.
    pub fn came_back(&self, now: u64) {
        self.returned_at.store(now.max(1), Ordering::Relaxed);
    }

    /// The share of its weight the server should get now, over a slow start of `ramp`:
    /// from a tenth to all of it. 1.0 once the ramp is over (and then no clock is read).
    pub fn ramp(&self, ramp: Duration) -> f64 {
        let since = self.returned_at.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let share = ramp_share(latency::now().saturating_sub(since), ramp);
        if share >= 1.0 {
            let _ =
                self.returned_at
                    .compare_exchange(since, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        share
    }
}

/// The share of weight `elapsed` nanoseconds into a slow start of `ramp`.
fn ramp_share(elapsed: u64, ramp: Duration) -> f64 {
    if ramp.is_zero() {
        return 1.0;
    }
    let progress = elapsed as f64 / ramp.as_nanos() as f64;
    (0.1 + 0.9 * progress).min(1.0)
}

/// Passive detection's memory of one server: its recent failures and how many times in a
/// row it has been ejected. Times are nanoseconds on the pool clock ([`crate::pool::clock`]). Plain data: what
/// the failures mean is decided in `health/passive.rs`.
#[derive(Debug, Default)]
pub struct FailureWindow {
    /// Times of the most recent failures, at most `max_fails` of them, oldest first.
    pub failures: VecDeque<u64>,
    /// Ejections in a row: each lasts twice the one before.
    pub consecutive: u32,
    /// When the server last came back from an ejection.
    pub returned_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn slow_start_ramps_from_a_tenth_to_all() {
        let ramp = Duration::from_secs(10);
        assert!((ramp_share(0, ramp) - 0.1).abs() < 1e-9);
        assert!((ramp_share(5 * SECOND, ramp) - 0.55).abs() < 1e-9);
        assert_eq!(ramp_share(20 * SECOND, ramp), 1.0);
        assert_eq!(ramp_share(0, Duration::ZERO), 1.0);
    }
}
