//! A duration histogram the hot path can observe into: a fixed array of atomic bucket
//! counts and an atomic sum, so an observation is a short scan of the bounds and two
//! relaxed atomic adds (no lock, no allocation). Read at scrape time into a
//! [`HistogramSample`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for connect times and other short waits: 0.5 ms to 5 s.
pub const SHORT_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds (seconds) for connection lifetimes: 5 ms to an hour.
pub const LIFETIME_SECONDS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Durations counted into buckets with fixed upper bounds (seconds, ascending) plus +Inf.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then the +Inf bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations in nanoseconds.
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// Seconds.
    pub sum: f64,
    pub count: u64,
    /// (upper bound, observations in this bucket alone); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// A histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn sample(&self) -> HistogramSample {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        HistogramSample {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1_000));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let s = h.sample();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets, vec![(0.001, 1), (0.01, 1), (f64::INFINITY, 1)]);
        assert!((s.sum - 2.006).abs() < 1e-9, "{}", s.sum);
    }

    proptest! {
        #[test]
        fn every_observation_is_counted_once(micros in prop::collection::vec(0u64..10_000_000, 0..50)) {
            let h = Histogram::new(SHORT_SECONDS);
            for m in &micros {
                h.observe(Duration::from_micros(*m));
            }
            let s = h.sample();
            prop_assert_eq!(s.count, micros.len() as u64);
            prop_assert_eq!(s.buckets.len(), SHORT_SECONDS.len() + 1);
            let total: u64 = micros.iter().sum();
            prop_assert!((s.sum - total as f64 / 1e6).abs() < 1e-6);
        }
    }
}
