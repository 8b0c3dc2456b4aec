//! Rise and fall: turning a sequence of check results into healthy/unhealthy, as a pure
//! function so that its properties can be tested exhaustively.
//!
//! A new instance starts unhealthy with no history. It becomes healthy after `rise`
//! consecutive passes and unhealthy again after `fall` consecutive failures; a single
//! result of the other kind resets the count, so a flapping instance keeps its state.

use serde::Serialize;

/// What is remembered between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Health {
    pub healthy: bool,
    /// Consecutive passes up to now (0 after a failure).
    pub passes: u32,
    /// Consecutive failures up to now (0 after a pass).
    pub failures: u32,
}

/// A change of state caused by one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

impl Health {
    /// The state after one more result, and the transition it caused, if any.
    pub fn step(self, passed: bool, rise: u32, fall: u32) -> (Health, Option<Transition>) {
        let (passes, failures) = if passed {
            (self.passes.saturating_add(1), 0)
        } else {
            (0, self.failures.saturating_add(1))
        };
        let healthy = if self.healthy {
            failures < fall.max(1)
        } else {
            passes >= rise.max(1)
        };
        let transition = match (self.healthy, healthy) {
            (false, true) => Some(Transition::BecameHealthy),
            (true, false) => Some(Transition::BecameUnhealthy),
            _ => None,
        };
        (
            Health {
                healthy,
                passes,
                failures,
            },
            transition,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(results: &[bool], rise: u32, fall: u32) -> Vec<Health> {
        let mut h = Health::default();
        results
            .iter()
            .map(|&r| {
                h = h.step(r, rise, fall).0;
                h
            })
            .collect()
    }

    #[test]
    fn a_new_instance_needs_rise_passes() {
        let states = run(&[true, true, true], 2, 2);
        assert_eq!(
            states.iter().map(|h| h.healthy).collect::<Vec<_>>(),
            [false, true, true]
        );
    }

    #[test]
    fn one_failure_does_not_take_a_healthy_instance_down_with_fall_2() {
        let states = run(&[true, true, false, true, false, false], 2, 2);
        assert_eq!(
            states.iter().map(|h| h.healthy).collect::<Vec<_>>(),
            [false, true, true, true, true, false]
        );
    }

    proptest! {
        /// Healthy after a step exactly when the last `rise` results were passes (coming
        /// from unhealthy) or the last `fall` were not all failures (coming from healthy).
        #[test]
        fn state_follows_the_trailing_run(
            results in proptest::collection::vec(any::<bool>(), 0..60),
            rise in 1u32..6,
            fall in 1u32..6,
        ) {
            let mut h = Health::default();
            for (i, &r) in results.iter().enumerate() {
                let before = h;
                let (after, t) = before.step(r, rise, fall);
                let trailing_passes = results[..=i].iter().rev().take_while(|&&x| x).count() as u32;
                let trailing_failures = results[..=i].iter().rev().take_while(|&&x| !x).count() as u32;
                prop_assert_eq!(after.passes, trailing_passes);
                prop_assert_eq!(after.failures, trailing_failures);
                if before.healthy {
                    prop_assert_eq!(after.healthy, trailing_failures < fall);
                } else {
                    prop_assert_eq!(after.healthy, trailing_passes >= rise);
                }
                prop_assert_eq!(t.is_some(), before.healthy != after.healthy);
                h = after;
            }
        }

        /// Never healthy before `rise` passes in a row have been seen.
        #[test]
        fn never_healthy_without_rise_consecutive_passes(
            results in proptest::collection::vec(any::<bool>(), 0..60),
            rise in 1u32..6,
            fall in 1u32..6,
        ) {
            let states = run(&results, rise, fall);
            for (i, s) in states.iter().enumerate() {
                if s.healthy {
                    let longest_run_so_far = results[..=i]
                        .split(|&x| !x)
                        .map(|run| run.len() as u32)
                        .max()
                        .unwrap_or(0);
                    prop_assert!(longest_run_so_far >= rise);
                }
            }
        }

        /// `fall` failures in a row always end unhealthy; `rise` passes in a row always end
        /// healthy, whatever came before.
        #[test]
        fn runs_of_rise_or_fall_decide(
            prefix in proptest::collection::vec(any::<bool>(), 0..30),
            rise in 1u32..6,
            fall in 1u32..6,
            pass in any::<bool>(),
        ) {
            let mut results = prefix;
            let n = if pass { rise } else { fall };
            results.extend(std::iter::repeat_n(pass, n as usize));
            let last = *run(&results, rise, fall).last().unwrap();
            prop_assert_eq!(last.healthy, pass);
        }

        /// Transitions alternate: never two BecameHealthy without a BecameUnhealthy between.
        #[test]
        fn transitions_alternate(
            results in proptest::collection::vec(any::<bool>(), 0..60),
            rise in 1u32..6,
            fall in 1u32..6,
        ) {
            let mut h = Health::default();
            let mut last = Transition::BecameUnhealthy;
            for &r in &results {
                let (next, t) = h.step(r, rise, fall);
                if let Some(t) = t {
                    prop_assert_ne!(t, last);
                    last = t;
                }
                h = next;
            }
        }
    }
}
