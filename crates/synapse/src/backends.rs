//! The backend set of one service and what synapse remembers about each backend.
//!
//! A [`BackendSet`] is immutable: every registry change builds a new one with [`update`],
//! a pure function of the old set and the new list of instances, and the service swaps it
//! in atomically (readers on the accept path never lock). What must survive a change does:
//! a [`Backend`] is its identity ([`BackendSpec`]) plus its mutable [`BackendState`]
//! (connection counts, ejection, DNS addresses, drain), behind an `Arc` that the new set
//! shares with the old one for every backend that stays.
//!
//! A backend is identified by the address dialled (`host:port`): that is what fails,
//! what gets ejected, and what connections are open to. A backend that leaves the registry
//! moves to `draining`: no new connections, the live ones run on until they close (or its
//! drain token is cancelled after `drain_timeout`), and it is forgotten once idle.
//!
//! Ejection is [`crate::ejection`]'s; this module only keeps each backend's ejection state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::ejection::EjectionState;
use crate::latency::PeakEwma;
use crate::resolution::Resolution;
use crate::slow_start;
use crate::traffic::ByteCounts;

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

pub use crate::ejection::now_ms;

/// What synapse keeps about one backend across set updates (the mutable part of a backend,
/// apart from its identity, the [`BackendSpec`]): connection counters, ejection state, DNS
/// addresses and drain state. Shared by every set that contains the backend and by its live
/// connections.
#[derive(Debug)]
pub struct BackendState {
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    /// Requests it closed the connection on before answering (with `retry_unanswered`).
    unanswered: AtomicU64,
    bytes: ByteCounts,
    ejection: EjectionState,
    /// Its DNS name's addresses (unused for an IP literal).
    resolution: Resolution,
    /// Its response time (http mode).
    latency: PeakEwma,
    /// Cancelled when the backend has drained for `drain_timeout`; connections watch it.
    /// Replaced by a fresh token when a draining backend returns.
    drain: ArcSwap<CancellationToken>,
    /// [`now_ms`] when a draining backend was first seen without connections (0: not yet).
    drained_at: AtomicU64,
    /// [`now_ms`] when it joined a set that had other backends, or came back to it
    /// (0: it was there from the start): where slow start counts from.
    joined_at: AtomicU64,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState {
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            bytes: ByteCounts::default(),
            ejection: EjectionState::default(),
            resolution: Resolution::default(),
            latency: PeakEwma::default(),
            drain: ArcSwap::from_pointee(CancellationToken::new()),
            drained_at: AtomicU64::new(0),
            joined_at: AtomicU64::new(0),
        }
    }
}

impl BackendState {
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejection.is_ejected(now)
    }

    pub fn ejection(&self) -> &EjectionState {
        &self.ejection
    }

    /// Its peak-EWMA response time (http mode).
    pub fn latency(&self) -> &PeakEwma {
        &self.latency
    }

    pub fn resolution(&self) -> &Resolution {
        &self.resolution
    }

    /// Open connections.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections opened since the backend appeared.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// A connection to it opens (see [`BackendState::disconnected`]).
    pub fn connected(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`BackendState::connected`] ends.
    pub fn disconnected(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn count_connect_failure(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` more were relayed to the backend (`to_backend`) or from it.
    pub fn moved(&self, to_backend: bool, bytes: u64) {
        self.bytes.add(to_backend, bytes);
    }

    /// Bytes relayed (to the backend, to clients) since the backend appeared.
    pub fn bytes(&self) -> (u64, u64) {
        self.bytes.get()
    }

    pub fn count_unanswered(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
    }

    /// The token its connections watch: cancelled once it has drained for `drain_timeout`.
    pub fn drain_token(&self) -> Arc<CancellationToken> {
        self.drain.load_full()
    }

    /// Closes its remaining connections (`drain_timeout` has passed).
    pub fn cut_connections(&self) {
        self.drain.load().cancel();
    }

    /// Since when it has been warming up ([`crate::slow_start`]) at `now`: the later of
    /// joining the set and the end of its last ejection; 0 if neither happened.
    pub fn warming_since(&self, now: u64) -> u64 {
        let joined = self.joined_at.load(Ordering::Relaxed);
        joined.max(self.ejection.ejection_ended_at(now))
    }

    /// Where it stands in its slow start at `now` with a window of `slow_start_ms` (0:
    /// off): per mille of its share.
    pub fn ramp(&self, now: u64, slow_start_ms: u64) -> u32 {
        if slow_start_ms == 0 {
            return slow_start::FULL;
        }
        match self.warming_since(now) {
            0 => slow_start::FULL,
            since => slow_start::ramp_permille(now.saturating_sub(since), slow_start_ms),
        }
    }

    /// It is back in the registry: connections are no longer cut, nor is it drained.
    pub fn revived(&self) {
        if self.drain.load().is_cancelled() {
            self.drain.store(Arc::new(CancellationToken::new()));
        }
        self.drained_at.store(0, Ordering::Relaxed);
    }
}

/// A backend in a set: its identity plus its shared mutable state.
#[derive(Debug, Clone)]
pub struct Backend {
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
}

impl Backend {
    /// `host:port`, for logs (formatted only when shown).
    pub fn addr(&self) -> HostPort<'_> {
        HostPort(&self.spec.host, self.spec.port)
    }
}

/// `host:port` of a backend, as logs show it.
#[derive(Debug, Clone, Copy)]
pub struct HostPort<'a>(&'a str, u16);

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
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
///
/// A backend that joins (or comes back to) a set that has other backends is stamped with
/// `now` for slow start; the first backends of a service are not: they share alike.
pub fn update(old: &BackendSet, specs: Vec<BackendSpec>, now: u64) -> (BackendSet, Vec<SetEvent>) {
    let by_endpoint = |backends: &[Backend]| -> HashMap<(String, u16), Backend> {
        backends
            .iter()
            .map(|b| ((b.spec.host.clone(), b.spec.port), b.clone()))
            .collect()
    };
    let joins_others = !old.active.is_empty();
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
        let state = if let Some(b) = old_active.remove(&endpoint) {
            if b.spec != spec {
                events.push(SetEvent::Updated {
                    from: b.spec,
                    to: spec.clone(),
                });
            }
            b.state
        } else if let Some(b) = old_draining.remove(&endpoint) {
            events.push(SetEvent::Revived(spec.clone()));
            if joins_others {
                b.state.joined_at.store(now, Ordering::Relaxed);
            }
            b.state
        } else {
            events.push(SetEvent::Added(spec.clone()));
            let state = BackendState::default();
            if joins_others {
                state.joined_at.store(now, Ordering::Relaxed);
            }
            Arc::new(state)
        };
        active.push(Backend { spec, state });
    }
    // What is left of the old sets did not stay; keep their order for stable logs.
    let mut draining = Vec::new();
    for b in &old.active {
        if old_active.contains_key(&(b.spec.host.clone(), b.spec.port)) {
            events.push(SetEvent::Removed(b.spec.clone()));
            if b.state.active() > 0 {
                draining.push(b.clone());
            }
        }
    }
    for b in &old.draining {
        if old_draining.contains_key(&(b.spec.host.clone(), b.spec.port)) && b.state.active() > 0 {
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
        let drained_at = &b.state.drained_at;
        if b.state.active() > 0 {
            drained_at.store(0, Ordering::Relaxed);
            return true;
        }
        let since = drained_at
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .map_or_else(|since| since, |_| now);
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
        fn updates_keep_stats_and_drain_removed_backends(
            views in proptest::collection::vec((any_specs(), proptest::collection::vec(0u64..2, 8)), 1..8),
        ) {
            let mut set = BackendSet::default();
            for (specs, actives) in views {
                // Some backends have live connections at the moment of the change.
                for (b, a) in set.active.iter().zip(&actives) {
                    b.state.active.store(*a, Ordering::Relaxed);
                }
                let (next, events) = update(&set, specs.clone(), 1);
                let mut expected: Vec<(String, u16)> = Vec::new();
                for s in &specs {
                    if !expected.contains(&(s.host.clone(), s.port)) {
                        expected.push((s.host.clone(), s.port));
                    }
                }
                prop_assert_eq!(endpoints(&next.active), expected.clone());
                for b in &next.active {
                    let old = set.active.iter().chain(&set.draining);
                    if let Some(old) = old.clone().find(|o| o.spec.endpoint() == b.spec.endpoint()) {
                        prop_assert!(Arc::ptr_eq(&old.state, &b.state), "stats lost for {:?}", b.spec);
                    }
                }
                for old in set.active.iter().chain(&set.draining) {
                    let stays = expected.contains(&(old.spec.host.clone(), old.spec.port));
                    let drains = next.draining.iter().any(|d| Arc::ptr_eq(&d.state, &old.state));
                    prop_assert_eq!(drains, !stays && old.state.active() > 0, "{:?}", old.spec);
                }
                for d in &next.draining {
                    prop_assert!(!next.active.iter().any(|a| a.spec.endpoint() == d.spec.endpoint()));
                }
                let removed = events.iter().filter(|e| matches!(e, SetEvent::Removed(_))).count();
                let gone = set.active.iter();
                let gone = gone.filter(|o| !expected.contains(&(o.spec.host.clone(), o.spec.port))).count();
                prop_assert_eq!(removed, gone);
                let scheduled: usize = next.active.iter().filter(|b| b.spec.weight > 0).count();
                prop_assert_eq!(next.schedule.iter().collect::<std::collections::BTreeSet<_>>().len(), scheduled);
                set = next;
            }
        }

    }

    #[test]
    fn a_draining_backend_that_returns_keeps_its_stats() {
        let (set, _) = update(&BackendSet::default(), vec![spec("a", 1, 1)], 1);
        set.active[0].state.active.store(1, Ordering::Relaxed);
        let (set2, events) = update(&set, vec![], 1);
        assert_eq!(events, vec![SetEvent::Removed(spec("a", 1, 1))]);
        assert_eq!(set2.draining.len(), 1);
        assert!(prune(&set2, 10).is_none());
        let (set3, events) = update(&set2, vec![spec("a2", 1, 5)], 1);
        assert_eq!(events, vec![SetEvent::Revived(spec("a2", 1, 5))]);
        assert!(Arc::ptr_eq(&set3.active[0].state, &set.active[0].state));
        let (set4, _) = update(&set3, vec![], 1);
        set4.draining[0].state.active.store(0, Ordering::Relaxed);
        // Drained: still shown for a while, then forgotten.
        let shown = DRAINED_SHOWN_FOR.as_millis() as u64;
        assert!(prune(&set4, 1_000).is_none());
        assert!(prune(&set4, 1_000 + shown - 1).is_none());
        assert!(prune(&set4, 1_000 + shown).is_some_and(|s| s.draining.is_empty()));
    }
}
