//! Settings errors that name the key, the bad value and where it came from.

use std::path::PathBuf;

/// Why a set of settings was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A settings file could not be read or is not TOML.
    #[error("settings file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A key has a value gatehouse cannot use.
    #[error("{key} = {value} (from {origin}): {problem}")]
    Invalid {
        key: String,
        value: String,
        origin: String,
        problem: String,
    },
}
