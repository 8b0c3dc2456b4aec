//! The `load-client` helper (a testkit binary) run inside a simulated host, and what it
//! reports. See `src/bin/load-client.rs` for what a request is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::netns::Host;
use crate::process::{workspace_bin, ChildProcess};

/// How the client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new connection for every request.
    NewConnections,
    /// Long connections of `per_connection` requests each.
    LongConnections { per_connection: usize },
}

/// How much load, and how patient.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub mode: Mode,
    pub workers: usize,
    /// Each worker makes a request this often.
    pub pace: Duration,
    /// A request that takes longer fails.
    pub timeout: Duration,
}

/// What a client reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub by_backend: BTreeMap<String, u64>,
    /// (milliseconds since the client started, reason), the first 50.
    pub errors: Vec<(u64, String)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Report {
    pub fn requests(&self) -> u64 {
        self.ok + self.failed
    }

    /// Requests answered by `backend` (its greeting, e.g. `web-1 v1`).
    pub fn answered_by(&self, backend: &str) -> u64 {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }

    /// What happened since `earlier` (a report of the same client).
    pub fn since(&self, earlier: &Report) -> Report {
        let mut by_backend = self.by_backend.clone();
        for (name, n) in &earlier.by_backend {
            if let Some(v) = by_backend.get_mut(name) {
                *v -= (*n).min(*v);
            }
        }
        by_backend.retain(|_, n| *n > 0);
        Report {
            ok: self.ok - earlier.ok.min(self.ok),
            failed: self.failed - earlier.failed.min(self.failed),
            by_backend,
            errors: self.errors[earlier.errors.len().min(self.errors.len())..].to_vec(),
            ..self.clone()
        }
    }

    fn parse(line: &str) -> Option<(Report, bool)> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let by_backend = v["by_backend"]
            .as_object()?
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        let errors = v["errors"]
            .as_array()?
            .iter()
            .filter_map(|e| Some((e[0].as_u64()?, e[1].as_str()?.to_owned())))
            .collect();
        let report = Report {
            ok: v["ok"].as_u64()?,
            failed: v["failed"].as_u64()?,
            by_backend,
            errors,
            p50_ms: v["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            p99_ms: v["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            max_ms: v["latency_ms"]["max"].as_f64().unwrap_or(0.0),
        };
        Some((report, v["final"].as_bool().unwrap_or(false)))
    }
}

/// A running `load-client`, killed by PID when dropped.
pub struct LoadClient {
    process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl LoadClient {
    /// Starts the client inside `host`, dialling `target` (on that host's loopback).
    pub fn start(host: &Host, name: &str, target: SocketAddr, load: Load) -> LoadClient {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cmd = host.command(workspace_bin("load-client"));
        cmd.arg("--target").arg(target.to_string());
        cmd.args(["--workers", &load.workers.to_string()]);
        cmd.args(["--pace-ms", &load.pace.as_millis().to_string()]);
        cmd.args(["--timeout-ms", &load.timeout.as_millis().to_string()]);
        match load.mode {
            Mode::NewConnections => {
                cmd.args(["--mode", "new"]);
            }
            Mode::LongConnections { per_connection } => {
                cmd.args(["--mode", "keep"]);
                cmd.args(["--per-connection", &per_connection.to_string()]);
            }
        }
        let log = dir.path().join(format!("{name}.log"));
        LoadClient {
            process: ChildProcess::spawn_logged(name, cmd, &log),
            _dir: dir,
        }
    }

    /// The latest report (all zero before the first).
    pub fn snapshot(&self) -> Report {
        self.process
            .output()
            .lines()
            .rev()
            .find_map(Report::parse)
            .map(|(r, _)| r)
            .unwrap_or_default()
    }

    /// Stops the client (SIGTERM: requests in flight complete or time out) and returns its
    /// final report.
    pub async fn finish(mut self) -> Report {
        self.process.signal(Signal::SIGTERM);
        let status = self.process.wait_exit(Duration::from_secs(15)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly ({status:?}):\n{}",
            self.process.name(),
            self.process.output()
        );
        let output = self.process.output();
        match output.lines().rev().find_map(Report::parse) {
            Some((report, true)) => report,
            _ => panic!("{} printed no final report:\n{output}", self.process.name()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
