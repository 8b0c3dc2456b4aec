//! Simulated hosts: Linux network namespaces joined by veth pairs to one bridge, each with
//! its own address from 198.18.0.0/15 (the RFC 2544 benchmarking range) and its own
//! loopback. Nothing touches the machine's own interfaces: the bridge lives in a namespace
//! of its own (the *switch*, which doubles as the operator's vantage point at
//! 198.18.0.1), so the addresses exist only inside namespaces this module created, and
//! nothing is routed off the machine.
//!
//! ```text
//!   ssrs-<pid>-<n>-switch:  br0 198.18.0.1/24 -- p0 -- p1 -- p2 ...   (bridge ports)
//!                                                 |     |     |
//!   ssrs-<pid>-<n>-<host>:                      eth0  eth0  eth0  198.18.0.11, .12, ...
//! ```
//!
//! - Processes run inside a host with `ip netns exec` ([`Host::command`]), which execs the
//!   program itself, so the PID a test holds is the program's.
//! - The test process opens sockets inside a host from a short-lived thread that joined the
//!   host's namespace (`setns(2)`; a socket stays in the namespace it was created in):
//!   [`Host::bind`], [`Host::connect`], [`Host::admin`]. That thread ends right after, so
//!   no thread of a pool is ever left in another namespace.
//! - A host is cut off the network by taking its bridge port down ([`Host::cut`]): its
//!   peers' packets vanish, no RST, no ICMP, as when a cable is pulled; [`Host::heal`]
//!   takes it up (and waits until packets pass again). [`Host::block`] drops what goes
//!   between a host and some peers only (iptables in the host's namespace), and
//!   [`Network::slow`] delays and drops a share of it (see [`Netem`], [`SlowLink`]).
//! - Everything is named `ssrs-<pid>-<n>-...` (`n` counts the networks of the process).
//!   Dropping the [`Network`] kills what still runs in its namespaces (by PID, from `ip
//!   netns pids`) and deletes them, which deletes their veths, bridge and iptables rules
//!   with them. [`Network::create`] first removes what a run that was killed left behind:
//!   namespaces whose `<pid>` no longer runs, with the processes still in them.
//!
//! Needs root and iproute2 + iptables: [`unavailable`] says why a test cannot run here.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::process::ChildProcess;

/// What every name this module gives starts with.
pub const PREFIX: &str = "ssrs-";

/// The bridge's own address: the operator's vantage point (etcdctl runs there).
pub const SWITCH_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Why simulated hosts cannot be made on this machine (not root, `ip` or `iptables`
/// missing, namespaces refused), or `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not running as root: network namespaces, veths and iptables need root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                .into(),
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian package {package}; `make deps` installs it)"
            ));
        }
    }
    // Unique per call: two tests of one binary may probe at the same moment.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("{PREFIX}{}-probe{n}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Runs `ip ARGS`; its stderr on failure.
fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(result: Result<String, String>) -> String {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// The namespaces `ip netns list` shows.
fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Kills every process in namespace `name` (SIGKILL, by PID) and deletes it.
fn destroy(name: &str) {
    for pid in ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
    {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("netns: {e}");
    }
}

/// Removes the namespaces of runs that no longer exist (`ssrs-<pid>-...` whose PID is not
/// running), with whatever still ran in them. Returns their names.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in namespaces() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            destroy(&name);
            removed.push(name);
        }
    }
    removed
}

/// Runs `f` on a new thread that joined namespace `netns`; the thread ends with `f`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(format!("the thread in {netns} panicked")))
    })
}

/// A set of simulated hosts on one bridge; deletes them all when dropped.
pub struct Network {
    prefix: String,
    switch: Host,
    hosts: Vec<Host>,
    queues: AtomicU16,
}

impl Network {
    /// Removes what killed runs left behind, then creates the switch: a namespace holding
    /// the bridge, addressed [`SWITCH_ADDR`].
    pub fn create() -> Network {
        for name in remove_stale() {
            eprintln!("netns: removed {name}, left behind by a run that no longer exists");
        }
        static NETWORKS: AtomicU16 = AtomicU16::new(0);
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}-", std::process::id());
        let switch_ns = format!("{prefix}switch");
        let network = Network {
            prefix,
            switch: Host {
                name: "switch".into(),
                netns: switch_ns.clone(),
                switch: switch_ns.clone(),
                port: None,
                ip: SWITCH_ADDR,
            },
            hosts: Vec::new(),
            queues: AtomicU16::new(0),
        };
        let ns = switch_ns.as_str();
        must(ip(&["netns", "add", ns]));
        must(ip(&["-n", ns, "link", "set", "lo", "up"]));
        must(ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]));
        must(ip(&[
            "-n",
            ns,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "br0",
        ]));
        must(ip(&["-n", ns, "link", "set", "br0", "up"]));
        network
    }

    /// A new host named `name` (a short word: `etcd1`, `p1`, `consumer`), on the next
    /// free address (198.18.0.11, .12, ...), its loopback up.
    pub fn add_host(&mut self, name: &str) -> Host {
        let index = self.hosts.len();
        assert!(index < 200, "too many hosts");
        let address = Ipv4Addr::new(198, 18, 0, 11 + index as u8);
        let netns = format!("{}{name}", self.prefix);
        let port = format!("p{index}");
        let sw = self.switch.netns.as_str();
        must(ip(&["netns", "add", &netns]));
        let host = Host {
            name: name.to_owned(),
            netns: netns.clone(),
            switch: sw.to_owned(),
            port: Some(port.clone()),
            ip: address,
        };
        // Pushed before the rest can fail, so that Drop deletes it.
        self.hosts.push(host.clone());
        let n = netns.as_str();
        must(ip(&["-n", n, "link", "set", "lo", "up"]));
        must(ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n,
        ]));
        must(ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"]));
        must(ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]));
        must(ip(&["-n", n, "link", "set", "eth0", "up"]));
        host
    }

    /// The switch's namespace as a host: the operator's vantage point, which no cut
    /// separates from anyone (it cannot be cut itself).
    pub fn operator(&self) -> &Host {
        &self.switch
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Every namespace of this network, the switch's first.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(&self.switch)
            .chain(&self.hosts)
            .map(|h| h.netns.clone())
            .collect()
    }

    /// A netfilter queue number no other [`SlowLink`] of this network uses.
    fn next_queue(&self) -> u16 {
        self.queues.fetch_add(1, Ordering::Relaxed)
    }

    /// Delays and drops a share of the packets between `host` and `peers`: see [`Netem`].
    pub async fn slow(&self, host: &Host, peers: &[Ipv4Addr], netem: Netem) -> SlowLink {
        SlowLink::start(host, peers, netem, self.next_queue()).await
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in self.hosts.iter().rev() {
            destroy(&host.netns);
        }
        destroy(&self.switch.netns);
    }
}

/// One simulated host: a namespace, its address, its port on the bridge. Cheap to clone;
/// the [`Network`] owns the namespace.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
    switch: String,
    /// The bridge port (in the switch's namespace); `None` for the switch itself.
    port: Option<String>,
    ip: Ipv4Addr,
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `IP:port` on this host's address.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// `program` run inside this host (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `program args` inside this host; stdout, or why it failed.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.netns.as_str(), program];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn port(&self) -> &str {
        self.port
            .as_deref()
            .unwrap_or_else(|| panic!("the switch cannot be cut"))
    }

    /// Takes the host's bridge port down: nothing reaches it or leaves it, and nobody is
    /// told (no RST, no ICMP); its processes run on.
    pub fn cut(&self) {
        must(ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            self.port(),
            "down",
        ]));
    }

    /// Takes the bridge port up again, and waits until both ends of the link say they are
    /// up: the kernel applies a carrier change up to a second late (link events are rate
    /// limited), and until then the host's packets still go nowhere.
    pub async fn heal(&self) {
        must(ip(&["-n", &self.switch, "link", "set", self.port(), "up"]));
        let up = |ns: &str, dev: &str| {
            ip(&["-n", ns, "-o", "link", "show", dev]).is_ok_and(|l| l.contains("state UP"))
        };
        crate::wait_until(
            &format!("the link of {} is up", self.name),
            Duration::from_secs(5),
            || async { up(&self.switch, self.port()) && up(&self.netns, "eth0") },
        )
        .await;
        // And until packets pass both ways: a connect from the switch to a closed port of
        // the host is refused (an RST came back) rather than left unanswered.
        let probe = self.addr(9);
        let switch = self.switch.clone();
        crate::wait_until(
            &format!("packets reach {} again", self.name),
            Duration::from_secs(5),
            || {
                let switch = switch.clone();
                async move {
                    let attempt = tokio::task::spawn_blocking(move || {
                        in_netns(&switch, || {
                            std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(50))
                        })
                    })
                    .await;
                    matches!(attempt, Ok(Ok(Ok(_))))
                        || matches!(attempt, Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                }
            },
        )
        .await;
    }

    /// Drops every packet between this host and `peers` (both ways, silently), leaving
    /// its other traffic alone: a partial partition.
    pub fn block(&self, peers: &[Ipv4Addr]) {
        for peer in peers {
            let peer = peer.to_string();
            self.iptables(&["-I", "OUTPUT", "-d", &peer, "-j", "DROP"]);
            self.iptables(&["-I", "INPUT", "-s", &peer, "-j", "DROP"]);
        }
    }

    /// Undoes [`Host::block`] for `peers`.
    pub fn unblock(&self, peers: &[Ipv4Addr]) {
        for peer in peers {
            let peer = peer.to_string();
            self.iptables(&["-D", "OUTPUT", "-d", &peer, "-j", "DROP"]);
            self.iptables(&["-D", "INPUT", "-s", &peer, "-j", "DROP"]);
        }
    }

    fn iptables(&self, args: &[&str]) -> String {
        must(self.run("iptables", args))
    }

    /// A listener on `addr` inside this host.
    pub fn bind(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        in_netns(&self.netns, || std::net::TcpListener::bind(addr))
            .map_err(std::io::Error::other)?
    }

    /// A connection to `addr` made from inside this host.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let netns = self.netns.clone();
        let stream = tokio::task::spawn_blocking(move || {
            in_netns(&netns, || {
                std::net::TcpStream::connect_timeout(&addr, timeout)
            })
            .map_err(std::io::Error::other)?
        })
        .await
        .map_err(std::io::Error::other)??;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// An admin server's answer to `method path` with `body`, asked from inside this host
    /// (admin servers listen on the host's loopback).
    pub async fn admin(
        &self,
        port: u16,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<crate::admin::Reply, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = self
            .connect(addr, Duration::from_secs(2))
            .await
            .map_err(|e| format!("connect {addr} in {}: {e}", self.name))?;
        crate::admin::exchange(stream, method, path, body).await
    }

    /// The remote addresses of this host's established TCP connections to `port` (e.g.
    /// which etcd members it talks to).
    pub fn connections_to(&self, port: u16) -> Vec<SocketAddr> {
        let table = in_netns(&self.netns, || {
            std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default()
        })
        .unwrap_or_default();
        established_to(&table, port)
    }
}

/// Parses `/proc/net/tcp`: the remote addresses of established connections to `port`.
fn established_to(table: &str, port: u16) -> Vec<SocketAddr> {
    let parse = |field: &str| -> Option<SocketAddr> {
        let (ip, p) = field.split_once(':')?;
        // The address is the kernel's __be32 printed as a native integer.
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
        Some(SocketAddr::from((ip, u16::from_str_radix(p, 16).ok()?)))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote = parse(fields.get(2)?)?;
            (fields.get(3) == Some(&"01") && remote.port() == port).then_some(remote)
        })
        .collect()
}

/// A slow, lossy network, what `tc qdisc ... netem delay D J loss L` does: every packet is
/// held `delay ± jitter` (uniform; packets may overtake each other, as with netem), and
/// `loss` of them are dropped. Applied to both directions.
#[derive(Debug, Clone, Copy)]
pub struct Netem {
    pub delay: Duration,
    pub jitter: Duration,
    /// Share of packets dropped, 0.0 to 1.0.
    pub loss: f64,
}

/// [`Netem`] in force between a host and some peers until dropped.
///
/// This kernel family is often built without `sch_netem` (so is the one these tests are
/// developed on), so the same effect is made with what every netfilter kernel has: an
/// iptables `statistic` match drops `loss` of the packets, and an `NFQUEUE` rule hands the
/// rest to the `delay-queue` helper (a testkit binary, run inside the host), which gives
/// each packet back to the kernel after its delay. The rules match the peers' addresses
/// only, so the host's other traffic (etcd, loopback) is untouched.
pub struct SlowLink {
    host: Host,
    rules: Vec<Vec<String>>,
    helper: Option<ChildProcess>,
    _dir: tempfile::TempDir,
}

impl SlowLink {
    async fn start(host: &Host, peers: &[Ipv4Addr], netem: Netem, queue: u16) -> SlowLink {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cmd = host.command(crate::process::workspace_bin("delay-queue"));
        cmd.args([
            "--queue",
            &queue.to_string(),
            "--delay-us",
            &netem.delay.as_micros().to_string(),
            "--jitter-us",
            &netem.jitter.as_micros().to_string(),
        ]);
        let helper =
            ChildProcess::spawn_logged("delay-queue", cmd, &dir.path().join("delay-queue.log"));
        crate::wait_until("delay-queue is bound", Duration::from_secs(10), || async {
            helper.output().contains("bound")
        })
        .await;
        let mut link = SlowLink {
            host: host.clone(),
            rules: Vec::new(),
            helper: Some(helper),
            _dir: dir,
        };
        let probability = format!("{:.6}", netem.loss);
        for peer in peers {
            let peer = peer.to_string();
            for (chain, side) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
                link.add(&[
                    chain,
                    side,
                    &peer,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ]);
                link.add(&[
                    chain,
                    side,
                    &peer,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue.to_string(),
                ]);
            }
        }
        link
    }

    fn add(&mut self, rule: &[&str]) {
        let mut args = vec!["-A"];
        args.extend_from_slice(rule);
        must(self.host.run("iptables", &args));
        self.rules
            .push(rule.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Packets dropped by the loss rules so far.
    pub fn dropped(&self) -> u64 {
        self.counts("DROP")
    }

    /// Packets handed to the delay queue so far.
    pub fn delayed(&self) -> u64 {
        self.counts("NFQUEUE")
    }

    fn counts(&self, target: &str) -> u64 {
        ["OUTPUT", "INPUT"]
            .iter()
            .map(|chain| {
                let listing = self
                    .host
                    .run("iptables", &["-L", chain, "-v", "-x", "-n"])
                    .unwrap_or_default();
                listing
                    .lines()
                    .filter(|l| l.split_whitespace().nth(2) == Some(target))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        // Rules first: a packet queued to a helper that is gone would be dropped.
        for rule in &self.rules {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = self.host.run("iptables", &args) {
                eprintln!("netns: {e}");
            }
        }
        self.helper = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_are_read_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 1F0012C6:C350 0B0012C6:094B 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n   \
            1: 1F0012C6:C351 0C0012C6:094B 06 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n   \
            2: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n";
        let got = established_to(table, 2379);
        if cfg!(target_endian = "little") {
            assert_eq!(got, vec!["198.18.0.11:2379".parse().unwrap()]);
        }
    }
}
