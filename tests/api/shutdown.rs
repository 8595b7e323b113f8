//! Graceful shutdown of the binary on SIGTERM and SIGINT.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Large enough that no socket buffer on the way holds the rest of it.
const DOWNLOAD: usize = 64 * 1024 * 1024;

/// A download on its own connection, read only as far as the test asks.
struct Download {
    conn: Conn,
    length: usize,
    received: usize,
}

impl Download {
    fn start(addr: SocketAddr, size: usize) -> Self {
        let mut conn = Conn::open(addr);
        conn.send(
            format!("GET /bytes/{size}?sized=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let head = conn.read(true);
        assert_eq!(head.status, 200, "{head:?}");
        let length = head
            .header("content-length")
            .expect("a sized response")
            .parse()
            .unwrap();
        Self {
            conn,
            length,
            received: 0,
        }
    }

    /// Reads up to `n` more body bytes in small pieces, checking each is the origin's `x`;
    /// stops early at end of stream or a connection error.
    fn read(&mut self, n: usize) -> std::io::Result<usize> {
        let mut piece = [0u8; 16 * 1024];
        let mut read = 0;
        while read < n {
            let want = piece.len().min(n - read);
            let got = self.conn.reader().read(&mut piece[..want])?;
            if got == 0 {
                break;
            }
            assert!(piece[..got].iter().all(|&b| b == b'x'), "body corrupted");
            read += got;
        }
        self.received += read;
        Ok(read)
    }

    /// Reads the rest of the body, then expects the connection to close.
    fn finish(&mut self) {
        let rest = self.length - self.received;
        let read = self.read(rest).expect("the rest of the body");
        assert_eq!(read, rest, "the body was cut short");
        let mut after = Vec::new();
        self.conn
            .reader()
            .read_to_end(&mut after)
            .expect("the connection closes cleanly");
        assert!(after.is_empty(), "bytes after the body");
    }
}

/// Waits until connecting to `addr` is refused; panics at the deadline.
fn wait_until_refused(addr: SocketAddr) {
    let started = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            // Accepted by a listener still closing: hang up at once, so it holds nothing open.
            Ok(stream) => drop(stream),
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => return,
            Err(err) => panic!("connecting failed other than by refusal: {err}"),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still accepting connections after the signal"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn still_running(proxy: &mut Process) -> bool {
    proxy.child.try_wait().unwrap().is_none()
}

/// A download is part-way through when `signal` arrives: the listener closes, the download
/// completes in full, and only then does the process exit with 0.
fn in_flight_download_finishes_after(signal: i32) {
    let origin = Origin::start("app");
    let mut proxy = Process::start(one_pool(&[origin.addr], ""));
    let mut download = Download::start(proxy.addr, DOWNLOAD);
    assert_eq!(download.length, DOWNLOAD);
    assert_eq!(download.read(256 * 1024).unwrap(), 256 * 1024);

    proxy.signal(signal);
    wait_until_refused(proxy.addr);
    // The download cannot be done: most of it is still to be read.
    assert!(
        still_running(&mut proxy),
        "exited with a download unfinished"
    );

    download.finish();
    assert_eq!(download.received, DOWNLOAD);
    assert_eq!(proxy.wait(), Some(0), "exit code after the signal");
}

#[test]
fn sigterm_lets_an_in_flight_download_finish_and_exits_zero() {
    in_flight_download_finishes_after(libc::SIGTERM);
}

#[test]
fn sigint_lets_an_in_flight_download_finish_and_exits_zero() {
    in_flight_download_finishes_after(libc::SIGINT);
}

#[test]
fn a_request_waiting_for_its_response_head_is_answered_after_sigterm() {
    let origin = Origin::start("app");
    let mut proxy = Process::start(one_pool(&[origin.addr], ""));
    let addr = proxy.addr;
    let waiting = thread::spawn(move || get(addr, "/sleep/1500"));
    let started = Instant::now();
    while origin.hits() == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the request never reached the origin"
        );
        thread::sleep(Duration::from_millis(5));
    }
    proxy.signal(libc::SIGTERM);
    wait_until_refused(addr);
    let response = waiting.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slept");
    assert_eq!(proxy.wait(), Some(0));
}

#[test]
fn an_idle_keep_alive_connection_does_not_hold_up_shutdown() {
    let origin = Origin::start("app");
    // Far beyond the deadline: an exit within it means nobody waited for this timeout.
    let toml = one_pool(&[origin.addr], "").set("server.shutdown_timeout", "1h");
    let mut proxy = Process::start(toml);
    let mut idle = Conn::open(proxy.addr);
    idle.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(idle.read(false).text(), "app");

    proxy.signal(libc::SIGTERM);
    assert!(idle.closed_by_peer(), "the idle connection was not closed");
    assert_eq!(proxy.wait(), Some(0));
}

#[test]
fn shutdown_timeout_ends_a_download_that_never_finishes() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.shutdown_timeout", "1s");
    let mut proxy = Process::start(toml);
    let mut stalled = Download::start(proxy.addr, DOWNLOAD);
    assert_eq!(stalled.read(64 * 1024).unwrap(), 64 * 1024);

    // The client stops reading for good; the process must still exit.
    proxy.signal(libc::SIGTERM);
    assert_eq!(
        proxy.wait(),
        Some(0),
        "exit code after the shutdown timeout"
    );
    let rest = stalled.read(DOWNLOAD).unwrap_or(0);
    assert!(
        stalled.received < DOWNLOAD,
        "the stalled download cannot have completed ({rest} more bytes)"
    );
}
