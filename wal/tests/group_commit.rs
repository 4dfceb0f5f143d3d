//! Group commit: concurrent writers share fdatasyncs, and nobody hears "durable" before the
//! sync that covers their record has completed.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{live_items, open_image};
use common::{run, small_config};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_wal::log::{Durability, RecoveryPolicy};
use terrace_wal::storage::{FsStorage, SimDisk, SimStorage, Storage};
use terrace_wal::store::{Clock, ManualClock, SetMode, Store, StoreOutcome, SystemClock};

/// A store of `segment`-byte segments on a new simulated disk, shared by the test's tasks.
async fn sim_store(
    segment: usize,
    durability: Durability,
) -> (SimDisk, Rc<RefCell<Store<SimStorage>>>) {
    let disk = SimDisk::new();
    let clock = ManualClock::new(1_000);
    let (store, _) = common::open_sim(&disk, small_config(segment, durability), &clock).await;
    (disk, Rc::new(RefCell::new(store)))
}

const WRITERS: usize = 64;
const RECORDS_PER_WRITER: usize = 40;

/// One write through the store, then the wait for durability. Returns the LSN.
async fn durable_set<S: Storage>(store: &Rc<RefCell<Store<S>>>, key: &[u8], value: &[u8]) -> u64 {
    let outcome = store
        .borrow_mut()
        .set(SetMode::Set, key, value, 0, 0)
        .expect("set");
    let StoreOutcome::Stored(written) = outcome else {
        panic!("set not stored: {outcome:?}");
    };
    let commit = store.borrow().commit();
    commit.wait_durable(written.lsn).await.expect("durable");
    assert!(
        commit.durable_lsn() >= written.lsn,
        "returned before durable"
    );
    written.lsn
}

/// Runs `WRITERS` tasks writing `RECORDS_PER_WRITER` records each; `after_durable` runs right
/// after each wait returns, with the writer number and LSN.
async fn many_writers<S: Storage>(
    store: &Rc<RefCell<Store<S>>>,
    after_durable: Rc<dyn Fn(usize, u64)>,
) {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Rc::clone(store);
        let after_durable = Rc::clone(&after_durable);
        tasks.push(glommio::spawn_local(async move {
            for i in 0..RECORDS_PER_WRITER {
                let key = format!("w{writer}-k{}", i % 5);
                let lsn = durable_set(&store, key.as_bytes(), &[b'v'; 100]).await;
                after_durable(writer, lsn);
            }
        }));
    }
    for task in tasks {
        task.await;
    }
}

#[test]
fn sixty_four_writers_share_syncs_on_the_simulated_disk() {
    run(|| async {
        let (disk, store) = sim_store(64 << 10, Durability::Fsync).await;
        let syncs_before = disk.syncs();
        let done = Rc::new(Cell::new(0usize));
        let counter = Rc::clone(&done);
        many_writers(&store, Rc::new(move |_, _| counter.set(counter.get() + 1))).await;
        let records = (WRITERS * RECORDS_PER_WRITER) as u64;
        assert_eq!(done.get() as u64, records);
        let syncs = disk.syncs() - syncs_before;
        assert!(syncs > 0);
        assert!(
            records >= 8 * syncs,
            "{records} records took {syncs} segment syncs: fewer than 8 records per sync"
        );
        let counters = store.borrow().log().counters();
        assert_eq!(counters.records_appended, records);
        assert!(counters.syncs_issued >= syncs);
        assert!(records >= 8 * counters.syncs_issued, "{counters:?}");
    });
}

/// A disk that holds its flushes for a long time is counted, so that `stats` and the log can
/// tell an operator why every write waited.
#[test]
fn sync_rounds_a_stalled_disk_held_are_counted_as_slow() {
    run(|| async {
        let (disk, store) = sim_store(64 << 10, Durability::Fsync).await;
        durable_set(&store, b"before", b"v").await;
        let slow_before = store.borrow().log().counters().slow_sync_rounds;
        // Longer than the 100 ms that makes a round slow.
        disk.delay_syncs(Duration::from_millis(150));
        durable_set(&store, b"stalled", b"v").await;
        let counters = store.borrow().log().counters();
        assert_eq!(counters.slow_sync_rounds, slow_before + 1, "{counters:?}");
    });
}

#[test]
fn nothing_is_reported_durable_before_the_disk_holds_it() {
    run(|| async {
        let (disk, store) = sim_store(16 << 10, Durability::Fsync).await;
        // Sample every 37th acknowledgment: open the durable image as it is at that moment and
        // look for the record.
        let checks = Rc::new(RefCell::new(Vec::new()));
        let seen = Rc::new(Cell::new(0u64));
        let (disk_for_check, checks_for_check) = (disk.clone(), Rc::clone(&checks));
        let check = move |writer: usize, lsn: u64| {
            seen.set(seen.get() + 1);
            if seen.get().is_multiple_of(37) {
                checks_for_check
                    .borrow_mut()
                    .push((writer, lsn, disk_for_check.durable_image()));
            }
        };
        many_writers(&store, Rc::new(check)).await;
        let checks = checks.take();
        assert!(checks.len() > 10);
        for (writer, lsn, image) in checks {
            let (_, opened) = open_image(&image, 16 << 10, RecoveryPolicy::Strict).await;
            let (_, _, records) = opened.expect("a durable image opens strictly");
            assert!(
                records.iter().any(|r| r.lsn == lsn),
                "writer {writer}: LSN {lsn} acknowledged but not in the durable image (last there: {:?})",
                records.last().map(|r| r.lsn)
            );
        }
    });
}

/// Opens (or reopens) a durable store on real files in `dir`.
async fn open_fs(dir: &std::path::Path) -> (Store<FsStorage>, terrace_wal::log::RecoveryReport) {
    let storage = FsStorage::open(dir).await.expect("open dir");
    Store::open(
        storage,
        small_config(1 << 20, Durability::Fsync),
        Rc::new(SystemClock) as Rc<dyn Clock>,
        RecoveryPolicy::TruncateTornTail,
    )
    .await
    .expect("open")
}

#[test]
fn sixty_four_writers_share_syncs_on_real_files() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open_fs(dir.path()).await;
        let store = Rc::new(RefCell::new(store));
        many_writers(&store, Rc::new(|_, _| {})).await;
        let counters = store.borrow().log().counters();
        let records = (WRITERS * RECORDS_PER_WRITER) as u64;
        assert_eq!(counters.records_appended, records);
        assert!(
            records >= 8 * counters.syncs_issued,
            "{records} records, {} fdatasyncs",
            counters.syncs_issued
        );
        // And they are all there after a reopen.
        drop(store);
        let (store, report) = open_fs(dir.path()).await;
        assert_eq!(report.records, records);
        assert_eq!(live_items(&store).len(), WRITERS * 5);
    });
}

#[test]
fn a_waiter_that_goes_away_does_not_stall_the_others() {
    run(|| async {
        let (_disk, store) = sim_store(64 << 10, Durability::Fsync).await;
        // The first waiter starts the sync round, then is cancelled before it completes.
        let doomed = {
            let store = Rc::clone(&store);
            glommio::spawn_local(async move {
                durable_set(&store, b"doomed", b"x").await;
            })
        };
        glommio::executor().yield_now().await;
        doomed.cancel().await;
        let started = Instant::now();
        for i in 0..20 {
            let lsn = durable_set(&store, format!("k{i}").as_bytes(), b"v").await;
            assert!(store.borrow().commit().durable_lsn() >= lsn);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // The cancelled writer's record was appended; a sync covers it too.
        let commit = store.borrow().commit();
        assert_eq!(commit.durable_lsn(), store.borrow().log().next_lsn() - 1);
    });
}

#[test]
fn a_log_that_never_syncs_acknowledges_at_once() {
    run(|| async {
        let (disk, store) = sim_store(16 << 10, Durability::None).await;
        // Opening may sync what recovery found; after that, nothing is ever synced.
        let (syncs, dir_syncs) = (disk.syncs(), disk.dir_syncs());
        many_writers(&store, Rc::new(|_, _| {})).await;
        assert_eq!(disk.syncs(), syncs);
        assert_eq!(disk.dir_syncs(), dir_syncs);
        assert_eq!(store.borrow().log().counters().syncs_issued, 0);
        assert!(store.borrow().log().segment_count() > 1);
        // Nothing of it is durable on the simulated disk.
        assert!(
            disk.durable_image()
                .values()
                .all(|b| b.iter().all(|&x| x == 0))
        );
    });
}
