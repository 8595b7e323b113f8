//! The client's real address: the TCP peer's (or the PROXY protocol's, which the listener
//! puts in its place), unless the peer is a trusted proxy, whose `X-Forwarded-For` is then
//! believed.

use std::net::IpAddr;

use actix_web::http::header::HeaderName;
use actix_web::{HttpMessage, HttpRequest};

/// The header trusted proxies name the client in, and that gatehouse adds to on the way up.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client address the request path settled on, kept in the request's extensions so
/// everything after (balancing, affinity, logs) uses the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client's address: the peer's, or, when `trusted(peer)`, the right-most address in
/// `X-Forwarded-For` that is not itself trusted (NGINX `real_ip_recursive on`). A malformed
/// entry stops the walk at the last trusted hop, so a client cannot inject an address.
pub fn client_ip(req: &HttpRequest, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    if let Some(known) = req.extensions().get::<ClientIp>() {
        return Some(known.0);
    }
    let peer = req.peer_addr()?.ip().to_canonical();
    if !trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !trusted(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn request(peer: &str, xff: &[&str]) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr(format!("{peer}:5000").parse().unwrap());
        for value in xff {
            req = req.append_header((X_FORWARDED_FOR, *value));
        }
        req.to_http_request()
    }

    fn trusted(ip: IpAddr) -> bool {
        ip.to_string().starts_with("10.")
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(
            client_ip(&request("203.0.113.9", &["1.2.3.4"]), trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let req = request("10.0.0.2", &["198.51.100.1, 203.0.113.9"]);
        assert_eq!(client_ip(&req, trusted), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let req = request("10.0.0.2", &["203.0.113.9", "10.0.0.7"]);
        assert_eq!(client_ip(&req, trusted), ip("203.0.113.9"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let req = request("10.0.0.2", &["203.0.113.9, nonsense, 10.0.0.7"]);
        assert_eq!(client_ip(&req, trusted), ip("10.0.0.7"));
        let req = request("10.0.0.2", &[]);
        assert_eq!(client_ip(&req, trusted), ip("10.0.0.2"));
    }
}
