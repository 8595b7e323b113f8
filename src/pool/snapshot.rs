//! What the request path reads of a pool: an immutable snapshot of its servers, split into
//! primary and backup tiers each with its balancer, and the pick that claims a server for a
//! request (balanced, for a retry, or bound to a session).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;

use super::balance::{self, balancer, Balancer, KeySource, PickRequest};
use super::latency;
use super::server::Server;
use crate::settings::{Balance, HashKey};

/// How often a pick retries when the server it chose filled up before it could be claimed.
const CLAIM_ATTEMPTS: usize = 3;

/// What the request path reads: the pool's servers and its balancing state.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub name: Arc<str>,
    /// Every server, in the order they were added.
    pub servers: Vec<Arc<Server>>,
    /// The primary servers, then the backups, each with its own balancer.
    tiers: [Tier; 2],
    /// Where a hashing pool reads each request's key; `None` for other algorithms.
    key: Option<KeySource>,
    /// Whether responses are timed (`least_time`).
    timed: bool,
    /// How long a returning server takes to reach its full weight; zero for no ramp.
    slow_start: Duration,
    /// Each server's tier and index there, by address, for requests bound to a server.
    places: HashMap<Arc<str>, (usize, usize)>,
}

/// Servers that are picked among together.
#[derive(Debug)]
struct Tier {
    servers: Vec<Arc<Server>>,
    balancer: Box<dyn Balancer>,
}

/// Why no server was picked. Either way the client gets 503 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// Every server that takes traffic is at its `max_connections`.
    #[error("every server of the pool is at its connection limit")]
    Saturated,
    /// No server takes traffic: none is active, or the pool is empty.
    #[error("no server of the pool is active")]
    Unavailable,
}

impl PoolSnapshot {
    /// A snapshot of `servers` balanced by `balance`; what the pool actor publishes after
    /// every change.
    pub fn new(
        name: Arc<str>,
        balance: Balance,
        hash_key: Option<&HashKey>,
        servers: Vec<Arc<Server>>,
    ) -> Self {
        Self::ramping(name, balance, hash_key, servers, Duration::ZERO)
    }

    /// [`PoolSnapshot::new`] with a slow start for servers that come back.
    pub fn ramping(
        name: Arc<str>,
        balance: Balance,
        hash_key: Option<&HashKey>,
        servers: Vec<Arc<Server>>,
        slow_start: Duration,
    ) -> Self {
        let tier = |backup: bool| {
            let servers: Vec<Arc<Server>> = servers
                .iter()
                .filter(|server| server.backup == backup)
                .cloned()
                .collect();
            Tier {
                balancer: balancer(balance, &servers),
                servers,
            }
        };
        let key = (balance == Balance::Hash)
            .then(|| KeySource::from(hash_key.unwrap_or(&HashKey::ClientIp)));
        let tiers = [tier(false), tier(true)];
        let places = tiers
            .iter()
            .enumerate()
            .flat_map(|(t, tier)| {
                tier.servers
                    .iter()
                    .enumerate()
                    .map(move |(i, server)| (server.address.clone(), (t, i)))
            })
            .collect();
        Self {
            name,
            tiers,
            places,
            servers,
            key,
            timed: balance == Balance::LeastTime,
            slow_start,
        }
    }

    /// Picks a server for one request and counts it in flight there. Backups are picked
    /// only when no primary server can take the request.
    pub fn pick(self: &Arc<Self>, req: &HttpRequest) -> Result<InFlight, PickError> {
        let mut ip = [0; 16];
        let key = self
            .key
            .as_ref()
            .and_then(|source| source.read(req, &mut ip));
        self.pick_for(&PickRequest { key, avoid: &[] })
    }

    /// [`PoolSnapshot::pick`] for a retry: any server but those in `avoid`.
    pub fn pick_other(
        self: &Arc<Self>,
        req: &HttpRequest,
        avoid: &[Arc<Server>],
    ) -> Result<InFlight, PickError> {
        let mut ip = [0; 16];
        let key = self
            .key
            .as_ref()
            .and_then(|source| source.read(req, &mut ip));
        self.pick_for(&PickRequest { key, avoid })
    }

    /// [`PoolSnapshot::pick`] for what an algorithm needs of a request. The balancer's choice
    /// is set aside for the least loaded other server when the request must avoid it, or, by
    /// chance, when it is ramping up after a return (`slow_start`).
    pub fn pick_for(self: &Arc<Self>, request: &PickRequest<'_>) -> Result<InFlight, PickError> {
        for (tier_index, tier) in self.tiers.iter().enumerate() {
            for _ in 0..CLAIM_ATTEMPTS {
                let Some(mut index) = tier.balancer.pick(&tier.servers, request) else {
                    break;
                };
                let avoided = is_avoided(&tier.servers[index], request.avoid);
                if avoided || self.holds_back(&tier.servers[index]) {
                    match least_loaded_other(&tier.servers, request.avoid, index) {
                        Some(other) => index = other,
                        None if avoided => break,
                        // A ramping server that is the only one left takes the request.
                        None => {}
                    }
                }
                match InFlight::claim(&tier.servers[index]) {
                    Some(claim) => return Ok(self.started(claim, tier_index, index)),
                    // Another request took its last slot since the balancer looked.
                    None => tier.balancer.load_changed(&tier.servers, index),
                }
            }
        }
        if self.servers.iter().any(|server| server.takes_traffic()) {
            Err(PickError::Saturated)
        } else {
            Err(PickError::Unavailable)
        }
    }

    /// Claims the server at `address` for a request of a session bound to it, if it is in the
    /// pool, takes the session ([`Server::takes_session`]) and has room.
    pub fn claim_bound(
        self: &Arc<Self>,
        address: &str,
        drain_timeout: Duration,
    ) -> Option<InFlight> {
        let &(tier, index) = self.places.get(address)?;
        let server = &self.tiers[tier].servers[index];
        if !server.takes_session(drain_timeout) {
            return None;
        }
        let claim = InFlight::claim(server)?;
        Some(self.started(claim, tier, index))
    }

    /// The server at `address`, if it is in the pool.
    pub fn server(&self, address: &str) -> Option<&Arc<Server>> {
        let &(tier, index) = self.places.get(address)?;
        Some(&self.tiers[tier].servers[index])
    }

    /// Whether a server still ramping up after its return sits this pick out: it takes a
    /// share of its picks that grows from a tenth to all of them over `slow_start`.
    fn holds_back(&self, server: &Server) -> bool {
        if self.slow_start.is_zero() {
            return false;
        }
        let share = server.condition().ramp(self.slow_start);
        share < 1.0 && fastrand::f64() >= share
    }

    /// Tells the balancer of a claimed request and arranges for it to hear of the rest.
    fn started(self: &Arc<Self>, claim: InFlight, tier: usize, index: usize) -> InFlight {
        let picked_at = self.timed.then(latency::now);
        let balancer = &self.tiers[tier].balancer;
        if !balancer.follows_load() {
            return claim.watched(None, picked_at);
        }
        balancer.started(&self.tiers[tier].servers, index);
        let watch = Watch {
            snapshot: self.clone(),
            tier,
            index,
        };
        claim.watched(Some(watch), picked_at)
    }
}

fn is_avoided(server: &Server, avoid: &[Arc<Server>]) -> bool {
    avoid.iter().any(|other| other.address == server.address)
}

/// The server with the least load for its weight, other than `servers[not]` and those in
/// `avoid`, that can take a request; ties go to the first after a random start. O(n), and
/// only reached when the balancer's own pick was set aside.
fn least_loaded_other(servers: &[Arc<Server>], avoid: &[Arc<Server>], not: usize) -> Option<usize> {
    let n = servers.len();
    let start = fastrand::usize(..n.max(1));
    let mut best: Option<usize> = None;
    for index in (0..n).map(|offset| (start + offset) % n) {
        let server = &servers[index];
        if index == not || is_avoided(server, avoid) || !server.can_take_request() {
            continue;
        }
        if best.is_none_or(|b| balance::less_loaded(server, &servers[b])) {
            best = Some(index);
        }
    }
    best
}

/// Where a request's load changes are reported: its server's slot in the snapshot it was
/// picked from.
pub(super) struct Watch {
    snapshot: Arc<PoolSnapshot>,
    tier: usize,
    index: usize,
}

impl Watch {
    pub(super) fn load_changed(&self) {
        let tier = &self.snapshot.tiers[self.tier];
        tier.balancer.load_changed(&tier.servers, self.index);
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Watch({}, tier {}, server {})",
            self.snapshot.name, self.tier, self.index
        )
    }
}

/// A request's claim on a server: counted in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    server: Arc<Server>,
    /// Where the balancer wants to hear of this request's load: set for pools whose
    /// algorithm follows load (least_connections, least_time).
    watch: Option<Watch>,
    /// When the server was picked, on the [`latency`] clock; set only for `least_time` pools.
    picked_at: Option<u64>,
}

impl InFlight {
    /// Counts a request in flight on `server`, whatever its limit.
    pub fn new(server: Arc<Server>) -> Self {
        server.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            server,
            watch: None,
            picked_at: None,
        }
    }

    /// Counts a request in flight on `server` if it is below its `max_connections`; two
    /// requests racing for the last slot cannot both have it.
    pub fn claim(server: &Arc<Server>) -> Option<Self> {
        let limit = server.limit();
        let in_flight = &server.stats.in_flight;
        if limit == 0 {
            in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .ok()?;
        }
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            server: server.clone(),
            watch: None,
            picked_at: None,
        })
    }

    pub(super) fn watched(mut self, watch: Option<Watch>, picked_at: Option<u64>) -> Self {
        self.watch = watch;
        self.picked_at = picked_at;
        self
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Counts a failed request against the server.
    pub fn failed(&self) {
        self.server.stats.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The server's response head has arrived. In pools balanced by response time, records how
    /// long it took since the pick; elsewhere does nothing and reads no clock.
    pub fn observe_head(&self) {
        if let Some(picked_at) = self.picked_at {
            let now = latency::now();
            let took = Duration::from_nanos(now.saturating_sub(picked_at));
            self.server.latency.observe(took, now);
            if let Some(watch) = &self.watch {
                watch.load_changed();
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(watch) = &self.watch {
            watch.load_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{ServerEntry, ServerState};

    fn snapshot(balance: Balance, entries: &[ServerEntry]) -> Arc<PoolSnapshot> {
        let servers = entries
            .iter()
            .map(|entry| Arc::new(Server::from_entry(entry).unwrap()))
            .collect();
        Arc::new(PoolSnapshot::new("web".into(), balance, None, servers))
    }

    fn backup(address: &str) -> ServerEntry {
        ServerEntry {
            backup: true,
            ..ServerEntry::new(address)
        }
    }

    fn with_state(address: &str, state: ServerState) -> ServerEntry {
        ServerEntry {
            state,
            ..ServerEntry::new(address)
        }
    }

    fn limited(address: &str, max_connections: u32) -> ServerEntry {
        ServerEntry {
            max_connections,
            ..ServerEntry::new(address)
        }
    }

    fn pick(snapshot: &Arc<PoolSnapshot>) -> Result<InFlight, PickError> {
        snapshot.pick_for(&PickRequest::default())
    }

    fn address(claim: &InFlight) -> &str {
        &claim.server().address
    }

    const ALL: [Balance; 6] = [
        Balance::RoundRobin,
        Balance::LeastConnections,
        Balance::LeastTime,
        Balance::RandomTwo,
        Balance::Random,
        Balance::Hash,
    ];

    #[test]
    fn backups_take_requests_only_when_no_primary_can() {
        for balance in ALL {
            let pool = snapshot(
                balance,
                &[ServerEntry::new("10.0.0.1:80"), backup("10.0.0.9:80")],
            );
            for _ in 0..20 {
                assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.1:80", "{balance:?}");
            }
            pool.servers[0].set_state(ServerState::Down);
            for _ in 0..20 {
                assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.9:80", "{balance:?}");
            }
            pool.servers[0].set_state(ServerState::Active);
            assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.1:80", "{balance:?}");
        }
    }

    #[test]
    fn a_full_primary_sends_requests_to_the_backup() {
        let pool = snapshot(
            Balance::RoundRobin,
            &[limited("10.0.0.1:80", 1), backup("10.0.0.9:80")],
        );
        let held = pick(&pool).unwrap();
        assert_eq!(address(&held), "10.0.0.1:80");
        assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.9:80");
        drop(held);
        assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.1:80");
    }

    #[test]
    fn max_connections_is_never_exceeded() {
        for balance in ALL {
            let pool = snapshot(
                balance,
                &[limited("10.0.0.1:80", 2), limited("10.0.0.2:80", 3)],
            );
            let held: Vec<InFlight> = (0..5).map(|_| pick(&pool).unwrap()).collect();
            assert_eq!(pool.servers[0].in_flight(), 2, "{balance:?}");
            assert_eq!(pool.servers[1].in_flight(), 3, "{balance:?}");
            assert_eq!(
                pick(&pool).unwrap_err(),
                PickError::Saturated,
                "{balance:?}"
            );
            drop(held);
            assert!(pick(&pool).is_ok(), "{balance:?}");
        }
    }

    #[test]
    fn draining_and_down_servers_get_nothing() {
        for balance in ALL {
            let pool = snapshot(
                balance,
                &[
                    with_state("10.0.0.1:80", ServerState::Drain),
                    ServerEntry::new("10.0.0.2:80"),
                    with_state("10.0.0.3:80", ServerState::Down),
                ],
            );
            for _ in 0..50 {
                assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.2:80", "{balance:?}");
            }
            pool.servers[1].set_state(ServerState::Drain);
            assert_eq!(
                pick(&pool).unwrap_err(),
                PickError::Unavailable,
                "{balance:?}"
            );
        }
    }

    #[test]
    fn an_empty_pool_is_unavailable() {
        for balance in ALL {
            assert_eq!(
                pick(&snapshot(balance, &[])).unwrap_err(),
                PickError::Unavailable
            );
        }
    }

    #[test]
    fn finished_requests_are_reported_to_load_balancers() {
        let pool = snapshot(
            Balance::LeastConnections,
            &[
                ServerEntry::new("10.0.0.1:80"),
                ServerEntry::new("10.0.0.2:80"),
            ],
        );
        let long = pick(&pool).unwrap();
        assert_eq!(address(&long), "10.0.0.1:80");
        // While the long request runs, short ones all go to the other server.
        for _ in 0..10 {
            assert_eq!(address(&pick(&pool).unwrap()), "10.0.0.2:80");
        }
        drop(long);
        let next: Vec<String> = (0..2)
            .map(|_| address(&pick(&pool).unwrap()).to_string())
            .collect();
        assert!(next.contains(&"10.0.0.1:80".to_string()), "{next:?}");
    }

    #[test]
    fn least_time_pools_time_their_responses() {
        let pool = snapshot(Balance::LeastTime, &[ServerEntry::new("10.0.0.1:80")]);
        let claim = pick(&pool).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        claim.observe_head();
        let average = pool.servers[0].latency.at(latency::now());
        assert!(average >= 4e6, "{average}");
        // Elsewhere no clock is read and nothing is recorded.
        let pool = snapshot(Balance::RoundRobin, &[ServerEntry::new("10.0.0.1:80")]);
        pick(&pool).unwrap().observe_head();
        assert_eq!(pool.servers[0].latency.at(latency::now()), 1e6);
    }

    #[test]
    fn hashing_pools_read_the_key_from_the_request() {
        use actix_web::test::TestRequest;
        let servers: Vec<Arc<Server>> = (1..=5)
            .map(|i| Arc::new(Server::new(&format!("10.0.0.{i}:80"), 1).unwrap()))
            .collect();
        let key = HashKey::Header("x-user".into());
        let pool = Arc::new(PoolSnapshot::new(
            "web".into(),
            Balance::Hash,
            Some(&key),
            servers,
        ));
        let owner = |user: &str| {
            let req = TestRequest::default()
                .insert_header(("x-user", user))
                .to_http_request();
            address(&pool.pick(&req).unwrap()).to_string()
        };
        for user in ["alice", "bob", "carol"] {
            let first = owner(user);
            assert!((0..20).all(|_| owner(user) == first));
        }
        // Without the header: round robin.
        let req = TestRequest::default().to_http_request();
        let picks: Vec<String> = (0..5)
            .map(|_| address(&pool.pick(&req).unwrap()).to_string())
            .collect();
        let distinct: std::collections::HashSet<_> = picks.iter().collect();
        assert_eq!(distinct.len(), 5, "{picks:?}");
    }
}
