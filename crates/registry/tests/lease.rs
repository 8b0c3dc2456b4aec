//! The process lease against a real etcd: granted, kept past its TTL, replaced when revoked
//! behind our back, and revoked (with its keys) on request.

use std::time::Duration;

use etcd_client::PutOptions;
use registry::lease::Lease;
use registry::{ConfigDuration, Etcd, EtcdConfig};
use testkit::EtcdServer;

fn etcd(endpoint: String) -> Etcd {
    let mut c = EtcdConfig::new(vec![endpoint]);
    c.dial_timeout = ConfigDuration::from_millis(300);
    c.request_timeout = ConfigDuration::from_secs(1);
    Etcd::new(c)
}

async fn wait_for_lease(
    rx: &mut tokio::sync::watch::Receiver<Option<i64>>,
    not: Option<i64>,
) -> i64 {
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|id| id.is_some() && *id != not),
    )
    .await
    .expect("a lease within 10s")
    .expect("keeper alive");
    got.unwrap_or_default()
}

#[tokio::test]
async fn a_lease_outlives_its_ttl_is_replaced_when_revoked_and_revokes_its_keys() {
    let server = EtcdServer::start().await;
    let handle = etcd(server.endpoint());
    let lease = Lease::start(handle.clone(), Duration::from_secs(2));
    let mut rx = lease.subscribe();
    let first = wait_for_lease(&mut rx, None).await;

    // Three TTLs later the same lease is still alive thanks to the keepalives.
    let ttl_check = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < ttl_check {
        assert_eq!(lease.current(), Some(first));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ttl = server.etcdctl(&["lease", "timetolive", &format!("{first:x}")]);
    assert!(!ttl.contains("already expired"), "{ttl}");

    server.etcdctl(&["lease", "revoke", &format!("{first:x}")]);
    let second = wait_for_lease(&mut rx, Some(first)).await;
    assert_ne!(first, second);
    // The loss is counted before the next grant is published.
    assert_eq!(lease.handle().counters().leases_lost(), 1);

    handle
        .retry("put", |mut c| async move {
            c.put("/t/k", "v", Some(PutOptions::new().with_lease(second)))
                .await
        })
        .await
        .unwrap();
    assert_eq!(lease.revoke(Duration::from_secs(3)).await, Some(second));
    assert!(!server.etcdctl(&["get", "/t/k"]).contains('v'));
}

#[tokio::test]
async fn a_lease_is_granted_once_etcd_comes_up() {
    let mut server = EtcdServer::start().await;
    server.kill();
    let lease = Lease::start(etcd(server.endpoint()), Duration::from_secs(2));
    let mut rx = lease.subscribe();
    tokio::time::sleep(Duration::from_millis(500)).await; // etcd is down: nothing can happen yet
    assert_eq!(lease.current(), None);
    server.restart().await;
    wait_for_lease(&mut rx, None).await;
}

/// A lease given up during an outage longer than its TTL is revoked once etcd is back:
/// a restarted etcd gives every old lease a fresh TTL, so without the revoke its keys (an
/// instance that died meanwhile) would stay for another whole TTL.
#[tokio::test]
async fn a_lease_given_up_during_an_outage_is_revoked_once_etcd_is_back() {
    let mut server = EtcdServer::start().await;
    let handle = etcd(server.endpoint());
    let ttl = Duration::from_secs(5);
    let lease = Lease::start(handle.clone(), ttl);
    let mut rx = lease.subscribe();
    let first = wait_for_lease(&mut rx, None).await;
    handle
        .retry("put", |mut c| async move {
            c.put("/t/old", "v", Some(PutOptions::new().with_lease(first)))
                .await
        })
        .await
        .unwrap();
    server.kill();
    tokio::time::timeout(ttl * 3, rx.wait_for(|id| id.is_none()))
        .await
        .expect("the lease is given up after its TTL")
        .expect("keeper alive");
    let counters = lease.handle();
    let counters = counters.counters();
    assert_eq!(counters.leases_lost(), 1);
    assert!(counters.keepalive_failures() > 0);
    server.restart().await;
    let back = std::time::Instant::now();
    let second = wait_for_lease(&mut rx, Some(first)).await;
    let granted = back.elapsed();
    let gone = testkit::time_until(
        "the superseded lease's key is gone",
        Duration::from_secs(15),
        || async { !server.etcdctl(&["get", "/t/old"]).contains("/t/old") },
    )
    .await
        + granted;
    eprintln!(
        "measured: new lease {granted:?}, old lease's key gone {gone:?} after etcd answered again"
    );
    // Without writers telling the lease they moved, the old one is revoked
    // request_timeout + dial_timeout (1.3 s) after the new grant.
    assert!(gone < Duration::from_millis(2500), "took {gone:?}");
    let ttl_left = server.etcdctl(&["lease", "timetolive", &format!("{first:x}")]);
    assert!(ttl_left.contains("already expired"), "{ttl_left}");
    assert_eq!(lease.revoke(Duration::from_secs(3)).await, Some(second));
}
