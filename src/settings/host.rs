//! Route hosts as the settings write them: an exact name, `*.suffix`, or `*`.

/// A route's host: exact, a `*.suffix` wildcard, or `*` for any host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix with its leading dot, e.g. `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern == "*" {
            return Ok(Self::Any);
        }
        let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(
                "write a host name, \"*.example.com\" or \"*\" (no port, no scheme)".into(),
            );
        }
        Ok(match pattern.strip_prefix('*') {
            Some(suffix) => Self::Suffix(suffix.to_string()),
            None => Self::Exact(pattern),
        })
    }

    /// Whether a host without port matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
            Self::Any => true,
        }
    }

    /// Exact names beat longer wildcards, which beat shorter ones and `*`.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Exact(_) => usize::MAX,
            Self::Suffix(suffix) => suffix.len(),
            Self::Any => 0,
        }
    }
}
