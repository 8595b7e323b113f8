//! Least time: the server with the lowest expected wait, its recent response time (a peak
//! EWMA of time to response head, see [`PeakEwma`](crate::pool::PeakEwma)) times its
//! requests in flight plus one, divided by its weight.
//!
//! Like least connections, the scores sit in a [`MinTree`](super::min_tree::MinTree): a pick
//! reads the root, a request that starts, answers or finishes updates its server's leaf.
//! Scores also fall by themselves as averages fade; every pick re-scores one more server in
//! turn, so a server that went quiet because it was slow is seen again within one round of
//! the pool.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::min_tree::MinTree;
use super::{Balancer, PickRequest};
use crate::pool::latency;
use crate::pool::Server;

/// Entry layout: score as f32 bits (32) | stamp (12) | server index (20). Non-negative
/// floats order like their bits, so entries compare as plain integers.
const INDEX_BITS: u32 = 20;
const STAMP_BITS: u32 = 12;
const SCORE_SHIFT: u32 = INDEX_BITS + STAMP_BITS;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// The score of a server that cannot take a request (and of a vacant leaf): above every
/// finite float.
const UNAVAILABLE: u64 = u32::MAX as u64;

#[derive(Debug)]
pub struct LeastTime {
    tree: MinTree,
    /// Counts picks; among equal scores the server picked longest ago comes first.
    stamps: AtomicU64,
    /// The next server re-scored on a pick.
    cursor: AtomicUsize,
}

fn score_of(entry: u64) -> u64 {
    entry >> SCORE_SHIFT
}

fn stamp_of(entry: u64) -> u64 {
    (entry >> INDEX_BITS) & STAMP_MASK
}

fn index_of(entry: u64) -> usize {
    (entry & INDEX_MASK) as usize
}

fn less(a: u64, b: u64) -> bool {
    a < b
}

/// A server's entry as of `now`.
fn entry(server: &Server, stamp: u64, index: usize, now: u64) -> u64 {
    let score = if server.can_take_request() {
        let wait = server.latency.at(now) * (server.in_flight() as f64 + 1.0)
            / f64::from(server.weight.max(1));
        u64::from((wait as f32).min(f32::MAX).to_bits())
    } else {
        UNAVAILABLE
    };
    (score << SCORE_SHIFT) | ((stamp & STAMP_MASK) << INDEX_BITS) | index as u64
}

impl LeastTime {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        let now = latency::now();
        let entries: Vec<u64> = servers
            .iter()
            .enumerate()
            .map(|(index, server)| entry(server, 0, index, now))
            .collect();
        Self {
            tree: MinTree::new(&entries, less),
            stamps: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// [`Balancer::pick`] as of `now` on the [`latency`] clock.
    pub fn pick_at(&self, servers: &[Arc<Server>], now: u64) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        self.refresh(
            servers,
            self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            None,
            now,
        );
        for _ in 0..=n {
            let top = self.tree.top();
            if score_of(top) == UNAVAILABLE {
                return None;
            }
            let index = index_of(top);
            if servers[index].can_take_request() {
                return Some(index);
            }
            self.refresh(servers, index, None, now);
            if self.tree.top() == top {
                self.tree.repair(index, less);
            }
        }
        None
    }

    /// Re-scores server `index` as of `now`, keeping its stamp unless given a new one.
    pub fn refresh(&self, servers: &[Arc<Server>], index: usize, stamp: Option<u64>, now: u64) {
        let stamp = stamp.unwrap_or_else(|| stamp_of(self.tree.leaf(index)));
        self.tree
            .set(index, entry(&servers[index], stamp, index, now), less);
    }

    /// [`Balancer::started`] as of `now`.
    pub fn started_at(&self, servers: &[Arc<Server>], index: usize, now: u64) {
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed) + 1;
        self.refresh(servers, index, Some(stamp), now);
    }
}

impl Balancer for LeastTime {
    fn pick(&self, servers: &[Arc<Server>], _: &PickRequest<'_>) -> Option<usize> {
        self.pick_at(servers, latency::now())
    }

    fn follows_load(&self) -> bool {
        true
    }

    fn started(&self, servers: &[Arc<Server>], index: usize) {
        self.started_at(servers, index, latency::now());
    }

    fn load_changed(&self, servers: &[Arc<Server>], index: usize) {
        self.refresh(servers, index, None, latency::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{limited, load, servers, set_down};
    use super::*;
    use crate::pool::InFlight;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    /// Serves one request at `now` that takes `took`: pick, answer, finish.
    fn serve(
        lt: &LeastTime,
        servers: &[Arc<Server>],
        now: u64,
        took: impl Fn(usize) -> u64,
    ) -> usize {
        let index = lt.pick_at(servers, now).unwrap();
        let claim = InFlight::claim(&servers[index]).unwrap();
        lt.started_at(servers, index, now);
        servers[index]
            .latency
            .observe(Duration::from_nanos(took(index)), now);
        drop(claim);
        lt.refresh(servers, index, None, now);
        index
    }

    #[test]
    fn unobserved_servers_are_tried_in_turn() {
        let servers = servers(&[1, 1, 1]);
        let lt = LeastTime::new(&servers);
        let first: Vec<usize> = (0..3)
            .map(|i| serve(&lt, &servers, i * MS, |_| 5 * MS))
            .collect();
        assert_eq!(first, vec![0, 1, 2]);
    }

    #[test]
    fn traffic_leaves_a_slow_server_and_returns_when_it_recovers() {
        let servers = servers(&[1, 1]);
        let lt = LeastTime::new(&servers);
        let step = 20 * MS;
        let mut slow_picks = 0;
        // 0-30 s: server 0 takes 200 ms, server 1 takes 10 ms.
        let mut now = 0;
        while now < 30 * S {
            if serve(
                &lt,
                &servers,
                now,
                |i| if i == 0 { 200 * MS } else { 10 * MS },
            ) == 0
            {
                slow_picks += 1;
            }
            now += step;
        }
        assert!(slow_picks <= 3, "the slow server got {slow_picks} of 1500");
        // From 30 s on both take 10 ms: within a minute server 0 is back to its share.
        let mut late_picks = [0usize; 2];
        while now < 150 * S {
            let index = serve(&lt, &servers, now, |_| 10 * MS);
            if now >= 90 * S {
                late_picks[index] += 1;
            }
            now += step;
        }
        let share = late_picks[0] as f64 / (late_picks[0] + late_picks[1]) as f64;
        assert!(
            share > 0.3,
            "recovered server's share {share:.2}: {late_picks:?}"
        );
    }

    #[test]
    fn equally_fast_servers_share_by_weight_under_load() {
        let weights = [1, 2, 5];
        let servers = servers(&weights);
        let lt = LeastTime::new(&servers);
        for server in &servers {
            server.latency.observe(Duration::from_millis(10), 0);
        }
        // 800 requests stay in flight; each new one lets the oldest finish.
        let mut window = std::collections::VecDeque::new();
        let mut counts = vec![0usize; 3];
        for step in 0..100_000u64 {
            let now = step * 1_000;
            let index = lt.pick_at(&servers, now).unwrap();
            window.push_back((index, InFlight::claim(&servers[index]).unwrap()));
            lt.started_at(&servers, index, now);
            counts[index] += 1;
            if window.len() > 800 {
                let (done, claim) = window.pop_front().unwrap();
                servers[done]
                    .latency
                    .observe(Duration::from_millis(10), now);
                drop(claim);
                lt.refresh(&servers, done, None, now);
            }
        }
        super::super::testing::assert_weighted(&counts, &weights);
    }

    #[test]
    fn requests_in_flight_count_against_a_server() {
        let servers = servers(&[1, 1]);
        let lt = LeastTime::new(&servers);
        for server in &servers {
            server.latency.observe(Duration::from_millis(10), 0);
        }
        // Server 0 is as fast but holds four long requests.
        load(&servers[0], 4);
        lt.refresh(&servers, 0, None, MS);
        assert!((0..10).all(|i| lt.pick_at(&servers, MS + i) == Some(1)));
    }

    #[test]
    fn weight_divides_the_expected_wait() {
        let servers = servers(&[4, 1]);
        let lt = LeastTime::new(&servers);
        servers[0].latency.observe(Duration::from_millis(30), 0);
        servers[1].latency.observe(Duration::from_millis(10), 0);
        lt.refresh(&servers, 0, None, 0);
        lt.refresh(&servers, 1, None, 0);
        assert_eq!(lt.pick_at(&servers, 0), Some(0));
    }

    #[test]
    fn down_and_full_servers_get_nothing() {
        let servers = vec![limited("127.0.0.1:1", 1), limited("127.0.0.1:2", 0)];
        let lt = LeastTime::new(&servers);
        servers[0].latency.observe(Duration::from_millis(1), 0);
        servers[1].latency.observe(Duration::from_millis(100), 0);
        lt.refresh(&servers, 0, None, 0);
        lt.refresh(&servers, 1, None, 0);
        let held = InFlight::claim(&servers[0]).unwrap();
        lt.started_at(&servers, 0, 0);
        assert!((1..10).all(|i| lt.pick_at(&servers, i) == Some(1)));
        set_down(&servers[1]);
        assert_eq!(lt.pick_at(&servers, 10), None);
        drop(held);
        lt.refresh(&servers, 0, None, 11);
        assert_eq!(lt.pick_at(&servers, 12), Some(0));
    }
}
