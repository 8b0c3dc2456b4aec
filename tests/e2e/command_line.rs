//! The command line and the logs of both real binaries are one shape: `-c FILE` for both,
//! no default config path, `--help` naming the signals and `RUST_LOG`, logs without colour
//! codes in a file, `--log-format json` as one JSON object per line, an admin address
//! beyond loopback refused by both, and `--import-smartstack FILE` converting an Airbnb
//! SmartStack file into one that `--check-config` takes.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use testkit::process::workspace_bin;
use testkit::{free_port, wait_until, Daemon, EtcdServer};

const DEADLINE: Duration = Duration::from_secs(20);
const BINS: [&str; 2] = ["nerve", "synapse"];

fn config(bin: &str, endpoint: &str, top: &str) -> String {
    let etcd = format!("etcd:\n  endpoints: [\"{endpoint}\"]\n{top}\n");
    match bin {
        "nerve" => format!(
            "{etcd}services:\n  - {{name: web, host: 127.0.0.1, port: {}, checks: [{{type: tcp}}]}}\n",
            free_port()
        ),
        _ => format!("{etcd}services:\n  - {{name: web, listen: 127.0.0.1:{}}}\n", free_port()),
    }
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(workspace_bin(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

fn check(bin: &str, dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join(format!("{bin}.yaml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let out = run(bin, &["-c", &path.to_string_lossy(), "--check-config"]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.into_owned())
}

#[test]
fn both_take_dash_c_and_neither_runs_without_a_config() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for bin in BINS {
        let (ok, out) = check(bin, dir.path(), &config(bin, "http://127.0.0.1:2379", ""));
        assert!(
            ok && out.trim() == "ok",
            "{bin} -c FILE --check-config: {out}"
        );
        let bare = run(bin, &["--check-config"]);
        let err = String::from_utf8_lossy(&bare.stderr);
        assert!(
            !bare.status.success() && err.contains("--config"),
            "{bin} without -c: {err}"
        );
        let version = run(bin, &["--version"]);
        let out = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success() && out.starts_with(bin),
            "{bin} --version: {out}"
        );
    }
}

#[test]
fn help_names_the_signals_and_rust_log() {
    for bin in BINS {
        let out = run(bin, &["--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        for word in [
            "-c, --config <FILE>",
            "--log-format",
            "SIGHUP",
            "SIGTERM",
            "SIGINT",
            "RUST_LOG",
        ] {
            assert!(help.contains(word), "{bin} --help lacks {word}:\n{help}");
        }
    }
}

#[test]
fn an_admin_address_beyond_loopback_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for bin in BINS {
        let text = config(bin, "http://127.0.0.1:2379", "admin: 0.0.0.0:9000");
        let (ok, out) = check(bin, dir.path(), &text);
        assert!(
            !ok && out.contains("admin") && out.contains("loopback"),
            "{bin}: {out}"
        );
    }
}

/// An Airbnb nerve configuration shaped like the example in its README (not a copy).
const AIRBNB_NERVE: &str = r#"{
  "instance_id": "app-3",
  "statsd": {"host": "localhost", "port": 8125},
  "services": {
    "search": {
      "host": "10.0.5.3", "port": 9200,
      "reporter_type": "zookeeper", "zk_hosts": ["zk1:2181", "zk2:2181"],
      "zk_path": "/nerve/services/search/services",
      "check_interval": 1, "weight": 2, "haproxy_server_options": "backup",
      "labels": {"rack": "r12"},
      "checks": [{"type": "http", "uri": "/_health", "timeout": 0.5, "rise": 2, "fall": 3},
                 {"type": "mysql", "user": "check"}]
    }
  }
}"#;

/// An Airbnb synapse configuration shaped like the example in its README (not a copy).
const AIRBNB_SYNAPSE: &str = r#"{
  "services": {
    "search": {
      "discovery": {"method": "zookeeper", "hosts": ["zk1:2181"], "path": "/nerve/services/search/services"},
      "default_servers": [{"name": "search-fallback", "host": "10.0.5.99", "port": 9200}],
      "haproxy": {"port": 3400, "server_options": "check inter 2s rise 3 fall 2",
                  "listen": ["mode tcp", "balance leastconn", "timeout connect 300ms"]}
    }
  },
  "haproxy": {"reload_command": "service haproxy reload",
              "defaults": ["retries 2", "timeout client 30s", "option dontlognull"]}
}"#;

#[test]
fn both_convert_an_airbnb_file_that_their_check_config_takes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for (bin, json, dropped) in [
        (
            "nerve",
            AIRBNB_NERVE,
            &[
                "warning: statsd: no equivalent",
                "warning: services.search.haproxy_server_options: no equivalent",
                "warning: services.search.checks[1]: a \"mysql\" check has no equivalent",
            ][..],
        ),
        (
            "synapse",
            AIRBNB_SYNAPSE,
            &[
                "warning: haproxy.reload_command: no equivalent",
                "warning: haproxy.defaults[2]: \"option dontlognull\": no equivalent",
                "warning: services.search.haproxy.server_options: no equivalent (synapse balances in-process); dropped",
                "warning: services.search.default_servers[0].name: no equivalent",
            ][..],
        ),
    ] {
        let source = dir.path().join(format!("{bin}.conf.json"));
        std::fs::write(&source, json).unwrap_or_else(|e| panic!("write: {e}"));
        let out = run(bin, &["--import-smartstack", &source.to_string_lossy()]);
        let (yaml, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{bin}: {stderr}");
        assert!(
            yaml.contains("# fill in: was zookeeper zk1:2181"),
            "{bin}: {yaml}"
        );
        for line in dropped {
            assert!(
                stderr.lines().any(|l| l.starts_with(line)),
                "{bin}: no {line:?} in\n{stderr}"
            );
        }
        assert_eq!(stderr.lines().count(), dropped.len(), "{bin}: {stderr}");
        let (ok, checked) = check(bin, dir.path(), &yaml);
        assert!(ok && checked.trim() == "ok", "{bin}: {checked}\n{yaml}");

        let bad = dir.path().join(format!("{bin}-bad.json"));
        std::fs::write(&bad, r#"{"services": {"search": {"host": "h", "port": "x"}}}"#)
            .unwrap_or_else(|e| panic!("write: {e}"));
        let out = run(bin, &["--import-smartstack", &bad.to_string_lossy()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {err}");
        assert!(out.stdout.is_empty(), "{bin} printed a half conversion");
        assert!(
            err.starts_with(&format!("{}: services.search.", bad.display())),
            "{bin}: {err}"
        );
    }
}

/// Runs `bin -c FILE` with `args`, its output going to a file, until it has started;
/// stops it with SIGTERM and returns what it logged.
async fn log_of_a_run(bin: &str, endpoint: &str, args: &[&str]) -> String {
    let mut child = Daemon::start(bin, &config(bin, endpoint, ""), |cmd| {
        // Without NO_COLOR: what keeps colour out of the file must be that it is no terminal.
        cmd.args(args).env_remove("NO_COLOR");
    })
    .await;
    child.signal(Signal::SIGTERM);
    let status = child.wait_exit(DEADLINE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{bin}: {status:?}\n{}",
        child.output()
    );
    child.output()
}

#[tokio::test]
async fn text_logs_in_a_file_carry_no_colour_codes() {
    let etcd = EtcdServer::start().await;
    for bin in BINS {
        let log = log_of_a_run(bin, &etcd.endpoint(), &[]).await;
        assert!(log.contains("INFO"), "{bin}: {log}");
        assert!(
            !log.contains('\x1b'),
            "{bin} wrote an escape code into its log file:\n{log}"
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_level_and_message() {
    let etcd = EtcdServer::start().await;
    for bin in BINS {
        let log = log_of_a_run(bin, &etcd.endpoint(), &["--log-format", "json"]).await;
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines.len() >= 2, "{bin}: {log}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{bin}: not JSON ({e}): {line}"));
            for field in ["timestamp", "level", "message"] {
                assert!(v[field].is_string(), "{bin}: no {field} in {line}");
            }
        }
        assert!(
            log.contains(&format!("\"message\":\"{bin} started\"")),
            "{bin}: {log}"
        );
    }
}

/// nerve logs lease ids as etcdctl prints them (hex), so a logged id can be pasted into
/// `etcdctl lease timetolive`.
#[tokio::test]
async fn nerve_logs_lease_ids_as_etcdctl_prints_them() {
    let etcd = EtcdServer::start().await;
    let mut nerve = Daemon::spawn("nerve", &config("nerve", &etcd.endpoint(), ""), |_| {});
    wait_until("the lease is granted", DEADLINE, || async {
        nerve.output().contains("lease granted")
    })
    .await;
    let listed = etcd.etcdctl(&["lease", "list"]);
    let id = listed
        .lines()
        .nth(1)
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "etcdctl lists no lease: {listed}");
    let logged = format!("lease={id}");
    assert!(
        nerve.output().contains(&logged),
        "{logged} not in:\n{}",
        nerve.output()
    );
    nerve.signal(Signal::SIGTERM);
    let status = nerve.wait_exit(DEADLINE).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let revoked = nerve.output();
    assert!(
        revoked
            .lines()
            .any(|l| l.contains("revoked") && l.contains(&logged)),
        "{revoked}"
    );
}
