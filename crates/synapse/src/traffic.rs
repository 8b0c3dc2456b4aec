//! A service's traffic counters: what its connections did, counted on the hot path with
//! relaxed atomic adds on fields of the service's state (no lock, no map lookup, no
//! allocation per connection), read by `/status`, `/metrics` and the dashboard.
//!
//! Per-backend counts (connections, failures, bytes) live on each backend's state; these
//! are the service's totals, which outlive the backends that come and go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use daemon::metrics::{Histogram, HistogramSample, LIFETIME_SECONDS, SHORT_SECONDS};
use serde::Serialize;

/// How one connect attempt to a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResult {
    Ok,
    /// The backend's host answered with a reset (`ECONNREFUSED`).
    Refused,
    /// `connect_timeout` passed (or the kernel gave up: `ETIMEDOUT`).
    Timeout,
    /// Anything else: unreachable, out of descriptors, ...
    Error,
}

impl ConnectResult {
    /// The result of a failed connect.
    pub fn of_error(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectResult::Refused,
            std::io::ErrorKind::TimedOut => ConnectResult::Timeout,
            _ => ConnectResult::Error,
        }
    }

    pub const ALL: [ConnectResult; 4] = [
        ConnectResult::Ok,
        ConnectResult::Refused,
        ConnectResult::Timeout,
        ConnectResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectResult::Ok => "ok",
            ConnectResult::Refused => "refused",
            ConnectResult::Timeout => "timeout",
            ConnectResult::Error => "error",
        }
    }
}

/// The counters of one service.
#[derive(Debug)]
pub struct Traffic {
    connections: AtomicU64,
    active: AtomicU64,
    connect_attempts: [AtomicU64; 4],
    retries: AtomicU64,
    replays: AtomicU64,
    bytes: ByteCounts,
    connect_duration: Histogram,
    connection_duration: Histogram,
    /// http mode: answered requests by status class (1xx..5xx), synapse's own answers
    /// included.
    requests: [AtomicU64; 5],
    request_duration: Histogram,
    budget_exhausted: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            connections: AtomicU64::new(0),
            active: AtomicU64::new(0),
            connect_attempts: Default::default(),
            retries: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            bytes: ByteCounts::default(),
            connect_duration: Histogram::new(SHORT_SECONDS),
            connection_duration: Histogram::new(LIFETIME_SECONDS),
            requests: Default::default(),
            request_duration: Histogram::new(SHORT_SECONDS),
            budget_exhausted: AtomicU64::new(0),
        }
    }
}

/// Bytes relayed each way (a service's, or one backend's).
#[derive(Debug, Default)]
pub struct ByteCounts {
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl ByteCounts {
    /// `bytes` more went to the backend (`to_backend`) or to the client.
    pub fn add(&self, to_backend: bool, bytes: u64) {
        let counter = if to_backend {
            &self.to_backend
        } else {
            &self.to_client
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (to the backend, to the client).
    pub fn get(&self) -> (u64, u64) {
        (
            self.to_backend.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// A client connection, counted from its accept to its end (drop).
pub struct ClientConnection<'t> {
    traffic: &'t Traffic,
    accepted: Instant,
}

impl Drop for ClientConnection<'_> {
    fn drop(&mut self) {
        self.traffic.active.fetch_sub(1, Ordering::Relaxed);
        self.traffic
            .connection_duration
            .observe(self.accepted.elapsed());
    }
}

impl Traffic {
    /// A client connection was accepted: counted, and active until the guard drops.
    pub fn accepted(&self) -> ClientConnection<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ClientConnection {
            traffic: self,
            accepted: Instant::now(),
        }
    }

    /// A connect attempt ended with `result`; a successful one took `took`.
    pub fn connect_attempt(&self, result: ConnectResult, took: Duration) {
        self.connect_attempts[result as usize].fetch_add(1, Ordering::Relaxed);
        if result == ConnectResult::Ok {
            self.connect_duration.observe(took);
        }
    }

    /// A connect attempt after a failed one, for the same client connection.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A request its backend closed on unanswered is sent to another backend.
    pub fn replayed(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    pub fn moved(&self, to_backend: bool, bytes: u64) {
        self.bytes.add(to_backend, bytes);
    }

    /// http mode: a request was answered with `status` after `took` (to its response
    /// headers).
    pub fn answered(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        self.request_duration.observe(took);
    }

    /// http mode: a retry was allowed by the policy but the budget was spent.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, with `ejections` (kept by the service's ejector).
    pub fn status(&self, ejections: u64) -> TrafficStatus {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let attempt = |r: ConnectResult| load(&self.connect_attempts[r as usize]);
        TrafficStatus {
            connections_total: load(&self.connections),
            connections_active: load(&self.active),
            connect_attempts: ConnectAttempts {
                ok: attempt(ConnectResult::Ok),
                refused: attempt(ConnectResult::Refused),
                timeout: attempt(ConnectResult::Timeout),
                error: attempt(ConnectResult::Error),
            },
            retries_total: load(&self.retries),
            replays_total: load(&self.replays),
            ejections_total: ejections,
            bytes_to_backend: self.bytes.get().0,
            bytes_to_client: self.bytes.get().1,
            requests: RequestClasses {
                informational: load(&self.requests[0]),
                success: load(&self.requests[1]),
                redirect: load(&self.requests[2]),
                client_error: load(&self.requests[3]),
                server_error: load(&self.requests[4]),
            },
            retry_budget_exhausted_total: load(&self.budget_exhausted),
        }
    }

    pub fn durations(&self) -> Durations {
        Durations {
            connect: self.connect_duration.sample(),
            connection: self.connection_duration.sample(),
            request: self.request_duration.sample(),
        }
    }
}

/// The duration histograms as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// Successful connects to backends.
    pub connect: HistogramSample,
    /// Client connections, accept to close.
    pub connection: HistogramSample,
    /// http mode: requests, arrival to response headers.
    pub request: HistogramSample,
}

/// A service's counters as `/status` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TrafficStatus {
    /// Client connections accepted.
    pub connections_total: u64,
    /// Client connections open now (waiting for a backend, connecting or relayed).
    pub connections_active: u64,
    pub connect_attempts: ConnectAttempts,
    /// Connect attempts after a failed one.
    pub retries_total: u64,
    /// Requests sent again after their backend closed unanswered (`retry_unanswered`).
    pub replays_total: u64,
    pub ejections_total: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// http mode: answered requests by status class.
    pub requests: RequestClasses,
    /// http mode: retries the budget refused.
    pub retry_budget_exhausted_total: u64,
}

/// Answered requests by status class (http mode).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RequestClasses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl RequestClasses {
    pub const LABELS: [&'static str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    pub fn get(&self, label: &str) -> u64 {
        match label {
            "1xx" => self.informational,
            "2xx" => self.success,
            "3xx" => self.redirect,
            "4xx" => self.client_error,
            _ => self.server_error,
        }
    }
}

/// Connect attempts to backends by result.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ConnectAttempts {
    pub ok: u64,
    pub refused: u64,
    pub timeout: u64,
    pub error: u64,
}

impl ConnectAttempts {
    pub fn get(&self, result: ConnectResult) -> u64 {
        match result {
            ConnectResult::Ok => self.ok,
            ConnectResult::Refused => self.refused,
            ConnectResult::Timeout => self.timeout,
            ConnectResult::Error => self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_active_until_its_guard_drops_and_then_timed() {
        let t = Traffic::default();
        let c = t.accepted();
        assert_eq!(t.status(0).connections_active, 1);
        drop(c);
        let s = t.status(0);
        assert_eq!((s.connections_total, s.connections_active), (1, 0));
        assert_eq!(t.durations().connection.count, 1);
    }

    #[test]
    fn only_successful_connects_are_timed() {
        let t = Traffic::default();
        t.connect_attempt(ConnectResult::Refused, Duration::from_millis(1));
        t.connect_attempt(ConnectResult::Ok, Duration::from_millis(2));
        let s = t.status(0);
        assert_eq!((s.connect_attempts.ok, s.connect_attempts.refused), (1, 1));
        assert_eq!(t.durations().connect.count, 1);
    }

    #[test]
    fn errors_are_classified_by_kind() {
        use std::io::{Error, ErrorKind};
        let r = |k| ConnectResult::of_error(&Error::from(k));
        assert_eq!(r(ErrorKind::ConnectionRefused), ConnectResult::Refused);
        assert_eq!(r(ErrorKind::TimedOut), ConnectResult::Timeout);
        assert_eq!(r(ErrorKind::HostUnreachable), ConnectResult::Error);
    }
}
