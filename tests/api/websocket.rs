//! WebSocket upgrades relayed both ways until either side closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use tungstenite::Message;

use crate::helpers::*;

/// A WebSocket echo server (tungstenite) that also echoes the request's `X-Forwarded-For`
/// as its first message.
fn echo_server() -> SocketAddr {
    echo_server_over(Some)
}

/// [`echo_server`] over what `wrap` makes of each accepted connection (a TLS handshake,
/// say); a connection it turns down is closed.
// The handshake callback's error type is tungstenite's own, large by its design.
#[allow(clippy::result_large_err)]
pub fn echo_server_over<S, W>(wrap: W) -> SocketAddr
where
    S: Read + Write,
    W: Fn(TcpStream) -> Option<S> + Send + Sync + 'static,
{
    let wrap = Arc::new(wrap);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let wrap = wrap.clone();
            thread::spawn(move || {
                let Some(stream) = wrap(stream) else { return };
                let mut forwarded_for = String::new();
                let callback =
                    |req: &tungstenite::handshake::server::Request,
                     res: tungstenite::handshake::server::Response| {
                        forwarded_for = req
                            .headers()
                            .get("x-forwarded-for")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        Ok(res)
                    };
                let Ok(mut socket) = tungstenite::accept_hdr(stream, callback) else {
                    return;
                };
                let _ = socket.send(Message::text(format!("xff={forwarded_for}")));
                while let Ok(message) = socket.read() {
                    if message.is_close() {
                        return;
                    }
                    if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Checks the echo server's greeting (the client address it was sent), ten text messages and
/// a 200 KB binary one, each echoed whole through the relay.
pub(crate) fn echoes<S: Read + Write>(socket: &mut tungstenite::WebSocket<S>) {
    assert_eq!(socket.read().unwrap(), Message::text("xff=127.0.0.1"));
    for i in 0..10 {
        socket.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 200_000];
    socket.send(Message::binary(big.clone())).unwrap();
    assert_eq!(socket.read().unwrap(), Message::binary(big));
}

#[test]
fn websocket_messages_are_relayed_both_ways_until_close() {
    let server = echo_server();
    let proxy = Proxy::from_toml(&one_pool(&[server], ""));
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
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], ""));
    let response = raw(
        proxy.addr,
        "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(response.status, 403);
    assert_eq!(response.text(), "denied");
    assert_eq!(response.header("x-reason"), Some("nope"));
    let seen = origin.requests.lock().unwrap().join("");
    assert!(seen.to_lowercase().contains("upgrade: websocket"), "{seen}");
}

/// The pool's in-flight count, from the admin API.
fn in_flight(proxy: &Proxy) -> u64 {
    let response = raw(
        proxy.admin,
        "GET /pools/web HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            thread::sleep(DEADLINE + DEADLINE);
        }
    });
    let proxy = Proxy::from_toml(&one_pool(&[server], ""));
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut conn.stream, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    assert_eq!(in_flight(&proxy), 1);
    // The client is done sending (a half-close) but still reading.
    conn.stream.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for_nothing_in_flight(&proxy);
    drop(conn);
}

#[test]
fn a_refused_upgrade_ends_at_its_length_and_frees_the_server() {
    let origin = RawOrigin::start(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied");
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], "response_timeout = \"60s\"\n"));
    // The client stays connected after reading the refusal.
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(conn.read(false).text(), "denied");
    wait_for_nothing_in_flight(&proxy);
    drop(conn);
    let pool = raw(
        proxy.admin,
        "GET /pools/web HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(pool.json()["servers"][0]["failures"], 0);
}
