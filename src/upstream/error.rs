//! What can go wrong in an exchange with a server, typed where it goes wrong.

use std::io;

use awc::error::{ConnectError, SendRequestError};

use super::connect::SELF_CONNECTED;
use super::head::{HeadError, ReadError};

/// Why an exchange with a server failed on the server's side. The texts are what logs,
/// passive detection and the admin API show; the client only ever sees a generic page.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The server could not be reached: refused, unreachable or not resolved.
    #[error("connecting to the server failed: {0}")]
    Connect(String),
    /// The socket connected to itself: nothing listens on the server's port.
    #[error("connecting to the server failed: {SELF_CONNECTED}")]
    SelfConnect,
    /// No connection (TLS handshake included) within the pool's `connect_timeout`.
    #[error("connecting to the server timed out")]
    ConnectTimeout,
    /// The TLS handshake failed or could not start; the text gives OpenSSL's reason.
    #[error("connecting to the server failed: {0}")]
    Tls(String),
    /// No response head within the response timeout.
    #[error("the server sent no response head in time")]
    ResponseTimeout,
    /// The connection broke or closed while the request was exchanged.
    #[error("the server failed while the request was exchanged: {0}")]
    Reset(String),
    /// The server's response head is not one gatehouse can read.
    #[error("the server failed while the request was exchanged: {0}")]
    BadHead(#[from] HeadError),
}

impl UpstreamError {
    /// The error a connect failure of the connector service travels through awc as; awc
    /// hands it back unchanged inside [`SendRequestError::Connect`].
    pub fn into_io(self) -> io::Error {
        let kind = match self {
            Self::SelfConnect => io::ErrorKind::ConnectionRefused,
            Self::Tls(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// A connect failure as awc reports it: the error the connector service made, when it
    /// made one, else the socket's.
    fn from_connect_io(err: io::Error) -> Self {
        let text = err.to_string();
        match err.into_inner().map(|inner| inner.downcast::<Self>()) {
            Some(Ok(ours)) => *ours,
            _ => Self::Connect(text),
        }
    }
}

impl From<ReadError> for UpstreamError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Head(err) => Self::BadHead(err),
            other => Self::Reset(other.to_string()),
        }
    }
}

impl From<SendRequestError> for UpstreamError {
    fn from(err: SendRequestError) -> Self {
        match err {
            SendRequestError::Connect(ConnectError::Timeout) => Self::ConnectTimeout,
            SendRequestError::Connect(ConnectError::Io(err)) => Self::from_connect_io(err),
            SendRequestError::Connect(err) => Self::Connect(err.to_string()),
            SendRequestError::Timeout => Self::ResponseTimeout,
            other => Self::Reset(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_error_made_by_the_connector_comes_back_through_awc_as_it_was() {
        let through_awc = |err: UpstreamError| {
            UpstreamError::from(SendRequestError::Connect(ConnectError::Io(err.into_io())))
        };
        assert!(matches!(
            through_awc(UpstreamError::SelfConnect),
            UpstreamError::SelfConnect
        ));
        let tls = through_awc(UpstreamError::Tls("TLS handshake: bad".into()));
        assert_eq!(
            tls.to_string(),
            "connecting to the server failed: TLS handshake: bad"
        );
        assert!(matches!(tls, UpstreamError::Tls(_)));
    }

    #[test]
    fn awc_s_own_errors_keep_their_words() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let text = refused.to_string();
        let err = UpstreamError::from(SendRequestError::Connect(ConnectError::Io(refused)));
        assert_eq!(
            err.to_string(),
            format!("connecting to the server failed: {text}")
        );
        assert!(matches!(
            UpstreamError::from(SendRequestError::Connect(ConnectError::Timeout)),
            UpstreamError::ConnectTimeout
        ));
        assert!(matches!(
            UpstreamError::from(SendRequestError::Connect(ConnectError::NoRecords)),
            UpstreamError::Connect(_)
        ));
        assert!(matches!(
            UpstreamError::from(SendRequestError::Timeout),
            UpstreamError::ResponseTimeout
        ));
        let broken = SendRequestError::Send(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(
            UpstreamError::from(broken),
            UpstreamError::Reset(_)
        ));
    }
}
