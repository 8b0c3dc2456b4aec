//! `GET /metrics` on the real binary: OpenMetrics text a Prometheus scrape accepts, with the
//! per-service and per-backend figures following the traffic and the registry.

mod common;

use std::net::SocketAddr;

use common::*;
use testkit::{free_port, metric_sample as sample, wait_until, Backend, Daemon, EtcdServer};

/// `GET /metrics`: the content type and the body.
async fn scrape(admin: SocketAddr) -> Option<(String, String)> {
    let reply = testkit::admin::get(admin, "/metrics").await.ok()?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    Some((reply.content_type, reply.body))
}

#[tokio::test]
async fn metrics_follow_connections_and_the_registry() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "etcd:\n  endpoints: [\"{}\"]\nadmin: 127.0.0.1:{admin}\nservices:\n  - name: web\n    listen: 127.0.0.1:{port}\n",
        etcd.endpoint()
    );
    let _synapse = Daemon::synapse(&config).await;
    let (admin, listen) = (
        SocketAddr::from(([127, 0, 0, 1], admin)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let (_, failed) = connect_many(listen, 5).await;
    assert!(failed.is_empty(), "{failed:?}");

    let (content_type, body) = scrape(admin).await.expect("a scrape");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let backend = r#"{service="web",backend="a"}"#;
    wait_until("the five connections are counted", DEADLINE, || async {
        let body = scrape(admin).await.map(|(_, b)| b).unwrap_or_default();
        sample(
            &body,
            &format!("synapse_backend_connections_total{backend}"),
        ) == Some(5.0)
    })
    .await;
    for (series, value) in [
        (format!("synapse_backend_up{backend}"), 1.0),
        (format!("synapse_backend_weight{backend}"), 100.0),
        (
            r#"synapse_backends{service="web",state="healthy"}"#.to_owned(),
            1.0,
        ),
        (
            r#"synapse_registry_connected{service="web"}"#.to_owned(),
            1.0,
        ),
        (
            r#"synapse_backend_source{service="web",source="etcd"}"#.to_owned(),
            1.0,
        ),
        (
            r#"synapse_unserved_connections_total{service="web"}"#.to_owned(),
            0.0,
        ),
    ] {
        assert_eq!(sample(&body, &series), Some(value), "{series} in:\n{body}");
    }
    assert!(body.contains("synapse_build_info{version=\""), "{body}");

    // A backend that leaves the registry (with no connection left) leaves the metrics.
    deregister(&etcd, "web", "a");
    wait_until("a's series are gone", DEADLINE, || async {
        let body = scrape(admin).await.map(|(_, b)| b).unwrap_or_default();
        !body.contains(backend) && body.contains("synapse_backends{")
    })
    .await;
}

/// The traffic counters on the real binary: connections, connect attempts by result,
/// retries, ejections, bytes (counted while a connection is still open) and the duration
/// histograms; then `metrics.per_backend: false`, by reload, drops the per-backend series.
#[tokio::test]
async fn traffic_is_counted_by_result_bytes_and_duration() {
    let etcd = EtcdServer::start().await;
    let a = Backend::start("a").await;
    register(&etcd, "web", "a", a.port());
    // Nothing listens there: every connect to it is refused.
    register(&etcd, "web", "dead", free_port());
    let (port, admin) = (free_port(), free_port());
    let config = |metrics: &str| {
        format!(
            "etcd:\n  endpoints: [\"{}\"]\nadmin: 127.0.0.1:{admin}\n{metrics}services:\n  - name: web\n    \
             listen: 127.0.0.1:{port}\n    balance: round_robin\n    retries: 2\n    eject_after: 2\n    \
             ejection_time: 60s\n",
            etcd.endpoint()
        )
    };
    let synapse = Daemon::synapse(&config("")).await;
    let (admin, listen) = (
        SocketAddr::from(([127, 0, 0, 1], admin)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let body = || async { scrape(admin).await.map(|(_, b)| b).unwrap_or_default() };
    let web = r#"{service="web"}"#;
    wait_until("both backends are known", DEADLINE, || async {
        sample(
            &body().await,
            r#"synapse_backends{service="web",state="healthy"}"#,
        ) == Some(2.0)
    })
    .await;

    // One connection stays open: its bytes must show before it closes.
    let mut open = testkit::backend::EchoConnection::open(listen)
        .await
        .expect("open");
    open.round_trip("ping").await.expect("round trip");
    let open_bytes = (5.0, (open.backend.len() + 1 + 5) as f64);
    wait_until(
        "the open connection's bytes are counted",
        DEADLINE,
        || async {
            let body = body().await;
            sample(
                &body,
                r#"synapse_bytes_total{service="web",direction="to_backend"}"#,
            ) == Some(open_bytes.0)
                && sample(
                    &body,
                    r#"synapse_bytes_total{service="web",direction="to_client"}"#,
                ) == Some(open_bytes.1)
        },
    )
    .await;
    assert_eq!(
        sample(&body().await, &format!("synapse_connections_active{web}")),
        Some(1.0)
    );
    drop(open);

    let (greeted, failed) = connect_many(listen, 9).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(greeted.iter().all(|g| g == "a"), "{greeted:?}");
    wait_until("all ten connections have ended", DEADLINE, || async {
        let body = body().await;
        sample(&body, &format!("synapse_connections_active{web}")) == Some(0.0)
            && sample(
                &body,
                &format!("synapse_connection_duration_seconds_count{web}"),
            ) == Some(10.0)
    })
    .await;
    let text = body().await;
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in:\n{text}"));
    assert_eq!(get(&format!("synapse_connections_total{web}")), 10.0);
    assert_eq!(
        get(r#"synapse_connect_attempts_total{service="web",result="ok"}"#),
        10.0
    );
    // Round robin sends connections to the dead backend until it is ejected after two.
    let refused = get(r#"synapse_connect_attempts_total{service="web",result="refused"}"#);
    assert_eq!(refused, 2.0, "{text}");
    assert_eq!(get(&format!("synapse_retries_total{web}")), refused);
    assert_eq!(get(&format!("synapse_ejections_total{web}")), 1.0);
    assert_eq!(
        get(r#"synapse_backends{service="web",state="ejected"}"#),
        1.0
    );
    assert_eq!(
        get(r#"synapse_backend_up{service="web",backend="dead"}"#),
        0.0
    );
    assert_eq!(
        get(r#"synapse_backend_connect_failures_total{service="web",backend="dead"}"#),
        2.0
    );
    assert_eq!(
        get(&format!("synapse_connect_duration_seconds_count{web}")),
        10.0
    );
    assert_eq!(
        get(r#"synapse_connect_duration_seconds_bucket{le="+Inf",service="web"}"#),
        10.0
    );
    // The nine greetings ("a\n") after the open connection's exchange.
    let to_client = open_bytes.1 + 9.0 * 2.0;
    assert_eq!(
        get(r#"synapse_bytes_total{service="web",direction="to_client"}"#),
        to_client
    );
    assert_eq!(
        get(r#"synapse_backend_bytes_total{service="web",backend="a",direction="to_client"}"#),
        to_client
    );
    assert!(get("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(get("process_open_fds") > 0.0, "{text}");
    assert_eq!(get(&format!("synapse_replays_total{web}")), 0.0);

    synapse.reload(&config("metrics:\n  per_backend: false\n"));
    wait_until("the per-backend series are gone", DEADLINE, || async {
        let body = body().await;
        !body.contains("synapse_backend_up") && body.contains("synapse_connections_total{")
    })
    .await;
}
