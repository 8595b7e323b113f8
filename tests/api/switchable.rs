//! An origin whose behaviour a test switches while traffic flows: answer with a chosen
//! status, hang (accept and read, never answer), or close its port and open it again.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::helpers::DEADLINE;

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
    pub target: String,
    pub body: Vec<u8>,
}

pub struct Switchable {
    pub addr: SocketAddr,
    pub name: String,
    /// 0 answers with `status`; 1 hangs.
    hang: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Received>>>,
    hits: Arc<AtomicUsize>,
    /// Set while the port is open; cleared to close it.
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Switchable {
    /// An origin answering 200 with `name`, on an ephemeral port.
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut origin = Self {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            hang: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            requests: Arc::default(),
            hits: Arc::default(),
            open: Arc::default(),
            connections: Arc::default(),
            acceptor: None,
        };
        origin.serve(listener);
        origin
    }

    /// An origin that answers every request with `status`.
    pub fn answering(name: &str, status: u16) -> Self {
        let origin = Self::start(name);
        origin.set(Mode::Answer(status));
        origin
    }

    pub fn set(&self, mode: Mode) {
        match mode {
            Mode::Answer(status) => {
                self.status.store(status, Ordering::SeqCst);
                self.hang.store(false, Ordering::SeqCst);
            }
            Mode::Hang => self.hang.store(true, Ordering::SeqCst),
        }
    }

    /// Requests received so far (hung ones included).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Closes the port and every open connection, as a stopped process would.
    pub fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for conn in self.connections.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Opens the same port again, as a restarted process would.
    pub fn reopen(&mut self) {
        let listener = TcpListener::bind(self.addr).expect("the port can be bound again");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let open = self.open.clone();
        let worker = Worker {
            name: self.name.clone(),
            hang: self.hang.clone(),
            status: self.status.clone(),
            requests: self.requests.clone(),
            hits: self.hits.clone(),
            open: self.open.clone(),
        };
        let connections = self.connections.clone();
        self.acceptor = Some(thread::spawn(move || {
            // Bounded: a test lasts far less than this many polls.
            for _ in 0..200_000 {
                if !open.load(Ordering::SeqCst) {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let Ok(clone) = stream.try_clone() {
                            connections.lock().unwrap().push(clone);
                        }
                        let worker = worker.clone();
                        thread::spawn(move || worker.converse(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.close();
    }
}

#[derive(Clone)]
struct Worker {
    name: String,
    hang: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Received>>>,
    hits: Arc<AtomicUsize>,
    open: Arc<AtomicBool>,
}

impl Worker {
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

/// Reads one request (head and Content-Length body); `None` when the connection ends.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|&n| n > 0)?;
        if header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        target,
        body,
    })
}
