//! Applying a reload's commands all or nothing: every step that can fail is prepared first
//! (certificates loaded, addresses parsed, probes built, new pools started unseen, the
//! request path built); only then are the commands applied, the listeners' restart first
//! among them, as the one step left that can fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::command::Command;
use super::diff::{diff, Current};
use super::{ReloadError, ReloadReport};
use crate::affinity::Affinity;
use crate::health::{HealthHandle, PreparedChecks};
use crate::listener::{Rebind, Rebinder};
use crate::pool::{parse_address, PoolCommand, PoolError, PoolHandle};
use crate::proxy::{PoolTarget, Proxy, SharedProxy};
use crate::settings::{ServerEntry, Settings};
use crate::state_file;
use crate::tls::{Certificates, TlsStore};

/// The running pools, their health checks and session persistence, and the request path
/// built from them.
pub(super) struct Running {
    pub settings: Settings,
    pub pools: BTreeMap<String, PoolTarget>,
    /// The health checks of the pools that have them.
    pub checkers: BTreeMap<String, HealthHandle>,
    /// The session persistence of the pools that have it: kept across reloads that leave
    /// `[pools.NAME.sticky]` as it was, so sessions stay bound.
    pub affinities: BTreeMap<String, Arc<Affinity>>,
    /// The slot the next new pool takes in each worker's upstream clients.
    pub next_index: usize,
}

impl Running {
    /// Each pool's servers as they run now.
    fn membership(&self) -> BTreeMap<String, Vec<ServerEntry>> {
        let pools = self.pools.iter();
        pools
            .map(|(name, target)| (name.clone(), target.handle.entries()))
            .collect()
    }
}

/// Where a reload applies what it changes.
pub(super) struct Targets<'a> {
    pub published: &'a SharedProxy,
    pub rebinder: &'a Rebinder,
    pub certificates: &'a TlsStore,
}

/// Applies `new` over what runs (nothing, at start-up): prepares every command, then, if
/// all of them could be prepared, applies them. Pools in the admin state file take their
/// servers from it; every pool's membership becomes what the settings say, whatever was
/// changed at runtime.
pub(super) async fn apply(
    running: Option<&Running>,
    new: Settings,
    targets: Targets<'_>,
) -> Result<(Running, ReloadReport), ReloadError> {
    let prepared = prepare(running, new, targets.published)?;
    commit(running, prepared, targets).await
}

/// Everything a reload needs, built before anything that runs is changed.
struct Prepared {
    settings: Settings,
    commands: Vec<Command>,
    /// The certificate table to swap in, when the commands swap certificates.
    certificates: Option<Option<Arc<Certificates>>>,
    /// Each pool's commands for its actor, applied as one change.
    batches: BTreeMap<String, Vec<PoolCommand>>,
    /// Health checks to start or retune, with their probes built.
    checks: BTreeMap<String, PreparedChecks>,
    pools: BTreeMap<String, PoolTarget>,
    affinities: BTreeMap<String, Arc<Affinity>>,
    /// The request path to publish; taken when it is.
    proxy: Option<Proxy>,
    next_index: usize,
    report: ReloadReport,
}

/// Prepares the reload of `new` over `running`: every step that can fail, and nothing that
/// anyone sees. New pools' actors start here, empty; nothing reaches them before the
/// request path that holds them is published, and they stop with it if the reload fails.
fn prepare(
    running: Option<&Running>,
    mut new: Settings,
    published: &SharedProxy,
) -> Result<Prepared, ReloadError> {
    if !new.admin.state_file.is_empty() {
        let membership = state_file::load(Path::new(&new.admin.state_file))?;
        state_file::apply(&mut new, membership);
    }
    let membership = running.map(Running::membership).unwrap_or_default();
    let current = running.map(|r| Current {
        settings: &r.settings,
        membership: &membership,
    });
    let commands = diff(current, &new);
    let mut certificates = None;
    let mut checks = BTreeMap::new();
    let mut affinities = running.map(|r| r.affinities.clone()).unwrap_or_default();
    for command in &commands {
        match command {
            Command::SwapCertificates => {
                certificates = Some(Certificates::load(&new.tls)?.map(Arc::new));
            }
            Command::AddServer { pool, entry } | Command::UpdateServer { pool, entry } => {
                parse_address(&entry.address).map_err(|reason| ReloadError::Pool {
                    pool: pool.clone(),
                    source: PoolError::Address {
                        address: entry.address.clone(),
                        reason,
                    },
                })?;
            }
            Command::StartChecker { pool } | Command::RetuneChecker { pool } => {
                // The difference asks for checks only of a pool with `[health]`.
                let Some(settings) = new.pools.get(pool) else {
                    continue;
                };
                let Some(health) = &settings.health else {
                    continue;
                };
                let prepared =
                    PreparedChecks::new(health, settings.tls.as_ref()).map_err(|source| {
                        ReloadError::Health {
                            pool: pool.clone(),
                            source,
                        }
                    })?;
                checks.insert(pool.clone(), prepared);
            }
            Command::NewAffinity { pool } => {
                let sticky = new.pools.get(pool).and_then(|p| p.sticky.as_ref());
                if let Some(sticky) = sticky {
                    affinities.insert(pool.clone(), Arc::new(Affinity::new(sticky)));
                }
            }
            Command::DropAffinity { pool } | Command::RemovePool { pool } => {
                affinities.remove(pool);
            }
            _ => {}
        }
    }
    let (pools, next_index) = pool_targets(running, &new, &commands, &affinities);
    let edge = published.load().security.edge.clone();
    let proxy =
        Proxy::new(&new, pools.values().cloned().collect(), edge).map_err(ReloadError::Routes)?;
    let batches = batches(&commands, &new);
    let report = report(running, &new, &commands);
    Ok(Prepared {
        settings: new,
        commands,
        certificates,
        batches,
        checks,
        pools,
        affinities,
        proxy: Some(proxy),
        next_index,
        report,
    })
}

/// The request path's view of each pool of `new`: a new pool's handle on its new actor, a
/// pool with commands rebuilt on its new settings, the others as they run.
fn pool_targets(
    running: Option<&Running>,
    new: &Settings,
    commands: &[Command],
    affinities: &BTreeMap<String, Arc<Affinity>>,
) -> (BTreeMap<String, PoolTarget>, usize) {
    let mut next_index = running.map_or(0, |r| r.next_index);
    let mut pools = BTreeMap::new();
    for (name, wanted) in &new.pools {
        let changed = commands.iter().any(|c| c.pool() == Some(name.as_str()));
        let current = running.and_then(|r| r.pools.get(name));
        let (index, handle) = match current {
            Some(current) if !changed => {
                pools.insert(name.clone(), current.clone());
                continue;
            }
            Some(current) => (current.index, current.handle.clone()),
            None => {
                next_index += 1;
                (next_index - 1, PoolHandle::start(name, wanted))
            }
        };
        let settings = Arc::new(wanted.clone());
        let affinity = affinities.get(name).cloned();
        let target = PoolTarget::new(index, name, handle, settings, affinity);
        pools.insert(name.clone(), target);
    }
    (pools, next_index)
}

/// Each pool's commands for its actor, in order: what the supervisor's commands mean to it.
fn batches(commands: &[Command], new: &Settings) -> BTreeMap<String, Vec<PoolCommand>> {
    let mut batches: BTreeMap<String, Vec<PoolCommand>> = BTreeMap::new();
    for command in commands {
        if let Some((pool, command)) = pool_command(command, new) {
            batches.entry(pool.into()).or_default().push(command);
        }
    }
    batches
}

/// What `command` tells a pool's actor, if anything, with the pool's name. A new pool's
/// actor already has its settings: starting it needs no command.
pub(super) fn pool_command<'a>(
    command: &'a Command,
    settings: &Settings,
) -> Option<(&'a str, PoolCommand)> {
    let told = match command {
        Command::AddServer { entry, .. } => PoolCommand::AddServer(entry.clone()),
        Command::UpdateServer { entry, .. } => PoolCommand::UpdateServer(entry.clone()),
        Command::RemoveServer { address, .. } => PoolCommand::RemoveServer(address.clone()),
        Command::ReconfigurePool { pool } => {
            PoolCommand::Reconfigure(Arc::new(settings.pools.get(pool)?.clone()))
        }
        _ => return None,
    };
    Some((command.pool()?, told))
}

/// What a reload tells the operator it changed.
fn report(running: Option<&Running>, new: &Settings, commands: &[Command]) -> ReloadReport {
    let Some(running) = running else {
        return ReloadReport::default();
    };
    let named = |wanted: fn(&Command) -> bool| -> Vec<String> {
        let mut names: Vec<String> = commands
            .iter()
            .filter(|c| wanted(c))
            .filter_map(|c| c.pool().map(String::from))
            .collect();
        names.dedup();
        names
    };
    let started = named(|c| matches!(c, Command::StartPool { .. }));
    let changed = named(|c| c.is_for_the_pool_actor() && !matches!(c, Command::StartPool { .. }));
    ReloadReport {
        pools_changed: changed
            .into_iter()
            .filter(|name| !started.contains(name))
            .collect(),
        pools_added: started,
        pools_removed: named(|c| matches!(c, Command::RemovePool { .. })),
        listeners_restarted: commands.contains(&Command::RestartListeners),
        restart_needed: super::restart_needed(&running.settings, new),
    }
}

/// Applies prepared commands in their order.
///
/// The listeners' restart is the one command that can still fail, and the difference puts
/// it first, so its failure leaves everything as it was. It is not prepared apart from being
/// done: the run loop in `server.rs` starts the new HTTP server on the kept sockets and
/// retires the old one only once that worked, so asking for it is already the commit, and
/// splitting it would mean holding a second server ready while the rest is applied. Only the
/// certificate swap comes before it, so that a TLS listener the restart adds has the new
/// certificates from its first handshake; it is undone when the restart fails.
///
/// Once the listeners run, nothing is left that can be refused: addresses were parsed,
/// probes built, routes resolved. A pool or checker actor that has stopped, which only a bug
/// can cause, is logged; the reload goes on.
async fn commit(
    running: Option<&Running>,
    mut prepared: Prepared,
    targets: Targets<'_>,
) -> Result<(Running, ReloadReport), ReloadError> {
    let mut replaced_certificates = None;
    let mut checkers = running.map(|r| r.checkers.clone()).unwrap_or_default();
    for command in &prepared.commands {
        match command {
            Command::SwapCertificates => {
                let table = prepared.certificates.take().unwrap_or_default();
                replaced_certificates = Some(targets.certificates.swap(table));
            }
            Command::RestartListeners => {
                if let Err(err) = rebind(targets.rebinder, &prepared.settings).await {
                    if let Some(previous) = replaced_certificates {
                        targets.certificates.swap(previous);
                    }
                    return Err(err);
                }
            }
            Command::StopChecker { pool } => {
                if let Some(checks) = checkers.remove(pool) {
                    checks.stop().await;
                }
            }
            Command::StartPool { pool }
            | Command::AddServer { pool, .. }
            | Command::UpdateServer { pool, .. }
            | Command::RemoveServer { pool, .. }
            | Command::ReconfigurePool { pool } => {
                // A pool's commands go to its actor together, with the first of them.
                let batch = prepared.batches.remove(pool);
                let target = prepared.pools.get(pool);
                if let (Some(batch), Some(target)) = (batch, target) {
                    if let Err(err) = target.handle.apply(batch).await {
                        log::error!("pool {pool}: {err}");
                    }
                }
            }
            Command::StartChecker { pool } => {
                let checks = prepared.checks.remove(pool);
                let target = prepared.pools.get(pool);
                if let (Some(checks), Some(target)) = (checks, target) {
                    let handle = HealthHandle::start(target.handle.clone(), checks);
                    checkers.insert(pool.clone(), handle);
                }
            }
            Command::RetuneChecker { pool } => {
                let (Some(checks), Some(running)) =
                    (prepared.checks.remove(pool), checkers.get(pool))
                else {
                    continue;
                };
                if let Err(err) = running.retune(checks).await {
                    log::error!("pool {pool}: health checks: {err}");
                }
            }
            Command::RemovePool { pool } => {
                checkers.remove(pool);
            }
            Command::NewAffinity { .. } | Command::DropAffinity { .. } => {}
            Command::Publish => {
                if let Some(proxy) = prepared.proxy.take() {
                    targets.published.store(Arc::new(proxy));
                }
            }
        }
    }
    warn_unverified(running, &prepared.settings);
    let report = prepared.report;
    let running = Running {
        settings: prepared.settings,
        pools: prepared.pools,
        checkers,
        affinities: prepared.affinities,
        next_index: prepared.next_index,
    };
    Ok((running, report))
}

/// Warns of pools whose servers' certificates are not checked, when that is new.
fn warn_unverified(running: Option<&Running>, new: &Settings) {
    for (name, wanted) in &new.pools {
        let Some(tls) = &wanted.tls else { continue };
        let current = running.and_then(|r| r.settings.pools.get(name));
        if !tls.verify && current.map(|c| &c.tls) != Some(&wanted.tls) {
            log::warn!(
                "pool {name}: tls.verify = false: the servers' certificates are not checked"
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::X509Builder;
    use tokio::sync::mpsc;

    use super::*;
    use crate::listener::Bound;
    use crate::pool::ProbeVerdict;
    use crate::settings::{
        CertificateSettings, HealthSettings, PoolSettings, RouteSettings, StickyMode,
        StickySettings,
    };

    /// Where test `name` keeps its certificate.
    fn certificate_dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("gatehouse-reload-{name}-{}", std::process::id()))
    }

    /// A self-signed certificate for `a.test`, written to a directory of its own.
    fn certificate(name: &str) -> CertificateSettings {
        let dir = certificate_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut builder = X509Builder::new().unwrap();
        builder.set_pubkey(&key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        let later = openssl::asn1::Asn1Time::days_from_now(1).unwrap();
        builder.set_not_before(&now).unwrap();
        builder.set_not_after(&later).unwrap();
        builder
            .sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let (cert, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, builder.build().to_pem().unwrap()).unwrap();
        std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        CertificateSettings {
            cert: cert.display().to_string(),
            key: key_path.display().to_string(),
            names: vec!["a.test".into()],
            ocsp_file: None,
        }
    }

    fn route(path: &str, pool: &str) -> RouteSettings {
        RouteSettings::to(path, pool)
    }

    fn pool(addresses: &[&str]) -> PoolSettings {
        PoolSettings {
            servers: addresses.iter().map(|a| ServerEntry::new(a)).collect(),
            ..PoolSettings::default()
        }
    }

    /// Pool `web` on `/`, pool `api` with sticky sessions on `/api/`, and a certificate.
    fn running_settings(name: &str) -> Settings {
        let mut settings = Settings {
            routes: vec![route("/", "web"), route("/api/", "api")],
            ..Settings::default()
        };
        settings.pools.insert("web".into(), pool(&["127.0.0.1:1"]));
        let sticky = StickySettings {
            mode: StickyMode::Learn,
            ..StickySettings::default()
        };
        let api = PoolSettings {
            sticky: Some(sticky),
            ..pool(&["127.0.0.1:2"])
        };
        settings.pools.insert("api".into(), api);
        settings.tls.certificates.push(certificate(name));
        settings
    }

    /// Every kind of change at once: servers, health checks, a new pool and its route, new
    /// sticky settings, new listener settings.
    fn changed(running: &Settings) -> Settings {
        let mut new = running.clone();
        let web = new.pools.get_mut("web").unwrap();
        web.servers = vec![
            ServerEntry {
                weight: 3,
                ..ServerEntry::new("127.0.0.1:1")
            },
            ServerEntry::new("127.0.0.1:3"),
        ];
        web.health = Some(HealthSettings::default());
        let api = new.pools.get_mut("api").unwrap();
        api.sticky.as_mut().unwrap().mode = StickyMode::ClientIp;
        new.pools.insert("new".into(), pool(&["127.0.0.1:4"]));
        new.routes.push(route("/new/", "new"));
        new.server.workers = 5;
        new
    }

    /// A run loop stand-in that answers every listener restart with `answer`.
    fn rebinder(answer: Result<(), &'static str>) -> Rebinder {
        let (rebinder, mut rebinds) = mpsc::unbounded_channel::<Rebind>();
        actix_rt::spawn(async move {
            while let Some(rebind) = rebinds.recv().await {
                let reply = answer.map(|()| Bound::default()).map_err(String::from);
                let _ = rebind.reply.send(reply);
            }
        });
        rebinder
    }

    /// What a failed reload must leave as it was.
    struct Before {
        proxy: Arc<Proxy>,
        certificates: Option<Arc<Certificates>>,
        web: Vec<ServerEntry>,
        api_affinity: Arc<Affinity>,
    }

    impl Before {
        fn take(published: &SharedProxy, store: &TlsStore, running: &Running) -> Self {
            let certificates = store.swap(None);
            store.swap(certificates.clone());
            Self {
                proxy: published.load_full(),
                certificates,
                web: running.pools["web"].handle.entries(),
                api_affinity: running.affinities["api"].clone(),
            }
        }

        fn assert_kept(&self, published: &SharedProxy, store: &TlsStore, running: &Running) {
            assert!(
                Arc::ptr_eq(&published.load_full(), &self.proxy),
                "published"
            );
            let certificates = store.swap(None);
            let same = match (&certificates, &self.certificates) {
                (Some(now), Some(then)) => Arc::ptr_eq(now, then),
                _ => false,
            };
            assert!(same, "the certificates were swapped");
            store.swap(certificates);
            let web = &running.pools["web"].handle;
            assert_eq!(web.entries(), self.web);
            let first = web.server("127.0.0.1:1").unwrap();
            assert_eq!(first.condition().probe(), ProbeVerdict::Unchecked, "checks");
            assert!(running.checkers.is_empty());
            let api = self.proxy.pools.iter().find(|p| &*p.name == "api").unwrap();
            assert!(Arc::ptr_eq(
                api.affinity.as_ref().unwrap(),
                &self.api_affinity
            ));
            assert_eq!(self.proxy.pools.len(), 2);
        }
    }

    async fn start(name: &str) -> (Running, Arc<SharedProxy>, Arc<TlsStore>) {
        let empty = Proxy::new(&Settings::default(), Vec::new(), Arc::default()).unwrap();
        let published = Arc::new(SharedProxy::from_pointee(empty));
        let store = Arc::new(TlsStore::default());
        let rebinder = rebinder(Ok(()));
        let targets = Targets {
            published: &published,
            rebinder: &rebinder,
            certificates: &store,
        };
        let (running, _) = apply(None, running_settings(name), targets).await.unwrap();
        (running, published, store)
    }

    #[actix_rt::test]
    async fn a_reload_refused_at_the_listener_restart_leaves_everything_as_it_was() {
        let (running, published, store) = start("listener").await;
        let before = Before::take(&published, &store, &running);
        let new = changed(&running.settings);
        let refusing = rebinder(Err("address in use"));
        let targets = Targets {
            published: &published,
            rebinder: &refusing,
            certificates: &store,
        };
        let refused = apply(Some(&running), new.clone(), targets).await.err();
        assert!(
            matches!(refused, Some(ReloadError::Listen(_))),
            "{refused:?}"
        );
        before.assert_kept(&published, &store, &running);

        // The same reload, with listeners that can restart, changes all of it.
        let accepting = rebinder(Ok(()));
        let targets = Targets {
            published: &published,
            rebinder: &accepting,
            certificates: &store,
        };
        let (applied, report) = apply(Some(&running), new, targets).await.unwrap();
        assert!(report.listeners_restarted);
        assert_eq!(report.pools_added, ["new"]);
        assert_eq!(report.pools_changed, ["api", "web"]);
        assert_eq!(applied.pools["web"].handle.entries().len(), 2);
        assert!(applied.checkers.contains_key("web"));
        assert!(!Arc::ptr_eq(
            &applied.affinities["api"],
            &running.affinities["api"]
        ));
        assert_eq!(published.load().pools.len(), 3);
        let _ = std::fs::remove_dir_all(certificate_dir("listener"));
    }

    #[actix_rt::test]
    async fn a_reload_refused_by_its_last_pool_leaves_the_first_ones_as_they_were() {
        let (running, published, store) = start("prepare").await;
        let before = Before::take(&published, &store, &running);
        let mut new = changed(&running.settings);
        // Pools are taken in name order: `zz` comes after the others have their changes.
        let broken = HealthSettings {
            expect_body_regex: Some("(".into()),
            ..HealthSettings::default()
        };
        let zz = PoolSettings {
            health: Some(broken),
            ..pool(&["127.0.0.1:5"])
        };
        new.pools.insert("zz".into(), zz);
        let rebinder = rebinder(Ok(()));
        let targets = Targets {
            published: &published,
            rebinder: &rebinder,
            certificates: &store,
        };
        let refused = apply(Some(&running), new, targets).await.err();
        assert!(
            matches!(&refused, Some(ReloadError::Health { pool, .. }) if pool == "zz"),
            "{refused:?}"
        );
        before.assert_kept(&published, &store, &running);
        let _ = std::fs::remove_dir_all(certificate_dir("prepare"));
    }
}
