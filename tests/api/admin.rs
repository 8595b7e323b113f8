//! The admin API: pools as JSON and runtime membership changes while traffic flows.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use crate::helpers::*;

/// One admin call; `token` adds `Authorization: Bearer`.
fn call(admin: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> Response {
    admin_call_as(admin, method, path, body, token)
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
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
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
    let proxy = Proxy::from_toml(one_pool(&[one.addr], ""));
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
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
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
    let proxy = Proxy::from_toml(
        one_pool(&[origin.addr], "").add("admin", "listen = \"127.0.0.1:0\"\ntoken = \"s3cret\""),
    );
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
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
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
    let proxy = Proxy::from_toml(one_pool(&[one.addr], ""));
    let load = Load::start(proxy.addr, 4);
    load.wait_for(200);
    let body = format!("{{\"address\": \"{}\"}}", two.addr);
    let added = call(proxy.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.status, 201);
    load.wait_for(200);
    let gone = format!("/pools/web/servers/{}", one.addr);
    assert_eq!(call(proxy.admin, "DELETE", &gone, "", None).status, 200);
    load.wait_for(200);
    assert_eq!(load.stop(), 0);
    assert!(two.hits() > 0, "the added server got no traffic");
}

#[test]
fn the_state_file_keeps_runtime_membership_across_reload_and_restart() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let state = TempDir::new();
    let state_file = state.0.join("state.json");
    let toml = one_pool(&[one.addr], "").add(
        "admin",
        &format!("state_file = \"{}\"", state_file.display()),
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

#[test]
fn a_patch_changes_each_field_and_answers_the_server() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let path = format!("/pools/web/servers/{}", origin.addr);
    let listed = admin_server(proxy.admin, "web", origin.addr);
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["backup"], false);
    assert_eq!(listed["max_connections"], 0);
    assert!(listed.get("drained").is_none(), "{listed}");
    for (body, field, value) in [
        ("{\"weight\": 4}", "weight", serde_json::json!(4)),
        (
            "{\"max_connections\": 7}",
            "max_connections",
            serde_json::json!(7),
        ),
        ("{\"backup\": true}", "backup", serde_json::json!(true)),
        ("{\"state\": \"down\"}", "state", serde_json::json!("down")),
        (
            "{\"state\": \"active\"}",
            "state",
            serde_json::json!("active"),
        ),
    ] {
        let patched = call(proxy.admin, "PATCH", &path, body, None);
        assert_eq!(patched.status, 200, "{body}: {}", patched.text());
        assert_eq!(patched.json()[field], value, "{body}: {}", patched.text());
        assert_eq!(patched.json()["pool"], "web");
        assert_eq!(
            admin_server(proxy.admin, "web", origin.addr)[field],
            value,
            "{body}"
        );
    }
    let all = call(
        proxy.admin,
        "PATCH",
        &path,
        "{\"weight\": 2, \"backup\": false, \"state\": \"drain\", \"max_connections\": 0}",
        None,
    )
    .json();
    assert_eq!(
        (
            &all["weight"],
            &all["backup"],
            &all["state"],
            &all["drained"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(false),
            &serde_json::json!("drain"),
            &serde_json::json!(true)
        ),
        "{all}"
    );
    // Draining, it takes no new requests: the pool has no server to offer.
    assert_eq!(get(proxy.addr, "/name").status, 503);
    call(proxy.admin, "PATCH", &path, "{\"state\": \"active\"}", None);
    assert_eq!(get(proxy.addr, "/name").status, 200);
}

#[test]
fn bad_patches_say_what_was_wrong_and_change_nothing() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let path = format!("/pools/web/servers/{}", origin.addr);
    let cases = [
        (path.as_str(), "not json", 400, "bad server change"),
        (path.as_str(), "{\"weight\": 0}", 400, "weight"),
        (path.as_str(), "{\"weight\": -1}", 400, "u32"),
        (path.as_str(), "{\"state\": \"asleep\"}", 400, "drain"),
        (path.as_str(), "{\"colour\": 1}", 400, "colour"),
        (
            path.as_str(),
            "{\"address\": \"127.0.0.1:2\"}",
            400,
            "address",
        ),
        (
            "/pools/nope/servers/127.0.0.1:1",
            "{\"weight\": 2}",
            404,
            "nope",
        ),
        (
            "/pools/web/servers/127.0.0.1:1",
            "{\"weight\": 2}",
            404,
            "not in the pool",
        ),
    ];
    for (path, body, status, words) in cases {
        let response = call(proxy.admin, "PATCH", path, body, None);
        assert_eq!(response.status, status, "{body}: {}", response.text());
        let error = response.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(words), "{body}: {error}");
    }
    let listed = admin_server(proxy.admin, "web", origin.addr);
    assert_eq!(
        (&listed["weight"], &listed["state"]),
        (&1.into(), &"active".into())
    );
}

#[test]
fn a_patch_needs_the_token_when_one_is_set() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(
        one_pool(&[origin.addr], "").add("admin", "listen = \"127.0.0.1:0\"\ntoken = \"s3cret\""),
    );
    let path = format!("/pools/web/servers/{}", origin.addr);
    let body = "{\"state\": \"down\"}";
    assert_eq!(call(proxy.admin, "PATCH", &path, body, None).status, 401);
    assert_eq!(
        call(proxy.admin, "PATCH", &path, body, Some("wrong")).status,
        401
    );
    assert_eq!(
        get(proxy.addr, "/name").status,
        200,
        "the refused call changed nothing"
    );
    assert_eq!(
        call(proxy.admin, "PATCH", &path, body, Some("s3cret")).status,
        200
    );
    assert_eq!(get(proxy.addr, "/name").status, 503);
}

#[test]
fn a_drained_server_gets_no_new_requests_while_its_download_finishes() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let proxy = Proxy::from_toml(one_pool(&[one.addr], ""));
    let download = {
        let addr = proxy.addr;
        thread::spawn(move || get(addr, "/sleep/1500"))
    };
    while one.hits() == 0 {
        thread::sleep(Duration::from_millis(10));
    }
    let body = format!("{{\"address\": \"{}\"}}", two.addr);
    assert_eq!(
        call(proxy.admin, "POST", "/pools/web/servers", &body, None).status,
        201
    );
    let path = format!("/pools/web/servers/{}", one.addr);
    let drained = call(proxy.admin, "PATCH", &path, "{\"state\": \"drain\"}", None);
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert_eq!(drained.json()["in_flight"], 1);
    assert_eq!(drained.json()["drained"], false);

    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "/name").text(), "two");
    }
    assert_eq!(one.hits(), 1, "the draining server got a new request");
    let during = admin_server(proxy.admin, "web", one.addr);
    assert_eq!(
        (&during["in_flight"], &during["drained"]),
        (&1.into(), &false.into())
    );

    let response = download.join().unwrap();
    assert_eq!(
        (response.status, response.text()),
        (200, "slept".to_string())
    );
    let started = std::time::Instant::now();
    loop {
        let after = admin_server(proxy.admin, "web", one.addr);
        if after["drained"] == true {
            assert_eq!(after["in_flight"], 0);
            assert_eq!(after["requests"], 1);
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never drained: {after}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn counters_and_requests_in_flight_survive_a_weight_change() {
    let origin = Origin::start("one");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/name").status, 200);
    }
    let download = {
        let addr = proxy.addr;
        thread::spawn(move || get(addr, "/sleep/800"))
    };
    while origin.hits() < 4 {
        thread::sleep(Duration::from_millis(10));
    }
    let path = format!("/pools/web/servers/{}", origin.addr);
    let patched = call(
        proxy.admin,
        "PATCH",
        &path,
        "{\"weight\": 3, \"max_connections\": 1}",
        None,
    );
    assert_eq!(patched.status, 200, "{}", patched.text());
    let server = patched.json();
    assert_eq!(
        (&server["weight"], &server["requests"]),
        (&3.into(), &4.into())
    );
    assert_eq!(server["in_flight"], 1);
    // The running request holds the server's only slot under its new limit.
    assert_eq!(get(proxy.addr, "/name").status, 503);
    assert_eq!(download.join().unwrap().status, 200);
    let after = admin_server(proxy.admin, "web", origin.addr);
    assert_eq!(
        (&after["in_flight"], &after["requests"]),
        (&0.into(), &4.into())
    );
}

#[test]
fn a_server_is_added_with_its_limit_backup_flag_and_state() {
    let (one, two, three) = (
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("three"),
    );
    let proxy = Proxy::from_toml(one_pool(&[one.addr], ""));
    let body = format!(
        "{{\"address\": \"{}\", \"weight\": 2, \"max_connections\": 5, \"backup\": true}}",
        two.addr
    );
    let added = call(proxy.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.status, 201, "{}", added.text());
    let server = added.json();
    assert_eq!(server["pool"], "web");
    assert_eq!(server["address"], two.addr.to_string());
    assert_eq!(
        (
            &server["weight"],
            &server["max_connections"],
            &server["backup"],
            &server["state"]
        ),
        (&2.into(), &5.into(), &true.into(), &"active".into())
    );
    let body = format!("{{\"address\": \"{}\", \"state\": \"down\"}}", three.addr);
    let added = call(proxy.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.json()["state"], "down", "{}", added.text());
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/name").text(), "one");
    }
    // Only when the primary cannot take requests does the backup, never the down server.
    let path = format!("/pools/web/servers/{}", one.addr);
    call(proxy.admin, "PATCH", &path, "{\"state\": \"down\"}", None);
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/name").text(), "two");
    }
    assert_eq!(three.hits(), 0);
}

/// Settings for the binary: pools `web` and `api`, `api` on `/api/`, and the sections `extra` adds.
fn two_pools(web: SocketAddr, api: SocketAddr, extra: &str) -> Toml {
    Toml::base()
        .route("pool = \"web\"")
        .route("path = \"/api/\"\npool = \"api\"")
        .pool("web", &[web])
        .pool("api", &[api])
        .extend(extra)
}

#[test]
fn without_a_state_file_a_reload_returns_every_pool_to_its_settings() {
    let (one, two, api) = (
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("api"),
    );
    let process = Process::start(two_pools(one.addr, api.addr, ""));
    let body = format!("{{\"address\": \"{}\"}}", two.addr);
    assert_eq!(
        call(process.admin, "POST", "/pools/web/servers", &body, None).status,
        201
    );
    let path = format!("/pools/api/servers/{}", api.addr);
    call(process.admin, "PATCH", &path, "{\"state\": \"down\"}", None);
    // The settings files did not change at all, yet the runtime changes are undone.
    let reloaded = call(process.admin, "POST", "/reload", "", None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        addresses(&call(process.admin, "GET", "/pools/web", "", None).json()),
        [one.addr.to_string()]
    );
    let api_pool = call(process.admin, "GET", "/pools/api", "", None).json();
    assert_eq!(api_pool["servers"][0]["state"], "active");
    assert_eq!(get(process.addr, "/api/echo").json()["origin"], "api");
}

#[test]
fn the_state_file_keeps_only_the_pools_changed_at_runtime() {
    let (one, two, api, api2) = (
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("api"),
        Origin::start("api2"),
    );
    let state = TempDir::new();
    let state_file = state.0.join("state.json");
    let extra = format!("[admin]\nstate_file = \"{}\"\n", state_file.display());
    let process = Process::start(two_pools(one.addr, api.addr, &extra));
    let body = format!("{{\"address\": \"{}\", \"weight\": 3}}", two.addr);
    let added = call(process.admin, "POST", "/pools/web/servers", &body, None);
    assert_eq!(added.status, 201, "{}", added.text());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let pools: Vec<&String> = saved["pools"].as_object().unwrap().keys().collect();
    assert_eq!(pools, ["web"], "{saved}");
    assert_eq!(saved["pools"]["web"][1]["weight"], 3);

    // A later edit of the settings for the pool nobody changed at runtime still applies.
    std::fs::write(
        &process.config,
        two_pools(one.addr, api2.addr, &extra).to_string(),
    )
    .unwrap();
    let reloaded = call(process.admin, "POST", "/reload", "", None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(
        addresses(&call(process.admin, "GET", "/pools/api", "", None).json()),
        [api2.addr.to_string()]
    );
    assert_eq!(
        addresses(&call(process.admin, "GET", "/pools/web", "", None).json()),
        [one.addr.to_string(), two.addr.to_string()]
    );
    assert_eq!(get(process.addr, "/api/echo").json()["origin"], "api2");

    // A patch is saved too, into the same pool's entry.
    let path = format!("/pools/web/servers/{}", one.addr);
    call(
        process.admin,
        "PATCH",
        &path,
        "{\"state\": \"drain\"}",
        None,
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(saved["pools"]["web"][0]["state"], "drain", "{saved}");
    assert!(saved["pools"].get("api").is_none(), "{saved}");
}
