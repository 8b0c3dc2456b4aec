//! Maintenance through the admin API and through a file: out at once, whatever the health,
//! and back in when it ends.

mod common;

use std::time::Duration;

use common::*;
use nerve::Nerve;
use testkit::{Backend, EtcdServer};

#[tokio::test]
async fn the_admin_api_takes_services_out_and_back() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}{}",
        tcp_service("web", "w1", b.port()),
        tcp_service("web", "w2", b.port()),
        tcp_service("api", "a1", b.port())
    );
    let nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    let admin = nerve.admin_addr().unwrap();
    let (w1, w2, a1) = (key("web", "w1"), key("web", "w2"), key("api", "a1"));
    testkit::wait_until("all registered", Duration::from_secs(10), || async {
        keys(&c).await.len() == 3
    })
    .await;
    let api_before = get(&c, &a1).await.unwrap();

    assert_eq!(http(admin, "POST", "/services/web/disable").await.0, 200);
    // "At once": by the time the answer is read the registrar has been told; give it one request.
    let took = testkit::time_until("web deregistered", Duration::from_secs(2), || async {
        !exists(&c, &w1).await && !exists(&c, &w2).await
    })
    .await;
    eprintln!("measured: deregistered {took:?} after POST /services/web/disable");
    // /status learns of the delete when etcd's answer reaches the registrar, which can be
    // just after a reader already sees the key gone.
    testkit::wait_until(
        "status says deregistered",
        Duration::from_secs(2),
        || async { status_of(admin, "web", "w1").await["registered"].as_bool() == Some(false) },
    )
    .await;
    let s = status_of(admin, "web", "w1").await;
    assert_eq!(
        (
            s["healthy"].as_bool(),
            s["maintenance"].as_bool(),
            s["registered"].as_bool()
        ),
        (Some(true), Some(true), Some(false)),
        "{s}"
    );
    // Still checked while in maintenance, still out.
    let passes = s["consecutive_passes"].as_u64().unwrap();
    testkit::wait_until(
        "checks go on in maintenance",
        Duration::from_secs(5),
        || async {
            status_of(admin, "web", "w1").await["consecutive_passes"]
                .as_u64()
                .unwrap()
                > passes + 2
        },
    )
    .await;
    assert!(!exists(&c, &w1).await);
    assert_eq!(
        get(&c, &a1).await.unwrap().mod_revision,
        api_before.mod_revision,
        "other services untouched"
    );

    assert_eq!(http(admin, "POST", "/services/web/enable").await.0, 200);
    testkit::wait_until("web back", Duration::from_secs(2), || async {
        exists(&c, &w1).await && exists(&c, &w2).await
    })
    .await;

    assert_eq!(http(admin, "POST", "/disable").await.0, 200);
    testkit::wait_until("everything out", Duration::from_secs(2), || async {
        keys(&c).await.is_empty()
    })
    .await;
    let s = status_of(admin, "api", "a1").await;
    assert_eq!(s["maintenance_reasons"][0], "admin: all", "{s}");
    assert_eq!(http(admin, "POST", "/enable").await.0, 200);
    testkit::wait_until("everything back", Duration::from_secs(2), || async {
        keys(&c).await.len() == 3
    })
    .await;

    // Mistakes are answered, not acted on.
    assert_eq!(http(admin, "POST", "/services/nope/disable").await.0, 404);
    assert_eq!(http(admin, "GET", "/disable").await.0, 405);
    assert_eq!(http(admin, "GET", "/nothing").await.0, 404);
    assert_eq!(keys(&c).await.len(), 3);

    // Maintenance wins over health: an instance that turns healthy stays out.
    assert_eq!(http(admin, "POST", "/services/api/disable").await.0, 200);
    testkit::wait_until("api out", Duration::from_secs(2), || async {
        !exists(&c, &a1).await
    })
    .await;
    let (code, body) = http(admin, "GET", "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["lease"].as_str().is_some(), "{body}");
    assert_eq!(v["instances"].as_array().unwrap().len(), 3);
    nerve.shutdown().await;
}

#[tokio::test]
async fn a_maintenance_file_takes_the_instance_out_while_it_exists() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.down");
    std::fs::write(&file, "").unwrap();
    let svc = format!(
        "  - {{name: web, instance_id: w, host: 127.0.0.1, port: {}, check_interval: 100ms, maintenance_file: {:?}, \
        checks: [{{type: tcp}}]}}\n",
        b.port(),
        file.display().to_string()
    );
    let nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &svc))
        .await
        .unwrap();
    let admin = nerve.admin_addr().unwrap();
    testkit::wait_until("healthy", Duration::from_secs(5), || async {
        nerve.status()[0].healthy
    })
    .await;
    let s = status_of(admin, "web", "w").await;
    assert_eq!(s["maintenance"], true);
    assert!(
        s["maintenance_reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("file: "),
        "{s}"
    );
    assert!(
        !exists(&c, &key("web", "w")).await,
        "never registered while the file exists"
    );

    std::fs::remove_file(&file).unwrap();
    testkit::wait_until(
        "registered when the file goes",
        Duration::from_secs(5),
        || async { exists(&c, &key("web", "w")).await },
    )
    .await;
    std::fs::write(&file, "").unwrap();
    let took = testkit::time_until(
        "deregistered when the file comes back",
        Duration::from_secs(5),
        || async { !exists(&c, &key("web", "w")).await },
    )
    .await;
    eprintln!("measured: deregistered {took:?} after the maintenance file appeared (check_interval 100ms)");
    nerve.shutdown().await;
}

/// The effective state of each instance a switch touches, and what holds it out.
fn answer_of(body: &str) -> Vec<(String, bool, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let instances = v["instances"].as_array().cloned().unwrap_or_default();
    instances
        .iter()
        .map(|i| {
            let held: Vec<String> = i["held_by"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let id = i["id"].as_str().unwrap_or_default().to_owned();
            (id, i["maintenance"].as_bool().unwrap_or(false), held)
        })
        .collect()
}

/// `POST /disable` then `POST /services/web/enable`: the instance stays out (the switch for
/// all still holds it), and the answer says so instead of `"maintenance": false`.
#[tokio::test]
async fn each_switch_answers_the_effective_state_and_what_holds_it() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}",
        tcp_service("web", "web-a", b.port()),
        tcp_service("api", "api-a", b.port())
    );
    let nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    let admin = nerve.admin_addr().unwrap();
    wait_registered(&c, &key("web", "web-a")).await;

    let (code, body) = http(admin, "POST", "/disable").await;
    assert_eq!(code, 200);
    let all = vec!["admin: all".to_owned()];
    assert_eq!(
        answer_of(&body),
        vec![
            ("api-a".into(), true, all.clone()),
            ("web-a".into(), true, all.clone())
        ],
        "{body}"
    );
    testkit::wait_until("everything out", Duration::from_secs(2), || async {
        keys(&c).await.is_empty()
    })
    .await;
    let (code, body) = http(admin, "POST", "/services/web/enable").await;
    assert_eq!(code, 200);
    assert_eq!(
        answer_of(&body),
        vec![("web-a".into(), true, all.clone())],
        "{body}"
    );
    let (_, body) = http(admin, "POST", "/services/web/disable").await;
    let both = vec!["admin: all".to_owned(), "admin: service".to_owned()];
    assert_eq!(
        answer_of(&body),
        vec![("web-a".into(), true, both)],
        "{body}"
    );
    let (_, body) = http(admin, "POST", "/enable").await;
    let service = vec!["admin: service".to_owned()];
    assert_eq!(
        answer_of(&body),
        vec![
            ("api-a".into(), false, vec![]),
            ("web-a".into(), true, service)
        ],
        "{body}"
    );
    assert!(
        !exists(&c, &key("web", "web-a")).await,
        "web is still held out"
    );
    let (_, body) = http(admin, "POST", "/services/web/enable").await;
    assert_eq!(
        answer_of(&body),
        vec![("web-a".into(), false, vec![])],
        "{body}"
    );
    wait_registered(&c, &key("web", "web-a")).await;
    nerve.shutdown().await;
}

/// `GET /health` answers; `/status` says whether etcd answers and shows lease ids as
/// etcdctl does (hex), so an id copied from it works with `etcdctl lease timetolive`.
#[tokio::test]
async fn status_shows_etcd_reachability_and_hex_lease_ids() {
    init_logs();
    let mut etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let nerve = Nerve::start(config(
        &endpoints,
        "admin: 127.0.0.1:0",
        &tcp_service("web", "w", b.port()),
    ))
    .await
    .unwrap();
    let admin = nerve.admin_addr().unwrap();
    assert_eq!(
        http(admin, "GET", "/health").await,
        (200, "ok\n".to_owned())
    );
    wait_registered(&c, &key("web", "w")).await;
    let status = || async {
        let (_, body) = http(admin, "GET", "/status").await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let v = status().await;
    let lease = nerve.lease().map(|id| format!("{id:016x}"));
    assert_eq!(v["lease"].as_str(), lease.as_deref(), "{v}");
    assert_eq!(v["instances"][0]["lease"].as_str(), lease.as_deref(), "{v}");
    let live = etcd.etcdctl(&["lease", "timetolive", lease.as_deref().unwrap_or("0")]);
    assert!(
        live.contains("remaining"),
        "etcdctl does not know the lease: {live}"
    );
    assert_eq!(v["etcd"]["reachable"], true, "{v}");

    etcd.kill();
    testkit::wait_until(
        "status says etcd is unreachable",
        Duration::from_secs(10),
        || async { status().await["etcd"]["reachable"] == false },
    )
    .await;
    nerve.shutdown().await;
}

/// `GET /metrics` follows health, registration and maintenance as `/status` does.
#[tokio::test]
async fn metrics_follow_health_registration_and_maintenance() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let nerve = Nerve::start(config(
        &endpoints,
        "admin: 127.0.0.1:0",
        &tcp_service("web", "w", b.port()),
    ))
    .await
    .unwrap();
    let admin = nerve.admin_addr().unwrap();
    wait_registered(&c, &key("web", "w")).await;
    let sample = testkit::metric_sample;
    let instance = r#"{service="web",instance="w"}"#;
    let metrics = || async { http(admin, "GET", "/metrics").await };
    testkit::wait_until(
        "registered shows in the metrics",
        Duration::from_secs(10),
        || async {
            let (_, body) = metrics().await;
            sample(&body, &format!("nerve_instance_registered{instance}")) == Some(1.0)
        },
    )
    .await;
    let (code, body) = metrics().await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(&body, &format!("nerve_instance_healthy{instance}")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("nerve_instance_maintenance{instance}")),
        Some(0.0),
        "{body}"
    );
    assert_eq!(sample(&body, "nerve_etcd_connected"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "nerve_lease_held"), Some(1.0), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    http(admin, "POST", "/services/web/disable").await;
    testkit::wait_until(
        "maintenance shows in the metrics",
        Duration::from_secs(10),
        || async {
            let (_, body) = metrics().await;
            sample(&body, &format!("nerve_instance_maintenance{instance}")) == Some(1.0)
                && sample(&body, &format!("nerve_instance_registered{instance}")) == Some(0.0)
        },
    )
    .await;
    nerve.shutdown().await;
}

/// The per-instance API: one instance of two out and back, a runtime weight written into
/// its registration and shown in `/status`, and every mistake answered with what is wrong
/// (unknown id, an id two services share, a bad weight, a wrong method).
#[tokio::test]
async fn one_instance_is_switched_and_weighted_through_the_api() {
    init_logs();
    let etcd = EtcdServer::start().await;
    let b = Backend::start("b").await;
    let endpoints = vec![etcd.endpoint()];
    let c = client(&endpoints).await;
    let services = format!(
        "{}{}{}",
        tcp_service("web", "web-a", b.port()),
        tcp_service("web", "web-b", b.port()),
        tcp_service("api", "web-a", b.port())
    );
    let nerve = Nerve::start(config(&endpoints, "admin: 127.0.0.1:0", &services))
        .await
        .unwrap();
    let admin = nerve.admin_addr().unwrap();
    for (service, id) in [("web", "web-a"), ("web", "web-b"), ("api", "web-a")] {
        wait_registered(&c, &key(service, id)).await;
    }
    let call = |method: &'static str, path: &'static str, body: &'static str| async move {
        let reply = testkit::admin::request(admin, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", reply.body));
        (reply.status, json)
    };

    // web-b alone, by its id.
    let (code, body) = call("POST", "/instances/web-b/disable", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["instances"][0]["held_by"],
        serde_json::json!(["admin: instance"])
    );
    testkit::wait_until("web-b out, web-a in", Duration::from_secs(2), || async {
        !exists(&c, &key("web", "web-b")).await && exists(&c, &key("web", "web-a")).await
    })
    .await;
    // The service's switch and the instance's stack.
    call("POST", "/services/web/disable", "").await;
    let (_, body) = call("POST", "/services/web/enable", "").await;
    let b_entry = body["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == "web-b").cloned())
        .unwrap_or_default();
    assert_eq!(
        b_entry["held_by"],
        serde_json::json!(["admin: instance"]),
        "{body}"
    );
    call("POST", "/instances/web-b/enable", "").await;
    wait_registered(&c, &key("web", "web-b")).await;

    // web-a is ambiguous (web and api); named through its service it is not.
    let (code, body) = call("PUT", "/instances/web-a/weight", "5").await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/services/{name}"),
        "{body}"
    );
    let (code, body) = call("PUT", "/services/web/instances/web-a/weight", "5").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["instances"][0]["effective_weight"], 5, "{body}");
    testkit::wait_until(
        "the registration carries weight 5",
        Duration::from_secs(2),
        || async {
            get(&c, &key("web", "web-a"))
                .await
                .is_some_and(|s| s.value.contains("\"weight\":5"))
        },
    )
    .await;
    let status = status_of(admin, "web", "web-a").await;
    assert_eq!(
        (status["weight"].clone(), status["effective_weight"].clone()),
        (100.into(), 5.into())
    );
    let other = get(&c, &key("api", "web-a"))
        .await
        .map(|s| s.value)
        .unwrap_or_default();
    assert!(
        other.contains("\"weight\":100"),
        "api/web-a kept its weight: {other}"
    );

    // Mistakes.
    for (method, path, body, code, says) in [
        ("POST", "/instances/nope/disable", "", 404, "no instance"),
        (
            "PUT",
            "/instances/web-b/weight",
            "lots",
            400,
            "whole number",
        ),
        ("PUT", "/instances/web-b/weight", "", 400, "empty"),
        ("POST", "/instances/web-b/weight", "5", 405, "PUT"),
        ("GET", "/instances/web-b/disable", "", 405, "POST"),
    ] {
        let (got, answer) = call(method, path, body).await;
        assert_eq!(got, code, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{method} {path}: {error}");
    }
    nerve.shutdown().await;
}
