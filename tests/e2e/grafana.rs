//! The Grafana dashboard and Prometheus scrape config in deploy/ against the real binaries:
//! every metric the dashboard queries is exported by a running synapse or nerve (so a
//! renamed metric cannot leave a silently empty panel), and every job the dashboard selects
//! is one the scrape config defines.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use testkit::backend::greeting;
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};

const DEADLINE: Duration = Duration::from_secs(20);

fn deploy(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

/// The metric names (ours and the process ones) an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["synapse_", "nerve_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

/// Whether `text` (a scrape) has a sample of `name`.
fn exported(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

async fn scrape(admin: SocketAddr) -> String {
    testkit::admin::get(admin, "/metrics")
        .await
        .map(|r| r.body)
        .unwrap_or_default()
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/smartstack.json")).expect("dashboard JSON");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let scrape_config = deploy("prometheus/prometheus.yml");
    for expr in &exprs {
        for job in ["synapse", "nerve"] {
            if expr.contains(&format!("job=\"{job}\"")) || expr.contains(&format!("job=~\"{job}")) {
                assert!(
                    scrape_config.contains(&format!("job_name: {job}")),
                    "the dashboard selects job {job}, which prometheus.yml does not scrape"
                );
            }
        }
    }

    let etcd = EtcdServer::start().await;
    let app = Backend::start("app").await;
    let (nerve_admin, synapse_admin, listen) = (free_port(), free_port(), free_port());
    let endpoint = etcd.endpoint();
    let _nerve = Daemon::nerve(&format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\nadmin: 127.0.0.1:{nerve_admin}\nservices:\n  - name: web\n    \
         host: 127.0.0.1\n    port: {}\n    instance_id: web-1\n    check_interval: 200ms\n    rise: 1\n    \
         checks:\n      - type: tcp\n",
        app.port()
    ))
    .await;
    let _synapse = Daemon::synapse(&format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\nadmin: 127.0.0.1:{synapse_admin}\nservices:\n  - name: web\n    \
         listen: 127.0.0.1:{listen}\n"
    ))
    .await;
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_until("a connection goes through synapse", DEADLINE, || async {
        greeting(listen, Duration::from_secs(2)).await.is_ok()
    })
    .await;
    let (nerve_admin, synapse_admin) = (
        SocketAddr::from(([127, 0, 0, 1], nerve_admin)),
        SocketAddr::from(([127, 0, 0, 1], synapse_admin)),
    );
    wait_until("nerve has counted checks", DEADLINE, || async {
        exported(&scrape(nerve_admin).await, "nerve_checks_total")
    })
    .await;
    let (synapse_text, nerve_text) = (scrape(synapse_admin).await, scrape(nerve_admin).await);
    let mut missing = Vec::new();
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for name in &names {
        let found = if name.starts_with("synapse_") {
            exported(&synapse_text, name)
        } else if name.starts_with("nerve_") {
            exported(&nerve_text, name)
        } else {
            exported(&synapse_text, name) && exported(&nerve_text, name)
        };
        if !found {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}\nsynapse:\n{synapse_text}\nnerve:\n{nerve_text}"
    );
    assert!(
        names.len() >= 25,
        "only {} metrics queried: {names:?}",
        names.len()
    );
}
