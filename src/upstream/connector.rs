//! The upstream clients' connector: actix-tls's resolver and TCP connector, TLS for pools
//! with `[pools.NAME.tls]`, and two checks of gatehouse's own.
//!
//! - Each connection's reads are watched for end-of-file, so a response body that awc ends
//!   because the server closed the connection can be told from one that reached its framed end
//!   (awc reports both as the body's end).
//! - A socket connected to itself is refused, as every upstream connection's is
//!   (`connect.rs`).
//!
//! The TLS handshake happens here rather than in awc (whose TLS would need its own connector
//! and bypass this one), so both checks and the response-head filter work the same over TLS:
//! they see the plaintext. awc is always handed `http` URIs and never knows.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_openssl::SslStream;

use super::connect::{refuse_self_connect, Wire};
use super::interim::HeadFilter;
use super::tls::{self, TlsContext, UpstreamTls};
use super::UpstreamError;

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

impl UpstreamConnector {
    /// A connector that speaks TLS to every server when `tls` is given.
    pub fn new(tls: Option<TlsContext>) -> Self {
        Self {
            tcp: ConnectorService::default(),
            tls,
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
                refuse_self_connect(&tcp).map_err(for_awc)?;
                let Some(context) = &this.tls else {
                    let stream = UpstreamStream::new(Wire::Plain(tcp));
                    return Poll::Ready(Ok(Connection::new(uri, stream)));
                };
                let tls = tls::usable_tls(context).map_err(for_awc)?;
                let stream = tls
                    .stream(tcp, uri.host().unwrap_or_default())
                    .map_err(for_awc)?;
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
            Poll::Ready(Err(err)) => {
                Poll::Ready(Err(for_awc(handshake.tls.failure(&handshake.stream, &err))))
            }
        }
    }
}

/// A connect failure as the connector service reports it; awc hands it back unchanged, and
/// [`UpstreamError`]'s `From<SendRequestError>` takes it out again.
fn for_awc(err: UpstreamError) -> ConnectError {
    ConnectError::Io(err.into_io())
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

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
