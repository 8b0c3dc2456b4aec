//! The `nerve` command: parses the command line, loads the configuration, runs [`nerve::Nerve`]
//! and turns signals into its operations (SIGHUP: reload; SIGTERM/SIGINT: deregister and exit).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

/// Health-checks local service instances and registers the healthy ones in etcd.
#[derive(Parser)]
#[command(name = "nerve", version)]
struct Cli {
    /// Configuration file (YAML or JSON); see docs/nerve.md.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration, print "ok" or the problem, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return match nerve::config::load(&cli.config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match nerve::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.config, config));
    // A reload still parsing a huge file on the blocking pool must not hold the exit: the
    // default drop of the runtime would wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration load running on the blocking pool.
type Loading = JoinHandle<Result<nerve::NerveConfig, registry::ConfigError>>;

/// Reads and validates `path` off the async threads: YAML parse time grows with the
/// square of the nesting, and the signal loop must keep answering SIGTERM meanwhile.
fn start_load(path: &Path) -> Loading {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || nerve::config::load(&path))
}

/// The outcome of the load in progress; never completes when there is none.
async fn loaded(
    loading: &mut Option<Loading>,
) -> Result<Result<nerve::NerveConfig, registry::ConfigError>, tokio::task::JoinError> {
    match loading {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn run(path: PathBuf, config: nerve::NerveConfig) -> Result<(), String> {
    // Signal handlers first, so a SIGTERM during start-up is not the default (abrupt) exit.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
    let mut nerve = nerve::Nerve::start(config)
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut loading: Option<Loading> = None;
    // A SIGHUP during a load: the file may have changed after it was read, so read it again.
    let mut reload_again = false;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: deregistering and exiting"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: deregistering and exiting"); break; }
            _ = hup.recv() => {
                if loading.is_some() {
                    reload_again = true;
                    tracing::info!("SIGHUP while reading the configuration: reading it again afterwards");
                } else {
                    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
                    loading = Some(start_load(&path));
                }
            }
            result = loaded(&mut loading) => {
                loading = None;
                match result {
                    // A rejected reload has logged why and changed nothing.
                    Ok(Ok(new)) => { let _ = nerve.reload(new).await; }
                    Ok(Err(e)) => tracing::error!("reload rejected, keeping the running configuration: {e}"),
                    Err(e) => tracing::error!("reload rejected, keeping the running configuration: loading failed: {e}"),
                }
                if std::mem::take(&mut reload_again) {
                    tracing::info!(file = %path.display(), "reloading the configuration again");
                    loading = Some(start_load(&path));
                }
            }
        }
    }
    nerve.shutdown().await;
    Ok(())
}
