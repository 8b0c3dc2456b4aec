//! Slow start: a backend that has just appeared in the registry (or come back to it), or
//! has just been restored from ejection, takes a growing share of new connections over the
//! service's `slow_start` window instead of its full share at once, so a JIT-compiled or
//! cache-cold process is not flooded the moment it is routable (HAProxy's `slowstart`,
//! Envoy's slow start mode).
//!
//! The ramp is linear from [`START_PERMILLE`] of the backend's weight to all of it. Pure
//! functions of elapsed time; the balancer applies them per pick ([`crate::balance`]).

/// The share of its weight a backend gets the moment it starts warming: small but not
/// nothing, so a lone new backend among many still sees a little traffic at once.
pub const START_PERMILLE: u32 = 100;

/// The whole weight, in per mille.
pub const FULL: u32 = 1000;

/// The share (per mille of its weight) of a backend that started warming `elapsed_ms` ago,
/// with a window of `window_ms`: from [`START_PERMILLE`] up to [`FULL`] at the window's end.
pub fn ramp_permille(elapsed_ms: u64, window_ms: u64) -> u32 {
    if elapsed_ms >= window_ms {
        return FULL;
    }
    let span = u64::from(FULL - START_PERMILLE);
    START_PERMILLE + (span * elapsed_ms / window_ms) as u32
}

/// `weight` scaled by `permille`, never below 1 for a backend with a weight (so it keeps
/// receiving some traffic), never above `weight`.
pub fn effective_weight(weight: u32, permille: u32) -> u32 {
    if weight == 0 {
        return 0;
    }
    let scaled = u64::from(weight) * u64::from(permille.min(FULL)) / u64::from(FULL);
    (scaled as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_ramp_starts_small_and_ends_full() {
        assert_eq!(ramp_permille(0, 30_000), START_PERMILLE);
        assert_eq!(ramp_permille(15_000, 30_000), 550);
        assert_eq!(ramp_permille(30_000, 30_000), FULL);
        assert_eq!(ramp_permille(1, 0), FULL);
        assert_eq!(effective_weight(100, START_PERMILLE), 10);
        assert_eq!(effective_weight(3, START_PERMILLE), 1);
        assert_eq!(effective_weight(0, FULL), 0);
    }

    proptest! {
        #[test]
        fn the_ramp_only_grows_and_stays_within_the_weight(
            window in 1u64..120_000,
            a in 0u64..200_000,
            b in 0u64..200_000,
            weight in 0u32..=u32::MAX,
        ) {
            let (early, late) = (a.min(b), a.max(b));
            let (p, q) = (ramp_permille(early, window), ramp_permille(late, window));
            prop_assert!(p <= q);
            prop_assert!((START_PERMILLE..=FULL).contains(&p));
            let (w, v) = (effective_weight(weight, p), effective_weight(weight, q));
            prop_assert!(w <= v && v <= weight);
            prop_assert_eq!(w == 0, weight == 0);
            if late >= window {
                prop_assert_eq!(v, weight);
            }
        }
    }
}
