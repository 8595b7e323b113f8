//! `redirect_https`: where a plain-HTTP request is sent instead.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use crate::conn::TlsPort;

/// The 308 for a plain-HTTP request to a `redirect_https` route; `None` when the request
/// came over TLS, names no host, or no TLS listener runs.
pub fn redirect(req: &HttpRequest, host: Option<&str>) -> Option<HttpResponse> {
    let TlsPort(port) = *req.conn_data::<TlsPort>()?;
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = https_location(host, port, target)?;
    Some(
        HttpResponse::build(StatusCode::PERMANENT_REDIRECT)
            .insert_header((header::LOCATION, location))
            .finish(),
    )
}

/// `https://HOST[:PORT]/path?query` for a request to `host` (which may carry the plain
/// listener's port, dropped), with `:PORT` only when it is not 443. `None` without a host.
pub fn https_location(host: Option<&str>, port: u16, target: &str) -> Option<HeaderValue> {
    let host = host.filter(|host| !host.is_empty())?;
    let name = match host.rfind(':') {
        Some(at) if !host[at..].contains(']') => &host[..at],
        _ => host,
    };
    let location = if port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{port}{target}")
    };
    HeaderValue::from_str(&location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_port_is_replaced_and_443_is_left_out() {
        let at = |host, port, target| https_location(Some(host), port, target).unwrap();
        assert_eq!(
            at("a.test:8080", 8443, "/p?q=1"),
            "https://a.test:8443/p?q=1"
        );
        assert_eq!(at("a.test", 443, "/"), "https://a.test/");
        assert_eq!(at("[::1]:80", 443, "/x"), "https://[::1]/x");
        assert_eq!(at("[::1]", 8443, "/x"), "https://[::1]:8443/x");
        assert!(https_location(None, 443, "/").is_none());
    }
}
