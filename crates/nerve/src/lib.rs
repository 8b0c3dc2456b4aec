//! nerve: health-checks the instances of a host and keeps a registration in etcd for each one
//! exactly while it is healthy and not in maintenance.
//!
//! Layout, one file per concept:
//! - [`config`]: the configuration file, its defaults and validation (errors name file + key).
//! - [`check`]: the `tcp`, `http` and `exec` checks; a check that cannot run is a failure.
//! - [`health`]: rise/fall as a pure function.
//! - [`monitor`]: one task per instance running its checks and reporting to [`state`].
//! - [`state`]: what is known about every instance, and the one place deciding which
//!   registrations should exist.
//! - [`registrar`]: makes etcd hold exactly those registrations under the process's lease
//!   (kept by [`registry::lease`]), and reconciles periodically.
//! - [`reload`]: SIGHUP as a pure diff between the old and the new configuration.
//! - [`admin`]: the HTTP admin API (`/status`, maintenance switches).
//! - This file: [`Nerve`], which wires them together and is what `main.rs` and the tests run.
//!
//! Operators' documentation is `docs/nerve.md`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod check;
pub mod config;
pub mod health;
pub mod monitor;
pub mod registrar;
pub mod reload;
pub mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use registry::lease::Lease;
use registry::Etcd;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::NerveConfig;
pub use state::InstanceStatus;

use monitor::Monitor;
use state::{InstanceId, Shared};

/// A running nerve. Start it with [`Nerve::start`], stop it with [`Nerve::shutdown`].
pub struct Nerve {
    config: NerveConfig,
    shared: Arc<Shared>,
    monitors: BTreeMap<InstanceId, Monitor>,
    /// Stops the monitors.
    checks_stop: CancellationToken,
    registrar_stop: CancellationToken,
    /// The admin API outlives the registrar so `/status` answers during `shutdown_delay`.
    admin_stop: CancellationToken,
    registrar: JoinHandle<()>,
    lease: Lease,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Nerve {
    /// Starts checking, registering and (if configured) serving the admin API. Returns as
    /// soon as everything runs, also while etcd is unreachable: registration then happens
    /// when it comes back. Fails only if the admin address cannot be bound.
    pub async fn start(config: NerveConfig) -> std::io::Result<Nerve> {
        let etcd = Etcd::new(config.etcd.clone());
        let shared = Arc::new(Shared::new(&config.etcd.prefix));
        let registrar_stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let checks_stop = CancellationToken::new();
        let admin = match config.admin {
            Some(addr) => Some(admin::serve(addr.0, shared.clone(), admin_stop.clone()).await?),
            None => None,
        };
        let lease = Lease::start(etcd.clone(), config.lease_ttl.get());
        let registrar = registrar::Registrar::new(
            etcd,
            lease.handle(),
            shared.clone(),
            config.reconcile_interval.get(),
        );
        let registrar = tokio::spawn(registrar.run(registrar_stop.clone()));
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
            admin_stop,
            registrar,
            lease,
            admin,
        })
    }

    /// The address the admin API listens on (with port 0 in the config, the real port).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
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
    /// that was carried out.
    pub async fn reload(&mut self, new: NerveConfig) -> reload::Plan {
        let plan = reload::diff(&self.config, &new);
        for key in &plan.needs_restart {
            tracing::warn!(
                key,
                "changed, but only takes effect after a restart; keeping the old value"
            );
        }
        for id in &plan.remove {
            if let Some(m) = self.monitors.remove(id) {
                m.stop().await;
            }
            self.shared.remove(id);
            tracing::info!(service = %id.0, instance = %id.1, "removed by reload");
        }
        for service in &plan.update {
            let id = (service.name.clone(), service.instance_id());
            if let Some(m) = self.monitors.get(&id) {
                m.update(&self.shared, service.clone());
                tracing::info!(service = %id.0, instance = %id.1, "changed by reload");
            }
        }
        for service in &plan.add {
            let id = (service.name.clone(), service.instance_id());
            tracing::info!(service = %id.0, instance = %id.1, "added by reload");
            let monitor = Monitor::spawn(self.shared.clone(), service.clone(), &self.checks_stop);
            self.monitors.insert(id, monitor);
        }
        self.config = reload::effective(&self.config, &new);
        tracing::info!(
            added = plan.add.len(),
            removed = plan.remove.len(),
            changed = plan.update.len(),
            unchanged = plan.unchanged.len(),
            "configuration reloaded"
        );
        plan
    }

    /// Deregisters everything with one lease revoke, waits `shutdown_delay`, and stops.
    pub async fn shutdown(self) {
        self.checks_stop.cancel();
        for (_, m) in self.monitors {
            m.stop().await;
        }
        // The registrar must not put anything after the revoke.
        self.registrar_stop.cancel();
        let _ = self.registrar.await;
        let etcd = &self.config.etcd;
        let deadline = etcd.request_timeout.get() + etcd.dial_timeout.get();
        match self.lease.revoke(deadline).await {
            Some(id) => tracing::info!(lease = id, "deregistered everything"),
            None => {
                tracing::info!("nothing revoked; registrations, if any, expire with the lease TTL")
            }
        }
        self.shared.set_registered(None, Default::default());
        if let Some(delay) = self.config.shutdown_delay {
            tracing::info!(%delay, "waiting shutdown_delay before exiting");
            tokio::time::sleep(delay.get()).await;
        }
        self.admin_stop.cancel();
        if let Some((_, task)) = self.admin {
            let _ = task.await;
        }
        tracing::info!("nerve stopped");
    }
}
