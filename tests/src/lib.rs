//! Test support shared by every crate's tests, and home of the end-to-end tests (`e2e/`).
//!
//! - [`etcd`]: real etcd servers (single member or cluster) on free loopback ports with temp
//!   data dirs, stopped, paused, restarted or wiped on demand, killed by PID on drop.
//! - [`certs`]: a test CA, server and client certificates (client CNs are etcd users).
//! - [`backend`]: TCP backends that greet each connection with their name, then echo.
//! - [`process`]: child processes killed by PID on drop, output kept in a log file.
//! - [`daemon`]: the real `nerve`/`synapse` binaries started on a configuration of the
//!   test's, waited for until they say they started; the one way tests start them.
//! - [`admin`]: requests to a daemon's admin HTTP server.
//! - [`docker`]: a Docker daemon (started if none answers), and a scope that removes every
//!   container, network and image a test names with its prefix.
//! - [`bulk`]: thousands of registrations written in transactions, records of real size.
//! - [`wait_until`] and [`free_port`]: polling with a deadline instead of sleeps.
//! - [`netns`]: simulated hosts (network namespaces on one bridge, 198.18.0.0/15 addresses)
//!   that can be cut off or slowed down, etcd members on them ([`EtcdCluster::start_on`]);
//!   [`load`]: a load client run inside one of them.
//!
//! Everything binds 127.0.0.1 only, or addresses that exist only inside namespaces
//! [`netns`] created, or on internal Docker networks (198.18.x.0/24, no route off the
//! machine) that the container test creates.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod bulk;
pub mod certs;
pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod link;
pub mod load;
pub mod netns;
pub mod process;

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use backend::Backend;
pub use daemon::Daemon;
pub use etcd::{EtcdCluster, EtcdServer};
pub use link::Link;
pub use process::ChildProcess;

/// The value of the sample `series` (name and labels exactly as written, e.g.
/// `x_total{service="web"}`) in an OpenMetrics text, if present.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A port that was free a moment ago on 127.0.0.1, never handed out before by this process.
///
/// Asking the kernel for port 0 and closing the socket returned the same port twice in a
/// row (an etcd cluster got one port for two members), and a port in the ephemeral range
/// (32768-60999) can become an outgoing connection's source port before the test binds it.
/// So ports come from below that range, in turn, from a start spread by the process id (test
/// binaries run one after another).
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// Polls `condition` every 20 ms until it returns true; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`] but returns how long it took, for asserting upper bounds on latency.
pub async fn time_until<F, Fut>(what: &str, deadline: Duration, condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    wait_until(what, deadline, condition).await;
    start.elapsed()
}

/// Says loudly that the test `what` did not run, `why`, and `fix` (how to make it run).
/// Straight to stderr, not `eprintln!`: the harness shows a passing test's captured output
/// only with --nocapture, and a skip must be seen in `make test`'s output.
pub fn skipped(what: &str, why: &str, fix: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n************************************************************\n\
         SKIPPED: {what} did not run.\n{why}\n{fix}\n\
         ************************************************************\n"
    );
}
