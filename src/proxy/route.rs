//! The route table: which pool serves a request, by host and path prefix.

use std::sync::Arc;

use crate::compression::Compression;
use crate::security::{AccessList, RateLimit};
use crate::settings::{HostPattern, RouteSettings, StatusRange};

/// One route, ready to match; `T` is what it leads to (the pool, on the request path).
pub struct Route<T> {
    /// How the route is named in logs: `host` plus `path`.
    pub label: String,
    host: HostPattern,
    path: String,
    pub target: T,
    pub max_body_size: Option<u64>,
    /// The route's own allow and deny lists (403).
    pub access: AccessList,
    /// The route's own rate limits (429).
    pub rate_limits: Vec<RateLimit>,
    /// The route's own compression rules, if it sets any.
    pub compression: RouteCompression,
    /// Plain-HTTP requests are redirected to `https`.
    pub redirect_https: bool,
    /// `Strict-Transport-Security` for responses sent over TLS.
    pub hsts: Option<actix_web::http::header::HeaderValue>,
    /// The route's own `intercept_errors`, if it sets them.
    pub intercept_errors: Option<Vec<StatusRange>>,
}

/// Whether a route compresses as `[compression]` says or by its own rules.
pub enum RouteCompression {
    Inherit,
    /// Its own rules; `None` when they turn compression off.
    Own(Option<Arc<Compression>>),
}

impl RouteCompression {
    /// The rules that apply, given the global ones.
    pub fn or<'a>(&'a self, global: Option<&'a Arc<Compression>>) -> Option<&'a Arc<Compression>> {
        match self {
            Self::Inherit => global,
            Self::Own(own) => own.as_ref(),
        }
    }
}

/// Routes ordered so the first match is the best: most specific host, then longest path.
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
}

impl<T> RouteTable<T> {
    /// Builds the table; `target_of` resolves a route's pool name.
    pub fn new(
        settings: &[RouteSettings],
        target_of: impl Fn(&str) -> Option<T>,
    ) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(settings.len());
        for route in settings {
            let target =
                target_of(&route.pool).ok_or_else(|| format!("no pool named {:?}", route.pool))?;
            routes.push(Route {
                label: format!("{}{}", route.host, route.path),
                host: HostPattern::parse(&route.host)?,
                path: route.path.clone(),
                target,
                max_body_size: route.max_body_size.map(|size| size.get()),
                access: AccessList::new(&route.allow, &route.deny),
                rate_limits: route.rate_limits.iter().map(RateLimit::new).collect(),
                compression: match &route.compression {
                    None => RouteCompression::Inherit,
                    Some(own) => RouteCompression::Own(Compression::new(own).map(Arc::new)),
                },
                redirect_https: route.redirect_https,
                hsts: route
                    .hsts
                    .as_deref()
                    .and_then(|hsts| actix_web::http::header::HeaderValue::from_str(hsts).ok()),
                intercept_errors: route.intercept_errors.clone(),
            });
        }
        routes.sort_by(|a, b| {
            (b.host.specificity(), b.path.len()).cmp(&(a.host.specificity(), a.path.len()))
        });
        Ok(Self { routes })
    }

    /// The route for a request; `host` may carry a port and any case.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route<T>> {
        let host = host.map(without_port).unwrap_or_default();
        self.routes
            .iter()
            .find(|route| route.host.matches(host) && path.starts_with(route.path.as_str()))
    }
}

/// A Host value without its port or a trailing dot (`[::1]:80` keeps its brackets).
fn without_port(host: &str) -> &str {
    let host = match host.rfind(':') {
        Some(at) if !host[at..].contains(']') => &host[..at],
        _ => host,
    };
    host.trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_as_operators_expect() {
        let exact = HostPattern::parse("Example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com"));
        let wildcard = HostPattern::parse("*.example.com").unwrap();
        assert!(wildcard.matches("www.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        assert!(HostPattern::parse("*").unwrap().matches("anything"));
        assert!(HostPattern::parse("example.com:80").is_err());
        assert!(HostPattern::parse("http://example.com").is_err());
    }

    fn table(routes: &[(&str, &str, &'static str)]) -> RouteTable<&'static str> {
        let settings: Vec<RouteSettings> = routes
            .iter()
            .map(|(host, path, pool)| RouteSettings {
                host: host.to_string(),
                ..RouteSettings::to(path, pool)
            })
            .collect();
        let pools: Vec<&'static str> = routes.iter().map(|r| r.2).collect();
        RouteTable::new(&settings, |name| {
            pools.iter().find(|p| **p == name).copied()
        })
        .unwrap()
    }

    fn pool_for(table: &RouteTable<&'static str>, host: &str, path: &str) -> Option<&'static str> {
        table.find(Some(host), path).map(|route| route.target)
    }

    #[test]
    fn longest_path_prefix_wins() {
        let table = table(&[
            ("*", "/", "web"),
            ("*", "/api/", "api"),
            ("*", "/api/v2/", "v2"),
        ]);
        assert_eq!(pool_for(&table, "a", "/"), Some("web"));
        assert_eq!(pool_for(&table, "a", "/api/users"), Some("api"));
        assert_eq!(pool_for(&table, "a", "/api/v2/users"), Some("v2"));
        assert_eq!(pool_for(&table, "a", "/apix"), Some("web"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let table = table(&[
            ("*", "/", "any"),
            ("*.example.com", "/", "wild"),
            ("shop.example.com", "/", "shop"),
        ]);
        assert_eq!(
            pool_for(&table, "SHOP.example.com:8080", "/x"),
            Some("shop")
        );
        assert_eq!(pool_for(&table, "www.example.com", "/x"), Some("wild"));
        assert_eq!(pool_for(&table, "other.org", "/x"), Some("any"));
    }

    #[test]
    fn no_matching_route_finds_nothing() {
        let table = table(&[("example.com", "/app/", "app")]);
        assert_eq!(pool_for(&table, "example.com", "/other"), None);
        assert_eq!(pool_for(&table, "other.com", "/app/x"), None);
        assert!(table.find(None, "/app/x").is_none());
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(without_port("Example.COM:8080"), "Example.COM");
        assert_eq!(without_port("[::1]:80"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        assert_eq!(without_port("example.com."), "example.com");
        assert!(HostPattern::parse("*.example.com")
            .unwrap()
            .matches("WWW.Example.COM"));
        assert!(!HostPattern::parse("*.example.com")
            .unwrap()
            .matches("é.com"));
    }
}
