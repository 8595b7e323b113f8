//! The upstream clients' connector: actix-tls's resolver and TCP connector, TLS for pools
//! with `[pools.NAME.tls]`, and two checks of gatehouse's own.
//!
//! - Each connection's reads are watched for end-of-file, so a response body that awc ends
//!   because the server closed the connection can be told from one that reached its framed end
//!   (awc reports both as the body's end).
//! - A socket connected to itself is refused.
//!
//! The TLS handshake happens here rather than in awc (whose TLS would need its own connector
//! and bypass this one), so both checks and the response-head filter work the same over TLS:
//! they see the plaintext. awc is always handed `http` URIs and never knows.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::http::Uri;
use openssl::ssl::{self, SslConnector, SslOptions};
use openssl::x509::X509VerifyResult;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use super::interim::HeadFilter;
use crate::settings::{UpstreamTlsError, UpstreamTlsSettings};

thread_local! {
    /// Set when a read on an upstream connection of this thread returned end-of-file.
    static READ_EOF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `poll` and tells whether a read on an upstream connection returned end-of-file
/// during it.
///
/// Each worker polls its connections on its own thread, one at a time, so what is seen here
/// was read by `poll` itself and by nothing else.
pub fn watching_eof<T>(poll: impl FnOnce() -> T) -> (T, bool) {
    READ_EOF.with(|eof| eof.set(false));
    let out = poll();
    (out, READ_EOF.with(|eof| eof.replace(false)))
}

/// Notes that a read on an upstream connection returned end-of-file.
pub fn note_eof() {
    READ_EOF.with(|eof| eof.set(true));
}

/// TLS to a pool's servers as each connection needs it: the OpenSSL client context built
/// from `[pools.NAME.tls]` and how servers are named. Built once per worker client (and per
/// prober); the same function checks the settings at load, so the files are read one way.
#[derive(Debug)]
pub struct UpstreamTls {
    context: SslConnector,
    sni: Option<String>,
    verify: bool,
}

impl UpstreamTls {
    /// The context for `[pools.NAME.tls]`: the settings' own (files read and checked as at
    /// load), with how gatehouse speaks to servers over it.
    pub fn new(settings: &UpstreamTlsSettings) -> Result<Self, UpstreamTlsError> {
        let mut builder = settings.client_context()?;
        // A server that closes without close_notify ends the stream as a plain socket's
        // end-of-file does: close-delimited bodies end there, and the end-of-file marking
        // still tells a cut-off framed body from a whole one.
        builder.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
        // One read per socket buffer instead of one per record header and one per body
        // (docs/tls.md, as on the TLS listeners).
        builder.set_read_ahead(true);
        // gatehouse speaks HTTP/1.1 to servers; saying so keeps an h2-first server from
        // guessing otherwise.
        builder
            .set_alpn_protos(b"\x08http/1.1")
            .map_err(|source| UpstreamTlsError::Setup { key: "", source })?;
        Ok(Self {
            context: builder.build(),
            sni: settings.sni.clone(),
            verify: settings.verify,
        })
    }

    /// A TLS stream over `tcp` to a server whose address has `host`, ready for its handshake:
    /// SNI and the verified name are `sni` when set, else `host` (no SNI for an IP address).
    pub fn stream(&self, tcp: TcpStream, host: &str) -> io::Result<SslStream<TcpStream>> {
        let mut config = self.context.configure().map_err(io::Error::other)?;
        config.set_verify_hostname(self.verify);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = self.sni.as_deref().unwrap_or(host);
        let ssl = config.into_ssl(name).map_err(io::Error::other)?;
        SslStream::new(ssl, tcp).map_err(io::Error::other)
    }

    /// Why a handshake failed, in OpenSSL's words: the certificate check's verdict when that
    /// is what failed, else the reasons on OpenSSL's error stack.
    pub fn failure(&self, stream: &SslStream<TcpStream>, err: &ssl::Error) -> String {
        let verdict = stream.ssl().verify_result();
        if self.verify && verdict != X509VerifyResult::OK {
            return format!(
                "TLS handshake: certificate verify failed: {}",
                verdict.error_string()
            );
        }
        let reasons = err.ssl_error().map(|stack| {
            stack
                .errors()
                .iter()
                .filter_map(|e| e.reason())
                .collect::<Vec<_>>()
                .join("; ")
        });
        match (reasons, err.io_error()) {
            (Some(reasons), _) if !reasons.is_empty() => format!("TLS handshake: {reasons}"),
            (_, Some(io)) => format!("TLS handshake: {io}"),
            _ => format!("TLS handshake: {err}"),
        }
    }
}

/// The bytes under an upstream connection: plain TCP, or TLS over it.
#[derive(Debug)]
enum Wire {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Wire {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref(),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// A connection to a server: a TCP or TLS stream that notes when a read returns end-of-file,
/// and fixes each response head before awc reads it (see `interim.rs`).
#[derive(Debug)]
pub struct UpstreamStream {
    wire: Wire,
    heads: HeadFilter,
}

impl UpstreamStream {
    fn new(wire: Wire) -> Self {
        Self {
            wire,
            heads: HeadFilter::default(),
        }
    }

    /// Reads from the connection, noting end-of-file; returns how many bytes arrived.
    fn read_wire(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        let room = buf.remaining();
        let filled = buf.filled().len();
        ready!(Pin::new(&mut self.wire).poll_read(cx, buf))?;
        let got = buf.filled().len() - filled;
        // Nothing read into a buffer with room is end-of-file; a full buffer proves nothing.
        if room > 0 && got == 0 {
            note_eof();
        }
        Poll::Ready(Ok(got))
    }

    /// Hands on bytes the head filter released, holding back what does not fit.
    fn hand_on(&mut self, bytes: &[u8], buf: &mut ReadBuf<'_>) {
        let n = bytes.len().min(buf.remaining());
        buf.put_slice(&bytes[..n]);
        self.heads.hold(&bytes[n..]);
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.heads.awaiting_head() {
            if this.heads.has_pending() {
                let held = this.heads.take_held(buf.remaining());
                buf.put_slice(&held);
                return Poll::Ready(Ok(()));
            }
            return this.read_wire(cx, buf).map_ok(|_| ());
        }
        // A response head is awaited. Loop until bytes can be handed on or the socket has none.
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let start = buf.filled().len();
            let room = buf.remaining();
            let got = ready!(this.read_wire(cx, buf))?;
            if got == 0 && room > 0 {
                let held = this.heads.closed();
                this.hand_on(&held, buf);
                return Poll::Ready(Ok(()));
            }
            if this.heads.pass_in_place(&mut buf.filled_mut()[start..]) {
                return Poll::Ready(Ok(()));
            }
            let read = buf.filled()[start..].to_vec();
            buf.set_filled(start);
            let released = this.heads.accept(&read);
            if !released.is_empty() {
                this.hand_on(&released, buf);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // awc writes a request only once the previous response was read: what is read next
        // starts the response to this one.
        this.heads.request_written();
        Pin::new(&mut this.wire).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.heads.request_written();
        Pin::new(&mut this.wire).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.wire.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().wire).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().wire).poll_shutdown(cx)
    }
}

impl ActixStream for UpstreamStream {
    // awc requires these but never calls them; over TLS the socket's readiness is the
    // nearest answer, as actix-tls's own TLS streams give.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if !self.heads.awaiting_head() && self.heads.has_pending() {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        ActixStream::poll_read_ready(self.wire.tcp(), cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(self.wire.tcp(), cx)
    }
}

/// The connector service for `awc::Connector::connector`. awc races each call against the
/// pool's connect timeout, resolution and the TLS handshake included.
#[derive(Clone, Default)]
pub struct UpstreamConnector {
    tcp: ConnectorService,
    tls: Option<TlsContext>,
}

/// A TLS pool's context, or why it could not be built (every connect then fails with that).
pub type TlsContext = Result<Arc<UpstreamTls>, Arc<str>>;

/// A pool's TLS context from its `[pools.NAME.tls]`. The files were read when the settings
/// were loaded; an error here means they have changed since, and is logged.
pub fn tls_context(settings: &UpstreamTlsSettings) -> TlsContext {
    UpstreamTls::new(settings).map(Arc::new).map_err(|err| {
        log::error!("upstream TLS: {err}");
        Arc::from(err.to_string())
    })
}

impl UpstreamConnector {
    /// A connector that speaks TLS to every server when `tls` is given.
    pub fn new(tls: Option<Result<Arc<UpstreamTls>, String>>) -> Self {
        Self {
            tcp: ConnectorService::default(),
            tls: tls.map(|tls| tls.map_err(Arc::from)),
        }
    }
}

impl Service<ConnectInfo<Uri>> for UpstreamConnector {
    type Response = Connection<Uri, UpstreamStream>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<ConnectInfo<Uri>>::poll_ready(&self.tcp, cx)
    }

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        Connecting {
            tcp: self.tcp.call(req),
            tls: self.tls.clone(),
            handshake: None,
        }
    }
}

/// A connection being made: TCP, then the TLS handshake for a TLS pool.
pub struct Connecting {
    tcp: <ConnectorService as Service<ConnectInfo<Uri>>>::Future,
    tls: Option<TlsContext>,
    handshake: Option<Handshake>,
}

/// A TLS handshake under way.
struct Handshake {
    stream: Box<SslStream<TcpStream>>,
    uri: Uri,
    tls: Arc<UpstreamTls>,
}

impl Future for Connecting {
    type Output = Result<Connection<Uri, UpstreamStream>, ConnectError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut handshake = match this.handshake.take() {
            Some(handshake) => handshake,
            None => {
                let (tcp, uri) = ready!(Pin::new(&mut this.tcp).poll(cx))?.into_parts();
                if is_self_connect(tcp.local_addr(), tcp.peer_addr()) {
                    return Poll::Ready(Err(ConnectError::Io(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        SELF_CONNECTED,
                    ))));
                }
                let tls = match this.tls.clone() {
                    None => {
                        let stream = UpstreamStream::new(Wire::Plain(tcp));
                        return Poll::Ready(Ok(Connection::new(uri, stream)));
                    }
                    Some(Ok(tls)) => tls,
                    Some(Err(reason)) => {
                        return Poll::Ready(Err(ConnectError::Io(io::Error::other(format!(
                            "TLS: {reason}"
                        )))))
                    }
                };
                let stream = tls
                    .stream(tcp, uri.host().unwrap_or_default())
                    .map_err(ConnectError::Io)?;
                Handshake {
                    stream: Box::new(stream),
                    uri,
                    tls,
                }
            }
        };
        match Pin::new(&mut *handshake.stream).poll_connect(cx) {
            Poll::Pending => {
                this.handshake = Some(handshake);
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                let stream = UpstreamStream::new(Wire::Tls(handshake.stream));
                Poll::Ready(Ok(Connection::new(handshake.uri, stream)))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(ConnectError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                handshake.tls.failure(&handshake.stream, &err),
            )))),
        }
    }
}

/// Why a self-connected socket is refused, as the log and the passive detection see it.
pub const SELF_CONNECTED: &str = "connected to itself: nothing listens on the server's port";

/// Whether a socket is connected to itself. Connecting to a free port in the ephemeral range
/// on the same host can pick that very port as the local one, and Linux then completes a TCP
/// simultaneous open with itself: the connect succeeds though nothing listens, and the request
/// would come back as its own response.
pub fn is_self_connect(local: io::Result<SocketAddr>, peer: io::Result<SocketAddr>) -> bool {
    matches!((local, peer), (Ok(local), Ok(peer)) if local == peer)
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    fn addr(text: &str) -> io::Result<SocketAddr> {
        Ok(text.parse().unwrap())
    }

    #[test]
    fn only_a_socket_whose_ends_are_one_address_is_self_connected() {
        assert!(is_self_connect(
            addr("127.0.0.1:40000"),
            addr("127.0.0.1:40000")
        ));
        assert!(is_self_connect(addr("[::1]:40000"), addr("[::1]:40000")));
        assert!(!is_self_connect(
            addr("127.0.0.1:40000"),
            addr("127.0.0.1:40001")
        ));
        assert!(!is_self_connect(
            addr("127.0.0.1:40000"),
            addr("127.0.0.2:40000")
        ));
        let unknown = || Err(io::ErrorKind::NotConnected.into());
        assert!(!is_self_connect(addr("127.0.0.1:40000"), unknown()));
        assert!(!is_self_connect(unknown(), unknown()));
    }

    #[tokio::test]
    async fn a_socket_bound_to_the_address_it_connects_to_is_self_connected() {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let own = socket.local_addr().unwrap();
        let Ok(tcp) = socket.connect(own).await else {
            // Only some systems complete a simultaneous open with the same socket.
            return;
        };
        assert!(is_self_connect(tcp.local_addr(), tcp.peer_addr()));
    }

    async fn connected(listener: &TcpListener) -> (UpstreamStream, tokio::net::TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            UpstreamStream::new(Wire::Plain(tcp.unwrap())),
            accepted.unwrap().0,
        )
    }

    /// Reads once, as awc does, and tells what the polls that completed the read saw.
    async fn read_watched(stream: &mut UpstreamStream, buf: &mut [u8]) -> (usize, bool) {
        let mut buf = ReadBuf::new(buf);
        poll_fn(|cx| {
            let (poll, eof) = watching_eof(|| Pin::new(&mut *stream).poll_read(cx, &mut buf));
            poll.map(|res| {
                res.unwrap();
                (buf.filled().len(), eof)
            })
        })
        .await
    }

    #[tokio::test]
    async fn end_of_file_is_seen_only_by_the_read_that_returns_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut upstream, mut server) = connected(&listener).await;
        server.write_all(b"hello").await.unwrap();
        drop(server);

        let mut buf = [0; 16];
        assert_eq!(read_watched(&mut upstream, &mut buf).await, (5, false));
        assert_eq!(
            read_watched(&mut upstream, &mut []).await,
            (0, false),
            "a read into no room is not end-of-file"
        );

        assert_eq!(upstream.read(&mut buf).await.unwrap(), 0);
        let ((), eof) = watching_eof(|| ());
        assert!(!eof, "a read before the watched call is not reported");

        assert_eq!(read_watched(&mut upstream, &mut buf).await, (0, true));
    }

    #[actix_rt::test]
    async fn the_connector_connects_and_refuses_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let connector = UpstreamConnector::default();
        let (connection, accepted) =
            tokio::join!(connector.call(ConnectInfo::new(uri)), listener.accept());
        let (mut stream, _) = connection.unwrap().into_parts();
        let (mut server, _) = accepted.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[actix_rt::test]
    async fn awc_bounds_this_connector_by_its_connect_timeout() {
        use std::time::{Duration, Instant};

        // A listener whose accept queue is full drops further SYNs, so a connect hangs.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        let short = Duration::from_millis(200);
        loop {
            match tokio::time::timeout(short, TcpStream::connect(addr)).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => break,
            }
            if queued.len() > 64 {
                // This system accepts the connections some other way; nothing hangs here.
                return;
            }
        }

        let connector = awc::Connector::new()
            .connector(UpstreamConnector::default())
            .timeout(short);
        let client = awc::Client::builder().connector(connector).finish();
        let started = Instant::now();
        let err = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout)
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(queued);
    }
}
