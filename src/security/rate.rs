//! Request rate limits: the generic cell rate algorithm (GCRA) per key, one timestamp per
//! key in a bounded table, so a flood of new keys cannot grow memory past `max_keys`.
//!
//! governor implements GCRA too, but its keyed store cannot be bounded: keys are only swept
//! after the fact. Keeping the one timestamp GCRA needs in an LRU table with expiry gives a
//! hard bound, and a key forgotten under pressure only means a fresh allowance for it.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;
use cached::stores::ShardedLruTtlCache;

use crate::settings::{RateKey, RateLimitSettings};

/// One `[[rate_limits]]` rule.
pub struct RateLimit {
    key: Key,
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of the steady rate a key may run: `burst` intervals.
    tolerance: u64,
    /// Each key's theoretical arrival time of its next request, on the process clock.
    arrivals: ShardedLruTtlCache<Box<[u8]>, u64>,
}

enum Key {
    ClientIp,
    Header(HeaderName),
}

impl RateLimit {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let interval = (settings.rate.per.as_nanos() / u128::from(settings.rate.requests)) as u64;
        let tolerance = interval.saturating_mul(u64::from(settings.burst));
        // A key idle for longer than this has its whole allowance back: forget it.
        let ttl = Duration::from_nanos(interval.saturating_add(tolerance)) + Duration::from_secs(1);
        let shards = if settings.max_keys >= 4096 { 16 } else { 1 };
        let arrivals = ShardedLruTtlCache::builder()
            .max_size(settings.max_keys.max(1))
            .shards(shards)
            .ttl(ttl)
            .build()
            .expect("a positive size and ttl");
        let key = match &settings.key {
            RateKey::ClientIp => Key::ClientIp,
            RateKey::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Key::Header(name),
                Err(_) => Key::ClientIp,
            },
        };
        Self {
            key,
            interval,
            tolerance,
            arrivals,
        }
    }

    /// Admits one request from `client` at `now` (nanoseconds, monotonic), or says how long
    /// until it would be admitted. Requests without the rule's header are not limited by it.
    pub fn check(
        &self,
        req: &HttpRequest,
        client: Option<IpAddr>,
        now: u64,
    ) -> Result<(), Duration> {
        let mut ip = [0u8; 16];
        let key: &[u8] = match &self.key {
            Key::ClientIp => match client {
                Some(IpAddr::V4(v4)) => {
                    ip[..4].copy_from_slice(&v4.octets());
                    &ip[..4]
                }
                Some(IpAddr::V6(v6)) => {
                    ip = v6.octets();
                    &ip
                }
                None => return Ok(()),
            },
            Key::Header(name) => match req.headers().get(name) {
                Some(value) if !value.is_empty() => value.as_bytes(),
                _ => return Ok(()),
            },
        };
        self.admit(key, now)
    }

    /// GCRA: a request at `now` is admitted unless the key's next arrival time lies more than
    /// the burst tolerance ahead; then the arrival time moves one interval on.
    fn admit(&self, key: &[u8], now: u64) -> Result<(), Duration> {
        let arrival = self.arrivals.get(key).unwrap_or(now).max(now);
        let ahead = arrival - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        self.arrivals
            .set(key.into(), arrival.saturating_add(self.interval));
        Ok(())
    }

    pub fn keys(&self) -> usize {
        self.arrivals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Rate;

    const SECOND: u64 = 1_000_000_000;

    fn limit(rate: &str, burst: u32, max_keys: usize) -> RateLimit {
        RateLimit::new(&RateLimitSettings {
            key: RateKey::ClientIp,
            rate: Rate::try_from(rate.to_string()).unwrap(),
            burst,
            max_keys,
        })
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limit = limit("10/s", 5, 100);
        // One request plus the burst at once...
        for _ in 0..6 {
            assert!(limit.admit(b"a", SECOND).is_ok());
        }
        // ...then the next must wait one interval (100 ms).
        let wait = limit.admit(b"a", SECOND).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(limit.admit(b"a", SECOND + 100_000_000).is_ok());
        assert!(limit.admit(b"a", SECOND + 100_000_000).is_err());
        // Keys are limited apart.
        assert!(limit.admit(b"b", SECOND).is_ok());
    }

    #[test]
    fn an_idle_key_gets_its_allowance_back() {
        let limit = limit("60/m", 2, 100);
        for _ in 0..3 {
            assert!(limit.admit(b"a", 0).is_ok());
        }
        assert!(limit.admit(b"a", 0).is_err());
        assert!(limit.admit(b"a", 10 * SECOND).is_ok());
    }

    #[test]
    fn the_key_table_is_bounded() {
        let limit = limit("1/s", 0, 1000);
        for i in 0..50_000u32 {
            let _ = limit.admit(&i.to_be_bytes(), SECOND);
        }
        assert!(limit.keys() <= 1000);
    }
}
