//! Who may connect: the allow and deny lists of `[security]` and routes, and the addresses
//! the operator blocks at runtime through the admin API.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::settings::Cidr;

/// An allow list and a deny list. The most specific entry that contains the address decides
/// (a `/32` beats a `/8`), a deny winning a tie; an address no entry contains is allowed only
/// if the allow list is empty. So `allow = ["10.0.0.0/8"]` admits that network alone, and
/// `deny = ["10.0.0.0/8"], allow = ["10.1.2.3"]` refuses the network but one host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessList {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessList {
    pub fn new(allow: &[Cidr], deny: &[Cidr]) -> Self {
        Self {
            allow: allow.to_vec(),
            deny: deny.to_vec(),
        }
    }

    /// Whether the list has no entries, so checking it can be skipped.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        let longest = |list: &[Cidr]| {
            list.iter()
                .filter(|cidr| cidr.contains(ip))
                .map(|cidr| cidr.0.prefix_len())
                .max()
        };
        match (longest(&self.allow), longest(&self.deny)) {
            (_, None) if self.allow.is_empty() => true,
            (Some(allowed), Some(denied)) => allowed > denied,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// Addresses blocked at runtime (`POST /security/deny`), each until its expiry if it has one.
/// Shared by the listeners and the request path; empty costs one atomic load per check.
#[derive(Debug, Default)]
pub struct RuntimeDenies {
    any: AtomicBool,
    entries: RwLock<Vec<Block>>,
}

/// One runtime block.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Block {
    pub cidr: Cidr,
    /// When the block ends; `None` lasts until it is removed or gatehouse restarts.
    #[serde(skip)]
    pub until: Option<Instant>,
}

impl RuntimeDenies {
    /// Blocks `cidr` for `ttl` (or until removed); a block of the same network is replaced.
    pub fn block(&self, cidr: Cidr, ttl: Option<Duration>) {
        self.block_at(cidr, ttl, Instant::now());
    }

    fn block_at(&self, cidr: Cidr, ttl: Option<Duration>, now: Instant) {
        let until = ttl.map(|ttl| now + ttl);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|block| block.cidr != cidr);
        entries.push(Block { cidr, until });
        self.any.store(true, Ordering::Release);
    }

    /// Lifts the block of exactly `cidr`; whether there was one.
    pub fn unblock(&self, cidr: Cidr) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        entries.retain(|block| block.cidr != cidr);
        self.any.store(!entries.is_empty(), Ordering::Release);
        entries.len() != before
    }

    /// Whether `ip` is blocked now.
    pub fn blocks(&self, ip: IpAddr) -> bool {
        self.any.load(Ordering::Acquire) && self.blocks_at(ip, Instant::now())
    }

    fn blocks_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|block| block.until.is_none_or(|until| until > now) && block.cidr.contains(ip))
    }

    /// The blocks in force, with the seconds each has left (`None`: no expiry).
    pub fn list(&self) -> Vec<(Cidr, Option<u64>)> {
        self.list_at(Instant::now())
    }

    fn list_at(&self, now: Instant) -> Vec<(Cidr, Option<u64>)> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|block| block.until.is_none_or(|until| until > now));
        self.any.store(!entries.is_empty(), Ordering::Release);
        entries
            .iter()
            .map(|block| {
                let left = block.until.map(|until| (until - now).as_secs().max(1));
                (block.cidr, left)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn empty_lists_admit_everyone() {
        assert!(AccessList::default().admits(ip("203.0.113.9")));
    }

    #[test]
    fn an_allow_list_admits_only_its_networks() {
        let list = AccessList::new(&cidrs(&["10.0.0.0/8", "2001:db8::/32"]), &[]);
        assert!(list.admits(ip("10.1.2.3")));
        assert!(list.admits(ip("2001:db8::7")));
        assert!(!list.admits(ip("192.0.2.1")));
        assert!(!list.admits(ip("2001:db9::1")));
    }

    #[test]
    fn the_most_specific_entry_decides() {
        let list = AccessList::new(&cidrs(&["10.1.2.3"]), &cidrs(&["10.0.0.0/8"]));
        assert!(list.admits(ip("10.1.2.3")));
        assert!(!list.admits(ip("10.1.2.4")));
        assert!(
            !list.admits(ip("192.0.2.1")),
            "an allow list admits only what it lists"
        );
        let list = AccessList::new(&cidrs(&["10.0.0.0/8"]), &cidrs(&["10.9.0.0/16"]));
        assert!(list.admits(ip("10.1.0.1")));
        assert!(!list.admits(ip("10.9.0.1")));
        assert!(!list.admits(ip("192.0.2.1")));
        let tie = AccessList::new(&cidrs(&["10.0.0.0/8"]), &cidrs(&["10.0.0.0/8"]));
        assert!(!tie.admits(ip("10.0.0.1")), "deny wins a tie");
    }

    #[test]
    fn runtime_blocks_expire_and_lift() {
        let denies = RuntimeDenies::default();
        assert!(!denies.blocks(ip("192.0.2.1")));
        let start = Instant::now();
        denies.block("192.0.2.0/24".parse().unwrap(), None);
        denies.block_at(
            "198.51.100.7".parse().unwrap(),
            Some(Duration::from_millis(20)),
            start,
        );
        assert!(denies.blocks(ip("192.0.2.200")));
        assert!(denies.blocks_at(ip("198.51.100.7"), start));
        let expired = start + Duration::from_millis(20);
        assert!(!denies.blocks_at(ip("198.51.100.7"), expired));
        assert_eq!(denies.list_at(expired).len(), 1);
        assert!(denies.unblock("192.0.2.0/24".parse().unwrap()));
        assert!(!denies.blocks(ip("192.0.2.200")));
        assert!(!denies.unblock("192.0.2.0/24".parse().unwrap()));
    }

    #[test]
    fn a_block_with_a_ttl_holds_and_is_listed_until_the_ttl_passes() {
        let denies = RuntimeDenies::default();
        let start = Instant::now();
        let cidr: Cidr = "127.0.0.2".parse().unwrap();
        denies.block_at(cidr, Some(Duration::from_secs(2)), start);
        let last = start + Duration::from_millis(1999);
        assert!(denies.blocks_at(ip("127.0.0.2"), last));
        assert!(!denies.blocks_at(ip("127.0.0.3"), last));
        assert_eq!(denies.list_at(start), [(cidr, Some(2))]);
        assert_eq!(denies.list_at(last), [(cidr, Some(1))]);
        let over = start + Duration::from_secs(2);
        assert!(!denies.blocks_at(ip("127.0.0.2"), over));
        assert_eq!(denies.list_at(over), []);
        assert!(!denies.blocks(ip("127.0.0.2")), "the expired block is gone");
    }
}
