//! What nerve and synapse share as programs, so that an operator meets one shape twice: the
//! same command line, the same logs, the same signals and the same admin HTTP server.
//!
//! Layout:
//! - [`cli`]: the command line (`-c/--config FILE`, `--check-config`,
//!   `--import-smartstack FILE`, `--log-format`, `--version`) and the `--help` text naming
//!   the signals and `RUST_LOG`.
//! - [`logging`]: the tracing subscriber: text (colour only on a terminal, never with
//!   `NO_COLOR`) or JSON lines.
//! - [`run`]: [`Daemon`], what a program provides, and [`main`], which builds the runtime
//!   and turns signals into the program's operations (SIGHUP: reload, the file parsed on
//!   the blocking pool; SIGTERM/SIGINT: shut down).
//! - [`admin`]: the loopback admin HTTP server (`GET /health`, `GET /status`, `GET /metrics`,
//!   `GET /` and POST routes a program adds).
//! - [`dashboard`]: the live dashboard's files, compiled in: a program's page and the
//!   stylesheet and script every page shares (`assets/`).
//! - `probe`: `--probe-ready ADDR`, the program as its own readiness probe.
//! - [`metrics`]: metric families read at scrape time, written as OpenMetrics text.
//!
//! Nothing here knows nerve, synapse or etcd; they depend on this crate, not the reverse.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod dashboard;
pub mod logging;
pub mod metrics;
mod probe;
pub mod run;

pub use cli::About;
pub use run::{main, BoxError, Daemon, Imported};
