//! Strict parsing and slow clients: requests a server could read differently from gatehouse
//! are refused before anything reaches a server, and slow clients are cut off.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// Asserts that gatehouse refused `request` with `status` and closed the connection, and that
/// the origin received nothing from it: a request sent afterwards is the first and only one
/// the origin sees.
fn refused(proxy: &Proxy, origin: &RawOrigin, request: &[u8], status: u16) {
    let shown = String::from_utf8_lossy(request);
    let seen = origin.heads().len();
    let (answered, closed) = send_raw(proxy.addr, request);
    assert_eq!(answered, Some(status), "{shown:?}");
    assert!(closed, "the connection stayed open after {shown:?}");
    nothing_reached_since(proxy, origin, seen, &shown);
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

/// A request smuggled after an ambiguous body, which a server reading the framing another way
/// would take for a second request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn conflicting_or_unknown_framing_is_refused_with_400() {
    let (proxy, origin) = proxied("");
    let framings = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 4\r\nContent-Length: 40\r\n",
        "Content-Length: 4, 40\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
        "Content-Length: +4\r\n",
        "Content-Length: -1\r\n",
    ];
    for framing in framings {
        let request =
            format!("POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\n0\r\n\r\n{SMUGGLED}");
        refused(&proxy, &origin, request.as_bytes(), 400);
    }
}

#[test]
fn malformed_heads_are_refused_with_400() {
    let (proxy, origin) = proxied("");
    let heads: [&[u8]; 10] = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET@ / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /\r\n\r\n",
    ];
    for head in heads {
        refused(&proxy, &origin, head, 400);
    }
}

#[test]
fn an_absolute_target_naming_another_host_than_host_is_refused() {
    let (proxy, origin) = proxied("");
    refused(
        &proxy,
        &origin,
        b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    );
    refused(
        &proxy,
        &origin,
        b"GET http://a:8080/ HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    );
    // The same host, in another case and with the default port spelled out, is the same.
    let response = raw(
        proxy.addr,
        "GET http://A:80/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let last = origin.heads().pop().unwrap();
    assert!(last.starts_with("GET /ok HTTP/1.1\r\n"), "{last:?}");
}

#[test]
fn a_request_line_over_max_request_line_gets_414() {
    let (proxy, origin) = proxied("max_request_line = \"1KiB\"");
    // The whole line counts: "GET " + target + " HTTP/1.1" is 1,024 bytes here.
    let fits = format!("/{}", "a".repeat(1024 - 14));
    let response = raw(
        proxy.addr,
        &format!("GET {fits} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(response.status, 200);
    assert_eq!(origin.heads().len(), 1);
    let (proxy, origin) = proxied("max_request_line = \"1KiB\"");
    let over = format!("{fits}a");
    refused(
        &proxy,
        &origin,
        format!("GET {over} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        414,
    );
}

#[test]
fn a_20000_byte_path_gets_414_by_default() {
    let (proxy, origin) = proxied("");
    let path = format!("/{}", "p".repeat(20_000));
    refused(
        &proxy,
        &origin,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        414,
    );
}

#[test]
fn dot_segments_in_any_spelling_are_refused_when_asked() {
    let (proxy, origin) = proxied("reject_dot_segments = true");
    for target in [
        "/../etc/passwd",
        "/static/../admin",
        "/static/%2e%2e/admin",
        "/static/.%2E/admin",
        "/static/%2E./admin",
        "/static/..%2fadmin",
        "/static/..;/admin",
        "/static/..",
    ] {
        refused(
            &proxy,
            &origin,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            400,
        );
    }
    // Dots in names and in the query are not segments.
    for target in ["/a/.../b", "/a/..b", "/a/b?next=../c", "/.well-known/x"] {
        let response = raw(
            proxy.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(response.status, 200, "{target}");
    }
}

#[test]
fn without_reject_dot_segments_the_path_is_forwarded_byte_for_byte() {
    let (proxy, origin) = proxied("");
    let response = raw(
        proxy.addr,
        "GET /static/%2e%2e/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert!(origin.heads()[0].starts_with("GET /static/%2e%2e/x HTTP/1.1\r\n"));
}

#[test]
fn lines_ending_in_a_bare_lf_are_forwarded_with_crlf() {
    let (proxy, origin) = proxied("");
    let response = raw(
        proxy.addr,
        "GET /lf HTTP/1.1\nHost: a\nX-Lf: 1\nConnection: close\n\n",
    );
    assert_eq!(response.status, 200);
    let head = &origin.heads()[0];
    assert!(head.starts_with("GET /lf HTTP/1.1\r\n"), "{head:?}");
    assert!(
        head.contains("x-lf: 1\r\n") && !head.replace("\r\n", "").contains('\n'),
        "{head:?}"
    );
}

/// A chunked POST whose chunk stream is broken after `valid` good chunks; what the origin
/// received whole is returned.
fn broken_chunks(valid: &str, broken: &str) -> (Option<u16>, bool, RawOrigin) {
    let (proxy, origin) = proxied("");
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{valid}{broken}{SMUGGLED}"
    );
    let (status, closed) = send_raw(proxy.addr, request.as_bytes());
    // Whatever reached the origin has arrived by the time a later request is answered.
    assert_eq!(get(proxy.addr, "/after").status, 200);
    (status, closed, origin)
}

#[test]
fn broken_chunk_sizes_close_the_connection_and_nothing_whole_reaches_the_origin() {
    for (valid, broken) in [
        ("", "zz\r\n"),
        ("", "-1\r\n"),
        ("", "ffffffffffffffffffff\r\nx\r\n"),
        ("4\r\nabcd\r\n", "4x\r\nabcd\r\n"),
        ("", "4\r\nabcdef\r\n0\r\n\r\n"),
    ] {
        let (status, closed, origin) = broken_chunks(valid, broken);
        assert!(closed, "{broken:?}");
        // actix-http takes a broken chunk for a broken connection and closes it unanswered.
        assert_eq!(status, None, "{broken:?}");
        let whole: Vec<String> = origin
            .complete()
            .into_iter()
            .map(|(head, _)| head)
            .collect();
        assert!(
            whole.len() == 1 && whole[0].starts_with("GET /after "),
            "{broken:?}: the origin received whole {whole:?}"
        );
        assert!(
            origin
                .heads()
                .iter()
                .all(|head| !head.contains("/smuggled")),
            "{broken:?}"
        );
    }
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
    assert!(origin
        .heads()
        .iter()
        .all(|head| !head.contains("/smuggled")));
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
