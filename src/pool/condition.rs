//! What health checks and live traffic say about a server, kept apart from the operator's
//! state: either can take a server out, and only the one that took it out brings it back.
//!
//! The request path reads a server's condition on every pick, so the verdicts are atomics;
//! the failure window behind passive ejection sits behind a mutex taken only on failures
//! and during a trial.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::latency;
use crate::settings::PassiveSettings;

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
    ejection: Mutex<Ejection>,
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
            self.came_back();
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
            _ => self.end_ejection_if_due(),
        }
    }

    fn end_ejection_if_due(&self) -> bool {
        if latency::now() < self.ejected_until.load(Ordering::Relaxed) {
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

    /// A request to the server succeeded: a trial ends with the server back.
    pub fn succeeded(&self, address: &str) {
        if !self.on_trial() {
            return;
        }
        let mut ejection = self.ejection.lock().unwrap_or_else(|e| e.into_inner());
        let back = self
            .passive
            .compare_exchange(
                PassiveVerdict::Trial as u8,
                PassiveVerdict::Healthy as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if back {
            ejection.returned(latency::now());
            self.came_back();
            log::info!(
                "server {address} in pool {}: trial passed, taking traffic again",
                self.pool()
            );
        }
    }

    /// A request to the server failed for `reason`. `may_eject` says whether the pool can
    /// spare one more ejected server (`max_ejected_percent`).
    pub fn failed(&self, address: &str, reason: &str, settings: &PassiveSettings, may_eject: bool) {
        if !settings.enabled {
            return;
        }
        let mut ejection = self.ejection.lock().unwrap_or_else(|e| e.into_inner());
        let now = latency::now();
        let verdict = self.passive();
        if verdict == PassiveVerdict::Ejected {
            // A request that started before the ejection; it changes nothing.
            return;
        }
        let on_trial = verdict == PassiveVerdict::Trial;
        let Some(time) = ejection.failure(now, settings, on_trial, may_eject || on_trial) else {
            return;
        };
        self.ejected_until
            .store(now + time.as_nanos() as u64, Ordering::Relaxed);
        self.passive
            .store(PassiveVerdict::Ejected as u8, Ordering::Relaxed);
        self.returned_at.store(0, Ordering::Relaxed);
        if on_trial {
            log::warn!(
                "server {address} in pool {}: trial failed ({reason}), ejected for {}",
                self.pool(),
                humantime::format_duration(time)
            );
        } else {
            log::warn!(
                "server {address} in pool {}: ejected for {} after {} failures within {} (last: {reason})",
                self.pool(),
                humantime::format_duration(time),
                settings.max_fails,
                humantime::format_duration(settings.fail_timeout.get()),
            );
        }
    }

    /// Forgets passive ejection (the pool turned it off).
    pub fn clear_ejection(&self) {
        self.passive
            .store(PassiveVerdict::Healthy as u8, Ordering::Relaxed);
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner()) = Ejection::default();
    }

    /// The server is taking traffic again after being out: its slow start begins.
    pub fn came_back(&self) {
        self.returned_at
            .store(latency::now().max(1), Ordering::Relaxed);
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
/// row it has been ejected. Times are nanoseconds on one monotonic clock.
#[derive(Debug, Default)]
pub struct Ejection {
    /// Times of the most recent failures, at most `max_fails` of them, oldest first.
    failures: VecDeque<u64>,
    /// Ejections in a row: each lasts twice the one before.
    consecutive: u32,
    /// When the server last came back from an ejection.
    returned_at: Option<u64>,
}

impl Ejection {
    /// Records a failure at `now`; returns how long to eject the server for, if it must go.
    /// A failure on trial ejects at once; otherwise `max_fails` failures within
    /// `fail_timeout` do, when `may_eject`.
    pub fn failure(
        &mut self,
        now: u64,
        settings: &PassiveSettings,
        on_trial: bool,
        may_eject: bool,
    ) -> Option<Duration> {
        let max_fails = settings.max_fails.max(1) as usize;
        let window = settings.fail_timeout.get().as_nanos() as u64;
        self.failures.push_back(now);
        while self.failures.len() > max_fails {
            self.failures.pop_front();
        }
        let tripped =
            self.failures.len() == max_fails && now.saturating_sub(self.failures[0]) <= window;
        if !(on_trial || tripped) || !may_eject {
            return None;
        }
        // An ejection soon after coming back continues the series; a later one starts anew.
        let recent = self
            .returned_at
            .is_some_and(|back| now.saturating_sub(back) <= window);
        if !(on_trial || recent) {
            self.consecutive = 0;
        }
        let time = ejection_time(settings, self.consecutive);
        self.consecutive = self.consecutive.saturating_add(1);
        self.failures.clear();
        Some(time)
    }

    /// The server passed its trial at `now`.
    pub fn returned(&mut self, now: u64) {
        self.returned_at = Some(now);
        self.failures.clear();
    }
}

/// How long the ejection after `previous` consecutive ones lasts: the base time doubled each
/// time, never more than `max_ejection_time`.
fn ejection_time(settings: &PassiveSettings, previous: u32) -> Duration {
    let base = settings.ejection_time.get();
    let max = settings.max_ejection_time.get();
    base.checked_mul(1u32 << previous.min(30))
        .map_or(max, |time| time.min(max))
}

/// How many servers of a pool of `servers` may be ejected at once: `percent` of them rounded
/// down, but at least one in a pool of two or more (as Envoy), and none in a pool of one,
/// which has nowhere else to send its requests.
pub fn ejection_allowance(servers: usize, percent: u8) -> usize {
    if servers < 2 {
        return 0;
    }
    (servers * usize::from(percent) / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Duration as Setting;

    const SECOND: u64 = 1_000_000_000;

    fn settings() -> PassiveSettings {
        PassiveSettings {
            max_fails: 3,
            fail_timeout: Setting::from_secs(10),
            ejection_time: Setting::from_secs(5),
            max_ejection_time: Setting::from_secs(30),
            ..PassiveSettings::default()
        }
    }

    #[test]
    fn max_fails_within_the_window_eject() {
        let mut ejection = Ejection::default();
        let s = settings();
        assert_eq!(ejection.failure(0, &s, false, true), None);
        assert_eq!(ejection.failure(SECOND, &s, false, true), None);
        assert_eq!(
            ejection.failure(2 * SECOND, &s, false, true),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not() {
        let mut ejection = Ejection::default();
        let s = settings();
        for i in 0..10 {
            assert_eq!(ejection.failure(i * 6 * SECOND, &s, false, true), None);
        }
    }

    #[test]
    fn ejections_in_a_row_double_up_to_the_maximum() {
        let mut ejection = Ejection::default();
        let s = settings();
        for now in 0..3 {
            ejection.failure(now, &s, false, true);
        }
        let times: Vec<u64> = (0..4)
            .map(|i| {
                ejection
                    .failure(100 * SECOND + i, &s, true, true)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(times, [10, 20, 30, 30]);
    }

    #[test]
    fn a_server_that_stayed_back_starts_a_new_series() {
        let mut ejection = Ejection::default();
        let s = settings();
        for now in 0..3 {
            ejection.failure(now, &s, false, true);
        }
        ejection.returned(10 * SECOND);
        // Failing again right after its return: the series goes on (10s).
        let soon: Vec<_> = (0..3)
            .filter_map(|i| ejection.failure(11 * SECOND + i, &s, false, true))
            .collect();
        assert_eq!(soon, [Duration::from_secs(10)]);
        ejection.returned(30 * SECOND);
        // Long after: back to the base time.
        let later: Vec<_> = (0..3)
            .filter_map(|i| ejection.failure(100 * SECOND + i, &s, false, true))
            .collect();
        assert_eq!(later, [Duration::from_secs(5)]);
    }

    #[test]
    fn a_pool_at_its_allowance_keeps_the_server() {
        let mut ejection = Ejection::default();
        let s = settings();
        for now in 0..5 {
            assert_eq!(ejection.failure(now, &s, false, false), None);
        }
    }

    #[test]
    fn allowance_rounds_down_but_spares_one() {
        assert_eq!(ejection_allowance(1, 50), 0);
        assert_eq!(ejection_allowance(2, 50), 1);
        assert_eq!(ejection_allowance(3, 50), 1);
        assert_eq!(ejection_allowance(4, 50), 2);
        assert_eq!(ejection_allowance(10, 10), 1);
        assert_eq!(ejection_allowance(10, 100), 10);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_all() {
        let ramp = Duration::from_secs(10);
        assert!((ramp_share(0, ramp) - 0.1).abs() < 1e-9);
        assert!((ramp_share(5 * SECOND, ramp) - 0.55).abs() < 1e-9);
        assert_eq!(ramp_share(20 * SECOND, ramp), 1.0);
        assert_eq!(ramp_share(0, Duration::ZERO), 1.0);
    }

    #[test]
    fn an_ejected_server_goes_on_trial_and_returns_on_success() {
        let condition = Condition::default();
        let mut s = settings();
        s.ejection_time = Setting::from_millis(1);
        s.max_fails = 1;
        condition.failed("10.0.0.1:80", "status 502", &s, true);
        assert_eq!(condition.passive(), PassiveVerdict::Ejected);
        std::thread::sleep(Duration::from_millis(5));
        assert!(condition.admits());
        assert!(condition.on_trial());
        condition.succeeded("10.0.0.1:80");
        assert_eq!(condition.passive(), PassiveVerdict::Healthy);
        assert!(condition.ramp(Duration::from_secs(60)) < 0.2);
    }

    #[test]
    fn probes_and_ejection_each_keep_a_server_out() {
        let condition = Condition::new(ProbeVerdict::Down);
        assert!(!condition.admits());
        assert_eq!(condition.set_probe(ProbeVerdict::Up), ProbeVerdict::Down);
        assert!(condition.admits());
        let s = PassiveSettings {
            max_fails: 1,
            ..settings()
        };
        condition.failed("10.0.0.1:80", "connect error", &s, true);
        assert!(!condition.admits(), "ejected though probes pass");
        condition.clear_ejection();
        assert!(condition.admits());
    }
}
