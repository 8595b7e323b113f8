//! Each worker's HTTP clients to the pools' servers: one awc client per pool, so every pool has
//! its own connection pool and connect timeout, kept across reloads that leave the pool's
//! connection settings alone.

use std::cell::{OnceCell, RefCell, RefMut};
use std::sync::Arc;

use super::PoolTarget;
use crate::settings::PoolSettings;
use crate::upstream::{self, TlsContext, UpstreamConnector};

/// Each worker's HTTP clients, one per pool, so every pool has its own connection pool and
/// connect timeout. `awc::Client` is not `Send`: each worker builds its own, on first use and
/// again when a reload changes the pool's settings.
#[derive(Default)]
pub struct Upstreams {
    clients: RefCell<Vec<Option<PoolClient>>>,
}

/// Whether a client built for `old` serves `new` as it is: only the connection settings
/// count (timeouts and TLS), so a reload that changes a pool's servers keeps its idle
/// connections.
fn same_connections(old: &Arc<PoolSettings>, new: &Arc<PoolSettings>) -> bool {
    Arc::ptr_eq(old, new)
        || (old.connect_timeout == new.connect_timeout
            && old.keepalive_timeout == new.keepalive_timeout
            && old.tls == new.tls)
}

/// A worker's client for one pool, with the settings it was built from.
struct PoolClient {
    settings: Arc<PoolSettings>,
    client: awc::Client,
    /// The TLS context of the pool's WebSocket relays, which connect outside awc; built for
    /// the first one.
    relay_tls: OnceCell<Option<TlsContext>>,
}

impl Upstreams {
    /// The worker's client for `pool` (a cheap handle on a shared connection pool).
    pub fn client(&self, pool: &PoolTarget) -> awc::Client {
        self.current(pool).client.clone()
    }

    /// The TLS context for WebSocket relays to `pool`'s servers; `None` for a plain pool.
    pub fn relay_tls(&self, pool: &PoolTarget) -> Option<TlsContext> {
        let entry = self.current(pool);
        let tls = entry
            .relay_tls
            .get_or_init(|| pool.settings.tls.as_ref().map(upstream::tls_context));
        tls.clone()
    }

    /// The worker's entry for `pool`, built anew when the pool's connection settings changed.
    fn current(&self, pool: &PoolTarget) -> RefMut<'_, PoolClient> {
        let mut clients = self.clients.borrow_mut();
        if clients.len() <= pool.index {
            clients.resize_with(pool.index + 1, || None);
        }
        match &mut clients[pool.index] {
            Some(entry) if same_connections(&entry.settings, &pool.settings) => {
                if !Arc::ptr_eq(&entry.settings, &pool.settings) {
                    entry.settings = pool.settings.clone();
                }
            }
            slot => {
                *slot = Some(PoolClient {
                    settings: pool.settings.clone(),
                    client: client(&pool.settings),
                    relay_tls: OnceCell::new(),
                });
            }
        }
        RefMut::map(clients, |clients| {
            clients[pool.index]
                .as_mut()
                .expect("the pool's entry was just made")
        })
    }
}

/// Builds a worker's client for one pool from its settings.
fn client(settings: &PoolSettings) -> awc::Client {
    let tls = settings.tls.as_ref().map(upstream::tls_context);
    // awc bounds every call of the connector service by `timeout`, name resolution and the
    // TLS handshake included.
    let connector = awc::Connector::new()
        .connector(UpstreamConnector::new(tls))
        .timeout(settings.connect_timeout.get())
        .conn_keep_alive(settings.keepalive_timeout.get())
        .limit(0);
    awc::Client::builder()
        .connector(connector)
        .no_default_headers()
        .disable_redirects()
        // The response timeout is gatehouse's own: it starts when the request body is sent.
        .disable_timeout()
        .finish()
}
