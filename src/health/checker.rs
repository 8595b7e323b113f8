//! The actor that schedules one pool's probes: a timer per server, at most one probe in
//! flight per server, probes of different servers running side by side on the actor's
//! arbiter. It follows the pool's membership: the pool tells it of every change (start-up,
//! reloads, the admin API). What a probe's outcome means is [`Roster`]'s business.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::probe::Probe;
use super::roster::{first_delay, next_delay, Key, Roster};
use crate::pool::{MembershipChanged, PoolHandle, Server};
use crate::settings::HealthSettings;

/// Probes every server of one pool, for as long as the pool has health checks.
pub struct Checker<P: Probe> {
    pool: PoolHandle,
    settings: Arc<HealthSettings>,
    probe: P,
    roster: Roster,
}

impl<P: Probe> Checker<P> {
    pub fn new(pool: PoolHandle, settings: Arc<HealthSettings>, probe: P) -> Self {
        Self {
            pool,
            settings,
            probe,
            roster: Roster::default(),
        }
    }

    /// Starts probing servers that joined; forgets those that left.
    fn sync(&mut self, servers: &[Arc<Server>], ctx: &mut Context<Self>) {
        let sync = self.roster.sync(servers);
        for timer in sync.cancel {
            ctx.cancel_future(timer);
        }
        for key in sync.joined {
            self.schedule(key, first_delay(self.settings.jitter.get()), ctx);
        }
    }

    fn schedule(&mut self, key: Key, delay: Duration, ctx: &mut Context<Self>) {
        let timer_key = key.clone();
        let timer = ctx.run_later(delay, move |checker, ctx| checker.probe(timer_key, ctx));
        self.roster.set_timer(&key, timer);
    }

    /// Probes one server; when the probe ends, counts it and schedules the next.
    fn probe(&mut self, key: Key, ctx: &mut Context<Self>) {
        let Some(server) = self.roster.begin(&key) else {
            return;
        };
        let probe = self.probe.check(&server);
        ctx.spawn(probe.into_actor(self).map(move |outcome, checker, ctx| {
            if checker.roster.finish(&key, outcome, &checker.settings) {
                let delay = next_delay(&checker.settings);
                checker.schedule(key, delay, ctx);
            }
        }));
    }
}

impl<P: Probe> Actor for Checker<P> {
    type Context = Context<Self>;

    /// Follows the pool, which answers with its servers at once.
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pool.follow(ctx.address().downgrade().recipient());
    }
}

impl<P: Probe> Handler<MembershipChanged> for Checker<P> {
    type Result = ();

    fn handle(&mut self, msg: MembershipChanged, ctx: &mut Context<Self>) {
        self.sync(&msg.servers, ctx);
    }
}

/// Takes new health settings: the next probes use them; waiting servers are probed again
/// within the new jitter, so a fixed check takes effect at once.
pub struct Retune<P> {
    pub settings: Arc<HealthSettings>,
    pub probe: P,
}

impl<P: 'static> Message for Retune<P> {
    type Result = ();
}

impl<P: Probe> Handler<Retune<P>> for Checker<P> {
    type Result = ();

    fn handle(&mut self, msg: Retune<P>, ctx: &mut Context<Self>) {
        self.settings = msg.settings;
        self.probe = msg.probe;
        for (key, timer) in self.roster.take_timers() {
            ctx.cancel_future(timer);
            self.schedule(key, first_delay(self.settings.jitter.get()), ctx);
        }
    }
}

/// Stops probing: no verdict is written after this has been handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl<P: Probe> Handler<Stop> for Checker<P> {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        for timer in self.roster.clear() {
            ctx.cancel_future(timer);
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;
    use crate::health::expect::Mismatch;
    use crate::health::probe::ProbeFailure;
    use crate::pool::{ProbeVerdict, Server};
    use crate::settings::{self, PoolSettings, ServerEntry};

    /// A probe that answers from a script per server (pass when the script runs out) and
    /// notes when each probe started.
    #[derive(Clone, Default)]
    struct Scripted {
        script: Arc<Mutex<HashMap<String, VecDeque<bool>>>>,
        started: Arc<Mutex<Vec<(String, Instant)>>>,
        /// How long each probe takes.
        takes: Duration,
    }

    impl Probe for Scripted {
        fn check(
            &self,
            server: &Server,
        ) -> impl Future<Output = Result<(), ProbeFailure>> + 'static {
            let address = server.address.to_string();
            self.started
                .lock()
                .unwrap()
                .push((address.clone(), Instant::now()));
            let passed = self
                .script
                .lock()
                .unwrap()
                .get_mut(&address)
                .and_then(VecDeque::pop_front)
                .unwrap_or(true);
            let takes = self.takes;
            async move {
                tokio::time::sleep(takes).await;
                if passed {
                    Ok(())
                } else {
                    Err(ProbeFailure::Mismatch(Mismatch::Status(500)))
                }
            }
        }
    }

    fn health() -> HealthSettings {
        HealthSettings {
            interval: settings::Duration::from_secs(1),
            jitter: settings::Duration::from_millis(0),
            ..HealthSettings::default()
        }
    }

    async fn pool(addresses: &[&str]) -> PoolHandle {
        let settings = PoolSettings {
            servers: addresses.iter().map(|a| ServerEntry::new(a)).collect(),
            health: Some(health()),
            ..PoolSettings::default()
        };
        PoolHandle::from_settings("web", &settings).await.unwrap()
    }

    fn verdict(pool: &PoolHandle, address: &str) -> ProbeVerdict {
        pool.server(address).unwrap().condition().probe()
    }

    fn starts(probe: &Scripted, address: &str) -> Vec<Duration> {
        let started = probe.started.lock().unwrap();
        let first = started[0].1;
        started
            .iter()
            .filter(|(a, _)| a == address)
            .map(|(_, at)| *at - first)
            .collect()
    }

    #[actix_rt::test]
    async fn probes_follow_the_interval_from_the_end_of_the_last() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1"]).await;
        let probe = Scripted {
            takes: Duration::from_millis(300),
            ..Scripted::default()
        };
        let _checker = Checker::new(pool.clone(), Arc::new(health()), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(3700)).await;
        let starts = starts(&probe, "127.0.0.1:1");
        assert_eq!(starts.len(), 3, "{starts:?}");
        // Timers round up to the millisecond, once per sleep.
        for (start, expected) in starts.iter().zip([0, 1300, 2600]) {
            let late = start.saturating_sub(Duration::from_millis(expected));
            assert!(
                *start >= Duration::from_millis(expected) && late < Duration::from_millis(5),
                "{starts:?}"
            );
        }
    }

    #[actix_rt::test]
    async fn rise_and_fall_move_the_verdict() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1", "127.0.0.1:2"]).await;
        let probe = Scripted::default();
        probe.script.lock().unwrap().insert(
            "127.0.0.1:1".into(),
            [true, false, false, false, true, true].into(),
        );
        probe
            .script
            .lock()
            .unwrap()
            .insert("127.0.0.1:2".into(), [false, false].into());
        assert_eq!(verdict(&pool, "127.0.0.1:1"), ProbeVerdict::Down);
        let _checker = Checker::new(pool.clone(), Arc::new(health()), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            verdict(&pool, "127.0.0.1:1"),
            ProbeVerdict::Up,
            "first pass"
        );
        assert_eq!(verdict(&pool, "127.0.0.1:2"), ProbeVerdict::Down);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            verdict(&pool, "127.0.0.1:1"),
            ProbeVerdict::Down,
            "3 failures"
        );
        assert_eq!(verdict(&pool, "127.0.0.1:2"), ProbeVerdict::Up);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(verdict(&pool, "127.0.0.1:1"), ProbeVerdict::Down, "rise 2");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(verdict(&pool, "127.0.0.1:1"), ProbeVerdict::Up);
        let report = pool
            .server("127.0.0.1:1")
            .unwrap()
            .condition()
            .last_probe()
            .unwrap();
        assert_eq!((report.passed, report.consecutive_passes), (true, 2));
    }

    #[actix_rt::test]
    async fn servers_that_join_are_probed_and_those_that_leave_are_not() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1"]).await;
        let probe = Scripted::default();
        let _checker = Checker::new(pool.clone(), Arc::new(health()), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.add_entry(&ServerEntry::new("127.0.0.1:2"))
            .await
            .unwrap();
        assert_eq!(verdict(&pool, "127.0.0.1:2"), ProbeVerdict::Down);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(verdict(&pool, "127.0.0.1:2"), ProbeVerdict::Up);
        pool.remove_server("127.0.0.1:1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = starts(&probe, "127.0.0.1:1").len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(starts(&probe, "127.0.0.1:1").len(), before);
        assert!(starts(&probe, "127.0.0.1:2").len() >= 5);
    }

    #[actix_rt::test]
    async fn a_server_that_joins_is_probed_at_once_without_a_poll() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1"]).await;
        let probe = Scripted::default();
        let _checker = Checker::new(pool.clone(), Arc::new(health()), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let joined = tokio::time::Instant::now();
        pool.add_entry(&ServerEntry::new("127.0.0.1:2"))
            .await
            .unwrap();
        // The pool tells the checker before it answers; the probe starts within the jitter
        // (none here), on the next tick of the timers, a millisecond later.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(starts(&probe, "127.0.0.1:2").len(), 1);
        let at = probe.started.lock().unwrap().last().unwrap().1;
        assert!(at - joined < Duration::from_millis(2), "{:?}", at - joined);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(verdict(&pool, "127.0.0.1:2"), ProbeVerdict::Up);
    }

    #[actix_rt::test]
    async fn a_stopped_checker_writes_no_more_verdicts() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1"]).await;
        let probe = Scripted {
            takes: Duration::from_millis(500),
            ..Scripted::default()
        };
        let checker = Checker::new(pool.clone(), Arc::new(health()), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        checker.send(Stop).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(verdict(&pool, "127.0.0.1:1"), ProbeVerdict::Down);
        assert_eq!(probe.started.lock().unwrap().len(), 1);
    }

    #[actix_rt::test]
    async fn retuning_reschedules_waiting_probes() {
        tokio::time::pause();
        let pool = pool(&["127.0.0.1:1"]).await;
        let probe = Scripted::default();
        let slow = HealthSettings {
            interval: settings::Duration::from_secs(3600),
            ..health()
        };
        let checker = Checker::new(pool.clone(), Arc::new(slow), probe.clone()).start();
        tokio::time::sleep(Duration::from_millis(100)).await;
        checker
            .send(Retune {
                settings: Arc::new(health()),
                probe: probe.clone(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_eq!(starts(&probe, "127.0.0.1:1").len(), 3);
    }
}
