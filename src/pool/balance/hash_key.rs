//! Where a hashing pool finds a request's key: read in place, borrowed from the request.

use actix_web::http::header::{HeaderName, COOKIE};
use actix_web::{HttpMessage, HttpRequest};

use crate::security::ClientIp;
use crate::settings::HashKey;

/// A pool's `hash_key`, prepared for reading requests (header names parsed once).
#[derive(Clone, Debug)]
pub enum KeySource {
    ClientIp,
    Uri,
    Path,
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
    /// A header name settings validation refuses: no request carries it.
    Nothing,
}

impl From<&HashKey> for KeySource {
    fn from(key: &HashKey) -> Self {
        match key {
            HashKey::ClientIp => Self::ClientIp,
            HashKey::Uri => Self::Uri,
            HashKey::Path => Self::Path,
            HashKey::Header(name) => {
                HeaderName::from_bytes(name.as_bytes()).map_or(Self::Nothing, Self::Header)
            }
            HashKey::Cookie(name) => Self::Cookie(name.as_str().into()),
            HashKey::Query(name) => Self::Query(name.as_str().into()),
        }
    }
}

impl KeySource {
    /// The key's bytes in `req`, or `None` when the request does not carry it (or carries it
    /// empty). `ip` holds the client address's bytes for [`KeySource::ClientIp`].
    pub fn read<'r>(&self, req: &'r HttpRequest, ip: &'r mut [u8; 16]) -> Option<&'r [u8]> {
        let key: &[u8] = match self {
            Self::ClientIp => {
                // An IPv4 client on a dual-stack listener hashes as itself.
                // Behind trusted proxies the request carries the client they name.
                let client = req.extensions().get::<ClientIp>().map(|client| client.0);
                match client
                    .or_else(|| req.peer_addr().map(|peer| peer.ip()))?
                    .to_canonical()
                {
                    std::net::IpAddr::V4(v4) => {
                        ip[..4].copy_from_slice(&v4.octets());
                        &ip[..4]
                    }
                    std::net::IpAddr::V6(v6) => {
                        *ip = v6.octets();
                        &ip[..]
                    }
                }
            }
            Self::Uri => req
                .uri()
                .path_and_query()
                .map_or(req.uri().path(), |pq| pq.as_str())
                .as_bytes(),
            Self::Path => req.uri().path().as_bytes(),
            Self::Header(name) => req.headers().get(name)?.as_bytes(),
            Self::Cookie(name) => req
                .headers()
                .get_all(COOKIE)
                .find_map(|value| pair_value(value.as_bytes(), b';', name.as_bytes()))?,
            Self::Query(name) => pair_value(req.uri().query()?.as_bytes(), b'&', name.as_bytes())?,
            Self::Nothing => return None,
        };
        (!key.is_empty()).then_some(key)
    }
}

/// The value of the first `name=value` pair in a `separator`-separated list, spaces around
/// pairs ignored (`a=1; b=2` as in Cookie, `a=1&b=2` as in a query string).
fn pair_value<'a>(list: &'a [u8], separator: u8, name: &[u8]) -> Option<&'a [u8]> {
    list.split(|&b| b == separator).find_map(|pair| {
        let pair = pair.trim_ascii();
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn read(key: &str, req: TestRequest) -> Option<Vec<u8>> {
        let source = KeySource::from(&HashKey::try_from(key.to_string()).unwrap());
        let req = req.to_http_request();
        let mut ip = [0; 16];
        source.read(&req, &mut ip).map(<[u8]>::to_vec)
    }

    #[test]
    fn client_ip_is_the_peer_address() {
        let peer = |addr: &str| TestRequest::default().peer_addr(addr.parse().unwrap());
        assert_eq!(
            read("client_ip", peer("192.0.2.7:5555")),
            Some(vec![192, 0, 2, 7])
        );
        assert_eq!(
            read("client_ip", peer("[::ffff:192.0.2.7]:5555")),
            Some(vec![192, 0, 2, 7])
        );
        assert_eq!(
            read("client_ip", peer("[2001:db8::1]:5555")).unwrap().len(),
            16
        );
        assert_eq!(read("client_ip", TestRequest::default()), None);
    }

    #[test]
    fn uri_and_path_are_read_as_received() {
        let req = || TestRequest::with_uri("/a/b?x=1&y=2");
        assert_eq!(read("uri", req()).unwrap(), b"/a/b?x=1&y=2");
        assert_eq!(read("path", req()).unwrap(), b"/a/b");
    }

    #[test]
    fn a_header_is_read_by_name_in_any_case() {
        let req = TestRequest::default().insert_header(("X-User", "alice"));
        assert_eq!(read("header:x-user", req).unwrap(), b"alice");
        let req = TestRequest::default().insert_header(("X-User", ""));
        assert_eq!(read("header:X-User", req), None);
        assert_eq!(read("header:x-user", TestRequest::default()), None);
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let req = TestRequest::default()
            .append_header(("cookie", "theme=dark; session=abc123"))
            .append_header(("cookie", "other=1"));
        assert_eq!(read("cookie:session", req).unwrap(), b"abc123");
        let req = TestRequest::default()
            .append_header(("cookie", "a=1"))
            .append_header(("cookie", "sid=9"));
        assert_eq!(read("cookie:sid", req).unwrap(), b"9");
        let req = TestRequest::default().append_header(("cookie", "sessionx=1"));
        assert_eq!(read("cookie:session", req), None);
    }

    #[test]
    fn a_query_parameter_is_read_raw() {
        let req = || TestRequest::with_uri("/p?a=1&user=bob%20b&flag");
        assert_eq!(read("query:user", req()).unwrap(), b"bob%20b");
        assert_eq!(read("query:flag", req()), None);
        assert_eq!(read("query:missing", req()), None);
        assert_eq!(read("query:a", TestRequest::with_uri("/p")), None);
    }
}
