//! HTTP assembly for one worker: actix-http's HTTP/1.1 service and the HTTP/2 loop, both in
//! front of gatehouse's one application (the request path) with one set of upstream clients.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::body::BoxBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol as HttpProtocol, Request, Response};
use actix_server::GracefulShutdownSignal;
use actix_service::{
    map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::{web, App};
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

use super::http2::{self, Http2Limits};
use crate::conn::{OverTls, TlsPort};
use crate::proxy::{self, SharedProxy, Upstreams};

/// How long a client that stopped reading gets to take the rest of a response before the
/// connection is dropped (actix-web's default).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What every connection's HTTP server is built from.
#[derive(Clone)]
pub(super) struct HttpSettings {
    pub keep_alive: Duration,
    pub client_header_timeout: Duration,
    pub http2: Http2Limits,
    /// Resolves when the server starts a graceful stop, so idle keep-alive connections close.
    pub shutdown: GracefulShutdownSignal,
    /// What the request path learns of the listener, through the connection data.
    pub connection: ConnectionData,
}

/// The listener facts a request reads with `conn_data`: it came over TLS, or where the TLS
/// listener is.
#[derive(Clone, Copy, Default)]
pub(super) struct ConnectionData {
    over_tls: Option<OverTls>,
    tls_port: Option<TlsPort>,
}

pub(super) trait IntoConnectionData {
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
    pub fn with_connection_data(mut self, data: impl IntoConnectionData) -> Self {
        data.apply(&mut self.connection);
        self
    }

    /// One worker's HTTP/1.1 and HTTP/2 service for streams of type `T`: actix-http's for
    /// HTTP/1.1 (what actix-web's `HttpServer` builds), [`http2`]'s for HTTP/2, both with
    /// gatehouse's application and one set of upstream clients.
    pub fn service<T>(
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
