//! TLS to a pool's servers (`[pools.NAME.tls]`): the client context, how each connection
//! names and verifies its server, the handshake, and why a handshake failed.

use std::pin::Pin;
use std::sync::Arc;

use openssl::ssl::{self, SslConnector, SslOptions};
use openssl::x509::X509VerifyResult;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::UpstreamError;
use crate::settings::{UpstreamTlsError, UpstreamTlsSettings};

/// TLS to a pool's servers as each connection needs it: the OpenSSL client context built
/// from `[pools.NAME.tls]` and how servers are named. Built once per worker client (and per
/// prober); the same loader checks the settings at load, so the files are read one way.
#[derive(Debug)]
pub struct UpstreamTls {
    context: SslConnector,
    sni: Option<String>,
    verify: bool,
}

impl UpstreamTls {
    /// The context for `[pools.NAME.tls]`: the settings' own (files read and checked as at
    /// load), with how gatehouse speaks to servers over it.
    pub fn new(settings: &UpstreamTlsSettings) -> Result<Self, UpstreamTlsError> {
        let mut builder = settings.client_context()?;
        // A server that closes without close_notify ends the stream as a plain socket's
        // end-of-file does: close-delimited bodies end there, and the end-of-file marking
        // still tells a cut-off framed body from a whole one.
        builder.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
        // One read per socket buffer instead of one per record header and one per body
        // (docs/tls.md, as on the TLS listeners).
        builder.set_read_ahead(true);
        // gatehouse speaks HTTP/1.1 to servers; saying so keeps an h2-first server from
        // guessing otherwise.
        builder
            .set_alpn_protos(b"\x08http/1.1")
            .map_err(|source| UpstreamTlsError::Setup { key: "", source })?;
        Ok(Self {
            context: builder.build(),
            sni: settings.sni.clone(),
            verify: settings.verify,
        })
    }

    /// A TLS stream over `tcp` to a server whose address has `host`, ready for its handshake:
    /// SNI and the verified name are `sni` when set, else `host` (no SNI for an IP address).
    pub fn stream(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<SslStream<TcpStream>, UpstreamError> {
        let unusable = |err: openssl::error::ErrorStack| UpstreamError::Tls(format!("TLS: {err}"));
        let mut config = self.context.configure().map_err(unusable)?;
        config.set_verify_hostname(self.verify);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = self.sni.as_deref().unwrap_or(host);
        let ssl = config.into_ssl(name).map_err(unusable)?;
        SslStream::new(ssl, tcp).map_err(unusable)
    }

    /// The TLS handshake over `tcp` with a server whose address has `host` (see
    /// [`stream`](Self::stream)). A failure is a connect failure, in OpenSSL's words.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<SslStream<TcpStream>, UpstreamError> {
        let mut stream = self.stream(tcp, host)?;
        match Pin::new(&mut stream).connect().await {
            Ok(()) => Ok(stream),
            Err(err) => Err(self.failure(&stream, &err)),
        }
    }

    /// Why a handshake failed, in OpenSSL's words: the certificate check's verdict when that
    /// is what failed, else the reasons on OpenSSL's error stack.
    pub fn failure(&self, stream: &SslStream<TcpStream>, err: &ssl::Error) -> UpstreamError {
        UpstreamError::Tls(self.reason(stream, err))
    }

    fn reason(&self, stream: &SslStream<TcpStream>, err: &ssl::Error) -> String {
        let verdict = stream.ssl().verify_result();
        if self.verify && verdict != X509VerifyResult::OK {
            return format!(
                "TLS handshake: certificate verify failed: {}",
                verdict.error_string()
            );
        }
        let reasons = err.ssl_error().map(|stack| {
            stack
                .errors()
                .iter()
                .filter_map(|e| e.reason())
                .collect::<Vec<_>>()
                .join("; ")
        });
        match (reasons, err.io_error()) {
            (Some(reasons), _) if !reasons.is_empty() => format!("TLS handshake: {reasons}"),
            (_, Some(io)) => format!("TLS handshake: {io}"),
            _ => format!("TLS handshake: {err}"),
        }
    }
}

/// A TLS pool's context, or why it could not be built (every connect then fails with that).
pub type TlsContext = Result<Arc<UpstreamTls>, Arc<str>>;

/// A pool's TLS context from its `[pools.NAME.tls]`. The files were read when the settings
/// were loaded; an error here means they have changed since, and is logged.
pub fn tls_context(settings: &UpstreamTlsSettings) -> TlsContext {
    UpstreamTls::new(settings).map(Arc::new).map_err(|err| {
        log::error!("upstream TLS: {err}");
        Arc::from(err.to_string())
    })
}

/// The context to connect with, or the connect failure that a context which could not be
/// built is.
pub fn usable_tls(context: &TlsContext) -> Result<Arc<UpstreamTls>, UpstreamError> {
    context
        .clone()
        .map_err(|reason| UpstreamError::Tls(format!("TLS: {reason}")))
}
