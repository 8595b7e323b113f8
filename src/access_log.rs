//! The access log: one line per request on stdout, as NGINX "combined" or as JSON.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::settings::AccessLogFormat;

/// What is known of a request when its response has been sent.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub time: Option<SystemTime>,
    pub client: Option<IpAddr>,
    pub method: String,
    /// The request target as received: path and query.
    pub target: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub route: Option<String>,
    pub pool: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<Duration>,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
}

/// The JSON line; field names are what log pipelines index.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    status: u16,
    bytes_sent: u64,
    duration_ms: f64,
    route: Option<&'a str>,
    pool: Option<&'a str>,
    upstream: Option<&'a str>,
    upstream_status: Option<u16>,
    upstream_time_ms: Option<f64>,
    request_id: &'a str,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

impl AccessRecord {
    fn time(&self) -> DateTime<Utc> {
        self.time.unwrap_or_else(SystemTime::now).into()
    }

    fn client(&self) -> String {
        self.client.map_or_else(|| "-".into(), |ip| ip.to_string())
    }

    /// The NGINX/Apache combined format, times in UTC.
    /// A record without a method is a request whose head could not be read: its request line
    /// is `-`, as NGINX writes it.
    pub fn combined(&self) -> String {
        let request = match self.method.is_empty() {
            true => "-".into(),
            false => format!(
                "{} {} {}",
                escape(&self.method),
                escape(&self.target),
                self.protocol
            ),
        };
        format!(
            "{client} - - [{time}] \"{request}\" {status} {bytes} \"{referer}\" \"{agent}\"\n",
            client = self.client(),
            time = self.time().format("%d/%b/%Y:%H:%M:%S %z"),
            status = self.status,
            bytes = self.bytes_sent,
            referer = escape(self.referer.as_deref().unwrap_or("-")),
            agent = escape(self.user_agent.as_deref().unwrap_or("-")),
        )
    }

    /// One JSON object and a newline.
    pub fn json(&self) -> String {
        let line = JsonLine {
            time: self.time().to_rfc3339_opts(SecondsFormat::Millis, true),
            client: self.client(),
            method: &self.method,
            path: &self.target,
            protocol: self.protocol,
            status: self.status,
            bytes_sent: self.bytes_sent,
            duration_ms: millis(self.duration),
            route: self.route.as_deref(),
            pool: self.pool.as_deref(),
            upstream: self.upstream.as_deref(),
            upstream_status: self.upstream_status,
            upstream_time_ms: self.upstream_time.map(millis),
            request_id: &self.request_id,
            user_agent: self.user_agent.as_deref(),
            referer: self.referer.as_deref(),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Escapes quotes, backslashes and control bytes the way NGINX does (`\xHH`), so a hostile
/// request cannot forge log lines.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let clean = |c: char| c != '"' && c != '\\' && !c.is_control();
    if text.chars().all(clean) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if clean(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{byte:02X}"));
            }
        }
    }
    out.into()
}

/// Writes records in the configured format.
#[derive(Clone, Copy, Debug)]
pub struct AccessLog {
    format: AccessLogFormat,
}

impl AccessLog {
    pub fn new(format: AccessLogFormat) -> Self {
        Self { format }
    }

    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Writes one line with a single write, so lines from workers never interleave.
    pub fn write(&self, record: &AccessRecord) {
        let line = match self.format {
            AccessLogFormat::Combined => record.combined(),
            AccessLogFormat::Json => record.json(),
            AccessLogFormat::Off => return,
        };
        let mut out = std::io::stdout().lock();
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            log::debug!("access log write failed: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            client: Some("127.0.0.1".parse().unwrap()),
            method: "GET".into(),
            target: "/a?b=\"c\"".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 42,
            duration: Duration::from_micros(1500),
            request_id: "id-1".into(),
            user_agent: Some("curl/8".into()),
            ..Default::default()
        }
    }

    #[test]
    fn combined_line_matches_nginx() {
        assert_eq!(
            record().combined(),
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 42 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn json_line_is_one_object() {
        let line = record().json();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["request_id"], "id-1");
        assert!(value["upstream"].is_null());
    }

    #[test]
    fn a_head_that_could_not_be_read_has_a_dash_for_request_line() {
        let refused = AccessRecord {
            method: String::new(),
            target: String::new(),
            protocol: "-",
            status: 400,
            bytes_sent: 0,
            user_agent: None,
            ..record()
        };
        assert_eq!(
            refused.combined(),
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"-\" 400 0 \"-\" \"-\"\n"
        );
    }
}
