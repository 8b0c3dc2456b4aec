//! synapse: the consumer side of the mesh. For every configured service it listens on a
//! fixed local address and forwards each accepted TCP connection to one of the service's
//! instances registered in etcd, so applications dial `127.0.0.1:PORT` and never learn an
//! address.
//!
//! Layout, one file per concept, bottom up: each module uses only those listed before it
//! (no import circle), and pure logic stays apart from I/O so it can be tested as such.
//! - [`config`]: the configuration file, its defaults and validation (errors name the key).
//! - `latency`: a backend's peak-EWMA response time (pure step, atomic holder).
//! - [`import`]: `--import-smartstack`: an Airbnb synapse JSON configuration converted into
//!   ours (pure); `haproxy_lines` reads its HAProxy lines for what we have an equivalent
//!   of, and `config_yaml` writes the services as YAML that reads back as the same values.
//! - `slow_start`: the ramp of a new or restored backend's weight (pure).
//! - `balance`: pure backend picks (smooth weighted round robin, power of two choices,
//!   weighted random), zone affinity and the ejection panic fallback.
//! - `resolution`: what is kept about a backend's DNS name (addresses, lookup times); data
//!   only.
//! - `ejection`: passive outlier ejection, all of it: each backend's ejection state, the
//!   policy (pure functions) and the per-service `Ejector` that serialises decisions, ends
//!   expired ejections and logs ejections and restorations.
//! - `traffic`: a service's traffic counters (connections, connect attempts by result,
//!   retries, replays, bytes, duration histograms) as relaxed atomics;
//!   `ByteCounts`, also a backend's.
//! - `backends`: a backend is its identity (`BackendSpec`) plus its mutable `BackendState`
//!   (counters, ejection, DNS addresses, drain); the immutable backend set and its pure
//!   update from a registry view (state kept, removed backends draining, drained ones
//!   shown for a while).
//! - `limit`: `max_connections` as a lock-free counter the accept loop waits on.
//! - `state`: one service's state at run time, a handle over private fields that everything
//!   above uses through methods (configuration, backend set, readiness, the ejector, the
//!   status page); it carries the watch channel on which the follower publishes its source
//!   choice (etcd, else the cache file, else `default_servers`).
//! - `resolve`: DNS names among the backends, resolved in the background and kept through
//!   DNS failures.
//! - `copy`: the byte relay (`datapath`, idle timeout included), alone so it can be swapped.
//! - `quiet`: a future polled only when it woke the task, for the rarely firing branches
//!   (drain, shutdown cut, stop accepting) next to the busy relay and accept.
//! - `replay`: `retry_unanswered`: a request its backend closed on before answering is sent
//!   again to another backend.
//! - `forward`: one connection: pick, connect with timeout, retry elsewhere, relay.
//! - `http`: http mode: each request of a connection to a backend picked for it, over
//!   pooled upstream connections, with safe retries.
//! - [`cache`]: the cache file of last known backends, written atomically.
//! - `service`: a service at run time: listener, accept loop with backpressure, the follower
//!   that turns registry views (or the cache, or `default_servers`) into sets and publishes
//!   its choice, and the cache file recorder that subscribes to it.
//! - [`descriptors`]: the descriptor limit: raised at start, what the services need, and each
//!   service's share of it when it is short (a cap below `max_connections`).
//! - `reload`: the pure diff between two configurations that drives a SIGHUP reload.
//! - `admin`: the loopback HTTP status server.
//! - [`Synapse`] (this file): starts all of that, reloads it (prepare: every bind, nothing
//!   changed; then commit: cannot fail) and shuts it down; `main.rs` only parses the command
//!   line and turns signals into calls on it.
//!
//! Only [`config`], [`cache`] (its file format, read by tests), [`descriptors`] (raised
//! by `main.rs` before the runtime starts) and [`import`] (`main.rs`'s) are public
//! modules; what else is used outside is re-exported here.
//!
//! Discovery itself (get + watch + resync, static stability) is `registry::discovery`,
//! shared with anything else that needs to follow the registry.
//!
//! Operators' documentation: `docs/synapse.md`.
#![forbid(unsafe_code)]

mod admin;
mod backends;
mod balance;
pub mod cache;
pub mod config;
mod config_yaml;
mod copy;
pub mod descriptors;
mod ejection;
mod forward;
mod haproxy_lines;
mod http;
pub mod import;
mod latency;
mod limit;
mod metrics;
mod quiet;
mod reload;
mod replay;
mod resolution;
mod resolve;
mod service;
mod slow_start;
mod state;
mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use registry::discovery::{self, DiscoveryOptions};
use registry::Etcd;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backends::Source;
pub use config::{Balance, ServiceConfig, SynapseConfig};
pub use reload::Action;
pub use state::{BackendStatus, GraceState, RegistryState, ServiceStatus};

use crate::admin::Admin;
use crate::cache::CacheWriter;
use crate::service::{ServiceRuntime, Sources};
use crate::state::ServiceState;

/// A running synapse. Every method takes `&self`; reloads and shutdown are serialised.
pub struct Synapse {
    state: tokio::sync::Mutex<State>,
    services: Arc<ArcSwap<BTreeMap<String, Arc<ServiceState>>>>,
    admin_addr: Mutex<Option<SocketAddr>>,
    /// `metrics.per_backend`, read by the admin server at each scrape.
    per_backend_metrics: Arc<AtomicBool>,
    cut: CancellationToken,
}

struct State {
    config: SynapseConfig,
    etcd: Etcd,
    runtimes: BTreeMap<String, ServiceRuntime>,
    /// Connections of services removed by reloads, still draining.
    retired: Vec<TaskTracker>,
    admin: Option<Admin>,
    cache: Option<Arc<CacheWriter>>,
    /// What the cache file held at start, for services started later.
    cached: BTreeMap<String, cache::CachedService>,
    /// The descriptor limit's caps for `config`, as last applied.
    descriptors: descriptors::Plan,
    stopped: bool,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every live connection finished by itself within `shutdown_timeout`.
    pub drained: bool,
}

/// The services with no backend set yet.
fn waiting_for(services: &BTreeMap<String, Arc<ServiceState>>) -> Vec<String> {
    services
        .iter()
        .filter(|(_, s)| !s.is_ready())
        .map(|(name, _)| name.clone())
        .collect()
}

fn discovery_options(etcd: &Etcd, config: &SynapseConfig) -> DiscoveryOptions {
    DiscoveryOptions {
        // A quiet watch is probed as often as the connection is; a hung member is then
        // detected on the same schedule whichever layer notices first.
        progress_interval: etcd.config().keepalive_interval.get(),
        grace_period: config.registry_grace_period.get(),
        ..DiscoveryOptions::default()
    }
}

/// Why [`Synapse::start`] or [`Synapse::reload`] refused: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {service:?}: cannot listen on {addr}")]
    Listen {
        service: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin: cannot listen on {addr}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("synapse is shutting down")]
    ShuttingDown,
}

/// A service's listener, bound, with the address it got (port 0 resolved).
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

fn bind(service: &ServiceConfig) -> Result<Bound, Error> {
    let addr = service.listen.0;
    let bound = forward::listen(addr).and_then(|listener| {
        let addr = listener.local_addr()?;
        Ok(Bound { listener, addr })
    });
    bound.map_err(|source| Error::Listen {
        service: service.name.clone(),
        addr,
        source,
    })
}

/// Whether other hosts can reach a listener on `addr`: anything but loopback (an
/// IPv4-mapped loopback address included, `::ffff:127.0.0.1` being 127.0.0.1).
fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

fn warn_if_exposed(service: &ServiceConfig) {
    if is_exposed(service.listen.0) {
        tracing::warn!(
            service = %service.name, listen = %service.listen,
            "listening on a non-loopback address: other hosts can reach this service through synapse"
        );
    }
}

/// What the current descriptor limit means for `config`'s services.
fn descriptor_plan(config: &SynapseConfig) -> descriptors::Plan {
    let max_connections: Vec<u32> = config.services.iter().map(|s| s.max_connections).collect();
    descriptors::plan(&max_connections, descriptors::soft_limit())
}

fn report_descriptors(config: &SynapseConfig, plan: &descriptors::Plan, was_short: bool) {
    let services: Vec<(&str, u32)> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.max_connections))
        .collect();
    descriptors::report(plan, &services, was_short);
}

/// The descriptor cap of service `name` in `plan` (made for `config`).
fn descriptor_cap(config: &SynapseConfig, plan: &descriptors::Plan, name: &str) -> Option<u32> {
    let i = config.services.iter().position(|s| s.name == name)?;
    plan.caps.get(i).copied().flatten()
}

fn read_cache(config: &SynapseConfig) -> BTreeMap<String, cache::CachedService> {
    let Some(path) = &config.cache_file else {
        return BTreeMap::new();
    };
    match cache::read(path) {
        Ok(c) => {
            if !c.is_empty() {
                tracing::info!(path = %path.display(), services = c.len(), "read the cache file");
            }
            c
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "ignoring the cache file");
            BTreeMap::new()
        }
    }
}

impl Synapse {
    /// Binds every listener (and the admin server) and starts following the registry.
    /// Fails only when a listener cannot be bound; etcd being unreachable is not an error.
    pub async fn start(config: SynapseConfig) -> Result<Self, Error> {
        // Every bind first: a failure leaves nothing running.
        let mut bound = Vec::with_capacity(config.services.len());
        for s in &config.services {
            bound.push(bind(s)?);
        }
        let admin_listener = match config.admin {
            Some(addr) => Some(bind_admin(addr.0).await?),
            None => None,
        };
        let cached = read_cache(&config);
        let cache = config
            .cache_file
            .clone()
            .map(|path| CacheWriter::start(path, cached.clone()));
        let etcd = Etcd::new(config.etcd.clone());
        let cut = CancellationToken::new();
        let plan = descriptor_plan(&config);
        report_descriptors(&config, &plan, false);
        let mut runtimes = BTreeMap::new();
        let common = Common {
            config: &config,
            etcd: &etcd,
            cached: &cached,
            cache: &cache,
            cut: &cut,
        };
        for (s, bound) in config.services.iter().zip(bound) {
            warn_if_exposed(s);
            let cap = descriptor_cap(&config, &plan, &s.name);
            runtimes.insert(s.name.clone(), start_service(s, cap, bound, &common));
        }
        let per_backend_metrics = config.metrics.per_backend;
        let synapse = Synapse {
            state: tokio::sync::Mutex::new(State {
                config,
                etcd,
                runtimes,
                retired: Vec::new(),
                admin: None,
                cache,
                cached,
                descriptors: plan,
                stopped: false,
            }),
            services: Arc::new(ArcSwap::from_pointee(BTreeMap::new())),
            admin_addr: Mutex::new(None),
            per_backend_metrics: Arc::new(AtomicBool::new(per_backend_metrics)),
            cut,
        };
        {
            let mut state = synapse.state.lock().await;
            synapse.publish(&state);
            if let Some(listener) = admin_listener {
                let admin = synapse.start_admin(listener);
                synapse.install_admin(&mut state, Some(admin));
            }
        }
        Ok(synapse)
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run(
        config: SynapseConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<ShutdownReport, Error> {
        let synapse = Synapse::start(config).await?;
        shutdown.await;
        Ok(synapse.shutdown().await)
    }

    fn publish(&self, state: &State) {
        let map = state
            .runtimes
            .iter()
            .map(|(n, r)| (n.clone(), r.state().clone()))
            .collect();
        self.services.store(Arc::new(map));
    }

    /// Serves `GET /status` on `listener` (bound, so this cannot fail).
    fn start_admin(&self, listener: Bound) -> Admin {
        let services = self.services.clone();
        let snapshot: admin::SnapshotFn = Arc::new(move || {
            services
                .load()
                .iter()
                .map(|(n, s)| (n.clone(), s.status()))
                .collect()
        });
        let services = self.services.clone();
        let waiting: admin::WaitingFn = Arc::new(move || waiting_for(&services.load()));
        let views = admin::Views {
            snapshot,
            waiting,
            per_backend: self.per_backend_metrics.clone(),
        };
        Admin::start(listener.listener, listener.addr, views)
    }

    /// Puts `admin` in place of the running admin server (`None`: no admin server).
    fn install_admin(&self, state: &mut State, admin: Option<Admin>) {
        *self
            .admin_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = admin.as_ref().map(Admin::addr);
        state.admin = admin;
    }

    /// The address a service listens on (useful with port 0).
    pub fn listen_addr(&self, service: &str) -> Option<SocketAddr> {
        self.services.load().get(service).map(|s| s.listen_addr())
    }

    /// The admin server's address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self
            .admin_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of every service, as `GET /status` shows it.
    /// Ready for traffic: every service has a backend set, from etcd, the cache file or
    /// `default_servers` (what `GET /ready` says).
    pub fn is_ready(&self) -> bool {
        waiting_for(&self.services.load()).is_empty()
    }

    pub fn status(&self) -> BTreeMap<String, ServiceStatus> {
        self.services
            .load()
            .iter()
            .map(|(n, s)| (n.clone(), s.status()))
            .collect()
    }

    /// Applies a new configuration without cutting any connection: `prepare`
    /// does every step that can fail (the binds) and changes nothing, then
    /// `commit` applies it and cannot fail. So on error nothing has changed and
    /// the old configuration keeps running.
    pub async fn reload(&self, new: SynapseConfig) -> Result<Vec<Action>, Error> {
        let mut state = self.state.lock().await;
        let prepared = self.prepare(&state, new).await?;
        Ok(self.commit(&mut state, prepared).await)
    }

    /// What `new` asks of the running `state`, with every new address bound. Changes
    /// nothing that runs.
    async fn prepare(&self, state: &State, new: SynapseConfig) -> Result<Prepared, Error> {
        if state.stopped {
            return Err(Error::ShuttingDown);
        }
        let actions: Vec<Action> = reload::diff(&state.config, &new)
            .into_iter()
            .map(|a| match a {
                // Already listening there (the old config said port 0 and the new one
                // names the port that was picked): nothing to move.
                Action::Rebind(s)
                    if state
                        .runtimes
                        .get(&s.name)
                        .is_some_and(|r| r.state().listen_addr() == s.listen.0) =>
                {
                    Action::Update(s)
                }
                a => a,
            })
            .collect();
        // An address held by a service this reload stops or moves can only be bound once
        // it is freed, in the commit.
        let freed: HashSet<SocketAddr> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop(n) => state.runtimes.get(n).map(|r| r.state().listen_addr()),
                Action::Rebind(s) => state.runtimes.get(&s.name).map(|r| r.state().listen_addr()),
                _ => None,
            })
            .filter(|a| a.port() != 0)
            .collect();
        let mut listeners = BTreeMap::new();
        for a in &actions {
            if let Action::Start(s) | Action::Rebind(s) = a {
                if !freed.contains(&s.listen.0) {
                    listeners.insert(s.name.clone(), bind(s)?);
                }
            }
        }
        let admin = match new.admin {
            Some(addr) if actions.contains(&Action::Admin) => {
                Some(self.start_admin(bind_admin(addr.0).await?))
            }
            _ => None,
        };
        Ok(Prepared {
            actions,
            listeners,
            admin,
            new,
        })
    }

    /// Applies a prepared reload. Cannot fail: a service that could not take an address
    /// freed by this very reload is logged and recorded as not started (or not moved), so
    /// that the next reload of the same file tries again.
    async fn commit(&self, state: &mut State, prepared: Prepared) -> Vec<Action> {
        let Prepared {
            actions,
            mut listeners,
            mut admin,
            new,
        } = prepared;
        if actions.contains(&Action::CacheFile) {
            move_cache_file(state, &new);
        }
        if state.config.etcd != new.etcd {
            state.etcd = Etcd::new(new.etcd.clone());
        }
        // Caps for the services started now; every service's cap is set again at the end,
        // from the configuration that actually runs.
        let plan = descriptor_plan(&new);
        let mut started = HashSet::new();
        let mut recorded = new.clone();
        for action in &actions {
            match action {
                Action::Stop(name) => stop_service(state, name).await,
                Action::Start(s) => {
                    let Some(bound) = listeners.remove(&s.name).or_else(|| bind_freed(s)) else {
                        recorded.services.retain(|r| r.name != s.name);
                        continue;
                    };
                    let cap = descriptor_cap(&new, &plan, &s.name);
                    self.add_service(state, s, cap, bound, &new);
                    started.insert(s.name.clone());
                }
                Action::Update(s) => {
                    if let Some(runtime) = state.runtimes.get(&s.name) {
                        let service = runtime.state();
                        service.update_config(s.clone());
                        service.in_scope(|| tracing::info!("service updated in place"));
                    }
                }
                Action::Rebind(s) => {
                    let unmoved = state.config.service(&s.name).cloned();
                    let bound = listeners.remove(&s.name);
                    if let Some(runtime) = state.runtimes.get_mut(&s.name) {
                        if !move_service(runtime, s, bound).await {
                            recorded_as_unmoved(&mut recorded, unmoved);
                        }
                    }
                }
                Action::Rediscover => {
                    let etcd = state.etcd.clone();
                    for (name, runtime) in state.runtimes.iter_mut() {
                        if !started.contains(name) {
                            let options = discovery_options(&etcd, &new);
                            runtime.rediscover(discovery::spawn(etcd.clone(), name, options));
                        }
                    }
                    tracing::info!(
                        "etcd settings changed: following the registry through the new settings"
                    );
                }
                Action::Zone(zone) => {
                    for runtime in state.runtimes.values() {
                        runtime.state().set_zone(zone.clone());
                    }
                }
                Action::Admin => {
                    // Either the new server prepared on its new address, or none.
                    self.install_admin(state, admin.take());
                }
                Action::CacheFile => {}
                Action::Metrics(metrics) => {
                    self.per_backend_metrics
                        .store(metrics.per_backend, Ordering::Relaxed);
                }
            }
        }
        state.config = recorded;
        apply_descriptor_plan(state);
        state.retired.retain(|t| !t.is_empty());
        self.publish(state);
        actions
    }

    /// Starts service `s` (of the configuration `config`) on `bound`.
    fn add_service(
        &self,
        state: &mut State,
        s: &ServiceConfig,
        cap: Option<u32>,
        bound: Bound,
        config: &SynapseConfig,
    ) {
        warn_if_exposed(s);
        let common = Common {
            config,
            etcd: &state.etcd,
            cached: &state.cached,
            cache: &state.cache,
            cut: &self.cut,
        };
        let runtime = start_service(s, cap, bound, &common);
        let service = runtime.state();
        let listen = service.listen_addr();
        service.in_scope(|| tracing::info!(%listen, "service added"));
        state.runtimes.insert(s.name.clone(), runtime);
    }

    /// Stops accepting everywhere, lets live connections finish for up to
    /// `shutdown_timeout`, then closes whatever is left.
    pub async fn shutdown(&self) -> ShutdownReport {
        let mut state = self.state.lock().await;
        state.stopped = true;
        let mut trackers = std::mem::take(&mut state.retired);
        for runtime in state.runtimes.values_mut() {
            runtime.stop_accepting_only().await;
            runtime.connections().close();
            trackers.push(runtime.connections().clone());
        }
        // The admin server stays up while connections drain, so the drain can be watched.
        let timeout = state.config.shutdown_timeout.get();
        let live: usize = trackers.iter().map(|t| t.len()).sum();
        if live > 0 {
            tracing::info!(
                connections = live, timeout = ?timeout,
                "shutting down: waiting for live connections to finish"
            );
        }
        let all_done = async {
            for t in &trackers {
                t.wait().await;
            }
        };
        let drained = tokio::time::timeout(timeout, all_done).await.is_ok();
        if !drained {
            let left: usize = trackers.iter().map(|t| t.len()).sum();
            tracing::warn!(
                connections = left,
                "shutdown timeout passed: closing the remaining connections"
            );
            self.cut.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                for t in &trackers {
                    t.wait().await;
                }
            })
            .await;
        }
        for runtime in state.runtimes.values_mut() {
            runtime.stop_following();
        }
        state.admin = None;
        ShutdownReport { drained }
    }
}

/// Sets every service's descriptor cap from the configuration that runs: services or
/// max_connections may have changed, or the limit (prlimit --pid).
fn apply_descriptor_plan(state: &mut State) {
    let plan = descriptor_plan(&state.config);
    if plan != state.descriptors {
        report_descriptors(&state.config, &plan, state.descriptors.short());
    }
    for (name, runtime) in &state.runtimes {
        let cap = descriptor_cap(&state.config, &plan, name);
        runtime.state().set_descriptor_cap(cap);
    }
    state.descriptors = plan;
}

/// Records a service whose move failed with the listen address it had before (`unmoved`),
/// so that the next diff asks for the move again.
fn recorded_as_unmoved(recorded: &mut SynapseConfig, unmoved: Option<ServiceConfig>) {
    let Some(unmoved) = unmoved else { return };
    if let Some(s) = recorded
        .services
        .iter_mut()
        .find(|s| s.name == unmoved.name)
    {
        s.listen = unmoved.listen;
    }
}

/// A reload with every fallible step done: what [`Synapse::commit`] applies.
struct Prepared {
    actions: Vec<Action>,
    /// New listeners of started and moved services (except on addresses this reload frees).
    listeners: BTreeMap<String, Bound>,
    /// The admin server already serving on its new address, when it moves.
    admin: Option<Admin>,
    new: SynapseConfig,
}

async fn bind_admin(addr: SocketAddr) -> Result<Bound, Error> {
    let bound = match TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|addr| Bound { listener, addr }),
        Err(e) => Err(e),
    };
    bound.map_err(|source| Error::AdminListen { addr, source })
}

/// Binds a service's address that this reload has just freed; `None` (logged) when that
/// fails, for a later reload to retry.
fn bind_freed(s: &ServiceConfig) -> Option<Bound> {
    bind(s)
        .inspect_err(|e| {
            tracing::error!(
                service = %s.name,
                error = %error_chain(e),
                "cannot start service after freeing its address; a later reload retries"
            )
        })
        .ok()
}

/// An error with its causes, `a: b: c`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Stops a removed service: no longer accepting; its live connections drain.
async fn stop_service(state: &mut State, name: &str) {
    if let Some(runtime) = state.runtimes.remove(name) {
        runtime.state().in_scope(|| {
            tracing::info!("service removed: no longer accepting; live connections drain")
        });
        let tracker = runtime.stop().await;
        state.retired.push(tracker);
        if let Some(cache) = &state.cache {
            cache.remove(name);
        }
    }
}

/// Moves a service to its new listen address (`bound`, or bound now that its old address
/// or one a stopped service held is free); whether it listens there.
async fn move_service(
    runtime: &mut ServiceRuntime,
    s: &ServiceConfig,
    bound: Option<Bound>,
) -> bool {
    runtime.state().update_config(s.clone());
    let bound = match bound {
        Some(b) => b,
        None => {
            // Our own old address, or one a stopped service freed.
            runtime.stop_accepting_only().await;
            match bind(s) {
                Ok(b) => b,
                Err(e) => {
                    let _in = runtime.state().span().enter();
                    tracing::error!(
                        error = %error_chain(&e),
                        "cannot move service to its new address: it is not listening; \
                         a later reload retries"
                    );
                    return false;
                }
            }
        }
    };
    warn_if_exposed(s);
    runtime.rebind(bound.listener, bound.addr).await;
    let listen = bound.addr;
    runtime
        .state()
        .in_scope(|| tracing::info!(%listen, "service moved to a new listen address"));
    true
}

/// Moves every service to the cache file `new` names (or to none): the new file starts
/// with every service's last known set, etcd up or not.
fn move_cache_file(state: &mut State, new: &SynapseConfig) {
    let mut cached = read_cache(new);
    // What the old file recorded is at least as recent as what the new path held.
    if let Some(old) = &state.cache {
        cached.extend(old.entries());
    }
    state.cache = new.cache_file.clone().map(|path| {
        let writer = CacheWriter::start(path, cached.clone());
        writer.write_soon();
        writer
    });
    state.cached = cached;
    // Dropping the old writer: a removed or moved cache file is no longer written.
    for runtime in state.runtimes.values() {
        runtime.set_cache(state.cache.clone());
    }
}

/// What every service is started from: synapse's configuration and its shared parts.
struct Common<'a> {
    config: &'a SynapseConfig,
    etcd: &'a Etcd,
    /// What the cache file held at start.
    cached: &'a BTreeMap<String, cache::CachedService>,
    cache: &'a Option<Arc<CacheWriter>>,
    cut: &'a CancellationToken,
}

fn start_service(
    s: &ServiceConfig,
    descriptor_cap: Option<u32>,
    bound: Bound,
    common: &Common<'_>,
) -> ServiceRuntime {
    let zone = common.config.zone.clone();
    let state = ServiceState::new(s.clone(), zone, bound.addr, common.cut.child_token());
    state.set_descriptor_cap(descriptor_cap);
    let initial = common
        .cached
        .get(&s.name)
        .map(|c| (Arc::new(c.instances.clone()), Source::Cache));
    let options = discovery_options(common.etcd, common.config);
    let discovery = discovery::spawn(common.etcd.clone(), &s.name, options);
    let sources = Sources { discovery, initial };
    ServiceRuntime::start(state, bound.listener, sources, common.cache.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_loopback_listen_addresses_are_exposed() {
        for loopback in [
            "127.0.0.1:1",
            "127.0.0.2:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!is_exposed(loopback.parse().unwrap()), "{loopback}");
        }
        for exposed in ["0.0.0.0:1", "10.0.0.5:1", "[::]:1", "[2001:db8::1]:1"] {
            assert!(is_exposed(exposed.parse().unwrap()), "{exposed}");
        }
    }
}
