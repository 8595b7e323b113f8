//! WebSocket upgrades relayed both ways until either side closes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use tungstenite::Message;

use crate::helpers::*;

#[test]
fn websocket_messages_are_relayed_both_ways_until_close() {
    let server = WebSocketOrigin::start();
    let proxy = Proxy::from_toml(one_pool(&[server.addr], ""));
    let stream = TcpStream::connect(proxy.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let url = format!("ws://{}/chat", proxy.addr);
    let (mut socket, response) = tungstenite::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    echoes(&mut socket);
    socket.close(None).unwrap();
    loop {
        match socket.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[test]
fn a_refused_upgrade_returns_the_servers_answer() {
    let origin = RawOrigin::start(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Reason: nope\r\n\r\ndenied",
    );
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = raw(
        proxy.addr,
        "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(response.status, 403);
    assert_eq!(response.text(), "denied");
    assert_eq!(response.header("x-reason"), Some("nope"));
    let seen = origin.heads().join("");
    assert!(seen.to_lowercase().contains("upgrade: websocket"), "{seen}");
}

/// The pool's in-flight count, from the admin API.
fn in_flight(proxy: &Proxy) -> u64 {
    let response = admin_call(proxy.admin, "GET", "/pools/web", "");
    response.json()["servers"][0]["in_flight"].as_u64().unwrap()
}

/// Waits, up to the deadline, for the pool to have nothing in flight.
fn wait_for_nothing_in_flight(proxy: &Proxy) {
    let started = std::time::Instant::now();
    while in_flight(proxy) != 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the relay still holds its server"
        );
        thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_relay_ends_when_the_client_closes_even_if_the_server_stays() {
    // A server that switches protocols and then holds the connection, reading nothing.
    let server = spawn(Serve::connections(|mut stream| {
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head);
        let _ = stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        thread::sleep(DEADLINE + DEADLINE);
    }));
    let proxy = Proxy::from_toml(one_pool(&[server.addr], ""));
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let mut head = [0u8; 12];
    conn.stream().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    assert_eq!(in_flight(&proxy), 1);
    // The client is done sending (a half-close) but still reading.
    conn.stream().shutdown(std::net::Shutdown::Write).unwrap();
    wait_for_nothing_in_flight(&proxy);
    drop(conn);
}

#[test]
fn a_refused_upgrade_ends_at_its_length_and_frees_the_server() {
    let origin = RawOrigin::start(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], "response_timeout = \"60s\"\n"));
    // The client stays connected after reading the refusal.
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(conn.read(false).text(), "denied");
    wait_for_nothing_in_flight(&proxy);
    drop(conn);
    let pool = admin_call(proxy.admin, "GET", "/pools/web", "");
    assert_eq!(pool.json()["servers"][0]["failures"], 0);
}
