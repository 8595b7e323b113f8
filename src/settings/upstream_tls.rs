//! `[pools.NAME.tls]`: TLS to a pool's servers (docs/tls.md, "TLS to the servers"), and the
//! one loader of its files, which validation runs at load and every connection's context
//! starts from.

use std::io;

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
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

/// Why `[pools.NAME.tls]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path} holds no {what} in PEM form{}", detail(.reason))]
    Pem {
        key: &'static str,
        path: String,
        what: &'static str,
        reason: Option<String>,
    },
    #[error("the private key in {path} does not belong to the certificate in {cert}")]
    KeyMismatch { path: String, cert: String },
    #[error("OpenSSL refused it: {}", first_reason(.source).unwrap_or_else(|| .source.to_string()))]
    Setup {
        key: &'static str,
        source: ErrorStack,
    },
}

fn detail(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map_or_else(String::new, |reason| format!(" ({reason})"))
}

impl UpstreamTlsError {
    /// The key of `[pools.NAME.tls]` at fault (empty for the section as a whole).
    pub fn key(&self) -> &'static str {
        match self {
            Self::Read { key, .. } | Self::Pem { key, .. } | Self::Setup { key, .. } => key,
            Self::KeyMismatch { .. } => "key",
        }
    }
}

impl UpstreamTlsSettings {
    /// The OpenSSL client context these settings describe: the oldest version, the trusted
    /// CAs, verification and the client certificate, with every file read and checked. The
    /// upstream connections add how gatehouse speaks over it.
    pub fn client_context(&self) -> Result<SslConnectorBuilder, UpstreamTlsError> {
        let setup = |key| move |source| UpstreamTlsError::Setup { key, source };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(setup(""))?;
        builder
            .set_min_proto_version(Some(match self.min_version {
                UpstreamTlsVersion::Tls12 => SslVersion::TLS1_2,
                UpstreamTlsVersion::Tls13 => SslVersion::TLS1_3,
            }))
            .map_err(setup("min_version"))?;
        if let Some(path) = &self.ca_file {
            let cas = certificates("ca_file", path, "certificate")?;
            let mut store = X509StoreBuilder::new().map_err(setup("ca_file"))?;
            for ca in cas {
                store.add_cert(ca).map_err(setup("ca_file"))?;
            }
            // Only the configured CAs: the system's roots would trust far more.
            builder.set_cert_store(store.build());
        }
        if !self.verify {
            builder.set_verify(SslVerifyMode::NONE);
        }
        if let (Some(cert_path), Some(key_path)) = (&self.cert, &self.key) {
            let mut chain = certificates("cert", cert_path, "certificate")?.into_iter();
            if let Some(leaf) = chain.next() {
                builder.set_certificate(&leaf).map_err(setup("cert"))?;
            }
            for extra in chain {
                builder.add_extra_chain_cert(extra).map_err(setup("cert"))?;
            }
            let key = PKey::private_key_from_pem(&read("key", key_path)?).map_err(|err| {
                UpstreamTlsError::Pem {
                    key: "key",
                    path: key_path.clone(),
                    what: "private key",
                    reason: first_reason(&err),
                }
            })?;
            // OpenSSL refuses a key that does not match the certificate already set.
            let mismatch = |_| UpstreamTlsError::KeyMismatch {
                path: key_path.clone(),
                cert: cert_path.clone(),
            };
            builder.set_private_key(&key).map_err(mismatch)?;
            builder.check_private_key().map_err(mismatch)?;
        }
        Ok(builder)
    }
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, UpstreamTlsError> {
    std::fs::read(path).map_err(|source| UpstreamTlsError::Read {
        key,
        path: path.into(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &str,
    what: &'static str,
) -> Result<Vec<X509>, UpstreamTlsError> {
    let pem = read(key, path)?;
    let bad = |reason| UpstreamTlsError::Pem {
        key,
        path: path.into(),
        what,
        reason,
    };
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(bad(None)),
        Err(err) => Err(bad(first_reason(&err))),
    }
}

/// The first reason on OpenSSL's error stack, in its words.
fn first_reason(err: &ErrorStack) -> Option<String> {
    err.errors()
        .iter()
        .find_map(|e| e.reason())
        .map(str::to_string)
}
