//! The release and failure scenarios of a real deployment, on a simulated cluster: every
//! host a network namespace with its own 198.18.0.x address (see `testkit::netns`), etcd a
//! 3-member cluster on three of them, providers (a testkit backend bound to the host's
//! address, plus a real nerve) on four more, and a consumer host running a real synapse and
//! two load clients dialling 127.0.0.1:3000 inside that host: one opening a new connection
//! per request, one keeping long connections (50 requests each, then replaced).
//!
//! ```text
//!   etcd1 .11   etcd2 .12   etcd3 .13        (etcd cluster, 3 members)
//!   p1 .14   p2 .15   p3 .16   p4 .17        (app + nerve per instance)
//!   consumer .18                             (synapse + load clients on 127.0.0.1)
//!   switch .1                                (the bridge; etcdctl runs here)
//! ```
//!
//! One test runs the scenarios one after the other on the same cluster (building it costs
//! more than most scenarios), each under fresh load and each printing
//! `<scenario>: N requests, M failed`, then a summary. `make cluster-demo` runs it with
//! the narration shown. Without root (or without iproute2/iptables) it says loudly that it
//! was SKIPPED, and passes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::load::{Load, LoadClient, Mode, Report};
use testkit::netns::{Host, Netem, Network};
use testkit::{time_until, wait_until, Backend, Daemon, EtcdCluster};

const PREFIX: &str = "/smartstack/services/web";
/// synapse's service port and admin port, on the consumer's loopback.
const LISTEN: u16 = 3000;
const SYNAPSE_ADMIN: u16 = 9000;
/// nerve's lease: the bound on how long a dead host's keys stay.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// A request that takes longer fails (the load clients' patience).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the consumer is cut off from etcd in scenario 6: the 30 s the issue asks for, far
/// past the point where synapse's reconnect schedule reaches its cap (0.1 s doubling to 1 s).
const ETCD_PARTITION: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(20);
/// Long connections carry this many requests, then are replaced: at a request every 20 ms a
/// connection lives about a second, which bounds a drain.
const PER_CONNECTION: usize = 50;

/// Scenario narration: shown by `make cluster-demo` (the harness hides it otherwise).
fn say(text: &str) {
    println!("== {text}");
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// One app instance: a backend on its host's address and the nerve that registers it.
struct Instance {
    id: String,
    host: Host,
    admin: u16,
    nerve: Daemon,
    app: Backend,
}

/// synapse's view of one backend of web.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    host: String,
    state: String,
    active: u64,
    effective_weight: u64,
}

struct Cluster {
    // Fields drop in this order: processes first, the network (which deletes the
    // namespaces) last.
    _synapse: Daemon,
    instances: Vec<Instance>,
    etcd: EtcdCluster,
    etcd_hosts: Vec<Host>,
    providers: Vec<Host>,
    consumer: Host,
    ports: HashMap<String, u16>,
    /// The etcd member whose host is cut off, if any (scenario 5).
    cut_member: Option<usize>,
    summary: Vec<String>,
    net: Network,
}

fn endpoints(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| format!("\"http://{}:2379\"", h.ip()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Short timeouts throughout: a member that stops answering is left within about a second.
fn etcd_block(hosts: &[Host]) -> String {
    format!(
        "etcd:\n  endpoints: [{}]\n  dial_timeout: 300ms\n  request_timeout: 1s\n  \
         keepalive_interval: 500ms\n  keepalive_timeout: 500ms\n",
        endpoints(hosts)
    )
}

fn nerve_config(
    etcd: &[Host],
    admin: u16,
    host: &Host,
    port: u16,
    id: &str,
    weight: u32,
) -> String {
    format!(
        "{}admin: 127.0.0.1:{admin}\nlease_ttl: {}s\nreconcile_interval: 1s\nshutdown_delay: 1s\n\
         services:\n  - name: web\n    host: {}\n    port: {port}\n    instance_id: {id}\n    \
         weight: {weight}\n    check_interval: 200ms\n    rise: 1\n    fall: 2\n    checks:\n      - type: tcp\n",
        etcd_block(etcd),
        LEASE_TTL.as_secs(),
        host.ip(),
    )
}

fn synapse_config(etcd: &[Host]) -> String {
    format!(
        "{}admin: 127.0.0.1:{SYNAPSE_ADMIN}\nservices:\n  - name: web\n    listen: 127.0.0.1:{LISTEN}\n    \
         connect_timeout: 250ms\n    retries: 2\n    eject_after: 2\n    ejection_time: 5s\n",
        etcd_block(etcd)
    )
}

/// The two load clients of a scenario.
struct Traffic {
    new: LoadClient,
    long: LoadClient,
    started: Instant,
}

impl Traffic {
    fn start(c: &Cluster) -> Traffic {
        Self::start_with(c, 4, Duration::from_millis(20), 4, CLIENT_TIMEOUT)
    }

    fn start_with(
        c: &Cluster,
        new_workers: usize,
        pace: Duration,
        long_workers: usize,
        timeout: Duration,
    ) -> Traffic {
        let target = SocketAddr::from(([127, 0, 0, 1], LISTEN));
        let load = |mode, workers| Load {
            mode,
            workers,
            pace,
            timeout,
        };
        let started = Instant::now();
        Traffic {
            new: LoadClient::start(
                &c.consumer,
                "new-connections",
                target,
                load(Mode::NewConnections, new_workers),
            ),
            long: LoadClient::start(
                &c.consumer,
                "long-connections",
                target,
                load(
                    Mode::LongConnections {
                        per_connection: PER_CONNECTION,
                    },
                    long_workers,
                ),
            ),
            started,
        }
    }

    /// Waits until the new-connection client has had `backend` answer (the instance is
    /// routable). Not the long-connection client: its few workers open a connection about
    /// once a second, and with the round-robin cursor shared with the busy client their
    /// picks can miss one instance of six for longer than the deadline (seen in `make test`).
    async fn reaches(&self, backend: &str) -> Duration {
        time_until(
            &format!("the clients reach {backend}"),
            DEADLINE,
            || async { self.new.snapshot().answered_by(backend) > 0 },
        )
        .await
    }

    /// Waits until the clients have made `n` more requests: load keeps flowing.
    async fn flows(&self, n: u64) {
        let before = self.new.snapshot().requests() + self.long.snapshot().requests();
        wait_until(&format!("{n} more requests"), DEADLINE, || async {
            self.new.snapshot().requests() + self.long.snapshot().requests() >= before + n
        })
        .await;
    }

    /// Stops both clients; prints and records `<scenario>: N requests, M failed`.
    async fn finish(self, c: &mut Cluster, scenario: &str) -> (Report, Report) {
        let (new, long) = (self.new.finish().await, self.long.finish().await);
        let line = format!(
            "{scenario}: {} requests, {} failed (new connections {} / {} failed, p50 {:.1} ms, p99 {:.1} ms; \
             long connections {} / {} failed, p50 {:.1} ms, p99 {:.1} ms)",
            new.requests() + long.requests(),
            new.failed + long.failed,
            new.requests(),
            new.failed,
            new.p50_ms,
            new.p99_ms,
            long.requests(),
            long.failed,
            long.p50_ms,
            long.p99_ms,
        );
        println!("{line}");
        c.summary.push(line);
        (new, long)
    }
}

fn assert_no_failure(scenario: &str, new: &Report, long: &Report) {
    for (what, r) in [("new connections", new), ("long connections", long)] {
        assert!(r.ok > 50, "{scenario}: only {} requests on {what}", r.ok);
        assert!(
            r.failed == 0,
            "{scenario}: {} of {} requests failed on {what}: {:?}",
            r.failed,
            r.requests(),
            &r.errors[..r.errors.len().min(5)]
        );
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let mut net = Network::create();
        let etcd_hosts: Vec<Host> = (1..=3).map(|i| net.add_host(&format!("etcd{i}"))).collect();
        let providers: Vec<Host> = (1..=4).map(|i| net.add_host(&format!("p{i}"))).collect();
        let consumer = net.add_host("consumer");
        say(&format!(
            "hosts: etcd {}, providers {}, consumer {} (network namespaces on one bridge)",
            etcd_hosts
                .iter()
                .map(|h| h.ip().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            providers
                .iter()
                .map(|h| format!("{} {}", h.name(), h.ip()))
                .collect::<Vec<_>>()
                .join(", "),
            consumer.ip()
        ));
        let members: Vec<&Host> = etcd_hosts.iter().collect();
        let etcd = EtcdCluster::start_on(&members, net.operator()).await;
        say("etcd: 3 members, one per etcd host, healthy");
        let synapse = Daemon::start_in(&consumer, "synapse", &synapse_config(&etcd_hosts)).await;
        say(&format!(
            "synapse on the consumer: 127.0.0.1:{LISTEN} -> instances of web"
        ));
        Cluster {
            _synapse: synapse,
            instances: Vec::new(),
            etcd,
            etcd_hosts,
            providers,
            consumer,
            ports: HashMap::new(),
            cut_member: None,
            summary: Vec::new(),
            net,
        }
    }

    /// `p1`..`p4`.
    fn provider(&self, name: &str) -> Host {
        self.providers
            .iter()
            .find(|h| h.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("no provider host {name}"))
    }

    fn next_port(&mut self, host: &Host, base: u16) -> u16 {
        let n = self
            .ports
            .entry(format!("{}-{base}", host.name()))
            .or_insert(base);
        *n += 1;
        *n
    }

    /// Starts an app and its nerve on `host`; returns once etcd holds the registration.
    async fn launch(&mut self, id: &str, version: &str, host: &str, weight: u32) -> String {
        let host = self.provider(host);
        let (port, admin) = (self.next_port(&host, 8000), self.next_port(&host, 9100));
        let greeting = format!("{id} {version} @{}", host.name());
        let app = Backend::start_in(&host, &greeting, port).await;
        let config = nerve_config(&self.etcd_hosts, admin, &host, port, id, weight);
        let nerve = Daemon::start_in(&host, "nerve", &config).await;
        self.instances.push(Instance {
            id: id.to_owned(),
            host: host.clone(),
            admin,
            nerve,
            app,
        });
        let live = self.live_members();
        wait_until(&format!("{id} is registered"), DEADLINE, || async {
            self.registered(&live)
                .is_some_and(|ids| ids.iter().any(|i| i == id))
        })
        .await;
        greeting
    }

    fn instance(&self, id: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// The etcd members whose host is not cut off (all, outside scenario 5).
    fn live_members(&self) -> Vec<usize> {
        (0..self.etcd_hosts.len())
            .filter(|&i| Some(i) != self.cut_member)
            .collect()
    }

    /// The instance ids registered under web, read through `members`.
    fn registered(&self, members: &[usize]) -> Option<Vec<String>> {
        let out = self
            .etcd
            .try_etcdctl_on(members, &["get", "--prefix", PREFIX, "--keys-only"])
            .ok()?;
        Some(
            out.lines()
                .filter_map(|k| k.strip_prefix(PREFIX)?.strip_prefix('/'))
                .map(str::to_owned)
                .collect(),
        )
    }

    async fn synapse_status(&self) -> Value {
        match self
            .consumer
            .admin(SYNAPSE_ADMIN, "GET", "/status", "")
            .await
        {
            Ok(r) => serde_json::from_str(&r.body).unwrap_or_default(),
            Err(_) => Value::Null,
        }
    }

    async fn seen(&self) -> Vec<Seen> {
        let status = self.synapse_status().await;
        let backends = status["services"]["web"]["backends"].as_array().cloned();
        backends
            .unwrap_or_default()
            .iter()
            .map(|b| Seen {
                id: b["id"].as_str().unwrap_or_default().to_owned(),
                host: b["host"].as_str().unwrap_or_default().to_owned(),
                state: b["state"].as_str().unwrap_or_default().to_owned(),
                active: b["active"].as_u64().unwrap_or_default(),
                effective_weight: b["effective_weight"].as_u64().unwrap_or_default(),
            })
            .collect()
    }

    /// Whether synapse routes new connections to exactly `ids` (healthy backends).
    async fn routes_to(&self, ids: &[&str]) -> bool {
        let mut healthy: Vec<String> = self
            .seen()
            .await
            .into_iter()
            .filter(|b| b.state == "healthy")
            .map(|b| b.id)
            .collect();
        healthy.sort();
        let mut want: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        healthy == want
    }

    async fn wait_routes(&self, ids: &[&str]) -> Duration {
        time_until(
            &format!("synapse routes to exactly {ids:?}"),
            DEADLINE,
            || self.routes_to(ids),
        )
        .await
    }

    /// Whether synapse has no connection left to `id` and sends it no new one.
    async fn drained(&self, id: &str) -> bool {
        self.seen()
            .await
            .iter()
            .filter(|b| b.id == id)
            .all(|b| (b.state == "drained" || b.state == "draining") && b.active == 0)
    }

    async fn nerve_call(&self, id: &str, method: &str, path: &str, body: &str) -> Value {
        let i = self.instance(id);
        let reply = i
            .host
            .admin(i.admin, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {id}'s nerve: {e}"));
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
    }

    /// The lease `id`'s nerve holds (hex), `None` while it has none.
    async fn lease(&self, id: &str) -> Option<String> {
        let status = self.nerve_call(id, "GET", "/status", "").await;
        status["lease"].as_str().map(str::to_owned)
    }

    /// docs/operations.md's drain: out of the registry, then wait until synapse has no
    /// connection left to it. Returns how long the drain took.
    async fn drain(&self, id: &str) -> Duration {
        let answer = self
            .nerve_call(id, "POST", &format!("/instances/{id}/disable"), "")
            .await;
        let held = &answer["instances"][0]["held_by"];
        assert_eq!(held, &serde_json::json!(["admin: instance"]), "{answer}");
        time_until(&format!("{id} is drained"), DEADLINE, || self.drained(id)).await
    }

    /// Stops instances for good: SIGTERM to their nerves (all keys go with the lease;
    /// nerve waits its `shutdown_delay` and exits), wait until synapse has drained them,
    /// then stop the apps.
    async fn retire(&mut self, ids: &[&str]) {
        for id in ids {
            self.instance(id).nerve.signal(Signal::SIGTERM);
        }
        for id in ids {
            let pos = self
                .instances
                .iter()
                .position(|i| i.id == *id)
                .unwrap_or_else(|| panic!("no instance {id}"));
            let exited = self.instances[pos]
                .nerve
                .wait_exit(Duration::from_secs(10))
                .await;
            assert!(
                exited.is_some_and(|s| s.success()),
                "nerve of {id}: {exited:?}"
            );
        }
        for id in ids {
            wait_until(&format!("{id} is drained"), DEADLINE, || self.drained(id)).await;
        }
        for id in ids {
            let pos = self
                .instances
                .iter()
                .position(|i| i.id == *id)
                .unwrap_or_else(|| panic!("no instance {id}"));
            let mut instance = self.instances.remove(pos);
            instance.app.stop().await;
        }
    }
}

/// (1) Scale out from 2 to 6 instances on 3 hosts, then back to 2.
async fn scale_out_and_in(c: &mut Cluster) {
    say("scenario 1: scale out from 2 to 6 instances on 3 hosts, then back to 2");
    let traffic = Traffic::start(c);
    traffic.flows(200).await;
    let added = [
        ("web-3", "p3"),
        ("web-4", "p1"),
        ("web-5", "p2"),
        ("web-6", "p3"),
    ];
    let start = Instant::now();
    for (id, host) in added {
        let greeting = c.launch(id, "v1", host, 100).await;
        traffic.reaches(&greeting).await;
    }
    let all = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];
    c.wait_routes(&all).await;
    say(&format!(
        "6 instances on p1, p2, p3 take traffic ({} after the first launch)",
        ms(start.elapsed())
    ));
    traffic.flows(200).await;
    let start = Instant::now();
    c.retire(&["web-3", "web-4", "web-5", "web-6"]).await;
    c.wait_routes(&["web-1", "web-2"]).await;
    say(&format!(
        "4 nerves stopped with SIGTERM (shutdown_delay 1s), drained, apps stopped: back to 2 in {}",
        ms(start.elapsed())
    ));
    traffic.flows(200).await;
    let (new, long) = traffic.finish(c, "scale out 2 -> 6 -> 2").await;
    assert_no_failure("scale out", &new, &long);
}

/// (2) Rolling release: each v1 replaced by a v2 on another host (new IP), one at a time,
/// with the drain procedure of docs/operations.md.
async fn rolling_release(c: &mut Cluster) {
    say("scenario 2: rolling release, each v1 replaced by v2 on another host");
    let traffic = Traffic::start(c);
    traffic.flows(200).await;
    for (old, new, host, keep) in [
        ("web-1", "web-7", "p3", "web-2"),
        ("web-2", "web-8", "p4", "web-7"),
    ] {
        let from = c.instance(old).host.name().to_owned();
        let drain = c.drain(old).await;
        c.wait_routes(&[keep]).await;
        c.retire(&[old]).await;
        let greeting = c.launch(new, "v2", host, 100).await;
        let routed = traffic.reaches(&greeting).await;
        c.wait_routes(&[keep, new]).await;
        say(&format!(
            "{old} v1 on {from}: disabled, drained in {}, stopped; {new} v2 on {host} answering {} after its registration",
            ms(drain),
            ms(routed)
        ));
    }
    traffic.flows(200).await;
    let (new, long) = traffic.finish(c, "rolling release v1 -> v2").await;
    assert_no_failure("rolling release", &new, &long);
    // The last requests went to v2 only.
    let after = Traffic::start(c);
    after.flows(100).await;
    let (new, _) = after.finish(c, "after the release, v2 only").await;
    assert!(
        new.by_backend.keys().all(|b| b.contains(" v2 ")),
        "v1 still answers: {:?}",
        new.by_backend
    );
}

/// (3) A canary at weight 5 among instances at 100: its share of new connections.
async fn canary(c: &mut Cluster) {
    say("scenario 3: canary web-9 v3 at weight 5 next to web-7 and web-8 at 100");
    let traffic = Traffic::start_with(c, 4, Duration::from_millis(10), 4, CLIENT_TIMEOUT);
    traffic.flows(100).await;
    let greeting = c.launch("web-9", "v3", "p1", 5).await;
    wait_until("synapse sees the canary at weight 5", DEADLINE, || async {
        c.seen()
            .await
            .iter()
            .any(|b| b.id == "web-9" && b.state == "healthy" && b.effective_weight == 5)
    })
    .await;
    let before = traffic.new.snapshot();
    wait_until("2,000 new connections", Duration::from_secs(60), || async {
        traffic.new.snapshot().since(&before).requests() >= 2_000
    })
    .await;
    let window = traffic.new.snapshot().since(&before);
    let share = window.answered_by(&greeting) as f64 / window.ok as f64;
    let expected = 5.0 / 205.0;
    say(&format!(
        "canary share: {} of {} new connections = {:.2} % (expected {:.2} %)",
        window.answered_by(&greeting),
        window.ok,
        share * 100.0,
        expected * 100.0
    ));
    assert!(
        (share - expected).abs() <= 0.015,
        "canary share {share:.4}, expected {expected:.4}"
    );
    // Promoted at runtime: PUT /instances/web-9/weight.
    let answer = c
        .nerve_call("web-9", "PUT", "/instances/web-9/weight", "100")
        .await;
    assert_eq!(answer["instances"][0]["effective_weight"], 100, "{answer}");
    let promoted = time_until("synapse sees web-9 at weight 100", DEADLINE, || async {
        c.seen()
            .await
            .iter()
            .any(|b| b.id == "web-9" && b.effective_weight == 100)
    })
    .await;
    say(&format!(
        "canary promoted with PUT /instances/web-9/weight 100: synapse follows in {}",
        ms(promoted)
    ));
    traffic.flows(100).await;
    let (new, long) = traffic.finish(c, "canary at weight 5").await;
    assert_no_failure("canary", &new, &long);
    c.summary.push(format!(
        "canary share: {:.2} % of {} new connections (expected {:.2} %)",
        share * 100.0,
        window.ok,
        expected * 100.0
    ));
}

/// (4) A provider host cut off the network: its keys leave etcd within lease TTL + 1 s,
/// new connections go elsewhere meanwhile; failures bounded by the connections it had.
async fn provider_host_cut(c: &mut Cluster) {
    let host = c.provider("p4");
    say("scenario 4: provider host p4 (web-8) cut off the network (link down: no RST, no ICMP)");
    let traffic = Traffic::start(c);
    traffic.flows(300).await;
    let live = c.live_members();
    let cut_at = Instant::now();
    host.cut();
    let gone = time_until(
        "web-8's key leaves etcd",
        LEASE_TTL + Duration::from_secs(5),
        || async {
            c.registered(&live)
                .is_some_and(|ids| !ids.iter().any(|i| i == "web-8"))
        },
    )
    .await;
    c.wait_routes(&["web-7", "web-9"]).await;
    say(&format!(
        "web-8's key left etcd {} after the cut (lease TTL {}s)",
        ms(gone),
        LEASE_TTL.as_secs()
    ));
    // Load on the survivors, well after any request that was in flight timed out.
    traffic.flows(300).await;
    let cut_offset = cut_at.duration_since(traffic.started);
    host.heal().await;
    let back = c.wait_routes(&["web-7", "web-8", "web-9"]).await;
    say(&format!(
        "p4 healed: web-8 registered again under a new lease and routed {} later",
        ms(back)
    ));
    traffic.flows(100).await;
    let (new, long) = traffic.finish(c, "provider host cut off").await;
    let failed = new.failed + long.failed;
    let bound = 4 + 4;
    let cut_ms = cut_offset.as_millis() as u64;
    say(&format!(
        "failed requests: {failed} (bound: one per client connection open to p4 at the cut, at most {bound} here)"
    ));
    assert!(
        failed <= bound,
        "{failed} failed, more than the {bound} connections that could be on p4"
    );
    // Every failure is a request that was in flight on p4 at the cut: it failed by the
    // client's timeout after the cut, never later.
    for (at, why) in new.errors.iter().chain(&long.errors) {
        assert!(
            *at + 200 >= cut_ms && *at <= cut_ms + CLIENT_TIMEOUT.as_millis() as u64 + 1_000,
            "a request failed at {at} ms, the cut was at {cut_ms} ms: {why}"
        );
    }
    assert!(
        gone <= LEASE_TTL + Duration::from_secs(1),
        "keys left after {gone:?}"
    );
    c.summary.push(format!(
        "provider host cut: keys gone after {} (TTL {} s), back {} after the heal; failed: {failed} \
         (new connections {}, long connections {}), all in flight on p4 at the cut",
        ms(gone),
        LEASE_TTL.as_secs(),
        ms(back),
        new.failed,
        long.failed
    ));
}

/// (5) The etcd leader's host cut off.
async fn etcd_leader_cut(c: &mut Cluster) {
    say("scenario 5: the etcd leader's host cut off");
    let traffic = Traffic::start(c);
    traffic.flows(200).await;
    // Make the member synapse watches through the leader, so that both are cut at once.
    let member_of = |addr: &SocketAddr| {
        c.etcd_hosts
            .iter()
            .position(|h| std::net::IpAddr::V4(h.ip()) == addr.ip())
    };
    let watched = c
        .consumer
        .connections_to(2379)
        .iter()
        .find_map(member_of)
        .unwrap_or_else(|| panic!("synapse has no connection to etcd"));
    c.etcd.move_leader(watched).await;
    let leader = watched;
    let leader_host = c.etcd_hosts[leader].clone();
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let live_ips: Vec<Ipv4Addr> = live.iter().map(|&i| c.etcd_hosts[i].ip()).collect();
    let nerves_on_leader: Vec<String> = c
        .instances
        .iter()
        .filter(|i| {
            i.host
                .connections_to(2379)
                .iter()
                .any(|a| member_of(a) == Some(leader))
        })
        .map(|i| i.host.name().to_owned())
        .collect();
    say(&format!(
        "leader: {} ({}); synapse watches through it; provider hosts talking to it: {:?}",
        leader_host.name(),
        leader_host.ip(),
        nerves_on_leader
    ));
    let mut leases = Vec::new();
    for i in &c.instances {
        leases.push((i.id.clone(), c.lease(&i.id).await));
    }
    let keys_before = c.registered(&[0, 1, 2]).unwrap_or_default();

    let cut_at = Instant::now();
    leader_host.cut();
    c.cut_member = Some(leader);
    // Both measured from the cut: the election, and synapse's watch on a live member.
    let (mut elected, mut moved) = (None, None);
    while elected.is_none() || moved.is_none() {
        assert!(
            cut_at.elapsed() < DEADLINE,
            "{DEADLINE:?} after the cut: new leader after {elected:?}, synapse moved after {moved:?}"
        );
        if moved.is_none() {
            let on_live = c.consumer.connections_to(2379).iter().any(|a| {
                live_ips
                    .iter()
                    .any(|ip| std::net::IpAddr::V4(*ip) == a.ip())
            });
            let connected =
                c.synapse_status().await["services"]["web"]["registry"]["connected"] == true;
            if on_live && connected {
                moved = Some(cut_at.elapsed());
            }
        }
        if elected.is_none() && c.etcd.leader_seen_by(live[0]).is_some_and(|l| l != leader) {
            elected = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (elected, moved) = (elected.unwrap_or_default(), moved.unwrap_or_default());
    say(&format!(
        "after the cut: a new leader in {}, synapse's watch on a live member in {}",
        ms(elected),
        ms(moved)
    ));
    let launched = Instant::now();
    let greeting = c.launch("web-10", "v2", "p2", 100).await;
    let routable = traffic.reaches(&greeting).await;
    say(&format!(
        "web-10 started on p2 during the cut: registered and routable {} after its launch",
        ms(launched.elapsed().max(routable))
    ));
    // Hold the cut past a lease TTL: the registrations stay, nobody's lease is lost.
    let hold_until = cut_at + LEASE_TTL + Duration::from_secs(2);
    while Instant::now() < hold_until {
        let ids = c.registered(&live).unwrap_or_default();
        for k in keys_before
            .iter()
            .chain(std::iter::once(&"web-10".to_owned()))
        {
            assert!(
                ids.contains(k),
                "{k} left etcd during the leader's cut: {ids:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, lease) in &leases {
        assert!(lease.is_some(), "{id} had no lease before the cut");
        assert_eq!(
            &c.lease(id).await,
            lease,
            "{id}'s nerve changed its lease during the cut"
        );
    }
    say(&format!(
        "{:.1} s into the cut (TTL {} s): every registration stayed, every nerve kept its lease",
        cut_at.elapsed().as_secs_f64(),
        LEASE_TTL.as_secs()
    ));
    leader_host.heal().await;
    c.cut_member = None;
    c.etcd.wait_healthy().await;
    say("the old leader's host healed; it rejoined as a follower");
    traffic.flows(100).await;
    let (new, long) = traffic.finish(c, "etcd leader cut off").await;
    assert_no_failure("etcd leader cut", &new, &long);
    c.summary.push(format!(
        "etcd leader cut: new leader after {}, synapse's watch moved after {}, instance registered during the cut routable after {}",
        ms(elected),
        ms(moved),
        ms(routable)
    ));
}

/// (6) The consumer partitioned from etcd, not from the providers.
async fn consumer_etcd_partition(c: &mut Cluster) {
    say(&format!(
        "scenario 6: the consumer cut off from etcd (not from the providers) for {} s",
        ETCD_PARTITION.as_secs()
    ));
    let traffic = Traffic::start(c);
    traffic.flows(200).await;
    let etcd_ips: Vec<Ipv4Addr> = c.etcd_hosts.iter().map(Host::ip).collect();
    let blocked_at = Instant::now();
    c.consumer.block(&etcd_ips);
    let noticed = time_until("synapse notices", DEADLINE, || async {
        c.synapse_status().await["services"]["web"]["registry"]["connected"] == false
    })
    .await;
    say(&format!(
        "synapse lost its watch {} after the cut; it serves the last known set",
        ms(noticed)
    ));
    // Changes meanwhile: web-10 leaves the registry (still running), web-11 joins.
    let answer = c
        .nerve_call("web-10", "POST", "/instances/web-10/disable", "")
        .await;
    let held = &answer["instances"][0]["held_by"];
    assert_eq!(held, &serde_json::json!(["admin: instance"]), "{answer}");
    wait_until("web-10 leaves etcd", DEADLINE, || async {
        let live = c.live_members();
        c.registered(&live)
            .is_some_and(|ids| !ids.iter().any(|i| i == "web-10"))
    })
    .await;
    let greeting = c.launch("web-11", "v2", "p3", 100).await;
    let old_set = ["web-10", "web-7", "web-8", "web-9"];
    assert!(
        c.routes_to(&old_set).await,
        "synapse changed its set while cut off: {:?}",
        c.seen().await
    );
    while blocked_at.elapsed() < ETCD_PARTITION {
        assert!(
            c.routes_to(&old_set).await,
            "synapse changed its set while cut off"
        );
        traffic.flows(20).await;
    }
    c.consumer.unblock(&etcd_ips);
    let healed = Instant::now();
    let partition = healed.duration_since(blocked_at);
    let routed = c.wait_routes(&["web-11", "web-7", "web-8", "web-9"]).await;
    let reached = traffic.reaches(&greeting).await.max(healed.elapsed());
    say(&format!(
        "healed after {:.1} s: the changes made meanwhile were routed {} after the heal (web-11 answered after {})",
        partition.as_secs_f64(),
        ms(routed),
        ms(reached)
    ));
    c.retire(&["web-10"]).await;
    traffic.flows(100).await;
    let (new, long) = traffic.finish(c, "consumer cut off from etcd").await;
    assert_no_failure("consumer cut off from etcd", &new, &long);
    assert!(
        routed <= Duration::from_secs(2),
        "changes routed {routed:?} after the heal"
    );
    c.summary.push(format!(
        "consumer cut off from etcd for {} s: changes made meanwhile routed {} after the heal",
        ETCD_PARTITION.as_secs(),
        ms(routed)
    ));
}

/// (7) An instance moves: the same id re-registers from another host with another IP.
async fn instance_moves(c: &mut Cluster) {
    say("scenario 7: web-9 moves from p1 to p2 (same instance id, another IP)");
    let traffic = Traffic::start(c);
    traffic.flows(200).await;
    let drain = c.drain("web-9").await;
    c.retire(&["web-9"]).await;
    let start = Instant::now();
    let greeting = c.launch("web-9", "v3", "p2", 100).await;
    let p2 = c.provider("p2").ip().to_string();
    wait_until("synapse routes web-9 to p2", DEADLINE, || async {
        c.seen()
            .await
            .iter()
            .any(|b| b.id == "web-9" && b.host == p2 && b.state == "healthy")
    })
    .await;
    traffic.reaches(&greeting).await;
    say(&format!(
        "web-9 drained on p1 in {}; on p2 ({p2}) it took traffic {} after its launch",
        ms(drain),
        ms(start.elapsed())
    ));
    traffic.flows(200).await;
    let (new, long) = traffic.finish(c, "instance moves to another host").await;
    assert_no_failure("instance moves", &new, &long);
    let after = new.answered_by(&greeting);
    assert!(after > 0, "the moved instance got nothing");
}

/// (8) Slow network between consumer and providers.
async fn slow_network(c: &mut Cluster) {
    say("scenario 8: 50 ms ± 20 ms delay and 1 % loss each way between the consumer and the providers");
    let providers: Vec<Ipv4Addr> = c.providers.iter().map(Host::ip).collect();
    let netem = Netem {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        loss: 0.01,
    };
    let link = c.net.slow(&c.consumer, &providers, netem).await;
    // A patient client: a new connection whose last handshake packet (the ACK) is lost
    // waits for the server's SYN-ACK to be sent again, 1 s later, then 2 s later if that
    // one is lost too; 5 s covers two losses in a row.
    let patience = Duration::from_secs(5);
    let traffic = Traffic::start_with(c, 8, Duration::from_millis(20), 4, patience);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        traffic.flows(50).await;
    }
    let (dropped, delayed) = (link.dropped(), link.delayed());
    let (new, long) = traffic.finish(c, "slow network (50±20 ms, 1 % loss)").await;
    drop(link);
    say(&format!(
        "packets between consumer and providers: {delayed} delayed, {dropped} dropped"
    ));
    assert_no_failure("slow network", &new, &long);
    assert!(
        dropped > 0,
        "no packet was dropped: the loss was not in force"
    );
    // A new connection needs two round trips through the delay (connect, then the echo):
    // at least 4 x 30 ms.
    assert!(
        new.p50_ms >= 120.0,
        "new connections answered in {} ms: the delay was not in force",
        new.p50_ms
    );
    c.summary.push(format!(
        "slow network: {delayed} packets delayed, {dropped} dropped; new connection p50 {:.0} ms, p99 {:.0} ms",
        new.p50_ms, new.p99_ms
    ));
}

/// The two tests of this file one at a time: each measures times that the other's load
/// would distort on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether simulated hosts can be made here; if not, says so loudly (straight to stderr:
/// the harness shows a passing test's output only with --nocapture, and a skip must be
/// seen in `make test`'s output).
fn can_run(what: &str) -> bool {
    let Some(why) = testkit::netns::unavailable() else {
        return true;
    };
    testkit::skipped(
        what,
        &why,
        "It needs root, iproute2 and iptables (CI runs as root; `make deps` installs the tools).",
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_cuts_blocks_and_slows_links_and_leaves_nothing_behind() {
    if !can_run("the multi-host harness test") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let ns_list = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output();
        String::from_utf8_lossy(&out.map(|o| o.stdout).unwrap_or_default()).into_owned()
    };
    // A namespace left by a run that was killed (its PID no longer runs), with a process
    // still inside: both go when the next network is created.
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let dead_pid = gone.id();
    gone.wait().expect("wait");
    let stale = format!("ssrs-{dead_pid}-0-stale");
    let added = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status();
    assert!(added.is_ok_and(|s| s.success()), "ip netns add {stale}");
    let mut orphan = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .spawn()
        .expect("sleep in the stale namespace");
    wait_until(
        "the orphan runs in the stale namespace",
        DEADLINE,
        || async {
            let pids = std::process::Command::new("ip")
                .args(["netns", "pids", &stale])
                .output();
            pids.is_ok_and(|o| !o.stdout.is_empty())
        },
    )
    .await;

    let mut net = Network::create();
    assert!(
        !ns_list().contains(&stale),
        "the stale namespace is still there"
    );
    let killed = orphan.wait().expect("wait for the orphan");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9),
        "the orphan was not killed: {killed:?}"
    );

    let (a, b) = (net.add_host("a"), net.add_host("b"));
    let _app = Backend::start_in(&a, "a", 8080).await;
    let quick = Duration::from_millis(300);
    let connect = |from: &Host, to: SocketAddr| {
        let from = from.clone();
        async move {
            let t = Instant::now();
            let r = from.connect(to, quick).await.map(drop);
            (r.map_err(|e| e.kind()), t.elapsed())
        }
    };
    use std::io::ErrorKind::{ConnectionRefused, TimedOut};
    assert!(
        connect(&b, a.addr(8080)).await.0.is_ok(),
        "b cannot reach a"
    );
    // Each host has its own loopback: what listens on a's 127.0.0.1 is not on b's.
    let loopback = SocketAddr::from(([127, 0, 0, 1], 8080));
    let _local = a.bind(loopback).expect("a listener on a's loopback");
    assert!(connect(&a, loopback).await.0.is_ok(), "a's own loopback");
    assert_eq!(connect(&b, loopback).await.0, Err(ConnectionRefused));

    // Cut: nothing comes back, not even a reset; healed: reachable at once.
    a.cut();
    assert_eq!(
        connect(&b, a.addr(8080)).await.0,
        Err(TimedOut),
        "a cut host answered"
    );
    a.heal().await;
    assert!(
        connect(&b, a.addr(8080)).await.0.is_ok(),
        "a healed host is unreachable"
    );
    // Block: only between b and a.
    b.block(&[a.ip()]);
    assert_eq!(
        connect(&b, a.addr(8080)).await.0,
        Err(TimedOut),
        "a blocked peer answered"
    );
    assert!(
        connect(net.operator(), a.addr(8080)).await.0.is_ok(),
        "the block is not b's alone"
    );
    b.unblock(&[a.ip()]);
    assert!(
        connect(&b, a.addr(8080)).await.0.is_ok(),
        "unblocked, still unreachable"
    );

    // Slow: a connect is a round trip, so it takes two delays, each at least 30 ms.
    let netem = Netem {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        loss: 0.0,
    };
    let slow = net.slow(&b, &[a.ip()], netem).await;
    let mut took = Vec::new();
    for _ in 0..10 {
        let (r, t) = connect(&b, a.addr(8080)).await;
        assert!(r.is_ok(), "{r:?}");
        took.push(t);
    }
    took.sort();
    println!("connects through 50±20 ms each way: {took:?}");
    assert!(took[0] >= Duration::from_millis(60), "{took:?}");
    assert!(took[9] <= Duration::from_millis(250), "{took:?}");
    assert!(slow.delayed() >= 20, "{} packets delayed", slow.delayed());
    drop(slow);
    let (r, t) = connect(&b, a.addr(8080)).await;
    assert!(
        r.is_ok() && t < Duration::from_millis(30),
        "still slow: {t:?}"
    );

    let names = net.namespaces();
    drop(net);
    let left = ns_list();
    for name in names {
        assert!(!left.contains(&name), "{name} is left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_cluster_goes_through_releases_and_failures_under_load() {
    if !can_run("the multi-host scenarios") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut c = Cluster::start().await;
    c.launch("web-1", "v1", "p1", 100).await;
    c.launch("web-2", "v1", "p2", 100).await;
    c.wait_routes(&["web-1", "web-2"]).await;
    say(&format!(
        "web-1 on p1 and web-2 on p2 routable; cluster up in {}",
        ms(started.elapsed())
    ));

    let mut timings = Vec::new();
    let mut step = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<String>| {
        timings.push(format!("{name} {:.1} s", step.elapsed().as_secs_f64()));
        step = Instant::now();
    };
    scale_out_and_in(&mut c).await;
    lap("1", &mut timings);
    rolling_release(&mut c).await;
    lap("2", &mut timings);
    canary(&mut c).await;
    lap("3", &mut timings);
    provider_host_cut(&mut c).await;
    lap("4", &mut timings);
    etcd_leader_cut(&mut c).await;
    lap("5", &mut timings);
    consumer_etcd_partition(&mut c).await;
    lap("6", &mut timings);
    instance_moves(&mut c).await;
    lap("7", &mut timings);
    slow_network(&mut c).await;
    lap("8", &mut timings);

    println!(
        "\nsummary ({:.0} s in all; per scenario: {})",
        started.elapsed().as_secs_f64(),
        timings.join(", ")
    );
    for line in &c.summary {
        println!("  {line}");
    }
}
