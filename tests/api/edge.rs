//! The edge's connection checks: the PROXY protocol, allow/deny at connection level, the
//! per-client connection limit, and runtime blocks through the admin API.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::helpers::*;

const CLIENT_A: &str = "127.0.0.2";
const CLIENT_B: &str = "127.0.0.3";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// One pool `web` of `origin` behind a listener on port 0, with extra `[server]` keys and
/// extra sections after.
fn edge_settings(origin: SocketAddr, server: &str, extra: &str) -> Toml {
    one_pool(&[origin], "").extend(&format!("[server]\n{server}\n{extra}"))
}

const ECHO: &str = "GET /echo HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";

/// What the origin saw of a request sent as `raw` bytes on a fresh connection.
fn echo_raw(addr: SocketAddr, raw: &[u8]) -> Echo {
    let mut conn = Conn::open(addr);
    conn.send(raw);
    let response = conn.read(false);
    assert_eq!(response.status, 200, "{}", response.text());
    Echo(response.json())
}

/// A PROXY protocol v2 header (`PROXY` command, TCP over IPv4, or `LOCAL`).
fn v2_header(source: Option<([u8; 4], u16)>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match source {
        Some((address, port)) => {
            header.extend([0x21, 0x11, 0, 12]);
            header.extend(address);
            header.extend([127, 0, 0, 1]);
            header.extend(port.to_be_bytes());
            header.extend(80u16.to_be_bytes());
        }
        None => header.extend([0x20, 0x00, 0, 0]),
    }
    header
}

/// A GET /name from `source` on a fresh connection: its status, or `None` when the
/// connection was closed without a response.
fn status_from(source: &str, addr: SocketAddr) -> Option<u16> {
    let mut stream = connect_from(ip(source), addr);
    // The write may fail when the connection is already closed; the read tells.
    let _ = stream.write_all(b"GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    if closed_without_response(&mut stream) {
        return None;
    }
    Some(Conn::from_stream(stream).read(false).status)
}

/// A keep-alive connection from `source` that has been served once, so the listener has
/// accepted and counted it.
fn served_connection(source: &str, addr: SocketAddr) -> Conn {
    let mut conn = Conn::from_stream(connect_from(ip(source), addr));
    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(conn.read(false).status, 200);
    conn
}

#[test]
fn a_proxy_protocol_v1_header_names_the_client_and_the_request_after_it_is_served() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(origin.addr, "proxy_protocol = true", ""));
    // Header and request in one write: the bytes after the header must reach HTTP.
    let raw = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n{ECHO}");
    let echo = echo_raw(proxy.addr, raw.as_bytes());
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );
    let raw = format!("PROXY TCP6 2001:db8::9 ::1 40000 80\r\n{ECHO}");
    let echo = echo_raw(proxy.addr, raw.as_bytes());
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("2001:db8::9")
    );
    // UNKNOWN keeps the TCP peer.
    let raw = format!("PROXY UNKNOWN\r\n{ECHO}");
    let echo = echo_raw(proxy.addr, raw.as_bytes());
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[test]
fn a_proxy_protocol_v2_header_names_the_client_even_split_across_packets() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(origin.addr, "proxy_protocol = true", ""));
    let mut raw = v2_header(Some(([198, 51, 100, 7], 40000)));
    raw.extend(ECHO.as_bytes());
    let echo = echo_raw(proxy.addr, &raw);
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("198.51.100.7")
    );

    let mut conn = Conn::open(proxy.addr);
    conn.send(&raw[..10]);
    thread::sleep(Duration::from_millis(50));
    conn.send(&raw[10..]);
    let echo = Echo(conn.read(false).json());
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("198.51.100.7")
    );

    // LOCAL (the balancer's own health check) keeps the TCP peer.
    let mut local = v2_header(None);
    local.extend(ECHO.as_bytes());
    let echo = echo_raw(proxy.addr, &local);
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[test]
fn a_connection_without_a_proxy_protocol_header_is_closed_without_a_response() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(origin.addr, "proxy_protocol = true", ""));
    for bad in [
        ECHO.to_string(),
        format!("PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n{ECHO}"),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        let _ = stream.write_all(bad.as_bytes());
        assert!(closed_without_response(&mut stream), "{bad:?} was answered");
    }
    assert_eq!(origin.hits(), 0);
    // A well-formed header still works on the same listener.
    let raw = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n{ECHO}");
    assert_eq!(
        echo_raw(proxy.addr, raw.as_bytes()).header("x-forwarded-for"),
        Some("203.0.113.9".into())
    );
}

#[test]
fn connection_level_deny_uses_the_address_from_the_proxy_protocol_header() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(
        origin.addr,
        "proxy_protocol = true",
        "[security]\ndeny = [\"203.0.113.0/24\"]\n",
    ));
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let _ = stream.write_all(format!("PROXY TCP4 203.0.113.9 127.0.0.1 1 80\r\n{ECHO}").as_bytes());
    assert!(closed_without_response(&mut stream));
    let raw = format!("PROXY TCP4 198.51.100.1 127.0.0.1 1 80\r\n{ECHO}");
    echo_raw(proxy.addr, raw.as_bytes());
    assert_eq!(origin.hits(), 1);
}

#[test]
fn a_client_over_its_connection_limit_is_closed_and_others_are_unaffected() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(
        origin.addr,
        "",
        "[security]\nmax_connections_per_client = 2\n",
    ));
    let first = served_connection(CLIENT_A, proxy.addr);
    let mut second = served_connection(CLIENT_A, proxy.addr);
    assert_eq!(status_from(CLIENT_A, proxy.addr), None, "third is closed");
    assert_eq!(status_from(CLIENT_B, proxy.addr), Some(200));
    let mut other = served_connection(CLIENT_B, proxy.addr);
    // Closing one makes room; the server learns of the close asynchronously.
    drop(first);
    wait_until("a connection from 127.0.0.2 is served again", || {
        status_from(CLIENT_A, proxy.addr) == Some(200)
    });
    for conn in [&mut second, &mut other] {
        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(conn.read(false).status, 200);
    }
}

#[test]
fn a_denied_client_is_closed_at_connection_level() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(
        origin.addr,
        "",
        &format!("[security]\ndeny = [\"{CLIENT_A}\"]\n"),
    ));
    assert_eq!(status_from(CLIENT_A, proxy.addr), None);
    assert_eq!(status_from(CLIENT_B, proxy.addr), Some(200));
    assert_eq!(origin.hits(), 1);
}

#[test]
fn ipv6_clients_are_allowed_and_denied_at_connection_level() {
    if TcpListener::bind("[::1]:0").is_err() {
        // Containers without IPv6 have no ::1; the IPv4 tests cover the same code.
        eprintln!("skipped: ::1 is not available on this machine");
        return;
    }
    let origin = Origin::start("web");
    let both = vec!["127.0.0.1:0", "[::1]:0"];
    let settings = edge_settings(origin.addr, "", "[security]\nallow = [\"::1\"]\n")
        .change("server.listen", both.clone());
    let allowed = Proxy::from_toml(&settings);
    let (v4, v6) = (allowed.listeners[0], allowed.listeners[1]);
    assert!(v6.is_ipv6());
    assert_eq!(status_from("::1", v6), Some(200));
    assert_eq!(status_from("127.0.0.1", v4), None, "only ::1 is allowed");

    let settings = edge_settings(origin.addr, "", "[security]\ndeny = [\"::1/128\"]\n")
        .change("server.listen", both);
    let denied = Proxy::from_toml(&settings);
    assert_eq!(status_from("::1", denied.listeners[1]), None);
    assert_eq!(status_from("127.0.0.1", denied.listeners[0]), Some(200));
}

#[test]
fn deny_action_403_answers_denied_clients_with_forbidden() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(
        origin.addr,
        "",
        &format!("[security]\ndeny = [\"{CLIENT_A}\"]\ndeny_action = \"403\"\n"),
    ));
    assert_eq!(status_from(CLIENT_A, proxy.addr), Some(403));
    assert_eq!(status_from(CLIENT_B, proxy.addr), Some(200));
    assert_eq!(origin.hits(), 1);
}

/// When the block expires, and that it is then gone from the list: `security::access`'s unit
/// tests, on explicit times.
#[test]
fn a_runtime_block_closes_new_connections_for_its_ttl() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(origin.addr, "", ""));
    let mut open = served_connection(CLIENT_A, proxy.addr);
    let response = admin_call(
        proxy.admin,
        "POST",
        "/security/deny",
        &format!("{{\"cidr\": \"{CLIENT_A}\", \"ttl\": \"60s\"}}"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["cidr"], "127.0.0.2/32");
    assert_eq!(
        status_from(CLIENT_A, proxy.addr),
        None,
        "new connection closed"
    );
    open.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        open.read(false).status,
        403,
        "open connection refused per request"
    );
    assert_eq!(status_from(CLIENT_B, proxy.addr), Some(200));
    let listed = admin_call(proxy.admin, "GET", "/security/deny", "").json();
    let blocks = listed["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{listed}");
    assert_eq!(blocks[0]["cidr"], "127.0.0.2/32");
    let left = blocks[0]["seconds_left"].as_u64();
    assert!(left.is_some_and(|s| (50..=60).contains(&s)), "{listed}");
}

#[test]
fn delete_lifts_a_runtime_block() {
    let origin = Origin::start("web");
    let proxy = Proxy::from_toml(edge_settings(origin.addr, "", ""));
    let block = || {
        let response = admin_call(
            proxy.admin,
            "POST",
            "/security/deny",
            "{\"cidr\": \"127.0.0.2/31\"}",
        );
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(status_from(CLIENT_A, proxy.addr), None);
        assert_eq!(status_from(CLIENT_B, proxy.addr), None);
    };
    block();
    let listed = admin_call(proxy.admin, "GET", "/security/deny", "").json();
    assert_eq!(
        listed["blocks"],
        serde_json::json!([{ "cidr": "127.0.0.2/31", "seconds_left": null }])
    );
    for path in [
        "/security/deny/127.0.0.2%2F31",
        "/security/deny/127.0.0.2/31",
    ] {
        let response = admin_call(proxy.admin, "DELETE", path, "");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(status_from(CLIENT_A, proxy.addr), Some(200));
        assert_eq!(status_from(CLIENT_B, proxy.addr), Some(200));
        let again = admin_call(proxy.admin, "DELETE", path, "");
        assert_eq!(again.status, 404, "{}", again.text());
        block();
    }
    for bad in [
        "{\"cidr\": \"nonsense\"}",
        "{\"cidr\": \"127.0.0.2\", \"ttl\": \"0s\"}",
        "{\"cidr\": \"127.0.0.2\", \"ttl\": \"soon\"}",
        "{\"cidr\": \"127.0.0.2\", \"until\": \"10s\"}",
    ] {
        let response = admin_call(proxy.admin, "POST", "/security/deny", bad);
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
    }
}

#[test]
fn runtime_blocks_survive_a_reload_that_restarts_the_listener() {
    let origin = Origin::start("web");
    let mut process = Process::start(edge_settings(origin.addr, "", ""));
    let response = admin_call(
        process.admin,
        "POST",
        "/security/deny",
        &format!("{{\"cidr\": \"{CLIENT_A}\"}}"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(status_from(CLIENT_A, process.addr), None);
    // A new keep_alive needs a new listener, on the same socket.
    std::fs::write(
        &process.config,
        edge_settings(origin.addr, "keep_alive = \"30s\"", "").to_string(),
    )
    .unwrap();
    let reloaded = admin_call(process.admin, "POST", "/reload", "");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(status_from(CLIENT_A, process.addr), None, "still blocked");
    assert_eq!(status_from(CLIENT_B, process.addr), Some(200));
    let listed = admin_call(process.admin, "GET", "/security/deny", "").json();
    assert_eq!(listed["blocks"].as_array().unwrap().len(), 1, "{listed}");
    process.signal(libc::SIGTERM);
    assert_eq!(process.wait(), Some(0));
}
