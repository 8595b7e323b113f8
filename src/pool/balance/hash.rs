//! Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016), weighted.
//!
//! Each server walks its own permutation of the table's slots (an offset and a step derived
//! from its address) and claims the next free slot in its turn; a server of twice the weight
//! gets twice the turns. A request's key hashes to a slot, and the slot names its server: one
//! hash and one array read per pick. Servers keep their preferred slots across rebuilds, so
//! adding or removing one of n servers moves about 1/n of the keys.
//!
//! When the slot's server cannot take the request (down, draining, full), the next slots of
//! the table are tried in order, so the same key always falls back to the same server. A
//! request without the key is balanced by smooth weighted round robin instead.

use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::round_robin::RoundRobin;
use super::{first_available, Balancer, PickRequest};
use crate::pool::Server;

/// The smallest table: a prime, large enough that each of a few hundred servers holds its
/// share to within a percent or so.
const MIN_TABLE: usize = 65_537;

/// Slots per server at least; the Maglev paper keeps the table over 100 times the servers.
const SLOTS_PER_SERVER: usize = 100;

/// How many table slots a pick tries past an unavailable server before it scans.
const WALK: usize = 32;

/// Seeds for a server's offset and step in the table (any two different values).
const OFFSET_SEED: u64 = 0x6761_7465;
const STEP_SEED: u64 = 0x686f_7573;

const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub struct Hash {
    /// The server index for each slot.
    table: Box<[u32]>,
    /// For requests without the key.
    fallback: RoundRobin,
}

impl Hash {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        Self {
            table: maglev_table(servers),
            fallback: RoundRobin::new(servers),
        }
    }

    /// The server a key maps to when every server is available.
    #[cfg(test)]
    fn owner(&self, key: &[u8]) -> usize {
        self.table[slot(key, self.table.len())] as usize
    }
}

impl Balancer for Hash {
    fn pick(&self, servers: &[Arc<Server>], request: &PickRequest<'_>) -> Option<usize> {
        let Some(key) = request.key else {
            return self.fallback.pick(servers, request);
        };
        let size = self.table.len();
        if size == 0 {
            return None;
        }
        let start = slot(key, size);
        for step in 0..WALK {
            let index = self.table[(start + step) % size] as usize;
            if servers[index].can_take_request() {
                return Some(index);
            }
        }
        first_available(servers, self.table[start] as usize + 1)
    }
}

fn slot(key: &[u8], size: usize) -> usize {
    (xxh3_64(key) % size as u64) as usize
}

/// The smallest prime table that gives every server [`SLOTS_PER_SERVER`] slots.
fn table_size(servers: usize) -> usize {
    let mut size = MIN_TABLE.max(servers * SLOTS_PER_SERVER);
    while !is_prime(size) {
        size += 1;
    }
    size
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Fills the table: in each round a server of the largest weight claims one slot and a
/// lighter one claims a slot every (largest / its weight) rounds, each at the next free slot
/// of its own permutation `offset, offset + step, offset + 2 step, ...` (mod the prime size).
fn maglev_table(servers: &[Arc<Server>]) -> Box<[u32]> {
    if servers.is_empty() {
        return Box::new([]);
    }
    let size = table_size(servers.len());
    let mut table = vec![EMPTY; size];
    let weights: Vec<u64> = servers.iter().map(|s| u64::from(s.weight.max(1))).collect();
    let heaviest = *weights.iter().max().expect("servers is not empty");
    let mut permutations: Vec<(u64, u64)> = servers
        .iter()
        .map(|server| {
            let address = server.address.as_bytes();
            let offset = xxh3_64_with_seed(address, OFFSET_SEED) % size as u64;
            let step = xxh3_64_with_seed(address, STEP_SEED) % (size as u64 - 1) + 1;
            (offset, step)
        })
        .collect();
    // Turns earned so far, in units of 1/heaviest of a slot.
    let mut earned = vec![0u64; servers.len()];
    let mut filled = 0;
    while filled < size {
        for (index, weight) in weights.iter().enumerate() {
            earned[index] += weight;
            if earned[index] < heaviest {
                continue;
            }
            earned[index] -= heaviest;
            let (offset, step) = &mut permutations[index];
            loop {
                let candidate = *offset as usize;
                *offset = (*offset + *step) % size as u64;
                if table[candidate] == EMPTY {
                    table[candidate] = index as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break;
            }
        }
    }
    table.into()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_weighted, limited, servers, set_down, shares};
    use super::*;
    use crate::pool::InFlight;

    fn named(count: usize) -> Vec<Arc<Server>> {
        (0..count)
            .map(|i| Arc::new(Server::new(&format!("10.0.0.{}:8080", i + 1), 1).unwrap()))
            .collect()
    }

    fn keyed(key: &[u8]) -> PickRequest<'_> {
        PickRequest {
            key: Some(key),
            avoid: &[],
        }
    }

    #[test]
    fn the_same_key_lands_on_the_same_server() {
        let servers = named(5);
        let hash = Hash::new(&servers);
        for key in ["alice", "bob", "carol", "dave"] {
            let first = hash.pick(&servers, &keyed(key.as_bytes()));
            assert!((0..100).all(|_| hash.pick(&servers, &keyed(key.as_bytes())) == first));
            // A new snapshot of the same servers maps it the same way.
            assert_eq!(
                Hash::new(&servers).pick(&servers, &keyed(key.as_bytes())),
                first
            );
        }
    }

    #[test]
    fn keys_spread_by_weight() {
        let weights = [1, 2, 3, 4];
        let servers = servers(&weights);
        let hash = Hash::new(&servers);
        let keys: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let counts = shares(
            4,
            keys.iter()
                .map(|k| hash.pick(&servers, &keyed(k.as_bytes()))),
        );
        assert_weighted(&counts, &weights);
    }

    #[test]
    fn adding_an_eleventh_server_moves_about_one_key_in_eleven() {
        let ten = Hash::new(&named(10));
        let eleven = Hash::new(&named(11));
        let moved = (0..100_000)
            .map(|i| format!("key-{i}"))
            .filter(|key| ten.owner(key.as_bytes()) != eleven.owner(key.as_bytes()))
            .count();
        let share = moved as f64 / 100_000.0;
        assert!((0.05..=0.14).contains(&share), "{share}");
    }

    #[test]
    fn removing_a_server_moves_its_keys_and_few_others() {
        let all = named(8);
        let before = Hash::new(&all);
        let after = Hash::new(&all[..7]);
        let (mut orphaned, mut disturbed) = (0, 0);
        for i in 0..100_000 {
            let key = format!("key-{i}");
            let owner = before.owner(key.as_bytes());
            if owner == 7 {
                orphaned += 1;
            } else if after.owner(key.as_bytes()) != owner {
                disturbed += 1;
            }
        }
        assert!((11_000..=14_000).contains(&orphaned), "{orphaned}");
        assert!(
            disturbed <= 1_000,
            "{disturbed} keys of remaining servers moved"
        );
    }

    #[test]
    fn an_unavailable_server_s_keys_fall_to_the_same_next_server() {
        let servers = named(4);
        let hash = Hash::new(&servers);
        let key = b"session-42";
        let owner = hash.pick(&servers, &keyed(key)).unwrap();
        set_down(&servers[owner]);
        let second = hash.pick(&servers, &keyed(key)).unwrap();
        assert_ne!(second, owner);
        assert!((0..50).all(|_| hash.pick(&servers, &keyed(key)) == Some(second)));
        // Keys of the other servers stay where they were.
        for i in 0..1_000 {
            let key = format!("other-{i}");
            let home = hash.owner(key.as_bytes());
            if home != owner {
                assert_eq!(hash.pick(&servers, &keyed(key.as_bytes())), Some(home));
            }
        }
        servers.iter().for_each(|s| set_down(s));
        assert_eq!(hash.pick(&servers, &keyed(key)), None);
    }

    #[test]
    fn a_full_server_passes_its_keys_on_until_it_has_room() {
        let servers = vec![limited("10.0.0.1:80", 1), limited("10.0.0.2:80", 1)];
        let hash = Hash::new(&servers);
        let key = b"k";
        let owner = hash.pick(&servers, &keyed(key)).unwrap();
        let held = InFlight::claim(&servers[owner]).unwrap();
        assert_eq!(hash.pick(&servers, &keyed(key)), Some(1 - owner));
        drop(held);
        assert_eq!(hash.pick(&servers, &keyed(key)), Some(owner));
    }

    #[test]
    fn requests_without_the_key_go_round_robin() {
        let servers = named(3);
        let hash = Hash::new(&servers);
        let picks: Vec<_> = (0..6)
            .map(|_| hash.pick(&servers, &PickRequest::default()).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn large_pools_get_a_larger_prime_table() {
        assert_eq!(table_size(3), 65_537);
        let size = table_size(1_000);
        assert!(size >= 100_000 && is_prime(size));
        assert!(Hash::new(&[]).pick(&[], &keyed(b"x")).is_none());
    }
}
