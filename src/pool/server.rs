//! A server of a pool as the request path sees it: its address, the operator's settings for
//! it and its live counters.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::uri::Authority;

pub use crate::settings::parse_address;

use super::condition::Condition;
use super::latency::{self, PeakEwma};
use crate::settings::{ServerEntry, ServerState};

/// One upstream server. Immutable but for its counters, its response-time average and the
/// operator's state, which may change while requests run.
#[derive(Debug)]
pub struct Server {
    /// `host:port`, as written in settings.
    pub address: Arc<str>,
    /// The address ready to put in an upstream URI.
    pub authority: Authority,
    /// Share of the pool's requests relative to the other servers.
    pub weight: u32,
    /// Most requests in flight at once; 0 means no limit.
    pub max_connections: u32,
    /// Takes requests only when no primary server of the pool can.
    pub backup: bool,
    /// The operator's [`ServerState`], as a byte.
    state: AtomicU8,
    /// Shared with the server that this one replaced at the same address, if any, so a
    /// changed entry keeps the counters and the requests in flight.
    pub stats: Arc<ServerStats>,
    /// Time to response head, kept only for pools balanced by `least_time`.
    pub latency: PeakEwma,
}

/// A server's settings beyond its address and weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Most requests in flight at once; 0 means no limit.
    pub max_connections: u32,
    /// Takes requests only when no primary server can.
    pub backup: bool,
    /// The operator's say: active, drain or down.
    pub state: ServerState,
}

impl From<&ServerEntry> for ServerOptions {
    fn from(entry: &ServerEntry) -> Self {
        Self {
            max_connections: entry.max_connections,
            backup: entry.backup,
            state: entry.state,
        }
    }
}

/// Counters and health kept per server; shared across snapshots, and handed on when the
/// server's entry changes, so membership changes keep them.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// What health checks and live traffic say.
    pub condition: Condition,
    /// Requests picked for this server whose response has not finished.
    pub in_flight: AtomicUsize,
    /// Requests sent to this server since it joined the pool.
    pub requests: AtomicU64,
    /// Requests that failed to connect, timed out or broke mid-response.
    pub failures: AtomicU64,
    /// When the server entered `drain`, on the latency clock; 0 when it is not draining.
    drain_since: AtomicU64,
}

impl Server {
    /// The settings entry that describes this server, as the admin state file keeps it.
    pub fn entry(&self) -> ServerEntry {
        ServerEntry {
            address: self.address.to_string(),
            weight: self.weight,
            max_connections: self.max_connections,
            backup: self.backup,
            state: self.state(),
        }
    }

    /// An active primary server without a connection limit; the address must have passed
    /// [`parse_address`].
    pub fn new(address: &str, weight: u32) -> Result<Self, String> {
        Self::with_options(address, weight, ServerOptions::default())
    }

    /// A server from its settings entry.
    pub fn from_entry(entry: &ServerEntry) -> Result<Self, String> {
        Self::with_options(&entry.address, entry.weight, entry.into())
    }

    pub fn with_options(
        address: &str,
        weight: u32,
        options: ServerOptions,
    ) -> Result<Self, String> {
        Self::with_stats(address, weight, options, Arc::default())
    }

    /// `entry` taking over from `previous` at the same address: same counters, same requests
    /// in flight (counted against the new limit), new settings.
    pub fn succeeding(previous: &Server, entry: &ServerEntry) -> Result<Self, String> {
        Self::with_stats(
            &entry.address,
            entry.weight,
            entry.into(),
            previous.stats.clone(),
        )
    }

    fn with_stats(
        address: &str,
        weight: u32,
        options: ServerOptions,
        stats: Arc<ServerStats>,
    ) -> Result<Self, String> {
        let draining = options.state == ServerState::Drain;
        if draining && stats.drain_since.load(Ordering::Relaxed) == 0 {
            stats
                .drain_since
                .store(latency::now().max(1), Ordering::Relaxed);
        } else if !draining {
            stats.drain_since.store(0, Ordering::Relaxed);
        }
        Ok(Self {
            authority: parse_address(address)?,
            address: address.into(),
            weight,
            max_connections: options.max_connections,
            backup: options.backup,
            state: AtomicU8::new(options.state as u8),
            stats,
            latency: PeakEwma::default(),
        })
    }

    /// Whether this server is what `entry` describes, state included.
    pub fn matches(&self, entry: &ServerEntry) -> bool {
        *self.address == *entry.address
            && self.weight == entry.weight
            && ServerOptions::from(entry) == self.options()
    }

    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            max_connections: self.max_connections,
            backup: self.backup,
            state: self.state(),
        }
    }

    /// The operator's state.
    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            s if s == ServerState::Active as u8 => ServerState::Active,
            s if s == ServerState::Drain as u8 => ServerState::Drain,
            _ => ServerState::Down,
        }
    }

    /// Changes the operator's state; requests in flight are not affected.
    pub fn set_state(&self, state: ServerState) {
        let before = self.state.swap(state as u8, Ordering::Relaxed);
        let drain_since = &self.stats.drain_since;
        if state != ServerState::Drain {
            drain_since.store(0, Ordering::Relaxed);
        } else if before != ServerState::Drain as u8 {
            drain_since.store(latency::now().max(1), Ordering::Relaxed);
        }
    }

    /// Whether the server takes a request of a session bound to it: as any request, or, while
    /// it drains, for `drain_timeout` after the drain began (health permitting).
    pub fn takes_session(&self, drain_timeout: Duration) -> bool {
        match self.state() {
            ServerState::Active => self.stats.condition.admits(),
            ServerState::Drain => {
                self.drain_keeps_sessions(drain_timeout, latency::now())
                    && self.stats.condition.admits()
            }
            ServerState::Down => false,
        }
    }

    /// Whether the drain still keeps the server's sessions at `now` (on the latency clock):
    /// for `drain_timeout` after it began.
    fn drain_keeps_sessions(&self, drain_timeout: Duration, now: u64) -> bool {
        let since = self.stats.drain_since.load(Ordering::Relaxed);
        Duration::from_nanos(now.saturating_sub(since)) < drain_timeout
    }

    /// Whether the server may be sent new requests at all: the operator says active, and
    /// neither health checks nor passive detection keep it out.
    pub fn takes_traffic(&self) -> bool {
        self.state() == ServerState::Active && self.stats.condition.admits()
    }

    /// What health checks and live traffic say about the server.
    pub fn condition(&self) -> &Condition {
        &self.stats.condition
    }

    /// The most requests the server may have in flight now; 0 means no limit. A server on
    /// trial after an ejection takes one at a time.
    pub(super) fn limit(&self) -> usize {
        if self.stats.condition.on_trial() {
            1
        } else {
            self.max_connections as usize
        }
    }

    /// Whether the server is below its `max_connections` (one request, on trial).
    pub fn has_room(&self) -> bool {
        let limit = self.limit();
        limit == 0 || self.stats.in_flight.load(Ordering::Relaxed) < limit
    }

    /// Whether a balancer may pick this server for a new request now.
    pub fn can_take_request(&self) -> bool {
        self.takes_traffic() && self.has_room()
    }

    /// Whether the server is draining and its last request in flight has finished.
    pub fn drained(&self) -> bool {
        self.state() == ServerState::Drain && self.in_flight() == 0
    }

    /// Requests in flight, for balancers comparing load.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InFlight;

    #[test]
    fn in_flight_counts_until_dropped() {
        let server = Arc::new(Server::new("127.0.0.1:9001", 1).unwrap());
        let claim = InFlight::new(server.clone());
        assert_eq!(server.stats.in_flight.load(Ordering::Relaxed), 1);
        drop(claim);
        assert_eq!(server.stats.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(server.stats.requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_claim_respects_max_connections() {
        let options = ServerOptions {
            max_connections: 2,
            ..ServerOptions::default()
        };
        let server = Arc::new(Server::with_options("127.0.0.1:9001", 1, options).unwrap());
        let first = InFlight::claim(&server).unwrap();
        let second = InFlight::claim(&server).unwrap();
        assert!(!server.has_room());
        assert!(InFlight::claim(&server).is_none());
        drop(first);
        assert!(server.can_take_request());
        let third = InFlight::claim(&server).unwrap();
        assert_eq!(server.in_flight(), 2);
        drop((second, third));
        assert_eq!(server.stats.requests.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn only_active_servers_take_traffic() {
        let server = Server::new("127.0.0.1:9001", 1).unwrap();
        assert!(server.can_take_request());
        for state in [ServerState::Drain, ServerState::Down] {
            server.set_state(state);
            assert_eq!(server.state(), state);
            assert!(!server.takes_traffic());
            assert!(!server.can_take_request());
        }
        server.set_state(ServerState::Active);
        assert!(server.can_take_request());
    }

    #[test]
    fn a_draining_server_keeps_its_sessions_for_drain_timeout() {
        let server = Server::new("127.0.0.1:9001", 1).unwrap();
        let timeout = Duration::from_secs(300);
        assert!(server.takes_session(timeout));
        let before = latency::now();
        server.set_state(ServerState::Drain);
        let after = latency::now();
        assert!(!server.takes_traffic(), "no new sessions");
        assert!(server.takes_session(timeout), "its own sessions stay");
        let span = timeout.as_nanos() as u64;
        assert!(server.drain_keeps_sessions(timeout, before + span - 1));
        assert!(!server.drain_keeps_sessions(timeout, after + span));
        assert!(!server.takes_session(Duration::ZERO));
        server.set_state(ServerState::Down);
        assert!(!server.takes_session(timeout));
    }

    #[test]
    fn the_entry_round_trips() {
        let mut entry = ServerEntry::new("127.0.0.1:9001");
        entry.weight = 3;
        entry.max_connections = 10;
        entry.backup = true;
        entry.state = ServerState::Drain;
        let server = Server::from_entry(&entry).unwrap();
        assert_eq!(server.entry(), entry);
        assert!(server.matches(&entry));
        entry.state = ServerState::Active;
        assert!(!server.matches(&entry));
    }

    #[test]
    fn a_successor_keeps_the_counters_and_requests_in_flight() {
        let old = Arc::new(Server::new("127.0.0.1:9001", 1).unwrap());
        let running = InFlight::new(old.clone());
        let mut entry = old.entry();
        entry.weight = 5;
        entry.max_connections = 1;
        let new = Arc::new(Server::succeeding(&old, &entry).unwrap());
        assert_eq!((new.weight, new.in_flight()), (5, 1));
        assert!(
            !new.has_room(),
            "the old request counts against the new limit"
        );
        drop(running);
        assert_eq!(new.in_flight(), 0);
        assert_eq!(new.stats.requests.load(Ordering::Relaxed), 1);
    }
}
