//! Hiding the servers: headers naming their software are removed, redirects to their
//! addresses point at the client's host, and error pages never name them.

use std::net::SocketAddr;

use crate::helpers::*;

/// The headers `hide_headers` removes by default, as an origin might send them.
const SOFTWARE_HEADERS: [(&str, &str); 5] = [
    ("Server", "Apache/2.4.1 (Unix)"),
    ("X-Powered-By", "PHP/8.1"),
    ("X-AspNet-Version", "4.0.30319"),
    ("X-AspNet-Mvc-Version", "5.2"),
    ("X-Runtime", "0.012"),
];

/// An origin answering every request with the software headers and `X-Custom: kept`.
fn chatty_origin() -> RawOrigin {
    RawOrigin::answering(|_| {
        let mut response = String::from("HTTP/1.1 200 OK\r\n");
        for (name, value) in SOFTWARE_HEADERS {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("X-Custom: kept\r\nContent-Length: 2\r\n\r\nok");
        response.into_bytes()
    })
}

fn proxy_with(origin: SocketAddr, server: &str, security: &str) -> Proxy {
    let toml = one_pool(&[origin], "")
        .extend(&format!("[server]\n{server}"))
        .add("security", security);
    Proxy::from_toml(toml)
}

#[test]
fn every_default_software_header_is_removed() {
    let origin = chatty_origin();
    let proxy = proxy_with(origin.addr, "", "");
    let response = get(proxy.addr, "/");
    assert_eq!(response.status, 200);
    for (name, value) in SOFTWARE_HEADERS {
        assert!(
            !response.all(name).contains(&value),
            "{name} passed: {:?}",
            response.headers
        );
    }
    for name in [
        "X-Powered-By",
        "X-AspNet-Version",
        "X-AspNet-Mvc-Version",
        "X-Runtime",
    ] {
        assert_eq!(response.header(name), None, "{name}");
    }
    assert_eq!(response.all("server"), ["gatehouse"]);
    assert_eq!(response.header("x-custom"), Some("kept"));
}

#[test]
fn pass_headers_keeps_a_hidden_header() {
    let origin = chatty_origin();
    let proxy = proxy_with(origin.addr, "", "pass_headers = [\"x-powered-by\"]");
    let response = get(proxy.addr, "/");
    assert_eq!(response.header("x-powered-by"), Some("PHP/8.1"));
    assert_eq!(response.header("x-runtime"), None);
    assert_eq!(response.header("x-aspnet-version"), None);
}

#[test]
fn hide_headers_replaces_the_default_list() {
    let origin = chatty_origin();
    let proxy = proxy_with(origin.addr, "", "hide_headers = [\"X-Custom\"]");
    let response = get(proxy.addr, "/");
    assert_eq!(response.header("x-custom"), None);
    assert_eq!(response.header("x-powered-by"), Some("PHP/8.1"));
}

#[test]
fn the_server_header_is_gatehouse_s_or_hidden_unless_passed() {
    let origin = chatty_origin();
    // With no server_header of its own, gatehouse sends the server's only if it is passed.
    let proxy = proxy_with(origin.addr, "server_header = \"\"\n", "");
    assert_eq!(get(proxy.addr, "/").header("server"), None);
    let proxy = proxy_with(
        origin.addr,
        "server_header = \"\"\n",
        "pass_headers = [\"Server\"]",
    );
    assert_eq!(get(proxy.addr, "/").all("server"), ["Apache/2.4.1 (Unix)"]);
    // gatehouse's own server_header replaces the server's even when passed.
    let proxy = proxy_with(origin.addr, "", "pass_headers = [\"Server\"]");
    assert_eq!(get(proxy.addr, "/").all("server"), ["gatehouse"]);
}

/// An origin redirecting with URLs that name its own address, another host, and a path.
fn redirecting_origin() -> RawOrigin {
    RawOrigin::answering(|addr| {
        format!(
            "HTTP/1.1 302 Found\r\n\
             Location: http://{addr}/login?next=%2Fcart#top\r\n\
             Content-Location: http://{addr}/doc.html\r\n\
             Refresh: 5; url=http://{addr}/later\r\n\
             Link: <http://{addr}/other>\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    })
}

fn redirect(proxy: &Proxy, host: &str) -> Response {
    raw(
        proxy.addr,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn redirects_to_the_server_point_at_the_client_s_host() {
    let origin = redirecting_origin();
    let proxy = proxy_with(origin.addr, "", "");
    let response = redirect(&proxy, "www.example.com");
    assert_eq!(response.status, 302);
    assert_eq!(
        response.header("location"),
        Some("http://www.example.com/login?next=%2Fcart#top")
    );
    assert_eq!(
        response.header("content-location"),
        Some("http://www.example.com/doc.html")
    );
    assert_eq!(
        response.header("refresh"),
        Some("5; url=http://www.example.com/later")
    );
    // Only the three redirect headers are rewritten.
    assert_eq!(
        response.header("link"),
        Some(format!("<http://{}/other>", origin.addr).as_str())
    );
    let response = redirect(&proxy, "shop.example.com:8080");
    assert_eq!(
        response.header("location"),
        Some("http://shop.example.com:8080/login?next=%2Fcart#top")
    );
}

#[test]
fn redirects_elsewhere_and_relative_ones_are_left_alone() {
    let origin = RawOrigin::answering(|addr| {
        let other = format!("{}:{}", addr.ip(), addr.port().wrapping_add(1));
        format!(
            "HTTP/1.1 301 Moved\r\nLocation: http://{other}/x\r\n\
             Content-Location: /relative\r\nRefresh: 0; url=https://elsewhere.example/\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    });
    let proxy = proxy_with(origin.addr, "", "");
    let response = redirect(&proxy, "www.example.com");
    let other = format!(
        "http://{}:{}/x",
        origin.addr.ip(),
        origin.addr.port().wrapping_add(1)
    );
    assert_eq!(response.header("location"), Some(other.as_str()));
    assert_eq!(response.header("content-location"), Some("/relative"));
    assert_eq!(
        response.header("refresh"),
        Some("0; url=https://elsewhere.example/")
    );
}

#[test]
fn rewrite_redirects_off_leaves_the_server_s_address() {
    let origin = redirecting_origin();
    let proxy = proxy_with(origin.addr, "", "rewrite_redirects = false");
    let response = redirect(&proxy, "www.example.com");
    assert_eq!(
        response.header("location"),
        Some(format!("http://{}/login?next=%2Fcart#top", origin.addr).as_str())
    );
}

/// Whether a response names `server`: its address anywhere, or its port in the body.
fn names(response: &Response, server: SocketAddr) -> bool {
    let address = server.to_string();
    let port = server.port().to_string();
    response.text().contains(&address)
        || response.text().contains(&port)
        || response
            .headers
            .iter()
            .any(|(_, value)| value.contains(&address))
}

#[test]
fn a_502_does_not_name_the_server() {
    let server = DeadServer::new();
    let proxy = Proxy::from_toml(one_pool(
        &[server.addr],
        "[pools.web.retry]\nattempts = 1\n",
    ));
    let response = get(proxy.addr, "/");
    assert_eq!(response.status, 502);
    assert_eq!(response.text(), "502 Bad Gateway\n");
    assert!(!names(&response, server.addr), "{response:?}");
}

#[test]
fn a_504_does_not_name_the_server() {
    let origin = Switchable::start("app");
    origin.set(Mode::Hang);
    let toml = one_pool(
        &[origin.addr],
        "response_timeout = \"300ms\"\n[pools.web.retry]\nattempts = 1\n",
    );
    let proxy = Proxy::from_toml(&toml);
    let response = get(proxy.addr, "/");
    assert_eq!(response.status, 504);
    assert_eq!(response.text(), "504 Gateway Timeout\n");
    assert!(!names(&response, origin.addr), "{response:?}");
    origin.set(Mode::Answer(200));
}

/// An origin failing with an error page that names its address and software, and asks
/// clients to come back in two minutes.
fn leaking_origin() -> RawOrigin {
    RawOrigin::answering(|addr| {
        let page = format!("Traceback: db at {addr} refused (Apache/2.4.1)");
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nRetry-After: 120\r\n\
             Content-Length: {}\r\n\r\n{page}",
            page.len()
        )
        .into_bytes()
    })
}

#[test]
fn intercept_errors_replaces_a_server_s_error_page_with_gatehouse_s() {
    let origin = leaking_origin();
    let passed = proxy_with(origin.addr, "", "");
    let sent = get(passed.addr, "/");
    assert_eq!(sent.status, 500);
    assert!(names(&sent, origin.addr), "off by default: the page passes");

    let intercepting = proxy_with(origin.addr, "", "intercept_errors = [\"500-599\"]");
    let response = get(intercepting.addr, "/");
    assert_eq!(response.status, 500);
    assert_eq!(response.text(), "500 Internal Server Error\n");
    assert!(!names(&response, origin.addr));
    assert_eq!(response.header("retry-after"), Some("120"));
    assert!(response.header("x-request-id").is_some());
    assert_eq!(response.all("server"), ["gatehouse"]);
}

#[test]
fn a_route_s_intercept_errors_replaces_security_s() {
    let origin = leaking_origin();
    let toml = Toml::base()
        .route("path = \"/\"\npool = \"web\"")
        .route("path = \"/raw/\"\npool = \"web\"\nintercept_errors = [\"503\"]")
        .pool("web", &[origin.addr])
        .add("security", "intercept_errors = [\"500-599\"]");
    let proxy = Proxy::from_toml(toml);
    assert_eq!(get(proxy.addr, "/").text(), "500 Internal Server Error\n");
    let raw = get(proxy.addr, "/raw/x");
    assert_eq!(raw.status, 500);
    assert!(names(&raw, origin.addr), "the route passes 500 as sent");
}
