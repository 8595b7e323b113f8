//! Smooth weighted round robin, as NGINX does it: weights 5,1,1 give a a b a c a a,
//! never five of one server in a row.

use std::sync::{Arc, Mutex};

use super::balance::Balancer;
use super::Server;

/// Each pick adds every server's weight to its running score, takes the highest score,
/// and takes the total weight off the winner.
#[derive(Debug)]
pub struct RoundRobin {
    scores: Mutex<Vec<i64>>,
}

impl RoundRobin {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        Self {
            scores: Mutex::new(vec![0; servers.len()]),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, servers: &[Arc<Server>]) -> Option<usize> {
        let mut scores = self
            .scores
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        scores.resize(servers.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (index, server) in servers.iter().enumerate() {
            let weight = i64::from(server.weight);
            scores[index] += weight;
            total += weight;
            if best.is_none_or(|b| scores[index] > scores[b]) {
                best = Some(index);
            }
        }
        let chosen = best?;
        scores[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Server::new(&format!("127.0.0.1:{}", 9001 + i), *w).unwrap()))
            .collect()
    }

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let servers = servers(weights);
        let rr = RoundRobin::new(&servers);
        (0..picks).map(|_| rr.pick(&servers).unwrap()).collect()
    }

    #[test]
    fn equal_weights_take_turns() {
        assert_eq!(sequence(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn heavy_server_is_interleaved_not_bunched() {
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_set_the_shares() {
        let picks = sequence(&[1, 2], 300);
        let second = picks.iter().filter(|&&i| i == 1).count();
        assert_eq!(second, 200);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        assert_eq!(RoundRobin::new(&[]).pick(&[]), None);
    }
}
