//! The running settings: start-up and reloads, turned into pool messages and a new request
//! path. A reload re-reads every settings layer; invalid settings change nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::affinity::Affinity;
use crate::health::{HealthError, HealthHandle};
use crate::listener::{listener_changed, Rebind, Rebinder};
use crate::pool::{PoolError, PoolHandle, Server};
use crate::proxy::{PoolTarget, Proxy, SharedProxy};
use crate::settings::{
    self, ServerEntry, ServerState, Settings, SettingsError, Sources, StickySettings,
};
use crate::state_file::{self, StateFileError};
use crate::tls::{CertificateError, Certificates, TlsStore};

/// Why a reload was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid settings, kept the running ones: {0}")]
    Settings(#[from] SettingsError),
    #[error("pool {pool}: {source}")]
    Pool { pool: String, source: PoolError },
    #[error("pool {pool}: health checks: {source}")]
    Health { pool: String, source: HealthError },
    #[error("routes: {0}")]
    Routes(String),
    #[error("{0}")]
    State(#[from] StateFileError),
    #[error("kept the running listeners: {0}")]
    Listen(String),
    #[error("kept the running certificates: {0}")]
    Certificates(#[from] CertificateError),
    #[error("the settings supervisor is not running")]
    Stopped,
}

/// What a reload changed, and what it could not change without a restart.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ReloadReport {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<String>,
    /// The client listeners were restarted on new settings (their sockets kept).
    pub listeners_restarted: bool,
    /// Sections that differ but apply only at start: the admin API.
    pub restart_needed: Vec<String>,
}

/// The running pools, their health checks and the request path built from them.
struct Running {
    settings: Settings,
    pools: BTreeMap<String, PoolTarget>,
    /// The health checks of the pools that have them.
    health: BTreeMap<String, HealthHandle>,
    /// The session persistence of the pools that have it: kept across reloads that leave
    /// `[pools.NAME.sticky]` as it was, so sessions stay bound.
    affinities: BTreeMap<String, Arc<Affinity>>,
    next_index: usize,
}

/// Pool `name`'s session persistence for `sticky`: the running one if its settings are the
/// same, else a new one (with empty tables).
fn affinity(
    running: Option<&Running>,
    name: &str,
    sticky: Option<&StickySettings>,
) -> Option<Arc<Affinity>> {
    let sticky = sticky?;
    let current = running.and_then(|r| r.affinities.get(name));
    match current {
        Some(affinity) if affinity.settings() == sticky => Some(affinity.clone()),
        _ => Some(Arc::new(Affinity::new(sticky))),
    }
}

/// Loads the certificates again (files replaced on disk are read anew), publishes them for
/// new handshakes, then applies the rest; if anything fails, the running certificates stay.
async fn apply(
    running: Option<&Running>,
    new: Settings,
    published: &SharedProxy,
    rebinder: &Rebinder,
    certificates: &TlsStore,
) -> Result<(Running, ReloadReport), ReloadError> {
    let table = Certificates::load(&new.tls)?.map(Arc::new);
    let previous = certificates.swap(table);
    let applied = apply_settings(running, new, published, rebinder).await;
    if applied.is_err() {
        certificates.swap(previous);
    }
    applied
}

/// Applies `new` over what runs (nothing, at start-up) and publishes the new request path.
/// Pools in the admin state file take their servers from it. Every pool's membership becomes
/// what the settings say, whatever was changed at runtime.
async fn apply_settings(
    running: Option<&Running>,
    mut new: Settings,
    published: &SharedProxy,
    rebinder: &Rebinder,
) -> Result<(Running, ReloadReport), ReloadError> {
    if !new.admin.state_file.is_empty() {
        let membership = state_file::load(Path::new(&new.admin.state_file))?;
        state_file::apply(&mut new, membership);
    }
    let mut report = ReloadReport::default();
    if let Some(running) = running {
        if listener_changed(&running.settings, &new) {
            // First, so a listener that cannot bind leaves everything as it was.
            rebind(rebinder, &new).await?;
            report.listeners_restarted = true;
        }
    }
    let mut pools = BTreeMap::new();
    let mut health = BTreeMap::new();
    let mut affinities = BTreeMap::new();
    let mut next_index = running.map_or(0, |r| r.next_index);
    for (name, wanted) in &new.pools {
        let failed = |source| ReloadError::Pool {
            pool: name.clone(),
            source,
        };
        let checks = running.and_then(|r| r.health.get(name));
        let current_tls = running
            .and_then(|r| r.pools.get(name))
            .map(|current| &current.settings.tls);
        if let Some(tls) = &wanted.tls {
            if !tls.verify && current_tls != Some(&wanted.tls) {
                log::warn!(
                    "pool {name}: tls.verify = false: the servers' certificates are not checked"
                );
            }
        }
        if let (Some(checks), None) = (checks, &wanted.health) {
            // Stopped first, so no probe ends after the pool has cleared its verdicts.
            checks.stop().await;
        }
        let target = match running.and_then(|r| r.pools.get(name)) {
            Some(current)
                if *current.settings == *wanted && current.handle.entries() == wanted.servers =>
            {
                current.clone()
            }
            Some(current) => {
                current.handle.reconfigure(wanted).await.map_err(failed)?;
                report.pools_changed.push(name.clone());
                PoolTarget::new(
                    current.index,
                    name,
                    current.handle.clone(),
                    Arc::new(wanted.clone()),
                    affinity(running, name, wanted.sticky.as_ref()),
                )
            }
            None => {
                let handle = PoolHandle::from_settings(name, wanted)
                    .await
                    .map_err(failed)?;
                next_index += 1;
                if running.is_some() {
                    report.pools_added.push(name.clone());
                }
                let affinity = affinity(running, name, wanted.sticky.as_ref());
                PoolTarget::new(
                    next_index - 1,
                    name,
                    handle,
                    Arc::new(wanted.clone()),
                    affinity,
                )
            }
        };
        if let Some(settings) = &wanted.health {
            let health_failed = |source| ReloadError::Health {
                pool: name.clone(),
                source,
            };
            let tls = wanted.tls.as_ref();
            let checks = match checks {
                Some(checks) if checks.runs_on(settings, tls) => checks.clone(),
                Some(checks) => checks.retune(settings, tls).await.map_err(health_failed)?,
                None => HealthHandle::start(target.handle.clone(), settings, tls)
                    .map_err(health_failed)?,
            };
            health.insert(name.clone(), checks);
        }
        if let Some(affinity) = &target.affinity {
            affinities.insert(name.clone(), affinity.clone());
        }
        pools.insert(name.clone(), target);
    }
    if let Some(running) = running {
        for (name, checks) in &running.health {
            if !new.pools.contains_key(name) {
                checks.stop().await;
            }
        }
        report.pools_removed = running
            .pools
            .keys()
            .filter(|name| !new.pools.contains_key(*name))
            .cloned()
            .collect();
        report.restart_needed = restart_needed(&running.settings, &new);
    }
    let edge = published.load().security.edge.clone();
    let proxy =
        Proxy::new(&new, pools.values().cloned().collect(), edge).map_err(ReloadError::Routes)?;
    published.store(Arc::new(proxy));
    let running = Running {
        settings: new,
        pools,
        health,
        affinities,
        next_index,
    };
    Ok((running, report))
}

/// Sections whose changes take effect only when gatehouse starts.
fn restart_needed(old: &Settings, new: &Settings) -> Vec<String> {
    let mut sections = Vec::new();
    if old.admin != new.admin {
        sections.push("admin".to_string());
    }
    sections
}

/// Restarts the client listeners on new settings, keeping their sockets.
async fn rebind(rebinder: &Rebinder, settings: &Settings) -> Result<(), ReloadError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = Rebind {
        settings: settings.server.clone(),
        tls_listen: settings.tls.listen.clone(),
        http2: settings.tls.http2.clone(),
        reply,
    };
    rebinder.send(request).map_err(|_| ReloadError::Stopped)?;
    let bound = answer
        .await
        .map_err(|_| ReloadError::Stopped)?
        .map_err(ReloadError::Listen)?;
    log::info!("listeners restarted on new settings: {bound:?}");
    Ok(())
}

/// The actor that owns the running settings; the only one that changes pools wholesale.
pub struct Supervisor {
    sources: Sources,
    rebinder: Rebinder,
    running: Option<Running>,
    published: Arc<SharedProxy>,
    certificates: Arc<TlsStore>,
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// Re-reads every settings layer and applies the difference.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, ReloadError>")]
pub struct Reload;

impl Handler<Reload> for Supervisor {
    type Result = AtomicResponse<Self, Result<ReloadReport, ReloadError>>;

    fn handle(&mut self, _: Reload, _: &mut Context<Self>) -> Self::Result {
        let loaded = settings::load(&self.sources);
        let running = self.running.take();
        let published = self.published.clone();
        let rebinder = self.rebinder.clone();
        let certificates = self.certificates.clone();
        let work = async move {
            let outcome = match loaded {
                Ok(loaded) => {
                    let settings = loaded.settings;
                    apply(
                        running.as_ref(),
                        settings,
                        &published,
                        &rebinder,
                        &certificates,
                    )
                    .await
                }
                Err(err) => Err(err.into()),
            };
            (outcome, running)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(outcome, previous), act, _| match outcome {
                Ok((running, report)) => {
                    act.running = Some(running);
                    log::info!("settings reloaded: {report:?}");
                    if !report.restart_needed.is_empty() {
                        log::warn!(
                            "changes to {} apply at the next restart",
                            report.restart_needed.join(", ")
                        );
                    }
                    Ok(report)
                }
                Err(err) => {
                    act.running = previous;
                    log::error!("reload refused: {err}");
                    Err(err)
                }
            },
        )))
    }
}

/// A runtime membership change to one pool, from the admin API.
#[derive(Debug)]
pub enum ServerChange {
    Add(ServerEntry),
    Update(String, ServerChanges),
    Remove(String),
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

/// The outcome of a [`ChangeServers`].
#[derive(Debug)]
pub struct Changed {
    /// The server as it is now; `None` once removed.
    pub server: Option<Arc<Server>>,
    /// Why the change could not be saved to the state file; the change stands.
    pub state_file_error: Option<String>,
}

/// Applies one admin change to a pool and saves that pool to the state file, in one step
/// that no reload can interleave with.
#[derive(Message)]
#[rtype(result = "Result<Changed, PoolError>")]
pub struct ChangeServers {
    pub pool: String,
    pub change: ServerChange,
}

impl Handler<ChangeServers> for Supervisor {
    type Result = AtomicResponse<Self, Result<Changed, PoolError>>;

    fn handle(&mut self, msg: ChangeServers, _: &mut Context<Self>) -> Self::Result {
        let running = self.running.as_ref();
        let handle = running
            .and_then(|r| r.pools.get(&msg.pool))
            .map(|target| target.handle.clone());
        let state_file = running
            .map(|r| r.settings.admin.state_file.clone())
            .filter(|path| !path.is_empty());
        let work = async move {
            let pool = handle.ok_or_else(|| PoolError::NoPool(msg.pool.clone()))?;
            let server = match msg.change {
                ServerChange::Add(entry) => {
                    pool.add_entry(&entry).await?;
                    pool.server(&entry.address)
                }
                ServerChange::Update(address, changes) => {
                    let server = pool
                        .server(&address)
                        .ok_or_else(|| PoolError::Unknown(address.clone()))?;
                    let mut entry = server.entry();
                    changes.apply_to(&mut entry);
                    Some(pool.update_server(&entry).await?)
                }
                ServerChange::Remove(address) => {
                    pool.remove_server(&address).await?;
                    None
                }
            };
            let state_file_error = state_file.and_then(|path| {
                save_pool(Path::new(&path), &msg.pool, pool.entries())
                    .err()
                    .map(|err| {
                        log::error!("{err}");
                        err.to_string()
                    })
            });
            Ok(Changed {
                server,
                state_file_error,
            })
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

/// Records one pool's membership in the state file, leaving the other pools it lists as they
/// are: pools nobody changed at runtime keep following the settings files.
fn save_pool(path: &Path, pool: &str, servers: Vec<ServerEntry>) -> Result<(), StateFileError> {
    let mut membership = state_file::load(path)?;
    membership.pools.insert(pool.to_string(), servers);
    state_file::save(path, &membership)
}

/// A typed handle on the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
}

impl SupervisorHandle {
    /// Applies the first settings and starts the supervisor; returns it and the request path.
    pub async fn start(
        sources: Sources,
        settings: Settings,
        rebinder: Rebinder,
        certificates: Arc<TlsStore>,
    ) -> Result<(Self, Arc<SharedProxy>, Vec<(String, PoolHandle)>), ReloadError> {
        // An empty request path until the first settings are applied, a moment later.
        let empty = Proxy::new(&Settings::default(), Vec::new(), Arc::default())
            .map_err(ReloadError::Routes)?;
        let published = Arc::new(SharedProxy::from_pointee(empty));
        let (running, _) = apply(None, settings, &published, &rebinder, &certificates).await?;
        let pools = running
            .pools
            .iter()
            .map(|(name, target)| (name.clone(), target.handle.clone()))
            .collect();
        let supervisor = Supervisor {
            sources,
            rebinder,
            running: Some(running),
            published: published.clone(),
            certificates,
        };
        Ok((
            Self {
                addr: supervisor.start(),
            },
            published,
            pools,
        ))
    }

    /// Applies an admin change to pool `pool` (see [`ChangeServers`]).
    pub async fn change_servers(
        &self,
        pool: &str,
        change: ServerChange,
    ) -> Result<Changed, PoolError> {
        let msg = ChangeServers {
            pool: pool.into(),
            change,
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.addr
            .send(Reload)
            .await
            .map_err(|_| ReloadError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_changes_need_a_restart() {
        let old = Settings::default();
        let mut new = Settings::default();
        new.server.workers = 7;
        assert!(restart_needed(&old, &new).is_empty());
        new.admin.token = "t".into();
        assert_eq!(restart_needed(&old, &new), ["admin"]);
    }
}
