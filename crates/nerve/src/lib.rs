//! nerve: health-checks the instances of a host and keeps a registration in etcd for each one
//! exactly while it is healthy and not in maintenance.
//!
//! Layout, one file per concept:
//! - [`config`]: the configuration file, its defaults and validation (errors name file + key).
//! - [`check`]: the `tcp`, `http` and `exec` checks; a check that cannot run is a failure.
//! - [`health`]: rise/fall as a pure function.
//! - [`monitor`]: one task per instance running its checks and reporting to [`state`].
//! - [`switches`]: the admin API's maintenance switches and runtime weights, and how they
//!   combine (pure).
//! - [`state`]: what is known about every instance, and the one place deciding which
//!   registrations should exist; [`history`]: the last rounds of checks it keeps for
//!   `/status`.
//! - [`counters`]: the atomics the monitors, the registrar and the lease count into, and
//!   [`metrics`]: `GET /metrics`, read from them and from [`state`] at scrape time.
//! - [`registrar`]: makes etcd hold exactly those registrations under the process's lease
//!   (kept by [`registry::lease`]), and reconciles periodically.
//! - [`reload`]: SIGHUP as a pure diff between the old and the new configuration.
//! - [`import`]: `--import-smartstack`: an Airbnb nerve JSON configuration converted into
//!   ours (pure), written by `config_yaml` as YAML that reads back as the same values.
//! - [`admin`]: nerve's routes on the shared admin server of [`daemon`] (`/health`, `/status`,
//!   maintenance switches).
//! - This file: [`Nerve`], which wires them together and is what `main.rs` and the tests run.
//!
//! Operators' documentation is `docs/nerve.md`.
#![forbid(unsafe_code)]

// Private unless something outside needs them: `config` is `main.rs`'s (`config::load`)
// and the tests', `import` is `main.rs`'s; what else they use is re-exported below.
mod admin;
mod check;
pub mod config;
mod config_yaml;
mod counters;
mod health;
mod history;
pub mod import;
mod metrics;
mod monitor;
mod registrar;
mod reload;
mod state;
mod switches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use daemon::admin::AdminServer;
use registry::lease::{Lease, LeaseId};
use registry::Etcd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use check::{run_all, Check, CheckError, CheckResult};
pub use config::{NerveConfig, ServiceConfig};
pub use reload::Plan;
pub use state::InstanceStatus;

use monitor::Monitor;
use state::{InstanceId, Shared};

/// Why [`Nerve::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin address cannot be bound (in use, not local).
    #[error("{source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why [`Nerve::reload`] was rejected; nothing was changed then.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new admin address cannot be bound (port in use, the same port on another IP).
    #[error("cannot bind the new admin address {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What [`Nerve::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The lease revoked (which deleted every registration at once); `None` when there was
    /// none or etcd did not answer in time: the keys, if any, expire with the lease TTL.
    pub revoked: Option<i64>,
}

/// A running nerve. Start it with [`Nerve::start`], stop it with [`Nerve::shutdown`].
pub struct Nerve {
    config: NerveConfig,
    shared: Arc<Shared>,
    monitors: BTreeMap<InstanceId, Monitor>,
    /// Stops the monitors.
    checks_stop: CancellationToken,
    registrar_stop: CancellationToken,
    registrar: JoinHandle<()>,
    lease: Lease,
    /// Outlives the registrar so `/status` answers during `shutdown_delay`.
    admin: Option<AdminServer>,
    /// The etcd handle in force, for the admin API's reachability.
    etcd: admin::EtcdSlot,
    /// The registrar reads its reconcile interval from here, so a reload can change it.
    reconcile_interval: watch::Sender<Duration>,
}

/// A reload with everything that can fail done, nothing running changed yet: what
/// [`Nerve::commit`] needs to apply it without any step that can fail.
struct Prepared {
    plan: Plan,
    config: NerveConfig,
    /// `Some(new)` when the admin address changes: the new server, bound and serving.
    admin: Option<Option<AdminServer>>,
}

/// Starts a lease on `etcd` (a new handle for `config.etcd`) and a registrar writing under it.
fn start_registrar(
    config: &NerveConfig,
    etcd: Etcd,
    shared: &Arc<Shared>,
    reconcile_interval: watch::Receiver<Duration>,
) -> (Lease, JoinHandle<()>, CancellationToken) {
    // The counters outlive this lease: a reload that moves the registrations starts another.
    let counters = shared.counters().lease.clone();
    let lease = Lease::start_counting(etcd.clone(), config.lease_ttl.get(), counters);
    let stop = CancellationToken::new();
    let registrar = registrar::Registrar::new(
        etcd,
        lease.handle(),
        shared.clone(),
        config.reconcile_interval.get(),
    )
    .with_reconcile_interval(reconcile_interval);
    let span = tracing::info_span!("registrar", prefix = %config.etcd.prefix);
    let task = tokio::spawn(tracing::Instrument::instrument(
        registrar.run(stop.clone()),
        span,
    ));
    (lease, task, stop)
}

impl Nerve {
    /// Ready for traffic: every instance has had its first round of checks and a lease
    /// is held (what `GET /ready` says).
    pub fn is_ready(&self) -> bool {
        self.shared.waiting_for().is_empty()
    }

    /// Starts checking, registering and (if configured) serving the admin API. Returns as
    /// soon as everything runs, also while etcd is unreachable: registration then happens
    /// when it comes back. Fails only if the admin address cannot be bound.
    pub async fn start(config: NerveConfig) -> Result<Nerve, StartError> {
        let shared = Arc::new(Shared::new(&config.etcd.prefix));
        let checks_stop = CancellationToken::new();
        let etcd = Etcd::new(config.etcd.clone());
        let etcd_slot = Arc::new(std::sync::Mutex::new(etcd.clone()));
        let admin = match config.admin {
            Some(addr) => Some(
                admin::serve(addr.0, shared.clone(), etcd_slot.clone())
                    .await
                    .map_err(|source| StartError::AdminBind {
                        addr: addr.0,
                        source,
                    })?,
            ),
            None => None,
        };
        let (reconcile_interval, reconcile_rx) = watch::channel(config.reconcile_interval.get());
        let (lease, registrar, registrar_stop) =
            start_registrar(&config, etcd, &shared, reconcile_rx);
        let monitors = config
            .services
            .iter()
            .map(|s| {
                (
                    (s.name.clone(), s.instance_id()),
                    Monitor::spawn(shared.clone(), s.clone(), &checks_stop),
                )
            })
            .collect();
        tracing::info!(
            services = config.services.len(),
            endpoints = ?config.etcd.endpoints,
            prefix = %config.etcd.prefix,
            "nerve started"
        );
        Ok(Nerve {
            config,
            shared,
            monitors,
            checks_stop,
            registrar_stop,
            registrar,
            lease,
            admin,
            etcd: etcd_slot,
            reconcile_interval,
        })
    }

    /// The address the admin API listens on (with port 0 in the config, the real port).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// The configuration in force.
    pub fn config(&self) -> &NerveConfig {
        &self.config
    }

    /// What `/status` shows.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.shared.statuses()
    }

    /// The lease id in force, if any.
    pub fn lease(&self) -> Option<i64> {
        self.lease.current()
    }

    /// Applies a new (already validated) configuration: see [`reload`]. Returns the plan
    /// that was carried out, or why it was rejected, in which case nothing was changed:
    /// everything that can fail happens in [`Nerve::prepare`], before anything running is
    /// touched, and [`Nerve::commit`] cannot fail.
    pub async fn reload(&mut self, new: NerveConfig) -> Result<Plan, ReloadError> {
        let prepared = match self.prepare(new).await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(error = %e, "reload rejected, keeping the running configuration");
                return Err(e);
            }
        };
        Ok(self.commit(prepared).await)
    }

    /// The fallible half of a reload: plans it and binds a new admin address. Changes
    /// nothing that runs (a bound server is stopped again if the reload is dropped).
    async fn prepare(&self, new: NerveConfig) -> Result<Prepared, ReloadError> {
        let plan = reload::diff(&self.config, &new);
        let admin = match plan.admin {
            None => None,
            Some(None) => Some(None),
            Some(Some(addr)) => {
                let bound = admin::serve(addr.0, self.shared.clone(), self.etcd.clone())
                    .await
                    .map_err(|source| ReloadError::AdminBind {
                        addr: addr.0,
                        source,
                    })?;
                Some(Some(bound))
            }
        };
        Ok(Prepared {
            plan,
            config: new,
            admin,
        })
    }

    /// The infallible half of a reload: carries out a prepared plan.
    async fn commit(&mut self, prepared: Prepared) -> Plan {
        let Prepared {
            plan,
            config: new,
            admin,
        } = prepared;
        if let Some(admin) = admin {
            self.replace_admin(admin).await;
        }
        let moving = plan.move_registrations;
        if moving {
            // The old registrar stops writing but its lease stays alive (its keeper runs
            // until the revoke below), so every key it wrote stays until the new ones exist.
            self.registrar_stop.cancel();
            let _ = (&mut self.registrar).await;
            if plan.prefix_changed {
                self.shared.set_prefix(&new.etcd.prefix);
            }
        }
        self.apply_instances(&plan).await;
        if let Some(every) = plan.reconcile_interval {
            self.reconcile_interval.send_replace(every);
            tracing::info!(
                ?every,
                "reconcile interval changed; applies from the next tick"
            );
        }
        if moving {
            self.move_registrations(&new).await;
        }
        self.config = new;
        tracing::info!(
            added = plan.add.len(),
            removed = plan.remove.len(),
            changed = plan.update.len(),
            unchanged = plan.unchanged.len(),
            moved = moving,
            "configuration reloaded"
        );
        plan
    }

    /// Stops the monitors of removed instances, updates changed ones, starts added ones.
    /// Each line is logged in the instance's span, which names it.
    async fn apply_instances(&mut self, plan: &Plan) {
        for id in &plan.remove {
            if let Some(m) = self.monitors.remove(id) {
                m.span().in_scope(|| tracing::info!("removed by reload"));
                m.stop().await;
            }
            self.shared.remove(id);
        }
        for service in &plan.update {
            let id = (service.name.clone(), service.instance_id());
            let Some(m) = self.monitors.get(&id) else {
                continue;
            };
            let moved = m.update(&self.shared, service.clone());
            m.span().in_scope(|| {
                if moved {
                    tracing::info!(
                        host = %service.host,
                        port = service.port,
                        rise = service.rise,
                        "address changed by reload: deregistered until it passes rise checks \
                         at the new address"
                    );
                } else {
                    tracing::info!("changed by reload");
                }
            });
        }
        for service in &plan.add {
            let id = (service.name.clone(), service.instance_id());
            let monitor = Monitor::spawn(self.shared.clone(), service.clone(), &self.checks_stop);
            monitor
                .span()
                .in_scope(|| tracing::info!("added by reload"));
            self.monitors.insert(id, monitor);
        }
    }

    /// Puts the new admin server (already bound) in place and stops the old one.
    async fn replace_admin(&mut self, new: Option<AdminServer>) {
        if let Some(old) = std::mem::replace(&mut self.admin, new) {
            let addr = old.addr();
            // Awaited so that the old port is closed when the reload returns.
            old.stop().await;
            tracing::info!(old = %addr, "old admin API stopped");
        }
    }

    /// Puts every wanted registration under a new lease on a handle built from `new`, then
    /// revokes the old lease. The old registrar must be stopped already.
    async fn move_registrations(&mut self, new: &NerveConfig) {
        let reconcile_rx = self.reconcile_interval.subscribe();
        let etcd = Etcd::new(new.etcd.clone());
        *self.etcd.lock().unwrap_or_else(|p| p.into_inner()) = etcd.clone();
        let (lease, registrar, stop) = start_registrar(new, etcd, &self.shared, reconcile_rx);
        let old_lease = std::mem::replace(&mut self.lease, lease);
        self.registrar = registrar;
        self.registrar_stop = stop;
        tracing::info!(
            endpoints = ?new.etcd.endpoints,
            prefix = %new.etcd.prefix,
            lease_ttl = %new.lease_ttl,
            "etcd settings changed: registering everything under a new lease before releasing the old one"
        );
        let e = &new.etcd;
        if self.wait_all_registered(e).await {
            let lease = self.lease.current().map(LeaseId);
            tracing::info!(?lease, "every registration is written under the new lease");
        } else {
            tracing::error!(
                endpoints = ?e.endpoints,
                "the new etcd did not take every registration in time; they keep being retried there, \
                 and the old lease is released anyway"
            );
        }
        let old = &self.config.etcd;
        match old_lease
            .revoke(old.request_timeout.get() + old.dial_timeout.get())
            .await
        {
            Some(id) => tracing::info!(lease = %LeaseId(id), "old lease revoked"),
            None => tracing::warn!("no old lease revoked; its keys, if any, expire with its TTL"),
        }
    }

    /// Waits until every wanted registration is written under the lease in force; false if
    /// that took longer than `2 × (dial_timeout + request_timeout)` of `etcd` (the new
    /// settings): enough for a reachable cluster to connect, grant and take the puts;
    /// waiting longer would only delay the reload (and a SIGTERM behind it) while the old
    /// lease still holds the registrations.
    async fn wait_all_registered(&self, etcd: &registry::EtcdConfig) -> bool {
        let bound = 2 * (etcd.dial_timeout.get() + etcd.request_timeout.get());
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let current = self.lease.current();
            if current.is_some_and(|id| self.shared.all_registered_under(id)) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // The registrar reports to `shared` without a signal to wait on; polling at a
            // short period until the deadline keeps this simple.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deregisters everything with one lease revoke, waits `shutdown_delay`, and stops.
    pub async fn shutdown(self) -> ShutdownReport {
        self.checks_stop.cancel();
        for (_, m) in self.monitors {
            m.stop().await;
        }
        // The registrar must not put anything after the revoke.
        self.registrar_stop.cancel();
        let _ = self.registrar.await;
        let etcd = &self.config.etcd;
        let deadline = etcd.request_timeout.get() + etcd.dial_timeout.get();
        let revoked = self.lease.revoke(deadline).await;
        match revoked {
            Some(id) => tracing::info!(lease = %LeaseId(id), "deregistered everything"),
            None => {
                tracing::info!("nothing revoked; registrations, if any, expire with the lease TTL")
            }
        }
        self.shared.set_registered(None, Default::default());
        if let Some(delay) = self.config.shutdown_delay {
            tracing::info!(%delay, "waiting shutdown_delay before exiting");
            tokio::time::sleep(delay.get()).await;
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        tracing::info!("nerve stopped");
        ShutdownReport { revoked }
    }
}
