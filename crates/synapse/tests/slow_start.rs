//! Slow start on a running synapse: a backend that joins a service ramps from a small share
//! of new connections to its full share over `slow_start`, shown in `/status` as its
//! effective weight.

mod common;

use std::time::{Duration, Instant};

use common::*;
use registry::ConfigDuration;
use synapse::config::Balance;
use testkit::{wait_until, Backend, EtcdServer};

fn effective_weight(synapse: &synapse::Synapse, port: u16) -> Option<u32> {
    let status = synapse.status();
    let web = status.get("web")?;
    let b = web.backends.iter().find(|b| b.port == port)?;
    Some(b.effective_weight)
}

/// Connections through `addr` for `window`; how many went to `name` and in all.
async fn share_during(addr: std::net::SocketAddr, name: &str, window: Duration) -> (usize, usize) {
    let end = Instant::now() + window;
    let (mut to_name, mut all) = (0, 0);
    while Instant::now() < end {
        let got = greet(addr).await.expect("a connection through synapse");
        to_name += usize::from(got == name);
        all += 1;
    }
    (to_name, all)
}

#[tokio::test]
async fn a_joining_backend_ramps_up_to_its_share_over_slow_start() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    let mut web = service("web");
    web.balance_choice = Some(Balance::RoundRobin);
    web.slow_start = Some(ConfigDuration::from_secs(2));
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").expect("web listens");
    wait_backends(&synapse, "web", &[a.port()]).await;
    // The first backends of a service share alike from the start.
    assert_eq!(effective_weight(&synapse, a.port()), Some(100));

    register(&etcd, "web", "b", b.port());
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;
    let early = effective_weight(&synapse, b.port()).expect("b in /status");
    let (to_b, all) = share_during(addr, "b", Duration::from_millis(200)).await;
    let early_share = to_b as f64 / all as f64;
    println!("first 200 ms: b took {to_b} of {all} connections ({early_share:.3}); effective weight {early}");
    assert!(
        early < 30,
        "b's effective weight right after joining: {early}"
    );
    assert!(all >= 20, "only {all} connections in 200 ms");
    assert!(
        early_share < 0.3,
        "b took {early_share:.3} of the first 200 ms (full share: 0.5)"
    );

    wait_until("b reaches its full weight", DEADLINE, || async {
        effective_weight(&synapse, b.port()) == Some(100)
    })
    .await;
    let (to_b, all) = share_during(addr, "b", Duration::from_millis(300)).await;
    let late_share = to_b as f64 / all as f64;
    println!("after 2 s: b took {to_b} of {all} connections ({late_share:.3})");
    assert!(
        (late_share - 0.5).abs() < 0.1,
        "b's share after slow start: {late_share:.3}"
    );
    synapse.shutdown().await;
}
