//! `max_connections`: a counter of a service's live connections that the accept loop waits
//! on at the limit (backpressure: clients queue in the kernel's backlog). The limit is the
//! configured `max_connections`, or the service's share of the descriptor limit when that
//! is lower ([`crate::descriptors`]).
//!
//! Built on two atomics instead of a `tokio::sync::Semaphore`, whose release takes the
//! semaphore's waiter lock on every call: that was one lock per connection, shared by both
//! runtime workers. Here taking and releasing a slot is one atomic read-modify-write; the
//! `Notify` (and its lock) is only touched while the service is at its limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

pub struct Limit {
    active: AtomicUsize,
    /// The limit in force: the lower of `max_connections` and the descriptor cap.
    max: AtomicUsize,
    /// `max_connections` and the descriptor cap, if any (only touched by reloads).
    configured: Mutex<(u32, Option<u32>)>,
    /// Notified when a slot may have come free while the service was at its limit.
    freed: Notify,
}

/// One taken slot; released when dropped unless [`Slot::keep`] hands it on.
#[must_use]
pub struct Slot<'a>(&'a Limit);

impl Slot<'_> {
    /// Leaves the slot taken: whoever now owns the connection calls [`Limit::release`].
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Limit {
    pub fn new(max: u32) -> Self {
        Limit {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max as usize),
            configured: Mutex::new((max, None)),
            freed: Notify::new(),
        }
    }

    /// Changes `max_connections` (a reload). Live connections over a lowered limit run on;
    /// new ones wait until the count is under it.
    pub fn set_max(&self, max: u32) {
        self.reconfigure(|c| c.0 = max);
    }

    /// Caps the limit below `max_connections` (`None`: no cap), as [`Limit::set_max`].
    pub fn set_cap(&self, cap: Option<u32>) {
        self.reconfigure(|c| c.1 = cap);
    }

    /// The limit in force when a cap holds it below `max_connections`.
    pub fn capped(&self) -> Option<u32> {
        let (max, cap) = *self
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cap.filter(|&c| c < max)
    }

    fn reconfigure(&self, change: impl FnOnce(&mut (u32, Option<u32>))) {
        let mut configured = self
            .configured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut configured);
        let (max, cap) = *configured;
        let max = cap.map_or(max, |c| c.min(max)) as usize;
        let old = self.max.swap(max, Ordering::SeqCst);
        if max > old {
            self.freed.notify_one();
        }
    }

    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn try_take(&self) -> bool {
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max.load(Ordering::SeqCst)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a slot, waiting while the service is at its limit.
    pub async fn take(&self) -> Slot<'_> {
        loop {
            if self.try_take() {
                return Slot(self);
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the second look, so a release between the two is not missed.
            freed.as_mut().enable();
            if self.try_take() {
                return Slot(self);
            }
            freed.await;
        }
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let before = self.active.fetch_sub(1, Ordering::SeqCst);
        if before >= self.max.load(Ordering::SeqCst) {
            self.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    async fn takes_within(limit: &Limit, within: Duration) -> bool {
        match tokio::time::timeout(within, limit.take()).await {
            Ok(slot) => {
                slot.keep();
                true
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn at_the_limit_take_waits_for_a_release() {
        let limit = Arc::new(Limit::new(2));
        limit.take().await.keep();
        limit.take().await.keep();
        assert!(!takes_within(&limit, Duration::from_millis(50)).await);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { takes_within(&limit, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        limit.release();
        assert!(waiter.await.unwrap());
        assert_eq!(limit.active(), 2);
    }

    #[tokio::test]
    async fn a_dropped_slot_is_released() {
        let limit = Limit::new(1);
        drop(limit.take().await);
        assert_eq!(limit.active(), 0);
        assert!(takes_within(&limit, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn raising_the_limit_wakes_a_waiter_and_lowering_it_holds_new_ones() {
        let limit = Arc::new(Limit::new(1));
        limit.take().await.keep();
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { takes_within(&limit, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        limit.set_max(2);
        assert!(waiter.await.unwrap());
        // Two live, limit lowered to 1: a new one waits until both have gone.
        limit.set_max(1);
        limit.release();
        assert!(!takes_within(&limit, Duration::from_millis(50)).await);
        limit.release();
        assert!(takes_within(&limit, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_cap_below_max_connections_holds_new_ones_and_lifting_it_wakes_them() {
        let limit = Arc::new(Limit::new(3));
        limit.set_cap(Some(1));
        assert_eq!(limit.capped(), Some(1));
        limit.take().await.keep();
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { takes_within(&limit, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        limit.set_cap(None);
        assert!(waiter.await.unwrap());
        assert_eq!(limit.capped(), None);
        // A cap at or above max_connections changes nothing and is not shown.
        limit.set_cap(Some(5));
        assert_eq!(limit.capped(), None);
        limit.take().await.keep();
        assert!(!takes_within(&limit, Duration::from_millis(50)).await);
        // Lowering max_connections under the cap: the cap is no longer what holds it.
        limit.set_cap(Some(2));
        assert_eq!(limit.capped(), Some(2));
        limit.set_max(2);
        assert_eq!(limit.capped(), None);
    }
}
