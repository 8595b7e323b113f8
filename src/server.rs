//! Start-up and shutdown: pools, listeners, workers, signals.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::{Server as HttpServerRunning, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::admin::{self, Admin};
use crate::pool::{PoolError, PoolHandle};
use crate::proxy::{self, Proxy, Upstreams};
use crate::settings::Settings;

/// Why gatehouse could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start the admin API on {address}: {source}")]
    Admin {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("pool {pool}: {source}")]
    Pool { pool: String, source: PoolError },
    #[error("routes: {0}")]
    Routes(String),
}

/// A running gatehouse: its bound addresses, and the means to stop it.
pub struct Gatehouse {
    listeners: Vec<SocketAddr>,
    server: HttpServerRunning,
    admin: HttpServerRunning,
    admin_address: SocketAddr,
    pools: Vec<(String, PoolHandle)>,
}

impl Gatehouse {
    /// Starts pools and listeners. Call inside an actix system; port 0 binds a free port.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let mut pools = Vec::with_capacity(settings.pools.len());
        for (name, pool) in &settings.pools {
            let handle = PoolHandle::from_settings(name, pool)
                .await
                .map_err(|source| StartError::Pool {
                    pool: name.clone(),
                    source,
                })?;
            pools.push((name.clone(), handle));
        }
        let proxy = web::Data::new(Proxy::new(&settings, &pools).map_err(StartError::Routes)?);
        let (admin, admin_address) =
            admin::start(Admin::new(&settings, &pools), settings.admin.listen).map_err(
                |source| StartError::Admin {
                    address: settings.admin.listen,
                    source,
                },
            )?;
        let server = &settings.server;
        let workers = server.worker_count();
        let mut http = HttpServer::new(move || {
            let upstreams = web::Data::new(Upstreams::new(&proxy));
            App::new()
                .app_data(proxy.clone())
                .app_data(upstreams)
                .default_service(web::to(proxy::handle))
        })
        .workers(workers)
        .max_connections(server.max_connections.div_ceil(workers))
        .keep_alive(server.keep_alive.get())
        .client_request_timeout(server.client_header_timeout.get())
        .client_disconnect_timeout(Duration::from_secs(1))
        .shutdown_timeout(server.shutdown_timeout.get().as_secs())
        .tcp_nodelay(true)
        .disable_signals();
        for &address in &server.listen {
            http = http
                .bind(address)
                .map_err(|source| StartError::Listen { address, source })?;
        }
        let listeners = http.addrs();
        for address in &listeners {
            log::info!("listening on http://{address} with {workers} workers");
        }
        Ok(Self {
            listeners,
            server: http.run(),
            admin,
            admin_address,
            pools,
        })
    }

    /// The addresses the client listeners are bound to.
    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// The address the admin API is bound to.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// A pool by name, for tests and the admin side.
    pub fn pool(&self, name: &str) -> Option<&PoolHandle> {
        self.pools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, pool)| pool)
    }

    /// A handle that stops the server: `stop(true)` finishes in-flight requests first.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Runs until stopped by a handle or by SIGTERM/SIGINT (graceful either way).
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let handle = self.server.handle();
        let admin = self.admin.handle();
        actix_rt::spawn(async move {
            shutdown_signal().await;
            log::info!("stopping: no new connections; in-flight requests may finish");
            handle.stop(true).await;
        });
        actix_rt::spawn(self.admin);
        let result = self.server.await;
        admin.stop(false).await;
        result
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot listen for SIGTERM/SIGINT; stop gatehouse with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
}

/// Runs gatehouse from settings until it is stopped; what `main` calls.
pub fn run(settings: Settings) -> io::Result<()> {
    actix_rt::System::new().block_on(async move {
        let gatehouse = Gatehouse::start(settings)
            .await
            .map_err(|err| io::Error::other(err.to_string()))?;
        gatehouse.run_until_stopped().await
    })
}
