//! One configured service at run time: its listener and accept loop, the follower that
//! keeps the service's backend set current, and the observers of the follower's choice.
//!
//! The listener is bound at start so the address is known and clients can connect at
//! once, but a connection accepted while the service has no backend set yet (from etcd, the
//! cache file or `default_servers`) waits for one, up to `startup_wait` from its own
//! accept, rather than fail: the startup window in which SmartStack's synapse answered 503s.
//!
//! Accepting takes a slot of `max_connections` ([`crate::limit`]) first, so at the limit
//! the accept loop simply waits and clients queue in the kernel's backlog (backpressure).
//!
//! The follower makes one choice per registry view: etcd's view, else the cache file's,
//! else `default_servers` ([`choose`]). It publishes that choice on the service's watch
//! channel ([`ServiceState::publish_choice`]) and installs the backend set; the cache file
//! writer ([`record_in_cache`]) subscribes to the channel, the status page and a
//! replacement follower read its latest value.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use registry::discovery::{Discovery, Instances, ServiceView};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::backends::{self, Backend, BackendSet, BackendSpec, SetEvent, Source};
use crate::cache::CacheWriter;
use crate::config::{DefaultServer, Mode, ServiceConfig};
use crate::forward;
use crate::resolve;
use crate::state::{warning_due, Chosen, ServiceState};

/// How often ejections are checked for expiry and idle draining backends forgotten.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

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

/// A running service: accept loop, registry follower, DNS refresher and cache recorder.
pub struct ServiceRuntime {
    state: Arc<ServiceState>,
    stop_accepting: CancellationToken,
    accept: Option<tokio::task::JoinHandle<()>>,
    follow: tokio::task::JoinHandle<()>,
    resolve: tokio::task::JoinHandle<()>,
    record: tokio::task::JoinHandle<()>,
    /// Where etcd's views are recorded; replaced by a reload that changes `cache_file`.
    cache: watch::Sender<Option<Arc<CacheWriter>>>,
    connections: TaskTracker,
}

/// What a service's follower reads from besides its own config.
pub struct Sources {
    pub discovery: Discovery,
    /// Instances to serve until etcd answers (from the cache file, or the last view of a
    /// discovery being replaced).
    pub initial: Option<(Arc<Instances>, Source)>,
}

impl ServiceRuntime {
    pub fn start(
        state: Arc<ServiceState>,
        listener: TcpListener,
        sources: Sources,
        cache: Option<Arc<CacheWriter>>,
    ) -> Self {
        let stop_accepting = CancellationToken::new();
        let connections = TaskTracker::new();
        let span = state.span().clone();
        let accept = tokio::spawn(
            accept_loop(
                state.clone(),
                listener,
                stop_accepting.clone(),
                connections.clone(),
            )
            .instrument(span.clone()),
        );
        let follow = tokio::spawn(follow(state.clone(), sources).instrument(span.clone()));
        let resolve = tokio::spawn(resolve::refresh_loop(state.clone()).instrument(span.clone()));
        let cache = watch::Sender::new(cache);
        let record =
            tokio::spawn(record_in_cache(state.clone(), cache.subscribe()).instrument(span));
        ServiceRuntime {
            state,
            stop_accepting,
            accept: Some(accept),
            follow,
            resolve,
            record,
            cache,
            connections,
        }
    }

    /// The service's state.
    pub fn state(&self) -> &Arc<ServiceState> {
        &self.state
    }

    /// The service's live connections.
    pub fn connections(&self) -> &TaskTracker {
        &self.connections
    }

    /// Records etcd's views in `cache` from now on (`None`: nowhere); the current view is
    /// written to a new writer at once, not at the next registry change.
    pub fn set_cache(&self, cache: Option<Arc<CacheWriter>>) {
        self.cache.send_replace(cache);
    }

    /// Moves the service to a new listener (bound at `addr`); connections accepted on the
    /// old one run on.
    pub async fn rebind(&mut self, listener: TcpListener, addr: SocketAddr) {
        self.state.set_listen_addr(addr);
        self.stop_accepting_only().await;
        self.stop_accepting = CancellationToken::new();
        self.accept = Some(tokio::spawn(
            accept_loop(
                self.state.clone(),
                listener,
                self.stop_accepting.clone(),
                self.connections.clone(),
            )
            .instrument(self.state.span().clone()),
        ));
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
        self.record.abort();
    }

    /// Follows a new discovery (the etcd block changed); the current set is served until
    /// the new one answers.
    pub fn rediscover(&mut self, discovery: Discovery) {
        self.follow.abort();
        let initial = self.state.last_known();
        let sources = Sources { discovery, initial };
        self.follow =
            tokio::spawn(follow(self.state.clone(), sources).instrument(self.state.span().clone()));
    }

    /// Stops accepting and following the registry; live connections run on (cut after
    /// `drain_timeout` if set). Returns the tracker to wait on them.
    pub async fn stop(mut self) -> TaskTracker {
        self.stop_accepting_only().await;
        self.stop_following();
        self.connections.close();
        if let Some(timeout) = self.state.config().drain_timeout {
            let set = self.state.set();
            let tracker = self.connections.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(timeout.get()) => {
                        for b in set.active.iter().chain(&set.draining) {
                            b.state.cut_connections();
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
        self.stop_following();
    }
}

/// A connection's slot of `max_connections`, given back when its task ends (or panics).
struct HeldSlot(Arc<ServiceState>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.limit().release();
    }
}

async fn accept_loop(
    state: Arc<ServiceState>,
    listener: TcpListener,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let mut last_error_warned = 0u64;
    // http mode's pools, made once per listener (no connection until a request needs one).
    let upstreams = Arc::new(crate::http::Upstreams::new(&state.config()));
    // Polled only once the token fires, not on every accept (two mutexes per poll).
    let stop = std::pin::pin!(stop.cancelled());
    let mut stopped = crate::quiet::polled_when_woken(stop);
    loop {
        let slot = tokio::select! {
            biased;
            _ = &mut stopped => return,
            slot = state.limit().take() => slot,
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                slot.keep();
                let held = HeldSlot(state.clone());
                // A debug span: with debug logging off it is disabled, and entering it on
                // every poll of the relay costs a branch.
                let span = tracing::debug_span!(parent: state.span(), "connection", %peer);
                if state.config().mode == Mode::Http {
                    let upstreams = upstreams.clone();
                    let serve = async move {
                        crate::http::serve(held.0.clone(), upstreams, stream).await;
                        drop(held);
                    };
                    connections.spawn(serve.instrument(span));
                } else {
                    let serve = async move { forward::serve(&held.0, stream).await };
                    connections.spawn(serve.instrument(span));
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                let now = backends::now_ms();
                if warning_due(last_error_warned, now) {
                    last_error_warned = now;
                    tracing::warn!(error = %e, "accept failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Records etcd's views of the service in the cache file: an observer of the follower's
/// choice. Writes when etcd's instances change or the writer does (a reload moved the
/// file), never for the cache's or the defaults' own instances.
async fn record_in_cache(
    state: Arc<ServiceState>,
    mut cache: watch::Receiver<Option<Arc<CacheWriter>>>,
) {
    let mut chosen = state.subscribe_choice();
    // What was last given to which writer; a weak reference, so that a writer a reload
    // dropped is not kept alive (and writing) by this task.
    let mut recorded: Option<(Weak<CacheWriter>, Arc<Instances>)> = None;
    loop {
        let writer = cache.borrow_and_update().clone();
        let view = chosen
            .borrow_and_update()
            .view
            .as_ref()
            .map(|v| (v.instances.clone(), v.revision));
        if let (Some(writer), Some((instances, revision))) = (writer, view) {
            let done = recorded.as_ref().is_some_and(|(w, i)| {
                Weak::ptr_eq(w, &Arc::downgrade(&writer)) && Arc::ptr_eq(i, &instances)
            });
            if !done {
                writer.store(state.name(), instances.clone(), revision);
                recorded = Some((Arc::downgrade(&writer), instances));
            }
        }
        tokio::select! {
            changed = chosen.changed() => if changed.is_err() { return },
            changed = cache.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps the service's backend set in line with etcd (or the cache, or the defaults), and
/// does the housekeeping: expired ejections, forgotten drained backends.
///
/// The watch channel keeps only the newest view, so a burst of registry changes costs one
/// rebuild per view the follower gets to, not one per change; and a large rebuild
/// (O(instances), over [`INLINE_REBUILD_MAX`]) runs on the blocking pool, never on the
/// workers that relay traffic.
async fn follow(state: Arc<ServiceState>, sources: Sources) {
    let Sources { discovery, initial } = sources;
    let mut views = discovery.subscribe();
    let mut applied: Option<Applied> = None;
    let (initial, initial_source) = match initial {
        Some((i, s)) => (Some(i), s),
        None => (None, Source::Cache),
    };
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let view: Option<ServiceView> = views.borrow_and_update().clone();
        let wanted = Wanted {
            view: view.as_ref().map(|v| v.instances.clone()),
            initial: initial.clone(),
            initial_source,
            config: state.config().clone(),
        };
        let mut update = None;
        if applied.as_ref().is_none_or(|a| !a.wanted.same_as(&wanted)) {
            (applied, update) = rebuild(&state, wanted, applied.take()).await;
        }
        // Observers first, then the set: whoever a new set serves sees the registry state
        // it came from.
        state.publish_choice(Chosen {
            known: match &view {
                Some(v) => Some((v.instances.clone(), Source::Etcd)),
                None => initial.clone().map(|i| (i, initial_source)),
            },
            synced: view.as_ref().map(|v| (v.revision, v.last_sync)),
            view,
            source: applied.as_ref().map(|a| a.source),
        });
        if let Some((set, events)) = update {
            install(&state, set, events);
            state.mark_known();
        }
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        // The discovery task is gone (only at shutdown); keep the set as it is.
                        return;
                    }
                }
                _ = state.recompute_wanted() => {}
                _ = housekeeping.tick() => {
                    housekeep(&state);
                    // etcd's confirmations without a change (progress notifications) do
                    // not wake this loop; they are picked up here for the status page.
                    if let Some(v) = views.borrow().as_ref() {
                        state.note_synced(v.revision, v.last_sync);
                    }
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

    /// How many backends the inputs name at most.
    fn size(&self) -> usize {
        let view = self.view.as_ref().map_or(0, |v| v.len());
        let initial = self.initial.as_ref().map_or(0, |i| i.len());
        view.max(initial).max(self.config.default_servers.len())
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

/// A new backend set and what changed, to install.
type Update = (BackendSet, Vec<SetEvent>);

/// Sets larger than this are rebuilt on the blocking pool; smaller ones (well under a
/// millisecond) inline: handing every small rebuild to the pool's threads gave each of them
/// a malloc arena (make bench: RSS with 1,000 registered backends 13.3 MB, 9.9 MB inline).
const INLINE_REBUILD_MAX: usize = 2_000;

/// Makes the set `wanted` asks for, a large one off the async workers. Returns what is in
/// service after it, and the new set when it differs from the one in service.
async fn rebuild(
    state: &Arc<ServiceState>,
    wanted: Wanted,
    applied: Option<Applied>,
) -> (Option<Applied>, Option<Update>) {
    let old = state.set();
    let size = wanted.size().max(old.active.len());
    let make = move || {
        let Some((specs, source)) = wanted.choose() else {
            return (applied.map(|a| Applied { wanted, ..a }), None);
        };
        let unchanged = applied
            .as_ref()
            .is_some_and(|a| a.source == source && a.specs == specs);
        let update =
            (!unchanged).then(|| backends::update(&old, specs.clone(), backends::now_ms()));
        let previous_source = applied.map(|a| a.source);
        (
            Some(Applied {
                wanted,
                specs,
                source,
            }),
            update.map(|u| (u, previous_source)),
        )
    };
    let made = if size <= INLINE_REBUILD_MAX {
        Ok(make())
    } else {
        tokio::task::spawn_blocking(make).await
    };
    let (applied, update) = match made {
        Ok(made) => made,
        // Only a panic in the pure rebuild; the set in service stays.
        Err(e) => {
            tracing::error!(error = %e, "rebuilding the backend set failed");
            return (None, None);
        }
    };
    let update = match (&applied, update) {
        (Some(a), Some((update, previous_source))) => {
            if previous_source != Some(a.source) {
                log_source(a.source, a.specs.len());
            }
            Some(update)
        }
        _ => None,
    };
    (applied, update)
}

fn log_source(source: Source, backends: usize) {
    match source {
        Source::Etcd => tracing::info!(backends, "serving etcd's view"),
        Source::Cache => {
            tracing::info!(
                backends,
                "serving the last known backends until etcd answers"
            )
        }
        Source::Defaults => tracing::info!(
            backends,
            "the registry has no instance: serving default_servers"
        ),
    }
}

/// Changes logged one by one per rebuild; beyond that a summary (a burst of thousands of
/// registrations must not cost thousands of log lines per consumer).
const EVENTS_LOGGED: usize = 20;

/// Swaps in `set` and acts on what changed.
fn install(state: &Arc<ServiceState>, set: BackendSet, events: Vec<SetEvent>) {
    let set = Arc::new(set);
    state.install_set(set.clone());
    let drain_timeout = state.config().drain_timeout;
    let mut counts = EventCounts::default();
    for (n, event) in events.into_iter().enumerate() {
        counts.count(&event);
        let log = n < EVENTS_LOGGED;
        match event {
            SetEvent::Added(s) if log => tracing::info!(
                id = %s.id, backend = %format!("{}:{}", s.host, s.port), weight = s.weight,
                zone = ?s.zone, "backend added"
            ),
            SetEvent::Updated { from, to } if log => tracing::info!(
                id = %to.id, backend = %format!("{}:{}", to.host, to.port), weight = to.weight,
                old_weight = from.weight, zone = ?to.zone, "backend updated"
            ),
            SetEvent::Added(_) | SetEvent::Updated { .. } => {}
            SetEvent::Revived(s) => {
                if let Some(b) = set
                    .active
                    .iter()
                    .find(|b| b.spec.endpoint() == s.endpoint())
                {
                    b.state.revived();
                }
                if log {
                    tracing::info!(
                        id = %s.id, backend = %format!("{}:{}", s.host, s.port),
                        "backend back in the registry while draining"
                    );
                }
            }
            SetEvent::Removed(s) => {
                let draining = set
                    .draining
                    .iter()
                    .find(|b| b.spec.endpoint() == s.endpoint())
                    .cloned();
                let live = draining.as_ref().map(|b| b.state.active()).unwrap_or(0);
                if log {
                    tracing::info!(
                        id = %s.id, backend = %format!("{}:{}", s.host, s.port),
                        live_connections = live, "backend removed; live connections run on"
                    );
                }
                if let (Some(b), Some(timeout)) = (draining, drain_timeout) {
                    cut_after_drain_timeout(state.clone(), b, timeout.get());
                }
            }
        }
    }
    if counts.total > EVENTS_LOGGED {
        tracing::info!(
            added = counts.added,
            updated = counts.updated,
            removed = counts.removed,
            revived = counts.revived,
            backends = set.active.len(),
            not_logged = counts.total - EVENTS_LOGGED,
            "backend set changed"
        );
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
fn cut_after_drain_timeout(state: Arc<ServiceState>, b: Backend, timeout: Duration) {
    let span = state.span().clone();
    let cut = async move {
        tokio::time::sleep(timeout).await;
        let still_draining = state
            .set()
            .draining
            .iter()
            .any(|d| Arc::ptr_eq(&d.state, &b.state));
        if still_draining && b.state.active() > 0 {
            tracing::info!(
                backend = %b.addr(), connections = b.state.active(),
                "drain_timeout passed: closing the remaining connections"
            );
            b.state.cut_connections();
        }
    };
    tokio::spawn(cut.instrument(span));
}

fn housekeep(state: &ServiceState) {
    let set = state.set();
    state.ejector().restore_expired(
        set.active
            .iter()
            .map(|b| (b.state.ejection(), b.addr(), b.spec.id.as_str())),
    );
    // Only forget if nothing swapped the set meanwhile.
    if let Some(pruned) = backends::prune(&set, backends::now_ms()) {
        if state.replace_set(&set, pruned) {
            tracing::debug!("drained backends forgotten");
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
