//! `GET /metrics`: synapse's state in the OpenMetrics text format, for Prometheus.
//!
//! Everything here is read at scrape time from what the data path counts anyway (the
//! per-backend atomics `/status` shows), through a prometheus-client [`Collector`]: a
//! connection pays nothing for metrics. Label values come only from the configuration and
//! the registry (service names, instance ids), never from a client, and a backend's series
//! leave with the backend once it has drained.
//!
//! Names, types and meanings are documented in `docs/metrics.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::backends::Source;
use crate::state::{BackendStatus, ServiceStatus};

/// Every service's status at the moment of a scrape.
pub type Snapshot = BTreeMap<String, ServiceStatus>;

/// The metrics text for `services` (and the build's `version`).
pub fn render(services: Snapshot, version: &'static str) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        services: Arc::new(services),
        version,
    }));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => out,
        // Writing into a String cannot fail; an empty answer is still valid.
        Err(_) => String::new(),
    }
}

#[derive(Debug)]
struct Scrape {
    services: Arc<Snapshot>,
    version: &'static str,
}

type Labels = Vec<(&'static str, String)>;

/// A per-backend family: name, help, and how a backend's sample is read.
type BackendFamily = (&'static str, &'static str, fn(&BackendStatus) -> Sample);

/// One metric family: a name, help, type and its samples.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, Sample)>,
) -> fmt::Result {
    let kind = match samples.first() {
        Some((_, Sample::Counter(_))) => MetricType::Counter,
        _ => MetricType::Gauge,
    };
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in &samples {
        let encoder = metric.encode_family(labels)?;
        match sample {
            Sample::Counter(v) => ConstCounter::new(*v).encode(encoder)?,
            Sample::Gauge(v) => ConstGauge::new(*v).encode(encoder)?,
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Sample {
    Counter(u64),
    Gauge(i64),
}

fn service(name: &str) -> Labels {
    vec![("service", name.to_owned())]
}

fn gauge(v: impl TryInto<i64>) -> Sample {
    Sample::Gauge(v.try_into().unwrap_or(i64::MAX))
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let build = vec![(vec![("version", self.version.to_owned())], gauge(1))];
        family(
            &mut encoder,
            "synapse_build_info",
            "The running build.",
            build,
        )?;
        self.services_families(&mut encoder)?;
        self.registry_families(&mut encoder)?;
        self.backend_families(&mut encoder)
    }
}

impl Scrape {
    fn per_service(&self, sample: impl Fn(&ServiceStatus) -> Sample) -> Vec<(Labels, Sample)> {
        self.services
            .iter()
            .map(|(name, s)| (service(name), sample(s)))
            .collect()
    }

    fn services_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let active = |s: &ServiceStatus| gauge(s.backends.iter().map(|b| b.active).sum::<u64>());
        family(
            encoder,
            "synapse_connections_active",
            "Client connections being relayed now.",
            self.per_service(active),
        )?;
        family(
            encoder,
            "synapse_unserved_connections",
            "Client connections closed because no backend could be reached.",
            self.per_service(|s| Sample::Counter(s.unserved_connections)),
        )?;
        let mut by_state = Vec::new();
        for (name, s) in self.services.iter() {
            for state in ["healthy", "ejected", "draining"] {
                let n = s.backends.iter().filter(|b| b.state == state).count();
                let mut labels = service(name);
                labels.push(("state", state.to_owned()));
                by_state.push((labels, gauge(n)));
            }
        }
        family(encoder, "synapse_backends", "Backends by state.", by_state)
    }

    fn registry_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        family(
            encoder,
            "synapse_registry_connected",
            "1 while a watch on etcd is established.",
            self.per_service(|s| gauge(i64::from(s.registry.connected))),
        )?;
        family(
            encoder,
            "synapse_registry_revision",
            "The etcd revision the service's view reflects.",
            self.per_service(|s| gauge(s.registry.revision)),
        )?;
        let synced = |s: &ServiceStatus| gauge(s.registry.last_sync_unix_ms.unwrap_or(0) / 1000);
        family(
            encoder,
            "synapse_registry_last_sync_timestamp_seconds",
            "When etcd last confirmed the view (Unix time; 0: never).",
            self.per_service(synced),
        )?;
        let mut sources = Vec::new();
        for (name, s) in self.services.iter() {
            for (label, source) in [
                ("etcd", Source::Etcd),
                ("cache", Source::Cache),
                ("defaults", Source::Defaults),
            ] {
                let mut labels = service(name);
                labels.push(("source", label.to_owned()));
                sources.push((labels, gauge(i64::from(s.registry.source == Some(source)))));
            }
        }
        family(
            encoder,
            "synapse_backend_source",
            "1 on the source the backends come from now.",
            sources,
        )
    }

    fn per_backend(&self, sample: impl Fn(&BackendStatus) -> Sample) -> Vec<(Labels, Sample)> {
        let mut out = Vec::new();
        for (name, s) in self.services.iter() {
            for b in s.backends.iter().filter(|b| b.state != "drained") {
                let mut labels = service(name);
                labels.push(("backend", b.id.clone()));
                out.push((labels, sample(b)));
            }
        }
        out
    }

    fn backend_families(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let families: [BackendFamily; 5] = [
            (
                "synapse_backend_connections",
                "Connections opened to the backend since it appeared.",
                |b| Sample::Counter(b.total),
            ),
            (
                "synapse_backend_connections_active",
                "Connections open to the backend now.",
                |b| gauge(b.active),
            ),
            (
                "synapse_backend_connect_failures",
                "Failed connects to the backend since it appeared.",
                |b| Sample::Counter(b.connect_failures),
            ),
            (
                "synapse_backend_weight",
                "The backend's weight in the registry.",
                |b| gauge(b.weight),
            ),
            (
                "synapse_backend_up",
                "1 while the backend takes new connections (0 while ejected or draining).",
                |b| gauge(i64::from(b.state == "healthy")),
            ),
        ];
        for (name, help, sample) in families {
            family(encoder, name, help, self.per_backend(sample))?;
        }
        Ok(())
    }
}
