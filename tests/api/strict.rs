//! Strict parsing and slow clients: requests a server could read differently from gatehouse
//! are refused before anything reaches a server, and slow clients are cut off.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// A gatehouse in front of one recording origin, with `security` as its `[security]` table.
fn proxied(security: &str) -> (Proxy, RawOrigin) {
    let origin = RawOrigin::ok();
    let toml = one_pool(&[origin.addr], "").add("security", security);
    (Proxy::from_toml(toml), origin)
}

/// Sends `request` on a fresh connection; the status gatehouse answered (`None` if it closed
/// without one) and whether it then closed the connection.
fn send_raw(proxy: SocketAddr, request: &[u8]) -> (Option<u16>, bool) {
    let mut conn = Conn::open(proxy);
    // The write may fail once gatehouse has answered and closed mid-request.
    let _ = conn.stream().write_all(request);
    let status = conn
        .try_read(request.starts_with(b"HEAD "))
        .ok()
        .map(|r| r.status);
    (status, conn.closed_by_peer())
}

/// Asserts that the origin received no request after its first `seen` but one sent now.
fn nothing_reached_since(proxy: &Proxy, origin: &RawOrigin, seen: usize, what: &str) {
    assert_eq!(get(proxy.addr, "/after").status, 200);
    let heads = origin.heads();
    assert!(
        heads.len() == seen + 1 && heads[seen].starts_with("GET /after "),
        "the origin received {:?} for {what:?}",
        &heads[seen.min(heads.len())..]
    );
}

/// Asserts that of the requests the origin received whole, the only one is a request sent
/// now, and that nothing smuggled reached it, even in part.
fn nothing_whole_reached(proxy: &Proxy, origin: &RawOrigin) {
    // Whatever reached the origin has arrived by the time a later request is answered.
    assert_eq!(get(proxy.addr, "/after").status, 200);
    let whole: Vec<String> = origin
        .complete()
        .into_iter()
        .map(|(head, _)| head)
        .collect();
    assert!(
        whole.len() == 1 && whole[0].starts_with("GET /after "),
        "the origin received whole {whole:?}"
    );
    let heads = origin.heads();
    assert!(
        heads.iter().all(|head| !head.contains("/smuggled")),
        "{heads:?}"
    );
}

/// A request smuggled after an ambiguous body, which a server reading the framing another way
/// would take for a second request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// What gatehouse must do with one request of the table.
enum Expect {
    /// Answer this status and close the connection; nothing reaches the origin.
    Refused(u16),
    /// Close the connection unanswered (actix-http takes a broken chunk for a broken
    /// connection); no whole request, and nothing smuggled, reaches the origin.
    Cut,
    /// Answer 200 having forwarded the request once, its head starting with the first of
    /// these lines and holding the others, every line ending in CRLF.
    Forwarded(Vec<String>),
}

/// One request of the table: a name that says what it tries, the proxy's `[security]` keys,
/// the bytes sent, and what must happen.
struct Row {
    name: String,
    security: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

fn row(
    name: impl Into<String>,
    security: &'static str,
    request: impl Into<Vec<u8>>,
    expect: Expect,
) -> Row {
    Row {
        name: name.into(),
        security,
        request: request.into(),
        expect,
    }
}

fn forwarded(lines: &[&str]) -> Expect {
    Expect::Forwarded(lines.iter().map(|line| line.to_string()).collect())
}

/// Framings a server could read differently from gatehouse, each with a chunked end and a
/// request smuggled after it.
fn framing_rows() -> Vec<Row> {
    [
        (
            "a length then chunked",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "chunked then a length",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        ),
        ("two lengths", "Content-Length: 4\r\nContent-Length: 40\r\n"),
        ("a list of lengths", "Content-Length: 4, 40\r\n"),
        ("the gzip coding alone", "Transfer-Encoding: gzip\r\n"),
        ("chunked, then gzip", "Transfer-Encoding: chunked, gzip\r\n"),
        ("an unknown coding", "Transfer-Encoding: xchunked\r\n"),
        (
            "two Transfer-Encodings",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
        ),
        ("a length with a sign", "Content-Length: +4\r\n"),
        ("a negative length", "Content-Length: -1\r\n"),
    ]
    .into_iter()
    .map(|(name, framing)| {
        let request =
            format!("POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\n0\r\n\r\n{SMUGGLED}");
        row(
            format!("framing: {name}"),
            "",
            request,
            Expect::Refused(400),
        )
    })
    .collect()
}

/// Heads no strict parser reads.
fn malformed_head_rows() -> Vec<Row> {
    let heads: [(&str, &[u8]); 10] = [
        (
            "a NUL in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
        ),
        (
            "a bare CR in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        ),
        (
            "a folded line",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  folded\r\n\r\n",
        ),
        (
            "a space before a length's colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
        ),
        (
            "a space before Host's colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ),
        (
            "a parenthesis in the method",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "an at sign after the method",
            b"GET@ / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no version", b"GET /\r\n\r\n"),
    ];
    heads
        .into_iter()
        .map(|(name, head)| {
            row(
                format!("malformed head: {name}"),
                "",
                head,
                Expect::Refused(400),
            )
        })
        .collect()
}

/// Absolute targets: refused when they name another host than `Host`.
fn absolute_target_rows() -> Vec<Row> {
    vec![
        row(
            "absolute target: another host",
            "",
            "GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused(400),
        ),
        row(
            "absolute target: another port",
            "",
            "GET http://a:8080/ HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused(400),
        ),
        // The same host, in another case and with the default port spelled out, is the same.
        row(
            "absolute target: Host in another case, with the default port",
            "",
            "GET http://A:80/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            forwarded(&["GET /ok HTTP/1.1\r\n"]),
        ),
    ]
}

/// Request lines against `max_request_line`: the whole line counts.
fn request_line_rows() -> Vec<Row> {
    const ONE_KIB: &str = "max_request_line = \"1KiB\"";
    // "GET " + target + " HTTP/1.1" is 1,024 bytes here.
    let fits = format!("/{}", "a".repeat(1024 - 14));
    let over = format!("{fits}a");
    let long = format!("/{}", "p".repeat(20_000));
    vec![
        row(
            "request line: exactly max_request_line",
            ONE_KIB,
            format!("GET {fits} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            Expect::Forwarded(vec![format!("GET {fits} HTTP/1.1\r\n")]),
        ),
        row(
            "request line: a byte over max_request_line",
            ONE_KIB,
            format!("GET {over} HTTP/1.1\r\nHost: a\r\n\r\n"),
            Expect::Refused(414),
        ),
        row(
            "request line: a 20,000-byte path against the default",
            "",
            format!("GET {long} HTTP/1.1\r\nHost: a\r\n\r\n"),
            Expect::Refused(414),
        ),
    ]
}

/// Dot segments in any spelling, refused when asked; dots that are not segments pass; without
/// the setting a path that stays within the root is forwarded byte for byte, and one that
/// climbs above it is refused all the same.
fn dot_segment_rows() -> Vec<Row> {
    const REJECT: &str = "reject_dot_segments = true";
    let refused = [
        "/../etc/passwd",
        "/static/../admin",
        "/static/%2e%2e/admin",
        "/static/.%2E/admin",
        "/static/%2E./admin",
        "/static/..%2fadmin",
        "/static/..;/admin",
        "/static/..",
    ]
    .map(|target| {
        row(
            format!("dot segments: {target} refused"),
            REJECT,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            Expect::Refused(400),
        )
    });
    // Dots in names and in the query are not segments.
    let passed = ["/a/.../b", "/a/..b", "/a/b?next=../c", "/.well-known/x"].map(|target| {
        row(
            format!("dot segments: {target} is none"),
            REJECT,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            forwarded(&[]),
        )
    });
    // Climbing above the root is never legitimate: refused whatever the setting says.
    let above = [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/%2E./../x",
        "/a/..%2f..%2fetc/passwd",
    ]
    .map(|target| {
        row(
            format!("dot segments: {target} climbs above the root, refused by default"),
            "",
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            Expect::Refused(400),
        )
    });
    let mut rows: Vec<Row> = refused.into_iter().chain(passed).chain(above).collect();
    rows.push(row(
        "dot segments: forwarded byte for byte when not refused",
        "",
        "GET /static/%2e%2e/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        forwarded(&["GET /static/%2e%2e/x HTTP/1.1\r\n"]),
    ));
    rows
}

/// Lines ending in a bare LF are read, and forwarded ending in CRLF.
fn line_end_rows() -> Vec<Row> {
    vec![row(
        "line ends: bare LF",
        "",
        "GET /lf HTTP/1.1\nHost: a\nX-Lf: 1\nConnection: close\n\n",
        forwarded(&["GET /lf HTTP/1.1\r\n", "x-lf: 1\r\n"]),
    )]
}

/// Chunked POSTs whose chunk stream is broken, after some good chunks or none.
fn broken_chunk_rows() -> Vec<Row> {
    [
        ("a size that is not hex", "", "zz\r\n"),
        ("a negative size", "", "-1\r\n"),
        ("a size past any integer", "", "ffffffffffffffffffff\r\nx\r\n"),
        ("junk after a size, after a good chunk", "4\r\nabcd\r\n", "4x\r\nabcd\r\n"),
        ("more data than the size", "", "4\r\nabcdef\r\n0\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, valid, broken)| {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{valid}{broken}{SMUGGLED}"
        );
        row(format!("broken chunks: {name}"), "", request, Expect::Cut)
    })
    .collect()
}

/// Sends a row's request to a gatehouse of its own and checks what happened.
fn check(row: &Row) {
    let (proxy, origin) = proxied(row.security);
    let (answered, closed) = send_raw(proxy.addr, &row.request);
    match &row.expect {
        Expect::Refused(status) => {
            assert_eq!(answered, Some(*status), "the answer");
            assert!(closed, "the connection stayed open");
            nothing_reached_since(&proxy, &origin, 0, &row.name);
        }
        Expect::Cut => {
            assert_eq!(answered, None, "the answer");
            assert!(closed, "the connection stayed open");
            nothing_whole_reached(&proxy, &origin);
        }
        Expect::Forwarded(lines) => {
            assert_eq!(answered, Some(200), "the answer");
            let heads = origin.heads();
            assert_eq!(heads.len(), 1, "the origin received {heads:?}");
            let head = &heads[0];
            if let Some((first, rest)) = lines.split_first() {
                assert!(head.starts_with(first.as_str()), "{head:?}");
                assert!(
                    rest.iter().all(|line| head.contains(line.as_str())),
                    "{head:?}"
                );
            }
            assert!(
                head.split_inclusive('\n')
                    .all(|line| line.ends_with("\r\n")),
                "a line without CR: {head:?}"
            );
        }
    }
}

/// The text of a panic's payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default()
}

#[test]
fn each_request_a_server_could_read_otherwise_is_refused_cut_or_forwarded_as_its_row_says() {
    let rows: Vec<Row> = [
        framing_rows(),
        malformed_head_rows(),
        absolute_target_rows(),
        request_line_rows(),
        dot_segment_rows(),
        line_end_rows(),
        broken_chunk_rows(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| check(row)));
            outcome
                .err()
                .map(|payload| format!("{}: {}", row.name, panic_text(payload)))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}

#[test]
fn a_chunk_broken_after_the_head_was_forwarded_never_completes_a_request() {
    let (proxy, origin) = proxied("");
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Enough body for the upstream connection's write buffer to be flushed.
    conn.send(format!("10000\r\n{}\r\n", "b".repeat(0x10000)).as_bytes());
    wait_until("the head reaches the origin", || !origin.heads().is_empty());
    let _ = conn
        .stream()
        .write_all(format!("zz\r\n0\r\n\r\n{SMUGGLED}").as_bytes());
    // Seen while the body streams, the fault reaches gatehouse, which answers 400 when
    // actix-http lets it before closing.
    let answer = conn.try_read(false).ok().map(|response| response.status);
    assert!(matches!(answer, None | Some(400)), "{answer:?}");
    assert!(conn.closed_by_peer());
    nothing_whole_reached(&proxy, &origin);
}

#[test]
fn strict_refusals_are_in_the_access_log() {
    let origin = RawOrigin::ok();
    let toml = one_pool(&[origin.addr], "")
        .change("log.access", "combined")
        .add(
            "security",
            "reject_dot_segments = true\nmax_request_line = \"1KiB\"\n\
             client_body_timeout = \"300ms\"",
        );
    let process = Process::start(toml);
    let long = "l".repeat(2000);
    for request in [
        "GET /a/%2e%2e/b HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
        "GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
        format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n"),
        "POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc".to_string(),
    ] {
        let _ = send_raw(process.addr, request.as_bytes());
    }
    let lines = process.stdout_until_exit();
    for (target, status) in [
        ("GET /a/%2e%2e/b HTTP/1.1\" 400 ", 400),
        ("GET / HTTP/1.1\" 400 ", 400),
        ("\" 414 ", 414),
        ("POST /slow HTTP/1.1\" 408 ", 408),
    ] {
        assert!(
            lines.iter().any(|line| line.contains(target)),
            "no {status} line like {target:?} in {lines:#?}"
        );
    }
    assert!(origin.heads().is_empty(), "{:?}", origin.heads());
}

/// Settings for the slow-client tests: a short `client_header_timeout` and `[security]`.
fn slow_proxy(origin: &RawOrigin, security: &str) -> Proxy {
    let toml = one_pool(&[origin.addr], "")
        .set("server.client_header_timeout", "1s")
        .add("security", security);
    Proxy::from_toml(toml)
}

#[test]
fn slowloris_connections_are_closed_and_do_not_delay_other_clients() {
    const SLOW: usize = 200;
    let origin = RawOrigin::ok();
    let proxy = slow_proxy(&origin, "");
    let head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let stream = TcpStream::connect(proxy.addr).expect("connect");
            stream.set_nodelay(true).unwrap();
            stream
        })
        .collect();
    // One thread trickles a byte on every slow connection about every 300 ms, bounded.
    let trickler = thread::spawn(move || {
        let mut closed = vec![false; SLOW];
        for byte in head.iter().take(15) {
            for (stream, closed) in slow.iter_mut().zip(&mut closed) {
                if !*closed && stream.write_all(&[*byte]).is_err() {
                    *closed = true;
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
        slow
    });
    thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let response = get(proxy.addr, "/fast");
    assert_eq!(response.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a normal request took {:?} beside {SLOW} slow ones",
        asked.elapsed()
    );
    let slow = trickler.join().unwrap();
    for mut stream in slow {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        assert!(
            read.is_ok() || read.is_err_and(|err| err.kind() == ErrorKind::ConnectionReset),
            "a slow connection was not closed"
        );
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // All were closed at client_header_timeout, long before they would have finished.
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "{:?}",
        opened.elapsed()
    );
    let heads = origin.heads();
    assert!(
        heads.len() == 1 && heads[0].starts_with("GET /fast "),
        "{heads:?}"
    );
}

/// Sends a request head and then `body` in pieces of `piece` bytes every `every`, until
/// gatehouse answers or the body is sent; the answer, and when it came.
fn trickle_body(
    proxy: SocketAddr,
    head: &str,
    body: &[u8],
    piece: usize,
    every: Duration,
) -> (Option<u16>, Duration) {
    let mut conn = Conn::open(proxy);
    conn.send(head.as_bytes());
    let started = Instant::now();
    conn.stream()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut peek = [0u8; 1];
    for piece in body.chunks(piece) {
        // Stop once gatehouse has answered or closed.
        match conn.stream().peek(&mut peek) {
            Ok(_) => break,
            Err(err)
                if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if conn.stream().write_all(piece).is_err() {
            break;
        }
        thread::sleep(every);
    }
    conn.stream().set_read_timeout(Some(DEADLINE)).unwrap();
    let status = conn.try_read(false).ok().map(|r| r.status);
    let elapsed = started.elapsed();
    assert!(conn.closed_by_peer());
    (status, elapsed)
}

#[test]
fn a_body_pausing_beyond_client_body_timeout_gets_408_and_nothing_reaches_the_origin() {
    let origin = RawOrigin::ok();
    let proxy = slow_proxy(&origin, "client_body_timeout = \"500ms\"");
    // A small body with a length is read whole before a server is picked.
    let mut conn = Conn::open(proxy.addr);
    let started = Instant::now();
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf");
    let response = conn.read(false);
    assert_eq!(response.status, 408);
    assert!(conn.closed_by_peer());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    nothing_reached_since(&proxy, &origin, 0, "a stalled body");
}

#[test]
fn a_streamed_body_below_min_body_rate_gets_408_and_the_origin_gets_no_whole_request() {
    let origin = RawOrigin::ok();
    let proxy = slow_proxy(
        &origin,
        "client_body_timeout = \"1s\"\nmin_body_rate = \"1KiB\"",
    );
    // Chunked, so it streams to the server as it arrives; 6-byte chunks every 100 ms are
    // about 60 bytes a second, never pausing a whole client_body_timeout.
    let chunk = b"1\r\nx\r\n".repeat(200);
    let (status, took) = trickle_body(
        proxy.addr,
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        &chunk,
        6,
        Duration::from_millis(100),
    );
    assert_eq!(status, Some(408));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(get(proxy.addr, "/after").status, 200);
    let whole: Vec<String> = origin
        .complete()
        .into_iter()
        .map(|(head, _)| head)
        .collect();
    assert!(
        whole.len() == 1 && whole[0].starts_with("GET /after "),
        "the origin received whole {whole:?}"
    );
}

#[test]
fn a_steady_body_above_min_body_rate_passes() {
    let origin = RawOrigin::ok();
    let proxy = slow_proxy(
        &origin,
        "client_body_timeout = \"500ms\"\nmin_body_rate = \"100\"",
    );
    // 50 bytes every 100 ms for 1.5 s: about 500 bytes a second.
    let body = vec![b'b'; 750];
    let (status, _) = trickle_body(
        proxy.addr,
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 750\r\nConnection: close\r\n\r\n",
        &body,
        50,
        Duration::from_millis(100),
    );
    assert_eq!(status, Some(200));
    let whole = origin.complete();
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].1, body);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_send_timeout() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.send_timeout", "1s");
    let proxy = Proxy::from_toml(toml);
    const TOTAL: usize = 200 * 1024 * 1024;
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    write!(
        stream,
        "GET /bytes/{TOTAL}?sized=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    .unwrap();
    // Far more than the socket buffers hold is on its way; the client takes none of it for
    // three times send_timeout.
    thread::sleep(Duration::from_secs(3));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut received = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => received += n,
            Err(err)
                if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::TimedOut =>
            {
                panic!("the connection is still open after {received} bytes")
            }
            Err(_) => break "reset",
        }
    };
    assert!(
        received < TOTAL,
        "the whole response arrived ({ended}): the stalled client was not disconnected"
    );
}
