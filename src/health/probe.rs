//! Probes: one check of one server. HTTP/1.1 is the only kind today.
//!
//! The HTTP probe connects and reads the response head through [`upstream`] (the self-connect
//! check, TLS with the pool's settings, the one head reader) but not through awc: a probe
//! wants one fresh connection per check (`Connection: close`, no pool to keep), one deadline
//! over the whole exchange including the body, a cap on the body it reads, and close-delimited
//! bodies read as they are (awc reads an HTTP/1.1 response without a length as empty, which
//! would fail `expect_body` on a plain health endpoint). The body is the probe's own to read.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::expect::{ExpectError, Expectations, Mismatch, ProbeResponse};
use crate::pool::Server;
use crate::settings::{HealthSettings, ProbeMethod};
use crate::upstream::head::{self, Framing, HeadError, ReadError};
use crate::upstream::{self, UpstreamError, UpstreamTls};

/// The most body a probe reads for matching: health pages are small, and a large page's
/// first 64 KiB is where a status word would be.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Header slots for the response head; a health endpoint answering with more is broken.
const MAX_HEADERS: usize = 100;

/// Reads from the server in pieces this large.
const READ_SIZE: usize = 8 * 1024;

/// One check of one server.
pub trait Probe: Unpin + 'static {
    /// Probes `server` once; the future owns what it needs and resolves within the probe's
    /// own deadline.
    fn check(&self, server: &Server) -> impl Future<Output = Result<(), ProbeFailure>> + 'static;
}

/// Why a probe failed; its text is the probe's detail in logs and the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("connect: {0}")]
    Connect(String),
    #[error("connect: the socket connected to itself")]
    SelfConnect,
    /// The TLS handshake failed; the text says why in OpenSSL's words.
    #[error("{0}")]
    Tls(String),
    #[error("no complete answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("send: {0}")]
    Send(io::Error),
    #[error("receive: {0}")]
    Receive(io::Error),
    #[error("connection closed before the response was complete")]
    CutShort,
    #[error("bad response: {0}")]
    BadHead(#[from] HeadError),
    #[error("bad response: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Mismatch(#[from] Mismatch),
}

impl From<UpstreamError> for ProbeFailure {
    /// A failed connect, in the probe's words: the socket's error, or OpenSSL's reason.
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Connect(reason) => Self::Connect(reason),
            UpstreamError::SelfConnect => Self::SelfConnect,
            UpstreamError::Tls(reason) => Self::Tls(reason),
            other => Self::Connect(other.to_string()),
        }
    }
}

/// An HTTP/1.1 probe built from a pool's `[pools.NAME.health]` settings.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    settings: Arc<HealthSettings>,
    expect: Arc<Expectations>,
    /// The pool's TLS to its servers, when it has `[pools.NAME.tls]`.
    tls: Option<Arc<UpstreamTls>>,
}

impl HttpProbe {
    pub fn new(settings: &HealthSettings) -> Result<Self, ExpectError> {
        Ok(Self {
            expect: Arc::new(Expectations::new(settings)?),
            settings: Arc::new(settings.clone()),
            tls: None,
        })
    }

    /// The same probe over TLS (or plain TCP for `None`).
    pub fn with_tls(self, tls: Option<Arc<UpstreamTls>>) -> Self {
        Self { tls, ..self }
    }

    /// The request for `server`: method, path, `Host`, the configured headers and
    /// `Connection: close`.
    fn request(&self, server: &Server) -> Vec<u8> {
        let settings = &self.settings;
        let method: String = settings.method.into();
        // With `port`, the probe goes to another port of the server's host, and says so.
        let host = match (&settings.host, settings.port) {
            (Some(host), _) => std::borrow::Cow::Borrowed(host.as_str()),
            (None, Some(port)) => format!("{}:{port}", server.authority.host()).into(),
            (None, None) => std::borrow::Cow::Borrowed(&*server.address),
        };
        let mut head = format!("{method} {} HTTP/1.1\r\nHost: {host}\r\n", settings.path);
        let mut agent = false;
        for (name, value) in &settings.headers {
            agent |= name.eq_ignore_ascii_case("user-agent");
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !agent {
            head.push_str(concat!(
                "User-Agent: gatehouse-health/",
                env!("CARGO_PKG_VERSION"),
                "\r\n"
            ));
        }
        head.push_str("Connection: close\r\n\r\n");
        head.into_bytes()
    }
}

impl Probe for HttpProbe {
    fn check(&self, server: &Server) -> impl Future<Output = Result<(), ProbeFailure>> + 'static {
        let port = self
            .settings
            .port
            .or(server.authority.port_u16())
            .unwrap_or(80);
        // `host()` keeps an IPv6 address's brackets, so this parses and resolves as written.
        let target = format!("{}:{port}", server.authority.host());
        let request = self.request(server);
        let head_only = self.settings.method == ProbeMethod::Head;
        let expect = self.expect.clone();
        let timeout = self.settings.timeout.get();
        let tls = self
            .tls
            .clone()
            .map(|tls| (tls, server.authority.host().to_string()));
        async move {
            let exchange = exchange(&target, tls, &request, head_only, expect.reads_body());
            let response = tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| ProbeFailure::Timeout(timeout))??;
            expect.check(&response)?;
            Ok(())
        }
    }
}

/// Connects (with a TLS handshake when `tls` gives the context and the server's host), sends
/// `request` and reads the response: its head, and its body (up to [`BODY_LIMIT`]) if
/// `read_body`.
async fn exchange(
    target: &str,
    tls: Option<(Arc<UpstreamTls>, String)>,
    request: &[u8],
    head_only: bool,
    read_body: bool,
) -> Result<ProbeResponse, ProbeFailure> {
    // The probe's own deadline bounds the connect with the rest of the exchange.
    let (tls, host) = match &tls {
        Some((tls, host)) => (Some(&**tls), host.as_str()),
        None => (None, ""),
    };
    let stream = upstream::connect(target, tls, host)
        .await
        .map_err(ProbeFailure::from)?;
    talk(stream, request, head_only, read_body).await
}

/// [`exchange`] once connected.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    head_only: bool,
    read_body: bool,
) -> Result<ProbeResponse, ProbeFailure> {
    stream
        .write_all(request)
        .await
        .map_err(ProbeFailure::Send)?;
    let mut reader = Reader {
        stream,
        buf: BytesMut::with_capacity(READ_SIZE),
    };
    let head = reader.head().await?;
    let mut response = ProbeResponse {
        status: head.status,
        headers: head.headers,
        body: Vec::new(),
    };
    let bodiless = head_only || matches!(head.status, 204 | 304);
    if read_body && !bodiless {
        response.body = match head.framing {
            Framing::Chunked => reader.chunked(BODY_LIMIT).await?,
            Framing::Length(length) => reader.sized(length, BODY_LIMIT).await?,
            Framing::Close => reader.until_close(BODY_LIMIT).await?,
        };
    }
    Ok(response)
}

/// A final response head, as the probe's expectations read it.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    framing: Framing,
}

/// The connection and the bytes read from it but not yet consumed.
struct Reader<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    /// Reads more into the buffer; false at end of file.
    async fn fill(&mut self) -> Result<bool, ProbeFailure> {
        self.buf.reserve(READ_SIZE);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(ProbeFailure::Receive)?;
        Ok(n > 0)
    }

    /// Reads until at least `n` bytes are buffered.
    async fn fill_to(&mut self, n: usize) -> Result<(), ProbeFailure> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(ProbeFailure::CutShort);
            }
        }
        Ok(())
    }

    /// The final response head, past any interim (1xx) ones; consumes it from the buffer.
    async fn head(&mut self) -> Result<Head, ProbeFailure> {
        let reading = head::read_final::<MAX_HEADERS, _>(&mut self.stream, &mut self.buf, |head| {
            Ok(Head {
                status: head.status,
                framing: head.framing()?,
                headers: head
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect(),
            })
        });
        reading.await.map_err(|err| match err {
            ReadError::Io(err) => ProbeFailure::Receive(err),
            ReadError::Closed => ProbeFailure::CutShort,
            ReadError::Head(err) => ProbeFailure::BadHead(err),
        })
    }

    /// A body of `length` bytes, of which the first `limit` are kept.
    async fn sized(&mut self, length: u64, limit: usize) -> Result<Vec<u8>, ProbeFailure> {
        let keep = usize::try_from(length).unwrap_or(usize::MAX).min(limit);
        self.fill_to(keep).await?;
        self.buf.truncate(keep);
        Ok(self.buf.split().to_vec())
    }

    /// A body that ends when the server closes, of which the first `limit` bytes are kept.
    async fn until_close(&mut self, limit: usize) -> Result<Vec<u8>, ProbeFailure> {
        while self.buf.len() < limit && self.fill().await? {}
        self.buf.truncate(limit);
        Ok(self.buf.split().to_vec())
    }

    /// A chunked body, decoded, of which the first `limit` bytes are kept; trailers are not
    /// read.
    async fn chunked(&mut self, limit: usize) -> Result<Vec<u8>, ProbeFailure> {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let (used, size) = match httparse::parse_chunk_size(&self.buf[pos..]) {
                Ok(httparse::Status::Complete(found)) => found,
                Ok(httparse::Status::Partial) if self.buf.len() - pos > head::MAX_HEAD => {
                    return Err(ProbeFailure::Malformed("chunk size line too long"));
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill().await? {
                        return Err(ProbeFailure::CutShort);
                    }
                    continue;
                }
                Err(_) => return Err(ProbeFailure::Malformed("bad chunk size")),
            };
            if size == 0 {
                return Ok(body);
            }
            let start = pos + used;
            let room = limit - body.len();
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size >= room {
                self.fill_to(start + room).await?;
                body.extend_from_slice(&self.buf[start..start + room]);
                return Ok(body);
            }
            self.fill_to(start + size + 2).await?;
            if &self.buf[start + size..start + size + 2] != b"\r\n" {
                return Err(ProbeFailure::Malformed("chunk not followed by CRLF"));
            }
            body.extend_from_slice(&self.buf[start..start + size]);
            pos = start + size + 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads one request head and answers `response`, then closes (or, with
    /// `hang`, keeps the connection open without answering). Returns its address and the
    /// request it saw.
    async fn serve_once(
        response: &'static [u8],
        hang: bool,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0; 1024];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            stream.write_all(response).await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        (addr, task)
    }

    fn probe(edit: impl FnOnce(&mut HealthSettings)) -> HttpProbe {
        let mut settings = HealthSettings {
            path: "/healthz".into(),
            ..HealthSettings::default()
        };
        edit(&mut settings);
        HttpProbe::new(&settings).unwrap()
    }

    async fn check(
        probe: &HttpProbe,
        response: &'static [u8],
    ) -> (Result<(), ProbeFailure>, String) {
        let (addr, seen) = serve_once(response, false).await;
        let server = Server::new(&addr, 1).unwrap();
        let outcome = probe.check(&server).await;
        (outcome, seen.await.unwrap())
    }

    #[tokio::test]
    async fn a_probe_sends_method_path_host_headers_and_close() {
        let p = probe(|s| {
            s.method = ProbeMethod::Head;
            s.host = Some("health.internal".into());
            s.headers.insert("X-Probe".into(), "1".into());
        });
        let (outcome, seen) = check(&p, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(seen.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nHost: health.internal\r\n"), "{seen}");
        assert!(seen.contains("\r\nX-Probe: 1\r\n"), "{seen}");
        assert!(seen.contains("\r\nConnection: close\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn without_a_host_setting_the_server_address_is_sent() {
        let (addr, seen) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let server = Server::new(&addr, 1).unwrap();
        assert!(probe(|_| {}).check(&server).await.is_ok());
        assert!(seen
            .await
            .unwrap()
            .contains(&format!("\r\nHost: {addr}\r\n")));
    }

    #[tokio::test]
    async fn with_a_port_the_host_is_the_server_s_host_with_that_port() {
        let (addr, seen) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let probe_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let server = Server::new("127.0.0.1:1", 1).unwrap();
        assert!(probe(|s| s.port = Some(probe_port))
            .check(&server)
            .await
            .is_ok());
        let head = seen.await.unwrap();
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{probe_port}\r\n")),
            "{head}"
        );
        // `host`, when set, wins.
        let (addr, seen) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let probe_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let named = probe(|s| {
            s.port = Some(probe_port);
            s.host = Some("health.internal".into());
        });
        assert!(named.check(&server).await.is_ok());
        assert!(seen
            .await
            .unwrap()
            .contains("\r\nHost: health.internal\r\n"));
    }

    #[tokio::test]
    async fn bodies_are_read_by_length_chunks_or_until_close() {
        let p = probe(|s| s.expect_body = Some("ok".into()));
        for response in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nall ok"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n2;x=y\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nall ok",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let (outcome, _) = check(&p, response).await;
            assert!(outcome.is_ok(), "{outcome:?} for {response:?}");
        }
        let (outcome, _) = check(&p, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope").await;
        assert_eq!(outcome.unwrap_err().to_string(), "body lacks \"ok\"");
    }

    #[tokio::test]
    async fn failures_say_why() {
        let p = probe(|_| {});
        let (outcome, _) =
            check(&p, b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(outcome.unwrap_err().to_string(), "status 503");
        let (outcome, _) = check(&p, b"garbage\r\n\r\n").await;
        assert!(matches!(
            outcome,
            Err(ProbeFailure::BadHead(HeadError::Malformed))
        ));
        let (outcome, _) = check(&p, b"HTTP/1.1 200 OK\r\nContent-").await;
        assert!(matches!(outcome, Err(ProbeFailure::CutShort)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().to_string();
        drop(listener);
        let outcome = p.check(&Server::new(&closed, 1).unwrap()).await;
        assert!(
            matches!(
                outcome,
                Err(ProbeFailure::Connect(_) | ProbeFailure::SelfConnect)
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_cut_there() {
        let p = probe(|s| s.expect_body = Some("ok".into()));
        let mut text = vec![b'x'; BODY_LIMIT];
        text.extend_from_slice(b"ok");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            text.len(),
            String::from_utf8(text).unwrap()
        );
        let response: &'static [u8] = Box::leak(response.into_bytes().into_boxed_slice());
        let (outcome, _) = check(&p, response).await;
        assert!(matches!(outcome, Err(ProbeFailure::Mismatch(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_fails_at_its_timeout() {
        let p = probe(|s| s.timeout = crate::settings::Duration::from_secs(2));
        let (addr, _server) = serve_once(b"", true).await;
        let server = Server::new(&addr, 1).unwrap();
        let started = tokio::time::Instant::now();
        let outcome = p.check(&server).await;
        assert!(
            matches!(outcome, Err(ProbeFailure::Timeout(_))),
            "{outcome:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            outcome.unwrap_err().to_string(),
            "no complete answer within 2s"
        );
    }
}
