//! How a pool picks a server: one small trait, one plain struct per algorithm, and the
//! structures they share (the alias table for weighted draws, the min-tree of loads, the
//! hash key a request is balanced by).

mod alias;
mod hash;
mod hash_key;
mod least_connections;
mod least_time;
mod min_tree;
mod random;
mod random_two;
mod round_robin;

use std::sync::Arc;

pub use hash_key::KeySource;

use crate::pool::Server;
use crate::settings::Balance;
use hash::Hash;
use least_connections::LeastConnections;
use least_time::LeastTime;
use random::Random;
use random_two::RandomTwo;
use round_robin::RoundRobin;

/// What an algorithm may know about the request it picks for. Borrowed from the request, so
/// building one costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickRequest<'a> {
    /// The bytes of the pool's hash key, when the pool hashes and the request carries the key.
    pub key: Option<&'a [u8]>,
    /// Servers the request must not go to: those a retry has already tried.
    pub avoid: &'a [Arc<Server>],
}

/// A balancing algorithm over a fixed list of servers (one tier of one snapshot of a pool).
/// Implementations keep their own selection state behind atomics or a short mutex, since
/// every worker picks concurrently, and never allocate per pick.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of a server that can take the request ([`Server::can_take_request`]), or
    /// `None` if none can.
    fn pick(&self, servers: &[Arc<Server>], request: &PickRequest<'_>) -> Option<usize>;

    /// Whether the algorithm wants [`Balancer::started`] and [`Balancer::load_changed`]
    /// calls; the others are spared keeping track of their requests.
    fn follows_load(&self) -> bool {
        false
    }

    /// A request picked by this balancer has been counted in flight on `servers[index]`.
    fn started(&self, _servers: &[Arc<Server>], _index: usize) {}

    /// The load of `servers[index]` changed: a request finished or its response arrived.
    fn load_changed(&self, _servers: &[Arc<Server>], _index: usize) {}
}

/// The algorithm a pool's `balance` setting names, over `servers`.
pub fn balancer(balance: Balance, servers: &[Arc<Server>]) -> Box<dyn Balancer> {
    match balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(servers)),
        Balance::LeastConnections => Box::new(LeastConnections::new(servers)),
        Balance::LeastTime => Box::new(LeastTime::new(servers)),
        Balance::RandomTwo => Box::new(RandomTwo::new(servers)),
        Balance::Random => Box::new(Random::new(servers)),
        Balance::Hash => Box::new(Hash::new(servers)),
    }
}

/// How many candidates a sampling algorithm tries before it scans: with a quarter of the
/// servers unavailable, one pick in 65,000 scans.
const TRIES: usize = 8;

/// The first server at or after `start` (wrapping) that can take a request: the way out
/// when the fast path of an algorithm met only unavailable servers. O(n), and reached only
/// when most servers are down, draining or full.
fn first_available(servers: &[Arc<Server>], start: usize) -> Option<usize> {
    let n = servers.len();
    (0..n)
        .map(|offset| (start + offset) % n)
        .find(|&index| servers[index].can_take_request())
}

/// Whether `a` carries less load than `b` for its weight: `in_flight_a / weight_a <
/// in_flight_b / weight_b`, compared by cross-multiplication so no division rounds.
pub(super) fn less_loaded(a: &Server, b: &Server) -> bool {
    let load_a = a.in_flight() as u128 * u128::from(b.weight.max(1));
    let load_b = b.in_flight() as u128 * u128::from(a.weight.max(1));
    load_a < load_b
}

#[cfg(test)]
mod testing {
    //! Helpers the algorithms' unit tests share.

    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use crate::pool::{Server, ServerOptions};
    use crate::settings::ServerState;

    /// Servers of the given weights, addresses 127.0.0.1:9001 and up.
    pub fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Server::new(&format!("127.0.0.1:{}", 9001 + i), w).unwrap()))
            .collect()
    }

    /// A server of weight 1 with a connection limit.
    pub fn limited(address: &str, max_connections: u32) -> Arc<Server> {
        let options = ServerOptions {
            max_connections,
            ..ServerOptions::default()
        };
        Arc::new(Server::with_options(address, 1, options).unwrap())
    }

    /// Pretends `count` requests are in flight on the server.
    pub fn load(server: &Server, count: usize) {
        server.stats.in_flight.store(count, Ordering::Relaxed);
    }

    pub fn set_down(server: &Server) {
        server.set_state(ServerState::Down);
    }

    /// How many of `picks` each server got.
    pub fn shares(servers: usize, picks: impl IntoIterator<Item = Option<usize>>) -> Vec<usize> {
        let mut counts = vec![0; servers];
        for pick in picks {
            counts[pick.expect("a server is picked")] += 1;
        }
        counts
    }

    /// Asserts each server's share of the picks is its share of the weight, within 2%.
    pub fn assert_weighted(counts: &[usize], weights: &[u32]) {
        let total_picks: usize = counts.iter().sum();
        let total_weight: u32 = weights.iter().sum();
        for (index, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
            let expected = total_picks as f64 * f64::from(weight) / f64::from(total_weight);
            let off = (count as f64 - expected).abs() / expected;
            assert!(
                off <= 0.02,
                "server {index} (weight {weight}) got {count} picks, expected {expected:.0}: {counts:?}"
            );
        }
    }
}
