//! Who may keep a connection open: the connection-level checks the listeners run on every
//! accepted connection (runtime blocks, the global lists with `deny_action = "close"`,
//! `max_connections_per_client`), the per-client connection counts, and the aggregated log of
//! refusals.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Security;

/// Locks the counts are spread over, so connections from different clients on different
/// workers rarely wait for each other.
const SHARDS: usize = 16;

/// Open connections per client address, across all workers. An address is in the map only
/// while it has a connection open, so memory is bounded by the open connections.
#[derive(Debug)]
pub struct ConnectionCounts {
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl Default for ConnectionCounts {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl ConnectionCounts {
    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Counts one more connection from `ip` if it has fewer than `limit` open; the guard
    /// counts it closed when dropped. `None`: the client is at its limit.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<ConnectionGuard> {
        let ip = ip.to_canonical();
        let mut shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        let open = shard.entry(ip).or_insert(0);
        if *open >= limit {
            if *open == 0 {
                shard.remove(&ip);
            }
            return None;
        }
        *open += 1;
        Some(ConnectionGuard {
            counts: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip` now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        let shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(&ip).copied().unwrap_or(0)
    }

    /// Client addresses with a connection open now.
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn close(&self, ip: IpAddr) {
        let mut shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = shard.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&ip);
            }
        }
    }
}

/// One counted connection; dropping it counts the connection closed.
#[derive(Debug)]
pub struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.counts.close(self.ip);
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("blocked at runtime")]
    Blocked,
    #[error("denied by [security] allow/deny")]
    Denied,
    #[error("over max_connections_per_client")]
    TooManyConnections,
}

impl Security {
    /// The connection-level checks for a client at `ip`, in order: runtime blocks, the global
    /// lists with `deny_action = "close"`, then `max_connections_per_client`. The guard, when
    /// there is a limit, must live as long as the connection.
    pub fn open_connection(&self, ip: IpAddr) -> Result<Option<ConnectionGuard>, Refusal> {
        if !self.admits_connection(ip) {
            return Err(if self.edge.denies.blocks(ip) {
                Refusal::Blocked
            } else {
                Refusal::Denied
            });
        }
        match self.settings.max_connections_per_client {
            0 => Ok(None),
            limit => self
                .edge
                .connections
                .try_open(ip, limit)
                .map(Some)
                .ok_or(Refusal::TooManyConnections),
        }
    }
}

/// How often at most a refused connection is logged. A flood of refused connections (the
/// usual reason to block an address) would otherwise write a line per connection; the lines
/// in between are counted and the count goes into the next line.
const REFUSAL_LOG_INTERVAL_MS: u64 = 1_000;

/// Logs refused connections at info, at most one line per [`REFUSAL_LOG_INTERVAL_MS`], each
/// naming one refusal and how many others there were since the line before.
#[derive(Debug)]
pub struct RefusalLog {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last line, plus one (0: none yet).
    last: AtomicU64,
    unlogged: AtomicU64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl RefusalLog {
    /// Records a refused connection from `client`; logs it if no line was written lately.
    pub fn refused(&self, client: IpAddr, why: Refusal) {
        if let Some(others) = self.take_turn() {
            if others == 0 {
                log::info!("closed connection from {client}: {why}");
            } else {
                log::info!(
                    "closed connection from {client}: {why} ({others} more connections refused since the last such line)"
                );
            }
        }
    }

    /// Whether this refusal gets a line; if so, how many went unlogged before it.
    fn take_turn(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_MS;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_client_gets_its_own_limit() {
        let counts = Arc::new(ConnectionCounts::default());
        let first = counts.try_open(ip("192.0.2.1"), 2).unwrap();
        let _second = counts.try_open(ip("192.0.2.1"), 2).unwrap();
        assert!(counts.try_open(ip("192.0.2.1"), 2).is_none());
        let _other = counts.try_open(ip("192.0.2.2"), 2).unwrap();
        assert_eq!(counts.open(ip("192.0.2.1")), 2);
        drop(first);
        assert_eq!(counts.open(ip("192.0.2.1")), 1);
        assert!(counts.try_open(ip("192.0.2.1"), 2).is_some());
    }

    #[test]
    fn closed_clients_are_forgotten() {
        let counts = Arc::new(ConnectionCounts::default());
        let guards: Vec<_> = (1..=50)
            .map(|n| counts.try_open(ip(&format!("198.51.100.{n}")), 1).unwrap())
            .collect();
        assert_eq!(counts.clients(), 50);
        drop(guards);
        assert_eq!(counts.clients(), 0);
        assert!(counts.try_open(ip("198.51.100.1"), 0).is_none());
        assert_eq!(counts.clients(), 0, "a refusal leaves nothing behind");
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let counts = Arc::new(ConnectionCounts::default());
        let _v4 = counts.try_open(ip("192.0.2.1"), 1).unwrap();
        assert!(counts.try_open(ip("::ffff:192.0.2.1"), 1).is_none());
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let log = RefusalLog {
            epoch: Instant::now() - std::time::Duration::from_secs(10),
            ..RefusalLog::default()
        };
        assert_eq!(log.take_turn(), Some(0));
        assert_eq!(log.take_turn(), None);
        assert_eq!(log.take_turn(), None);
        // A second later (as far as the log can tell), the next refusal reports the two.
        log.last.store(1, Ordering::Relaxed);
        assert_eq!(log.take_turn(), Some(2));
        assert_eq!(log.take_turn(), None);
    }
}
