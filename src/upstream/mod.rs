//! Everything between gatehouse and a server: connecting (TCP, the self-connect check, TLS
//! with the pool's settings), reading response heads, and what an exchange's failure says
//! about who failed and whether to try again.
//!
//! Forwarding (awc behind [`UpstreamConnector`]), the WebSocket relay and the health probes
//! all connect through here. This module knows addresses and settings, not pools or servers.

mod connect;
mod connector;
mod error;
pub mod head;
mod interim;
mod outcome;
mod tls;

pub use connect::{connect, connect_within, Wire};
pub use connector::{note_eof, watching_eof, UpstreamConnector, UpstreamStream};
pub use error::UpstreamError;
pub use outcome::{Blame, Outcome, Side};
pub use tls::{tls_context, usable_tls, TlsContext, UpstreamTls};
