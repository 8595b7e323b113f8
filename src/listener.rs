//! The client listeners: the sockets gatehouse accepts on, and the HTTP server on them.
//!
//! The sockets are kept here, not in the HTTP server, so a reload that changes the listener
//! settings can start a new server on duplicates of the same sockets before the old server
//! stops: connections waiting to be accepted stay in the shared queue, and none is refused.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server as HttpServerRunning;
use actix_web::{web, App, HttpServer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::proxy::{self, SharedProxy, Upstreams};
use crate::settings::ServerSettings;

/// Pending connections the kernel queues per listener (NGINX's default `backlog` on Linux is
/// 511; actix-web's is 1024; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// A listen error that names the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct ListenError {
    pub address: SocketAddr,
    pub source: io::Error,
}

/// The bound sockets, by the address the settings name (which may have port 0).
#[derive(Default)]
pub struct Listeners {
    sockets: Vec<(SocketAddr, TcpListener)>,
}

impl Listeners {
    /// Starts an HTTP server on the settings' listen addresses, reusing sockets already bound
    /// to them and binding the others. Returns it and the addresses it is bound to.
    pub fn serve(
        &mut self,
        settings: &ServerSettings,
        shared: Arc<SharedProxy>,
    ) -> Result<(HttpServerRunning, Vec<SocketAddr>), ListenError> {
        let sockets = self.sockets_for(&settings.listen)?;
        let workers = settings.worker_count();
        let shared = web::Data::from(shared);
        let mut http = HttpServer::new(move || {
            let upstreams = web::Data::new(Upstreams::default());
            App::new()
                .app_data(shared.clone())
                .app_data(upstreams)
                .default_service(web::to(proxy::handle))
        })
        .workers(workers)
        .max_connections(settings.max_connections.div_ceil(workers))
        .keep_alive(settings.keep_alive.get())
        .client_request_timeout(settings.client_header_timeout.get())
        .client_disconnect_timeout(Duration::from_secs(1))
        .shutdown_timeout(settings.shutdown_timeout.get().as_secs())
        .tcp_nodelay(true)
        .disable_signals();
        for (address, socket) in sockets {
            http = http
                .listen(socket)
                .map_err(|source| ListenError { address, source })?;
        }
        let bound = http.addrs();
        for address in &bound {
            log::info!("listening on http://{address} with {workers} workers");
        }
        Ok((http.run(), bound))
    }

    /// Duplicates of the sockets for `listen`, binding those not bound yet and forgetting those
    /// no longer listed (a running server keeps its own duplicates until it stops). If a bind
    /// fails, nothing changes.
    #[allow(clippy::type_complexity)]
    fn sockets_for(
        &mut self,
        listen: &[SocketAddr],
    ) -> Result<Vec<(SocketAddr, TcpListener)>, ListenError> {
        let mut fresh: Vec<(SocketAddr, TcpListener)> = Vec::new();
        for &address in listen {
            let known = |sockets: &[(SocketAddr, TcpListener)]| {
                sockets.iter().any(|(a, s)| same(*a, s, address))
            };
            if !known(&self.sockets) && !known(&fresh) {
                let socket = bind(address).map_err(|source| ListenError { address, source })?;
                fresh.push((address, socket));
            }
        }
        let mut all = std::mem::take(&mut self.sockets);
        all.extend(fresh);
        for &address in listen {
            if let Some(index) = all.iter().position(|(a, s)| same(*a, s, address)) {
                let (_, socket) = all.swap_remove(index);
                self.sockets.push((address, socket));
            }
        }
        self.sockets
            .iter()
            .map(|(address, socket)| {
                let copy = socket.try_clone().map_err(|source| ListenError {
                    address: *address,
                    source,
                })?;
                Ok((*address, copy))
            })
            .collect()
    }
}

/// Whether a socket bound for `configured` serves `wanted`: the same setting, or the address
/// that a port-0 setting was given.
fn same(configured: SocketAddr, socket: &TcpListener, wanted: SocketAddr) -> bool {
    configured == wanted || socket.local_addr().is_ok_and(|bound| bound == wanted)
}

/// A listening socket as actix-web would make it: address reuse (a restart does not wait out
/// TIME_WAIT), non-blocking, and a deliberate backlog.
fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Asks the running gatehouse to serve new listener settings; answered with the addresses it
/// is then bound to, or why it kept the old ones.
pub struct Rebind {
    pub settings: ServerSettings,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<SocketAddr>, String>>,
}

/// Sends [`Rebind`] requests to the running gatehouse.
pub type Rebinder = tokio::sync::mpsc::UnboundedSender<Rebind>;

/// Whether two `[server]` sections differ in what only a new listener can apply.
pub fn listener_changed(old: &ServerSettings, new: &ServerSettings) -> bool {
    // The Server header and the request head limit are read per request, not by the listener.
    let per_request = |s: &ServerSettings| {
        let mut s = s.clone();
        s.server_header.clear();
        s.max_request_header_size = crate::settings::ByteSize(0);
        s
    };
    per_request(old) != per_request(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listener_settings_need_a_new_listener() {
        let old = ServerSettings::default();
        let mut new = old.clone();
        new.server_header = "edge".into();
        new.max_request_header_size = crate::settings::ByteSize::kib(8);
        assert!(!listener_changed(&old, &new));
        new.workers = 3;
        assert!(listener_changed(&old, &new));
    }

    #[test]
    fn sockets_are_kept_for_addresses_still_listed() {
        let mut listeners = Listeners::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = listeners.sockets_for(&[any]).unwrap();
        let port = first[0].1.local_addr().unwrap().port();
        let again = listeners.sockets_for(&[any]).unwrap();
        assert_eq!(
            again[0].1.local_addr().unwrap().port(),
            port,
            "same socket reused"
        );
        // Naming the port a port-0 setting was given keeps that socket too.
        let pinned = SocketAddr::from(([127, 0, 0, 1], port));
        let kept = listeners.sockets_for(&[pinned]).unwrap();
        assert_eq!(kept[0].1.local_addr().unwrap().port(), port);
        // A port held elsewhere cannot be bound: nothing changes.
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = elsewhere.local_addr().unwrap();
        assert!(listeners.sockets_for(&[pinned, taken]).is_err());
        assert_eq!(listeners.sockets.len(), 1);
        assert_eq!(listeners.sockets[0].0, pinned);
    }
}
