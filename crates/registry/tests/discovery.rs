//! Discovery against a real etcd: initial get, live events, skipped malformed records,
//! static stability while etcd is away, and resync after partitions, restarts with empty
//! data, compaction and a hung member.

use std::collections::BTreeSet;
use std::time::Duration;

use registry::discovery::{self, Discovery, DiscoveryOptions, ServiceView};
use registry::{ConfigDuration, Etcd, EtcdConfig};
use testkit::{wait_until, EtcdCluster, EtcdServer, Link};

const DEADLINE: Duration = Duration::from_secs(20);

fn etcd_handle(endpoint: String) -> Etcd {
    cluster_handle(vec![endpoint])
}

fn cluster_handle(endpoints: Vec<String>) -> Etcd {
    let mut c = EtcdConfig::new(endpoints);
    c.dial_timeout = ConfigDuration::from_millis(300);
    c.request_timeout = ConfigDuration::from_secs(1);
    c.keepalive_interval = ConfigDuration::from_millis(500);
    c.keepalive_timeout = ConfigDuration::from_millis(500);
    Etcd::new(c)
}

fn start(etcd: Etcd, service: &str) -> Discovery {
    start_with_grace(etcd, service, DiscoveryOptions::default().grace_period)
}

fn start_with_grace(etcd: Etcd, service: &str, grace_period: Duration) -> Discovery {
    discovery::spawn(
        etcd,
        service,
        DiscoveryOptions {
            progress_interval: Duration::from_millis(300),
            grace_period,
            ..DiscoveryOptions::default()
        },
    )
}

fn put(etcd: &EtcdServer, service: &str, id: &str, port: u16) {
    etcd.etcdctl(&[
        "put",
        &format!("/smartstack/services/{service}/{id}"),
        &format!(r#"{{"host":"127.0.0.1","port":{port}}}"#),
    ]);
}

fn view(d: &Discovery) -> Option<ServiceView> {
    d.subscribe().borrow().clone()
}

fn ids(d: &Discovery) -> BTreeSet<String> {
    view(d)
        .map(|v| v.instances.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn wait_ids(d: &Discovery, expected: &[&str]) {
    let expected = set(expected);
    wait_until(&format!("instances are {expected:?}"), DEADLINE, || async {
        ids(d) == expected
    })
    .await;
}

#[tokio::test]
async fn the_view_follows_gets_and_events_and_skips_malformed_records() {
    let etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    put(&etcd, "other", "x", 2000);
    etcd.etcdctl(&["put", "/smartstack/services/web/broken", "{not json"]);
    let d = start(etcd_handle(etcd.endpoint()), "web");
    wait_ids(&d, &["a"]).await;
    let first = view(&d).unwrap();
    assert!(first.connected);
    assert_eq!(first.instances["a"].port, 1001);
    assert_eq!(
        first.instances["a"].name, "a",
        "name defaults to the instance id"
    );

    put(&etcd, "web", "b", 1002);
    wait_ids(&d, &["a", "b"]).await;
    etcd.etcdctl(&["del", "/smartstack/services/web/a"]);
    wait_ids(&d, &["b"]).await;
    // A valid record turned invalid stops being routable; the others stay.
    etcd.etcdctl(&[
        "put",
        "/smartstack/services/web/b",
        r#"{"host":"h","port":0}"#,
    ]);
    put(&etcd, "web", "c", 1003);
    wait_ids(&d, &["c"]).await;
    // A later valid write makes it routable again.
    put(&etcd, "web", "b", 1004);
    wait_ids(&d, &["b", "c"]).await;
    assert_eq!(view(&d).unwrap().instances["b"].port, 1004);
}

#[tokio::test]
async fn the_last_view_is_kept_while_etcd_is_down_and_converges_after() {
    let mut etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    put(&etcd, "web", "b", 1002);
    let d = start(etcd_handle(etcd.endpoint()), "web");
    wait_ids(&d, &["a", "b"]).await;

    etcd.kill();
    wait_until("the view is marked disconnected", DEADLINE, || async {
        view(&d).is_some_and(|v| !v.connected)
    })
    .await;
    assert_eq!(ids(&d), set(&["a", "b"]), "instances survive the outage");

    etcd.restart().await;
    put(&etcd, "web", "c", 1003);
    etcd.etcdctl(&["del", "/smartstack/services/web/a"]);
    wait_ids(&d, &["b", "c"]).await;
    assert!(view(&d).unwrap().connected);
}

#[tokio::test]
async fn a_partition_with_changes_and_compaction_resyncs_when_healed() {
    let etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    put(&etcd, "web", "b", 1002);
    let link = Link::start(etcd.client_addr()).await;
    let d = start(etcd_handle(link.http_endpoint()), "web");
    wait_ids(&d, &["a", "b"]).await;

    link.cut();
    wait_until("the view is marked disconnected", DEADLINE, || async {
        view(&d).is_some_and(|v| !v.connected)
    })
    .await;
    etcd.etcdctl(&["del", "/smartstack/services/web/a"]);
    put(&etcd, "web", "c", 1003);
    for i in 0..20 {
        put(&etcd, "churn", &i.to_string(), 3000);
    }
    etcd.compact();
    assert_eq!(
        ids(&d),
        set(&["a", "b"]),
        "the last view is served during the cut"
    );

    link.heal();
    wait_ids(&d, &["b", "c"]).await;
}

#[tokio::test]
async fn an_etcd_rebuilt_with_empty_data_is_resynced_after_a_grace_period() {
    let mut etcd = EtcdServer::start().await;
    for i in 0..30 {
        put(&etcd, "web", "a", 1000 + i);
    }
    let grace = Duration::from_secs(2);
    let d = start_with_grace(etcd_handle(etcd.endpoint()), "web", grace);
    wait_ids(&d, &["a"]).await;
    etcd.restart_empty().await;
    // The new history is at a lower revision than the view; only a resync can see this.
    put(&etcd, "web", "z", 1999);
    // The rebuilt etcd is not believed at once: `a` is held while the registry refills.
    wait_ids(&d, &["a", "z"]).await;
    let held = view(&d)
        .and_then(|v| v.grace)
        .expect("a grace period is reported");
    assert!(
        held.reason.contains("revision went back"),
        "{}",
        held.reason
    );
    assert_eq!(held.held, 1);
    let started = std::time::Instant::now();
    wait_ids(&d, &["z"]).await;
    assert!(view(&d).is_some_and(|v| v.grace.is_none()));
    assert!(
        started.elapsed() <= grace + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_resync_that_empties_a_service_holds_its_instances_but_deletes_apply_at_once() {
    let etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    put(&etcd, "web", "b", 1002);
    let link = Link::start(etcd.client_addr()).await;
    let d = start_with_grace(
        etcd_handle(link.http_endpoint()),
        "web",
        Duration::from_secs(30),
    );
    wait_ids(&d, &["a", "b"]).await;
    // Every lease expires while this consumer is cut off (etcdctl still reaches etcd).
    link.cut();
    wait_until("the partition is noticed", DEADLINE, || async {
        view(&d).is_some_and(|v| !v.connected)
    })
    .await;
    etcd.etcdctl(&["del", "--prefix", "/smartstack/services/web/"]);
    link.heal();
    wait_until("the resync holds both instances", DEADLINE, || async {
        view(&d).is_some_and(|v| v.connected && v.grace.as_ref().is_some_and(|g| g.held == 2))
    })
    .await;
    assert_eq!(ids(&d), set(&["a", "b"]));
    // Refilling: `a` comes back (etcd's record now), `c` is new.
    put(&etcd, "web", "a", 1011);
    put(&etcd, "web", "c", 1003);
    wait_ids(&d, &["a", "b", "c"]).await;
    assert_eq!(view(&d).unwrap().instances["a"].port, 1011);
    // An individual delete is believed at once, grace period or not.
    etcd.etcdctl(&["del", "/smartstack/services/web/c"]);
    wait_ids(&d, &["a", "b"]).await;
    put(&etcd, "web", "b", 1012);
    wait_until(
        "the grace period ends once every held instance is back",
        DEADLINE,
        || async { view(&d).is_some_and(|v| v.grace.is_none()) },
    )
    .await;
    assert_eq!(ids(&d), set(&["a", "b"]));
}

#[tokio::test]
async fn a_hung_member_is_detected_and_the_view_converges_after() {
    let etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    let d = start(etcd_handle(etcd.endpoint()), "web");
    wait_ids(&d, &["a"]).await;
    etcd.pause();
    wait_until("a hung etcd is noticed", DEADLINE, || async {
        view(&d).is_some_and(|v| !v.connected)
    })
    .await;
    assert_eq!(ids(&d), set(&["a"]));
    etcd.resume();
    put(&etcd, "web", "b", 1002);
    wait_ids(&d, &["a", "b"]).await;
    wait_until("the view is connected again", DEADLINE, || async {
        view(&d).is_some_and(|v| v.connected)
    })
    .await;
}

#[tokio::test]
async fn discovery_starts_while_etcd_is_down() {
    let mut etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    etcd.kill();
    let d = start(etcd_handle(etcd.endpoint()), "web");
    // Give the task time to fail a few times; the view stays unknown rather than empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        view(&d).is_none(),
        "no view may be published before etcd answered"
    );
    etcd.restart().await;
    wait_ids(&d, &["a"]).await;
}

/// After a long outage has driven the reconnect backoff up, a successful resync starts it
/// over: the next outage is retried at the initial delay, not at the grown one.
#[tokio::test]
async fn the_reconnect_backoff_starts_over_after_a_successful_resync() {
    let mut etcd = EtcdServer::start().await;
    put(&etcd, "web", "a", 1001);
    let link = Link::start(etcd.client_addr()).await;
    // A steep backoff, so that a count left over from the first outage would show: after
    // five failures the next delay is at least 3.2 s, the first one at most 200 ms. Both
    // schedules get it: refused and unanswered connects are retried on `reconnect`, a
    // broken watch waits on `backoff`.
    let backoff = registry::backoff::Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(20),
    };
    let d = discovery::spawn(
        etcd_handle(link.http_endpoint()),
        "web",
        DiscoveryOptions {
            progress_interval: Duration::from_millis(300),
            backoff,
            reconnect: backoff,
            ..DiscoveryOptions::default()
        },
    );
    wait_ids(&d, &["a"]).await;
    let connected = |d: &Discovery| view(d).is_some_and(|v| v.connected);

    // First outage: refused connections, long enough for about five failed attempts.
    etcd.kill();
    wait_until("the first outage is noticed", DEADLINE, || async {
        !connected(&d)
    })
    .await;
    let outage = std::time::Instant::now();
    let delays = (1..=5).map(|n| backoff.delay(n, 1.0)).sum::<Duration>();
    while outage.elapsed() < delays {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd.restart().await;
    wait_until(
        "back after the first outage",
        Duration::from_secs(40),
        || async { connected(&d) },
    )
    .await;
    // The backoff starts over only once the new watch has proved itself with a message
    // after its creation: last_sync moves on the creation and again on each progress
    // answer, so two moves mean at least one progress answer.
    let mut seen = vec![view(&d).map(|v| v.last_sync)];
    wait_until("a progress answer on the new watch", DEADLINE, || {
        let now = view(&d).map(|v| v.last_sync);
        if !seen.contains(&now) {
            seen.push(now);
        }
        let moves = seen.len() - 1;
        async move { moves >= 2 }
    })
    .await;

    // Second outage: a partition, healed as soon as it is noticed.
    link.cut();
    wait_until("the second outage is noticed", DEADLINE, || async {
        !connected(&d)
    })
    .await;
    link.heal();
    let took = testkit::time_until("back after the second outage", DEADLINE, || async {
        connected(&d)
    })
    .await;
    eprintln!("measured: reconnected {took:?} after the partition healed");
    assert!(
        took < Duration::from_millis(2500),
        "reconnect waited {took:?}: the backoff kept the first outage's count"
    );
}

fn put_in(cluster: &EtcdCluster, id: &str, port: u16) {
    cluster.etcdctl(&[
        "put",
        &format!("/smartstack/services/web/{id}"),
        &format!(r#"{{"host":"127.0.0.1","port":{port}}}"#),
    ]);
}

#[tokio::test]
async fn discovery_moves_to_another_member_when_its_member_is_killed() {
    let mut cluster = EtcdCluster::start(3).await;
    put_in(&cluster, "a", 1001);
    let handle = cluster_handle(cluster.endpoints());
    let d = start(handle.clone(), "web");
    wait_ids(&d, &["a"]).await;
    let watched = handle.endpoint().await;
    let member = cluster
        .endpoints()
        .iter()
        .position(|e| *e == watched)
        .unwrap();

    cluster.kill(member);
    // It may have been the leader: writes wait for the election.
    cluster.wait_healthy().await;
    put_in(&cluster, "b", 1002);
    wait_ids(&d, &["a", "b"]).await;
    wait_until("the watch is established again", DEADLINE, || async {
        view(&d).is_some_and(|v| v.connected)
    })
    .await;
    assert_ne!(
        handle.endpoint().await,
        watched,
        "the watch is on a live member"
    );
    // And it follows events there, not only the resync's get.
    put_in(&cluster, "c", 1003);
    wait_ids(&d, &["a", "b", "c"]).await;
}

#[tokio::test]
async fn instances_removed_all_at_once_are_held_but_one_delete_is_believed() {
    let etcd = EtcdServer::start().await;
    for (id, port) in [("a", 1001), ("b", 1002), ("c", 1003)] {
        put(&etcd, "web", id, port);
    }
    let grace = Duration::from_secs(2);
    let d = start_with_grace(etcd_handle(etcd.endpoint()), "web", grace);
    wait_ids(&d, &["a", "b", "c"]).await;
    etcd.etcdctl(&["del", "/smartstack/services/web/c"]);
    wait_ids(&d, &["a", "b"]).await;
    // Every remaining lease expiring together: one transaction deleting both.
    etcd.etcdctl(&["del", "--prefix", "/smartstack/services/web/"]);
    wait_until("the mass removal is held", DEADLINE, || async {
        view(&d).is_some_and(|v| v.grace.as_ref().is_some_and(|g| g.held == 2))
    })
    .await;
    assert_eq!(ids(&d), set(&["a", "b"]));
    put(&etcd, "web", "a", 1001);
    wait_ids(&d, &["a"]).await;
    assert!(view(&d).is_some_and(|v| v.grace.is_none()));
}
