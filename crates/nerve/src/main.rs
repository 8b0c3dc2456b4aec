//! The `nerve` binary: the command line, logging, runtime and signals are
//! [`daemon::main`]'s (see `nerve --help`); everything else is the library
//! ([`nerve::Nerve`]).
//!
//! - SIGHUP: reload the file (an invalid file is logged and the running config kept).
//! - SIGTERM / SIGINT: deregister everything (one lease revoke), wait `shutdown_delay`, exit 0.
//! - `--import-smartstack FILE`: an Airbnb nerve JSON file converted ([`nerve::import`]).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use daemon::{About, BoxError, Daemon, Imported};
use nerve::{Nerve, NerveConfig};
use registry::ConfigError;

struct Program(Nerve);

impl Daemon for Program {
    type Config = NerveConfig;
    type ConfigError = ConfigError;

    fn load(path: &Path) -> Result<NerveConfig, ConfigError> {
        nerve::config::load(path)
    }

    fn import_smartstack(path: &Path, text: &str) -> Result<Imported, String> {
        let converted = nerve::import::import_smartstack(path, text).map_err(|e| e.to_string())?;
        Ok(Imported {
            yaml: converted.yaml,
            warnings: converted.warnings.iter().map(ToString::to_string).collect(),
        })
    }

    async fn start(config: NerveConfig) -> Result<Self, BoxError> {
        Ok(Program(Nerve::start(config).await?))
    }

    async fn reload(&mut self, config: NerveConfig) {
        // A rejected reload has logged why and changed nothing.
        let _ = self.0.reload(config).await;
    }

    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    async fn shutdown(self) {
        tracing::info!("deregistering and exiting");
        self.0.shutdown().await;
    }
}

fn main() -> ExitCode {
    daemon::main::<Program>(About {
        name: "nerve",
        version: env!("CARGO_PKG_VERSION"),
        about: "Health-checks local service instances and registers the healthy ones in etcd.",
        on_stop: "deregister everything (one lease revoke), wait shutdown_delay, exit",
    })
}
