//! `max_connections`: a counter of a service's live connections that the accept loop waits
//! on at the limit (backpressure: clients queue in the kernel's backlog).
//!
//! Built on two atomics instead of a `tokio::sync::Semaphore`, whose release takes the
//! semaphore's waiter lock on every call: that was one lock per connection, shared by both
//! runtime workers. Here taking and releasing a slot is one atomic read-modify-write; the
//! `Notify` (and its lock) is only touched while the service is at its limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub struct Limit {
    active: AtomicUsize,
    max: AtomicUsize,
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
            freed: Notify::new(),
        }
    }

    /// Changes the limit (a reload). Live connections over a lowered limit run on; new ones
    /// wait until the count is under it.
    pub fn set_max(&self, max: u32) {
        let old = self.max.swap(max as usize, Ordering::SeqCst);
        if max as usize > old {
            self.freed.notify_one();
        }
    }

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
}
