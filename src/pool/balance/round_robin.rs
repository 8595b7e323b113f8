//! Smooth weighted round robin, as NGINX does it: weights 5,1,1 give a a b a c a a,
//! never five of one server in a row.
//!
//! NGINX computes each pick in O(n): every server's score grows by its weight, the highest
//! score wins and gives back the total. The order repeats after (sum of weights) picks, and a
//! snapshot's servers and weights never change, so gatehouse computes that cycle once per
//! snapshot and walks it with a shared atomic cursor: O(1) per pick, same order. A cycle
//! too long to store (very uneven or very large weights) is served instead by earliest
//! deadline first over a heap, O(log n), which interleaves as evenly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{first_available, Balancer, PickRequest};
use crate::pool::Server;

/// The longest cycle kept: 64 Ki entries of 4 bytes per snapshot.
const MAX_CYCLE: u64 = 1 << 16;

/// The most score updates spent computing a cycle (servers × cycle length), a few
/// milliseconds of work when a snapshot is built.
const MAX_BUILD_STEPS: u64 = 1 << 22;

/// How far a pick walks the cycle past servers that cannot take a request before it scans.
const WALK: usize = 32;

#[derive(Debug)]
pub struct RoundRobin {
    order: Order,
}

#[derive(Debug)]
enum Order {
    /// The whole smooth cycle of server indices, and where the next pick reads it.
    Cycle {
        cycle: Box<[u32]>,
        cursor: AtomicUsize,
    },
    /// Earliest deadline first, for cycles too long to keep.
    Deadlines(Mutex<Deadlines>),
}

impl RoundRobin {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        let weights: Vec<u64> = servers.iter().map(|s| u64::from(s.weight.max(1))).collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
        let total: u64 = weights.iter().sum();
        let order = if total <= MAX_CYCLE && total * weights.len() as u64 <= MAX_BUILD_STEPS {
            Order::Cycle {
                cycle: smooth_cycle(&weights),
                cursor: AtomicUsize::new(0),
            }
        } else {
            Order::Deadlines(Mutex::new(Deadlines::new(&weights)))
        };
        Self { order }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, servers: &[Arc<Server>], _: &PickRequest<'_>) -> Option<usize> {
        match &self.order {
            Order::Cycle { cycle, cursor } => {
                if cycle.is_empty() {
                    return None;
                }
                for _ in 0..WALK.min(cycle.len()) {
                    let at = cursor.fetch_add(1, Ordering::Relaxed) % cycle.len();
                    let index = cycle[at] as usize;
                    if servers[index].can_take_request() {
                        return Some(index);
                    }
                }
                let at = cursor.load(Ordering::Relaxed) % cycle.len();
                first_available(servers, cycle[at] as usize)
            }
            Order::Deadlines(deadlines) => deadlines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pick(servers),
        }
    }
}

/// One cycle of NGINX's smooth weighted round robin over `weights`.
fn smooth_cycle(weights: &[u64]) -> Box<[u32]> {
    let total: u64 = weights.iter().sum();
    let total = total as i64;
    let mut scores = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (index, &weight) in weights.iter().enumerate() {
                scores[index] += weight as i64;
                if scores[index] > scores[best] {
                    best = index;
                }
            }
            scores[best] -= total;
            best as u32
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Stride scheduling: each server is due again 1/weight after its last turn; the earliest
/// due goes next (ties to the lower index). Deadlines are fixed-point, 2^64 per unit of time.
#[derive(Debug)]
struct Deadlines {
    heap: BinaryHeap<Reverse<(u128, u32)>>,
    strides: Box<[u128]>,
    /// Servers passed over in this pick, returned to the heap afterwards; kept to reuse its
    /// allocation.
    passed: Vec<(u128, u32)>,
}

impl Deadlines {
    fn new(weights: &[u64]) -> Self {
        let strides: Box<[u128]> = weights
            .iter()
            .map(|&w| (1u128 << 64) / u128::from(w))
            .collect();
        let heap = strides
            .iter()
            .enumerate()
            .map(|(index, &stride)| Reverse((stride, index as u32)))
            .collect();
        Self {
            heap,
            strides,
            passed: Vec::with_capacity(weights.len()),
        }
    }

    fn pick(&mut self, servers: &[Arc<Server>]) -> Option<usize> {
        let mut chosen = None;
        for _ in 0..WALK.min(self.heap.len()) {
            let Some(Reverse((due, index))) = self.heap.pop() else {
                break;
            };
            // Whoever is passed over loses the turn, as if it had taken it.
            self.passed
                .push((due + self.strides[index as usize], index));
            if servers[index as usize].can_take_request() {
                chosen = Some(index as usize);
                break;
            }
        }
        for entry in self.passed.drain(..) {
            self.heap.push(Reverse(entry));
        }
        chosen.or_else(|| {
            let next = self
                .heap
                .peek()
                .map_or(0, |Reverse((_, index))| *index as usize);
            first_available(servers, next)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_weighted, limited, servers, set_down, shares};
    use super::*;

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let servers = servers(weights);
        let rr = RoundRobin::new(&servers);
        (0..picks)
            .map(|_| rr.pick(&servers, &PickRequest::default()).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_take_turns() {
        assert_eq!(sequence(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn heavy_server_is_interleaved_not_bunched() {
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let picks = sequence(&[5, 1, 1], 700);
        assert!(picks.windows(5).all(|run| run.iter().any(|&i| i != 0)));
    }

    #[test]
    fn the_order_is_nginx_smooth_round_robin() {
        assert_eq!(sequence(&[4, 2, 1], 7), vec![0, 1, 0, 2, 0, 1, 0]);
        // Weights with a common divisor give the same order as the reduced ones.
        assert_eq!(sequence(&[10, 5, 5], 8), sequence(&[2, 1, 1], 8));
    }

    #[test]
    fn weights_set_the_shares() {
        let picks = sequence(&[1, 2], 300);
        let second = picks.iter().filter(|&&i| i == 1).count();
        assert_eq!(second, 200);
    }

    #[test]
    fn weights_hold_within_two_percent_over_many_picks() {
        let weights = [1, 3, 7, 2, 9];
        let servers = servers(&weights);
        let rr = RoundRobin::new(&servers);
        let counts = shares(
            5,
            (0..100_000).map(|_| rr.pick(&servers, &PickRequest::default())),
        );
        assert_weighted(&counts, &weights);
    }

    #[test]
    fn a_cycle_too_long_to_keep_is_served_by_deadlines() {
        let weights = [100_000, 1, 30_001, 77_777];
        let servers = servers(&weights);
        let rr = RoundRobin::new(&servers);
        assert!(matches!(rr.order, Order::Deadlines(_)));
        let counts = shares(
            4,
            (0..300_000).map(|_| rr.pick(&servers, &PickRequest::default())),
        );
        assert_weighted(
            &[counts[0], counts[2], counts[3]],
            &[100_000, 30_001, 77_777],
        );
        assert!(counts[1] <= 2, "{counts:?}");
    }

    #[test]
    fn unavailable_servers_are_skipped_and_the_rest_share_evenly() {
        let servers = servers(&[1, 1, 1]);
        set_down(&servers[0]);
        let rr = RoundRobin::new(&servers);
        let counts = shares(
            3,
            (0..600).map(|_| rr.pick(&servers, &PickRequest::default())),
        );
        assert_eq!(counts, vec![0, 300, 300]);
    }

    #[test]
    fn a_full_server_is_skipped_until_it_has_room() {
        let servers = vec![limited("127.0.0.1:1", 1), limited("127.0.0.1:2", 0)];
        let rr = RoundRobin::new(&servers);
        let claim = crate::pool::InFlight::claim(&servers[0]).unwrap();
        assert!((0..10).all(|_| rr.pick(&servers, &PickRequest::default()) == Some(1)));
        drop(claim);
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&servers, &PickRequest::default()))
            .collect();
        assert!(picks.contains(&Some(0)), "{picks:?}");
    }

    #[test]
    fn deadlines_skip_unavailable_servers_too() {
        let servers = servers(&[100_000, 99_999, 1]);
        let rr = RoundRobin::new(&servers);
        assert!(matches!(rr.order, Order::Deadlines(_)));
        set_down(&servers[0]);
        set_down(&servers[1]);
        assert!((0..50).all(|_| rr.pick(&servers, &PickRequest::default()) == Some(2)));
        set_down(&servers[2]);
        assert_eq!(rr.pick(&servers, &PickRequest::default()), None);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        assert_eq!(
            RoundRobin::new(&[]).pick(&[], &PickRequest::default()),
            None
        );
    }

    #[test]
    fn nothing_is_picked_when_every_server_is_down() {
        let servers = servers(&[2, 1]);
        servers.iter().for_each(|s| set_down(s));
        let rr = RoundRobin::new(&servers);
        assert_eq!(rr.pick(&servers, &PickRequest::default()), None);
    }
}
