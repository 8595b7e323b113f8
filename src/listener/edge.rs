//! The per-connection edge step, before HTTP: the PROXY protocol header, the deny lists and
//! runtime blocks, the per-client connection limit, the send deadline, then TLS or nothing.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_http::error::{DispatchError, ParseError};
use actix_http::Protocol as HttpProtocol;
use actix_service::{Service, ServiceFactory};
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::http::HttpSettings;
use super::proxy_protocol::{self, Prefixed};
use super::send_deadline::SendDeadline;
use super::ListenError;
use crate::access_log::AccessRecord;
use crate::proxy::SharedProxy;
use crate::tls::Handshake;

/// The listener's front, for either kind of listener: plain TCP or a PROXY protocol header.
#[derive(Clone, Copy)]
pub(super) struct Fronts {
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `server.send_timeout`, for every connection's writes.
    pub send_timeout: Duration,
}

impl Fronts {
    /// Adds a listener on `socket` whose connections pass the front, the connection checks,
    /// then `secure` (TLS or nothing), then HTTP.
    pub fn listen<L>(
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
pub(super) struct ProxyProtocol(pub Duration);

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
pub(super) trait Secure<I>: Clone + 'static {
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
pub(super) struct Clear;

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
