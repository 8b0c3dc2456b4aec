//! The real `nerve` and `synapse` binaries as a test starts them: a configuration file in a
//! temp dir of its own, the log beside it, and the process killed by PID on drop.
//!
//! ```ignore
//! let synapse = Daemon::synapse(&config_text);   // returns once it logged "started"
//! synapse.reload(&new_text);                      // rewrite the file, SIGHUP
//! ```

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{workspace_bin, ChildProcess};

/// How long a binary may take to say it started.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running binary of this workspace and its files; dereferences to its [`ChildProcess`].
pub struct Daemon {
    process: ChildProcess,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `nerve` on `config` and waits until it says it started.
    pub async fn nerve(config: &str) -> Daemon {
        Self::start("nerve", config, |_| {}).await
    }

    /// Starts `synapse` on `config` and waits until it says it started.
    pub async fn synapse(config: &str) -> Daemon {
        Self::start("synapse", config, |_| {}).await
    }

    /// Starts `bin` with `config` written to `<dir>/<bin>.yaml`, logging at `RUST_LOG=info`
    /// to `<dir>/<bin>.log`; `adjust` may add to the command (environment, arguments).
    /// Waits until the log says "started"; panics with the log if it exits first.
    pub async fn start(bin: &str, config: &str, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let daemon = Self::spawn(bin, config, adjust);
        daemon.wait_started().await;
        daemon
    }

    /// Starts `bin` inside a simulated host (`ip netns exec`), like [`Daemon::start`].
    pub async fn start_in(host: &crate::netns::Host, bin: &str, config: &str) -> Daemon {
        let daemon = Self::spawn_with(bin, config, |exe, config| {
            let mut cmd = host.command(exe);
            cmd.arg("--config").arg(config);
            cmd
        });
        daemon.wait_started().await;
        daemon
    }

    /// Like [`Daemon::start`] without waiting: for binaries expected to fail at start.
    pub fn spawn(bin: &str, config: &str, adjust: impl FnOnce(&mut Command)) -> Daemon {
        Self::spawn_with(bin, config, |exe, config| {
            let mut cmd = Command::new(exe);
            cmd.arg("--config").arg(config);
            adjust(&mut cmd);
            cmd
        })
    }

    /// Like [`Daemon::spawn`], the command built by `command` from the binary's path and
    /// the configuration file's (to run it under `prlimit`, a shell's `ulimit`, ...).
    pub fn spawn_with(
        bin: &str,
        config: &str,
        command: impl FnOnce(&Path, &Path) -> Command,
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let config_path = dir.path().join(format!("{bin}.yaml"));
        write(&config_path, config);
        let mut cmd = command(&workspace_bin(bin), &config_path);
        cmd.env("RUST_LOG", "info");
        let process = ChildProcess::spawn_logged(bin, cmd, &dir.path().join(format!("{bin}.log")));
        Daemon {
            process,
            config: config_path,
            dir,
        }
    }

    async fn wait_started(&self) {
        let started = tokio::time::Instant::now();
        loop {
            let output = self.process.output();
            if output.contains(" started") {
                return;
            }
            if !self.is_alive() {
                panic!(
                    "{} exited before it started:\n{output}",
                    self.process.name()
                );
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "{} did not start within {START_DEADLINE:?}:\n{output}",
                    self.process.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_alive(&self) -> bool {
        // Signal 0 probes for existence; a zombie still counts until reaped, so also
        // look at /proc's state.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()));
        stat.is_ok_and(|s| !s.contains(") Z "))
    }

    /// Replaces the configuration file with `config` and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        write(&self.config, config);
        self.process.signal(Signal::SIGHUP);
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The temp dir holding the configuration and the log (and room for other files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Deref for Daemon {
    type Target = ChildProcess;

    fn deref(&self) -> &ChildProcess {
        &self.process
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}
