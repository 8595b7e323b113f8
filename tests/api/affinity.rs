//! Session persistence: the shopping-basket test in every mode, its control, failover, drain,
//! cookies shared by several gatehouses, and the bounds of the binding table.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::thread;

use crate::helpers::{
    admin_call, one_pool, wait_until, Conn, Process, Proxy, Shop, Shopper, Switchable,
};

const SECRET: &str = "shop-test-secret-0123456789";
const SHOPPERS: usize = 100;
const ITEMS: u32 = 10;

fn shops() -> Vec<Shop> {
    (1..=3).map(|i| Shop::start(&format!("shop{i}"))).collect()
}

fn gatehouse(shops: &[Shop], extra: &str) -> Proxy {
    let addrs: Vec<SocketAddr> = shops.iter().map(|s| s.addr).collect();
    Proxy::from_toml(one_pool(&addrs, extra))
}

fn sticky(mode_lines: &str) -> String {
    format!("[pools.web.sticky]\n{mode_lines}\n")
}

/// Every shopper adds `ITEMS` items, one request each, the shoppers taking turns; then each
/// reads its basket. Returns how many baskets hold every item.
fn whole_baskets(proxy: &Proxy, mut shoppers: Vec<Shopper>) -> usize {
    for item in 0..ITEMS {
        for shopper in &mut shoppers {
            let (status, _) = shopper.add(proxy.addr, item);
            assert_eq!(status, 200);
        }
    }
    let expected: Vec<u32> = (0..ITEMS).collect();
    shoppers
        .iter_mut()
        .map(|shopper| shopper.basket(proxy.addr))
        .filter(|basket| *basket == expected)
        .count()
}

fn shoppers(make: impl Fn(usize) -> Shopper) -> Vec<Shopper> {
    (0..SHOPPERS).map(make).collect()
}

#[test]
fn without_stickiness_baskets_break() {
    let shops = shops();
    let proxy = gatehouse(&shops, "");
    let whole = whole_baskets(&proxy, shoppers(|_| Shopper::new()));
    assert!(
        whole < 10,
        "{whole} of {SHOPPERS} baskets whole: the test could not fail"
    );
}

#[test]
fn the_cookie_mode_keeps_every_basket() {
    let shops = shops();
    let proxy = gatehouse(
        &shops,
        &sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\"")),
    );
    assert_eq!(
        whole_baskets(&proxy, shoppers(|_| Shopper::new())),
        SHOPPERS
    );
}

#[test]
fn the_learn_mode_keeps_every_basket() {
    let shops = shops();
    let proxy = gatehouse(&shops, &sticky("mode = \"learn\"\ncookie_name = \"SID\""));
    assert_eq!(
        whole_baskets(&proxy, shoppers(|_| Shopper::new())),
        SHOPPERS
    );
}

#[test]
fn the_client_ip_mode_keeps_every_basket() {
    let shops = shops();
    let proxy = gatehouse(&shops, &sticky("mode = \"client_ip\""));
    let whole = whole_baskets(
        &proxy,
        shoppers(|i| Shopper {
            source: Some(format!("127.0.0.{}", i + 2).parse().unwrap()),
            ..Shopper::new()
        }),
    );
    assert_eq!(whole, SHOPPERS);
}

#[test]
fn the_header_mode_keeps_every_basket() {
    let shops = shops();
    let proxy = gatehouse(
        &shops,
        &sticky("mode = \"header\"\nheader_name = \"X-Session\""),
    );
    let whole = whole_baskets(
        &proxy,
        shoppers(|i| Shopper {
            header: Some(("X-Session".into(), format!("shopper-{i}"))),
            ..Shopper::new()
        }),
    );
    assert_eq!(whole, SHOPPERS);
}

#[test]
fn sessions_of_a_stopped_server_move_on_without_a_failed_request_and_stay() {
    let mut shops = shops();
    let proxy = gatehouse(
        &shops,
        &sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\"")),
    );
    let mut shoppers = shoppers(|_| Shopper::new());
    let first: Vec<String> = shoppers
        .iter_mut()
        .map(|s| s.add(proxy.addr, 0).1)
        .collect();
    shops[0].close();
    let mut after = Vec::new();
    for item in 1..4 {
        let servers: Vec<String> = shoppers
            .iter_mut()
            .map(|shopper| {
                let (status, server) = shopper.add(proxy.addr, item);
                assert_eq!(status, 200, "a request failed over the stopped server");
                server
            })
            .collect();
        after.push(servers);
    }
    shops[0].open();
    let back: Vec<String> = shoppers
        .iter_mut()
        .map(|s| s.add(proxy.addr, 4).1)
        .collect();
    let mut moved = 0;
    for i in 0..SHOPPERS {
        let settled = &after[0][i];
        assert!(
            after.iter().all(|round| &round[i] == settled),
            "shopper {i} wandered"
        );
        assert_ne!(settled, "shop1");
        assert_eq!(
            &back[i], settled,
            "shopper {i} bounced back to its old server"
        );
        if first[i] == "shop1" {
            moved += 1;
        } else {
            assert_eq!(&first[i], settled, "shopper {i} moved without cause");
        }
    }
    assert!(moved > 0, "no session was on the stopped server");
}

fn drain(proxy: &Proxy, shop: &Shop) {
    let path = format!("/pools/web/servers/{}", shop.addr);
    let response = admin_call(proxy.admin, "PATCH", &path, r#"{"state":"drain"}"#);
    assert_eq!(response.status, 200);
}

#[test]
fn a_draining_server_keeps_its_sessions_but_takes_no_new_ones() {
    let shops = shops();
    let proxy = gatehouse(
        &shops,
        &format!(
            "drain_timeout = \"10m\"\n{}",
            sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\""))
        ),
    );
    let mut old = shoppers(|_| Shopper::new());
    let first: Vec<String> = old.iter_mut().map(|s| s.add(proxy.addr, 0).1).collect();
    drain(&proxy, &shops[0]);
    for (i, shopper) in old.iter_mut().enumerate() {
        assert_eq!(shopper.add(proxy.addr, 1).1, first[i], "shopper {i}");
    }
    let mut new = shoppers(|_| Shopper::new());
    for shopper in &mut new {
        assert_ne!(shopper.add(proxy.addr, 0).1, "shop1");
    }
    assert!(first.iter().any(|s| s == "shop1"));
}

/// A `drain_timeout` of zero has run out as the drain begins. That a longer one keeps the
/// sessions until it runs out is unit-tested in `pool::server`.
#[test]
fn after_drain_timeout_the_sessions_of_a_draining_server_move() {
    let shops = shops();
    let proxy = gatehouse(
        &shops,
        &format!(
            "drain_timeout = \"0s\"\n{}",
            sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\""))
        ),
    );
    let mut shoppers = shoppers(|_| Shopper::new());
    let first: Vec<String> = shoppers
        .iter_mut()
        .map(|s| s.add(proxy.addr, 0).1)
        .collect();
    drain(&proxy, &shops[0]);
    for (i, shopper) in shoppers.iter_mut().enumerate() {
        let now = shopper.add(proxy.addr, 1).1;
        assert_ne!(now, "shop1", "shopper {i}");
        if first[i] != "shop1" {
            assert_eq!(now, first[i], "shopper {i}");
        }
    }
}

/// The `gh_srv` cookie a shopper holds.
fn cookie(shopper: &Shopper) -> String {
    shopper.cookies["gh_srv"].clone()
}

#[test]
fn gatehouse_processes_with_the_same_secret_agree_and_others_ignore_the_cookie() {
    let shops = shops();
    let same = sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\""));
    let a = gatehouse(&shops, &same);
    // The second is another process: nothing is shared but the settings.
    let addrs: Vec<SocketAddr> = shops.iter().map(|s| s.addr).collect();
    let b = Process::start(one_pool(&addrs, &same));
    let other = gatehouse(
        &shops,
        &sticky("mode = \"cookie\"\nsecret = \"another-secret-0123456789\""),
    );
    for _ in 0..10 {
        let mut shopper = Shopper::new();
        let (_, server) = shopper.add(a.addr, 1);
        let value = cookie(&shopper);
        for shop in &shops {
            assert!(!value.contains(&shop.addr.port().to_string()), "{value}");
        }
        assert!(!value.contains("127.0.0.1"), "{value}");
        let issued = shopper.set_cookies.len();
        // The second gatehouse sends the session to the same server, and needs no new cookie.
        for item in 2..5 {
            assert_eq!(shopper.add(b.addr, item).1, server);
        }
        assert_eq!(shopper.basket(b.addr), vec![1, 2, 3, 4]);
        assert_eq!(shopper.set_cookies.len(), issued);
        // A gatehouse with another secret cannot read it: a fresh pick, a fresh cookie.
        shopper.add(other.addr, 5);
        assert_ne!(cookie(&shopper), value);
    }
}

#[test]
fn a_tampered_cookie_is_ignored_and_replaced() {
    let shops = shops();
    let proxy = gatehouse(
        &shops,
        &sticky(&format!("mode = \"cookie\"\nsecret = \"{SECRET}\"")),
    );
    let mut shopper = Shopper::new();
    shopper.add(proxy.addr, 1);
    let value = cookie(&shopper);
    let mut tampered = value.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    shopper.cookies.insert("gh_srv".into(), tampered.clone());
    let response = shopper.request(proxy.addr, "GET", "/basket");
    assert_eq!(response.status, 200);
    let fresh = cookie(&shopper);
    assert_ne!(fresh, tampered, "a new cookie replaces the tampered one");
    let attributes = shopper.set_cookies.last().unwrap();
    assert!(
        attributes.contains("HttpOnly") && attributes.contains("Path=/"),
        "{attributes}"
    );
}

fn sticky_table(proxy: &Proxy) -> serde_json::Value {
    let response = admin_call(proxy.admin, "GET", "/pools/web/sticky", "");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn the_table_stays_within_max_entries_under_a_flood_of_new_clients() {
    let origins: Vec<Switchable> = (0..3)
        .map(|i| Switchable::start(&format!("o{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let extra = sticky("mode = \"header\"\nheader_name = \"X-Client\"\nmax_entries = 500");
    let proxy = Proxy::from_toml(one_pool(&addrs, &extra));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = proxy.addr;
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                for i in 0..5_000 {
                    conn.send(
                        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Client: c{t}-{i}\r\n\r\n")
                            .as_bytes(),
                    );
                    assert_eq!(conn.read(false).status, 200);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let table = sticky_table(&proxy);
    let entries = table["entries"].as_u64().unwrap();
    assert!(entries <= 500, "{table}");
    assert!(entries >= 400, "{table}");
    // Flushing through the admin API empties it.
    let flushed = admin_call(proxy.admin, "DELETE", "/pools/web/sticky", "");
    assert_eq!(flushed.status, 200);
    assert_eq!(sticky_table(&proxy)["entries"], 0);
}

#[test]
fn unused_bindings_expire_after_ttl() {
    let origins: Vec<Switchable> = (0..3)
        .map(|i| Switchable::start(&format!("o{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let extra = sticky("mode = \"header\"\nheader_name = \"X-Client\"\nttl = \"200ms\"");
    let proxy = Proxy::from_toml(one_pool(&addrs, &extra));
    let mut servers = HashSet::new();
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..5 {
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Client: alice\r\n\r\n");
        servers.insert(conn.read(false).text());
    }
    assert_eq!(servers.len(), 1, "bound while in use: {servers:?}");
    assert_eq!(sticky_table(&proxy)["entries"], 1);
    wait_until("the unused binding expires", || {
        sticky_table(&proxy)["entries"] == 0
    });
}
