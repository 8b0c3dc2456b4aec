//! The `synapse` binary: the command line, logging, runtime and signals are
//! [`daemon::main`]'s (see `synapse --help`); everything else is the library
//! ([`synapse::Synapse`]).
//!
//! - SIGHUP: reload the file (an invalid file is logged and the running config kept).
//! - SIGTERM / SIGINT: stop accepting, let connections finish up to `shutdown_timeout`, exit 0.
//! - `--import-smartstack FILE`: an Airbnb synapse JSON file converted ([`synapse::import`]).
//!
//! At start the soft descriptor limit is raised to the hard limit (`synapse::descriptors`).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use daemon::{About, BoxError, Daemon, Imported};
use registry::ConfigError;
use synapse::{Synapse, SynapseConfig};

struct Program(Synapse);

impl Daemon for Program {
    type Config = SynapseConfig;
    type ConfigError = ConfigError;

    fn load(path: &Path) -> Result<SynapseConfig, ConfigError> {
        SynapseConfig::load(path)
    }

    fn import_smartstack(path: &Path, text: &str) -> Result<Imported, String> {
        let converted =
            synapse::import::import_smartstack(path, text).map_err(|e| e.to_string())?;
        Ok(Imported {
            yaml: converted.yaml,
            warnings: converted.warnings.iter().map(ToString::to_string).collect(),
        })
    }

    /// Before anything is accepted: every service's share is computed from the raised limit.
    fn prepare(_config: &SynapseConfig) {
        raise_descriptor_limit();
    }

    async fn start(config: SynapseConfig) -> Result<Self, BoxError> {
        let services = config.services.len();
        let synapse = Synapse::start(config).await?;
        tracing::info!(services, "synapse started");
        Ok(Program(synapse))
    }

    async fn reload(&mut self, config: SynapseConfig) {
        match self.0.reload(config).await {
            Ok(actions) => tracing::info!(changes = actions.len(), "configuration reloaded"),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "reload rejected; the previous configuration keeps running"
            ),
        }
    }

    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    async fn shutdown(self) {
        tracing::info!("stopping: no longer accepting connections");
        let report = self.0.shutdown().await;
        tracing::info!(drained = report.drained, "synapse stopped");
    }
}

fn main() -> ExitCode {
    daemon::main::<Program>(About {
        name: "synapse",
        version: env!("CARGO_PKG_VERSION"),
        about: "Forwards local TCP ports to the instances of services registered in etcd.",
        on_stop: "stop accepting, let connections finish up to shutdown_timeout, exit",
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and logs the outcome.
fn raise_descriptor_limit() {
    match synapse::descriptors::raise_soft_limit() {
        Ok(r) if r.soft > r.old_soft => tracing::info!(
            old_soft = r.old_soft,
            soft = r.soft,
            hard = r.hard,
            "raised the soft descriptor limit (RLIMIT_NOFILE) to the hard limit"
        ),
        Ok(r) => tracing::info!(
            soft = r.soft,
            hard = r.hard,
            "descriptor limit (RLIMIT_NOFILE): the soft limit is already the hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot raise the soft descriptor limit (RLIMIT_NOFILE); keeping it"
        ),
    }
}
