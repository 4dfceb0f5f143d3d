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
            self.wakers.borrow_mut().insert(id, cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    /// Forgets waiter `id` (it ended).
    pub fn forget(&self, id: u64) {
        self.wakers.borrow_mut().remove(&id);
    }
}
