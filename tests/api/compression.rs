//! Response compression: each coding round-trips to the origin's bytes, negotiation follows
//! the client's q-values, and the never-compress rules hold.

use std::io::Read;
use std::net::SocketAddr;

use actix_web::{web, HttpResponse};
use bytes::Bytes;

use crate::helpers::{
    one_pool, raw, spawn, Chunked, Conn, Process, Proxy, RawOrigin, Response, Serve, Spawned,
    DEADLINE,
};

/// An HTML page of a few KiB, as the origin sends it.
fn page() -> String {
    (0..200)
        .map(|i| format!("<li class=\"row\">item {i}: the quick brown fox</li>\n"))
        .collect()
}

/// An origin answering every request with `head` (status line and headers) and the page.
fn page_origin(head: &str) -> (RawOrigin, String) {
    let body = page();
    let response = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    let response: &'static [u8] = Box::leak(response.into_bytes().into_boxed_slice());
    (RawOrigin::start(response), body)
}

const HTML: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nETag: \"v1\"\r\n";

fn compressing(origin: SocketAddr, extra: &str) -> Proxy {
    let toml = one_pool(&[origin], "").add("compression", &format!("enabled = true\n{extra}"));
    Proxy::from_toml(toml)
}

fn get(proxy: &Proxy, accept: Option<&str>) -> Response {
    get_with(proxy, "GET", accept)
}

fn get_with(proxy: &Proxy, method: &str, accept: Option<&str>) -> Response {
    let accept = accept
        .map(|a| format!("Accept-Encoding: {a}\r\n"))
        .unwrap_or_default();
    raw(
        proxy.addr,
        &format!("{method} / HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n"),
    )
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

#[test]
fn each_coding_round_trips_to_the_origins_bytes() {
    let (origin, body) = page_origin(HTML);
    let proxy = compressing(origin.addr, "");
    for coding in ["gzip", "br", "zstd"] {
        let response = get(&proxy, Some(coding));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-encoding"), Some(coding));
        assert_eq!(response.header("content-length"), None);
        assert_eq!(response.header("etag"), Some("W/\"v1\""));
        assert_eq!(response.header("vary"), Some("Accept-Encoding"));
        assert!(response.body.len() < body.len() / 3, "{coding}");
        assert_eq!(decode(coding, &response.body), body.as_bytes(), "{coding}");
    }
}

#[test]
fn the_servers_order_and_the_clients_q_values_decide() {
    let (origin, _) = page_origin(HTML);
    let proxy = compressing(origin.addr, "algorithms = [\"br\", \"gzip\"]\n");
    let coding = |accept: &str| {
        get(&proxy, Some(accept))
            .header("content-encoding")
            .map(String::from)
    };
    assert_eq!(coding("gzip, br, zstd").as_deref(), Some("br"));
    assert_eq!(coding("gzip, br;q=0").as_deref(), Some("gzip"));
    assert_eq!(coding("zstd").as_deref(), None);
    assert_eq!(coding("*;q=0").as_deref(), None);
    let plain = get(&proxy, None);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("etag"), Some("\"v1\""));
    assert_eq!(plain.text(), page());
}

#[test]
fn responses_that_must_not_be_compressed_are_passed_as_they_are() {
    let cases = [
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: identity\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=60, no-transform\r\n",
        "HTTP/1.1 206 Partial Content\r\nContent-Type: text/html\r\nContent-Range: bytes 0-9/99999\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n",
        "HTTP/1.1 200 OK\r\n",
    ];
    for head in cases {
        let (origin, body) = page_origin(head);
        let proxy = compressing(origin.addr, "");
        let response = get(&proxy, Some("gzip"));
        assert_eq!(
            response
                .header("content-encoding")
                .filter(|c| *c != "identity"),
            None,
            "{head}"
        );
        assert_eq!(response.text(), body, "{head}");
    }
    // Below min_bytes: plain, but it still varies by Accept-Encoding.
    let (origin, body) = page_origin(HTML);
    let proxy = compressing(origin.addr, "min_bytes = \"1MiB\"\n");
    let small = get(&proxy, Some("gzip"));
    assert_eq!(small.header("content-encoding"), None);
    assert_eq!(small.header("vary"), Some("Accept-Encoding"));
    assert_eq!(small.text(), body);
    // HEAD: no body to compress, and the length stays.
    let (origin, body) = page_origin(HTML);
    let proxy = compressing(origin.addr, "");
    let head = get_with(&proxy, "HEAD", Some("gzip"));
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(
        head.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[test]
fn compression_is_off_unless_enabled_and_a_route_can_turn_it_off() {
    let (origin, body) = page_origin(HTML);
    let proxy = Proxy::from_toml(one_pool(&[origin.addr], ""));
    let response = get(&proxy, Some("gzip"));
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(response.header("vary"), None);
    assert_eq!(response.text(), body);
    let toml = one_pool(&[origin.addr], "")
        .add("compression", "enabled = true")
        .add("routes.0.compression", "enabled = false");
    let proxy = Proxy::from_toml(&toml);
    assert_eq!(get(&proxy, Some("gzip")).header("content-encoding"), None);
}

/// An origin streaming `/big/N`: N bytes of text, chunked, 64 KiB at a time.
fn streaming_origin() -> Spawned {
    spawn(Serve::app(|config| {
        config.route(
            "/big/{n}",
            web::get().to(|n: web::Path<u64>| async move {
                let total = n.into_inner();
                let line = Bytes::from(
                    "0123456789 the same line again and again, compressible\n".repeat(1170),
                );
                let stream = futures_util::stream::unfold(0u64, move |sent| {
                    let line = line.clone();
                    async move {
                        if sent >= total {
                            return None;
                        }
                        let n = (total - sent).min(line.len() as u64);
                        Some((Ok::<_, std::io::Error>(line.slice(..n as usize)), sent + n))
                    }
                });
                HttpResponse::Ok()
                    .content_type("text/plain")
                    .streaming(stream)
            }),
        );
    }))
}

#[test]
fn a_large_body_streams_through_the_encoder_with_flat_memory() {
    let origin = streaming_origin();
    let toml = one_pool(&[origin.addr], "").add(
        "compression",
        "enabled = true\nalgorithms = [\"gzip\"]\nlevels = { gzip = 1 }",
    );
    let process = Process::start(toml);
    let before = process.rss_kib();
    const TOTAL: u64 = 256 * 1024 * 1024;
    let mut conn = Conn::open(process.addr);
    conn.stream().set_read_timeout(Some(DEADLINE * 6)).unwrap();
    conn.send(
        format!(
            "GET /big/{TOTAL} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    // Read the head, then decode the gzip stream out of the chunked body as it comes,
    // counting bytes; the proxy's memory is sampled along the way.
    let head = conn.read(true);
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{head:?}");
    assert_eq!(
        head.header("transfer-encoding"),
        Some("chunked"),
        "{head:?}"
    );
    let chunked = Chunked::new(conn.reader());
    let mut decoder = flate2::read::GzDecoder::new(chunked);
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut peak) = (0u64, before);
    loop {
        let n = decoder.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if total % (32 << 20) < n as u64 {
            peak = peak.max(process.rss_kib());
        }
    }
    assert_eq!(total, TOTAL);
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 32 * 1024,
        "gatehouse grew by {grew} KiB streaming 256 MiB"
    );
}
