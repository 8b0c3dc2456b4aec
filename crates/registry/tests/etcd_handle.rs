//! The [`Etcd`] handle against a real etcd: retries ride out an outage, and requests move
//! off a dead member of a cluster.

use std::time::Duration;

use registry::{Etcd, EtcdConfig};
use testkit::{EtcdCluster, EtcdServer};

fn config(endpoints: Vec<String>) -> EtcdConfig {
    let mut c = EtcdConfig::new(endpoints);
    c.dial_timeout = registry::ConfigDuration::from_millis(300);
    c.request_timeout = registry::ConfigDuration::from_secs(1);
    c
}

#[tokio::test]
async fn a_put_issued_while_etcd_is_down_lands_once_it_is_back() {
    let mut etcd = EtcdServer::start().await;
    let handle = Etcd::new(config(vec![etcd.endpoint()]));
    etcd.kill();
    let put = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .retry("put", |mut c| async move { c.put("/t/k", "v", None).await })
                .await
        }
    });
    testkit::wait_until(
        "the handle notices etcd is down",
        Duration::from_secs(10),
        || async { !handle.is_reachable() },
    )
    .await;
    assert!(
        !put.is_finished(),
        "a put cannot succeed while etcd is down"
    );
    etcd.restart().await;
    let result = tokio::time::timeout(Duration::from_secs(15), put).await;
    assert!(
        matches!(result, Ok(Ok(Ok(_)))),
        "put did not land: {result:?}"
    );
    assert!(handle.is_reachable());
    assert!(etcd.etcdctl(&["get", "/t/k"]).contains("v"));
}

#[tokio::test]
async fn requests_move_off_a_dead_member() {
    let mut cluster = EtcdCluster::start(3).await;
    let handle = Etcd::new(config(cluster.endpoints()));
    // Kill the member the handle talks to first.
    cluster.kill(0);
    for i in 0..20 {
        let key = format!("/t/{i}");
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            handle.retry("put", |mut c| {
                let key = key.clone();
                async move { c.put(key, "v", None).await }
            }),
        )
        .await;
        assert!(matches!(result, Ok(Ok(_))), "put {i} failed: {result:?}");
    }
    assert_ne!(handle.endpoint().await, cluster.endpoint(0));
}

#[tokio::test]
async fn a_handle_without_endpoints_reports_errors_instead_of_panicking() {
    // Validation rejects an empty list, but a handle built in code must still not panic.
    let handle = Etcd::new(config(Vec::new()));
    assert_eq!(handle.endpoint().await, "");
    assert!(handle.session().await.is_err());
}
