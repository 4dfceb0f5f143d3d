//! Shutdown within one executor: connections wait for it next to their reads, so an idle
//! connection ends at once when the server stops.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-way "stop" signal for the tasks of one executor.
#[derive(Debug, Default)]
pub struct LocalStop {
    stopped: Cell<bool>,
    /// By waiter id (a connection id): each waiter keeps one waker, however often it polls.
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl LocalStop {
    /// Whether stop was signalled.
    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Signals stop and wakes every waiter.
    pub fn stop(&self) {
        self.stopped.set(true);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Waits for stop, as waiter `id`.
    pub async fn wait(&self, id: u64) {
        poll_fn(|cx| {
            if self.stopped.get() {
                return Poll::Ready(());
            }
            // A connection waits here next to every read: keep its waker when it is the same
            // task's (it always is), instead of a clone and a map insert per read.
            let mut wakers = self.wakers.borrow_mut();
            match wakers.get_mut(&id) {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                Some(waker) => waker.clone_from(cx.waker()),
                None => {
                    wakers.insert(id, cx.waker().clone());
                }
            }
            Poll::Pending
        })
        .await;
    }

    /// Forgets waiter `id` (it ended).
    pub fn forget(&self, id: u64) {
        self.wakers.borrow_mut().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::LocalStop;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&count), Waker::from(Arc::clone(&count)))
    }

    #[test]
    fn stop_wakes_the_latest_waker_of_each_waiter_once() {
        let stop = LocalStop::default();
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let (other, other_waker) = counting_waker();
        let mut wait = std::pin::pin!(stop.wait(1));
        let mut other_wait = std::pin::pin!(stop.wait(2));
        // Polled again and again with one waker (a connection between reads), then with
        // another: the waiter keeps one waker, the latest.
        for _ in 0..3 {
            let poll = wait.as_mut().poll(&mut Context::from_waker(&first_waker));
            assert!(poll.is_pending());
        }
        let poll = wait.as_mut().poll(&mut Context::from_waker(&second_waker));
        assert!(poll.is_pending());
        let poll = other_wait
            .as_mut()
            .poll(&mut Context::from_waker(&other_waker));
        assert!(poll.is_pending());
        assert_eq!(stop.wakers.borrow().len(), 2);

        stop.stop();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        let poll = wait.as_mut().poll(&mut Context::from_waker(&second_waker));
        assert_eq!(poll, Poll::Ready(()));
    }
}
