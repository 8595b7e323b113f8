//! Power of two choices: draw two different servers at random by weight and take the one
//! with less load for its weight (`in_flight / weight`). O(1) per pick with no shared state
//! to update, and nearly as good at avoiding a busy server as least connections: a server
//! holding long requests is taken only when both draws are at least as busy.

use std::sync::Arc;

use super::alias::WeightedDraw;
use super::{first_available, less_loaded, Balancer, PickRequest, TRIES};
use crate::pool::Server;

#[derive(Debug)]
pub struct RandomTwo {
    draw: WeightedDraw,
}

impl RandomTwo {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        Self {
            draw: WeightedDraw::new(servers),
        }
    }

    /// A server that can take a request, drawn by weight.
    fn draw_available(&self, servers: &[Arc<Server>]) -> Option<usize> {
        for _ in 0..TRIES {
            let index = self.draw.draw_one()?;
            if servers[index].can_take_request() {
                return Some(index);
            }
        }
        first_available(servers, fastrand::usize(..servers.len()))
    }
}

impl Balancer for RandomTwo {
    fn pick(&self, servers: &[Arc<Server>], _: &PickRequest<'_>) -> Option<usize> {
        let first = self.draw_available(servers)?;
        let other = |index: usize| index != first && servers[index].can_take_request();
        let drawn = (0..TRIES).find_map(|_| self.draw.draw_one().filter(|&index| other(index)));
        // Draws that kept landing on `first` (1 in 256 with two equal servers) must not
        // skip the comparison: the next available server is the second choice then.
        let n = servers.len();
        let second = drawn.or_else(|| {
            (1..n)
                .map(|offset| (first + offset) % n)
                .find(|&i| other(i))
        });
        Some(match second {
            Some(second) if less_loaded(&servers[second], &servers[first]) => second,
            _ => first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_weighted, limited, load, servers, set_down, shares};
    use super::*;
    use crate::pool::InFlight;

    fn pick(p2c: &RandomTwo, servers: &[Arc<Server>]) -> Option<usize> {
        p2c.pick(servers, &PickRequest::default())
    }

    #[test]
    fn idle_servers_share_by_weight() {
        // A fixed seed: the same draws on every run.
        fastrand::seed(0x9a7e);
        let weights = [1, 2, 3, 4];
        let servers = servers(&weights);
        let p2c = RandomTwo::new(&servers);
        let counts = shares(4, (0..100_000).map(|_| pick(&p2c, &servers)));
        assert_weighted(&counts, &weights);
    }

    #[test]
    fn new_requests_avoid_a_server_holding_long_requests() {
        // A fixed seed: the same draws on every run.
        fastrand::seed(0x9a7e);
        let servers = servers(&[1, 1, 1]);
        load(&servers[0], 5);
        let p2c = RandomTwo::new(&servers);
        let counts = shares(3, (0..10_000).map(|_| pick(&p2c, &servers)));
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 4_000 && counts[2] > 4_000, "{counts:?}");
    }

    #[test]
    fn of_two_servers_the_busy_one_is_never_taken_while_the_other_is_idle() {
        // Two equal servers: the second draw lands on the first one in 256 picks and more.
        let servers = servers(&[1, 1]);
        load(&servers[0], 1);
        let p2c = RandomTwo::new(&servers);
        let counts = shares(2, (0..100_000).map(|_| pick(&p2c, &servers)));
        assert_eq!(counts, [0, 100_000]);
    }

    #[test]
    fn load_is_weighed_against_weight() {
        let servers = servers(&[10, 1]);
        // 5 in flight for weight 10 is less load than 1 for weight 1.
        load(&servers[0], 5);
        load(&servers[1], 1);
        let p2c = RandomTwo::new(&servers);
        assert!((0..1_000).all(|_| pick(&p2c, &servers) == Some(0)));
    }

    #[test]
    fn unavailable_servers_are_never_picked() {
        let servers = vec![
            limited("127.0.0.1:1", 1),
            limited("127.0.0.1:2", 0),
            limited("127.0.0.1:3", 0),
        ];
        let held = InFlight::claim(&servers[0]).unwrap();
        set_down(&servers[2]);
        let p2c = RandomTwo::new(&servers);
        assert!((0..1_000).all(|_| pick(&p2c, &servers) == Some(1)));
        set_down(&servers[1]);
        assert_eq!(pick(&p2c, &servers), None);
        drop(held);
        assert_eq!(pick(&p2c, &servers), Some(0));
        assert_eq!(pick(&RandomTwo::new(&[]), &[]), None);
    }
}
