//! An HTTP/1.1 origin over TLS (OpenSSL on std threads) with keep-alive, which counts its
//! handshakes and keeps the name each client asked for.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use openssl::ssl::NameType;

use super::{spawn, Serve, Spawned};
use crate::helpers::{read_head, tls_acceptor, Authority, Issued, DEADLINE};

/// A TLS origin: `/health` answers `ok` and is not counted; every other request is counted
/// and answered with the origin's name.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    _server: Spawned,
}

#[derive(Default)]
struct Counts {
    hits: AtomicUsize,
    health: AtomicUsize,
    handshakes: AtomicUsize,
    names: Mutex<Vec<Option<String>>>,
}

impl TlsOrigin {
    /// Serves with `identity`; with `client_ca`, a client certificate from that CA is required.
    pub fn start(name: &str, identity: &Issued, client_ca: Option<&Authority>) -> Self {
        let acceptor = tls_acceptor(identity, client_ca);
        let counts = Arc::new(Counts::default());
        let (seen, body) = (counts.clone(), name.to_string());
        let server = spawn(Serve::connections(move |stream| {
            let _ = stream.set_read_timeout(Some(DEADLINE));
            let Ok(tls) = acceptor.accept(stream) else {
                return;
            };
            seen.handshakes.fetch_add(1, Ordering::SeqCst);
            let sni = tls
                .ssl()
                .servername(NameType::HOST_NAME)
                .map(str::to_string);
            seen.names.lock().unwrap().push(sni);
            let mut reader = BufReader::new(tls);
            while let Some(head) = read_head(&mut reader) {
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let text = if path.starts_with("/health") {
                    seen.health.fetch_add(1, Ordering::SeqCst);
                    "ok"
                } else {
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    body.as_str()
                };
                let close = head.to_ascii_lowercase().contains("connection: close");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                let stream = reader.get_mut();
                if stream.write_all(response.as_bytes()).is_err() || close {
                    let _ = stream.shutdown();
                    return;
                }
            }
        }));
        Self {
            addr: server.addr,
            counts,
            _server: server,
        }
    }

    /// Requests answered, `/health` aside.
    pub fn hits(&self) -> usize {
        self.counts.hits.load(Ordering::SeqCst)
    }

    /// `/health` requests answered.
    pub fn health_checks(&self) -> usize {
        self.counts.health.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.counts.handshakes.load(Ordering::SeqCst)
    }

    /// The SNI name of each completed handshake (`None`: the client sent none).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.counts.names.lock().unwrap().clone()
    }
}
