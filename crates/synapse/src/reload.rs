//! What a reload has to do, as a pure function of the old and the new configuration.
//!
//! The principle is the one HAProxy and consul-template reloads broke: a reload never
//! touches a connection. Services that stay are updated in place (their listener, their
//! backend set and its stats survive); removed ones stop accepting and drain; a moved
//! listener accepts on the new address before the old one closes.

use crate::config::{MetricsConfig, ServiceConfig, SynapseConfig};

/// One step of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new service: bind its listener and start it.
    Start(ServiceConfig),
    /// A service that is gone: stop accepting, let its connections drain.
    Stop(String),
    /// A service whose settings changed, listen address unchanged: update in place.
    Update(ServiceConfig),
    /// A service whose listen address changed (and maybe more): move the listener, update
    /// the rest in place.
    Rebind(ServiceConfig),
    /// The etcd block or `registry_grace_period` changed: every service follows a new
    /// discovery (serving its current backends until the new one answers).
    Rediscover,
    /// synapse's zone changed.
    Zone(Option<String>),
    /// The admin address changed.
    Admin,
    /// The cache file moved (or was turned on or off).
    CacheFile,
    /// The `metrics` block changed.
    Metrics(MetricsConfig),
}

/// The actions that turn `old` into `new`, stops first (they may free addresses that
/// starts and rebinds need), then rebinds, updates and starts, then global changes.
pub fn diff(old: &SynapseConfig, new: &SynapseConfig) -> Vec<Action> {
    let mut stops = Vec::new();
    let mut rest = Vec::new();
    for o in &old.services {
        if new.service(&o.name).is_none() {
            stops.push(Action::Stop(o.name.clone()));
        }
    }
    for n in &new.services {
        match old.service(&n.name) {
            None => rest.push(Action::Start(n.clone())),
            Some(o) if o.listen != n.listen => rest.push(Action::Rebind(n.clone())),
            Some(o) if o != n => rest.push(Action::Update(n.clone())),
            Some(_) => {}
        }
    }
    let mut actions = stops;
    actions.append(&mut rest);
    if old.etcd != new.etcd || old.registry_grace_period != new.registry_grace_period {
        actions.push(Action::Rediscover);
    }
    if old.zone != new.zone {
        actions.push(Action::Zone(new.zone.clone()));
    }
    if old.admin != new.admin {
        actions.push(Action::Admin);
    }
    if old.cache_file != new.cache_file {
        actions.push(Action::CacheFile);
    }
    if old.metrics != new.metrics {
        actions.push(Action::Metrics(new.metrics));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use proptest::prelude::*;
    use registry::EtcdConfig;

    fn config(services: &[(&str, u16, Balance)]) -> SynapseConfig {
        let mut c = SynapseConfig::new(EtcdConfig::new(vec!["http://127.0.0.1:2379".into()]));
        c.services = services
            .iter()
            .map(|(name, port, balance)| {
                let mut s = ServiceConfig::new(name, format!("127.0.0.1:{port}").parse().unwrap());
                s.balance_choice = Some(*balance);
                s
            })
            .collect();
        c
    }

    #[test]
    fn each_kind_of_change_maps_to_its_action() {
        use Balance::*;
        let old = config(&[
            ("keep", 1, RoundRobin),
            ("gone", 2, RoundRobin),
            ("tune", 3, RoundRobin),
            ("move", 4, RoundRobin),
        ]);
        let mut new = config(&[
            ("keep", 1, RoundRobin),
            ("tune", 3, LeastConn),
            ("move", 5, RoundRobin),
            ("new", 6, Random),
        ]);
        new.zone = Some("b".into());
        new.etcd.prefix = "/other".into();
        let actions = diff(&old, &new);
        assert_eq!(
            actions,
            vec![
                Action::Stop("gone".into()),
                Action::Update(new.services[1].clone()),
                Action::Rebind(new.services[2].clone()),
                Action::Start(new.services[3].clone()),
                Action::Rediscover,
                Action::Zone(Some("b".into())),
            ]
        );
        assert!(
            diff(&new, &new).is_empty(),
            "an unchanged config does nothing"
        );
    }

    fn any_config() -> impl Strategy<Value = SynapseConfig> {
        proptest::collection::btree_map(0u8..6, (0u16..4, 0u8..3), 0..6).prop_map(|m| {
            let services: Vec<(String, u16, Balance)> = m
                .into_iter()
                .map(|(n, (port, b))| {
                    let balance =
                        [Balance::RoundRobin, Balance::LeastConn, Balance::Random][b as usize];
                    (format!("s{n}"), 3000 + port + u16::from(n) * 10, balance)
                })
                .collect();
            let refs: Vec<(&str, u16, Balance)> = services
                .iter()
                .map(|(n, p, b)| (n.as_str(), *p, *b))
                .collect();
            config(&refs)
        })
    }

    proptest! {
        /// Applying the actions to the old service list yields exactly the new one, and a
        /// service is never both stopped and started (which would cut its connections).
        #[test]
        fn actions_turn_the_old_services_into_the_new(old in any_config(), new in any_config()) {
            let actions = diff(&old, &new);
            let mut services = old.services.clone();
            for a in &actions {
                match a {
                    Action::Start(s) => services.push(s.clone()),
                    Action::Stop(n) => services.retain(|s| &s.name != n),
                    Action::Update(s) | Action::Rebind(s) => {
                        let slot = services.iter_mut().find(|x| x.name == s.name);
                        prop_assert!(slot.is_some(), "update of unknown service {}", s.name);
                        if let Some(slot) = slot { *slot = s.clone(); }
                    }
                    _ => {}
                }
            }
            services.sort_by(|a, b| a.name.cmp(&b.name));
            let mut expected = new.services.clone();
            expected.sort_by(|a, b| a.name.cmp(&b.name));
            prop_assert_eq!(services, expected);
            for a in &actions {
                if let Action::Stop(n) = a {
                    prop_assert!(new.service(n).is_none(), "{} stopped but still configured", n);
                }
                if let Action::Start(s) = a {
                    prop_assert!(old.service(&s.name).is_none(), "{} restarted", s.name);
                }
            }
            let first_non_stop = actions.iter().position(|a| !matches!(a, Action::Stop(_))).unwrap_or(actions.len());
            prop_assert!(actions[first_non_stop..].iter().all(|a| !matches!(a, Action::Stop(_))), "stops come first");
        }
    }
}
