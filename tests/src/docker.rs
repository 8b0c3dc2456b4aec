//! Docker for the container tests: a daemon that answers (the one running, or a `dockerd`
//! started for the test and stopped after it), the `docker` command, and a [`Scope`] that
//! removes every container, network and image named with its prefix, both when it is created
//! (what a killed run left behind) and when it is dropped (also when the test failed).
//!
//! ```ignore
//! let docker = match Docker::start().await { Ok(d) => d, Err(why) => return skip(why) };
//! let scope = Scope::new("smartstack-e2e");          // removes leftovers
//! let (net, subnet) = scope.internal_network("net")?; // 198.18.x.0/24, nothing routed out
//! docker::run(&["run", "-d", "--name", &scope.name("etcd"), ...]).await?;
//! ```
//!
//! Containers only ever join internal networks the test creates: `--internal` gives them no
//! route off the machine.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ChildProcess;

/// How long a `dockerd` started here may take to answer, and to stop.
const DOCKERD_DEADLINE: Duration = Duration::from_secs(30);

/// A Docker daemon that answers `docker info`. If this value started it, dropping it stops it.
pub struct Docker {
    dockerd: Option<(ChildProcess, tempfile::TempDir)>,
}

impl Docker {
    /// The running daemon, or one started now (as root, when `docker info` fails), or why
    /// Docker cannot run here (the caller skips, loudly).
    pub async fn start() -> Result<Docker, String> {
        match Command::new("docker").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`docker --version` failed: {}", text(&o.stderr))),
            Err(e) => {
                return Err(format!(
                    "the docker command is not installed ({e}); Debian's docker.io provides it"
                ))
            }
        }
        let Err(why) = info().await else {
            return Ok(Docker { dockerd: None });
        };
        if !is_root() {
            return Err(format!(
                "no Docker daemon answers ({why}) and starting dockerd needs root"
            ));
        }
        if Command::new("dockerd").arg("--version").output().is_err() {
            return Err(format!(
                "no Docker daemon answers ({why}) and dockerd is not installed \
                 (Debian's docker.io provides it)"
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut cmd = Command::new("dockerd");
        // No default bridge (docker0): the tests' containers join only the internal networks
        // they create.
        cmd.args(["--bridge=none", "--log-level=warn"]);
        let mut dockerd =
            ChildProcess::spawn_logged("dockerd", cmd, &dir.path().join("dockerd.log"));
        let start = Instant::now();
        loop {
            if info().await.is_ok() {
                eprintln!(
                    "started dockerd (PID {}) in {:?}",
                    dockerd.pid(),
                    start.elapsed()
                );
                return Ok(Docker {
                    dockerd: Some((dockerd, dir)),
                });
            }
            let exited = !dockerd.is_running();
            if exited || start.elapsed() > DOCKERD_DEADLINE {
                let log = dockerd.output();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                dockerd.terminate(DOCKERD_DEADLINE);
                let what = if exited {
                    "dockerd exited".to_owned()
                } else {
                    format!("dockerd did not answer within {DOCKERD_DEADLINE:?}")
                };
                return Err(format!("{what}; it said:\n{}", tail.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether this value started the daemon (and will stop it).
    pub fn started_here(&self) -> bool {
        self.dockerd.is_some()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some((dockerd, _)) = &mut self.dockerd {
            if dockerd.terminate(DOCKERD_DEADLINE).is_none() {
                eprintln!(
                    "dockerd did not stop within {DOCKERD_DEADLINE:?} of SIGTERM; killing it"
                );
            }
        }
    }
}

/// Whether this process runs as root (/proc/self belongs to the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn info() -> Result<(), String> {
    run(&["info", "--format", "{{.ServerVersion}}"])
        .await
        .map(drop)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// `docker ARGS`: its stdout, trimmed, or the command and what it said on failure.
pub async fn run(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            output.status,
            text(&output.stderr)
        ))
    }
}

/// [`run`], blocking (for `Drop`).
pub fn run_blocking(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            text(&output.stderr)
        ))
    }
}

/// Everything a test creates in Docker, by name: containers and networks called
/// `<prefix>-<what>`, images `<prefix>:<tag>`. Created, it removes what a killed run left;
/// dropped, it removes everything again (after printing the containers' logs if the test is
/// failing).
pub struct Scope {
    prefix: String,
}

impl Scope {
    pub fn new(prefix: &str) -> Scope {
        let scope = Scope {
            prefix: prefix.to_owned(),
        };
        let left = scope.clean();
        if left > 0 {
            eprintln!("removed {left} containers, networks and images left by an earlier run");
        }
        scope
    }

    /// The name of a container or network of this scope.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// The reference of an image of this scope.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.prefix)
    }

    /// Creates the internal network `<prefix>-<what>` (no route off the machine) on the
    /// first subnet 198.18.x.0/24 that neither the host's routes nor another Docker network
    /// use; returns its name and the subnet's first three octets (`198.18.x`).
    pub async fn internal_network(&self, what: &str) -> Result<(String, String), String> {
        let name = self.name(what);
        let routes = host_routes();
        let mut refused = Vec::new();
        for x in 200..=239u8 {
            let base = Ipv4Addr::new(198, 18, x, 0);
            if routes
                .iter()
                .any(|&(net, len)| overlaps((base, 24), (net, len)))
            {
                continue;
            }
            let subnet = format!("{base}/24");
            match run(&[
                "network",
                "create",
                "--internal",
                "--subnet",
                &subnet,
                &name,
            ])
            .await
            {
                Ok(_) => return Ok((name, format!("198.18.{x}"))),
                Err(e) => refused.push(e),
            }
        }
        Err(format!(
            "no free subnet in 198.18.200.0 - 198.18.239.0: {}",
            refused
                .last()
                .map_or("every one is routed on this host", String::as_str)
        ))
    }

    /// The names of this scope's containers (running or not).
    pub fn containers(&self) -> Vec<String> {
        let all = run_blocking(&["ps", "-a", "--format", "{{.Names}}"]).unwrap_or_default();
        self.mine(&all)
    }

    fn mine(&self, names: &str) -> Vec<String> {
        let prefix = format!("{}-", self.prefix);
        names
            .lines()
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Removes every container, network and image of this scope; how many there were.
    pub fn clean(&self) -> usize {
        let containers = self.containers();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            report(run_blocking(&args));
        }
        let networks =
            run_blocking(&["network", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
        let networks = self.mine(&networks);
        for network in &networks {
            report(run_blocking(&["network", "rm", network]));
        }
        let images = run_blocking(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &self.prefix,
        ])
        .unwrap_or_default();
        let images: Vec<&str> = images.lines().collect();
        for image in &images {
            report(run_blocking(&["rmi", "-f", image]));
        }
        containers.len() + networks.len() + images.len()
    }
}

fn report(result: Result<String, String>) {
    if let Err(e) = result {
        eprintln!("cleaning up: {e}");
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for container in self.containers() {
                let logs = Command::new("docker")
                    .args(["logs", "--tail", "60", &container])
                    .output();
                if let Ok(o) = logs {
                    eprintln!(
                        "---- docker logs {container} ----\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        self.clean();
    }
}

/// The IPv4 destinations routed on this host (`ip -4 route`), as (network, prefix length).
/// Without iproute2 there is nothing to avoid but Docker's own networks, which Docker checks.
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let Ok(out) = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let dest = line.split_whitespace().find(|w| w.contains('.'))?;
            let (addr, len) = dest.split_once('/').unwrap_or((dest, "32"));
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Whether two IPv4 prefixes share an address.
fn overlaps((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let len = a_len.min(b_len).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_overlap_when_the_shorter_one_contains_the_other() {
        let net = |s: &str, len| (s.parse::<Ipv4Addr>().unwrap(), len);
        assert!(overlaps(net("198.18.200.0", 24), net("198.18.0.0", 15)));
        assert!(overlaps(net("198.18.0.0", 15), net("198.19.3.0", 24)));
        assert!(overlaps(net("198.18.200.0", 24), net("198.18.200.7", 32)));
        assert!(!overlaps(net("198.18.200.0", 24), net("198.18.201.0", 24)));
        assert!(!overlaps(net("198.18.200.0", 24), net("192.0.2.0", 24)));
    }
}
