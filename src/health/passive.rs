//! Passive ejection: what live traffic's failures and successes decide about a server (the
//! failure window, ejections that double in a row, the trial after one, the pool's
//! `max_ejected_percent`). The request path calls [`report_failure`] and [`report_success`]
//! after each try; the server keeps the outcome as data in its [`Condition`].
//!
//! Decided on the request path, not by an actor: the pick that follows a failure must
//! already see the ejection. The window's mutex is taken only on failures and during a
//! trial; the end of an ejection needs no timer (the first pick that finds it over moves the
//! server to its trial, in `pool/condition.rs`).

use std::time::Duration;

use crate::pool::{clock, Condition, FailureWindow, PassiveVerdict, PoolSnapshot, Server};
use crate::settings::PassiveSettings;

/// A request to `server` succeeded: a trial ends with the server back.
pub fn report_success(server: &Server) {
    // Outside a trial a success changes nothing, and reads no clock.
    if server.condition().on_trial() {
        succeeded(server.condition(), &server.address, clock());
    }
}

/// A request to `server`, of the pool `snapshot`, failed for `reason`: passive detection
/// counts it, and ejects the server if it has failed too often and the pool can spare it
/// (`max_ejected_percent`).
pub fn report_failure(
    snapshot: &PoolSnapshot,
    server: &Server,
    reason: &str,
    settings: &PassiveSettings,
) {
    if !settings.enabled {
        return;
    }
    let ejected = snapshot
        .servers
        .iter()
        .filter(|s| s.condition().passive() == PassiveVerdict::Ejected)
        .count();
    let allowance = ejection_allowance(snapshot.servers.len(), settings.max_ejected_percent);
    failed(
        server.condition(),
        &server.address,
        reason,
        settings,
        ejected < allowance,
        clock(),
    );
}

/// A success of the server at `address` at `now`: ends its trial, if it is on one.
fn succeeded(condition: &Condition, address: &str, now: u64) {
    if !condition.on_trial() {
        return;
    }
    let mut window = condition.window();
    if condition.end_trial() {
        returned(&mut window, now);
        condition.came_back(now);
        log::info!(
            "server {address} in pool {}: trial passed, taking traffic again",
            condition.pool()
        );
    }
}

/// A failure of the server at `address` for `reason` at `now`. `may_eject` says whether the
/// pool can spare one more ejected server (`max_ejected_percent`).
fn failed(
    condition: &Condition,
    address: &str,
    reason: &str,
    settings: &PassiveSettings,
    may_eject: bool,
    now: u64,
) {
    if !settings.enabled {
        return;
    }
    let mut window = condition.window();
    let verdict = condition.passive();
    if verdict == PassiveVerdict::Ejected {
        // A request that started before the ejection; it changes nothing.
        return;
    }
    let on_trial = verdict == PassiveVerdict::Trial;
    let Some(time) = record_failure(&mut window, now, settings, on_trial, may_eject || on_trial)
    else {
        return;
    };
    condition.eject(now + time.as_nanos() as u64);
    if on_trial {
        log::warn!(
            "server {address} in pool {}: trial failed ({reason}), ejected for {}",
            condition.pool(),
            humantime::format_duration(time)
        );
    } else {
        log::warn!(
            "server {address} in pool {}: ejected for {} after {} failures within {} (last: {reason})",
            condition.pool(),
            humantime::format_duration(time),
            settings.max_fails,
            humantime::format_duration(settings.fail_timeout.get()),
        );
    }
}

/// Records a failure at `now` in `window`; returns how long to eject the server for, if it
/// must go. A failure on trial ejects at once; otherwise `max_fails` failures within
/// `fail_timeout` do, when `may_eject`.
fn record_failure(
    window: &mut FailureWindow,
    now: u64,
    settings: &PassiveSettings,
    on_trial: bool,
    may_eject: bool,
) -> Option<Duration> {
    let max_fails = settings.max_fails.max(1) as usize;
    let span = settings.fail_timeout.get().as_nanos() as u64;
    window.failures.push_back(now);
    while window.failures.len() > max_fails {
        window.failures.pop_front();
    }
    let tripped =
        window.failures.len() == max_fails && now.saturating_sub(window.failures[0]) <= span;
    if !(on_trial || tripped) || !may_eject {
        return None;
    }
    // An ejection soon after coming back continues the series; a later one starts anew.
    let recent = window
        .returned_at
        .is_some_and(|back| now.saturating_sub(back) <= span);
    if !(on_trial || recent) {
        window.consecutive = 0;
    }
    let time = ejection_time(settings, window.consecutive);
    window.consecutive = window.consecutive.saturating_add(1);
    window.failures.clear();
    Some(time)
}

/// The server passed its trial at `now`.
fn returned(window: &mut FailureWindow, now: u64) {
    window.returned_at = Some(now);
    window.failures.clear();
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
    use crate::pool::ProbeVerdict;
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
        let mut window = FailureWindow::default();
        let s = settings();
        assert_eq!(record_failure(&mut window, 0, &s, false, true), None);
        assert_eq!(record_failure(&mut window, SECOND, &s, false, true), None);
        assert_eq!(
            record_failure(&mut window, 2 * SECOND, &s, false, true),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not() {
        let mut window = FailureWindow::default();
        let s = settings();
        for i in 0..10 {
            assert_eq!(
                record_failure(&mut window, i * 6 * SECOND, &s, false, true),
                None
            );
        }
    }

    #[test]
    fn ejections_in_a_row_double_up_to_the_maximum() {
        let mut window = FailureWindow::default();
        let s = settings();
        for now in 0..3 {
            record_failure(&mut window, now, &s, false, true);
        }
        let times: Vec<u64> = (0..4)
            .map(|i| {
                record_failure(&mut window, 100 * SECOND + i, &s, true, true)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(times, [10, 20, 30, 30]);
    }

    #[test]
    fn a_server_that_stayed_back_starts_a_new_series() {
        let mut window = FailureWindow::default();
        let s = settings();
        for now in 0..3 {
            record_failure(&mut window, now, &s, false, true);
        }
        returned(&mut window, 10 * SECOND);
        // Failing again right after its return: the series goes on (10s).
        let soon: Vec<_> = (0..3)
            .filter_map(|i| record_failure(&mut window, 11 * SECOND + i, &s, false, true))
            .collect();
        assert_eq!(soon, [Duration::from_secs(10)]);
        returned(&mut window, 30 * SECOND);
        // Long after: back to the base time.
        let later: Vec<_> = (0..3)
            .filter_map(|i| record_failure(&mut window, 100 * SECOND + i, &s, false, true))
            .collect();
        assert_eq!(later, [Duration::from_secs(5)]);
    }

    #[test]
    fn a_pool_at_its_allowance_keeps_the_server() {
        let mut window = FailureWindow::default();
        let s = settings();
        for now in 0..5 {
            assert_eq!(record_failure(&mut window, now, &s, false, false), None);
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
    fn an_ejected_server_goes_on_trial_and_returns_on_success() {
        let condition = Condition::default();
        let mut s = settings();
        s.ejection_time = Setting::from_millis(1);
        s.max_fails = 1;
        let now = clock();
        failed(&condition, "10.0.0.1:80", "status 502", &s, true, now);
        assert_eq!(condition.passive(), PassiveVerdict::Ejected);
        let over = now + 1_000_000;
        assert!(!condition.end_ejection_if_due(over - 1));
        assert!(condition.end_ejection_if_due(over));
        assert!(condition.admits());
        assert!(condition.on_trial());
        succeeded(&condition, "10.0.0.1:80", over);
        assert_eq!(condition.passive(), PassiveVerdict::Healthy);
        assert!(condition.ramp(Duration::from_secs(60)) < 0.2);
    }

    #[test]
    fn each_failed_trial_doubles_the_ejection() {
        let condition = Condition::default();
        let s = PassiveSettings {
            max_fails: 2,
            ejection_time: Setting::from_secs(1),
            max_ejection_time: Setting::from_secs(60),
            ..settings()
        };
        let start = clock();
        failed(&condition, "10.0.0.1:80", "status 502", &s, true, start);
        assert_eq!(condition.passive(), PassiveVerdict::Healthy, "one of two");
        failed(&condition, "10.0.0.1:80", "status 502", &s, true, start + 1);
        assert_eq!(condition.passive(), PassiveVerdict::Ejected, "two of two");
        let mut ejected_at = start + 1;
        for seconds in [1, 2, 4, 8] {
            let over = ejected_at + seconds * SECOND;
            assert!(!condition.end_ejection_if_due(over - 1), "{seconds}s");
            assert_eq!(condition.passive(), PassiveVerdict::Ejected, "{seconds}s");
            // The first look once the ejection is over puts the server on trial...
            assert!(condition.end_ejection_if_due(over), "{seconds}s");
            assert!(condition.on_trial(), "{seconds}s");
            // ...whose one failure ejects it again, for twice as long.
            failed(&condition, "10.0.0.1:80", "status 502", &s, true, over);
            assert_eq!(condition.passive(), PassiveVerdict::Ejected, "{seconds}s");
            ejected_at = over;
        }
    }

    #[test]
    fn a_primary_back_from_its_trial_takes_every_request_from_the_backup() {
        use crate::pool::{PickRequest, ServerOptions};
        use crate::settings::Balance;
        use std::sync::Arc;

        let backup = ServerOptions {
            backup: true,
            ..ServerOptions::default()
        };
        let servers = vec![
            Arc::new(Server::new("10.0.0.1:80", 1).unwrap()),
            Arc::new(Server::with_options("10.0.0.9:80", 1, backup).unwrap()),
        ];
        let pool = Arc::new(PoolSnapshot::new(
            "web".into(),
            Balance::RoundRobin,
            None,
            servers,
        ));
        let pick = || pool.pick_for(&PickRequest::default()).unwrap();
        let picked = || pick().server().address.to_string();
        let primary = pool.servers[0].condition();
        let s = PassiveSettings {
            max_fails: 1,
            ejection_time: Setting::from_secs(60),
            ..settings()
        };
        let start = clock();
        failed(primary, "10.0.0.1:80", "status 502", &s, true, start);
        for _ in 0..5 {
            assert_eq!(picked(), "10.0.0.9:80", "the backup takes over");
        }
        assert!(primary.end_ejection_if_due(start + 60 * SECOND));
        let trial = pick();
        assert_eq!(&*trial.server().address, "10.0.0.1:80", "the trial");
        assert_eq!(picked(), "10.0.0.9:80", "one request at a time on trial");
        succeeded(primary, "10.0.0.1:80", start + 61 * SECOND);
        drop(trial);
        for _ in 0..5 {
            assert_eq!(picked(), "10.0.0.1:80", "handed back");
        }
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
        failed(
            &condition,
            "10.0.0.1:80",
            "connect error",
            &s,
            true,
            clock(),
        );
        assert!(!condition.admits(), "ejected though probes pass");
        condition.clear_ejection();
        assert!(condition.admits());
    }
}
