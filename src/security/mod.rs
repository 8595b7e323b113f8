//! The edge's defences that are not HTTP parsing: who may connect (`access`), what the
//! listeners check on each connection (`connections`), the client's real address behind
//! trusted proxies (`client`), and how fast it may send requests (`rate`).

mod access;
mod client;
mod connections;
mod rate;

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;

pub use access::{AccessList, Block, RuntimeDenies};
pub use client::{client_ip, ClientIp, X_FORWARDED_FOR};
pub use connections::{ConnectionCounts, ConnectionGuard, Refusal, RefusalLog};
pub use rate::RateLimit;

use crate::settings::{Cidr, DenyAction, SecuritySettings};

/// What the edge keeps for the whole life of the process, across reloads: the runtime blocks
/// of the admin API, the open connections per client, and the log of refused connections.
#[derive(Debug, Default)]
pub struct EdgeState {
    pub denies: RuntimeDenies,
    pub connections: Arc<ConnectionCounts>,
    pub refusals: RefusalLog,
}

/// `[security]` as the listeners and the request path read it; part of the published
/// request-path state, so a reload swaps it whole.
#[derive(Debug)]
pub struct Security {
    pub settings: SecuritySettings,
    /// The global allow and deny lists.
    pub access: AccessList,
    pub edge: Arc<EdgeState>,
}

impl Security {
    pub fn new(settings: &SecuritySettings, edge: Arc<EdgeState>) -> Self {
        Self {
            access: AccessList::new(&settings.allow, &settings.deny),
            settings: settings.clone(),
            edge,
        }
    }

    /// Whether a connection from `ip` may be served at all: refused at once when the address
    /// is blocked at runtime, or denied by the global lists with `deny_action = "close"`.
    pub fn admits_connection(&self, ip: IpAddr) -> bool {
        if self.edge.denies.blocks(ip) {
            return false;
        }
        self.settings.deny_action != DenyAction::Close || self.access.admits(ip)
    }

    /// Whether a request from `ip` passes the global lists (with `deny_action = "403"`) and
    /// the runtime blocks; a refused one gets 403.
    pub fn admits_request(&self, ip: IpAddr) -> bool {
        !self.edge.denies.blocks(ip) && self.access.admits(ip)
    }

    /// Whether `peer` is a proxy whose `X-Forwarded-For` is believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.settings
            .trusted_proxies
            .iter()
            .any(|cidr: &Cidr| cidr.contains(peer))
    }

    /// The client's address for `req` (see [`client_ip`]).
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip(req, |ip| self.trusts(ip))
    }
}
