//! The PROXY protocol (HAProxy's, v1 text and v2 binary): the header a load balancer in front
//! sends at the start of each connection, naming the client it accepted. Parsing is `ppp`'s;
//! this module reads a bounded header off the socket and keeps the bytes that followed it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The most bytes read for a header. A v1 header is at most 107 bytes; a v2 header is 16
/// bytes plus a declared length, and the specification asks senders to fit it in one 536-byte
/// segment (the smallest IPv4 TCP MSS). Headers longer than this (large TLVs) are refused.
pub const MAX_HEADER: usize = 536;

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("closed before a complete PROXY protocol header")]
    Closed,
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("not a PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// What a complete header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes; what follows is the client's own data.
    pub len: usize,
    /// The client's address; `None` for `LOCAL` (a health check of the balancer itself),
    /// `UNKNOWN` and non-IP families, which keep the TCP peer's address.
    pub source: Option<SocketAddr>,
}

/// Parses a header at the start of `input`: `Ok(None)` while more bytes could complete it.
pub fn parse(input: &[u8]) -> Result<Option<Header>, HeaderError> {
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return Ok(None);
    }
    let header = match result {
        HeaderResult::V1(Ok(header)) => Header {
            len: header.header.len(),
            source: match header.addresses {
                v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => Header {
            len: header.len(),
            source: match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, _) => None,
            },
        },
        HeaderResult::V1(Err(err)) => return Err(HeaderError::Malformed(err.to_string())),
        HeaderResult::V2(Err(err)) => return Err(HeaderError::Malformed(err.to_string())),
    };
    Ok(Some(header))
}

/// Reads a PROXY header from the start of `io` within `deadline` (zero: no deadline, as
/// `client_header_timeout = 0` means for the request head). Returns the client's address (if
/// the header names one) and the bytes read past the header.
pub async fn read_header<T: AsyncRead + Unpin>(
    io: &mut T,
    deadline: Duration,
) -> Result<(Option<SocketAddr>, Bytes), HeaderError> {
    let read = async {
        let mut buf = [0u8; MAX_HEADER];
        let mut filled = 0;
        loop {
            let n = io.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            filled += n;
            match parse(&buf[..filled])? {
                Some(header) => {
                    let rest = Bytes::copy_from_slice(&buf[header.len..filled]);
                    return Ok((header.source, rest));
                }
                None if filled == MAX_HEADER => return Err(HeaderError::TooLong),
                None => {}
            }
        }
    };
    if deadline.is_zero() {
        return read.await;
    }
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| HeaderError::Timeout(deadline))?
}

/// A stream that first serves bytes already read from it (what followed the PROXY header in
/// the same packet), then reads on; writes go straight through.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = v2::PROTOCOL_PREFIX.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend((addresses.len() as u16).to_be_bytes());
        header.extend(addresses);
        header
    }

    const V4: &[u8] = &[192, 0, 2, 7, 127, 0, 0, 1, 0x30, 0x39, 0, 80];

    #[test]
    fn a_v1_header_names_the_client() {
        let input = b"PROXY TCP4 192.0.2.7 127.0.0.1 12345 80\r\nGET / HTTP/1.1\r\n";
        let header = parse(input).unwrap().unwrap();
        assert_eq!(header.source, Some("192.0.2.7:12345".parse().unwrap()));
        assert_eq!(&input[header.len..], b"GET / HTTP/1.1\r\n");
        let input = b"PROXY TCP6 2001:db8::7 ::1 12345 80\r\n";
        let header = parse(input).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:12345".parse().unwrap()));
        let header = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(header.source, None);
    }

    #[test]
    fn a_v2_header_names_the_client_unless_local() {
        let mut input = v2(1, 0x11, V4);
        let len = input.len();
        input.extend(b"GET /");
        let header = parse(&input).unwrap().unwrap();
        assert_eq!(header.source, Some("192.0.2.7:12345".parse().unwrap()));
        assert_eq!(header.len, len);
        let local = parse(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!(local.source, None);
        let mut v6 = [0u8; 36];
        v6[..16].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[32..34].copy_from_slice(&443u16.to_be_bytes());
        let header = parse(&v2(1, 0x21, &v6)).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:443".parse().unwrap()));
    }

    #[test]
    fn partial_headers_wait_for_more() {
        assert!(parse(b"PROX").unwrap().is_none());
        assert!(parse(b"PROXY TCP4 192.0.2.7 127.0").unwrap().is_none());
        let full = v2(1, 0x11, V4);
        for cut in [1, 12, 16, full.len() - 1] {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 80\r\n",
        ] {
            assert!(
                matches!(parse(input), Err(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[actix_rt::test]
    async fn bytes_after_the_header_are_served_first() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(
            &mut client,
            b"PROXY TCP4 192.0.2.7 127.0.0.1 12345 80\r\nGET / HTTP/1.1\r\n",
        )
        .await
        .unwrap();
        let (source, rest) = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(source, Some("192.0.2.7:12345".parse().unwrap()));
        let mut stream = Prefixed::new(rest, server);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"Host: a\r\n")
            .await
            .unwrap();
        drop(client);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n");
    }

    #[actix_rt::test]
    async fn an_endless_or_silent_start_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[b'P'; 1])
            .await
            .unwrap();
        let silent = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(silent, Err(HeaderError::Timeout(_))));
        let mut long = v2(1, 0x11, V4);
        long[14..16].copy_from_slice(&1000u16.to_be_bytes());
        long.resize(1100, 0);
        let (mut client, mut server) = tokio::io::duplex(4096);
        tokio::io::AsyncWriteExt::write_all(&mut client, &long)
            .await
            .unwrap();
        let too_long = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(too_long, Err(HeaderError::TooLong)));
    }
}
