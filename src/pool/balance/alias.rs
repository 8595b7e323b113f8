//! Weighted random draws in O(1): Vose's alias method. Built once per snapshot; each draw
//! takes one 64-bit random number, one multiplication and one comparison.

use std::sync::Arc;

use crate::pool::Server;

/// The alias table of a list of servers' weights.
#[derive(Debug)]
pub struct WeightedDraw {
    /// Per column: the chance, out of 2^32, that the column's own server is drawn.
    keep: Box<[u64]>,
    /// Per column: the server drawn otherwise.
    alias: Box<[u32]>,
}

impl WeightedDraw {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        let n = servers.len();
        let total: f64 = servers.iter().map(|s| f64::from(s.weight.max(1))).sum();
        // Each column holds 1.0 of probability mass scaled by n.
        let mut scaled: Vec<f64> = servers
            .iter()
            .map(|s| f64::from(s.weight.max(1)) * n as f64 / total)
            .collect();
        let mut keep = vec![1u64 << 32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            keep[s] = (scaled[s] * (1u64 << 32) as f64) as u64;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left holds a full column, up to rounding.
        Self {
            keep: keep.into(),
            alias: alias.into(),
        }
    }

    /// The server that the random number `random` draws; `None` for no servers.
    pub fn draw(&self, random: u64) -> Option<usize> {
        let n = self.keep.len() as u64;
        if n == 0 {
            return None;
        }
        let column = (((random >> 32) * n) >> 32) as usize;
        if random & 0xffff_ffff < self.keep[column] {
            Some(column)
        } else {
            Some(self.alias[column] as usize)
        }
    }

    /// A draw with the thread's fast random number generator.
    pub fn draw_one(&self) -> Option<usize> {
        self.draw(fastrand::u64(..))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_weighted, servers, shares};
    use super::*;

    #[test]
    fn draws_follow_the_weights() {
        let weights = [1, 2, 3, 10];
        let table = WeightedDraw::new(&servers(&weights));
        let mut rng = fastrand::Rng::with_seed(7);
        let counts = shares(4, (0..100_000).map(|_| table.draw(rng.u64(..))));
        assert_weighted(&counts, &weights);
    }

    #[test]
    fn equal_weights_keep_every_column() {
        let table = WeightedDraw::new(&servers(&[1, 1, 1]));
        assert_eq!(table.draw(0), Some(0));
        assert_eq!(table.draw(u64::MAX), Some(2));
        assert_eq!(WeightedDraw::new(&[]).draw(5), None);
    }
}
