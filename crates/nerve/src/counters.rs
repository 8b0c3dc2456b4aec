//! What nerve counts for `GET /metrics` beyond the state `/status` shows: per instance, its
//! checks by kind and result, their durations and its health transitions (counted by its
//! monitor, which holds the instance's [`InstanceCounters`] so a check costs no lookup);
//! per process, the registry writes of the registrar and the lease's own counters
//! ([`LeaseCounters`]). All atomics: counting takes no lock. Read at scrape time by
//! [`crate::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use daemon::metrics::{Histogram, HistogramSample, SHORT_SECONDS};
use registry::lease::LeaseCounters;

use crate::config::CheckKind;
use crate::health::Transition;

/// One instance's counters. Kept while the instance is configured (across reloads that
/// change it); an instance removed and added again starts from zero, as a new series.
#[derive(Debug)]
pub struct InstanceCounters {
    /// Checks run, by kind ([`CheckKind::index`]) then failed (0) / passed (1).
    checks: [[AtomicU64; 2]; CheckKind::ALL.len()],
    /// How long each check took, by kind. Checks are bounded by their timeout (1 s by
    /// default), so the short bounds (0.5 ms to 5 s) cover loopback connects up to slow
    /// exec checks.
    durations: [Histogram; CheckKind::ALL.len()],
    became_healthy: AtomicU64,
    became_unhealthy: AtomicU64,
}

impl Default for InstanceCounters {
    fn default() -> Self {
        InstanceCounters {
            checks: Default::default(),
            durations: std::array::from_fn(|_| Histogram::new(SHORT_SECONDS)),
            became_healthy: AtomicU64::new(0),
            became_unhealthy: AtomicU64::new(0),
        }
    }
}

impl InstanceCounters {
    /// Counts one check that ran for `took`.
    pub fn check(&self, kind: CheckKind, passed: bool, took: Duration) {
        if let Some(c) = self
            .checks
            .get(kind.index())
            .and_then(|c| c.get(usize::from(passed)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = self.durations.get(kind.index()) {
            h.observe(took);
        }
    }

    pub fn transition(&self, t: Transition) {
        let counter = match t {
            Transition::BecameHealthy => &self.became_healthy,
            Transition::BecameUnhealthy => &self.became_unhealthy,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Checks of `kind` that passed (or failed) so far.
    pub fn checks(&self, kind: CheckKind, passed: bool) -> u64 {
        self.checks
            .get(kind.index())
            .and_then(|c| c.get(usize::from(passed)))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn durations(&self, kind: CheckKind) -> Option<HistogramSample> {
        self.durations.get(kind.index()).map(Histogram::sample)
    }

    /// Transitions to healthy (`true`) or to unhealthy (`false`) so far.
    pub fn transitions(&self, to_healthy: bool) -> u64 {
        let counter = if to_healthy {
            &self.became_healthy
        } else {
            &self.became_unhealthy
        };
        counter.load(Ordering::Relaxed)
    }
}

/// A write to etcd, the `op` label of `nerve_registry_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Put,
    Delete,
}

impl WriteOp {
    pub const ALL: [WriteOp; 2] = [WriteOp::Put, WriteOp::Delete];

    pub fn name(self) -> &'static str {
        match self {
            WriteOp::Put => "put",
            WriteOp::Delete => "delete",
        }
    }

    fn index(self) -> usize {
        match self {
            WriteOp::Put => 0,
            WriteOp::Delete => 1,
        }
    }
}

/// The process's counters; they outlive a reload that replaces the registrar and the lease.
#[derive(Debug, Default)]
pub struct ProcessCounters {
    /// Handed to every lease nerve starts.
    pub lease: Arc<LeaseCounters>,
    /// Writes etcd took, by [`WriteOp::index`].
    writes: [AtomicU64; 2],
    /// Writes etcd answered with an error retrying does not fix, by [`WriteOp::index`].
    refused: [AtomicU64; 2],
}

impl ProcessCounters {
    /// Counts a write etcd took (`true`) or refused (`false`).
    pub fn write(&self, op: WriteOp, taken: bool) {
        let counters = if taken { &self.writes } else { &self.refused };
        if let Some(c) = counters.get(op.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes of `op` etcd took (`true`) or refused (`false`) so far.
    pub fn writes(&self, op: WriteOp, taken: bool) -> u64 {
        let counters = if taken { &self.writes } else { &self.refused };
        counters
            .get(op.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_counted_by_kind_and_result() {
        let c = InstanceCounters::default();
        c.check(CheckKind::Tcp, true, Duration::from_millis(1));
        c.check(CheckKind::Tcp, true, Duration::from_millis(2));
        c.check(CheckKind::Tcp, false, Duration::from_secs(10));
        c.check(CheckKind::Exec, false, Duration::from_millis(30));
        assert_eq!(c.checks(CheckKind::Tcp, true), 2);
        assert_eq!(c.checks(CheckKind::Tcp, false), 1);
        assert_eq!(c.checks(CheckKind::Exec, false), 1);
        assert_eq!(c.checks(CheckKind::Http, true), 0);
        let tcp = c
            .durations(CheckKind::Tcp)
            .unwrap_or_else(|| panic!("no tcp"));
        assert_eq!(tcp.count, 3);
        assert_eq!(tcp.buckets.last(), Some(&(f64::INFINITY, 1)));
        let http = c
            .durations(CheckKind::Http)
            .unwrap_or_else(|| panic!("no http"));
        assert_eq!(http.count, 0);
    }

    #[test]
    fn transitions_and_writes_are_counted_apart() {
        let c = InstanceCounters::default();
        c.transition(Transition::BecameHealthy);
        c.transition(Transition::BecameUnhealthy);
        c.transition(Transition::BecameHealthy);
        assert_eq!((c.transitions(true), c.transitions(false)), (2, 1));

        let p = ProcessCounters::default();
        p.write(WriteOp::Put, true);
        p.write(WriteOp::Put, true);
        p.write(WriteOp::Delete, false);
        assert_eq!(p.writes(WriteOp::Put, true), 2);
        assert_eq!(p.writes(WriteOp::Put, false), 0);
        assert_eq!(p.writes(WriteOp::Delete, true), 0);
        assert_eq!(p.writes(WriteOp::Delete, false), 1);
    }
}
