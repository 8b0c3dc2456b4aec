//! The registry lost under load, with the real `nerve` and `synapse` binaries: an etcd
//! rebuilt from an empty data dir, and an etcd stopped longer than the lease TTL (every
//! lease expires at once when it resumes). Apps keep being served while the nerves register
//! again: synapse holds the instances it knew for its grace period instead of believing an
//! empty registry. Each test prints the requests made and failed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::backend::greeting;
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};

const DEADLINE: Duration = Duration::from_secs(20);

fn nerve_config(endpoint: &str, backends: &[(&str, u16)], ttl: &str) -> String {
    let mut s = format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\n  dial_timeout: 300ms\n  request_timeout: 1s\n\
         lease_ttl: {ttl}\nservices:\n"
    );
    for (id, port) in backends {
        s += &format!(
            "  - name: web\n    host: 127.0.0.1\n    port: {port}\n    instance_id: {id}\n\
             \x20   check_interval: 200ms\n    rise: 1\n    fall: 2\n    checks:\n      - type: tcp\n"
        );
    }
    s
}

fn synapse_config(endpoint: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\n  dial_timeout: 300ms\n  request_timeout: 1s\n\
         \x20 keepalive_interval: 500ms\n  keepalive_timeout: 500ms\nadmin: {admin}\n\
         services:\n  - name: web\n    listen: {listen}\n    connect_timeout: 300ms\n"
    )
}

fn registered(etcd: &EtcdServer) -> BTreeSet<String> {
    etcd.etcdctl(&[
        "get",
        "--prefix",
        "/smartstack/services/web/",
        "--keys-only",
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| l.trim_start_matches("/smartstack/services/web/").to_owned())
    .collect()
}

fn all_three() -> BTreeSet<String> {
    ["web-a", "web-b", "web-c"].map(str::to_owned).into()
}

/// A client opening a new connection per request until stopped.
struct Load {
    made: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let (made, failed, stop) = (made.clone(), failed.clone(), stop.clone());
            async move {
                let mut errors = Vec::new();
                while !stop.is_cancelled() {
                    if let Err(e) = greeting(addr, Duration::from_secs(5)).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e);
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                }
                errors
            }
        });
        Load {
            made,
            failed,
            stop,
            task,
        }
    }

    /// Waits until `n` more requests were made.
    async fn run_for(&self, n: usize) {
        let until = self.made.load(Ordering::Relaxed) + n;
        wait_until(&format!("{n} more requests"), DEADLINE, || async {
            self.made.load(Ordering::Relaxed) >= until
        })
        .await;
    }

    async fn finish(self, what: &str) {
        self.stop.cancel();
        let errors = self.task.await.unwrap();
        let (made, failed) = (
            self.made.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        println!("{what}: {made} requests made, {failed} failed");
        let first: Vec<&String> = errors.iter().take(3).collect();
        assert!(
            errors.is_empty(),
            "{failed} of {made} failed, first: {first:?}"
        );
    }
}

struct Mesh {
    etcd: EtcdServer,
    _backends: Vec<Backend>,
    nerve: Daemon,
    _synapse: Daemon,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Mesh {
    /// Waits until synapse's grace period holds `n` instances.
    async fn wait_held(&self, n: u64) {
        wait_until(
            &format!("synapse holds {n} instances etcd lost"),
            DEADLINE,
            || async { held(self.admin).await == n },
        )
        .await;
    }

    /// Lets the stopped nerve register again; waits until synapse's grace period is over.
    async fn release_nerve_and_refill(&self) {
        self.nerve.signal(Signal::SIGCONT);
        wait_until("the nerve registers everything again", DEADLINE, || async {
            registered(&self.etcd) == all_three()
        })
        .await;
        wait_until(
            "the grace period ends as the registry refills",
            DEADLINE,
            || async { held(self.admin).await == 0 },
        )
        .await;
    }
}

/// How many instances synapse's `/status` says a grace period holds for `web` (0: none).
async fn held(admin: SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut http) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    let request = b"GET /status HTTP/1.1\r\nHost: synapse\r\nConnection: close\r\n\r\n";
    let mut response = String::new();
    if http.write_all(request).await.is_err() || http.read_to_string(&mut response).await.is_err() {
        return 0;
    }
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|s| s["services"]["web"]["registry"]["grace"]["held_instances"].as_u64())
        .unwrap_or(0)
}

async fn start_mesh(ttl: &str) -> Mesh {
    let etcd = EtcdServer::start().await;
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let ids: Vec<(String, u16)> = backends
        .iter()
        .map(|b| (format!("web-{}", b.name()), b.port()))
        .collect();
    let ids: Vec<(&str, u16)> = ids.iter().map(|(i, p)| (i.as_str(), *p)).collect();
    let nerve = Daemon::nerve(&nerve_config(&etcd.endpoint(), &ids, ttl)).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let synapse = Daemon::synapse(&synapse_config(&etcd.endpoint(), listen, admin)).await;
    wait_until("three instances are registered", DEADLINE, || async {
        registered(&etcd) == all_three()
    })
    .await;
    wait_until("synapse routes to all three", DEADLINE, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            if let Ok(name) = greeting(listen, Duration::from_secs(2)).await {
                seen.insert(name);
            }
        }
        seen.len() == 3
    })
    .await;
    Mesh {
        etcd,
        _backends: backends,
        nerve,
        _synapse: synapse,
        listen,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_rebuilt_empty_under_load_fails_no_request() {
    let mut mesh = start_mesh("3s").await;
    let load = Load::start(mesh.listen);
    load.run_for(50).await;
    // The nerve is held back until synapse has read the empty registry, so that what is
    // tested is synapse's answer to it, not a race with the re-registration.
    mesh.nerve.signal(Signal::SIGSTOP);
    mesh.etcd.restart_empty().await;
    mesh.wait_held(3).await;
    load.run_for(50).await;
    mesh.release_nerve_and_refill().await;
    load.run_for(50).await;
    load.finish("etcd rebuilt empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_expiring_at_once_fails_no_request() {
    let mesh = start_mesh("2s").await;
    let load = Load::start(mesh.listen);
    load.run_for(50).await;
    // etcd stopped for longer than the TTL: on resume it expires the leases together. The
    // nerve is stopped too until that has happened, so that its keepalives (queued while
    // etcd was stopped) cannot renew the lease first and the expiry is certain.
    mesh.etcd.pause();
    mesh.nerve.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    mesh.etcd.resume();
    wait_until("etcd expired every registration", DEADLINE, || async {
        registered(&mesh.etcd).is_empty()
    })
    .await;
    mesh.wait_held(3).await;
    mesh.release_nerve_and_refill().await;
    load.run_for(100).await;
    load.finish("leases expired at once").await;
}
