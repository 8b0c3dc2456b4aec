//! Each check type passing and failing, run directly and through a whole nerve against etcd.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nerve::{run_all, Check, Nerve, ServiceConfig};
use testkit::{Backend, EtcdServer};

/// The service parsed from one YAML list item (with a dummy etcd block around it).
fn service(item: &str) -> ServiceConfig {
    let text = format!("etcd: {{endpoints: [\"http://127.0.0.1:2379\"]}}\nservices:\n{item}");
    let mut c =
        nerve::config::parse(Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.services.remove(0)
}

/// The failure reason as logs and `/status` show it.
async fn run(item: &str) -> Result<(), String> {
    let s = service(item);
    let checks: Vec<Check> = s.checks.iter().map(|c| Check::new(&s, c)).collect();
    run_all(&checks).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn tcp_passes_on_a_listener_and_fails_on_a_closed_port() {
    let b = Backend::start("x").await;
    assert_eq!(
        run(&format!(
            "  - {{name: s, host: 127.0.0.1, port: {}, checks: [{{type: tcp}}]}}\n",
            b.port()
        ))
        .await,
        Ok(())
    );
    let closed = testkit::free_port();
    let err = run(&format!(
        "  - {{name: s, host: 127.0.0.1, port: {closed}, checks: [{{type: tcp}}]}}\n"
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("connect 127.0.0.1") && err.contains("refused"),
        "{err}"
    );
    // A name that does not resolve is a failure with that reason, not a crash.
    let err = run("  - {name: s, host: no-such-host.invalid, port: 80, checks: [{type: tcp}]}\n")
        .await
        .unwrap_err();
    assert!(err.contains("no-such-host.invalid"), "{err}");
    // The tcp check's own port wins over the service's.
    assert_eq!(
        run(&format!(
            "  - {{name: s, host: 127.0.0.1, port: {closed}, checks: [{{type: tcp, port: {}}}]}}\n",
            b.port()
        ))
        .await,
        Ok(())
    );
}

#[tokio::test]
async fn http_checks_status_body_host_and_headers() {
    let server = HttpServer::start(200, "all good").await;
    let port = server.addr.port();
    let item = |check: &str| {
        format!("  - {{name: s, host: 127.0.0.1, port: {port}, checks: [{check}]}}\n")
    };

    assert_eq!(run(&item("{type: http, path: /health, host: web.internal, headers: {X-Probe: nerve}, expect_body: \
        good}")).await, Ok(()));
    let req = server.last_request();
    assert!(req.starts_with("GET /health HTTP/1.1"), "{req}");
    assert!(
        req.to_ascii_lowercase().contains("host: web.internal"),
        "{req}"
    );
    assert!(req.to_ascii_lowercase().contains("x-probe: nerve"), "{req}");

    let err = run(&item("{type: http, expect_body: bad}"))
        .await
        .unwrap_err();
    assert!(err.contains("body does not contain \"bad\""), "{err}");

    assert_eq!(run(&item("{type: http, method: POST}")).await, Ok(()));
    assert!(server.last_request().starts_with("POST / "));

    server.set_status(503);
    let err = run(&item("{type: http}")).await.unwrap_err();
    assert!(err.contains("status 503, expected 200-399"), "{err}");
    assert_eq!(
        run(&item("{type: http, expect_status: [200, \"500-503\"]}")).await,
        Ok(())
    );

    server.set_status(302);
    assert_eq!(run(&item("{type: http}")).await, Ok(()));
    assert!(run(&item("{type: http, expect_status: 200}"))
        .await
        .is_err());

    let closed = testkit::free_port();
    let err = run(&format!(
        "  - {{name: s, host: 127.0.0.1, port: {closed}, checks: [{{type: http}}]}}\n"
    ))
    .await
    .unwrap_err();
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test]
async fn http_against_a_server_that_never_answers_times_out_and_closes_the_connection() {
    use tokio::io::AsyncReadExt;
    // Accepts but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    let item = format!(
        "  - {{name: s, host: 127.0.0.1, port: {port}, checks: [{{type: http, timeout: 200ms}}]}}\n"
    );
    let check = tokio::spawn(async move { run(&item).await });
    let (mut accepted, _) = listener.accept().await.unwrap();
    let err = check.await.unwrap().unwrap_err();
    assert!(err.contains("timed out after 200ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A check that timed out must not keep its socket: the server sees the request, then EOF.
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), accepted.read_to_end(&mut seen)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the check's connection is still open: {read:?}"
    );
}

#[tokio::test]
async fn exec_passes_on_exit_0_and_fails_with_the_stderr_tail() {
    let item = |command: &str, timeout: &str| {
        format!("  - {{name: s, host: 127.0.0.1, port: 1, checks: [{{type: exec, command: {command}, timeout: \
            {timeout}}}]}}\n")
    };
    assert_eq!(run(&item("[/bin/true]", "1s")).await, Ok(()));
    let err = run(&item(
        "[/bin/sh, -c, \"echo noise; echo database is down >&2; exit 3\"]",
        "1s",
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("exit status 3") && err.ends_with("database is down"),
        "{err}"
    );
    // Arguments are passed as they are, and the instance is in the environment.
    assert_eq!(
        run(&item(
            "[/bin/sh, -c, \"test \\\"$NERVE_PORT\\\" = 1 && test \\\"$1\\\" = 'a b'\", sh, \"a \
        b\"]",
            "1s"
        ))
        .await,
        Ok(())
    );

    let err = run(&item("[/no/such/program]", "1s")).await.unwrap_err();
    assert!(err.contains("cannot run \"/no/such/program\""), "{err}");

    let started = Instant::now();
    let err = run(&item("[/bin/sleep, \"10\"]", "200ms"))
        .await
        .unwrap_err();
    assert!(err.ends_with("timed out after 200ms"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the check must be killed at its timeout"
    );
    // Killed at its timeout, it still says what it was doing: both are in the reason.
    let started = Instant::now();
    let err = run(&item(
        "[/bin/sh, -c, \"echo opening /var/db >&2; echo waiting for the db lock >&2; sleep 10\"]",
        "500ms",
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("timed out after 500ms")
            && err.ends_with("opening /var/db\nwaiting for the db lock"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the check must be killed at its timeout"
    );
}

/// Whether `pid` is still running (gone or a zombie waiting to be reaped: not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn an_exec_check_killed_at_its_timeout_takes_what_it_started_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A shell that starts a long job in the background, then waits itself.
    let script = format!("sleep 60 & echo $! > {}; sleep 60", pid_file.display());
    let item = format!(
        "  - {{name: s, host: 127.0.0.1, port: 1, checks: [{{type: exec, command: [/bin/sh, -c, {script:?}], \
        timeout: 300ms}}]}}\n"
    );
    let err = run(&item).await.unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    testkit::wait_until(
        "the check's background job is killed",
        Duration::from_secs(5),
        || async { !running(pid) },
    )
    .await;
}

#[tokio::test]
async fn every_check_must_pass() {
    let b = Backend::start("x").await;
    let item = |second: &str| {
        format!(
            "  - {{name: s, host: 127.0.0.1, port: {}, checks: [{{type: tcp}}, {second}]}}\n",
            b.port()
        )
    };
    assert_eq!(
        run(&item("{type: exec, command: [/bin/true]}")).await,
        Ok(())
    );
    let err = run(&item("{type: exec, command: [/bin/false]}"))
        .await
        .unwrap_err();
    assert!(err.contains("exec /bin/false"), "{err}");
}

#[tokio::test]
async fn an_exec_check_that_cannot_run_keeps_nerve_up_and_shows_why() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let http = HttpServer::start(200, "ok").await;
    let services = format!(
        "  - {{name: broken, host: 127.0.0.1, port: 1, check_interval: 100ms, \
             checks: [{{type: exec, command: [/no/such/check]}}]}}\n\
         \x20 - {{name: web, host: 127.0.0.1, port: {}, check_interval: 100ms, \
             checks: [{{type: http, path: /ok}}]}}\n",
        http.addr.port()
    );
    let nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    let web_key = key("web", &format!("127.0.0.1:{}", http.addr.port()));
    testkit::wait_until(
        "http-checked service registered",
        Duration::from_secs(10),
        || async { exists(&c, &web_key).await },
    )
    .await;
    let admin = nerve.admin_addr().unwrap();
    let broken = status_of(admin, "broken", "127.0.0.1:1").await;
    assert_eq!(broken["healthy"], false);
    assert_eq!(broken["registered"], false);
    assert_eq!(broken["last_check"]["passed"], false);
    assert!(
        broken["last_check"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot run"),
        "{broken}"
    );
    assert!(broken["consecutive_failures"].as_u64().unwrap() >= 1);
    assert!(!exists(&c, &key("broken", "127.0.0.1:1")).await);

    http.set_status(500);
    testkit::wait_until(
        "http failure deregisters",
        Duration::from_secs(5),
        || async { !exists(&c, &web_key).await },
    )
    .await;
    let web = status_of(admin, "web", &format!("127.0.0.1:{}", http.addr.port())).await;
    assert!(
        web["last_check"]["reason"]
            .as_str()
            .unwrap()
            .contains("status 500"),
        "{web}"
    );
    nerve.shutdown().await;
}
