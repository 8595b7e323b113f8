//! The one error type of the request path: which side failed, mapped to a status in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

use crate::upstream::UpstreamError;

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
        let mut response = HttpResponseBuilder::new(status);
        response.insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"));
        response.insert_header((header::CACHE_CONTROL, "no-store"));
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
        let reason = status.canonical_reason().unwrap_or("Error");
        response.body(format!("{} {reason}\n", status.as_u16()))
    }
}
