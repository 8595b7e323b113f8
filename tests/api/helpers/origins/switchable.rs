//! An origin whose behaviour a test switches while traffic flows: answer with a chosen
//! status, hang (read the request, never answer), or close its port and open it again.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{spawn, Serve, Spawned};
use crate::helpers::{read_body, read_head, DEADLINE};

/// What the origin does with the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers with this status and its name as the body.
    Answer(u16),
    /// Reads the request and never answers.
    Hang,
}

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub body: Vec<u8>,
}

/// An origin answering with its name, switchable between answering and hanging, and closable.
pub struct Switchable {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
    server: Spawned,
}

/// What the origin's connections share with the test.
struct State {
    name: String,
    hang: AtomicBool,
    status: AtomicU16,
    requests: Mutex<Vec<Received>>,
    hits: AtomicUsize,
    /// Cleared while the origin is closed, to end the connections it holds hanging.
    open: AtomicBool,
}

impl Switchable {
    /// An origin answering 200 with `name`, on an ephemeral port.
    pub fn start(name: &str) -> Self {
        let state = Arc::new(State {
            name: name.to_string(),
            hang: AtomicBool::new(false),
            status: AtomicU16::new(200),
            requests: Mutex::default(),
            hits: AtomicUsize::new(0),
            open: AtomicBool::new(true),
        });
        let served = state.clone();
        let server = spawn(Serve::connections(move |stream| served.converse(stream)));
        Self {
            addr: server.addr,
            name: name.to_string(),
            state,
            server,
        }
    }

    /// An origin that answers every request with `status`.
    pub fn answering(name: &str, status: u16) -> Self {
        let origin = Self::start(name);
        origin.set(Mode::Answer(status));
        origin
    }

    /// What to do with requests from now on.
    pub fn set(&self, mode: Mode) {
        match mode {
            Mode::Answer(status) => {
                self.state.status.store(status, Ordering::SeqCst);
                self.state.hang.store(false, Ordering::SeqCst);
            }
            Mode::Hang => self.state.hang.store(true, Ordering::SeqCst),
        }
    }

    /// Requests received so far (hung ones included).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Closes the port and every open connection, as a stopped process would; the address
    /// refuses connections until [`Self::reopen`].
    pub fn close(&mut self) {
        self.state.open.store(false, Ordering::SeqCst);
        self.server.close();
    }

    /// Opens the same port again, as a restarted process would.
    pub fn reopen(&mut self) {
        self.state.open.store(true, Ordering::SeqCst);
        self.server.reopen();
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.close();
    }
}

impl State {
    /// Serves one keep-alive connection until the client or the test closes it.
    fn converse(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(DEADLINE));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader) {
            self.hits.fetch_add(1, Ordering::SeqCst);
            self.requests.lock().unwrap().push(request);
            if self.hang.load(Ordering::SeqCst) {
                // Hold the connection, answer nothing, until the test lets go or closes it.
                while self.hang.load(Ordering::SeqCst) && self.open.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
                return;
            }
            let status = self.status.load(Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{}",
                self.name.len(),
                self.name
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Reads one request whole; `None` when the connection ends.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let head = read_head(reader)?;
    let method = head.split_whitespace().next()?.to_string();
    let body = read_body(reader, &head)?;
    Some(Received { method, body })
}
