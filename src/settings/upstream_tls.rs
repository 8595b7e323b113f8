//! `[pools.NAME.tls]`: TLS to a pool's servers (docs/tls.md, "TLS to the servers").

use serde::{Deserialize, Serialize};

/// How gatehouse reaches a pool's servers over TLS. Present means every server of the pool
/// speaks TLS; absent means plain HTTP.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsSettings {
    /// The server name sent (SNI) and verified; absent means the host of each server's
    /// address when it is a name, and no SNI (the IP address verified) when it is an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Whether the server's certificate must chain to a trusted CA and match the name.
    pub verify: bool,
    /// PEM file of the CAs trusted for the servers' certificates, instead of the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM file of the client certificate (and its chain) gatehouse shows the servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM file of the client certificate's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub min_version: UpstreamTlsVersion,
}

impl Default for UpstreamTlsSettings {
    fn default() -> Self {
        Self {
            sni: None,
            verify: true,
            ca_file: None,
            cert: None,
            key: None,
            min_version: UpstreamTlsVersion::Tls12,
        }
    }
}

/// The oldest TLS version offered to the servers.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum UpstreamTlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

one_of!(UpstreamTlsVersion { "1.2" => UpstreamTlsVersion::Tls12, "1.3" => UpstreamTlsVersion::Tls13 });

impl From<UpstreamTlsVersion> for String {
    fn from(version: UpstreamTlsVersion) -> String {
        match version {
            UpstreamTlsVersion::Tls12 => "1.2".into(),
            UpstreamTlsVersion::Tls13 => "1.3".into(),
        }
    }
}
