//! How fast a server answers lately: a lock-free peak-sensitive moving average of its
//! time to response head, and the process clock it is kept on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How fast an old observation fades: after this long without news a server's average has
/// fallen to 1/e of what it was, so a server that was slow is tried again within tens of
/// seconds (Finagle and linkerd use the same 10 s).
pub const DECAY: Duration = Duration::from_secs(10);

/// What a server that has never answered is assumed to take. Small, so a new server is tried
/// at once; its first answer replaces it.
pub const UNOBSERVED: Duration = Duration::from_millis(1);

/// A stamp no observation can carry.
const NEVER: u64 = u64::MAX;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the process first asked: the clock response times are kept on.
pub fn now() -> u64 {
    nanos_since_epoch(Instant::now())
}

/// An instant on the same clock as [`now`].
pub fn nanos_since_epoch(instant: Instant) -> u64 {
    instant.saturating_duration_since(*EPOCH).as_nanos() as u64
}

/// Peak EWMA of response times (Finagle's `PeakEwma`): an observation above the average
/// replaces it at once; one below pulls it down, weighted by the time since the last one;
/// between observations the average decays towards zero, so a server that got no traffic
/// because it was slow gets tried again. Concurrent updates may lose one observation to
/// another; the average stays a fair estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// The average as f64 bits, in nanoseconds, as of `stamp`.
    average: AtomicU64,
    /// When `average` was last updated, in [`now`] nanoseconds; [`NEVER`] before the first.
    stamp: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            average: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(NEVER),
        }
    }
}

impl PeakEwma {
    /// Records a response time seen at `now`.
    pub fn observe(&self, took: Duration, now: u64) {
        let took = took.as_nanos() as f64;
        let stamp = self.stamp.load(Ordering::Relaxed);
        let next = if stamp == NEVER {
            took
        } else {
            let weight = decay(now.saturating_sub(stamp));
            let current = f64::from_bits(self.average.load(Ordering::Relaxed)) * weight;
            if took > current {
                took
            } else {
                current + took * (1.0 - weight)
            }
        };
        self.average.store(next.to_bits(), Ordering::Relaxed);
        self.stamp.store(now, Ordering::Relaxed);
    }

    /// The average as of `now`, in nanoseconds.
    pub fn at(&self, now: u64) -> f64 {
        let stamp = self.stamp.load(Ordering::Relaxed);
        if stamp == NEVER {
            return UNOBSERVED.as_nanos() as f64;
        }
        f64::from_bits(self.average.load(Ordering::Relaxed)) * decay(now.saturating_sub(stamp))
    }
}

/// The share of an average left after `elapsed` nanoseconds.
fn decay(elapsed: u64) -> f64 {
    (-(elapsed as f64) / DECAY.as_nanos() as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn ms(average: f64) -> f64 {
        average / MS as f64
    }

    #[test]
    fn an_unobserved_server_looks_fast() {
        assert_eq!(ms(PeakEwma::default().at(5 * S)), 1.0);
    }

    #[test]
    fn a_slower_answer_replaces_the_average_at_once() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(10), S);
        ewma.observe(Duration::from_millis(300), S + MS);
        assert_eq!(ms(ewma.at(S + MS)), 300.0);
    }

    #[test]
    fn faster_answers_pull_the_average_down_by_elapsed_time() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(300), 0);
        ewma.observe(Duration::from_millis(10), 100 * MS);
        let soon = ms(ewma.at(100 * MS));
        assert!(soon > 250.0 && soon < 300.0, "{soon}");
        ewma.observe(Duration::from_millis(10), 30 * S);
        let later = ms(ewma.at(30 * S));
        assert!(later < 30.0, "{later}");
    }

    #[test]
    fn the_average_fades_without_observations() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(100), 0);
        assert!((ms(ewma.at(10 * S)) - 100.0 / std::f64::consts::E).abs() < 0.01);
        assert!(ms(ewma.at(60 * S)) < 1.0);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now();
        let b = now();
        assert!(b >= a);
    }
}
