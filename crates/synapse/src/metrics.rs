//! `GET /metrics`: synapse's state as metric families ([`daemon::metrics`]).
//!
//! Everything is read at scrape time from what the data path counts anyway (the per-backend
//! atomics `/status` shows): a connection pays nothing for metrics. Label values come only
//! from the configuration and the registry (service names, instance ids), never from a
//! client, and a backend's series leave with the backend once it has drained.
//!
//! Names, types and meanings are documented in `docs/metrics.md`.

use std::collections::BTreeMap;

use daemon::metrics::{gauge, render, Family, Labels, Sample};

use crate::backends::Source;
use crate::state::{BackendStatus, ServiceStatus};

/// Every service's status at the moment of a scrape.
pub type Snapshot = BTreeMap<String, ServiceStatus>;

/// The metrics text for `services` and the build's `version`.
pub fn text(services: &Snapshot, version: &'static str) -> String {
    let build = vec![(vec![("version", version.to_owned())], gauge(1))];
    let mut families = vec![family("synapse_build_info", "The running build.", build)];
    families.extend(service_families(services));
    families.extend(registry_families(services));
    families.extend(backend_families(services));
    render(families)
}

fn family(name: &'static str, help: &'static str, samples: Vec<(Labels, Sample)>) -> Family {
    Family {
        name,
        help,
        samples,
    }
}

fn service(name: &str) -> Labels {
    vec![("service", name.to_owned())]
}

fn per_service(
    services: &Snapshot,
    sample: impl Fn(&ServiceStatus) -> Sample,
) -> Vec<(Labels, Sample)> {
    services
        .iter()
        .map(|(name, s)| (service(name), sample(s)))
        .collect()
}

/// One sample per service and value of `label`, from `value(status, label value)`.
fn per_service_and(
    services: &Snapshot,
    label: &'static str,
    values: &[&'static str],
    value: impl Fn(&ServiceStatus, &str) -> Sample,
) -> Vec<(Labels, Sample)> {
    let mut out = Vec::new();
    for (name, s) in services {
        for v in values {
            let mut labels = service(name);
            labels.push((label, (*v).to_owned()));
            out.push((labels, value(s, v)));
        }
    }
    out
}

fn service_families(services: &Snapshot) -> Vec<Family> {
    let active = |s: &ServiceStatus| gauge(s.backends.iter().map(|b| b.active).sum::<u64>());
    let states = ["healthy", "ejected", "draining"];
    let by_state = |s: &ServiceStatus, state: &str| {
        gauge(s.backends.iter().filter(|b| b.state == state).count())
    };
    vec![
        family(
            "synapse_connections_active",
            "Client connections being relayed now.",
            per_service(services, active),
        ),
        family(
            "synapse_unserved_connections",
            "Client connections closed because no backend could be reached.",
            per_service(services, |s| Sample::Counter(s.unserved_connections)),
        ),
        family(
            "synapse_backends",
            "Backends by state.",
            per_service_and(services, "state", &states, by_state),
        ),
    ]
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Etcd => "etcd",
        Source::Cache => "cache",
        Source::Defaults => "defaults",
    }
}

fn registry_families(services: &Snapshot) -> Vec<Family> {
    let synced = |s: &ServiceStatus| gauge(s.registry.last_sync_unix_ms.unwrap_or(0) / 1000);
    let source = |s: &ServiceStatus, label: &str| {
        gauge(i64::from(
            s.registry.source.map(source_label) == Some(label),
        ))
    };
    vec![
        family(
            "synapse_registry_connected",
            "1 while a watch on etcd is established.",
            per_service(services, |s| gauge(i64::from(s.registry.connected))),
        ),
        family(
            "synapse_registry_revision",
            "The etcd revision the service's view reflects.",
            per_service(services, |s| gauge(s.registry.revision)),
        ),
        family(
            "synapse_registry_last_sync_timestamp_seconds",
            "When etcd last confirmed the view (Unix time; 0: never).",
            per_service(services, synced),
        ),
        family(
            "synapse_backend_source",
            "1 on the source the backends come from now.",
            per_service_and(services, "source", &["etcd", "cache", "defaults"], source),
        ),
    ]
}

fn per_backend(services: &Snapshot, sample: fn(&BackendStatus) -> Sample) -> Vec<(Labels, Sample)> {
    let mut out = Vec::new();
    for (name, s) in services {
        for b in s.backends.iter().filter(|b| b.state != "drained") {
            let mut labels = service(name);
            labels.push(("backend", b.id.clone()));
            out.push((labels, sample(b)));
        }
    }
    out
}

fn backend_families(services: &Snapshot) -> Vec<Family> {
    vec![
        family(
            "synapse_backend_connections",
            "Connections opened to the backend since it appeared.",
            per_backend(services, |b| Sample::Counter(b.total)),
        ),
        family(
            "synapse_backend_connections_active",
            "Connections open to the backend now.",
            per_backend(services, |b| gauge(b.active)),
        ),
        family(
            "synapse_backend_connect_failures",
            "Failed connects to the backend since it appeared.",
            per_backend(services, |b| Sample::Counter(b.connect_failures)),
        ),
        family(
            "synapse_backend_weight",
            "The backend's weight in the registry.",
            per_backend(services, |b| gauge(b.weight)),
        ),
        family(
            "synapse_backend_up",
            "1 while the backend takes new connections (0 while ejected or draining).",
            per_backend(services, |b| gauge(i64::from(b.state == "healthy"))),
        ),
    ]
}
