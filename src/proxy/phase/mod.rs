//! The phases of a request, in order, each in a file of its own over one [`RequestCtx`]:
//!
//! 1. [`admit`] — the request line, the head's size, the global lists and rate limits, the host.
//! 2. [`route`] — host and path to a route; the route's lists and limits, `redirect_https`,
//!    the body limit.
//!    (Then the cache lookup, in `proxy/mod.rs`: a stored response answered without a server.)
//! 3. [`pick`] — the bound server or the balancer's choice, from the pool's snapshot loaded once.
//! 4. [`tries`] — forward, classify the outcome once, retry elsewhere when allowed. WebSocket
//!    handshakes take the relay instead (`proxy/upgrade.rs`).
//! 5. [`respond`] — the response body streamed (compressed), and every header rule.
//! 6. [`finish`] — the access log line and the server released, once, however the request ends.
//!
//! A phase that ends the request early returns an [`Early`]; no phase calls another (what two
//! of them share is in `proxy/access.rs` and `proxy/exchange.rs`).
//!
//! [`RequestCtx`]: super::RequestCtx

pub mod admit;
pub mod finish;
pub mod pick;
pub mod respond;
pub mod route;
pub mod tries;

use actix_web::HttpResponse;

pub use finish::Finish;

use super::ProxyError;

/// How a phase ends a request before a server answers it.
pub enum Early {
    /// Refused: gatehouse's error page for this error.
    Refused(ProxyError),
    /// Answered by gatehouse itself (a redirect).
    Answered(Box<HttpResponse>),
}

impl From<ProxyError> for Early {
    fn from(err: ProxyError) -> Self {
        Self::Refused(err)
    }
}
