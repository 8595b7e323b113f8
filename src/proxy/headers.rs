//! Header rules between downstream and upstream: hop-by-hop removal (RFC 9110 7.6.1)
//! and the forwarding headers gatehouse adds.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message; removed in both directions.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
];

/// Headers gatehouse itself sets on the upstream request from the message's own framing.
const REBUILT_UPSTREAM: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::PROXY_AUTHORIZATION,
];

/// Header names a message's `Connection` header lists, leaving out the tokens that name no
/// header gatehouse would otherwise keep (`close`, `keep-alive`, `upgrade`). Most messages
/// list nothing else, so this rarely allocates.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(list) = value.to_str() else { continue };
        for option in list.split(',').map(str::trim) {
            let common = ["close", "keep-alive", "upgrade", ""]
                .iter()
                .any(|token| option.eq_ignore_ascii_case(token));
            if !common {
                if let Ok(name) = HeaderName::from_bytes(option.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    named
}

/// Removes hop-by-hop headers in place: the fixed list and every header `Connection` names.
/// `keep_upgrade` keeps `Upgrade` for a relayed upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named = connection_options(headers);
    headers.retain(|name, _| {
        (keep_upgrade && name == header::UPGRADE)
            || (!HOP_BY_HOP.contains(name) && !named.contains(name))
    });
}

/// The request headers to forward: the client's end-to-end headers (repeats kept), without
/// those gatehouse rebuilds.
pub fn upstream_request_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers, false);
    for name in REBUILT_UPSTREAM.iter().chain(&FORWARDING) {
        headers.remove(name);
    }
    headers
}

/// Turns a server's response headers into the client's, in place. `Server` and the other
/// headers that name the server's software are `[security]`'s to hide (`proxy::hide`).
pub fn downstream_response_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers, false);
    for name in [header::CONTENT_LENGTH, X_REQUEST_ID] {
        headers.remove(name);
    }
}

/// A message's `Content-Length`, when it is one number (actix-http has already refused
/// requests whose length is not).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

pub use crate::security::X_FORWARDED_FOR;
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forwarding headers gatehouse writes itself; a client's copies are replaced (`X-Forwarded-For`
/// is rebuilt with the client's list kept in front).
const FORWARDING: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];

/// `X-Forwarded-For` with the client's address appended to any list it already had; values
/// that are not visible ASCII are dropped, never the client's address.
pub fn x_forwarded_for(incoming: &HeaderMap, client: &str) -> Option<HeaderValue> {
    let mut list = String::new();
    for value in incoming.get_all(X_FORWARDED_FOR) {
        let Ok(value) = value.to_str() else { continue };
        let value = value.trim();
        if !value.is_empty() {
            list.push_str(value);
            list.push_str(", ");
        }
    }
    list.push_str(client);
    HeaderValue::from_str(&list).ok()
}

/// Whether a response status or request method means the message has no body.
pub fn response_has_no_body(method: &actix_web::http::Method, status: u16) -> bool {
    method == actix_web::http::Method::HEAD || status == 204 || status == 304 || status < 200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.iter().map(|(name, _)| name.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_and_connection_options_are_removed() {
        let incoming = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        assert_eq!(
            names(&upstream_request_headers(&incoming)),
            ["accept", "cookie", "cookie"]
        );
    }

    #[test]
    fn response_keeps_repeated_set_cookie_and_drops_framing() {
        let mut upstream = map(&[
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("x-request-id", "from-the-server"),
            ("trailer", "x-checksum"),
        ]);
        assert_eq!(
            {
                downstream_response_headers(&mut upstream);
                names(&upstream)
            },
            ["set-cookie", "set-cookie"]
        );
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let incoming = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let value = x_forwarded_for(&incoming, "127.0.0.1").unwrap();
        assert_eq!(value, "203.0.113.7, 10.0.0.1, 127.0.0.1");
        assert_eq!(x_forwarded_for(&HeaderMap::new(), "::1").unwrap(), "::1");
        let mut odd = HeaderMap::new();
        odd.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        assert_eq!(x_forwarded_for(&odd, "127.0.0.1").unwrap(), "127.0.0.1");
    }
}
