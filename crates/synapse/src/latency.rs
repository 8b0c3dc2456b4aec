//! Peak-EWMA response time of a backend (as linkerd2-proxy and Finagle balance): an
//! exponentially weighted moving average of response times that jumps up to any sample
//! above it at once (a slow backend is noticed on its first slow answer) and decays
//! towards faster samples over about [`DECAY`]. The pure step is [`next`]; [`PeakEwma`]
//! keeps it in two atomics per backend (a racing update may be lost, which only delays the
//! estimate by one sample).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How fast the estimate forgets: a sample's weight falls by e every `DECAY`.
pub const DECAY: Duration = Duration::from_secs(10);

/// The estimate of a backend with no sample yet: pessimistic enough that one that answered
/// fast is preferred, not so much that a new backend is starved.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The estimate after a `sample` taken `elapsed` after the previous estimate `previous`
/// (all nanoseconds): the sample itself when it is higher (peak), else a decayed average.
pub fn next(previous: u64, elapsed: u64, sample: u64) -> u64 {
    if sample >= previous {
        return sample;
    }
    let keep = (-(elapsed as f64) / DECAY.as_nanos() as f64).exp();
    (previous as f64 * keep + sample as f64 * (1.0 - keep)) as u64
}

/// One backend's estimate.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// Nanoseconds; 0 until the first sample.
    estimate: AtomicU64,
    /// When it was last updated, nanoseconds on [`clock`]'s scale.
    updated: AtomicU64,
}

/// Nanoseconds since the first call in this process.
fn clock() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl PeakEwma {
    pub fn observe(&self, rtt: Duration) {
        let now = clock();
        let sample = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        let previous = self.estimate.load(Ordering::Relaxed);
        let value = if previous == 0 {
            sample.max(1)
        } else {
            let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed));
            next(previous, elapsed, sample).max(1)
        };
        self.estimate.store(value, Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// The estimate in nanoseconds ([`DEFAULT_RTT`] before any sample).
    pub fn get(&self) -> u64 {
        match self.estimate.load(Ordering::Relaxed) {
            0 => DEFAULT_RTT.as_nanos() as u64,
            v => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slow_answer_counts_at_once_and_fades_over_the_decay() {
        let ms = 1_000_000u64;
        assert_eq!(next(5 * ms, 0, 1_000 * ms), 1_000 * ms);
        let one_decay = next(1_000 * ms, DECAY.as_nanos() as u64, 5 * ms);
        // e^-1 of the old value is left after one DECAY.
        assert!(
            (one_decay as f64 - (1_000.0 * 0.3679 + 5.0 * 0.6321) * ms as f64).abs() < ms as f64
        );
        let tracker = PeakEwma::default();
        assert_eq!(tracker.get(), DEFAULT_RTT.as_nanos() as u64);
        tracker.observe(Duration::from_millis(2));
        assert_eq!(tracker.get(), 2 * ms);
    }

    proptest! {
        #[test]
        fn the_estimate_stays_between_the_sample_and_the_peak(
            previous in 1u64..10_000_000_000,
            elapsed in 0u64..100_000_000_000,
            sample in 0u64..10_000_000_000,
        ) {
            let v = next(previous, elapsed, sample);
            prop_assert!(v >= sample.min(previous) && v <= sample.max(previous));
        }
    }
}
