//! Releases through the real binaries, the way docs/operations.md tells an operator to do
//! them: a canary by runtime weight, a rolling release of four instances, and stopping
//! nerve before its app, each under a client that opens new connections all the time
//! through synapse. The counts are printed; not one connection may fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::backend::greeting;
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};

const DEADLINE: Duration = Duration::from_secs(20);
const PREFIX: &str = "/smartstack/services/web";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// nerve with one instance per `(id, port, weight)` of service web.
fn nerve_config(etcd: &str, admin: u16, instances: &[(&str, u16, u32)], extra: &str) -> String {
    let mut s = format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\nadmin: 127.0.0.1:{admin}\nreconcile_interval: 300ms\n{extra}services:\n"
    );
    for (id, port, weight) in instances {
        s += &format!(
            "  - name: web\n    host: 127.0.0.1\n    port: {port}\n    instance_id: {id}\n    weight: {weight}\n    \
             check_interval: 100ms\n    rise: 1\n    fall: 1\n    checks:\n      - type: tcp\n"
        );
    }
    s
}

fn synapse_config(etcd: &str, admin: u16, listen: u16) -> String {
    format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\nadmin: 127.0.0.1:{admin}\nservices:\n  - name: web\n    \
         listen: 127.0.0.1:{listen}\n    balance: round_robin\n"
    )
}

/// synapse's view of web: (instance id, state, effective weight).
async fn synapse_backends(admin: SocketAddr) -> Vec<(String, String, u64)> {
    let Ok(reply) = testkit::admin::get(admin, "/status").await else {
        return Vec::new();
    };
    let status: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    let backends = status["services"]["web"]["backends"].as_array().cloned();
    backends
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
                b["effective_weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Whether synapse routes to exactly the instances `ids`.
async fn routes_to(admin: SocketAddr, ids: &[&str]) -> bool {
    let mut healthy: Vec<String> = synapse_backends(admin)
        .await
        .into_iter()
        .filter(|(_, state, _)| state == "healthy")
        .map(|(id, _, _)| id)
        .collect();
    healthy.sort();
    healthy == ids
}

/// A client opening one new connection after another through synapse until stopped.
struct Client {
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match greeting(addr, Duration::from_secs(5)).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                    }
                }
            }
        });
        Client {
            ok,
            failed,
            stop,
            task,
        }
    }

    /// Stops; (succeeded, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

async fn call(admin: SocketAddr, method: &str, path: &str, body: &str) -> serde_json::Value {
    let reply = testkit::admin::request(admin, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

/// The weight in the instance's registration in etcd.
fn registered_weight(etcd: &EtcdServer, id: &str) -> Option<u64> {
    let out = etcd.etcdctl(&["get", &format!("{PREFIX}/{id}"), "--print-value-only"]);
    let record: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    record["weight"].as_u64()
}

#[tokio::test]
async fn a_canary_at_weight_5_next_to_95_gets_5_percent_of_new_connections() {
    let etcd = EtcdServer::start().await;
    let (old, canary) = (Backend::start("old").await, Backend::start("canary").await);
    let (nerve_admin, synapse_admin, listen) = (free_port(), free_port(), free_port());
    let instances = [("old", old.port(), 100), ("canary", canary.port(), 100)];
    let nerve = Daemon::nerve(&nerve_config(&etcd.endpoint(), nerve_admin, &instances, "")).await;
    let _synapse = Daemon::synapse(&synapse_config(&etcd.endpoint(), synapse_admin, listen)).await;
    let (nerve_admin, synapse_admin) = (loopback(nerve_admin), loopback(synapse_admin));
    wait_until("synapse routes to both", DEADLINE, || {
        routes_to(synapse_admin, &["canary", "old"])
    })
    .await;

    let answer = call(nerve_admin, "PUT", "/instances/old/weight", "95").await;
    assert_eq!(answer["instances"][0]["effective_weight"], 95, "{answer}");
    let answer = call(
        nerve_admin,
        "PUT",
        "/instances/canary/weight",
        r#"{"weight": 5}"#,
    )
    .await;
    let canary_answer = &answer["instances"][0];
    assert_eq!(canary_answer["weight"], 100, "{answer}");
    assert_eq!(canary_answer["effective_weight"], 5, "{answer}");
    wait_until("synapse sees weights 95 and 5", DEADLINE, || async {
        let mut weights: Vec<(String, u64)> = synapse_backends(synapse_admin)
            .await
            .into_iter()
            .map(|(id, _, w)| (id, w))
            .collect();
        weights.sort();
        weights == [("canary".to_owned(), 5), ("old".to_owned(), 95)]
    })
    .await;
    // Several reconcile rounds later the runtime weight is still what etcd holds.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(registered_weight(&etcd, "canary"), Some(5));

    let n = 4_000;
    let mut to_canary = 0;
    for i in 0..n {
        let got = greeting(loopback(listen), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        to_canary += usize::from(got == "canary");
    }
    let share = to_canary as f64 / n as f64;
    println!(
        "canary at weight 5 of 100: {to_canary} of {n} new connections ({:.2} %)",
        share * 100.0
    );
    assert!((share - 0.05).abs() <= 0.015, "canary share {share:.4}");

    // A reload that keeps the configured weights keeps the runtime ones; one that changes
    // the canary's configured weight wins over its runtime weight.
    let other = "shutdown_delay: 100ms\n";
    nerve.reload(&nerve_config(
        &etcd.endpoint(),
        nerve_admin.port(),
        &instances,
        other,
    ));
    wait_until("the reload is applied", DEADLINE, || async {
        nerve.output().matches("configuration reloaded").count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        registered_weight(&etcd, "canary"),
        Some(5),
        "a reload that kept the weight"
    );
    let changed = [("old", old.port(), 100), ("canary", canary.port(), 50)];
    nerve.reload(&nerve_config(
        &etcd.endpoint(),
        nerve_admin.port(),
        &changed,
        other,
    ));
    wait_until("the configured weight 50 wins", DEADLINE, || async {
        registered_weight(&etcd, "canary") == Some(50)
    })
    .await;
    assert_eq!(
        registered_weight(&etcd, "old"),
        Some(95),
        "old's configured weight did not change"
    );
}

#[tokio::test]
async fn a_rolling_release_of_four_instances_fails_no_connection() {
    let etcd = EtcdServer::start().await;
    let ids = ["web-1", "web-2", "web-3", "web-4"];
    let mut apps = Vec::new();
    for id in ids {
        apps.push(Backend::start(&format!("{id} v1")).await);
    }
    let (nerve_admin, synapse_admin, listen) = (free_port(), free_port(), free_port());
    let instances: Vec<(&str, u16, u32)> = ids
        .iter()
        .zip(&apps)
        .map(|(id, app)| (*id, app.port(), 100))
        .collect();
    let _nerve = Daemon::nerve(&nerve_config(&etcd.endpoint(), nerve_admin, &instances, "")).await;
    let _synapse = Daemon::synapse(&synapse_config(&etcd.endpoint(), synapse_admin, listen)).await;
    let (nerve_admin, synapse_admin) = (loopback(nerve_admin), loopback(synapse_admin));
    wait_until("synapse routes to all four", DEADLINE, || {
        routes_to(synapse_admin, &ids)
    })
    .await;

    let client = Client::start(loopback(listen));
    for (i, id) in ids.iter().enumerate() {
        // 1. Out of the registry; 2. drained in synapse.
        let answer = call(nerve_admin, "POST", &format!("/instances/{id}/disable"), "").await;
        assert_eq!(
            answer["instances"][0]["held_by"],
            serde_json::json!(["admin: instance"])
        );
        let rest: Vec<&str> = ids.iter().filter(|x| *x != id).copied().collect();
        wait_until(&format!("{id} out of synapse"), DEADLINE, || {
            routes_to(synapse_admin, &rest)
        })
        .await;
        // 3. The new version on the same port.
        let port = apps[i].port();
        apps[i].stop().await;
        apps[i] = Backend::start_on(&format!("{id} v2"), &format!("127.0.0.1:{port}")).await;
        // 4. Back in once healthy.
        call(nerve_admin, "POST", &format!("/instances/{id}/enable"), "").await;
        wait_until(&format!("{id} back in synapse"), DEADLINE, || {
            routes_to(synapse_admin, &ids)
        })
        .await;
    }
    // Every instance now answers as v2.
    for _ in 0..8 {
        let got = greeting(loopback(listen), Duration::from_secs(5))
            .await
            .expect("a connection");
        assert!(got.ends_with("v2"), "{got}");
    }
    let (ok, failed) = client.finish().await;
    println!(
        "rolling release of 4 instances: {ok} connections succeeded, {} failed",
        failed.len()
    );
    assert!(ok > 100, "only {ok} connections during the release");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test]
async fn stopping_nerve_before_its_app_loses_no_connection() {
    let etcd = EtcdServer::start().await;
    let (mut a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin_a, admin_b, synapse_admin, listen) =
        (free_port(), free_port(), free_port(), free_port());
    let delay = "shutdown_delay: 500ms\n";
    let mut nerve_a = Daemon::nerve(&nerve_config(
        &etcd.endpoint(),
        admin_a,
        &[("a", a.port(), 100)],
        delay,
    ))
    .await;
    let _nerve_b = Daemon::nerve(&nerve_config(
        &etcd.endpoint(),
        admin_b,
        &[("b", b.port(), 100)],
        delay,
    ))
    .await;
    let _synapse = Daemon::synapse(&synapse_config(&etcd.endpoint(), synapse_admin, listen)).await;
    let synapse_admin = loopback(synapse_admin);
    wait_until("synapse routes to both", DEADLINE, || {
        routes_to(synapse_admin, &["a", "b"])
    })
    .await;

    let client = Client::start(loopback(listen));
    tokio::time::sleep(Duration::from_millis(300)).await;
    nerve_a.signal(Signal::SIGTERM);
    wait_until("synapse stops routing to a", DEADLINE, || {
        routes_to(synapse_admin, &["b"])
    })
    .await;
    let exited = nerve_a.wait_exit(Duration::from_secs(10)).await;
    assert!(exited.is_some_and(|s| s.success()), "nerve a: {exited:?}");
    // Only now does the app behind it stop.
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = client.finish().await;
    println!(
        "nerve stopped, then its app: {ok} connections succeeded, {} failed",
        failed.len()
    );
    assert!(ok > 50, "only {ok} connections");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
