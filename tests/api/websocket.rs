//! WebSocket upgrades relayed both ways until either side closes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use tungstenite::Message;

use crate::helpers::*;

/// A WebSocket echo server (tungstenite) that also echoes the request's `X-Forwarded-For`
/// as its first message.
// The handshake callback's error type is tungstenite's own, large by its design.
#[allow(clippy::result_large_err)]
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || {
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

#[test]
fn websocket_messages_are_relayed_both_ways_until_close() {
    let server = echo_server();
    let proxy = Proxy::from_toml(&one_pool(&[server], ""));
    let stream = TcpStream::connect(proxy.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let url = format!("ws://{}/chat", proxy.addr);
    let (mut socket, response) = tungstenite::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(socket.read().unwrap(), Message::text("xff=127.0.0.1"));
    for i in 0..10 {
        socket.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 200_000];
    socket.send(Message::binary(big.clone())).unwrap();
    assert_eq!(socket.read().unwrap(), Message::binary(big));
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
