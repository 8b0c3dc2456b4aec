//! When http mode may send a request again (pure decisions), and the budget that keeps
//! retries from multiplying an outage.
//!
//! A request is sent again to another backend when the attempt failed before any response
//! byte came back and sending it twice is safe: always when it never reached the backend
//! (the connect failed) or a gRPC server refused it unrun (UNAVAILABLE with no message),
//! else only for idempotent methods (RFC 9110 section 9.2.2). A
//! response whose status is in `retry_on` is retried likewise. Only requests whose body is
//! kept (at most [`REPLAY_BODY_MAX`] bytes) can be sent again at all.

use std::sync::Mutex;
use std::time::Instant;

use hyper::Method;

/// The largest request body kept for a replay; larger ones are streamed, without retry.
pub const REPLAY_BODY_MAX: u64 = 64 * 1024;

/// How an attempt ended, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connect failed: the request never left.
    NotSent,
    /// The connection failed or was reset before any response byte.
    NoResponse,
    /// A response with a status in `retry_on`.
    RetryableStatus,
    /// A gRPC answer of UNAVAILABLE with no message (trailers only): the server refused
    /// the call without running it.
    GrpcUnavailable,
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a request with `method` whose body is kept (`replayable`) may be sent again
/// after `failure`.
pub fn may_retry(method: &Method, replayable: bool, failure: Failure) -> bool {
    replayable
        && match failure {
            Failure::NotSent | Failure::GrpcUnavailable => true,
            Failure::NoResponse | Failure::RetryableStatus => is_idempotent(method),
        }
}

/// Retries at most [`BUDGET_RATIO`] of requests plus [`BUDGET_PER_SECOND`] per second
/// (what a quiet service may always retry), so that a failing backend set is not sent
/// several times its traffic.
pub const BUDGET_RATIO: f64 = 0.2;
pub const BUDGET_PER_SECOND: f64 = 10.0;
/// Tokens a budget can save up: a burst of retries after a quiet spell.
const BUDGET_MAX: f64 = 100.0;

/// A service's retry budget: tokens earned by requests and by time, spent by retries.
#[derive(Debug)]
pub struct Budget {
    inner: Mutex<(f64, Instant)>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            inner: Mutex::new((BUDGET_PER_SECOND, Instant::now())),
        }
    }
}

impl Budget {
    /// A request arrived: it earns [`BUDGET_RATIO`] of a retry.
    pub fn deposit(&self) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.0 = (b.0 + BUDGET_RATIO).min(BUDGET_MAX);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(b.1).as_secs_f64() * BUDGET_PER_SECOND;
        *b = ((b.0 + earned).min(BUDGET_MAX), now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_requests_are_sent_twice() {
        use Failure::*;
        assert!(may_retry(&Method::POST, true, NotSent));
        assert!(!may_retry(&Method::POST, true, NoResponse));
        assert!(!may_retry(&Method::POST, true, RetryableStatus));
        assert!(may_retry(&Method::GET, true, NoResponse));
        assert!(may_retry(&Method::PUT, true, RetryableStatus));
        assert!(
            !may_retry(&Method::GET, false, NotSent),
            "a streamed body is gone"
        );
    }

    #[test]
    fn the_budget_caps_retries_at_a_share_of_requests() {
        let budget = Budget::default();
        // What a quiet service starts with, then nothing left at once.
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
            assert!(granted < 1_000, "unbounded");
        }
        assert!(granted <= BUDGET_PER_SECOND as usize + 1, "{granted}");
        for _ in 0..100 {
            budget.deposit();
        }
        let mut more = 0;
        while budget.withdraw() {
            more += 1;
        }
        // 100 requests earn 20 retries (plus what a few microseconds earned).
        assert!((20..=21).contains(&more), "{more}");
    }
}
