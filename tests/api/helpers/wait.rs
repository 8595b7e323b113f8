//! Waiting that never measures speed: one deadline for anything that could hang, and polling
//! until a condition holds.

use std::thread;
use std::time::{Duration, Instant};

/// Deadline for anything that could hang; never a measure of speed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds; fails the test with `what` at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "never happened: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
