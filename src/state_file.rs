//! The admin state file: pool membership changed at runtime, kept across restarts and reloads
//! (as NGINX Plus's upstream `state` file). Pools listed in it take their servers from it;
//! the settings files still define which pools exist and everything else about them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::settings::{ServerEntry, Settings};

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state file {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// The file's contents: each pool's servers.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub pools: BTreeMap<String, Vec<ServerEntry>>,
}

/// Reads the state file; a missing file is an empty membership (nothing changed yet).
pub fn load(path: &Path) -> Result<Membership, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Membership::default()),
        Err(err) => return Err(io_error(path, err)),
    };
    let invalid = |reason: String| StateFileError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let membership: Membership =
        serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))?;
    for (pool, servers) in &membership.pools {
        for (index, server) in servers.iter().enumerate() {
            if servers[..index].iter().any(|s| s.address == server.address) {
                return Err(invalid(format!(
                    "pool {pool}: server {} is listed twice",
                    server.address
                )));
            }
            if let Err(reason) = crate::pool::parse_address(&server.address) {
                return Err(invalid(format!(
                    "pool {pool}: server {:?}: {reason}",
                    server.address
                )));
            }
            if server.weight == 0 {
                return Err(invalid(format!(
                    "pool {pool}: server {}: weight must be at least 1",
                    server.address
                )));
            }
        }
    }
    Ok(membership)
}

/// Writes the state file atomically: a temporary file beside it, synced, then renamed over it,
/// so a crash leaves the old file or the new one, never half of one.
pub fn save(path: &Path, membership: &Membership) -> Result<(), StateFileError> {
    let text = serde_json::to_vec_pretty(membership).map_err(|err| StateFileError::Invalid {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|err| io_error(path, err))
}

fn io_error(path: &Path, err: std::io::Error) -> StateFileError {
    StateFileError::Io {
        path: path.display().to_string(),
        reason: err.to_string(),
    }
}

/// Replaces the servers of every pool the state file lists; pools it lists that the settings
/// do not have are ignored (and logged).
pub fn apply(settings: &mut Settings, membership: Membership) {
    for (name, servers) in membership.pools {
        match settings.pools.get_mut(&name) {
            Some(pool) => pool.servers = servers,
            None => {
                log::warn!("state file lists pool {name}, which the settings do not have; ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str) -> ServerEntry {
        ServerEntry::new(address)
    }

    #[test]
    fn membership_round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("gatehouse-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), Membership::default());
        let mut membership = Membership::default();
        membership
            .pools
            .insert("web".into(), vec![entry("127.0.0.1:1")]);
        save(&path, &membership).unwrap();
        assert_eq!(load(&path).unwrap(), membership);
        std::fs::write(&path, r#"{"pools": {"web": [{"address": "nope"}]}}"#).unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Invalid { .. })));
        let twice =
            r#"{"pools": {"web": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:1"}]}}"#;
        std::fs::write(&path, twice).unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Invalid { .. })));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listed_pools_take_their_servers_from_the_state() {
        let mut settings = Settings::default();
        settings.pools.insert("web".into(), Default::default());
        let mut membership = Membership::default();
        membership
            .pools
            .insert("web".into(), vec![entry("127.0.0.1:2")]);
        membership
            .pools
            .insert("gone".into(), vec![entry("127.0.0.1:3")]);
        apply(&mut settings, membership);
        assert_eq!(settings.pools["web"].servers, [entry("127.0.0.1:2")]);
        assert!(!settings.pools.contains_key("gone"));
    }
}
