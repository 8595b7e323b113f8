//! The typed handle on a running pool: commands go to its actor, with a dead mailbox turned
//! into one error here; reads come from the snapshot it publishes.

use std::sync::Arc;

use actix::prelude::*;
use actix::WeakRecipient;
use arc_swap::ArcSwap;

use super::actor::{Apply, Follow, MembershipChanged, Pool, PoolCommand, PoolError};
use super::budget::RetryBudget;
use super::server::Server;
use super::snapshot::PoolSnapshot;
use crate::settings::{PoolSettings, ServerEntry};

/// A typed handle on a running pool: commands go to the actor, reads come from its snapshot.
#[derive(Clone)]
pub struct PoolHandle {
    addr: Addr<Pool>,
    published: Arc<ArcSwap<PoolSnapshot>>,
    /// Shared by every worker and kept across reloads, as the pool is.
    budget: Arc<RetryBudget>,
}

impl PoolHandle {
    /// Starts an empty pool actor on the current arbiter, with `settings`' algorithm and
    /// health settings (not its servers).
    pub fn start(name: &str, settings: &PoolSettings) -> Self {
        let name: Arc<str> = name.into();
        let empty = PoolSnapshot::new(
            name.clone(),
            settings.balance,
            settings.hash_key.as_ref(),
            Vec::new(),
        );
        let published = Arc::new(ArcSwap::from_pointee(empty));
        let pool = Pool::new(name, settings, published.clone());
        Self {
            addr: pool.start(),
            published,
            budget: Arc::default(),
        }
    }

    /// The pool's retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Starts a pool and adds its servers from settings, as the admin API would (the
    /// supervisor does it through its commands; unit tests of other modules do it here).
    #[cfg(test)]
    pub async fn from_settings(name: &str, settings: &PoolSettings) -> Result<Self, PoolError> {
        let pool = Self::start(name, settings);
        let adds = settings.servers.iter().cloned().map(PoolCommand::AddServer);
        pool.apply(adds.collect()).await?;
        Ok(pool)
    }

    /// Applies `commands` as one change (see [`Apply`]).
    pub async fn apply(&self, commands: Vec<PoolCommand>) -> Result<(), PoolError> {
        self.addr
            .send(Apply(commands))
            .await
            .map_err(|_| PoolError::Stopped)?
    }

    /// Adds a server as a settings entry describes it (limit, backup, state included).
    #[cfg(test)]
    pub async fn add_entry(&self, entry: &ServerEntry) -> Result<(), PoolError> {
        self.apply(vec![PoolCommand::AddServer(entry.clone())])
            .await
    }

    /// Removes a server; its requests in flight finish.
    #[cfg(test)]
    pub async fn remove_server(&self, address: &str) -> Result<(), PoolError> {
        self.apply(vec![PoolCommand::RemoveServer(address.into())])
            .await
    }

    /// Tells `follower` of the pool's servers now and after every change of its membership,
    /// for as long as the follower runs.
    pub fn follow(&self, follower: WeakRecipient<MembershipChanged>) {
        self.addr.do_send(Follow(follower));
    }

    /// The server at `address`, as the pool publishes it now.
    pub fn server(&self, address: &str) -> Option<Arc<Server>> {
        self.snapshot()
            .servers
            .iter()
            .find(|s| &*s.address == address)
            .cloned()
    }

    /// Every server's settings entry, in order: the pool's running membership.
    pub fn entries(&self) -> Vec<ServerEntry> {
        self.snapshot().servers.iter().map(|s| s.entry()).collect()
    }

    /// The pool as it is now; cheap enough to call per request.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<PoolSnapshot>> {
        self.published.load()
    }
}
