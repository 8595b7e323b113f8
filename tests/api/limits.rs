//! Limits: header size, body size, slow request heads, idle and total connections.

use std::io::Write;
use std::time::Duration;

use crate::helpers::*;

#[test]
fn a_request_head_over_the_limit_gets_431() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.max_request_header_size", "2KiB");
    let proxy = Proxy::from_toml(toml);
    let big = "x".repeat(3000);
    let response = raw(
        proxy.addr,
        &format!("GET /name HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(response.status, 431);
    assert_eq!(origin.hits(), 0);
    assert_eq!(get(proxy.addr, "/name").status, 200);
}

fn limited_proxy(origin: &Origin) -> Proxy {
    let toml = one_pool(&[origin.addr], "").set("routes.0.max_body_size", "1KiB");
    Proxy::from_toml(toml)
}

#[test]
fn a_declared_body_over_the_limit_gets_413_before_anything_is_forwarded() {
    let origin = Origin::start("app");
    let proxy = limited_proxy(&origin);
    let response = raw(
        proxy.addr,
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(response.status, 413);
    assert_eq!(origin.hits(), 0);
}

#[test]
fn a_chunked_body_over_the_limit_gets_413_while_streaming() {
    let origin = Origin::start("app");
    let proxy = limited_proxy(&origin);
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("400\r\n{}\r\n", "y".repeat(1024));
    for _ in 0..3 {
        if conn.stream().write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = conn.stream().write_all(b"0\r\n\r\n");
    let response = conn.read(false);
    assert_eq!(response.status, 413);
}

#[test]
fn a_body_within_the_limit_passes() {
    let origin = Origin::start("app");
    let proxy = limited_proxy(&origin);
    let body = "z".repeat(1024);
    let response = raw(
        proxy.addr,
        &format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{body}"),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], 1024);
}

#[test]
fn a_request_head_that_arrives_too_slowly_gets_408_and_close() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.client_header_timeout", "500ms");
    let proxy = Proxy::from_toml(toml);
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n");
    let response = conn.read(false);
    assert_eq!(response.status, 408);
    assert!(conn.closed_by_peer());
    assert_eq!(origin.hits(), 0);
}

#[test]
fn idle_keep_alive_connections_are_closed_after_keep_alive() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.keep_alive", "500ms");
    let proxy = Proxy::from_toml(toml);
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(conn.read(false).text(), "app");
    assert!(
        conn.closed_by_peer(),
        "the idle connection should be closed by gatehouse"
    );
}

#[test]
fn connections_beyond_max_connections_wait_until_one_closes() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.max_connections", 2);
    let proxy = Proxy::from_toml(toml);
    let mut first = Conn::open(proxy.addr);
    let mut second = Conn::open(proxy.addr);
    for conn in [&mut first, &mut second] {
        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(conn.read(false).text(), "app");
    }
    let mut third = Conn::open(proxy.addr);
    third
        .stream()
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    third.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        third.try_read(false).is_err(),
        "a third connection was served at the limit"
    );
    drop(first);
    third.stream().set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(third.read(false).text(), "app");
}
