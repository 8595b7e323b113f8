//! The access log on the binary's stdout: JSON lines, NGINX combined lines, or nothing.

use std::net::SocketAddr;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::helpers::*;

const HOST: &str = "app.test";

/// Routes only `app.test`: `/down/` to a dead server, everything else to the origin.
fn logging_settings(format: &str, origin: SocketAddr, down: SocketAddr) -> Toml {
    Toml::base()
        .change("log.access", format)
        .route(&format!("host = \"{HOST}\"\npool = \"web\""))
        .route(&format!(
            "host = \"{HOST}\"\npath = \"/down/\"\npool = \"down\""
        ))
        .pool("web", &[origin])
        .pool("down", &[down])
}

/// One request on a fresh connection, `extra` header lines each ending in \r\n.
fn request(addr: SocketAddr, method: &str, target: &str, host: &str, extra: &str) -> Response {
    let body = if method == "POST" { "hello" } else { "" };
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    raw(
        addr,
        &format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}{length}Connection: close\r\n\r\n{body}"
        ),
    )
}

fn request_id(response: &Response) -> String {
    response
        .header("x-request-id")
        .expect("every response carries X-Request-Id")
        .to_string()
}

/// The requests both formats are checked with, and what each got back.
struct Traffic {
    before: DateTime<Utc>,
    after: DateTime<Utc>,
    /// Query string, User-Agent and Referer.
    query: Response,
    chunked: Response,
    sized: Response,
    post: Response,
    /// No route for the host: gatehouse answers 404 itself.
    no_route: Response,
    /// The pool's only server refuses connections: 502.
    down: Response,
    /// The origin waits 50ms before its response head.
    slow: Response,
    /// Carries its own request id.
    client_id: Response,
}

const QUERY_TARGET: &str = "/echo?a=1&b=two%20words";
const USER_AGENT: &str = "probe/1.0 (test)";
const REFERER: &str = "http://referrer.test/page?x=1";
const CLIENT_ID: &str = "client-chosen-id-42";

fn send_traffic(addr: SocketAddr) -> Traffic {
    let before = Utc::now();
    let query = request(
        addr,
        "GET",
        QUERY_TARGET,
        HOST,
        &format!("User-Agent: {USER_AGENT}\r\nReferer: {REFERER}\r\n"),
    );
    let chunked = request(addr, "GET", "/bytes/1000", HOST, "");
    let sized = request(addr, "GET", "/bytes/2000?sized=1", HOST, "");
    let post = request(addr, "POST", "/echo/posted", HOST, "");
    let no_route = request(addr, "GET", "/nowhere", "other.test", "");
    let down = request(addr, "GET", "/down/x", HOST, "");
    let slow = request(addr, "GET", "/sleep/50", HOST, "");
    let client_id = request(
        addr,
        "GET",
        "/name",
        HOST,
        &format!("X-Request-Id: {CLIENT_ID}\r\n"),
    );
    let after = Utc::now();
    assert_eq!(query.status, 200, "{}", query.text());
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.body.len(), 1000);
    assert_eq!(sized.body.len(), 2000);
    assert_eq!(post.status, 200);
    assert_eq!(no_route.status, 404);
    assert_eq!(down.status, 502);
    assert_eq!(slow.text(), "slept");
    assert_eq!(request_id(&client_id), CLIENT_ID);
    Traffic {
        before,
        after,
        query,
        chunked,
        sized,
        post,
        no_route,
        down,
        slow,
        client_id,
    }
}

const REQUESTS: usize = 8;

/// The line whose `request_id` is the one the response carried.
fn json_line<'a>(lines: &'a [Value], response: &Response) -> &'a Value {
    let id = request_id(response);
    let found: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "one line for request {id} in {lines:#?}");
    found[0]
}

fn assert_time_within(time: DateTime<Utc>, traffic: &Traffic) {
    // Loose bounds: the clock may be stepped, but a wrong zone or epoch is far outside.
    let slack = TimeDelta::seconds(2);
    assert!(
        time >= traffic.before - slack && time <= traffic.after + slack,
        "logged time {time} outside {}..{}",
        traffic.before,
        traffic.after
    );
}

fn ms(line: &Value, field: &str) -> f64 {
    line[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {line}"))
}

#[test]
fn json_access_log_has_every_field_with_the_values_of_the_exchange() {
    let origin = Origin::start("app");
    let down = DeadServer::new();
    let proxy = Process::start(logging_settings("json", origin.addr, down.addr));
    let traffic = send_traffic(proxy.addr);
    let raw_lines = proxy.stdout_lines(REQUESTS);
    assert_eq!(raw_lines.len(), REQUESTS, "{raw_lines:#?}");
    let lines: Vec<Value> = raw_lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not one JSON object ({err}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect();
    let fields = [
        "time",
        "client",
        "method",
        "path",
        "protocol",
        "status",
        "bytes_sent",
        "duration_ms",
        "route",
        "pool",
        "upstream",
        "upstream_status",
        "upstream_time_ms",
        "request_id",
        "user_agent",
        "referer",
    ];
    for line in &lines {
        for field in fields {
            assert!(line.get(field).is_some(), "{field} missing from {line}");
        }
        let time = line["time"].as_str().unwrap();
        let time = DateTime::parse_from_rfc3339(time)
            .unwrap_or_else(|err| panic!("time {time:?} is not RFC 3339: {err}"));
        assert_time_within(time.with_timezone(&Utc), &traffic);
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert!(ms(line, "duration_ms") >= 0.0, "{line}");
    }

    let origin_addr = origin.addr.to_string();
    let query = json_line(&lines, &traffic.query);
    assert_eq!(query["method"], "GET");
    assert_eq!(query["path"], QUERY_TARGET);
    assert_eq!(query["status"], 200);
    assert_eq!(query["bytes_sent"], traffic.query.body.len());
    assert_eq!(query["route"], format!("{HOST}/"));
    assert_eq!(query["pool"], "web");
    assert_eq!(query["upstream"], origin_addr.as_str());
    assert_eq!(query["upstream_status"], 200);
    assert_eq!(query["user_agent"], USER_AGENT);
    assert_eq!(query["referer"], REFERER);
    assert!(ms(query, "upstream_time_ms") >= 0.0);
    assert!(
        ms(query, "upstream_time_ms") <= ms(query, "duration_ms"),
        "{query}"
    );

    let chunked = json_line(&lines, &traffic.chunked);
    assert_eq!(chunked["path"], "/bytes/1000");
    assert_eq!(chunked["bytes_sent"], 1000);
    assert!(chunked["user_agent"].is_null() && chunked["referer"].is_null());

    let sized = json_line(&lines, &traffic.sized);
    assert_eq!(sized["bytes_sent"], 2000);

    let post = json_line(&lines, &traffic.post);
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/echo/posted");
    assert_eq!(post["bytes_sent"], traffic.post.body.len());

    let no_route = json_line(&lines, &traffic.no_route);
    assert_eq!(no_route["status"], 404);
    assert_eq!(no_route["path"], "/nowhere");
    assert_eq!(no_route["bytes_sent"], traffic.no_route.body.len());
    assert!(!traffic.no_route.body.is_empty());
    for field in [
        "route",
        "pool",
        "upstream",
        "upstream_status",
        "upstream_time_ms",
    ] {
        assert!(no_route[field].is_null(), "{field} of a 404: {no_route}");
    }

    let failed = json_line(&lines, &traffic.down);
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["bytes_sent"], traffic.down.body.len());
    assert_eq!(failed["route"], format!("{HOST}/down/"));
    assert_eq!(failed["pool"], "down");
    assert_eq!(failed["upstream"], down.addr.to_string());
    assert!(failed["upstream_status"].is_null(), "{failed}");
    assert!(failed["upstream_time_ms"].is_null(), "{failed}");

    // The origin waits 50ms after the request reached it, so at least that long passed
    // between sending the request and receiving the response head.
    let slow = json_line(&lines, &traffic.slow);
    assert!(ms(slow, "upstream_time_ms") >= 50.0, "{slow}");
    assert!(
        ms(slow, "duration_ms") >= ms(slow, "upstream_time_ms"),
        "{slow}"
    );

    let client_id = json_line(&lines, &traffic.client_id);
    assert_eq!(client_id["request_id"], CLIENT_ID);
    assert_eq!(client_id["bytes_sent"], "app".len());
}

/// A combined line's fields, parsed by its quotes and brackets.
#[derive(Debug)]
struct Combined {
    client: String,
    time: String,
    request: String,
    status: u16,
    bytes: u64,
    referer: String,
    agent: String,
}

fn parse_combined(line: &str) -> Combined {
    let parts = || -> Option<Combined> {
        let (client, rest) = line.split_once(" - - [")?;
        let (time, rest) = rest.split_once("] \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let (numbers, rest) = rest.split_once(" \"")?;
        let (status, bytes) = numbers.split_once(' ')?;
        let (referer, agent) = rest.strip_suffix('"')?.split_once("\" \"")?;
        Some(Combined {
            client: client.to_string(),
            time: time.to_string(),
            request: request.to_string(),
            status: status.parse().ok()?,
            bytes: bytes.parse().ok()?,
            referer: referer.to_string(),
            agent: agent.to_string(),
        })
    };
    let parsed = parts().unwrap_or_else(|| panic!("not a combined line: {line:?}"));
    assert!(
        [&parsed.request, &parsed.referer, &parsed.agent]
            .iter()
            .all(|field| !field.contains('"')),
        "unescaped quote in {line:?}"
    );
    parsed
}

/// The one line for a request target.
fn combined_line<'a>(lines: &'a [Combined], method: &str, target: &str) -> &'a Combined {
    let request = format!("{method} {target} HTTP/1.1");
    let found: Vec<&Combined> = lines.iter().filter(|l| l.request == request).collect();
    assert_eq!(found.len(), 1, "one line for {request:?} in {lines:#?}");
    found[0]
}

#[test]
fn combined_access_log_matches_the_nginx_format() {
    let origin = Origin::start("app");
    let down = DeadServer::new();
    let proxy = Process::start(logging_settings("combined", origin.addr, down.addr));
    let traffic = send_traffic(proxy.addr);
    let quoted = request(
        proxy.addr,
        "GET",
        "/name?q=%22x%22",
        HOST,
        "User-Agent: sneaky \"agent\" \\ 1\r\n",
    );
    assert_eq!(quoted.status, 200);
    let raw_lines = proxy.stdout_lines(REQUESTS + 1);
    assert_eq!(raw_lines.len(), REQUESTS + 1, "{raw_lines:#?}");
    let lines: Vec<Combined> = raw_lines.iter().map(|l| parse_combined(l)).collect();

    for line in &lines {
        assert_eq!(line.client, "127.0.0.1");
        let time = DateTime::parse_from_str(&line.time, "%d/%b/%Y:%H:%M:%S %z")
            .unwrap_or_else(|err| panic!("time {:?}: {err}", line.time));
        assert_time_within(time.with_timezone(&Utc), &traffic);
    }

    let query = combined_line(&lines, "GET", QUERY_TARGET);
    assert_eq!(query.status, 200);
    assert_eq!(query.bytes, traffic.query.body.len() as u64);
    assert_eq!(query.referer, REFERER);
    assert_eq!(query.agent, USER_AGENT);

    let chunked = combined_line(&lines, "GET", "/bytes/1000");
    assert_eq!((chunked.status, chunked.bytes), (200, 1000));
    assert_eq!(
        (chunked.referer.as_str(), chunked.agent.as_str()),
        ("-", "-")
    );
    assert_eq!(traffic.chunked.body.len(), 1000);

    let sized = combined_line(&lines, "GET", "/bytes/2000?sized=1");
    assert_eq!((sized.status, sized.bytes), (200, 2000));

    let post = combined_line(&lines, "POST", "/echo/posted");
    assert_eq!(post.bytes, traffic.post.body.len() as u64);

    let no_route = combined_line(&lines, "GET", "/nowhere");
    assert_eq!(no_route.status, 404);
    assert_eq!(no_route.bytes, traffic.no_route.body.len() as u64);

    let failed = combined_line(&lines, "GET", "/down/x");
    assert_eq!(failed.status, 502);
    assert_eq!(failed.bytes, traffic.down.body.len() as u64);

    let slow = combined_line(&lines, "GET", "/sleep/50");
    assert_eq!(slow.bytes, traffic.slow.body.len() as u64);
    let named = combined_line(&lines, "GET", "/name");
    assert_eq!(named.bytes, traffic.client_id.body.len() as u64);

    // Quotes and backslashes are escaped, so a client cannot add or shift fields.
    let sneaky = combined_line(&lines, "GET", "/name?q=%22x%22");
    assert_eq!(sneaky.agent, "sneaky \\x22agent\\x22 \\x5C 1");
    assert_eq!(sneaky.status, 200);
}

/// Runs the binary with `toml`, calls `traffic` with its address, stops it with SIGTERM,
/// and returns everything it wrote to stdout until it exited.
fn stdout_until_exit(toml: Toml, traffic: impl FnOnce(SocketAddr)) -> String {
    let process = Process::start(toml);
    traffic(process.addr);
    let mut text = process.stdout_until_exit().join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

#[test]
fn access_log_off_writes_nothing_to_stdout() {
    let origin = Origin::start("app");
    let down = DeadServer::new();
    for (format, expected_lines) in [("off", 0), ("combined", REQUESTS)] {
        let stdout = stdout_until_exit(logging_settings(format, origin.addr, down.addr), |addr| {
            send_traffic(addr);
        });
        assert_eq!(
            stdout.lines().count(),
            expected_lines,
            "access = {format:?} wrote: {stdout:?}"
        );
    }
}

#[test]
fn json_access_log_escapes_hostile_header_values() {
    let origin = Origin::start("app");
    let down = DeadServer::new();
    let proxy = Process::start(logging_settings("json", origin.addr, down.addr));
    let agent = "tab\there \"quoted\" \\ ok";
    let response = request(
        proxy.addr,
        "GET",
        "/name",
        HOST,
        &format!("User-Agent: {agent}\r\n"),
    );
    assert_eq!(response.status, 200);
    let lines = proxy.stdout_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["user_agent"], agent);
    assert_eq!(line["request_id"], request_id(&response));
}

#[test]
fn heads_refused_before_routing_are_logged_with_their_status() {
    let origin = Origin::start("app");
    let down = DeadServer::new();
    let proxy = Process::start(logging_settings("combined", origin.addr, down.addr));
    // A space before the colon: refused by the HTTP parser, before any route is looked at.
    let malformed = raw(
        proxy.addr,
        "GET /name HTTP/1.1\r\nHost: app.test\r\nBad Header : x\r\n\r\n",
    );
    assert_eq!(malformed.status, 400);
    let lines = proxy.stdout_lines(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse_combined(&lines[0]);
    assert_eq!(line.client, "127.0.0.1");
    assert_eq!(line.request, "-");
    assert_eq!(line.status, 400);
    assert_eq!(origin.hits(), 0);
}
