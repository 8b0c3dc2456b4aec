//! etcd with TLS (server and client certificates made here with rcgen) and with
//! username/password authentication.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdServer};

/// Writes ca.pem, server.pem/server-key.pem, client.pem/client-key.pem into `dir`.
fn make_certs(dir: &Path) {
    testkit::certs::make(dir, &["client"]);
}

#[tokio::test]
async fn registers_through_etcd_with_tls_and_client_certificates() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let etcd =
        EtcdServer::start_with(testkit::certs::etcd_with_client_certs(dir.path(), "client")).await;
    assert!(etcd.endpoint().starts_with("https://"));
    let b = Backend::start("b").await;
    let text = yaml(&[etcd.endpoint()], "", &tcp_service("web", "w", b.port())).replace(
        "  dial_timeout:",
        &format!(
            "  tls: {{ca: {:?}, cert: {:?}, key: {:?}}}\n  dial_timeout:",
            p("ca.pem"),
            p("client.pem"),
            p("client-key.pem")
        ),
    );
    let config = nerve::config::parse(Path::new("tls.yaml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let nerve = Nerve::start(config).await.unwrap();
    testkit::wait_until("registered over TLS", Duration::from_secs(15), || async {
        etcd.etcdctl(&["get", "--prefix", PREFIX])
            .contains("/smartstack/services/web/w")
    })
    .await;
    nerve.shutdown().await;
    assert!(!etcd
        .etcdctl(&["get", "--prefix", PREFIX])
        .contains("/smartstack/services/web/w"));
}

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn registers_with_username_and_password_and_waits_out_a_wrong_password() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let endpoint = etcd.endpoint();
    etcdctl(&endpoint, &["user", "add", "root:rootpw"]);
    etcdctl(&endpoint, &["auth", "enable"]);
    let as_root = |args: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        etcdctl(&endpoint, &all)
    };
    let b = Backend::start("b").await;
    let with_password = |password: &str| {
        let text = yaml(
            std::slice::from_ref(&endpoint),
            "admin: 127.0.0.1:0",
            &tcp_service("web", "w", b.port()),
        )
        .replace(
            "  dial_timeout:",
            &format!("  username: root\n  password: {password}\n  dial_timeout:"),
        );
        nerve::config::parse(Path::new("auth.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    };

    // A wrong password: nerve runs, checks, and does not register (and does not crash).
    let wrong = Nerve::start(with_password("nope")).await.unwrap();
    testkit::wait_until(
        "healthy despite etcd refusing",
        Duration::from_secs(5),
        || async { wrong.status()[0].healthy },
    )
    .await;
    assert!(!wrong.status()[0].registered);
    assert!(!as_root(&["get", "--prefix", PREFIX]).contains("web/w"));
    wrong.shutdown().await;

    let nerve = Nerve::start(with_password("rootpw")).await.unwrap();
    testkit::wait_until("registered with auth", Duration::from_secs(15), || async {
        as_root(&["get", "--prefix", PREFIX]).contains("/smartstack/services/web/w")
    })
    .await;
    nerve.shutdown().await;
    assert!(!as_root(&["get", "--prefix", PREFIX]).contains("web/w"));
}
