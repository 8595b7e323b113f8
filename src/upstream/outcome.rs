//! How one exchange with a server went, classified once: which side failed and whether
//! another try may follow (as Pingora's `ErrorSource` and `RetryType`). The error decides
//! where it is made ([`Blame`]); forwarding's passive detection and retry decision and the
//! WebSocket relay only read the [`Outcome`].

use super::UpstreamError;
use crate::settings::{RetryOn, StatusRange};

/// Which side of an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server: unreachable, too slow, or it broke the exchange.
    Upstream,
    /// The client: its request or its request body was at fault.
    Downstream,
    /// gatehouse itself, with neither the server nor the client to blame.
    Internal,
}

/// An error that knows which side failed and which retry condition it meets.
pub trait Blame: std::fmt::Display {
    /// The side that failed.
    fn side(&self) -> Side;
    /// The retry condition the failure meets; `None` when no other try may follow it.
    fn retry(&self) -> Option<RetryOn>;
}

impl Blame for UpstreamError {
    fn side(&self) -> Side {
        Side::Upstream
    }

    fn retry(&self) -> Option<RetryOn> {
        Some(match self {
            // Nothing reached the server: even a request that is not idempotent may go again.
            Self::Connect(_) | Self::SelfConnect | Self::ConnectTimeout | Self::Tls(_) => {
                RetryOn::ConnectError
            }
            Self::ResponseTimeout => RetryOn::Timeout,
            Self::Reset(_) | Self::BadHead(_) => RetryOn::Reset,
        })
    }
}

/// How one exchange with a server went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered; `failure` says why the answer counts as a failure (its status
    /// is in the pool's `fail_statuses`).
    Answered {
        status: u16,
        failure: Option<String>,
    },
    /// The exchange failed on `side`.
    Failed {
        side: Side,
        reason: String,
        retry: Option<RetryOn>,
    },
}

impl Outcome {
    /// The server answered with `status`.
    pub fn answered(status: u16, fail_statuses: &[StatusRange]) -> Self {
        let failure = fail_statuses
            .iter()
            .any(|range| range.contains(status))
            .then(|| format!("status {status}"));
        Self::Answered { status, failure }
    }

    /// The exchange failed with `err`.
    pub fn failed(err: &impl Blame) -> Self {
        Self::Failed {
            side: err.side(),
            reason: err.to_string(),
            retry: err.retry(),
        }
    }

    /// The outcome of an exchange that ended with a status or an error.
    pub fn of<E: Blame>(result: Result<u16, &E>, fail_statuses: &[StatusRange]) -> Self {
        match result {
            Ok(status) => Self::answered(status, fail_statuses),
            Err(err) => Self::failed(err),
        }
    }

    /// The side that failed, if any did: an answer counted as a failure is the server's.
    pub fn side(&self) -> Option<Side> {
        match self {
            Self::Answered { failure, .. } => failure.as_ref().map(|_| Side::Upstream),
            Self::Failed { side, .. } => Some(*side),
        }
    }

    /// Why passive detection counts the exchange against the server, if it does.
    pub fn passive_failure(&self) -> Option<&str> {
        match self {
            Self::Answered { failure, .. } => failure.as_deref(),
            Self::Failed {
                side: Side::Upstream,
                reason,
                ..
            } => Some(reason),
            Self::Failed { .. } => None,
        }
    }

    /// The retry condition this outcome meets, if any; whether a retry follows is the
    /// pool's `[pools.NAME.retry]` to say.
    pub fn retry_cause(&self) -> Option<RetryOn> {
        match self {
            Self::Answered { status, .. } if *status >= 500 => Some(RetryOn::Status(*status)),
            Self::Answered { .. } => None,
            Self::Failed { retry, .. } => *retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::head::HeadError;

    fn range(low: u16, high: u16) -> StatusRange {
        StatusRange { low, high }
    }

    #[test]
    fn every_upstream_error_is_the_server_s_and_names_its_retry_condition() {
        let cases = [
            (
                UpstreamError::Connect("refused".into()),
                RetryOn::ConnectError,
            ),
            (UpstreamError::SelfConnect, RetryOn::ConnectError),
            (UpstreamError::ConnectTimeout, RetryOn::ConnectError),
            (
                UpstreamError::Tls("TLS handshake: x".into()),
                RetryOn::ConnectError,
            ),
            (UpstreamError::ResponseTimeout, RetryOn::Timeout),
            (UpstreamError::Reset("broken pipe".into()), RetryOn::Reset),
            (UpstreamError::BadHead(HeadError::Malformed), RetryOn::Reset),
        ];
        for (err, retry) in cases {
            let outcome = Outcome::failed(&err);
            assert_eq!(outcome.side(), Some(Side::Upstream), "{err:?}");
            assert_eq!(outcome.retry_cause(), Some(retry), "{err:?}");
            assert_eq!(
                outcome.passive_failure(),
                Some(&*err.to_string()),
                "{err:?}"
            );
        }
    }

    #[test]
    fn an_answer_fails_only_by_fail_statuses_and_is_retryable_only_from_500() {
        let fail = [range(500, 599), range(429, 429)];
        let cases = [
            // status, passive failure, retry cause
            (200, None, None),
            (404, None, None),
            (429, Some("status 429"), None),
            (500, Some("status 500"), Some(RetryOn::Status(500))),
            (503, Some("status 503"), Some(RetryOn::Status(503))),
        ];
        for (status, failure, retry) in cases {
            let outcome = Outcome::answered(status, &fail);
            assert_eq!(outcome.passive_failure(), failure, "{status}");
            assert_eq!(outcome.retry_cause(), retry, "{status}");
            let side = failure.map(|_| Side::Upstream);
            assert_eq!(outcome.side(), side, "{status}");
        }
        let lenient = Outcome::answered(502, &[]);
        assert_eq!(lenient.passive_failure(), None);
        assert_eq!(lenient.retry_cause(), Some(RetryOn::Status(502)));
    }

    /// A failure of the client's or gatehouse's own.
    #[derive(Debug)]
    struct Other(Side);

    impl std::fmt::Display for Other {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl Blame for Other {
        fn side(&self) -> Side {
            self.0
        }

        fn retry(&self) -> Option<RetryOn> {
            None
        }
    }

    #[test]
    fn a_failure_on_another_side_is_never_held_against_the_server() {
        for side in [Side::Downstream, Side::Internal] {
            let outcome = Outcome::of::<Other>(Err(&Other(side)), &[range(500, 599)]);
            assert_eq!(outcome.side(), Some(side));
            assert_eq!(outcome.passive_failure(), None);
            assert_eq!(outcome.retry_cause(), None);
        }
    }
}
