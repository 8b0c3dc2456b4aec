//! One task per instance: runs its checks every `check_interval`, feeds the results through
//! rise/fall ([`crate::health`]), watches its maintenance file, and reports to [`Shared`].
//! Counts every check and health transition into the instance's [`InstanceCounters`].
//! Logs one line per change of state, never one per check.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::check::CheckResult;
use crate::check::{self, Check, CheckError};
use crate::config::ServiceConfig;
use crate::counters::InstanceCounters;
use crate::health::{Health, Transition};
use crate::state::{InstanceId, Shared};

/// A running monitor; dropping it does not stop it, [`Monitor::stop`] does.
pub struct Monitor {
    spec: watch::Sender<ServiceConfig>,
    /// Names the instance (`service`, `instance`) on every line logged about it.
    span: tracing::Span,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Monitor {
    /// Registers the instance in `shared` (unhealthy) and starts checking it.
    pub fn spawn(
        shared: Arc<Shared>,
        service: ServiceConfig,
        parent: &CancellationToken,
    ) -> Monitor {
        let counters = shared.upsert(&service).counters;
        // Every line the task logs names the instance once, through this span.
        let span = tracing::info_span!(
            "monitor",
            service = %service.name,
            instance = %service.instance_id()
        );
        let (spec_tx, spec_rx) = watch::channel(service);
        let stop = parent.child_token();
        let task =
            tokio::spawn(run(shared, counters, spec_rx, stop.clone()).instrument(span.clone()));
        Monitor {
            spec: spec_tx,
            span,
            stop,
            task,
        }
    }

    /// Switches to a new definition of the same instance; the next round of checks runs at
    /// once with the new checks (a round in flight is abandoned). Health history is kept
    /// unless the address changed ([`Shared::upsert`]); returns whether it did.
    pub fn update(&self, shared: &Shared, service: ServiceConfig) -> bool {
        let moved = shared.upsert(&service).moved;
        self.spec.send_replace(service);
        moved
    }

    /// The instance's span, for lines about it logged outside its task (reloads).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    shared: Arc<Shared>,
    counters: Arc<InstanceCounters>,
    mut spec: watch::Receiver<ServiceConfig>,
    stop: CancellationToken,
) {
    let mut file_maintenance = false;
    loop {
        let service = spec.borrow_and_update().clone();
        let id: InstanceId = (service.name.clone(), service.instance_id());
        let checks: Vec<Check> = service
            .checks
            .iter()
            .map(|c| Check::new(&service, c))
            .collect();
        let mut tick = tokio::time::interval(service.check_interval.get());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The failure reason last logged while unhealthy: a check that keeps failing the
        // same way, or flaps below `rise`, is logged once, not once per round.
        let mut logged_failure: Option<CheckError> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = spec.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = stop.cancelled() => return,
            }
            let started = Instant::now();
            let round = check::run_all_observed(&checks, |kind, passed, took| {
                counters.check(kind, passed, took);
            });
            let result = tokio::select! {
                r = round => r,
                // The round checks what the instance was; start over with what it is.
                changed = spec.changed() => {
                    if changed.is_err() { return; }
                    break;
                }
                _ = stop.cancelled() => return,
            };
            let took = started.elapsed();
            file_maintenance = watch_maintenance_file(&service, file_maintenance).await;
            let before = shared.health(&id);
            let (after, transition) = before.step(result.is_ok(), service.rise, service.fall);
            // Not recorded: a reload moved the instance meanwhile and its monitor starts over
            // (the reload logs that); nothing changed state here.
            if !shared.report(&id, &service, after, &result, took, file_maintenance) {
                continue;
            }
            if let Some(t) = transition {
                counters.transition(t);
            }
            log_round(transition, after, &result, &mut logged_failure);
        }
    }
}

/// Whether the instance's maintenance file exists now; logs a change from `before`.
async fn watch_maintenance_file(service: &ServiceConfig, before: bool) -> bool {
    let now = match &service.maintenance_file {
        Some(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
        None => false,
    };
    if now != before {
        let file = service
            .maintenance_file
            .as_deref()
            .map(|p| p.display().to_string());
        if now {
            tracing::info!(file, "maintenance file present: deregistering");
        } else {
            tracing::info!(file, "maintenance file gone: back to health checks");
        }
    }
    now
}

/// One line per change of state; a failure reason is logged once while it stays the same.
fn log_round(
    transition: Option<Transition>,
    after: Health,
    result: &CheckResult,
    logged_failure: &mut Option<CheckError>,
) {
    match (transition, result) {
        (Some(Transition::BecameHealthy), _) => {
            tracing::info!(passes = after.passes, "healthy");
        }
        (Some(Transition::BecameUnhealthy), Err(reason)) => {
            tracing::warn!(failures = after.failures, %reason, "unhealthy");
            *logged_failure = Some(reason.clone());
        }
        // A new instance that never passes would otherwise never say why.
        (None, Err(reason)) if !after.healthy && logged_failure.as_ref() != Some(reason) => {
            tracing::info!(%reason, "not healthy: check failing");
            *logged_failure = Some(reason.clone());
        }
        _ => {
            tracing::debug!(?result, "check");
        }
    }
}
