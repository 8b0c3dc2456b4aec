//! Connection handling against real backends: backpressure, default servers, zone
//! affinity, idle timeout, draining, ejection, least_conn, in-process reloads and the
//! admin status page.

mod common;

use std::time::{Duration, Instant};

use common::*;
use registry::ConfigDuration;
use synapse::config::{DefaultServer, ListenAddr};
use synapse::Balance;
use synapse::Source;
use testkit::backend::EchoConnection;
use testkit::{wait_until, Backend, EtcdServer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn register_zone(etcd: &EtcdServer, service: &str, id: &str, port: u16, zone: &str) {
    register_json(
        etcd,
        service,
        id,
        &format!(r#"{{"host":"127.0.0.1","port":{port},"zone":"{zone}"}}"#),
    );
}

/// Waits until the peer closes `stream` (read returns 0 or an error); returns how long.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(
            deadline.saturating_sub(start.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection still open after {deadline:?}"),
        }
    }
}

#[tokio::test]
async fn at_max_connections_accepting_waits_instead_of_failing() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let mut web = service("web");
    web.max_connections = 2;
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let first = EchoConnection::open(addr).await.unwrap();
    let mut second = EchoConnection::open(addr).await.unwrap();
    // The third is queued by the kernel, not served and not refused.
    let third =
        tokio::spawn(
            async move { testkit::backend::greeting(addr, Duration::from_secs(10)).await },
        );
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "the third connection was handled while two were open"
    );
    assert_eq!(a.accepted(), 2);
    second.round_trip("still fine").await.unwrap();
    drop(first);
    assert_eq!(third.await.unwrap(), Ok("a".to_owned()));
    synapse.shutdown().await;
}

#[tokio::test]
async fn default_servers_are_used_while_the_registry_has_no_instance() {
    let etcd = EtcdServer::start().await;
    let (a, d) = (Backend::start("a").await, Backend::start("fallback").await);
    let mut web = service("web");
    web.default_servers = vec![DefaultServer {
        host: "127.0.0.1".into(),
        port: d.port(),
        weight: 100,
        zone: None,
    }];
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    assert_eq!(greet(addr).await, Ok("fallback".to_owned()));
    wait_until("registry answered", DEADLINE, || async {
        synapse.status()["web"].registry.connected
    })
    .await;
    assert_eq!(
        synapse.status()["web"].registry.source,
        Some(Source::Defaults)
    );

    register(&etcd, "web", "a", a.port());
    wait_backends(&synapse, "web", &[a.port()]).await;
    let (ok, failed) = connect_many(addr, 10).await;
    assert!(
        failed.is_empty() && ok.iter().all(|n| n == "a"),
        "{ok:?} {failed:?}"
    );
    assert_eq!(synapse.status()["web"].registry.source, Some(Source::Etcd));

    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[d.port()]).await;
    assert_eq!(greet(addr).await, Ok("fallback".to_owned()));
    synapse.shutdown().await;
}

#[tokio::test]
async fn zone_affinity_prefers_local_backends_and_falls_back_when_they_fail() {
    let etcd = EtcdServer::start().await;
    let (mut a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    register_zone(&etcd, "web", "a", a.port(), "z1");
    register_zone(&etcd, "web", "b", b.port(), "z2");
    register_zone(&etcd, "web", "c", c.port(), "z2");
    let mut near = service("web");
    near.name = "web".into();
    let mut cfg = config(etcd.endpoint(), vec![near]);
    cfg.zone = Some("z1".into());
    let synapse = start(cfg).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port(), c.port()]).await;
    let (ok, failed) = connect_many(addr, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().all(|n| n == "a"), "local zone only: {ok:?}");

    // The only local backend dies: every connection still succeeds, in the other zone.
    a.stop().await;
    let (ok, failed) = connect_many(addr, 20).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        ok.iter().any(|n| n == "b") && ok.iter().any(|n| n == "c"),
        "{ok:?}"
    );

    // Asking for two healthy local backends when there is one spreads over every zone.
    let a2 = Backend::start("a2").await;
    register_zone(&etcd, "web", "a", a2.port(), "z1");
    wait_backends(&synapse, "web", &[a2.port(), b.port(), c.port()]).await;
    let mut cfg2 = config(etcd.endpoint(), vec![service("web")]);
    cfg2.zone = Some("z1".into());
    cfg2.services[0].min_zone_backends = 2;
    cfg2.services[0].listen = ListenAddr(addr);
    synapse.reload(cfg2).await.unwrap();
    let (ok, failed) = connect_many(addr, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    for name in ["a2", "b", "c"] {
        assert!(ok.iter().any(|n| n == name), "{name} unused: {ok:?}");
    }
    synapse.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout_and_busy_ones_are_not() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let mut web = service("web");
    web.idle_timeout = Some(ConfigDuration::from_millis(400));
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;

    let mut busy = EchoConnection::open(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 2];
    idle.read_exact(&mut greeting).await.unwrap();
    let idle_task =
        tokio::spawn(async move { closed_within(&mut idle, Duration::from_secs(5)).await });
    for i in 0..8 {
        busy.round_trip(&format!("ping {i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = idle_task.await.unwrap();
    assert!(
        closed_after >= Duration::from_millis(350),
        "closed too early: {closed_after:?}"
    );
    busy.round_trip("still here after 800ms of traffic")
        .await
        .unwrap();
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_live_connection_survives_its_backends_deregistration_and_reloads() {
    let etcd = EtcdServer::start().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    register(&etcd, "web", "a", a.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let web_addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let mut long = EchoConnection::open(web_addr).await.unwrap();
    assert_eq!(long.backend, "a");

    register(&etcd, "web", "b", b.port());
    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[b.port()]).await;
    let draining: Vec<_> = synapse.status()["web"]
        .backends
        .iter()
        .filter(|x| x.state == "draining")
        .map(|x| (x.port, x.active))
        .collect();
    assert_eq!(draining, vec![(a.port(), 1)]);
    long.round_trip("after deregistration").await.unwrap();
    assert_eq!(
        greet(web_addr).await,
        Ok("b".to_owned()),
        "new connections avoid the draining backend"
    );

    // A reload that adds a service, and one that changes web in place.
    register(&etcd, "api", "c", c.port());
    let mut cfg = config(etcd.endpoint(), vec![service("web"), service("api")]);
    cfg.services[0].listen = ListenAddr(web_addr);
    cfg.services[0].balance_choice = Some(Balance::LeastConn);
    let actions = synapse.reload(cfg.clone()).await.unwrap();
    assert_eq!(actions.len(), 2, "{actions:?}");
    let api_addr = synapse.listen_addr("api").unwrap();
    wait_backends(&synapse, "api", &[c.port()]).await;
    assert_eq!(greet(api_addr).await, Ok("c".to_owned()));
    assert_eq!(synapse.status()["web"].balance, "least_conn");
    assert_eq!(synapse.listen_addr("web"), Some(web_addr));
    long.round_trip("after reloads").await.unwrap();

    // Removing web stops its listener; the live connection still runs.
    let mut only_api = cfg.clone();
    only_api.services.remove(0);
    only_api.services[0].listen = ListenAddr(api_addr);
    synapse.reload(only_api).await.unwrap();
    assert!(
        TcpStream::connect(web_addr).await.is_err(),
        "web still accepts"
    );
    long.round_trip("after its service was removed")
        .await
        .unwrap();
    assert_eq!(greet(api_addr).await, Ok("c".to_owned()));

    // Once it closes, the draining backend is forgotten.
    drop(long);
    synapse.shutdown().await;
}

/// The drain procedure's "watch `active` reach 0" (docs/operations.md): a backend that left
/// the registry stays on the status page, as `drained`, once its last connection closes.
#[tokio::test]
async fn a_drained_backend_stays_on_the_status_page_after_its_last_connection() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let long = EchoConnection::open(addr).await.unwrap();
    register(&etcd, "web", "b", b.port());
    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[b.port()]).await;
    assert_eq!(active_on(&synapse, "web", a.port()), Some(("draining", 1)));
    drop(long);
    wait_until(
        "the backend shows as drained with no connection",
        DEADLINE,
        || async { active_on(&synapse, "web", a.port()) == Some(("drained", 0)) },
    )
    .await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn drain_timeout_ends_connections_to_a_removed_backend() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    let mut web = service("web");
    web.drain_timeout = Some(ConfigDuration::from_millis(300));
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 2];
    conn.read_exact(&mut greeting).await.unwrap();
    register(&etcd, "web", "b", b.port());
    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[b.port()]).await;
    let took = closed_within(&mut conn, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(150),
        "cut before drain_timeout: {took:?}"
    );
    wait_until("the drained backend is forgotten", DEADLINE, || async {
        synapse.status()["web"]
            .backends
            .iter()
            .all(|x| x.state != "draining")
    })
    .await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_dead_backend_is_ejected_then_restored_and_shown_in_status() {
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let dead = testkit::free_port();
    register(&etcd, "web", "a", dead);
    register(&etcd, "web", "b", b.port());
    let mut cfg = config(etcd.endpoint(), vec![service("web")]);
    // Long enough that the checks below finish within the first ejection on a busy machine.
    cfg.services[0].ejection_time = ConfigDuration::from_secs(2);
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    let synapse = start(cfg).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[dead, b.port()]).await;
    let state = |s: &synapse::Synapse| {
        s.status()["web"]
            .backends
            .iter()
            .find(|x| x.port == dead)
            .map(|x| x.state)
    };
    let (_, failed) = connect_many(addr, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(state(&synapse), Some("ejected"));
    let failures_when_ejected = synapse.status()["web"]
        .backends
        .iter()
        .find(|x| x.port == dead)
        .unwrap()
        .connect_failures;
    assert_eq!(
        failures_when_ejected, 3,
        "ejected after eject_after consecutive failures"
    );
    // While ejected it gets no attempts.
    let (ok, _) = connect_many(addr, 10).await;
    assert!(ok.iter().all(|n| n == "b"));
    assert_eq!(
        synapse.status()["web"]
            .backends
            .iter()
            .find(|x| x.port == dead)
            .unwrap()
            .connect_failures,
        3
    );

    // The admin page shows the same.
    let json = admin_status(synapse.admin_addr().unwrap()).await.unwrap();
    let web = &json["services"]["web"];
    assert_eq!(web["balance"], "round_robin");
    assert_eq!(web["listen"], addr.to_string());
    assert_eq!(web["registry"]["source"], "etcd");
    assert_eq!(web["registry"]["connected"], true);
    assert!(web["registry"]["revision"].as_i64().unwrap() > 0);
    assert!(web["registry"]["last_sync_unix_ms"].as_u64().is_some());
    let backends = web["backends"].as_array().unwrap();
    let a = backends.iter().find(|x| x["port"] == dead).unwrap();
    assert_eq!(a["state"], "ejected");
    let bb = backends.iter().find(|x| x["port"] == b.port()).unwrap();
    assert_eq!(bb["state"], "healthy");
    assert!(bb["total"].as_u64().unwrap() >= 17);
    for key in ["host", "weight", "zone", "active", "connect_failures"] {
        assert!(bb.get(key).is_some(), "{key} missing in {bb}");
    }

    // Restored when the ejection time (500ms here) is up.
    wait_until("the ejected backend is restored", DEADLINE, || async {
        state(&synapse) == Some("healthy")
    })
    .await;
    synapse.shutdown().await;
}

#[tokio::test]
async fn least_conn_sends_new_connections_to_the_least_busy_backend() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web", "b", b.port());
    let mut web = service("web");
    web.balance_choice = Some(Balance::LeastConn);
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port(), b.port()]).await;
    // Hold connections open: with two backends both are always compared, so they alternate.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(EchoConnection::open(addr).await.unwrap());
    }
    let on_a = held.iter().filter(|c| c.backend == "a").count();
    assert_eq!(
        on_a,
        3,
        "{:?}",
        held.iter().map(|c| c.backend.clone()).collect::<Vec<_>>()
    );
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_live_connections() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let synapse = std::sync::Arc::new(start(config(etcd.endpoint(), vec![service("web")])).await);
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let mut conn = EchoConnection::open(addr).await.unwrap();
    let s = synapse.clone();
    let shutdown = tokio::spawn(async move { s.shutdown().await });
    wait_until("the listener closes", DEADLINE, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    conn.round_trip("during shutdown").await.unwrap();
    assert!(!shutdown.is_finished());
    drop(conn);
    let report = shutdown.await.unwrap();
    assert!(report.drained);
}

#[tokio::test]
async fn a_reload_moves_a_listener_and_hands_an_address_to_a_renamed_service() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "web2", "b", b.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let old_addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let mut long = EchoConnection::open(old_addr).await.unwrap();

    // Move web to a new port: the new one serves, the old one closes, the live connection stays.
    let new_port = testkit::free_port();
    let mut moved = config(etcd.endpoint(), vec![service("web")]);
    moved.services[0].listen = ListenAddr(format!("127.0.0.1:{new_port}").parse().unwrap());
    synapse.reload(moved.clone()).await.unwrap();
    let new_addr = synapse.listen_addr("web").unwrap();
    assert_eq!(new_addr.port(), new_port);
    assert_eq!(greet(new_addr).await, Ok("a".to_owned()));
    assert!(TcpStream::connect(old_addr).await.is_err());
    long.round_trip("after the move").await.unwrap();

    // Rename: web2 takes over web's address in the same reload.
    let mut renamed = moved.clone();
    renamed.services[0].name = "web2".into();
    synapse.reload(renamed).await.unwrap();
    wait_backends(&synapse, "web2", &[b.port()]).await;
    assert_eq!(greet(new_addr).await, Ok("b".to_owned()));
    long.round_trip("after the rename").await.unwrap();
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_reload_of_the_etcd_block_follows_the_new_prefix_without_a_gap() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register_json(&etcd, "ignored", "x", "{}");
    etcd.etcdctl(&[
        "put",
        "/other/web/b",
        &format!(r#"{{"host":"127.0.0.1","port":{}}}"#, b.port()),
    ]);
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let mut cfg = config(etcd.endpoint(), vec![service("web")]);
    cfg.services[0].listen = ListenAddr(addr);
    cfg.etcd.prefix = "/other".into();
    let actions = synapse.reload(cfg).await.unwrap();
    assert!(
        actions.contains(&synapse::Action::Rediscover),
        "{actions:?}"
    );
    // Until the new prefix is read, the old backends keep serving.
    let first = greet(addr).await.unwrap();
    assert!(first == "a" || first == "b", "{first}");
    wait_backends(&synapse, "web", &[b.port()]).await;
    assert_eq!(greet(addr).await, Ok("b".to_owned()));
    synapse.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let synapse = start(config(etcd.endpoint(), vec![service("web")])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(etcd.endpoint(), vec![service("web"), service("api")]);
    cfg.services[0].listen = ListenAddr(addr);
    cfg.services[0].balance_choice = Some(Balance::Random);
    cfg.services[1].listen = ListenAddr(taken.local_addr().unwrap());
    let err = synapse.reload(cfg).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot listen on"), "{err:#}");
    assert!(synapse.listen_addr("api").is_none());
    assert_eq!(
        synapse.status()["web"].balance,
        "round_robin",
        "nothing was applied"
    );
    assert_eq!(greet(addr).await, Ok("a".to_owned()));
    synapse.shutdown().await;
}

/// What `/status` says about each service's shape (not its counters).
async fn shapes(admin: std::net::SocketAddr) -> Vec<(String, String, String)> {
    let status = admin_status(admin).await.expect("GET /status");
    let services = status["services"].as_object().expect("services").clone();
    services
        .into_iter()
        .map(|(name, s)| (name, s["listen"].to_string(), s["balance"].to_string()))
        .collect()
}

/// A reload rejected in its prepare step (a new service's address is taken) changes nothing
/// else the same file asks for: a removed service, a tuned one, a moved admin server and a
/// new zone all stay as they were.
#[tokio::test]
async fn a_reload_rejected_in_prepare_leaves_services_listeners_and_status_unchanged() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "b", b.port());
    let mut cfg = config(etcd.endpoint(), vec![service("web"), service("api")]);
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    let synapse = start(cfg).await;
    let (web, api) = (
        synapse.listen_addr("web").unwrap(),
        synapse.listen_addr("api").unwrap(),
    );
    let admin = synapse.admin_addr().unwrap();
    wait_backends(&synapse, "web", &[a.port()]).await;
    wait_backends(&synapse, "api", &[b.port()]).await;
    let before = shapes(admin).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_admin: ListenAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let mut new = config(etcd.endpoint(), vec![service("web"), service("new")]);
    new.services[0].listen = ListenAddr(web);
    new.services[0].balance_choice = Some(Balance::Random);
    new.services[1].listen = ListenAddr(taken.local_addr().unwrap());
    new.admin = Some(new_admin);
    new.zone = Some("b".into());
    let err = synapse.reload(new).await.unwrap_err();
    assert!(
        matches!(&err, synapse::Error::Listen { service, .. } if service == "new"),
        "{err}"
    );

    assert_eq!(synapse.admin_addr(), Some(admin));
    assert!(
        TcpStream::connect(new_admin.0).await.is_err(),
        "admin moved"
    );
    assert_eq!(synapse.listen_addr("web"), Some(web));
    assert_eq!(synapse.listen_addr("api"), Some(api), "api was stopped");
    assert_eq!(synapse.listen_addr("new"), None);
    assert_eq!(shapes(admin).await, before);

    // The same when it is the admin server's new address that is taken.
    let mut admin_taken = config(etcd.endpoint(), vec![service("web")]);
    admin_taken.services[0].listen = ListenAddr(web);
    admin_taken.admin = Some(ListenAddr(taken.local_addr().unwrap()));
    let err = synapse.reload(admin_taken).await.unwrap_err();
    assert!(matches!(&err, synapse::Error::AdminListen { .. }), "{err}");
    assert_eq!(synapse.admin_addr(), Some(admin));
    assert_eq!(synapse.listen_addr("api"), Some(api), "api was stopped");
    assert_eq!(shapes(admin).await, before);

    assert_eq!(greet(web).await, Ok("a".to_owned()));
    assert_eq!(greet(api).await, Ok("b".to_owned()));
    synapse.shutdown().await;
}

/// A backend that accepts connections and keeps them open without a word, as a server
/// waiting for its client's request does.
async fn silent_backend() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

fn active_on(synapse: &synapse::Synapse, service: &str, port: u16) -> Option<(&'static str, u64)> {
    synapse.status()[service]
        .backends
        .iter()
        .find(|b| b.port == port)
        .map(|b| (b.state, b.active))
}

#[tokio::test]
async fn with_retry_unanswered_a_connection_counts_as_active_before_its_first_exchange() {
    let etcd = EtcdServer::start().await;
    let ((a, _a), (b, _b)) = (silent_backend().await, silent_backend().await);
    register(&etcd, "web", "a", a);
    let mut web = service("web");
    web.retry_unanswered = true;
    web.drain_timeout = Some(ConfigDuration::from_millis(300));
    let synapse = start(config(etcd.endpoint(), vec![web])).await;
    let addr = synapse.listen_addr("web").unwrap();
    wait_backends(&synapse, "web", &[a]).await;

    // Connected and silent: no request sent, no answer yet.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    wait_until(
        "the silent connection counts as active",
        DEADLINE,
        || async { active_on(&synapse, "web", a) == Some(("healthy", 1)) },
    )
    .await;

    // Its backend leaves: it drains with that connection, which drain_timeout then cuts.
    register(&etcd, "web", "b", b);
    deregister(&etcd, "web", "a");
    wait_backends(&synapse, "web", &[b]).await;
    assert_eq!(active_on(&synapse, "web", a), Some(("draining", 1)));
    let took = closed_within(&mut conn, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(150),
        "cut before drain_timeout: {took:?}"
    );
    wait_until("the drained backend is forgotten", DEADLINE, || async {
        active_on(&synapse, "web", a).is_none()
    })
    .await;
    synapse.shutdown().await;
}

/// Two services swap addresses: the first to move finds the other's address still taken and
/// is left not listening. The configuration recorded is what runs, so reloading the same
/// file again finishes the move instead of seeing no change.
#[tokio::test]
async fn a_move_that_could_not_bind_is_retried_by_the_next_reload_of_the_same_file() {
    let etcd = EtcdServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "b", b.port());
    let (p, q) = (testkit::free_port(), testkit::free_port());
    let at = |port: u16| ListenAddr(format!("127.0.0.1:{port}").parse().unwrap());
    let mut cfg = config(etcd.endpoint(), vec![service("web"), service("api")]);
    cfg.services[0].listen = at(p);
    cfg.services[1].listen = at(q);
    let synapse = start(cfg.clone()).await;
    wait_backends(&synapse, "web", &[a.port()]).await;
    wait_backends(&synapse, "api", &[b.port()]).await;

    let mut swapped = cfg.clone();
    swapped.services[0].listen = at(q);
    swapped.services[1].listen = at(p);
    synapse.reload(swapped.clone()).await.unwrap();
    assert_eq!(greet(at(p).0).await, Ok("b".to_owned()), "api moved");

    let actions = synapse.reload(swapped).await.unwrap();
    assert!(
        matches!(&actions[..], [synapse::Action::Rebind(s)] if s.name == "web"),
        "{actions:?}"
    );
    assert_eq!(synapse.listen_addr("web"), Some(at(q).0));
    assert_eq!(
        greet(at(q).0).await,
        Ok("a".to_owned()),
        "web moved at last"
    );
    assert_eq!(greet(at(p).0).await, Ok("b".to_owned()));
    synapse.shutdown().await;
}
