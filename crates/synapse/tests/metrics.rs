//! `GET /metrics` on the real binary: OpenMetrics text a Prometheus scrape accepts, with the
//! per-service and per-backend figures following the traffic and the registry.

mod common;

use std::net::SocketAddr;

use common::*;
use testkit::{free_port, metric_sample as sample, wait_until, Backend, Daemon, EtcdServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics`: the content type and the body.
async fn scrape(admin: SocketAddr) -> Option<(String, String)> {
    let mut http = tokio::net::TcpStream::connect(admin).await.ok()?;
    let request = b"GET /metrics HTTP/1.1\r\nHost: synapse\r\nConnection: close\r\n\r\n";
    http.write_all(request).await.ok()?;
    let mut response = String::new();
    http.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))?
        .to_owned();
    Some((content_type, body.to_owned()))
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
