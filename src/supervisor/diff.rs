//! A reload as data: the commands that turn what runs into what new settings say. Pure, so
//! every kind of change is unit-tested without actors; start-up is the difference from
//! nothing.

use std::collections::BTreeMap;

use super::command::Command;
use crate::listener::listener_changed;
use crate::settings::{PoolSettings, ServerEntry, Settings};

/// What runs, as far as a reload's difference needs to know.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    /// The settings applied last (with the state file's membership).
    pub settings: &'a Settings,
    /// Each running pool's servers as they run now: the admin API may have changed them
    /// since the settings were applied.
    pub membership: &'a BTreeMap<String, Vec<ServerEntry>>,
}

/// The commands that turn `current` (nothing, at start-up) into what `new` says, in the
/// order they are applied:
///
/// 1. the certificates, whenever there are any (a reload reads renewed files);
/// 2. the listeners, when their settings changed: the last step that can fail, so a
///    listener that cannot bind leaves everything as it was;
/// 3. the health checks that end, before their pool clears its verdicts;
/// 4. each pool, in name order: started with its servers, or its servers removed, changed
///    and added and then its settings, or removed;
/// 5. the health checks that start or take new settings, once their pools have their
///    servers;
/// 6. session persistence replaced or ended;
/// 7. the request path, published last, always: it holds every settings section that needs
///    no command of its own (routes, timeouts, limits, security, compression, the log).
pub fn diff(current: Option<Current<'_>>, new: &Settings) -> Vec<Command> {
    let no_pools = BTreeMap::new();
    let old_pools = current.map_or(&no_pools, |c| &c.settings.pools);
    let mut commands = Vec::new();
    let had_certificates = current.is_some_and(|c| !c.settings.tls.certificates.is_empty());
    if had_certificates || !new.tls.certificates.is_empty() {
        commands.push(Command::SwapCertificates);
    }
    // At start-up the server binds the listeners after the supervisor has started.
    if current.is_some_and(|c| listener_changed(c.settings, new)) {
        commands.push(Command::RestartListeners);
    }
    for (name, old) in old_pools {
        let keeps_checks = new.pools.get(name).is_some_and(|p| p.health.is_some());
        if old.health.is_some() && !keeps_checks {
            commands.push(Command::StopChecker { pool: name.clone() });
        }
    }
    let pools = old_pools.keys().chain(new.pools.keys());
    let names: std::collections::BTreeSet<&String> = pools.collect();
    for name in names {
        match (old_pools.get(name), new.pools.get(name)) {
            (None, Some(wanted)) => start_pool(name, wanted, &mut commands),
            (Some(old), Some(wanted)) => {
                let running = current
                    .and_then(|c| c.membership.get(name))
                    .unwrap_or(&old.servers);
                change_pool(name, old, running, wanted, &mut commands);
            }
            (Some(_), None) => commands.push(Command::RemovePool { pool: name.clone() }),
            (None, None) => {}
        }
    }
    for (name, wanted) in &new.pools {
        let old = old_pools.get(name);
        if let Some(command) = checker(name, old, wanted) {
            commands.push(command);
        }
    }
    for (name, old) in old_pools {
        if let Some(command) = affinity(name, Some(old), new.pools.get(name)) {
            commands.push(command);
        }
    }
    for (name, wanted) in &new.pools {
        if !old_pools.contains_key(name) {
            commands.extend(affinity(name, None, Some(wanted)));
        }
    }
    commands.push(Command::Publish);
    commands
}

/// A new pool: its actor, then each of its servers as the admin API would add it.
fn start_pool(name: &str, wanted: &PoolSettings, commands: &mut Vec<Command>) {
    commands.push(Command::StartPool { pool: name.into() });
    for entry in &wanted.servers {
        commands.push(Command::AddServer {
            pool: name.into(),
            entry: entry.clone(),
        });
    }
}

/// A running pool whose servers are `running` now: the servers that left, changed and
/// joined, then its settings when anything but its servers changed, or when the servers
/// would otherwise not stand in the settings' order.
fn change_pool(
    name: &str,
    old: &PoolSettings,
    running: &[ServerEntry],
    wanted: &PoolSettings,
    commands: &mut Vec<Command>,
) {
    let listed = |entries: &[ServerEntry], address: &str| {
        entries
            .iter()
            .find(|entry| entry.address == address)
            .cloned()
    };
    let mut order: Vec<&str> = Vec::new();
    for entry in running {
        if listed(&wanted.servers, &entry.address).is_none() {
            commands.push(Command::RemoveServer {
                pool: name.into(),
                address: entry.address.clone(),
            });
        } else {
            order.push(&entry.address);
        }
    }
    for entry in &wanted.servers {
        match listed(running, &entry.address) {
            Some(current) if current == *entry => {}
            Some(_) => commands.push(Command::UpdateServer {
                pool: name.into(),
                entry: entry.clone(),
            }),
            None => {
                commands.push(Command::AddServer {
                    pool: name.into(),
                    entry: entry.clone(),
                });
                order.push(&entry.address);
            }
        }
    }
    let in_order = order
        .iter()
        .copied()
        .eq(wanted.servers.iter().map(|entry| &*entry.address));
    if !in_order || apart_from_servers(old) != apart_from_servers(wanted) {
        commands.push(Command::ReconfigurePool { pool: name.into() });
    }
}

/// A pool's settings but its servers, which commands of their own change.
fn apart_from_servers(settings: &PoolSettings) -> PoolSettings {
    PoolSettings {
        servers: Vec::new(),
        ..settings.clone()
    }
}

/// What becomes of a pool's health checks, which run while the pool has `[health]`; their
/// probes use the pool's TLS settings too.
fn checker(name: &str, old: Option<&PoolSettings>, wanted: &PoolSettings) -> Option<Command> {
    let pool = name.to_string();
    let health = wanted.health.as_ref()?;
    match old.filter(|old| old.health.is_some()) {
        None => Some(Command::StartChecker { pool }),
        Some(old) if old.health.as_ref() != Some(health) || old.tls != wanted.tls => {
            Some(Command::RetuneChecker { pool })
        }
        Some(_) => None,
    }
}

/// What becomes of a pool's session persistence: kept while `[sticky]` stays as it was (so
/// sessions stay bound), new when it is new or changed, dropped with the section or the pool.
fn affinity(
    name: &str,
    old: Option<&PoolSettings>,
    wanted: Option<&PoolSettings>,
) -> Option<Command> {
    let pool = name.to_string();
    let old = old.and_then(|p| p.sticky.as_ref());
    match (old, wanted.and_then(|p| p.sticky.as_ref())) {
        (Some(_), None) => Some(Command::DropAffinity { pool }),
        (old, Some(sticky)) if old != Some(sticky) => Some(Command::NewAffinity { pool }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{
        Balance, CertificateSettings, Duration as Setting, HealthSettings, RouteSettings,
        ServerState, StickyMode, StickySettings,
    };

    use Command::*;

    fn web(servers: &[&str]) -> PoolSettings {
        PoolSettings {
            servers: servers.iter().map(|a| ServerEntry::new(a)).collect(),
            ..PoolSettings::default()
        }
    }

    fn settings(pools: &[(&str, PoolSettings)]) -> Settings {
        let mut settings = Settings::default();
        for (name, pool) in pools {
            settings.pools.insert(name.to_string(), pool.clone());
        }
        settings
    }

    /// The commands from `old` (running as its settings say) to `new`.
    fn reload(old: &Settings, new: &Settings) -> Vec<Command> {
        let membership = old
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.servers.clone()))
            .collect();
        let current = Current {
            settings: old,
            membership: &membership,
        };
        diff(Some(current), new)
    }

    fn pool(name: &str) -> String {
        name.to_string()
    }

    fn add(name: &str, address: &str) -> Command {
        AddServer {
            pool: pool(name),
            entry: ServerEntry::new(address),
        }
    }

    fn health() -> HealthSettings {
        HealthSettings {
            interval: Setting::from_secs(1),
            ..HealthSettings::default()
        }
    }

    fn sticky(mode: StickyMode) -> StickySettings {
        StickySettings {
            mode,
            ..StickySettings::default()
        }
    }

    #[test]
    fn start_up_starts_every_pool_with_its_servers_checks_and_affinity() {
        let api = PoolSettings {
            health: Some(health()),
            sticky: Some(sticky(StickyMode::Learn)),
            ..web(&["10.0.0.9:80"])
        };
        let new = settings(&[("web", web(&["10.0.0.1:80", "10.0.0.2:80"])), ("api", api)]);
        assert_eq!(
            diff(None, &new),
            [
                StartPool { pool: pool("api") },
                add("api", "10.0.0.9:80"),
                StartPool { pool: pool("web") },
                add("web", "10.0.0.1:80"),
                add("web", "10.0.0.2:80"),
                StartChecker { pool: pool("api") },
                NewAffinity { pool: pool("api") },
                Publish,
            ]
        );
        // The listeners are the server's to bind at start-up, whatever they are.
        let mut listening = new.clone();
        listening.server.workers = 7;
        assert!(!diff(None, &listening).contains(&RestartListeners));
    }

    #[test]
    fn nothing_changed_only_publishes() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        assert_eq!(reload(&old, &old), [Publish]);
        assert_eq!(
            reload(&Settings::default(), &Settings::default()),
            [Publish]
        );
    }

    #[test]
    fn routes_security_and_limits_only_publish() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        let mut new = old.clone();
        new.routes.push(RouteSettings::to("/api/", "web"));
        new.security.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        new.server.server_header = "edge".into();
        new.log.access = crate::settings::AccessLogFormat::Json;
        assert_eq!(reload(&old, &new), [Publish]);
    }

    #[test]
    fn a_pool_added_is_started_with_its_servers() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        let new = settings(&[
            ("web", web(&["10.0.0.1:80"])),
            ("api", web(&["10.0.0.9:80"])),
        ]);
        assert_eq!(
            reload(&old, &new),
            [
                StartPool { pool: pool("api") },
                add("api", "10.0.0.9:80"),
                Publish
            ]
        );
    }

    #[test]
    fn a_pool_removed_takes_its_checks_and_affinity_with_it() {
        let api = PoolSettings {
            health: Some(health()),
            sticky: Some(sticky(StickyMode::ClientIp)),
            ..web(&["10.0.0.9:80"])
        };
        let old = settings(&[("web", web(&["10.0.0.1:80"])), ("api", api)]);
        let new = settings(&[("web", web(&["10.0.0.1:80"]))]);
        assert_eq!(
            reload(&old, &new),
            [
                StopChecker { pool: pool("api") },
                RemovePool { pool: pool("api") },
                DropAffinity { pool: pool("api") },
                Publish
            ]
        );
    }

    #[test]
    fn a_pool_with_new_settings_is_reconfigured() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        for change in [
            |p: &mut PoolSettings| p.balance = Balance::LeastConnections,
            |p: &mut PoolSettings| p.slow_start = Setting::from_secs(30),
            |p: &mut PoolSettings| p.response_timeout = Setting::from_secs(5),
            |p: &mut PoolSettings| p.passive.enabled = !p.passive.enabled,
        ] {
            let mut new = old.clone();
            change(new.pools.get_mut("web").unwrap());
            assert_eq!(
                reload(&old, &new),
                [ReconfigurePool { pool: pool("web") }, Publish]
            );
        }
    }

    #[test]
    fn servers_added_removed_and_changed_are_commands_of_their_own() {
        let old = settings(&[("web", web(&["10.0.0.1:80", "10.0.0.2:80"]))]);
        // Added at the end: the order is kept without reconfiguring.
        let new = settings(&[("web", web(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]))]);
        assert_eq!(reload(&old, &new), [add("web", "10.0.0.3:80"), Publish]);
        // Added in the middle: the pool takes the settings' order.
        let new = settings(&[("web", web(&["10.0.0.1:80", "10.0.0.3:80", "10.0.0.2:80"]))]);
        assert_eq!(
            reload(&old, &new),
            [
                add("web", "10.0.0.3:80"),
                ReconfigurePool { pool: pool("web") },
                Publish
            ]
        );
        // Removed.
        let new = settings(&[("web", web(&["10.0.0.2:80"]))]);
        let removed = RemoveServer {
            pool: pool("web"),
            address: "10.0.0.1:80".into(),
        };
        assert_eq!(reload(&old, &new), [removed, Publish]);
        // Reweighted and drained.
        let mut new = old.clone();
        let servers = &mut new.pools.get_mut("web").unwrap().servers;
        servers[0].weight = 3;
        servers[1].state = ServerState::Drain;
        let updated = |entry: &ServerEntry| UpdateServer {
            pool: pool("web"),
            entry: entry.clone(),
        };
        let servers = &new.pools["web"].servers;
        assert_eq!(
            reload(&old, &new),
            [updated(&servers[0]), updated(&servers[1]), Publish]
        );
        // Only reordered.
        let new = settings(&[("web", web(&["10.0.0.2:80", "10.0.0.1:80"]))]);
        assert_eq!(
            reload(&old, &new),
            [ReconfigurePool { pool: pool("web") }, Publish]
        );
    }

    #[test]
    fn runtime_changes_are_undone_against_what_runs() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        // The admin API added a server and drained the other since.
        let drained = ServerEntry {
            state: ServerState::Drain,
            ..ServerEntry::new("10.0.0.1:80")
        };
        let membership =
            BTreeMap::from([(pool("web"), vec![drained, ServerEntry::new("10.0.0.5:80")])]);
        let current = Current {
            settings: &old,
            membership: &membership,
        };
        assert_eq!(
            diff(Some(current), &old),
            [
                RemoveServer {
                    pool: pool("web"),
                    address: "10.0.0.5:80".into()
                },
                UpdateServer {
                    pool: pool("web"),
                    entry: ServerEntry::new("10.0.0.1:80")
                },
                Publish
            ]
        );
    }

    #[test]
    fn health_checks_start_retune_and_stop_with_their_section() {
        let plain = settings(&[("web", web(&["10.0.0.1:80"]))]);
        let mut checked = plain.clone();
        checked.pools.get_mut("web").unwrap().health = Some(health());
        let reconfigured = ReconfigurePool { pool: pool("web") };
        assert_eq!(
            reload(&plain, &checked),
            [
                reconfigured.clone(),
                StartChecker { pool: pool("web") },
                Publish
            ]
        );
        let mut retuned = checked.clone();
        retuned.pools.get_mut("web").unwrap().health = Some(HealthSettings {
            path: "/ready".into(),
            ..health()
        });
        assert_eq!(
            reload(&checked, &retuned),
            [
                reconfigured.clone(),
                RetuneChecker { pool: pool("web") },
                Publish
            ]
        );
        // Probes use the pool's TLS settings: a change there retunes them too.
        let mut over_tls = checked.clone();
        over_tls.pools.get_mut("web").unwrap().tls = Some(Default::default());
        assert_eq!(
            reload(&checked, &over_tls),
            [
                reconfigured.clone(),
                RetuneChecker { pool: pool("web") },
                Publish
            ]
        );
        // Stopped before the pool clears the verdicts they wrote.
        assert_eq!(
            reload(&checked, &plain),
            [StopChecker { pool: pool("web") }, reconfigured, Publish]
        );
    }

    #[test]
    fn affinity_is_kept_while_sticky_stays_as_it_was() {
        let plain = settings(&[("web", web(&["10.0.0.1:80"]))]);
        let mut learn = plain.clone();
        learn.pools.get_mut("web").unwrap().sticky = Some(sticky(StickyMode::Learn));
        let reconfigured = ReconfigurePool { pool: pool("web") };
        let new_affinity = NewAffinity { pool: pool("web") };
        assert_eq!(
            reload(&plain, &learn),
            [reconfigured.clone(), new_affinity.clone(), Publish]
        );
        let mut header = learn.clone();
        header.pools.get_mut("web").unwrap().sticky = Some(sticky(StickyMode::ClientIp));
        assert_eq!(
            reload(&learn, &header),
            [reconfigured.clone(), new_affinity, Publish]
        );
        // Another setting of the pool changes: the affinity stays.
        let mut slower = learn.clone();
        slower.pools.get_mut("web").unwrap().response_timeout = Setting::from_secs(90);
        assert_eq!(reload(&learn, &slower), [reconfigured.clone(), Publish]);
        assert_eq!(
            reload(&learn, &plain),
            [reconfigured, DropAffinity { pool: pool("web") }, Publish]
        );
    }

    #[test]
    fn listener_changes_restart_the_listeners_after_the_certificates() {
        let old = settings(&[("web", web(&["10.0.0.1:80"]))]);
        let mut new = old.clone();
        new.server.workers = 3;
        assert_eq!(reload(&old, &new), [RestartListeners, Publish]);
        new.tls.certificates.push(CertificateSettings {
            cert: "a.pem".into(),
            key: "a.key".into(),
            names: Vec::new(),
            ocsp_file: None,
        });
        new.tls.listen = vec!["127.0.0.1:0".parse().unwrap()];
        assert_eq!(
            reload(&old, &new),
            [SwapCertificates, RestartListeners, Publish]
        );
    }

    #[test]
    fn certificates_are_read_again_at_every_reload_that_has_or_had_them() {
        let mut old = Settings::default();
        old.tls.certificates.push(CertificateSettings {
            cert: "a.pem".into(),
            key: "a.key".into(),
            names: Vec::new(),
            ocsp_file: None,
        });
        // Renewed files on disk, settings unchanged.
        assert_eq!(reload(&old, &old), [SwapCertificates, Publish]);
        let mut renamed = old.clone();
        renamed.tls.certificates[0].cert = "b.pem".into();
        assert_eq!(reload(&old, &renamed), [SwapCertificates, Publish]);
        // Removed: the table is emptied.
        assert_eq!(
            reload(&old, &Settings::default()),
            [SwapCertificates, Publish]
        );
    }
}
