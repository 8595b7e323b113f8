//! Bodies stream through the binary: a 256 MiB transfer either way leaves its memory flat.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::helpers::*;

const BODY: u64 = 256 * 1024 * 1024;
/// How far resident memory may rise over the warmed-up baseline during a transfer.
const MAX_GROWTH_KIB: u64 = 32 * 1024;
/// Memory is sampled each time this much more of the body has crossed.
const SAMPLE_EVERY: u64 = 4 * 1024 * 1024;
/// Small pieces: the client never holds more than this of the body.
const PIECE: usize = 16 * 1024;

/// One big transfer at a time, so they do not compete with each other for the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The proxy's resident memory: the baseline, and the highest sample taken since.
struct Watch<'a> {
    proxy: &'a Process,
    baseline: u64,
    peak: u64,
    samples: usize,
    next_sample: u64,
}

impl<'a> Watch<'a> {
    fn new(proxy: &'a Process) -> Self {
        let baseline = proxy.rss_kib();
        Self {
            proxy,
            baseline,
            peak: baseline,
            samples: 0,
            next_sample: 0,
        }
    }

    /// Samples once `done` bytes have crossed since the last sample.
    fn progress(&mut self, done: u64) {
        if done >= self.next_sample {
            self.peak = self.peak.max(self.proxy.rss_kib());
            self.samples += 1;
            self.next_sample = done + SAMPLE_EVERY;
        }
    }

    fn assert_flat(&self, what: &str) {
        assert!(
            self.samples as u64 >= BODY / SAMPLE_EVERY,
            "only {} samples",
            self.samples
        );
        let growth = self.peak.saturating_sub(self.baseline);
        assert!(
            growth < MAX_GROWTH_KIB,
            "{what}: resident memory rose {growth} KiB over a baseline of {} KiB",
            self.baseline
        );
    }
}

fn connect(addr: SocketAddr) -> Conn {
    let mut conn = Conn::open(addr);
    conn.stream().set_write_timeout(Some(DEADLINE)).unwrap();
    conn
}

/// Reads and discards the body in small pieces, up to `limit` bytes or its end, checking they
/// are the origin's `x`; returns how many there were.
fn discard(reader: &mut impl Read, limit: u64, counted: &mut u64, watch: &mut Watch) -> u64 {
    let mut piece = [0u8; PIECE];
    let mut read = 0;
    while read < limit {
        let want = (limit - read).min(PIECE as u64) as usize;
        let got = reader.read(&mut piece[..want]).expect("body bytes");
        if got == 0 {
            break;
        }
        assert!(piece[..got].iter().all(|&b| b == b'x'), "body corrupted");
        read += got as u64;
        *counted += got as u64;
        watch.progress(*counted);
    }
    read
}

/// Downloads `target`, decoding either framing, counting the body bytes while the proxy's
/// memory is watched; returns the count and whether it was chunked.
fn download(proxy: &Process, target: &str, watch: &mut Watch) -> (u64, bool) {
    let mut conn = connect(proxy.addr);
    conn.send(format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes());
    let head = conn.read(true);
    assert_eq!(head.status, 200);
    let mut counted = 0;
    let chunked = head.header("transfer-encoding") == Some("chunked");
    if chunked {
        let mut body = Chunked::new(conn.reader());
        discard(&mut body, u64::MAX, &mut counted, watch);
    } else {
        let length: u64 = head
            .header("content-length")
            .expect("a sized body")
            .parse()
            .unwrap();
        let read = discard(conn.reader(), length, &mut counted, watch);
        assert_eq!(read, length, "the body ended {} bytes early", length - read);
    }
    let mut rest = Vec::new();
    conn.reader()
        .read_to_end(&mut rest)
        .expect("the connection closes");
    assert!(rest.is_empty(), "{} bytes after the body", rest.len());
    (counted, chunked)
}

/// Uploads `size` bytes to the origin's `/echo` in small pieces, framed with Content-Length
/// or chunked, while the proxy's memory is watched; returns the body size the origin saw.
fn upload(proxy: &Process, size: u64, chunked: bool, watch: &mut Watch) -> u64 {
    let mut conn = connect(proxy.addr);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    conn.send(
        format!("POST /echo HTTP/1.1\r\nHost: a\r\n{framing}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let piece = [b'u'; PIECE];
    let mut sent = 0;
    while sent < size {
        if chunked {
            conn.send(format!("{PIECE:x}\r\n").as_bytes());
            conn.send(&piece);
            conn.send(b"\r\n");
        } else {
            conn.send(&piece);
        }
        sent += PIECE as u64;
        watch.progress(sent);
    }
    if chunked {
        conn.send(b"0\r\n\r\n");
    }
    let response = conn.read(false);
    assert_eq!(response.status, 200);
    assert_ne!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "expected a sized JSON reply"
    );
    let echo = response.json();
    assert_eq!(echo["method"], "POST");
    let framed_as = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|pair| pair[0] == "transfer-encoding" && pair[1] == "chunked");
    assert_eq!(framed_as, chunked, "the upload kept its framing");
    echo["body_len"].as_u64().expect("body_len")
}

/// The proxy with one worker, warmed up by a smaller transfer of the same kind.
fn warmed_proxy(origin: &Origin, warm_up: impl FnOnce(&Process)) -> Process {
    let proxy = Process::start(one_pool(&[origin.addr], ""));
    warm_up(&proxy);
    proxy
}

/// Downloads `/bytes/BODY` with `query` after a warm-up of 8 MiB the same way, and checks the
/// framing and that memory stays flat.
fn large_download_keeps_memory_flat(query: &str, expect_chunked: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|err| err.into_inner());
    let origin = Origin::start("app");
    let proxy = warmed_proxy(&origin, |proxy| {
        let mut unwatched = Watch::new(proxy);
        download(
            proxy,
            &format!("/bytes/{}{query}", 8 * 1024 * 1024),
            &mut unwatched,
        );
    });
    let target = format!("/bytes/{BODY}{query}");
    let mut watch = Watch::new(&proxy);
    let (received, chunked) = download(&proxy, &target, &mut watch);
    assert_eq!(chunked, expect_chunked, "framing of {target}");
    assert_eq!(received, BODY, "bytes received");
    watch.assert_flat(&target);
}

fn large_upload_keeps_memory_flat(chunked: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|err| err.into_inner());
    let origin = Origin::start("app");
    let proxy = warmed_proxy(&origin, |proxy| {
        let warm = 8 * 1024 * 1024;
        assert_eq!(upload(proxy, warm, chunked, &mut Watch::new(proxy)), warm);
    });
    let mut watch = Watch::new(&proxy);
    let received = upload(&proxy, BODY, chunked, &mut watch);
    assert_eq!(received, BODY, "bytes the origin received");
    watch.assert_flat(if chunked {
        "chunked upload"
    } else {
        "sized upload"
    });
}

#[test]
fn a_256_mib_chunked_download_streams_in_constant_memory() {
    large_download_keeps_memory_flat("", true);
}

#[test]
fn a_256_mib_sized_download_streams_in_constant_memory() {
    large_download_keeps_memory_flat("?sized=1", false);
}

#[test]
fn a_256_mib_sized_upload_streams_in_constant_memory() {
    large_upload_keeps_memory_flat(false);
}

#[test]
fn a_256_mib_chunked_upload_streams_in_constant_memory() {
    large_upload_keeps_memory_flat(true);
}
