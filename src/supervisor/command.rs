//! The commands a reload, start-up and the admin API give: the vocabulary of changes to what
//! runs, as data that `diff.rs` computes and the supervisor applies.

use crate::settings::{ServerEntry, ServerState};

/// One change to what runs. A reload's list comes in the order it is applied (see
/// `diff.rs`).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Reads `[tls]`'s certificates again (renewed files included) and serves them to new
    /// handshakes.
    SwapCertificates,
    /// Starts the client listeners anew on new settings, on the sockets they have.
    RestartListeners,
    /// Stops a pool's health checks: their verdicts are no longer written.
    StopChecker { pool: String },
    /// Starts a pool's actor, empty: its servers follow as [`Command::AddServer`].
    StartPool { pool: String },
    /// Adds a server to a pool.
    AddServer { pool: String, entry: ServerEntry },
    /// Gives a server of a pool a new entry (weight, limit, backup flag, state).
    UpdateServer { pool: String, entry: ServerEntry },
    /// Removes a server from a pool; its requests in flight finish.
    RemoveServer { pool: String, address: String },
    /// Gives a running pool its new settings: algorithm, health and passive rules, slow
    /// start, timeouts, and the order of its servers.
    ReconfigurePool { pool: String },
    /// Forgets a pool: no new request reaches it; its requests in flight finish.
    RemovePool { pool: String },
    /// Starts a pool's health checks.
    StartChecker { pool: String },
    /// Gives a pool's running health checks new settings; counters and verdicts are kept.
    RetuneChecker { pool: String },
    /// Gives a pool a new session persistence for its sticky settings, with empty tables.
    NewAffinity { pool: String },
    /// Ends a pool's session persistence.
    DropAffinity { pool: String },
    /// Publishes the request path (routes, pools, limits, security, the access log) built
    /// from the new settings.
    Publish,
}

impl Command {
    /// The pool the command is about, if it is about one.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Self::StopChecker { pool }
            | Self::StartPool { pool }
            | Self::AddServer { pool, .. }
            | Self::UpdateServer { pool, .. }
            | Self::RemoveServer { pool, .. }
            | Self::ReconfigurePool { pool }
            | Self::RemovePool { pool }
            | Self::StartChecker { pool }
            | Self::RetuneChecker { pool }
            | Self::NewAffinity { pool }
            | Self::DropAffinity { pool } => Some(pool),
            Self::SwapCertificates | Self::RestartListeners | Self::Publish => None,
        }
    }

    /// Whether the pool's actor carries it out (the others concern what is around it).
    pub fn is_for_the_pool_actor(&self) -> bool {
        matches!(
            self,
            Self::StartPool { .. }
                | Self::AddServer { .. }
                | Self::UpdateServer { .. }
                | Self::RemoveServer { .. }
                | Self::ReconfigurePool { .. }
        )
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
