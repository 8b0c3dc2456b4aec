//! Real etcd servers for tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ChildProcess;
use crate::{free_port, wait_until};

/// Extra command-line flags for every member, e.g. TLS or auth settings.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Appended to etcd's command line.
    pub extra_args: Vec<String>,
    /// `https` instead of `http` for client URLs.
    pub client_tls: bool,
    /// Flags every `etcdctl` call needs (e.g. `--cacert`, `--user`).
    pub etcdctl_args: Vec<String>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Option<ChildProcess>,
}

/// A single-member etcd; see [`EtcdCluster`] for more members.
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl EtcdServer {
    pub async fn start() -> Self {
        Self::start_with(EtcdOptions::default()).await
    }

    pub async fn start_with(options: EtcdOptions) -> Self {
        EtcdServer {
            cluster: EtcdCluster::start_with(1, options).await,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.cluster.endpoint(0)
    }

    /// The client address of [`Self::endpoint`], e.g. for a [`crate::Link`] in front of it.
    pub fn client_addr(&self) -> std::net::SocketAddr {
        let endpoint = self.endpoint();
        endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("etcd endpoint {endpoint}: {e}"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid(0)
    }

    /// Kills etcd (SIGKILL); its data dir stays for [`Self::restart`].
    pub fn kill(&mut self) {
        self.cluster.kill(0)
    }

    /// Starts etcd again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.cluster.restart(0).await
    }

    /// Kills etcd, deletes its data, and starts an empty one on the same ports.
    pub async fn restart_empty(&mut self) {
        self.cluster.restart_empty().await
    }

    /// SIGSTOP: etcd keeps its sockets open but answers nothing, like a hung host.
    pub fn pause(&self) {
        self.cluster.pause(0)
    }

    pub fn resume(&self) {
        self.cluster.resume(0)
    }

    /// Runs `etcdctl` against this server; returns stdout, panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.cluster.etcdctl(args)
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let status = self.etcdctl(&["endpoint", "status", "--write-out", "json"]);
        status
            .split("\"revision\":")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {status}"))
    }

    /// Compacts the whole history up to the current revision, so a watch from any earlier
    /// revision is cancelled with `compact_revision`.
    pub fn compact(&self) {
        self.etcdctl(&["compaction", &self.revision().to_string()]);
    }

    pub fn cluster(&self) -> &EtcdCluster {
        &self.cluster
    }
}

/// Several etcd members forming one cluster on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    options: EtcdOptions,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, EtcdOptions::default()).await
    }

    pub async fn start_with(size: usize, options: EtcdOptions) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            options,
            _dir: dir,
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy().await;
        cluster
    }

    fn scheme(&self) -> &str {
        if self.options.client_tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].process.as_ref().map(ChildProcess::pid)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial_cluster = self.initial_cluster();
        let client_url = self.endpoint(i);
        let m = &self.members[i];
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "testkit"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(&self.options.extra_args);
        let log = m.data_dir.with_extension("log");
        let process = ChildProcess::spawn_logged(&format!("etcd-{}", m.name), cmd, &log);
        self.members[i].process = Some(process);
    }

    /// Waits until every running member answers a read through etcdctl.
    pub async fn wait_healthy(&self) {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                continue;
            }
            let endpoint = self.endpoint(i);
            wait_until(
                &format!("etcd member {i} at {endpoint} is healthy"),
                Duration::from_secs(30),
                || async {
                    self.try_etcdctl_at(&endpoint, &["get", "healthcheck"])
                        .is_ok()
                },
            )
            .await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].process = None;
    }

    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
        self.wait_healthy().await;
    }

    /// Single-member only: wipes the data dir, as when a host is rebuilt.
    pub async fn restart_empty(&mut self) {
        assert_eq!(self.members.len(), 1, "restart_empty is for single members");
        self.kill(0);
        let dir = self.members[0].data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("rm {}: {e}", dir.display()));
        }
        self.spawn(0, "new");
        self.wait_healthy().await;
    }

    pub fn pause(&self, i: usize) {
        if let Some(p) = &self.members[i].process {
            p.signal(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    pub fn resume(&self, i: usize) {
        if let Some(p) = &self.members[i].process {
            p.signal(nix::sys::signal::Signal::SIGCONT);
        }
    }

    fn try_etcdctl_at(&self, endpoint: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoint,
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "3s",
            ])
            .args(&self.options.etcdctl_args)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `etcdctl` against every running member; returns stdout, panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        self.try_etcdctl_at(&endpoints.join(","), args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The data directory of member `i` (its log is beside it, `<dir>.log`).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }
}
