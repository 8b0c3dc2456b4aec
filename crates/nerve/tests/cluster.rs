//! A 3-member etcd with one member killed: registrations stay, and nerve keeps working
//! through the remaining members.

mod common;

use std::time::Duration;

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdCluster};

#[tokio::test]
async fn killing_the_member_nerve_talks_to_keeps_registrations() {
    init_logs();
    let mut cluster = EtcdCluster::start(3).await;
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let endpoints = cluster.endpoints();
    let survivors = vec![cluster.endpoint(1), cluster.endpoint(2)];
    let mut nerve = Nerve::start(config(
        &endpoints,
        "",
        &format!(
            "{}{}",
            tcp_service("web", "a", a.port()),
            tcp_service("web", "b", b.port())
        ),
    ))
    .await
    .unwrap();
    let c = client(&survivors).await;
    testkit::wait_until("registered", Duration::from_secs(10), || async {
        keys(&c).await.len() == 2
    })
    .await;
    let lease = nerve.lease().unwrap();

    // Member 0 is the one nerve starts on.
    cluster.kill(0);
    // Several lease TTLs (2 s) pass: the keepalives must move to another member in time.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            keys(&c).await.len(),
            2,
            "registrations must survive a member's death (after {:?})",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        nerve.lease(),
        Some(lease),
        "the lease must not have been lost"
    );

    // Changes still go through: a deregistration and a new instance.
    b.stop().await;
    testkit::wait_until("b deregistered", Duration::from_secs(10), || async {
        !exists(&c, &key("web", "b")).await
    })
    .await;
    let cfg = config(
        &endpoints,
        "",
        &format!(
            "{}{}",
            tcp_service("web", "a", a.port()),
            tcp_service("api", "x", a.port())
        ),
    );
    nerve.reload(cfg).await.unwrap();
    testkit::wait_until(
        "new instance registered",
        Duration::from_secs(10),
        || async { exists(&c, &key("api", "x")).await },
    )
    .await;
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}
