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
    /// The address it listens on: 127.0.0.1, or its host's (see [`EtcdCluster::start_on`]).
    ip: String,
    /// The simulated host it runs in, if any.
    netns: Option<String>,
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

/// Several etcd members forming one cluster on loopback, or one member per simulated host.
pub struct EtcdCluster {
    members: Vec<Member>,
    options: EtcdOptions,
    /// Where `etcdctl` runs: the test's own namespace, or a simulated host's.
    ctl_netns: Option<String>,
    /// Member ids learnt so far (they never change, and a member cut off cannot be asked).
    ids: std::sync::Mutex<Vec<Option<u64>>>,
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
                ip: "127.0.0.1".into(),
                netns: None,
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            options,
            ctl_netns: None,
            ids: std::sync::Mutex::new(vec![None; size]),
            _dir: dir,
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// One member on each of `hosts`, listening on the host's address (ports 2379 and
    /// 2380), run inside it; `etcdctl` runs inside `operator` (e.g.
    /// [`crate::netns::Network::operator`], which no cut separates from the members).
    pub async fn start_on(hosts: &[&crate::netns::Host], operator: &crate::netns::Host) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let members = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Member {
                name: format!("m{i}"),
                ip: host.ip().to_string(),
                netns: Some(host.netns().to_owned()),
                client_port: 2379,
                peer_port: 2380,
                data_dir: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            options: EtcdOptions::default(),
            ctl_netns: Some(operator.netns().to_owned()),
            ids: std::sync::Mutex::new(vec![None; hosts.len()]),
            _dir: dir,
        };
        for i in 0..hosts.len() {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// `program`, run in the namespace `netns` if there is one.
    fn command(netns: Option<&str>, program: &str) -> Command {
        match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
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
            "{}://{}:{}",
            self.scheme(),
            self.members[i].ip,
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
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial_cluster = self.initial_cluster();
        let client_url = self.endpoint(i);
        let m = &self.members[i];
        let peer_url = format!("http://{}:{}", m.ip, m.peer_port);
        let mut cmd = Self::command(m.netns.as_deref(), "etcd");
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
        self.ids.lock().unwrap_or_else(|p| p.into_inner())[0] = None;
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
        let out = Self::command(self.ctl_netns.as_deref(), "etcdctl")
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
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].process.is_some())
            .collect();
        self.try_etcdctl_on(&running, args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `etcdctl` against the members `members` only (e.g. those on the side of a
    /// partition that has a quorum); stdout, or why it failed.
    pub fn try_etcdctl_on(&self, members: &[usize], args: &[&str]) -> Result<String, String> {
        let endpoints: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        self.try_etcdctl_at(&endpoints.join(","), args)
    }

    /// The index of the member that member `asked` says leads the cluster.
    pub fn leader_seen_by(&self, asked: usize) -> Option<usize> {
        let out = self
            .try_etcdctl_on(&[asked], &["endpoint", "status", "--write-out", "json"])
            .ok()?;
        let status: serde_json::Value = serde_json::from_str(&out).ok()?;
        let status = &status[0]["Status"];
        let leader = status["leader"].as_u64()?;
        self.member_ids()
            .into_iter()
            .position(|id| id == Some(leader))
    }

    /// Each member's id, as etcd reports it (`None` for one that never answered yet).
    pub fn member_ids(&self) -> Vec<Option<u64>> {
        let mut known = self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, id) in known.iter_mut().enumerate() {
            if id.is_none() {
                *id = self
                    .try_etcdctl_on(&[i], &["endpoint", "status", "--write-out", "json"])
                    .ok()
                    .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
                    .and_then(|s| s[0]["Status"]["header"]["member_id"].as_u64());
            }
        }
        *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = known.clone();
        known
    }

    /// Makes member `to` the leader (`etcdctl move-leader`, sent to the current leader).
    pub async fn move_leader(&self, to: usize) {
        let ids = self.member_ids();
        let target = ids[to].unwrap_or_else(|| panic!("member {to} does not answer"));
        wait_until(
            &format!("member {to} leads"),
            Duration::from_secs(15),
            || async {
                match self.leader_seen_by(to) {
                    Some(l) if l == to => true,
                    Some(l) => {
                        let _ = self.try_etcdctl_on(&[l], &["move-leader", &format!("{target:x}")]);
                        false
                    }
                    None => false,
                }
            },
        )
        .await;
    }

    /// The data directory of member `i` (its log is beside it, `<dir>.log`).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }
}
