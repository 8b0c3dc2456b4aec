//! Percentiles over latency samples, printed as `key=value` lines.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Sorted samples in microseconds.
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        v.sort_unstable();
        Samples(
            v.into_iter()
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
                .collect(),
        )
    }

    /// The `p`-th percentile (0-100, nearest rank) in milliseconds; NaN without samples.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1000.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Prints `<prefix>_n`, `_p50_ms`, `_p90_ms`, `_p99_ms`, `_max_ms`.
    pub fn print(&self, prefix: &str) {
        println!("{prefix}_n={}", self.len());
        for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
            println!("{prefix}_{name}_ms={:.3}", self.pct_ms(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.pct_ms(50.0), 50.0);
        assert_eq!(s.pct_ms(99.0), 99.0);
        assert_eq!(s.pct_ms(100.0), 100.0);
        assert_eq!(s.pct_ms(0.0), 1.0);
        assert!(Samples::new(vec![]).pct_ms(50.0).is_nan());
    }
}
