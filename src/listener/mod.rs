//! The client listeners: the sockets gatehouse accepts on, the checks each accepted
//! connection passes, and the HTTP server behind them.
//!
//! The sockets are kept here, not in the server, so a reload that changes the listener
//! settings can start a new server on duplicates of the same sockets before the old server
//! stops: connections waiting to be accepted stay in the shared queue, and none is refused.
//!
//! Each accepted connection goes through, in order:
//! 1. **PROXY protocol** (with `server.proxy_protocol`): the header is read and its source
//!    address becomes the client's; a missing or malformed header closes the connection.
//! 2. **deny**: runtime blocks, and the global lists with `deny_action = "close"`, close it.
//! 3. **per-client limit**: `max_connections_per_client` open connections per address.
//! 4. **TLS** (on `tls.listen`): the handshake, certificate chosen by SNI, protocol by ALPN.
//! 5. **HTTP**: actix-http serves HTTP/1.1, and [`http2`] HTTP/2 when ALPN chose it, with
//!    the client's address as the peer address.

mod edge;
mod http;
mod http2;
mod proxy_protocol;
mod send_deadline;
mod sockets;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_server::Server;

use edge::{Clear, Fronts, ProxyProtocol};
use http::{ConnectionData, HttpSettings};
use http2::Http2Limits;

use crate::conn::{OverTls, TlsPort};
use crate::proxy::SharedProxy;
use crate::settings::{Http2Settings, ServerSettings, Settings};
use crate::tls::{Handshake, TlsStore};

/// A listen error that names the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct ListenError {
    pub address: SocketAddr,
    pub source: io::Error,
}

/// The bound sockets, by the address the settings name (which may have port 0).
#[derive(Default)]
pub struct Listeners {
    sockets: Vec<(SocketAddr, TcpListener)>,
}

/// What a listener serves: the settings of both kinds of listener and the certificates.
pub struct ListenerSettings<'a> {
    pub server: &'a ServerSettings,
    /// `tls.listen`.
    pub tls_listen: &'a [SocketAddr],
    /// `tls.http2`.
    pub http2: &'a Http2Settings,
    pub certificates: &'a Arc<TlsStore>,
}

/// The addresses a server is bound to.
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub plain: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

impl Listeners {
    /// Starts a server on the settings' listen addresses (plain and TLS), reusing sockets
    /// already bound to them and binding the others. Returns it and the addresses it is
    /// bound to.
    pub fn serve(
        &mut self,
        listeners: ListenerSettings<'_>,
        shared: Arc<SharedProxy>,
    ) -> Result<(Server, Bound), ListenError> {
        let settings = listeners.server;
        let wanted: Vec<SocketAddr> = settings
            .listen
            .iter()
            .chain(listeners.tls_listen)
            .copied()
            .collect();
        let (sockets, tls_sockets): (Vec<_>, Vec<_>) = self
            .sockets_by_entry(&wanted)?
            .into_iter()
            .partition(|(entry, _)| *entry < settings.listen.len());
        let entry_address = |(entry, socket): (usize, TcpListener)| (wanted[entry], socket);
        let sockets: Vec<_> = sockets.into_iter().map(entry_address).collect();
        let tls_sockets: Vec<_> = tls_sockets.into_iter().map(entry_address).collect();
        let workers = settings.worker_count();
        let mut builder = Server::build()
            .workers(workers)
            .max_concurrent_connections(settings.max_connections.div_ceil(workers))
            .shutdown_timeout(settings.shutdown_timeout.get().as_secs())
            .disable_signals();
        let http = HttpSettings {
            keep_alive: settings.keep_alive.get(),
            client_header_timeout: settings.client_header_timeout.get(),
            http2: Http2Limits::new(listeners.http2, settings),
            shutdown: builder.graceful_shutdown_signal(),
            connection: ConnectionData::default(),
        };
        let local = |(address, socket): &(SocketAddr, TcpListener)| {
            socket.local_addr().map_err(|source| ListenError {
                address: *address,
                source,
            })
        };
        let mut bound = Bound::default();
        for socket in &tls_sockets {
            bound.tls.push(local(socket)?);
        }
        // Where `redirect_https` sends plain-HTTP clients: the first TLS listener.
        let tls_port = bound.tls.first().map(|address| TlsPort(address.port()));
        let front = Fronts {
            proxy_protocol: settings
                .proxy_protocol
                .then(|| ProxyProtocol(settings.client_header_timeout.get())),
            send_timeout: settings.send_timeout.get(),
        };
        for socket in sockets {
            let address = local(&socket)?;
            let (_, socket) = socket;
            let service = http.clone().with_connection_data(tls_port);
            builder = front.listen(builder, socket, address, Clear, service, &shared)?;
            bound.plain.push(address);
        }
        let handshake = Handshake::new(
            listeners.certificates.clone(),
            settings.client_header_timeout.get(),
        );
        for ((_, socket), &address) in tls_sockets.into_iter().zip(&bound.tls) {
            let service = http.clone().with_connection_data(Some(OverTls));
            builder = front.listen(
                builder,
                socket,
                address,
                handshake.clone(),
                service,
                &shared,
            )?;
        }
        let proxy = if settings.proxy_protocol {
            " (PROXY protocol)"
        } else {
            ""
        };
        for address in &bound.plain {
            log::info!("listening on http://{address}{proxy} with {workers} workers");
        }
        for address in &bound.tls {
            log::info!("listening on https://{address}{proxy} with {workers} workers");
        }
        Ok((builder.run(), bound))
    }
}

/// Asks the running gatehouse to serve new listener settings; answered with the addresses it
/// is then bound to, or why it kept the old ones.
pub struct Rebind {
    pub settings: ServerSettings,
    /// `tls.listen`.
    pub tls_listen: Vec<SocketAddr>,
    /// `tls.http2`.
    pub http2: Http2Settings,
    pub reply: tokio::sync::oneshot::Sender<Result<Bound, String>>,
}

/// Sends [`Rebind`] requests to the running gatehouse.
pub type Rebinder = tokio::sync::mpsc::UnboundedSender<Rebind>;

/// Whether two sets of settings differ in what only a new listener can apply: `[server]`'s
/// listener keys, `tls.listen` or `tls.http2`'s limits (certificates, and whether ALPN
/// offers h2, are swapped without one).
pub fn listener_changed(old: &Settings, new: &Settings) -> bool {
    let limits = |http2: &Http2Settings| Http2Settings {
        enabled: true,
        ..http2.clone()
    };
    server_listener_changed(&old.server, &new.server)
        || old.tls.listen != new.tls.listen
        || limits(&old.tls.http2) != limits(&new.tls.http2)
}

fn server_listener_changed(old: &ServerSettings, new: &ServerSettings) -> bool {
    // The Server header and the request head limit are read per request, not by the listener.
    let per_request = |s: &ServerSettings| {
        let mut s = s.clone();
        s.server_header.clear();
        s.max_request_header_size = crate::settings::ByteSize(0);
        s
    };
    per_request(old) != per_request(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listener_settings_need_a_new_listener() {
        let old = ServerSettings::default();
        let mut new = old.clone();
        new.server_header = "edge".into();
        new.max_request_header_size = crate::settings::ByteSize::kib(8);
        assert!(!server_listener_changed(&old, &new));
        new.workers = 3;
        assert!(server_listener_changed(&old, &new));
        let old = Settings::default();
        let mut new = old.clone();
        new.tls.ciphers = "ECDHE-RSA-AES128-GCM-SHA256".into();
        assert!(!listener_changed(&old, &new));
        new.tls.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        assert!(listener_changed(&old, &new));
    }
}
