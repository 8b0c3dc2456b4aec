//! Reloading the configuration: added instances start, removed ones deregister, changed
//! ones update, unchanged keys are not re-written (their mod_revision stays).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nerve::Nerve;
use nix::sys::signal::Signal;
use testkit::{Backend, ChildProcess, EtcdServer};

fn with_weight(service: &str, id: &str, port: u16, weight: u32) -> String {
    format!(
        "  - {{name: {service}, instance_id: {id}, host: 127.0.0.1, port: {port}, weight: {weight}, check_interval: 100ms, checks: [{{type: tcp}}]}}\n"
    )
}

#[tokio::test]
async fn reload_in_process_adds_removes_changes_and_leaves_the_rest_alone() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let p = b.port();
    let mut nerve = Nerve::start(config(
        &endpoints,
        "",
        &format!(
            "{}{}{}",
            with_weight("keep", "k", p, 100),
            with_weight("change", "c", p, 100),
            with_weight("drop", "d", p, 100)
        ),
    ))
    .await
    .unwrap();
    testkit::wait_until("all registered", Duration::from_secs(10), || async {
        keys(&c).await.len() == 3
    })
    .await;
    let kept = get(&c, &key("keep", "k")).await.unwrap();

    let plan = nerve
        .reload(config(
            &endpoints,
            "",
            &format!(
                "{}{}{}",
                with_weight("change", "c", p, 7),
                with_weight("add", "a", p, 100),
                with_weight("keep", "k", p, 100)
            ),
        ))
        .await;
    assert_eq!(
        (
            plan.add.len(),
            plan.remove.len(),
            plan.update.len(),
            plan.unchanged.len()
        ),
        (1, 1, 1, 1)
    );
    testkit::wait_until("new state in etcd", Duration::from_secs(10), || async {
        let changed = get(&c, &key("change", "c")).await;
        !exists(&c, &key("drop", "d")).await
            && exists(&c, &key("add", "a")).await
            && changed.is_some_and(|s| s.value.contains("\"weight\":7"))
    })
    .await;
    // The changed instance kept its health: it was never deregistered on the way.
    assert!(nerve
        .status()
        .iter()
        .any(|s| s.service == "change" && s.healthy));
    assert_eq!(
        get(&c, &key("keep", "k")).await.unwrap().mod_revision,
        kept.mod_revision
    );
    nerve.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_file_and_an_invalid_file_keeps_the_old_config() {
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let p = b.port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nerve.yaml");
    std::fs::write(
        &path,
        yaml(
            &endpoints,
            "",
            &format!(
                "{}{}",
                with_weight("keep", "k", p, 100),
                with_weight("drop", "d", p, 100)
            ),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nerve"));
    cmd.arg("--config").arg(&path);
    let mut nerve = ChildProcess::spawn_logged("nerve", cmd, &dir.path().join("nerve.log"));
    testkit::wait_until("registered", Duration::from_secs(15), || async {
        keys(&c).await.len() == 2
    })
    .await;
    let kept = get(&c, &key("keep", "k")).await.unwrap();

    // An invalid file: logged, nothing changes.
    std::fs::write(
        &path,
        yaml(&endpoints, "", &with_weight("keep", "k", 0, 100)),
    )
    .unwrap();
    nerve.signal(Signal::SIGHUP);
    testkit::wait_until("rejection logged", Duration::from_secs(5), || async {
        nerve.output().contains("reload rejected")
    })
    .await;
    assert!(
        nerve.output().contains("services[0].port"),
        "{}",
        nerve.output()
    );
    assert!(nerve.is_running());
    assert_eq!(keys(&c).await.len(), 2);

    std::fs::write(
        &path,
        yaml(
            &endpoints,
            "",
            &format!(
                "{}{}",
                with_weight("keep", "k", p, 100),
                with_weight("add", "a", p, 100)
            ),
        ),
    )
    .unwrap();
    nerve.signal(Signal::SIGHUP);
    testkit::wait_until("reloaded", Duration::from_secs(10), || async {
        !exists(&c, &key("drop", "d")).await && exists(&c, &key("add", "a")).await
    })
    .await;
    assert_eq!(
        get(&c, &key("keep", "k")).await.unwrap().mod_revision,
        kept.mod_revision,
        "unchanged key re-written"
    );
    nerve.signal(Signal::SIGTERM);
    let status = nerve
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success());
    assert!(keys(&c).await.is_empty());
}

#[tokio::test]
async fn shutdown_delay_waits_after_deregistering() {
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nerve.yaml");
    std::fs::write(
        &path,
        yaml(
            &endpoints,
            "shutdown_delay: 1s",
            &with_weight("web", "w", b.port(), 100),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nerve"));
    cmd.arg("--config").arg(&path);
    let mut nerve = ChildProcess::spawn_logged("nerve", cmd, &dir.path().join("nerve.log"));
    testkit::wait_until("registered", Duration::from_secs(15), || async {
        exists(&c, &key("web", "w")).await
    })
    .await;
    nerve.signal(Signal::SIGTERM);
    testkit::wait_until("deregistered at once", Duration::from_secs(2), || async {
        !exists(&c, &key("web", "w")).await
    })
    .await;
    assert!(
        nerve.is_running(),
        "must wait shutdown_delay after deregistering"
    );
    let status = nerve
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits after the delay");
    assert!(status.success());
}
