//! Least connections: the server with the fewest requests in flight for its weight
//! (`in_flight / weight`, compared by cross-multiplication), ties taken in turn.
//!
//! NGINX scans every server per pick. gatehouse keeps the servers' loads in a
//! [`MinTree`](super::min_tree::MinTree) instead: a pick reads the root, O(1); a request that
//! starts or finishes updates its server's leaf, O(log n). A leaf can lag its server (a request
//! of an older snapshot finishing, two updates racing), so every pick re-reads one more server
//! in turn, and the root's server is checked against its live count before it is taken.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::min_tree::MinTree;
use super::{first_available, less_loaded, Balancer, PickRequest};
use crate::pool::Server;

/// Entry layout: load (24 bits) | stamp (20 bits) | server index (20 bits). A pool balanced
/// this way holds at most 2^20 - 1 servers.
const INDEX_BITS: u32 = 20;
const STAMP_BITS: u32 = 20;
const LOAD_SHIFT: u32 = INDEX_BITS + STAMP_BITS;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// The load of a server that cannot take a request (and of a vacant leaf).
const FULL: u64 = (1 << (64 - LOAD_SHIFT)) - 1;

#[derive(Debug)]
pub struct LeastConnections {
    tree: MinTree,
    weights: Box<[u64]>,
    /// Counts picks; a picked server's leaf takes the next value, so among equal loads the
    /// server picked longest ago comes first.
    stamps: AtomicU64,
    /// The next server re-read on a pick.
    cursor: AtomicUsize,
}

fn pack(load: u64, stamp: u64, index: usize) -> u64 {
    (load << LOAD_SHIFT) | ((stamp & STAMP_MASK) << INDEX_BITS) | index as u64
}

fn load_of(entry: u64) -> u64 {
    entry >> LOAD_SHIFT
}

fn stamp_of(entry: u64) -> u64 {
    (entry >> INDEX_BITS) & STAMP_MASK
}

fn index_of(entry: u64) -> usize {
    (entry & INDEX_MASK) as usize
}

impl LeastConnections {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        let weights: Box<[u64]> = servers.iter().map(|s| u64::from(s.weight.max(1))).collect();
        let entries: Vec<u64> = servers
            .iter()
            .enumerate()
            .map(|(index, server)| entry(server, 0, index))
            .collect();
        let tree = MinTree::new(&entries, |a, b| less(&weights, a, b));
        Self {
            tree,
            weights,
            stamps: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    fn less(&self) -> impl Fn(u64, u64) -> bool + '_ {
        |a, b| less(&self.weights, a, b)
    }

    /// Re-reads server `index` into its leaf, keeping its stamp unless given a new one.
    fn refresh(&self, servers: &[Arc<Server>], index: usize, stamp: Option<u64>) {
        let stamp = stamp.unwrap_or_else(|| stamp_of(self.tree.leaf(index)));
        self.tree
            .set(index, entry(&servers[index], stamp, index), self.less());
    }
}

/// A server's entry: its load, or [`FULL`] when it cannot take a request.
fn entry(server: &Server, stamp: u64, index: usize) -> u64 {
    let load = if server.can_take_request() {
        (server.in_flight() as u64).min(FULL - 1)
    } else {
        FULL
    };
    pack(load, stamp, index)
}

/// Whether entry `a` goes before entry `b`: less load for the weight, then picked longer
/// ago, then the lower index.
fn less(weights: &[u64], a: u64, b: u64) -> bool {
    let (load_a, load_b) = (load_of(a), load_of(b));
    if load_a == FULL || load_b == FULL {
        return load_a < load_b || (load_a == load_b && a < b);
    }
    let cross_a = load_a * weights[index_of(b)];
    let cross_b = load_b * weights[index_of(a)];
    if cross_a != cross_b {
        return cross_a < cross_b;
    }
    // Stamps are compared as they are: when the 20-bit count wraps, one round of ties may
    // go out of turn.
    (a & ((1 << LOAD_SHIFT) - 1)) < (b & ((1 << LOAD_SHIFT) - 1))
}

impl Balancer for LeastConnections {
    fn pick(&self, servers: &[Arc<Server>], _: &PickRequest<'_>) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        self.refresh(
            servers,
            self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            None,
        );
        for _ in 0..=n {
            let top = self.tree.top();
            if load_of(top) == FULL {
                return None;
            }
            let index = index_of(top);
            let live = entry(&servers[index], stamp_of(top), index);
            if live == top {
                return Some(index);
            }
            if self.tree.leaf(index) == live {
                self.tree.repair(index, self.less());
            } else {
                self.tree.set(index, live, self.less());
            }
        }
        // Only reached while other threads keep changing the tree under this pick.
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let first = first_available(servers, start)?;
        Some((0..n).map(|i| (start + i) % n).fold(first, |best, i| {
            let server = &servers[i];
            if server.can_take_request() && less_loaded(server, &servers[best]) {
                i
            } else {
                best
            }
        }))
    }

    fn follows_load(&self) -> bool {
        true
    }

    fn started(&self, servers: &[Arc<Server>], index: usize) {
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed) + 1;
        self.refresh(servers, index, Some(stamp));
    }

    fn load_changed(&self, servers: &[Arc<Server>], index: usize) {
        self.refresh(servers, index, None);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{limited, load, servers, set_down, shares};
    use super::*;
    use crate::pool::InFlight;

    /// Picks, counts the request in flight and tells the balancer, as the pool does.
    fn start(lc: &LeastConnections, servers: &[Arc<Server>]) -> Option<(usize, InFlight)> {
        let index = lc.pick(servers, &PickRequest::default())?;
        let claim = InFlight::claim(&servers[index])?;
        lc.started(servers, index);
        Some((index, claim))
    }

    fn finish(lc: &LeastConnections, servers: &[Arc<Server>], (index, claim): (usize, InFlight)) {
        drop(claim);
        lc.load_changed(servers, index);
    }

    #[test]
    fn idle_servers_take_turns() {
        let servers = servers(&[1, 1, 1]);
        let lc = LeastConnections::new(&servers);
        let order: Vec<usize> = (0..6)
            .map(|_| {
                let request = start(&lc, &servers).unwrap();
                let index = request.0;
                finish(&lc, &servers, request);
                index
            })
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn new_requests_avoid_a_server_holding_long_requests() {
        let servers = servers(&[1, 1, 1]);
        let lc = LeastConnections::new(&servers);
        // Five long requests land on the servers in turn and stay.
        let long: Vec<_> = (0..5).map(|_| start(&lc, &servers).unwrap()).collect();
        let mut loads: Vec<usize> = servers.iter().map(|s| s.in_flight()).collect();
        loads.sort();
        assert_eq!(loads, vec![1, 2, 2]);
        let idle = servers.iter().position(|s| s.in_flight() == 1).unwrap();
        // Short requests now go where the load is lowest.
        let request = start(&lc, &servers).unwrap();
        assert_eq!(request.0, idle);
        finish(&lc, &servers, request);
        drop(long);
    }

    #[test]
    fn a_busy_server_gets_nothing_until_the_others_catch_up() {
        let servers = servers(&[1, 1]);
        load(&servers[0], 3);
        let lc = LeastConnections::new(&servers);
        let held: Vec<_> = (0..3).map(|_| start(&lc, &servers).unwrap()).collect();
        assert!(held.iter().all(|(index, _)| *index == 1));
        assert_eq!(servers[1].in_flight(), 3);
        let next = start(&lc, &servers).unwrap();
        assert_eq!(next.0, 0, "equal loads: the server picked longest ago");
    }

    #[test]
    fn loads_are_compared_for_the_weight() {
        let servers = servers(&[3, 1]);
        let lc = LeastConnections::new(&servers);
        let held: Vec<_> = (0..8).map(|_| start(&lc, &servers).unwrap()).collect();
        assert_eq!(servers[0].in_flight(), 6);
        assert_eq!(servers[1].in_flight(), 2);
        drop(held);
    }

    #[test]
    fn shares_follow_the_weights_when_requests_overlap() {
        let weights = [1, 2, 5];
        let servers = servers(&weights);
        let lc = LeastConnections::new(&servers);
        let mut window = std::collections::VecDeque::new();
        let mut counts = vec![0usize; 3];
        for _ in 0..100_000 {
            let request = start(&lc, &servers).unwrap();
            counts[request.0] += 1;
            window.push_back(request);
            if window.len() > 799 {
                finish(&lc, &servers, window.pop_front().unwrap());
            }
        }
        super::super::testing::assert_weighted(&counts, &weights);
    }

    #[test]
    fn a_load_changed_behind_its_back_is_noticed() {
        let servers = servers(&[1, 1]);
        let lc = LeastConnections::new(&servers);
        // The tree still thinks both are idle; server 0 really has ten requests.
        load(&servers[0], 10);
        let picks = shares(
            2,
            (0..10).map(|_| lc.pick(&servers, &PickRequest::default())),
        );
        assert_eq!(picks, vec![0, 10]);
    }

    #[test]
    fn down_and_full_servers_get_nothing() {
        let servers = vec![
            limited("127.0.0.1:1", 1),
            limited("127.0.0.1:2", 0),
            limited("127.0.0.1:3", 0),
        ];
        let lc = LeastConnections::new(&servers);
        set_down(&servers[2]);
        let first = start(&lc, &servers).unwrap();
        assert_eq!(first.0, 0);
        // Server 0 is at its limit of one: everything else goes to server 1.
        let rest: Vec<_> = (0..5).map(|_| start(&lc, &servers).unwrap()).collect();
        assert!(rest.iter().all(|(index, _)| *index == 1));
        set_down(&servers[1]);
        assert_eq!(lc.pick(&servers, &PickRequest::default()), None);
        finish(&lc, &servers, first);
        assert_eq!(lc.pick(&servers, &PickRequest::default()), Some(0));
    }

    #[test]
    fn empty_pool_picks_nothing() {
        assert_eq!(
            LeastConnections::new(&[]).pick(&[], &PickRequest::default()),
            None
        );
    }
}
