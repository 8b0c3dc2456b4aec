//! One service's state at run time, below everything that uses it (the accept loop and the
//! registry follower in [`crate::service`], connections in [`crate::forward`], the DNS
//! refresher in [`crate::resolve`]): a handle over private fields, read and changed only
//! through its methods (the shape of mini-redis's `Db` and nerve's `state.rs`).
//!
//! Everything read on the accept path (the configuration, the backend set) is an
//! `ArcSwap`: a reload or a registry change swaps in a new value without blocking anyone.
//!
//! The follower's source choice (etcd's view, else the cache file's, else
//! `default_servers`) is published on a watch channel ([`ServiceState::publish_choice`]);
//! whoever needs it subscribes (the cache file writer) or reads its latest value (the
//! status page, a follower that replaces this one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, Guard};
use registry::discovery::{Instances, ServiceView};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backends::{now_ms, Backend, BackendSet, Source};
use crate::config::ServiceConfig;
use crate::ejection::Ejector;
use crate::limit::Limit;
use crate::resolution::is_name;
use crate::slow_start;
use crate::traffic::{Durations, Traffic, TrafficStatus};

/// At most one warning per service per this period about connections that found no backend.
const UNSERVED_WARN_EVERY: u64 = 5_000;

/// Whether a repeated warning last logged at `last` (0: never; times from [`now_ms`]) is
/// due again at `now`.
pub fn warning_due(last: u64, now: u64) -> bool {
    last == 0 || now.saturating_sub(last) >= UNSERVED_WARN_EVERY
}

/// The follower's choice of backends and what it was made from, as its observers see it.
#[derive(Debug, Clone, Default)]
pub struct Chosen {
    /// etcd's latest view; `None` until the follower's discovery first answers.
    pub view: Option<ServiceView>,
    /// The registry instances served (etcd's, else the cache file's) and their source, for a
    /// follower that replaces this one.
    pub known: Option<(Arc<Instances>, Source)>,
    /// Where the backends in service come from (`None`: nothing is known yet).
    pub source: Option<Source>,
    /// The last confirmation from etcd (revision, time), kept while a new discovery has
    /// not answered yet.
    pub synced: Option<(i64, SystemTime)>,
}

/// State of one service shared by its accept loop, its connections, its follower and its
/// DNS refresher.
pub struct ServiceState {
    name: String,
    /// The span every log line about the service is recorded in.
    span: tracing::Span,
    config: ArcSwap<ServiceConfig>,
    /// synapse's own zone, for affinity.
    zone: ArcSwap<Option<String>>,
    set: ArcSwap<BackendSet>,
    /// Round-robin position, shared by every pick of the service.
    cursor: AtomicUsize,
    /// Cancelled when live connections must end (the shutdown timeout has passed).
    cut: CancellationToken,
    listen: Mutex<SocketAddr>,
    known: watch::Sender<bool>,
    /// Mirrors `known` for the accept path.
    ready: AtomicBool,
    ejector: Ejector,
    chosen: watch::Sender<Chosen>,
    limit: Limit,
    unserved: AtomicU64,
    unserved_warned: AtomicU64,
    recompute: Notify,
    traffic: Traffic,
}

impl ServiceState {
    pub fn new(
        config: ServiceConfig,
        zone: Option<String>,
        listen: SocketAddr,
        cut: CancellationToken,
    ) -> Arc<Self> {
        let span = tracing::info_span!("service", service = %config.name);
        Arc::new(ServiceState {
            name: config.name.clone(),
            ejector: Ejector::new(span.clone()),
            span,
            limit: Limit::new(config.max_connections),
            config: ArcSwap::from_pointee(config),
            zone: ArcSwap::from_pointee(zone),
            set: ArcSwap::from_pointee(BackendSet::default()),
            cursor: AtomicUsize::new(0),
            cut,
            listen: Mutex::new(listen),
            known: watch::channel(false).0,
            ready: AtomicBool::new(false),
            chosen: watch::channel(Chosen::default()).0,
            unserved: AtomicU64::new(0),
            unserved_warned: AtomicU64::new(0),
            recompute: Notify::new(),
            traffic: Traffic::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The span (`service = NAME`) for everything done on the service's behalf.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Runs `f` in the service's span unless a span (the service's, or a connection's
    /// under it) is current already: for the rare log lines of a connection, whose task
    /// does not pay for entering the service's span on every poll.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        if tracing::Span::current().is_none() {
            self.span.in_scope(f)
        } else {
            f()
        }
    }

    pub fn config(&self) -> Guard<Arc<ServiceConfig>> {
        self.config.load()
    }

    pub fn zone(&self) -> Guard<Arc<Option<String>>> {
        self.zone.load()
    }

    /// The backend set in service.
    pub fn set(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// Puts `set` in service.
    pub fn install_set(&self, set: Arc<BackendSet>) {
        self.set.store(set);
    }

    /// Puts `new` in service if `old` still is; whether it did.
    pub fn replace_set(&self, old: &Arc<BackendSet>, new: BackendSet) -> bool {
        let previous = self.set.compare_and_swap(old, Arc::new(new));
        Arc::ptr_eq(&previous, old)
    }

    /// The next round-robin position.
    pub fn next_cursor(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed)
    }

    /// Cancelled when live connections must end (the shutdown timeout has passed).
    pub fn cut(&self) -> &CancellationToken {
        &self.cut
    }

    /// The service's traffic counters.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The one owner of the service's ejection decisions.
    pub fn ejector(&self) -> &Ejector {
        &self.ejector
    }

    pub fn listen_addr(&self) -> SocketAddr {
        *self.listen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_listen_addr(&self, addr: SocketAddr) {
        *self.listen.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Whether a backend set is known.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A backend set is known from now on: waiting connections go ahead.
    pub fn mark_known(&self) {
        self.ready.store(true, Ordering::Release);
        self.known.send_replace(true);
    }

    /// Waits for a backend set, up to `startup_wait` from now (a connection calls it as it
    /// starts, so each connection waits up to `startup_wait` from its own accept); whether
    /// one is known.
    pub async fn wait_until_known(&self) -> bool {
        // The common case costs one atomic load; the watch (and its lock) is only for the
        // first seconds of a service's life.
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let mut known = self.known.subscribe();
        if *known.borrow_and_update() {
            return true;
        }
        let deadline = Instant::now() + self.config.load().startup_wait.get();
        let _ = tokio::time::timeout_at(deadline.into(), known.wait_for(|k| *k)).await;
        let ready = *known.borrow();
        ready
    }

    /// Installs a new configuration for the service (a reload that changed it in place).
    pub fn update_config(&self, config: ServiceConfig) {
        self.limit.set_max(config.max_connections);
        self.config.store(Arc::new(config));
        self.recompute.notify_one();
    }

    /// Caps the service's live connections below `max_connections` (`None`: no cap): its
    /// share of the descriptor limit ([`crate::descriptors`]).
    pub fn set_descriptor_cap(&self, cap: Option<u32>) {
        self.limit.set_cap(cap);
    }

    pub fn set_zone(&self, zone: Option<String>) {
        self.zone.store(Arc::new(zone));
    }

    /// Resolves when the backend set must be made again (the configuration changed).
    pub async fn recompute_wanted(&self) {
        self.recompute.notified().await
    }

    /// Publishes the follower's choice to its observers.
    pub fn publish_choice(&self, mut chosen: Chosen) {
        self.chosen.send_modify(|c| {
            if chosen.synced.is_none() {
                chosen.synced = c.synced;
            }
            *c = chosen;
        });
    }

    /// etcd confirmed the view at `revision` at `at` without changing it: recorded for the
    /// status page without waking the choice's subscribers.
    pub fn note_synced(&self, revision: i64, at: SystemTime) {
        self.chosen.send_if_modified(|c| {
            c.synced = Some((revision, at));
            false
        });
    }

    /// The follower's choices from now on (the current one first).
    pub fn subscribe_choice(&self) -> watch::Receiver<Chosen> {
        self.chosen.subscribe()
    }

    /// The registry instances served last and their source, for a follower that replaces
    /// the running one.
    pub fn last_known(&self) -> Option<(Arc<Instances>, Source)> {
        self.chosen.borrow().known.clone()
    }

    /// A client connection was closed unserved; warns now and then, never per connection.
    pub fn note_unserved(&self, why: &str) {
        let count = self.unserved.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.unserved_warned.load(Ordering::Relaxed);
        let warn = warning_due(last, now)
            && self
                .unserved_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        self.in_scope(|| {
            if warn {
                tracing::warn!(
                    reason = why,
                    unserved_total = count,
                    "closing client connections unserved"
                );
            } else {
                tracing::debug!(reason = why, "client connection closed unserved");
            }
        })
    }

    /// What the registry said, for the status page.
    fn registry(&self) -> RegistryState {
        let chosen = self.chosen.borrow();
        let mut registry = RegistryState {
            source: chosen.source,
            ..RegistryState::default()
        };
        if let Some((revision, last_sync)) = chosen.synced {
            registry.revision = revision;
            registry.last_sync_unix_ms = unix_ms(last_sync);
        }
        if let Some(v) = &chosen.view {
            registry.connected = v.connected;
            registry.grace = v.grace.as_ref().map(|g| GraceState {
                reason: g.reason.clone(),
                held_instances: g.held,
                until_unix_ms: unix_ms(g.until),
            });
        }
        registry
    }

    /// Everything the status page shows about the service.
    pub fn status(&self) -> ServiceStatus {
        let config = self.config.load();
        let set = self.set.load();
        let now = now_ms();
        let slow_start_ms = config.slow_start.map_or(0, |t| t.get().as_millis() as u64);
        let mut backends: Vec<BackendStatus> = set
            .active
            .iter()
            .map(|b| BackendStatus::of(b, false, now, slow_start_ms))
            .collect();
        backends.extend(
            set.draining
                .iter()
                .map(|b| BackendStatus::of(b, true, now, slow_start_ms)),
        );
        ServiceStatus {
            listen: self.listen_addr().to_string(),
            balance: config.balance().to_string(),
            ready: self.is_ready(),
            backends,
            registry: self.registry(),
            unserved_connections: self.unserved.load(Ordering::Relaxed),
            effective_max_connections: self.limit.capped(),
            traffic: self.traffic.status(self.ejector.ejections()),
            durations: self.traffic.durations(),
        }
    }
}

fn unix_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// The registry's state as the status page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegistryState {
    pub source: Option<Source>,
    pub connected: bool,
    pub revision: i64,
    /// Unix time in milliseconds of the last confirmation from etcd.
    pub last_sync_unix_ms: Option<u64>,
    /// Set while a grace period serves instances etcd no longer lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<GraceState>,
}

/// A grace period in progress, as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GraceState {
    pub reason: String,
    /// Instances served although etcd does not list them.
    pub held_instances: usize,
    /// When they are dropped at the latest (Unix time in milliseconds).
    pub until_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub listen: String,
    pub balance: String,
    /// Whether a backend set is known (connections are being forwarded).
    pub ready: bool,
    pub backends: Vec<BackendStatus>,
    pub registry: RegistryState,
    /// Client connections closed because no backend could be reached.
    pub unserved_connections: u64,
    /// The connection limit in force when the descriptor limit holds it below
    /// `max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_max_connections: Option<u32>,
    pub traffic: TrafficStatus,
    /// For `/metrics` only.
    #[serde(skip)]
    pub durations: Durations,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// The weight in the registry.
    pub weight: u32,
    /// The weight new connections see now: lower while it warms up (`slow_start`), 0
    /// once it has left the registry.
    pub effective_weight: u32,
    pub zone: Option<String>,
    /// `healthy`, `ejected`, `draining` (left the registry, connections still open) or
    /// `drained` (left the registry, its last connection closed; shown for
    /// 10 s, or until the next registry change).
    pub state: &'static str,
    pub active: u64,
    pub total: u64,
    pub connect_failures: u64,
    pub unanswered: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// Its peak-EWMA response time in milliseconds (http mode; 30 until measured).
    pub latency_ms: f64,
    /// For a DNS name: the addresses connections dial (empty until it first resolves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
}

impl BackendStatus {
    fn of(b: &Backend, left_registry: bool, now: u64, slow_start_ms: u64) -> Self {
        let s = &b.state;
        let effective_weight = if left_registry {
            0
        } else {
            slow_start::effective_weight(b.spec.weight, s.ramp(now, slow_start_ms))
        };
        let (bytes_to_backend, bytes_to_client) = s.bytes();
        let state = match (left_registry, s.active()) {
            (true, 0) => "drained",
            (true, _) => "draining",
            (false, _) if s.is_ejected(now) => "ejected",
            (false, _) => "healthy",
        };
        BackendStatus {
            id: b.spec.id.clone(),
            host: b.spec.host.clone(),
            port: b.spec.port,
            weight: b.spec.weight,
            effective_weight,
            zone: b.spec.zone.clone(),
            state,
            active: s.active(),
            total: s.total(),
            connect_failures: s.connect_failures(),
            unanswered: s.unanswered(),
            bytes_to_backend,
            bytes_to_client,
            latency_ms: s.latency().get() as f64 / 1e6,
            addresses: is_name(&b.spec.host).then(|| {
                s.resolution()
                    .addrs()
                    .map(|a| a.iter().map(ToString::to_string).collect())
                    .unwrap_or_default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_the_first_time_even_right_after_start() {
        assert!(warning_due(0, 1));
        assert!(!warning_due(1_000, 1_000 + UNSERVED_WARN_EVERY - 1));
        assert!(warning_due(1_000, 1_000 + UNSERVED_WARN_EVERY));
    }
}
