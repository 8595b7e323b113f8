//! What gatehouse fixes in a server's response head before awc reads it.
//!
//! awc (actix-http's client codec) has two gaps a proxy cannot live with:
//! - it takes an interim `1xx` response (`103 Early Hints`, an unasked `100 Continue`) for the
//!   final one and returns the connection to its pool with the real response still coming,
//!   where the next request on that connection would read it;
//! - it reads an HTTP/1.1 response that has neither `Content-Length` nor chunked encoding as
//!   having no body, where RFC 9112 6.3 says the body runs until the connection closes.
//!
//! So the first head of each response is looked at as it arrives: interim heads are dropped,
//! and a close-delimited HTTP/1.1 head is relabelled HTTP/1.0, whose bodies awc does read until
//! the connection closes. Everything after the head passes untouched.

use super::head::{self, Parsed};

/// Header slots for the heads examined: more than awc reads (96), so a head awc would refuse
/// reaches awc to be refused rather than being taken apart here.
const MAX_HEADERS: usize = 128;

/// Where the version digit of a head's status line is: httparse skips blank lines before it.
fn version_digit(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
        + 7
}

/// What to do with bytes that start a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The head is not complete yet: wait for more bytes.
    Incomplete,
    /// An interim head of this many bytes: drop it and look at what follows.
    Interim(usize),
    /// The final head; pass the bytes on, with byte 7 set to `0` if `relabel` (HTTP/1.0).
    Final { relabel: bool },
}

/// Looks at bytes that start a response.
pub fn examine(bytes: &[u8]) -> Verdict {
    let parsed = head::parse::<MAX_HEADERS, _>(bytes, |head| {
        if head.is_interim() {
            return None;
        }
        let framed = head.has("content-length") || head.has("transfer-encoding");
        let bodiless = matches!(head.status, 204 | 304 | 101);
        Some(head.version == 1 && !framed && !bodiless)
    });
    match parsed {
        Ok(Parsed::Complete(length, None)) => Verdict::Interim(length),
        Ok(Parsed::Complete(_, Some(relabel))) => Verdict::Final { relabel },
        Ok(Parsed::Partial) => Verdict::Incomplete,
        // Too long or not HTTP: awc gives the error.
        Err(_) => Verdict::Final { relabel: false },
    }
}

/// Where a connection is in its exchange, for the filter in `connector.rs`.
#[derive(Debug, Default)]
pub struct HeadFilter {
    /// True from a request being written until the final response head has been passed on.
    awaiting_head: bool,
    /// Bytes of a head not yet complete, or of a final head not yet handed on.
    pending: Vec<u8>,
}

impl HeadFilter {
    /// A request is being written: the next bytes read start its response.
    pub fn request_written(&mut self) {
        self.awaiting_head = true;
    }

    pub fn awaiting_head(&self) -> bool {
        self.awaiting_head
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Looks at newly read bytes in place, for the common case of a whole final head in one
    /// read: relabels it if needed and returns true, or returns false to take the slow path.
    pub fn pass_in_place(&mut self, bytes: &mut [u8]) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match examine(bytes) {
            Verdict::Final { relabel } => {
                if relabel {
                    bytes[version_digit(bytes)] = b'0';
                }
                self.awaiting_head = false;
                true
            }
            _ => false,
        }
    }

    /// Takes newly read bytes while a head is awaited; returns the bytes to hand on now (none
    /// while the head is incomplete).
    pub fn accept(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        loop {
            match examine(&self.pending) {
                Verdict::Incomplete => return Vec::new(),
                Verdict::Interim(length) => {
                    self.pending.drain(..length);
                    if self.pending.is_empty() {
                        return Vec::new();
                    }
                }
                Verdict::Final { relabel } => {
                    self.awaiting_head = false;
                    if relabel {
                        let at = version_digit(&self.pending);
                        self.pending[at] = b'0';
                    }
                    return std::mem::take(&mut self.pending);
                }
            }
        }
    }

    /// The server closed the connection: whatever was held is handed on as it is.
    pub fn closed(&mut self) -> Vec<u8> {
        self.awaiting_head = false;
        std::mem::take(&mut self.pending)
    }

    /// Holds bytes handed on that did not fit the reader's buffer.
    pub fn hold(&mut self, rest: &[u8]) {
        self.pending.splice(0..0, rest.iter().copied());
    }

    /// Takes up to `room` held bytes to hand on (only once the head has been examined).
    pub fn take_held(&mut self, room: usize) -> Vec<u8> {
        let n = room.min(self.pending.len());
        self.pending.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_heads_are_dropped_and_the_final_one_kept() {
        let mut filter = HeadFilter::default();
        filter.request_written();
        let bytes = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let out = filter.accept(bytes);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert!(!filter.awaiting_head());
    }

    #[test]
    fn a_head_split_across_reads_is_held_until_complete() {
        let mut filter = HeadFilter::default();
        filter.request_written();
        assert!(filter.accept(b"HTTP/1.1 100 Cont").is_empty());
        assert!(filter
            .accept(b"inue\r\n\r\nHTTP/1.1 200 OK\r\nContent-")
            .is_empty());
        assert_eq!(
            filter.accept(b"Length: 0\r\n\r\n"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn relabelling_skips_blank_lines_and_interim_heads_may_space_before_colons() {
        let mut filter = HeadFilter::default();
        filter.request_written();
        let mut bytes = b"\r\nHTTP/1.1 200 OK\r\n\r\nhi".to_vec();
        assert!(filter.pass_in_place(&mut bytes));
        assert_eq!(&bytes[..11], b"\r\nHTTP/1.0 ");
        assert_eq!(
            examine(b"HTTP/1.1 103 Early Hints\r\nLink : </a>\r\n\r\n"),
            Verdict::Interim(41)
        );
    }

    #[test]
    fn close_delimited_http11_is_relabelled_http10() {
        assert_eq!(
            examine(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"),
            Verdict::Final { relabel: true }
        );
        assert_eq!(
            examine(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
        assert_eq!(
            examine(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
        assert_eq!(
            examine(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
        assert_eq!(
            examine(b"HTTP/1.1 304 Not Modified\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
        assert_eq!(
            examine(b"HTTP/1.0 200 OK\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
        assert_eq!(examine(b"HTTP/1.1 200 OK\r\n"), Verdict::Incomplete);
        assert_eq!(
            examine(b"garbage\r\n\r\n"),
            Verdict::Final { relabel: false }
        );
    }
}
