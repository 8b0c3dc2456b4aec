//! `GET /metrics` counts what happens (checks, health transitions, registry writes, lost
//! leases, failed keepalives) as it happens, drops the series of an instance a reload removes,
//! and `/status` keeps the last rounds of checks for the dashboard.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdServer};

async fn scrape(admin: SocketAddr) -> String {
    let (code, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of `series` in the scrape `body`; absent counts as a failure of the test.
fn value(body: &str, series: &str) -> f64 {
    testkit::metric_sample(body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// The value of `series` now; `None` while it is absent.
async fn now(admin: SocketAddr, series: &str) -> Option<f64> {
    testkit::metric_sample(&scrape(admin).await, series)
}

#[tokio::test]
async fn checks_transitions_writes_and_lost_leases_are_counted() {
    init_logs();
    let mut etcd = EtcdServer::start().await;
    let mut dying = Backend::start("dying").await;
    let stays = Backend::start("stays").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let both = format!(
        "{}{}",
        tcp_service("web", "w", dying.port()),
        tcp_service("web", "s", stays.port())
    );
    let mut nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &both))
        .await
        .unwrap();
    let admin = nerve.admin_addr().unwrap();
    wait_registered(&c, &key("web", "w")).await;
    wait_registered(&c, &key("web", "s")).await;

    let w = r#"service="web",instance="w""#;
    let passed = format!(r#"nerve_checks_total{{{w},check="tcp",result="pass"}}"#);
    let failed = format!(r#"nerve_checks_total{{{w},check="tcp",result="fail"}}"#);
    let to_healthy = format!(r#"nerve_health_transitions_total{{{w},to="healthy"}}"#);
    let to_unhealthy = format!(r#"nerve_health_transitions_total{{{w},to="unhealthy"}}"#);
    let puts = r#"nerve_registry_writes_total{op="put"}"#;
    let deletes = r#"nerve_registry_writes_total{op="delete"}"#;
    // Checks run every 100 ms: more passes than /status keeps rounds.
    testkit::wait_until("35 passes counted", Duration::from_secs(10), || async {
        now(admin, &passed).await.is_some_and(|v| v >= 35.0)
    })
    .await;
    let body = scrape(admin).await;
    assert_eq!(value(&body, &failed), 0.0, "{body}");
    assert_eq!(value(&body, &to_healthy), 1.0, "{body}");
    assert_eq!(value(&body, &to_unhealthy), 0.0, "{body}");
    let durations = format!(r#"nerve_check_duration_seconds_count{{{w},check="tcp"}}"#);
    assert!(value(&body, &durations) >= 35.0, "{body}");
    // One put per instance; nothing was deleted yet.
    assert!(value(&body, puts) >= 2.0, "{body}");
    assert_eq!(value(&body, deletes), 0.0, "{body}");
    assert!(
        value(&body, "process_resident_memory_bytes") > 1_000_000.0,
        "{body}"
    );

    let status = status_of(admin, "web", "w").await;
    assert_eq!(
        (status["rise"].as_u64(), status["fall"].as_u64()),
        (Some(2), Some(2))
    );
    let recent = status["recent_checks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(recent.len(), 30, "{status}");
    let mut previous = 0;
    for round in &recent {
        assert_eq!(round["passed"], true, "{status}");
        assert!(round["reason"].is_null(), "{status}");
        let took = round["duration_ms"].as_f64().unwrap();
        // The check's timeout is 200 ms; a loaded machine may add to the round.
        assert!((0.0..1000.0).contains(&took), "{status}");
        let at = round["at_unix_ms"].as_u64().unwrap();
        assert!(at >= previous, "oldest first: {status}");
        previous = at;
    }

    dying.stop().await;
    testkit::wait_until(
        "the failures, the transition and the deregistration are counted",
        Duration::from_secs(10),
        || async {
            let body = scrape(admin).await;
            value(&body, &failed) >= 2.0
                && value(&body, &to_unhealthy) == 1.0
                && value(&body, deletes) == 1.0
        },
    )
    .await;
    let status = status_of(admin, "web", "w").await;
    let last = status["recent_checks"]
        .as_array()
        .and_then(|r| r.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["passed"], false, "{status}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("connect 127.0.0.1:"), "{status}");
    assert_eq!(value(&scrape(admin).await, &to_healthy), 1.0);

    let puts_before = value(&scrape(admin).await, puts);
    let lease = nerve.lease().unwrap();
    assert_eq!(value(&scrape(admin).await, "nerve_leases_lost_total"), 0.0);
    etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
    testkit::wait_until(
        "the lost lease and the re-put are counted",
        Duration::from_secs(10),
        || async {
            let body = scrape(admin).await;
            value(&body, "nerve_leases_lost_total") == 1.0 && value(&body, puts) > puts_before
        },
    )
    .await;

    nerve
        .reload(config(
            &endpoints,
            "admin: 127.0.0.1:0",
            &tcp_service("web", "w", dying.port()),
        ))
        .await
        .unwrap();
    let body = scrape(admin).await;
    assert!(!body.contains(r#"instance="s""#), "{body}");
    assert!(body.contains(&to_unhealthy), "{body}");

    let keepalive_failures = "nerve_lease_keepalive_failures_total";
    let before = value(&scrape(admin).await, keepalive_failures);
    etcd.kill();
    testkit::wait_until(
        "failed keepalives are counted",
        Duration::from_secs(10),
        || async {
            now(admin, keepalive_failures)
                .await
                .is_some_and(|v| v > before)
        },
    )
    .await;
    nerve.shutdown().await;
}
