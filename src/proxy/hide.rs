//! What clients may learn of the servers from their responses: headers that name the servers'
//! software (`hide_headers`, `pass_headers`) and redirects that point at the servers' own
//! addresses (`rewrite_redirects`).

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::uri::Authority;

use crate::settings::SecuritySettings;

/// `Refresh: 5; url=...`, which browsers follow like a redirect.
const REFRESH: HeaderName = HeaderName::from_static("refresh");

/// `[security]`'s response rules, with header names parsed once per published state.
#[derive(Debug)]
pub struct Hiding {
    /// `hide_headers` without `pass_headers`.
    hidden: Vec<HeaderName>,
    rewrite_redirects: bool,
}

impl Hiding {
    pub fn new(settings: &SecuritySettings) -> Self {
        let passed: Vec<HeaderName> = names(&settings.pass_headers).collect();
        let mut hidden: Vec<HeaderName> = Vec::new();
        for name in names(&settings.hide_headers) {
            if !passed.contains(&name) && !hidden.contains(&name) {
                hidden.push(name);
            }
        }
        Self {
            hidden,
            rewrite_redirects: settings.rewrite_redirects,
        }
    }

    /// Removes the hidden headers from a response.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for name in &self.hidden {
            headers.remove(name);
        }
    }

    /// Points `Location`, `Content-Location` and `Refresh` URLs whose authority is `server`'s
    /// address at the host the client asked for (`http://HOST`, path and query kept), as
    /// NGINX's `proxy_redirect default` does. Without a host the URL becomes a path.
    pub fn rewrite_redirects(
        &self,
        headers: &mut HeaderMap,
        server: &Authority,
        host: Option<&str>,
    ) {
        if !self.rewrite_redirects {
            return;
        }
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            rewrite_all(headers, name, |value| rewrite_url(value, server, host));
        }
        rewrite_all(headers, REFRESH, |value| {
            rewrite_refresh(value, server, host)
        });
    }
}

/// Valid header names from settings (validation has already refused the others).
fn names(list: &[String]) -> impl Iterator<Item = HeaderName> + '_ {
    list.iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
}

/// Applies `rewrite` to every value of `name`, keeping their order; values it leaves alone
/// (or that are not text) stay as they are.
fn rewrite_all(
    headers: &mut HeaderMap,
    name: HeaderName,
    rewrite: impl Fn(&str) -> Option<String>,
) {
    let values: Vec<&HeaderValue> = headers.get_all(&name).collect();
    if values.is_empty() {
        return;
    }
    let mut changed = false;
    let rewritten: Vec<HeaderValue> = values
        .into_iter()
        .map(|value| {
            let new = value
                .to_str()
                .ok()
                .and_then(&rewrite)
                .and_then(|text| HeaderValue::from_str(&text).ok());
            changed |= new.is_some();
            new.unwrap_or_else(|| value.clone())
        })
        .collect();
    if changed {
        headers.remove(&name);
        for value in rewritten {
            headers.append(name.clone(), value);
        }
    }
}

/// `url` pointed at `host` if its authority is `server`'s address; `None` to leave it.
fn rewrite_url(url: &str, server: &Authority, host: Option<&str>) -> Option<String> {
    let (scheme, rest) = match url.split_once("//") {
        Some(("", rest)) => (None, rest),
        Some((scheme, rest)) => (Some(scheme.strip_suffix(':')?), rest),
        None => return None,
    };
    let default_port = match scheme {
        None => 80,
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => 80,
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => 443,
        Some(_) => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let is_server = authority.eq_ignore_ascii_case(server.as_str())
        || (server.port_u16() == Some(default_port)
            && authority.eq_ignore_ascii_case(server.host()));
    if !is_server {
        return None;
    }
    Some(match (host, scheme) {
        (Some(host), Some(_)) => format!("http://{host}{tail}"),
        (Some(host), None) => format!("//{host}{tail}"),
        (None, _) if tail.starts_with('/') => tail.to_string(),
        (None, _) => format!("/{tail}"),
    })
}

/// `Refresh: N; url=URL` (the `url=` and quotes optional) with its URL rewritten.
fn rewrite_refresh(value: &str, server: &Authority, host: Option<&str>) -> Option<String> {
    let start = value.find([';', ','])? + 1;
    let mut at = start + leading_space(&value[start..]);
    let rest = &value[at..];
    if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("url") {
        let after = &rest[3..];
        let skip = leading_space(after);
        if after[skip..].starts_with('=') {
            at += 3 + skip + 1;
            at += leading_space(&value[at..]);
        }
    }
    let quote = value[at..]
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\''));
    if let Some(quote) = quote {
        at += quote.len_utf8();
    }
    let end = match quote {
        Some(quote) => value[at..].find(quote).map_or(value.len(), |n| at + n),
        None => value.len(),
    };
    let url = rewrite_url(value[at..end].trim_end(), server, host)?;
    Some(format!("{}{url}{}", &value[..at], &value[end..]))
}

fn leading_space(text: &str) -> usize {
    text.len() - text.trim_start_matches([' ', '\t']).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Authority {
        Authority::from_static("127.0.0.1:9001")
    }

    #[test]
    fn urls_naming_the_server_point_at_the_client_s_host() {
        let rewrite = |url| rewrite_url(url, &server(), Some("www.example.com"));
        assert_eq!(
            rewrite("http://127.0.0.1:9001/login?next=/a#top").as_deref(),
            Some("http://www.example.com/login?next=/a#top")
        );
        assert_eq!(
            rewrite("HTTPS://127.0.0.1:9001").as_deref(),
            Some("http://www.example.com")
        );
        assert_eq!(
            rewrite("//127.0.0.1:9001/x").as_deref(),
            Some("//www.example.com/x")
        );
        for left in [
            "/relative",
            "relative/path",
            "http://127.0.0.1:9002/x",
            "http://127.0.0.1/x",
            "http://other.example/x",
            "http://user@127.0.0.1:9001/x",
            "ftp://127.0.0.1:9001/x",
            "http://127.0.0.1:90010/x",
        ] {
            assert_eq!(rewrite(left), None, "{left}");
        }
        assert_eq!(
            rewrite_url("http://127.0.0.1:9001/x?y", &server(), None).as_deref(),
            Some("/x?y")
        );
    }

    #[test]
    fn a_default_port_may_be_left_out() {
        let http = Authority::from_static("app.internal:80");
        let https = Authority::from_static("app.internal:443");
        let host = Some("example.com");
        assert_eq!(
            rewrite_url("http://app.internal/a", &http, host).as_deref(),
            Some("http://example.com/a")
        );
        assert_eq!(
            rewrite_url("https://app.internal/a", &https, host).as_deref(),
            Some("http://example.com/a")
        );
        assert_eq!(rewrite_url("https://app.internal/a", &http, host), None);
    }

    #[test]
    fn refresh_urls_are_rewritten_in_every_spelling() {
        let rewrite = |value| rewrite_refresh(value, &server(), Some("example.com"));
        assert_eq!(
            rewrite("5; url=http://127.0.0.1:9001/next").as_deref(),
            Some("5; url=http://example.com/next")
        );
        assert_eq!(
            rewrite("0;URL='http://127.0.0.1:9001/next'").as_deref(),
            Some("0;URL='http://example.com/next'")
        );
        assert_eq!(
            rewrite("3, url = \"http://127.0.0.1:9001/\"").as_deref(),
            Some("3, url = \"http://example.com/\"")
        );
        assert_eq!(
            rewrite("1; http://127.0.0.1:9001/x").as_deref(),
            Some("1; http://example.com/x")
        );
        assert_eq!(rewrite("5; url=/next"), None);
        assert_eq!(rewrite("5"), None);
    }

    #[test]
    fn hidden_headers_leave_out_passed_ones() {
        let settings = SecuritySettings {
            pass_headers: vec!["x-powered-by".into()],
            ..SecuritySettings::default()
        };
        let hiding = Hiding::new(&settings);
        let mut headers = HeaderMap::new();
        for name in [
            "server",
            "x-powered-by",
            "x-aspnet-version",
            "x-runtime",
            "etag",
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        hiding.strip(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        left.sort();
        assert_eq!(left, ["etag", "x-powered-by"]);
    }
}
