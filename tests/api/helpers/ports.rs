//! Loopback ports a test holds: an origin's port kept across a restart, a dead server's
//! address that stays dead, and connections from a chosen loopback source address.
//!
//! A port that is merely freed can be handed to another test's origin at once (the proxy
//! then reaches a live server where the test expects a dead one). A socket bound without
//! listening keeps the port: connects to it are refused, and Linux gives a port bound with
//! `SO_REUSEADDR` neither to another `bind` to port 0 nor as a connect's source port. A
//! listener of our own, also with `SO_REUSEADDR`, may still bind beside it, since the holder
//! never listens.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use socket2::{Domain, Socket, Type};

use super::DEADLINE;

/// How many connections a listener of a test origin lets wait for `accept`.
const BACKLOG: i32 = 1024;

/// A loopback port bound for as long as the value lives, listening only when asked.
pub struct HeldPort {
    pub addr: SocketAddr,
    _holder: Socket,
}

impl HeldPort {
    /// A fresh ephemeral port on 127.0.0.1, bound and not listening.
    pub fn new() -> Self {
        let holder = reusable_socket();
        holder
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind an ephemeral loopback port");
        let addr = holder
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IP address");
        Self {
            addr,
            _holder: holder,
        }
    }

    /// A listener on the held port; when it is dropped, the port is still held.
    pub fn listen(&self) -> TcpListener {
        let socket = reusable_socket();
        socket
            .bind(&self.addr.into())
            .unwrap_or_else(|err| panic!("bind {} beside its holder: {err}", self.addr));
        socket.listen(BACKLOG).unwrap();
        socket.into()
    }
}

fn reusable_socket() -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
}

/// The address of a server that is down: every connection to it is refused, for as long as
/// the value lives, whatever other tests bind meanwhile.
pub struct DeadServer {
    pub addr: SocketAddr,
    _port: HeldPort,
}

impl DeadServer {
    /// A fresh dead address on 127.0.0.1.
    pub fn new() -> Self {
        let port = HeldPort::new();
        Self {
            addr: port.addr,
            _port: port,
        }
    }
}

/// A connection to `addr` from the local address `source` (port chosen by the kernel), for
/// tests of per-client rules on loopback: every 127.0.0.0/8 address is the machine's own.
pub fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|err| panic!("bind {source}: {err}"));
    socket
        .connect_timeout(&addr.into(), DEADLINE)
        .unwrap_or_else(|err| panic!("connect {source} -> {addr}: {err}"));
    socket.into()
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    #[test]
    fn a_dead_server_refuses_every_connection() {
        let dead = DeadServer::new();
        for _ in 0..3 {
            let refused = TcpStream::connect(dead.addr).expect_err("connected to a dead server");
            assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        }
    }

    #[test]
    fn a_listener_binds_beside_the_holder_and_the_port_stays_held_after_it() {
        let port = HeldPort::new();
        let listener = port.listen();
        assert!(TcpStream::connect(port.addr).is_ok());
        drop(listener);
        let refused = TcpStream::connect(port.addr).expect_err("connected to a closed port");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        // Bound again, as a restarted server would be.
        let _again = port.listen();
        assert!(TcpStream::connect(port.addr).is_ok());
    }
}
