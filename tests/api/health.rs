//! Active health checks: real origins whose health endpoint is switched while gatehouse
//! probes it, verdicts seen through traffic and the admin API.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::helpers::*;

/// `[pools.web.health]` probing `/health` every 50ms without jitter, plus `extra` keys
/// (which replace those defaults).
fn checks(extra: &str) -> String {
    let mut toml = "[pools.web.health]\n".to_string();
    for (key, default) in [
        ("path", "\"/health\""),
        ("interval", "\"50ms\""),
        ("jitter", "\"0s\""),
        ("timeout", "\"1s\""),
    ] {
        if !extra.contains(&format!("{key} =")) {
            toml.push_str(&format!("{key} = {default}\n"));
        }
    }
    toml.push_str(extra);
    toml.push('\n');
    toml
}

fn proxy(servers: &[SocketAddr], extra: &str) -> Proxy {
    Proxy::from_toml(one_pool(servers, &checks(extra)))
}

fn server(proxy: &Proxy, origin: &Origin) -> serde_json::Value {
    admin_server(proxy.admin, "web", origin.addr)
}

fn probe_verdict(proxy: &Proxy, origin: &Origin) -> String {
    server(proxy, origin)["health"]["probe"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_for_verdict(proxy: &Proxy, origin: &Origin, verdict: &str) {
    wait_until(&format!("{} probed {verdict}", origin.addr), || {
        probe_verdict(proxy, origin) == verdict
    });
}

/// The last probe's detail, as the admin API reports it.
fn detail(proxy: &Proxy, origin: &Origin) -> String {
    server(proxy, origin)["health"]["last_probe"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends `n` requests for `/name`; returns the names of the origins that answered.
fn names(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let response = get(proxy.addr, "/name");
            assert_eq!(response.status, 200, "{}", response.text());
            response.text()
        })
        .collect()
}

/// Statuses the origin's health endpoint sent from index `from` on that are not 2xx.
fn failures_since(origin: &Origin, from: usize) -> usize {
    origin.health.answered()[from..]
        .iter()
        .filter(|status| !(200..300).contains(*status))
        .count()
}

#[test]
fn a_server_failing_its_probes_goes_down_and_returns_after_rise_passes() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let proxy = proxy(&[a.addr, b.addr], "rise = 2\nfall = 3");
    wait_for_verdict(&proxy, &a, "up");
    wait_for_verdict(&proxy, &b, "up");
    let served = names(&proxy, 6);
    assert!(served.contains(&"a".to_string()), "{served:?}");

    let before = a.health.answered().len();
    a.health.set_status(500);
    wait_for_verdict(&proxy, &a, "down");
    assert!(
        failures_since(&a, before) >= 3,
        "down after fewer than fall failures: {:?}",
        a.health.answered()
    );
    assert_eq!(detail(&proxy, &a), "status 500");
    assert_eq!(server(&proxy, &a)["takes_traffic"], false);
    let hits = a.hits();
    assert!(names(&proxy, 10).iter().all(|name| name == "b"));
    assert_eq!(a.hits(), hits, "a server probed down still got requests");
    // The server itself still answers traffic; only its health endpoint fails.
    assert_eq!(get(a.addr, "/name").text(), "a");

    let before = a.health.answered().len();
    a.health.set_status(200);
    wait_for_verdict(&proxy, &a, "up");
    let passes = a.health.answered()[before..]
        .iter()
        .filter(|status| **status == 200)
        .count();
    assert!(passes >= 2, "up after fewer than rise passes");
    wait_until("a takes requests again", || {
        names(&proxy, 4).contains(&"a".to_string())
    });
}

#[test]
fn a_200_whose_body_lacks_the_expected_text_fails() {
    let origin = Origin::start("a");
    origin.health.answer(200, "starting");
    let proxy = proxy(&[origin.addr], "expect_body = \"ready\"");
    wait_until("a failed probe", || {
        detail(&proxy, &origin) == "body lacks \"ready\""
    });
    assert_eq!(probe_verdict(&proxy, &origin), "down");
    assert_eq!(get(proxy.addr, "/name").status, 503);
    origin.health.answer(200, "all ready");
    wait_for_verdict(&proxy, &origin, "up");
    assert_eq!(get(proxy.addr, "/name").text(), "a");
}

#[test]
fn the_body_must_match_the_expected_pattern() {
    let origin = Origin::start("a");
    origin.health.answer(200, r#"{"db": "down"}"#);
    let proxy = proxy(
        &[origin.addr],
        r#"expect_body_regex = '"db":\s*"up"'
fall = 1"#,
    );
    wait_until("a failed probe", || {
        detail(&proxy, &origin).starts_with("body does not match")
    });
    assert_eq!(probe_verdict(&proxy, &origin), "down");
    origin.health.answer(200, r#"{"db":   "up"}"#);
    wait_for_verdict(&proxy, &origin, "up");
    origin.health.answer(200, r#"{"db": "down"}"#);
    wait_for_verdict(&proxy, &origin, "down");
}

#[test]
fn the_expected_header_must_be_there_with_its_value() {
    let origin = Origin::start("a");
    let proxy = proxy(&[origin.addr], "expect_header = \"X-Ready: yes\"");
    wait_until("a failed probe", || {
        detail(&proxy, &origin) == "header X-Ready missing"
    });
    origin.health.add_header("x-ready", "no");
    wait_until("a probe that saw the header", || {
        detail(&proxy, &origin) == "header X-Ready is not \"yes\""
    });
    assert_eq!(probe_verdict(&proxy, &origin), "down");
    origin.health.add_header("X-Ready", "yes");
    wait_for_verdict(&proxy, &origin, "up");
}

#[test]
fn expected_statuses_are_ranges_and_single_codes() {
    let origin = Origin::start("a");
    origin.health.set_status(302);
    let proxy = proxy(
        &[origin.addr],
        "expect_status = [\"200-204\", 302]\nfall = 1\nrise = 1",
    );
    wait_for_verdict(&proxy, &origin, "up");
    // 301 passes by default (200-399) but is not listed here.
    origin.health.set_status(301);
    wait_for_verdict(&proxy, &origin, "down");
    assert_eq!(detail(&proxy, &origin), "status 301");
    origin.health.set_status(204);
    wait_for_verdict(&proxy, &origin, "up");
    origin.health.set_status(205);
    wait_for_verdict(&proxy, &origin, "down");
}

#[test]
fn a_probe_that_hangs_fails_at_its_timeout() {
    let origin = Origin::start("a");
    let proxy = proxy(
        &[origin.addr],
        "timeout = \"200ms\"\nfall = 1\ninitial_state = \"up\"",
    );
    wait_until("a passing probe", || detail(&proxy, &origin) == "ok");
    origin.health.hang(true);
    wait_for_verdict(&proxy, &origin, "down");
    assert_eq!(detail(&proxy, &origin), "no complete answer within 200ms");
    assert_eq!(get(proxy.addr, "/name").status, 503);
    origin.health.hang(false);
    wait_for_verdict(&proxy, &origin, "up");
}

#[test]
fn probes_send_the_method_path_host_and_headers_set() {
    let origin = Origin::start("a");
    let proxy = proxy(
        &[origin.addr],
        "path = \"/health/deep?full=1\"\nmethod = \"HEAD\"\nhost = \"health.internal\"\n\
         headers = { \"X-Probe\" = \"gatehouse\", \"Authorization\" = \"Bearer t\" }",
    );
    wait_for_verdict(&proxy, &origin, "up");
    let seen = origin.health.last_request().unwrap();
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.target, "/health/deep?full=1");
    assert_eq!(seen.header("host"), Some("health.internal"));
    assert_eq!(seen.header("x-probe"), Some("gatehouse"));
    assert_eq!(seen.header("authorization"), Some("Bearer t"));
    assert_eq!(seen.header("connection"), Some("close"));
}

#[test]
fn without_a_host_setting_probes_name_the_server_address() {
    let origin = Origin::start("a");
    let proxy = proxy(&[origin.addr], "");
    wait_for_verdict(&proxy, &origin, "up");
    let seen = origin.health.last_request().unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.header("host"), Some(origin.addr.to_string().as_str()));
}

#[test]
fn the_port_setting_sends_probes_to_another_port() {
    let (app, side) = (Origin::start("app"), Origin::start("side"));
    app.health.set_status(500);
    let proxy = proxy(&[app.addr], &format!("port = {}", side.addr.port()));
    wait_for_verdict(&proxy, &app, "up");
    assert!(side.health.probes() > 0);
    assert_eq!(app.health.probes(), 0, "probed on the traffic port");
    assert_eq!(get(proxy.addr, "/name").text(), "app");
}

#[test]
fn a_server_starting_down_gets_no_traffic_before_its_first_pass() {
    let origin = Origin::start("a");
    // No probe ever completes: the verdict stays what it started as.
    origin.health.hang(true);
    let proxy = proxy(&[origin.addr], "timeout = \"10s\"");
    wait_until("a probe", || origin.health.probes() > 0);
    let response = get(proxy.addr, "/name");
    assert_eq!(response.status, 503);
    assert!(response.header("retry-after").is_some());
    assert_eq!(origin.hits(), 0);
    assert_eq!(server(&proxy, &origin)["takes_traffic"], false);
    origin.health.hang(false);
    wait_for_verdict(&proxy, &origin, "up");
    assert_eq!(get(proxy.addr, "/name").text(), "a");
}

#[test]
fn a_server_starting_up_takes_traffic_before_any_probe_answers() {
    let origin = Origin::start("a");
    origin.health.hang(true);
    let proxy = proxy(&[origin.addr], "timeout = \"10s\"\ninitial_state = \"up\"");
    wait_until("a probe", || origin.health.probes() > 0);
    assert_eq!(probe_verdict(&proxy, &origin), "up");
    assert_eq!(get(proxy.addr, "/name").text(), "a");
    origin.health.hang(false);
}

#[test]
fn a_server_added_through_the_admin_api_is_probed_and_starts_down() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    b.health.hang(true);
    let proxy = proxy(&[a.addr], "timeout = \"10s\"");
    wait_for_verdict(&proxy, &a, "up");
    let body = format!("{{\"address\": \"{}\"}}", b.addr);
    let added = admin_call(proxy.admin, "POST", "/pools/web/servers", &body);
    assert_eq!(added.status, 201, "{}", added.text());
    let added = added.json();
    assert_eq!(added["health"]["probe"], "down");
    assert_eq!(added["takes_traffic"], false);
    wait_until("b probed", || b.health.probes() > 0);
    assert!(names(&proxy, 6).iter().all(|name| name == "a"));
    assert_eq!(b.hits(), 0);
    b.health.hang(false);
    wait_for_verdict(&proxy, &b, "up");
    wait_until("b takes requests", || {
        names(&proxy, 4).contains(&"b".to_string())
    });
}

#[test]
fn the_admin_api_shows_each_servers_health() {
    let (a, unchecked) = (Origin::start("a"), Origin::start("u"));
    let toml = one_pool(
        &[a.addr],
        &format!(
            "{}[pools.other]\nservers = [{{ address = \"{}\" }}]\n",
            checks(""),
            unchecked.addr
        ),
    );
    let proxy = Proxy::from_toml(&toml);
    wait_for_verdict(&proxy, &a, "up");
    let listed = admin_call(proxy.admin, "GET", "/pools", "").json();
    let pool = |name: &str| {
        listed["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let checked = &pool("web")["servers"][0];
    assert_eq!(checked["takes_traffic"], true);
    let health = &checked["health"];
    assert_eq!(health["probe"], "up");
    assert_eq!(health["passive"], "healthy");
    assert!(health["ejected_until"].is_null());
    let last = &health["last_probe"];
    assert_eq!(last["passed"], true);
    assert_eq!(last["detail"], "ok");
    assert_eq!(last["consecutive_failures"], 0);
    assert!(last["consecutive_passes"].as_u64().unwrap() >= 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = last["at"].as_u64().unwrap();
    assert!(at <= now && at + 60 > now, "at {at}, now {now}");

    let plain = &pool("other")["servers"][0];
    assert_eq!(plain["health"]["probe"], "unchecked");
    assert!(plain["health"]["last_probe"].is_null());
    assert_eq!(plain["takes_traffic"], true);
}

fn reload(process: &Process, toml: Toml) {
    std::fs::write(&process.config, toml.to_string()).unwrap();
    let response = admin_reload(process.admin);
    assert_eq!(response.status, 200, "{}", response.text());
}

fn process_verdict(process: &Process, origin: &Origin) -> serde_json::Value {
    admin_server(process.admin, "web", origin.addr)["health"]["probe"].clone()
}

#[test]
fn a_reload_that_removes_the_checks_brings_probed_down_servers_back() {
    let origin = Origin::start("a");
    origin.health.set_status(500);
    let process = Process::start(one_pool(&[origin.addr], &checks("")));
    wait_until("a failed probe", || origin.health.probes() > 0);
    assert_eq!(process_verdict(&process, &origin), "down");
    let response = get(process.addr, "/name");
    assert_eq!(response.status, 503);
    assert!(response.header("retry-after").is_some());

    reload(&process, one_pool(&[origin.addr], ""));
    assert_eq!(process_verdict(&process, &origin), "unchecked");
    assert_eq!(get(process.addr, "/name").text(), "a");
    // No probe is sent any more, and no late one takes the server out again.
    let probes = origin.health.probes();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(origin.health.probes(), probes);
    assert_eq!(get(process.addr, "/name").text(), "a");
}

#[test]
fn a_reload_that_changes_the_checks_applies_them_to_running_probes() {
    let origin = Origin::start("a");
    origin.health.set_status(500);
    let process = Process::start(one_pool(&[origin.addr], &checks("")));
    wait_until("a failed probe", || origin.health.probes() > 0);
    assert_eq!(process_verdict(&process, &origin), "down");

    let accepting = checks("expect_status = [\"200-299\", 500]");
    reload(&process, one_pool(&[origin.addr], &accepting));
    wait_until("a up on the new expectations", || {
        process_verdict(&process, &origin) == "up"
    });
    assert_eq!(get(process.addr, "/name").text(), "a");
}

#[test]
fn a_bad_pattern_or_a_header_the_probe_sets_is_refused() {
    let dir = TempDir::new();
    let dead = DeadServer::new();
    for (extra, key) in [
        (
            "expect_body_regex = \"(unclosed\"",
            "pools.web.health.expect_body_regex",
        ),
        (
            "headers = { Host = \"x\" }",
            "pools.web.health.headers.Host",
        ),
    ] {
        let config = dir.write(
            "bad.toml",
            one_pool(&[dead.addr], &checks(extra)).to_string(),
        );
        let config = config.to_str().unwrap();
        let (code, _, stderr) = run_binary(&dir.0, &["--check", "--config", config], &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}
