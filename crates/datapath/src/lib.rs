//! The byte relay between a client socket and an upstream socket: the data path of synapse.
//!
//! [`relay`] moves bytes both ways between two connected [`TcpStream`]s until both
//! directions have ended, and returns how many bytes went each way ([`relay_metered`]
//! also reports them to a [`Meter`] burst by burst, while they move). Compared with
//! `tokio::io::copy_bidirectional` it
//!
//! - moves bulk data with Linux `splice(2)` through a pipe (socket -> pipe -> socket), so
//!   the payload is never copied into user space ([`Strategy::Splice`]);
//! - moves small messages (request/response traffic) with one `read` and one `write` per
//!   message: a short read is taken as "the socket is drained" (the rule nginx and
//!   tokio's own `poll_read` use), which saves the `read` that would only return `EAGAIN`
//!   ([`Strategy::Buffered`]);
//! - by default picks per direction and per burst: small messages are read into a buffer,
//!   a read that fills the whole buffer switches that direction to splice until its
//!   bursts become small again ([`Strategy::Auto`]);
//! - holds no buffer and no pipe while a connection is idle: both come from small
//!   per-thread pools when data arrives and go back when the direction runs dry, so 10,000
//!   idle connections cost neither memory nor file descriptors beyond their sockets;
//! - drives both directions from one task with `poll_read_ready()/poll_write_ready()` +
//!   `try_io`, without splitting the streams; the whole relay state is ~1.5 KB per
//!   connection.
//!
//! Half-close is propagated: when one side sends FIN, the relay shuts down the write side
//! of the other socket and keeps relaying the other direction until it ends too. An error
//! on either side (reset, broken pipe) ends both directions and is passed on as a reset
//! (RST, so a cut-off response never looks complete); the idle timeout ends both with a
//! normal close. The sockets are closed when [`relay`] returns.
//!
//! Portability: splice is Linux-only. Elsewhere, or when splice fails with an error that
//! means "not supported for these descriptors" (`EINVAL`, `ENOSYS`, ...), the relay falls
//! back to pooled buffers for that direction. `DATAPATH_STRATEGY=buffered|splice|auto` in
//! the environment overrides the default strategy (read once per process), which is how
//! the benchmarks and tests force the fallback.
//!
//! Modules: [`options`] (knobs and the environment override), `direction` (one direction's
//! loop), `buffered` (the portable path), `splice` (the Linux path: pipes, their pool and
//! the splice calls), `activity` (the idle timer). There is no `unsafe` in this crate: the
//! system calls go through `nix`'s safe wrappers over borrowed file descriptors.
#![forbid(unsafe_code)]

mod activity;
mod buffered;
mod direction;
pub mod options;
#[cfg(target_os = "linux")]
mod splice;

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use direction::Metered;

pub use activity::IdleTimeout;
pub use options::{RelayOptions, Strategy};

/// Whether `e` is the relay's own idle timeout (not a socket's `ETIMEDOUT`).
pub fn is_idle_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>())
}

use std::sync::atomic::{AtomicU64, Ordering};

static SPLICED: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);

/// Process-wide totals of how the relay moved bytes, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Bytes moved with `splice(2)` (never copied into user space).
    pub spliced: u64,
    /// Bytes moved through a user-space buffer.
    pub copied: u64,
}

/// The totals since the process started.
pub fn path_counters() -> PathCounters {
    PathCounters {
        spliced: SPLICED.load(Ordering::Relaxed),
        copied: COPIED.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_spliced(n: u64) {
    SPLICED.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn count_copied(n: u64) {
    COPIED.fetch_add(n, Ordering::Relaxed);
}

/// Where a relay reports bytes as they move: after each burst (a run of reads and writes
/// until the source is drained), so counters built on it move during a long connection,
/// not only at its end. Called on the relay's task; keep it to a few atomic adds.
pub trait Meter: Sync {
    /// `bytes` more went client -> upstream (`to_upstream`) or upstream -> client.
    fn moved(&self, to_upstream: bool, bytes: u64);
}

/// No meter.
impl Meter for () {
    fn moved(&self, _to_upstream: bool, _bytes: u64) {}
}

/// Bytes moved in each direction by one [`relay`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the client and written to the upstream.
    pub client_to_upstream: u64,
    /// Bytes read from the upstream and written to the client.
    pub upstream_to_client: u64,
}

/// Relays bytes between `client` and `upstream` until both directions have ended, with the
/// default options ([`RelayOptions::default`]) and the given idle timeout.
///
/// Returns the bytes moved each way. Returns an error (and closes both sockets) when either
/// socket fails, or with [`io::ErrorKind::TimedOut`] when no byte moved in either direction
/// for `idle_timeout` ([`is_idle_timeout`] tells that case apart).
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle_timeout: Option<Duration>,
) -> io::Result<RelayStats> {
    let options = RelayOptions {
        idle_timeout,
        ..RelayOptions::default()
    };
    relay_with(client, upstream, &options).await
}

/// Waits until `s` is readable. Uses the stream's single reader waker slot
/// (`poll_read_ready`) rather than `readable()`, whose future is ~150 bytes larger and
/// queues a waiter under a lock: only this relay reads `s`, so one slot is enough.
pub(crate) async fn readable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
}

/// Waits until `s` is writable (see [`readable`]).
pub(crate) async fn writable(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_write_ready(cx)).await
}

/// Makes the coming close send RST instead of FIN (`SO_LINGER` 0).
fn abort(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// [`relay`] with every knob explicit.
pub fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    options: &RelayOptions,
) -> impl std::future::Future<Output = io::Result<RelayStats>> + Send + '_ {
    // Not an `async fn` around the call: that would nest one more state machine in the
    // future every connection holds.
    relay_metered(client, upstream, options, &())
}

/// [`relay_with`] reporting the bytes to `meter` as they move.
pub async fn relay_metered<M: Meter>(
    client: TcpStream,
    upstream: TcpStream,
    options: &RelayOptions,
    meter: &M,
) -> io::Result<RelayStats> {
    let activity = activity::Activity::new(options.idle_timeout);
    let one_done = std::sync::atomic::AtomicBool::new(false);
    let result = {
        // The direction futures are created inside the block, not captured by it: captured
        // futures would be stored twice in the state machine (as captures and as locals).
        let both = async {
            tokio::try_join!(
                direction::run(
                    &client,
                    &upstream,
                    options,
                    &activity,
                    &one_done,
                    Metered {
                        meter,
                        to_upstream: true,
                    }
                ),
                direction::run(
                    &upstream,
                    &client,
                    options,
                    &activity,
                    &one_done,
                    Metered {
                        meter,
                        to_upstream: false,
                    }
                ),
            )
        };
        // Pinned here and polled by reference: moving it into `select!` would make the
        // future (held once per connection) carry two copies of the relay state.
        tokio::pin!(both);
        tokio::select! {
            res = &mut both => res,
            err = activity.expired() => Err(err),
        }
    };
    let (client_to_upstream, upstream_to_client) = match result {
        Ok(r) => r,
        Err(e) => {
            // A failure is passed on as a reset (not a FIN that would make a cut-off
            // response look complete); an idle timeout closes both sides gracefully.
            if !is_idle_timeout(&e) {
                abort(&client);
                abort(&upstream);
            }
            return Err(e);
        }
    };
    Ok(RelayStats {
        client_to_upstream,
        upstream_to_client,
    })
}

#[cfg(test)]
mod tests {
    /// The relay future is held for every live connection, idle or not: its size is most
    /// of the per-connection memory, so it is guarded here.
    #[tokio::test]
    async fn relay_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = l.accept().await.unwrap();
        let o = super::RelayOptions::default();
        // With a meter, as synapse relays (a reference to its counters).
        struct Counting(std::sync::atomic::AtomicU64);
        impl super::Meter for Counting {
            fn moved(&self, _to_upstream: bool, bytes: u64) {
                self.0
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let meter = Counting(Default::default());
        let f = super::relay_metered(a, b, &o, &meter);
        let size = std::mem::size_of_val(&f);
        // 1,504 bytes before the meter (issue 10), 1,600 with it.
        assert!(size <= 1600, "relay future is {size} bytes");
    }
}
