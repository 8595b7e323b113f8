//! Forwarding: routing, balancing and the request and response as they cross gatehouse.

use crate::helpers::*;

#[test]
fn requests_are_balanced_round_robin_across_the_pool() {
    let origins = [
        Origin::start("one"),
        Origin::start("two"),
        Origin::start("three"),
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let proxy = Proxy::from_toml(one_pool(&addrs, ""));
    let names: Vec<String> = (0..6).map(|_| get(proxy.addr, "/name").text()).collect();
    assert_eq!(names, ["one", "two", "three", "one", "two", "three"]);
}

#[test]
fn weights_set_each_servers_share() {
    let (light, heavy) = (Origin::start("light"), Origin::start("heavy"));
    let toml = Toml::base().route("pool = \"web\"").extend(&format!(
        "[pools.web]\nservers = [{{ address = \"{}\" }}, {{ address = \"{}\", weight = 3 }}]",
        light.addr, heavy.addr
    ));
    let proxy = Proxy::from_toml(toml);
    let names: Vec<String> = (0..8).map(|_| get(proxy.addr, "/name").text()).collect();
    assert_eq!(names.iter().filter(|n| *n == "heavy").count(), 6);
    assert_eq!(names.iter().filter(|n| *n == "light").count(), 2);
}

#[test]
fn routes_match_host_then_longest_path_prefix() {
    let [web, api, shop, wild] = ["web", "api", "shop", "wild"].map(Origin::start);
    let toml = Toml::base()
        .route("pool = \"web\"")
        .route("path = \"/api/\"\npool = \"api\"")
        .route("host = \"shop.example.com\"\npool = \"shop\"")
        .route("host = \"*.example.com\"\npool = \"wild\"")
        .pool("web", &[web.addr])
        .pool("api", &[api.addr])
        .pool("shop", &[shop.addr])
        .pool("wild", &[wild.addr]);
    let proxy = Proxy::from_toml(toml);
    let origin_for = |host: &str, path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        raw(proxy.addr, &request).json()["origin"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(origin_for("other.org", "/echo"), "web");
    assert_eq!(origin_for("other.org", "/api/echo"), "api");
    assert_eq!(origin_for("SHOP.Example.com:8080", "/echo"), "shop");
    assert_eq!(origin_for("www.example.com", "/echo"), "wild");
}

#[test]
fn no_matching_route_gets_404_from_gatehouse() {
    let origin = Origin::start("app");
    let toml = Toml::base()
        .route("host = \"app.example.com\"\npath = \"/app/\"\npool = \"web\"")
        .pool("web", &[origin.addr]);
    let proxy = Proxy::from_toml(toml);
    let response = raw(
        proxy.addr,
        "GET /other HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 404);
    assert_eq!(response.header("server"), Some("gatehouse"));
    assert_eq!(origin.hits(), 0);
}

#[test]
fn every_method_and_body_framing_reaches_the_origin() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let request = format!(
            "{method} /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let echo = Echo(raw(proxy.addr, &request).json());
        assert_eq!(echo.0["method"], method);
        assert_eq!(echo.0["body"], "hello");
        assert_eq!(echo.header("content-length").as_deref(), Some("5"));
        assert_eq!(echo.header("transfer-encoding"), None);
    }
    let chunked =
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                   5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let echo = Echo(raw(proxy.addr, chunked).json());
    assert_eq!(echo.0["body"], "hello world");
    assert_eq!(echo.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(echo.header("content-length"), None);
}

#[test]
fn a_bodiless_request_is_forwarded_without_framing_headers() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let (_, echo) = echo(proxy.addr, "");
    assert_eq!(echo.header("content-length"), None);
    assert_eq!(echo.header("transfer-encoding"), None);
}

#[test]
fn responses_keep_their_framing() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let sized = get(proxy.addr, "/bytes/100000?sized=1");
    assert_eq!(sized.header("content-length"), Some("100000"));
    assert_eq!(sized.body.len(), 100_000);
    let chunked = get(proxy.addr, "/bytes/100000");
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.body.len(), 100_000);
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let mut conn = Conn::open(proxy.addr);
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = conn.read(false);
    assert_eq!(interim.status, 100);
    conn.send(b"hello");
    let response = conn.read(false);
    assert_eq!(response.status, 200);
    let echo = Echo(response.json());
    assert_eq!(echo.0["body"], "hello");
    assert_eq!(echo.header("expect"), None);
}

#[test]
fn head_204_and_304_have_no_body_and_keep_the_connection_usable() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let mut conn = Conn::open(proxy.addr);
    conn.send(b"HEAD /bytes/5000?sized=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = conn.read(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5000"));
    for status in [204, 304] {
        conn.send(format!("GET /status/{status} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let response = conn.read(false);
        assert_eq!(response.status, status);
        assert_eq!(response.header("transfer-encoding"), None);
    }
    // Had any of them carried a body, this response would be misread.
    conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(conn.read(false).text(), "app");
}

#[test]
fn the_request_target_is_forwarded_byte_for_byte() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let target = "/echo/a%2Fb/%7Euser/./x/../y?q=%20a+b&empty=&dup=1&dup=2";
    let response = raw(
        proxy.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(response.json()["target"], target);
}

#[test]
fn repeated_headers_are_preserved_both_ways() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let (_, echo) = echo(
        proxy.addr,
        "Cookie: a=1\r\nCookie: b=2\r\nAccept: text/html\r\n",
    );
    assert_eq!(echo.headers("cookie"), ["a=1", "b=2"]);
    let response = get(proxy.addr, "/cookies");
    assert_eq!(response.all("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
}

#[test]
fn encoded_responses_pass_through_undecoded() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = raw(
        proxy.addr,
        "GET /gzip HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(response.body, GZIP_HELLO);
    let (_, echo) = echo(proxy.addr, "Accept-Encoding: identity\r\n");
    assert_eq!(echo.headers("accept-encoding"), ["identity"]);
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let (_, echo) = echo(
        proxy.addr,
        "Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-End-To-End: kept\r\n",
    );
    for name in [
        "x-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert_eq!(echo.header(name), None, "{name} was forwarded");
    }
    assert_eq!(echo.header("x-end-to-end").as_deref(), Some("kept"));
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let origin = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Private\r\nX-Private: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
          X-End-To-End: kept\r\nServer: origin-software/1.2\r\n\r\nok",
    );
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = get(proxy.addr, "/");
    assert_eq!(response.text(), "ok");
    for name in [
        "x-private",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(response.header(name), None, "{name} was returned");
    }
    assert_eq!(response.header("x-end-to-end"), Some("kept"));
    assert_eq!(response.header("server"), Some("gatehouse"));
}

#[test]
fn forwarding_headers_are_added() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let (response, echo) = echo(
        proxy.addr,
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n",
    );
    assert_eq!(echo.headers("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(echo.headers("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.headers("x-forwarded-host"), ["test.local"]);
    assert_eq!(echo.headers("via"), ["1.1 gatehouse"]);
    assert_eq!(echo.headers("host"), ["test.local"]);
    let id = echo.header("x-request-id").expect("a request id is added");
    assert_eq!(id.len(), 32);
    assert_eq!(response.header("x-request-id"), Some(id.as_str()));
}

#[test]
fn a_clients_request_id_is_kept_and_returned() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let (response, echo) = echo(proxy.addr, "X-Request-Id: trace-abc-123\r\n");
    assert_eq!(echo.headers("x-request-id"), ["trace-abc-123"]);
    assert_eq!(response.header("x-request-id"), Some("trace-abc-123"));
}

#[test]
fn a_pool_can_replace_the_host_header() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], "host_header = \"internal.app\"\n"));
    let (_, echo) = echo(proxy.addr, "");
    assert_eq!(echo.headers("host"), ["internal.app"]);
    assert_eq!(echo.headers("x-forwarded-host"), ["test.local"]);
}

#[test]
fn the_server_header_is_configurable() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("server.server_header", "edge");
    let proxy = Proxy::from_toml(&toml);
    assert_eq!(get(proxy.addr, "/name").header("server"), Some("edge"));
    let proxy = Proxy::from_toml(toml.change("server.server_header", ""));
    assert_eq!(get(proxy.addr, "/name").header("server"), None);
}

#[test]
fn keep_alive_connections_carry_many_requests() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..20 {
        conn.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(conn.read(false).text(), "app");
    }
    assert_eq!(origin.hits(), 20);
}

#[test]
fn redirects_are_returned_to_the_client_not_followed() {
    let origin = RawOrigin::start(
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    );
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = get(proxy.addr, "/old");
    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some("/elsewhere"));
    assert_eq!(origin.heads().len(), 1);
}

#[test]
fn an_empty_body_keeps_its_content_length() {
    let origin = Origin::start("app");
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = raw(
        proxy.addr,
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let echo = Echo(response.json());
    assert_eq!(echo.header("content-length").as_deref(), Some("0"));
    assert_eq!(echo.0["body_len"], 0);
}

#[test]
fn a_malformed_host_gets_400_and_reaches_no_server() {
    let origin = Origin::start("app");
    let toml = one_pool(&[origin.addr], "").set("routes.0.host", "*.example.com");
    let proxy = Proxy::from_toml(toml);
    for host in [
        "evil.com, www.example.com",
        "evil.com/x?www.example.com",
        "evil.com@www.example.com",
    ] {
        let response = raw(
            proxy.addr,
            &format!("GET /name HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(response.status, 400, "{host}");
    }
    assert_eq!(origin.hits(), 0);
    let fine = raw(
        proxy.addr,
        "GET /name HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(fine.text(), "app");
}
