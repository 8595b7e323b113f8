//! The servers a pool's health checks follow, each with its rise/fall counter and where its
//! probing stands; what a probe's outcome does to the server. Plain state that the checker
//! actor drives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::SpawnHandle;

use super::probe::ProbeFailure;
use super::rise_fall::{RiseFall, Transition};
use crate::pool::{ProbeReport, ProbeVerdict, Server};
use crate::settings::HealthSettings;

/// Names one server's checks: its address, and which time it joined, so that a probe
/// started for a server that has since left (or left and joined again) is not counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub address: Arc<str>,
    generation: u64,
}

/// One followed server.
#[derive(Debug)]
struct Followed {
    server: Arc<Server>,
    generation: u64,
    counter: RiseFall,
    /// The timer for its next probe, while one is waiting.
    timer: Option<SpawnHandle>,
}

/// What [`Roster::sync`] found.
#[derive(Debug, Default)]
pub struct Sync {
    /// Servers to start probing.
    pub joined: Vec<Key>,
    /// Timers to cancel, of servers no longer followed.
    pub cancel: Vec<SpawnHandle>,
}

/// The followed servers of one pool, by address.
#[derive(Debug, Default)]
pub struct Roster {
    servers: HashMap<Arc<str>, Followed>,
    next_generation: u64,
}

impl Roster {
    /// Follows the pool's `current` servers: starts on those that joined (or came back as a
    /// new server at the same address), drops those that left. A server whose entry changed
    /// keeps its counters and stays followed: it shares them with its predecessor.
    pub fn sync(&mut self, current: &[Arc<Server>]) -> Sync {
        let mut sync = Sync::default();
        self.servers.retain(|address, followed| {
            let kept = current
                .iter()
                .any(|s| s.address == *address && Arc::ptr_eq(&s.stats, &followed.server.stats));
            if !kept {
                sync.cancel.extend(followed.timer.take());
            }
            kept
        });
        for server in current {
            if self.servers.contains_key(&server.address) {
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            let up = server.condition().probe() != ProbeVerdict::Down;
            self.servers.insert(
                server.address.clone(),
                Followed {
                    server: server.clone(),
                    generation,
                    counter: RiseFall::new(up),
                    timer: None,
                },
            );
            sync.joined.push(Key {
                address: server.address.clone(),
                generation,
            });
        }
        sync
    }

    /// Stops following every server; returns their timers to cancel.
    pub fn clear(&mut self) -> Vec<SpawnHandle> {
        self.servers
            .drain()
            .filter_map(|(_, mut followed)| followed.timer.take())
            .collect()
    }

    fn get(&mut self, key: &Key) -> Option<&mut Followed> {
        self.servers
            .get_mut(&key.address)
            .filter(|followed| followed.generation == key.generation)
    }

    /// Notes the timer for `key`'s next probe.
    pub fn set_timer(&mut self, key: &Key, timer: SpawnHandle) {
        if let Some(followed) = self.get(key) {
            followed.timer = Some(timer);
        }
    }

    /// Takes every waiting timer, with its server's key, to reschedule them.
    pub fn take_timers(&mut self) -> Vec<(Key, SpawnHandle)> {
        self.servers
            .iter_mut()
            .filter_map(|(address, followed)| {
                let key = Key {
                    address: address.clone(),
                    generation: followed.generation,
                };
                followed.timer.take().map(|timer| (key, timer))
            })
            .collect()
    }

    /// The server to probe now for `key`, if it is still followed.
    pub fn begin(&mut self, key: &Key) -> Option<Arc<Server>> {
        let followed = self.get(key)?;
        followed.timer = None;
        Some(followed.server.clone())
    }

    /// Counts a probe's outcome for `key` and records it on the server: the last probe, and
    /// the verdict when it flips (logged once). False if the server is no longer followed.
    pub fn finish(
        &mut self,
        key: &Key,
        outcome: Result<(), ProbeFailure>,
        settings: &HealthSettings,
    ) -> bool {
        let Some(followed) = self.get(key) else {
            return false;
        };
        let passed = outcome.is_ok();
        let detail = match &outcome {
            Ok(()) => "ok".to_string(),
            Err(failure) => failure.to_string(),
        };
        let transition = followed
            .counter
            .observe(passed, settings.rise, settings.fall);
        let counter = &followed.counter;
        let server = &followed.server;
        let condition = server.condition();
        condition.set_last_probe(ProbeReport {
            passed,
            detail: detail.clone(),
            at: unix_now(),
            consecutive_passes: counter.passes(),
            consecutive_failures: counter.failures(),
        });
        match transition {
            Some(Transition::WentUp) => {
                condition.set_probe(ProbeVerdict::Up);
                log::info!(
                    "server {} in pool {}: up ({})",
                    server.address,
                    condition.pool(),
                    count(counter.passes(), "passed")
                );
            }
            Some(Transition::WentDown) => {
                condition.set_probe(ProbeVerdict::Down);
                log::warn!(
                    "server {} in pool {}: down ({detail}, {})",
                    server.address,
                    condition.pool(),
                    count(counter.failures(), "in a row")
                );
            }
            None => log::debug!(
                "server {} in pool {}: probe {}",
                server.address,
                condition.pool(),
                if passed { "passed" } else { &detail }
            ),
        }
        true
    }
}

/// "1 probe passed", "3 probes in a row".
fn count(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 probe {what}")
    } else {
        format!("{n} probes {what}")
    }
}

/// Seconds since the Unix epoch, for probe reports.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A random share of `jitter`: the wait before a server's first probe, so a pool's servers
/// (and pools started together) are not all probed in the same instant.
pub fn first_delay(jitter: Duration) -> Duration {
    match u64::try_from(jitter.as_nanos()) {
        Ok(0) => Duration::ZERO,
        Ok(nanos) => Duration::from_nanos(fastrand::u64(..nanos)),
        Err(_) => Duration::from_nanos(fastrand::u64(..)),
    }
}

/// The wait between the end of one probe of a server and the start of the next.
pub fn next_delay(settings: &HealthSettings) -> Duration {
    settings.interval.get() + first_delay(settings.jitter.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(address: &str, verdict: ProbeVerdict) -> Arc<Server> {
        let server = Server::new(address, 1).unwrap();
        server.condition().set_probe(verdict);
        Arc::new(server)
    }

    fn failure() -> Result<(), ProbeFailure> {
        Err(ProbeFailure::Mismatch(
            super::super::expect::Mismatch::Status(500),
        ))
    }

    #[test]
    fn joining_and_leaving_servers_are_followed() {
        let mut roster = Roster::default();
        let a = server("127.0.0.1:1", ProbeVerdict::Down);
        let b = server("127.0.0.1:2", ProbeVerdict::Up);
        let joined = roster.sync(&[a.clone(), b.clone()]).joined;
        assert_eq!(joined.len(), 2);
        assert!(roster.sync(&[a.clone(), b.clone()]).joined.is_empty());
        // `a` left and came back: a new server, so the old key is dead.
        let a_again = server("127.0.0.1:1", ProbeVerdict::Down);
        let sync = roster.sync(&[a_again, b.clone()]);
        assert_eq!(sync.joined.len(), 1);
        let old_a = joined
            .iter()
            .find(|k| &*k.address == "127.0.0.1:1")
            .unwrap();
        assert!(roster.begin(old_a).is_none());
        assert!(!roster.finish(old_a, Ok(()), &HealthSettings::default()));
        assert!(roster.begin(&sync.joined[0]).is_some());
        // A successor sharing `b`'s counters keeps being followed.
        let b_heavier = Arc::new(Server::succeeding(&b, &b.entry()).unwrap());
        assert!(roster.sync(&[b_heavier]).joined.is_empty());
    }

    #[test]
    fn outcomes_set_the_verdict_and_the_last_probe() {
        let mut roster = Roster::default();
        let a = server("127.0.0.1:1", ProbeVerdict::Down);
        let key = roster.sync(std::slice::from_ref(&a)).joined.remove(0);
        let settings = HealthSettings::default();
        assert!(roster.finish(&key, failure(), &settings));
        let report = a.condition().last_probe().unwrap();
        assert!(!report.passed);
        assert_eq!(report.detail, "status 500");
        assert_eq!(report.consecutive_failures, 1);
        assert_eq!(a.condition().probe(), ProbeVerdict::Down);
        roster.finish(&key, Ok(()), &settings);
        assert_eq!(a.condition().probe(), ProbeVerdict::Up, "one pass");
        for _ in 0..settings.fall {
            roster.finish(&key, failure(), &settings);
        }
        assert_eq!(a.condition().probe(), ProbeVerdict::Down);
        assert_eq!(a.condition().last_probe().unwrap().consecutive_failures, 3);
        roster.finish(&key, Ok(()), &settings);
        assert_eq!(a.condition().probe(), ProbeVerdict::Down, "rise is 2");
        roster.finish(&key, Ok(()), &settings);
        assert_eq!(a.condition().probe(), ProbeVerdict::Up);
        assert_eq!(a.condition().last_probe().unwrap().detail, "ok");
    }

    #[test]
    fn servers_already_up_stay_up_until_fall_failures() {
        let mut roster = Roster::default();
        let a = server("127.0.0.1:1", ProbeVerdict::Up);
        let key = roster.sync(std::slice::from_ref(&a)).joined.remove(0);
        let settings = HealthSettings::default();
        roster.finish(&key, failure(), &settings);
        roster.finish(&key, failure(), &settings);
        assert_eq!(a.condition().probe(), ProbeVerdict::Up);
        roster.finish(&key, failure(), &settings);
        assert_eq!(a.condition().probe(), ProbeVerdict::Down);
    }

    #[test]
    fn delays_stay_within_the_jitter() {
        assert_eq!(first_delay(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(first_delay(Duration::from_millis(10)) < Duration::from_millis(10));
        }
        let settings = HealthSettings {
            jitter: crate::settings::Duration::from_millis(0),
            ..HealthSettings::default()
        };
        assert_eq!(next_delay(&settings), Duration::from_secs(5));
    }
}
