//! The running settings: start-up, reloads and the admin API's membership changes, each
//! turned into [`Command`]s (`command.rs`) and applied to the pools, their checks and
//! affinities, the listeners and the request path. A reload is the difference between what
//! runs and new settings (`diff.rs`), applied all or nothing (`apply.rs`); invalid settings
//! change nothing.

mod apply;
mod command;
mod diff;

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

pub use command::{Command, ServerChange, ServerChanges};

use crate::health::HealthError;
use crate::listener::Rebinder;
use crate::pool::{PoolError, PoolHandle, Server};
use crate::proxy::{Proxy, SharedProxy};
use crate::settings::{self, Loaded, Problem, ServerEntry, Settings, SettingsError, Sources};
use crate::state_file::{self, StateFileError};
use crate::tls::{CertificateError, Certificates, TlsStore};
use apply::{pool_command, Running, Targets};

/// Reads the settings and loads the files they name (certificates), as start-up, a reload and
/// `--check` all must: settings that would not start are invalid.
pub fn load(sources: &Sources) -> Result<Loaded, SettingsError> {
    let loaded = settings::load(sources)?;
    if let Err(err) = Certificates::load(&loaded.settings.tls) {
        let value = format!("{:?}", err.path);
        return Err(loaded.invalid(Problem::new(err.key, value, err.reason)));
    }
    Ok(loaded)
}

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

/// Sections whose changes take effect only when gatehouse starts.
fn restart_needed(old: &Settings, new: &Settings) -> Vec<String> {
    let mut sections = Vec::new();
    if old.admin != new.admin {
        sections.push("admin".to_string());
    }
    sections
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
        let loaded = load(&self.sources);
        let running = self.running.take();
        let published = self.published.clone();
        let rebinder = self.rebinder.clone();
        let certificates = self.certificates.clone();
        let work = async move {
            let outcome = match loaded {
                Ok(loaded) => {
                    let settings = loaded.settings;
                    let targets = Targets {
                        published: &published,
                        rebinder: &rebinder,
                        certificates: &certificates,
                    };
                    apply::apply(running.as_ref(), settings, targets).await
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
        let told = handle
            .ok_or_else(|| PoolError::NoPool(msg.pool.clone()))
            .and_then(|pool| {
                let command = server_command(&pool, msg.pool.clone(), msg.change)?;
                let settings = running.map(|r| &r.settings);
                let told = settings.and_then(|settings| pool_command(&command, settings));
                let (_, told) = told.ok_or_else(|| PoolError::NoPool(msg.pool.clone()))?;
                Ok((pool, command, told))
            });
        let work = async move {
            let (pool, command, told) = told?;
            pool.apply(vec![told]).await?;
            let server = match command {
                Command::AddServer { entry, .. } | Command::UpdateServer { entry, .. } => {
                    pool.server(&entry.address)
                }
                _ => None,
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

/// The command for an admin change to `pool`: the same a reload gives for such a change. A
/// server's changes are written into the entry it runs with.
fn server_command(
    handle: &PoolHandle,
    pool: String,
    change: ServerChange,
) -> Result<Command, PoolError> {
    Ok(match change {
        ServerChange::Add(entry) => Command::AddServer { pool, entry },
        ServerChange::Update(address, changes) => {
            let server = handle
                .server(&address)
                .ok_or_else(|| PoolError::Unknown(address.clone()))?;
            let mut entry = server.entry();
            changes.apply_to(&mut entry);
            Command::UpdateServer { pool, entry }
        }
        ServerChange::Remove(address) => Command::RemoveServer { pool, address },
    })
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
        let targets = Targets {
            published: &published,
            rebinder: &rebinder,
            certificates: &certificates,
        };
        let (running, _) = apply::apply(None, settings, targets).await?;
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
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::settings::{HealthSettings, PoolSettings};

    /// A server on loopback, a task of the test's own runtime, that answers every request
    /// with `200 OK`.
    async fn healthy() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        actix_rt::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = stream.write_all(answer).await;
            }
        });
        address
    }

    /// Runs the actors until `done`, moving the paused clock a millisecond (the timers'
    /// resolution) at a time; returns how far it moved.
    async fn until(done: impl Fn() -> bool) -> std::time::Duration {
        let start = tokio::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "never done"
            );
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
        }
        start.elapsed()
    }

    #[actix_rt::test]
    async fn a_server_added_through_the_admin_api_is_probed_without_a_poll() {
        tokio::time::pause();
        let (first, added) = (healthy().await, healthy().await);
        let health = HealthSettings {
            interval: settings::Duration::from_secs(3600),
            jitter: settings::Duration::from_millis(0),
            ..HealthSettings::default()
        };
        let web = PoolSettings {
            servers: vec![ServerEntry::new(&first.to_string())],
            health: Some(health),
            ..PoolSettings::default()
        };
        let mut settings = Settings::default();
        settings.pools.insert("web".into(), web);
        let (rebinder, _rebinds) = tokio::sync::mpsc::unbounded_channel();
        let certificates = Arc::new(TlsStore::default());
        let (supervisor, _, pools) =
            SupervisorHandle::start(Sources::default(), settings, rebinder, certificates)
                .await
                .unwrap();
        let pool = pools[0].1.clone();
        let probed = |address: SocketAddr| {
            let server = pool.server(&address.to_string());
            move || {
                server
                    .as_ref()
                    .is_some_and(|s| s.condition().last_probe().is_some())
            }
        };
        until(probed(first)).await;
        let entry = ServerEntry::new(&added.to_string());
        let change = ServerChange::Add(entry);
        supervisor.change_servers("web", change).await.unwrap();
        let server = pool.server(&added.to_string()).unwrap();
        // The pool tells the checker at once: the probe starts within the jitter (none here),
        // on the next tick of the timers.
        let waited = until(|| server.condition().last_probe().is_some()).await;
        assert!(server.condition().last_probe().unwrap().passed);
        assert!(waited < std::time::Duration::from_millis(50), "{waited:?}");
    }

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
