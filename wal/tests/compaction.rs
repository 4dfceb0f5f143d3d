//! Compaction: disk use stays bounded, every live value survives, deleted and expired keys
//! never come back, touches and pins are respected, and it runs in the background.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::live_items;
use common::{open_sim, run, small_config, sync_all};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_wal::log::{Durability, RecoveryPolicy};
use terrace_wal::storage::{SimCrashOptions, SimDisk, SimStorage};
use terrace_wal::store::{
    Clock, ManualClock, SetMode, Store, StoreConfig, StoreOutcome, compact_once, spawn_compactor,
};

const SEGMENT: usize = 32 << 10;

type Shared = Rc<RefCell<Store<SimStorage>>>;

fn config() -> StoreConfig {
    let mut config = small_config(SEGMENT, Durability::Fsync);
    config.compaction.bytes_per_sec = 1 << 40;
    config
}

async fn set(store: &Shared, key: &[u8], value: &[u8], exptime: i64) {
    let out = store
        .borrow_mut()
        .set(SetMode::Set, key, value, 7, exptime)
        .expect("set");
    let StoreOutcome::Stored(written) = out else {
        panic!("{out:?}");
    };
    let commit = store.borrow().commit();
    commit.wait_durable(written.lsn).await.expect("durable");
}

async fn delete(store: &Shared, key: &[u8]) {
    let written = store
        .borrow_mut()
        .delete(key)
        .expect("delete")
        .expect("present");
    let commit = store.borrow().commit();
    commit.wait_durable(written.lsn).await.expect("durable");
}

/// Compacts until there is nothing left below the threshold (bounded).
async fn compact_all(store: &Shared) -> usize {
    for compacted in 0..1000 {
        if !compact_once(store).await.expect("compact") {
            return compacted;
        }
    }
    panic!("compaction never ran out of work");
}

/// Syncs, crashes (nothing unsynced), reopens.
async fn reopen(
    store: Shared,
    disk: &SimDisk,
    clock: &ManualClock,
    seed: u64,
) -> (Shared, SimDisk) {
    let synced = common::sync_all(&store.borrow());
    synced.await;
    drop(store);
    let crashed = disk.crash(SimCrashOptions::with_seed(seed));
    let (store, _) = open_sim(&crashed, config(), clock).await;
    (Rc::new(RefCell::new(store)), crashed)
}

#[test]
fn overwrites_keep_disk_use_bounded_and_values_survive() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        let mut rng = SmallRng::seed_from_u64(11);
        let mut model = BTreeMap::new();
        let mut max_used = 0;
        for i in 0..6000u32 {
            let key = format!("key-{}", rng.random_range(0..50));
            let value = vec![b'a' + (i % 26) as u8; rng.random_range(10..400)];
            set(&store, key.as_bytes(), &value, 0).await;
            model.insert(key.into_bytes(), value);
            if i % 50 == 0 {
                compact_all(&store).await;
                let used = store.borrow().log().used_bytes();
                max_used = max_used.max(used);
                // Live data is at most 50 keys of 400 bytes plus record overhead.
                let live_max: u64 = 50 * (400 + 100 + 64);
                let bound = 2 * live_max + 2 * SEGMENT as u64 + SEGMENT as u64;
                assert!(
                    used <= bound,
                    "step {i}: {used} bytes of segments, bound {bound}"
                );
                store.borrow().check_invariants();
            }
        }
        assert!(store.borrow().counters().segments_compacted > 10);
        let (store, _) = reopen(store, &disk, &clock, 1).await;
        let items = live_items(&store.borrow());
        assert_eq!(items.len(), model.len());
        for (key, value) in &model {
            assert_eq!(&items[key].0, value, "{}", String::from_utf8_lossy(key));
            assert_eq!(items[key].1, 7);
        }
    });
}

/// The dangerous case: the tombstone's segment B is compacted while the segment A holding the
/// key's old put still exists; later A goes too. The key must never come back, across
/// reopens, also after being stored and deleted again.
#[test]
fn deleted_keys_stay_deleted_through_compaction_and_reopen() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        // Segment A: the victim's put, then long-lived data until A is sealed.
        set(&store, b"victim", b"old value", 0).await;
        let a = store.borrow().log().tail().id();
        let mut keeps = 0;
        while store.borrow().log().tail().id() == a {
            set(&store, format!("keep-{keeps}").as_bytes(), &[b'k'; 600], 0).await;
            keeps += 1;
        }
        // Segment B: the tombstone, then data that is overwritten later, so B dies.
        delete(&store, b"victim").await;
        let b = store.borrow().log().tail().id();
        assert!(b > a);
        for round in 0..3 {
            for i in 0..30 {
                set(
                    &store,
                    format!("churn-{i}").as_bytes(),
                    &[b'c' + round; 700],
                    0,
                )
                .await;
            }
        }
        compact_all(&store).await;
        assert!(
            store.borrow().log().segment(b).is_none(),
            "B was not compacted"
        );
        assert!(
            store.borrow().log().segment(a).is_some(),
            "A should still be live"
        );
        let (store, disk) = reopen(store, &disk, &clock, 1).await;
        assert!(
            store.borrow_mut().get(b"victim").expect("get").is_none(),
            "victim came back: its tombstone was dropped while A still held its put"
        );
        // Now A dies too.
        for i in 0..keeps {
            set(&store, format!("keep-{i}").as_bytes(), &[b'n'; 600], 0).await;
        }
        compact_all(&store).await;
        assert!(
            store.borrow().log().segment(a).is_none(),
            "A was not compacted"
        );
        let (store, disk) = reopen(store, &disk, &clock, 2).await;
        assert!(store.borrow_mut().get(b"victim").expect("get").is_none());
        // Stored again, deleted again, everything churned and compacted: still gone.
        set(&store, b"victim", b"second life", 0).await;
        delete(&store, b"victim").await;
        for round in 0..3 {
            for i in 0..30 {
                set(
                    &store,
                    format!("churn-{i}").as_bytes(),
                    &[b'x' + round; 700],
                    0,
                )
                .await;
            }
            compact_all(&store).await;
        }
        let (store, _) = reopen(store, &disk, &clock, 3).await;
        assert!(store.borrow_mut().get(b"victim").expect("get").is_none());
        for i in 0..keeps {
            let item = store
                .borrow_mut()
                .get(format!("keep-{i}").as_bytes())
                .expect("get");
            assert_eq!(item.expect("kept").value(), &[b'n'; 600]);
        }
        // Tombstones whose older records are all gone were dropped, not kept forever.
        assert!(store.borrow().log().used_bytes() <= 4 * SEGMENT as u64);
    });
}

/// Sets keys `{prefix}-N` until the tail segment changes; returns how many.
async fn fill_segment(store: &Shared, prefix: &str) -> usize {
    let start = store.borrow().log().tail().id();
    let mut n = 0;
    while store.borrow().log().tail().id() == start {
        set(store, format!("{prefix}-{n}").as_bytes(), &[b'k'; 600], 0).await;
        n += 1;
    }
    n
}

/// A tombstone whose key was stored again before compaction reached it: the older record it
/// covers must stay covered on disk, not only in the index's memory, or a later restart
/// (after the newer records of the key are compacted away) brings the old value back.
#[test]
fn a_key_deleted_stored_again_and_deleted_stays_deleted_across_restarts() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        // A: the first value, then data that stays (A is never compacted).
        set(&store, b"victim", b"v1", 0).await;
        let a = store.borrow().log().tail().id();
        fill_segment(&store, "keepA").await;
        // B: its tombstone, then data that dies.
        delete(&store, b"victim").await;
        let b = store.borrow().log().tail().id();
        let churn = fill_segment(&store, "churnB").await;
        // C: stored, deleted and stored again, then data that stays for now.
        set(&store, b"victim", b"v2", 0).await;
        let c = store.borrow().log().tail().id();
        delete(&store, b"victim").await;
        set(&store, b"victim", b"v3", 0).await;
        let keep_c = fill_segment(&store, "keepC").await;
        for i in 0..churn {
            set(&store, format!("churnB-{i}").as_bytes(), b"x", 0).await;
        }
        compact_all(&store).await;
        assert!(store.borrow().log().segment(b).is_none(), "B was compacted");
        assert!(store.borrow().log().segment(a).is_some());
        assert!(store.borrow().log().segment(c).is_some());
        let (store, disk) = reopen(store, &disk, &clock, 1).await;
        let item = store.borrow_mut().get(b"victim").expect("get");
        assert_eq!(item.expect("v3").value(), b"v3");
        delete(&store, b"victim").await;
        // C and the segments after it die; A still holds v1.
        for i in 0..keep_c {
            set(&store, format!("keepC-{i}").as_bytes(), b"y", 0).await;
        }
        for round in 0..3u8 {
            for i in 0..60 {
                set(&store, format!("churnD-{i}").as_bytes(), &[round; 600], 0).await;
            }
            compact_all(&store).await;
        }
        assert!(store.borrow().log().segment(a).is_some(), "A holds v1");
        assert!(store.borrow().log().segment(c).is_none(), "C was compacted");
        let (store, _) = reopen(store, &disk, &clock, 2).await;
        let item = store.borrow_mut().get(b"victim").expect("get");
        assert!(
            item.is_none(),
            "a deleted key came back after a restart: {:?}",
            item.map(|i| String::from_utf8_lossy(i.value()).into_owned())
        );
    });
}

#[test]
fn expired_items_are_reclaimed_and_stay_gone() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        for i in 0..400 {
            set(&store, format!("ttl-{i}").as_bytes(), &[b't'; 300], 60).await;
        }
        set(&store, b"forever", b"stays", 0).await;
        let used_before = store.borrow().log().used_bytes();
        assert!(used_before >= 4 * SEGMENT as u64);
        assert_eq!(compact_all(&store).await, 0, "nothing is dead yet");
        clock.advance(61);
        compact_all(&store).await;
        let used_after = store.borrow().log().used_bytes();
        assert!(
            used_after <= 2 * SEGMENT as u64,
            "expired data not reclaimed: {used_before} -> {used_after}"
        );
        assert!(store.borrow().counters().items_reclaimed >= 300);
        let (store, _) = reopen(store, &disk, &clock, 5).await;
        let items = live_items(&store.borrow());
        assert_eq!(items.len(), 1, "{:?}", items.keys().collect::<Vec<_>>());
        // The expired items are gone from the index too, not only invisible.
        assert!(
            store.borrow().index_len() <= 1 + 100,
            "{}",
            store.borrow().index_len()
        );
        assert!(store.borrow_mut().get(b"ttl-7").expect("get").is_none());
    });
}

#[test]
fn a_touched_expiry_survives_compaction_and_reopen() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        set(&store, b"touched", b"value", 10).await;
        let written = store
            .borrow_mut()
            .touch(b"touched", 0)
            .expect("touch")
            .expect("present");
        let commit = store.borrow().commit();
        commit.wait_durable(written.lsn).await.expect("durable");
        // Bury both records under dead data so their segments get compacted.
        for round in 0..4u8 {
            for i in 0..40 {
                set(&store, format!("churn-{i}").as_bytes(), &[round; 700], 0).await;
            }
            compact_all(&store).await;
        }
        clock.advance(100);
        let (store, _) = reopen(store, &disk, &clock, 8).await;
        let item = store
            .borrow_mut()
            .get(b"touched")
            .expect("get")
            .expect("touch kept it alive");
        assert_eq!(item.expiry(), 0);
        assert_eq!(item.value(), b"value");
    });
}

/// A store whose 40 keys `k-N` were each written three times (values of 700 bytes `0`,
/// `1`, then `2`): segments that compaction can reclaim.
async fn overwritten_three_times(disk: &SimDisk, clock: &ManualClock) -> Shared {
    let (store, _) = open_sim(disk, config(), clock).await;
    let store: Shared = Rc::new(RefCell::new(store));
    for round in 0..3u8 {
        for i in 0..40 {
            set(&store, format!("k-{i}").as_bytes(), &[round; 700], 0).await;
        }
    }
    store
}

#[test]
fn a_pinned_segment_is_kept_until_unpinned() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let store = overwritten_three_times(&disk, &clock).await;
        let pin = store.borrow().log().pin();
        let pinned: Vec<u64> = pin.segments().map(|(s, _)| s.id()).collect();
        compact_all(&store).await;
        assert!(store.borrow().counters().segments_compacted > 0);
        for id in &pinned {
            assert!(
                disk.segment_ids().contains(id),
                "pinned segment {id} removed"
            );
        }
        let retired: Vec<u64> = store
            .borrow()
            .log()
            .segments()
            .filter(|s| s.is_retired())
            .map(|s| s.id())
            .collect();
        assert!(!retired.is_empty());
        drop(pin);
        compact_all(&store).await;
        compact_once(&store).await.expect("compact");
        for id in &retired {
            assert!(
                !disk.segment_ids().contains(id),
                "retired segment {id} kept after unpin"
            );
        }
        for i in 0..40 {
            let item = store
                .borrow_mut()
                .get(format!("k-{i}").as_bytes())
                .expect("get");
            assert_eq!(item.expect("present").value(), &[2u8; 700]);
        }
    });
}

/// Runs one compaction and, at the first moment a segment the log still knows has no file
/// (compaction unlinked it and waits for the directory sync that makes that durable), calls
/// `then` with its id. Returns whether compaction did anything, and what `then` returned
/// (`None` if that moment never came; looked for a bounded time and number of times).
async fn at_an_unlinked_segment<T>(
    store: &Shared,
    disk: &SimDisk,
    then: impl FnOnce(u64) -> T,
) -> (bool, Option<T>) {
    let compacting = {
        let store = Rc::clone(store);
        glommio::spawn_local(async move { compact_once(&store).await.expect("compact") })
    };
    let mut unlinked = None;
    // Bounded in time (compaction waits on timers between batches) and in count.
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..50_000_000 {
        if Instant::now() > deadline {
            break;
        }
        glommio::executor().yield_now().await;
        let on_disk = disk.segment_ids();
        unlinked = store
            .borrow()
            .log()
            .segments()
            .map(|s| s.id())
            .find(|id| !on_disk.contains(id));
        if unlinked.is_some() {
            break;
        }
    }
    // Nothing awaited since: still that moment.
    let found = unlinked.map(then);
    (compacting.await, found)
}

/// A pin taken while compaction waits for the directory sync after unlinking a segment's
/// file leaves that segment out: every segment it holds has its file.
#[test]
fn a_pin_taken_while_compaction_removes_files_holds_only_files_that_exist() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let store = overwritten_three_times(&disk, &clock).await;
        let (compacted, pin) =
            at_an_unlinked_segment(&store, &disk, |_| store.borrow().log().pin()).await;
        assert!(compacted, "compaction removed a segment");
        let pin = pin.expect("a moment between unlinking and forgetting a segment");
        for (segment, _) in pin.segments() {
            assert!(
                disk.segment_ids().contains(&segment.id()),
                "pinned segment {} has no file",
                segment.id()
            );
        }
    });
}

/// A crash after compaction unlinked a segment's file and before the directory sync that
/// makes the removal durable can bring the file back, and then it must come back whole: a
/// removed file's blocks may be freed early (`SegmentFile::removed`) only once its removal
/// is durable. The simulated disk zeroes a file it is told that about, as punching its holes
/// does on a real one, so telling it too early fails here.
#[test]
fn a_file_whose_removal_a_crash_undoes_comes_back_whole() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let store = overwritten_three_times(&disk, &clock).await;
        let undone = SimCrashOptions {
            removal_undone_percent: 100,
            ..SimCrashOptions::with_seed(7)
        };
        let (compacted, mid_removal) =
            at_an_unlinked_segment(&store, &disk, |id| (id, disk.crash(undone))).await;
        assert!(compacted, "compaction removed a segment");
        let (id, mid_removal) = mid_removal.expect("a moment between unlinking and the dir sync");
        assert!(
            mid_removal.segment_ids().contains(&id),
            "the crash did not bring segment {id} back"
        );
        let after = disk.crash(SimCrashOptions::with_seed(8));
        for (when, image) in [("before", mid_removal), ("after", after)] {
            let opened = Store::open(
                SimStorage::new(image),
                config(),
                Rc::new(clock.clone()) as Rc<dyn Clock>,
                RecoveryPolicy::TruncateTornTail,
            )
            .await;
            let (reopened, _) = opened.unwrap_or_else(|e| {
                panic!("recovery after a crash {when} the removal of segment {id} was durable: {e}")
            });
            let items = live_items(&reopened);
            assert_eq!(items.len(), 40, "crash {when}");
            for i in 0..40 {
                let item = &items[format!("k-{i}").as_bytes()];
                assert_eq!(item.0, [2u8; 700], "crash {when}: k-{i}");
            }
        }
    });
}

#[test]
fn the_background_compactor_reclaims_while_a_writer_runs() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let mut config = config();
        config.compaction.idle_interval = Duration::from_millis(1);
        let (store, _) = open_sim(&disk, config, &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        let compactor = spawn_compactor(Rc::clone(&store), 10).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut i = 0u32;
        while store.borrow().counters().segments_compacted < 5 {
            assert!(
                Instant::now() < deadline,
                "no background compaction after {i} writes"
            );
            set(&store, format!("k-{}", i % 40).as_bytes(), &[b'w'; 500], 0).await;
            i += 1;
            if i.is_multiple_of(100) {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }
        compactor.cancel().await;
        assert!(store.borrow().log().used_bytes() < 8 * SEGMENT as u64);
        store.borrow().check_invariants();
    });
}

/// Compaction copies a stale item with its mark (and its CAS), and the copy is stale after a
/// restart too.
#[test]
fn a_stale_item_stays_stale_when_compaction_copies_it() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let (store, _) = open_sim(&disk, config(), &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        set(&store, b"stale", b"value", 0).await;
        let marked = store
            .borrow_mut()
            .invalidate(b"stale", None)
            .expect("invalidate");
        let cas = marked.expect("marked").cas;
        let first = store
            .borrow()
            .log()
            .segments()
            .next()
            .expect("a segment")
            .id();
        // Overwrite another key until the first segment is mostly dead, then compact.
        while store.borrow().log().segments().count() < 4 {
            set(&store, b"filler", &[b'f'; 900], 0).await;
        }
        assert!(compact_all(&store).await > 0);
        assert!(
            store.borrow().log().segment(first).is_none(),
            "the stale item's segment was compacted away"
        );
        let check = |store: &mut Store<SimStorage>| {
            let item = store.get(b"stale").expect("get").expect("kept");
            assert_eq!(
                (item.value(), item.flags(), item.cas(), item.is_stale()),
                (&b"value"[..], 7, cas, true)
            );
        };
        check(&mut store.borrow_mut());
        let store = Rc::into_inner(store).expect("one owner").into_inner();
        sync_all(&store).await;
        drop(store);
        let (mut reopened, _) = open_sim(&disk, config(), &clock).await;
        check(&mut reopened);
    });
}

/// The largest item a config takes fits in a segment with a tombstone before it: compaction
/// that copies a needed tombstone whose key holds such an item writes the two into one
/// segment. (A config once took an item that fit alone, and compaction then failed on that
/// segment every round. Found by a review.)
#[test]
fn a_needed_tombstone_before_a_largest_item_can_be_compacted() {
    run(|| async {
        let disk = SimDisk::new();
        let mut config = config();
        let key = vec![b'k'; 250];
        while {
            config.item_size_max_bytes += 1;
            config.validate().is_ok()
        } {}
        config.item_size_max_bytes -= 1;
        config.validate().expect("the largest item it takes");
        let item_max = config.item_size_max_bytes;
        let clock = ManualClock::new(1_700_000_000);
        let (store, _) = open_sim(&disk, config, &clock).await;
        let store: Shared = Rc::new(RefCell::new(store));
        set(&store, &key, b"first", 0).await;
        let first = store.borrow().log().tail().id();
        let mut i = 0;
        while store.borrow().log().tail().id() == first {
            set(&store, format!("f{i}").as_bytes(), &[b'f'; 400], 0).await;
            i += 1;
        }
        delete(&store, &key).await;
        let victim = store.borrow().log().tail().id();
        set(&store, &key, &vec![b'P'; item_max], 0).await;
        set(&store, b"after", b"x", 0).await;
        assert!(
            store
                .borrow()
                .log()
                .segment(victim)
                .expect("there")
                .is_sealed()
        );
        let compacted = store.borrow_mut().compact_some(victim, 0, usize::MAX);
        assert!(compacted.is_ok(), "{compacted:?}");
        assert_eq!(
            store
                .borrow_mut()
                .get(&key)
                .expect("get")
                .map(|i| i.value().len()),
            Some(item_max)
        );
    });
}
