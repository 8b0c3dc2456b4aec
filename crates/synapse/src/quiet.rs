//! [`polled_when_woken`]: a future that is polled only when its own waker fired.
//!
//! `tokio::select!` polls every branch whenever the task wakes. A proxied connection
//! wakes on every message, while its other branches (the backend's drain token, the
//! service's shutdown cut) almost never fire; yet polling a `CancellationToken` future
//! takes two mutexes (the token's node and its `Notify` waiter list), and the service's
//! cut token is one for all its connections, so both runtime workers contended on it for
//! every message relayed. Wrapped here, such a branch costs one atomic load per wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// The waker handed to the wrapped future: notes that it fired, then wakes the task.
#[derive(Default)]
struct Flag {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// Polls `fut` to completion, but only on the first poll and after it woke the task
/// itself; polls caused by anything else return `Pending` after one atomic load.
///
/// Takes the future pinned by the caller rather than by value: an owned future would be
/// stored twice in the caller's state machine (as the argument and as the pinned local),
/// and that state is held for every live connection.
///
/// Correct for any future that honours the waker contract (it returns `Pending` only after
/// arranging for the waker it was given to be woken), which tokio's futures do.
pub fn polled_when_woken<F: Future + ?Sized>(fut: Pin<&mut F>) -> PolledWhenWoken<'_, F> {
    let flag = Arc::new(Flag::default());
    PolledWhenWoken {
        waker: Waker::from(flag.clone()),
        flag,
        fut,
        task: None,
        first: true,
    }
}

/// See [`polled_when_woken`].
pub struct PolledWhenWoken<'a, F: ?Sized> {
    fut: Pin<&'a mut F>,
    flag: Arc<Flag>,
    /// Wakes `flag`; handed to `fut`.
    waker: Waker,
    /// The task's waker as last stored in `flag`.
    task: Option<Waker>,
    first: bool,
}

impl<F: Future + ?Sized> Future for PolledWhenWoken<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // A task's waker stays the same from poll to poll; the lock is taken only when it
        // changes (in practice once).
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let current = cx.waker().clone();
            *this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
            this.task = Some(current);
        }
        // A plain load first: the common case (not fired) then costs no locked instruction.
        let fired = || {
            this.flag.fired.load(Ordering::Acquire) && this.flag.fired.swap(false, Ordering::AcqRel)
        };
        if !std::mem::take(&mut this.first) && !fired() {
            return Poll::Pending;
        }
        this.fut
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// Counts its polls; ready once `ready` is set, waking through the latest waker.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn other_wake_ups_do_not_poll_it_and_its_own_do() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        tokio::pin!(probe);
        let mut wrapped = polled_when_woken(probe);
        // A busy sibling branch: it wakes the task 100 times before the probe is ready.
        let mut ticks = 0;
        let noisy = std::future::poll_fn(|cx| {
            ticks += 1;
            if ticks == 100 {
                ready.store(true, Ordering::Release);
                if let Some(w) = waker.lock().unwrap().take() {
                    w.wake();
                }
            }
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        tokio::select! {
            _ = &mut wrapped => {}
            _ = noisy => unreachable!(),
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            2,
            "first poll + the one it caused"
        );
    }

    #[tokio::test]
    async fn a_cancellation_still_ends_it() {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cancel.cancel();
        });
        let cancelled = std::pin::pin!(token.cancelled());
        tokio::time::timeout(Duration::from_secs(5), polled_when_woken(cancelled))
            .await
            .expect("cancellation seen");
        // Already cancelled: ready on the first poll.
        polled_when_woken(std::pin::pin!(token.cancelled())).await;
    }
}
