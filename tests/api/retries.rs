//! Retries: a failed try goes to another server, only when it is safe and the budget allows.

use std::net::SocketAddr;
use std::time::Instant;

use crate::helpers::{get, one_pool, raw, DeadServer, Mode, Proxy, Response, Switchable};

/// Passive ejection off, so every request meets the failing server its turn brings.
const NO_EJECTION: &str = "[pools.web.passive]\nenabled = false\n";

fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    raw(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn a_request_that_cannot_connect_is_sent_to_another_server() {
    let good = Switchable::start("good");
    let dead = DeadServer::new();
    let proxy = Proxy::from_toml(one_pool(&[dead.addr, good.addr], NO_EJECTION));
    for _ in 0..6 {
        let response = send(proxy.addr, "POST", "/", "order=1");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), "good");
    }
    // Nothing reached the dead server, so even POST was safe to send again; the body
    // arrived intact each time.
    let requests = good.requests();
    assert_eq!(requests.len(), 6);
    assert!(requests.iter().all(|r| r.body == b"order=1"));
}

#[test]
fn without_retries_the_client_sees_the_failure() {
    let good = Switchable::start("good");
    let extra = format!("{NO_EJECTION}[pools.web.retry]\nattempts = 1\n");
    let dead = DeadServer::new();
    let proxy = Proxy::from_toml(one_pool(&[dead.addr, good.addr], &extra));
    let statuses: Vec<u16> = (0..4).map(|_| get(proxy.addr, "/").status).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn a_listed_status_is_retried_for_idempotent_methods_only() {
    let failing = Switchable::answering("failing", 503);
    let good = Switchable::start("good");
    let extra = format!("{NO_EJECTION}[pools.web.retry]\non = [\"status:503\"]\n");
    let proxy = Proxy::from_toml(one_pool(&[failing.addr, good.addr], &extra));
    for method in ["GET", "PUT", "DELETE"] {
        for _ in 0..2 {
            let response = send(proxy.addr, method, "/", "x");
            assert_eq!(response.status, 200, "{method}");
        }
    }
    // A POST the failing server answered was processed there; it is not sent again.
    let statuses: Vec<u16> = (0..4)
        .map(|_| send(proxy.addr, "POST", "/", "x").status)
        .collect();
    let failed_posts = failing
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert!(failed_posts >= 1);
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        failed_posts,
        "{statuses:?}"
    );
}

#[test]
fn a_status_not_listed_is_passed_on() {
    let failing = Switchable::answering("failing", 503);
    let good = Switchable::start("good");
    // The default conditions do not include statuses.
    let proxy = Proxy::from_toml(one_pool(&[failing.addr, good.addr], NO_EJECTION));
    let statuses: Vec<u16> = (0..4).map(|_| get(proxy.addr, "/").status).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn a_hung_try_times_out_and_the_next_server_answers() {
    let hung = Switchable::start("hung");
    hung.set(Mode::Hang);
    let good = Switchable::start("good");
    // The pool's response timeout is far beyond the test's deadline: only the per-try
    // timeout can have ended the first try.
    let extra = format!(
        "response_timeout = \"300s\"\n{NO_EJECTION}[pools.web.retry]\nper_try_timeout = \"200ms\"\n"
    );
    let proxy = Proxy::from_toml(one_pool(&[hung.addr, good.addr], &extra));
    for _ in 0..2 {
        let response = send(proxy.addr, "PUT", "/item", "kept body");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "good");
    }
    assert!(hung.hits() >= 1);
    assert!(good.requests().iter().all(|r| r.body == b"kept body"));
    hung.set(Mode::Answer(200));
}

#[test]
fn bodies_beyond_the_retry_limit_or_streamed_are_not_sent_twice() {
    let hung = Switchable::start("hung");
    hung.set(Mode::Hang);
    let good = Switchable::start("good");
    let extra = format!(
        "{NO_EJECTION}[pools.web.retry]\nper_try_timeout = \"200ms\"\nretry_body_limit = \"16\"\n"
    );
    let proxy = Proxy::from_toml(one_pool(&[hung.addr, good.addr], &extra));
    let large = || send(proxy.addr, "PUT", "/", "more than sixteen bytes");
    assert_eq!(status_at_the_hung_server(&hung, large), 504);
    let small = || send(proxy.addr, "PUT", "/", "small");
    assert_eq!(status_at_the_hung_server(&hung, small), 200);
    let chunked = || {
        raw(
            proxy.addr,
            "PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        )
    };
    assert_eq!(
        status_at_the_hung_server(&hung, chunked),
        504,
        "a streamed body is never retried"
    );
    hung.set(Mode::Answer(200));
}

/// Sends requests until one meets the hung server first, and returns its status; those the
/// other server took first must have succeeded.
fn status_at_the_hung_server(hung: &Switchable, send: impl Fn() -> Response) -> u16 {
    for _ in 0..4 {
        let before = hung.hits();
        let response = send();
        if hung.hits() > before {
            return response.status;
        }
        assert_eq!(response.status, 200);
    }
    panic!("round robin never reached the hung server");
}

#[test]
fn each_try_goes_to_a_server_not_tried_before() {
    let good = Switchable::start("good");
    // Twelve retries in a moment: beyond the default floor of ten a second.
    let extra = format!("{NO_EJECTION}[pools.web.retry]\nattempts = 3\nbudget_floor = 100\n");
    let dead = [DeadServer::new(), DeadServer::new()];
    let servers = [dead[0].addr, dead[1].addr, good.addr];
    let proxy = Proxy::from_toml(one_pool(&servers, &extra));
    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
    // Two tries are not enough when two servers are dead.
    let extra = format!("{NO_EJECTION}[pools.web.retry]\nattempts = 2\n");
    let proxy = Proxy::from_toml(one_pool(&servers, &extra));
    let statuses: Vec<u16> = (0..6).map(|_| get(proxy.addr, "/").status).collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn the_budget_caps_retries() {
    let failing = Switchable::answering("failing", 503);
    let good = Switchable::start("good");
    let extra = format!(
        "{NO_EJECTION}[pools.web.retry]\non = [\"status:503\"]\nbudget_percent = 0\nbudget_floor = 2\n"
    );
    let proxy = Proxy::from_toml(one_pool(&[failing.addr, good.addr], &extra));
    let started = Instant::now();
    let statuses: Vec<u16> = (0..40).map(|_| get(proxy.addr, "/").status).collect();
    let windows = started.elapsed().as_secs() as usize + 1;
    let first_to_good = 40 - failing.hits();
    let retried = statuses.iter().filter(|&&s| s == 200).count() - first_to_good;
    assert!(retried >= 2, "the floor allows two a second: {statuses:?}");
    assert!(
        retried <= 2 * windows,
        "{retried} retries in {windows} one-second windows: {statuses:?}"
    );
}
