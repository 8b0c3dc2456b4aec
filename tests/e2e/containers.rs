//! The mesh in real containers, on an internal Docker network with a 198.18.x.0/24 subnet
//! (no route off the machine): an etcd container, provider containers (nerve, and an app
//! bound to the container's own address) and a consumer container (synapse, and a client
//! dialling 127.0.0.1:3000 inside that container). The image is assembled by
//! deploy/docker/build-image.sh, as `make image` does, from the debug binaries `make test`
//! built, plus etcd and the test's app.
//!
//! Under a client opening new connections all the time, one provider container is killed
//! (`docker kill`, no goodbye): not one request fails (synapse retries connects and replays
//! unanswered requests); `etcdctl get` in the consumer shows the registrations; a third
//! provider is routable within a second of registering. The counts and times are printed.
//!
//! Where Docker cannot run, the test says loudly that it was SKIPPED, and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{EventType, WatchOptions};
use testkit::docker::{self, Docker, Scope};
use testkit::process::workspace_bin;
use testkit::{metric_sample, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const DEADLINE: Duration = Duration::from_secs(30);
const PREFIX: &str = "/smartstack/services";
/// nerve's lease: a killed provider's key leaves etcd within this (+ 1 s).
const LEASE_TTL_SECS: u64 = 3;
/// Where the apps listen in the provider containers, and synapse in the consumer's.
const APP_PORT: u16 = 8080;
const LISTEN: &str = "127.0.0.1:3000";
const SYNAPSE_ADMIN: &str = "127.0.0.1:3212";

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn skipped(why: &str) {
    testkit::skipped(
        "the container test",
        why,
        "Install Debian's docker.io (`make deps` does) and run as root to run it.",
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("tests/ has no parent"))
        .to_owned()
}

/// `name` on this machine's PATH.
fn on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH: `make deps` installs it"))
}

async fn docker(args: &[&str]) -> String {
    docker::run(args).await.unwrap_or_else(|e| panic!("{e}"))
}

/// `docker` with the words of `line` as its arguments (none of them holds a space).
async fn docker_words(line: &str) -> String {
    docker(&line.split_whitespace().collect::<Vec<_>>()).await
}

fn nerve_config(etcd: &str, id: &str, ip: &str) -> String {
    format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\nlease_ttl: {LEASE_TTL_SECS}s\nservices:\n\
         \x20 - name: web\n    host: {ip}\n    port: {APP_PORT}\n    instance_id: {id}\n\
         \x20   check_interval: 100ms\n    rise: 2\n    fall: 2\n    checks:\n      - type: tcp\n"
    )
}

/// A killed provider: connects to it fail (refused while its container goes down, or
/// unanswered once its address is gone: `connect_timeout`) and are retried on another
/// instance, and `eject_after` failures take it out of the rotation; a request it took and
/// never answered is sent again elsewhere (`retry_unanswered`: the app's requests may be
/// repeated).
fn synapse_config(etcd: &str) -> String {
    format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\nadmin: {SYNAPSE_ADMIN}\nservices:\n\
         \x20 - name: web\n    listen: {LISTEN}\n    connect_timeout: 250ms\n    retries: 3\n\
         \x20   retry_unanswered: true\n    eject_after: 2\n"
    )
}

/// Registrations as the test sees them from outside: every watch event under the prefix,
/// with the time it arrived.
#[derive(Clone, Default)]
struct Registry {
    events: Arc<Mutex<Vec<(String, bool, i64)>>>,
}

impl Registry {
    async fn watch(endpoint: &str) -> Registry {
        let start = Instant::now();
        let mut client = loop {
            let attempt = async {
                let mut c = etcd_client::Client::connect([endpoint], None).await.ok()?;
                c.get("/", None).await.ok()?;
                Some(c)
            };
            if let Ok(Some(client)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                break client;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "etcd at {endpoint} did not answer within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut stream = client
            .watch(PREFIX, Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap_or_else(|e| panic!("watch {PREFIX}: {e}"));
        let registry = Registry::default();
        let events = registry.events.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(response)) = stream.message().await {
                let at = unix_ms();
                let mut events = events.lock().unwrap_or_else(|p| p.into_inner());
                for event in response.events() {
                    let key = event.kv().and_then(|kv| kv.key_str().ok());
                    let put = event.event_type() == EventType::Put;
                    events.push((key.unwrap_or_default().to_owned(), put, at));
                }
            }
        });
        registry
    }

    /// When the key of instance `id` was last put (`put`) or deleted, if it was.
    fn last(&self, id: &str, put: bool) -> Option<i64> {
        let key = format!("{PREFIX}/web/{id}");
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .rev()
            .find(|(k, p, _)| *k == key && *p == put)
            .map(|&(_, _, at)| at)
    }

    async fn wait(&self, id: &str, put: bool) -> i64 {
        let what = format!("{id}'s key {}", if put { "is put" } else { "is deleted" });
        wait_until(&what, DEADLINE, || async { self.last(id, put).is_some() }).await;
        self.last(id, put).unwrap_or_default()
    }
}

/// The load client, run with `docker exec -i` in the consumer container; stops when its
/// stdin closes.
struct Load {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(container: &str) -> Load {
        let mut child = tokio::process::Command::new("docker")
            .args([
                "exec", "-i", container, "mesh-app", "load", LISTEN, "4", "120",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("docker exec: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let collected = lines.clone();
        tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                collected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        });
        let collected = lines.clone();
        tokio::spawn(async move {
            let Some(mut stderr) = stderr else { return };
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            let mut lines = collected.lock().unwrap_or_else(|p| p.into_inner());
            lines.extend(text.lines().map(|l| format!("stderr {l}")));
        });
        Load { child, lines }
    }

    /// The value after `key ` on the first line starting so (`first p1` -> the time).
    fn find(&self, key: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned))
    }

    /// When `id` first answered (unix ms, the consumer container's clock: the same kernel's).
    async fn first_answer(&mut self, id: &str) -> i64 {
        let key = format!("first {id}");
        let start = Instant::now();
        loop {
            if let Some(at) = self.find(&key) {
                return at.parse().unwrap_or_else(|e| panic!("{key} {at}: {e}"));
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "{id} did not answer the client within {DEADLINE:?}; the client said:\n{}",
                    self.lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .join("\n")
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the load client exited ({status}) before {id} answered");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes its stdin and waits for the report: answers per instance, failure reasons.
    async fn finish(mut self) -> (BTreeMap<String, u64>, Vec<String>, u64) {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the load client did not stop within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("docker exec: {e}"));
        // The reader tasks finish with the pipes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(
            status.success(),
            "the load client failed: {}",
            lines.join("\n")
        );
        let mut answered = BTreeMap::new();
        let mut failures = Vec::new();
        let mut failed = None;
        for line in &lines {
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("answered"), Some(id), Some(n)) => {
                    answered.insert(id.to_owned(), n.parse().unwrap_or_default());
                }
                (Some("failure"), _, _) => failures.push(line.clone()),
                (Some("failed"), Some(n), None) => failed = n.parse().ok(),
                _ => {}
            }
        }
        let failed = failed.unwrap_or_else(|| panic!("no report from the client:\n{lines:?}"));
        (answered, failures, failed)
    }
}

/// A provider container: nerve as its main process (`docker logs` shows nerve's log), the
/// app started beside it and bound to the container's address. `docker kill` ends both.
async fn start_provider(
    scope: &Scope,
    image: &str,
    net: &str,
    config_dir: &Path,
    id: &str,
    ip: &str,
) {
    let name = scope.name(id);
    let mount = format!("{}:/etc/smartstack:ro", config_dir.display());
    docker_words(&format!(
        "run -d --name {name} --network {net} --ip {ip} -v {mount} {image} \
         nerve -c /etc/smartstack/nerve-{id}.yaml"
    ))
    .await;
    let listen = format!("{ip}:{APP_PORT}");
    docker(&["exec", "-d", &name, "mesh-app", "serve", id, &listen]).await;
}

/// Synapse's counter `family{service="web"...}` in the consumer, read through the
/// container's loopback.
fn counter(metrics: &str, series: &str) -> u64 {
    metric_sample(metrics, series).unwrap_or(0.0) as u64
}

#[tokio::test]
async fn a_provider_container_killed_under_load_fails_no_request_and_a_new_one_is_routable_within_a_second(
) {
    let docker_daemon = match Docker::start().await {
        Ok(d) => d,
        Err(why) => return skipped(&why),
    };
    let test_start = Instant::now();
    let scope = Scope::new("smartstack-e2e");

    // The image, as `make image` builds it, from the debug binaries plus etcd and the app.
    let image = scope.image(&std::process::id().to_string());
    let bin_dir = workspace_bin("nerve")
        .parent()
        .unwrap_or_else(|| panic!("binary without a directory"))
        .to_owned();
    let (etcd_bin, app_bin) = (on_path("etcd"), workspace_bin("mesh-app"));
    let started = Instant::now();
    let built = tokio::process::Command::new(repo_root().join("deploy/docker/build-image.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--add")
        .arg(&etcd_bin)
        .arg("--add")
        .arg(&app_bin)
        .args(["--tag", &image])
        .output()
        .await
        .unwrap_or_else(|e| panic!("build-image.sh: {e}"));
    assert!(
        built.status.success(),
        "build-image.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let size = docker(&["image", "inspect", "--format", "{{.Size}}", &image]).await;
    println!(
        "image {image} assembled and imported in {:?} ({} MB)",
        started.elapsed(),
        size.parse::<u64>().unwrap_or(0) / 1_000_000
    );

    let (net, base) = scope
        .internal_network("net")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("internal network {net} on {base}.0/24");
    let etcd_ip = format!("{base}.2");
    let etcd_url = format!("http://{etcd_ip}:2379");

    let config_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let shown = config_dir.path().display().to_string();
    assert!(
        !shown.contains(char::is_whitespace),
        "the temp dir {shown:?} holds a space, which docker_words cannot pass"
    );
    let write = |file: &str, text: &str| {
        let path = config_dir.path().join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    };
    for (id, last) in [("p1", 11), ("p2", 12), ("p3", 13)] {
        write(
            &format!("nerve-{id}.yaml"),
            &nerve_config(&etcd_url, id, &format!("{base}.{last}")),
        );
    }
    write("synapse.yaml", &synapse_config(&etcd_url));
    // The containers run as nobody: the mounted directory must be readable by all.
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(config_dir.path(), readable)
            .unwrap_or_else(|e| panic!("chmod: {e}"));
    }

    let etcd_name = scope.name("etcd");
    docker_words(&format!(
        "run -d --name {etcd_name} --network {net} --ip {etcd_ip} {image} \
         etcd --name etcd --data-dir /tmp/etcd \
         --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls {etcd_url} \
         --listen-peer-urls http://127.0.0.1:2380 \
         --initial-advertise-peer-urls http://127.0.0.1:2380 \
         --initial-cluster etcd=http://127.0.0.1:2380"
    ))
    .await;
    // The test watches the registrations from the host (the internal network's bridge).
    let registry = Registry::watch(&etcd_url).await;

    for (id, last) in [("p1", 11), ("p2", 12)] {
        start_provider(
            &scope,
            &image,
            &net,
            config_dir.path(),
            id,
            &format!("{base}.{last}"),
        )
        .await;
    }
    let consumer = scope.name("consumer");
    let mount = format!("{}:/etc/smartstack:ro", config_dir.path().display());
    docker_words(&format!(
        "run -d --name {consumer} --network {net} --ip {base}.20 -v {mount} {image} \
         synapse -c /etc/smartstack/synapse.yaml"
    ))
    .await;
    registry.wait("p1", true).await;
    registry.wait("p2", true).await;

    let mut load = Load::start(&consumer);
    load.first_answer("p1").await;
    load.first_answer("p2").await;
    println!("the client in the consumer container reaches p1 and p2 through {LISTEN}");

    // What an operator sees, with the image's etcdctl, from the consumer container.
    let etcdctl = || {
        let line = format!("exec {consumer} etcdctl --endpoints {etcd_url} get --prefix {PREFIX}");
        async move { docker_words(&line).await }
    };
    let listing = etcdctl().await;
    println!("etcdctl get --prefix {PREFIX} (in the consumer container):\n{listing}");
    for (id, last) in [("p1", 11), ("p2", 12)] {
        let key = format!("{PREFIX}/web/{id}");
        let line = listing
            .lines()
            .skip_while(|l| *l != key)
            .nth(1)
            .unwrap_or_else(|| panic!("etcdctl lists no {key}:\n{listing}"));
        assert!(
            line.contains(&format!("\"{base}.{last}\"")) && line.contains(&format!("{APP_PORT}")),
            "{key} does not hold the container's address: {line}"
        );
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = unix_ms();
    docker(&["kill", &scope.name("p1")]).await;
    println!("killed provider container p1 under load");
    let gone = registry.wait("p1", false).await;
    println!(
        "p1's key left etcd {} ms after the kill (lease TTL {LEASE_TTL_SECS} s)",
        gone - killed_at
    );
    assert!(
        gone - killed_at <= (LEASE_TTL_SECS as i64 + 2) * 1_000,
        "p1's key stayed {} ms after the kill",
        gone - killed_at
    );
    let listing = etcdctl().await;
    println!("etcdctl get --prefix {PREFIX} after the kill:\n{listing}");
    assert!(
        !listing.contains(&format!("{PREFIX}/web/p1"))
            && listing.contains(&format!("{PREFIX}/web/p2")),
        "after the kill etcd should list p2 and not p1:\n{listing}"
    );

    let run_at = unix_ms();
    start_provider(
        &scope,
        &image,
        &net,
        config_dir.path(),
        "p3",
        &format!("{base}.13"),
    )
    .await;
    let registered = registry.wait("p3", true).await;
    let answered = load.first_answer("p3").await;
    println!(
        "third provider p3: registered {} ms after `docker run`, first answer {} ms after \
         its registration ({} ms after `docker run`)",
        registered - run_at,
        answered - registered,
        answered - run_at
    );
    assert!(
        answered - registered < 1_000,
        "p3 answered {} ms after it was registered; it should be routable within a second",
        answered - registered
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (answered, failures, failed) = load.finish().await;
    let total: u64 = answered.values().sum();
    let metrics = docker(&[
        "exec",
        &consumer,
        "mesh-app",
        "get",
        SYNAPSE_ADMIN,
        "/metrics",
    ])
    .await;
    let web = "{service=\"web\"}";
    println!(
        "client in the consumer container: {} requests, {failed} failed; answered by {answered:?}; \
         synapse retried {} connects, replayed {} unanswered requests, ejected {} times",
        total + failed,
        counter(&metrics, &format!("synapse_retries_total{web}")),
        counter(&metrics, &format!("synapse_replays_total{web}")),
        counter(&metrics, &format!("synapse_ejections_total{web}")),
    );
    let attempts = |result: &str| {
        let series =
            format!("synapse_connect_attempts_total{{service=\"web\",result=\"{result}\"}}");
        counter(&metrics, &series)
    };
    println!(
        "synapse's failed connects: {} refused, {} timed out, {} other errors",
        attempts("refused"),
        attempts("timeout"),
        attempts("error")
    );
    assert_eq!(failed, 0, "requests failed:\n{}", failures.join("\n"));
    for id in ["p1", "p2", "p3"] {
        assert!(
            answered.get(id).is_some_and(|&n| n > 0),
            "{id} answered nothing: {answered:?}"
        );
    }

    drop(scope);
    let leftovers = docker::run(&["ps", "-a", "--format", "{{.Names}}"])
        .await
        .unwrap_or_default();
    assert!(
        !leftovers.contains("smartstack-e2e-"),
        "containers left behind: {leftovers}"
    );
    println!(
        "container test took {:?}{}",
        test_start.elapsed(),
        if docker_daemon.started_here() {
            " (dockerd was started for it and is stopped at the end)"
        } else {
            ""
        }
    );
}

/// `value[key]` as a string (empty if absent).
fn str_at<'a>(value: &'a serde_norway::Value, key: &str) -> &'a str {
    value.get(key).and_then(|v| v.as_str()).unwrap_or_default()
}

/// `value[key]` as a list of strings (empty if absent).
fn strings_at(value: &serde_norway::Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(|v| v.as_sequence())
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// deploy/docker/compose.yaml describes the container test's topology: etcd, providers of
/// an app plus a nerve in the app's network namespace, a consumer (synapse) whose client
/// shares its namespace, all on one internal 198.18.x.0/24 network; every configuration
/// file it mounts passes the real binaries' --check-config. `docker compose config`
/// validates it too where compose is installed (Debian's docker.io has no compose).
#[test]
fn the_compose_file_describes_the_same_topology_and_its_configs_are_valid() {
    let dir = repo_root().join("deploy/docker");
    let path = dir.join("compose.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));

    let mesh = &compose["networks"]["mesh"];
    assert_eq!(
        mesh["internal"].as_bool(),
        Some(true),
        "network mesh: {mesh:?}"
    );
    let subnet = str_at(&mesh["ipam"]["config"][0], "subnet");
    assert!(
        subnet.starts_with("198.18.") && subnet.ends_with(".0/24"),
        "network mesh: subnet {subnet:?}"
    );

    let services = &compose["services"];
    let service = |name: &str| {
        let s = &services[name];
        assert!(s.is_mapping(), "no service {name} in {}", path.display());
        s
    };
    let check_config = |bin: &str, mount: &str| {
        let file = mount
            .strip_prefix("./")
            .and_then(|m| m.split(':').next())
            .unwrap_or_else(|| panic!("volume {mount:?} is not ./FILE:PATH:ro"));
        let out = std::process::Command::new(workspace_bin(bin))
            .arg("-c")
            .arg(dir.join(file))
            .arg("--check-config")
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert!(
            out.status.success(),
            "{bin} --check-config {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(dir.join(file)).unwrap_or_default()
    };

    assert_eq!(strings_at(service("etcd"), "networks"), ["mesh"]);
    for n in 1..=3 {
        let (app, nerve) = (format!("web-{n}"), format!("web-{n}-nerve"));
        assert_eq!(strings_at(service(&app), "networks"), ["mesh"], "{app}");
        assert_eq!(str_at(service(&app), "hostname"), app);
        let sidecar = service(&nerve);
        assert_eq!(str_at(sidecar, "image"), "smartstack-rs:latest", "{nerve}");
        assert_eq!(str_at(sidecar, "network_mode"), format!("service:{app}"));
        assert_eq!(strings_at(sidecar, "command")[0], "nerve");
        let volumes = strings_at(sidecar, "volumes");
        let config = check_config("nerve", &volumes[0]);
        assert!(
            config.contains(&format!("host: {app}\n")),
            "{nerve} should register {app} under its own name:\n{config}"
        );
    }
    let consumer = service("consumer");
    assert_eq!(str_at(consumer, "image"), "smartstack-rs:latest");
    assert_eq!(strings_at(consumer, "networks"), ["mesh"]);
    assert_eq!(strings_at(consumer, "command")[0], "synapse");
    let config = check_config("synapse", &strings_at(consumer, "volumes")[0]);
    let client = service("client");
    assert_eq!(str_at(client, "network_mode"), "service:consumer");
    let dials = strings_at(client, "command").join(" ");
    let listen = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listen address in the consumer's synapse.yaml"));
    assert!(
        listen.starts_with("127.0.0.1:") && dials.contains(&format!("http://{listen}/")),
        "the client should dial synapse's {listen} on its loopback: {dials}"
    );

    let compose_installed = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if compose_installed {
        let out = std::process::Command::new("docker")
            .args(["compose", "-f"])
            .arg(&path)
            .args(["config", "--quiet"])
            .output()
            .unwrap_or_else(|e| panic!("docker compose config: {e}"));
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("docker compose config accepts {}", path.display());
    } else {
        println!(
            "docker compose is not installed: {} checked as YAML only",
            path.display()
        );
    }
}
