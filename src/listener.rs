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
//! 4. **TLS** (on `tls.listen`): the handshake, certificate chosen by SNI, protocol by ALPN.
//! 5. **HTTP**: actix-http serves HTTP/1.1, and [`http2`] HTTP/2 when ALPN chose it, with
//!    the client's address as the peer address.

mod http2;
mod proxy_protocol;
mod send_deadline;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_http::body::BoxBody;
use actix_http::error::{DispatchError, ParseError};
use actix_http::{HttpService, Protocol as HttpProtocol, Request, Response};
use actix_server::{GracefulShutdownSignal, Server};
use actix_service::{
    map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::{web, App};
use futures_util::future::LocalBoxFuture;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use http2::Http2Limits;
use proxy_protocol::Prefixed;
use send_deadline::SendDeadline;

use crate::access_log::AccessRecord;
use crate::proxy::{self, SharedProxy, Upstreams};
use crate::settings::{Http2Settings, ServerSettings, Settings};
use crate::tls::{Handshake, OverTls, TlsPort, TlsStore};

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

/// What a listener serves: the settings of both kinds of listener and the certificates.
pub struct ListenerSettings<'a> {
    pub server: &'a ServerSettings,
    /// `tls.listen`.
    pub tls_listen: &'a [SocketAddr],
    /// `tls.http2`.
    pub http2: &'a Http2Settings,
    pub certificates: &'a Arc<TlsStore>,
}

/// The addresses a server is bound to.
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub plain: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

impl Listeners {
    /// Starts a server on the settings' listen addresses (plain and TLS), reusing sockets
    /// already bound to them and binding the others. Returns it and the addresses it is
    /// bound to.
    pub fn serve(
        &mut self,
        listeners: ListenerSettings<'_>,
        shared: Arc<SharedProxy>,
    ) -> Result<(Server, Bound), ListenError> {
        let settings = listeners.server;
        let wanted: Vec<SocketAddr> = settings
            .listen
            .iter()
            .chain(listeners.tls_listen)
            .copied()
            .collect();
        let (sockets, tls_sockets): (Vec<_>, Vec<_>) = self
            .sockets_by_entry(&wanted)?
            .into_iter()
            .partition(|(entry, _)| *entry < settings.listen.len());
        let entry_address = |(entry, socket): (usize, TcpListener)| (wanted[entry], socket);
        let sockets: Vec<_> = sockets.into_iter().map(entry_address).collect();
        let tls_sockets: Vec<_> = tls_sockets.into_iter().map(entry_address).collect();
        let workers = settings.worker_count();
        let mut builder = Server::build()
            .workers(workers)
            .max_concurrent_connections(settings.max_connections.div_ceil(workers))
            .shutdown_timeout(settings.shutdown_timeout.get().as_secs())
            .disable_signals();
        let http = HttpSettings {
            keep_alive: settings.keep_alive.get(),
            client_header_timeout: settings.client_header_timeout.get(),
            http2: Http2Limits::new(listeners.http2, settings),
            shutdown: builder.graceful_shutdown_signal(),
            connection: ConnectionData::default(),
        };
        let local = |(address, socket): &(SocketAddr, TcpListener)| {
            socket.local_addr().map_err(|source| ListenError {
                address: *address,
                source,
            })
        };
        let mut bound = Bound::default();
        for socket in &tls_sockets {
            bound.tls.push(local(socket)?);
        }
        // Where `redirect_https` sends plain-HTTP clients: the first TLS listener.
        let tls_port = bound.tls.first().map(|address| TlsPort(address.port()));
        let front = Fronts {
            proxy_protocol: settings
                .proxy_protocol
                .then(|| ProxyProtocol(settings.client_header_timeout.get())),
            send_timeout: settings.send_timeout.get(),
        };
        for socket in sockets {
            let address = local(&socket)?;
            let (_, socket) = socket;
            let service = http.clone().with_connection_data(tls_port);
            builder = front.listen(builder, socket, address, Clear, service, &shared)?;
            bound.plain.push(address);
        }
        let handshake = Handshake::new(
            listeners.certificates.clone(),
            settings.client_header_timeout.get(),
        );
        for ((_, socket), &address) in tls_sockets.into_iter().zip(&bound.tls) {
            let service = http.clone().with_connection_data(Some(OverTls));
            builder = front.listen(
                builder,
                socket,
                address,
                handshake.clone(),
                service,
                &shared,
            )?;
        }
        let proxy = if settings.proxy_protocol {
            " (PROXY protocol)"
        } else {
            ""
        };
        for address in &bound.plain {
            log::info!("listening on http://{address}{proxy} with {workers} workers");
        }
        for address in &bound.tls {
            log::info!("listening on https://{address}{proxy} with {workers} workers");
        }
        Ok((builder.run(), bound))
    }

    /// Duplicates of the sockets for `listen`, binding those not bound yet and forgetting those
    /// no longer listed (a running server keeps its own duplicates until it stops). If a bind
    /// fails, nothing changes.
    #[cfg(test)]
    fn sockets_for(
        &mut self,
        listen: &[SocketAddr],
    ) -> Result<Vec<(SocketAddr, TcpListener)>, ListenError> {
        let sockets = self.sockets_by_entry(listen)?;
        Ok(sockets
            .into_iter()
            .map(|(entry, socket)| (listen[entry], socket))
            .collect())
    }

    /// [`Self::sockets_for`], each socket with the index of its entry in `listen`. An address
    /// listed twice gets one socket; each port-0 entry gets its own.
    fn sockets_by_entry(
        &mut self,
        listen: &[SocketAddr],
    ) -> Result<Vec<(usize, TcpListener)>, ListenError> {
        let mut old = std::mem::take(&mut self.sockets);
        // (entry, the setting it was bound for, socket)
        let mut kept: Vec<(usize, SocketAddr, TcpListener)> = Vec::new();
        for (entry, &address) in listen.iter().enumerate() {
            let listed = kept.iter().any(|(_, a, s)| same(*a, s, address));
            if address.port() != 0 && listed {
                continue;
            }
            let socket = match old.iter().position(|(a, s)| same(*a, s, address)) {
                Some(index) => old.remove(index),
                None => match bind(address) {
                    Ok(socket) => (address, socket),
                    Err(source) => {
                        // Sockets bound by this call close; the others stay as they were.
                        old.extend(kept.into_iter().map(|(_, a, s)| (a, s)));
                        self.sockets = old;
                        return Err(ListenError { address, source });
                    }
                },
            };
            kept.push((entry, socket.0, socket.1));
        }
        let mut copies = Vec::with_capacity(kept.len());
        for (entry, _, socket) in &kept {
            let address = listen[*entry];
            let copy = socket
                .try_clone()
                .map_err(|source| ListenError { address, source })?;
            copies.push((*entry, copy));
        }
        self.sockets = kept
            .into_iter()
            .map(|(entry, _, socket)| (listen[entry], socket))
            .collect();
        Ok(copies)
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

/// The listener's front, for either kind of listener: plain TCP or a PROXY protocol header.
#[derive(Clone, Copy)]
struct Fronts {
    proxy_protocol: Option<ProxyProtocol>,
    /// `server.send_timeout`, for every connection's writes.
    send_timeout: Duration,
}

impl Fronts {
    /// Adds a listener on `socket` whose connections pass the front, the connection checks,
    /// then `secure` (TLS or nothing), then HTTP.
    fn listen<L>(
        self,
        builder: actix_server::ServerBuilder,
        socket: TcpListener,
        address: SocketAddr,
        secure: L,
        http: HttpSettings,
        shared: &Arc<SharedProxy>,
    ) -> Result<actix_server::ServerBuilder, ListenError>
    where
        L: Secure<SendDeadline<TcpStream>> + Secure<SendDeadline<Prefixed<TcpStream>>> + Send,
    {
        let name = format!("gatehouse-{address}");
        let shared = shared.clone();
        let send_timeout = self.send_timeout;
        match self.proxy_protocol {
            Some(front) => builder.listen(name, socket, move || {
                type Io<L> = <L as Secure<SendDeadline<Prefixed<TcpStream>>>>::Io;
                let http = http.service::<Io<L>>(&shared, address);
                edge(front, secure.clone(), send_timeout, shared.clone(), http)
            }),
            None => builder.listen(name, socket, move || {
                type Io<L> = <L as Secure<SendDeadline<TcpStream>>>::Io;
                let http = http.service::<Io<L>>(&shared, address);
                edge(Plain, secure.clone(), send_timeout, shared.clone(), http)
            }),
        }
        .map_err(|source| ListenError { address, source })
    }
}

/// What every connection's HTTP server is built from.
#[derive(Clone)]
struct HttpSettings {
    keep_alive: Duration,
    client_header_timeout: Duration,
    http2: Http2Limits,
    /// Resolves when the server starts a graceful stop, so idle keep-alive connections close.
    shutdown: GracefulShutdownSignal,
    /// What the request path learns of the listener, through the connection data.
    connection: ConnectionData,
}

/// The listener facts a request reads with `conn_data`: it came over TLS, or where the TLS
/// listener is.
#[derive(Clone, Copy, Default)]
struct ConnectionData {
    over_tls: Option<OverTls>,
    tls_port: Option<TlsPort>,
}

trait IntoConnectionData {
    fn apply(self, data: &mut ConnectionData);
}

impl IntoConnectionData for Option<OverTls> {
    fn apply(self, data: &mut ConnectionData) {
        data.over_tls = self;
    }
}

impl IntoConnectionData for Option<TlsPort> {
    fn apply(self, data: &mut ConnectionData) {
        data.tls_port = self;
    }
}

impl HttpSettings {
    fn with_connection_data(mut self, data: impl IntoConnectionData) -> Self {
        data.apply(&mut self.connection);
        self
    }

    /// One worker's HTTP/1.1 and HTTP/2 service for streams of type `T`: actix-http's for
    /// HTTP/1.1 (what actix-web's `HttpServer` builds), [`http2`]'s for HTTP/2, both with
    /// gatehouse's application and one set of upstream clients.
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
        let upstreams = web::Data::new(Upstreams::default());
        let shutdown = self.shutdown.clone();
        let data = self.connection;
        let mut builder = HttpService::build();
        if data.over_tls.is_some() || data.tls_port.is_some() {
            builder = builder.on_connect_ext(move |_: &T, extensions| {
                if let Some(over_tls) = data.over_tls {
                    extensions.insert(over_tls);
                }
                if let Some(port) = data.tls_port {
                    extensions.insert(port);
                }
            });
        }
        let http1 = builder
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(self.keep_alive)
            .client_request_timeout(self.client_header_timeout)
            .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
            .h1_allow_half_closed(true)
            .local_addr(local)
            .finish(application(shared, &upstreams));
        Protocols {
            http1,
            app: application(shared, &upstreams),
            http2: self.http2,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// Gatehouse's application: every request goes to the proxy handler.
fn application(
    shared: &Arc<SharedProxy>,
    upstreams: &web::Data<Upstreams>,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = ServiceResponse,
    Error = Response<BoxBody>,
    InitError = (),
> {
    let app = App::new()
        .app_data(web::Data::from(shared.clone()))
        .app_data(upstreams.clone())
        .default_service(web::to(proxy::handle))
        .into_factory()
        .map_err(|err: actix_web::Error| err.error_response().into());
    // AppConfig feeds only `connection_info()` and URL generation, neither of which the
    // request path uses.
    map_config(app, |_| AppConfig::default())
}

/// One worker's HTTP service by protocol: HTTP/1.1 to actix-http, HTTP/2 to [`http2`].
struct Protocols<H, A> {
    http1: H,
    app: A,
    http2: Http2Limits,
    shutdown: GracefulShutdownSignal,
}

impl<T, H, A> ServiceFactory<(T, HttpProtocol, Option<SocketAddr>)> for Protocols<H, A>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    H: ServiceFactory<
        (T, HttpProtocol, Option<SocketAddr>),
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
    H::Service: 'static,
    H::Future: 'static,
    A: ServiceFactory<Request, Config = (), Error = Response<BoxBody>, InitError = ()>,
    A::Response: Into<Response<BoxBody>>,
    A::Service: 'static,
    A::Future: 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Config = ();
    type Service = ProtocolService<H::Service, A::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let (http1, app) = (self.http1.new_service(()), self.app.new_service(()));
        let (http2, shutdown) = (self.http2, self.shutdown.clone());
        Box::pin(async move {
            Ok(ProtocolService {
                http1: http1.await?,
                app: Rc::new(app.await?),
                http2,
                shutdown,
            })
        })
    }
}

struct ProtocolService<H, A> {
    http1: H,
    app: Rc<A>,
    http2: Http2Limits,
    shutdown: GracefulShutdownSignal,
}

impl<T, H, A> Service<(T, HttpProtocol, Option<SocketAddr>)> for ProtocolService<H, A>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    H: Service<(T, HttpProtocol, Option<SocketAddr>), Response = (), Error = DispatchError>,
    H::Future: 'static,
    A: Service<Request, Error = Response<BoxBody>> + 'static,
    A::Response: Into<Response<BoxBody>>,
{
    type Response = ();
    type Error = DispatchError;
    type Future = LocalBoxFuture<'static, Result<(), DispatchError>>;

    actix_service::forward_ready!(http1);

    fn call(&self, (io, protocol, peer): (T, HttpProtocol, Option<SocketAddr>)) -> Self::Future {
        match (protocol, peer) {
            (HttpProtocol::Http2, Some(peer)) => {
                let (app, limits, shutdown) = (self.app.clone(), self.http2, self.shutdown.clone());
                Box::pin(async move {
                    let shutdown = async move { shutdown.notified().await };
                    http2::serve(io, app, peer, limits, shutdown).await;
                    Ok(())
                })
            }
            _ => Box::pin(self.http1.call((io, protocol, peer))),
        }
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

/// The step after the connection checks: TLS, or nothing.
trait Secure<I>: Clone + 'static {
    /// The stream HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + 'static;

    /// The stream and its HTTP protocol, or `None` to close the connection.
    fn secure(
        &self,
        io: I,
        client: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, HttpProtocol)>>;
}

/// Plain HTTP/1.1, nothing in between.
#[derive(Clone, Copy)]
struct Clear;

impl<I: AsyncRead + AsyncWrite + Unpin + 'static> Secure<I> for Clear {
    type Io = I;

    async fn secure(&self, io: I, _: SocketAddr) -> Option<(I, HttpProtocol)> {
        Some((io, HttpProtocol::Http1))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + 'static> Secure<I> for Handshake {
    type Io = tokio_openssl::SslStream<I>;

    async fn secure(
        &self,
        io: I,
        client: SocketAddr,
    ) -> Option<(tokio_openssl::SslStream<I>, HttpProtocol)> {
        self.accept(io, client).await
    }
}

/// One worker's connection service: the front, the connection checks, `secure`, then `http`,
/// every write held to `send_timeout`.
fn edge<P, L, F>(
    front: P,
    secure: L,
    send_timeout: Duration,
    shared: Arc<SharedProxy>,
    http: F,
) -> EdgeFactory<P, L, F> {
    EdgeFactory {
        front,
        secure,
        send_timeout,
        shared,
        http,
    }
}

struct EdgeFactory<P, L, F> {
    front: P,
    secure: L,
    send_timeout: Duration,
    shared: Arc<SharedProxy>,
    http: F,
}

impl<P, L, F> ServiceFactory<TcpStream> for EdgeFactory<P, L, F>
where
    P: Front,
    L: Secure<SendDeadline<P::Io>>,
    F: ServiceFactory<
        (L::Io, HttpProtocol, Option<SocketAddr>),
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
    type Service = Edge<P, L, F::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let http = self.http.new_service(());
        let (front, secure, shared) = (self.front, self.secure.clone(), self.shared.clone());
        let send_timeout = self.send_timeout;
        Box::pin(async move {
            Ok(Edge {
                front,
                secure,
                send_timeout,
                shared,
                http: Rc::new(http.await?),
            })
        })
    }
}

struct Edge<P, L, S> {
    front: P,
    secure: L,
    send_timeout: Duration,
    shared: Arc<SharedProxy>,
    http: Rc<S>,
}

impl<P, L, S> Service<TcpStream> for Edge<P, L, S>
where
    P: Front,
    L: Secure<SendDeadline<P::Io>>,
    S: Service<(L::Io, HttpProtocol, Option<SocketAddr>), Response = (), Error = DispatchError>
        + 'static,
{
    type Response = ();
    type Error = DispatchError;
    type Future = LocalBoxFuture<'static, Result<(), DispatchError>>;

    actix_service::forward_ready!(http);

    fn call(&self, tcp: TcpStream) -> Self::Future {
        let (front, secure, send_timeout) = (self.front, self.secure.clone(), self.send_timeout);
        let (shared, http) = (self.shared.clone(), self.http.clone());
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
            let io = SendDeadline::new(io, send_timeout);
            let Some((io, protocol)) = secure.secure(io, client).await else {
                return Ok(());
            };
            let served = http.call((io, protocol, Some(client))).await;
            if let Err(DispatchError::Parse(err)) = &served {
                refused_head(&shared, client, err);
            }
            served
        })
    }
}

/// What a connection must do before HTTP (a TLS handshake, the HTTP/2 preface), within
/// `limit` (zero waits without limit); its error, or the lack of it in time, in words.
pub(crate) async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    if limit.is_zero() {
        return step.await.map_err(|err| err.to_string());
    }
    match tokio::time::timeout(limit, step).await {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no {what} within {limit:?}")),
    }
}

/// Logs a request head that actix-http refused before gatehouse saw it (malformed: 400; too
/// large: 431): an access log line as for any refused request, without a request line, and
/// the reason at debug.
fn refused_head(shared: &SharedProxy, client: SocketAddr, err: &ParseError) {
    let status = match err {
        ParseError::TooLarge => 431,
        _ => 400,
    };
    log::debug!("request head from {client} refused with {status}: {err}");
    let log = shared.load().log;
    if log.enabled() {
        log.write(&AccessRecord {
            time: Some(SystemTime::now()),
            client: Some(client.ip()),
            protocol: "-",
            status,
            request_id: "-".into(),
            ..AccessRecord::default()
        });
    }
}

/// Asks the running gatehouse to serve new listener settings; answered with the addresses it
/// is then bound to, or why it kept the old ones.
pub struct Rebind {
    pub settings: ServerSettings,
    /// `tls.listen`.
    pub tls_listen: Vec<SocketAddr>,
    /// `tls.http2`.
    pub http2: Http2Settings,
    pub reply: tokio::sync::oneshot::Sender<Result<Bound, String>>,
}

/// Sends [`Rebind`] requests to the running gatehouse.
pub type Rebinder = tokio::sync::mpsc::UnboundedSender<Rebind>;

/// Whether two sets of settings differ in what only a new listener can apply: `[server]`'s
/// listener keys, `tls.listen` or `tls.http2`'s limits (certificates, and whether ALPN
/// offers h2, are swapped without one).
pub fn listener_changed(old: &Settings, new: &Settings) -> bool {
    let limits = |http2: &Http2Settings| Http2Settings {
        enabled: true,
        ..http2.clone()
    };
    server_listener_changed(&old.server, &new.server)
        || old.tls.listen != new.tls.listen
        || limits(&old.tls.http2) != limits(&new.tls.http2)
}

fn server_listener_changed(old: &ServerSettings, new: &ServerSettings) -> bool {
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
        assert!(!server_listener_changed(&old, &new));
        new.workers = 3;
        assert!(server_listener_changed(&old, &new));
        let old = Settings::default();
        let mut new = old.clone();
        new.tls.ciphers = "ECDHE-RSA-AES128-GCM-SHA256".into();
        assert!(!listener_changed(&old, &new));
        new.tls.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
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

    #[test]
    fn each_port_0_entry_gets_its_own_socket_and_keeps_it() {
        let mut listeners = Listeners::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let ports = |sockets: Vec<(SocketAddr, TcpListener)>| -> Vec<u16> {
            sockets
                .iter()
                .map(|(_, s)| s.local_addr().unwrap().port())
                .collect()
        };
        let first = ports(listeners.sockets_for(&[any, any]).unwrap());
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(ports(listeners.sockets_for(&[any, any]).unwrap()), first);
        let pinned = SocketAddr::from(([127, 0, 0, 1], first[0]));
        assert_eq!(
            ports(listeners.sockets_for(&[pinned, pinned]).unwrap()),
            [first[0]]
        );
    }
}
