//! Fail-stop: after a failed fsync the shard refuses every write, and what was acknowledged
//! before survives.

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
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk};
use terrace_wal::store::{Delta, ManualClock, SetMode, StoreOutcome};

fn is_poisoned(error: &StoreError) -> bool {
    matches!(error, StoreError::Wal(WalError::Poisoned { .. }))
}

#[test]
fn a_failed_sync_stops_every_later_write() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let config = small_config(16 << 10, Durability::Fsync);
        let (store, _) = open_sim(&disk, config.clone(), &clock).await;
        let store = Rc::new(RefCell::new(store));
        let commit = store.borrow().commit();

        // Acknowledged writes before the failure.
        let mut acknowledged = Vec::new();
        for i in 0..50 {
            let key = format!("before-{i}");
            let out = store
                .borrow_mut()
                .set(SetMode::Set, key.as_bytes(), b"safe", 1, 0);
            let Ok(StoreOutcome::Stored(written)) = out else {
                panic!("{out:?}");
            };
            commit.wait_durable(written.lsn).await.expect("durable");
            acknowledged.push(key);
        }

        let out = store.borrow_mut().set(SetMode::Set, b"counter", b"5", 0, 0);
        let Ok(StoreOutcome::Stored(written)) = out else {
            panic!("{out:?}");
        };
        commit.wait_durable(written.lsn).await.expect("durable");

        // The next segment sync fails.
        disk.fail_syncs_from(disk.syncs());
        let out = store.borrow_mut().set(SetMode::Set, b"doomed", b"x", 0, 0);
        let Ok(StoreOutcome::Stored(doomed)) = out else {
            panic!("{out:?}");
        };
        // A second write appended before the failure is known: its wait must fail too.
        let out = store
            .borrow_mut()
            .set(SetMode::Set, b"doomed-2", b"y", 0, 0);
        let Ok(StoreOutcome::Stored(doomed_2)) = out else {
            panic!("{out:?}");
        };
        let error = commit
            .wait_durable(doomed.lsn)
            .await
            .expect_err("sync failed");
        assert!(error.is_poisoned(), "{error}");
        assert!(error.to_string().contains("fdatasync segment"), "{error}");
        let error = commit
            .wait_durable(doomed_2.lsn)
            .await
            .expect_err("sync failed");
        assert!(error.is_poisoned(), "{error}");
        assert!(
            commit.durable_lsn() < doomed.lsn,
            "nothing after the failure is durable"
        );
        assert!(commit.failure().is_some());

        // Every later write is refused, whatever the operation.
        {
            let mut s = store.borrow_mut();
            let refusals = [
                s.set(SetMode::Set, b"after", b"x", 0, 0).map(|_| ()),
                s.set(SetMode::Add, b"after-add", b"x", 0, 0).map(|_| ()),
                s.set(SetMode::Append, b"before-1", b"x", 0, 0).map(|_| ()),
                s.delete(b"before-2").map(|_| ()),
                s.touch(b"before-3", 100).map(|_| ()),
                s.delta(b"counter", Delta::Incr(1)).map(|_| ()),
                s.flush_all(0).map(|_| ()),
            ];
            for (i, refusal) in refusals.into_iter().enumerate() {
                match refusal {
                    Err(error) => assert!(is_poisoned(&error), "op {i}: {error}"),
                    // Every key exists, so every op would write: each must be refused.
                    Ok(()) => panic!("op {i} succeeded after a failed sync"),
                }
            }
            // Reads still work.
            assert!(s.get(b"before-7").expect("get").is_some());
        }

        // After a restart the acknowledged data is intact.
        let crashed = disk.crash(SimCrashOptions::with_seed(7));
        let (store, _) = open_sim(&crashed, config, &clock).await;
        let items = live_items(&store);
        for key in &acknowledged {
            let item = items
                .get(key.as_bytes())
                .expect("acknowledged key survives");
            assert_eq!(item.0, b"safe");
        }
        assert!(!items.contains_key(b"after".as_slice()));
    });
}

#[test]
fn a_failed_sync_is_never_retried_into_success() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let (store, _) = open_sim(&disk, small_config(16 << 10, Durability::Fsync), &clock).await;
        let store = Rc::new(RefCell::new(store));
        disk.fail_syncs_from(0);
        let out = store.borrow_mut().set(SetMode::Set, b"k", b"v", 0, 0);
        let Ok(StoreOutcome::Stored(first)) = out else {
            panic!("{out:?}");
        };
        let commit = store.borrow().commit();
        assert!(commit.wait_durable(first.lsn).await.is_err());
        // Even if the disk recovers, the shard stays stopped.
        disk.fail_syncs_from(u64::MAX);
        assert!(commit.wait_durable(first.lsn).await.is_err());
        let refused = store.borrow_mut().set(SetMode::Set, b"k2", b"v", 0, 0);
        assert!(matches!(&refused, Err(e) if is_poisoned(e)), "{refused:?}");
    });
}

/// A directory sync that fails after compaction removed a segment's file stops the shard
/// too: which names the directory holds on disk is unknown.
#[test]
fn a_failed_directory_sync_after_compaction_stops_every_later_write() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000);
        let mut config = small_config(32 << 10, Durability::Fsync);
        config.compaction.bytes_per_sec = 1 << 40;
        let (store, _) = open_sim(&disk, config, &clock).await;
        let store = Rc::new(RefCell::new(store));
        let commit = store.borrow().commit();
        // Overwrites, so that compaction has segments to remove.
        for round in 0..3u8 {
            for i in 0..40 {
                let key = format!("k-{i}");
                let out = store
                    .borrow_mut()
                    .set(SetMode::Set, key.as_bytes(), &[round; 700], 0, 0);
                let Ok(StoreOutcome::Stored(written)) = out else {
                    panic!("{out:?}");
                };
                commit.wait_durable(written.lsn).await.expect("durable");
            }
        }
        disk.fail_dir_syncs();
        let compacted = terrace_wal::store::compact_once(&store).await;
        assert!(
            compacted.as_ref().is_err_and(is_poisoned),
            "compaction: {compacted:?}"
        );
        let out = store.borrow_mut().set(SetMode::Set, b"after", b"x", 0, 0);
        assert!(
            out.as_ref().is_err_and(is_poisoned),
            "a write after it: {out:?}"
        );
        let again = terrace_wal::store::compact_once(&store).await;
        assert!(
            again.as_ref().is_err_and(is_poisoned),
            "compaction again: {again:?}"
        );
    });
}
