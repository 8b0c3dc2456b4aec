//! Readiness on the real binaries: `GET /ready` answers 503 naming what each program waits
//! for and 200 once it can serve, and a `Type=notify` systemd unit gets READY=1 at that
//! moment (a datagram on `NOTIFY_SOCKET`, which this test binds itself).

use std::net::SocketAddr;
use std::time::Duration;

use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer, Link};
use tokio::net::UnixDatagram;

const DEADLINE: Duration = Duration::from_secs(20);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn ready(admin: SocketAddr) -> (u16, serde_json::Value) {
    let reply = testkit::admin::get(admin, "/ready")
        .await
        .expect("GET /ready");
    let body = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body));
    (reply.status, body)
}

/// `synapse --probe-ready ADMIN`: (exit 0, stdout + stderr).
fn probe(admin: SocketAddr) -> (bool, String) {
    let out = std::process::Command::new(testkit::process::workspace_bin("synapse"))
        .arg("--probe-ready")
        .arg(admin.to_string())
        .output()
        .expect("run synapse --probe-ready");
    let text = testkit::process::combined(&out);
    (out.status.success(), text)
}

/// The datagrams systemd would get, as text.
async fn notifications(socket: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buf)).await
    {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[tokio::test]
async fn synapse_is_ready_once_every_service_has_backends_and_tells_systemd() {
    // etcd is cut off: nothing is known about `web`; `fallback` has default_servers.
    let etcd = EtcdServer::start().await;
    let link = Link::start(etcd.client_addr()).await;
    link.cut();
    let admin = free_port();
    let config = format!(
        "etcd:\n  endpoints: [\"{}\"]\nadmin: 127.0.0.1:{admin}\nservices:\n  \
         - name: web\n    listen: 127.0.0.1:{}\n  - name: fallback\n    listen: 127.0.0.1:{}\n    \
         default_servers: [{{host: 127.0.0.1, port: 9}}]\n",
        link.http_endpoint(),
        free_port(),
        free_port()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let _synapse = Daemon::start("synapse", &config, |cmd| {
        cmd.env("NOTIFY_SOCKET", &socket_path);
    })
    .await;
    let admin = loopback(admin);
    let (code, body) = ready(admin).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["waiting_for"], serde_json::json!(["web"]), "{body}");
    // The binary as its own probe (what a Kubernetes exec startupProbe runs).
    let (ok, said) = probe(admin);
    assert!(!ok, "--probe-ready passed before synapse was ready: {said}");
    assert!(said.contains("not ready (503)"), "{said}");
    let early = notifications(&socket).await;
    assert!(
        !early.iter().any(|n| n.contains("READY=1")),
        "READY=1 before every service had backends: {early:?}"
    );

    // etcd answers: web's (empty) registry view is a backend set.
    link.heal();
    wait_until("synapse is ready", DEADLINE, || async {
        ready(admin).await.0 == 200
    })
    .await;
    let (_, body) = ready(admin).await;
    assert_eq!(body["ready"], true, "{body}");
    let (ok, said) = probe(admin);
    assert!(ok, "--probe-ready failed once synapse was ready: {said}");
    let seen = std::sync::Mutex::new(early);
    wait_until("systemd is told READY=1", DEADLINE, || async {
        let got = notifications(&socket).await;
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(got);
        seen.iter().any(|n| n.contains("READY=1"))
    })
    .await;
}

#[tokio::test]
async fn nerve_is_ready_once_checks_ran_and_a_lease_is_held() {
    let etcd = EtcdServer::start().await;
    let link = Link::start(etcd.client_addr()).await;
    link.cut();
    let admin = free_port();
    let app = Backend::start("app").await;
    let config = format!(
        "etcd:\n  endpoints: [\"{}\"]\n  dial_timeout: 300ms\n  \
         request_timeout: 1s\nadmin: 127.0.0.1:{admin}\nservices:\n  - name: web\n    host: 127.0.0.1\n    \
         port: {}\n    instance_id: web-1\n    check_interval: 100ms\n    checks:\n      - type: tcp\n",
        link.http_endpoint(),
        app.port()
    );
    let _nerve = Daemon::nerve(&config).await;
    let admin = loopback(admin);
    // The checks run whatever etcd does; the lease needs etcd.
    wait_until("only the lease is missing", DEADLINE, || async {
        let (code, body) = ready(admin).await;
        code == 503 && body["waiting_for"] == serde_json::json!(["a lease from etcd"])
    })
    .await;
    link.heal();
    wait_until("nerve is ready", DEADLINE, || async {
        ready(admin).await.0 == 200
    })
    .await;
}
