//! Jittered exponential backoff.
//!
//! The delay after the n-th consecutive failure is drawn from `[base/2, base]` where
//! `base = min(max, initial * 2^n)`: never zero (no hot loops against a dead etcd), never
//! above `max`, and spread so that many processes restarted together do not retry in step.

use std::time::Duration;

/// Backoff limits; [`Backoff::delay`] is the pure calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first), with `jitter` in
    /// `[0, 1]` choosing where in `[base/2, base]` it falls.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let base = self
            .initial
            .saturating_mul(1u32 << exponent)
            .min(self.max)
            .max(Duration::from_millis(1));
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        base.mul_f64(0.5 + 0.5 * jitter)
    }

    /// A counter of consecutive failures using this policy.
    pub fn start(self) -> BackoffState {
        BackoffState {
            policy: self,
            failures: 0,
        }
    }
}

/// Consecutive failures so far; [`BackoffState::next_delay`] counts one more.
#[derive(Debug, Clone)]
pub struct BackoffState {
    policy: Backoff,
    failures: u32,
}

impl BackoffState {
    /// Counts a failure and returns how long to wait before trying again.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures, rand::random::<f64>())
    }

    /// Counts a failure and sleeps for its delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_half_base_and_max(
            initial_ms in 1u64..2_000, max_ms in 1u64..60_000, failures in 0u32..1_000, jitter in 0.0f64..=1.0
        ) {
            let b = Backoff { initial: Duration::from_millis(initial_ms), max: Duration::from_millis(max_ms) };
            let d = b.delay(failures, jitter);
            prop_assert!(d <= b.max.max(Duration::from_millis(1)));
            prop_assert!(d >= Duration::from_micros(500));
        }

        #[test]
        fn delays_never_shrink_as_failures_grow(failures in 1u32..100, jitter in 0.0f64..=1.0) {
            let b = Backoff::default();
            prop_assert!(b.delay(failures + 1, jitter) >= b.delay(failures, jitter));
        }
    }

    #[test]
    fn the_first_delay_is_near_initial_and_growth_caps_at_max() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay(50, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn reset_starts_over() {
        let mut s = Backoff::default().start();
        for _ in 0..10 {
            s.next_delay();
        }
        assert_eq!(s.failures(), 10);
        s.reset();
        assert!(s.next_delay() <= Duration::from_millis(100));
    }
}
