//! synapse: the consumer side of the mesh. For every configured service it listens on a
//! fixed local address and forwards each accepted TCP connection to one of the service's
//! instances registered in etcd, so applications dial `127.0.0.1:PORT` and never learn an
//! address.
//!
//! Layout, one file per concept (pure logic apart from I/O, so it can be tested as such):
//! - [`config`]: the configuration file, its defaults and validation (errors name the key).
//! - [`balance`]: pure backend picks (smooth weighted round robin, power of two choices,
//!   weighted random), zone affinity and the ejection panic fallback.
//! - [`backends`]: the immutable backend set, the pure update from a registry view
//!   (stats kept, removed backends draining), per-backend stats and outlier ejection.
//! - [`service`]: a service at run time: listener, accept loop with backpressure, and the
//!   follower that turns registry views (or the cache, or `default_servers`) into sets.
//! - [`forward`]: one connection: pick, connect with timeout, retry elsewhere, relay.
//! - [`replay`]: `retry_unanswered`: a request its backend closed on before answering is
//!   sent again to another backend.
//! - [`resolve`]: DNS names among the backends, resolved in the background and kept
//!   through DNS failures.
//! - [`copy`]: the byte relay (`datapath`, idle timeout included), alone so it can be swapped.
//! - [`limit`]: `max_connections` as a lock-free counter the accept loop waits on.
//! - [`descriptors`]: the descriptor limit: raised at start, what the services need, and
//!   each service's share of it when it is short (a cap below `max_connections`).
//! - [`quiet`]: a future polled only when it woke the task, for the rarely firing branches
//!   (drain, shutdown cut, stop accepting) next to the busy relay and accept.
//! - [`cache`]: the cache file of last known backends, written atomically.
//! - [`reload`]: the pure diff between two configurations that drives a SIGHUP reload.
//! - [`admin`]: the loopback HTTP status server.
//! - [`Synapse`] (this file): starts all of that, reloads it and shuts it down; `main.rs`
//!   only parses the command line and turns signals into calls on it.
//!
//! Discovery itself (get + watch + resync, static stability) is `registry::discovery`,
//! shared with anything else that needs to follow the registry.
//!
//! Operators' documentation: `docs/synapse.md`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod balance;
pub mod cache;
pub mod config;
pub mod copy;
pub mod descriptors;
pub mod forward;
pub mod limit;
pub mod quiet;
pub mod reload;
pub mod replay;
pub mod resolve;
pub mod service;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use registry::discovery::{self, DiscoveryOptions};
use registry::Etcd;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Balance, ServiceConfig, SynapseConfig};
pub use reload::Action;
pub use service::ServiceStatus;

use crate::admin::Admin;
use crate::backends::Source;
use crate::cache::CacheWriter;
use crate::service::{ServiceRuntime, Shared, Sources};

/// A running synapse. Every method takes `&self`; reloads and shutdown are serialised.
pub struct Synapse {
    state: tokio::sync::Mutex<State>,
    services: Arc<ArcSwap<BTreeMap<String, Arc<Shared>>>>,
    admin_addr: Mutex<Option<SocketAddr>>,
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

fn discovery_options(etcd: &Etcd, config: &SynapseConfig) -> DiscoveryOptions {
    DiscoveryOptions {
        // A quiet watch is probed as often as the connection is; a hung member is then
        // detected on the same schedule whichever layer notices first.
        progress_interval: etcd.config().keepalive_interval.get(),
        grace_period: config.registry_grace_period.get(),
        ..DiscoveryOptions::default()
    }
}

async fn bind(service: &ServiceConfig) -> anyhow::Result<TcpListener> {
    forward::listen(service.listen.0).with_context(|| {
        format!(
            "service {:?}: cannot listen on {}",
            service.name, service.listen
        )
    })
}

/// Whether other hosts can reach a listener on `addr`: anything but loopback (an
/// IPv4-mapped loopback address included, `::ffff:127.0.0.1` being 127.0.0.1).
fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

fn warn_if_exposed(service: &ServiceConfig) {
    if is_exposed(service.listen.0) {
        tracing::warn!(service = %service.name, listen = %service.listen, "listening on a non-loopback address: other hosts can reach this service through synapse");
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
            tracing::warn!(error = %e, "ignoring the cache file");
            BTreeMap::new()
        }
    }
}

impl Synapse {
    /// Binds every listener (and the admin server) and starts following the registry.
    /// Fails only when a listener cannot be bound; etcd being unreachable is not an error.
    pub async fn start(config: SynapseConfig) -> anyhow::Result<Self> {
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
        let mut listeners = Vec::new();
        for s in &config.services {
            listeners.push(bind(s).await?);
        }
        for (s, listener) in config.services.iter().zip(listeners) {
            warn_if_exposed(s);
            let cap = descriptor_cap(&config, &plan, &s.name);
            let runtime = start_service(s, cap, listener, &config, &etcd, &cached, &cache, &cut)?;
            runtimes.insert(s.name.clone(), runtime);
        }
        let synapse = Synapse {
            state: tokio::sync::Mutex::new(State {
                config: config.clone(),
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
            cut,
        };
        {
            let mut state = synapse.state.lock().await;
            synapse.publish(&state);
            if let Some(addr) = config.admin {
                let listener = TcpListener::bind(addr.0)
                    .await
                    .with_context(|| format!("admin: cannot listen on {addr}"))?;
                synapse.start_admin(&mut state, listener)?;
            }
        }
        Ok(synapse)
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run(
        config: SynapseConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<ShutdownReport> {
        let synapse = Synapse::start(config).await?;
        shutdown.await;
        Ok(synapse.shutdown().await)
    }

    fn publish(&self, state: &State) {
        let map = state
            .runtimes
            .iter()
            .map(|(n, r)| (n.clone(), r.shared.clone()))
            .collect();
        self.services.store(Arc::new(map));
    }

    fn start_admin(&self, state: &mut State, listener: TcpListener) -> anyhow::Result<()> {
        let services = self.services.clone();
        let status: admin::StatusFn = Arc::new(move || {
            let services: BTreeMap<String, ServiceStatus> = services
                .load()
                .iter()
                .map(|(n, s)| (n.clone(), s.status()))
                .collect();
            serde_json::json!({ "services": services })
        });
        let admin = Admin::start(listener, status).context("admin server")?;
        *self
            .admin_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(admin.addr());
        state.admin = Some(admin);
        Ok(())
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
    pub fn status(&self) -> BTreeMap<String, ServiceStatus> {
        self.services
            .load()
            .iter()
            .map(|(n, s)| (n.clone(), s.status()))
            .collect()
    }

    /// Applies a new configuration without cutting any connection. On error (a listener
    /// cannot be bound) nothing has changed and the old configuration keeps running.
    pub async fn reload(&self, new: SynapseConfig) -> anyhow::Result<Vec<Action>> {
        let mut state = self.state.lock().await;
        if state.stopped {
            anyhow::bail!("synapse is shutting down");
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
                        .is_some_and(|r| r.shared.listen_addr() == s.listen.0) =>
                {
                    Action::Update(s)
                }
                a => a,
            })
            .collect();
        // Bind everything new first, so that a failure leaves the old config untouched.
        // An address held by a service this reload stops or moves is bound after it is freed.
        let freed: HashSet<SocketAddr> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop(n) => state.runtimes.get(n).map(|r| r.shared.listen_addr()),
                Action::Rebind(s) => state.runtimes.get(&s.name).map(|r| r.shared.listen_addr()),
                _ => None,
            })
            .filter(|a| a.port() != 0)
            .collect();
        let mut listeners: BTreeMap<String, TcpListener> = BTreeMap::new();
        for a in &actions {
            if let Action::Start(s) | Action::Rebind(s) = a {
                if freed.contains(&s.listen.0) {
                    continue;
                }
                listeners.insert(s.name.clone(), bind(s).await?);
            }
        }
        let mut admin_listener = None;
        if actions.contains(&Action::Admin) {
            if let Some(addr) = new.admin {
                let same_as_old = state.config.admin.is_some_and(|a| a == addr);
                if !same_as_old {
                    admin_listener = Some(
                        TcpListener::bind(addr.0)
                            .await
                            .with_context(|| format!("admin: cannot listen on {addr}"))?,
                    );
                }
            }
        }
        if actions.contains(&Action::CacheFile) {
            let mut cached = read_cache(&new);
            // What the old file recorded is at least as recent as what the new path held:
            // the new file starts with every service's last known set, etcd up or not.
            if let Some(old) = &state.cache {
                cached.extend(old.entries());
            }
            state.cache = new.cache_file.clone().map(|path| {
                let writer = CacheWriter::start(path, cached.clone());
                writer.write_soon();
                writer
            });
            state.cached = cached;
            // Every running service moves to the new writer (or to none), dropping the old
            // one: a removed or moved cache file is no longer written.
            for runtime in state.runtimes.values() {
                runtime.shared.set_cache(state.cache.clone());
            }
        }
        if state.config.etcd != new.etcd {
            state.etcd = Etcd::new(new.etcd.clone());
        }
        // Caps for the services started now; every service's cap is set again at the end,
        // from the configuration that actually runs.
        let plan = descriptor_plan(&new);
        let mut started = HashSet::new();
        // The configuration actually running: a service that could not take an address
        // freed in this reload is recorded as not started (or not moved), so that the next
        // reload of the same file tries again instead of seeing no change.
        let mut recorded = new.clone();
        for action in &actions {
            match action {
                Action::Stop(name) => {
                    if let Some(runtime) = state.runtimes.remove(name) {
                        tracing::info!(service = %name, "service removed: no longer accepting; live connections drain");
                        let tracker = runtime.stop().await;
                        state.retired.push(tracker);
                        if let Some(cache) = &state.cache {
                            cache.remove(name);
                        }
                    }
                }
                Action::Start(s) => {
                    let listener = match listeners.remove(&s.name) {
                        Some(l) => l,
                        None => match bind(s).await {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "cannot start service after freeing its address; a later reload retries");
                                recorded.services.retain(|r| r.name != s.name);
                                continue;
                            }
                        },
                    };
                    warn_if_exposed(s);
                    let runtime = start_service(
                        s,
                        descriptor_cap(&new, &plan, &s.name),
                        listener,
                        &new,
                        &state.etcd,
                        &state.cached,
                        &state.cache,
                        &self.cut,
                    )?;
                    tracing::info!(service = %s.name, listen = %runtime.shared.listen_addr(), "service added");
                    state.runtimes.insert(s.name.clone(), runtime);
                    started.insert(s.name.clone());
                }
                Action::Update(s) => {
                    if let Some(runtime) = state.runtimes.get(&s.name) {
                        runtime.shared.update_config(s.clone());
                        tracing::info!(service = %s.name, "service updated in place");
                    }
                }
                Action::Rebind(s) => {
                    let listener = listeners.remove(&s.name);
                    let unmoved = state.config.service(&s.name).cloned();
                    if let Some(runtime) = state.runtimes.get_mut(&s.name) {
                        runtime.shared.update_config(s.clone());
                        let listener = match listener {
                            Some(l) => Some(l),
                            None => {
                                // Our own old address, or one a stopped service freed.
                                runtime.stop_accepting_only().await;
                                match bind(s).await {
                                    Ok(l) => Some(l),
                                    Err(e) => {
                                        tracing::error!(error = %format!("{e:#}"), "cannot move service to its new address: it is not listening; a later reload retries");
                                        recorded_as_unmoved(&mut recorded, unmoved);
                                        None
                                    }
                                }
                            }
                        };
                        if let Some(l) = listener {
                            warn_if_exposed(s);
                            runtime.rebind(l).await;
                            tracing::info!(service = %s.name, listen = %runtime.shared.listen_addr(), "service moved to a new listen address");
                        }
                    }
                }
                Action::Rediscover => {
                    let etcd = state.etcd.clone();
                    for (name, runtime) in state.runtimes.iter_mut() {
                        if !started.contains(name) {
                            runtime.rediscover(discovery::spawn(
                                etcd.clone(),
                                name,
                                discovery_options(&etcd, &new),
                            ));
                        }
                    }
                    tracing::info!(
                        "etcd settings changed: following the registry through the new settings"
                    );
                }
                Action::Zone(zone) => {
                    for runtime in state.runtimes.values() {
                        runtime.shared.set_zone(zone.clone());
                    }
                }
                Action::Admin => {
                    if state.config.admin.is_some() && new.admin.is_none() {
                        state.admin = None;
                        *self
                            .admin_addr
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = None;
                    }
                    if let Some(listener) = admin_listener.take() {
                        state.admin = None;
                        self.start_admin(&mut state, listener)?;
                    }
                }
                Action::CacheFile => {}
            }
        }
        state.config = recorded;
        // Services or max_connections may have changed, or the limit (prlimit --pid).
        let plan = descriptor_plan(&state.config);
        if plan != state.descriptors {
            report_descriptors(&state.config, &plan, state.descriptors.short());
        }
        for (name, runtime) in &state.runtimes {
            runtime
                .shared
                .set_descriptor_cap(descriptor_cap(&state.config, &plan, name));
        }
        state.descriptors = plan;
        state.retired.retain(|t| !t.is_empty());
        self.publish(&state);
        Ok(actions)
    }

    /// Stops accepting everywhere, lets live connections finish for up to
    /// `shutdown_timeout`, then closes whatever is left.
    pub async fn shutdown(&self) -> ShutdownReport {
        let mut state = self.state.lock().await;
        state.stopped = true;
        let mut trackers = std::mem::take(&mut state.retired);
        for runtime in state.runtimes.values_mut() {
            runtime.stop_accepting_only().await;
            runtime.connections.close();
            trackers.push(runtime.connections.clone());
        }
        // The admin server stays up while connections drain, so the drain can be watched.
        let timeout = state.config.shutdown_timeout.get();
        let live: usize = trackers.iter().map(|t| t.len()).sum();
        if live > 0 {
            tracing::info!(connections = live, timeout = ?timeout, "shutting down: waiting for live connections to finish");
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

#[allow(clippy::too_many_arguments)]
fn start_service(
    s: &ServiceConfig,
    descriptor_cap: Option<u32>,
    listener: TcpListener,
    config: &SynapseConfig,
    etcd: &Etcd,
    cached: &BTreeMap<String, cache::CachedService>,
    cache: &Option<Arc<CacheWriter>>,
    cut: &CancellationToken,
) -> anyhow::Result<ServiceRuntime> {
    let addr = listener
        .local_addr()
        .with_context(|| format!("service {:?}: listener address", s.name))?;
    let shared = Shared::new(s.clone(), config.zone.clone(), addr, cut.child_token());
    shared.set_cache(cache.clone());
    shared.set_descriptor_cap(descriptor_cap);
    let initial = cached
        .get(&s.name)
        .map(|c| (Arc::new(c.instances.clone()), Source::Cache));
    let discovery = discovery::spawn(etcd.clone(), &s.name, discovery_options(etcd, config));
    Ok(ServiceRuntime::start(
        shared,
        listener,
        Sources { discovery, initial },
    ))
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
