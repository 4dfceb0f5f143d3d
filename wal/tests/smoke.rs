#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::{open_sim, run, small_config, sync_all};
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk};
use terrace_wal::store::{ManualClock, SetMode, StoreOutcome};

#[test]
fn set_get_reopen() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000_000);
        let config = small_config(64 << 10, Durability::Fsync);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        for i in 0..2000u32 {
            let key = format!("key-{}", i % 300);
            let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            let out = store
                .set(SetMode::Set, key.as_bytes(), value.as_bytes(), i, 0)
                .unwrap();
            assert!(matches!(out, StoreOutcome::Stored(_)));
        }
        sync_all(&store).await;
        let segments = store.log().segment_count();
        assert!(segments > 3, "{segments}");
        drop(store);
        let disk2 = disk.crash(SimCrashOptions::with_seed(1));
        let (mut store, report) = open_sim(&disk2, config, &clock).await;
        assert_eq!(report.records, 2000);
        for i in 1700..2000u32 {
            let key = format!("key-{}", i % 300);
            let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            let item = store.get(key.as_bytes()).unwrap().expect("present");
            assert_eq!(item.value(), value.as_bytes());
            assert_eq!(item.flags(), i);
        }
        store.check_invariants();
    });
}

/// A log written in format version 1 (no record flags) is read, and takes no more records
/// in its version-1 tail: they go to a new segment of the current version, so that a build
/// that reads only version 1 refuses the log (by its header) instead of taking a record
/// flag for a torn tail and cutting acknowledged records.
#[test]
fn a_version_1_log_is_read_and_its_tail_takes_no_more_records() {
    use terrace_wal::constants::FORMAT_VERSION;
    use terrace_wal::format::{SegmentHeader, SegmentHeaderCheck};
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let config = small_config(64 << 10, Durability::Fsync);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        store
            .set(SetMode::Set, b"old", b"written in version 1", 0, 0)
            .expect("set");
        sync_all(&store).await;
        drop(store);
        let disk = as_version_1(&disk, &[1]);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        let item = store
            .get(b"old")
            .expect("get")
            .expect("read from version 1");
        assert_eq!(item.value(), b"written in version 1");
        drop(item);
        store.invalidate(b"old", None).expect("invalidate");
        assert_eq!(
            store.log().tail().id(),
            2,
            "a new segment for the new record"
        );
        sync_all(&store).await;
        drop(store);
        let image = disk.durable_image();
        let version = |id| match SegmentHeader::check(&image[&id]) {
            SegmentHeaderCheck::Valid(header) => header.version,
            other => panic!("segment {id}: {other:?}"),
        };
        assert_eq!((version(1), version(2)), (1, FORMAT_VERSION));
        let (mut store, _) = open_sim(&SimDisk::from_image(&image), config, &clock).await;
        let item = store.get(b"old").expect("get").expect("still there");
        assert!(item.is_stale());
    });
}

/// Sets the version of the given segments of `disk`'s durable image to 1 (a log written by
/// an older build, which had no record flags), and returns a disk holding that image.
fn as_version_1(disk: &SimDisk, ids: &[u64]) -> SimDisk {
    use terrace_wal::constants::{FORMAT_VERSION, SEGMENT_HEADER_LEN_BYTES};
    use terrace_wal::format::{SegmentHeader, SegmentHeaderCheck};
    let mut image = disk.durable_image();
    for id in ids {
        let segment = image.get_mut(id).expect("segment");
        let SegmentHeaderCheck::Valid(mut header) = SegmentHeader::check(segment) else {
            panic!("a valid header");
        };
        assert_eq!(header.version, FORMAT_VERSION);
        header.version = 1;
        segment[..SEGMENT_HEADER_LEN_BYTES].copy_from_slice(&header.encode());
    }
    SimDisk::from_image(&image)
}

/// A recovered version-1 tail takes no more records, and it is still the newest segment:
/// compaction leaves it alone even when nothing in it is live (it was once compacted away,
/// and the next write found no segment, or a restart handed out its LSNs again). (Found by
/// a review.)
#[test]
fn a_sealed_version_1_tail_is_not_compacted_away() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use terrace_wal::store::compact_once;
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let config = small_config(16 << 10, Durability::Fsync);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        store
            .set(SetMode::Set, b"keep", b"lasting", 0, 0)
            .expect("set");
        let mut i = 0;
        while store.log().tail().id() == 1 {
            let key = format!("t{i}");
            store
                .set(SetMode::Set, key.as_bytes(), &[b't'; 400], 0, 100)
                .expect("set");
            i += 1;
        }
        store
            .set(SetMode::Set, b"expires", b"soon", 0, 100)
            .expect("set");
        let last_lsn = store.log().next_lsn() - 1;
        sync_all(&store).await;
        let tail = store.log().tail().id();
        drop(store);
        let disk = as_version_1(&disk, &[1, tail]);
        // Upgraded after a quiet hour: everything but `keep` expired.
        clock.advance(3600);
        let (store, _) = open_sim(&disk, config.clone(), &clock).await;
        let store = Rc::new(RefCell::new(store));
        while compact_once(&store).await.expect("compaction") {}
        assert!(
            store.borrow().log().segment(tail).is_some(),
            "the tail stays"
        );
        let stored = store.borrow_mut().set(SetMode::Set, b"new", b"after", 0, 0);
        let Ok(StoreOutcome::Stored(written)) = stored else {
            panic!("set after compaction: {stored:?}");
        };
        assert!(written.lsn > last_lsn);
        let synced = sync_all(&store.borrow());
        synced.await;
        drop(Rc::into_inner(store).expect("one owner").into_inner());
        let (mut reopened, _) = open_sim(&disk, config, &clock).await;
        assert!(reopened.log().next_lsn() > written.lsn);
        let item = reopened.get(b"new").expect("get").expect("acknowledged");
        assert_eq!(item.cas(), written.cas);
        assert!(reopened.get(b"keep").expect("get").is_some());
    });
}

/// A segment in a newer format than this build reads is refused as such, not as damage, and
/// nothing is changed.
#[test]
fn a_log_in_a_newer_format_is_refused_as_newer_not_as_damage() {
    use terrace_wal::constants::{FORMAT_VERSION, SEGMENT_HEADER_LEN_BYTES};
    use terrace_wal::error::WalError;
    use terrace_wal::format::{SegmentHeader, SegmentHeaderCheck};
    use terrace_wal::log::RecoveryPolicy;
    use terrace_wal::storage::SimStorage;
    use terrace_wal::store::{Clock, Store};
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let config = small_config(64 << 10, Durability::Fsync);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        store.set(SetMode::Set, b"k", b"v", 0, 0).expect("set");
        sync_all(&store).await;
        drop(store);
        let mut image = disk.durable_image();
        let first = image.get_mut(&1).expect("segment 1");
        let SegmentHeaderCheck::Valid(mut header) = SegmentHeader::check(first) else {
            panic!("a valid header");
        };
        header.version = FORMAT_VERSION + 1;
        first[..SEGMENT_HEADER_LEN_BYTES].copy_from_slice(&header.encode());
        let newer = SimDisk::from_image(&image);
        let opened = Store::open(
            SimStorage::new(newer.clone()),
            config,
            std::rc::Rc::new(clock.clone()) as std::rc::Rc<dyn Clock>,
            RecoveryPolicy::TruncateTornTail,
        )
        .await;
        match opened {
            Err(WalError::NewerFormat { version, .. }) => {
                assert_eq!(version, FORMAT_VERSION + 1);
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(newer.durable_image(), image, "nothing was changed");
    });
}

/// An upgraded store near its capacity takes writes again once compaction ran: its sealed
/// version-1 tail is compacted as any segment (what is live in it goes to a newer segment)
/// and goes once that newer one exists. (Found by a review: with the tail kept out of
/// compaction, every write, a delete too, was refused for want of room.)
#[test]
fn an_upgraded_store_near_capacity_takes_writes_again_after_compaction() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use terrace_wal::store::compact_once;
    const SEGMENT: usize = 16 << 10;
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let mut config = small_config(SEGMENT, Durability::Fsync);
        config.log.capacity_bytes = 4 * SEGMENT as u64;
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        let mut i = 0;
        while store.log().tail().id() < 3 {
            let key = format!("live{i}");
            store
                .set(SetMode::Set, key.as_bytes(), &[b'l'; 400], 0, 0)
                .expect("set");
            i += 1;
        }
        while store.log().tail().free_bytes() > SEGMENT / 2 {
            store
                .set(SetMode::Set, b"hot", &[b'h'; 400], 0, 0)
                .expect("set");
        }
        sync_all(&store).await;
        drop(store);
        let disk = as_version_1(&disk, &[1, 2, 3]);
        let (store, _) = open_sim(&disk, config.clone(), &clock).await;
        let store = Rc::new(RefCell::new(store));
        for _ in 0..10 {
            compact_once(&store).await.expect("compaction");
        }
        let deleted = store.borrow_mut().delete(b"live0");
        assert!(matches!(deleted, Ok(Some(_))), "a delete: {deleted:?}");
        let stored = store.borrow_mut().set(SetMode::Set, b"new", b"value", 0, 0);
        assert!(
            matches!(stored, Ok(StoreOutcome::Stored(_))),
            "a set: {stored:?}"
        );
        let hot = store
            .borrow_mut()
            .get(b"hot")
            .expect("get")
            .map(|i| i.value().len());
        assert_eq!(hot, Some(400));
        let synced = sync_all(&store.borrow());
        synced.await;
        drop(Rc::into_inner(store).expect("one owner").into_inner());
        let (mut reopened, _) = open_sim(&disk, config, &clock).await;
        assert!(reopened.get(b"new").expect("get").is_some());
        assert!(reopened.get(b"hot").expect("get").is_some());
        assert!(reopened.get(b"live0").expect("get").is_none());
    });
}

/// A cache (temporary-swap-only) that evicts never evicts its tail, a sealed version-1 one
/// included: with no other segment to evict, a write that needs room is refused as full
/// (it evicted the tail and then found no segment: a panic). (Found by a review; the server
/// empties such a data dir at start, so only the library could meet it.)
#[test]
fn eviction_never_removes_a_sealed_version_1_tail() {
    use terrace_wal::error::{StoreError, WalError};
    use terrace_wal::store::WhenFull;
    const SEGMENT: usize = 16 << 10;
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let (mut store, _) =
            open_sim(&disk, small_config(SEGMENT, Durability::Fsync), &clock).await;
        store.set(SetMode::Set, b"old", b"v1", 0, 0).expect("set");
        sync_all(&store).await;
        drop(store);
        let disk = as_version_1(&disk, &[1]);
        let mut cache = small_config(SEGMENT, Durability::None);
        cache.when_full = WhenFull::EvictOldest;
        cache.log.capacity_bytes = 2 * SEGMENT as u64;
        let (mut store, _) = open_sim(&disk, cache, &clock).await;
        let stored = store.set(SetMode::Set, b"new", b"value", 0, 0);
        assert!(
            matches!(stored, Err(StoreError::Wal(WalError::Full { .. }))),
            "{stored:?}"
        );
        assert!(store.get(b"old").expect("get").is_some(), "the tail stays");
    });
}
