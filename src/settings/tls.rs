//! `[tls]`: client-side TLS termination, its listeners and certificates (docs/tls.md).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// Mozilla's "intermediate" TLS 1.2 cipher list (configuration generator, version 5): forward
/// secrecy and AEAD only, for every client of the last several years. TLS 1.3 suites are
/// OpenSSL's own, all of which are fine.
pub const INTERMEDIATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
     ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
     ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// `[tls]`. No TLS listeners by default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// TLS listen addresses, beside `server.listen`'s plain ones.
    pub listen: Vec<SocketAddr>,
    /// Certificates, chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateSettings>,
    /// The oldest protocol version accepted.
    pub min_version: TlsVersion,
    /// The TLS 1.2 cipher list, in OpenSSL's syntax, in the server's order of preference.
    pub ciphers: String,
    /// HTTP/2 for clients that offer it in ALPN.
    pub http2: Http2Settings,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            certificates: Vec::new(),
            min_version: TlsVersion::Tls12,
            ciphers: INTERMEDIATE_CIPHERS.to_string(),
            http2: Http2Settings::default(),
        }
    }
}

/// `[tls.http2]`: whether TLS listeners offer HTTP/2, and the limits of each HTTP/2
/// connection (docs/tls.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Offer `h2` in ALPN; off, every TLS client speaks HTTP/1.1.
    pub enabled: bool,
    /// Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// The largest request header list, as HPACK decodes it with 32 bytes per field
    /// (SETTINGS_MAX_HEADER_LIST_SIZE); a larger one gets 431.
    pub max_header_list_size: ByteSize,
    /// Streams one connection may open in all; then `GOAWAY`, and the client opens a new
    /// connection (NGINX's `keepalive_requests`).
    pub max_requests: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            // NGINX's http2_max_concurrent_streams.
            max_concurrent_streams: 128,
            // As `server.max_request_header_size`.
            max_header_list_size: ByteSize::kib(32),
            max_requests: 1000,
        }
    }
}

/// `[[tls.certificates]]`: one certificate and its key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSettings {
    /// PEM file: the certificate, then its intermediates (the full chain).
    pub cert: String,
    /// PEM file: the private key.
    pub key: String,
    /// Server names it is chosen for (`example.com`, `*.example.com`); empty takes the
    /// certificate's DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// DER file: an OCSP response for the certificate, stapled to every handshake that asks
    /// for one. Read again at every reload; refreshing it is the operator's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_file: Option<String>,
}

/// The oldest TLS version accepted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

one_of!(TlsVersion { "1.2" => TlsVersion::Tls12, "1.3" => TlsVersion::Tls13 });

impl From<TlsVersion> for String {
    fn from(version: TlsVersion) -> String {
        match version {
            TlsVersion::Tls12 => "1.2".into(),
            TlsVersion::Tls13 => "1.3".into(),
        }
    }
}
