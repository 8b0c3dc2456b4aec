//! What nerve knows about each instance, shared by the monitors (health), the admin API
//! (maintenance), the registrar (what is in etcd) and `/status`.
//!
//! The set of registrations that *should* exist is derived from it in one place
//! ([`Shared::publish_desired`]): an instance is wanted in etcd exactly while it is healthy
//! and not in maintenance. The registrar only ever follows that set, so no other code path
//! can register or deregister anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::check::CheckResult;
use crate::config::{CheckKind, ServiceConfig};
use crate::counters::{InstanceCounters, ProcessCounters};
use crate::health::{Health, Transition};
use crate::history::{RecentCheck, RecentChecks};
use crate::switches::{Scope, Switches};

/// (service, instance_id): how an instance is known across reloads.
pub type InstanceId = (String, String);

/// etcd key -> record JSON of every registration that should exist.
pub type Desired = BTreeMap<String, String>;

/// One instance as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStatus {
    pub service: String,
    pub instance_id: String,
    pub host: String,
    pub port: u16,
    pub key: String,
    /// The configured weight.
    pub weight: u32,
    /// The weight it is registered with: a runtime weight (`PUT .../weight`) while one
    /// applies, else the configured one.
    pub effective_weight: u32,
    pub healthy: bool,
    /// In maintenance for any reason (admin API or maintenance file).
    pub maintenance: bool,
    /// Why, when in maintenance: `"admin: all"`, `"admin: service"`, `"admin: instance"`,
    /// `"file: PATH"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance_reasons: Vec<String>,
    /// Whether nerve has written the key under the current lease (and not deleted it).
    pub registered: bool,
    /// `null` until the first round of checks has finished.
    pub last_check: Option<LastCheck>,
    pub consecutive_passes: u32,
    pub consecutive_failures: u32,
    /// The lease the key is (or would be) written under; `null` while there is none.
    #[serde(serialize_with = "registry::lease::serialize_hex")]
    pub lease: Option<i64>,
    /// Consecutive passes that make it healthy, and failures that make it unhealthy, as
    /// configured: with `consecutive_*` they tell how close it is to changing.
    pub rise: u32,
    pub fall: u32,
    /// The last rounds of checks, oldest first ([`crate::history::KEPT`] at most).
    pub recent_checks: Vec<RecentCheck>,
}

/// An instance as `/metrics` reads it: its status, the kinds of check it has now, and its
/// counters.
pub struct CountedInstance {
    pub status: InstanceStatus,
    pub kinds: BTreeSet<CheckKind>,
    pub counters: Arc<InstanceCounters>,
}

/// What [`Shared::upsert`] did.
pub struct Upserted {
    /// An existing instance's address changed, so its health was reset.
    pub moved: bool,
    /// The instance's counters, for its monitor.
    pub counters: Arc<InstanceCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastCheck {
    pub passed: bool,
    /// The failure reason; `null` when passed.
    pub reason: Option<String>,
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
}

struct Entry {
    service: ServiceConfig,
    key: String,
    record: String,
    health: Health,
    last: Option<LastCheck>,
    recent: RecentChecks,
    maintenance_file: bool,
    counters: Arc<InstanceCounters>,
}

#[derive(Default)]
struct Inner {
    instances: BTreeMap<InstanceId, Entry>,
    switches: Switches,
    /// Keys written under `lease`, as reported by the registrar.
    registered: BTreeSet<String>,
    lease: Option<i64>,
}

pub struct Shared {
    inner: Mutex<Inner>,
    desired: watch::Sender<Desired>,
    /// Changes only on a reload that moves the keys ([`Shared::set_prefix`]).
    prefix: Mutex<String>,
    counters: ProcessCounters,
}

impl Shared {
    pub fn new(prefix: &str) -> Shared {
        Shared {
            inner: Mutex::new(Inner::default()),
            desired: watch::channel(Desired::new()).0,
            prefix: Mutex::new(prefix.to_owned()),
            counters: ProcessCounters::default(),
        }
    }

    /// The process's counters (registry writes, the lease's).
    pub fn counters(&self) -> &ProcessCounters {
        &self.counters
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind, still consistent
        // enough to serve /status and deregister; never poison the whole process.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe_desired(&self) -> watch::Receiver<Desired> {
        self.desired.subscribe()
    }

    pub fn key_of(&self, service: &ServiceConfig) -> String {
        let prefix = self.prefix.lock().unwrap_or_else(|p| p.into_inner());
        registry::key::instance_key(&prefix, &service.name, &service.instance_id())
    }

    /// Moves every instance's key under `prefix` (a reload changed `etcd.prefix`). Health
    /// and maintenance stay; only the wanted keys change.
    pub fn set_prefix(&self, prefix: &str) {
        *self.prefix.lock().unwrap_or_else(|p| p.into_inner()) = prefix.to_owned();
        {
            let mut inner = self.lock();
            for e in inner.instances.values_mut() {
                e.key =
                    registry::key::instance_key(prefix, &e.service.name, &e.service.instance_id());
            }
        }
        self.publish_desired();
    }

    /// Whether every wanted registration is written under `lease`, as last reported by the
    /// registrar: the moment a reload may release the previous lease.
    pub fn all_registered_under(&self, lease: i64) -> bool {
        let desired = self.desired.borrow().clone();
        let inner = self.lock();
        inner.lease == Some(lease) && desired.keys().all(|k| inner.registered.contains(k))
    }

    /// Adds an instance, or updates its definition keeping its health history (a reload
    /// that changes only the weight must not take a healthy instance out), except when its
    /// address (`host` or `port`) changed: the health was that of another address, so it
    /// starts over unhealthy, is deregistered, and needs `rise` passes against the new one
    /// (a healthy one counts a transition to unhealthy; the reload logs it).
    pub fn upsert(&self, service: &ServiceConfig) -> Upserted {
        let id = (service.name.clone(), service.instance_id());
        let key = self.key_of(service);
        let upserted = {
            let mut inner = self.lock();
            let Inner {
                instances,
                switches,
                ..
            } = &mut *inner;
            if let Some(ended) = switches.reconfigured(&id, service.weight) {
                tracing::info!(
                    service = %id.0, instance = %id.1, runtime_weight = ended,
                    weight = service.weight,
                    "runtime weight dropped: the configured weight changed"
                );
            }
            let record = record_of(service, switches.effective_weight(&id, service.weight));
            match instances.get_mut(&id) {
                Some(e) => {
                    let moved = !e.service.same_address(service);
                    if moved {
                        if e.health.healthy {
                            e.counters.transition(Transition::BecameUnhealthy);
                        }
                        e.health = Health::default();
                        e.last = None;
                        e.recent.clear();
                    }
                    e.service = service.clone();
                    e.key = key;
                    e.record = record;
                    Upserted {
                        moved,
                        counters: e.counters.clone(),
                    }
                }
                None => {
                    let counters = Arc::new(InstanceCounters::default());
                    instances.insert(
                        id,
                        Entry {
                            service: service.clone(),
                            key,
                            record,
                            health: Health::default(),
                            last: None,
                            recent: RecentChecks::default(),
                            maintenance_file: false,
                            counters: counters.clone(),
                        },
                    );
                    Upserted {
                        moved: false,
                        counters,
                    }
                }
            }
        };
        self.publish_desired();
        upserted
    }

    pub fn remove(&self, id: &InstanceId) {
        {
            let mut inner = self.lock();
            inner.instances.remove(id);
            inner.switches.forget(id);
        }
        self.publish_desired();
    }

    /// Records a round of checks run against `checked` (the service definition the checks
    /// were built from) that took `took`, and the state of the maintenance file. A round
    /// that checked another address than the instance has now (a reload moved it
    /// meanwhile) is dropped: a pass there says nothing about the new address. Returns
    /// whether the round was recorded.
    pub fn report(
        &self,
        id: &InstanceId,
        checked: &ServiceConfig,
        health: Health,
        result: &CheckResult,
        took: Duration,
        maintenance_file: bool,
    ) -> bool {
        {
            let mut inner = self.lock();
            let Some(e) = inner.instances.get_mut(id) else {
                return false;
            };
            if !e.service.same_address(checked) {
                return false;
            }
            let passed = result.is_ok();
            let reason = result.as_ref().err().map(ToString::to_string);
            let at_unix_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            e.health = health;
            e.maintenance_file = maintenance_file;
            e.recent.push(RecentCheck {
                passed,
                at_unix_ms,
                duration_ms: took.as_secs_f64() * 1000.0,
                reason: reason.clone(),
            });
            e.last = Some(LastCheck {
                passed,
                reason,
                at_unix_ms,
            });
        }
        self.publish_desired();
        true
    }

    pub fn health(&self, id: &InstanceId) -> Health {
        self.lock()
            .instances
            .get(id)
            .map(|e| e.health)
            .unwrap_or_default()
    }

    /// Puts what `scope` covers in or out of maintenance. Returns false, changing nothing,
    /// for a service or instance nerve does not run (most likely a typo).
    pub fn set_disabled(&self, scope: Scope<'_>, disabled: bool) -> bool {
        {
            let mut inner = self.lock();
            let known = match scope {
                Scope::All => true,
                Scope::Service(s) => inner.instances.keys().any(|(name, _)| name == s),
                Scope::Instance(id) => inner.instances.contains_key(id),
            };
            if !known {
                return false;
            }
            if inner.switches.set_disabled(scope, disabled) {
                let scope = match scope {
                    Scope::All => "all services".to_owned(),
                    Scope::Service(s) => format!("service {s}"),
                    Scope::Instance((s, i)) => format!("instance {s}/{i}"),
                };
                if disabled {
                    tracing::info!(%scope, "maintenance on (admin API): deregistering");
                } else {
                    tracing::info!(%scope, "maintenance off (admin API): back to health checks");
                }
            }
        }
        self.publish_desired();
        true
    }

    /// Registers instance `id` with `weight` instead of its configured weight, until a
    /// restart or a reload that changes the configured weight. False for an unknown id.
    pub fn set_weight(&self, id: &InstanceId, weight: u32) -> bool {
        {
            let mut inner = self.lock();
            let Inner {
                instances,
                switches,
                ..
            } = &mut *inner;
            let Some(e) = instances.get_mut(id) else {
                return false;
            };
            let previous = switches.set_weight(id, weight, e.service.weight);
            e.record = record_of(&e.service, weight);
            if previous != Some(weight) {
                tracing::info!(
                    service = %id.0, instance = %id.1, weight,
                    configured = e.service.weight, "runtime weight set (admin API)"
                );
            }
        }
        self.publish_desired();
        true
    }

    /// The instances whose id is `instance_id`, of `service` only when given.
    pub fn find(&self, service: Option<&str>, instance_id: &str) -> Vec<InstanceId> {
        self.lock()
            .instances
            .keys()
            .filter(|(s, i)| i == instance_id && service.is_none_or(|name| s == name))
            .cloned()
            .collect()
    }

    /// What nerve waits for before it is ready (`GET /ready`, systemd's READY=1): every
    /// instance's first round of checks, and a lease. Empty once ready.
    pub fn waiting_for(&self) -> Vec<String> {
        let inner = self.lock();
        let mut waiting: Vec<String> = inner
            .instances
            .iter()
            .filter(|(_, e)| e.last.is_none())
            .map(|((service, id), _)| format!("first checks of {service}/{id}"))
            .collect();
        if inner.lease.is_none() {
            waiting.push("a lease from etcd".to_owned());
        }
        waiting
    }

    pub fn lease(&self) -> Option<i64> {
        self.lock().lease
    }

    /// Called by the registrar whenever what it wrote changes.
    pub fn set_registered(&self, lease: Option<i64>, keys: BTreeSet<String>) {
        let mut inner = self.lock();
        inner.lease = lease;
        inner.registered = keys;
    }

    pub fn statuses(&self) -> Vec<InstanceStatus> {
        let inner = self.lock();
        inner
            .instances
            .iter()
            .map(|(id, e)| status(&inner, id, e))
            .collect()
    }

    /// Every instance with its counters, for `/metrics`.
    pub fn counted(&self) -> Vec<CountedInstance> {
        let inner = self.lock();
        inner
            .instances
            .iter()
            .map(|(id, e)| CountedInstance {
                status: status(&inner, id, e),
                kinds: e.service.checks.iter().map(|c| c.kind()).collect(),
                counters: e.counters.clone(),
            })
            .collect()
    }

    /// Recomputes the wanted registrations; wakes the registrar only if they changed.
    pub fn publish_desired(&self) {
        let inner = self.lock();
        let desired: Desired = inner
            .instances
            .iter()
            .filter(|(id, e)| e.health.healthy && maintenance_reasons(&inner, id, e).is_empty())
            .map(|(_, e)| (e.key.clone(), e.record.clone()))
            .collect();
        // Sent while still holding the lock: two changes finishing together then publish in
        // the order they computed, so an older set can never overwrite a newer one. (Lock
        // order is always state, then channel: nobody takes the state lock while borrowing.)
        self.desired.send_if_modified(|current| {
            if *current == desired {
                false
            } else {
                *current = desired;
                true
            }
        });
    }
}

fn status(inner: &Inner, (service, instance_id): &InstanceId, e: &Entry) -> InstanceStatus {
    let reasons = maintenance_reasons(inner, &(service.clone(), instance_id.clone()), e);
    InstanceStatus {
        service: service.clone(),
        instance_id: instance_id.clone(),
        host: e.service.host.clone(),
        port: e.service.port,
        key: e.key.clone(),
        weight: e.service.weight,
        effective_weight: inner
            .switches
            .effective_weight(&(service.clone(), instance_id.clone()), e.service.weight),
        healthy: e.health.healthy,
        maintenance: !reasons.is_empty(),
        maintenance_reasons: reasons,
        registered: inner.registered.contains(&e.key),
        last_check: e.last.clone(),
        consecutive_passes: e.health.passes,
        consecutive_failures: e.health.failures,
        lease: inner.lease,
        rise: e.service.rise,
        fall: e.service.fall,
        recent_checks: e.recent.to_vec(),
    }
}

/// The registration record of `service` with `weight`.
fn record_of(service: &ServiceConfig, weight: u32) -> String {
    let mut record = service.record();
    record.weight = weight;
    record.to_json()
}

fn maintenance_reasons(inner: &Inner, id: &InstanceId, e: &Entry) -> Vec<String> {
    let mut reasons = inner.switches.held_by(id);
    if e.maintenance_file {
        if let Some(p) = &e.service.maintenance_file {
            reasons.push(format!("file: {}", p.display()));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::{Arc, Barrier};

    fn services(n: u16) -> Vec<ServiceConfig> {
        let items: String = (1..=n)
            .map(|p| format!("  - {{name: s{p}, host: h, port: {p}, checks: [{{type: tcp}}]}}\n"))
            .collect();
        let text = format!("etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\nservices:\n{items}");
        crate::config::parse(Path::new("t.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .services
    }

    fn report(shared: &Shared, service: &ServiceConfig, healthy: bool) {
        let id = (service.name.clone(), service.instance_id());
        let health = Health {
            healthy,
            passes: u32::from(healthy),
            failures: u32::from(!healthy),
        };
        let result = if healthy {
            Ok(())
        } else {
            Err(crate::check::CheckError::CannotRun("down".into()))
        };
        shared.report(&id, service, health, &result, Duration::ZERO, false);
    }

    #[test]
    fn rounds_are_kept_for_status_with_rise_and_fall() {
        let services = services(1);
        let s = &services[0];
        let shared = Shared::new("/p");
        shared.upsert(s);
        let id = (s.name.clone(), s.instance_id());
        let failed = Err(crate::check::CheckError::CannotRun("down".into()));
        let took = Duration::from_micros(1500);
        assert!(shared.report(&id, s, Health::default(), &failed, took, false));
        assert!(shared.report(&id, s, Health::default(), &Ok(()), took, false));
        let status = &shared.statuses()[0];
        assert_eq!((status.rise, status.fall), (s.rise, s.fall));
        let recent = &status.recent_checks;
        assert_eq!(recent.len(), 2, "{recent:?}");
        assert_eq!(
            (recent[0].passed, recent[0].reason.as_deref()),
            (false, Some("down"))
        );
        assert_eq!(
            (recent[1].passed, recent[1].reason.as_deref()),
            (true, None)
        );
        assert!((recent[0].duration_ms - 1.5).abs() < 1e-9, "{recent:?}");
        assert!(recent[0].at_unix_ms <= recent[1].at_unix_ms);
        let last = status.last_check.as_ref().map(|l| l.at_unix_ms);
        assert_eq!(last, Some(recent[1].at_unix_ms));
    }

    /// A reload that moves a healthy instance resets its health: that is a transition to
    /// unhealthy, and the rounds it kept were those of the old address. A round against the
    /// old address that finishes afterwards is not recorded.
    #[test]
    fn a_moved_instance_starts_over_and_counts_the_transition() {
        let mut services = services(1);
        // Named, so that the same instance can move.
        services[0].instance_id = Some("i".into());
        let s = &services[0];
        let shared = Shared::new("/p");
        let counters = shared.upsert(s).counters;
        report(&shared, s, true);
        let mut moved = s.clone();
        moved.port += 1;
        let upserted = shared.upsert(&moved);
        assert!(upserted.moved);
        assert!(Arc::ptr_eq(&upserted.counters, &counters), "counters kept");
        assert_eq!(counters.transitions(false), 1);
        let status = &shared.statuses()[0];
        assert!(!status.healthy);
        assert!(status.recent_checks.is_empty(), "{status:?}");
        let id = (s.name.clone(), s.instance_id());
        let healthy = Health {
            healthy: true,
            passes: 9,
            failures: 0,
        };
        assert!(!shared.report(&id, s, healthy, &Ok(()), Duration::ZERO, false));
        assert!(shared.statuses()[0].recent_checks.is_empty());
        // Moving an unhealthy instance changes no health: no transition.
        shared.upsert(s);
        assert_eq!(counters.transitions(false), 1);
    }

    /// Health changes finishing together on several threads (one monitor task each) must
    /// leave the published wanted set equal to what the state says: a computation that
    /// lost the race must never overwrite a newer one. Each round every thread flips its
    /// instance at once, then the main thread compares.
    #[test]
    fn concurrent_health_changes_publish_the_final_truth() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 30_000;
        let services = services(THREADS as u16);
        let shared = Arc::new(Shared::new("/p"));
        for s in &services {
            shared.upsert(s);
        }
        let barrier = Arc::new(Barrier::new(THREADS + 1));
        let workers: Vec<_> = services
            .iter()
            .cloned()
            .map(|service| {
                let (shared, barrier) = (shared.clone(), barrier.clone());
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        barrier.wait();
                        report(&shared, &service, round % 2 == 0);
                        barrier.wait();
                    }
                })
            })
            .collect();
        let published = shared.subscribe_desired();
        let mut wrong = Vec::new();
        for round in 0..ROUNDS {
            barrier.wait();
            barrier.wait();
            let want = round % 2 == 0;
            if published.borrow().len() != if want { THREADS } else { 0 } {
                wrong.push(round);
            }
        }
        for w in workers {
            w.join().unwrap_or_else(|_| panic!("worker panicked"));
        }
        assert!(
            wrong.is_empty(),
            "{} of {ROUNDS} rounds ended with a stale wanted set published (first: round {})",
            wrong.len(),
            wrong[0]
        );
    }
}
