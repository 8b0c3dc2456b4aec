//! The issue-2 core against a real etcd: register after `rise` passes, deregister after
//! `fall` failures, revoke on shutdown, start while etcd is down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdServer};

#[tokio::test]
async fn registers_after_rise_passes_and_deregisters_after_fall_failures() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let mut backend = Backend::start("web-1").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let started = Instant::now();
    let (interval_ms, fall) = (100u64, 2u32);
    // weight, zone and labels from the config must reach the record consumers read.
    let service = format!(
        "  - {{name: web, instance_id: web-1, host: 127.0.0.1, port: {}, weight: 50, zone: eu-1a, labels: {{track: \
        canary, version: \"2\"}}, check_interval: {interval_ms}ms, rise: 2, fall: {fall}, checks: [{{type: tcp, \
        timeout: 200ms}}]}}\n",
        backend.port()
    );
    let nerve = Nerve::start(config(&endpoints, "", &service))
        .await
        .unwrap();
    let k = key("web", "web-1");
    testkit::wait_until("registered", Duration::from_secs(10), || exists(&c, &k)).await;
    let rise_time = started.elapsed();
    // rise 2 at 100 ms: the first check runs at once, the second 100 ms later.
    assert!(
        rise_time >= Duration::from_millis(100),
        "registered after only {rise_time:?}"
    );

    let stored = get(&c, &k).await.unwrap();
    let record = registry::InstanceRecord::parse(stored.value.as_bytes(), "web-1").unwrap();
    assert_eq!(
        (
            record.host.as_str(),
            record.port,
            record.name.as_str(),
            record.weight
        ),
        ("127.0.0.1", backend.port(), "web-1", 50)
    );
    assert_eq!(record.zone.as_deref(), Some("eu-1a"));
    assert_eq!(
        record.labels,
        [("track", "canary"), ("version", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    );
    assert_ne!(stored.lease, 0, "the key must be bound to a lease");
    assert_eq!(Some(stored.lease), nerve.lease());

    backend.stop().await;
    let fall_time = testkit::time_until("deregistered", Duration::from_secs(10), || async {
        !exists(&c, &k).await
    })
    .await;
    // check_interval x fall: the last pass was at most one interval before the stop, then
    // `fall` failing rounds. A stopped backend refuses at once, so no round waits for the
    // check timeout. The 300 ms margin covers the delete's round trip to a local etcd, the
    // 20 ms poll and scheduling noise on a shared CI machine (measured: 184-208 ms in all).
    let bound = Duration::from_millis(interval_ms * u64::from(fall)) + Duration::from_millis(300);
    assert!(
        fall_time <= bound,
        "deregistered only after {fall_time:?}, more than {bound:?}"
    );
    eprintln!("measured: registered after {rise_time:?}, deregistered {fall_time:?} after the backend died");

    let backend = Backend::start_on("web-1", &format!("127.0.0.1:{}", backend.port())).await;
    testkit::wait_until("registered again", Duration::from_secs(10), || {
        exists(&c, &k)
    })
    .await;
    nerve.shutdown().await;
    assert!(
        !exists(&c, &k).await,
        "shutdown must delete the key at once"
    );
    drop(backend);
}

#[tokio::test]
async fn a_flapping_check_below_fall_keeps_the_registration() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let backend = Backend::start("db").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    // fall 1000: it would take 100 s of failures to go down.
    let svc = format!(
        "  - {{name: db, instance_id: db-1, host: 127.0.0.1, port: {}, check_interval: 100ms, rise: 1, fall: 1000, \
        checks: [{{type: tcp, timeout: 200ms}}]}}\n",
        backend.port()
    );
    let nerve = Nerve::start(config(&endpoints, "", &svc)).await.unwrap();
    let k = key("db", "db-1");
    testkit::wait_until("registered", Duration::from_secs(10), || exists(&c, &k)).await;
    let before = get(&c, &k).await.unwrap();
    drop(backend);
    testkit::wait_until("several failures seen", Duration::from_secs(10), || async {
        nerve.status()[0].consecutive_failures >= 3
    })
    .await;
    let after = get(&c, &k).await.expect("still registered");
    assert_eq!(
        before.mod_revision, after.mod_revision,
        "an unchanged registration is never re-written"
    );
    nerve.shutdown().await;
}

#[tokio::test]
async fn starts_while_etcd_is_down_and_registers_when_it_comes_up() {
    init_logs();
    let mut etcd = EtcdServer::start().await;
    etcd.kill();
    let backend = Backend::start("web").await;
    let endpoints = vec![etcd.endpoint()];
    let nerve = Nerve::start(config(
        &endpoints,
        "",
        &tcp_service("web", "w", backend.port()),
    ))
    .await
    .unwrap();
    testkit::wait_until("healthy", Duration::from_secs(10), || async {
        nerve.status()[0].healthy
    })
    .await;
    assert!(!nerve.status()[0].registered);
    etcd.restart().await;
    let c = client(&endpoints).await;
    let took = testkit::time_until(
        "registered once etcd is back",
        Duration::from_secs(15),
        || async { exists(&c, &key("web", "w")).await },
    )
    .await;
    eprintln!("measured: registered {took:?} after etcd came back");
    testkit::wait_until("status says registered", Duration::from_secs(5), || async {
        nerve.status()[0].registered
    })
    .await;
    nerve.shutdown().await;
    assert!(!exists(&c, &key("web", "w")).await);
}

#[tokio::test]
async fn shutdown_with_etcd_down_still_exits() {
    init_logs();
    let mut etcd = EtcdServer::start().await;
    let backend = Backend::start("web").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let nerve = Nerve::start(config(
        &endpoints,
        "",
        &tcp_service("web", "w", backend.port()),
    ))
    .await
    .unwrap();
    wait_registered(&c, &key("web", "w")).await;
    etcd.kill();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), nerve.shutdown())
        .await
        .expect("shutdown must give up on a dead etcd");
    eprintln!(
        "measured: shutdown with etcd down took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn several_instances_of_one_service_share_one_lease() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        tcp_service("web", "a", a.port()),
        tcp_service("web", "b", b.port())
    );
    let nerve = Nerve::start(config(&endpoints, "", &services))
        .await
        .unwrap();
    testkit::wait_until("both registered", Duration::from_secs(10), || async {
        exists(&c, &key("web", "a")).await && exists(&c, &key("web", "b")).await
    })
    .await;
    let la = get(&c, &key("web", "a")).await.unwrap().lease;
    let lb = get(&c, &key("web", "b")).await.unwrap().lease;
    assert_eq!(la, lb);
    let leases = etcd.etcdctl(&["lease", "list"]);
    assert_eq!(
        leases
            .lines()
            .filter(|l| l.trim().chars().all(|c| c.is_ascii_hexdigit()) && !l.trim().is_empty())
            .count(),
        1,
        "{leases}"
    );
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}

/// docs/nerve.md: an unchanged registration is never re-written. At start several instances
/// turn healthy within a millisecond of each other; each change of the wanted set used to
/// interrupt the put in flight, whose outcome was then unknown, and the next pass put the
/// same value under the same lease again (logged as `updated`). etcd's history must show
/// exactly one put per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_start_each_registration_is_put_exactly_once() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let backend = Backend::start("web").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    const INSTANCES: usize = 30;
    // Check intervals 1 ms apart: the instances turn healthy one after another, each while
    // the put of the one before may be in flight.
    let services: String = (0..INSTANCES)
        .map(|i| {
            format!(
                "  - {{name: web, instance_id: w{i}, host: 127.0.0.1, port: {}, check_interval: {}ms, rise: 2, \
                checks: [{{type: tcp}}]}}\n",
                backend.port(),
                100 + i
            )
        })
        .collect();
    let nerve = Nerve::start(config(&endpoints, "", &services))
        .await
        .unwrap();
    testkit::wait_until("all registered", Duration::from_secs(10), || async {
        keys(&c).await.len() == INSTANCES
    })
    .await;
    // Two reconcile intervals (500 ms): a second put, if any, has happened by then.
    testkit::wait_until("status says registered", Duration::from_secs(5), || async {
        nerve.status().iter().all(|s| s.registered)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let puts = puts_per_key(&c).await;
    let twice: Vec<_> = puts.iter().filter(|(_, n)| **n != 1).collect();
    assert_eq!(puts.len(), INSTANCES, "{puts:?}");
    assert!(
        twice.is_empty(),
        "keys put more than once at start: {twice:?}"
    );
    nerve.shutdown().await;
}
