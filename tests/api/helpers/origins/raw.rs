//! An origin that speaks raw HTTP/1.1 from std threads, for answers a well-behaved server
//! library would not send (hop-by-hop headers, bad framing, interim responses), and that
//! records exactly what reached it.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{spawn, Serve, Spawned};
use crate::helpers::{read_body, read_head, DEADLINE};

/// A request head and its whole body.
pub type WholeRequest = (String, Vec<u8>);

/// An origin that reads each request whole (a `Content-Length` or chunked body) and answers
/// it with the same bytes every time. It records every head as it arrives and every request
/// once its body is complete, so a test can tell what reached a server and whether it was a
/// whole request.
pub struct RawOrigin {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    complete: Arc<Mutex<Vec<WholeRequest>>>,
    _server: Spawned,
}

impl RawOrigin {
    /// Answers every request with 200 and `ok`.
    pub fn ok() -> Self {
        Self::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    }

    /// Answers every request on a connection with `response`.
    pub fn start(response: &'static [u8]) -> Self {
        Self::serve(move |_| response.to_vec(), false)
    }

    /// Answers the first request with `response`, then closes the connection.
    pub fn start_then_close(response: &'static [u8]) -> Self {
        Self::serve(move |_| response.to_vec(), true)
    }

    /// Answers every request with the bytes `answer` builds from the origin's own address
    /// (for responses that name it, like redirects).
    pub fn answering(answer: impl Fn(SocketAddr) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self::serve(answer, false)
    }

    fn serve(answer: impl Fn(SocketAddr) -> Vec<u8> + Send + Sync + 'static, close: bool) -> Self {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let complete = Arc::new(Mutex::new(Vec::new()));
        let (seen, done) = (heads.clone(), complete.clone());
        let server = spawn(Serve::connections(move |stream| {
            let _ = stream.set_read_timeout(Some(DEADLINE));
            let Ok(answer) = stream.local_addr().map(&answer) else {
                return;
            };
            let Ok(mut writer) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            while let Some(head) = read_head(&mut reader) {
                seen.lock().unwrap().push(head.clone());
                let Some(body) = read_body(&mut reader, &head) else {
                    return;
                };
                done.lock().unwrap().push((head, body));
                if writer.write_all(&answer).is_err() || close {
                    return;
                }
            }
        }));
        Self {
            addr: server.addr,
            heads,
            complete,
            _server: server,
        }
    }

    /// Every request head received, whole or not, as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Every request received whole: its head and its body.
    pub fn complete(&self) -> Vec<WholeRequest> {
        self.complete.lock().unwrap().clone()
    }
}
