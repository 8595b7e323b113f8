//! Reloading settings while gatehouse runs: SIGHUP and `POST /reload`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Settings for the binary: pool `web` with `web`, and optionally pool `api` on `/api/`.
fn settings_for(web: &[SocketAddr], api: Option<SocketAddr>) -> Toml {
    let toml = one_pool(web, "");
    match api {
        Some(api) => toml
            .route("path = \"/api/\"\npool = \"api\"")
            .pool("api", &[api]),
        None => toml,
    }
}

/// Rewrites the settings file the process runs with.
fn rewrite(process: &Process, toml: &Toml) {
    std::fs::write(&process.config, toml.to_string()).unwrap();
}

fn reload(process: &Process) -> Response {
    admin_reload(process.admin)
}

/// Waits (up to the deadline) until `path` is answered by the origin named `name`.
fn wait_for_origin(addr: SocketAddr, path: &str, name: &str) {
    let started = Instant::now();
    loop {
        let response = get(addr, path);
        if response.status == 200 && response.json()["origin"] == name {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{path} never reached {name}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_applies_new_servers_routes_and_pools() {
    let (one, two, api) = (
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("api"),
    );
    let process = Process::start(settings_for(&[one.addr], None));
    assert_eq!(get(process.addr, "/echo").json()["origin"], "one");
    assert_eq!(get(process.addr, "/api/echo").json()["origin"], "one");

    rewrite(&process, &settings_for(&[two.addr], Some(api.addr)));
    process.signal(libc::SIGHUP);
    // The new routes are published last, after the pools have their new servers.
    wait_for_origin(process.addr, "/api/echo", "api");
    assert_eq!(get(process.addr, "/echo").json()["origin"], "two");
    let hits = one.hits();
    for _ in 0..5 {
        assert_eq!(get(process.addr, "/echo").json()["origin"], "two");
    }
    assert_eq!(one.hits(), hits, "a removed server still got requests");
}

#[test]
fn post_reload_reports_what_changed() {
    let (one, api) = (Origin::start("one"), Origin::start("api"));
    let process = Process::start(settings_for(&[one.addr], None));
    let changed = settings_for(&[one.addr], Some(api.addr)).change("server.workers", 2);
    rewrite(&process, &changed);
    let response = reload(&process);
    assert_eq!(response.status, 200, "{}", response.text());
    let report = response.json();
    assert_eq!(report["pools_added"], serde_json::json!(["api"]));
    assert_eq!(report["pools_removed"], serde_json::json!([]));
    assert_eq!(report["listeners_restarted"], true);
    assert_eq!(report["restart_needed"], serde_json::json!([]));
    assert_eq!(get(process.addr, "/api/echo").json()["origin"], "api");
}

#[test]
fn invalid_settings_at_reload_keep_the_running_ones() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let process = Process::start(settings_for(&[one.addr], None));
    let broken = settings_for(&[two.addr], None).change("log.access", "xml");
    rewrite(&process, &broken);
    let response = reload(&process);
    assert_eq!(response.status, 400);
    let error = response.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("log.access") && error.contains("xml"),
        "{error}"
    );
    for _ in 0..3 {
        assert_eq!(get(process.addr, "/echo").json()["origin"], "one");
    }
    // A SIGHUP with the same bad file changes nothing either, and gatehouse keeps running.
    process.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(get(process.addr, "/echo").json()["origin"], "one");
}

#[test]
fn unchanged_servers_keep_their_counters_across_a_reload() {
    let (one, api) = (Origin::start("one"), Origin::start("api"));
    let process = Process::start(settings_for(&[one.addr], None));
    for _ in 0..4 {
        assert_eq!(get(process.addr, "/name").status, 200);
    }
    rewrite(&process, &settings_for(&[one.addr], Some(api.addr)));
    assert_eq!(reload(&process).status, 200);
    let pools = raw(
        process.admin,
        "GET /pools/web HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(pools.json()["servers"][0]["requests"], 4);
}

#[test]
fn reloads_under_load_fail_no_request() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let process = Process::start(settings_for(&[one.addr], None));
    let load = Load::start(process.addr, 4);
    let layouts = [vec![one.addr, two.addr], vec![two.addr], vec![one.addr]];
    for layout in layouts.iter().cycle().take(6) {
        rewrite(&process, &settings_for(layout, None));
        assert_eq!(reload(&process).status, 200);
        load.wait_for(100);
    }
    assert_eq!(load.stop(), 0);
    assert!(one.hits() > 0 && two.hits() > 0);
}

#[test]
fn listener_changes_restart_the_listeners_without_refusing_a_request() {
    let origin = Origin::start("one");
    let process = Process::start(settings_for(&[origin.addr], None));
    // Keep the address the first listener got, so the new settings name it explicitly.
    let pinned =
        settings_for(&[origin.addr], None).change("server.listen", vec![process.addr.to_string()]);
    rewrite(&process, &pinned);
    assert_eq!(reload(&process).status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, failures) = (process.addr, stop.clone(), failures.clone());
            thread::spawn(move || {
                // Bounded: at most 3,000 fresh connections per client.
                for _ in 0..3_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut conn = Conn::open(addr);
                    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                    if !matches!(conn.try_read(false), Ok(r) if r.status == 200) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for workers in [2, 1, 2] {
        rewrite(&process, &pinned.clone().change("server.workers", workers));
        let response = reload(&process);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["listeners_restarted"], true);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[test]
fn a_listener_that_cannot_bind_keeps_everything_as_it_was() {
    let (one, two) = (Origin::start("one"), Origin::start("two"));
    let process = Process::start(settings_for(&[one.addr], None));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = vec![
        "127.0.0.1:0".to_string(),
        taken.local_addr().unwrap().to_string(),
    ];
    let changed = settings_for(&[two.addr], None).change("server.listen", listen);
    rewrite(&process, &changed);
    let response = reload(&process);
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(response.json()["error"]
        .as_str()
        .unwrap()
        .contains("kept the running listeners"));
    assert_eq!(get(process.addr, "/echo").json()["origin"], "one");
}
