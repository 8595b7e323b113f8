//! The Pool actor, the only writer of one pool's membership, and the messages it is told:
//! commands to add, update and remove a server or take new settings, applied in batches;
//! and followers to tell of membership changes. After each change it publishes a new
//! [`PoolSnapshot`] for the request path.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix::WeakRecipient;
use arc_swap::ArcSwap;

use super::condition::ProbeVerdict;
use super::server::{parse_address, Server};
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
    /// Who is told of membership changes: the pool's health checks.
    followers: Vec<WeakRecipient<MembershipChanged>>,
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
            followers: Vec::new(),
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

    /// Applies `commands` as one change: all of them or, if one is refused, none. Servers'
    /// new states take effect at once; a new snapshot is published once, at the end, if the
    /// servers or the balancing changed, and the pool's followers are told.
    fn apply(&mut self, commands: &[PoolCommand]) -> Result<(), PoolError> {
        self.check(commands)?;
        let before: Vec<Arc<str>> = self.servers.iter().map(|s| s.address.clone()).collect();
        let mut republish = false;
        for command in commands {
            republish |= self.run(command, &before);
        }
        if republish {
            self.publish();
            self.tell_followers();
        }
        Ok(())
    }

    /// Refuses a batch of which a command could not be applied: a server added twice, an
    /// unknown one changed or removed, an address that does not parse. Checked against the
    /// membership each command would find, before anything changes.
    fn check(&self, commands: &[PoolCommand]) -> Result<(), PoolError> {
        let mut members: Vec<&str> = self.servers.iter().map(|s| &*s.address).collect();
        let known = |members: &[&str], address: &str| members.iter().position(|m| *m == address);
        let parses = |address: &str| {
            parse_address(address).map_err(|reason| PoolError::Address {
                address: address.into(),
                reason,
            })
        };
        for command in commands {
            match command {
                PoolCommand::AddServer(entry) => {
                    if known(&members, &entry.address).is_some() {
                        return Err(PoolError::Duplicate(entry.address.clone()));
                    }
                    parses(&entry.address)?;
                    members.push(&entry.address);
                }
                PoolCommand::UpdateServer(entry) => {
                    known(&members, &entry.address)
                        .ok_or_else(|| PoolError::Unknown(entry.address.clone()))?;
                    parses(&entry.address)?;
                }
                PoolCommand::RemoveServer(address) => {
                    let index = known(&members, address)
                        .ok_or_else(|| PoolError::Unknown(address.clone()))?;
                    members.remove(index);
                }
                PoolCommand::Reconfigure(_) => {}
            }
        }
        Ok(())
    }

    /// Runs one command that [`Pool::check`] let through; true if the snapshot must be
    /// published again. `before` is the membership before the batch: servers not in it are
    /// joining.
    fn run(&mut self, command: &PoolCommand, before: &[Arc<str>]) -> bool {
        match command {
            PoolCommand::AddServer(entry) => self.add(entry),
            PoolCommand::UpdateServer(entry) => self.update(entry),
            PoolCommand::RemoveServer(address) => {
                self.servers.retain(|s| *s.address != **address);
                true
            }
            PoolCommand::Reconfigure(settings) => {
                self.reconfigure(settings, before);
                true
            }
        }
    }

    fn add(&mut self, entry: &ServerEntry) -> bool {
        match Server::from_entry(entry) {
            Ok(server) => {
                self.rules.apply(&server, true);
                self.servers.push(Arc::new(server));
                true
            }
            // Checked before: the address parses.
            Err(reason) => {
                log::error!("pool {}: server {}: {reason}", self.name, entry.address);
                false
            }
        }
    }

    /// Gives a server its new settings entry. A state change is a store on the running
    /// server; other changes put a successor in its place that keeps its counters.
    fn update(&mut self, entry: &ServerEntry) -> bool {
        let Some(index) = self
            .servers
            .iter()
            .position(|s| *s.address == *entry.address)
        else {
            return false;
        };
        let current = self.servers[index].clone();
        if current.state() != ServerState::Active && entry.state == ServerState::Active {
            current.condition().came_back(super::latency::now());
        }
        current.set_state(entry.state);
        if current.matches(entry) {
            return false;
        }
        match Server::succeeding(&current, entry) {
            Ok(successor) => {
                self.servers[index] = Arc::new(successor);
                true
            }
            // Checked before: the address parses.
            Err(reason) => {
                log::error!("pool {}: server {}: {reason}", self.name, entry.address);
                false
            }
        }
    }

    /// Takes a pool's settings: its algorithm, what its health settings mean for each
    /// server's condition, and the servers' order as the settings list them.
    fn reconfigure(&mut self, settings: &PoolSettings, before: &[Arc<str>]) {
        self.rules = ConditionRules::of(settings);
        for server in &self.servers {
            let joining = !before.contains(&server.address);
            self.rules.apply(server, joining);
        }
        let place = |server: &Arc<Server>| {
            let listed = settings.servers.iter();
            listed
                .map(|entry| &*entry.address)
                .position(|address| address == &*server.address)
                .unwrap_or(usize::MAX)
        };
        self.servers.sort_by_key(place);
        self.balance = settings.balance;
        self.hash_key = settings.hash_key.clone();
    }

    /// Sends the membership to every follower still running; forgets the others.
    fn tell_followers(&mut self) {
        let servers = &self.servers;
        self.followers.retain(|follower| match follower.upgrade() {
            Some(recipient) if recipient.connected() => {
                recipient.do_send(MembershipChanged {
                    servers: servers.clone(),
                });
                true
            }
            _ => false,
        });
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
}

impl Actor for Pool {
    type Context = Context<Self>;
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

/// One change to a pool: what start-up, reloads and the admin API tell it.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolCommand {
    /// Adds a server as its settings entry describes it (limit, backup, state included).
    AddServer(ServerEntry),
    /// Gives a server a new entry: a new state applies to the running server at once; a new
    /// weight, limit or backup flag puts a successor in its place with its counters.
    UpdateServer(ServerEntry),
    /// Removes the server at this address; requests already on it finish.
    RemoveServer(String),
    /// Takes new settings: algorithm, hash key, health and passive rules, slow start, and
    /// the servers' order (the settings' own; their servers are changed by the commands
    /// above).
    Reconfigure(Arc<PoolSettings>),
}

/// Applies commands in order as one change, published once: all of them, or none if one is
/// refused.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct Apply(pub Vec<PoolCommand>);

impl Handler<Apply> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) -> Self::Result {
        let before = self.states();
        self.apply(&msg.0)?;
        let entered = self.newly_draining(&before);
        self.watch_drains(entered, ctx);
        Ok(())
    }
}

/// The pool's servers after a change of its membership, as a follower hears of it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MembershipChanged {
    pub servers: Vec<Arc<Server>>,
}

/// Asks to be told of every change of the pool's membership, starting with the servers it
/// has now. The pool holds the follower weakly: a follower that stops is forgotten.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Follow(pub WeakRecipient<MembershipChanged>);

impl Handler<Follow> for Pool {
    type Result = ();

    fn handle(&mut self, msg: Follow, _: &mut Context<Self>) {
        if let Some(recipient) = msg.0.upgrade() {
            recipient.do_send(MembershipChanged {
                servers: self.servers.clone(),
            });
        }
        self.followers.push(msg.0);
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

    /// A pool with `entries`, outside any actor system.
    fn pool(entries: &[ServerEntry]) -> Pool {
        let settings = PoolSettings::default();
        let empty = PoolSnapshot::new("web".into(), settings.balance, None, Vec::new());
        let published = Arc::new(ArcSwap::from_pointee(empty));
        let mut pool = Pool::new("web".into(), &settings, published);
        let adds: Vec<PoolCommand> = entries
            .iter()
            .map(|entry| PoolCommand::AddServer(entry.clone()))
            .collect();
        pool.apply(&adds).unwrap();
        pool
    }

    fn published(pool: &Pool) -> Vec<Arc<Server>> {
        pool.published.load().servers.clone()
    }

    #[test]
    fn commands_keep_unchanged_servers_and_their_counters() {
        let mut pool = pool(&[entry("127.0.0.1:1", 1), entry("127.0.0.1:2", 1)]);
        let [a, b] = [pool.servers[0].clone(), pool.servers[1].clone()];
        a.stats
            .requests
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let commands = [
            PoolCommand::UpdateServer(entry("127.0.0.1:2", 3)),
            PoolCommand::AddServer(entry("127.0.0.1:3", 1)),
        ];
        pool.apply(&commands).unwrap();
        let servers = published(&pool);
        assert!(Arc::ptr_eq(&servers[0], &a), "unchanged server kept");
        assert!(!Arc::ptr_eq(&servers[1], &b), "reweighted server replaced");
        assert!(
            Arc::ptr_eq(&servers[1].stats, &b.stats),
            "its counters kept"
        );
        assert_eq!(servers[1].weight, 3);
        assert_eq!(&*servers[2].address, "127.0.0.1:3");
        let commands = [
            PoolCommand::RemoveServer("127.0.0.1:1".into()),
            PoolCommand::RemoveServer("127.0.0.1:2".into()),
        ];
        pool.apply(&commands).unwrap();
        assert_eq!(published(&pool).len(), 1);
        let nope = PoolCommand::AddServer(entry("nope", 1));
        assert!(pool.apply(&[nope]).is_err());
    }

    #[test]
    fn a_server_whose_limit_or_backup_changed_is_succeeded_and_a_state_change_is_in_place() {
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
            let mut pool = pool(&[limited("127.0.0.1:1", 5)]);
            let kept = pool.servers[0].clone();
            pool.apply(&[PoolCommand::UpdateServer(limited("127.0.0.1:1", 5))])
                .unwrap();
            assert!(Arc::ptr_eq(&published(&pool)[0], &kept));
            pool.apply(&[PoolCommand::UpdateServer(changed.clone())])
                .unwrap();
            let server = &published(&pool)[0];
            let state_only = changed.state != ServerState::Active;
            assert_eq!(!Arc::ptr_eq(server, &kept), !state_only, "{changed:?}");
            assert!(Arc::ptr_eq(&server.stats, &kept.stats), "{changed:?}");
            assert_eq!(server.entry(), changed);
        }
    }

    #[test]
    fn a_batch_with_a_refused_command_changes_nothing() {
        let mut pool = pool(&[entry("127.0.0.1:1", 1)]);
        let before = pool.published.load_full();
        let refused = [
            vec![
                PoolCommand::AddServer(entry("127.0.0.1:2", 1)),
                PoolCommand::RemoveServer("127.0.0.1:9".into()),
            ],
            vec![
                PoolCommand::UpdateServer(ServerEntry {
                    state: ServerState::Down,
                    ..entry("127.0.0.1:1", 1)
                }),
                PoolCommand::AddServer(entry("127.0.0.1:1", 1)),
            ],
            vec![PoolCommand::UpdateServer(entry("127.0.0.1:9", 1))],
        ];
        for batch in refused {
            assert!(pool.apply(&batch).is_err(), "{batch:?}");
            assert!(Arc::ptr_eq(&pool.published.load_full(), &before));
            assert_eq!(pool.servers.len(), 1);
            assert_eq!(pool.servers[0].state(), ServerState::Active);
        }
    }

    #[test]
    fn reconfiguring_puts_the_servers_in_the_settings_order() {
        let mut pool = pool(&[entry("127.0.0.1:1", 1), entry("127.0.0.1:3", 1)]);
        let settings = PoolSettings {
            balance: Balance::LeastConnections,
            servers: ["127.0.0.1:3", "127.0.0.1:2", "127.0.0.1:1"]
                .map(ServerEntry::new)
                .to_vec(),
            ..PoolSettings::default()
        };
        let commands = [
            PoolCommand::AddServer(ServerEntry::new("127.0.0.1:2")),
            PoolCommand::Reconfigure(Arc::new(settings)),
        ];
        pool.apply(&commands).unwrap();
        let order: Vec<String> = published(&pool)
            .iter()
            .map(|s| s.address.to_string())
            .collect();
        assert_eq!(order, ["127.0.0.1:3", "127.0.0.1:2", "127.0.0.1:1"]);
        assert_eq!(pool.balance, Balance::LeastConnections);
    }
}
