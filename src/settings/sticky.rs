//! `[pools.NAME.sticky]`: session persistence (docs/affinity.md).

use serde::{Deserialize, Serialize};

use super::Duration;

/// How a pool keeps each client's session on one server. Present means sessions stick;
/// absent means every request is balanced on its own.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StickySettings {
    pub mode: StickyMode,
    /// The cookie gatehouse sets (`cookie`) or the application's session cookie it follows
    /// (`learn`); absent means `gh_srv` for `cookie`, and is required for `learn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_name: Option<String>,
    /// The request header whose value names the session (`header`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    /// The key the `cookie` mode signs its cookies with; at least 16 characters.
    pub secret: String,
    /// Earlier secrets, still accepted on cookies but never used for new ones.
    pub previous_secrets: Vec<String>,
    /// The cookie's `Path`.
    pub path: String,
    /// The cookie's `Domain`; absent sends none (the cookie is for the request's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The cookie's `Max-Age`, also enforced on the cookies gatehouse reads; absent makes a
    /// session cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    pub secure: bool,
    pub http_only: bool,
    /// The cookie's `SameSite`: `lax`, `strict` or `none`; absent sends none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    /// Table modes (`learn`, `client_ip`, `header`): a binding unused this long is forgotten.
    pub ttl: Duration,
    /// Table modes: the most bindings kept; past it, the least recently used goes.
    pub max_entries: usize,
}

impl Default for StickySettings {
    fn default() -> Self {
        Self {
            mode: StickyMode::Cookie,
            cookie_name: None,
            header_name: None,
            secret: String::new(),
            previous_secrets: Vec::new(),
            path: "/".into(),
            domain: None,
            max_age: None,
            secure: false,
            http_only: true,
            same_site: Some(SameSite::Lax),
            ttl: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

impl StickySettings {
    /// The cookie the mode reads: gatehouse's own for `cookie`, the application's for `learn`.
    pub fn cookie(&self) -> &str {
        self.cookie_name.as_deref().unwrap_or(DEFAULT_COOKIE)
    }
}

/// The cookie `mode = "cookie"` sets when no `cookie_name` is given.
pub const DEFAULT_COOKIE: &str = "gh_srv";

/// What ties a request to its session's server.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum StickyMode {
    /// A signed cookie gatehouse sets; no table, any instance with the secret reads it.
    #[default]
    Cookie,
    /// The application's own session cookie, bound to the server that set it.
    Learn,
    /// The client's IP address.
    ClientIp,
    /// The value of a request header (`header_name`).
    Header,
}

one_of!(StickyMode {
    "cookie" => StickyMode::Cookie,
    "learn" => StickyMode::Learn,
    "client_ip" => StickyMode::ClientIp,
    "header" => StickyMode::Header,
});

/// A cookie's `SameSite` attribute.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

one_of!(SameSite { "lax" => SameSite::Lax, "strict" => SameSite::Strict, "none" => SameSite::None });

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lax => "Lax",
            Self::Strict => "Strict",
            Self::None => "None",
        }
    }
}
