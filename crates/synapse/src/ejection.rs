//! Passive outlier ejection, all of it: the per-backend state ([`EjectionState`]), the
//! policy as pure functions ([`may_eject`], [`ejection_length`]), and the per-service owner
//! ([`Ejector`]) that serialises decisions (so the ejection limit holds under concurrent
//! failures), ends ejections whose time is up and logs every ejection and restoration.
//!
//! This module knows nothing of backend sets: callers hand it the ejection states of the
//! service's routable backends, so the backend set (`crate::backends`) can sit on top of it.
//! Times are milliseconds from [`now_ms`].

use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ServiceConfig;

/// Milliseconds since the first call in this process; monotonic, never 0 (0 means "never"
/// in atomics).
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether one more backend may be ejected: never more than `max_percent` of the set
/// (rounded down), so a service whose backends all fail keeps trying the ones not ejected.
pub fn may_eject(ejected_now: usize, total: usize, max_percent: u32) -> bool {
    (ejected_now + 1) * 100 <= total * max_percent as usize
}

/// How long the `ejections`-th ejection in a row lasts (0 for the first): doubling, capped
/// at 64 times `base`.
pub fn ejection_length(base: Duration, ejections: u32) -> Duration {
    base * (1u32 << ejections.min(6))
}

/// Per-service ejection settings.
#[derive(Debug, Clone, Copy)]
pub struct EjectionPolicy {
    pub eject_after: u32,
    pub base: Duration,
    pub max_percent: u32,
}

impl EjectionPolicy {
    /// The policy a service's configuration sets.
    pub fn of(config: &ServiceConfig) -> Self {
        EjectionPolicy {
            eject_after: config.eject_after,
            base: config.ejection_time.get(),
            max_percent: config.max_ejection_percent,
        }
    }
}

/// Outcome of a failed connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    Ejected(Duration),
    /// Would be ejected but the service is at `max_ejection_percent`.
    AtEjectionLimit,
}

/// One backend's ejection state, kept across backend set updates.
#[derive(Debug, Default)]
pub struct EjectionState {
    consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the backend is ejected; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row, which lengthen the next one.
    ejections: AtomicU32,
    /// When the last ejection ended, to forget old ejections once healthy long enough.
    last_ejection_end: AtomicU64,
}

impl EjectionState {
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// When its last ejection ended as of `now` (0: never ejected, or ejected still): also
    /// an ejection whose time is up but that housekeeping has not ended yet.
    pub fn ejection_ended_at(&self, now: u64) -> u64 {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && until <= now {
            until
        } else if until > now {
            0
        } else {
            self.last_ejection_end.load(Ordering::Relaxed)
        }
    }

    /// Records a failed connect; `peers` are the ejection states of every routable backend
    /// of the service (this one included). Callers serialise calls per service.
    fn record_failure<'a>(
        &self,
        peers: impl Iterator<Item = &'a EjectionState>,
        policy: EjectionPolicy,
        now: u64,
    ) -> FailureOutcome {
        let consecutive = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if consecutive < policy.eject_after || self.is_ejected(now) {
            return FailureOutcome::Counted;
        }
        let (mut total, mut ejected) = (0, 0);
        for p in peers {
            total += 1;
            ejected += usize::from(p.is_ejected(now));
        }
        if !may_eject(ejected, total, policy.max_percent) {
            return FailureOutcome::AtEjectionLimit;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let length = ejection_length(policy.base, ejections);
        self.ejected_until
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        FailureOutcome::Ejected(length)
    }

    /// Records a successful connect; whether it ended an ejection early (a panic pick
    /// reached an ejected backend).
    fn record_success(&self, policy: EjectionPolicy, now: u64) -> bool {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let restored = self.ejected_until.swap(0, Ordering::Relaxed) > now;
        if restored {
            self.last_ejection_end.store(now, Ordering::Relaxed);
        }
        let ejections = self.ejections.load(Ordering::Relaxed);
        if ejections > 0 {
            // Healthy for as long as the next ejection would last: start over from `base`.
            let end = self.last_ejection_end.load(Ordering::Relaxed);
            let next = ejection_length(policy.base, ejections).as_millis() as u64;
            if end > 0 && now > end + next {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
        restored
    }

    /// Ends the ejection if its time is up at `now`; whether it did.
    fn restore_if_expired(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let expired = until != 0
            && until <= now
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if expired {
            self.last_ejection_end.store(now, Ordering::Relaxed);
        }
        expired
    }
}

/// The one owner of a service's ejection decisions: serialises them and logs them, in the
/// service's span (entered only to log, so a successful connect costs no span).
#[derive(Debug)]
pub struct Ejector {
    serial: Mutex<()>,
    span: tracing::Span,
    /// Ejections so far (`synapse_ejections_total`).
    ejections: AtomicU64,
}

impl Ejector {
    /// The ejector of the service whose span is `span`.
    pub fn new(span: tracing::Span) -> Self {
        Ejector {
            serial: Mutex::new(()),
            span,
            ejections: AtomicU64::new(0),
        }
    }

    /// Ejections since the service started.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// A connect to `backend` (shown as `addr`, registry id `id`) failed with `error`;
    /// `peers` are the ejection states of the service's routable backends. Maybe ejects.
    pub fn connect_failed<'a>(
        &self,
        backend: &EjectionState,
        peers: impl Iterator<Item = &'a EjectionState>,
        policy: EjectionPolicy,
        (addr, id): (&dyn Display, &str),
        error: &dyn Display,
    ) -> FailureOutcome {
        let outcome = {
            let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
            backend.record_failure(peers, policy, now_ms())
        };
        if let FailureOutcome::Ejected(_) = outcome {
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
        let _in = self.span.enter();
        match outcome {
            FailureOutcome::Ejected(length) => tracing::warn!(
                backend = %addr, %id, %error, ejected_for = ?length,
                "backend ejected after consecutive connect failures"
            ),
            FailureOutcome::AtEjectionLimit => tracing::debug!(
                backend = %addr, %error,
                "connect failed; not ejected: max_ejection_percent reached"
            ),
            FailureOutcome::Counted => {
                tracing::debug!(backend = %addr, %error, "connect failed; trying another backend")
            }
        }
        outcome
    }

    /// A connect to `backend` (shown as `addr`) succeeded: ends its ejection if any.
    pub fn connect_succeeded(
        &self,
        backend: &EjectionState,
        policy: EjectionPolicy,
        addr: &dyn Display,
    ) {
        if backend.record_success(policy, now_ms()) {
            let _in = self.span.enter();
            tracing::info!(backend = %addr, "backend restored: a connection succeeded");
        }
    }

    /// Ends the ejections whose time is up (housekeeping); `backends` are the service's
    /// routable backends with their address and registry id for the log.
    pub fn restore_expired<'a, A: Display + 'a>(
        &self,
        backends: impl Iterator<Item = (&'a EjectionState, A, &'a str)>,
    ) -> usize {
        let now = now_ms();
        let mut restored = 0;
        for (state, addr, id) in backends {
            if state.restore_if_expired(now) {
                restored += 1;
                let _in = self.span.enter();
                tracing::info!(%id, backend = %addr, "backend restored: ejection time is up");
            }
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ejection limit is never exceeded, and a lone backend is never ejected
        /// unless the limit is 100%.
        #[test]
        fn ejections_respect_the_limit(total in 1usize..20, pct in 0u32..=100) {
            let mut ejected = 0;
            while may_eject(ejected, total, pct) {
                ejected += 1;
            }
            prop_assert!(ejected * 100 <= total * pct as usize);
            prop_assert!((ejected + 1) * 100 > total * pct as usize);
        }
    }

    /// Slow start counts from the end of an ejection: also one whose time is up but that
    /// housekeeping has not ended yet, never one still running.
    #[test]
    fn an_ejection_ends_when_its_time_is_up_or_a_connect_succeeds() {
        let a = EjectionState::default();
        let policy = EjectionPolicy {
            eject_after: 1,
            base: Duration::from_millis(100),
            max_percent: 100,
        };
        assert_eq!(a.ejection_ended_at(5), 0);
        a.record_failure([&a].into_iter(), policy, 10);
        assert_eq!(a.ejection_ended_at(50), 0, "still ejected");
        assert_eq!(a.ejection_ended_at(120), 110, "time up, not yet restored");
        assert!(a.restore_if_expired(130));
        assert_eq!(a.ejection_ended_at(140), 130);
        a.record_failure([&a].into_iter(), policy, 200);
        assert!(a.record_success(policy, 220));
        assert_eq!(a.ejection_ended_at(230), 220);
    }

    #[test]
    fn a_backend_is_ejected_after_consecutive_failures_with_growing_backoff() {
        let (a, b) = (EjectionState::default(), EjectionState::default());
        let peers = || [&a, &b].into_iter();
        let policy = EjectionPolicy {
            eject_after: 2,
            base: Duration::from_millis(100),
            max_percent: 50,
        };
        assert_eq!(
            a.record_failure(peers(), policy, 10),
            FailureOutcome::Counted
        );
        assert_eq!(
            a.record_failure(peers(), policy, 10),
            FailureOutcome::Ejected(Duration::from_millis(100))
        );
        assert!(a.is_ejected(50));
        // The second backend may not be ejected too: that would be 100%.
        b.record_failure(peers(), policy, 20);
        assert_eq!(
            b.record_failure(peers(), policy, 20),
            FailureOutcome::AtEjectionLimit
        );
        assert!(!b.is_ejected(20));
        // Restored when the time is up; the next ejection lasts twice as long.
        assert!(!a.restore_if_expired(50));
        assert!(a.restore_if_expired(111));
        assert!(!a.is_ejected(111));
        a.record_failure(peers(), policy, 120);
        assert_eq!(
            a.record_failure(peers(), policy, 120),
            FailureOutcome::Ejected(Duration::from_millis(200))
        );
        // A success ends an ejection at once (a panic pick got through).
        assert!(a.record_success(policy, 130));
        assert!(!a.is_ejected(130));
        // Healthy long enough: the backoff starts over.
        a.record_success(policy, 130 + 500);
        assert_eq!(a.ejections.load(Ordering::Relaxed), 0);
        assert_eq!(
            ejection_length(Duration::from_secs(1), 40),
            Duration::from_secs(64)
        );
    }
}
