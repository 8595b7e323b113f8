//! Facts about a client connection that the listener writes and the request path reads:
//! whether it came over TLS, where the TLS listener is, how an HTTP/2 request frames its body,
//! and the deadline for what a connection must do before HTTP.

use std::future::Future;
use std::time::Duration;

use actix_web::HttpMessage as _;

/// Inserted into the connection data of HTTP/1.1 connections that came over TLS, and into
/// the request data of every HTTP/2 request (h2 is offered on TLS listeners only).
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// Whether the request came over a TLS listener.
pub fn came_over_tls(req: &actix_web::HttpRequest) -> bool {
    req.conn_data::<OverTls>().is_some() || req.extensions().contains::<OverTls>()
}

/// Inserted into the connection data of plain connections when TLS listeners exist: the port
/// `redirect_https` sends clients to.
#[derive(Clone, Copy, Debug)]
pub struct TlsPort(pub u16);

/// Marks an HTTP/2 request whose body follows its head without a `Content-Length`: HTTP/2
/// frames a body by the stream's end, and the request to the server is then chunked.
#[derive(Clone, Copy, Debug)]
pub struct UndeclaredBody;

/// What a connection must do before HTTP (a TLS handshake, the HTTP/2 preface), within
/// `limit` (zero waits without limit); its error, or the lack of it in time, in words.
pub async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    if limit.is_zero() {
        return step.await.map_err(|err| err.to_string());
    }
    match tokio::time::timeout(limit, step).await {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no {what} within {limit:?}")),
    }
}
