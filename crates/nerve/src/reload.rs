//! SIGHUP: what changes when the configuration is replaced, as a pure function of the old
//! and the new file, so it can be tested without etcd.
//!
//! Instances are matched by (service, instance_id). A matched instance whose definition
//! changed is updated in place: it keeps its health history, so changing a weight does not
//! take a healthy instance out for `rise` checks, and its key is re-written only if the
//! record itself changed. An unchanged instance is not touched at all. Settings that shape
//! the process itself (etcd connection, lease TTL, admin address, reconcile interval) are
//! not applied live: the plan names them so the operator is told to restart.

use std::collections::BTreeMap;

use crate::config::{NerveConfig, ServiceConfig};
use crate::state::InstanceId;

/// What a reload does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub add: Vec<ServiceConfig>,
    pub remove: Vec<InstanceId>,
    pub update: Vec<ServiceConfig>,
    pub unchanged: Vec<InstanceId>,
    /// Top-level keys whose new values are ignored until a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.update.is_empty()
            && self.needs_restart.is_empty()
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
    if old.etcd != new.etcd {
        plan.needs_restart.push("etcd");
    }
    if old.lease_ttl != new.lease_ttl {
        plan.needs_restart.push("lease_ttl");
    }
    if old.admin != new.admin {
        plan.needs_restart.push("admin");
    }
    if old.reconcile_interval != new.reconcile_interval {
        plan.needs_restart.push("reconcile_interval");
    }
    plan
}

/// The configuration in force after applying `new`: its services and shutdown delay, with
/// the process-shaping settings of `old` kept (see [`Plan::needs_restart`]).
pub fn effective(old: &NerveConfig, new: &NerveConfig) -> NerveConfig {
    NerveConfig {
        etcd: old.etcd.clone(),
        lease_ttl: old.lease_ttl,
        admin: old.admin,
        reconcile_interval: old.reconcile_interval,
        shutdown_delay: new.shutdown_delay,
        services: new.services.clone(),
    }
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
        assert!(plan.needs_restart.is_empty());
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
    fn process_settings_are_flagged_and_kept() {
        let old = config(A, "lease_ttl: 5s\nadmin: 127.0.0.1:1000");
        let new = config(
            A,
            "lease_ttl: 6s\nadmin: 127.0.0.1:1001\nshutdown_delay: 1s",
        );
        let plan = diff(&old, &new);
        assert_eq!(plan.needs_restart, vec!["lease_ttl", "admin"]);
        let e = effective(&old, &new);
        assert_eq!(e.lease_ttl, old.lease_ttl);
        assert_eq!(e.admin, old.admin);
        assert_eq!(e.shutdown_delay, new.shutdown_delay);
    }
}
