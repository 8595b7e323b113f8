//! HTTP/1.1 on the wire, byte for byte: a client connection that writes raw requests and
//! reads responses with httparse, and the readers origins use for request heads and bodies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::DEADLINE;

/// Most headers a response head read here may carry.
const MAX_HEADERS: usize = 128;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order, by case-insensitive name.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test, showing the body, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }
}

/// What the origin's `/echo` saw.
pub struct Echo(pub serde_json::Value);

impl Echo {
    /// Every value of a request header the origin received.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|pair| pair[1].as_str().unwrap().to_string())
            .collect()
    }

    /// The first value of a request header the origin received.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

/// One keep-alive client connection speaking raw HTTP/1.1, over TCP or over TLS.
pub struct Conn<S: Read + Write = TcpStream> {
    reader: BufReader<S>,
}

impl Conn {
    /// A fresh connection to `addr`.
    pub fn open(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a connection opened elsewhere (from a chosen source address, say).
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self::over(stream)
    }
}

impl<S: Read + Write> Conn<S> {
    /// A client on `stream` as it is (a TLS session, say).
    pub fn over(stream: S) -> Self {
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// The connection itself, for what the client does beside requests; reading from it
    /// bypasses bytes already buffered for responses.
    pub fn stream(&mut self) -> &mut S {
        self.reader.get_mut()
    }

    /// Writes raw bytes: a request, or part of one.
    pub fn send(&mut self, raw: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(raw).expect("write request");
        stream.flush().expect("write request");
    }

    /// Reads one response; `head_only` for responses to HEAD.
    pub fn read(&mut self, head_only: bool) -> Response {
        self.try_read(head_only).expect("read response")
    }

    /// Reads one response, or says why there was none.
    pub fn try_read(&mut self, head_only: bool) -> io::Result<Response> {
        let mut response = read_response_head(&mut self.reader)?;
        let status = response.status;
        if head_only || status == 100 || status == 204 || status == 304 {
            return Ok(response);
        }
        if let Some(length) = response.header("content-length") {
            let length = length
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {length:?}"));
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            response.body = body;
        } else if is_chunked(response.header("transfer-encoding")) {
            Chunked::new(&mut self.reader).read_to_end(&mut response.body)?;
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    /// The reader the next response will be read from, for bodies too large to hold.
    pub fn reader(&mut self) -> &mut BufReader<S> {
        &mut self.reader
    }

    /// Reads until the peer closes; true if it closed (rather than timing out).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// A response head, parsed with httparse; the body is left unread. A head that arrives
/// whole but is not a valid one fails the test.
fn read_response_head(reader: &mut impl BufRead) -> io::Result<Response> {
    let head = read_head_bytes(reader)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    if !matches!(parsed.parse(&head), Ok(httparse::Status::Complete(_))) {
        panic!(
            "not a valid response head: {:?}",
            String::from_utf8_lossy(&head)
        );
    }
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Response {
        status: parsed.code.unwrap(),
        headers,
        body: Vec::new(),
    })
}

/// Lines up to and with the blank line that ends a head.
fn read_head_bytes(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Ok(head);
        }
    }
}

fn is_chunked(transfer_encoding: Option<&str>) -> bool {
    transfer_encoding.is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
}

/// A chunked body read as the bytes it carries, strictly framed: every chunk ends in CRLF,
/// and the body ends with the last chunk and the CRLF after it (no trailers).
pub struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: usize,
    /// Whether a chunk's data has been read and its CRLF not yet.
    in_chunk: bool,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    /// The body that `inner` is at the start of.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            in_chunk: false,
            done: false,
        }
    }

    /// Moves to the next chunk with data; false at the end of the body.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.in_chunk {
            self.crlf()?;
        }
        let mut line = String::new();
        if self.inner.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.trim().split(';').next().unwrap_or_default().trim();
        self.left = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
        self.in_chunk = self.left > 0;
        if self.left == 0 {
            self.crlf()?;
        }
        Ok(self.left > 0)
    }

    /// The CRLF that ends a chunk's data, or the body after the last chunk.
    fn crlf(&mut self) -> io::Result<()> {
        let mut crlf = [0u8; 2];
        self.inner.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(io::Error::other(format!("a chunk ends in {crlf:?}")));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.next_chunk()? {
            self.done = true;
            return Ok(0);
        }
        let wanted = out.len().min(self.left);
        let n = self.inner.read(&mut out[..wanted])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

/// One request head up to its blank line, as text; `None` when the connection ends or fails
/// first.
pub fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let head = read_head_bytes(reader).ok()?;
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The body a request head announces, read whole (a `Content-Length`, or chunks up to the
/// last); `None` when the connection ends or the framing is broken.
pub fn read_body(reader: &mut impl BufRead, head: &str) -> Option<Vec<u8>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    parsed.parse(head.as_bytes()).ok()?;
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let mut body = Vec::new();
    if is_chunked(header("transfer-encoding").as_deref()) {
        Chunked::new(reader).read_to_end(&mut body).ok()?;
        return Some(body);
    }
    let length: usize = header("content-length").map_or(Some(0), |n| n.parse().ok())?;
    body.resize(length, 0);
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Whether the server closed `stream` without sending a byte: end of file or a reset. A
/// response, if there is one, is left unread. Fails the test if nothing happens within the
/// deadline.
pub fn closed_without_response(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) =>
        {
            true
        }
        Err(err) => panic!("neither answered nor closed: {err}"),
    }
}

/// Sends one raw request on a fresh connection and reads the response.
pub fn raw(addr: SocketAddr, request: &str) -> Response {
    let mut conn = Conn::open(addr);
    conn.send(request.as_bytes());
    conn.read(request.starts_with("HEAD "))
}

/// A GET with the given path on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
    )
}

/// `/echo` through the proxy with extra request headers (each line ending in \r\n).
pub fn echo(addr: SocketAddr, extra_headers: &str) -> (Response, Echo) {
    let response = raw(
        addr,
        &format!(
            "GET /echo HTTP/1.1\r\nHost: test.local\r\n{extra_headers}Connection: close\r\n\r\n"
        ),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = Echo(response.json());
    (response, echo)
}
