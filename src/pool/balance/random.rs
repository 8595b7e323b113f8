//! Weighted random: each pick draws a server with probability weight / total weight, in O(1)
//! from an alias table built with the snapshot. No shared state changes per pick, so workers
//! never contend; many gatehouse instances in front of the same servers spread load without
//! agreeing on anything.

use std::sync::Arc;

use super::alias::WeightedDraw;
use super::{first_available, Balancer, PickRequest, TRIES};
use crate::pool::Server;

#[derive(Debug)]
pub struct Random {
    draw: WeightedDraw,
}

impl Random {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        Self {
            draw: WeightedDraw::new(servers),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, servers: &[Arc<Server>], _: &PickRequest<'_>) -> Option<usize> {
        for _ in 0..TRIES {
            let index = self.draw.draw_one()?;
            if servers[index].can_take_request() {
                return Some(index);
            }
        }
        first_available(servers, fastrand::usize(..servers.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_weighted, limited, servers, set_down, shares};
    use super::*;
    use crate::pool::InFlight;

    fn pick(random: &Random, servers: &[Arc<Server>]) -> Option<usize> {
        random.pick(servers, &PickRequest::default())
    }

    #[test]
    fn weights_hold_within_two_percent() {
        // A fixed seed: the same draws on every run.
        fastrand::seed(0x9a7e);
        let weights = [1, 2, 3, 4];
        let servers = servers(&weights);
        let random = Random::new(&servers);
        let counts = shares(4, (0..100_000).map(|_| pick(&random, &servers)));
        assert_weighted(&counts, &weights);
    }

    #[test]
    fn unavailable_servers_are_never_drawn() {
        let servers = vec![
            limited("127.0.0.1:1", 1),
            limited("127.0.0.1:2", 0),
            limited("127.0.0.1:3", 0),
        ];
        set_down(&servers[1]);
        let held = InFlight::claim(&servers[0]).unwrap();
        let random = Random::new(&servers);
        let counts = shares(3, (0..1_000).map(|_| pick(&random, &servers)));
        assert_eq!(counts, vec![0, 0, 1_000]);
        set_down(&servers[2]);
        assert_eq!(pick(&random, &servers), None);
        drop(held);
        assert_eq!(pick(&random, &servers), Some(0));
        assert_eq!(pick(&Random::new(&[]), &[]), None);
    }
}
