//! SIGHUP: what changes when the configuration is replaced, as a pure function of the old
//! and the new file, so it can be tested without etcd.
//!
//! Instances are matched by (service, instance_id). A matched instance whose definition
//! changed is updated in place: it keeps its health history, so changing a weight does not
//! take a healthy instance out for `rise` checks, and its key is re-written only if the
//! record itself changed. A changed `host` or `port` is the exception: that health was
//! measured at another address, so the instance starts over unhealthy and is deregistered
//! until `rise` checks pass at the new one ([`crate::state::Shared::upsert`]). An unchanged
//! instance is not touched at all.
//!
//! Settings that shape the process are applied too, because a restart deregisters
//! everything (SIGTERM revokes the lease) and that blip is what nerve exists to avoid:
//! - `etcd` or `lease_ttl`: the registrations move to a new handle and a new lease, and the
//!   old lease is revoked only afterwards ([`Plan::move_registrations`]);
//! - `admin`: the new address is bound before the old server stops ([`Plan::admin`]);
//! - `reconcile_interval`: used from the next tick on ([`Plan::reconcile_interval`]).
//!
//! [`crate::Nerve::reload`] carries a plan out in two steps: prepare (every step that can
//! fail: binding a new admin address) and commit (cannot fail), so a rejected reload
//! changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use registry::config::ListenAddr;

use crate::config::{NerveConfig, ServiceConfig};
use crate::state::InstanceId;

/// What a reload does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub add: Vec<ServiceConfig>,
    pub remove: Vec<InstanceId>,
    pub update: Vec<ServiceConfig>,
    pub unchanged: Vec<InstanceId>,
    /// `etcd` or `lease_ttl` changed: put every wanted registration under a new lease on a
    /// new handle, then revoke the old lease. A changed TTL needs a new lease because etcd
    /// cannot change the TTL of an existing one.
    pub move_registrations: bool,
    /// The key prefix changed (part of `move_registrations`): the keys themselves move.
    pub prefix_changed: bool,
    /// `Some(new)` when the admin address changed (`Some(None)`: no admin API any more).
    pub admin: Option<Option<ListenAddr>>,
    /// `Some(new)` when the reconcile interval changed.
    pub reconcile_interval: Option<Duration>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.update.is_empty()
            && !self.move_registrations
            && self.admin.is_none()
            && self.reconcile_interval.is_none()
    }
}

fn by_id(config: &NerveConfig) -> BTreeMap<InstanceId, &ServiceConfig> {
    config
        .services
        .iter()
        .map(|s| ((s.name.clone(), s.instance_id()), s))
        .collect()
}

/// The actions that turn a process running `old` into one running `new`.
pub fn diff(old: &NerveConfig, new: &NerveConfig) -> Plan {
    let before = by_id(old);
    let after = by_id(new);
    let mut plan = Plan::default();
    for (id, service) in &after {
        match before.get(id) {
            None => plan.add.push((*service).clone()),
            Some(previous) if previous == service => plan.unchanged.push(id.clone()),
            Some(_) => plan.update.push((*service).clone()),
        }
    }
    plan.remove = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .cloned()
        .collect();
    // Any etcd setting counts, timeouts included: they live in the handle, which is
    // rebuilt as a whole; moving to the same cluster costs one put per key, no gap.
    plan.move_registrations = old.etcd != new.etcd || old.lease_ttl != new.lease_ttl;
    plan.prefix_changed = old.etcd.prefix != new.etcd.prefix;
    if old.admin != new.admin {
        plan.admin = Some(new.admin);
    }
    if old.reconcile_interval != new.reconcile_interval {
        plan.reconcile_interval = Some(new.reconcile_interval.get());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(services: &str, extra: &str) -> NerveConfig {
        let text = format!(
            "etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\n{extra}\nservices:\n{services}"
        );
        crate::config::parse(Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    const A: &str = "  - {name: a, host: h, port: 1, checks: [{type: tcp}]}\n";
    const B: &str = "  - {name: b, host: h, port: 2, checks: [{type: tcp}]}\n";
    const B_HEAVY: &str = "  - {name: b, host: h, port: 2, weight: 5, checks: [{type: tcp}]}\n";
    const C: &str = "  - {name: c, host: h, port: 3, checks: [{type: tcp}]}\n";

    fn id(s: &str, i: &str) -> InstanceId {
        (s.into(), i.into())
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let old = config(&format!("{A}{B}"), "");
        let plan = diff(&old, &old.clone());
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, vec![id("a", "h:1"), id("b", "h:2")]);
    }

    #[test]
    fn added_removed_and_changed_instances_are_told_apart() {
        let old = config(&format!("{A}{B}"), "");
        let new = config(&format!("{B_HEAVY}{C}"), "");
        let plan = diff(&old, &new);
        assert_eq!(
            plan.add.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(plan.remove, vec![id("a", "h:1")]);
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].weight, 5);
        assert!(plan.unchanged.is_empty());
        assert!(!plan.move_registrations && plan.admin.is_none());
    }

    #[test]
    fn moving_an_instance_without_an_instance_id_is_a_remove_and_an_add() {
        let old = config(A, "");
        let new = config(
            "  - {name: a, host: h, port: 9, checks: [{type: tcp}]}\n",
            "",
        );
        let plan = diff(&old, &new);
        assert_eq!(plan.remove, vec![id("a", "h:1")]);
        assert_eq!(plan.add.len(), 1);
    }

    #[test]
    fn reordering_services_changes_nothing() {
        let plan = diff(
            &config(&format!("{A}{B}"), ""),
            &config(&format!("{B}{A}"), ""),
        );
        assert!(plan.is_empty());
    }

    #[test]
    fn process_settings_are_planned() {
        let old = config(A, "lease_ttl: 5s\nadmin: 127.0.0.1:1000");
        let new = config(
            A,
            "lease_ttl: 6s\nadmin: 127.0.0.1:1001\nreconcile_interval: 7s\nshutdown_delay: 1s",
        );
        let plan = diff(&old, &new);
        assert!(plan.move_registrations);
        assert!(!plan.prefix_changed);
        assert_eq!(plan.admin, Some(new.admin));
        assert_eq!(plan.reconcile_interval, Some(Duration::from_secs(7)));
        assert!(!plan.is_empty());
        assert!(plan.add.is_empty() && plan.remove.is_empty() && plan.update.is_empty());
    }

    #[test]
    fn removing_the_admin_api_is_planned_as_none() {
        let plan = diff(&config(A, "admin: 127.0.0.1:1000"), &config(A, ""));
        assert_eq!(plan.admin, Some(None));
        assert!(!plan.move_registrations);
    }

    #[test]
    fn any_etcd_change_moves_the_registrations() {
        let old = config(A, "");
        let mut timeout = old.clone();
        timeout.etcd.request_timeout = registry::ConfigDuration(Duration::from_secs(9));
        let plan = diff(&old, &timeout);
        assert!(plan.move_registrations && !plan.prefix_changed);
        assert_eq!(plan.unchanged.len(), 1);

        let mut endpoints = old.clone();
        endpoints.etcd.endpoints = vec!["http://127.0.0.1:2479".into()];
        assert!(diff(&old, &endpoints).move_registrations);

        let mut prefix = old.clone();
        prefix.etcd.prefix = "/elsewhere".into();
        let plan = diff(&old, &prefix);
        assert!(plan.move_registrations && plan.prefix_changed);
    }

    #[test]
    fn shutdown_delay_alone_moves_nothing() {
        let plan = diff(&config(A, ""), &config(A, "shutdown_delay: 1s"));
        assert!(plan.is_empty());
        assert!(!plan.move_registrations);
    }
}
