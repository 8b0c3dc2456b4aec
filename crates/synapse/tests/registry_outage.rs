//! Static stability: whatever etcd does (hangs, dies, is partitioned away, restarts with
//! compacted history), traffic keeps flowing to the last known backends and synapse
//! converges once etcd is back. And a synapse restarted while etcd is down (or hung)
//! serves at once from its cache file.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use synapse::Source;
use testkit::{wait_until, Backend, EtcdServer, Link};

async fn assert_all_served(addr: SocketAddr, n: usize, expected: &[&str]) {
    let (ok, failed) = connect_many(addr, n).await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    for name in expected {
        assert!(
            ok.iter().any(|n| n == name),
            "{name} got no connection: {ok:?}"
        );
    }
}

fn connected(synapse: &synapse::Synapse, service: &str) -> bool {
    synapse
        .status()
        .get(service)
        .is_some_and(|s| s.registry.connected)
}

#[tokio::test]
async fn traffic_is_unaffected_while_etcd_hangs_and_converges_after() {
    let etcd = EtcdServer::start().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web", "b", b.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;

    etcd.pause();
    let paused = Instant::now();
    assert_all_served(addr, 50, &["a", "b"]).await;
    wait_until("synapse notices the hung etcd", DEADLINE, || async {
        !connected(&synapse, "web")
    })
    .await;
    eprintln!(
        "measured: a hung etcd was noticed after {:?}",
        paused.elapsed()
    );
    assert_all_served(addr, 50, &["a", "b"]).await;
    assert_eq!(synapse.status()["web"].registry.source, Some(Source::Etcd));

    etcd.resume();
    register(&etcd, "web", "c", c.port());
    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[b.port(), c.port()]).await;
    wait_until("connected again", DEADLINE, || async {
        connected(&synapse, "web")
    })
    .await;
    assert_all_served(addr, 20, &["b", "c"]).await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn traffic_is_unaffected_while_etcd_is_dead_and_converges_after() {
    let mut etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;

    etcd.kill();
    wait_until("synapse notices etcd is gone", DEADLINE, || async {
        !connected(&synapse, "web")
    })
    .await;
    assert_all_served(addr, 50, &["a"]).await;

    etcd.restart().await;
    register(&etcd, "web", "b", b.port());
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;
    assert_all_served(addr, 20, &["a", "b"]).await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_partition_with_restart_and_compaction_resyncs_to_the_new_set() {
    let mut etcd = EtcdServer::start().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web", "b", b.port());
    let link = Link::start(etcd.client_addr()).await;
    let synapse = start(config(link.http_endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;

    link.cut();
    wait_until("synapse notices the partition", DEADLINE, || async {
        !connected(&synapse, "web")
    })
    .await;
    // While synapse is cut off: the set changes, etcd restarts, history is compacted.
    deregister(&etcd, "web", "a");
    register(&etcd, "web", "c", c.port());
    etcd.restart().await;
    for i in 0..20 {
        register(&etcd, "churn", &i.to_string(), 1);
    }
    etcd.compact();
    assert_all_served(addr, 20, &["a", "b"]).await;

    link.heal();
    let healed = Instant::now();
    wait_backends(&synapse, "web", &[b.port(), c.port()]).await;
    eprintln!(
        "measured: resynced {:?} after the partition healed",
        healed.elapsed()
    );
    wait_until("connected again", DEADLINE, || async {
        connected(&synapse, "web")
    })
    .await;
    // `a` left the registry while we were away: no new connection goes there.
    let before = a.accepted();
    assert_all_served(addr, 20, &["b", "c"]).await;
    assert_eq!(a.accepted(), before);
    synapse.shutdown().await;
}

/// Starts a synapse with a cache file, lets it learn `web`, stops it.
async fn fill_cache(etcd: &EtcdServer, cache: &std::path::Path, ports: &[u16]) {
    let mut c = config(etcd.endpoint(), vec![service("web")]);
    c.cache_file = Some(cache.to_owned());
    let synapse = start(c).await;
    wait_backends(&synapse, "web", ports).await;
    wait_until("the cache file holds the set", DEADLINE, || async {
        synapse::cache::read(cache).is_ok_and(|c| {
            c.get("web")
                .is_some_and(|s| s.instances.len() == ports.len())
        })
    })
    .await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_synapse_restarted_while_etcd_is_down_serves_from_its_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("synapse-cache.json");
    let mut etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    fill_cache(&etcd, &cache, &[a.port()]).await;

    etcd.kill();
    let mut c = config(etcd.endpoint(), vec![service("web")]);
    c.cache_file = Some(cache.clone());
    let started = Instant::now();
    let synapse = start(c).await;
    let addr = synapse.listen_addr("web").unwrap();
    assert_eq!(greet(addr).await, Ok("a".to_owned()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served only after {:?}",
        started.elapsed()
    );
    eprintln!(
        "measured: first connection served from the cache {:?} after start (etcd dead)",
        started.elapsed()
    );
    let status = &synapse.status()["web"];
    assert_eq!(status.registry.source, Some(Source::Cache));
    assert!(!status.registry.connected);
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_hung_etcd_does_not_delay_serving_from_the_cache_and_its_answer_wins_after() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("synapse-cache.json");
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    fill_cache(&etcd, &cache, &[a.port()]).await;
    // While no synapse runs, the registry changes; then etcd hangs.
    deregister(&etcd, "web", "a");
    register(&etcd, "web", "b", b.port());
    etcd.pause();

    let mut c = config(etcd.endpoint(), vec![service("web")]);
    c.cache_file = Some(cache.clone());
    let started = Instant::now();
    let synapse = start(c).await;
    let addr = synapse.listen_addr("web").unwrap();
    assert_eq!(greet(addr).await, Ok("a".to_owned()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served only after {:?}",
        started.elapsed()
    );
    eprintln!(
        "measured: first connection served from the cache {:?} after start (etcd hung)",
        started.elapsed()
    );

    etcd.resume();
    wait_backends(&synapse, "web", &[b.port()]).await;
    assert_eq!(synapse.status()["web"].registry.source, Some(Source::Etcd));
    assert_all_served(addr, 10, &["b"]).await;
    // And the file follows etcd's view.
    wait_until("the cache file is rewritten", DEADLINE, || async {
        synapse::cache::read(&cache)
            .is_ok_and(|c| c["web"].instances.values().all(|r| r.port == b.port()))
    })
    .await;
    synapse.shutdown().await;
}

/// The instance ports `path` records for `service` (empty when absent or unreadable).
fn cached_ports(path: &std::path::Path, service: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = synapse::cache::read(path)
        .ok()
        .and_then(|c| c.get(service).cloned())
        .map(|s| s.instances.values().map(|r| r.port).collect())
        .unwrap_or_default();
    ports.sort();
    ports
}

#[tokio::test]
async fn a_reload_that_moves_or_removes_the_cache_file_reaches_every_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.json"), dir.path().join("two.json"));
    let etcd = EtcdServer::start().await;
    let (a, b, c, d) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    );
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "b", b.port());
    let mut cfg = config(etcd.endpoint(), vec![service("web"), service("api")]);
    cfg.cache_file = Some(one.clone());
    let synapse = start(cfg.clone()).await;
    wait_until(
        "the first cache file holds both services",
        DEADLINE,
        || async {
            cached_ports(&one, "web") == [a.port()] && cached_ports(&one, "api") == [b.port()]
        },
    )
    .await;

    // A new path: written at once with every service's set, no registry change needed.
    cfg.cache_file = Some(two.clone());
    let actions = synapse.reload(cfg.clone()).await.unwrap();
    assert_eq!(actions, vec![synapse::Action::CacheFile]);
    wait_until(
        "the new cache file holds both services",
        DEADLINE,
        || async {
            cached_ports(&two, "web") == [a.port()] && cached_ports(&two, "api") == [b.port()]
        },
    )
    .await;
    // Later changes go to the new file only.
    register(&etcd, "web", "c", c.port());
    let mut ac = vec![a.port(), c.port()];
    ac.sort();
    wait_until("the new cache file follows etcd", DEADLINE, || async {
        cached_ports(&two, "web") == ac
    })
    .await;
    assert_eq!(
        cached_ports(&one, "web"),
        [a.port()],
        "the old file is left alone"
    );

    // Removed: the file is no longer written (and left where it is).
    cfg.cache_file = None;
    synapse.reload(cfg).await.unwrap();
    register(&etcd, "web", "d", d.port());
    let mut acd = vec![a.port(), c.port(), d.port()];
    acd.sort();
    wait_backends(&synapse, "web", &acd).await;
    // The follower hands a view to its writer before installing it, and the writer writes
    // within milliseconds: watch the file for a while to see that nothing comes.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            cached_ports(&two, "web"),
            ac,
            "a removed cache file was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    synapse.shutdown().await;
}

/// A quiet registry is still confirmed: etcd's progress notifications move
/// `registry.last_sync_unix_ms` (and the revision) forward without any change to the
/// service, so the status page's "synced N s ago" stays small while the watch is healthy.
#[tokio::test]
async fn a_quiet_watch_keeps_the_last_sync_time_moving() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    wait_backends(&synapse, "web", &[a.port()]).await;
    let synced = || {
        synapse
            .status()
            .get("web")
            .and_then(|s| s.registry.last_sync_unix_ms)
            .unwrap_or(0)
    };
    let first = synced();
    assert!(first > 0);
    // Another service's key moves etcd's revision without touching web.
    register(&etcd, "other", "x", 1);
    wait_until("a progress notification is recorded", DEADLINE, || async {
        synced() >= first + 1_000
    })
    .await;
    let revision = synapse.status().get("web").map(|s| s.registry.revision);
    assert!(revision > Some(0), "{revision:?}");
    synapse.shutdown().await;
}
