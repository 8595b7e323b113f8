//! Opening a connection to a server outside awc (WebSocket relays, health probes): TCP, the
//! self-connect check, and TLS for a pool with `[pools.NAME.tls]`; and the bytes under every
//! upstream connection, plain or TLS.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::{UpstreamError, UpstreamTls};

/// Why a self-connected socket is refused, as the log and the passive detection see it.
pub const SELF_CONNECTED: &str = "connected to itself: nothing listens on the server's port";

/// Whether a socket is connected to itself. Connecting to a free port in the ephemeral range
/// on the same host can pick that very port as the local one, and Linux then completes a TCP
/// simultaneous open with itself: the connect succeeds though nothing listens, and the request
/// would come back as its own response.
pub fn is_self_connect(local: io::Result<SocketAddr>, peer: io::Result<SocketAddr>) -> bool {
    matches!((local, peer), (Ok(local), Ok(peer)) if local == peer)
}

/// Refuses a socket connected to itself (see [`is_self_connect`]): every upstream connection,
/// awc's included, passes here right after its TCP connect.
pub fn refuse_self_connect(tcp: &TcpStream) -> Result<(), UpstreamError> {
    if is_self_connect(tcp.local_addr(), tcp.peer_addr()) {
        return Err(UpstreamError::SelfConnect);
    }
    Ok(())
}

/// Connects to `address` (`host:port`, resolved), then makes the TLS handshake when `tls` is
/// given, naming and verifying the server as `host` (see [`UpstreamTls::stream`]). Unbounded
/// in time: see [`connect_within`].
pub async fn connect(
    address: &str,
    tls: Option<&UpstreamTls>,
    host: &str,
) -> Result<Wire, UpstreamError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|err| UpstreamError::Connect(err.to_string()))?;
    refuse_self_connect(&tcp)?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Wire::Plain(tcp)),
        Some(tls) => Ok(Wire::Tls(Box::new(tls.handshake(tcp, host).await?))),
    }
}

/// [`connect`] within `timeout`, the TLS handshake included, as awc bounds its connects by the
/// pool's `connect_timeout`.
pub async fn connect_within(
    timeout: Duration,
    address: &str,
    tls: Option<&UpstreamTls>,
    host: &str,
) -> Result<Wire, UpstreamError> {
    tokio::time::timeout(timeout, connect(address, tls, host))
        .await
        .unwrap_or(Err(UpstreamError::ConnectTimeout))
}

/// The bytes under an upstream connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Wire {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Wire {
    /// The TCP socket under the connection.
    pub fn tcp(&self) -> &TcpStream {
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

#[cfg(test)]
mod tests {
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
        assert!(matches!(
            refuse_self_connect(&tcp),
            Err(UpstreamError::SelfConnect)
        ));
    }

    #[tokio::test]
    async fn a_plain_connection_carries_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (wire, accepted) = tokio::join!(
            connect_within(Duration::from_secs(5), &address, None, "127.0.0.1"),
            listener.accept()
        );
        let mut wire = wire.unwrap();
        let (mut server, _) = accepted.unwrap();
        assert!(matches!(wire, Wire::Plain(_)));
        wire.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        wire.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        // Bound but not listening: the port stays refused, and no other test can take it.
        let held = TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = held.local_addr().unwrap().to_string();
        let err = connect(&closed, None, "127.0.0.1").await.unwrap_err();
        assert!(matches!(err, UpstreamError::Connect(_)), "{err:?}");
    }
}
