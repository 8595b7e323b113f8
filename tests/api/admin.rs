//! The admin API: pools as JSON and runtime membership changes while traffic flows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::helpers::*;

/// One admin call; `token` adds `Authorization: Bearer`.
fn call(admin: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn addresses(pool: &serde_json::Value) -> Vec<String> {
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pools_are_listed_with_their_servers_and_counters() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], ""));
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/name").status, 200);
    }
    let all = call(proxy.admin, "GET", "/pools", "", None);
    assert_eq!(all.status, 200);
    let pool = &all.json()["pools"][0];
    assert_eq!(pool["name"], "web");
    assert_eq!(pool["balance"], "round_robin");
    assert_eq!(pool["servers"][0]["address"], origin.addr.to_string());
    assert_eq!(pool["servers"][0]["requests"], 3);
    assert_eq!(pool["servers"][0]["in_flight"], 0);
    let one = call(proxy.admin, "GET", "/pools/web", "", None);
    assert_eq!(one.json()["name"], "web");
    let missing = call(proxy.admin, "GET", "/pools/nope", "", None);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));
}

#[test]
fn an_added_server_takes_traffic_and_a_removed_one_gets_none() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(&one_pool(&[one.addr], ""));
    let body = format!("{{\"address\": \"{}\", \"weight\": 1}}", two.addr);
    let added = call(proxy.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.status, 201, "{}", added.text());
    let names: Vec<String> = (0..4).map(|_| get(proxy.addr, "/name").text()).collect();
    assert!(names.contains(&"two".to_string()), "{names:?}");

    let again = call(proxy.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(again.status, 409);

    let path = format!("/pools/web/servers/{}", one.addr);
    assert_eq!(call(proxy.admin, "DELETE", &path, "", None).status, 200);
    let before = one.hits();
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/name").text(), "two");
    }
    assert_eq!(one.hits(), before);
    assert_eq!(call(proxy.admin, "DELETE", &path, "", None).status, 404);
    let listed = call(proxy.admin, "GET", "/pools/web", "", None).json();
    assert_eq!(addresses(&listed), [two.addr.to_string()]);
}

#[test]
fn bad_admin_calls_say_what_was_wrong() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], ""));
    let cases = [
        (
            "POST",
            "/pools/web/servers",
            "not json",
            400,
            "bad server description",
        ),
        (
            "POST",
            "/pools/web/servers",
            "{\"address\": \"nohost\"}",
            400,
            "port",
        ),
        (
            "POST",
            "/pools/web/servers",
            "{\"address\": \"127.0.0.1:1\", \"weight\": 0}",
            400,
            "weight",
        ),
        (
            "POST",
            "/pools/web/servers",
            "{\"address\": \"127.0.0.1:1\", \"colour\": 1}",
            400,
            "colour",
        ),
        (
            "POST",
            "/pools/nope/servers",
            "{\"address\": \"127.0.0.1:1\"}",
            404,
            "nope",
        ),
        (
            "DELETE",
            "/pools/web/servers/127.0.0.1:1",
            "",
            404,
            "not in the pool",
        ),
        ("GET", "/nothing/here", "", 404, "no admin endpoint"),
    ];
    for (method, path, body, status, words) in cases {
        let response = call(proxy.admin, method, path, body, None);
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        let error = response.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(words), "{method} {path}: {error}");
    }
    let listed = call(proxy.admin, "GET", "/pools/web", "", None).json();
    assert_eq!(addresses(&listed), [origin.addr.to_string()]);
}

#[test]
fn with_a_token_every_call_needs_it() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], "").replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n[log]",
    ));
    assert_eq!(call(proxy.admin, "GET", "/pools", "", None).status, 401);
    assert_eq!(
        call(proxy.admin, "GET", "/pools", "", Some("wrong")).status,
        401
    );
    let body = "{\"address\": \"127.0.0.1:1\"}";
    assert_eq!(
        call(proxy.admin, "POST", "/pools/web/servers", body, None).status,
        401
    );
    assert_eq!(
        call(proxy.admin, "GET", "/pools", "", Some("s3cret")).status,
        200
    );
    let listed = call(proxy.admin, "GET", "/pools/web", "", Some("s3cret")).json();
    assert_eq!(addresses(&listed), [origin.addr.to_string()]);
}

#[test]
fn a_removed_server_finishes_its_requests_in_flight() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(&one_pool(&[origin.addr], ""));
    let download = {
        let addr = proxy.addr;
        thread::spawn(move || get(addr, "/sleep/1000"))
    };
    // Wait until the request is in flight on the server, then remove it.
    while origin.hits() == 0 {
        thread::sleep(Duration::from_millis(10));
    }
    let path = format!("/pools/web/servers/{}", origin.addr);
    assert_eq!(call(proxy.admin, "DELETE", &path, "", None).status, 200);
    let response = download.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slept");
    assert_eq!(get(proxy.addr, "/name").status, 503);
}

#[test]
fn membership_changes_under_load_fail_no_request() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(&one_pool(&[one.addr], ""));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, failures, done) =
                (proxy.addr, stop.clone(), failures.clone(), done.clone());
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                // Bounded: at most 5,000 requests per client.
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
                    match conn.try_read(false) {
                        Ok(response) if response.status == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::open(addr);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let wait_for = |n: usize| {
        let target = done.load(Ordering::Relaxed) + n;
        while done.load(Ordering::Relaxed) < target && !clients.iter().all(|c| c.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(200);
    let body = format!("{{\"address\": \"{}\"}}", two.addr);
    assert_eq!(
        call(proxy.admin, "POST", "/pools/web/servers", &body, None).status,
        201
    );
    wait_for(200);
    let gone = format!("/pools/web/servers/{}", one.addr);
    assert_eq!(call(proxy.admin, "DELETE", &gone, "", None).status, 200);
    wait_for(200);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(two.hits() > 0, "the added server got no traffic");
}

#[test]
fn the_state_file_keeps_runtime_membership_across_reload_and_restart() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let state = TempDir::new();
    let state_file = state.0.join("state.json");
    let toml = one_pool(&[one.addr], "").replace(
        "[log]",
        &format!("[admin]\nstate_file = \"{}\"\n[log]", state_file.display()),
    );
    let mut first = Process::start(&toml);
    let body = format!("{{\"address\": \"{}\"}}", two.addr);
    let added = call(first.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.status, 201, "{}", added.text());
    assert!(
        added.json().get("state_file_error").is_none(),
        "{}",
        added.text()
    );
    let expected = [one.addr.to_string(), two.addr.to_string()];

    let reloaded = call(first.admin, "POST", "/reload", "", None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        addresses(&call(first.admin, "GET", "/pools/web", "", None).json()),
        expected
    );

    first.signal(libc::SIGTERM);
    assert_eq!(first.wait(), Some(0));
    let second = Process::start(&toml);
    assert_eq!(
        addresses(&call(second.admin, "GET", "/pools/web", "", None).json()),
        expected
    );
    let names: Vec<String> = (0..4).map(|_| get(second.addr, "/name").text()).collect();
    assert!(names.contains(&"two".to_string()), "{names:?}");
}
