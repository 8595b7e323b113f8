//! The rise/fall state machine: how many probes in a row it takes to change a server's
//! verdict. Pure: it counts what it is told and says when the verdict flips.

/// A change of verdict, reported once, when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `rise` passes in a row brought a down server back (one pass, if it had never been up).
    WentUp,
    /// `fall` failures in a row took an up server out.
    WentDown,
}

/// One server's run of passes or failures, and its verdict.
///
/// A server that has never been up since checks began for it (it joined with
/// `initial_state = "down"`) comes up at its first passing probe: "down until it passes
/// once". After that, a server that went down needs `rise` passes in a row to come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiseFall {
    up: bool,
    /// Whether the server has been up at all; until it has, one pass brings it up.
    proven: bool,
    passes: u32,
    failures: u32,
}

impl RiseFall {
    /// A server whose checks start with it up (`initial_state = "up"`, or already taking
    /// traffic when checks were turned on) or down.
    pub fn new(up: bool) -> Self {
        Self {
            up,
            proven: up,
            passes: 0,
            failures: 0,
        }
    }

    /// Counts one probe against the thresholds; returns the transition it caused, if any.
    /// Thresholds below 1 count as 1.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<Transition> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if !self.up && (!self.proven || self.passes >= rise.max(1)) {
                self.up = true;
                self.proven = true;
                return Some(Transition::WentUp);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.up && self.failures >= fall.max(1) {
                self.up = false;
                return Some(Transition::WentDown);
            }
        }
        None
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Passing probes in a row, up to and including the last one.
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Failing probes in a row, up to and including the last one.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: bool = true;
    const FAIL: bool = false;

    /// Feeds `probes` with rise 2, fall 3; returns the transitions, in order.
    fn run(start_up: bool, probes: &[bool]) -> Vec<(usize, Transition)> {
        let mut counter = RiseFall::new(start_up);
        probes
            .iter()
            .enumerate()
            .filter_map(|(i, &passed)| counter.observe(passed, 2, 3).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn a_server_that_starts_down_comes_up_at_its_first_pass() {
        assert_eq!(run(false, &[PASS]), [(0, Transition::WentUp)]);
        assert_eq!(run(false, &[FAIL, FAIL, PASS]), [(2, Transition::WentUp)]);
    }

    #[test]
    fn fall_failures_in_a_row_take_an_up_server_down_once() {
        assert_eq!(
            run(true, &[FAIL, FAIL, FAIL, FAIL, FAIL]),
            [(2, Transition::WentDown)]
        );
        assert!(run(true, &[FAIL, FAIL, PASS, FAIL, FAIL]).is_empty());
    }

    #[test]
    fn a_server_that_went_down_needs_rise_passes() {
        assert_eq!(
            run(true, &[FAIL, FAIL, FAIL, PASS, FAIL, PASS, PASS, PASS]),
            [(2, Transition::WentDown), (6, Transition::WentUp)]
        );
        assert_eq!(
            run(false, &[PASS, FAIL, FAIL, FAIL, PASS, PASS]),
            [
                (0, Transition::WentUp),
                (3, Transition::WentDown),
                (5, Transition::WentUp)
            ]
        );
    }

    #[test]
    fn runs_are_counted_for_reports() {
        let mut counter = RiseFall::new(true);
        counter.observe(FAIL, 2, 3);
        counter.observe(FAIL, 2, 3);
        assert_eq!((counter.passes(), counter.failures()), (0, 2));
        counter.observe(PASS, 2, 3);
        assert_eq!((counter.passes(), counter.failures()), (1, 0));
        assert!(counter.is_up());
    }

    #[test]
    fn thresholds_of_one() {
        let mut counter = RiseFall::new(true);
        assert_eq!(counter.observe(FAIL, 1, 1), Some(Transition::WentDown));
        assert_eq!(counter.observe(PASS, 1, 1), Some(Transition::WentUp));
        assert_eq!(counter.observe(PASS, 0, 0), None);
        assert_eq!(counter.observe(FAIL, 0, 0), Some(Transition::WentDown));
    }
}
