//! The idle timer shared by both directions of one relay: each direction stamps the time
//! whenever it moves bytes, and [`Activity::expired`] resolves once neither did for the
//! idle timeout. Without a timeout, stamping is a no-op.
#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The error payload of an idle timeout, so callers can tell it from a socket's own
/// `ETIMEDOUT` (see [`crate::is_idle_timeout`]).
#[derive(Debug)]
pub struct IdleTimeout(pub Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no data in either direction for {:?}", self.0)
    }
}

impl std::error::Error for IdleTimeout {}

pub(crate) struct Activity {
    timeout: Option<Duration>,
    start: Instant,
    /// Milliseconds since `start` of the last byte moved.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        Activity {
            timeout,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records that bytes moved just now.
    #[inline]
    pub(crate) fn touch(&self) {
        if self.timeout.is_some() {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Resolves with a `TimedOut` error once no byte moved for the timeout; never resolves
    /// without one.
    pub(crate) async fn expired(&self) -> io::Error {
        let Some(timeout) = self.timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return io::Error::new(io::ErrorKind::TimedOut, IdleTimeout(timeout));
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_after_timeout_without_activity() {
        let a = Activity::new(Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        let err = a.expired().await;
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(crate::is_idle_timeout(&err));
        assert!(!crate::is_idle_timeout(&io::ErrorKind::TimedOut.into()));
        assert!(t0.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_deadline() {
        let a = Activity::new(Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        tokio::select! {
            _ = a.expired() => {}
            _ = async {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    a.touch();
                }
                std::future::pending::<()>().await
            } => {}
        }
        // Touched at 3, 6 and 9 s: expires at 14 s.
        assert!(t0.elapsed() >= Duration::from_secs(14));
    }
}
