//! Passive detection: servers failing on live traffic are ejected, tried again after a
//! while, and brought back when a trial succeeds; backups and slow start around it.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::helpers::{admin_server, get, one_pool, Mode, Proxy, Switchable, Toml, DEADLINE};

/// Retries off, so the client sees what each server answered.
const NO_RETRY: &str = "[pools.web.retry]\nattempts = 1\n";

/// An ejection over by the next request, for tests of what follows one; how long ejections
/// last, and that each failed trial doubles the next, is held by the unit tests of
/// `health::passive`.
const BRIEF: &str = "1ms";

fn passive(max_fails: u32, ejection_time: &str, extra: &str) -> String {
    format!(
        "{NO_RETRY}[pools.web.passive]\nmax_fails = {max_fails}\nejection_time = \"{ejection_time}\"\n\
         max_ejection_time = \"60s\"\n{extra}"
    )
}

/// Sends requests until `until` holds (or the deadline passes, which fails the test).
fn drive(proxy: &Proxy, mut until: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !until() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        get(proxy.addr, "/");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `requests` requests and asserts `server` received none of them.
fn gets_none_of(proxy: &Proxy, server: &Switchable, requests: usize) {
    let hits = server.hits();
    for _ in 0..requests {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    assert_eq!(server.hits(), hits, "{} got traffic", server.name);
}

/// What passive detection says of `server`, as the admin API shows it.
fn passive_health(proxy: &Proxy, server: &Switchable) -> serde_json::Value {
    admin_server(proxy.admin, "web", server.addr)["health"].clone()
}

#[test]
fn max_fails_eject_for_the_ejection_time() {
    let good = Switchable::start("good");
    let bad = Switchable::answering("bad", 502);
    let settings = one_pool(&[good.addr, bad.addr], &passive(2, "60s", ""));
    let proxy = Proxy::from_toml(&settings);

    drive(&proxy, || bad.hits() >= 2);
    assert_eq!(bad.hits(), 2, "ejected at the second failure");
    gets_none_of(&proxy, &bad, 30);
    let health = passive_health(&proxy, &bad);
    assert_eq!(health["passive"], "ejected", "{health}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = health["ejected_until"].as_u64().unwrap();
    assert!(
        until > now + 50 && until <= now + 61,
        "ejected until {until}, now {now}: not for ejection_time"
    );
}

#[test]
fn a_passed_trial_brings_the_server_back() {
    let good = Switchable::start("good");
    let bad = Switchable::answering("bad", 503);
    let settings = one_pool(&[good.addr, bad.addr], &passive(1, BRIEF, ""));
    let proxy = Proxy::from_toml(&settings);
    drive(&proxy, || bad.hits() >= 1);
    bad.set(Mode::Answer(200));
    drive(&proxy, || bad.hits() >= 2);
    let health = passive_health(&proxy, &bad);
    assert_eq!(health["passive"], "healthy", "the trial passed: {health}");
    // Back in the rotation: it takes its turn again.
    let before = bad.hits();
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    assert!(bad.hits() - before >= 4, "{} of 10", bad.hits() - before);
}

#[test]
fn connect_errors_eject_too_and_retries_hide_them() {
    let good = Switchable::start("good");
    let mut dead = Switchable::start("dead");
    dead.close();
    let settings = one_pool(
        &[good.addr, dead.addr],
        "[pools.web.passive]\nmax_fails = 1\nejection_time = \"60s\"\n",
    );
    let proxy = Proxy::from_toml(&settings);
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    dead.reopen();
    // Ejected for a minute: the reopened server gets nothing yet.
    gets_none_of(&proxy, &dead, 30);
}

#[test]
fn max_ejected_percent_keeps_part_of_the_pool() {
    let servers: Vec<Switchable> = (0..4)
        .map(|i| Switchable::answering(&format!("s{i}"), 502))
        .collect();
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let settings = one_pool(&addrs, &passive(1, "60s", "max_ejected_percent = 50\n"));
    let proxy = Proxy::from_toml(&settings);
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/").status, 502);
    }
    // Two of four ejected, the other two still take requests rather than none at all.
    let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
    for _ in 0..20 {
        get(proxy.addr, "/");
    }
    let serving = servers
        .iter()
        .zip(&before)
        .filter(|(s, &b)| s.hits() > b)
        .count();
    assert_eq!(serving, 2);
}

#[test]
fn with_passive_detection_off_nothing_is_ejected() {
    let good = Switchable::start("good");
    let bad = Switchable::answering("bad", 502);
    let extra = format!("{NO_RETRY}[pools.web.passive]\nenabled = false\n");
    let proxy = Proxy::from_toml(one_pool(&[good.addr, bad.addr], &extra));
    for _ in 0..20 {
        get(proxy.addr, "/");
    }
    assert_eq!(bad.hits(), 10);
}

/// How the primary takes its requests back after a passed trial: `health::passive`'s unit tests.
#[test]
fn backups_take_over_from_an_ejected_primary() {
    let primary = Switchable::answering("primary", 502);
    let backup = Switchable::start("backup");
    let settings = Toml::base().route("pool = \"web\"").extend(&format!(
        "[pools.web]\nservers = [{{ address = \"{}\" }}, {{ address = \"{}\", backup = true }}]\n{}",
        primary.addr,
        backup.addr,
        passive(1, "60s", "")
    ));
    let proxy = Proxy::from_toml(settings);
    assert_eq!(get(proxy.addr, "/").status, 502);
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").text(), "backup");
    }
    assert_eq!(primary.hits(), 1);
}

#[test]
fn when_every_server_is_out_clients_get_503_with_retry_after() {
    let a = Switchable::answering("a", 502);
    let b = Switchable::answering("b", 502);
    let settings = one_pool(
        &[a.addr, b.addr],
        &passive(1, "60s", "max_ejected_percent = 100\n"),
    );
    let proxy = Proxy::from_toml(&settings);
    get(proxy.addr, "/");
    get(proxy.addr, "/");
    let response = get(proxy.addr, "/");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(!response.text().contains("127.0.0.1"));
}

#[test]
fn slow_start_ramps_a_returning_server_up() {
    let steady = Switchable::start("steady");
    let returning = Switchable::start("returning");
    let extra = format!("slow_start = \"60s\"\n{}", passive(1, BRIEF, ""));
    let settings = one_pool(&[steady.addr, returning.addr], &extra);
    let proxy = Proxy::from_toml(&settings);
    returning.set(Mode::Answer(502));
    drive(&proxy, || returning.hits() >= 1);
    returning.set(Mode::Answer(200));
    drive(&proxy, || returning.hits() >= 2);
    // Back, but at a tenth of its weight or so for the next while: of 200 requests, where
    // an equal share would be 100, it gets far fewer.
    let before = returning.hits();
    for _ in 0..200 {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    let share = returning.hits() - before;
    assert!(share < 50, "{share} of 200");
    assert!(share > 0, "a ramping server still gets some requests");
}
