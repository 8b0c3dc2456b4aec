//! Least-privilege etcd (deploy/etcd/roles.sh) with the real binaries: with authentication
//! on, nerve registers as user `nerve` and synapse routes as user `synapse`; synapse's user
//! cannot write anything, nerve's cannot write outside the registry prefix; a wrong
//! password is a clear error in the log, retried on a backoff rather than in a loop that
//! spams etcd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testkit::backend::greeting;
use testkit::{free_port, wait_until, Backend, Daemon, EtcdServer};

const DEADLINE: Duration = Duration::from_secs(20);

fn roles_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/etcd/roles.sh")
}

/// Runs roles.sh against `endpoint`; its stdout.
fn run_roles(endpoint: &str) -> String {
    let out = Command::new("bash")
        .arg(roles_script())
        .env("ETCDCTL_ENDPOINTS", endpoint)
        .env("ROOT_PASSWORD", "rootpw")
        .env("NERVE_PASSWORD", "nervepw")
        .env("SYNAPSE_PASSWORD", "synapsepw")
        .output()
        .expect("run roles.sh");
    assert!(
        out.status.success(),
        "roles.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl as `user:password`: (succeeded, stdout + stderr).
fn etcdctl_as(endpoint: &str, user: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--user", user])
        .args(args)
        .output()
        .expect("run etcdctl");
    let text = testkit::process::combined(&out);
    (out.status.success(), text)
}

/// nerve registering one instance (`web-1`, a tcp check) of an app on `port`.
fn nerve_config(etcd_block: &str, port: u16) -> String {
    format!(
        "{etcd_block}services:\n  - name: web\n    host: 127.0.0.1\n    port: {port}\n    \
         instance_id: web-1\n    check_interval: 100ms\n    rise: 1\n    checks:\n      - type: tcp\n"
    )
}

fn synapse_config(etcd_block: &str, listen: u16) -> String {
    format!("{etcd_block}services:\n  - name: web\n    listen: 127.0.0.1:{listen}\n")
}

/// Starts nerve and synapse on their etcd blocks and waits until synapse routes to the app.
async fn route_through(nerve_etcd: &str, synapse_etcd: &str) -> (Backend, Daemon, Daemon) {
    let app = Backend::start("app").await;
    let nerve = Daemon::nerve(&nerve_config(nerve_etcd, app.port())).await;
    let listen = free_port();
    let synapse = Daemon::synapse(&synapse_config(synapse_etcd, listen)).await;
    let listen = SocketAddr::from(([127, 0, 0, 1], listen));
    wait_until(
        "synapse routes to nerve's registration",
        DEADLINE,
        || async {
            greeting(listen, Duration::from_secs(2))
                .await
                .is_ok_and(|g| g == "app")
        },
    )
    .await;
    (app, nerve, synapse)
}

fn etcd_block(endpoint: &str, user: &str, password: &str) -> String {
    format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\n  username: {user}\n  password: {password}\n  \
         dial_timeout: 300ms\n  request_timeout: 1s\n"
    )
}

#[tokio::test]
async fn each_program_works_with_its_role_and_no_more() {
    let etcd = EtcdServer::start().await;
    let endpoint = etcd.endpoint();
    let said = run_roles(&endpoint);
    assert!(said.contains("authentication is on"), "{said}");
    // Idempotent: a second run keeps everything in place.
    run_roles(&endpoint);

    let _running = route_through(
        &etcd_block(&endpoint, "nerve", "nervepw"),
        &etcd_block(&endpoint, "synapse", "synapsepw"),
    )
    .await;

    let (ok, text) = etcdctl_as(
        &endpoint,
        "synapse:synapsepw",
        &["put", "/smartstack/services/web/x", "{}"],
    );
    assert!(
        !ok && text.contains("permission denied"),
        "synapse wrote: {text}"
    );
    let (ok, text) = etcdctl_as(
        &endpoint,
        "synapse:synapsepw",
        &["get", "--prefix", "/smartstack/services/"],
    );
    assert!(ok && text.contains("web-1"), "synapse cannot read: {text}");
    let (ok, text) = etcdctl_as(&endpoint, "nerve:nervepw", &["put", "/elsewhere", "x"]);
    assert!(
        !ok && text.contains("permission denied"),
        "nerve wrote outside its prefix: {text}"
    );
    let (ok, text) = etcdctl_as(
        &endpoint,
        "nerve:nervepw",
        &["put", "/smartstack/services/web/by-hand", "{}"],
    );
    assert!(ok, "nerve cannot write under its prefix: {text}");
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_retried_on_a_backoff() {
    let etcd = EtcdServer::start().await;
    let endpoint = etcd.endpoint();
    run_roles(&endpoint);
    let listen = free_port();
    let mut synapse = Daemon::synapse(&format!(
        "{}services:\n  - name: web\n    listen: 127.0.0.1:{listen}\n",
        etcd_block(&endpoint, "synapse", "not-the-password")
    ))
    .await;
    wait_until(
        "the log names the authentication failure",
        DEADLINE,
        || async {
            let log = synapse.output();
            log.contains("etcd refused the connection (check etcd.username/password")
                && log.contains("authentication failed")
        },
    )
    .await;
    assert!(
        !synapse.output().contains("etcd unreachable"),
        "a refused password is not an unreachable etcd:\n{}",
        synapse.output()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = synapse.output();
    if let Some(line) = log.lines().find(|l| l.contains("authentication failed")) {
        println!("the log says: {line}");
    }
    // Logged once per outage; the attempts behind it back off (0.1 s doubling up to 5 s,
    // the schedule for refusals etcd answers), which the registry's own tests measure.
    assert_eq!(log.matches("authentication failed").count(), 1, "{log}");
    assert!(synapse.is_running(), "synapse must keep running:\n{log}");
}

/// The same roles with TLS client certificates instead of passwords: etcd takes the user
/// from the certificate's common name (`CN=nerve`, `CN=synapse`).
#[tokio::test]
async fn the_roles_hold_with_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    testkit::certs::make(dir.path(), &["root", "nerve", "synapse"]);
    let p = |f: &str| dir.path().join(f).display().to_string();
    let etcd =
        EtcdServer::start_with(testkit::certs::etcd_with_client_certs(dir.path(), "root")).await;
    let endpoint = etcd.endpoint();
    let out = Command::new("bash")
        .arg(roles_script())
        .env("ETCDCTL_ENDPOINTS", &endpoint)
        .env("ETCDCTL_CACERT", p("ca.pem"))
        .env("ETCDCTL_CERT", p("root.pem"))
        .env("ETCDCTL_KEY", p("root-key.pem"))
        .env("ROOT_PASSWORD", "rootpw")
        .env("NERVE_PASSWORD", "nervepw")
        .env("SYNAPSE_PASSWORD", "synapsepw")
        .output()
        .expect("run roles.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls = |user: &str| {
        format!(
            "etcd:\n  endpoints: [\"{endpoint}\"]\n  tls: {{ca: {:?}, cert: {:?}, key: {:?}}}\n  \
             dial_timeout: 300ms\n  request_timeout: 1s\n",
            p("ca.pem"),
            p(&format!("{user}.pem")),
            p(&format!("{user}-key.pem"))
        )
    };
    let _running = route_through(&tls("nerve"), &tls("synapse")).await;
    let as_cert = |who: &str, args: &[&str]| {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint, "--cacert", &p("ca.pem")])
            .args([
                "--cert",
                &p(&format!("{who}.pem")),
                "--key",
                &p(&format!("{who}-key.pem")),
            ])
            .args(args)
            .output()
            .expect("run etcdctl");
        let text = testkit::process::combined(&out);
        (out.status.success(), text)
    };
    let (ok, text) = as_cert("synapse", &["put", "/smartstack/services/web/x", "{}"]);
    assert!(
        !ok && text.contains("permission denied"),
        "synapse wrote: {text}"
    );
    let (ok, text) = as_cert("nerve", &["put", "/elsewhere", "x"]);
    assert!(
        !ok && text.contains("permission denied"),
        "nerve wrote outside: {text}"
    );

    // No client certificate: refused by etcd's TLS; a warning says so, and it keeps running.
    let mut bare = Daemon::synapse(&format!(
        "etcd:\n  endpoints: [\"{endpoint}\"]\n  tls: {{ca: {:?}}}\n  dial_timeout: 300ms\n  \
         request_timeout: 1s\nservices:\n  - name: web\n    listen: 127.0.0.1:{}\n",
        p("ca.pem"),
        free_port()
    ))
    .await;
    wait_until("the refusal is logged", DEADLINE, || async {
        bare.output()
            .contains("etcd refused the TLS handshake (check etcd.tls.cert")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = bare.output();
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("etcd"))
    {
        println!("without a client certificate the log says: {line}");
    }
    assert!(bare.is_running(), "{log}");
}
