//! Reloading the configuration: added instances start, removed ones deregister, changed
//! ones update, unchanged keys are not re-written (their mod_revision stays).

mod common;

use std::time::Duration;

use common::*;
use nerve::Nerve;
use nix::sys::signal::Signal;
use testkit::{Backend, Daemon, EtcdServer};

fn with_weight(service: &str, id: &str, port: u16, weight: u32) -> String {
    format!(
        "  - {{name: {service}, instance_id: {id}, host: 127.0.0.1, port: {port}, weight: {weight}, check_interval: \
        100ms, checks: [{{type: tcp}}]}}\n"
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
        .await
        .unwrap();
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
    let mut nerve = Daemon::spawn(
        "nerve",
        &yaml(
            &endpoints,
            "",
            &format!(
                "{}{}",
                with_weight("keep", "k", p, 100),
                with_weight("drop", "d", p, 100)
            ),
        ),
        |_| {},
    );
    testkit::wait_until("registered", Duration::from_secs(15), || async {
        keys(&c).await.len() == 2
    })
    .await;
    let kept = get(&c, &key("keep", "k")).await.unwrap();

    // An invalid file: logged, nothing changes.
    nerve.reload(&yaml(&endpoints, "", &with_weight("keep", "k", 0, 100)));
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

    nerve.reload(&yaml(
        &endpoints,
        "",
        &format!(
            "{}{}",
            with_weight("keep", "k", p, 100),
            with_weight("add", "a", p, 100)
        ),
    ));
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
    let config = yaml(
        &endpoints,
        "shutdown_delay: 1s",
        &with_weight("web", "w", b.port(), 100),
    );
    let mut nerve = Daemon::spawn("nerve", &config, |_| {});
    wait_registered(&c, &key("web", "w")).await;
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

/// Runs `nerve.reload(new)` while reading `keys` from `c` over and over; panics if a round
/// finds none of them (the instance unregistered). Returns the plan and the rounds made.
async fn reload_watching(
    nerve: &mut Nerve,
    new: nerve::NerveConfig,
    c: &etcd_client::Client,
    keys: &[String],
) -> (Result<nerve::Plan, nerve::ReloadError>, usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    let reload = async {
        let plan = nerve.reload(new).await;
        done.store(true, Ordering::SeqCst);
        plan
    };
    let watch = async {
        let mut reads = 0;
        // One more read after the reload returned: the old lease is revoked by then.
        loop {
            let finished = done.load(Ordering::SeqCst);
            let mut found = false;
            for key in keys {
                found |= exists(c, key).await;
            }
            assert!(found, "none of {keys:?} in etcd during the reload");
            reads += 1;
            if finished {
                return reads;
            }
        }
    };
    tokio::join!(reload, watch)
}

async fn ttl_of(c: &etcd_client::Client, lease: i64) -> i64 {
    c.clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .granted_ttl()
}

#[tokio::test]
async fn reload_to_another_etcd_moves_the_registrations_there() {
    init_logs();
    let (old, new) = (EtcdServer::start().await, EtcdServer::start().await);
    let b = Backend::start("b").await;
    let (old_ep, new_ep) = (vec![old.endpoint()], vec![new.endpoint()]);
    let (c_old, c_new) = (client(&old_ep).await, client(&new_ep).await);
    let services = format!(
        "{}{}",
        with_weight("web", "w", b.port(), 100),
        with_weight("api", "a", b.port(), 100)
    );
    let mut nerve = Nerve::start(config(&old_ep, "", &services)).await.unwrap();
    testkit::wait_until("registered", Duration::from_secs(10), || async {
        keys(&c_old).await.len() == 2
    })
    .await;
    let old_lease = nerve.lease().unwrap();

    let plan = nerve.reload(config(&new_ep, "", &services)).await.unwrap();
    assert!(plan.move_registrations);
    // The reload returns once the new cluster holds everything and the old lease is gone.
    assert_eq!(keys(&c_new).await.len(), 2);
    assert!(keys(&c_old).await.is_empty());
    let new_lease = nerve.lease().unwrap();
    assert_eq!(
        get(&c_new, &key("web", "w")).await.unwrap().lease,
        new_lease
    );
    assert!(
        c_old
            .clone()
            .lease_time_to_live(old_lease, None)
            .await
            .unwrap()
            .ttl()
            <= 0
    );
    nerve.shutdown().await;
    assert!(keys(&c_new).await.is_empty());
}

#[tokio::test]
async fn reload_to_the_same_etcd_with_another_timeout_never_unregisters() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let cfg = config(&endpoints, "", &with_weight("web", "w", b.port(), 100));
    let mut nerve = Nerve::start(cfg.clone()).await.unwrap();
    wait_registered(&c, &key("web", "w")).await;
    let old_lease = nerve.lease().unwrap();

    let mut changed = cfg.clone();
    changed.etcd.request_timeout = registry::ConfigDuration(Duration::from_millis(1500));
    let (plan, reads) = reload_watching(&mut nerve, changed, &c, &[key("web", "w")]).await;
    assert!(plan.unwrap().move_registrations);
    assert!(reads >= 2, "only {reads} reads");
    let new_lease = nerve.lease().unwrap();
    assert_ne!(new_lease, old_lease);
    assert_eq!(get(&c, &key("web", "w")).await.unwrap().lease, new_lease);
    assert_eq!(
        nerve.config().etcd.request_timeout.get(),
        Duration::from_millis(1500)
    );
    nerve.shutdown().await;
    assert!(keys(&c).await.is_empty());
}

#[tokio::test]
async fn reload_with_a_new_prefix_moves_the_keys() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let cfg = config(&endpoints, "", &with_weight("web", "w", b.port(), 100));
    let mut nerve = Nerve::start(cfg.clone()).await.unwrap();
    wait_registered(&c, &key("web", "w")).await;
    let mut moved = cfg.clone();
    moved.etcd.prefix = "/elsewhere/services".into();
    let moved_key = registry::key::instance_key("/elsewhere/services", "web", "w");
    // The new key exists before the old one goes: one of them is there on every round.
    let watched = [key("web", "w"), moved_key.clone()];
    let (plan, reads) = reload_watching(&mut nerve, moved, &c, &watched).await;
    assert!(plan.unwrap().prefix_changed);
    assert!(reads >= 2, "only {reads} reads");
    assert!(exists(&c, &moved_key).await);
    assert!(!exists(&c, &key("web", "w")).await);
    let status = nerve.status();
    assert_eq!(status[0].key, moved_key);
    nerve.shutdown().await;
    assert!(!exists(&c, &moved_key).await);
}

#[tokio::test]
async fn reload_with_a_new_lease_ttl_grants_a_new_lease_and_keeps_the_keys() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let cfg = config(&endpoints, "", &with_weight("web", "w", b.port(), 100));
    let mut nerve = Nerve::start(cfg.clone()).await.unwrap();
    wait_registered(&c, &key("web", "w")).await;
    let old_lease = nerve.lease().unwrap();
    assert_eq!(ttl_of(&c, old_lease).await, 2);

    let mut longer = cfg.clone();
    longer.lease_ttl = registry::ConfigDuration(Duration::from_secs(7));
    let (plan, reads) = reload_watching(&mut nerve, longer, &c, &[key("web", "w")]).await;
    assert!(plan.unwrap().move_registrations);
    assert!(reads >= 2, "only {reads} reads");
    let new_lease = nerve.lease().unwrap();
    assert_ne!(new_lease, old_lease);
    assert_eq!(ttl_of(&c, new_lease).await, 7);
    assert_eq!(get(&c, &key("web", "w")).await.unwrap().lease, new_lease);
    nerve.shutdown().await;
}

#[tokio::test]
async fn reload_moves_the_admin_api_and_rejects_a_port_in_use() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let services = with_weight("web", "w", b.port(), 100);
    let mut nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    let old = nerve.admin_addr().unwrap();
    assert_eq!(http(old, "GET", "/status").await.0, 200);

    // A port in use: the whole reload is rejected, even the service change in it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let before = nerve.config().clone();
    let rejected = nerve
        .reload(config(
            &endpoints,
            &format!("admin: {taken_addr}"),
            &format!("{services}{}", with_weight("api", "a", b.port(), 100)),
        ))
        .await;
    assert!(rejected.is_err());
    assert_eq!(nerve.config(), &before);
    assert_eq!(nerve.status().len(), 1);
    assert_eq!(nerve.admin_addr(), Some(old));
    assert_eq!(http(old, "GET", "/status").await.0, 200);
    drop(taken);

    let port = testkit::free_port();
    let plan = nerve
        .reload(config(
            &endpoints,
            &format!("admin: 127.0.0.1:{port}"),
            &services,
        ))
        .await
        .unwrap();
    assert!(plan.admin.is_some());
    let new = nerve.admin_addr().unwrap();
    assert_eq!(new.port(), port);
    assert_eq!(http(new, "GET", "/status").await.0, 200);
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old admin port still answers"
    );
    nerve.shutdown().await;
}

#[tokio::test]
async fn reload_to_an_unreachable_etcd_releases_the_old_lease_and_registers_when_it_comes() {
    init_logs();
    let old = EtcdServer::start().await;
    let mut new = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let (old_ep, new_ep) = (vec![old.endpoint()], vec![new.endpoint()]);
    let c_old = client(&old_ep).await;
    let services = with_weight("web", "w", b.port(), 100);
    let mut nerve = Nerve::start(config(&old_ep, "", &services)).await.unwrap();
    wait_registered(&c_old, &key("web", "w")).await;
    new.kill();

    let plan = tokio::time::timeout(
        Duration::from_secs(10),
        nerve.reload(config(&new_ep, "", &services)),
    )
    .await
    .expect("a reload to an unreachable etcd is bounded in time")
    .unwrap();
    assert!(plan.move_registrations);
    assert!(keys(&c_old).await.is_empty(), "the old lease was kept");

    new.restart().await;
    let c_new = client(&new_ep).await;
    testkit::wait_until(
        "registered on the new etcd once it is up",
        Duration::from_secs(15),
        || async { exists(&c_new, &key("web", "w")).await },
    )
    .await;
    nerve.shutdown().await;
    assert!(keys(&c_new).await.is_empty());
}

/// Every value `key` held after revision `from` (inclusive) up to now, oldest first; `None`
/// where it was deleted. Read from etcd's history, so no state can slip between two polls.
async fn history(c: &etcd_client::Client, key: &str, from: i64) -> Vec<Option<String>> {
    let now = c
        .clone()
        .get(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut values: Vec<Option<String>> = Vec::new();
    let mut last_mod = None;
    for revision in from..=now {
        let resp = c
            .clone()
            .get(
                key,
                Some(etcd_client::GetOptions::new().with_revision(revision)),
            )
            .await
            .unwrap();
        let kv = resp.kvs().first();
        let this_mod = kv.map(|kv| kv.mod_revision());
        // Other keys' writes bump the revision too; only changes of this key count.
        if values.is_empty() || this_mod != last_mod {
            values.push(kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()));
            last_mod = this_mod;
        }
    }
    values
}

fn port_of(value: &str) -> u16 {
    registry::InstanceRecord::parse(value.as_bytes(), "w")
        .unwrap_or_else(|e| panic!("{e}: {value}"))
        .port
}

#[tokio::test]
async fn reload_moving_an_instance_deregisters_it_until_rise_passes_at_the_new_address() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let dead = testkit::free_port();
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    // The same explicit instance_id at every address: a reload updates it in place.
    let at = |port: u16| {
        config(
            &endpoints,
            "",
            &format!("  - {{name: web, instance_id: w, host: 127.0.0.1, port: {port}, check_interval: 100ms, rise: \
                3, fall: 2, checks: [{{type: tcp, timeout: 200ms}}]}}\n"),
        )
    };
    let mut nerve = Nerve::start(at(first.port())).await.unwrap();
    let k = key("web", "w");
    wait_registered(&c, &k).await;
    let registered_at = get(&c, &k).await.unwrap().mod_revision;

    // To a dead port: out at once, and never put pointing there.
    let plan = nerve.reload(at(dead)).await.unwrap();
    assert_eq!(plan.update.len(), 1);
    testkit::wait_until(
        "deregistered after the move",
        Duration::from_secs(5),
        || async { !exists(&c, &k).await },
    )
    .await;
    testkit::wait_until(
        "several checks failed at the dead port",
        Duration::from_secs(5),
        || async { nerve.status()[0].consecutive_failures >= 3 },
    )
    .await;
    assert!(!exists(&c, &k).await, "registered at a dead port");

    // To a live port: back, but only after `rise` passes there.
    nerve.reload(at(second.port())).await.unwrap();
    let took = testkit::time_until(
        "registered at the second port",
        Duration::from_secs(10),
        || async {
            get(&c, &k)
                .await
                .is_some_and(|s| port_of(&s.value) == second.port())
        },
    )
    .await;
    // rise 3 at 100 ms: the first check runs at once, the third 200 ms later.
    assert!(
        took >= Duration::from_millis(200),
        "registered after only {took:?}"
    );

    // Between two live addresses too: never re-put at once, unchecked.
    nerve.reload(at(first.port())).await.unwrap();
    testkit::wait_until(
        "registered back at the first port",
        Duration::from_secs(10),
        || async {
            get(&c, &k)
                .await
                .is_some_and(|s| port_of(&s.value) == first.port())
        },
    )
    .await;

    let ports: Vec<Option<u16>> = history(&c, &k, registered_at)
        .await
        .iter()
        .map(|v| v.as_deref().map(port_of))
        .collect();
    assert_eq!(
        ports,
        [
            Some(first.port()),
            None,
            Some(second.port()),
            None,
            Some(first.port())
        ],
        "every value the key held (None: deleted); the dead port is {dead}"
    );
    nerve.shutdown().await;
}

/// A reload is prepared (everything that can fail: binding a new admin address) before it
/// is committed (cannot fail), so one rejected in preparation changes nothing, even with
/// every other kind of change in it: etcd settings and lease TTL (which would move the
/// registrations to a new lease), an added and a removed instance, a changed weight, a new
/// reconcile interval. Registrations (value, lease, mod_revision), configuration, status and
/// lease are as before, and shutdown reports the revoke of that same lease.
#[tokio::test]
async fn a_reload_rejected_in_preparation_changes_nothing() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        with_weight("web", "w", b.port(), 100),
        with_weight("api", "a", b.port(), 100)
    );
    let mut nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    testkit::wait_until("both registered", Duration::from_secs(10), || async {
        nerve.status().iter().all(|s| s.registered)
    })
    .await;
    let lease = nerve.lease().expect("a lease once registered");
    let stored = (
        get(&c, &key("web", "w")).await,
        get(&c, &key("api", "a")).await,
    );
    let (config_before, status_before) = (nerve.config().clone(), nerve.status());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut rejected = config(
        &endpoints,
        &format!("admin: {taken_addr}"),
        &format!(
            "{}{}",
            with_weight("web", "w", b.port(), 5),
            with_weight("new", "n", b.port(), 100)
        ),
    )
    .with_reconcile(Duration::from_millis(200));
    rejected.etcd.request_timeout = registry::ConfigDuration(Duration::from_secs(3));
    rejected.lease_ttl = registry::ConfigDuration(Duration::from_secs(3));
    let err = nerve.reload(rejected).await.unwrap_err();
    assert!(
        err.to_string().contains(&taken_addr.to_string()),
        "the error names the address: {err}"
    );

    assert_eq!(nerve.config(), &config_before);
    assert_eq!(nerve.lease(), Some(lease));
    // Longer than the rejected reconcile interval and a check interval: anything the reload
    // had started would show by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let now = (
        get(&c, &key("web", "w")).await,
        get(&c, &key("api", "a")).await,
    );
    assert_eq!(now, stored, "registrations changed");
    assert!(!exists(&c, &key("new", "n")).await);
    let strip = |mut v: Vec<nerve::InstanceStatus>| {
        // Checks keep running: only what a reload could change is compared.
        for s in &mut v {
            s.last_check = None;
            s.recent_checks.clear();
            s.consecutive_passes = 0;
        }
        v
    };
    assert_eq!(strip(nerve.status()), strip(status_before));
    drop(taken);
    let report = nerve.shutdown().await;
    assert_eq!(report.revoked, Some(lease));
    assert!(keys(&c).await.is_empty());
}
