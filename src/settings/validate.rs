//! Checks across keys that types alone cannot express: references, emptiness, addresses.

use std::collections::HashSet;

use actix_web::http::header::{HeaderName, HeaderValue};

use super::{
    parse_address, Balance, HealthSettings, HostPattern, Http2Settings, PoolSettings, SameSite,
    Settings, StickyMode, StickySettings, UpstreamTlsSettings,
};

/// One thing wrong with otherwise well-typed settings.
#[derive(Debug)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub problem: String,
}

impl Problem {
    /// The problem with `key` set to `value`, in words an operator can act on.
    pub fn new(key: String, value: impl std::fmt::Display, problem: impl Into<String>) -> Self {
        Self {
            key,
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

fn problem(key: String, value: impl std::fmt::Display, problem: impl Into<String>) -> Problem {
    Problem::new(key, value, problem)
}

/// Returns the first problem found, in the order an operator reads the file.
pub fn check(settings: &Settings) -> Result<(), Problem> {
    check_server(settings)?;
    check_admin(settings)?;
    check_security(settings)?;
    check_tls(settings)?;
    check_routes(settings)?;
    check_pools(settings)
}

fn check_server(settings: &Settings) -> Result<(), Problem> {
    let server = &settings.server;
    if server.listen.is_empty() {
        return Err(problem(
            "server.listen".into(),
            "[]",
            "at least one listen address is needed",
        ));
    }
    if server.max_connections == 0 {
        return Err(problem(
            "server.max_connections".into(),
            0,
            "must be at least 1",
        ));
    }
    if server.max_request_header_size.get() < 1024 {
        return Err(problem(
            "server.max_request_header_size".into(),
            format!("{:?}", server.max_request_header_size.to_string()),
            "must be at least 1KiB",
        ));
    }
    if actix_web::http::header::HeaderValue::from_str(&server.server_header).is_err() {
        return Err(problem(
            "server.server_header".into(),
            format!("{:?}", server.server_header),
            "is not a valid header value",
        ));
    }
    Ok(())
}

fn check_admin(settings: &Settings) -> Result<(), Problem> {
    let admin = &settings.admin;
    if !admin.listen.ip().is_loopback() && admin.token.is_empty() {
        return Err(problem(
            "admin.token".into(),
            "\"\"",
            format!(
                "the admin API listens on {}, beyond loopback: set a token (e.g. from {})",
                admin.listen,
                super::layers::env_name("admin.token")
            ),
        ));
    }
    if admin.token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(problem(
            "admin.token".into(),
            "(hidden)",
            "use visible ASCII characters only",
        ));
    }
    Ok(())
}

/// `[tls]` and the routes' TLS keys. Certificates are loaded here, so `--check` and a
/// reload name a missing file, a bad PEM or a key that does not match.
fn check_tls(settings: &Settings) -> Result<(), Problem> {
    let tls = &settings.tls;
    if !tls.listen.is_empty() && tls.certificates.is_empty() {
        return Err(problem(
            "tls.certificates".into(),
            "[]",
            "a TLS listener needs at least one certificate",
        ));
    }
    let plain = &settings.server.listen;
    let on_both = |a: &&std::net::SocketAddr| a.port() != 0 && plain.contains(a);
    if let Some(both) = tls.listen.iter().find(on_both) {
        return Err(problem(
            "tls.listen".into(),
            both,
            "is also in server.listen; a port is either plain or TLS",
        ));
    }
    check_http2(&tls.http2)?;
    for (index, route) in settings.routes.iter().enumerate() {
        if route.redirect_https && tls.listen.is_empty() {
            return Err(problem(
                format!("routes[{index}].redirect_https"),
                true,
                "there is no TLS listener to redirect to (tls.listen)",
            ));
        }
        if let Some(hsts) = &route.hsts {
            if HeaderValue::from_str(hsts).is_err() || !hsts.contains("max-age=") {
                return Err(problem(
                    format!("routes[{index}].hsts"),
                    format!("{hsts:?}"),
                    "write a Strict-Transport-Security value, e.g. \"max-age=31536000\"",
                ));
            }
        }
    }
    Ok(())
}

/// `[tls.http2]`: limits h2 can announce in its SETTINGS frame.
fn check_http2(http2: &Http2Settings) -> Result<(), Problem> {
    let at_least_one = |field: &str, value: u32| {
        if value == 0 {
            return Err(problem(
                format!("tls.http2.{field}"),
                value,
                "must be at least 1",
            ));
        }
        Ok(())
    };
    at_least_one("max_concurrent_streams", http2.max_concurrent_streams)?;
    at_least_one("max_requests", http2.max_requests)?;
    let size = http2.max_header_list_size.get();
    if !(1024..=16 * 1024 * 1024).contains(&size) {
        return Err(problem(
            "tls.http2.max_header_list_size".into(),
            size,
            "must be from 1KiB to 16MiB",
        ));
    }
    Ok(())
}

fn check_routes(settings: &Settings) -> Result<(), Problem> {
    for (index, route) in settings.routes.iter().enumerate() {
        let key = |field: &str| format!("routes[{index}].{field}");
        if let Err(reason) = HostPattern::parse(&route.host) {
            return Err(problem(key("host"), format!("{:?}", route.host), reason));
        }
        if !route.path.starts_with('/') {
            return Err(problem(
                key("path"),
                format!("{:?}", route.path),
                "must start with \"/\"",
            ));
        }
        if !settings.pools.contains_key(&route.pool) {
            let known: Vec<&str> = settings.pools.keys().map(String::as_str).collect();
            return Err(problem(
                key("pool"),
                format!("{:?}", route.pool),
                format!("no pool has this name (pools: {})", list_or_none(&known)),
            ));
        }
    }
    Ok(())
}

fn check_pools(settings: &Settings) -> Result<(), Problem> {
    for (name, pool) in &settings.pools {
        let key = |field: &str| format!("pools.{name}.{field}");
        if pool.servers.is_empty() {
            return Err(problem(
                key("servers"),
                "[]",
                "a pool needs at least one server",
            ));
        }
        if let Some(host) = &pool.host_header {
            if actix_web::http::header::HeaderValue::from_str(host).is_err() || host.is_empty() {
                return Err(problem(
                    key("host_header"),
                    format!("{host:?}"),
                    "is not a valid Host value",
                ));
            }
        }
        if let (Some(hash_key), false) = (&pool.hash_key, pool.balance == Balance::Hash) {
            return Err(problem(
                key("hash_key"),
                format!("{:?}", String::from(hash_key.clone())),
                "applies only with balance = \"hash\"",
            ));
        }
        check_failure_handling(name, pool)?;
        if let Some(sticky) = &pool.sticky {
            check_sticky(name, sticky)?;
        }
        if let Some(tls) = &pool.tls {
            check_upstream_tls(name, tls)?;
        }
        let mut seen = HashSet::new();
        for (index, server) in pool.servers.iter().enumerate() {
            let key = |field: &str| format!("pools.{name}.servers[{index}].{field}");
            if let Err(reason) = parse_address(&server.address) {
                return Err(problem(
                    key("address"),
                    format!("{:?}", server.address),
                    reason,
                ));
            }
            if !seen.insert(server.address.as_str()) {
                return Err(problem(
                    key("address"),
                    format!("{:?}", server.address),
                    "this server is listed twice in the pool",
                ));
            }
            if server.weight == 0 {
                return Err(problem(key("weight"), 0, "must be at least 1"));
            }
        }
    }
    Ok(())
}

/// `[pools.NAME.tls]`: the names and the files, read and parsed as the connections will.
fn check_upstream_tls(name: &str, tls: &UpstreamTlsSettings) -> Result<(), Problem> {
    let key = |field: &str| format!("pools.{name}.tls.{field}");
    if let Some(sni) = &tls.sni {
        let is_name = !sni.is_empty()
            && sni.len() <= 253
            && sni
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !is_name && sni.parse::<std::net::IpAddr>().is_err() {
            return Err(problem(
                key("sni"),
                format!("{sni:?}"),
                "is not a host name or IP address",
            ));
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => {
            return Err(problem(
                key("key"),
                "(absent)",
                "cert needs its private key: set both or neither",
            ))
        }
        (None, Some(path)) => {
            return Err(problem(
                key("cert"),
                "(absent)",
                format!("key = {path:?} needs its certificate: set both or neither"),
            ))
        }
        _ => {}
    }
    tls.client_context().map(drop).map_err(|err| {
        let (field, value) = match err.key() {
            field @ ("ca_file" | "cert" | "key") => {
                let path = match field {
                    "ca_file" => &tls.ca_file,
                    "cert" => &tls.cert,
                    _ => &tls.key,
                };
                (
                    key(field),
                    format!("{:?}", path.as_deref().unwrap_or_default()),
                )
            }
            "min_version" => (
                key("min_version"),
                format!("{:?}", String::from(tls.min_version)),
            ),
            _ => (format!("pools.{name}.tls"), "{ ... }".to_string()),
        };
        problem(field, value, err.to_string())
    })
}

/// The health, passive and retry sections of one pool.
fn check_failure_handling(name: &str, pool: &PoolSettings) -> Result<(), Problem> {
    let key = |field: &str| format!("pools.{name}.{field}");
    if let Some(health) = &pool.health {
        check_health(&key, health)?;
    }
    let passive = &pool.passive;
    if passive.max_fails == 0 {
        return Err(problem(
            key("passive.max_fails"),
            0,
            "must be at least 1 (set passive.enabled = false to turn ejection off)",
        ));
    }
    for (field, value) in [
        ("passive.fail_timeout", passive.fail_timeout),
        ("passive.ejection_time", passive.ejection_time),
    ] {
        if value.get().is_zero() {
            return Err(problem(key(field), "\"0s\"", "must be longer than 0s"));
        }
    }
    if passive.max_ejection_time < passive.ejection_time {
        return Err(problem(
            key("passive.max_ejection_time"),
            format!("{:?}", passive.max_ejection_time.to_string()),
            format!(
                "must be at least passive.ejection_time ({})",
                passive.ejection_time
            ),
        ));
    }
    if passive.max_ejected_percent > 100 {
        return Err(problem(
            key("passive.max_ejected_percent"),
            passive.max_ejected_percent,
            "is a percentage: 0 to 100",
        ));
    }
    let retry = &pool.retry;
    if retry.attempts == 0 || retry.attempts > 10 {
        return Err(problem(
            key("retry.attempts"),
            retry.attempts,
            "counts tries in total, the first included: 1 (no retries) to 10",
        ));
    }
    if retry.per_try_timeout.is_some_and(|t| t.get().is_zero()) {
        return Err(problem(
            key("retry.per_try_timeout"),
            "\"0s\"",
            "must be longer than 0s",
        ));
    }
    if retry.budget_percent > 100 {
        return Err(problem(
            key("retry.budget_percent"),
            retry.budget_percent,
            "is a percentage: 0 to 100",
        ));
    }
    Ok(())
}

fn check_health(key: &dyn Fn(&str) -> String, health: &HealthSettings) -> Result<(), Problem> {
    let target_ok = health.path.starts_with('/')
        && health
            .path
            .parse::<actix_web::http::uri::PathAndQuery>()
            .is_ok();
    if !target_ok {
        return Err(problem(
            key("health.path"),
            format!("{:?}", health.path),
            "must be a path starting with \"/\"",
        ));
    }
    if health.port == Some(0) {
        return Err(problem(key("health.port"), 0, "port 0 cannot be probed"));
    }
    for (field, value) in [
        ("health.interval", health.interval),
        ("health.timeout", health.timeout),
    ] {
        if value.get() < std::time::Duration::from_millis(10) {
            return Err(problem(
                key(field),
                format!("{:?}", value.to_string()),
                "must be at least 10ms",
            ));
        }
    }
    for (field, value) in [("health.rise", health.rise), ("health.fall", health.fall)] {
        if value == 0 {
            return Err(problem(key(field), 0, "must be at least 1"));
        }
    }
    if health.expect_status.is_empty() {
        return Err(problem(
            key("health.expect_status"),
            "[]",
            "list at least one status or range, e.g. [\"200-399\"]",
        ));
    }
    if let Some(host) = &health.host {
        if host.is_empty() || HeaderValue::from_str(host).is_err() {
            return Err(problem(
                key("health.host"),
                format!("{host:?}"),
                "is not a valid Host value",
            ));
        }
    }
    for (name, value) in &health.headers {
        let valid =
            HeaderName::from_bytes(name.as_bytes()).is_ok() && HeaderValue::from_str(value).is_ok();
        if !valid {
            return Err(problem(
                key(&format!("health.headers.{name}")),
                format!("{value:?}"),
                "is not a valid header name and value",
            ));
        }
    }
    if let Some(expect) = &health.expect_header {
        let name = expect.split_once(':').map_or(expect.as_str(), |(n, _)| n);
        if HeaderName::from_bytes(name.trim().as_bytes()).is_err() {
            return Err(problem(
                key("health.expect_header"),
                format!("{expect:?}"),
                "write it as \"Name\" or \"Name: value\"",
            ));
        }
    }
    if let Some(pattern) = &health.expect_body_regex {
        if let Err(err) = regex::bytes::Regex::new(pattern) {
            // The parser's message ends with its one-line reason, after a caret diagram.
            let text = err.to_string();
            let reason = text.lines().last().unwrap_or_default().trim();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            return Err(problem(
                key("health.expect_body_regex"),
                format!("{pattern:?}"),
                format!("is not a valid regular expression: {reason}"),
            ));
        }
    }
    // The probe writes these itself; Host has its own setting.
    for (name, value) in &health.headers {
        let own = ["host", "connection", "content-length", "transfer-encoding"]
            .iter()
            .any(|own| name.eq_ignore_ascii_case(own));
        if own {
            return Err(problem(
                key(&format!("health.headers.{name}")),
                format!("{value:?}"),
                "is set by the probe itself (use health.host for Host)",
            ));
        }
    }
    Ok(())
}

/// `[pools.NAME.sticky]`: what each mode needs, and cookie attributes a browser accepts.
fn check_sticky(name: &str, sticky: &StickySettings) -> Result<(), Problem> {
    let key = |field: &str| format!("pools.{name}.sticky.{field}");
    let secret_env = super::layers::env_name(&format!("pools.{name}.sticky.secret"));
    match sticky.mode {
        StickyMode::Cookie if sticky.secret.len() < 16 => {
            return Err(problem(
                key("secret"),
                "(hidden)",
                format!(
                    "mode = \"cookie\" signs its cookies: set a secret of at least 16 characters, \
                     preferably from {secret_env}, the same on every gatehouse that serves the pool"
                ),
            ));
        }
        StickyMode::Learn if sticky.cookie_name.is_none() => {
            return Err(problem(
                key("cookie_name"),
                "(unset)",
                "mode = \"learn\" follows the application's session cookie: name it, e.g. \"JSESSIONID\"",
            ));
        }
        StickyMode::Header if sticky.header_name.is_none() => {
            return Err(problem(
                key("header_name"),
                "(unset)",
                "mode = \"header\" needs the name of the header that carries the session",
            ));
        }
        _ => {}
    }
    if let Some(header) = &sticky.header_name {
        if HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(problem(
                key("header_name"),
                format!("{header:?}"),
                "is not a valid header name",
            ));
        }
    }
    let token = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    if !token(sticky.cookie()) {
        return Err(problem(
            key("cookie_name"),
            format!("{:?}", sticky.cookie()),
            "is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    let attribute = |text: &str| text.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    if !sticky.path.starts_with('/') || !attribute(&sticky.path) {
        return Err(problem(
            key("path"),
            format!("{:?}", sticky.path),
            "must start with \"/\" and hold no spaces or semicolons",
        ));
    }
    if let Some(domain) = &sticky.domain {
        if domain.is_empty() || !attribute(domain) {
            return Err(problem(
                key("domain"),
                format!("{domain:?}"),
                "is not a valid cookie domain",
            ));
        }
    }
    if sticky.same_site == Some(SameSite::None) && !sticky.secure {
        return Err(problem(
            key("same_site"),
            "\"none\"",
            "browsers drop SameSite=None cookies without Secure: set secure = true",
        ));
    }
    if sticky.max_age.is_some_and(|age| age.get().as_secs() == 0) {
        return Err(problem(key("max_age"), "\"0s\"", "must be at least 1s"));
    }
    if sticky.ttl.get().is_zero() {
        return Err(problem(key("ttl"), "\"0s\"", "must be longer than 0s"));
    }
    if sticky.max_entries == 0 {
        return Err(problem(key("max_entries"), 0, "must be at least 1"));
    }
    Ok(())
}

fn check_security(settings: &Settings) -> Result<(), Problem> {
    let security = &settings.security;
    for (field, names) in [
        ("hide_headers", &security.hide_headers),
        ("pass_headers", &security.pass_headers),
    ] {
        for (index, name) in names.iter().enumerate() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(problem(
                    format!("security.{field}[{index}]"),
                    format!("{name:?}"),
                    "is not a valid header name",
                ));
            }
        }
    }
    if security.max_request_line.get() < 256 {
        return Err(problem(
            "security.max_request_line".into(),
            format!("{:?}", security.max_request_line.to_string()),
            "must be at least 256 bytes",
        ));
    }
    if security.client_body_timeout.get().is_zero() {
        return Err(problem(
            "security.client_body_timeout".into(),
            "\"0s\"",
            "must be longer than 0s",
        ));
    }
    check_rate_limits("security.rate_limits", &security.rate_limits)?;
    for (index, route) in settings.routes.iter().enumerate() {
        check_rate_limits(&format!("routes[{index}].rate_limits"), &route.rate_limits)?;
    }
    Ok(())
}

fn check_rate_limits(key: &str, limits: &[super::RateLimitSettings]) -> Result<(), Problem> {
    for (index, limit) in limits.iter().enumerate() {
        if limit.max_keys == 0 {
            return Err(problem(
                format!("{key}[{index}].max_keys"),
                0,
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{HashKey, PoolSettings, ServerEntry, ServerState};

    fn pool(edit: impl FnOnce(&mut PoolSettings)) -> Settings {
        let mut pool = PoolSettings {
            servers: vec![ServerEntry::new("127.0.0.1:9001")],
            ..PoolSettings::default()
        };
        edit(&mut pool);
        let mut settings = Settings::default();
        settings.pools.insert("web".into(), pool);
        settings
    }

    #[test]
    fn every_algorithm_and_server_option_is_accepted() {
        for balance in [
            "round_robin",
            "least_connections",
            "least_time",
            "random_two",
            "random",
            "hash",
        ] {
            let balance = Balance::try_from(balance.to_string()).unwrap();
            assert!(check(&pool(|p| p.balance = balance)).is_ok());
        }
        let settings = pool(|p| {
            p.balance = Balance::Hash;
            p.hash_key = Some(HashKey::Cookie("session".into()));
            p.servers.push(ServerEntry {
                max_connections: 10,
                backup: true,
                state: ServerState::Drain,
                ..ServerEntry::new("127.0.0.1:9002")
            });
        });
        assert!(check(&settings).is_ok());
    }

    #[test]
    fn a_hash_key_needs_the_hash_algorithm() {
        let settings = pool(|p| p.hash_key = Some(HashKey::Uri));
        let problem = check(&settings).unwrap_err();
        assert_eq!(problem.key, "pools.web.hash_key");
        assert_eq!(problem.value, "\"uri\"");
    }

    #[test]
    fn hash_keys_are_parsed_and_named() {
        let parse = |word: &str| HashKey::try_from(word.to_string());
        assert_eq!(parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(parse("header:X-User"), Ok(HashKey::Header("x-user".into())));
        assert_eq!(parse("cookie:sid"), Ok(HashKey::Cookie("sid".into())));
        assert_eq!(parse("query:user"), Ok(HashKey::Query("user".into())));
        assert_eq!(
            String::from(parse("header:X-User").unwrap()),
            "header:x-user"
        );
        for bad in [
            "ip",
            "header:",
            "header:bad name",
            "cookie:a;b",
            "body:x",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn http2_limits_are_named_when_out_of_range() {
        let problem = |edit: fn(&mut Http2Settings)| {
            let mut http2 = Http2Settings::default();
            edit(&mut http2);
            check_http2(&http2).unwrap_err().key
        };
        assert!(check_http2(&Http2Settings::default()).is_ok());
        assert_eq!(
            problem(|h| h.max_concurrent_streams = 0),
            "tls.http2.max_concurrent_streams"
        );
        assert_eq!(problem(|h| h.max_requests = 0), "tls.http2.max_requests");
        assert_eq!(
            problem(|h| h.max_header_list_size = crate::settings::ByteSize(100)),
            "tls.http2.max_header_list_size"
        );
        assert_eq!(
            problem(|h| h.max_header_list_size = crate::settings::ByteSize::kib(32 * 1024)),
            "tls.http2.max_header_list_size"
        );
    }
}
