//! `GET /metrics`: nerve's state as metric families ([`daemon::metrics`]), read at scrape
//! time from what `/status` shows. Labels: `service` and `instance` (the instance id), from
//! the configuration only. Documented in `docs/metrics.md`.

use daemon::metrics::{gauge, render, Family, Labels, Sample};

use crate::state::InstanceStatus;

/// The metrics text for `instances`, whether etcd answers, whether a lease is held, and the
/// build's `version`.
pub fn text(
    instances: &[InstanceStatus],
    etcd_reachable: bool,
    leased: bool,
    version: &'static str,
) -> String {
    let per_instance = |sample: fn(&InstanceStatus) -> Sample| -> Vec<(Labels, Sample)> {
        instances
            .iter()
            .map(|i| {
                let labels = vec![
                    ("service", i.service.clone()),
                    ("instance", i.instance_id.clone()),
                ];
                (labels, sample(i))
            })
            .collect()
    };
    let flag = |on: bool| vec![(Vec::new(), gauge(i64::from(on)))];
    render(vec![
        Family {
            name: "nerve_build_info",
            help: "The running build.",
            samples: vec![(vec![("version", version.to_owned())], gauge(1))],
        },
        Family {
            name: "nerve_etcd_connected",
            help: "1 while the last request to etcd got an answer.",
            samples: flag(etcd_reachable),
        },
        Family {
            name: "nerve_lease_held",
            help: "1 while nerve holds a lease its registrations are written under.",
            samples: flag(leased),
        },
        Family {
            name: "nerve_instance_healthy",
            help: "1 while the instance passes its checks (rise/fall applied).",
            samples: per_instance(|i| gauge(i64::from(i.healthy))),
        },
        Family {
            name: "nerve_instance_registered",
            help: "1 while the instance's key is written under the current lease.",
            samples: per_instance(|i| gauge(i64::from(i.registered))),
        },
        Family {
            name: "nerve_instance_maintenance",
            help: "1 while any maintenance switch or file holds the instance out.",
            samples: per_instance(|i| gauge(i64::from(i.maintenance))),
        },
    ])
}
