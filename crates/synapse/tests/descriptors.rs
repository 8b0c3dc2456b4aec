//! The real `synapse` binary under descriptor limits (RLIMIT_NOFILE): the soft limit is
//! raised to the hard limit at start, and when even the hard limit cannot cover
//! `max_connections`, each service gets its share of the descriptors so that one service's
//! clients cannot starve another service.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::backend::{greeting, EchoConnection};
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// Runs synapse with RLIMIT_NOFILE set to `soft`:`hard` (`prlimit` execs, so the child's
/// PID is synapse's).
fn spawn_limited(config: &str, soft: u64, hard: u64) -> Daemon {
    Daemon::spawn_with("synapse", config, |exe, config| {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft}:{hard}"))
            .arg("--")
            .arg(exe)
            .arg("--config")
            .arg(config);
        cmd
    })
}

/// `(soft, hard)` RLIMIT_NOFILE of a process (`self` or a PID), from `/proc/<pid>/limits`.
fn nofile(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files line in:\n{limits}"));
    let value = |v: &str| match v {
        "unlimited" => u64::MAX,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("{v:?} in {line:?}: {e}")),
    };
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (value(fields[0]), value(fields[1]))
}

/// A config with `services` as `(name, port, max_connections)`; `None` keeps the default.
fn config_text(etcd: &str, admin: u16, services: &[(&str, u16, Option<u32>)]) -> String {
    let mut text = format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\n  dial_timeout: 300ms\n  request_timeout: 1s\n\
         \x20 keepalive_interval: 500ms\n  keepalive_timeout: 500ms\n\
         admin: 127.0.0.1:{admin}\nservices:\n"
    );
    for (name, port, max) in services {
        text.push_str(&format!(
            "  - name: {name}\n    listen: 127.0.0.1:{port}\n    connect_timeout: 300ms\n"
        ));
        if let Some(max) = max {
            text.push_str(&format!("    max_connections: {max}\n"));
        }
    }
    text
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_greeting(addr: SocketAddr, expected: &str) {
    wait_until(
        &format!("{addr} greets with {expected}"),
        DEADLINE,
        || async { greet(addr).await.is_ok_and(|n| n == expected) },
    )
    .await;
}

/// Started under systemd's default (soft 1024, hard higher), synapse would keep 1024: it
/// raises the soft limit to the hard one first thing, and says so.
#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_limit_at_start() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let (port, admin) = (free_port(), free_port());
    let config = config_text(&etcd.endpoint(), admin, &[("web", port, None)]);
    // Lowering the hard limit is always allowed; never above ours.
    let hard = nofile("self").1.min(4096);
    let synapse = spawn_limited(&config, 256, hard);
    wait_greeting(addr(port), "a").await;

    assert_eq!(
        nofile(&synapse.pid().to_string()),
        (hard, hard),
        "the soft limit was not raised:\n{}",
        synapse.output()
    );
    let log = synapse.output();
    let line = log
        .lines()
        .find(|l| l.contains("raised the soft descriptor limit"))
        .unwrap_or_else(|| panic!("the raise is not logged:\n{log}"));
    for field in [
        "old_soft=256".to_owned(),
        format!("soft={hard}"),
        format!("hard={hard}"),
    ] {
        assert!(line.contains(&field), "{field} missing from {line:?}");
    }
}

/// Issue 8's incident: with descriptors for a few hundred connections, slow clients piling
/// up on one service used them all and the other service's requests were reset. Each
/// service now gets its share: the slow clients wait in `web`'s backlog once `web` holds its
/// share, every `api` request is served, and the shortfall is logged with its numbers. A
/// reload that lowers `max_connections` below the limit lifts the caps.
#[tokio::test]
async fn slow_clients_on_one_service_do_not_starve_another_of_descriptors() {
    let etcd = EtcdServer::start().await;
    let (a, c) = (Backend::start("a").await, Backend::start("c").await);
    register(&etcd, "web", "a", a.port());
    register(&etcd, "api", "c", c.port());
    let (web_port, api_port, admin_port) = (free_port(), free_port(), free_port());
    let (web, api, admin) = (addr(web_port), addr(api_port), addr(admin_port));
    // Default max_connections (10,000 each): 40,000 descriptors needed, 256 there.
    let config = config_text(
        &etcd.endpoint(),
        admin_port,
        &[("web", web_port, None), ("api", api_port, None)],
    );
    let synapse = spawn_limited(&config, 256, 256);
    wait_greeting(web, "a").await;
    wait_greeting(api, "c").await;

    // Slow clients on web: each connection is held open; more come until one is not
    // served within a moment (it waits in the backlog, or is closed unserved).
    let mut held = Vec::new();
    while held.len() < 300 {
        match tokio::time::timeout(Duration::from_millis(500), EchoConnection::open(web)).await {
            Ok(Ok(c)) => held.push(c),
            _ => break,
        }
    }
    // And more pile up behind them.
    let mut queued = Vec::new();
    for _ in 0..50 {
        queued.push(TcpStream::connect(web).await.unwrap());
    }

    // Every api request is served, one after another and while some are held open.
    let mut failures = Vec::new();
    let mut served = 0;
    for _ in 0..100 {
        match greeting(api, Duration::from_secs(2)).await {
            Ok(name) if name == "c" => served += 1,
            other => failures.push(format!("{other:?}")),
        }
        if failures.len() >= 3 {
            break;
        }
    }
    let mut held_api = Vec::new();
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(2), EchoConnection::open(api)).await {
            Ok(Ok(c)) => held_api.push(c),
            Ok(Err(e)) => failures.push(format!("held api connection: {e}")),
            Err(_) => failures.push("held api connection: no greeting within 2s".to_owned()),
        }
        if failures.len() >= 3 {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{served} api requests served, {} failed while web held {} connections: {failures:?}\n{}",
        failures.len(),
        held.len(),
        synapse.output()
    );

    // web holds exactly its share, shown in /status; so does api's cap.
    let status = admin_status(admin).await.unwrap();
    let cap = |service: &str| status["services"][service]["effective_max_connections"].as_u64();
    let (web_cap, api_cap) = (cap("web"), cap("api"));
    assert_eq!(web_cap, Some(held.len() as u64), "{status}");
    assert!(api_cap.is_some_and(|c| c >= 20), "{status}");
    assert_eq!(
        status["services"]["web"]["backends"][0]["active"],
        held.len(),
        "{status}"
    );
    // The shortfall is logged with its numbers and the fix.
    let log = synapse.output();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("descriptor limit"))
        .unwrap_or_else(|| panic!("no warning about the descriptor limit:\n{log}"));
    for field in ["limit=256", "needed=40", "LimitNOFILE", "max_connections"] {
        assert!(warning.contains(field), "{field} missing from {warning:?}");
    }

    // The slow clients waited rather than failed: with the held ones gone, a queued one is
    // served.
    drop(held);
    let mut first = BufReader::new(queued.remove(0));
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), first.read_line(&mut line)).await;
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0) && line.trim_end() == "a",
        "a queued web client was not served: {read:?} {line:?}"
    );

    // A reload to max_connections the limit covers lifts the caps.
    synapse.reload(&config_text(
        &etcd.endpoint(),
        admin_port,
        &[("web", web_port, Some(40)), ("api", api_port, Some(40))],
    ));
    wait_until("the reload lifts the caps", DEADLINE, || async {
        admin_status(admin).await.is_some_and(|s| {
            ["web", "api"]
                .iter()
                .all(|n| s["services"][n]["effective_max_connections"].is_null())
        })
    })
    .await;
    assert!(
        synapse.output().contains("descriptor limit now covers"),
        "{}",
        synapse.output()
    );
    for c in &mut held_api {
        c.round_trip("after the reload").await.unwrap();
    }
}
