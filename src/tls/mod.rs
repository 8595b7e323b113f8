//! Client-side TLS termination: the certificates chosen by SNI, the protocol defaults, the
//! handshake on a TLS listener, and what the request path learns of it (docs/tls.md).
//!
//! The certificates are one immutable [`Certificates`] table, published through
//! [`TlsStore`] (arc-swap) at start-up and on every reload. Each handshake takes the table
//! current at that moment, so a reload serves new certificates to new connections while
//! established ones keep theirs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_http::Protocol;
use arc_swap::ArcSwapOption;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::pkey::PKey;
use openssl::ssl::{
    select_next_proto, AlpnError, NameType, SniError, Ssl, SslAcceptor, SslContext, SslMethod,
    SslOptions, SslRef, SslVersion,
};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

use crate::settings::{CertificateSettings, TlsSettings, TlsVersion};

/// ALPN protocols offered, best first: HTTP/2, then HTTP/1.1.
const ALPN: &[u8] = b"\x02h2\x08http/1.1";

/// ALPN with `tls.http2.enabled = false`.
const ALPN_HTTP1: &[u8] = b"\x08http/1.1";

/// Key exchange groups: X25519, then P-256 (Mozilla intermediate; every client has one).
const GROUPS: &str = "X25519:P-256";

/// Ties resumed sessions to gatehouse's contexts (OpenSSL requires one for the session
/// cache to resume sessions of contexts switched to by SNI).
const SESSION_ID_CONTEXT: &[u8] = b"gatehouse";

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path:?}: {reason}")]
pub struct CertificateError {
    /// The settings key at fault, e.g. `tls.certificates[0].key`.
    pub key: String,
    /// The file, or the name at fault.
    pub path: String,
    pub reason: String,
}

/// One loaded certificate: its context and the names it is chosen for.
pub struct Loaded {
    pub context: SslContext,
    pub names: Vec<String>,
}

/// The certificate table: the default certificate and the others by server name.
pub struct Certificates {
    default: SslContext,
    exact: HashMap<String, SslContext>,
    /// By the suffix after `*.`: `*.b.test` is kept as `b.test`.
    wildcard: HashMap<String, SslContext>,
}

impl Certificates {
    /// Loads every certificate of `[tls]`; `None` when there are none.
    pub fn load(settings: &TlsSettings) -> Result<Option<Self>, CertificateError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for index in 0..settings.certificates.len() {
            let loaded = load_certificate(settings, index)?;
            for name in &loaded.names {
                let table = match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name.clone()),
                };
                if let std::collections::hash_map::Entry::Vacant(entry) = table {
                    entry.insert(loaded.context.clone());
                } else {
                    return Err(CertificateError {
                        key: format!("tls.certificates[{index}].names"),
                        path: name.clone(),
                        reason: "another certificate is already chosen for this name".into(),
                    });
                }
            }
            default.get_or_insert(loaded.context);
        }
        Ok(default.map(|default| Self {
            default,
            exact,
            wildcard,
        }))
    }

    /// The context for a server name: an exact name, else a wildcard one label up, else
    /// the default.
    pub fn find(&self, name: Option<&str>) -> &SslContext {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(context) = self.exact.get(&name) {
            return context;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// Loads certificate `index` of `settings` into a context with gatehouse's protocol
/// settings. Errors name the settings key and the file.
pub fn load_certificate(settings: &TlsSettings, index: usize) -> Result<Loaded, CertificateError> {
    let entry: &CertificateSettings = &settings.certificates[index];
    let key = |field: &str| format!("tls.certificates[{index}].{field}");
    let failed = |field: &str, path: &str, reason: String| CertificateError {
        key: key(field),
        path: path.to_string(),
        reason,
    };
    let cert_pem =
        std::fs::read(&entry.cert).map_err(|err| failed("cert", &entry.cert, err.to_string()))?;
    let chain = X509::stack_from_pem(&cert_pem)
        .map_err(|err| failed("cert", &entry.cert, format!("not a PEM certificate: {err}")))?;
    let Some(leaf) = chain.first() else {
        return Err(failed(
            "cert",
            &entry.cert,
            "no PEM certificate in it".into(),
        ));
    };
    let key_pem =
        std::fs::read(&entry.key).map_err(|err| failed("key", &entry.key, err.to_string()))?;
    let private_key = PKey::private_key_from_pem(&key_pem)
        .map_err(|err| failed("key", &entry.key, format!("not a PEM private key: {err}")))?;
    let mut builder =
        acceptor(settings).map_err(|err| failed("ciphers", &settings.ciphers, err))?;
    builder
        .set_certificate(leaf)
        .map_err(|err| failed("cert", &entry.cert, err.to_string()))?;
    for intermediate in chain.iter().skip(1) {
        builder
            .add_extra_chain_cert(intermediate.clone())
            .map_err(|err| failed("cert", &entry.cert, err.to_string()))?;
    }
    let mismatch = |_| {
        let reason = format!("does not match the certificate in {}", entry.cert);
        failed("key", &entry.key, reason)
    };
    builder.set_private_key(&private_key).map_err(mismatch)?;
    builder.check_private_key().map_err(mismatch)?;
    if let Some(path) = &entry.ocsp_file {
        let response = ocsp_response(path).map_err(|reason| failed("ocsp_file", path, reason))?;
        staple(&mut builder, response).map_err(|err| failed("ocsp_file", path, err.to_string()))?;
    }
    let names = if entry.names.is_empty() {
        leaf.subject_alt_names()
            .into_iter()
            .flatten()
            .filter_map(|name| name.dnsname().map(str::to_ascii_lowercase))
            .collect()
    } else {
        let mut names = Vec::with_capacity(entry.names.len());
        for name in &entry.names {
            names.push(server_name(name).map_err(|reason| failed("names", name, reason))?);
        }
        names
    };
    Ok(Loaded {
        context: builder.build().into_context(),
        names,
    })
}

/// Reads a DER OCSP response and checks it parses, so a broken file is a settings error
/// rather than garbage sent to every client.
fn ocsp_response(path: &str) -> Result<Vec<u8>, String> {
    let der = std::fs::read(path).map_err(|err| err.to_string())?;
    openssl::ocsp::OcspResponse::from_der(&der)
        .map_err(|err| format!("not a DER OCSP response: {err}"))?;
    Ok(der)
}

/// Staples `response` to every handshake of this certificate whose client asks for the
/// certificate's status (the `status_request` extension).
fn staple(
    builder: &mut openssl::ssl::SslAcceptorBuilder,
    response: Vec<u8>,
) -> Result<(), ErrorStack> {
    builder.set_status_callback(move |ssl| {
        ssl.set_ocsp_status(&response)?;
        Ok(true)
    })
}

/// A `names` entry checked and in lowercase: a host name or `*.` and one.
fn server_name(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let host = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !host.is_empty()
        && !host.starts_with('.')
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(lower)
    } else {
        Err("write a host name or \"*.example.com\"".into())
    }
}

/// A context builder with gatehouse's protocol settings and no certificate yet: Mozilla
/// intermediate (TLS 1.2 and 1.3, AEAD ciphers with forward secrecy, the server's order),
/// X25519 and P-256, ALPN h2 (unless `http2.enabled` is off) and http/1.1, SNI switching, OpenSSL's session cache and
/// tickets.
fn acceptor(settings: &TlsSettings) -> Result<openssl::ssl::SslAcceptorBuilder, String> {
    let setup = |settings: &TlsSettings| -> Result<_, ErrorStack> {
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        let min = match settings.min_version {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        builder.set_min_proto_version(Some(min))?;
        builder.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
        builder.set_groups_list(GROUPS)?;
        builder.set_session_id_context(SESSION_ID_CONTEXT)?;
        // Read whole socket buffers rather than each record's 5-byte header and then its
        // body: a request costs one read instead of three (the third finding the socket
        // empty). Readers of the stream read until it is pending, so nothing sits unread
        // in OpenSSL's buffer.
        builder.set_read_ahead(true);
        let ours = if settings.http2.enabled {
            ALPN
        } else {
            ALPN_HTTP1
        };
        builder.set_alpn_select_callback(move |_, offered| {
            select_next_proto(ours, offered).ok_or(AlpnError::NOACK)
        });
        builder.set_servername_callback(switch_certificate);
        Ok(builder)
    };
    let mut builder = setup(settings).map_err(|err| err.to_string())?;
    builder
        .set_cipher_list(&settings.ciphers)
        .map_err(|_| "OpenSSL knows none of these ciphers".to_string())?;
    Ok(builder)
}

/// The SNI callback: switches the connection to the certificate for the name it asks for.
fn switch_certificate(ssl: &mut SslRef, _: &mut openssl::ssl::SslAlert) -> Result<(), SniError> {
    let Some(index) = table_index() else {
        return Ok(());
    };
    let Some(table) = ssl.ex_data(index).cloned() else {
        return Ok(());
    };
    let context = table.find(ssl.servername(NameType::HOST_NAME));
    let current: *const openssl::ssl::SslContextRef = ssl.ssl_context();
    if !std::ptr::eq(&**context, current) {
        ssl.set_ssl_context(context)
            .map_err(|_| SniError::ALERT_FATAL)?;
    }
    Ok(())
}

/// Where each connection keeps the table its handshake started with.
fn table_index() -> Option<Index<Ssl, Arc<Certificates>>> {
    static INDEX: OnceLock<Option<Index<Ssl, Arc<Certificates>>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The certificate table in use; replaced whole by a reload.
#[derive(Default)]
pub struct TlsStore(ArcSwapOption<Certificates>);

impl TlsStore {
    /// Publishes a new table and returns the one it replaces.
    pub fn swap(&self, table: Option<Arc<Certificates>>) -> Option<Arc<Certificates>> {
        self.0.swap(table)
    }
}

/// The TLS step of a TLS listener's connections, after the connection checks.
#[derive(Clone)]
pub struct Handshake {
    store: Arc<TlsStore>,
    /// The whole handshake must end within this; zero waits without limit.
    timeout: Duration,
}

impl Handshake {
    pub fn new(store: Arc<TlsStore>, timeout: Duration) -> Self {
        Self { store, timeout }
    }

    /// Runs the server handshake on `io`; the stream and the protocol ALPN chose, or `None`
    /// to close the connection.
    pub async fn accept<T>(&self, io: T, client: SocketAddr) -> Option<(SslStream<T>, Protocol)>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let table = self.store.0.load_full()?;
        let index = table_index()?;
        let mut ssl = Ssl::new(&table.default).ok()?;
        ssl.set_ex_data(index, table);
        let mut stream = SslStream::new(ssl, io).ok()?;
        let handshake = Pin::new(&mut stream).accept();
        let outcome = crate::conn::within(self.timeout, "TLS handshake", handshake).await;
        if let Err(err) = outcome {
            // At debug: scanners and old clients must not flood the log.
            log::debug!("TLS handshake with {client} failed: {err}");
            return None;
        }
        let protocol = match stream.ssl().selected_alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        Some((stream, protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_host_names_or_one_wildcard() {
        assert_eq!(server_name("A.Test").unwrap(), "a.test");
        assert_eq!(server_name("*.b.test").unwrap(), "*.b.test");
        for bad in ["*", "", "*.", "a..", "a b", "a.test:443", "https://a.test"] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_ciphers_are_refused() {
        let settings = TlsSettings {
            ciphers: "NOT-A-CIPHER".into(),
            ..TlsSettings::default()
        };
        assert!(acceptor(&settings).is_err());
        assert!(acceptor(&TlsSettings::default()).is_ok());
    }
}
