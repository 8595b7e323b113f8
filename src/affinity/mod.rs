//! Session persistence: every request of a client's session goes to the server that served
//! its first, as long as that server can take it (docs/affinity.md).
//!
//! Two ways to remember the binding:
//! - **in the client**: `mode = "cookie"` sets a signed cookie naming the server
//!   (`cookie.rs`); nothing is stored, and every gatehouse with the same secret reads it;
//! - **in a table**: `learn` (the application's session cookie), `client_ip` and `header`
//!   bind a key to a server in a bounded table (`table.rs`), least recently used first out and
//!   forgotten after `ttl` unused.
//!
//! The request path asks [`Affinity::lookup`] before the pick and calls [`Affinity::bind`]
//! with the server that answered; neither sends a message to any actor.

mod cookie;
mod table;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderValue, SET_COOKIE};
use actix_web::{HttpRequest, HttpResponse};

use crate::pool::{KeySource, PoolSnapshot, Server};
use crate::settings::{HashKey, StickyMode, StickySettings};
use cookie::{CookieKeys, Token};
pub use table::Table;

/// One pool's session persistence.
pub struct Affinity {
    settings: StickySettings,
    /// Where the session's key is read: gatehouse's cookie, the application's, the client's
    /// address or a header.
    source: KeySource,
    keys: Option<CookieKeys>,
    table: Option<Table>,
    /// Servers by the token that names them under each key; filled as cookies are read.
    tokens: RwLock<HashMap<(usize, Token), Arc<str>>>,
    /// The cookie's attributes after its value, written once.
    attributes: String,
}

/// What a request says about its session.
#[derive(Debug, Default)]
pub struct Session {
    /// The server the session is bound to, if any and if it is still in the pool.
    pub bound: Option<Arc<str>>,
    /// The table key the request carries (table modes).
    key: Option<Box<[u8]>>,
    /// The request's cookie is due to be issued again (old key, or half its age gone).
    refresh: bool,
}

impl Affinity {
    pub fn new(settings: &StickySettings) -> Self {
        let source = match settings.mode {
            StickyMode::Cookie | StickyMode::Learn => {
                KeySource::from(&HashKey::Cookie(settings.cookie().to_string()))
            }
            StickyMode::ClientIp => KeySource::ClientIp,
            StickyMode::Header => KeySource::from(&HashKey::Header(
                settings
                    .header_name
                    .clone()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            )),
        };
        let keys = (settings.mode == StickyMode::Cookie)
            .then(|| CookieKeys::new(&settings.secret, &settings.previous_secrets));
        let table = (settings.mode != StickyMode::Cookie)
            .then(|| Table::new(settings.max_entries, settings.ttl.get()));
        Self {
            attributes: attributes(settings),
            settings: settings.clone(),
            source,
            keys,
            table,
            tokens: RwLock::default(),
        }
    }

    pub fn settings(&self) -> &StickySettings {
        &self.settings
    }

    /// The binding table, for table modes.
    pub fn table(&self) -> Option<&Table> {
        self.table.as_ref()
    }

    /// The session `req` belongs to, and the server it is bound to in `pool`.
    pub fn lookup(&self, req: &HttpRequest, pool: &PoolSnapshot) -> Session {
        let mut ip = [0; 16];
        let Some(key) = self.source.read(req, &mut ip) else {
            return Session::default();
        };
        match (&self.keys, &self.table) {
            (Some(keys), _) => self.read_cookie(keys, key, pool),
            (None, Some(table)) => Session {
                bound: table.get(key),
                key: Some(key.into()),
                refresh: false,
            },
            (None, None) => Session::default(),
        }
    }

    fn read_cookie(&self, keys: &CookieKeys, value: &[u8], pool: &PoolSnapshot) -> Session {
        let now = unix_now();
        let max_age = self.max_age_secs();
        let Some(signed) = keys.read(value, now, max_age) else {
            return Session::default();
        };
        let refresh = signed.key != 0
            || max_age.is_some_and(|age| now.saturating_sub(signed.issued) > age / 2);
        Session {
            bound: self.server_of(keys, signed.key, signed.token, pool),
            key: None,
            refresh,
        }
    }

    /// The address `token` names under key `key`, among `pool`'s servers.
    fn server_of(
        &self,
        keys: &CookieKeys,
        key: usize,
        token: Token,
        pool: &PoolSnapshot,
    ) -> Option<Arc<str>> {
        let known = |tokens: &HashMap<(usize, Token), Arc<str>>| tokens.get(&(key, token)).cloned();
        if let Some(address) = known(&self.tokens.read().unwrap_or_else(|e| e.into_inner())) {
            return Some(address);
        }
        // A server not seen yet under this key (another instance's cookie, or one issued
        // before a restart): name every server of the pool once.
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.len() > 4 * pool.servers.len() * keys.len() + 64 {
            tokens.clear();
        }
        for server in &pool.servers {
            for k in 0..keys.len() {
                tokens.insert((k, keys.token(k, &server.address)), server.address.clone());
            }
        }
        known(&tokens)
    }

    fn max_age_secs(&self) -> Option<u32> {
        self.settings
            .max_age
            .map(|age| age.get().as_secs().min(u64::from(u32::MAX)) as u32)
    }

    /// Binds the session to `server`, the one that answered: a new cookie on `response` when
    /// the session was bound elsewhere or not at all, or a table entry. In `learn` mode, a
    /// session cookie the application sets binds that session.
    pub fn bind(&self, session: &Session, server: &Server, response: &mut HttpResponse) {
        let moved = session.bound.as_deref() != Some(&*server.address);
        match self.settings.mode {
            StickyMode::Cookie => {
                if moved || session.refresh {
                    self.set_cookie(server, response);
                }
            }
            StickyMode::Learn | StickyMode::ClientIp | StickyMode::Header => {
                let table = self.table.as_ref().expect("table modes have a table");
                if self.settings.mode == StickyMode::Learn {
                    let name = self.settings.cookie();
                    for value in response.headers().get_all(SET_COOKIE) {
                        if let Some(session) = set_cookie_value(value.as_bytes(), name) {
                            table.set(session, server.address.clone());
                        }
                    }
                }
                if let (Some(key), true) = (&session.key, moved) {
                    table.set(key, server.address.clone());
                }
            }
        }
    }

    fn set_cookie(&self, server: &Server, response: &mut HttpResponse) {
        let Some(keys) = &self.keys else { return };
        let value = format!(
            "{}={}{}",
            self.settings.cookie(),
            keys.issue(&server.address, unix_now()),
            self.attributes
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
}

/// The `; Path=/; HttpOnly; ...` part of gatehouse's cookie.
fn attributes(settings: &StickySettings) -> String {
    let mut out = format!("; Path={}", settings.path);
    if let Some(domain) = &settings.domain {
        out.push_str(&format!("; Domain={domain}"));
    }
    if let Some(age) = settings.max_age {
        out.push_str(&format!("; Max-Age={}", age.get().as_secs()));
    }
    if settings.secure {
        out.push_str("; Secure");
    }
    if settings.http_only {
        out.push_str("; HttpOnly");
    }
    if let Some(same_site) = settings.same_site {
        out.push_str(&format!("; SameSite={}", same_site.as_str()));
    }
    out
}

/// The value a `Set-Cookie` header sets for the cookie `name`, unless it deletes it (an empty
/// value or `Max-Age=0`).
fn set_cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut parts = header.split(|&b| b == b';');
    let pair = parts.next()?.trim_ascii();
    let at = pair.iter().position(|&b| b == b'=')?;
    let (cookie, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
    if cookie != name.as_bytes() || value.is_empty() {
        return None;
    }
    let deletes = parts.any(|attribute| {
        attribute
            .trim_ascii()
            .to_ascii_lowercase()
            .starts_with(b"max-age=0")
    });
    (!deletes).then_some(value)
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        .min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SameSite;

    #[test]
    fn set_cookie_values_are_found_by_name() {
        let find = |header: &str| set_cookie_value(header.as_bytes(), "SID").map(<[u8]>::to_vec);
        assert_eq!(find("SID=abc; Path=/; HttpOnly"), Some(b"abc".to_vec()));
        assert_eq!(find(" SID = abc "), Some(b"abc".to_vec()));
        assert_eq!(find("OTHER=abc"), None);
        assert_eq!(find("SIDX=abc"), None);
        assert_eq!(find("SID=; Path=/"), None);
        assert_eq!(find("SID=abc; Max-Age=0"), None);
    }

    #[test]
    fn cookie_attributes_follow_the_settings() {
        let mut settings = StickySettings::default();
        assert_eq!(attributes(&settings), "; Path=/; HttpOnly; SameSite=Lax");
        settings.domain = Some("example.com".into());
        settings.max_age = Some(crate::settings::Duration::from_secs(3600));
        settings.secure = true;
        settings.http_only = false;
        settings.same_site = Some(SameSite::None);
        assert_eq!(
            attributes(&settings),
            "; Path=/; Domain=example.com; Max-Age=3600; Secure; SameSite=None"
        );
    }
}
