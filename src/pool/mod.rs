//! Pools: groups of servers that host the same content, and how one is picked per request.
//!
//! The [`Pool`] actor is the only writer of a pool's membership. It publishes an immutable
//! [`PoolSnapshot`] that request handlers read without a message round trip; per-request
//! counters (in flight, requests, failures) are atomics on each [`Server`].

mod balance;
mod round_robin;
mod server;

use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

pub use balance::{balancer, Balancer};
pub use server::{parse_address, InFlight, Server, ServerStats};

use crate::settings::{Balance, PoolSettings, ServerEntry};

/// What the request path reads: the pool's servers and its balancing state.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub name: Arc<str>,
    pub servers: Vec<Arc<Server>>,
    balancer: Box<dyn Balancer>,
}

impl PoolSnapshot {
    fn new(name: Arc<str>, balance: Balance, servers: Vec<Arc<Server>>) -> Self {
        let balancer = balancer(balance, &servers);
        Self {
            name,
            servers,
            balancer,
        }
    }

    /// Picks a server for one request and counts it in flight there.
    pub fn pick(&self) -> Option<InFlight> {
        let index = self.balancer.pick(&self.servers)?;
        Some(InFlight::new(self.servers[index].clone()))
    }
}

/// The actor that owns one pool's membership.
pub struct Pool {
    name: Arc<str>,
    balance: Balance,
    servers: Vec<Arc<Server>>,
    published: Arc<ArcSwap<PoolSnapshot>>,
}

impl Pool {
    fn publish(&self) {
        let snapshot = PoolSnapshot::new(self.name.clone(), self.balance, self.servers.clone());
        self.published.store(Arc::new(snapshot));
    }

    fn add(&mut self, address: &str, weight: u32) -> Result<(), PoolError> {
        if self.servers.iter().any(|s| &*s.address == address) {
            return Err(PoolError::Duplicate(address.into()));
        }
        let server = Server::new(address, weight).map_err(|reason| PoolError::Address {
            address: address.into(),
            reason,
        })?;
        self.servers.push(Arc::new(server));
        self.publish();
        Ok(())
    }

    /// Takes a pool's settings as a whole (a reload): servers whose entry did not change keep
    /// their object and counters, changed ones start afresh, missing ones leave. One publish.
    fn reconfigure(&mut self, balance: Balance, wanted: &[ServerEntry]) -> Result<(), PoolError> {
        self.servers = merge(&self.servers, wanted)?;
        self.balance = balance;
        self.publish();
        Ok(())
    }

    fn remove(&mut self, address: &str) -> Result<(), PoolError> {
        let before = self.servers.len();
        self.servers.retain(|s| &*s.address != address);
        if self.servers.len() == before {
            return Err(PoolError::Unknown(address.into()));
        }
        self.publish();
        Ok(())
    }
}

impl Actor for Pool {
    type Context = Context<Self>;
}

/// The servers a pool should have: kept from `current` where the entry is unchanged.
fn merge(current: &[Arc<Server>], wanted: &[ServerEntry]) -> Result<Vec<Arc<Server>>, PoolError> {
    wanted
        .iter()
        .map(|entry| {
            let unchanged = current
                .iter()
                .find(|server| *server.address == *entry.address && server.weight == entry.weight);
            match unchanged {
                Some(server) => Ok(server.clone()),
                None => Server::new(&entry.address, entry.weight)
                    .map(Arc::new)
                    .map_err(|reason| PoolError::Address {
                        address: entry.address.clone(),
                        reason,
                    }),
            }
        })
        .collect()
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
    #[error("the pool is not running")]
    Stopped,
}

/// Adds a server to the pool.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct AddServer {
    pub address: String,
    pub weight: u32,
}

/// Replaces the pool's algorithm and servers with those of new settings.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct Reconfigure {
    pub balance: Balance,
    pub servers: Vec<ServerEntry>,
}

impl Handler<Reconfigure> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: Reconfigure, _: &mut Context<Self>) -> Self::Result {
        self.reconfigure(msg.balance, &msg.servers)
    }
}

/// Removes a server; requests already on it finish.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct RemoveServer {
    pub address: String,
}

impl Handler<AddServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: AddServer, _: &mut Context<Self>) -> Self::Result {
        self.add(&msg.address, msg.weight)
    }
}

impl Handler<RemoveServer> for Pool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, msg: RemoveServer, _: &mut Context<Self>) -> Self::Result {
        self.remove(&msg.address)
    }
}

/// A typed handle on a running pool: commands go to the actor, reads come from its snapshot.
#[derive(Clone)]
pub struct PoolHandle {
    addr: Addr<Pool>,
    published: Arc<ArcSwap<PoolSnapshot>>,
}

impl PoolHandle {
    /// Starts an empty pool actor on the current arbiter.
    pub fn start(name: &str, balance: Balance) -> Self {
        let name: Arc<str> = name.into();
        let empty = PoolSnapshot::new(name.clone(), balance, Vec::new());
        let published = Arc::new(ArcSwap::from_pointee(empty));
        let pool = Pool {
            name,
            balance,
            servers: Vec::new(),
            published: published.clone(),
        };
        Self {
            addr: pool.start(),
            published,
        }
    }

    /// Starts a pool and adds its servers from settings, as the admin API would.
    pub async fn from_settings(name: &str, settings: &PoolSettings) -> Result<Self, PoolError> {
        let pool = Self::start(name, settings.balance);
        for server in &settings.servers {
            pool.add_server(&server.address, server.weight).await?;
        }
        Ok(pool)
    }

    pub async fn add_server(&self, address: &str, weight: u32) -> Result<(), PoolError> {
        let msg = AddServer {
            address: address.into(),
            weight,
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// Applies a pool's new settings in one step (see [`Reconfigure`]).
    pub async fn reconfigure(&self, settings: &PoolSettings) -> Result<(), PoolError> {
        let msg = Reconfigure {
            balance: settings.balance,
            servers: settings.servers.clone(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    pub async fn remove_server(&self, address: &str) -> Result<(), PoolError> {
        let msg = RemoveServer {
            address: address.into(),
        };
        self.addr.send(msg).await.map_err(|_| PoolError::Stopped)?
    }

    /// The pool as it is now; cheap enough to call per request.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<PoolSnapshot>> {
        self.published.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address: &str, weight: u32) -> ServerEntry {
        ServerEntry {
            address: address.into(),
            weight,
        }
    }

    #[test]
    fn merge_keeps_unchanged_servers_and_their_counters() {
        let a = Arc::new(Server::new("127.0.0.1:1", 1).unwrap());
        let b = Arc::new(Server::new("127.0.0.1:2", 1).unwrap());
        a.stats
            .requests
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let wanted = [
            entry("127.0.0.1:1", 1),
            entry("127.0.0.1:2", 3),
            entry("127.0.0.1:3", 1),
        ];
        let merged = merge(&[a.clone(), b.clone()], &wanted).unwrap();
        assert!(Arc::ptr_eq(&merged[0], &a), "unchanged server kept");
        assert!(!Arc::ptr_eq(&merged[1], &b), "reweighted server replaced");
        assert_eq!(merged[1].weight, 3);
        assert_eq!(&*merged[2].address, "127.0.0.1:3");
        assert_eq!(merge(&merged, &[entry("127.0.0.1:3", 1)]).unwrap().len(), 1);
        assert!(merge(&[], &[entry("nope", 1)]).is_err());
    }
}
