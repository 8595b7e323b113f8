//! The binding table of the table modes: session key to server address, bounded in size and
//! in time, shared by every worker.

use std::sync::Arc;
use std::time::Duration;

use cached::stores::ShardedLruTtlCache;

/// Keys to server addresses. At most `max_entries`: a new key past that evicts the least
/// recently used one, so a flood of new clients costs bounded memory. A key not looked up or
/// set for `ttl` is forgotten. Sharded, so workers rarely wait on one another.
pub struct Table {
    entries: ShardedLruTtlCache<Box<[u8]>, Arc<str>>,
}

impl Table {
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        // Each shard holds its share of max_entries; small tables get one shard so the bound
        // is exact.
        let shards = if max_entries >= 4096 { 16 } else { 1 };
        let entries = ShardedLruTtlCache::builder()
            .max_size(max_entries)
            .shards(shards)
            .ttl(ttl)
            .refresh_on_hit(true)
            .build()
            .expect("max_entries and ttl are validated");
        Self { entries }
    }

    /// The server bound to `key`, refreshing its time to live.
    pub fn get(&self, key: &[u8]) -> Option<Arc<str>> {
        self.entries.get(key)
    }

    pub fn set(&self, key: &[u8], address: Arc<str>) {
        self.entries.set(key.into(), address);
    }

    /// Bindings held now, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bindings per server address, live ones only (sweeps expired ones first).
    pub fn per_server(&self) -> std::collections::BTreeMap<String, usize> {
        let _swept = self.entries.evict();
        let mut counts = std::collections::BTreeMap::new();
        self.entries.retain(|_, address| {
            *counts.entry(address.to_string()).or_insert(0) += 1;
            true
        });
        counts
    }

    /// Forgets every binding.
    pub fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_never_grows_past_max_entries() {
        let table = Table::new(1_000, Duration::from_secs(3600));
        let server: Arc<str> = "10.0.0.1:80".into();
        for i in 0..100_000u32 {
            table.set(&i.to_be_bytes(), server.clone());
        }
        assert!(table.len() <= 1_000, "{}", table.len());
        // The most recent keys are the ones kept.
        assert!(table.get(&99_999u32.to_be_bytes()).is_some());
        assert!(table.get(&0u32.to_be_bytes()).is_none());
    }

    #[test]
    fn a_large_table_is_bounded_across_its_shards() {
        let table = Table::new(10_000, Duration::from_secs(3600));
        let server: Arc<str> = "10.0.0.1:80".into();
        for i in 0..100_000u32 {
            table.set(&i.to_be_bytes(), server.clone());
        }
        assert!(table.len() <= 10_000, "{}", table.len());
        assert!(table.len() >= 9_000, "{}", table.len());
    }

    #[test]
    fn unused_bindings_expire() {
        let table = Table::new(10, Duration::from_millis(30));
        table.set(b"alice", "10.0.0.1:80".into());
        assert!(table.get(b"alice").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(table.get(b"alice").is_none());
        assert!(table.per_server().is_empty());
    }

    #[test]
    fn bindings_are_counted_per_server() {
        let table = Table::new(10, Duration::from_secs(60));
        table.set(b"a", "10.0.0.1:80".into());
        table.set(b"b", "10.0.0.1:80".into());
        table.set(b"c", "10.0.0.2:80".into());
        let counts = table.per_server();
        assert_eq!(counts["10.0.0.1:80"], 2);
        assert_eq!(counts["10.0.0.2:80"], 1);
        table.clear();
        assert!(table.is_empty());
    }
}
