//! The walking skeleton's promises against a real etcd and real backends: traffic reaches
//! every registered instance, a dead backend costs no new connection, hand-written records
//! route, malformed ones are skipped, and synapse starts (and waits) while etcd is down.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use testkit::{wait_until, Backend, EtcdServer};

#[tokio::test]
async fn connections_reach_every_backend_in_turn() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web", "b", b.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;
    let (ok, failed) = connect_many(addr, 40).await;
    assert!(failed.is_empty(), "{failed:?}");
    let mut counts = BTreeMap::new();
    for name in ok {
        *counts.entry(name).or_insert(0) += 1;
    }
    // Equal weights, round robin: an even split.
    assert_eq!(
        counts,
        BTreeMap::from([("a".to_owned(), 20), ("b".to_owned(), 20)])
    );
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_new_connection() {
    let etcd = EtcdServer::start().await;
    let (mut a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web", "b", b.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;

    // Four clients in parallel; one backend dies mid-load (and stays registered: nobody
    // deregisters it). A connection already relayed to it when it dies may be cut (its
    // bytes cannot be replayed elsewhere); every connection opened after it died must succeed.
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let killed = killed.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..150 {
                    let after_kill = killed.load(Ordering::SeqCst);
                    results.push((after_kill, greet(addr).await));
                }
                results
            })
        })
        .collect();
    wait_until("the load is under way", DEADLINE, || async {
        a.accepted() >= 40
    })
    .await;
    a.stop().await;
    killed.store(true, Ordering::SeqCst);
    let mut new_failures = Vec::new();
    let (mut in_flight_failures, mut after_kill) = (0, 0);
    for c in clients {
        for (opened_after_kill, result) in c.await.unwrap() {
            match (opened_after_kill, result) {
                (true, Ok(name)) => {
                    after_kill += 1;
                    assert_eq!(name, "b");
                }
                (true, Err(e)) => new_failures.push(e),
                (false, Err(_)) => in_flight_failures += 1,
                (false, Ok(_)) => {}
            }
        }
    }
    assert!(
        new_failures.is_empty(),
        "{} connections opened after the kill failed: {:?}",
        new_failures.len(),
        &new_failures[..new_failures.len().min(5)]
    );
    assert!(
        after_kill >= 100,
        "only {after_kill} connections after the kill"
    );
    assert!(
        in_flight_failures <= 4,
        "{in_flight_failures} in-flight connections cut"
    );
    eprintln!(
        "measured: {after_kill} connections opened after the kill, 0 failed; \
         {in_flight_failures} in flight were cut"
    );
    // The dead backend was ejected after its consecutive failures.
    let status = synapse.status();
    let dead = status["web"]
        .backends
        .iter()
        .find(|x| x.port == a.port())
        .unwrap();
    assert!(dead.connect_failures >= 3, "{dead:?}");
    synapse.shutdown().await;
}

#[tokio::test]
async fn hand_written_records_route_and_malformed_ones_are_skipped() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // What an operator would type with etcdctl: no name, no weight.
    register_json(
        &etcd,
        "web",
        "by-hand",
        &format!(r#"{{"host":"127.0.0.1","port":{}}}"#, a.port()),
    );
    register_json(&etcd, "web", "broken", "{not json");
    register_json(&etcd, "web", "no-port", r#"{"host":"127.0.0.1"}"#);
    register_json(
        &etcd,
        "web",
        "bad-port",
        r#"{"host":"127.0.0.1","port":70000}"#,
    );
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let (ok, failed) = connect_many(addr, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().all(|n| n == "a"));
    // A malformed write later does not disturb the valid instances.
    register_json(
        &etcd,
        "web",
        "b",
        &format!(
            r#"{{"host":"127.0.0.1","port":{},"weight":"heavy"}}"#,
            b.port()
        ),
    );
    register(&etcd, "web", "b2", b.port());
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;
    let (ok, failed) = connect_many(addr, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.contains(&"a".to_owned()) && ok.contains(&"b".to_owned()));
    synapse.shutdown().await;
}

#[tokio::test]
async fn synapse_starts_while_etcd_is_down_and_holds_early_connections() {
    let mut etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    etcd.kill();
    let mut web = service("web");
    web.startup_wait = registry::ConfigDuration::from_secs(15);
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    // A client that arrives before any backend is known waits instead of failing.
    let early =
        tokio::spawn(
            async move { testkit::backend::greeting(addr, Duration::from_secs(15)).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !early.is_finished(),
        "the early connection must wait, not fail"
    );
    assert!(!synapse.status()["web"].ready);
    etcd.restart().await;
    assert_eq!(early.await.unwrap(), Ok("a".to_owned()));
    assert!(synapse.status()["web"].registry.connected);
    synapse.shutdown().await;
}

/// `startup_wait` counts from each connection's own accept, not from the start of synapse: a
/// client that arrives after an earlier one gave up waits its full `startup_wait` too.
#[tokio::test]
async fn startup_wait_counts_from_each_connections_accept() {
    use tokio::io::AsyncBufReadExt;
    let a = Backend::start("a").await;
    let mut web = service("web");
    web.startup_wait = registry::ConfigDuration::from_secs(2);
    // Nothing answers at that endpoint: no backend set is known until a reload names one.
    let nowhere = format!("http://127.0.0.1:{}", testkit::free_port());
    let mut cfg = config(nowhere, vec![web]);
    let synapse = start(cfg.clone()).await;
    let addr = synapse.listen_addr("web").unwrap();
    let first = greet(addr).await;
    assert!(first.is_err(), "served with no backend known: {first:?}");
    assert_eq!(synapse.status()["web"].unserved_connections, 1);

    // Past startup_wait since start: a new client still waits for a backend set.
    let mut late = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    let early_end =
        tokio::time::timeout(Duration::from_millis(500), late.read_line(&mut line)).await;
    assert!(
        early_end.is_err(),
        "the late connection was closed at once: {early_end:?}"
    );
    cfg.services[0].listen = synapse::config::ListenAddr(addr);
    cfg.services[0].default_servers = vec![synapse::config::DefaultServer {
        host: "127.0.0.1".into(),
        port: a.port(),
        weight: 1,
        zone: None,
    }];
    synapse.reload(cfg).await.unwrap();
    let read = tokio::time::timeout(DEADLINE, late.read_line(&mut line)).await;
    assert!(matches!(read, Ok(Ok(n)) if n > 0), "{read:?}");
    assert_eq!(line.trim_end(), "a");
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_connect_failure_moves_to_another_backend() {
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    // Nothing listens on the first one's port.
    let dead_port = testkit::free_port();
    register(&etcd, "web", "a-dead", dead_port);
    register(&etcd, "web", "b", b.port());
    let mut web = service("web");
    web.eject_after = 1000; // keep the dead one in rotation to exercise retries
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[dead_port, b.port()]).await;
    let (ok, failed) = connect_many(addr, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok.len(), 20);
    let status = synapse.status();
    let dead = status["web"]
        .backends
        .iter()
        .find(|x| x.port == dead_port)
        .unwrap();
    assert!(
        dead.connect_failures >= 5,
        "round robin kept trying it: {dead:?}"
    );
    assert_eq!(dead.addresses, None, "an IP literal is never resolved");
    // With every backend dead, the client's connection is closed without data, after the
    // one backend left was tried 1 + `retries` times (a lost SYN would have been retried).
    deregister(&etcd, "web", "b");
    wait_backends(&synapse, "web", &[dead_port]).await;
    let failures = |synapse: &synapse::Synapse| {
        synapse.status()["web"]
            .backends
            .iter()
            .find(|x| x.port == dead_port)
            .map(|b| b.connect_failures)
    };
    let before = failures(&synapse).unwrap();
    assert!(greet(addr).await.is_err());
    let retries = service("web").retries as u64;
    assert_eq!(failures(&synapse), Some(before + 1 + retries));
    synapse.shutdown().await;
}

#[tokio::test]
async fn run_serves_until_its_shutdown_future_completes() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let port = testkit::free_port();
    let mut web = service("web");
    web.listen = synapse::config::ListenAddr(format!("127.0.0.1:{port}").parse().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(synapse::Synapse::run(
        config(etcd.endpoint(), vec![web]),
        async {
            let _ = stopped.await;
        },
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("synapse serves", DEADLINE, || async {
        greet(addr).await.as_deref() == Ok("a")
    })
    .await;
    let _ = stop.send(());
    let report = run.await.unwrap().unwrap();
    assert!(report.drained);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A request/response server: answers the first line of each connection with
/// `<name>: <line>` and closes, or, when `answers` is false, reads the line and closes
/// without a byte, as a backend killed with the request in flight does to its clients.
/// Returns its port and how many requests it has read.
async fn request_server(
    name: &'static str,
    answers: bool,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                if stream.read_line(&mut line).await.is_err() || line.is_empty() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                if answers {
                    let answer = format!("{name}: {line}");
                    let _ = stream.get_mut().write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    (port, seen)
}

/// Sends one request line (half-closing after it when `half_close`) and reads the answer
/// to the end; an empty answer is the connection closed unanswered.
async fn request(addr: std::net::SocketAddr, line: &str, half_close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(line.as_bytes()).await?;
        if half_close {
            stream.shutdown().await?;
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timed out".to_owned(),
    }
}

#[tokio::test]
async fn retry_unanswered_sends_a_request_its_backend_dropped_to_another_backend() {
    let etcd = EtcdServer::start().await;
    let (mute, mute_seen) = request_server("mute", false).await;
    let (ok, ok_seen) = request_server("b", true).await;
    for service in ["web", "plain"] {
        register(&etcd, service, "mute", mute);
        register(&etcd, service, "b", ok);
    }
    let mut web = service("web");
    web.retry_unanswered = true;
    let synapse = start(config(etcd.endpoint(), vec![web, service("plain")])).await;
    for service in ["web", "plain"] {
        wait_backends(&synapse, service, &[mute, ok]).await;
    }

    // Round robin sends every other connection to the backend that drops requests.
    let addr = synapse.listen_addr("web").unwrap();
    for i in 0..20 {
        let line = format!("request {i}\n");
        let answer = request(addr, &line, i % 2 == 0).await;
        assert_eq!(answer, format!("b: {line}"), "request {i}");
    }
    let dropped = mute_seen.load(Ordering::SeqCst);
    assert!(dropped >= 5, "the mute backend saw {dropped} requests");
    assert_eq!(ok_seen.load(Ordering::SeqCst), 20);
    let status = synapse.status();
    let unanswered = status["web"]
        .backends
        .iter()
        .find(|b| b.port == mute)
        .map(|b| b.unanswered);
    assert_eq!(unanswered, Some(dropped as u64), "{:?}", status["web"]);

    // Without the option, the same backends fail those clients: nothing is replayed.
    let addr = synapse.listen_addr("plain").unwrap();
    let mut unanswered = 0;
    for i in 0..20 {
        let line = format!("request {i}\n");
        let answer = request(addr, &line, i % 2 == 0).await;
        if answer.is_empty() || answer.starts_with("error") {
            unanswered += 1;
        } else {
            assert_eq!(answer, format!("b: {line}"));
        }
    }
    assert!(unanswered >= 5, "{unanswered} of 20 went unanswered");

    // A protocol where the server speaks first is relayed as before.
    let greeter = Backend::start("g").await;
    register(&etcd, "web", "g", greeter.port());
    deregister(&etcd, "web", "mute");
    deregister(&etcd, "web", "b");
    wait_backends(&synapse, "web", &[greeter.port()]).await;
    let addr = synapse.listen_addr("web").unwrap();
    assert_eq!(greet(addr).await.as_deref(), Ok("g"));
    synapse.shutdown().await;
}

/// A record may name its host: synapse resolves it in the background (here through
/// /etc/hosts, so no DNS query leaves the machine), shows the addresses it dials in the
/// status, and routes to it.
#[tokio::test]
async fn a_host_given_by_name_is_resolved_and_routed() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register_json(
        &etcd,
        "web",
        "a",
        &format!(r#"{{"host":"localhost","port":{}}}"#, a.port()),
    );
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    let expected = format!("127.0.0.1:{}", a.port());
    wait_until("localhost is resolved", DEADLINE, || async {
        synapse.status()["web"]
            .backends
            .first()
            .and_then(|b| b.addresses.clone())
            .is_some_and(|addrs| addrs.contains(&expected))
    })
    .await;
    let (ok, failed) = connect_many(addr, 5).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok, vec!["a"; 5]);
    synapse.shutdown().await;
}
