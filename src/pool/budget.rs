//! The retry budget: a cap on retries relative to a pool's traffic, so a pool whose servers
//! are failing is not sent twice its load by retries just when it can least take it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One second, the budget's window, in the nanoseconds of [`super::latency::now`].
const WINDOW: u64 = 1_000_000_000;

/// Counts a pool's requests on the request path (one relaxed atomic add each) and decides,
/// when a retry is wanted, whether the budget allows it: retries per second may be
/// `percent` of the request rate of the last full window, or `floor`, whichever is more.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Start of the current window.
    started: u64,
    /// Requests per second over the last full window.
    rate: u64,
    /// Retries granted in the current window.
    retries: u64,
}

impl RetryBudget {
    /// A request of the pool's started.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget at `now`; if it does, it is counted.
    pub fn try_retry(&self, now: u64, percent: u32, floor: u32) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_sub(window.started);
        if elapsed >= WINDOW {
            // Requests since the window started, as a rate: a window that ran long (no
            // retries for a minute) must not grant a minute's worth at once.
            let requests = self.requests.swap(0, Ordering::Relaxed);
            window.rate = (u128::from(requests) * u128::from(WINDOW) / u128::from(elapsed)) as u64;
            window.started = now;
            window.retries = 0;
        }
        let current = self.requests.load(Ordering::Relaxed);
        let basis = window.rate.max(current);
        let allowed = (basis * u64::from(percent) / 100).max(u64::from(floor));
        if window.retries >= allowed {
            return false;
        }
        window.retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(budget: &RetryBudget, n: u64) {
        for _ in 0..n {
            budget.request();
        }
    }

    fn granted(budget: &RetryBudget, now: u64, wanted: usize) -> usize {
        (0..wanted).filter(|_| budget.try_retry(now, 20, 3)).count()
    }

    #[test]
    fn a_quiet_pool_gets_the_floor() {
        let budget = RetryBudget::default();
        requests(&budget, 2);
        assert_eq!(granted(&budget, WINDOW, 10), 3);
    }

    #[test]
    fn the_floor_is_granted_anew_each_window() {
        let budget = RetryBudget::default();
        let granted = |now| (0..10).filter(|_| budget.try_retry(now, 0, 2)).count();
        for second in 0..5 {
            requests(&budget, 20);
            assert_eq!(granted(second * WINDOW), 2, "second {second}");
            assert_eq!(granted(second * WINDOW + WINDOW - 1), 0, "second {second}");
        }
    }

    #[test]
    fn a_busy_pool_gets_its_percentage_of_the_last_second() {
        let budget = RetryBudget::default();
        requests(&budget, 1000);
        // The first window closes: 1,000 requests in one second, so 200 retries a second.
        assert_eq!(granted(&budget, WINDOW, 500), 200);
        // Still within the same window: nothing more.
        assert_eq!(granted(&budget, WINDOW + WINDOW / 2, 10), 0);
        // Next window: the rate is what came in since, at least the floor.
        requests(&budget, 100);
        assert_eq!(granted(&budget, 2 * WINDOW, 50), 20);
    }

    #[test]
    fn a_long_quiet_stretch_does_not_bank_retries() {
        let budget = RetryBudget::default();
        requests(&budget, 6000);
        // 6,000 requests over a minute is 100 a second: 20 retries, not 1,200.
        assert_eq!(granted(&budget, 60 * WINDOW, 2000), 20);
    }
}
