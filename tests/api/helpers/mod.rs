//! The harness every test drives: a real gatehouse (in-process or the binary), real origins
//! on loopback ports, and clients that show exactly what crossed the wire. One file per
//! concern; everything a test uses is re-exported here.

mod admin;
pub mod http2_client;
mod load;
mod origins;
mod pki;
mod ports;
mod proxy;
mod settings;
mod temp;
mod wait;
mod wire;

pub use admin::{admin_call, admin_call_as, admin_reload, admin_server};
pub use load::Load;
pub use origins::{
    echoes, spawn, Mode, Origin, RawOrigin, Serve, Shop, Shopper, Spawned, Switchable, TlsOrigin,
    WebSocketOrigin, GZIP_HELLO,
};
pub use pki::{tls_acceptor, Authority, Issued, Pki};
pub use ports::{connect_from, DeadServer, HeldPort};
pub use proxy::{run_binary, Process, Proxy};
pub use settings::{one_pool, settings, settings_error, test_env, Toml};
pub use temp::TempDir;
pub use wait::{wait_until, DEADLINE};
pub use wire::{
    closed_without_response, echo, get, raw, read_body, read_head, Chunked, Conn, Echo, Response,
};
