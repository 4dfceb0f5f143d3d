//! The active's side of one shard's replication: the passives it streams to, how far each
//! has acknowledged, and which of them are in the sync set (in sync: a write on this shard
//! is acknowledged to its client only once every passive in the sync set has acknowledged
//! it, with `replication = "sync"`). Lives on the executor that owns the shard.
//!
//! A passive leaves the sync set when it is *released*: at once when it kept writes waiting
//! too long (it is hung or far behind), but only after a grace period when its stream just
//! ended. A stream also ends when the passive took over (this server was paused or cut
//! off, and the group elected the passive): releasing at once would acknowledge writes the
//! new active never saw. During the grace this server learns of the higher term, stops being
//! the active, and the waiting writes fail instead ([`ShardReplicas::serving`]).

use futures_lite::future::poll_fn;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::Instant;

/// Wakes the tasks waiting for something to change (records appended, an acknowledgment).
#[derive(Debug, Default)]
pub struct Signal {
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Wakes every waiting task.
    pub fn notify(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waits until `ready()` holds, checked again after each notification.
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            // A task that gave up waiting (a timer won) and waits again is not added twice.
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }
}

/// One passive's stream of a shard.
#[derive(Debug)]
pub struct Replica {
    /// The passive's name.
    pub peer: String,
    /// Highest LSN it acknowledged.
    acked: Cell<u64>,
    /// Highest LSN sent to it.
    sent: Cell<u64>,
    /// Entered the sync set.
    in_sync: Cell<bool>,
    /// Left the sync set: writes no longer wait for it.
    released: Cell<bool>,
    /// The stream ended, or must end (why).
    closed: RefCell<Option<String>>,
    /// Acknowledgment progress: the LSN it must reach, and since when it is awaited.
    awaited: Cell<Option<(u64, Instant)>>,
}

/// Why a stream was closed when a newer stream from the same passive replaced it.
pub const REPLACED: &str = "a new stream from the same passive replaced it";

impl Replica {
    /// Highest LSN acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.get()
    }

    /// Whether writes wait for it: in the sync set, not released.
    pub fn counted(&self) -> bool {
        self.in_sync.get() && !self.released.get()
    }

    /// Whether it is in the sync set with a live stream.
    pub fn in_sync(&self) -> bool {
        self.counted() && self.closed.borrow().is_none()
    }

    /// Why it was closed, if it was.
    pub fn closed(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Records sent up to `lsn`.
    pub fn note_sent(&self, lsn: u64) {
        self.sent.set(self.sent.get().max(lsn));
    }
}

/// The passives of one shard.
#[derive(Debug)]
pub struct ShardReplicas {
    replicas: RefCell<Vec<Rc<Replica>>>,
    /// Whether this server is the active (the group's flag).
    serving: Arc<AtomicBool>,
    /// Whether a planned failover is under way (writes complete then).
    handing_over: Arc<AtomicBool>,
    /// Records were appended to the shard (senders wait for it).
    pub appended: Signal,
    /// A passive acknowledged, or left the sync set (writers wait for it).
    pub acked: Signal,
}

impl Default for ShardReplicas {
    fn default() -> Self {
        let flags = crate::cluster::group::GroupFlags::default();
        Self::new((flags.serving, flags.handing_over))
    }
}

impl ShardReplicas {
    /// The passives of a shard of a server whose group sets `serving` and `handing_over`.
    pub fn new((serving, handing_over): (Arc<AtomicBool>, Arc<AtomicBool>)) -> Self {
        Self {
            replicas: RefCell::default(),
            serving,
            handing_over,
            appended: Signal::default(),
            acked: Signal::default(),
        }
    }

    /// Whether this server is still the active (or handing over, planned).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst) || self.handing_over.load(Ordering::SeqCst)
    }

    /// A new stream to `peer`, not in the sync set yet. An older stream to the same peer is
    /// closed: a passive has one stream per shard.
    pub fn attach(&self, peer: &str) -> Rc<Replica> {
        for old in self.replicas.borrow().iter().filter(|r| r.peer == peer) {
            self.close(old, REPLACED.into());
        }
        let replica = Rc::new(Replica {
            peer: peer.to_string(),
            acked: Cell::new(0),
            sent: Cell::new(0),
            in_sync: Cell::new(false),
            released: Cell::new(false),
            closed: RefCell::new(None),
            awaited: Cell::new(None),
        });
        self.replicas.borrow_mut().push(Rc::clone(&replica));
        replica
    }

    /// Forgets a stream that ended (and releases it).
    pub fn detach(&self, replica: &Rc<Replica>) {
        self.close(replica, "the stream ended".into());
        self.release(replica);
        self.replicas
            .borrow_mut()
            .retain(|r| !Rc::ptr_eq(r, replica));
    }

    /// Takes a passive out of the sync set: writes stop waiting for it.
    pub fn release(&self, replica: &Replica) {
        replica.released.set(true);
        self.acked.notify();
    }

    /// Wakes the writers (this server stopped being the active: they give up).
    pub fn wake_writers(&self) {
        self.acked.notify();
    }

    /// Ends a stream (its sender stops); the first reason stays. Writes keep waiting for it
    /// until it is released.
    pub fn close(&self, replica: &Replica, reason: String) {
        let mut closed = replica.closed.borrow_mut();
        if closed.is_none() {
            *closed = Some(reason);
        }
        drop(closed);
        self.appended.notify();
        self.acked.notify();
    }

    /// The passive caught up: from now on writes wait for its acknowledgment. Older,
    /// ended streams of the same passive leave the set: this one carries on from them.
    pub fn enter_sync_set(&self, replica: &Replica) {
        replica.in_sync.set(true);
        for old in self.replicas.borrow().iter() {
            if old.peer == replica.peer && !std::ptr::eq(&**old, replica) {
                old.released.set(true);
            }
        }
        self.acked.notify();
    }

    /// The passive acknowledged up to `lsn`.
    pub fn ack(&self, replica: &Replica, lsn: u64) {
        if lsn > replica.acked.get() {
            replica.acked.set(lsn);
            self.acked.notify();
            if !replica.in_sync.get() {
                // Its sender waits for it to catch up before it enters the sync set.
                self.appended.notify();
            }
        }
    }

    /// Waits until `replica` is released (a newer stream of its passive got in sync), or
    /// `grace` passed.
    pub async fn released_within(&self, replica: &Replica, grace: std::time::Duration) {
        futures_lite::future::or(
            self.acked.wait_until(|| replica.released.get()),
            glommio::timer::sleep(grace),
        )
        .await;
    }

    /// Whether every passive in the sync set acknowledged `lsn`.
    pub fn acknowledged(&self, lsn: u64) -> bool {
        self.replicas
            .borrow()
            .iter()
            .all(|r| !r.counted() || r.acked.get() >= lsn)
    }

    /// Highest LSN `peer` acknowledged on a stream in the sync set (0: none).
    pub fn peer_acked(&self, peer: &str) -> u64 {
        self.replicas
            .borrow()
            .iter()
            .filter(|r| r.peer == peer && r.in_sync())
            .map(|r| r.acked.get())
            .max()
            .unwrap_or(0)
    }

    /// Whether `peer` has a stream in the sync set.
    pub fn peer_in_sync(&self, peer: &str) -> bool {
        self.replicas
            .borrow()
            .iter()
            .any(|r| r.peer == peer && r.in_sync())
    }

    /// Waits until every passive in the sync set acknowledged `lsn` (passives that fail to
    /// leave the set: see [`ShardReplicas::overdue`]). Returns whether they did; `false` if
    /// this server stopped being the active first.
    pub async fn wait_acknowledged(&self, lsn: u64) -> bool {
        self.acked
            .wait_until(|| self.acknowledged(lsn) || !self.serving())
            .await;
        self.acknowledged(lsn)
    }

    /// Whether `replica`, in the sync set, has kept writers waiting longer than `limit`:
    /// some record sent to it was not acknowledged within `limit`. Called now and then by
    /// its sender; the first call with records outstanding starts the clock.
    pub fn overdue(&self, replica: &Replica, limit: std::time::Duration) -> bool {
        let (acked, sent) = (replica.acked.get(), replica.sent.get());
        if !replica.in_sync() || acked >= sent {
            replica.awaited.set(None);
            return false;
        }
        match replica.awaited.get() {
            Some((target, since)) if acked < target => since.elapsed() > limit,
            _ => {
                // Nothing awaited yet, or the last target was reached: await what is sent now.
                replica.awaited.set(Some((sent, Instant::now())));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_wait_only_for_passives_in_the_sync_set() {
        let replicas = ShardReplicas::default();
        let a = replicas.attach("s2");
        let b = replicas.attach("s3");
        a.note_sent(10);
        assert!(replicas.acknowledged(10), "nobody in the sync set yet");
        replicas.enter_sync_set(&a);
        assert!(!replicas.acknowledged(10));
        replicas.ack(&a, 10);
        assert!(replicas.acknowledged(10));
        replicas.enter_sync_set(&b);
        assert!(!replicas.acknowledged(5));
        replicas.close(&b, "gone".into());
        assert!(
            !replicas.acknowledged(5),
            "an ended stream is waited for until released"
        );
        replicas.release(&b);
        assert!(
            replicas.acknowledged(10),
            "a released stream is not waited for"
        );
        assert!(!replicas.acknowledged(11));
        // A new stream from the same passive closes the old one; once it is in sync, the old
        // one is no longer waited for.
        let a2 = replicas.attach("s2");
        assert!(a.closed().is_some() && a2.closed().is_none());
        assert!(!replicas.acknowledged(11));
        replicas.enter_sync_set(&a2);
        replicas.ack(&a2, 11);
        assert!(replicas.acknowledged(11));
        replicas.detach(&b);
        replicas.detach(&a);
        assert_eq!(replicas.replicas.borrow().len(), 1);
    }

    #[test]
    fn writers_give_up_when_this_server_stops_being_the_active() {
        let serving = Arc::new(AtomicBool::new(true));
        let replicas = ShardReplicas::new((Arc::clone(&serving), Arc::new(AtomicBool::new(false))));
        let a = replicas.attach("s2");
        replicas.enter_sync_set(&a);
        replicas.close(&a, "the passive took over".into());
        serving.store(false, Ordering::SeqCst);
        let acknowledged = futures_lite::future::block_on(replicas.wait_acknowledged(3));
        assert!(!acknowledged);
    }

    #[test]
    fn a_passive_that_does_not_acknowledge_in_time_is_overdue() {
        let replicas = ShardReplicas::default();
        let a = replicas.attach("s2");
        replicas.enter_sync_set(&a);
        let limit = Duration::from_millis(30);
        assert!(!replicas.overdue(&a, limit), "nothing outstanding");
        a.note_sent(5);
        assert!(!replicas.overdue(&a, limit), "the clock starts");
        std::thread::sleep(Duration::from_millis(40));
        assert!(replicas.overdue(&a, limit));
        replicas.ack(&a, 5);
        assert!(!replicas.overdue(&a, limit), "caught up");
        a.note_sent(9);
        assert!(!replicas.overdue(&a, limit));
        replicas.ack(&a, 7);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            replicas.overdue(&a, limit),
            "progress short of the target is not enough"
        );
    }
}
