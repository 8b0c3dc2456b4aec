//! What operators set at run time through the admin API, apart from health: maintenance
//! switches (every service, one service, one instance) and runtime weights. Pure data and
//! decisions; [`crate::state`] keeps one of these and applies it.
//!
//! How they combine, in one place:
//! - An instance is out (deregistered) while *any* switch that covers it is set: `all`,
//!   its service's, its own, or its maintenance file. Setting one switch off never
//!   overrides another; each answer lists what still holds the instance (`held_by`).
//! - A runtime weight replaces the configured weight in the registration until nerve
//!   restarts or a reload changes the configured weight: the configuration's new value then
//!   wins, since whoever edited the file decided last. A reload that leaves the weight as
//!   it was keeps the runtime weight.
//!
//! Nothing here survives a restart; `maintenance_file` and the configuration do.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::InstanceId;

/// A weight set through the admin API over the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeWeight {
    pub weight: u32,
    /// The configured weight it replaced: a reload that changes it ends the override.
    pub over: u32,
}

/// The admin API's switches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Switches {
    all: bool,
    services: BTreeSet<String>,
    instances: BTreeSet<InstanceId>,
    weights: BTreeMap<InstanceId, RuntimeWeight>,
}

/// Which switch an admin call sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    All,
    Service(&'a str),
    Instance(&'a InstanceId),
}

impl Switches {
    /// Sets or clears one maintenance switch; whether that changed it.
    pub fn set_disabled(&mut self, scope: Scope<'_>, disabled: bool) -> bool {
        match scope {
            Scope::All => std::mem::replace(&mut self.all, disabled) != disabled,
            Scope::Service(s) if disabled => self.services.insert(s.to_owned()),
            Scope::Service(s) => self.services.remove(s),
            Scope::Instance(id) if disabled => self.instances.insert(id.clone()),
            Scope::Instance(id) => self.instances.remove(id),
        }
    }

    /// What holds instance `id` out, besides its maintenance file: `admin: all`, `admin:
    /// service`, `admin: instance`, in that order.
    pub fn held_by(&self, id: &InstanceId) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.all {
            reasons.push("admin: all".to_owned());
        }
        if self.services.contains(&id.0) {
            reasons.push("admin: service".to_owned());
        }
        if self.instances.contains(id) {
            reasons.push("admin: instance".to_owned());
        }
        reasons
    }

    /// Sets instance `id`'s weight over its `configured` one; the previous runtime weight.
    pub fn set_weight(&mut self, id: &InstanceId, weight: u32, configured: u32) -> Option<u32> {
        let set = RuntimeWeight {
            weight,
            over: configured,
        };
        self.weights.insert(id.clone(), set).map(|w| w.weight)
    }

    /// The weight instance `id` is registered with when `configured` is its configured one.
    pub fn effective_weight(&self, id: &InstanceId, configured: u32) -> u32 {
        self.runtime_weight(id, configured).unwrap_or(configured)
    }

    /// Its runtime weight, if one is set and still applies to `configured`.
    pub fn runtime_weight(&self, id: &InstanceId, configured: u32) -> Option<u32> {
        self.weights
            .get(id)
            .filter(|w| w.over == configured)
            .map(|w| w.weight)
    }

    /// A reload configured instance `id` with weight `configured`: a runtime weight set over
    /// another configured value ends. Returns the runtime weight that ended, if any.
    pub fn reconfigured(&mut self, id: &InstanceId, configured: u32) -> Option<u32> {
        let ended = self
            .weights
            .get(id)
            .filter(|w| w.over != configured)?
            .weight;
        self.weights.remove(id);
        Some(ended)
    }

    /// Instance `id` is no longer configured: its own switch and weight go with it.
    pub fn forget(&mut self, id: &InstanceId) {
        self.instances.remove(id);
        self.weights.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(service: &str, instance: &str) -> InstanceId {
        (service.to_owned(), instance.to_owned())
    }

    #[test]
    fn an_instance_is_held_by_every_switch_that_covers_it() {
        let mut s = Switches::default();
        let (a1, a2, b1) = (id("a", "1"), id("a", "2"), id("b", "1"));
        assert!(s.set_disabled(Scope::Instance(&a1), true));
        assert!(!s.set_disabled(Scope::Instance(&a1), true), "already set");
        assert!(s.set_disabled(Scope::Service("a"), true));
        assert_eq!(s.held_by(&a1), ["admin: service", "admin: instance"]);
        assert_eq!(s.held_by(&a2), ["admin: service"]);
        assert!(s.held_by(&b1).is_empty());
        // Clearing the service's switch leaves the instance's.
        s.set_disabled(Scope::Service("a"), false);
        assert_eq!(s.held_by(&a1), ["admin: instance"]);
        assert!(s.held_by(&a2).is_empty());
        s.set_disabled(Scope::All, true);
        assert_eq!(s.held_by(&b1), ["admin: all"]);
        s.forget(&a1);
        assert_eq!(s.held_by(&a1), ["admin: all"]);
    }

    #[test]
    fn a_runtime_weight_lasts_until_the_configured_weight_changes() {
        let mut s = Switches::default();
        let a = id("a", "1");
        assert_eq!(s.effective_weight(&a, 100), 100);
        assert_eq!(s.set_weight(&a, 5, 100), None);
        assert_eq!(s.effective_weight(&a, 100), 5);
        // A reload with the same configured weight keeps it.
        assert_eq!(s.reconfigured(&a, 100), None);
        assert_eq!(s.effective_weight(&a, 100), 5);
        // One that changes it: the configuration wins.
        assert_eq!(s.reconfigured(&a, 50), Some(5));
        assert_eq!(s.effective_weight(&a, 50), 50);
        assert_eq!(s.runtime_weight(&a, 50), None);
    }

    proptest! {
        /// Whatever the order of calls, an instance is held exactly by the switches last
        /// set on for it.
        #[test]
        fn held_by_is_the_switches_last_set_on(ops in prop::collection::vec((0u8..4, any::<bool>()), 0..40)) {
            let mut s = Switches::default();
            let target = id("a", "1");
            let (mut all, mut service, mut instance) = (false, false, false);
            for (which, on) in ops {
                match which {
                    0 => { s.set_disabled(Scope::All, on); all = on; }
                    1 => { s.set_disabled(Scope::Service("a"), on); service = on; }
                    2 => { s.set_disabled(Scope::Instance(&target), on); instance = on; }
                    _ => { s.set_disabled(Scope::Service("b"), on); }
                }
            }
            let held = s.held_by(&target);
            prop_assert_eq!(held.contains(&"admin: all".to_owned()), all);
            prop_assert_eq!(held.contains(&"admin: service".to_owned()), service);
            prop_assert_eq!(held.contains(&"admin: instance".to_owned()), instance);
        }
    }
}
