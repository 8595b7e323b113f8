//! The one error type of the request path: which side failed, mapped to a status in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

use crate::settings::RetryOn;
use crate::upstream::{Blame, Side, UpstreamError};

/// Why gatehouse answered a request itself instead of with a server's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("the pool has no server that can take the request")]
    NoServer,
    #[error("the request's host is empty or not a host name")]
    BadHost,
    #[error("the request head is larger than max_request_header_size")]
    HeaderTooLarge,
    #[error("the request body is larger than the route's max_body_size")]
    BodyTooLarge,
    #[error("the client sent a malformed or incomplete request body: {0}")]
    BadRequestBody(String),
    /// The server failed: it could not be reached, took too long, or broke the exchange.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the client's address is not allowed")]
    Forbidden,
    #[error("the client exceeded a rate limit")]
    TooManyRequests(std::time::Duration),
    #[error("the request line is longer than max_request_line")]
    RequestLineTooLong,
    #[error("the absolute-form target names another host than Host")]
    HostMismatch,
    #[error("the request target has a `..` path segment")]
    DotSegment,
    #[error("the client paused its request body longer than client_body_timeout")]
    BodyStalled,
    #[error("the client sent its request body slower than min_body_rate")]
    BodyTooSlow,
}

impl Blame for ProxyError {
    fn side(&self) -> Side {
        match self {
            Self::Upstream(err) => err.side(),
            // Every server the pool has is down, drained or full: none of them failed this
            // request, and neither did the client.
            Self::NoServer => Side::Internal,
            Self::NoRoute
            | Self::BadHost
            | Self::HeaderTooLarge
            | Self::BodyTooLarge
            | Self::BadRequestBody(_)
            | Self::Forbidden
            | Self::TooManyRequests(_)
            | Self::RequestLineTooLong
            | Self::HostMismatch
            | Self::DotSegment
            | Self::BodyStalled
            | Self::BodyTooSlow => Side::Downstream,
        }
    }

    fn retry(&self) -> Option<RetryOn> {
        match self {
            Self::Upstream(err) => err.retry(),
            _ => None,
        }
    }
}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoServer => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequestBody(_) | Self::BadHost | Self::HostMismatch | Self::DotSegment => {
                StatusCode::BAD_REQUEST
            }
            Self::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            Self::BodyStalled | Self::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            Self::Upstream(UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short, generic page: the reason phrase only, never a server's address or software.
    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = page_head(status);
        match self {
            Self::TooManyRequests(wait) => {
                // Whole seconds, rounded up: a client retrying sooner would be refused again.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.insert_header((header::RETRY_AFTER, secs.max(1).to_string()));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        if matches!(
            self,
            Self::BadRequestBody(_)
                | Self::HeaderTooLarge
                | Self::BodyTooLarge
                | Self::BodyStalled
                | Self::BodyTooSlow
                | Self::RequestLineTooLong
                | Self::HostMismatch
                | Self::DotSegment
        ) {
            // The rest of the request is unread or broken, or the client is not to be trusted
            // with another request on this connection.
            response.force_close();
        }
        response.body(page_body(status))
    }
}

/// The head of gatehouse's generic page for `status`: plain text, never stored.
pub fn page_head(status: StatusCode) -> HttpResponseBuilder {
    let mut response = HttpResponseBuilder::new(status);
    response.insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"));
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    response
}

/// The body of gatehouse's generic page: the status and its reason phrase only, never a
/// server's address or software.
pub fn page_body(status: StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    format!("{} {reason}\n", status.as_u16())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::StatusRange;
    use crate::upstream::head::HeadError;
    use crate::upstream::Outcome;

    /// Every kind of error: the status the client gets, who failed, the retry condition met,
    /// and whether passive detection counts it against the server.
    #[test]
    fn every_error_has_one_status_side_retry_condition_and_passive_verdict() {
        use RetryOn::{ConnectError, Reset, Timeout};
        use Side::{Downstream, Internal, Upstream};
        let upstream = |err| ProxyError::Upstream(err);
        let cases: Vec<(ProxyError, u16, Side, Option<RetryOn>)> = vec![
            (ProxyError::NoRoute, 404, Downstream, None),
            (ProxyError::NoServer, 503, Internal, None),
            (ProxyError::BadHost, 400, Downstream, None),
            (ProxyError::HeaderTooLarge, 431, Downstream, None),
            (ProxyError::BodyTooLarge, 413, Downstream, None),
            (
                ProxyError::BadRequestBody("x".into()),
                400,
                Downstream,
                None,
            ),
            (ProxyError::Forbidden, 403, Downstream, None),
            (
                ProxyError::TooManyRequests(Duration::from_secs(1)),
                429,
                Downstream,
                None,
            ),
            (ProxyError::RequestLineTooLong, 414, Downstream, None),
            (ProxyError::HostMismatch, 400, Downstream, None),
            (ProxyError::DotSegment, 400, Downstream, None),
            (ProxyError::BodyStalled, 408, Downstream, None),
            (ProxyError::BodyTooSlow, 408, Downstream, None),
            (
                upstream(UpstreamError::Connect("refused".into())),
                502,
                Upstream,
                Some(ConnectError),
            ),
            (
                upstream(UpstreamError::SelfConnect),
                502,
                Upstream,
                Some(ConnectError),
            ),
            (
                upstream(UpstreamError::ConnectTimeout),
                504,
                Upstream,
                Some(ConnectError),
            ),
            (
                upstream(UpstreamError::Tls("TLS handshake: x".into())),
                502,
                Upstream,
                Some(ConnectError),
            ),
            (
                upstream(UpstreamError::ResponseTimeout),
                504,
                Upstream,
                Some(Timeout),
            ),
            (
                upstream(UpstreamError::Reset("reset".into())),
                502,
                Upstream,
                Some(Reset),
            ),
            (
                upstream(UpstreamError::BadHead(HeadError::Malformed)),
                502,
                Upstream,
                Some(Reset),
            ),
        ];
        let fail_statuses = [StatusRange {
            low: 500,
            high: 599,
        }];
        for (err, status, side, retry) in cases {
            assert_eq!(err.status_code().as_u16(), status, "{err:?}");
            let outcome = Outcome::of::<ProxyError>(Err(&err), &fail_statuses);
            assert_eq!(outcome.side(), Some(side), "{err:?}");
            assert_eq!(outcome.retry_cause(), retry, "{err:?}");
            let passive = (side == Upstream).then(|| err.to_string());
            assert_eq!(outcome.passive_failure(), passive.as_deref(), "{err:?}");
        }
    }

    #[test]
    fn a_server_s_failure_keeps_its_words_in_logs_and_passive_detection() {
        let cases = [
            (
                UpstreamError::Connect("Connection refused (os error 111)".into()),
                "connecting to the server failed: Connection refused (os error 111)",
            ),
            (
                UpstreamError::SelfConnect,
                "connecting to the server failed: connected to itself: nothing listens on the \
                 server's port",
            ),
            (
                UpstreamError::ConnectTimeout,
                "connecting to the server timed out",
            ),
            (
                UpstreamError::ResponseTimeout,
                "the server sent no response head in time",
            ),
            (
                UpstreamError::Reset("connection reset".into()),
                "the server failed while the request was exchanged: connection reset",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(ProxyError::from(err).to_string(), text);
        }
    }
}
