//! Phase `admit`: whether the request may enter at all — the request line (414, 400), the
//! head's size (431), the global allow/deny lists and runtime blocks (403), the global rate
//! limits (429) and the host (400). actix-http has already refused malformed heads (400) and
//! slow ones (408).

use actix_web::HttpRequest;

use super::super::access::guard;
use super::super::{strict, ProxyError, RequestCtx};

/// Admits the request, or names why not.
pub fn admit(ctx: &RequestCtx<'_>) -> Result<(), ProxyError> {
    let proxy = ctx.proxy;
    strict::check_request_line(ctx.req, &proxy.security.settings)?;
    check_head_size(ctx.req, proxy.max_header_bytes)?;
    guard(
        ctx.req,
        ctx.client,
        &proxy.security.access,
        &proxy.rate_limits,
        &proxy.security.edge,
    )?;
    if ctx.host.is_some_and(|host| !is_valid_host(host)) {
        return Err(ProxyError::BadHost);
    }
    Ok(())
}

/// The request head's size against `max_request_header_size`.
fn check_head_size(req: &HttpRequest, max_header_bytes: usize) -> Result<(), ProxyError> {
    // The line and its CRLF, then each header with its ": " and CRLF.
    let mut size = strict::request_line_len(req) + 2;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
        if size > max_header_bytes {
            return Err(ProxyError::HeaderTooLarge);
        }
    }
    Ok(())
}

/// Whether a Host value is a host name or IP literal with an optional port (RFC 9110 7.2):
/// never empty, never a list, never carrying user information or a path.
fn is_valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, port)) => {
                let valid = !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !valid {
                    return false;
                }
                ("ipv6", port)
            }
            None => return false,
        },
        None => match host.rfind(':') {
            Some(at) => (&host[..at], &host[at..]),
            None => (host, ""),
        },
    };
    let port_ok = port.is_empty()
        || (port.len() > 1
            && port.len() <= 6
            && port[1..].bytes().all(|b| b.is_ascii_digit())
            && port.starts_with(':'));
    !name.is_empty()
        && port_ok
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::is_valid_host;

    #[test]
    fn hosts_are_names_or_literals_with_an_optional_port() {
        for good in [
            "example.com",
            "a.example.com:8080",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "my_host",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.com, www.example.com",
            "evil.com/x?www.example.com",
            "evil.com@www.example.com",
            "evil.com www.example.com",
            "example.com:",
            "example.com:80x",
            "[::1",
            "[]",
            ":80",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
    }
}
