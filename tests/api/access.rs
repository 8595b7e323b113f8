//! Who may send requests: per-route allow and deny lists, rate limits, and the client address
//! believed only from trusted proxies.

use std::net::{IpAddr, SocketAddr};

use crate::helpers::{connect_from, one_pool, Conn, Proxy, Response, Switchable, Toml};

/// A GET from the loopback address `source`, on a fresh connection.
fn get_from(proxy: SocketAddr, source: &str, path: &str, extra: &str) -> Response {
    let source: IpAddr = source.parse().unwrap();
    let mut conn = Conn::from_stream(connect_from(source, proxy));
    conn.send(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    );
    conn.read(false)
}

fn routes_with_lists(origin: SocketAddr) -> Toml {
    Toml::base()
        .route("path = \"/admin\"\npool = \"web\"\nallow = [\"127.0.0.2\"]")
        .route(
            "path = \"/\"\npool = \"web\"\ndeny = [\"127.0.0.0/24\"]\n\
             allow = [\"127.0.0.1\", \"127.0.0.3\"]",
        )
        .pool("web", &[origin])
}

#[test]
fn route_lists_answer_403_and_the_origin_sees_nothing() {
    let origin = Switchable::start("origin");
    let proxy = Proxy::from_toml(routes_with_lists(origin.addr));
    assert_eq!(
        get_from(proxy.addr, "127.0.0.2", "/admin/x", "").status,
        200
    );
    let refused = get_from(proxy.addr, "127.0.0.3", "/admin/x", "");
    assert_eq!(refused.status, 403);
    assert!(!refused.text().contains("127.0.0"), "{}", refused.text());
    // The most specific entry decides: 127.0.0.3 is allowed out of a denied /24.
    assert_eq!(get_from(proxy.addr, "127.0.0.3", "/shop", "").status, 200);
    assert_eq!(get_from(proxy.addr, "127.0.0.4", "/shop", "").status, 403);
    assert_eq!(get_from(proxy.addr, "127.0.0.2", "/shop", "").status, 403);
    assert_eq!(origin.hits(), 2);
}

#[test]
fn a_rate_limit_admits_the_burst_then_answers_429_with_retry_after() {
    let origin = Switchable::start("origin");
    let toml =
        one_pool(&[origin.addr], "").push("security.rate_limits", "rate = \"1/m\"\nburst = 3");
    let proxy = Proxy::from_toml(&toml);
    let statuses: Vec<u16> = (0..6)
        .map(|_| get_from(proxy.addr, "127.0.0.2", "/", "").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let refused = get_from(proxy.addr, "127.0.0.2", "/", "");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another client has its own allowance.
    assert_eq!(get_from(proxy.addr, "127.0.0.3", "/", "").status, 200);
    assert_eq!(origin.hits(), 5);
}

#[test]
fn a_header_keyed_limit_counts_per_header_value() {
    let origin = Switchable::start("origin");
    let toml = one_pool(&[origin.addr], "").push(
        "security.rate_limits",
        "key = \"header:X-Api-Key\"\nrate = \"1/m\"",
    );
    let proxy = Proxy::from_toml(&toml);
    let key = |k: &str| format!("X-Api-Key: {k}\r\n");
    assert_eq!(
        get_from(proxy.addr, "127.0.0.2", "/", &key("a")).status,
        200
    );
    assert_eq!(
        get_from(proxy.addr, "127.0.0.3", "/", &key("a")).status,
        429
    );
    assert_eq!(
        get_from(proxy.addr, "127.0.0.2", "/", &key("b")).status,
        200
    );
    // Without the header the rule does not apply.
    assert_eq!(get_from(proxy.addr, "127.0.0.2", "/", "").status, 200);
}

fn behind_a_trusted_proxy(origin: SocketAddr) -> Proxy {
    let toml = one_pool(&[origin], "").add(
        "security",
        "trusted_proxies = [\"127.0.0.5\"]\nallow = [\"203.0.113.0/24\", \"127.0.0.0/24\"]\n\
         deny = [\"127.0.0.9\"]\ndeny_action = \"403\"",
    );
    Proxy::from_toml(&toml)
}

#[test]
fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let origin = Switchable::start("origin");
    let proxy = behind_a_trusted_proxy(origin.addr);
    // From the trusted proxy, the client it names is the one checked: allowed...
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    assert_eq!(
        get_from(proxy.addr, "127.0.0.5", "/", &xff("203.0.113.7")).status,
        200
    );
    // ...or refused.
    assert_eq!(
        get_from(proxy.addr, "127.0.0.5", "/", &xff("198.51.100.1")).status,
        403
    );
    // From anyone else the header is not believed: a denied client cannot claim to be
    // another.
    assert_eq!(
        get_from(proxy.addr, "127.0.0.9", "/", &xff("203.0.113.7")).status,
        403
    );
}
