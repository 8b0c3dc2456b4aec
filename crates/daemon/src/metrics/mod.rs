//! Metrics as both programs export them: families of samples read at scrape time (from the
//! state a program keeps anyway, and from atomic counters and [`Histogram`]s the hot path
//! adds to without a lock) and written in the OpenMetrics text format by prometheus-client.
//!
//! - [`Histogram`]: fixed-bucket duration histograms as atomics.
//! - [`process`]: the standard `process_*` families read from `/proc`.

mod histogram;
pub mod process;

pub use histogram::{Histogram, HistogramSample, LIFETIME_SECONDS, SHORT_SECONDS};

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A sample's labels: names are fixed, values come from configuration or the registry.
pub type Labels = Vec<(&'static str, String)>;

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Written with a `_total` suffix on the family's name.
    Counter(u64),
    /// A counter of a real quantity (seconds), also `_total`.
    FloatCounter(f64),
    Gauge(i64),
    /// A gauge of a real quantity (seconds).
    FloatGauge(f64),
    Histogram(HistogramSample),
}

/// A gauge of any integer (saturating at `i64::MAX`).
pub fn gauge(v: impl TryInto<i64>) -> Sample {
    Sample::Gauge(v.try_into().unwrap_or(i64::MAX))
}

/// A metric family: name, help, and its samples (all of one type).
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Labels, Sample)>,
}

/// The OpenMetrics text of `families`.
pub fn render(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scraped(families)));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => out,
        // Writing into a String cannot fail; an empty answer is still a valid scrape.
        Err(_) => String::new(),
    }
}

type NoLabels = [(&'static str, &'static str); 0];

#[derive(Debug)]
struct Scraped(Vec<Family>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // The type is told by the samples: a family without any (per-instance series while
        // there is no instance) could only be written as a gauge whatever it is, and
        // carries nothing.
        for family in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let kind = match family.samples.first() {
                Some((_, Sample::Counter(_) | Sample::FloatCounter(_))) => MetricType::Counter,
                Some((_, Sample::Histogram(_))) => MetricType::Histogram,
                Some((_, Sample::Gauge(_) | Sample::FloatGauge(_))) => MetricType::Gauge,
                None => continue,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, sample) in &family.samples {
                let mut encoder = metric.encode_family(labels)?;
                match sample {
                    Sample::Counter(v) => ConstCounter::new(*v).encode(encoder)?,
                    Sample::FloatCounter(v) => ConstCounter::new(*v).encode(encoder)?,
                    Sample::Gauge(v) => ConstGauge::new(*v).encode(encoder)?,
                    Sample::FloatGauge(v) => ConstGauge::new(*v).encode(encoder)?,
                    Sample::Histogram(h) => {
                        encoder.encode_histogram::<NoLabels>(h.sum, h.count, &h.buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_as_openmetrics() {
        let waits = Histogram::new(&[0.001, 0.01]);
        for ms in [1, 5, 50] {
            waits.observe(std::time::Duration::from_millis(ms));
        }
        let text = render(vec![
            Family {
                name: "x_requests",
                help: "Requests.",
                samples: vec![(vec![("service", "web".into())], Sample::Counter(3))],
            },
            Family {
                name: "x_up",
                help: "Up.",
                samples: vec![(vec![], gauge(1u8))],
            },
            Family {
                name: "x_wait_seconds",
                help: "Waits.",
                samples: vec![(vec![], Sample::Histogram(waits.sample()))],
            },
        ]);
        assert!(text.contains("# TYPE x_requests counter"), "{text}");
        assert!(
            text.contains("x_requests_total{service=\"web\"} 3"),
            "{text}"
        );
        assert!(text.contains("x_up 1"), "{text}");
        assert!(text.contains("# TYPE x_wait_seconds histogram"), "{text}");
        assert!(
            text.contains("x_wait_seconds_bucket{le=\"0.01\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_wait_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("x_wait_seconds_count 3"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_family_without_samples_is_left_out() {
        let text = render(vec![Family {
            name: "x_checks",
            help: "Checks.",
            samples: Vec::new(),
        }]);
        assert!(!text.contains("x_checks"), "{text}");
    }
}
