//! One configured service at run time: its listener and accept loop, and the task that
//! follows the registry and keeps the service's backend set current.
//!
//! The listener is bound at start so the address is known and clients can connect at
//! once, but a connection accepted before the service has any backend set (from etcd, the
//! cache file or `default_servers`) waits for one, up to `startup_wait`, rather than fail:
//! the startup window in which SmartStack's synapse answered 503s.
//!
//! Accepting takes a slot of `max_connections` ([`crate::limit`]) first, so at the limit
//! the accept loop simply waits and clients queue in the kernel's backlog (backpressure).
//!
//! Everything read on the accept path ([`Shared::config`], [`Shared::set`]) is an
//! `ArcSwap`: a reload or a registry change swaps in a new value without blocking anyone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use registry::discovery::{Discovery, Instances, ServiceView};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backends::{
    self, Backend, BackendSet, BackendSpec, EjectionPolicy, FailureOutcome, SetEvent, Source,
};
use crate::cache::CacheWriter;
use crate::config::{DefaultServer, ServiceConfig};
use crate::forward;
use crate::limit::Limit;
use crate::resolve;

/// How often ejections are checked for expiry and idle draining backends forgotten.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// At most one warning per service per this period about connections that found no backend.
const UNSERVED_WARN_EVERY: u64 = 5_000;

/// Whether a repeated warning last logged at `last` (0: never; times from
/// [`backends::now_ms`]) is due again at `now`.
fn warning_due(last: u64, now: u64) -> bool {
    last == 0 || now.saturating_sub(last) >= UNSERVED_WARN_EVERY
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

fn unix_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// State of one service shared by its accept loop, its connections and its follower.
pub struct Shared {
    pub name: String,
    pub config: ArcSwap<ServiceConfig>,
    /// synapse's own zone, for affinity.
    pub zone: ArcSwap<Option<String>>,
    pub set: ArcSwap<BackendSet>,
    /// Round-robin position, shared by every pick of the service.
    pub cursor: AtomicUsize,
    /// Cancelled when live connections must end (the shutdown timeout has passed).
    pub cut: CancellationToken,
    listen: Mutex<SocketAddr>,
    known: watch::Sender<bool>,
    /// Mirrors `known` for the accept path.
    ready: std::sync::atomic::AtomicBool,
    /// Serialises ejection decisions so that the ejection limit holds.
    ejection_lock: Mutex<()>,
    registry: Mutex<RegistryState>,
    limit: Limit,
    unserved: AtomicU64,
    unserved_warned: AtomicU64,
    recompute: Notify,
    /// The registry instances served last (from etcd or the cache), for a follower that
    /// replaces this one.
    last_known: Mutex<Option<(Arc<Instances>, Source)>>,
    /// Where etcd's views are recorded; swapped by a reload that changes `cache_file`.
    cache: ArcSwapOption<CacheWriter>,
}

impl Shared {
    pub fn new(
        config: ServiceConfig,
        zone: Option<String>,
        listen: SocketAddr,
        cut: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Shared {
            name: config.name.clone(),
            limit: Limit::new(config.max_connections),
            config: ArcSwap::from_pointee(config),
            zone: ArcSwap::from_pointee(zone),
            set: ArcSwap::from_pointee(BackendSet::default()),
            cursor: AtomicUsize::new(0),
            cut,
            listen: Mutex::new(listen),
            known: watch::channel(false).0,
            ready: std::sync::atomic::AtomicBool::new(false),
            ejection_lock: Mutex::new(()),
            registry: Mutex::new(RegistryState::default()),
            unserved: AtomicU64::new(0),
            unserved_warned: AtomicU64::new(0),
            recompute: Notify::new(),
            last_known: Mutex::new(None),
            cache: ArcSwapOption::empty(),
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        *self.listen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a backend set is known.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits for a backend set, up to `startup_wait` after `accepted` (when the waiting
    /// connection was accepted); whether one is known.
    pub async fn wait_until_known(&self, accepted: Instant) -> bool {
        // The common case costs one atomic load; the watch (and its lock) is only for the
        // first seconds of a service's life.
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let mut known = self.known.subscribe();
        if *known.borrow_and_update() {
            return true;
        }
        let deadline = accepted + self.config.load().startup_wait.get();
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

    /// Records etcd's views in `cache` from now on (`None`: nowhere). The follower writes
    /// the current view to a new writer at once, not at the next registry change.
    pub fn set_cache(&self, cache: Option<Arc<CacheWriter>>) {
        self.cache.store(cache);
        self.recompute.notify_one();
    }

    pub fn set_zone(&self, zone: Option<String>) {
        self.zone.store(Arc::new(zone));
    }

    /// A connect to `backend` failed: count it, maybe eject.
    pub fn connect_failed(
        &self,
        set: &BackendSet,
        backend: &Backend,
        policy: EjectionPolicy,
        error: &str,
    ) {
        let outcome = {
            let _serial = self
                .ejection_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            backends::record_failure(set, &backend.stats, policy, backends::now_ms())
        };
        backend.stats.resolution.mark_stale();
        let addr = format!("{}:{}", backend.spec.host, backend.spec.port);
        match outcome {
            FailureOutcome::Ejected(length) => {
                tracing::warn!(service = %self.name, backend = %addr, id = %backend.spec.id, %error, ejected_for = ?length, "backend ejected after consecutive connect failures")
            }
            FailureOutcome::AtEjectionLimit => {
                tracing::debug!(service = %self.name, backend = %addr, %error, "connect failed; not ejected: max_ejection_percent reached")
            }
            FailureOutcome::Counted => {
                tracing::debug!(service = %self.name, backend = %addr, %error, "connect failed; trying another backend")
            }
        }
    }

    /// A client connection was closed unserved; warns now and then, never per connection.
    pub fn note_unserved(&self, why: &str) {
        let count = self.unserved.fetch_add(1, Ordering::Relaxed) + 1;
        let now = backends::now_ms();
        let last = self.unserved_warned.load(Ordering::Relaxed);
        if warning_due(last, now)
            && self
                .unserved_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(service = %self.name, reason = why, unserved_total = count, "closing client connections unserved");
        } else {
            tracing::debug!(service = %self.name, reason = why, "client connection closed unserved");
        }
    }

    /// Records what the registry said, for the status page.
    fn record_registry(&self, view: Option<&ServiceView>) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.connected = false;
        registry.grace = None;
        if let Some(v) = view {
            registry.connected = v.connected;
            registry.revision = v.revision;
            registry.last_sync_unix_ms = unix_ms(v.last_sync);
            registry.grace = v.grace.as_ref().map(|g| GraceState {
                reason: g.reason.clone(),
                held_instances: g.held,
                until_unix_ms: unix_ms(g.until),
            });
        }
    }

    /// Everything the status page shows about the service.
    pub fn status(&self) -> ServiceStatus {
        let config = self.config.load();
        let set = self.set.load();
        let now = backends::now_ms();
        let describe = |b: &Backend, state: &'static str| BackendStatus {
            id: b.spec.id.clone(),
            host: b.spec.host.clone(),
            port: b.spec.port,
            weight: b.spec.weight,
            zone: b.spec.zone.clone(),
            state: match state {
                "healthy" if b.stats.is_ejected(now) => "ejected",
                "draining" if b.stats.active() == 0 => "drained",
                state => state,
            },
            active: b.stats.active(),
            total: b.stats.total.load(Ordering::Relaxed),
            connect_failures: b.stats.connect_failures.load(Ordering::Relaxed),
            unanswered: b.stats.unanswered.load(Ordering::Relaxed),
            addresses: resolve::is_name(&b.spec.host).then(|| {
                b.stats
                    .resolution
                    .addrs()
                    .map(|a| a.iter().map(ToString::to_string).collect())
                    .unwrap_or_default()
            }),
        };
        let mut backends: Vec<BackendStatus> =
            set.active.iter().map(|b| describe(b, "healthy")).collect();
        backends.extend(set.draining.iter().map(|b| describe(b, "draining")));
        ServiceStatus {
            listen: self.listen_addr().to_string(),
            balance: config.balance.to_string(),
            ready: self.is_ready(),
            backends,
            registry: self
                .registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            unserved_connections: self.unserved.load(Ordering::Relaxed),
            effective_max_connections: self.limit.capped(),
        }
    }
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
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub zone: Option<String>,
    /// `healthy`, `ejected`, `draining` (left the registry, connections still open) or
    /// `drained` (left the registry, its last connection closed; shown for
    /// [`backends::DRAINED_SHOWN_FOR`] or until the next registry change).
    pub state: &'static str,
    pub active: u64,
    pub total: u64,
    pub connect_failures: u64,
    pub unanswered: u64,
    /// For a DNS name: the addresses connections dial (empty until it first resolves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
}

/// Backends from registry instances, in instance-id order.
pub fn specs_from_instances(instances: &Instances) -> Vec<BackendSpec> {
    instances
        .iter()
        .map(|(id, r)| BackendSpec {
            id: id.clone(),
            host: r.host.clone(),
            port: r.port,
            weight: r.weight,
            zone: r.zone.clone(),
        })
        .collect()
}

pub fn specs_from_defaults(defaults: &[DefaultServer]) -> Vec<BackendSpec> {
    defaults
        .iter()
        .map(|d| BackendSpec {
            id: format!("default:{}:{}", d.host, d.port),
            host: d.host.clone(),
            port: d.port,
            weight: d.weight,
            zone: d.zone.clone(),
        })
        .collect()
}

/// Which backends to use: etcd's view once etcd has answered, before that the cache file's;
/// `default_servers` whenever the chosen source has no instance. `None` while nothing is
/// known (no etcd answer, no cache entry, no defaults).
pub fn choose(
    view: Option<&Instances>,
    cached: Option<&Instances>,
    defaults: &[DefaultServer],
) -> Option<(Vec<BackendSpec>, Source)> {
    let (instances, source) = match (view, cached) {
        (Some(v), _) => (Some(v), Source::Etcd),
        (None, Some(c)) => (Some(c), Source::Cache),
        (None, None) => (None, Source::Defaults),
    };
    match instances {
        Some(i) if !i.is_empty() => Some((specs_from_instances(i), source)),
        _ if !defaults.is_empty() => Some((specs_from_defaults(defaults), Source::Defaults)),
        Some(_) => Some((Vec::new(), source)),
        None => None,
    }
}

/// A running service: accept loop and registry follower.
pub struct ServiceRuntime {
    pub shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    accept: Option<tokio::task::JoinHandle<()>>,
    follow: tokio::task::JoinHandle<()>,
    resolve: tokio::task::JoinHandle<()>,
    pub connections: TaskTracker,
}

/// What a service's follower reads from besides its own config.
pub struct Sources {
    pub discovery: Discovery,
    /// Instances to serve until etcd answers (from the cache file, or the last view of a
    /// discovery being replaced).
    pub initial: Option<(Arc<Instances>, Source)>,
}

impl ServiceRuntime {
    pub fn start(shared: Arc<Shared>, listener: TcpListener, sources: Sources) -> Self {
        let stop_accepting = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
        ));
        let follow = tokio::spawn(follow(shared.clone(), sources));
        let resolve = tokio::spawn(resolve::refresh_loop(shared.clone()));
        ServiceRuntime {
            shared,
            stop_accepting,
            accept: Some(accept),
            follow,
            resolve,
            connections,
        }
    }

    /// Moves the service to a new listener; connections accepted on the old one run on.
    pub async fn rebind(&mut self, listener: TcpListener, addr: SocketAddr) {
        *self
            .shared
            .listen
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = addr;
        self.stop_accepting_only().await;
        self.stop_accepting = CancellationToken::new();
        self.accept = Some(tokio::spawn(accept_loop(
            self.shared.clone(),
            listener,
            self.stop_accepting.clone(),
            self.connections.clone(),
        )));
    }

    /// Closes the listener; everything else runs on.
    pub async fn stop_accepting_only(&mut self) {
        self.stop_accepting.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }

    /// Stops following the registry (at the very end of a shutdown).
    pub fn stop_following(&self) {
        self.follow.abort();
        self.resolve.abort();
    }

    /// Follows a new discovery (the etcd block changed); the current set is served until
    /// the new one answers.
    pub fn rediscover(&mut self, discovery: Discovery) {
        self.follow.abort();
        let initial = self
            .shared
            .last_known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.follow = tokio::spawn(follow(self.shared.clone(), Sources { discovery, initial }));
    }

    /// Stops accepting and following the registry; live connections run on (cut after
    /// `drain_timeout` if set). Returns the tracker to wait on them.
    pub async fn stop(mut self) -> TaskTracker {
        self.stop_accepting_only().await;
        self.follow.abort();
        self.resolve.abort();
        self.connections.close();
        if let Some(timeout) = self.shared.config.load().drain_timeout {
            let set = self.shared.set.load_full();
            let tracker = self.connections.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(timeout.get()) => {
                        for b in set.active.iter().chain(&set.draining) {
                            b.stats.drain.load().cancel();
                        }
                    }
                    _ = tracker.wait() => {}
                }
            });
        }
        self.connections.clone()
    }
}

impl Drop for ServiceRuntime {
    /// A runtime dropped without [`ServiceRuntime::stop`] (a `Synapse` dropped without
    /// shutdown) must not leave its listener and watch running in the background.
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.follow.abort();
        self.resolve.abort();
    }
}

/// A connection's slot of `max_connections`, given back when its task ends (or panics).
struct HeldSlot(Arc<Shared>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.limit.release();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let mut last_error_warned = 0u64;
    // Polled only once the token fires, not on every accept (two mutexes per poll).
    let stop = std::pin::pin!(stop.cancelled());
    let mut stopped = crate::quiet::polled_when_woken(stop);
    loop {
        let slot = tokio::select! {
            biased;
            _ = &mut stopped => return,
            slot = shared.limit.take() => slot,
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                slot.keep();
                let held = HeldSlot(shared.clone());
                connections.spawn(async move { forward::serve(&held.0, stream).await });
            }
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                let now = backends::now_ms();
                if warning_due(last_error_warned, now) {
                    last_error_warned = now;
                    tracing::warn!(service = %shared.name, error = %e, "accept failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Keeps the service's backend set in line with etcd (or the cache, or the defaults), and
/// does the housekeeping: expired ejections, forgotten drained backends, drain timeouts.
///
/// The watch channel keeps only the newest view, so a burst of registry changes costs one
/// rebuild per view the follower gets to, not one per change; and the rebuild (O(instances))
/// runs on the blocking pool, never on the workers that relay traffic.
async fn follow(shared: Arc<Shared>, sources: Sources) {
    let Sources { discovery, initial } = sources;
    let mut views = discovery.subscribe();
    let mut applied: Option<Applied> = None;
    // What was last given to which writer; a weak reference, so that a writer a reload
    // dropped is not kept alive (and writing) by this task.
    let mut cached_instances: Option<Arc<Instances>> = None;
    let mut cached_to: std::sync::Weak<CacheWriter> = std::sync::Weak::new();
    let (initial, initial_source) = match initial {
        Some((i, s)) => (Some(i), s),
        None => (None, Source::Cache),
    };
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let view: Option<ServiceView> = views.borrow_and_update().clone();
        let config = shared.config.load_full();
        let known = match &view {
            Some(v) => Some((v.instances.clone(), Source::Etcd)),
            None => initial.clone().map(|i| (i, initial_source)),
        };
        *shared
            .last_known
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = known;
        shared.record_registry(view.as_ref());
        if let (Some(v), Some(cache)) = (&view, shared.cache.load_full()) {
            let new_writer = !std::sync::Weak::ptr_eq(&cached_to, &Arc::downgrade(&cache));
            if new_writer
                || cached_instances
                    .as_ref()
                    .is_none_or(|c| !Arc::ptr_eq(c, &v.instances))
            {
                cached_instances = Some(v.instances.clone());
                cached_to = Arc::downgrade(&cache);
                cache.store(&shared.name, v.instances.clone(), v.revision);
            }
        }
        let wanted = Wanted {
            view: view.map(|v| v.instances),
            initial: initial.clone(),
            initial_source,
            config,
        };
        if applied.as_ref().is_none_or(|a| !a.wanted.same_as(&wanted)) {
            applied = rebuild(&shared, wanted, applied.take()).await;
        }
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        // The discovery task is gone (only at shutdown); keep the set as it is.
                        return;
                    }
                }
                _ = shared.recompute.notified() => {}
                _ = housekeeping.tick() => {
                    housekeep(&shared);
                    continue;
                }
            }
            break;
        }
    }
}

/// The inputs a backend set is made from.
struct Wanted {
    view: Option<Arc<Instances>>,
    initial: Option<Arc<Instances>>,
    initial_source: Source,
    config: Arc<ServiceConfig>,
}

impl Wanted {
    /// Whether `other` would give the same set: the same (shared, immutable) inputs.
    fn same_as(&self, other: &Wanted) -> bool {
        let same = |a: &Option<Arc<Instances>>, b: &Option<Arc<Instances>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same(&self.view, &other.view)
            && same(&self.initial, &other.initial)
            && self.initial_source == other.initial_source
            && self.config.default_servers == other.config.default_servers
    }

    /// The backends to use and their source (`None`: nothing is known yet).
    fn choose(&self) -> Option<(Vec<BackendSpec>, Source)> {
        choose(
            self.view.as_deref(),
            self.initial.as_deref(),
            &self.config.default_servers,
        )
        .map(|(specs, source)| {
            let source = if source == Source::Cache {
                self.initial_source
            } else {
                source
            };
            (specs, source)
        })
    }
}

/// The set in service and what it was made from.
struct Applied {
    wanted: Wanted,
    specs: Vec<BackendSpec>,
    source: Source,
}

/// Makes the set `wanted` asks for, off the async workers, and swaps it in if it differs
/// from the one in service. Returns what is in service now.
async fn rebuild(
    shared: &Arc<Shared>,
    wanted: Wanted,
    applied: Option<Applied>,
) -> Option<Applied> {
    let old = shared.set.load_full();
    let made = tokio::task::spawn_blocking(move || {
        let Some((specs, source)) = wanted.choose() else {
            return (applied.map(|a| Applied { wanted, ..a }), None);
        };
        let unchanged = applied
            .as_ref()
            .is_some_and(|a| a.source == source && a.specs == specs);
        let update = (!unchanged).then(|| backends::update(&old, specs.clone()));
        let previous_source = applied.map(|a| a.source);
        (
            Some(Applied {
                wanted,
                specs,
                source,
            }),
            update.map(|u| (u, previous_source)),
        )
    })
    .await;
    let (applied, update) = match made {
        Ok(made) => made,
        // Only a panic in the pure rebuild; the set in service stays.
        Err(e) => {
            tracing::error!(service = %shared.name, error = %e, "rebuilding the backend set failed");
            return None;
        }
    };
    shared
        .registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .source = applied.as_ref().map(|a| a.source);
    if let (Some(a), Some(((set, events), previous_source))) = (&applied, update) {
        if previous_source != Some(a.source) {
            log_source(&shared.name, a.source, a.specs.len());
        }
        install(shared, set, events);
        shared.ready.store(true, Ordering::Release);
        shared.known.send_replace(true);
    }
    applied
}

fn log_source(service: &str, source: Source, backends: usize) {
    match source {
        Source::Etcd => tracing::info!(service, backends, "serving etcd's view"),
        Source::Cache => {
            tracing::info!(
                service,
                backends,
                "serving the last known backends until etcd answers"
            )
        }
        Source::Defaults => {
            tracing::info!(
                service,
                backends,
                "the registry has no instance: serving default_servers"
            )
        }
    }
}

/// Changes logged one by one per rebuild; beyond that a summary (a burst of thousands of
/// registrations must not cost thousands of log lines per consumer).
const EVENTS_LOGGED: usize = 20;

/// Swaps in `set` and acts on what changed.
fn install(shared: &Arc<Shared>, set: BackendSet, events: Vec<SetEvent>) {
    let set = Arc::new(set);
    shared.set.store(set.clone());
    let drain_timeout = shared.config.load().drain_timeout;
    let mut counts = EventCounts::default();
    for (n, event) in events.into_iter().enumerate() {
        counts.count(&event);
        let log = n < EVENTS_LOGGED;
        match event {
            SetEvent::Added(s) if log => {
                tracing::info!(service = %shared.name, id = %s.id, backend = %format!("{}:{}", s.host, s.port), weight = s.weight, zone = ?s.zone, "backend added")
            }
            SetEvent::Updated { from, to } if log => {
                tracing::info!(service = %shared.name, id = %to.id, backend = %format!("{}:{}", to.host, to.port), weight = to.weight, old_weight = from.weight, zone = ?to.zone, "backend updated")
            }
            SetEvent::Added(_) | SetEvent::Updated { .. } => {}
            SetEvent::Revived(s) => {
                if let Some(b) = set
                    .active
                    .iter()
                    .find(|b| b.spec.endpoint() == s.endpoint())
                {
                    if b.stats.drain.load().is_cancelled() {
                        b.stats.drain.store(Arc::new(CancellationToken::new()));
                    }
                    b.stats.drained_at.store(0, Ordering::Relaxed);
                }
                if log {
                    tracing::info!(service = %shared.name, id = %s.id, backend = %format!("{}:{}", s.host, s.port), "backend back in the registry while draining");
                }
            }
            SetEvent::Removed(s) => {
                let draining = set
                    .draining
                    .iter()
                    .find(|b| b.spec.endpoint() == s.endpoint())
                    .cloned();
                let live = draining.as_ref().map(|b| b.stats.active()).unwrap_or(0);
                if log {
                    tracing::info!(service = %shared.name, id = %s.id, backend = %format!("{}:{}", s.host, s.port), live_connections = live, "backend removed; live connections run on");
                }
                if let (Some(b), Some(timeout)) = (draining, drain_timeout) {
                    cut_after_drain_timeout(shared.clone(), b, timeout.get());
                }
            }
        }
    }
    if counts.total > EVENTS_LOGGED {
        tracing::info!(service = %shared.name, added = counts.added, updated = counts.updated, removed = counts.removed, revived = counts.revived, backends = set.active.len(), not_logged = counts.total - EVENTS_LOGGED, "backend set changed");
    }
}

#[derive(Default)]
struct EventCounts {
    total: usize,
    added: usize,
    updated: usize,
    removed: usize,
    revived: usize,
}

impl EventCounts {
    fn count(&mut self, event: &SetEvent) {
        self.total += 1;
        match event {
            SetEvent::Added(_) => self.added += 1,
            SetEvent::Updated { .. } => self.updated += 1,
            SetEvent::Removed(_) => self.removed += 1,
            SetEvent::Revived(_) => self.revived += 1,
        }
    }
}

/// Closes what is left of a removed backend's connections once `timeout` has passed.
fn cut_after_drain_timeout(shared: Arc<Shared>, b: Backend, timeout: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let still_draining = shared
            .set
            .load()
            .draining
            .iter()
            .any(|d| Arc::ptr_eq(&d.stats, &b.stats));
        if still_draining && b.stats.active() > 0 {
            tracing::info!(service = %shared.name, backend = %format!("{}:{}", b.spec.host, b.spec.port), connections = b.stats.active(), "drain_timeout passed: closing the remaining connections");
            b.stats.drain.load().cancel();
        }
    });
}

fn housekeep(shared: &Shared) {
    let set = shared.set.load_full();
    for s in backends::restore_expired(&set, backends::now_ms()) {
        tracing::info!(service = %shared.name, id = %s.id, backend = %format!("{}:{}", s.host, s.port), "backend restored: ejection time is up");
    }
    if let Some(pruned) = backends::prune(&set, backends::now_ms()) {
        // Only forget if nothing swapped the set meanwhile.
        let previous = shared.set.compare_and_swap(&set, Arc::new(pruned));
        if Arc::ptr_eq(&previous, &set) {
            tracing::debug!(service = %shared.name, "drained backends forgotten");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::InstanceRecord;
    use std::collections::BTreeMap;

    fn instances(ports: &[u16]) -> Instances {
        ports
            .iter()
            .map(|&p| {
                (
                    format!("i{p}"),
                    InstanceRecord {
                        host: "127.0.0.1".into(),
                        port: p,
                        name: format!("i{p}"),
                        weight: 100,
                        zone: None,
                        labels: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }

    fn ports(chosen: Option<(Vec<BackendSpec>, Source)>) -> Option<(Vec<u16>, Source)> {
        chosen.map(|(s, src)| (s.iter().map(|b| b.port).collect(), src))
    }

    #[test]
    fn a_repeated_warning_is_logged_the_first_time_even_right_after_start() {
        assert!(warning_due(0, 1));
        assert!(!warning_due(1_000, 1_000 + UNSERVED_WARN_EVERY - 1));
        assert!(warning_due(1_000, 1_000 + UNSERVED_WARN_EVERY));
    }

    #[test]
    fn etcd_wins_then_cache_then_defaults() {
        let defaults = vec![DefaultServer {
            host: "127.0.0.1".into(),
            port: 9,
            weight: 1,
            zone: None,
        }];
        let (view, cache, empty) = (instances(&[1]), instances(&[2]), instances(&[]));
        assert_eq!(
            ports(choose(Some(&view), Some(&cache), &defaults)),
            Some((vec![1], Source::Etcd))
        );
        assert_eq!(
            ports(choose(None, Some(&cache), &defaults)),
            Some((vec![2], Source::Cache))
        );
        assert_eq!(
            ports(choose(Some(&empty), Some(&cache), &defaults)),
            Some((vec![9], Source::Defaults))
        );
        assert_eq!(
            ports(choose(None, None, &defaults)),
            Some((vec![9], Source::Defaults))
        );
        assert_eq!(
            ports(choose(Some(&empty), None, &[])),
            Some((vec![], Source::Etcd))
        );
        assert_eq!(
            ports(choose(None, Some(&empty), &[])),
            Some((vec![], Source::Cache))
        );
        assert_eq!(ports(choose(None, None, &[])), None);
    }
}
