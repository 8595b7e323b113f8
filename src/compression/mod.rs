//! Response compression: whether a response is compressed and with what (`plan`, pure), and
//! the streaming encoders (`encoder`). docs/compression.md has the rules and why.

mod encoder;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;

pub use encoder::{Compress, Encoder};

use crate::settings::{Algorithm, CompressionSettings};

/// A route's compression rules, prepared once per published settings.
#[derive(Debug)]
pub struct Compression {
    settings: CompressionSettings,
    /// `types` split into exact types and `family/*` prefixes, lowercase.
    exact: Vec<String>,
    families: Vec<String>,
}

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The response could have been compressed for some client: it varies by
    /// `Accept-Encoding`, whatever this client gets.
    pub vary: bool,
    /// The coding to apply, if any.
    pub encode: Option<Algorithm>,
}

const NONE: Plan = Plan {
    vary: false,
    encode: None,
};

impl Compression {
    /// The rules, or `None` when compression is off (so the response path skips it whole).
    pub fn new(settings: &CompressionSettings) -> Option<Self> {
        if !settings.enabled || settings.algorithms.is_empty() {
            return None;
        }
        let (mut exact, mut families) = (Vec::new(), Vec::new());
        for media in &settings.types {
            let media = media.trim().to_ascii_lowercase();
            match media.strip_suffix("/*") {
                Some(family) => families.push(format!("{family}/")),
                None => exact.push(media),
            }
        }
        Some(Self {
            settings: settings.clone(),
            exact,
            families,
        })
    }

    pub fn settings(&self) -> &CompressionSettings {
        &self.settings
    }

    /// Decides for a response with `status`, `headers` and a body of `length` (when known)
    /// to a `method` request whose `Accept-Encoding` is `accept`. Never compressed: responses without a body (HEAD, 204,
    /// 304, 1xx), partial ones (206 or `Content-Range`), ones already encoded, ones marked
    /// `no-transform`, types not listed, and bodies known to be under `min_bytes`.
    pub fn plan(
        &self,
        method: &Method,
        status: u16,
        headers: &HeaderMap,
        length: Option<u64>,
        accept: Option<&HeaderValue>,
    ) -> Plan {
        if method == Method::HEAD || status == 204 || status == 304 || status < 200 {
            return NONE;
        }
        if status == 206
            || headers.contains_key(header::CONTENT_RANGE)
            || headers.contains_key(header::CONTENT_ENCODING)
            || no_transform(headers)
            || !self.compressible_type(headers)
        {
            return NONE;
        }
        let small = length.is_some_and(|length| length < self.settings.min_bytes.get());
        if small {
            // Small now, but another response of this resource may not be: still varies.
            return Plan {
                vary: true,
                encode: None,
            };
        }
        Plan {
            vary: true,
            encode: accept
                .and_then(|accept| negotiate(&self.settings.algorithms, accept.as_bytes())),
        }
    }

    fn compressible_type(&self, headers: &HeaderMap) -> bool {
        let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
            return false;
        };
        let media = content_type
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let media = String::from_utf8_lossy(media).to_ascii_lowercase();
        // Server-sent events must reach the client as they come: never buffered in an encoder.
        if media == "text/event-stream" {
            return false;
        }
        self.exact.contains(&media)
            || self
                .families
                .iter()
                .any(|family| media.starts_with(family.as_str()))
    }
}

/// Whether `Cache-Control` forbids changing the body (RFC 9111 5.2.2.6).
fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|directive| directive.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// The first of `offered` (the server's order of preference) that `accept` accepts with a
/// q-value above zero, directly or through `*` (RFC 9110 12.5.3). A coding refused with
/// `q=0` is never chosen, even under `*`.
pub fn negotiate(offered: &[Algorithm], accept: &[u8]) -> Option<Algorithm> {
    let mut wildcard: Option<bool> = None;
    let mut named: Vec<(&[u8], bool)> = Vec::new();
    for item in accept.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        if coding.is_empty() {
            continue;
        }
        let acceptable = parts
            .filter_map(|param| {
                let param = param.trim_ascii();
                let value = param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))?;
                std::str::from_utf8(value).ok()?.trim().parse::<f32>().ok()
            })
            .next_back()
            .is_none_or(|q| q > 0.0);
        if coding == b"*" {
            wildcard = Some(acceptable);
        } else {
            named.push((coding, acceptable));
        }
    }
    offered.iter().copied().find(|algorithm| {
        let token = algorithm.token().as_bytes();
        match named
            .iter()
            .find(|(coding, _)| coding.eq_ignore_ascii_case(token))
        {
            Some(&(_, acceptable)) => acceptable,
            None => wildcard == Some(true),
        }
    })
}

/// Turns `headers` into those of the compressed response: the coding named, the length gone
/// (the body is sent chunked), a strong `ETag` made weak (RFC 9110 8.8.3: the bytes differ
/// from the uncompressed representation's).
pub fn encoded_headers(headers: &mut HeaderMap, algorithm: Algorithm) {
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(algorithm.token()),
    );
    headers.remove(header::CONTENT_LENGTH);
    if let Some(etag) = headers.get(header::ETAG) {
        let bytes = etag.as_bytes();
        if !bytes.starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(bytes);
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
}

/// Adds `Accept-Encoding` to the response's `Vary`, unless it is there or `Vary: *`.
pub fn add_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|name| {
            let name = name.trim_ascii();
            name == b"*" || name.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ByteSize;

    const ALL: [Algorithm; 3] = [Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];

    #[test]
    fn the_servers_preference_wins_among_what_the_client_accepts() {
        assert_eq!(
            negotiate(&ALL, b"gzip, deflate, br, zstd"),
            Some(Algorithm::Zstd)
        );
        assert_eq!(negotiate(&ALL, b"gzip, br"), Some(Algorithm::Brotli));
        assert_eq!(negotiate(&ALL, b"GZIP"), Some(Algorithm::Gzip));
        assert_eq!(negotiate(&ALL, b"identity"), None);
        assert_eq!(negotiate(&ALL, b""), None);
        assert_eq!(negotiate(&[Algorithm::Gzip], b"br"), None);
    }

    #[test]
    fn q_zero_refuses_a_coding_even_under_a_wildcard() {
        assert_eq!(
            negotiate(&ALL, b"zstd;q=0, br;q=0.5, gzip"),
            Some(Algorithm::Brotli)
        );
        assert_eq!(
            negotiate(&ALL, b"*;q=0.1, zstd;q=0"),
            Some(Algorithm::Brotli)
        );
        assert_eq!(negotiate(&ALL, b"*"), Some(Algorithm::Zstd));
        assert_eq!(negotiate(&ALL, b"*;q=0"), None);
        assert_eq!(negotiate(&ALL, b"gzip; q=0.000"), None);
        assert_eq!(negotiate(&ALL, b"br ; q=1.0"), Some(Algorithm::Brotli));
    }

    fn rules() -> Compression {
        Compression::new(&CompressionSettings {
            enabled: true,
            min_bytes: ByteSize(100),
            ..CompressionSettings::default()
        })
        .unwrap()
    }

    fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in list {
            map.append(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn plan(method: Method, status: u16, list: &[(&'static str, &'static str)]) -> Plan {
        let accept = HeaderValue::from_static("gzip");
        let map = headers(list);
        let length = map
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        rules().plan(&method, status, &map, length, Some(&accept))
    }

    #[test]
    fn listed_types_are_compressed() {
        let html = [("content-type", "text/html; charset=utf-8")];
        assert_eq!(
            plan(Method::GET, 200, &html),
            Plan {
                vary: true,
                encode: Some(Algorithm::Gzip)
            }
        );
        assert!(
            plan(Method::GET, 200, &[("content-type", "application/json")])
                .encode
                .is_some()
        );
        assert_eq!(
            plan(Method::GET, 200, &[("content-type", "image/png")]),
            NONE
        );
        assert_eq!(plan(Method::GET, 200, &[]), NONE);
        assert_eq!(
            plan(Method::GET, 200, &[("content-type", "text/event-stream")]),
            NONE
        );
    }

    #[test]
    fn the_never_compress_cases() {
        let html = ("content-type", "text/html");
        assert_eq!(plan(Method::HEAD, 200, &[html]), NONE);
        assert_eq!(plan(Method::GET, 204, &[html]), NONE);
        assert_eq!(plan(Method::GET, 304, &[html]), NONE);
        assert_eq!(plan(Method::GET, 206, &[html]), NONE);
        assert_eq!(
            plan(
                Method::GET,
                200,
                &[html, ("content-range", "bytes 0-9/100")]
            ),
            NONE
        );
        assert_eq!(
            plan(Method::GET, 200, &[html, ("content-encoding", "gzip")]),
            NONE
        );
        assert_eq!(
            plan(
                Method::GET,
                200,
                &[html, ("cache-control", "public, No-Transform")]
            ),
            NONE
        );
        let small = plan(Method::GET, 200, &[html, ("content-length", "99")]);
        assert_eq!(
            small,
            Plan {
                vary: true,
                encode: None
            }
        );
        assert!(plan(Method::GET, 200, &[html, ("content-length", "100")])
            .encode
            .is_some());
    }

    #[test]
    fn compressed_headers_drop_the_length_and_weaken_the_etag() {
        let mut map = headers(&[("content-length", "5000"), ("etag", "\"v1\"")]);
        encoded_headers(&mut map, Algorithm::Brotli);
        assert_eq!(map.get("content-encoding").unwrap(), "br");
        assert!(map.get("content-length").is_none());
        assert_eq!(map.get("etag").unwrap(), "W/\"v1\"");
        let mut weak = headers(&[("etag", "W/\"v1\"")]);
        encoded_headers(&mut weak, Algorithm::Gzip);
        assert_eq!(weak.get("etag").unwrap(), "W/\"v1\"");
    }

    #[test]
    fn vary_is_added_once() {
        let mut map = headers(&[("vary", "Origin")]);
        add_vary(&mut map);
        add_vary(&mut map);
        let vary: Vec<_> = map.get_all("vary").collect();
        assert_eq!(vary.len(), 2);
        let mut star = headers(&[("vary", "*")]);
        add_vary(&mut star);
        assert_eq!(star.get_all("vary").count(), 1);
    }
}
