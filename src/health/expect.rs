//! What a probe's response must show to pass: a status in range, text or a pattern in the
//! body, a header. Pure: the probe hands in what it read, this says pass or why not.

use regex::bytes::Regex;

use crate::settings::{HealthSettings, StatusRange};

/// A pool's expectations, compiled once from its `[pools.NAME.health]` settings.
#[derive(Clone, Debug)]
pub struct Expectations {
    statuses: Vec<StatusRange>,
    body: Option<String>,
    body_regex: Option<Regex>,
    header: Option<ExpectedHeader>,
}

/// `expect_header`: a name, and the value it must have if one was given.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExpectedHeader {
    name: String,
    value: Option<String>,
}

/// Why settings could not be turned into expectations. Validation refuses such settings
/// first, so running gatehouse never meets this.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("health.expect_body_regex {pattern:?}: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
}

/// What a probe read of a response, as much as the expectations look at.
#[derive(Clone, Debug, Default)]
pub struct ProbeResponse {
    pub status: u16,
    /// Header names and values as received; names compare case-insensitively.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, or its first [`super::probe::BODY_LIMIT`] bytes.
    pub body: Vec<u8>,
}

/// Why a response does not meet the expectations; its text is the probe's detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("status {0}")]
    Status(u16),
    #[error("body lacks {0:?}")]
    BodyLacks(String),
    #[error("body does not match /{0}/")]
    BodyPattern(String),
    #[error("header {0} missing")]
    HeaderMissing(String),
    #[error("header {name} is not {expected:?}")]
    HeaderValue { name: String, expected: String },
}

impl Expectations {
    pub fn new(settings: &HealthSettings) -> Result<Self, ExpectError> {
        let body_regex = settings
            .expect_body_regex
            .as_deref()
            .map(|pattern| {
                Regex::new(pattern).map_err(|source| ExpectError::Regex {
                    pattern: pattern.to_string(),
                    source,
                })
            })
            .transpose()?;
        Ok(Self {
            statuses: settings.expect_status.clone(),
            body: settings.expect_body.clone().filter(|text| !text.is_empty()),
            body_regex,
            header: settings.expect_header.as_deref().map(parse_header),
        })
    }

    /// Whether the probe must read the body at all.
    pub fn reads_body(&self) -> bool {
        self.body.is_some() || self.body_regex.is_some()
    }

    /// Pass, or the first expectation the response misses: status, then header, then body.
    pub fn check(&self, response: &ProbeResponse) -> Result<(), Mismatch> {
        if !self.statuses.iter().any(|r| r.contains(response.status)) {
            return Err(Mismatch::Status(response.status));
        }
        if let Some(expected) = &self.header {
            let mut values = response
                .headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(&expected.name))
                .map(|(_, value)| value.trim_ascii())
                .peekable();
            if values.peek().is_none() {
                return Err(Mismatch::HeaderMissing(expected.name.clone()));
            }
            if let Some(want) = &expected.value {
                if !values.any(|value| value == want.as_bytes()) {
                    return Err(Mismatch::HeaderValue {
                        name: expected.name.clone(),
                        expected: want.clone(),
                    });
                }
            }
        }
        if let Some(text) = &self.body {
            if !contains(&response.body, text.as_bytes()) {
                return Err(Mismatch::BodyLacks(text.clone()));
            }
        }
        if let Some(regex) = &self.body_regex {
            if !regex.is_match(&response.body) {
                return Err(Mismatch::BodyPattern(regex.as_str().to_string()));
            }
        }
        Ok(())
    }
}

/// `"Name"` or `"Name: value"`; the value is compared exactly, after trimming.
fn parse_header(expect: &str) -> ExpectedHeader {
    match expect.split_once(':') {
        Some((name, value)) => ExpectedHeader {
            name: name.trim().to_string(),
            value: Some(value.trim().to_string()),
        },
        None => ExpectedHeader {
            name: expect.trim().to_string(),
            value: None,
        },
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(edit: impl FnOnce(&mut HealthSettings)) -> Expectations {
        let mut settings = HealthSettings::default();
        edit(&mut settings);
        Expectations::new(&settings).unwrap()
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> ProbeResponse {
        ProbeResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn range(low: u16, high: u16) -> StatusRange {
        StatusRange { low, high }
    }

    #[test]
    fn by_default_2xx_and_3xx_pass() {
        let e = expect(|_| {});
        assert!(e.check(&response(200, &[], "")).is_ok());
        assert!(e.check(&response(399, &[], "")).is_ok());
        assert_eq!(e.check(&response(500, &[], "")), Err(Mismatch::Status(500)));
        assert_eq!(
            e.check(&response(404, &[], "")).unwrap_err().to_string(),
            "status 404"
        );
        assert!(!e.reads_body());
    }

    #[test]
    fn statuses_are_ranges_and_single_codes() {
        let e = expect(|s| s.expect_status = vec![range(200, 204), range(302, 302)]);
        for ok in [200, 204, 302] {
            assert!(e.check(&response(ok, &[], "")).is_ok(), "{ok}");
        }
        for bad in [205, 301, 303, 500] {
            assert!(e.check(&response(bad, &[], "")).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_must_contain_the_text() {
        let e = expect(|s| s.expect_body = Some("ok".into()));
        assert!(e.reads_body());
        assert!(e.check(&response(200, &[], "status: ok\n")).is_ok());
        let missed = e.check(&response(200, &[], "degraded")).unwrap_err();
        assert_eq!(missed.to_string(), "body lacks \"ok\"");
        assert!(
            e.check(&response(500, &[], "ok")).is_err(),
            "status still counts"
        );
    }

    #[test]
    fn the_body_must_match_the_pattern() {
        let e = expect(|s| s.expect_body_regex = Some(r#""db":\s*"up""#.into()));
        assert!(e.check(&response(200, &[], r#"{"db": "up"}"#)).is_ok());
        let missed = e
            .check(&response(200, &[], r#"{"db": "down"}"#))
            .unwrap_err();
        assert!(matches!(missed, Mismatch::BodyPattern(_)));
        assert!(missed.to_string().starts_with("body does not match /"));
    }

    #[test]
    fn a_bad_pattern_is_an_error() {
        let settings = HealthSettings {
            expect_body_regex: Some("(".into()),
            ..HealthSettings::default()
        };
        assert!(matches!(
            Expectations::new(&settings),
            Err(ExpectError::Regex { .. })
        ));
    }

    #[test]
    fn a_header_name_matches_in_any_case() {
        let e = expect(|s| s.expect_header = Some("X-Ready".into()));
        assert!(e.check(&response(200, &[("x-ready", "")], "")).is_ok());
        assert_eq!(
            e.check(&response(200, &[("x-other", "1")], ""))
                .unwrap_err()
                .to_string(),
            "header X-Ready missing"
        );
    }

    #[test]
    fn a_header_value_must_be_exact() {
        let e = expect(|s| s.expect_header = Some("X-Ready: yes".into()));
        assert!(e.check(&response(200, &[("X-Ready", " yes ")], "")).is_ok());
        assert!(e
            .check(&response(200, &[("X-Ready", "no"), ("x-ready", "yes")], ""))
            .is_ok());
        assert_eq!(
            e.check(&response(200, &[("X-Ready", "no")], ""))
                .unwrap_err()
                .to_string(),
            "header X-Ready is not \"yes\""
        );
        assert!(e.check(&response(200, &[], "")).is_err());
    }
}
