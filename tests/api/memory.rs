//! Bodies stream through the binary: a 256 MiB transfer either way leaves its memory flat.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Reads a response head; returns the status and headers, names lowercased.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            return (code, headers);
        }
        let (name, value) = line.split_once(':').expect("a header");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads and discards exactly `n` bytes in small pieces, checking they are the origin's `x`.
fn discard(reader: &mut impl Read, n: u64, counted: &mut u64, watch: &mut Watch) {
    let mut piece = [0u8; PIECE];
    let mut left = n;
    while left > 0 {
        let want = (left as usize).min(PIECE);
        let got = reader.read(&mut piece[..want]).expect("body bytes");
        assert!(got > 0, "the body ended {left} bytes early");
        assert!(piece[..got].iter().all(|&b| b == b'x'), "body corrupted");
        left -= got as u64;
        *counted += got as u64;
        watch.progress(*counted);
    }
}

/// Downloads `target`, decoding either framing, counting the body bytes while the proxy's
/// memory is watched; returns the count and whether it was chunked.
fn download(proxy: &Process, target: &str, watch: &mut Watch) -> (u64, bool) {
    let mut stream = connect(proxy.addr);
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::with_capacity(PIECE, stream);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut counted = 0;
    let chunked = header(&headers, "transfer-encoding") == Some("chunked");
    if chunked {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("chunk size");
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
            discard(&mut reader, size, &mut counted, watch);
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).expect("chunk end");
            assert_eq!(&crlf, b"\r\n");
            if size == 0 {
                break;
            }
        }
    } else {
        let length: u64 = header(&headers, "content-length")
            .expect("a sized body")
            .parse()
            .unwrap();
        discard(&mut reader, length, &mut counted, watch);
    }
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .expect("the connection closes");
    assert!(rest.is_empty(), "{} bytes after the body", rest.len());
    (counted, chunked)
}

/// Uploads `size` bytes to the origin's `/echo` in small pieces, framed with Content-Length
/// or chunked, while the proxy's memory is watched; returns the body size the origin saw.
fn upload(proxy: &Process, size: u64, chunked: bool, watch: &mut Watch) -> u64 {
    let mut stream = connect(proxy.addr);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    write!(
        stream,
        "POST /echo HTTP/1.1\r\nHost: a\r\n{framing}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let piece = [b'u'; PIECE];
    let mut sent = 0;
    while sent < size {
        if chunked {
            write!(stream, "{:x}\r\n", PIECE).unwrap();
            stream.write_all(&piece).expect("upload");
            stream.write_all(b"\r\n").expect("upload");
        } else {
            stream.write_all(&piece).expect("upload");
        }
        sent += PIECE as u64;
        watch.progress(sent);
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").unwrap();
    }
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut body = Vec::new();
    reader.read_to_end(&mut body).unwrap();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        panic!("expected a sized JSON reply");
    }
    let echo: serde_json::Value = serde_json::from_slice(&body).expect("the origin's JSON");
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
    let proxy = Process::start(&one_pool(&[origin.addr], ""));
    warm_up(&proxy);
    proxy
}

fn large_download_keeps_memory_flat(target: &str, expect_chunked: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|err| err.into_inner());
    let origin = Origin::start("app");
    let proxy = warmed_proxy(&origin, |proxy| {
        let mut unwatched = Watch::new(proxy);
        let warm = target.replace(&BODY.to_string(), &(8 * 1024 * 1024).to_string());
        download(proxy, &warm, &mut unwatched);
    });
    let mut watch = Watch::new(&proxy);
    let (received, chunked) = download(&proxy, target, &mut watch);
    assert_eq!(chunked, expect_chunked, "framing of {target}");
    assert_eq!(received, BODY, "bytes received");
    watch.assert_flat(target);
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
    large_download_keeps_memory_flat(&format!("/bytes/{BODY}"), true);
}

#[test]
fn a_256_mib_sized_download_streams_in_constant_memory() {
    large_download_keeps_memory_flat(&format!("/bytes/{BODY}?sized=1"), false);
}

#[test]
fn a_256_mib_sized_upload_streams_in_constant_memory() {
    large_upload_keeps_memory_flat(false);
}

#[test]
fn a_256_mib_chunked_upload_streams_in_constant_memory() {
    large_upload_keeps_memory_flat(true);
}
