//! A server of a pool as the request path sees it: its address and live counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::http::uri::Authority;

/// One upstream server. Immutable but for its counters, which the request path updates.
#[derive(Debug)]
pub struct Server {
    /// `host:port`, as written in settings.
    pub address: Arc<str>,
    /// The address ready to put in an upstream URI.
    pub authority: Authority,
    /// Share of the pool's requests relative to the other servers.
    pub weight: u32,
    pub stats: ServerStats,
}

/// Counters kept per server; shared across snapshots so membership changes keep them.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests picked for this server whose response has not finished.
    pub in_flight: AtomicUsize,
    /// Requests sent to this server since it joined the pool.
    pub requests: AtomicU64,
    /// Requests that failed to connect, timed out or broke mid-response.
    pub failures: AtomicU64,
}

impl Server {
    /// The settings entry that describes this server, as the admin state file keeps it.
    pub fn entry(&self) -> crate::settings::ServerEntry {
        crate::settings::ServerEntry {
            address: self.address.to_string(),
            weight: self.weight,
        }
    }

    /// A server from its settings; the address must have passed [`parse_address`].
    pub fn new(address: &str, weight: u32) -> Result<Self, String> {
        Ok(Self {
            authority: parse_address(address)?,
            address: address.into(),
            weight,
            stats: ServerStats::default(),
        })
    }
}

/// Parses `host:port` (an IP address or a name) into an authority for upstream URIs.
pub fn parse_address(address: &str) -> Result<Authority, String> {
    let authority: Authority = address.parse().map_err(|_| {
        "not an address; write it as host:port, e.g. \"127.0.0.1:9001\"".to_string()
    })?;
    if authority.as_str().contains('@') {
        return Err("an address cannot carry user information".into());
    }
    match authority.port_u16() {
        Some(port) if port != 0 => {}
        Some(_) => return Err("port 0 cannot be connected to".into()),
        None => return Err("the port is missing; write it as host:port".into()),
    }
    if authority.host().is_empty() {
        return Err("the host is missing; write it as host:port".into());
    }
    Ok(authority)
}

/// A request's claim on a server: counted in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    server: Arc<Server>,
}

impl InFlight {
    pub fn new(server: Arc<Server>) -> Self {
        server.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        Self { server }
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Counts a failed request against the server.
    pub fn failed(&self) {
        self.server.stats.failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_host_and_port() {
        assert!(parse_address("127.0.0.1:9001").is_ok());
        assert!(parse_address("backend.internal:80").is_ok());
        assert!(parse_address("[::1]:9001").is_ok());
        assert!(parse_address("127.0.0.1").is_err());
        assert!(parse_address("127.0.0.1:0").is_err());
        assert!(parse_address("127.0.0.1:99999").is_err());
        assert!(parse_address("user@host:80").is_err());
        assert!(parse_address("not an address").is_err());
        assert!(parse_address(":80").is_err());
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let server = Arc::new(Server::new("127.0.0.1:9001", 1).unwrap());
        let claim = InFlight::new(server.clone());
        assert_eq!(server.stats.in_flight.load(Ordering::Relaxed), 1);
        drop(claim);
        assert_eq!(server.stats.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(server.stats.requests.load(Ordering::Relaxed), 1);
    }
}
