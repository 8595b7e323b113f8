//! Strict reading of the request line: what actix-http's parser lets through but a proxy must
//! not forward, because gatehouse and the servers could read it differently (request
//! smuggling, routing on one host and serving another, path traversal past a route's prefix).
//! actix-http itself refuses malformed heads and framing with 400 (docs/security.md).

use actix_web::http::{header, Uri};
use actix_web::HttpRequest;

use super::ProxyError;
use crate::settings::SecuritySettings;

/// The request line's length beyond its method and target: two spaces and `HTTP/1.1`.
const LINE_OVERHEAD: usize = 2 + "HTTP/1.1".len();

/// Checks the request line against `[security]`: its length (414), an absolute-form target
/// naming another host than `Host` (400), `..` segments that climb above `/` (400, always)
/// and, when asked, any `..` segment (400).
pub fn check_request_line(
    req: &HttpRequest,
    settings: &SecuritySettings,
) -> Result<(), ProxyError> {
    let uri = req.uri();
    if request_line_len(req) as u64 > settings.max_request_line.get() {
        return Err(ProxyError::RequestLineTooLong);
    }
    if let Some(authority) = uri.authority() {
        // Routing follows the target's host (RFC 9112 3.2.2); a server that follows `Host`
        // instead would serve a request routed for another site.
        let agrees = req.headers().get_all(header::HOST).all(|host| {
            host.to_str()
                .is_ok_and(|host| same_authority(authority.as_str(), host, uri.scheme_str()))
        });
        if !agrees {
            return Err(ProxyError::HostMismatch);
        }
    }
    let path = uri.path();
    // A path without `.` or `%` has no dot segment in any spelling: one scan decides. Every
    // climb above the root has a dot segment, so one walk of the segments answers either way.
    let dotted = path.bytes().any(|b| b == b'.' || b == b'%');
    let refused = |path| match settings.reject_dot_segments {
        true => has_dot_segment(path),
        false => climbs_above_root(path),
    };
    if dotted && refused(path) {
        return Err(ProxyError::DotSegment);
    }
    Ok(())
}

/// The length of the request line as the client sent it (method, target, version, spaces).
pub fn request_line_len(req: &HttpRequest) -> usize {
    req.method().as_str().len() + target_len(req.uri()) + LINE_OVERHEAD
}

/// The request target's length as it was on the request line.
fn target_len(uri: &Uri) -> usize {
    let mut len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if let Some(authority) = uri.authority() {
        len += authority.as_str().len();
        if let Some(scheme) = uri.scheme_str() {
            len += scheme.len() + "://".len();
        }
    }
    len.max(1)
}

/// Whether an absolute-form target's authority and a `Host` value name the same host and port,
/// ignoring case and the scheme's default port.
fn same_authority(authority: &str, host: &str, scheme: Option<&str>) -> bool {
    let default_port = match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => ":443",
        _ => ":80",
    };
    let bare = |value: &'_ str| -> String {
        let value = value.to_ascii_lowercase();
        match value.strip_suffix(default_port) {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => value,
        }
    };
    bare(authority) == bare(host)
}

/// One unit of a path as a server may decode it.
#[derive(PartialEq)]
enum Unit {
    Dot,
    Separator,
    /// `;` starts a segment's parameters, which servers such as Tomcat drop (`..;x` is `..`).
    Parameters,
    Other,
}

/// A path segment as a server may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    /// Nothing between two separators (`//`), which many servers merge away.
    Empty,
    /// `.`: the segment itself.
    Dot,
    /// `..`: one segment up.
    DotDot,
    Name,
}

/// The segments of `path` once percent-decoded (what precedes its leading `/` is the first,
/// empty, one). `/`, `\` and their encodings all separate segments, since some servers
/// decode `%2F` or treat `\` as `/`.
fn segments(path: &str) -> impl Iterator<Item = Segment> + '_ {
    let bytes = path.as_bytes();
    let (mut at, mut done) = (0, false);
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let (mut dots, mut other, mut in_parameters) = (0usize, false, false);
        loop {
            let (unit, width) = match bytes.get(at) {
                None => (Unit::Separator, 0),
                Some(b'%') => match bytes.get(at + 1..at + 3).and_then(decode_hex) {
                    Some(b'.') => (Unit::Dot, 3),
                    Some(b'/' | b'\\') => (Unit::Separator, 3),
                    Some(b';') => (Unit::Parameters, 3),
                    _ => (Unit::Other, 1),
                },
                Some(b'.') => (Unit::Dot, 1),
                Some(b'/' | b'\\') => (Unit::Separator, 1),
                Some(b';') => (Unit::Parameters, 1),
                Some(_) => (Unit::Other, 1),
            };
            at += width;
            match unit {
                Unit::Separator => {
                    done = width == 0;
                    break;
                }
                _ if in_parameters => {}
                Unit::Parameters => in_parameters = true,
                Unit::Dot => dots += 1,
                Unit::Other => other = true,
            }
        }
        Some(match (dots, other) {
            (0, false) => Segment::Empty,
            (1, false) => Segment::Dot,
            (2, false) => Segment::DotDot,
            _ => Segment::Name,
        })
    })
}

/// Whether `path` has a `..` segment once percent-decoded.
pub fn has_dot_segment(path: &str) -> bool {
    segments(path).any(|segment| segment == Segment::DotDot)
}

/// Whether `path`'s `..` segments climb above `/` (RFC 3986 5.2.4 would drop them; servers
/// that do not may serve a file outside their root). Empty segments count for nothing, as
/// servers that merge slashes read them.
pub fn climbs_above_root(path: &str) -> bool {
    let mut depth = 0usize;
    for segment in segments(path) {
        match segment {
            Segment::DotDot if depth == 0 => return true,
            Segment::DotDot => depth -= 1,
            Segment::Name => depth += 1,
            Segment::Empty | Segment::Dot => {}
        }
    }
    false
}

fn decode_hex(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../b",
            "/a/..",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2E/x",
            "/%2e./x",
            "/a/..%2fb",
            "/a/..%2Fb",
            "/a%2f..%2fb",
            "/a/..\\b",
            "/a\\..\\b",
            "/a/..;jsessionid=1/b",
            "/a/%2e%2e%3b/b",
            "..",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/",
            "/a/b",
            "/a/./b",
            "/a/.../b",
            "/a/..b/c",
            "/a/b../c",
            "/a/.hidden",
            "/%2e",
            "/a%2e%2eb",
            "/a/x;..",
            "/%",
            "/%2",
            "/%zz",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_found_in_every_spelling() {
        for above in [
            "/..",
            "/../etc/passwd",
            "/../../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/x",
            "/%2E./x",
            "/.%2e/x",
            "/a/..%2f..%2fetc",
            "/a\\..\\..\\etc",
            "/a/..;x/../etc",
            "/./../x",
            "/a//../../x",
        ] {
            assert!(climbs_above_root(above), "{above}");
        }
        for within in [
            "/",
            "/a/..",
            "/a/../b",
            "/a/b/../../c",
            "/a/./b/..",
            "/a/..b/../c",
            "/.well-known/x",
            "/a/.../..",
        ] {
            assert!(!climbs_above_root(within), "{within}");
        }
    }

    #[test]
    fn authorities_compare_without_case_or_default_port() {
        assert!(same_authority("Example.com", "example.COM", Some("http")));
        assert!(same_authority(
            "example.com:80",
            "example.com",
            Some("http")
        ));
        assert!(same_authority(
            "example.com",
            "example.com:443",
            Some("https")
        ));
        assert!(same_authority("a:8080", "a:8080", Some("http")));
        assert!(!same_authority("evil", "a", Some("http")));
        assert!(!same_authority("a:8080", "a", Some("http")));
        assert!(!same_authority("a:443", "a", Some("http")));
        assert!(!same_authority("user@a", "a", Some("http")));
    }
}
