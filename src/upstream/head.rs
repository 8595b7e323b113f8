//! Reading a server's response head: the one httparse reader, parsing as awc does, behind the
//! response-head filter of awc's connections, the WebSocket handshake and the health probes.

use std::mem::MaybeUninit;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest response head read: as actix-http's own limit for requests. A longer one is
/// refused (or, in awc's connections, handed on for awc to refuse).
pub const MAX_HEAD: usize = 64 * 1024;

/// Reads from a server in pieces this large.
const READ_SIZE: usize = 8 * 1024;

/// Parses heads as awc does, so a head awc reads and a head read here never disagree.
fn parser_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config
}

/// Why no usable response head could be read from what the server sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("response head too large")]
    TooLarge,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("not an HTTP/1.x response head")]
    Malformed,
    #[error("bad status code")]
    BadStatus,
    #[error("bad header name")]
    BadHeaderName,
    #[error("bad header value")]
    BadHeaderValue,
    #[error("bad Content-Length")]
    BadLength,
}

/// Why reading a response head from a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the response head")]
    Closed,
    #[error(transparent)]
    Head(#[from] HeadError),
}

/// A response head as parsed, borrowed from the bytes it was read from.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    /// The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub status: u16,
    pub headers: &'h [httparse::Header<'b>],
}

/// How a response's body ends (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    Close,
}

impl<'b> Head<'_, 'b> {
    /// Whether a final head follows this one: a 1xx other than `101 Switching Protocols`,
    /// after which the connection speaks another protocol.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The values of every header named `name`, in order.
    pub fn values(&self, name: &'static str) -> impl Iterator<Item = &'b [u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether a header named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// How the body is framed: chunked if the last transfer coding is, else by a single
    /// Content-Length, else by the connection closing.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        if let Some(codings) = self.values("transfer-encoding").last() {
            let last = codings.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Ok(Framing::Chunked);
            }
            return Ok(Framing::Close);
        }
        let mut lengths = self.values("content-length").map(|value| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
        });
        match (lengths.next(), lengths.next()) {
            (None, _) => Ok(Framing::Close),
            (Some(Some(length)), None) => Ok(Framing::Length(length)),
            _ => Err(HeadError::BadLength),
        }
    }

    /// The status as actix-web's type.
    pub fn status_code(&self) -> Result<StatusCode, HeadError> {
        StatusCode::from_u16(self.status).map_err(|_| HeadError::BadStatus)
    }

    /// The headers as actix-web's map, repeats kept.
    pub fn header_map(&self) -> Result<HeaderMap, HeadError> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for h in self.headers {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::BadHeaderName)?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::BadHeaderValue)?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// What the bytes at the start of a response hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Not a whole head yet, and under [`MAX_HEAD`]: more bytes are needed.
    Partial,
    /// A whole head of this many bytes, and what was made of it.
    Complete(usize, T),
}

/// Parses the response head at the start of `bytes`, with room for `N` headers (each caller
/// says how many it accepts), and hands it to `read`. Nothing is allocated.
pub fn parse<const N: usize, T>(
    bytes: &[u8],
    read: impl FnOnce(&Head<'_, '_>) -> T,
) -> Result<Parsed<T>, HeadError> {
    // Uninitialised slots: this runs once per forwarded response, and zeroing them costs
    // more than parsing a typical head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut response = httparse::Response::new(&mut []);
    let parsed =
        parser_config().parse_response_with_uninit_headers(&mut response, bytes, &mut slots);
    match parsed {
        Ok(httparse::Status::Complete(length)) => {
            let head = Head {
                version: response.version.unwrap_or(1),
                status: response.code.unwrap_or(0),
                headers: response.headers,
            };
            Ok(Parsed::Complete(length, read(&head)))
        }
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => Ok(Parsed::Partial),
        Ok(httparse::Status::Partial) => Err(HeadError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Reads from `stream` into `buf` until a whole final head has arrived, dropping interim
/// heads on the way (RFC 9110 15.2), and returns what `read` made of it. The head leaves
/// `buf`; whatever followed it stays there.
pub async fn read_final<const N: usize, T>(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    mut read: impl FnMut(&Head<'_, '_>) -> Result<T, HeadError>,
) -> Result<T, ReadError> {
    loop {
        let parsed = parse::<N, _>(buf, |head| (!head.is_interim()).then(|| read(head)))?;
        match parsed {
            Parsed::Complete(length, Some(made)) => {
                buf.advance(length);
                return Ok(made?);
            }
            Parsed::Complete(length, None) => buf.advance(length),
            Parsed::Partial => {
                buf.reserve(READ_SIZE);
                if stream.read_buf(buf).await? == 0 {
                    return Err(ReadError::Closed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(bytes: &[u8]) -> Result<Parsed<u16>, HeadError> {
        parse::<8, _>(bytes, |head| head.status)
    }

    #[test]
    fn a_head_parses_when_whole_and_waits_when_not() {
        assert_eq!(
            status(b"HTTP/1.1 204 No Content\r\n\r\nrest"),
            Ok(Parsed::Complete(27, 204))
        );
        assert_eq!(status(b"HTTP/1.1 200 OK\r\nContent-"), Ok(Parsed::Partial));
        assert_eq!(status(b""), Ok(Parsed::Partial));
        assert_eq!(status(b"garbage\r\n\r\n"), Err(HeadError::Malformed));
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'x');
        assert_eq!(status(&long), Err(HeadError::TooLarge));
        long.truncate(MAX_HEAD - 1);
        assert_eq!(status(&long), Ok(Parsed::Partial));
    }

    #[test]
    fn headers_beyond_the_caller_s_room_are_refused() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..9 {
            head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(status(&head), Err(HeadError::TooManyHeaders));
        assert!(matches!(
            parse::<9, _>(&head, |h| h.headers.len()),
            Ok(Parsed::Complete(_, 9))
        ));
    }

    #[test]
    fn spaces_before_a_colon_are_read_as_awc_reads_them() {
        let parsed = parse::<8, _>(b"HTTP/1.1 200 OK\r\nX-Ready : yes\r\n\r\n", |head| {
            head.values("x-ready").next().map(<[u8]>::to_vec)
        });
        assert_eq!(parsed, Ok(Parsed::Complete(34, Some(b"yes".to_vec()))));
    }

    fn framing(head: &[u8]) -> Result<Framing, HeadError> {
        match parse::<8, _>(head, |head| head.framing()).unwrap() {
            Parsed::Complete(_, framing) => framing,
            Parsed::Partial => panic!("partial: {head:?}"),
        }
    }

    #[test]
    fn framing_follows_the_last_transfer_coding_then_a_single_length() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(framing(chunked), Ok(Framing::Chunked));
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(framing(gzip), Ok(Framing::Close));
        let length = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(framing(length), Ok(Framing::Length(12)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(framing(two), Err(HeadError::BadLength));
        let signed = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(framing(signed), Err(HeadError::BadLength));
    }

    #[test]
    fn only_1xx_heads_other_than_101_are_interim() {
        for (code, interim) in [(100, true), (103, true), (101, false), (200, false)] {
            let head = format!("HTTP/1.1 {code} X\r\n\r\n");
            let parsed = parse::<8, _>(head.as_bytes(), |head| head.is_interim());
            assert_eq!(parsed, Ok(Parsed::Complete(head.len(), interim)), "{code}");
        }
    }

    /// Reads a head from a server that sends `first`, then `second` in a later read.
    async fn read_all(
        first: &'static [u8],
        second: &'static [u8],
    ) -> (Result<(u16, HeaderMap), ReadError>, BytesMut) {
        let mut stream = AsyncReadExt::chain(first, second);
        let mut buf = BytesMut::new();
        let head = read_final::<8, _>(&mut stream, &mut buf, |head| {
            Ok((head.status, head.header_map()?))
        })
        .await;
        (head, buf)
    }

    #[tokio::test]
    async fn the_final_head_is_read_past_interim_ones_and_what_follows_is_kept() {
        let (head, rest) = read_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching",
            b" Protocols\r\nUpgrade: websocket\r\nX-A: 1\r\nX-A: 2\r\n\r\nframes",
        )
        .await;
        let (status, headers) = head.unwrap();
        assert_eq!(status, 101);
        assert_eq!(headers.get_all("x-a").count(), 2);
        assert_eq!(&rest[..], b"frames");
    }

    #[tokio::test]
    async fn a_server_closing_before_its_head_is_a_read_error() {
        let (head, _) = read_all(b"HTTP/1.1 200 OK\r\n", b"").await;
        assert!(matches!(head, Err(ReadError::Closed)), "{head:?}");
        let (head, _) = read_all(b"HTTP/1.1 200 OK\r\nBad\x01Name: x\r\n\r\n", b"").await;
        assert!(matches!(head, Err(ReadError::Head(_))), "{head:?}");
    }
}
