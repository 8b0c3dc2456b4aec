//! Registrations come back without operator action when etcd loses them: lease revoked
//! behind nerve's back, etcd restarted empty, a key deleted or overwritten by hand.

mod common;

use std::time::Duration;

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdServer};

#[tokio::test]
async fn a_lease_revoked_behind_nerves_back_is_replaced_and_keys_re_put() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        tcp_service("web", "a", a.port()),
        tcp_service("db", "b", b.port())
    );
    // A long reconcile interval, so that only lease handling can bring the keys back.
    let nerve =
        Nerve::start(config(&endpoints, "", &services).with_reconcile(Duration::from_secs(60)))
            .await
            .unwrap();
    testkit::wait_until("registered", Duration::from_secs(10), || async {
        exists(&c, &key("web", "a")).await && exists(&c, &key("db", "b")).await
    })
    .await;
    let old = get(&c, &key("web", "a")).await.unwrap().lease;
    etcd.etcdctl(&["lease", "revoke", &format!("{old:x}")]);
    assert!(!exists(&c, &key("web", "a")).await);
    let took = testkit::time_until(
        "both re-registered under a new lease",
        Duration::from_secs(10),
        || async {
            let (x, y) = (
                get(&c, &key("web", "a")).await,
                get(&c, &key("db", "b")).await,
            );
            matches!((x, y), (Some(x), Some(y)) if x.lease != old && x.lease == y.lease)
        },
    )
    .await;
    eprintln!("measured: re-registered {took:?} after `etcdctl lease revoke`");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    testkit::wait_until(
        "status shows the new lease",
        Duration::from_secs(5),
        || async {
            nerve
                .status()
                .iter()
                .all(|s| s.registered && s.lease.is_some_and(|l| l != old))
        },
    )
    .await;
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}

#[tokio::test]
async fn etcd_restarted_with_an_empty_data_dir_gets_everything_back() {
    init_logs();
    let mut etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    let endpoints = vec![etcd.endpoint()];
    let nerve = Nerve::start(
        config(&endpoints, "", &tcp_service("web", "a", a.port()))
            .with_reconcile(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    {
        let c = client(&endpoints).await;
        wait_registered(&c, &key("web", "a")).await;
    }
    etcd.restart_empty().await;
    let c = client(&endpoints).await;
    let took = testkit::time_until(
        "re-registered in the new etcd",
        Duration::from_secs(15),
        || async { exists(&c, &key("web", "a")).await },
    )
    .await;
    eprintln!("measured: re-registered {took:?} after etcd came back empty");
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}

#[tokio::test]
async fn reconcile_re_puts_a_deleted_or_overwritten_key_and_leaves_a_correct_one_alone() {
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
    let (ka, kb) = (key("web", "a"), key("web", "b"));
    testkit::wait_until("registered", Duration::from_secs(10), || async {
        exists(&c, &ka).await && exists(&c, &kb).await
    })
    .await;
    let untouched = get(&c, &kb).await.unwrap();

    etcd.etcdctl(&["del", &ka]);
    let took = testkit::time_until("deleted key re-put", Duration::from_secs(5), || async {
        exists(&c, &ka).await
    })
    .await;
    eprintln!("measured: deleted key re-put after {took:?} (reconcile_interval 500ms)");

    let good = get(&c, &ka).await.unwrap();
    etcd.etcdctl(&["put", &ka, "{\"host\":\"10.9.9.9\",\"port\":1}"]);
    testkit::wait_until("overwritten key fixed", Duration::from_secs(5), || async {
        get(&c, &ka)
            .await
            .is_some_and(|s| s.value == good.value && s.lease == good.lease)
    })
    .await;

    // Several reconcile rounds later the untouched key was only ever read.
    assert_eq!(
        get(&c, &kb).await.unwrap().mod_revision,
        untouched.mod_revision
    );
    nerve.shutdown().await;
}

#[tokio::test]
async fn etcd_hung_for_longer_than_the_ttl_then_back_gets_everything_back() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let nerve = Nerve::start(
        config(&endpoints, "", &tcp_service("web", "a", a.port()))
            .with_reconcile(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    wait_registered(&c, &key("web", "a")).await;
    let old = nerve.lease();
    etcd.pause();
    // Keepalives time out (request_timeout 1s); after a whole TTL (2s) the lease counts as lost.
    testkit::wait_until(
        "nerve gives the lease up",
        Duration::from_secs(10),
        || async { nerve.lease() != old },
    )
    .await;
    assert!(!nerve.status()[0].registered);
    etcd.resume();
    let took = testkit::time_until(
        "registered again after the hang",
        Duration::from_secs(15),
        || async {
            get(&c, &key("web", "a"))
                .await
                .is_some_and(|s| Some(s.lease) != old && Some(s.lease) == nerve.lease())
        },
    )
    .await;
    eprintln!(
        "measured: re-registered {took:?} after etcd resumed from a hang longer than the TTL"
    );
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}
