//! `GET /metrics`: nerve's state and counters as metric families ([`daemon::metrics`]), read
//! at scrape time from what `/status` shows and from [`crate::counters`], then the standard
//! process families. Labels: `service` and `instance` (the instance id), from the
//! configuration only; an instance a reload removed has no series any more. Documented in
//! `docs/metrics.md`.

use daemon::metrics::{gauge, render, Family, Labels, Sample};

use crate::config::CheckKind;
use crate::counters::{ProcessCounters, WriteOp};
use crate::state::CountedInstance;

/// What one scrape reads.
pub struct Scrape<'a> {
    pub instances: &'a [CountedInstance],
    /// Whether the last request to etcd got an answer.
    pub etcd_reachable: bool,
    /// Whether a lease is held.
    pub leased: bool,
    pub process: &'a ProcessCounters,
    /// The build's version.
    pub version: &'static str,
}

/// The metrics text of `scrape`.
pub fn text(scrape: &Scrape) -> String {
    let mut families = state_families(scrape);
    families.extend(check_families(scrape.instances));
    families.extend(registry_families(scrape.process));
    families.extend(daemon::metrics::process::families());
    render(families)
}

fn instance_labels(i: &CountedInstance) -> Labels {
    vec![
        ("service", i.status.service.clone()),
        ("instance", i.status.instance_id.clone()),
    ]
}

/// One sample per instance.
fn per_instance(
    instances: &[CountedInstance],
    sample: impl Fn(&CountedInstance) -> Sample,
) -> Vec<(Labels, Sample)> {
    instances
        .iter()
        .map(|i| (instance_labels(i), sample(i)))
        .collect()
}

fn state_families(scrape: &Scrape) -> Vec<Family> {
    let instances = scrape.instances;
    let flag = |on: bool| vec![(Vec::new(), gauge(i64::from(on)))];
    vec![
        Family {
            name: "nerve_build_info",
            help: "The running build.",
            samples: vec![(vec![("version", scrape.version.to_owned())], gauge(1))],
        },
        Family {
            name: "nerve_etcd_connected",
            help: "1 while the last request to etcd got an answer.",
            samples: flag(scrape.etcd_reachable),
        },
        Family {
            name: "nerve_lease_held",
            help: "1 while nerve holds a lease its registrations are written under.",
            samples: flag(scrape.leased),
        },
        Family {
            name: "nerve_instance_healthy",
            help: "1 while the instance passes its checks (rise/fall applied).",
            samples: per_instance(instances, |i| gauge(i64::from(i.status.healthy))),
        },
        Family {
            name: "nerve_instance_registered",
            help: "1 while the instance's key is written under the current lease.",
            samples: per_instance(instances, |i| gauge(i64::from(i.status.registered))),
        },
        Family {
            name: "nerve_instance_maintenance",
            help: "1 while any maintenance switch or file holds the instance out.",
            samples: per_instance(instances, |i| gauge(i64::from(i.status.maintenance))),
        },
    ]
}

/// Checks by kind and result, their durations, and health transitions. A kind appears for
/// the instances that have a check of that kind now.
fn check_families(instances: &[CountedInstance]) -> Vec<Family> {
    let mut checks = Vec::new();
    let mut durations = Vec::new();
    for i in instances {
        for kind in CheckKind::ALL.into_iter().filter(|k| i.kinds.contains(k)) {
            let mut labels = instance_labels(i);
            labels.push(("check", kind.name().to_owned()));
            for (result, passed) in [("pass", true), ("fail", false)] {
                let mut labels = labels.clone();
                labels.push(("result", result.to_owned()));
                checks.push((labels, Sample::Counter(i.counters.checks(kind, passed))));
            }
            if let Some(h) = i.counters.durations(kind) {
                durations.push((labels, Sample::Histogram(h)));
            }
        }
    }
    let transitions = instances
        .iter()
        .flat_map(|i| {
            [("healthy", true), ("unhealthy", false)].map(|(to, healthy)| {
                let mut labels = instance_labels(i);
                labels.push(("to", to.to_owned()));
                (labels, Sample::Counter(i.counters.transitions(healthy)))
            })
        })
        .collect();
    vec![
        Family {
            name: "nerve_checks",
            help: "Checks run, by kind and result.",
            samples: checks,
        },
        Family {
            name: "nerve_check_duration_seconds",
            help: "How long each check took, by kind.",
            samples: durations,
        },
        Family {
            name: "nerve_health_transitions",
            help: "Changes of health after rise/fall, by the state changed to.",
            samples: transitions,
        },
    ]
}

fn registry_families(process: &ProcessCounters) -> Vec<Family> {
    let by_op = |taken: bool| {
        WriteOp::ALL
            .into_iter()
            .map(|op| {
                let labels = vec![("op", op.name().to_owned())];
                (labels, Sample::Counter(process.writes(op, taken)))
            })
            .collect()
    };
    let one = |v: u64| vec![(Vec::new(), Sample::Counter(v))];
    vec![
        Family {
            name: "nerve_registry_writes",
            help: "Writes etcd took: keys put, keys deleted.",
            samples: by_op(true),
        },
        Family {
            name: "nerve_registry_write_failures",
            help: "Writes etcd answered with an error that retrying does not fix.",
            samples: by_op(false),
        },
        Family {
            name: "nerve_lease_keepalive_failures",
            help: "Lease keepalives that got no answer.",
            samples: one(process.lease.keepalive_failures()),
        },
        Family {
            name: "nerve_leases_lost",
            help: "Leases given up because etcd no longer knew them or no keepalive got \
                   through for a TTL.",
            samples: one(process.lease.leases_lost()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Shared;
    use std::path::Path;
    use std::time::Duration;

    fn services() -> Vec<crate::config::ServiceConfig> {
        let text = "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\nservices:\n\
            - {name: web, instance_id: w1, host: h, port: 1, checks: [{type: tcp}, {type: exec, command: [/bin/true]}]}\n\
            - {name: web, instance_id: w2, host: h, port: 2, checks: [{type: http}]}\n";
        crate::config::parse(Path::new("t.yaml"), text)
            .unwrap_or_else(|e| panic!("{e}"))
            .services
    }

    fn scrape(shared: &Shared) -> String {
        text(&Scrape {
            instances: &shared.counted(),
            etcd_reachable: true,
            leased: false,
            process: shared.counters(),
            version: "1.2.3",
        })
    }

    #[test]
    fn counters_show_per_instance_and_kind_and_go_with_the_instance() {
        let shared = Shared::new("/p");
        let services = services();
        let counters: Vec<_> = services.iter().map(|s| shared.upsert(s).counters).collect();
        counters[0].check(CheckKind::Tcp, true, Duration::from_millis(1));
        counters[0].check(CheckKind::Tcp, false, Duration::from_millis(1));
        counters[0].check(CheckKind::Tcp, false, Duration::from_millis(1));
        counters[0].transition(crate::health::Transition::BecameHealthy);
        shared.counters().write(WriteOp::Put, true);
        let text = scrape(&shared);
        let w1 = r#"service="web",instance="w1""#;
        for line in [
            format!(r#"nerve_checks_total{{{w1},check="tcp",result="pass"}} 1"#),
            format!(r#"nerve_checks_total{{{w1},check="tcp",result="fail"}} 2"#),
            format!(r#"nerve_checks_total{{{w1},check="exec",result="pass"}} 0"#),
            format!(r#"nerve_check_duration_seconds_count{{{w1},check="tcp"}} 3"#),
            format!(r#"nerve_health_transitions_total{{{w1},to="healthy"}} 1"#),
            format!(r#"nerve_health_transitions_total{{{w1},to="unhealthy"}} 0"#),
            r#"nerve_checks_total{service="web",instance="w2",check="http",result="fail"} 0"#
                .to_owned(),
            r#"nerve_registry_writes_total{op="put"} 1"#.to_owned(),
            r#"nerve_registry_writes_total{op="delete"} 0"#.to_owned(),
            r#"nerve_registry_write_failures_total{op="put"} 0"#.to_owned(),
            "nerve_leases_lost_total 0".to_owned(),
            "nerve_lease_keepalive_failures_total 0".to_owned(),
            "# TYPE nerve_check_duration_seconds histogram".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        // Only the kinds an instance has.
        assert!(!text.contains(r#"instance="w1",check="http""#), "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes"), "{text}");
        }

        shared.remove(&("web".to_owned(), "w1".to_owned()));
        let text = scrape(&shared);
        assert!(!text.contains(r#"instance="w1""#), "{text}");
        assert!(text.contains(r#"instance="w2""#), "{text}");
    }
}
