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
    let proxy = Proxy::from_toml(&one_pool(&addrs, ""));
    let names: Vec<String> = (0..6).map(|_| get(proxy.addr, "/name").text()).collect();
    assert_eq!(names, ["one", "two", "three", "one", "two", "three"]);
}
