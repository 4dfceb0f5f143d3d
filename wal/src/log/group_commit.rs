//! Group commit: one fdatasync covers every record appended before it started, and every
//! appender that asks for durability while a sync is in flight shares the next one.
//!
//! Appends are synchronous (a copy into the mapped tail); [`GroupCommit::wait_durable`] is the
//! only await. The syncs run in a task of their own, so a waiter that goes away (a client that
//! disconnects) never abandons a sync half-done.
//!
//! Ordering, which recovery relies on: within one round, segments are synced in id order, and
//! a segment's header is written only after every earlier segment's sync completed. So a
//! segment with a valid header never follows a segment whose records are not durable, and any
//! invalid record in a segment that is not the newest is damage, not a torn write.
//!
//! Fail-stop: if any sync fails, the error is latched. Every waiter, and every later append,
//! gets `WalError::Poisoned`: after a failed fsync the page cache cannot be trusted, and a
//! retried fsync may report success for data that was never written.

use crate::constants::{SLOW_SYNC_ROUND, SLOW_SYNC_WARNING_INTERVAL};
use crate::error::WalError;
use crate::log::segment::Segment;
use crate::storage::{SegmentFile, Storage};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Whether the log makes records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Records are durable once a group-committed fdatasync covered them (permanent-store).
    Fsync,
    /// Never synced; records are "durable" as soon as they are appended (temporary-swap-only:
    /// the data does not survive a restart anyway).
    None,
}

struct CommitState<F> {
    /// Highest LSN appended.
    appended_lsn: u64,
    /// Highest LSN known durable.
    durable_lsn: u64,
    /// Highest LSN a waiter asked for.
    requested_lsn: u64,
    /// A sync task is running.
    in_flight: bool,
    /// Segments with appended bytes or a header not yet synced, in id order.
    dirty: Vec<Rc<Segment<F>>>,
    /// Segment files were created since the last directory sync.
    dir_dirty: bool,
    /// The first sync failure; latched forever.
    failure: Option<Rc<WalError>>,
    /// Tasks waiting for the next round to finish.
    waiters: Vec<Waker>,
}

/// The group-commit state of one log, shared by the log, its waiters and its sync task.
pub struct GroupCommit<S: Storage> {
    storage: Rc<S>,
    durability: Durability,
    state: RefCell<CommitState<S::File>>,
    /// fdatasync calls issued (segments and directory).
    syncs_issued: Cell<u64>,
    /// Rounds completed.
    rounds: Cell<u64>,
    /// Rounds that took `SLOW_SYNC_ROUND` or longer.
    slow_rounds: Cell<u64>,
    /// When slow rounds were last reported, and how many since.
    slow_warning: Cell<(Option<std::time::Instant>, u64)>,
}

impl<S: Storage> std::fmt::Debug for GroupCommit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("GroupCommit")
            .field("durability", &self.durability)
            .field("appended_lsn", &st.appended_lsn)
            .field("durable_lsn", &st.durable_lsn)
            .field("in_flight", &st.in_flight)
            .field("failed", &st.failure.is_some())
            .finish()
    }
}

impl<S: Storage> GroupCommit<S> {
    pub(crate) fn new(storage: Rc<S>, durability: Durability, durable_lsn: u64) -> Rc<Self> {
        Rc::new(Self {
            storage,
            durability,
            state: RefCell::new(CommitState {
                appended_lsn: durable_lsn,
                durable_lsn,
                requested_lsn: durable_lsn,
                in_flight: false,
                dirty: Vec::new(),
                dir_dirty: false,
                failure: None,
                waiters: Vec::new(),
            }),
            syncs_issued: Cell::new(0),
            rounds: Cell::new(0),
            slow_rounds: Cell::new(0),
            slow_warning: Cell::new((None, 0)),
        })
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Highest LSN that is durable.
    pub fn durable_lsn(&self) -> u64 {
        let st = self.state.borrow();
        match self.durability {
            Durability::Fsync => st.durable_lsn,
            Durability::None => st.appended_lsn,
        }
    }

    /// fdatasync calls issued so far (segment files and the directory).
    pub fn syncs_issued(&self) -> u64 {
        self.syncs_issued.get()
    }

    /// Sync rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }

    /// Sync rounds so far that took `SLOW_SYNC_ROUND` (100 ms) or longer.
    pub fn slow_rounds(&self) -> u64 {
        self.slow_rounds.get()
    }

    /// The latched failure, if a sync failed.
    pub fn failure(&self) -> Option<Rc<WalError>> {
        self.state.borrow().failure.clone()
    }

    /// Notes that `lsn` was appended into `segment`.
    pub(crate) fn note_append(&self, lsn: u64, segment: &Rc<Segment<S::File>>) {
        let mut st = self.state.borrow_mut();
        assert!(
            lsn > st.appended_lsn,
            "LSN {lsn} appended after {}",
            st.appended_lsn
        );
        st.appended_lsn = lsn;
        if self.durability == Durability::Fsync {
            Self::mark_dirty(&mut st, segment);
        }
    }

    /// Latches `error` as the log's failure, as a failed sync round does: from now on every
    /// write and every wait for durability fails. For failures outside the rounds (the
    /// directory sync after compaction removed files).
    pub(crate) fn fail(&self, error: WalError) -> Rc<WalError> {
        let (cause, waiters) = {
            let mut st = self.state.borrow_mut();
            let cause = Rc::clone(st.failure.get_or_insert_with(|| Rc::new(error)));
            (cause, std::mem::take(&mut st.waiters))
        };
        for waker in waiters {
            waker.wake();
        }
        cause
    }

    /// Notes that the log skipped ahead: the records up to `lsn` will never be appended
    /// here. They become durable with the next round, which syncs the new tail segment
    /// (already noted by `note_new_segment`) whose header records the skip.
    pub(crate) fn note_skip(&self, lsn: u64) {
        let mut st = self.state.borrow_mut();
        assert!(
            lsn >= st.appended_lsn,
            "skipped back to LSN {lsn} after {}",
            st.appended_lsn
        );
        st.appended_lsn = lsn;
    }

    /// Notes that `segment` was just created (its file and, if pending, its header need
    /// syncing).
    pub(crate) fn note_new_segment(&self, segment: &Rc<Segment<S::File>>) {
        if self.durability == Durability::None {
            return;
        }
        let mut st = self.state.borrow_mut();
        st.dir_dirty = true;
        Self::mark_dirty(&mut st, segment);
    }

    fn mark_dirty(st: &mut CommitState<S::File>, segment: &Rc<Segment<S::File>>) {
        match st.dirty.last() {
            Some(last) if last.id() == segment.id() => {}
            Some(last) => {
                assert!(
                    last.id() < segment.id(),
                    "segments become dirty in id order"
                );
                st.dirty.push(Rc::clone(segment));
            }
            None => st.dirty.push(Rc::clone(segment)),
        }
    }

    /// Waits until every record up to `lsn` is durable. Returns at once for a log that is
    /// never synced. Fails with `Poisoned` if a sync failed.
    pub async fn wait_durable(self: &Rc<Self>, lsn: u64) -> Result<(), WalError> {
        if self.durability == Durability::None {
            return match self.failure() {
                Some(cause) => Err(WalError::Poisoned { cause }),
                None => Ok(()),
            };
        }
        let start_round = {
            let mut st = self.state.borrow_mut();
            assert!(
                lsn <= st.appended_lsn,
                "waiting for LSN {lsn}, never appended (last {})",
                st.appended_lsn
            );
            if let Some(cause) = &st.failure {
                return Err(WalError::Poisoned {
                    cause: Rc::clone(cause),
                });
            }
            if st.durable_lsn >= lsn {
                return Ok(());
            }
            st.requested_lsn = st.requested_lsn.max(lsn);
            !std::mem::replace(&mut st.in_flight, true)
        };
        if start_round {
            glommio::spawn_local(Rc::clone(self).run_rounds()).detach();
        }
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if let Some(cause) = &st.failure {
                return Poll::Ready(Err(WalError::Poisoned {
                    cause: Rc::clone(cause),
                }));
            }
            if st.durable_lsn >= lsn {
                return Poll::Ready(Ok(()));
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The sync task: runs rounds until no waiter wants more.
    async fn run_rounds(self: Rc<Self>) {
        loop {
            // Let every task that is ready run first: the writers just woken by the last round
            // append their next records now and share this round, instead of the first of
            // them starting a round that covers only its own record.
            glommio::executor().yield_now().await;
            let (target, segments, dir) = {
                let mut st = self.state.borrow_mut();
                if st.failure.is_some() || st.requested_lsn <= st.durable_lsn {
                    st.in_flight = false;
                    return;
                }
                (
                    st.appended_lsn,
                    std::mem::take(&mut st.dirty),
                    std::mem::take(&mut st.dir_dirty),
                )
            };
            let started = std::time::Instant::now();
            let result = self.sync_round(&segments, dir).await;
            self.rounds.set(self.rounds.get() + 1);
            self.note_round_time(started.elapsed(), target);
            let waiters = {
                let mut st = self.state.borrow_mut();
                match result {
                    Ok(()) => {
                        assert!(target >= st.durable_lsn, "durable LSN went backwards");
                        st.durable_lsn = target;
                    }
                    Err(error) => {
                        tracing::error!(%error, "sync failed: the shard stops accepting writes");
                        st.failure = Some(Rc::new(error));
                    }
                }
                std::mem::take(&mut st.waiters)
            };
            for waker in waiters {
                waker.wake();
            }
        }
    }

    /// Counts a round that took `took` if it was slow, and tells the operator: a disk that
    /// stalls a flush for hundreds of milliseconds (seen on a VM here: 458 ms, once) holds
    /// every write of the shard that long, and nothing else would say why.
    fn note_round_time(&self, took: std::time::Duration, target: u64) {
        if took < SLOW_SYNC_ROUND {
            return;
        }
        self.slow_rounds.set(self.slow_rounds.get() + 1);
        let (last, unreported) = self.slow_warning.get();
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SLOW_SYNC_WARNING_INTERVAL) {
            self.slow_warning.set((last, unreported + 1));
            return;
        }
        self.slow_warning.set((Some(now), 0));
        tracing::warn!(
            shard = %self.storage.dir_path().display(),
            took_ms = took.as_millis() as u64,
            lsn = target,
            slow_rounds = self.slow_rounds.get(),
            not_reported = unreported,
            "a sync round took {} ms: the disk held its flush that long, and every write of this \
             shard waited for it ({} more slow rounds since the last warning, {} in all)",
            took.as_millis(),
            unreported,
            self.slow_rounds.get(),
        );
    }

    async fn sync_round(
        &self,
        segments: &[Rc<Segment<S::File>>],
        dir: bool,
    ) -> Result<(), WalError> {
        if dir {
            self.syncs_issued.set(self.syncs_issued.get() + 1);
            self.storage
                .sync_dir()
                .await
                .map_err(|source| WalError::Io {
                    op: "fsync shard directory",
                    path: self.storage.dir_path(),
                    source,
                })?;
        }
        // In id order; a header is written only after every earlier segment is durable.
        for segment in segments {
            if segment.header_pending() {
                segment.write_header();
            }
            self.syncs_issued.set(self.syncs_issued.get() + 1);
            segment.file().sync().await.map_err(|source| WalError::Io {
                op: "fdatasync segment",
                path: self.storage.segment_path(segment.id()),
                source,
            })?;
        }
        Ok(())
    }
}

/// Makes sure a segment created with a pending header gets it even in a log that never syncs.
pub(crate) fn write_header_if_unsynced<F: SegmentFile>(
    durability: Durability,
    segment: &Segment<F>,
) {
    if durability == Durability::None && segment.header_pending() {
        segment.write_header();
    }
}
