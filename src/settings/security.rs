//! `[security]` and the security keys of routes: who may connect, how fast, and what clients
//! may learn of the servers (docs/security.md).

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ByteSize, Duration, StatusRange};

/// `[security]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Response headers removed because they name the servers' software.
    pub hide_headers: Vec<String>,
    /// Headers from `hide_headers` to keep after all.
    pub pass_headers: Vec<String>,
    /// Rewrite `Location`, `Content-Location` and `Refresh` that point at a server's address
    /// to the address the client used.
    pub rewrite_redirects: bool,
    /// Clients allowed; empty allows every client not denied. First match wins, denies first
    /// (see docs/security.md).
    pub allow: Vec<Cidr>,
    /// Clients refused.
    pub deny: Vec<Cidr>,
    /// What a refused client gets: its connection closed before anything is read, or 403.
    pub deny_action: DenyAction,
    /// Peers whose `X-Forwarded-For` is believed for the client's address.
    pub trusted_proxies: Vec<Cidr>,
    /// Open connections from one client address; 0 means no limit.
    pub max_connections_per_client: u32,
    /// Request limits by client or header, applied to every route.
    pub rate_limits: Vec<RateLimitSettings>,
    /// A request line (method, target, version) longer than this gets 414.
    pub max_request_line: ByteSize,
    /// Refuse targets with `..` path segments (plain or percent-encoded) with 400.
    pub reject_dot_segments: bool,
    /// The longest pause allowed between two reads of a request body; 408 after it.
    pub client_body_timeout: Duration,
    /// The slowest average upload allowed, per second, after the first `client_body_timeout`;
    /// 0 turns the check off.
    pub min_body_rate: ByteSize,
    /// Server answers with these statuses reach the client as gatehouse's generic page for
    /// the status (status, `Retry-After` and the request id kept); empty passes them as sent.
    pub intercept_errors: Vec<StatusRange>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            hide_headers: [
                "Server",
                "X-Powered-By",
                "X-AspNet-Version",
                "X-AspNet-Mvc-Version",
                "X-Runtime",
            ]
            .map(String::from)
            .to_vec(),
            pass_headers: Vec::new(),
            rewrite_redirects: true,
            allow: Vec::new(),
            deny: Vec::new(),
            deny_action: DenyAction::Close,
            trusted_proxies: Vec::new(),
            max_connections_per_client: 0,
            rate_limits: Vec::new(),
            max_request_line: ByteSize::kib(8),
            reject_dot_segments: false,
            client_body_timeout: Duration::from_secs(60),
            min_body_rate: ByteSize(0),
            intercept_errors: Vec::new(),
        }
    }
}

/// How a denied client is refused.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum DenyAction {
    /// The connection is closed as soon as it is accepted, before a byte is read.
    #[default]
    Close,
    /// Each request gets 403 Forbidden (and is logged).
    #[serde(rename = "403")]
    Forbid,
}

one_of!(DenyAction { "close" => DenyAction::Close, "403" => DenyAction::Forbid });

/// An IPv4 or IPv6 network in CIDR notation; a bare address is a network of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        match text.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Self(IpNet::from(ip))),
            Err(_) => Err(format!(
                "{text:?} is not an address or network; write it like \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\""
            )),
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Cidr {
    /// Whether `ip` is in this network; an IPv4 client on a dual-stack socket counts as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// `[[security.rate_limits]]` or `[[routes.rate_limits]]`: at most `rate` requests per key,
/// with bursts of up to `burst` more.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// What is limited: `client_ip`, or `header:NAME` (requests without the header are not
    /// limited by this rule).
    #[serde(default)]
    pub key: RateKey,
    /// Requests per second or per minute: `"100/s"`, `"600/m"`.
    pub rate: Rate,
    /// Requests allowed at once above the steady rate.
    #[serde(default)]
    pub burst: u32,
    /// Keys remembered at most; past it the least recently seen are forgotten.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

/// What a rate limit counts requests by.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum RateKey {
    #[default]
    ClientIp,
    /// A request header, lowercase.
    Header(String),
}

impl TryFrom<String> for RateKey {
    type Error = String;

    fn try_from(word: String) -> Result<Self, String> {
        match word.split_once(':') {
            None if word == "client_ip" => Ok(Self::ClientIp),
            Some(("header", name))
                if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_ok() =>
            {
                Ok(Self::Header(name.to_ascii_lowercase()))
            }
            _ => Err("expected client_ip or header:NAME".into()),
        }
    }
}

impl From<RateKey> for String {
    fn from(key: RateKey) -> String {
        match key {
            RateKey::ClientIp => "client_ip".into(),
            RateKey::Header(name) => format!("header:{name}"),
        }
    }
}

/// Requests per period, written `N/s` or `N/m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub requests: u32,
    pub per: std::time::Duration,
}

impl TryFrom<String> for Rate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate; write it like \"100/s\" or \"600/m\"");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err("a rate of 0 refuses everything; remove the limit or deny instead".into());
        }
        Ok(Self { requests, per })
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        let unit = if rate.per.as_secs() == 60 { "m" } else { "s" };
        format!("{}/{unit}", rate.requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_take_networks_and_single_addresses() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        // An IPv4 client seen through a dual-stack socket.
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn rates_are_per_second_or_minute() {
        let rate = Rate::try_from("100/s".to_string()).unwrap();
        assert_eq!((rate.requests, rate.per.as_secs()), (100, 1));
        assert_eq!(
            String::from(Rate::try_from("600/m".to_string()).unwrap()),
            "600/m"
        );
        for bad in ["100", "0/s", "10/h", "x/s"] {
            assert!(Rate::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_keys_are_the_client_or_a_header() {
        assert_eq!(
            RateKey::try_from("client_ip".to_string()),
            Ok(RateKey::ClientIp)
        );
        assert_eq!(
            RateKey::try_from("header:X-Api-Key".to_string()),
            Ok(RateKey::Header("x-api-key".into()))
        );
        assert!(RateKey::try_from("cookie:x".to_string()).is_err());
    }
}
