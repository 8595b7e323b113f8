//! Start-up and shutdown: pools, listeners, workers, signals.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_server::{Server as HttpServerRunning, ServerHandle};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::admin::{self, Admin};
use crate::listener::{ListenError, ListenerSettings, Listeners, Rebind};
use crate::pool::PoolHandle;
use crate::proxy::SharedProxy;
use crate::settings::{Settings, Sources};
use crate::supervisor::{ReloadError, SupervisorHandle};
use crate::tls::TlsStore;

/// Why gatehouse could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(ListenError),
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
    tls_listeners: Vec<SocketAddr>,
    server: HttpServerRunning,
    sockets: Listeners,
    shared: Arc<SharedProxy>,
    certificates: Arc<TlsStore>,
    admin: HttpServerRunning,
    admin_address: SocketAddr,
    pools: Vec<(String, PoolHandle)>,
    supervisor: SupervisorHandle,
    signals: Signals,
    rebinds: mpsc::UnboundedReceiver<Rebind>,
    stops: mpsc::UnboundedReceiver<bool>,
    stopper: Stopper,
}

/// Stops a running gatehouse from anywhere: `stop(true)` lets in-flight requests finish.
#[derive(Clone)]
pub struct Stopper(mpsc::UnboundedSender<bool>);

impl Stopper {
    pub fn stop(&self, graceful: bool) {
        let _ = self.0.send(graceful);
    }
}

impl Gatehouse {
    /// Starts pools and listeners. Call inside an actix system; port 0 binds a free port.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        Self::start_with(settings, Sources::default()).await
    }

    /// Starts from `settings`, re-reading `sources` on each reload (SIGHUP, `POST /reload`).
    pub async fn start_with(settings: Settings, sources: Sources) -> Result<Self, StartError> {
        let signals = Signals::listen().map_err(StartError::Signals)?;
        let (rebinder, rebinds) = mpsc::unbounded_channel();
        let certificates = Arc::new(TlsStore::default());
        let (supervisor, shared, pools) =
            SupervisorHandle::start(sources, settings.clone(), rebinder, certificates.clone())
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
        let mut sockets = Listeners::default();
        let listen = ListenerSettings {
            server: &settings.server,
            tls_listen: &settings.tls.listen,
            http2: &settings.tls.http2,
            certificates: &certificates,
        };
        let (server, bound) = sockets
            .serve(listen, shared.clone())
            .map_err(StartError::Listen)?;
        let (stop_tx, stops) = mpsc::unbounded_channel();
        Ok(Self {
            listeners: bound.plain,
            tls_listeners: bound.tls,
            server,
            sockets,
            shared,
            certificates,
            admin,
            admin_address,
            pools,
            supervisor,
            signals,
            rebinds,
            stops,
            stopper: Stopper(stop_tx),
        })
    }

    /// The addresses the client listeners are bound to.
    pub fn listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// The addresses the TLS listeners are bound to.
    pub fn tls_listeners(&self) -> &[SocketAddr] {
        &self.tls_listeners
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

    /// What stops this gatehouse, whichever listeners it runs by then.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Runs until stopped by a [`Stopper`] or by SIGTERM/SIGINT (graceful), restarting the
    /// client listeners when a reload changes their settings.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        let Self {
            server,
            mut sockets,
            shared,
            certificates,
            admin,
            supervisor,
            signals,
            mut rebinds,
            mut stops,
            ..
        } = self;
        let admin_handle = admin.handle();
        actix_rt::spawn(admin);
        actix_rt::spawn(reload_on_hangup(signals.hangup, supervisor));
        let mut shutdown = Box::pin(shutdown_signal(signals.terminate, signals.interrupt));
        let mut stopping = false;
        let mut current = server;
        // Listeners replaced by a reload, still finishing their requests.
        let mut draining: Vec<(ServerHandle, actix_rt::task::JoinHandle<io::Result<()>>)> =
            Vec::new();
        let result = loop {
            let stop = tokio::select! {
                result = &mut current => break result,
                () = &mut shutdown, if !stopping => {
                    log::info!("stopping: no new connections; in-flight requests may finish");
                    true
                }
                Some(graceful) = stops.recv() => graceful,
                Some(rebind) = rebinds.recv(), if !stopping => {
                    let listen = ListenerSettings {
                        server: &rebind.settings,
                        tls_listen: &rebind.tls_listen,
                        http2: &rebind.http2,
                        certificates: &certificates,
                    };
                    let answer = match sockets.serve(listen, shared.clone()) {
                        Ok((server, bound)) => {
                            let old = std::mem::replace(&mut current, server);
                            actix_rt::spawn(retire(old.handle()));
                            draining.push((old.handle(), actix_rt::spawn(old)));
                            Ok(bound)
                        }
                        Err(err) => Err(err.to_string()),
                    };
                    let _ = rebind.reply.send(answer);
                    continue;
                }
            };
            stopping = true;
            // Our duplicates of the listening sockets would keep them open.
            sockets = Listeners::default();
            actix_rt::spawn(current.handle().stop(stop));
            // A forced stop reaches the listeners still draining, too.
            for (handle, _) in &draining {
                actix_rt::spawn(handle.stop(stop));
            }
        };
        for (_, old) in draining {
            let _ = old.await;
        }
        admin_handle.stop(false).await;
        result
    }
}

/// How long a replaced listener keeps its workers after it stops accepting, so a connection
/// it accepted a moment before gets its request read and answered rather than closed idle.
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Stops a listener replaced by a reload: no more accepting (the new listener takes the
/// queue), a grace period, then a graceful stop that lets requests in flight finish.
async fn retire(old: ServerHandle) {
    old.pause().await;
    actix_rt::time::sleep(RETIRE_GRACE).await;
    old.stop(true).await;
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
