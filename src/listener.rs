//! The client listeners: the sockets gatehouse accepts on, the checks each accepted
//! connection passes, and the HTTP server behind them.
//!
//! The sockets are kept here, not in the server, so a reload that changes the listener
//! settings can start a new server on duplicates of the same sockets before the old server
//! stops: connections waiting to be accepted stay in the shared queue, and none is refused.
//!
//! Each accepted connection goes through, in order:
//! 1. **PROXY protocol** (with `server.proxy_protocol`): the header is read and its source
//!    address becomes the client's; a missing or malformed header closes the connection.
//! 2. **deny**: runtime blocks, and the global lists with `deny_action = "close"`, close it.
//! 3. **per-client limit**: `max_connections_per_client` open connections per address.
//! 4. **HTTP**: actix-http serves the stream, with the client's address as the peer address.

mod proxy_protocol;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol as HttpProtocol};
use actix_server::{GracefulShutdownSignal, Server};
use actix_service::{
    map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use futures_util::future::LocalBoxFuture;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use proxy_protocol::Prefixed;

use crate::proxy::{self, SharedProxy, Upstreams};
use crate::settings::ServerSettings;

/// Pending connections the kernel queues per listener (NGINX's default `backlog` on Linux is
/// 511; actix-web's is 1024; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// How long a client that stopped reading gets to take the rest of a response before the
/// connection is dropped (actix-web's default).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Starts a server on the settings' listen addresses, reusing sockets already bound to
    /// them and binding the others. Returns it and the addresses it is bound to.
    pub fn serve(
        &mut self,
        settings: &ServerSettings,
        shared: Arc<SharedProxy>,
    ) -> Result<(Server, Vec<SocketAddr>), ListenError> {
        let sockets = self.sockets_for(&settings.listen)?;
        let workers = settings.worker_count();
        let mut builder = Server::build()
            .workers(workers)
            .max_concurrent_connections(settings.max_connections.div_ceil(workers))
            .shutdown_timeout(settings.shutdown_timeout.get().as_secs())
            .disable_signals();
        let http = HttpSettings {
            keep_alive: settings.keep_alive.get(),
            client_header_timeout: settings.client_header_timeout.get(),
            shutdown: builder.graceful_shutdown_signal(),
        };
        let mut bound = Vec::with_capacity(sockets.len());
        for (address, socket) in sockets {
            let local = socket
                .local_addr()
                .map_err(|source| ListenError { address, source })?;
            let name = format!("gatehouse-{local}");
            let (http, shared) = (http.clone(), shared.clone());
            builder = if settings.proxy_protocol {
                let front = ProxyProtocol(settings.client_header_timeout.get());
                builder.listen(name, socket, move || {
                    edge(front, shared.clone(), http.service(&shared, local))
                })
            } else {
                builder.listen(name, socket, move || {
                    edge(Plain, shared.clone(), http.service(&shared, local))
                })
            }
            .map_err(|source| ListenError { address, source })?;
            bound.push(local);
        }
        for address in &bound {
            let proxy = if settings.proxy_protocol {
                " (PROXY protocol)"
            } else {
                ""
            };
            log::info!("listening on http://{address}{proxy} with {workers} workers");
        }
        Ok((builder.run(), bound))
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

/// What every connection's HTTP server is built from.
#[derive(Clone)]
struct HttpSettings {
    keep_alive: Duration,
    client_header_timeout: Duration,
    /// Resolves when the server starts a graceful stop, so idle keep-alive connections close.
    shutdown: GracefulShutdownSignal,
}

impl HttpSettings {
    /// One worker's HTTP/1.1 service for streams of type `T` (what actix-web's `HttpServer`
    /// builds, with gatehouse's application).
    fn service<T>(
        &self,
        shared: &Arc<SharedProxy>,
        local: SocketAddr,
    ) -> impl ServiceFactory<
        (T, HttpProtocol, Option<SocketAddr>),
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let shutdown = self.shutdown.clone();
        let app = App::new()
            .app_data(web::Data::from(shared.clone()))
            .app_data(web::Data::new(Upstreams::default()))
            .default_service(web::to(proxy::handle))
            .into_factory()
            .map_err(|err: actix_web::Error| err.error_response());
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(self.keep_alive)
            .client_request_timeout(self.client_header_timeout)
            .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
            .h1_allow_half_closed(true)
            .local_addr(local)
            // AppConfig feeds only `connection_info()` and URL generation, neither of which
            // the request path uses.
            .finish(map_config(app, |_| AppConfig::default()))
    }
}

/// How a connection starts: what is read before HTTP, and whose address the client's is.
trait Front: Copy + 'static {
    /// The stream HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + 'static;

    /// The stream and the client's address, or `None` to close the connection.
    fn open(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, SocketAddr)>>;
}

/// Plain HTTP: nothing is read, the TCP peer is the client.
#[derive(Clone, Copy)]
struct Plain;

impl Front for Plain {
    type Io = TcpStream;

    async fn open(self, tcp: TcpStream, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        Some((tcp, peer))
    }
}

/// A PROXY protocol header first, read within the duration.
#[derive(Clone, Copy)]
struct ProxyProtocol(Duration);

impl Front for ProxyProtocol {
    type Io = Prefixed<TcpStream>;

    async fn open(
        self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Prefixed<TcpStream>, SocketAddr)> {
        match proxy_protocol::read_header(&mut tcp, self.0).await {
            Ok((source, rest)) => Some((Prefixed::new(rest, tcp), source.unwrap_or(peer))),
            Err(err) => {
                // One line per connection, at debug: a port scan must not flood the log.
                log::debug!("closed connection from {peer}: {err}");
                None
            }
        }
    }
}

/// One worker's connection service: the front, the connection checks, then `http`.
fn edge<P, F>(front: P, shared: Arc<SharedProxy>, http: F) -> EdgeFactory<P, F> {
    EdgeFactory {
        front,
        shared,
        http,
    }
}

struct EdgeFactory<P, F> {
    front: P,
    shared: Arc<SharedProxy>,
    http: F,
}

impl<P, F> ServiceFactory<TcpStream> for EdgeFactory<P, F>
where
    P: Front,
    F: ServiceFactory<
        (P::Io, HttpProtocol, Option<SocketAddr>),
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
    F::Service: 'static,
    F::Future: 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Config = ();
    type Service = Edge<P, F::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let http = self.http.new_service(());
        let (front, shared) = (self.front, self.shared.clone());
        Box::pin(async move {
            Ok(Edge {
                front,
                shared,
                http: Rc::new(http.await?),
            })
        })
    }
}

struct Edge<P, S> {
    front: P,
    shared: Arc<SharedProxy>,
    http: Rc<S>,
}

impl<P, S> Service<TcpStream> for Edge<P, S>
where
    P: Front,
    S: Service<(P::Io, HttpProtocol, Option<SocketAddr>), Response = (), Error = DispatchError>
        + 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Future = LocalBoxFuture<'static, Result<(), DispatchError>>;

    actix_service::forward_ready!(http);

    fn call(&self, tcp: TcpStream) -> Self::Future {
        let (front, shared, http) = (self.front, self.shared.clone(), self.http.clone());
        Box::pin(async move {
            // Without it a streamed response stalls on delayed ACKs (DESIGN.md).
            let _ = tcp.set_nodelay(true);
            let Ok(peer) = tcp.peer_addr() else {
                return Ok(());
            };
            let Some((io, client)) = front.open(tcp, peer).await else {
                return Ok(());
            };
            // Held until the connection ends.
            let _counted = {
                let proxy = shared.load();
                let security = &proxy.security;
                match security.open_connection(client.ip()) {
                    Ok(counted) => counted,
                    Err(why) => {
                        security.edge.refusals.refused(client.ip(), why);
                        return Ok(());
                    }
                }
            };
            http.call((io, HttpProtocol::Http1, Some(client))).await
        })
    }
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
