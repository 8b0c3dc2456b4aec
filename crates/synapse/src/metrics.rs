//! `GET /metrics`: synapse's state as metric families ([`daemon::metrics`]).
//!
//! Everything is read at scrape time: the service's traffic counters and histograms
//! ([`crate::traffic`]) and the per-backend atomics `/status` shows, which the data path
//! keeps with relaxed atomic adds (no lock, no lookup, no allocation per connection).
//! Label values come only from the configuration and the registry (service names,
//! instance ids), never from a client, and a backend's series leave with the backend once
//! it has drained. `metrics.per_backend: false` leaves the per-backend families out.
//!
//! Names, types and meanings are documented in `docs/metrics.md`.

use std::collections::BTreeMap;

use daemon::metrics::{gauge, process, render, Family, Labels, Sample};

use crate::backends::Source;
use crate::state::{BackendStatus, ServiceStatus};
use crate::traffic::{ConnectResult, RequestClasses};

/// Every service's status at the moment of a scrape.
pub type Snapshot = BTreeMap<String, ServiceStatus>;

/// The metrics text for `services` (with the per-backend families when `per_backend`)
/// and the build's `version`.
pub fn text(services: &Snapshot, per_backend: bool, version: &'static str) -> String {
    let build = vec![(vec![("version", version.to_owned())], gauge(1))];
    let mut families = vec![family("synapse_build_info", "The running build.", build)];
    families.extend(connection_families(services));
    families.extend(backend_set_families(services));
    families.extend(registry_families(services));
    if per_backend {
        families.extend(backend_families(services));
    }
    families.extend(process::families());
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

fn counter(v: u64) -> Sample {
    Sample::Counter(v)
}

fn connection_families(services: &Snapshot) -> Vec<Family> {
    let results = ConnectResult::ALL.map(ConnectResult::label);
    let attempts = |s: &ServiceStatus, label: &str| {
        let result = ConnectResult::ALL.into_iter().find(|r| r.label() == label);
        counter(result.map_or(0, |r| s.traffic.connect_attempts.get(r)))
    };
    let bytes = |s: &ServiceStatus, direction: &str| {
        counter(match direction {
            "to_backend" => s.traffic.bytes_to_backend,
            _ => s.traffic.bytes_to_client,
        })
    };
    vec![
        family(
            "synapse_connections",
            "Client connections accepted.",
            per_service(services, |s| counter(s.traffic.connections_total)),
        ),
        family(
            "synapse_connections_active",
            "Client connections open now (waiting for a backend, connecting or relayed).",
            per_service(services, |s| gauge(s.traffic.connections_active)),
        ),
        family(
            "synapse_unserved_connections",
            "Client connections closed because no backend could be reached.",
            per_service(services, |s| counter(s.unserved_connections)),
        ),
        family(
            "synapse_connect_attempts",
            "Connect attempts to backends by result.",
            per_service_and(services, "result", &results, attempts),
        ),
        family(
            "synapse_retries",
            "Connect attempts after a failed one for the same client connection.",
            per_service(services, |s| counter(s.traffic.retries_total)),
        ),
        family(
            "synapse_replays",
            "Requests sent again after their backend closed unanswered (retry_unanswered).",
            per_service(services, |s| counter(s.traffic.replays_total)),
        ),
        family(
            "synapse_connect_duration_seconds",
            "Time to establish a backend connection (successful connects).",
            per_service(services, |s| Sample::Histogram(s.durations.connect.clone())),
        ),
        family(
            "synapse_connection_duration_seconds",
            "Client connections from accept to close.",
            per_service(services, |s| {
                Sample::Histogram(s.durations.connection.clone())
            }),
        ),
        family(
            "synapse_requests",
            "http mode: answered requests by status class (synapse's own 502/503 included).",
            per_service_and(services, "class", &RequestClasses::LABELS, |s, class| {
                counter(s.traffic.requests.get(class))
            }),
        ),
        family(
            "synapse_request_duration_seconds",
            "http mode: requests from arrival to response headers, retries included.",
            per_service(services, |s| Sample::Histogram(s.durations.request.clone())),
        ),
        family(
            "synapse_retry_budget_exhausted",
            "http mode: retries the policy allowed but the retry budget refused.",
            per_service(services, |s| {
                counter(s.traffic.retry_budget_exhausted_total)
            }),
        ),
        family(
            "synapse_bytes",
            "Bytes relayed, splice included.",
            per_service_and(services, "direction", &["to_backend", "to_client"], bytes),
        ),
    ]
}

fn backend_set_families(services: &Snapshot) -> Vec<Family> {
    let states = ["healthy", "ejected", "draining"];
    let by_state = |s: &ServiceStatus, state: &str| {
        gauge(s.backends.iter().filter(|b| b.state == state).count())
    };
    vec![
        family(
            "synapse_backends",
            "Backends by state.",
            per_service_and(services, "state", &states, by_state),
        ),
        family(
            "synapse_ejections",
            "Backends ejected after consecutive connect failures.",
            per_service(services, |s| counter(s.traffic.ejections_total)),
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

/// One sample per backend still in the set (draining included, drained ones left out) and
/// extra label, from `sample(backend, extra label value)`.
fn per_backend(
    services: &Snapshot,
    extra: Option<(&'static str, &[&'static str])>,
    sample: fn(&BackendStatus, &str) -> Sample,
) -> Vec<(Labels, Sample)> {
    let mut out = Vec::new();
    for (name, s) in services {
        for b in s.backends.iter().filter(|b| b.state != "drained") {
            let mut labels = service(name);
            labels.push(("backend", b.id.clone()));
            match extra {
                None => out.push((labels, sample(b, ""))),
                Some((label, values)) => {
                    for v in values {
                        let mut labels = labels.clone();
                        labels.push((label, (*v).to_owned()));
                        out.push((labels, sample(b, v)));
                    }
                }
            }
        }
    }
    out
}

fn backend_families(services: &Snapshot) -> Vec<Family> {
    let directions = Some(("direction", &["to_backend", "to_client"][..]));
    vec![
        family(
            "synapse_backend_connections",
            "Connections opened to the backend since it appeared.",
            per_backend(services, None, |b, _| counter(b.total)),
        ),
        family(
            "synapse_backend_connections_active",
            "Connections open to the backend now.",
            per_backend(services, None, |b, _| gauge(b.active)),
        ),
        family(
            "synapse_backend_connect_failures",
            "Failed connects to the backend since it appeared.",
            per_backend(services, None, |b, _| counter(b.connect_failures)),
        ),
        family(
            "synapse_backend_bytes",
            "Bytes relayed to and from the backend since it appeared.",
            per_backend(services, directions, |b, direction| {
                counter(match direction {
                    "to_backend" => b.bytes_to_backend,
                    _ => b.bytes_to_client,
                })
            }),
        ),
        family(
            "synapse_backend_weight",
            "The backend's weight in the registry.",
            per_backend(services, None, |b, _| gauge(b.weight)),
        ),
        family(
            "synapse_backend_latency_seconds",
            "Peak-EWMA response time (http mode; 0.03 until measured).",
            per_backend(services, None, |b, _| {
                Sample::FloatGauge(b.latency_ms / 1000.0)
            }),
        ),
        family(
            "synapse_backend_effective_weight",
            "The weight new connections see now: lower while it warms up (slow_start).",
            per_backend(services, None, |b, _| gauge(b.effective_weight)),
        ),
        family(
            "synapse_backend_up",
            "1 while the backend takes new connections (0 while ejected or draining).",
            per_backend(services, None, |b, _| {
                gauge(i64::from(b.state == "healthy"))
            }),
        ),
    ]
}
