//! The Pool actor, the only writer of one pool's membership, and the messages it is told:
//! add, update and remove a server, take new settings. After each change it publishes a new
//! [`PoolSnapshot`] for the request path.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;

use super::condition::ProbeVerdict;
use super::server::Server;
use super::snapshot::PoolSnapshot;
use crate::settings::{Balance, HashKey, InitialState, PoolSettings, ServerEntry, ServerState};

/// How often a pool with draining servers looks whether their last request has finished:
/// often enough that the log line follows within a blink, rarely enough to cost nothing.
const DRAIN_CHECK: Duration = Duration::from_millis(200);

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
    rules: ConditionRules,
}

/// What a pool's health settings mean for its servers' conditions.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ConditionRules {
    /// The probe verdict a server joining the pool starts with.
    joining: ProbeVerdict,
    /// Whether live traffic may eject servers.
    passive: bool,
    slow_start: Duration,
}

impl ConditionRules {
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
    /// An empty pool with `settings`' algorithm and health settings (not its servers), which
    /// publishes into `published`.
    pub(super) fn new(
        name: Arc<str>,
        settings: &PoolSettings,
        published: Arc<ArcSwap<PoolSnapshot>>,
    ) -> Self {
        Self {
            name,
            balance: settings.balance,
            hash_key: settings.hash_key.clone(),
            servers: Vec::new(),
            published,
            draining: Vec::new(),
            drain_check: None,
            rules: ConditionRules::of(settings),
        }
    }

    fn publish(&self) {
        for server in &self.servers {
            server.condition().set_owner(&self.name, &server.address);
        }
        let snapshot = PoolSnapshot::ramping(
            self.name.clone(),
            self.balance,
            self.hash_key.as_ref(),
            self.servers.clone(),
            self.rules.slow_start,
        );
        self.published.store(Arc::new(snapshot));
    }

    fn add(&mut self, entry: &ServerEntry) -> Result<(), PoolError> {
        if self.servers.iter().any(|s| *s.address == *entry.address) {
            return Err(PoolError::Duplicate(entry.address.clone()));
        }
        let server = Server::from_entry(entry).map_err(|reason| PoolError::Address {
            address: entry.address.clone(),
            reason,
        })?;
        self.rules.apply(&server, true);
        self.servers.push(Arc::new(server));
        self.publish();
        Ok(())
    }

    /// Takes a pool's settings as a whole (a reload): servers whose entry did not change keep
    /// their object, changed ones are succeeded by a new object with the same counters,
    /// missing ones leave. One publish.
    fn reconfigure(&mut self, settings: &PoolSettings) -> Result<(), PoolError> {
        let servers = merge(&self.servers, &settings.servers)?;
        self.rules = ConditionRules::of(settings);
        for server in &servers {
            let joining = !self.servers.iter().any(|s| s.address == server.address);
            self.rules.apply(server, joining);
        }
        self.servers = servers;
        self.balance = settings.balance;
        self.hash_key = settings.hash_key.clone();
        self.publish();
        Ok(())
    }

    /// Gives a server its new settings entry. A state change is a store on the running
    /// server; other changes put a successor in its place that keeps its counters, and
    /// publish.
    fn update(&mut self, entry: &ServerEntry) -> Result<Arc<Server>, PoolError> {
        let address = &entry.address;
        let index = self
            .servers
            .iter()
            .position(|s| *s.address == **address)
            .ok_or_else(|| PoolError::Unknown(address.clone()))?;
        let current = self.servers[index].clone();
        if current.state() != ServerState::Active && entry.state == ServerState::Active {
            current.condition().came_back();
        }
        current.set_state(entry.state);
        if !current.matches(entry) {
            let successor =
                Server::succeeding(&current, entry).map_err(|reason| PoolError::Address {
                    address: address.clone(),
                    reason,
                })?;
            self.servers[index] = Arc::new(successor);
            self.publish();
        }
        Ok(self.servers[index].clone())
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

    /// Runs one change, then watches the servers it sent into `drain`.
    fn change<T>(
        &mut self,
        ctx: &mut Context<Self>,
        change: impl FnOnce(&mut Self) -> Result<T, PoolError>,
    ) -> Result<T, PoolError> {
        let before = self.states();
        let outcome = change(self)?;
        let entered = self.newly_draining(&before);
        self.watch_drains(entered, ctx);
        Ok(outcome)
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

/// Adds a server, as its settings entry describes it (limit, backup, state included).
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct AddServer {
    pub entry: ServerEntry,
}

impl Handler<AddServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: AddServer, ctx: &mut Context<Self>) -> Self::Result {
        self.change(ctx, |pool| pool.add(&msg.entry))
    }
}

/// Gives a server a new entry (weight, limit, backup flag or state); answers the server as
/// it is now.
#[derive(Message)]
#[rtype(result = "Result<Arc<Server>, PoolError>")]
pub struct UpdateServer {
    pub entry: ServerEntry,
}

impl Handler<UpdateServer> for Pool {
    type Result = Result<Arc<Server>, PoolError>;

    fn handle(&mut self, msg: UpdateServer, ctx: &mut Context<Self>) -> Self::Result {
        self.change(ctx, |pool| pool.update(&msg.entry))
    }
}

/// Removes a server; requests already on it finish.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct RemoveServer {
    pub address: String,
}

impl Handler<RemoveServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: RemoveServer, _: &mut Context<Self>) -> Self::Result {
        self.remove(&msg.address)
    }
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
        self.change(ctx, |pool| pool.reconfigure(&msg.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str, weight: u32) -> ServerEntry {
        ServerEntry {
            weight,
            ..ServerEntry::new(address)
        }
    }

    fn limited(address: &str, max_connections: u32) -> ServerEntry {
        ServerEntry {
            max_connections,
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
                backup: true,
                ..ServerEntry::new("127.0.0.1:1")
            },
            ServerEntry {
                max_connections: 5,
                state: ServerState::Drain,
                ..ServerEntry::new("127.0.0.1:1")
            },
        ] {
            let merged =
                merge(std::slice::from_ref(&kept), std::slice::from_ref(&changed)).unwrap();
            assert!(!Arc::ptr_eq(&merged[0], &kept), "{changed:?}");
            assert!(Arc::ptr_eq(&merged[0].stats, &kept.stats), "{changed:?}");
            assert_eq!(merged[0].entry(), changed);
        }
    }
}
