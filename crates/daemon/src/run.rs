//! The life of a daemon process: command line, logging, runtime, then signals turned into
//! the program's operations until SIGTERM or SIGINT.

use std::fmt::Display;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

use crate::cli::{About, Action, Cli};

/// An error from starting a program, with its `source()` chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a program provides to [`main`].
pub trait Daemon: Sized {
    type Config: Send + 'static;
    type ConfigError: Display + Send + 'static;

    /// Reads and validates the configuration file; the error names the file and the key.
    /// Runs on the blocking pool for a reload.
    fn load(path: &Path) -> Result<Self::Config, Self::ConfigError>;

    /// `--import-smartstack`: converts `text`, the Airbnb SmartStack JSON configuration read
    /// from `path`, into this program's YAML. The error names the file and the JSON path.
    fn import_smartstack(path: &Path, text: &str) -> Result<Imported, String>;

    /// Runs after logging is set up and before the runtime starts.
    fn prepare(_config: &Self::Config) {}

    /// Starts everything; signals are already being caught.
    fn start(config: Self::Config) -> impl Future<Output = Result<Self, BoxError>>;

    /// Applies a new, valid configuration. A rejected reload is logged by the program and
    /// leaves the running configuration in force.
    fn reload(&mut self, config: Self::Config) -> impl Future<Output = ()>;

    /// Stops, doing whatever a clean exit means for the program.
    fn shutdown(self) -> impl Future<Output = ()>;

    /// Whether the program is ready for traffic (what its `GET /ready` says). Polled after
    /// start until true, then told to systemd (READY=1) once.
    fn is_ready(&self) -> bool {
        true
    }
}

/// How often readiness is polled until it is reached.
const READY_POLL: Duration = Duration::from_millis(50);

/// What `--import-smartstack` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The converted configuration, for stdout.
    pub yaml: String,
    /// What was not carried over, one line each on stderr, each naming its JSON path.
    pub warnings: Vec<String>,
}

/// The whole `main` of a daemon: parse the command line, then `--check-config`,
/// `--import-smartstack` or run.
pub fn main<D: Daemon>(about: About) -> ExitCode {
    let cli = Cli::parse_for(&about);
    let path = match cli.action {
        Action::CheckConfig(path) => return check_config::<D>(&path),
        Action::ImportSmartstack(path) => return import_smartstack::<D>(&path),
        Action::ProbeReady(addr) => return crate::probe::probe_ready(addr),
        Action::Run(path) => path,
    };
    crate::logging::init(cli.log_format);
    let config = match D::load(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    D::prepare(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(serve::<D>(about, path, config));
    // A reload still parsing a huge file on the blocking pool must not hold the exit, as
    // the default drop of the runtime would.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %chain(e.as_ref()), "{} failed", about.name);
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: "ok" on stdout, or the problem on stderr and exit 1. No logging.
fn check_config<D: Daemon>(path: &Path) -> ExitCode {
    match D::load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `--import-smartstack`: the converted file on stdout, each warning on stderr; exit 1 with
/// the problem when the file cannot be read or converted. No logging.
fn import_smartstack<D: Daemon>(path: &Path) -> ExitCode {
    let converted = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
        .and_then(|text| D::import_smartstack(path, &text));
    let imported = match converted {
        Ok(imported) => imported,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    // Not print!: a closed pipe (`| head`) must be an error message, not a panic.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(imported.yaml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the converted configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `outer: inner: ...`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The stop signals and SIGHUP, caught from before the program starts so that a SIGTERM
/// during start-up is not the default (abrupt) exit.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal: `Some(name)` of a stop signal, `None` for SIGHUP. Cancel-safe.
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Some("SIGTERM"),
            _ = self.int.recv() => Some("SIGINT"),
            _ = self.hup.recv() => None,
        }
    }
}

/// A configuration load running on the blocking pool.
type Loading<D> = JoinHandle<Result<<D as Daemon>::Config, <D as Daemon>::ConfigError>>;

/// SIGHUPs turned into loads of the file, one at a time, off the async threads: YAML
/// parse time grows with the square of the nesting, and SIGTERM must never wait behind it.
struct Reloads<D: Daemon> {
    path: PathBuf,
    loading: Option<Loading<D>>,
    /// A SIGHUP came during a load: the file may have changed after it was read.
    again: bool,
}

impl<D: Daemon> Reloads<D> {
    fn new(path: PathBuf) -> Self {
        Reloads {
            path,
            loading: None,
            again: false,
        }
    }

    fn requested(&mut self) {
        if self.loading.is_some() {
            self.again = true;
            tracing::info!("SIGHUP while reading the configuration: reading it again afterwards");
        } else {
            tracing::info!(file = %self.path.display(), "SIGHUP: reloading the configuration");
            self.start();
        }
    }

    fn start(&mut self) {
        let path = self.path.clone();
        self.loading = Some(tokio::task::spawn_blocking(move || D::load(&path)));
    }

    /// The next loaded configuration, or `None` for a file that was refused (logged
    /// here). Never completes while no load runs.
    async fn loaded(&mut self) -> Option<D::Config> {
        let result = match &mut self.loading {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        };
        self.loading = None;
        if std::mem::take(&mut self.again) {
            tracing::info!(file = %self.path.display(), "reloading the configuration again");
            self.start();
        }
        match result {
            Ok(Ok(config)) => Some(config),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reload rejected: invalid configuration; the running configuration stays");
                None
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "reload rejected: reading the configuration failed; the running configuration stays"
                );
                None
            }
        }
    }
}

async fn serve<D: Daemon>(about: About, path: PathBuf, config: D::Config) -> Result<(), BoxError> {
    let mut signals = Signals::install()?;
    let mut daemon = D::start(config).await?;
    let mut reloads = Reloads::<D>::new(path);
    let mut ready_poll = Some(tokio::time::interval(READY_POLL));
    loop {
        tokio::select! {
            _ = tick(&mut ready_poll) => {
                if daemon.is_ready() {
                    ready_poll = None;
                    tracing::info!("{} is ready", about.name);
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
            signal = signals.next() => match signal {
                Some(name) => {
                    tracing::info!("{name}: stopping {}", about.name);
                    break;
                }
                None => reloads.requested(),
            },
            Some(config) = reloads.loaded() => daemon.reload(config).await,
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    Ok(())
}

/// The next tick of `interval`; never, once it is gone.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Tells systemd (a `Type=notify` unit: `NOTIFY_SOCKET` is set) how the program stands;
/// nothing anywhere else.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
