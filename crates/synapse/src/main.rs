//! The `synapse` binary: command line, logging and signals. Everything else is the
//! library (`synapse::Synapse`).
//!
//! - `synapse --config FILE`: run.
//! - `synapse --config FILE --check-config`: validate, print `ok` or the problem, exit 1 on error.
//! - SIGHUP: reload FILE (an invalid file is logged and the running config kept).
//! - SIGTERM / SIGINT: stop accepting, let connections finish up to `shutdown_timeout`, exit 0.
//!
//! At start the soft descriptor limit is raised to the hard limit (`synapse::descriptors`).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use registry::ConfigError;
use synapse::{Synapse, SynapseConfig};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "synapse",
    version,
    about = "Forwards local TCP ports to the instances of services registered in etcd."
)]
struct Args {
    /// Configuration file (YAML or JSON).
    #[arg(long, default_value = "/etc/synapse/synapse.yaml")]
    config: PathBuf,
    /// Validate the configuration, print "ok" or the problem, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match SynapseConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before anything is accepted: every service's share is computed from the raised limit.
    raise_descriptor_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args, config));
    // A parse still running on the blocking pool (a SIGTERM came first) is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "synapse failed");
            ExitCode::FAILURE
        }
    }
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

async fn run(args: Args, config: SynapseConfig) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM during startup must not kill us uncleanly.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let services = config.services.len();
    let synapse = Synapse::start(config).await?;
    tracing::info!(config = %args.config.display(), services, "synapse started");
    // The file is read and parsed on the blocking pool, so that a SIGTERM never waits
    // behind a slow parse; a SIGHUP during a parse reads the file again after it.
    let mut parsing: Option<tokio::task::JoinHandle<Result<SynapseConfig, ConfigError>>> = None;
    let mut again = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if parsing.is_some() {
                    again = true;
                } else {
                    parsing = Some(parse_in_background(&args.config));
                }
            }
            parsed = wait_for(&mut parsing) => {
                parsing = again.then(|| parse_in_background(&args.config));
                again = false;
                match parsed {
                    Ok(Ok(new)) => match synapse.reload(new).await {
                        Ok(actions) => tracing::info!(changes = actions.len(), "configuration reloaded"),
                        Err(e) => tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "reload rejected; the previous configuration keeps running"),
                    },
                    Ok(Err(e)) => tracing::error!(error = %e, "reload rejected: invalid configuration; the previous configuration keeps running"),
                    Err(e) => tracing::error!(error = %e, "reload failed while reading the configuration; the previous configuration keeps running"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: no longer accepting connections");
    let report = synapse.shutdown().await;
    tracing::info!(drained = report.drained, "synapse stopped");
    Ok(())
}

fn parse_in_background(
    path: &std::path::Path,
) -> tokio::task::JoinHandle<Result<SynapseConfig, ConfigError>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || SynapseConfig::load(&path))
}

/// The result of the parse in progress; pending while there is none.
async fn wait_for<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}
