//! Start-up and shutdown: pools, listeners, workers, signals.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::{Server as HttpServerRunning, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::{self, Admin};
use crate::pool::PoolHandle;
use crate::proxy::{self, Upstreams};
use crate::settings::{Settings, Sources};
use crate::supervisor::{ReloadError, SupervisorHandle};

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
    #[error("{0}")]
    Settings(ReloadError),
    #[error("cannot listen for signals: {0}")]
    Signals(io::Error),
}

/// A running gatehouse: its bound addresses, and the means to stop it.
pub struct Gatehouse {
    listeners: Vec<SocketAddr>,
    server: HttpServerRunning,
    admin: HttpServerRunning,
    admin_address: SocketAddr,
    pools: Vec<(String, PoolHandle)>,
    supervisor: SupervisorHandle,
    signals: Signals,
}

impl Gatehouse {
    /// Starts pools and listeners. Call inside an actix system; port 0 binds a free port.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        Self::start_with(settings, Sources::default()).await
    }

    /// Starts from `settings`, re-reading `sources` on each reload (SIGHUP, `POST /reload`).
    pub async fn start_with(settings: Settings, sources: Sources) -> Result<Self, StartError> {
        let signals = Signals::listen().map_err(StartError::Signals)?;
        let (supervisor, shared, pools) = SupervisorHandle::start(sources, settings.clone())
            .await
            .map_err(StartError::Settings)?;
        let (admin, admin_address) = admin::start(
            Admin::new(&settings, shared.clone(), supervisor.clone()),
            settings.admin.listen,
        )
        .map_err(|source| StartError::Admin {
            address: settings.admin.listen,
            source,
        })?;
        let server = &settings.server;
        let workers = server.worker_count();
        let shared = web::Data::from(shared);
        let mut http = HttpServer::new(move || {
            let upstreams = web::Data::new(Upstreams::default());
            App::new()
                .app_data(shared.clone())
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
            supervisor,
            signals,
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
        let Signals {
            terminate,
            interrupt,
            hangup,
        } = self.signals;
        actix_rt::spawn(async move {
            shutdown_signal(terminate, interrupt).await;
            log::info!("stopping: no new connections; in-flight requests may finish");
            handle.stop(true).await;
        });
        actix_rt::spawn(self.admin);
        actix_rt::spawn(reload_on_hangup(hangup, self.supervisor.clone()));
        let result = self.server.await;
        admin.stop(false).await;
        result
    }
}

/// The signals gatehouse answers, listened for from start-up on, so none that arrives once the
/// listeners are up can take the default action (which ends the process).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn listen() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => log::info!("SIGTERM received"),
        _ = interrupt.recv() => log::info!("SIGINT received"),
    }
}

/// Reloads the settings on every SIGHUP, as long as gatehouse runs.
async fn reload_on_hangup(mut hangup: Signal, supervisor: SupervisorHandle) {
    while hangup.recv().await.is_some() {
        log::info!("SIGHUP received: reloading settings");
        // The supervisor logs the outcome.
        let _ = supervisor.reload().await;
    }
}

/// Runs gatehouse from settings until it is stopped; what `main` calls.
pub fn run(settings: Settings, sources: Sources) -> io::Result<()> {
    actix_rt::System::new().block_on(async move {
        let gatehouse = Gatehouse::start_with(settings, sources)
            .await
            .map_err(|err| io::Error::other(err.to_string()))?;
        gatehouse.run_until_stopped().await
    })
}
