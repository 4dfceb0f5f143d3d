//! What replies wait for, on a permanent-store shard on real files.

#![allow(
    clippy::expect_used,
    reason = "tests stop at the first unexpected result"
)]

use super::*;
use std::future::Future;
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy};
use terrace_wal::store::{CompactionConfig, ManualClock, StoreConfig, WhenFull};

/// Runs `test` on a glommio executor with one permanent-store shard in a temporary dir, on
/// a manual clock; with `sync_replication`, writes wait for the shard's passives.
fn with_shard<F>(
    sync_replication: bool,
    test: impl FnOnce(LocalShards, ManualClock) -> F + Send + 'static,
) where
    F: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(64)
        .spawn(move || async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let storage = FsStorage::open(dir.path()).await.expect("open dir");
            let config = StoreConfig {
                log: LogConfig {
                    segment_size_bytes: 1 << 20,
                    durability: Durability::Fsync,
                    capacity_bytes: u64::MAX,
                },
                when_full: WhenFull::Refuse,
                item_size_max_bytes: 64 << 10,
                compaction: CompactionConfig::default(),
            };
            let clock = ManualClock::new(1_700_000_000);
            let (store, _) = ShardStore::open(
                storage,
                config,
                Rc::new(clock.clone()),
                RecoveryPolicy::TruncateTornTail,
            )
            .await
            .expect("open store");
            let topology = Topology {
                shards: 1,
                executors: 1,
            };
            let shards = LocalShards::new(
                topology,
                vec![Some(Rc::new(RefCell::new(store)))],
                (
                    sync_replication,
                    crate::cluster::group::GroupFlags::default(),
                ),
            );
            test(shards, clock).await;
        })
        .expect("start executor")
        .join()
        .expect("test executor panicked");
}

fn with_one_shard<F>(test: impl FnOnce(LocalShards) -> F + Send + 'static)
where
    F: Future<Output = ()> + 'static,
{
    with_shard(false, |shards, _| test(shards));
}

/// `set k v`, whose reply must wait for its fsync.
fn set(shards: &LocalShards, out: &mut Vec<u8>) -> Durable {
    shards
        .store(SetMode::Set, b"k", 0, 0, b"v", out)
        .expect("set")
        .expect("a set waits")
}

/// A reply may go out without waiting only if `wait` is `None` or already satisfied.
fn covers(wait: Option<&Durable>, lsn: u64) -> bool {
    wait.is_some_and(|w| w.lsn >= lsn)
}

/// A miss, `NOT_FOUND` or `NOT_STORED` caused by another client's write that is not durable
/// yet must wait for that write: a crash before its fsync would bring the old state back,
/// and the client would have seen a state that never was durable.
#[test]
fn replies_reporting_an_absence_wait_for_the_write_that_caused_it() {
    with_one_shard(|shards| async move {
        let mut out = Vec::new();
        let set = set(&shards, &mut out);
        set.wait().await.expect("sync");

        // Another client deletes k; its fsync has not run yet.
        let delete = shards
            .delete(b"k", true, &mut out)
            .expect("delete")
            .expect("a delete waits");
        assert!(delete.commit.durable_lsn() < delete.lsn);

        let absences = [
            ("get miss", shards.get(b"k", false, &mut out, None)),
            (
                "gat miss",
                shards
                    .get_and_touch(b"k", 0, false, &mut out, None)
                    .expect("gat"),
            ),
            (
                "replace NOT_STORED",
                shards
                    .store(SetMode::Replace, b"k", 0, 0, b"w", &mut out)
                    .expect("replace"),
            ),
            (
                "cas NOT_FOUND",
                shards
                    .store(SetMode::Cas(1), b"k", 0, 0, b"w", &mut out)
                    .expect("cas"),
            ),
            (
                "touch NOT_FOUND",
                shards.touch(b"k", 0, &mut out).expect("touch"),
            ),
            (
                "incr NOT_FOUND",
                shards.delta(b"k", Delta::Incr(1), &mut out).expect("incr"),
            ),
            (
                "delete NOT_FOUND",
                shards.delete(b"k", true, &mut out).expect("delete"),
            ),
        ];
        for (what, wait) in &absences {
            assert!(
                covers(wait.as_ref(), delete.lsn),
                "{what} does not wait for the delete (LSN {}): {:?}",
                delete.lsn,
                wait.as_ref().map(|w| w.lsn)
            );
        }

        // Once the delete is durable, an absence waits for nothing.
        delete.wait().await.expect("sync");
        assert!(shards.get(b"k", false, &mut out, None).is_none());
        assert!(
            shards
                .store(SetMode::Replace, b"k", 0, 0, b"w", &mut out)
                .expect("replace")
                .is_none()
        );
    });
}

/// `add` refused because another client's `set` stored the key: `NOT_STORED` (and `EXISTS`
/// for a `cas` with a stale CAS) must wait for that set.
#[test]
fn replies_refused_because_of_an_unsynced_set_wait_for_it() {
    with_one_shard(|shards| async move {
        let mut out = Vec::new();
        let set = set(&shards, &mut out);
        let add = shards
            .store(SetMode::Add, b"k", 0, 0, b"w", &mut out)
            .expect("add");
        assert!(covers(add.as_ref(), set.lsn), "add NOT_STORED");
        let cas = shards
            .store(SetMode::Cas(u64::MAX), b"k", 0, 0, b"w", &mut out)
            .expect("cas");
        assert!(covers(cas.as_ref(), set.lsn), "cas EXISTS");
        set.wait().await.expect("sync");
    });
}

/// `incr` refused because another client's unsynced `set` stored a value that is not a
/// number: the refusal shows that value, so it waits for the set like an absence would.
#[test]
fn a_refusal_showing_an_unsynced_value_waits_for_it() {
    with_one_shard(|shards| async move {
        let mut out = Vec::new();
        let set = shards
            .store(SetMode::Set, b"k", 0, 0, b"abc", &mut out)
            .expect("set")
            .expect("a set waits");
        assert!(set.commit.durable_lsn() < set.lsn);
        let Err(refusal) = shards.delta(b"k", Delta::Incr(1), &mut out) else {
            panic!("incr on a non-numeric value is refused");
        };
        assert!(
            covers(refusal.wait.as_ref(), set.lsn),
            "`{}` does not wait for the set",
            String::from_utf8_lossy(&refusal.reply).trim_end()
        );
        set.wait().await.expect("sync");
    });
}

/// With `replication = "sync"` a miss waits for the passives to acknowledge the shard's
/// last record. When that record is not a client's write (here the boundary a delayed
/// `flush_all` writes when it takes effect), the streams must still be woken to send it,
/// or the miss waits for their next keepalive.
#[test]
fn a_miss_waiting_for_the_passives_wakes_the_streams() {
    with_shard(true, |shards, clock| async move {
        let replicas = Rc::clone(shards.replicas(0).expect("replicas"));
        let store = Rc::clone(shards.shard_store(0).expect("store"));
        let passive = replicas.attach("p");
        let mut out = Vec::new();
        let set = set(&shards, &mut out);
        set.commit.wait_durable(set.lsn).await.expect("sync");
        for wait in shards.flush_all(10).expect("flush_all 10") {
            wait.commit.wait_durable(wait.lsn).await.expect("sync");
        }
        let last = store.borrow().last_lsn();
        passive.note_sent(last);
        replicas.ack(&passive, last);
        replicas.enter_sync_set(&passive);
        // A stream that has sent everything waits for the next record.
        let woken = Rc::new(Cell::new(false));
        let stream = {
            let (replicas, store, woken) =
                (Rc::clone(&replicas), Rc::clone(&store), Rc::clone(&woken));
            glommio::spawn_local(async move {
                replicas
                    .appended
                    .wait_until(|| store.borrow().log().next_lsn() > last + 1)
                    .await;
                woken.set(true);
            })
        };
        glommio::executor().yield_now().await;
        clock.advance(20);
        let wait = shards
            .get(b"k", false, &mut out, None)
            .expect("the miss waits: the flush's boundary record is not acknowledged yet");
        assert!(wait.lsn > last && wait.replicas.is_some());
        for _ in 0..50 {
            glommio::executor().yield_now().await;
        }
        let was_woken = woken.get();
        drop(stream);
        assert!(was_woken, "the streams were not woken for LSN {}", wait.lsn);
    });
}

/// A routed request that reaches its shard after this server stepped down (it waited in a
/// full channel meanwhile) is not run: the shard's log is now a copy of the new active's.
#[test]
fn a_routed_write_arriving_after_a_step_down_is_not_run() {
    with_one_shard(|shards| async move {
        shards
            .serving
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let store = Rc::clone(shards.shard_store(0).expect("store"));
        let before = store.borrow().last_lsn();
        let op = route::Op::Store {
            mode: SetMode::Set,
            key: b"k".to_vec(),
            flags: 0,
            exptime: 0,
            data: b"v".to_vec(),
        };
        let route::Answer::Bytes(reply) = route::execute(&shards, op).await else {
            panic!("a refusal is bytes");
        };
        let reply = String::from_utf8_lossy(&reply).to_string();
        assert!(
            reply.starts_with("SERVER_ERROR") && reply.contains("not run"),
            "{reply}"
        );
        assert_eq!(store.borrow().last_lsn(), before, "nothing was written");
    });
}

/// `stats` tells an operator what compaction did: the executor's snapshot sums the shards'
/// segment count and compaction counters.
#[test]
fn the_snapshot_counts_segments_and_what_compaction_did() {
    with_shard(false, |shards, clock| async move {
        let mut out = Vec::new();
        let store = |key: &[u8], exptime: i64, out: &mut Vec<u8>| {
            shards
                .store(SetMode::Set, key, 0, exptime, &[b'v'; 8 << 10], out)
                .expect("set")
                .expect("a set waits")
        };
        // In the first segment: one item that stays, one that expires.
        store(b"stays", 0, &mut out);
        store(b"expires", 60, &mut out);
        // Then enough overwrites of one key to seal a few 1 MiB segments.
        let mut last = None;
        for _ in 0..400 {
            last = Some(store(b"k", 0, &mut out));
        }
        last.expect("written").wait().await.expect("sync");
        clock.advance(120);

        let before = shards.snapshot();
        assert!(before.segments >= 3, "{before:?}");
        assert_eq!(before.segments_compacted, 0);

        let (_, shard) = shards.owned().next().expect("one shard");
        let mut rounds = 0;
        while terrace_wal::store::compact_once(shard)
            .await
            .expect("compact")
        {
            rounds += 1;
            assert!(rounds < 100, "compaction does not finish");
        }
        let after = shards.snapshot();
        assert!(after.segments_compacted >= 1, "{after:?}");
        assert!(
            after.compaction_bytes_rewritten >= 8 << 10,
            "the item that stays was rewritten: {after:?}"
        );
        assert_eq!(after.items_reclaimed, 1, "the expired item: {after:?}");
        assert!(after.segments < before.segments, "{before:?} -> {after:?}");
    });
}

/// A reply that sends a value from the mapping holds its item: compaction may retire and
/// remove the item's segment meanwhile, and the value still reads as it was.
#[test]
fn a_value_held_for_sending_outlives_its_compacted_segment() {
    with_shard(false, |shards, _| async move {
        let mut out = Vec::new();
        let original: Vec<u8> = (0..MAPPED_VALUE_MIN_BYTES + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        shards
            .store(SetMode::Set, b"big", 0, 0, &original, &mut out)
            .expect("set")
            .expect("a set waits")
            .wait()
            .await
            .expect("sync");
        let (_, shard) = shards.owned().next().expect("one shard");
        let first_segment = shard
            .borrow()
            .log()
            .segments()
            .next()
            .expect("a segment")
            .id();

        out.clear();
        let mut mapped = Vec::new();
        shards.get(b"big", false, &mut out, Some(&mut mapped));
        assert_eq!(mapped.len(), 1, "a value this large is not copied");
        assert!(!out.windows(original.len()).any(|w| w == original));
        let (_, item) = mapped.pop().expect("mapped");

        // Overwrite it until its segment is all dead, then compact it away.
        let other = vec![b'x'; MAPPED_VALUE_MIN_BYTES + 100];
        let mut last = None;
        for _ in 0..200 {
            last = shards
                .store(SetMode::Set, b"big", 0, 0, &other, &mut out)
                .expect("set");
        }
        last.expect("a set waits").wait().await.expect("sync");
        while terrace_wal::store::compact_once(shard)
            .await
            .expect("compact")
        {}
        assert!(
            shard.borrow().log().segment(first_segment).is_none(),
            "the item's segment was compacted away"
        );
        assert!(item.value() == original, "the held value changed");
    });
}
