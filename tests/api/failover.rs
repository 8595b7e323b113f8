//! The promise: a server that dies or hangs under load costs the clients nothing, and gets
//! traffic again once it is back.

use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::{get, one_pool, Load, Mode, Proxy, Switchable, DEADLINE};

const CLIENTS: usize = 16;

/// Failure handling as docs/health.md recommends for a pool of interchangeable servers,
/// with times shortened to keep the test short.
const SETTINGS: &str = "response_timeout = \"1s\"\n\
    [pools.web.passive]\nmax_fails = 3\nejection_time = \"1s\"\n\
    [pools.web.retry]\nattempts = 2\n";

fn origins() -> Vec<Switchable> {
    (1..=3)
        .map(|i| Switchable::start(&format!("origin{i}")))
        .collect()
}

/// Requests until `server` has received more than `hits`, proving it takes traffic again.
fn serves_again(proxy: &Proxy, server: &Switchable, hits: usize) {
    let deadline = Instant::now() + DEADLINE;
    while server.hits() <= hits {
        assert!(Instant::now() < deadline, "{} got no traffic", server.name);
        assert_eq!(get(proxy.addr, "/name").status, 200);
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_server_killed_under_load_fails_no_request() {
    let mut servers = origins();
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let proxy = Proxy::from_toml(one_pool(&addrs, SETTINGS));
    let load = Load::start(proxy.addr, CLIENTS);
    load.wait_for(300);
    servers[1].close();
    thread::sleep(Duration::from_millis(2500));
    servers[1].reopen();
    let hits_at_restart = servers[1].hits();
    thread::sleep(Duration::from_millis(1000));
    let failures = load.stop();
    println!("killed origin: {failures} failed requests");
    assert_eq!(failures, 0);
    serves_again(&proxy, &servers[1], hits_at_restart);
}

#[test]
fn a_server_that_hangs_under_load_fails_at_most_the_requests_it_held() {
    let servers = origins();
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let proxy = Proxy::from_toml(one_pool(&addrs, SETTINGS));
    let load = Load::start(proxy.addr, CLIENTS);
    load.wait_for(300);
    servers[1].set(Mode::Hang);
    thread::sleep(Duration::from_millis(2500));
    servers[1].set(Mode::Answer(200));
    let hits_at_resume = servers[1].hits();
    thread::sleep(Duration::from_millis(1000));
    let failures = load.stop();
    println!("hung origin: {failures} failed requests");
    // A hung try is retried elsewhere after the response timeout; at worst, the requests in
    // flight on it when it hung fail.
    assert!(failures <= CLIENTS, "{failures} failed");
    serves_again(&proxy, &servers[1], hits_at_resume);
}
