//! One accepted connection: choose a backend, connect (moving to another backend when a
//! connect fails or times out), then relay bytes until either side is done.
//!
//! The client only ever sees a failure (its connection closed with nothing sent) when
//! no backend could be reached within `retries` further attempts. Connect failures feed
//! passive outlier ejection; successes end it early. With `retry_unanswered`, a backend
//! that closes the connection before answering the client's request is one more failed
//! attempt: the request is sent again to another backend ([`crate::replay`]).
//!
//! This is the per-connection cost of synapse on top of the relay, so it is kept lean: the
//! client leg's socket options come from the listener ([`listen`]), a pick allocates
//! nothing (per-thread scratch buffers), the configuration is read once through a guard,
//! and the drain/shutdown branches next to the relay are polled only when they fire
//! ([`crate::quiet`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::backends::{self, BackendSet, BackendState};
use crate::balance::{self, Candidate, ZoneAffinity};
use crate::config::Balance;
use crate::copy;
use crate::ejection::EjectionPolicy;
use crate::quiet;
use crate::replay;
use crate::resolve;
use crate::state::ServiceState;
use crate::traffic::{ConnectResult, Traffic};

/// Keepalive on both legs, so that a peer that vanished (host down, partition) is noticed
/// and its connection freed, instead of a slot held forever.
const KEEPALIVE: TcpKeepalive = TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// NODELAY because synapse adds a hop: Nagle's delay on top of the app's own buffering
/// would add latency to every small request.
///
/// Five `setsockopt` calls. The client leg does not pay them per connection: they are set
/// once on the listening socket, and Linux copies them into every accepted socket;
/// elsewhere `serve` sets them on the accepted socket too.
pub fn tune<'s>(socket: impl Into<SockRef<'s>>) {
    let socket = socket.into();
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Err(e) = socket.set_tcp_keepalive(&KEEPALIVE) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// A service listener with the client leg's socket options set before `listen`, so that
/// every connection it accepts, the very first included, inherits them (Linux).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // What TcpListener::bind does: a restarted synapse must not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    tune(&socket);
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// tokio's own default for `TcpListener::bind`.
const LISTEN_BACKLOG: u32 = 1024;

/// Whether accepted sockets inherit the listener's NODELAY and keepalive options: Linux
/// clones the listener's TCP state into each accepted socket (a test below checks it);
/// other systems differ, so there the options are set per connection.
const ACCEPTED_INHERIT_OPTIONS: bool = cfg!(target_os = "linux");

/// Counts a live connection on a backend for as long as it is held.
pub struct ActiveGuard(Arc<BackendState>);

impl ActiveGuard {
    /// Counts a connection to the backend of `state` from now on: from its connect, so
    /// that a connection still in its first exchange (`retry_unanswered`) is seen by
    /// least_conn and `/status`, and keeps its backend draining (and under
    /// `drain_timeout`) if the backend leaves the registry meanwhile.
    pub fn hold(state: Arc<BackendState>) -> Self {
        state.connected();
        ActiveGuard(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// Counts relayed bytes on the service and on the backend: two relaxed atomic adds per
/// burst.
struct BytesMeter<'a> {
    service: &'a Traffic,
    backend: &'a BackendState,
}

impl datapath::Meter for BytesMeter<'_> {
    fn moved(&self, to_upstream: bool, bytes: u64) {
        self.service.moved(to_upstream, bytes);
        self.backend.moved(to_upstream, bytes);
    }
}

fn candidates_into(
    set: &BackendSet,
    zone: Option<&str>,
    now: u64,
    slow_start_ms: u64,
    out: &mut Vec<Candidate>,
) {
    out.clear();
    out.extend(set.active.iter().map(|b| Candidate {
        weight: b.spec.weight,
        ramp: b.state.ramp(now, slow_start_ms),
        ejected: b.state.is_ejected(now),
        latency: b.state.latency().get(),
        active: b.state.active(),
        local: zone.is_some() && b.spec.zone.as_deref() == zone,
    }));
}

/// Buffers for one pick, reused by every pick on the thread: a pick runs between awaits,
/// so a thread's buffers are never in use twice at once.
#[derive(Default)]
struct PickScratch {
    candidates: Vec<Candidate>,
    pool: Vec<usize>,
}

thread_local! {
    static SCRATCH: RefCell<PickScratch> = RefCell::default();
}

/// What a connection needs from the service's configuration, copied out so that no
/// reference count of the shared config is touched per connection.
#[derive(Clone, Copy)]
pub struct Knobs {
    balance: Balance,
    retries: u32,
    retry_unanswered: bool,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    affinity: Option<ZoneAffinity>,
    policy: EjectionPolicy,
    /// 0: off.
    slow_start_ms: u64,
}

impl Knobs {
    /// The service's knobs now.
    pub fn of(service: &ServiceState) -> Knobs {
        let config = service.config();
        Knobs {
            balance: config.balance(),
            retries: config.retries,
            retry_unanswered: config.retry_unanswered,
            connect_timeout: config.connect_timeout.get(),
            idle_timeout: config.idle_timeout.map(|t| t.get()),
            affinity: service.zone().as_ref().as_ref().map(|_| ZoneAffinity {
                min_local: config.min_zone_backends,
            }),
            policy: EjectionPolicy::of(&config),
            slow_start_ms: config.slow_start.map_or(0, |t| t.get().as_millis() as u64),
        }
    }

    /// How many further attempts a failure may take.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

/// Chooses a backend among those not `tried` yet.
pub fn pick(
    service: &ServiceState,
    set: &BackendSet,
    knobs: &Knobs,
    tried: &[usize],
) -> Option<usize> {
    let zone = service.zone();
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let PickScratch { candidates, pool } = &mut *scratch;
        let now = backends::now_ms();
        candidates_into(set, zone.as_deref(), now, knobs.slow_start_ms, candidates);
        balance::pick_in(
            knobs.balance,
            candidates,
            tried,
            knobs.affinity,
            &set.schedule,
            || service.next_cursor(),
            // Made per pick: a thread's generator must not live across an await.
            &mut rand::rng(),
            pool,
        )
    })
}

/// Whether a failed connect ran out of this host's resources (descriptors, memory, local
/// ports) rather than reaching a backend that refused or did not answer.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        matches!(
            Errno::from_raw(code),
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM | Errno::EADDRNOTAVAIL
        )
    })
}

/// Why a client could not be given a backend connection.
enum Unserved {
    /// Every backend tried failed (or there was none): the message for the log.
    NoBackend(&'static str),
    /// This process is out of descriptors or memory; nobody is to blame.
    Exhausted(io::Error),
}

/// Connects to a backend, moving on to another one after each failure (recorded for
/// ejection and added to `tried`) until `retries` further attempts are spent. Backends not
/// tried yet come first; once all have failed, they are tried again.
async fn connect_some(
    service: &ServiceState,
    set: &BackendSet,
    knobs: &Knobs,
    tried: &mut Vec<usize>,
) -> Result<(TcpStream, usize), Unserved> {
    loop {
        if tried.len() > knobs.retries as usize {
            break;
        }
        let Some(i) = pick(service, set, knobs, tried).or_else(|| {
            // Every backend has failed this connection once: with attempts left, go round
            // again. What failed may have been a dropped SYN or a full accept queue for a
            // moment, and with one backend there is nowhere else to go.
            (!tried.is_empty())
                .then(|| pick(service, set, knobs, &[]))
                .flatten()
        }) else {
            break;
        };
        let backend = &set.active[i];
        let traffic = service.traffic();
        if !tried.is_empty() {
            traffic.retried();
        }
        let started = Instant::now();
        let attempt = tokio::time::timeout(knobs.connect_timeout, resolve::dial(backend)).await;
        let result = match &attempt {
            Ok(Ok(_)) => ConnectResult::Ok,
            Ok(Err(e)) => ConnectResult::of_error(e),
            Err(_) => ConnectResult::Timeout,
        };
        traffic.connect_attempt(result, started.elapsed());
        match attempt {
            Ok(Ok(stream)) => {
                let ejection = backend.state.ejection();
                let ejector = service.ejector();
                ejector.connect_succeeded(ejection, knobs.policy, &backend.addr());
                tune(&stream);
                return Ok((stream, i));
            }
            // Our own limits, not the backend's fault: blaming it would eject healthy
            // backends one after another while this process is out of descriptors.
            Ok(Err(e)) if is_local_exhaustion(&e) => return Err(Unserved::Exhausted(e)),
            Ok(Err(e)) => connect_failed(service, set, backend, knobs.policy, &e),
            Err(_) => connect_failed(service, set, backend, knobs.policy, &"connect timed out"),
        }
        tried.push(i);
    }
    Err(Unserved::NoBackend(if set.active.is_empty() {
        "no backends"
    } else {
        "no backend could be reached"
    }))
}

/// A connect to `backend` failed: count it, look its name up again soon, and let the
/// service's ejector decide whether to eject it.
pub fn connect_failed(
    service: &ServiceState,
    set: &BackendSet,
    backend: &backends::Backend,
    policy: EjectionPolicy,
    error: &dyn std::fmt::Display,
) {
    backend.state.count_connect_failure();
    backend.state.resolution().mark_stale();
    service.ejector().connect_failed(
        backend.state.ejection(),
        set.active.iter().map(|b| b.state.ejection()),
        policy,
        (&backend.addr(), &backend.spec.id),
        error,
    );
}

fn note(service: &ServiceState, unserved: Unserved) {
    match unserved {
        Unserved::NoBackend(why) => service.note_unserved(why),
        Unserved::Exhausted(e) => service.note_unserved(&format!("cannot open a connection: {e}")),
    }
}

/// Serves one accepted client connection to its end. Runs in the connection's span (a
/// debug span, free when debug logging is off); its warnings and info lines (ejections,
/// unserved clients) are recorded in the service's span, entered only when one is logged.
pub async fn serve(service: &ServiceState, client: TcpStream) {
    let _counted = service.traffic().accepted();
    if !ACCEPTED_INHERIT_OPTIONS {
        tune(&client);
    }
    if !service.wait_until_known().await {
        service.note_unserved("no backend set known yet");
        return;
    }
    let knobs = Knobs::of(service);
    // Held across the connect awaits (a failure is judged against this set), so a full
    // reference rather than a guard.
    let set = service.set();
    // Backends tried and failed, once per failed attempt; no allocation unless one fails.
    let mut tried: Vec<usize> = Vec::new();
    let (mut upstream, mut i) = match connect_some(service, &set, &knobs, &mut tried).await {
        Ok(connected) => connected,
        Err(unserved) => return note(service, unserved),
    };
    let mut guard = ActiveGuard::hold(set.active[i].state.clone());
    if knobs.retry_unanswered {
        let mut kept = replay::Kept::default();
        loop {
            let exchange =
                replay::first_exchange(&client, &upstream, &mut kept, knobs.idle_timeout);
            let drain = guard.0.drain_token();
            let ended = tokio::select! {
                ended = exchange => ended,
                _ = drain.cancelled() => {
                    tracing::debug!(
                        "connection cut before its first answer: its backend drained for drain_timeout"
                    );
                    return;
                }
                _ = service.cut().cancelled() => return,
            };
            match ended {
                replay::FirstExchange::Relay => break,
                replay::FirstExchange::Unanswered(e) => {
                    let backend = &set.active[i];
                    backend.state.count_unanswered();
                    service.traffic().replayed();
                    tracing::debug!(
                        backend = %backend.addr(), error = %e,
                        "request unanswered; sending it to another backend"
                    );
                    tried.push(i);
                    // The connection is no longer on that backend while another is sought.
                    drop(guard);
                    (upstream, i) = match connect_some(service, &set, &knobs, &mut tried).await {
                        Ok(connected) => connected,
                        Err(unserved) => return note(service, unserved),
                    };
                    guard = ActiveGuard::hold(set.active[i].state.clone());
                }
                replay::FirstExchange::ClientFailed(e) => {
                    tracing::debug!(error = %e, "client failed before its backend answered");
                    return;
                }
                replay::FirstExchange::Idle => {
                    tracing::debug!("connection closed: idle timeout");
                    return;
                }
            }
        }
    }
    drop(set);
    let drain = guard.0.drain_token();
    // Polled only when a token fires, not on every message the relay wakes up for.
    let cut = std::pin::pin!(async {
        tokio::select! {
            _ = drain.cancelled() => "connection cut: its backend drained for drain_timeout",
            _ = service.cut().cancelled() => "connection cut at the end of the shutdown timeout",
        }
    });
    let cut = quiet::polled_when_woken(cut);
    let meter = BytesMeter {
        service: service.traffic(),
        backend: &guard.0,
    };
    let ended = tokio::select! {
        ended = copy::relay(client, upstream, knobs.idle_timeout, &meter) => ended,
        why = cut => {
            tracing::debug!("{why}");
            return;
        }
    };
    match ended {
        copy::Ended::Closed(up, down) => {
            tracing::trace!(up, down, "connection closed")
        }
        copy::Ended::Idle => {
            tracing::debug!("connection closed: idle timeout")
        }
        copy::Ended::Failed(e) => {
            tracing::debug!(error = %e, "connection ended with an error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_resource_errors_count_as_exhaustion() {
        use std::io::{Error, ErrorKind};
        for code in [
            nix::libc::EMFILE,
            nix::libc::ENFILE,
            nix::libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_exhaustion(&Error::from_raw_os_error(code)));
        }
        for code in [
            nix::libc::ECONNREFUSED,
            nix::libc::EHOSTUNREACH,
            nix::libc::ETIMEDOUT,
        ] {
            assert!(!is_local_exhaustion(&Error::from_raw_os_error(code)));
        }
        assert!(!is_local_exhaustion(&Error::from(ErrorKind::TimedOut)));
    }

    fn assert_tuned(stream: &TcpStream) {
        let socket = SockRef::from(stream);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    }

    /// The upstream leg: options set on the connected socket.
    #[tokio::test]
    async fn tune_sets_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
        for stream in [&client, &accepted] {
            tune(stream);
            assert_tuned(stream);
        }
    }

    /// The client leg: `serve` sets nothing on Linux, so the accepted socket must get every
    /// option from the listener.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
        if !ACCEPTED_INHERIT_OPTIONS {
            tune(&accepted);
        }
        assert_tuned(&accepted);
    }
}
