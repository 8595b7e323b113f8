//! The running settings: typed structs, their built-in defaults, layering and validation.
//!
//! Layers, later wins: built-in defaults < `settings/default.toml` < `settings/$GATEHOUSE_ENV.toml`
//! < `settings/local.toml` < the `--config` file or folder < `GATEHOUSE__SECTION__KEY` variables.

/// Parses a setting that is one word out of a fixed list, naming the list when it is not.
macro_rules! one_of {
    ($ty:ty { $($word:literal => $variant:expr),+ $(,)? }) => {
        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(word: String) -> Result<Self, String> {
                match word.as_str() {
                    $($word => Ok($variant),)+
                    _ => Err(format!("expected one of: {}", [$($word),+].join(", "))),
                }
            }
        }
    };
}

mod address;
mod compression;
mod error;
mod health;
mod host;
mod layers;
mod security;
mod sticky;
mod tls;
mod units;
mod upstream_tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use address::parse_address;
pub use compression::{Algorithm, CompressionSettings, Levels};
pub use error::SettingsError;
pub use health::{
    HealthSettings, InitialState, PassiveSettings, ProbeMethod, RetryOn, RetrySettings, StatusRange,
};
pub use host::HostPattern;
#[cfg(test)]
pub use layers::from_toml;
pub use layers::{load, Loaded, Sources};
pub use security::{Cidr, DenyAction, Rate, RateKey, RateLimitSettings, SecuritySettings};
pub use sticky::{SameSite, StickyMode, StickySettings, DEFAULT_COOKIE};
pub use tls::{CertificateSettings, Http2Settings, TlsSettings, TlsVersion, INTERMEDIATE_CIPHERS};
pub use units::{ByteSize, Duration};
pub use upstream_tls::{UpstreamTlsError, UpstreamTlsSettings, UpstreamTlsVersion};
pub use validate::Problem;

/// Everything gatehouse runs from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub security: SecuritySettings,
    pub compression: CompressionSettings,
    pub tls: TlsSettings,
    pub routes: Vec<RouteSettings>,
    pub pools: BTreeMap<String, PoolSettings>,
}

/// `[server]`: the client-facing listeners and their limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Plain-HTTP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Open client connections across all workers.
    pub max_connections: usize,
    /// How long an idle keep-alive client connection is kept open.
    pub keep_alive: Duration,
    /// The whole request head must arrive within this, or 408 and close.
    pub client_header_timeout: Duration,
    /// A client that takes none of a response for this long is disconnected; 0 waits
    /// without limit.
    pub send_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Request line plus headers larger than this get 431.
    pub max_request_header_size: ByteSize,
    /// The `Server` header on every response; empty sends none.
    pub server_header: String,
    /// Every connection on the listeners starts with a PROXY protocol header (v1 or v2), from
    /// a load balancer in front; its client address is the one gatehouse uses.
    pub proxy_protocol: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: 0,
            max_connections: 25_000,
            keep_alive: Duration::from_secs(75),
            client_header_timeout: Duration::from_secs(10),
            // NGINX's send_timeout.
            send_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_request_header_size: ByteSize::kib(32),
            server_header: "gatehouse".into(),
            proxy_protocol: false,
        }
    }
}

impl ServerSettings {
    /// The worker count with 0 resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// `[admin]`: the admin API.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the admin API listens; a non-loopback address requires `token`.
    pub listen: SocketAddr,
    /// When set, every admin call needs `Authorization: Bearer TOKEN`.
    pub token: String,
    /// When set, runtime membership changes are saved here and survive restarts and reloads.
    pub state_file: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: String::new(),
            state_file: String::new(),
        }
    }
}

/// `[log]`: the access log.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub access: AccessLogFormat,
}

/// How each request is written to stdout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum AccessLogFormat {
    /// The NGINX/Apache "combined" line.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

/// `[[routes]]`: which requests go to which pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// `example.com`, `*.example.com` or `*`; case-insensitive, port ignored.
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "root_path")]
    pub path: String,
    /// The pool that serves the route.
    pub pool: String,
    /// Request bodies larger than this get 413; absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<ByteSize>,
    /// Clients allowed on this route (after `[security]`'s lists); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Clients refused on this route, with 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
    /// Request limits for this route, on top of `[security]`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSettings>,
    /// Compression for this route, replacing `[compression]` whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionSettings>,
    /// Plain-HTTP requests get a 308 to the same URL on `https`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    /// `Strict-Transport-Security` on responses sent over TLS, e.g. `max-age=31536000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    /// `[security]`'s `intercept_errors` for this route, replacing it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept_errors: Option<Vec<StatusRange>>,
}

fn any_host() -> String {
    "*".into()
}

fn root_path() -> String {
    "/".into()
}

#[cfg(test)]
impl RouteSettings {
    /// A route for any host from `path` to `pool`, with nothing else set: for unit tests.
    pub fn to(path: &str, pool: &str) -> Self {
        Self {
            host: "*".into(),
            path: path.into(),
            pool: pool.into(),
            max_body_size: None,
            allow: Vec::new(),
            deny: Vec::new(),
            rate_limits: Vec::new(),
            compression: None,
            redirect_https: false,
            hsts: None,
            intercept_errors: None,
        }
    }
}

/// `[pools.NAME]`: a group of servers that host the same content.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    pub balance: Balance,
    /// Deadline for opening a connection to a server.
    pub connect_timeout: Duration,
    /// Deadline for the response head, counted from when the request body was sent;
    /// also the longest pause allowed between two reads of the response body.
    pub response_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse. Keep it below the servers'
    /// own keep-alive timeout so gatehouse never reuses a connection the server is closing.
    pub keepalive_timeout: Duration,
    /// When every server is at its `max_connections`, how long a request waits for a slot
    /// before it gets 503; 0 answers at once.
    pub queue_timeout: Duration,
    /// A relayed upgrade (WebSocket) is closed after this long without data from the server.
    pub upgrade_timeout: Duration,
    /// Replaces the client's `Host` header on forwarded requests; absent passes it through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// What `balance = "hash"` hashes; absent means the client's IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    /// A server that comes back (from down, ejection or a failed probe) ramps from a tenth
    /// of its weight to all of it over this long; 0 turns the ramp off.
    pub slow_start: Duration,
    /// Active health checks; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    pub passive: PassiveSettings,
    pub retry: RetrySettings,
    /// Session persistence; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySettings>,
    /// How long a draining server still takes requests of sessions bound to it.
    pub drain_timeout: Duration,
    /// TLS to the servers; absent means plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSettings>,
    pub servers: Vec<ServerEntry>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            balance: Balance::default(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(4),
            upgrade_timeout: Duration::from_secs(3600),
            queue_timeout: Duration::from_secs(0),
            host_header: None,
            hash_key: None,
            slow_start: Duration::from_secs(0),
            health: None,
            passive: PassiveSettings::default(),
            retry: RetrySettings::default(),
            sticky: None,
            drain_timeout: Duration::from_secs(300),
            tls: None,
            servers: Vec::new(),
        }
    }
}

/// How a pool picks a server (docs/balancing.md describes each).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastConnections,
    /// Lowest recent response time times requests in flight, relative to weight.
    LeastTime,
    /// The less loaded of two servers drawn at random by weight.
    RandomTwo,
    /// A server drawn at random by weight.
    Random,
    /// Consistent hashing of a request key (`hash_key`).
    Hash,
}

/// The part of a request that `balance = "hash"` hashes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum HashKey {
    /// The client's IP address (the TCP peer's).
    #[default]
    ClientIp,
    /// Path and query string, as received.
    Uri,
    /// The path alone.
    Path,
    /// The first value of a request header; the name is kept in lowercase.
    Header(String),
    /// The value of one cookie.
    Cookie(String),
    /// The raw (not percent-decoded) value of one query-string parameter.
    Query(String),
}

const HASH_KEY_FORMS: &str = "client_ip, uri, path, header:NAME, cookie:NAME or query:NAME";

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(word: String) -> Result<Self, String> {
        let named = |name: &str| -> Result<String, String> {
            if name.is_empty() {
                return Err(format!(
                    "the name after the colon is missing; expected one of: {HASH_KEY_FORMS}"
                ));
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";=,\"".contains(&b))
            {
                return Err(format!("{name:?} is not a valid name"));
            }
            Ok(name.to_string())
        };
        match word.split_once(':') {
            None => match word.as_str() {
                "client_ip" => Ok(Self::ClientIp),
                "uri" => Ok(Self::Uri),
                "path" => Ok(Self::Path),
                _ => Err(format!("expected one of: {HASH_KEY_FORMS}")),
            },
            Some(("header", name)) => {
                let name = named(name)?.to_ascii_lowercase();
                actix_web::http::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?;
                Ok(Self::Header(name))
            }
            Some(("cookie", name)) => Ok(Self::Cookie(named(name)?)),
            Some(("query", name)) => Ok(Self::Query(named(name)?)),
            Some(_) => Err(format!("expected one of: {HASH_KEY_FORMS}")),
        }
    }
}

impl From<HashKey> for String {
    fn from(key: HashKey) -> String {
        match key {
            HashKey::ClientIp => "client_ip".into(),
            HashKey::Uri => "uri".into(),
            HashKey::Path => "path".into(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
            HashKey::Query(name) => format!("query:{name}"),
        }
    }
}

/// Whether the operator lets a server take requests; health checks give their own verdict
/// apart from this.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ServerState {
    /// Takes new requests.
    #[default]
    Active,
    /// Takes no new requests; requests in flight finish.
    Drain,
    /// Takes no requests at all.
    Down,
}

one_of!(AccessLogFormat { "combined" => AccessLogFormat::Combined, "json" => AccessLogFormat::Json, "off" => AccessLogFormat::Off });
one_of!(Balance {
    "round_robin" => Balance::RoundRobin,
    "least_connections" => Balance::LeastConnections,
    "least_time" => Balance::LeastTime,
    "random_two" => Balance::RandomTwo,
    "random" => Balance::Random,
    "hash" => Balance::Hash,
});
one_of!(ServerState { "active" => ServerState::Active, "drain" => ServerState::Drain, "down" => ServerState::Down });

/// One server of a pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// `host:port` of the server.
    pub address: String,
    /// Share of the pool's requests relative to the other servers.
    #[serde(default = "one")]
    pub weight: u32,
    /// Most requests in flight on this server at once; 0 means no limit.
    #[serde(default)]
    pub max_connections: u32,
    /// Takes requests only when no other (primary) server of the pool can.
    #[serde(default)]
    pub backup: bool,
    /// The operator's say: `active`, `drain` or `down`.
    #[serde(default)]
    pub state: ServerState,
}

impl ServerEntry {
    /// An active primary server of weight 1 without a connection limit.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.into(),
            weight: 1,
            max_connections: 0,
            backup: false,
            state: ServerState::Active,
        }
    }
}

fn one() -> u32 {
    1
}
