//! The listening sockets, kept across restarts of the HTTP server: a reload that changes the
//! listener settings starts a new server on duplicates of the same sockets, so connections
//! waiting to be accepted stay in the shared queue and none is refused.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::{ListenError, Listeners};

/// Pending connections the kernel queues per listener (NGINX's default `backlog` on Linux is
/// 511; actix-web's is 1024; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

impl Listeners {
    /// Duplicates of the sockets for `listen`, binding those not bound yet and forgetting those
    /// no longer listed (a running server keeps its own duplicates until it stops). If a bind
    /// fails, nothing changes.
    #[cfg(test)]
    fn sockets_for(
        &mut self,
        listen: &[SocketAddr],
    ) -> Result<Vec<(SocketAddr, TcpListener)>, ListenError> {
        let sockets = self.sockets_by_entry(listen)?;
        Ok(sockets
            .into_iter()
            .map(|(entry, socket)| (listen[entry], socket))
            .collect())
    }

    /// [`Self::sockets_for`], each socket with the index of its entry in `listen`. An address
    /// listed twice gets one socket; each port-0 entry gets its own.
    pub(super) fn sockets_by_entry(
        &mut self,
        listen: &[SocketAddr],
    ) -> Result<Vec<(usize, TcpListener)>, ListenError> {
        let mut old = std::mem::take(&mut self.sockets);
        // (entry, the setting it was bound for, socket)
        let mut kept: Vec<(usize, SocketAddr, TcpListener)> = Vec::new();
        for (entry, &address) in listen.iter().enumerate() {
            let listed = kept.iter().any(|(_, a, s)| same(*a, s, address));
            if address.port() != 0 && listed {
                continue;
            }
            let socket = match old.iter().position(|(a, s)| same(*a, s, address)) {
                Some(index) => old.remove(index),
                None => match bind(address) {
                    Ok(socket) => (address, socket),
                    Err(source) => {
                        // Sockets bound by this call close; the others stay as they were.
                        old.extend(kept.into_iter().map(|(_, a, s)| (a, s)));
                        self.sockets = old;
                        return Err(ListenError { address, source });
                    }
                },
            };
            kept.push((entry, socket.0, socket.1));
        }
        let mut copies = Vec::with_capacity(kept.len());
        for (entry, _, socket) in &kept {
            let address = listen[*entry];
            let copy = socket
                .try_clone()
                .map_err(|source| ListenError { address, source })?;
            copies.push((*entry, copy));
        }
        self.sockets = kept
            .into_iter()
            .map(|(entry, _, socket)| (listen[entry], socket))
            .collect();
        Ok(copies)
    }
}

/// Whether a socket bound for `configured` serves `wanted`: the same setting, or the address
/// that a port-0 setting was given.
fn same(configured: SocketAddr, socket: &TcpListener, wanted: SocketAddr) -> bool {
    configured == wanted || socket.local_addr().is_ok_and(|bound| bound == wanted)
}

/// A listening socket as actix-web would make it: address reuse (a restart does not wait out
/// TIME_WAIT), non-blocking, and a deliberate backlog.
fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_kept_for_addresses_still_listed() {
        let mut listeners = Listeners::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let first = listeners.sockets_for(&[any]).unwrap();
        let port = first[0].1.local_addr().unwrap().port();
        let again = listeners.sockets_for(&[any]).unwrap();
        assert_eq!(
            again[0].1.local_addr().unwrap().port(),
            port,
            "same socket reused"
        );
        // Naming the port a port-0 setting was given keeps that socket too.
        let pinned = SocketAddr::from(([127, 0, 0, 1], port));
        let kept = listeners.sockets_for(&[pinned]).unwrap();
        assert_eq!(kept[0].1.local_addr().unwrap().port(), port);
        // A port held elsewhere cannot be bound: nothing changes.
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = elsewhere.local_addr().unwrap();
        assert!(listeners.sockets_for(&[pinned, taken]).is_err());
        assert_eq!(listeners.sockets.len(), 1);
        assert_eq!(listeners.sockets[0].0, pinned);
    }

    #[test]
    fn each_port_0_entry_gets_its_own_socket_and_keeps_it() {
        let mut listeners = Listeners::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let ports = |sockets: Vec<(SocketAddr, TcpListener)>| -> Vec<u16> {
            sockets
                .iter()
                .map(|(_, s)| s.local_addr().unwrap().port())
                .collect()
        };
        let first = ports(listeners.sockets_for(&[any, any]).unwrap());
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(ports(listeners.sockets_for(&[any, any]).unwrap()), first);
        let pinned = SocketAddr::from(([127, 0, 0, 1], first[0]));
        assert_eq!(
            ports(listeners.sockets_for(&[pinned, pinned]).unwrap()),
            [first[0]]
        );
    }
}
