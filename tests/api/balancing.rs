//! Balancing through the real proxy: algorithms that look at load or at the request, and the
//! per-server settings (max_connections, backup, state).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// How long a request that must stay in flight takes at the origin.
const SLOW: &str = "/sleep/1500";

/// One pool `web` with `pool` lines (balance, hash_key) and servers written as TOML tables.
fn pool_toml(pool: &str, servers: &[String]) -> Toml {
    Toml::base().route("pool = \"web\"").extend(&format!(
        "[pools.web]\n{pool}\nservers = [{}]",
        servers.join(", ")
    ))
}

/// A server entry for `origin` with extra keys, e.g. `max_connections = 1`.
fn server(origin: &Origin, extra: &str) -> String {
    if extra.is_empty() {
        format!("{{ address = \"{}\" }}", origin.addr)
    } else {
        format!("{{ address = \"{}\", {extra} }}", origin.addr)
    }
}

/// Starts a slow request and returns once an origin has received it.
fn hold_one_request(proxy: SocketAddr, origins: &[&Origin]) -> JoinHandle<Response> {
    let before: usize = origins.iter().map(|o| o.hits()).sum();
    let slow = thread::spawn(move || get(proxy, SLOW));
    let started = Instant::now();
    while origins.iter().map(|o| o.hits()).sum::<usize>() == before {
        assert!(
            started.elapsed() < DEADLINE,
            "the slow request never arrived"
        );
        thread::sleep(Duration::from_millis(5));
    }
    slow
}

fn name(proxy: SocketAddr) -> String {
    let response = get(proxy, "/name");
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

/// Two origins behind `balance`; one holds a slow request while six new ones must all go to
/// the other. Returns the proxy and its origins once the slow request has finished.
fn busy_server_is_avoided(balance: &str) -> (Proxy, Origin, Origin) {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(pool_toml(
        &format!("balance = \"{balance}\""),
        &[server(&one, ""), server(&two, "")],
    ));
    let slow = hold_one_request(proxy.addr, &[&one, &two]);
    let idle = if one.hits() == 1 { "two" } else { "one" };
    for _ in 0..6 {
        assert_eq!(name(proxy.addr), idle);
    }
    assert_eq!(slow.join().unwrap().status, 200);
    (proxy, one, two)
}

#[test]
fn least_connections_sends_new_requests_away_from_a_busy_server() {
    let (proxy, _one, _two) = busy_server_is_avoided("least_connections");
    // With both idle again, both get requests.
    let names: HashSet<String> = (0..4).map(|_| name(proxy.addr)).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn random_two_sends_new_requests_away_from_a_busy_server() {
    busy_server_is_avoided("random_two");
}

#[test]
fn hashing_a_header_keeps_each_key_on_one_server() {
    let origins = [
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("three"),
    ];
    let servers: Vec<String> = origins.iter().map(|o| server(o, "")).collect();
    let proxy = Proxy::from_toml(pool_toml(
        "balance = \"hash\"\nhash_key = \"header:X-User\"",
        &servers,
    ));
    let for_user = |user: &str| {
        let request = format!(
            "GET /name HTTP/1.1\r\nHost: test.local\r\nX-User: {user}\r\nConnection: close\r\n\r\n"
        );
        raw(proxy.addr, &request).text()
    };
    let mut homes = HashSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let home = for_user(&user);
        for _ in 0..5 {
            assert_eq!(for_user(&user), home, "{user} moved");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "20 users all on {homes:?}");
    // Requests without the header are spread round robin.
    let names: HashSet<String> = (0..3).map(|_| name(proxy.addr)).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn a_backup_gets_requests_only_when_the_primary_cannot_take_them() {
    let (primary, backup) = (Origin::start("primary"), Origin::start("backup"));
    let proxy = Proxy::from_toml(pool_toml(
        "",
        &[server(&primary, ""), server(&backup, "backup = true")],
    ));
    for _ in 0..5 {
        assert_eq!(name(proxy.addr), "primary");
    }
    drop(proxy);
    let proxy = Proxy::from_toml(pool_toml(
        "",
        &[
            server(&primary, "state = \"down\""),
            server(&backup, "backup = true"),
        ],
    ));
    for _ in 0..5 {
        assert_eq!(name(proxy.addr), "backup");
    }
    assert_eq!(primary.hits(), 5);
}

#[test]
fn draining_and_down_servers_get_no_new_requests() {
    let [one, two, three] = ["one", "two", "three"].map(Origin::start);
    let proxy = Proxy::from_toml(pool_toml(
        "balance = \"least_connections\"",
        &[
            server(&one, "state = \"drain\""),
            server(&two, ""),
            server(&three, "state = \"down\""),
        ],
    ));
    for _ in 0..6 {
        assert_eq!(name(proxy.addr), "two");
    }
    assert_eq!(one.hits() + three.hits(), 0);
}

#[test]
fn a_server_at_max_connections_is_skipped() {
    let (limited, other) = (Origin::start("limited"), Origin::start("other"));
    let proxy = Proxy::from_toml(pool_toml(
        "",
        &[server(&limited, "max_connections = 1"), server(&other, "")],
    ));
    // Round robin sends the first request to the limited server, which holds it.
    let slow = hold_one_request(proxy.addr, &[&limited, &other]);
    assert_eq!(limited.hits(), 1);
    for _ in 0..6 {
        assert_eq!(name(proxy.addr), "other");
    }
    assert_eq!(slow.join().unwrap().status, 200);
    let names: HashSet<String> = (0..2).map(|_| name(proxy.addr)).collect();
    assert!(names.contains("limited"), "{names:?}");
}

#[test]
fn when_every_server_is_at_its_limit_the_client_gets_503_and_retry_after() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(pool_toml(
        "balance = \"random\"",
        &[
            server(&one, "max_connections = 1"),
            server(&two, "max_connections = 1"),
        ],
    ));
    let first = hold_one_request(proxy.addr, &[&one, &two]);
    let second = hold_one_request(proxy.addr, &[&one, &two]);
    assert_eq!((one.hits(), two.hits()), (1, 1));
    let refused = get(proxy.addr, "/name");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        one.hits() + two.hits(),
        2,
        "the refused request reached no server"
    );
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
    assert_eq!(get(proxy.addr, "/name").status, 200);
}

#[test]
fn least_time_pools_forward_and_time_requests() {
    // How traffic follows response times is unit-tested with an explicit clock; here the
    // timing hook runs on the real request path.
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(pool_toml(
        "balance = \"least_time\"",
        &[server(&one, ""), server(&two, "")],
    ));
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/name").status, 200);
    }
    assert_eq!(one.hits() + two.hits(), 10);
}

/// A pool whose one server takes one request at a time, with the given `queue_timeout`.
fn one_slot_pool(queue_timeout: &str) -> (Origin, Proxy) {
    let origin = Origin::start("app");
    let toml = Toml::base().route("pool = \"web\"").extend(&format!(
        "[pools.web]\nqueue_timeout = \"{queue_timeout}\"\n\
         servers = [{{ address = \"{}\", max_connections = 1 }}]",
        origin.addr
    ));
    let proxy = Proxy::from_toml(toml);
    (origin, proxy)
}

/// [`one_slot_pool`] busy with a slow request (`/sleep/MS`); returns the slow request's
/// thread too.
fn full_pool(
    queue_timeout: &str,
    slow_ms: u64,
) -> (Origin, Proxy, std::thread::JoinHandle<Response>) {
    let (origin, proxy) = one_slot_pool(queue_timeout);
    let slow = {
        let addr = proxy.addr;
        std::thread::spawn(move || get(addr, &format!("/sleep/{slow_ms}")))
    };
    while origin.hits() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (origin, proxy, slow)
}

#[test]
fn a_request_queues_for_a_full_pool_up_to_queue_timeout() {
    let (_origin, proxy, slow) = full_pool("10s", 500);
    // The only slot is taken: this request waits for it instead of getting 503.
    let queued = get(proxy.addr, "/name");
    assert_eq!(queued.status, 200);
    assert_eq!(queued.text(), "app");
    assert_eq!(slow.join().unwrap().text(), "slept");
}

/// The deadline itself, to within one poll, is held by `proxy::phase::pick`'s unit tests on
/// paused time.
#[test]
fn a_queued_request_gets_503_when_queue_timeout_passes() {
    let (origin, proxy) = one_slot_pool("50ms");
    // The only slot is held by an upload under way: in flight until its last chunk comes.
    let mut upload = Conn::open(proxy.addr);
    upload.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    wait_until("the upload holds the slot", || {
        admin_server(proxy.admin, "web", origin.addr)["in_flight"] == 1
    });
    let refused = get(proxy.addr, "/name");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    upload.send(b"0\r\n\r\n");
    let held = upload.read(false);
    assert_eq!(held.status, 200);
    assert_eq!(held.json()["body"], "hello");
    assert_eq!(
        origin.hits(),
        1,
        "the refused request never reached the server"
    );
}
