//! A WebSocket echo origin (tungstenite), over TCP or TLS, and the exchange that checks a
//! relay to it end to end.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use openssl::ssl::NameType;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

use super::{spawn, Serve, Spawned};
use crate::helpers::{tls_acceptor, Authority, Issued, DEADLINE};

/// A WebSocket echo server that also sends the request's `X-Forwarded-For` as its first
/// message.
pub struct WebSocketOrigin {
    pub addr: SocketAddr,
    names: Arc<Mutex<Vec<Option<String>>>>,
    _server: Spawned,
}

impl WebSocketOrigin {
    /// The echo server on plain TCP.
    pub fn start() -> Self {
        let server = spawn(Serve::connections(echo_session));
        Self {
            addr: server.addr,
            names: Arc::default(),
            _server: server,
        }
    }

    /// The echo server over TLS with `identity`; with `client_ca`, a client certificate from
    /// that CA is required. A connection whose handshake fails is closed.
    pub fn over_tls(identity: &Issued, client_ca: Option<&Authority>) -> Self {
        let acceptor = tls_acceptor(identity, client_ca);
        let names: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = names.clone();
        let server = spawn(Serve::connections(move |tcp| {
            let _ = tcp.set_read_timeout(Some(DEADLINE));
            let Ok(tls) = acceptor.accept(tcp) else {
                return;
            };
            let sni = tls
                .ssl()
                .servername(NameType::HOST_NAME)
                .map(str::to_string);
            seen.lock().unwrap().push(sni);
            echo_session(tls);
        }));
        Self {
            addr: server.addr,
            names,
            _server: server,
        }
    }

    /// The SNI name of each TLS handshake that completed (`None`: the client sent none).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.names.lock().unwrap().clone()
    }
}

/// Accepts the upgrade, greets with the client address, then echoes every message until the
/// client closes.
// The handshake callback's error type is tungstenite's own, large by its design.
#[allow(clippy::result_large_err)]
fn echo_session<S: Read + Write>(stream: S) {
    let mut forwarded_for = String::new();
    let callback = |req: &Request, res: Response| {
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
}

/// Checks the echo server's greeting (the client address it was sent), ten text messages and
/// a 200 KB binary one, each echoed whole through the relay.
pub fn echoes<S: Read + Write>(socket: &mut WebSocket<S>) {
    assert_eq!(socket.read().unwrap(), Message::text("xff=127.0.0.1"));
    for i in 0..10 {
        socket.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 200_000];
    socket.send(Message::binary(big.clone())).unwrap();
    assert_eq!(socket.read().unwrap(), Message::binary(big));
}
