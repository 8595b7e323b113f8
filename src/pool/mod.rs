//! Pools: groups of servers that host the same content, and how one is picked per request.
//!
//! The [`Pool`] actor is the only writer of a pool's membership. It publishes an immutable
//! [`PoolSnapshot`] that request handlers read without a message round trip; per-request
//! counters (in flight, requests, failures) are atomics on each [`Server`], and each
//! algorithm's selection state lives in the snapshot behind atomics or a short mutex.

mod alias;
mod balance;
mod budget;
mod condition;
mod hash;
mod hash_key;
mod latency;
mod least_connections;
mod least_time;
mod min_tree;
mod random;
mod random_two;
mod round_robin;
mod server;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::HttpRequest;
use arc_swap::ArcSwap;

pub use balance::{balancer, Balancer, PickRequest};
pub use budget::RetryBudget;
pub use condition::{ejection_allowance, Condition, PassiveVerdict, ProbeReport, ProbeVerdict};
pub use hash_key::KeySource;
pub use latency::{now as clock, PeakEwma};
pub use server::{parse_address, InFlight, Server, ServerOptions, ServerStats};

use crate::affinity::Affinity;
use crate::settings::{
    Balance, HashKey, InitialState, PassiveSettings, PoolSettings, ServerEntry, ServerState,
    StickySettings,
};

/// How often a pick retries when the server it chose filled up before it could be claimed.
const CLAIM_ATTEMPTS: usize = 3;

/// How often a pool with draining servers looks whether their last request has finished:
/// often enough that the log line follows within a blink, rarely enough to cost nothing.
const DRAIN_CHECK: Duration = Duration::from_millis(200);

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
    places: std::collections::HashMap<Arc<str>, (usize, usize)>,
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

    /// A request to `server` failed for `reason`: passive detection counts it, and ejects
    /// the server if it has failed too often and the pool can spare it
    /// (`max_ejected_percent`).
    pub fn report_failure(&self, server: &Server, reason: &str, settings: &PassiveSettings) {
        if !settings.enabled {
            return;
        }
        let ejected = self
            .servers
            .iter()
            .filter(|s| s.condition().passive() == PassiveVerdict::Ejected)
            .count();
        let allowance = ejection_allowance(self.servers.len(), settings.max_ejected_percent);
        server
            .condition()
            .failed(&server.address, reason, settings, ejected < allowance);
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
pub(crate) struct Watch {
    snapshot: Arc<PoolSnapshot>,
    tier: usize,
    index: usize,
}

impl Watch {
    fn load_changed(&self) {
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

/// The actor that owns one pool's membership.
pub struct Pool {
    name: Arc<str>,
    balance: Balance,
    hash_key: Option<HashKey>,
    servers: Vec<Arc<Server>>,
    published: Arc<ArcSwap<PoolSnapshot>>,
    /// Addresses of draining servers with requests still in flight.
    draining: Vec<Arc<str>>,
    /// The timer that looks at `draining`, while it is not empty.
    drain_check: Option<SpawnHandle>,
    health: Health,
}

/// What a pool's health settings mean for its servers' conditions.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Health {
    /// The probe verdict a server joining the pool starts with.
    joining: ProbeVerdict,
    /// Whether live traffic may eject servers.
    passive: bool,
    slow_start: Duration,
}

impl Health {
    fn of(settings: &PoolSettings) -> Self {
        let joining = match settings.health.as_ref().map(|h| h.initial_state) {
            None => ProbeVerdict::Unchecked,
            Some(InitialState::Up) => ProbeVerdict::Up,
            Some(InitialState::Down) => ProbeVerdict::Down,
        };
        Self {
            joining,
            passive: settings.passive.enabled,
            slow_start: settings.slow_start.get(),
        }
    }

    /// Brings a server's condition in line with these settings: a joining server gets the
    /// initial probe verdict; turning checks or ejection off clears their verdicts.
    fn apply(&self, server: &Server, joining: bool) {
        let condition = server.condition();
        if self.joining == ProbeVerdict::Unchecked {
            condition.set_probe(ProbeVerdict::Unchecked);
        } else if joining {
            condition.set_probe(self.joining);
        } else if condition.probe() == ProbeVerdict::Unchecked {
            // Checks just turned on for a server already taking traffic: it stays in until
            // probes say otherwise.
            condition.set_probe(ProbeVerdict::Up);
        }
        if !self.passive {
            condition.clear_ejection();
        }
    }
}

impl Pool {
    fn publish(&self) {
        for server in &self.servers {
            server.condition().set_owner(&self.name, &server.address);
        }
        let snapshot = PoolSnapshot::ramping(
            self.name.clone(),
            self.balance,
            self.hash_key.as_ref(),
            self.servers.clone(),
            self.health.slow_start,
        );
        self.published.store(Arc::new(snapshot));
    }

    fn add(&mut self, address: &str, weight: u32, options: ServerOptions) -> Result<(), PoolError> {
        if self.servers.iter().any(|s| &*s.address == address) {
            return Err(PoolError::Duplicate(address.into()));
        }
        let server = Server::with_options(address, weight, options).map_err(|reason| {
            PoolError::Address {
                address: address.into(),
                reason,
            }
        })?;
        self.health.apply(&server, true);
        self.servers.push(Arc::new(server));
        self.publish();
        Ok(())
    }

    /// Takes a pool's settings as a whole (a reload): servers whose entry did not change keep
    /// their object, changed ones are succeeded by a new object with the same counters,
    /// missing ones leave. One publish.
    fn reconfigure(&mut self, settings: &PoolSettings) -> Result<(), PoolError> {
        let servers = merge(&self.servers, &settings.servers)?;
        self.health = Health::of(settings);
        for server in &servers {
            let joining = !self.servers.iter().any(|s| s.address == server.address);
            self.health.apply(server, joining);
        }
        self.servers = servers;
        self.balance = settings.balance;
        self.hash_key = settings.hash_key.clone();
        self.publish();
        Ok(())
    }

    /// Changes one server's settings. A state change is a store on the running server; other
    /// changes put a successor in its place that keeps its counters, and publish.
    fn update(&mut self, address: &str, changes: &ServerChanges) -> Result<Arc<Server>, PoolError> {
        let index = self
            .servers
            .iter()
            .position(|s| &*s.address == address)
            .ok_or_else(|| PoolError::Unknown(address.into()))?;
        let current = self.servers[index].clone();
        let mut entry = current.entry();
        changes.apply_to(&mut entry);
        if current.state() != ServerState::Active && entry.state == ServerState::Active {
            current.condition().came_back();
        }
        current.set_state(entry.state);
        if !current.matches(&entry) {
            let successor =
                Server::succeeding(&current, &entry).map_err(|reason| PoolError::Address {
                    address: address.into(),
                    reason,
                })?;
            self.servers[index] = Arc::new(successor);
            self.publish();
        }
        Ok(self.servers[index].clone())
    }

    /// Starts watching servers that have just entered `drain`.
    fn watch_drains(&mut self, entered: Vec<Arc<str>>, ctx: &mut Context<Self>) {
        for address in entered {
            if !self.draining.contains(&address) {
                self.draining.push(address);
            }
        }
        if !self.draining.is_empty() && self.drain_check.is_none() {
            self.drain_check =
                Some(ctx.run_interval(DRAIN_CHECK, |pool, ctx| pool.check_drains(ctx)));
        }
    }

    /// Logs, once each, the draining servers whose last request has finished; stops watching
    /// servers that left `drain` or the pool.
    fn check_drains(&mut self, ctx: &mut Context<Self>) {
        let servers = &self.servers;
        let name = &self.name;
        self.draining.retain(|address| {
            let Some(server) = servers.iter().find(|s| s.address == *address) else {
                return false;
            };
            if server.state() != ServerState::Drain {
                return false;
            }
            if server.drained() {
                log::info!("server {address} in pool {name} drained: no requests in flight");
                return false;
            }
            true
        });
        if self.draining.is_empty() {
            if let Some(handle) = self.drain_check.take() {
                ctx.cancel_future(handle);
            }
        }
    }

    /// Addresses of servers draining now that were not draining in `before`.
    fn newly_draining(&self, before: &[(Arc<str>, ServerState)]) -> Vec<Arc<str>> {
        self.servers
            .iter()
            .filter(|s| s.state() == ServerState::Drain)
            .filter(|s| {
                !before
                    .iter()
                    .any(|(address, state)| *address == s.address && *state == ServerState::Drain)
            })
            .map(|s| s.address.clone())
            .collect()
    }

    fn states(&self) -> Vec<(Arc<str>, ServerState)> {
        self.servers
            .iter()
            .map(|s| (s.address.clone(), s.state()))
            .collect()
    }

    fn remove(&mut self, address: &str) -> Result<(), PoolError> {
        let before = self.servers.len();
        self.servers.retain(|s| &*s.address != address);
        if self.servers.len() == before {
            return Err(PoolError::Unknown(address.into()));
        }
        self.publish();
        Ok(())
    }
}

impl Actor for Pool {
    type Context = Context<Self>;
}

/// The servers a pool should have: kept from `current` where the entry is unchanged, with
/// `current`'s counters where only the entry changed.
fn merge(current: &[Arc<Server>], wanted: &[ServerEntry]) -> Result<Vec<Arc<Server>>, PoolError> {
    wanted
        .iter()
        .map(|entry| {
            let previous = current
                .iter()
                .find(|server| *server.address == *entry.address);
            let server = match previous {
                Some(server) if server.matches(entry) => return Ok(server.clone()),
                Some(server) => Server::succeeding(server, entry),
                None => Server::from_entry(entry),
            };
            server.map(Arc::new).map_err(|reason| PoolError::Address {
                address: entry.address.clone(),
                reason,
            })
        })
        .collect()
}

/// What `PATCH /pools/NAME/servers/ADDRESS` may change; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerChanges {
    pub weight: Option<u32>,
    pub state: Option<ServerState>,
    pub max_connections: Option<u32>,
    pub backup: Option<bool>,
}

impl ServerChanges {
    /// Writes the changes into `entry`.
    pub fn apply_to(&self, entry: &mut ServerEntry) {
        if let Some(weight) = self.weight {
            entry.weight = weight;
        }
        if let Some(state) = self.state {
            entry.state = state;
        }
        if let Some(max_connections) = self.max_connections {
            entry.max_connections = max_connections;
        }
        if let Some(backup) = self.backup {
            entry.backup = backup;
        }
    }
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PoolError {
    #[error("server {0} is already in the pool")]
    Duplicate(String),
    #[error("server {0} is not in the pool")]
    Unknown(String),
    #[error("server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("no pool named {0:?}")]
    NoPool(String),
    #[error("the pool is not running")]
    Stopped,
}

/// Adds a server to the pool.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct AddServer {
    pub address: String,
    pub weight: u32,
    pub options: ServerOptions,
}

/// Replaces the pool's algorithm, health settings and servers with those of new settings.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct Reconfigure {
    pub settings: PoolSettings,
}

impl Handler<Reconfigure> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) -> Self::Result {
        let before = self.states();
        self.reconfigure(&msg.settings)?;
        let entered = self.newly_draining(&before);
        self.watch_drains(entered, ctx);
        Ok(())
    }
}

/// Changes one server's weight, limit, backup flag or state; answers the server as it is now.
#[derive(Message)]
#[rtype(result = "Result<Arc<Server>, PoolError>")]
pub struct UpdateServer {
    pub address: String,
    pub changes: ServerChanges,
}

impl Handler<UpdateServer> for Pool {
    type Result = Result<Arc<Server>, PoolError>;

    fn handle(&mut self, msg: UpdateServer, ctx: &mut Context<Self>) -> Self::Result {
        let before = self.states();
        let server = self.update(&msg.address, &msg.changes)?;
        let entered = self.newly_draining(&before);
        self.watch_drains(entered, ctx);
        Ok(server)
    }
}

/// Removes a server; requests already on it finish.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct RemoveServer {
    pub address: String,
}

impl Handler<AddServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: AddServer, ctx: &mut Context<Self>) -> Self::Result {
        let before = self.states();
        self.add(&msg.address, msg.weight, msg.options)?;
        let entered = self.newly_draining(&before);
        self.watch_drains(entered, ctx);
        Ok(())
    }
}

impl Handler<RemoveServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: RemoveServer, _: &mut Context<Self>) -> Self::Result {
        self.remove(&msg.address)
    }
}

/// A pool's session persistence with the settings it was built from.
type RunningAffinity = (StickySettings, Arc<Affinity>);

/// A typed handle on a running pool: commands go to the actor, reads come from its snapshot.
#[derive(Clone)]
pub struct PoolHandle {
    addr: Addr<Pool>,
    published: Arc<ArcSwap<PoolSnapshot>>,
    /// Shared by every worker and kept across reloads, as the pool is.
    budget: Arc<RetryBudget>,
    /// The pool's session persistence and the settings it was built from: kept across
    /// reloads that leave `[pools.NAME.sticky]` as it was, so sessions stay bound.
    affinity: Arc<std::sync::Mutex<Option<RunningAffinity>>>,
}

impl PoolHandle {
    /// Starts an empty pool actor on the current arbiter, with `settings`' algorithm and
    /// health settings (not its servers).
    pub fn start(name: &str, settings: &PoolSettings) -> Self {
        let name: Arc<str> = name.into();
        let hash_key = settings.hash_key.clone();
        let empty = PoolSnapshot::new(
            name.clone(),
            settings.balance,
            hash_key.as_ref(),
            Vec::new(),
        );
        let published = Arc::new(ArcSwap::from_pointee(empty));
        let pool = Pool {
            name,
            balance: settings.balance,
            hash_key,
            servers: Vec::new(),
            published: published.clone(),
            draining: Vec::new(),
            drain_check: None,
            health: Health::of(settings),
        };
        Self {
            addr: pool.start(),
            published,
            budget: Arc::default(),
            affinity: Arc::default(),
        }
    }

    /// The pool's session persistence for `sticky`: the running one if its settings are
    /// the same, else a new one (with empty tables).
    pub fn affinity(&self, sticky: Option<&StickySettings>) -> Option<Arc<Affinity>> {
        let mut current = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sticky) = sticky else {
            *current = None;
            return None;
        };
        match &*current {
            Some((settings, affinity)) if settings == sticky => Some(affinity.clone()),
            _ => {
                let affinity = Arc::new(Affinity::new(sticky));
                *current = Some((sticky.clone(), affinity.clone()));
                Some(affinity)
            }
        }
    }

    /// The pool's retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Starts a pool and adds its servers from settings, as the admin API would.
    pub async fn from_settings(name: &str, settings: &PoolSettings) -> Result<Self, PoolError> {
        let pool = Self::start(name, settings);
        for server in &settings.servers {
            pool.add_entry(server).await?;
        }
        Ok(pool)
    }

    pub async fn add_server(&self, address: &str, weight: u32) -> Result<(), PoolError> {
        let msg = AddServer {
            address: address.into(),
            weight,
            options: ServerOptions::default(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// Adds a server as a settings entry describes it (limit, backup, state included).
    pub async fn add_entry(&self, entry: &ServerEntry) -> Result<(), PoolError> {
        let msg = AddServer {
            address: entry.address.clone(),
            weight: entry.weight,
            options: entry.into(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// Applies a pool's new settings in one step (see [`Reconfigure`]).
    pub async fn reconfigure(&self, settings: &PoolSettings) -> Result<(), PoolError> {
        let msg = Reconfigure {
            settings: settings.clone(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// Changes one server (see [`UpdateServer`]).
    pub async fn update_server(
        &self,
        address: &str,
        changes: ServerChanges,
    ) -> Result<Arc<Server>, PoolError> {
        let msg = UpdateServer {
            address: address.into(),
            changes,
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// The server at `address`, as the pool publishes it now.
    pub fn server(&self, address: &str) -> Option<Arc<Server>> {
        self.snapshot()
            .servers
            .iter()
            .find(|s| &*s.address == address)
            .cloned()
    }

    /// Every server's settings entry, in order: the pool's running membership.
    pub fn entries(&self) -> Vec<ServerEntry> {
        self.snapshot().servers.iter().map(|s| s.entry()).collect()
    }

    pub async fn remove_server(&self, address: &str) -> Result<(), PoolError> {
        let msg = RemoveServer {
            address: address.into(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// The pool as it is now; cheap enough to call per request.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<PoolSnapshot>> {
        self.published.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ServerState;

    fn entry(address: &str, weight: u32) -> ServerEntry {
        ServerEntry {
            weight,
            ..ServerEntry::new(address)
        }
    }

    #[test]
    fn merge_keeps_unchanged_servers_and_their_counters() {
        let a = Arc::new(Server::new("127.0.0.1:1", 1).unwrap());
        let b = Arc::new(Server::new("127.0.0.1:2", 1).unwrap());
        a.stats
            .requests
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let wanted = [
            entry("127.0.0.1:1", 1),
            entry("127.0.0.1:2", 3),
            entry("127.0.0.1:3", 1),
        ];
        let merged = merge(&[a.clone(), b.clone()], &wanted).unwrap();
        assert!(Arc::ptr_eq(&merged[0], &a), "unchanged server kept");
        assert!(!Arc::ptr_eq(&merged[1], &b), "reweighted server replaced");
        assert!(Arc::ptr_eq(&merged[1].stats, &b.stats), "its counters kept");
        assert_eq!(merged[1].weight, 3);
        assert_eq!(&*merged[2].address, "127.0.0.1:3");
        assert_eq!(merge(&merged, &[entry("127.0.0.1:3", 1)]).unwrap().len(), 1);
        assert!(merge(&[], &[entry("nope", 1)]).is_err());
    }

    #[test]
    fn merge_succeeds_a_server_whose_limit_backup_or_state_changed() {
        let kept = Arc::new(Server::from_entry(&limited("127.0.0.1:1", 5)).unwrap());
        assert!(Arc::ptr_eq(
            &merge(std::slice::from_ref(&kept), &[limited("127.0.0.1:1", 5)]).unwrap()[0],
            &kept
        ));
        for changed in [
            limited("127.0.0.1:1", 6),
            ServerEntry {
                max_connections: 5,
                ..backup("127.0.0.1:1")
            },
            ServerEntry {
                max_connections: 5,
                ..with_state("127.0.0.1:1", ServerState::Drain)
            },
        ] {
            let merged =
                merge(std::slice::from_ref(&kept), std::slice::from_ref(&changed)).unwrap();
            assert!(!Arc::ptr_eq(&merged[0], &kept), "{changed:?}");
            assert!(Arc::ptr_eq(&merged[0].stats, &kept.stats), "{changed:?}");
            assert_eq!(merged[0].entry(), changed);
        }
    }

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
