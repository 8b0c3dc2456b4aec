//! The real `nerve` binary: `--check-config`, SIGTERM/SIGINT deregistration (also with etcd
//! partitioned away, and during a slow SIGHUP parse), and what an etcd outage leaves behind.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use testkit::{Backend, Daemon, EtcdServer, Link};

const BIN: &str = env!("CARGO_BIN_EXE_nerve");

/// nerve on `config_text`, not waited for (some tests expect it to fail at start).
fn spawn(config_text: &str) -> Daemon {
    Daemon::spawn("nerve", config_text, |_| {})
}

#[test]
fn check_config_prints_ok_or_the_error_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        yaml(
            &["http://127.0.0.1:2379".into()],
            "",
            &tcp_service("web", "w", 80),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        yaml(
            &["http://127.0.0.1:2379".into()],
            "shutdown_delay: soon",
            &tcp_service("web", "w", 80),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml")
            && err.contains("shutdown_delay")
            && err.contains("invalid duration"),
        "{err}"
    );

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("missing.yaml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

async fn signal_deregisters_and_exits_zero(signal: Signal) {
    let etcd = EtcdServer::start().await;
    let backend = Backend::start("web").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let mut nerve = spawn(&yaml(
        &endpoints,
        "",
        &format!(
            "{}{}",
            tcp_service("web", "a", backend.port()),
            tcp_service("api", "b", backend.port())
        ),
    ));
    testkit::wait_until("both registered", Duration::from_secs(15), || async {
        exists(&c, &key("web", "a")).await && exists(&c, &key("api", "b")).await
    })
    .await;
    nerve.signal(signal);
    let status = nerve
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("nerve exits");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        nerve.output()
    );
    assert!(keys(&c).await.is_empty(), "keys left after {signal}");
    assert!(
        nerve.output().contains("lease revoked"),
        "{}",
        nerve.output()
    );
}

#[tokio::test]
async fn sigterm_deregisters_everything_and_exits_zero() {
    signal_deregisters_and_exits_zero(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_deregisters_everything_and_exits_zero() {
    signal_deregisters_and_exits_zero(Signal::SIGINT).await;
}

#[tokio::test]
async fn an_invalid_config_at_start_exits_non_zero_naming_the_key() {
    let mut nerve = spawn(
        "etcd: {endpoints: [\"http://127.0.0.1:1\"]}\nservices: [{name: web, host: h, port: \
        80, checks: [{type: tcp}], rise: 0}]\n",
    );
    let status = nerve
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("nerve exits");
    assert!(!status.success());
    assert!(
        nerve.output().contains("services[0].rise"),
        "{}",
        nerve.output()
    );
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nerve.yaml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_check_flapping_below_rise_logs_its_failure_once_per_reason() {
    let etcd = EtcdServer::start().await;
    let endpoints = vec![etcd.endpoint()];
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(file("reason"), "db down").unwrap();
    // Passes and fails in turn, so with rise 2 it is never healthy; every failure says
    // what `reason` holds at that moment. `rounds` gets one line per run.
    let script = format!(
        "echo x >> {rounds}; if [ -e {passed} ]; then rm {passed}; cat {reason} >&2; exit 1; else touch {passed}; fi",
        rounds = file("rounds"),
        passed = file("passed"),
        reason = file("reason"),
    );
    let mut nerve = spawn(
        &yaml(
            &endpoints,
            "",
            &format!("  - {{name: web, host: 127.0.0.1, port: 1, check_interval: 50ms, rise: 2, checks: [{{type: \
                exec, command: [/bin/sh, -c, {script:?}]}}]}}\n"),
        ),
    );
    let rounds = || {
        std::fs::read_to_string(file("rounds"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let failure_lines = |nerve: &Daemon| {
        nerve
            .output()
            .lines()
            .filter(|l| l.contains("check failing"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let after = rounds();
    testkit::wait_until("ten rounds of checks", Duration::from_secs(10), || async {
        rounds() >= after + 10
    })
    .await;
    let logged = failure_lines(&nerve);
    assert!(
        logged.len() == 1 && logged[0].contains("db down"),
        "{}",
        nerve.output()
    );

    // Another reason is news: logged once, too.
    std::fs::write(file("reason"), "disk full").unwrap();
    testkit::wait_until("the new reason logged", Duration::from_secs(5), || async {
        failure_lines(&nerve).len() == 2
    })
    .await;
    let after = rounds();
    testkit::wait_until("ten more rounds", Duration::from_secs(10), || async {
        rounds() >= after + 10
    })
    .await;
    let logged = failure_lines(&nerve);
    assert!(
        logged.len() == 2 && logged[1].contains("disk full"),
        "{}",
        nerve.output()
    );
    nerve.signal(Signal::SIGTERM);
    let status = nerve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", nerve.output());
}

/// A SIGHUP whose file takes seconds to parse (YAML parse time grows with the square of the
/// nesting) must not hold a SIGTERM behind it: nerve exits within 2 s and has deregistered.
/// With this config a SIGTERM is documented to take at most request_timeout + dial_timeout
/// (1.3 s) when etcd cannot be reached; etcd is up here, so 2 s leaves a margin for a slow,
/// shared machine.
#[tokio::test]
async fn sigterm_during_a_slow_sighup_parse_exits_promptly_and_deregisters() {
    let etcd = EtcdServer::start().await;
    let backend = Backend::start("web").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let mut nerve = spawn(&yaml(
        &endpoints,
        "",
        &tcp_service("web", "a", backend.port()),
    ));
    wait_registered(&c, &key("web", "a")).await;
    // 60,000 nested `[`: about 8 s to parse in a debug build on this kind of machine.
    let deep = format!(
        "{}\nextra: {}",
        yaml(&endpoints, "", &tcp_service("web", "a", backend.port())),
        "[".repeat(60_000)
    );
    nerve.reload(&deep);
    testkit::wait_until("the reload started", Duration::from_secs(5), || async {
        nerve.output().contains("SIGHUP: reloading")
    })
    .await;
    nerve.signal(Signal::SIGTERM);
    let start = std::time::Instant::now();
    let status = nerve.wait_exit(Duration::from_secs(30)).await;
    let took = start.elapsed();
    eprintln!("measured: exit {took:?} after SIGTERM during a slow reload parse");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        nerve.output()
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}\n{}",
        nerve.output()
    );
    assert!(keys(&c).await.is_empty(), "{}", nerve.output());
}

/// SIGTERM while etcd is partitioned away (connections accepted, nothing answered): the
/// revoke is documented to be given up after request_timeout + dial_timeout (1.3 s with
/// this config), so nerve must exit within that plus a 0.5 s margin (start-up of the
/// signal handling, stopping the checks, process exit on a shared machine). The SIGTERM
/// lands while a keepalive is in flight, which used to hold the exit for its own timeout.
#[tokio::test]
async fn sigterm_while_etcd_is_partitioned_exits_within_the_documented_bound() {
    let etcd = EtcdServer::start().await;
    let link = Link::start(etcd.client_addr()).await;
    let backend = Backend::start("web").await;
    let c = client(&[etcd.endpoint()]).await;
    let mut nerve = spawn(&yaml(
        &[link.http_endpoint()],
        "",
        &tcp_service("web", "a", backend.port()),
    ));
    wait_registered(&c, &key("web", "a")).await;
    link.cut();
    testkit::wait_until(
        "nerve notices the partition",
        Duration::from_secs(10),
        || async { nerve.output().contains("lease keepalive failing") },
    )
    .await;
    nerve.signal(Signal::SIGTERM);
    let start = std::time::Instant::now();
    let status = nerve.wait_exit(Duration::from_secs(30)).await;
    let took = start.elapsed();
    eprintln!("measured: exit {took:?} after SIGTERM with etcd partitioned away");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        nerve.output()
    );
    let bound = Duration::from_millis(1300 + 500);
    assert!(took < bound, "took {took:?}\n{}", nerve.output());
}

/// How etcd goes away in [`a_dead_instance_is_gone_within_1s_of_etcds_return`].
enum Outage {
    /// Killed and restarted with its data: every old lease comes back with a fresh TTL.
    Killed,
    /// SIGSTOP/SIGCONT, a hung host: the old lease expires on etcd's side once it runs.
    Paused,
}

/// etcd goes away for longer than the TTL, an instance dies meanwhile (nerve marks it
/// unhealthy but cannot delete its key), etcd comes back: the dead instance's key must be
/// gone within 1 s of etcd's return, and the live one registered again. After a restart the
/// live key must never have been deleted (the old lease is revoked only once the live key
/// has moved to the new one). "Return" is the first answer to a probe reading the key every
/// 10 ms throughout, so neither etcd's start-up time nor the test's polling counts.
async fn a_dead_instance_is_gone_within_1s_of_etcds_return(outage: Outage) {
    let mut etcd = EtcdServer::start().await;
    let live = Backend::start("live").await;
    let mut dead = Backend::start("dead").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        tcp_service("web", "live", live.port()),
        tcp_service("web", "dead", dead.port())
    );
    let mut nerve = spawn(&yaml(&endpoints, "", &services));
    let (live_key, dead_key) = (key("web", "live"), key("web", "dead"));
    testkit::wait_until("both registered", Duration::from_secs(15), || async {
        exists(&c, &live_key).await && exists(&c, &dead_key).await
    })
    .await;
    let old_lease = get(&c, &live_key).await.map(|s| s.lease);
    let before_outage = revision(&c).await;
    match outage {
        Outage::Killed => etcd.kill(),
        Outage::Paused => etcd.pause(),
    }
    dead.stop().await;
    testkit::wait_until(
        "nerve sees the instance die and gives the lease up",
        Duration::from_secs(15),
        || async {
            let out = nerve.output();
            out.contains("lease lost")
                && out
                    .lines()
                    // The log is coloured: `instance=dead` has escapes inside.
                    .any(|l| l.contains(" unhealthy") && l.contains("dead"))
        },
    )
    .await;
    let probe = tokio::spawn(first_answers(endpoints.clone(), dead_key.clone()));
    match outage {
        Outage::Killed => etcd.restart().await,
        Outage::Paused => etcd.resume(),
    }
    let (answered, absent) = tokio::time::timeout(Duration::from_secs(15), probe)
        .await
        .expect("the dead key goes within 15 s")
        .expect("probe task");
    let gone = absent - answered;
    let back = testkit::time_until(
        "the live instance is registered under a new lease",
        Duration::from_secs(15),
        || async {
            get(&c, &live_key)
                .await
                .is_some_and(|s| Some(s.lease) != old_lease)
        },
    )
    .await
        + gone;
    eprintln!("measured: dead key gone {gone:?}, live key under the new lease {back:?} after etcd returned");
    assert!(
        gone < Duration::from_secs(1),
        "the dead key lasted {gone:?}\n{}",
        nerve.output()
    );
    if matches!(outage, Outage::Killed) {
        assert!(
            !deleted_since(&c, &live_key, before_outage).await,
            "the live key was deleted on the way\n{}",
            nerve.output()
        );
    }
    nerve.signal(Signal::SIGTERM);
    let status = nerve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", nerve.output());
    assert!(keys(&c).await.is_empty(), "{}", nerve.output());
}

/// Reads `key` every 10 ms (a new connection each time, 1 s timeout: an attempt in flight
/// is answered the moment etcd can) until etcd answers
/// without it; returns when etcd first answered and when it first answered "absent".
async fn first_answers(
    endpoints: Vec<String>,
    key: String,
) -> (std::time::Instant, std::time::Instant) {
    let mut answered = None;
    loop {
        let attempt = async {
            let mut c = etcd_client::Client::connect(&endpoints, None).await?;
            c.get(key.as_str(), None).await
        };
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            let now = std::time::Instant::now();
            let first = *answered.get_or_insert(now);
            if resp.kvs().is_empty() {
                return (first, now);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Multi-threaded so the probe runs while `restart` blocks in etcdctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_gone_within_1s_of_a_restarted_etcds_return() {
    a_dead_instance_is_gone_within_1s_of_etcds_return(Outage::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_gone_within_1s_of_a_hung_etcds_return() {
    a_dead_instance_is_gone_within_1s_of_etcds_return(Outage::Paused).await;
}

/// etcd restarted within the TTL: the lease survives, and the delete of an instance that
/// died meanwhile, retried with a backoff grown to seconds by then, starts over as soon as
/// the lease keepalive gets through again: gone within 1 s of etcd's return. The outage is
/// held for 6 s (a scenario length, not an assertion) so that the backoff has grown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_gone_within_1s_of_etcds_return_within_the_ttl() {
    let mut etcd = EtcdServer::start().await;
    let live = Backend::start("live").await;
    let mut dead = Backend::start("dead").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        tcp_service("web", "live", live.port()),
        tcp_service("web", "dead", dead.port())
    );
    let text = yaml(&endpoints, "", &services).replace("lease_ttl: 2s", "lease_ttl: 20s");
    let nerve = spawn(&text);
    let (live_key, dead_key) = (key("web", "live"), key("web", "dead"));
    testkit::wait_until("both registered", Duration::from_secs(15), || async {
        exists(&c, &live_key).await && exists(&c, &dead_key).await
    })
    .await;
    let lease = get(&c, &live_key).await.map(|s| s.lease);
    etcd.kill();
    dead.stop().await;
    testkit::wait_until(
        "nerve sees the instance die",
        Duration::from_secs(15),
        || async {
            nerve
                .output()
                .lines()
                .any(|l| l.contains(" unhealthy") && l.contains("dead"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let probe = tokio::spawn(first_answers(endpoints.clone(), dead_key.clone()));
    etcd.restart().await;
    let (answered, absent) = tokio::time::timeout(Duration::from_secs(15), probe)
        .await
        .expect("the dead key goes within 15 s")
        .expect("probe task");
    let gone = absent - answered;
    eprintln!("measured: dead key gone {gone:?} after etcd returned within the TTL");
    assert!(
        gone < Duration::from_secs(1),
        "the dead key lasted {gone:?}\n{}",
        nerve.output()
    );
    assert_eq!(get(&c, &live_key).await.map(|s| s.lease), lease);
    assert!(!nerve.output().contains("lease lost"), "{}", nerve.output());
}
