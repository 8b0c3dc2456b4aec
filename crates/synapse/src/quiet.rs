//! [`polled_when_woken`]: a future that is polled only when its own waker fired.
//!
//! `tokio::select!` polls every branch whenever the task wakes. A proxied connection
//! wakes on every message, while its other branches (the backend's drain token, the
//! service's shutdown cut) almost never fire; yet polling a `CancellationToken` future
//! takes two mutexes (the token's node and its `Notify` waiter list), and the service's
//! cut token is one for all its connections, so both runtime workers contended on it for
//! every message relayed. Wrapped here, such a branch costs one atomic load per wake-up.

use std::future::Future;
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

/// Runs `fut` to completion, but polls it only on the first poll and after it woke the
/// task itself; polls caused by anything else return `Pending` after one atomic load.
///
/// Correct for any future that honours the waker contract (it returns `Pending` only after
/// arranging for the waker it was given to be woken), which tokio's futures do.
pub async fn polled_when_woken<F: Future>(fut: F) -> F::Output {
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut task: Option<Waker> = None;
    let mut first = true;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        // A task's waker stays the same from poll to poll; the lock is taken only when it
        // changes (in practice once).
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let current = cx.waker().clone();
            *flag.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
            task = Some(current);
        }
        if !std::mem::take(&mut first) && !flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        fut.as_mut().poll(&mut Context::from_waker(&waker))
    })
    .await
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
        let wrapped = polled_when_woken(probe);
        tokio::pin!(wrapped);
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
        tokio::time::timeout(Duration::from_secs(5), polled_when_woken(token.cancelled()))
            .await
            .expect("cancellation seen");
        // Already cancelled: ready on the first poll.
        polled_when_woken(token.cancelled()).await;
    }
}
