//! Capacity: a durable store refuses writes when full and loses nothing; a cache evicts its
//! oldest segment.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::live_items;
use common::{open_sim, run, small_config};
use std::cell::RefCell;
use std::rc::Rc;
use terrace_wal::error::{StoreError, WalError};
use terrace_wal::log::{Durability, RecoveryPolicy};
use terrace_wal::storage::{SimCrashOptions, SimDisk, SimStorage};
use terrace_wal::store::{
    Clock, ManualClock, SetMode, Store, StoreOutcome, WhenFull, compact_once,
};

const SEGMENT: usize = 16 << 10;

#[test]
fn a_full_durable_store_refuses_writes_and_loses_nothing() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let mut config = small_config(SEGMENT, Durability::Fsync);
        config.log.capacity_bytes = 4 * SEGMENT as u64;
        config.compaction.live_percent_max = 100;
        let (store, _) = open_sim(&disk, config.clone(), &clock).await;
        let store = Rc::new(RefCell::new(store));
        let commit = store.borrow().commit();
        let value = [b'v'; 500];
        let mut acknowledged = Vec::new();
        let mut refused = None;
        for i in 0..1000 {
            let key = format!("key-{i}");
            let outcome = store
                .borrow_mut()
                .set(SetMode::Set, key.as_bytes(), &value, 0, 0);
            match outcome {
                Ok(StoreOutcome::Stored(written)) => {
                    commit.wait_durable(written.lsn).await.expect("durable");
                    acknowledged.push(key);
                }
                Ok(other) => panic!("{other:?}"),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let Some(error) = refused else {
            panic!("1000 writes of 500 bytes fit in 4 segments of 16 KiB");
        };
        assert!(
            matches!(error, StoreError::Wal(WalError::Full { .. })),
            "{error}"
        );
        assert!(store.borrow().log().used_bytes() <= 4 * SEGMENT as u64);
        // Still refusing, not poisoned: reads work, and a full store is not a failed one.
        assert!(matches!(
            store.borrow_mut().set(SetMode::Set, b"more", &value, 0, 0),
            Err(StoreError::Wal(WalError::Full { .. }))
        ));
        assert!(store.borrow().commit().failure().is_none());
        for key in &acknowledged {
            assert!(
                store
                    .borrow_mut()
                    .get(key.as_bytes())
                    .expect("get")
                    .is_some(),
                "{key}"
            );
        }

        // Deleting most data and compacting frees room: writes succeed again.
        for key in acknowledged.iter().skip(5) {
            let deleted = store.borrow_mut().delete(key.as_bytes());
            match deleted {
                Ok(Some(written)) => commit.wait_durable(written.lsn).await.expect("durable"),
                // The tail may be too full for the tombstone; compaction makes room below.
                Err(StoreError::Wal(WalError::Full { .. })) => break,
                other => panic!("{other:?}"),
            }
        }
        for _ in 0..8 {
            compact_once(&store).await.expect("compact");
        }
        let mut written_again = 0;
        for i in 0..10 {
            let key = format!("again-{i}");
            let outcome = store
                .borrow_mut()
                .set(SetMode::Set, key.as_bytes(), &value, 0, 0);
            if let Ok(StoreOutcome::Stored(w)) = outcome {
                commit.wait_durable(w.lsn).await.expect("durable");
                written_again += 1;
            }
        }
        assert!(written_again > 0, "compaction freed no room");

        // Every acknowledged write not deleted survives a restart.
        let live_before = live_items(&store.borrow());
        let crashed = disk.crash(SimCrashOptions::with_seed(3));
        let (reopened, _) = open_sim(&crashed, config, &clock).await;
        assert_eq!(live_items(&reopened), live_before);
        for key in acknowledged.iter().take(5) {
            assert!(live_before.contains_key(key.as_bytes()), "{key} lost");
        }
    });
}

#[test]
fn a_full_cache_evicts_its_oldest_segment() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let mut config = small_config(SEGMENT, Durability::None);
        config.when_full = WhenFull::EvictOldest;
        config.log.capacity_bytes = 4 * SEGMENT as u64;
        let (mut store, _) = open_sim(&disk, config, &clock).await;
        let value = [b'v'; 500];
        for i in 0..2000 {
            let key = format!("key-{i}");
            let out = store
                .set(SetMode::Set, key.as_bytes(), &value, 0, 0)
                .expect("set");
            assert!(matches!(out, StoreOutcome::Stored(_)));
            assert!(
                store.log().used_bytes() <= 4 * SEGMENT as u64,
                "over capacity at {i}"
            );
            assert!(disk.used_bytes() <= 4 * SEGMENT as u64);
        }
        assert!(store.counters().evictions > 0);
        assert!(
            store.get(b"key-0").expect("get").is_none(),
            "oldest evicted"
        );
        assert!(
            store.get(b"key-1999").expect("get").is_some(),
            "newest kept"
        );
        store.check_invariants();
        let live = live_items(&store).len() as u64;
        assert_eq!(live + store.counters().evictions, 2000);
    });
}

#[test]
fn eviction_is_refused_for_a_durable_store() {
    run(|| async {
        let mut config = small_config(SEGMENT, Durability::Fsync);
        config.when_full = WhenFull::EvictOldest;
        let opened = Store::open(
            SimStorage::new(SimDisk::new()),
            config,
            Rc::new(ManualClock::new(0)) as Rc<dyn Clock>,
            RecoveryPolicy::TruncateTornTail,
        )
        .await;
        let Err(error) = opened else {
            panic!("a durable store that evicts was accepted");
        };
        assert!(
            matches!(
                error,
                WalError::Config {
                    field: "when_full",
                    ..
                }
            ),
            "{error}"
        );
    });
}

/// Compaction writes a needed tombstone whose key was stored again, then the item after it.
/// When the log is too full for both, it writes neither (and fails the round): a tombstone
/// alone would delete the acknowledged item.
#[test]
fn compaction_never_writes_a_tombstone_without_the_item_stored_after_it() {
    run(|| async {
        let clock = ManualClock::new(1_000);
        let mut config = small_config(SEGMENT, Durability::Fsync);
        config.log.capacity_bytes = 8 * SEGMENT as u64;
        config.compaction.bytes_per_sec = 1 << 40;
        let disk = SimDisk::new();
        let (store, _) = open_sim(&disk, config.clone(), &clock).await;
        let store = Rc::new(RefCell::new(store));
        let set = |key: &str, value: &[u8]| {
            store
                .borrow_mut()
                .set(SetMode::Set, key.as_bytes(), value, 0, 0)
                .map(drop)
        };
        let fill = vec![b'f'; 900];
        // The keys' first values, with data that stays (that segment is never compacted).
        for i in 0..6 {
            set(&format!("a{i}"), b"old").expect("set");
        }
        for i in 0..15 {
            set(&format!("keep{i}"), &fill).expect("set");
        }
        // Their tombstones, in a segment that otherwise dies.
        let before = store.borrow().log().tail().id();
        while store.borrow().log().tail().id() == before {
            set("junk", &fill).expect("set");
        }
        let tombstones = store.borrow().log().tail().id();
        for i in 0..6 {
            store
                .borrow_mut()
                .delete(format!("a{i}").as_bytes())
                .expect("delete");
        }
        while store.borrow().log().tail().id() == tombstones {
            set("junk", &fill).expect("set");
        }
        // Stored again with large values, then the log filled with live data.
        let big = vec![b'B'; 3000];
        for i in 0..6 {
            set(&format!("a{i}"), &big).expect("set");
        }
        let mut n = 0;
        while set(&format!("more{n}"), &fill).is_ok() {
            n += 1;
        }
        let synced = common::sync_all(&store.borrow());
        synced.await;
        let _ = compact_once(&store).await;
        let expected = live_items(&store.borrow());
        for i in 0..6 {
            let item = store
                .borrow_mut()
                .get(format!("a{i}").as_bytes())
                .expect("get");
            assert_eq!(item.expect("still stored").value(), &big[..], "a{i}");
        }
        let synced = common::sync_all(&store.borrow());
        synced.await;
        drop(store);
        let (reopened, _) = open_sim(&disk, config, &clock).await;
        assert_eq!(live_items(&reopened), expected, "after a restart");
    });
}
