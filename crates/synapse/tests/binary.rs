//! The real `synapse` binary: `--check-config`, SIGHUP reloads (a new service starts, a
//! live connection survives, an invalid file is rejected and the old config keeps
//! running) and SIGTERM (stop accepting, drain up to shutdown_timeout, exit 0).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use testkit::backend::EchoConnection;
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};
use tokio::net::TcpStream;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_synapse"))
}

/// synapse on `config`, not waited for.
fn spawn(config: &str) -> Daemon {
    Daemon::spawn("synapse", config, |_| {})
}

fn config_text(etcd: &str, services: &[(&str, u16)], extra: &str) -> String {
    let mut text = format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\n  dial_timeout: 300ms\n  request_timeout: 1s\n\
         \x20 keepalive_interval: 500ms\n  keepalive_timeout: 500ms\n{extra}services:\n"
    );
    for (name, port) in services {
        text.push_str(&format!(
            "  - name: {name}\n    listen: 127.0.0.1:{port}\n    connect_timeout: 300ms\n"
        ));
    }
    text
}

async fn wait_greeting(addr: std::net::SocketAddr, expected: &str) {
    wait_until(
        &format!("{addr} greets with {expected}"),
        DEADLINE,
        || async { greet(addr).await.is_ok_and(|n| n == expected) },
    )
    .await;
}

#[test]
fn check_config_prints_ok_or_the_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let etcd = "etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n";
    std::fs::write(
        &good,
        format!("{etcd}services: [{{name: web, listen: 127.0.0.1:3000}}]\n"),
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let bad = dir.path().join("bad.yaml");
    let services = "services: [{name: web, listen: 127.0.0.1:3000, balance: fastest}]\n";
    std::fs::write(&bad, format!("{etcd}{services}")).unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("services[0].balance"),
        "{err}"
    );

    let out = Command::new(bin())
        .arg("--config")
        .arg(dir.path().join("missing.yaml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test]
async fn sighup_adds_a_service_without_cutting_a_live_connection_and_rejects_a_bad_file() {
    let etcd = EtcdServer::start().await;
    let (a, c) = (Backend::start("a").await, Backend::start("c").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "c", c.port());
    let (web_port, api_port) = (free_port(), free_port());
    let web: std::net::SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let config = config_text(&etcd.endpoint(), &[("web", web_port)], "");
    let synapse = spawn(&config);
    wait_greeting(web, "a").await;
    let mut long = EchoConnection::open(web).await.unwrap();

    synapse.reload(&config_text(
        &etcd.endpoint(),
        &[("web", web_port), ("api", api_port)],
        "",
    ));
    wait_greeting(api, "c").await;
    long.round_trip("after adding a service").await.unwrap();

    synapse.reload("etcd: {endpoints: []}\n");
    wait_until("the bad reload is logged", DEADLINE, || async {
        synapse.output().contains("reload rejected")
    })
    .await;
    assert!(
        synapse.output().contains("etcd.endpoints"),
        "the log names the key"
    );
    long.round_trip("after a rejected reload").await.unwrap();
    assert_eq!(greet(api).await, Ok("c".to_owned()));
    assert_eq!(greet(web).await, Ok("a".to_owned()));
}

#[tokio::test]
async fn sigterm_stops_accepting_drains_and_exits_zero() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let port = free_port();
    let web: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = config_text(
        &etcd.endpoint(),
        &[("web", port)],
        "shutdown_timeout: 10s\n",
    );
    let mut synapse = spawn(&config);
    wait_greeting(web, "a").await;
    let mut long = EchoConnection::open(web).await.unwrap();

    synapse.signal(Signal::SIGTERM);
    wait_until("the listener closes", DEADLINE, || async {
        TcpStream::connect(web).await.is_err()
    })
    .await;
    long.round_trip("while shutting down").await.unwrap();
    assert!(synapse.is_running(), "exited while a connection was live");
    drop(long);
    let status = synapse
        .wait_exit(DEADLINE)
        .await
        .expect("synapse did not exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_cuts_connections_left_after_shutdown_timeout() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let port = free_port();
    let web: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = config_text(
        &etcd.endpoint(),
        &[("web", port)],
        "shutdown_timeout: 500ms\n",
    );
    let mut synapse = spawn(&config);
    wait_greeting(web, "a").await;
    let _long = EchoConnection::open(web).await.unwrap();
    let started = Instant::now();
    synapse.signal(Signal::SIGTERM);
    let status = synapse
        .wait_exit(DEADLINE)
        .await
        .expect("synapse did not exit");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "exited before shutdown_timeout: {:?}",
        started.elapsed()
    );
}

/// A SIGHUP of a pathological file (nested 40,000 levels deep: the YAML parser is
/// quadratic in depth) is refused at once with the reason, and a SIGTERM right behind it is
/// not kept waiting.
#[tokio::test]
async fn a_deeply_nested_reload_is_refused_and_does_not_delay_sigterm() {
    let etcd = EtcdServer::start().await;
    let config = config_text(&etcd.endpoint(), &[("web", free_port())], "");
    let mut synapse = Daemon::synapse(&config).await;
    let deep = format!("services: {}", "[".repeat(40_000));
    synapse.reload(&deep);
    let refused = testkit::time_until("the reload is refused", DEADLINE, || async {
        synapse.output().contains("nested 40000 levels deep")
    })
    .await;
    assert!(
        refused < Duration::from_secs(1),
        "refusing took {refused:?}"
    );
    // Again, with the SIGTERM right behind the SIGHUP.
    synapse.signal(Signal::SIGHUP);
    let started = Instant::now();
    synapse.signal(Signal::SIGTERM);
    let status = synapse
        .wait_exit(DEADLINE)
        .await
        .expect("synapse did not exit");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
}

#[tokio::test]
async fn a_listen_address_in_use_stops_synapse_at_start_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = config_text("http://127.0.0.1:1", &[("web", port)], "");
    let mut synapse = spawn(&config);
    let status = synapse
        .wait_exit(DEADLINE)
        .await
        .expect("synapse did not exit");
    assert!(!status.success());
    let log = synapse.output();
    assert!(
        log.contains("cannot listen on") && log.contains(&port.to_string()),
        "{log}"
    );
}

/// Out of file descriptors, synapse leaves new clients in the backlog or closes the ones it
/// cannot connect upstream, but does not blame (eject) a healthy backend for its own limit,
/// and serves again once descriptors are free.
#[tokio::test]
async fn running_out_of_descriptors_does_not_eject_healthy_backends() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let (port, admin) = (free_port(), free_port());
    let config = config_text(
        &etcd.endpoint(),
        &[("web", port)],
        &format!("admin: 127.0.0.1:{admin}\n"),
    );
    // A descriptor limit low enough to run out with a few connections: below synapse's own
    // reserve, so the service is capped at the floor of descriptors::MIN_CAP (8)
    // connections, more than the few descriptors left after the ~15 synapse holds.
    let synapse = Daemon::spawn_with("synapse", &config, |exe, config| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -n 24 && exec \"$0\" --config \"$1\"")
            .arg(exe)
            .arg(config);
        cmd
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_greeting(addr, "a").await;

    // Hold connections until synapse cannot open more; each new one that it accepts but
    // cannot connect upstream is closed at once.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..80 {
        // Past the limit a connection is either closed unserved or left in the backlog.
        match tokio::time::timeout(Duration::from_secs(1), EchoConnection::open(addr)).await {
            Ok(Ok(c)) => held.push(c),
            _ => refused += 1,
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(
        refused >= 5,
        "the descriptor limit was never reached ({} held)",
        held.len()
    );
    drop(held);
    wait_greeting(addr, "a").await;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let status = admin_status(admin).await.unwrap();
    let backend = &status["services"]["web"]["backends"][0];
    assert_eq!(backend["state"], "healthy", "{status}");
    assert_eq!(backend["connect_failures"], 0, "{status}");
    // Which descriptor runs out first, the accepted client's or the upstream one's, depends
    // on how many synapse had open before the test; both must leave the backend alone.
    let log = synapse.output();
    assert!(
        log.contains("closing client connections unserved")
            || log.contains("accept failed; retrying"),
        "synapse never reported running out of descriptors:\n{log}"
    );
}

/// Log lines of `output` that contain `message` and name `service`.
fn lines_about(output: &str, message: &str, service: &str) -> usize {
    let named = format!("service={service}");
    output
        .lines()
        .filter(|l| l.contains(message) && l.contains(&named))
        .count()
}

#[tokio::test]
async fn an_etcd_outage_logs_watch_lost_and_resynced_once_per_service() {
    let mut etcd = EtcdServer::start().await;
    let (a, c) = (Backend::start("a").await, Backend::start("c").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "c", c.port());
    let (web_port, api_port) = (free_port(), free_port());
    let config = config_text(
        &etcd.endpoint(),
        &[("web", web_port), ("api", api_port)],
        "",
    );
    let synapse = spawn(&config);
    wait_greeting(format!("127.0.0.1:{web_port}").parse().unwrap(), "a").await;
    wait_greeting(format!("127.0.0.1:{api_port}").parse().unwrap(), "c").await;

    etcd.kill();
    wait_until("each service logs its lost watch", DEADLINE, || async {
        let out = synapse.output();
        ["web", "api"]
            .iter()
            .all(|s| lines_about(&out, "watch lost", s) == 1)
    })
    .await;
    etcd.restart().await;
    wait_until("each service logs its resync", DEADLINE, || async {
        let out = synapse.output();
        ["web", "api"]
            .iter()
            .all(|s| lines_about(&out, "resynced with etcd", s) == 1)
    })
    .await;
    let out = synapse.output();
    for s in ["web", "api"] {
        assert_eq!(
            lines_about(&out, "watch lost", s),
            1,
            "one line per outage, not per retry:\n{out}"
        );
    }
}
