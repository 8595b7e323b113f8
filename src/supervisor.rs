//! The running settings: start-up and reloads, turned into pool messages and a new request
//! path. A reload re-reads every settings layer; invalid settings change nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::listener::{listener_changed, Rebind, Rebinder};
use crate::pool::{PoolError, PoolHandle};
use crate::proxy::{PoolTarget, Proxy, SharedProxy};
use crate::settings::{self, ServerSettings, Settings, SettingsError, Sources};
use crate::state_file::{self, StateFileError};

/// Why a reload was refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid settings, kept the running ones: {0}")]
    Settings(#[from] SettingsError),
    #[error("pool {pool}: {source}")]
    Pool { pool: String, source: PoolError },
    #[error("routes: {0}")]
    Routes(String),
    #[error("{0}")]
    State(#[from] StateFileError),
    #[error("kept the running listeners: {0}")]
    Listen(String),
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

/// The running pools and the request path built from them.
struct Running {
    settings: Settings,
    pools: BTreeMap<String, PoolTarget>,
    next_index: usize,
}

/// Applies `new` over what runs (nothing, at start-up) and publishes the new request path.
/// Pools in the admin state file take their servers from it.
async fn apply(
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
        if listener_changed(&running.settings.server, &new.server) {
            // First, so a listener that cannot bind leaves everything as it was.
            rebind(rebinder, &new.server).await?;
            report.listeners_restarted = true;
        }
    }
    let mut pools = BTreeMap::new();
    let mut next_index = running.map_or(0, |r| r.next_index);
    for (name, wanted) in &new.pools {
        let failed = |source| ReloadError::Pool {
            pool: name.clone(),
            source,
        };
        let target = match running.and_then(|r| r.pools.get(name)) {
            Some(current) if *current.settings == *wanted => current.clone(),
            Some(current) => {
                current.handle.reconfigure(wanted).await.map_err(failed)?;
                report.pools_changed.push(name.clone());
                PoolTarget::new(
                    current.index,
                    name,
                    current.handle.clone(),
                    Arc::new(wanted.clone()),
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
                PoolTarget::new(next_index - 1, name, handle, Arc::new(wanted.clone()))
            }
        };
        pools.insert(name.clone(), target);
    }
    if let Some(running) = running {
        report.pools_removed = running
            .pools
            .keys()
            .filter(|name| !new.pools.contains_key(*name))
            .cloned()
            .collect();
        report.restart_needed = restart_needed(&running.settings, &new);
    }
    let proxy = Proxy::new(&new, pools.values().cloned().collect()).map_err(ReloadError::Routes)?;
    published.store(Arc::new(proxy));
    let running = Running {
        settings: new,
        pools,
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
async fn rebind(rebinder: &Rebinder, settings: &ServerSettings) -> Result<(), ReloadError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = Rebind {
        settings: settings.clone(),
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
        let work = async move {
            let outcome = match loaded {
                Ok(loaded) => apply(running.as_ref(), loaded.settings, &published, &rebinder).await,
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
    ) -> Result<(Self, Arc<SharedProxy>, Vec<(String, PoolHandle)>), ReloadError> {
        // An empty request path until the first settings are applied, a moment later.
        let empty = Proxy::new(&Settings::default(), Vec::new()).map_err(ReloadError::Routes)?;
        let published = Arc::new(SharedProxy::from_pointee(empty));
        let (running, _) = apply(None, settings, &published, &rebinder).await?;
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
        };
        Ok((
            Self {
                addr: supervisor.start(),
            },
            published,
            pools,
        ))
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
