//! How a pool picks a server: one small trait, one plain struct per algorithm.

use std::sync::Arc;

use super::round_robin::RoundRobin;
use super::Server;
use crate::settings::Balance;

/// A balancing algorithm over a fixed list of servers. Implementations keep their own
/// selection state behind interior mutability, since every worker picks concurrently.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the server that should take the next request, or `None` if none can.
    fn pick(&self, servers: &[Arc<Server>]) -> Option<usize>;
}

/// The algorithm a pool's `balance` setting names.
pub fn balancer(balance: Balance, servers: &[Arc<Server>]) -> Box<dyn Balancer> {
    match balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(servers)),
    }
}
