//! `[pools.NAME.health]`, `[pools.NAME.passive]` and `[pools.NAME.retry]`: how a pool finds
//! out a server is failing, and what a request does about it (docs/health.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ByteSize, Duration};

/// `[pools.NAME.health]`: active health checks. Present means every server of the pool is
/// probed; absent means none is.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// The path (and query) probed.
    pub path: String,
    /// `GET` or `HEAD`.
    pub method: ProbeMethod,
    /// The `Host` header sent; absent sends the server's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Probes go to this port instead of the server's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between the end of one probe and the start of the next, per server.
    pub interval: Duration,
    /// A probe without a complete answer within this counts as failed.
    pub timeout: Duration,
    /// Each interval is lengthened by a random share of this, so probes spread out.
    pub jitter: Duration,
    /// Consecutive passing probes that bring a down server back.
    pub rise: u32,
    /// Consecutive failing probes that take an up server out.
    pub fall: u32,
    /// Statuses that pass: codes and `"low-high"` ranges.
    pub expect_status: Vec<StatusRange>,
    /// The body must contain this text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// The body must match this regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body_regex: Option<String>,
    /// The response must carry this header: `"Name"` or `"Name: value"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_header: Option<String>,
    /// Extra headers sent with every probe.
    pub headers: BTreeMap<String, String>,
    /// The state of a server before its first probe has answered.
    pub initial_state: InitialState,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            path: "/".into(),
            method: ProbeMethod::Get,
            host: None,
            port: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            jitter: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            expect_status: vec![StatusRange {
                low: 200,
                high: 399,
            }],
            expect_body: None,
            expect_body_regex: None,
            expect_header: None,
            headers: BTreeMap::new(),
            initial_state: InitialState::Down,
        }
    }
}

/// The method of a health probe.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum ProbeMethod {
    #[default]
    Get,
    Head,
}

impl TryFrom<String> for ProbeMethod {
    type Error = String;

    fn try_from(word: String) -> Result<Self, String> {
        match word.to_ascii_uppercase().as_str() {
            "GET" => Ok(Self::Get),
            "HEAD" => Ok(Self::Head),
            _ => Err("expected GET or HEAD".into()),
        }
    }
}

impl From<ProbeMethod> for String {
    fn from(method: ProbeMethod) -> String {
        match method {
            ProbeMethod::Get => "GET".into(),
            ProbeMethod::Head => "HEAD".into(),
        }
    }
}

/// Where a server starts before its first probe has answered.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum InitialState {
    /// Takes traffic until probes say otherwise (`fall` failures).
    Up,
    /// Takes no traffic until one probe passes.
    #[default]
    Down,
}

one_of!(InitialState { "up" => InitialState::Up, "down" => InitialState::Down });

/// Statuses `low..=high`; a single code is a range of one. Written `200`, `"302"` or
/// `"200-299"`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "StatusWord", into = "String")]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

/// A status as settings files write it: a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum StatusWord {
    Number(u64),
    Text(String),
}

impl TryFrom<StatusWord> for StatusRange {
    type Error = String;

    fn try_from(word: StatusWord) -> Result<Self, String> {
        let code = |text: &str| -> Result<u16, String> {
            match text.trim().parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(code),
                _ => Err(format!("{text:?} is not a status code (100-599)")),
            }
        };
        let (low, high) = match word {
            StatusWord::Number(n) => {
                let n = code(&n.to_string())?;
                (n, n)
            }
            StatusWord::Text(text) => match text.split_once('-') {
                Some((low, high)) => (code(low)?, code(high)?),
                None => {
                    let n = code(&text)?;
                    (n, n)
                }
            },
        };
        if low > high {
            return Err(format!("the range {low}-{high} is empty"));
        }
        Ok(Self { low, high })
    }
}

impl From<StatusRange> for String {
    fn from(range: StatusRange) -> String {
        range.to_string()
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// `[pools.NAME.passive]`: ejection of servers that fail on live traffic.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveSettings {
    /// Whether live traffic can eject servers at all.
    pub enabled: bool,
    /// Failures within `fail_timeout` that eject a server.
    pub max_fails: u32,
    /// The window failures are counted in.
    pub fail_timeout: Duration,
    /// How long the first ejection lasts; each consecutive one lasts twice the last.
    pub ejection_time: Duration,
    /// The longest an ejection lasts.
    pub max_ejection_time: Duration,
    /// The most servers of a pool ejected at once, as a percentage of its servers.
    pub max_ejected_percent: u8,
    /// Upstream statuses that count as failures.
    pub fail_statuses: Vec<StatusRange>,
}

impl Default for PassiveSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
            fail_statuses: [502, 503, 504]
                .map(|code| StatusRange {
                    low: code,
                    high: code,
                })
                .to_vec(),
        }
    }
}

/// `[pools.NAME.retry]`: trying a failed request again on another server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Tries in total, the first included; 1 turns retries off.
    pub attempts: u32,
    /// The failures that are retried.
    pub on: Vec<RetryOn>,
    /// Request bodies up to this size are kept so they can be sent again; larger ones are
    /// streamed and never retried.
    pub retry_body_limit: ByteSize,
    /// Deadline for each try's response head; absent uses the pool's `response_timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Retries allowed per second, as a percentage of the pool's requests in the last second.
    pub budget_percent: u32,
    /// Retries allowed per second whatever the traffic, so a quiet pool can still retry.
    pub budget_floor: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            attempts: 2,
            on: vec![RetryOn::ConnectError, RetryOn::Reset, RetryOn::Timeout],
            retry_body_limit: ByteSize::kib(64),
            per_try_timeout: None,
            budget_percent: 20,
            budget_floor: 10,
        }
    }
}

/// A failure a request may be retried after.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum RetryOn {
    /// The connection could not be opened: nothing was sent.
    ConnectError,
    /// The connection broke before the response head arrived.
    Reset,
    /// No response head within the try's deadline.
    Timeout,
    /// The server answered with this status.
    Status(u16),
}

const RETRY_ON_FORMS: &str = "connect_error, reset, timeout or status:CODE (500-599)";

impl TryFrom<String> for RetryOn {
    type Error = String;

    fn try_from(word: String) -> Result<Self, String> {
        match word.as_str() {
            "connect_error" => Ok(Self::ConnectError),
            "reset" => Ok(Self::Reset),
            "timeout" => Ok(Self::Timeout),
            _ => match word.strip_prefix("status:").map(str::parse::<u16>) {
                Some(Ok(code)) if (500..=599).contains(&code) => Ok(Self::Status(code)),
                _ => Err(format!("expected one of: {RETRY_ON_FORMS}")),
            },
        }
    }
}

impl From<RetryOn> for String {
    fn from(on: RetryOn) -> String {
        match on {
            RetryOn::ConnectError => "connect_error".into(),
            RetryOn::Reset => "reset".into(),
            RetryOn::Timeout => "timeout".into(),
            RetryOn::Status(code) => format!("status:{code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(word: StatusWord) -> Result<StatusRange, String> {
        StatusRange::try_from(word)
    }

    #[test]
    fn statuses_are_codes_or_ranges() {
        assert_eq!(
            range(StatusWord::Number(302)),
            Ok(StatusRange {
                low: 302,
                high: 302
            })
        );
        let ok = range(StatusWord::Text("200-299".into())).unwrap();
        assert!(ok.contains(200) && ok.contains(299) && !ok.contains(300));
        assert_eq!(ok.to_string(), "200-299");
        for bad in ["299-200", "2xx", "600", "99", "200-"] {
            assert!(range(StatusWord::Text(bad.into())).is_err(), "{bad}");
        }
        assert!(range(StatusWord::Number(70000)).is_err());
    }

    #[test]
    fn retry_conditions_are_named() {
        let parse = |word: &str| RetryOn::try_from(word.to_string());
        assert_eq!(parse("status:503"), Ok(RetryOn::Status(503)));
        assert_eq!(parse("reset"), Ok(RetryOn::Reset));
        assert_eq!(String::from(RetryOn::Status(502)), "status:502");
        for bad in ["status:404", "status:", "error", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
