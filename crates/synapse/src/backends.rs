//! The backend set of one service and what synapse remembers about each backend.
//!
//! A [`BackendSet`] is immutable: every registry change builds a new one with [`update`],
//! a pure function of the old set and the new list of instances, and the service swaps it
//! in atomically (readers on the accept path never lock). What must survive a change does,
//! because the per-backend [`Stats`] (connection counts, failures, ejection) live behind an
//! `Arc` that the new set shares with the old one for every backend that stays.
//!
//! A backend is identified by the address dialled (`host:port`): that is what fails,
//! what gets ejected, and what connections are open to. A backend that leaves the registry
//! moves to `draining`: no new connections, the live ones run on until they close (or its
//! drain token is cancelled after `drain_timeout`), and it is forgotten once idle.
//!
//! Ejection decisions are pure functions too ([`may_eject`], [`ejection_length`]); the
//! clock is passed in as milliseconds since a process-wide origin ([`now_ms`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// One routable instance as the registry (or the cache, or `default_servers`) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Instance id in the registry (`default:<host>:<port>` for default servers).
    pub id: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub zone: Option<String>,
}

impl BackendSpec {
    pub fn endpoint(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

/// Milliseconds since the first call in this process; monotonic.
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    // Start at 1 so that 0 can mean "never" in atomics.
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Counters and ejection state of one backend, shared by every set that contains it and by
/// its live connections.
#[derive(Debug)]
pub struct Stats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Requests it closed the connection on before answering (with `retry_unanswered`).
    pub unanswered: AtomicU64,
    pub consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the backend is ejected; 0 when not ejected.
    pub ejected_until: AtomicU64,
    /// Ejections in a row, which lengthen the next one.
    pub ejections: AtomicU32,
    /// When the last ejection ended, to forget old ejections once healthy long enough.
    pub last_ejection_end: AtomicU64,
    /// Its DNS name's addresses (unused for an IP literal), kept across set updates with
    /// the rest of this struct.
    pub resolution: crate::resolve::Resolution,
    /// Cancelled when the backend has drained for `drain_timeout`; connections watch it.
    /// Replaced by a fresh token when a draining backend returns.
    pub drain: ArcSwap<CancellationToken>,
    /// [`now_ms`] when a draining backend was first seen without connections (0: not yet).
    pub drained_at: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            resolution: Default::default(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejection_end: AtomicU64::new(0),
            drain: ArcSwap::from_pointee(CancellationToken::new()),
            drained_at: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// A backend in a set: its description plus its shared stats.
#[derive(Debug, Clone)]
pub struct Backend {
    pub spec: BackendSpec,
    pub stats: Arc<Stats>,
}

/// Where a service's current backends came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Etcd,
    Cache,
    Defaults,
}

/// An immutable snapshot of one service's backends.
#[derive(Debug, Clone, Default)]
pub struct BackendSet {
    /// Receive new connections, in a stable order (by instance id).
    pub active: Vec<Backend>,
    /// Left the registry; only their live connections remain.
    pub draining: Vec<Backend>,
    /// Smooth weighted round-robin order over `active` (see [`crate::balance::schedule`]).
    pub schedule: Vec<usize>,
}

/// What changed between two sets, for logs and drain timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetEvent {
    Added(BackendSpec),
    /// Weight, zone or id changed; stats kept.
    Updated {
        from: BackendSpec,
        to: BackendSpec,
    },
    /// Left the set; drains.
    Removed(BackendSpec),
    /// A draining backend came back before it was forgotten.
    Revived(BackendSpec),
}

/// The set after the registry said `specs` is the list of instances: stats carried over
/// for every backend that stays (or returns from draining), removed ones draining while
/// they have connections. Duplicate endpoints keep their first spec. O(n) in the size of
/// the two sets (hash lookups by endpoint), so a service of thousands of instances is
/// rebuilt in milliseconds.
pub fn update(old: &BackendSet, specs: Vec<BackendSpec>) -> (BackendSet, Vec<SetEvent>) {
    let by_endpoint = |backends: &[Backend]| -> HashMap<(String, u16), Backend> {
        backends
            .iter()
            .map(|b| ((b.spec.host.clone(), b.spec.port), b.clone()))
            .collect()
    };
    let mut old_active = by_endpoint(&old.active);
    let mut old_draining = by_endpoint(&old.draining);
    let mut events = Vec::new();
    let mut active: Vec<Backend> = Vec::with_capacity(specs.len());
    let mut taken: HashSet<(String, u16)> = HashSet::with_capacity(specs.len());
    for spec in specs {
        let endpoint = (spec.host.clone(), spec.port);
        if !taken.insert(endpoint.clone()) {
            continue;
        }
        let stats = if let Some(b) = old_active.remove(&endpoint) {
            if b.spec != spec {
                events.push(SetEvent::Updated {
                    from: b.spec,
                    to: spec.clone(),
                });
            }
            b.stats
        } else if let Some(b) = old_draining.remove(&endpoint) {
            events.push(SetEvent::Revived(spec.clone()));
            b.stats
        } else {
            events.push(SetEvent::Added(spec.clone()));
            Arc::new(Stats::default())
        };
        active.push(Backend { spec, stats });
    }
    // What is left of the old sets did not stay; keep their order for stable logs.
    let mut draining = Vec::new();
    for b in &old.active {
        if old_active.contains_key(&(b.spec.host.clone(), b.spec.port)) {
            events.push(SetEvent::Removed(b.spec.clone()));
            if b.stats.active() > 0 {
                draining.push(b.clone());
            }
        }
    }
    for b in &old.draining {
        if old_draining.contains_key(&(b.spec.host.clone(), b.spec.port)) && b.stats.active() > 0 {
            draining.push(b.clone());
        }
    }
    let schedule =
        crate::balance::schedule(&active.iter().map(|b| b.spec.weight).collect::<Vec<_>>());
    (
        BackendSet {
            active,
            draining,
            schedule,
        },
        events,
    )
}

/// How long a drained backend (left the registry, last connection closed) stays in the set,
/// and so on the status page, before it is forgotten: long enough for an operator watching
/// its `active` count to see it reach 0. The next registry change forgets it sooner.
pub const DRAINED_SHOWN_FOR: Duration = Duration::from_secs(10);

/// The set without the draining backends that have had no connection for
/// [`DRAINED_SHOWN_FOR`] at `now`; `None` when there is nothing to forget. Marks the time a
/// draining backend is first seen without connections.
pub fn prune(set: &BackendSet, now: u64) -> Option<BackendSet> {
    let shown_for = DRAINED_SHOWN_FOR.as_millis() as u64;
    let keep = |b: &Backend| {
        if b.stats.active() > 0 {
            b.stats.drained_at.store(0, Ordering::Relaxed);
            return true;
        }
        let since =
            match b
                .stats
                .drained_at
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        now.saturating_sub(since) < shown_for
    };
    if set.draining.iter().all(keep) {
        return None;
    }
    Some(BackendSet {
        active: set.active.clone(),
        draining: set.draining.iter().filter(|b| keep(b)).cloned().collect(),
        schedule: set.schedule.clone(),
    })
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

/// Outcome of recording a connect failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    Ejected(Duration),
    /// Would be ejected but the service is at `max_ejection_percent`.
    AtEjectionLimit,
}

/// Records a failed connect to `backend` of `set`. The caller serialises calls per service
/// so that the ejection limit holds under concurrent failures.
pub fn record_failure(
    set: &BackendSet,
    backend: &Stats,
    policy: EjectionPolicy,
    now: u64,
) -> FailureOutcome {
    backend.connect_failures.fetch_add(1, Ordering::Relaxed);
    let consecutive = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if consecutive < policy.eject_after || backend.is_ejected(now) {
        return FailureOutcome::Counted;
    }
    let ejected = set
        .active
        .iter()
        .filter(|b| b.stats.is_ejected(now))
        .count();
    if !may_eject(ejected, set.active.len(), policy.max_percent) {
        return FailureOutcome::AtEjectionLimit;
    }
    let ejections = backend.ejections.fetch_add(1, Ordering::Relaxed);
    let length = ejection_length(policy.base, ejections);
    backend
        .ejected_until
        .store(now + length.as_millis() as u64, Ordering::Relaxed);
    backend.consecutive_failures.store(0, Ordering::Relaxed);
    FailureOutcome::Ejected(length)
}

/// Records a successful connect; returns true when it ended an ejection early (a panic
/// pick reached an ejected backend).
pub fn record_success(backend: &Stats, policy: EjectionPolicy, now: u64) -> bool {
    backend.consecutive_failures.store(0, Ordering::Relaxed);
    let restored = backend.ejected_until.swap(0, Ordering::Relaxed) > now;
    if restored {
        backend.last_ejection_end.store(now, Ordering::Relaxed);
    }
    let ejections = backend.ejections.load(Ordering::Relaxed);
    if ejections > 0 {
        // Healthy for as long as the next ejection would last: start over from `base`.
        let end = backend.last_ejection_end.load(Ordering::Relaxed);
        let next = ejection_length(policy.base, ejections).as_millis() as u64;
        if end > 0 && now > end + next {
            backend.ejections.store(0, Ordering::Relaxed);
        }
    }
    restored
}

/// Ends ejections whose time is up; returns the specs restored, for the log.
pub fn restore_expired(set: &BackendSet, now: u64) -> Vec<BackendSpec> {
    let mut restored = Vec::new();
    for b in &set.active {
        let until = b.stats.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && until <= now
            && b.stats
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.stats.last_ejection_end.store(now, Ordering::Relaxed);
            restored.push(b.spec.clone());
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(id: &str, port: u16, weight: u32) -> BackendSpec {
        BackendSpec {
            id: id.into(),
            host: "127.0.0.1".into(),
            port,
            weight,
            zone: None,
        }
    }

    fn any_specs() -> impl Strategy<Value = Vec<BackendSpec>> {
        proptest::collection::vec((0u16..8, 0u32..3), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(port, weight)| spec(&format!("i{port}-{weight}"), 1000 + port, weight))
                .collect()
        })
    }

    fn endpoints(backends: &[Backend]) -> Vec<(String, u16)> {
        backends
            .iter()
            .map(|b| (b.spec.host.clone(), b.spec.port))
            .collect()
    }

    proptest! {
        /// Whatever sequence of registry views arrives, each new set routes exactly the new
        /// instances, keeps the stats of those that stay, drains removed backends that
        /// still have connections and forgets the idle ones.
        #[test]
        fn updates_keep_stats_and_drain_removed_backends(views in proptest::collection::vec((any_specs(), proptest::collection::vec(0u64..2, 8)), 1..8)) {
            let mut set = BackendSet::default();
            for (specs, actives) in views {
                // Some backends have live connections at the moment of the change.
                for (b, a) in set.active.iter().zip(&actives) {
                    b.stats.active.store(*a, Ordering::Relaxed);
                }
                let (next, events) = update(&set, specs.clone());
                let mut expected: Vec<(String, u16)> = Vec::new();
                for s in &specs {
                    if !expected.contains(&(s.host.clone(), s.port)) {
                        expected.push((s.host.clone(), s.port));
                    }
                }
                prop_assert_eq!(endpoints(&next.active), expected.clone());
                for b in &next.active {
                    if let Some(old) = set.active.iter().chain(&set.draining).find(|o| o.spec.endpoint() == b.spec.endpoint()) {
                        prop_assert!(Arc::ptr_eq(&old.stats, &b.stats), "stats lost for {:?}", b.spec);
                    }
                }
                for old in set.active.iter().chain(&set.draining) {
                    let stays = expected.contains(&(old.spec.host.clone(), old.spec.port));
                    let drains = next.draining.iter().any(|d| Arc::ptr_eq(&d.stats, &old.stats));
                    prop_assert_eq!(drains, !stays && old.stats.active() > 0, "{:?}", old.spec);
                }
                for d in &next.draining {
                    prop_assert!(!next.active.iter().any(|a| a.spec.endpoint() == d.spec.endpoint()));
                }
                let removed = events.iter().filter(|e| matches!(e, SetEvent::Removed(_))).count();
                let gone = set.active.iter().filter(|o| !expected.contains(&(o.spec.host.clone(), o.spec.port))).count();
                prop_assert_eq!(removed, gone);
                let scheduled: usize = next.active.iter().filter(|b| b.spec.weight > 0).count();
                prop_assert_eq!(next.schedule.iter().collect::<std::collections::BTreeSet<_>>().len(), scheduled);
                set = next;
            }
        }

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

    #[test]
    fn a_backend_is_ejected_after_consecutive_failures_with_growing_backoff() {
        let (set, _) = update(
            &BackendSet::default(),
            vec![spec("a", 1, 1), spec("b", 2, 1)],
        );
        let policy = EjectionPolicy {
            eject_after: 2,
            base: Duration::from_millis(100),
            max_percent: 50,
        };
        let a = &set.active[0].stats;
        assert_eq!(record_failure(&set, a, policy, 10), FailureOutcome::Counted);
        assert_eq!(
            record_failure(&set, a, policy, 10),
            FailureOutcome::Ejected(Duration::from_millis(100))
        );
        assert!(a.is_ejected(50));
        // The second backend may not be ejected too: that would be 100%.
        let b = &set.active[1].stats;
        record_failure(&set, b, policy, 20);
        assert_eq!(
            record_failure(&set, b, policy, 20),
            FailureOutcome::AtEjectionLimit
        );
        assert!(!b.is_ejected(20));
        // Restored when the time is up; the next ejection lasts twice as long.
        assert!(restore_expired(&set, 50).is_empty());
        assert_eq!(restore_expired(&set, 111).len(), 1);
        assert!(!a.is_ejected(111));
        record_failure(&set, a, policy, 120);
        assert_eq!(
            record_failure(&set, a, policy, 120),
            FailureOutcome::Ejected(Duration::from_millis(200))
        );
        // A success ends an ejection at once (a panic pick got through).
        assert!(record_success(a, policy, 130));
        assert!(!a.is_ejected(130));
        // Healthy long enough: the backoff starts over.
        record_success(a, policy, 130 + 500);
        assert_eq!(a.ejections.load(Ordering::Relaxed), 0);
        assert_eq!(
            ejection_length(Duration::from_secs(1), 40),
            Duration::from_secs(64)
        );
    }

    #[test]
    fn a_draining_backend_that_returns_keeps_its_stats() {
        let (set, _) = update(&BackendSet::default(), vec![spec("a", 1, 1)]);
        set.active[0].stats.active.store(1, Ordering::Relaxed);
        let (set2, events) = update(&set, vec![]);
        assert_eq!(events, vec![SetEvent::Removed(spec("a", 1, 1))]);
        assert_eq!(set2.draining.len(), 1);
        assert!(prune(&set2, 10).is_none());
        let (set3, events) = update(&set2, vec![spec("a2", 1, 5)]);
        assert_eq!(events, vec![SetEvent::Revived(spec("a2", 1, 5))]);
        assert!(Arc::ptr_eq(&set3.active[0].stats, &set.active[0].stats));
        let (set4, _) = update(&set3, vec![]);
        set4.draining[0].stats.active.store(0, Ordering::Relaxed);
        // Drained: still shown for a while, then forgotten.
        let shown = DRAINED_SHOWN_FOR.as_millis() as u64;
        assert!(prune(&set4, 1_000).is_none());
        assert!(prune(&set4, 1_000 + shown - 1).is_none());
        assert!(prune(&set4, 1_000 + shown).is_some_and(|s| s.draining.is_empty()));
    }
}
