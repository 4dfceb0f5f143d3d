//! memcached semantics of the store, one behaviour per test, with exact outcomes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::{open_sim, run, small_config, sync_all};
use terrace_wal::error::{KeyProblem, StoreError};
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk, SimStorage};
use terrace_wal::store::{Delta, ManualClock, SetMode, Store, StoreOutcome, Written};

const NOW: u32 = 1_700_000_000;

struct Fixture {
    disk: SimDisk,
    clock: ManualClock,
    store: Store<SimStorage>,
}

async fn fixture() -> Fixture {
    let disk = SimDisk::new();
    let clock = ManualClock::new(NOW);
    let (store, _) = open_sim(&disk, small_config(64 << 10, Durability::Fsync), &clock).await;
    Fixture { disk, clock, store }
}

impl Fixture {
    fn set(
        &mut self,
        mode: SetMode,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
    ) -> StoreOutcome {
        self.store
            .set(mode, key, value, flags, exptime)
            .expect("set")
    }

    fn stored(&mut self, key: &[u8], value: &[u8], flags: u32, exptime: i64) -> Written {
        match self.set(SetMode::Set, key, value, flags, exptime) {
            StoreOutcome::Stored(written) => written,
            other => panic!("{other:?}"),
        }
    }

    fn value(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.store
            .get(key)
            .expect("get")
            .map(|item| item.value().to_vec())
    }

    fn cas(&mut self, key: &[u8]) -> u64 {
        self.store.get(key).expect("get").expect("present").cas()
    }

    fn records(&self) -> u64 {
        self.store.log().counters().records_appended
    }

    /// Syncs everything, cuts the power, reopens.
    async fn reopen(&mut self) {
        sync_all(&self.store).await;
        self.disk = self.disk.crash(SimCrashOptions::with_seed(1));
        let config = self.store.config().clone();
        let (store, _) = open_sim(&self.disk, config, &self.clock).await;
        self.store = store;
    }
}

#[test]
fn set_get_and_flags() {
    run(|| async {
        let mut f = fixture().await;
        f.stored(b"k", b"value", 0xdead_beef, 0);
        let item = f.store.get(b"k").expect("get").expect("present");
        assert_eq!(item.key(), b"k");
        assert_eq!(item.value(), b"value");
        assert_eq!(item.flags(), 0xdead_beef);
        assert_eq!(item.expiry(), 0);
        assert_eq!(f.value(b"missing"), None);
        f.stored(b"k", b"", 1, 0);
        assert_eq!(f.value(b"k"), Some(Vec::new()));
    });
}

#[test]
fn add_only_when_absent_or_expired() {
    run(|| async {
        let mut f = fixture().await;
        assert!(matches!(
            f.set(SetMode::Add, b"k", b"1", 0, 0),
            StoreOutcome::Stored(_)
        ));
        assert!(matches!(
            f.set(SetMode::Add, b"k", b"2", 0, 0),
            StoreOutcome::NotStored
        ));
        assert_eq!(f.value(b"k"), Some(b"1".to_vec()));
        f.stored(b"ttl", b"old", 0, 10);
        f.clock.advance(10);
        assert!(matches!(
            f.set(SetMode::Add, b"ttl", b"new", 0, 0),
            StoreOutcome::Stored(_)
        ));
        assert_eq!(f.value(b"ttl"), Some(b"new".to_vec()));
    });
}

#[test]
fn replace_only_when_present() {
    run(|| async {
        let mut f = fixture().await;
        assert!(matches!(
            f.set(SetMode::Replace, b"k", b"1", 0, 0),
            StoreOutcome::NotStored
        ));
        assert_eq!(f.value(b"k"), None);
        f.stored(b"k", b"1", 0, 0);
        assert!(matches!(
            f.set(SetMode::Replace, b"k", b"2", 5, 0),
            StoreOutcome::Stored(_)
        ));
        assert_eq!(f.value(b"k"), Some(b"2".to_vec()));
    });
}

#[test]
fn append_and_prepend_keep_flags_and_expiry_and_change_cas() {
    run(|| async {
        let mut f = fixture().await;
        assert!(matches!(
            f.set(SetMode::Append, b"k", b"x", 0, 0),
            StoreOutcome::NotStored
        ));
        assert!(matches!(
            f.set(SetMode::Prepend, b"k", b"x", 0, 0),
            StoreOutcome::NotStored
        ));
        f.stored(b"k", b"middle", 42, 100);
        let cas = f.cas(b"k");
        assert!(matches!(
            f.set(SetMode::Append, b"k", b"-end", 7, 0),
            StoreOutcome::Stored(_)
        ));
        assert!(matches!(
            f.set(SetMode::Prepend, b"k", b"start-", 7, 0),
            StoreOutcome::Stored(_)
        ));
        let item = f.store.get(b"k").expect("get").expect("present");
        assert_eq!(item.value(), b"start-middle-end");
        assert_eq!(item.flags(), 42);
        assert_eq!(item.expiry(), NOW + 100);
        assert!(item.cas() > cas);
    });
}

#[test]
fn cas_outcomes() {
    run(|| async {
        let mut f = fixture().await;
        assert!(matches!(
            f.set(SetMode::Cas(1), b"k", b"v", 0, 0),
            StoreOutcome::NotFound
        ));
        f.stored(b"k", b"v1", 0, 0);
        let cas = f.cas(b"k");
        assert!(matches!(
            f.set(SetMode::Cas(cas + 1), b"k", b"v2", 0, 0),
            StoreOutcome::Exists
        ));
        assert_eq!(f.value(b"k"), Some(b"v1".to_vec()));
        let StoreOutcome::Stored(written) = f.set(SetMode::Cas(cas), b"k", b"v2", 0, 0) else {
            panic!("cas with the current value's CAS must store");
        };
        assert_eq!(f.cas(b"k"), written.cas);
        assert!(matches!(
            f.set(SetMode::Cas(cas), b"k", b"v3", 0, 0),
            StoreOutcome::Exists
        ));
    });
}

#[test]
fn cas_values_increase_and_are_never_reused_after_a_restart() {
    run(|| async {
        let mut f = fixture().await;
        let mut last = 0;
        for i in 0..50 {
            let written = f.stored(format!("k{}", i % 7).as_bytes(), b"v", 0, 0);
            assert!(written.cas > last);
            last = written.cas;
        }
        // Unsynced writes are lost at the crash, but their CAS values are never handed out
        // again: only synced state is the reference, and CAS follows the highest LSN on disk.
        f.reopen().await;
        let written = f.stored(b"after", b"v", 0, 0);
        assert!(
            written.cas > last,
            "{} reused after restart (last {last})",
            written.cas
        );
    });
}

#[test]
fn touch_changes_expiry_keeps_cas_and_survives_a_restart() {
    run(|| async {
        let mut f = fixture().await;
        assert_eq!(f.store.touch(b"missing", 10).expect("touch"), None);
        f.stored(b"k", b"v", 3, 10);
        let cas = f.cas(b"k");
        let before = f.records();
        assert!(f.store.touch(b"k", 1000).expect("touch").is_some());
        assert_eq!(f.records(), before + 1);
        f.clock.advance(500);
        let item = f.store.get(b"k").expect("get").expect("touch kept it");
        assert_eq!(item.cas(), cas);
        assert_eq!(item.expiry(), NOW + 1000);
        f.reopen().await;
        let item = f.store.get(b"k").expect("get").expect("survives");
        assert_eq!(
            (item.cas(), item.expiry(), item.flags()),
            (cas, NOW + 1000, 3)
        );
        f.clock.advance(500);
        assert_eq!(f.value(b"k"), None);
    });
}

#[test]
fn get_and_touch() {
    run(|| async {
        let mut f = fixture().await;
        assert!(f.store.get_and_touch(b"k", 10).expect("gat").is_none());
        f.stored(b"k", b"v", 0, 5);
        let (item, written) = f
            .store
            .get_and_touch(b"k", 100)
            .expect("gat")
            .expect("present");
        assert_eq!(item.value(), b"v");
        assert_eq!(item.expiry(), NOW + 100);
        assert_eq!(written.cas, item.cas());
        // Touching to the past returns the item as it was, once (memcached 1.6.18: `gat -1 k`
        // answers the value, the next `get` misses).
        let (item, _) = f
            .store
            .get_and_touch(b"k", -1)
            .expect("gat")
            .expect("returned once");
        assert_eq!(item.value(), b"v");
        assert_eq!(f.value(b"k"), None);
        assert!(f.store.get_and_touch(b"k", -1).expect("gat").is_none());
    });
}

#[test]
fn incr_and_decr() {
    run(|| async {
        let mut f = fixture().await;
        assert!(f.store.delta(b"n", Delta::Incr(1)).expect("incr").is_none());
        f.stored(b"n", b"10", 9, 100);
        let (value, _) = f
            .store
            .delta(b"n", Delta::Incr(5))
            .expect("incr")
            .expect("present");
        assert_eq!(value, 15);
        let (value, _) = f
            .store
            .delta(b"n", Delta::Decr(100))
            .expect("decr")
            .expect("present");
        assert_eq!(value, 0, "decr stops at 0");
        let item = f.store.get(b"n").expect("get").expect("present");
        assert_eq!(
            (item.value(), item.flags(), item.expiry()),
            (&b"0"[..], 9, NOW + 100)
        );
        f.stored(b"max", b"18446744073709551615", 0, 0);
        let (value, _) = f
            .store
            .delta(b"max", Delta::Incr(2))
            .expect("incr")
            .expect("present");
        assert_eq!(value, 1, "incr wraps at 2^64");
        f.stored(b"padded", b"12  ", 0, 0);
        let (value, _) = f
            .store
            .delta(b"padded", Delta::Incr(1))
            .expect("incr")
            .expect("present");
        assert_eq!(value, 13);
        assert_eq!(f.value(b"padded"), Some(b"13".to_vec()));
        // memcached reads a counter with strtoull (safe_strtoull): leading whitespace, a
        // sign, leading zeros and anything after a space are fine (checked against 1.6.18).
        for (text, start) in [
            (&b" 12"[..], 12),
            (b"12 abc", 12),
            (b"000000000000000000012", 12),
            (b"+12", 12),
            (b"-0", 0),
        ] {
            f.stored(b"loose", text, 0, 0);
            let (value, _) = f
                .store
                .delta(b"loose", Delta::Incr(1))
                .expect("incr")
                .expect("present");
            assert_eq!(value, start + 1, "{text:?}");
            assert_eq!(
                f.value(b"loose"),
                Some((start + 1).to_string().into_bytes())
            );
        }
        for bad in [
            &b"abc"[..],
            b"",
            b" ",
            b"1x",
            b"12abc",
            b"-1",
            b"18446744073709551616",
        ] {
            f.stored(b"bad", bad, 0, 0);
            let before = f.records();
            let result = f.store.delta(b"bad", Delta::Incr(1));
            assert!(
                matches!(result, Err(StoreError::NonNumeric)),
                "{bad:?}: {result:?}"
            );
            assert_eq!(f.records(), before, "a refused incr writes nothing");
        }
    });
}

#[test]
fn delete_and_deleted_keys_stay_deleted() {
    run(|| async {
        let mut f = fixture().await;
        assert_eq!(f.store.delete(b"k").expect("delete"), None);
        f.stored(b"k", b"v", 0, 0);
        assert!(f.store.delete(b"k").expect("delete").is_some());
        assert_eq!(f.value(b"k"), None);
        assert_eq!(f.store.delete(b"k").expect("delete"), None);
        f.reopen().await;
        assert_eq!(f.value(b"k"), None);
    });
}

#[test]
fn expiry_relative_absolute_negative() {
    run(|| async {
        let mut f = fixture().await;
        f.stored(b"rel", b"v", 0, 10);
        f.stored(b"abs", b"v", 0, i64::from(NOW) + 20);
        f.stored(b"never", b"v", 0, 0);
        assert_eq!(
            f.store.get(b"abs").expect("get").expect("present").expiry(),
            NOW + 20
        );
        f.clock.advance(9);
        assert!(f.value(b"rel").is_some());
        f.clock.advance(1);
        assert_eq!(f.value(b"rel"), None, "expired at exactly its time");
        assert!(f.value(b"abs").is_some());
        f.reopen().await;
        assert!(
            f.value(b"abs").is_some(),
            "absolute expiry survives a restart"
        );
        f.clock.advance(10);
        assert_eq!(f.value(b"abs"), None);
        assert!(f.value(b"never").is_some());
        // Negative: already expired, and it replaces the old value.
        f.stored(b"never", b"v2", 0, -1);
        assert_eq!(f.value(b"never"), None);
        // An absolute time in the past, too.
        f.stored(b"past", b"v", 0, i64::from(NOW) - 100);
        assert_eq!(f.value(b"past"), None);
    });
}

#[test]
fn immediate_flush_all() {
    run(|| async {
        let mut f = fixture().await;
        f.stored(b"a", b"1", 0, 0);
        f.stored(b"b", b"2", 0, 0);
        let before = f.records();
        f.store.flush_all(0).expect("flush");
        assert_eq!(f.records(), before + 1);
        assert_eq!(f.value(b"a"), None);
        f.stored(b"c", b"3", 0, 0);
        f.reopen().await;
        assert_eq!(f.value(b"a"), None);
        assert_eq!(f.value(b"b"), None);
        assert_eq!(f.value(b"c"), Some(b"3".to_vec()));
        assert!(matches!(
            f.set(SetMode::Add, b"a", b"again", 0, 0),
            StoreOutcome::Stored(_)
        ));
    });
}

#[test]
fn delayed_flush_all() {
    run(|| async {
        let mut f = fixture().await;
        f.stored(b"before", b"1", 0, 0);
        f.store.flush_all(100).expect("flush");
        f.clock.advance(50);
        f.stored(b"between", b"2", 0, 0);
        assert!(f.value(b"before").is_some(), "not yet in effect");
        // Survives a restart while pending.
        f.reopen().await;
        assert!(f.value(b"before").is_some());
        f.clock.advance(50);
        assert_eq!(f.value(b"before"), None);
        assert_eq!(
            f.value(b"between"),
            None,
            "stored before the flush time: flushed"
        );
        f.stored(b"after", b"3", 0, 0);
        // And after it took effect.
        f.reopen().await;
        assert_eq!(f.value(b"before"), None);
        assert_eq!(f.value(b"between"), None);
        assert_eq!(f.value(b"after"), Some(b"3".to_vec()));
    });
}

#[test]
fn keys_are_checked() {
    run(|| async {
        let mut f = fixture().await;
        let long = vec![b'k'; 251];
        let cases: [(&[u8], KeyProblem); 6] = [
            (b"", KeyProblem::Empty),
            (&long, KeyProblem::TooLong),
            (b"a b", KeyProblem::BadByte),
            (b"a\nb", KeyProblem::BadByte),
            (b"a\x01", KeyProblem::BadByte),
            (b"\x7f", KeyProblem::BadByte),
        ];
        for (key, problem) in cases {
            let result = f.store.set(SetMode::Set, key, b"v", 0, 0);
            assert!(
                matches!(result, Err(StoreError::InvalidKey(p)) if p == problem),
                "{key:?}: {result:?}"
            );
            assert!(matches!(f.store.get(key), Err(StoreError::InvalidKey(_))));
        }
        f.stored(&[b'k'; 250], b"ok", 0, 0);
        assert_eq!(f.value(&[b'k'; 250]), Some(b"ok".to_vec()));
        assert_eq!(f.records(), 1, "refused keys write nothing");
    });
}

#[test]
fn oversized_values_are_refused_and_the_old_value_stays() {
    run(|| async {
        let mut f = fixture().await;
        let max = f.store.config().item_size_max_bytes;
        f.stored(b"k", b"old", 0, 0);
        let result = f.store.set(SetMode::Set, b"k", &vec![0u8; max + 1], 0, 0);
        assert!(
            matches!(result, Err(StoreError::TooLarge { len_bytes, max_bytes }) if len_bytes == max + 1 && max_bytes == max),
            "{result:?}"
        );
        assert_eq!(f.value(b"k"), Some(b"old".to_vec()));
        f.stored(b"k", &vec![1u8; max], 0, 0);
        // An append or prepend past the limit is not stored and keeps the old value
        // (memcached 1.6.18 answers NOT_STORED, not the too-large error of a set).
        for mode in [SetMode::Append, SetMode::Prepend] {
            let before = f.records();
            assert!(matches!(
                f.set(mode, b"k", b"x", 0, 0),
                StoreOutcome::NotStored
            ));
            assert_eq!(f.records(), before, "nothing written");
            assert_eq!(f.value(b"k"), Some(vec![1u8; max]));
        }
    });
}

#[test]
fn each_change_writes_one_record_and_misses_write_none() {
    run(|| async {
        let mut f = fixture().await;
        let mut expect = f.records();
        let mut check = |f: &mut Fixture, writes: bool, what: &str| {
            if writes {
                expect += 1;
            }
            assert_eq!(f.records(), expect, "{what}");
        };
        f.set(SetMode::Set, b"k", b"1", 0, 0);
        check(&mut f, true, "set");
        f.set(SetMode::Add, b"k", b"1", 0, 0);
        check(&mut f, false, "add on present");
        f.set(SetMode::Replace, b"missing", b"1", 0, 0);
        check(&mut f, false, "replace on missing");
        f.set(SetMode::Cas(0), b"k", b"1", 0, 0);
        check(&mut f, false, "cas exists");
        f.set(SetMode::Append, b"k", b"2", 0, 0);
        check(&mut f, true, "append");
        f.store.delta(b"k", Delta::Incr(1)).expect("incr");
        check(&mut f, true, "incr");
        f.store.touch(b"k", 10).expect("touch");
        check(&mut f, true, "touch");
        f.store.get(b"k").expect("get");
        check(&mut f, false, "get");
        f.store.delete(b"missing").expect("delete");
        check(&mut f, false, "delete missing");
        f.store.delete(b"k").expect("delete");
        check(&mut f, true, "delete");
        f.store.flush_all(0).expect("flush");
        check(&mut f, true, "flush_all");
    });
}

/// An item kept alive only by a touch must not be shown before the touch is durable: its
/// LSN to wait for is the touch's, not only the value's.
#[test]
fn a_touched_item_is_shown_only_once_its_touch_is_durable() {
    run(|| async {
        let mut f = fixture().await;
        let StoreOutcome::Stored(set) = f.set(SetMode::Set, b"k", b"v", 0, 3) else {
            panic!("not stored");
        };
        let synced = sync_all(&f.store);
        synced.await;
        let touch = f.store.touch(b"k", 1000).expect("touch").expect("touched");
        assert!(touch.lsn > set.lsn);
        f.clock.advance(10);
        let item = f.store.get(b"k").expect("get").expect("alive by the touch");
        assert!(
            item.lsn() >= touch.lsn,
            "shown after LSN {} only, the touch is {}",
            item.lsn(),
            touch.lsn
        );
        // Untouched items wait for their value only.
        let StoreOutcome::Stored(other) = f.set(SetMode::Set, b"j", b"w", 0, 0) else {
            panic!("not stored");
        };
        f.set(SetMode::Set, b"later", b"x", 0, 0);
        let item = f.store.get(b"j").expect("get").expect("stored");
        assert_eq!(item.lsn(), other.lsn);
    });
}

/// A second delayed `flush_all` can move a pending one later. An item shown in between is
/// visible only because of the second flush's record, so it waits for that record too: a
/// crash that lost it would bring back the sooner flush and take the item away.
#[test]
fn an_item_kept_by_a_later_flush_all_waits_for_that_flush() {
    run(|| async {
        let mut f = fixture().await;
        let set = f.stored(b"k", b"v", 0, 0);
        f.store.flush_all(100).expect("flush in 100 s");
        sync_all(&f.store).await;
        let later = f.store.flush_all(200).expect("flush in 200 s");
        f.clock.advance(150);
        let item = f
            .store
            .get(b"k")
            .expect("get")
            .expect("kept by the later flush");
        assert!(
            item.lsn() >= later.lsn,
            "shown after LSN {} only, the later flush is {}",
            item.lsn(),
            later.lsn
        );
        assert!(later.lsn > set.lsn);
        // Once nothing is pending, an item waits for its own record only.
        f.clock.advance(100);
        let fresh = f.stored(b"j", b"w", 0, 0);
        let item = f
            .store
            .get(b"j")
            .expect("get")
            .expect("stored after the flush");
        assert_eq!(item.lsn(), fresh.lsn);
    });
}

#[test]
fn prefetch_changes_nothing_for_any_key() {
    // The server warms the caches for the next request of a burst before running the current
    // one: whatever that next request's key (present, absent, of a length another key has,
    // too long, empty), nothing may change, in the store or its log.
    run(|| async {
        let mut f = fixture().await;
        for i in 0..200u32 {
            f.stored(format!("key{i}").as_bytes(), &i.to_le_bytes(), i, 0);
        }
        let records = f.records();
        let too_long = vec![b'k'; 251];
        for key in [&b"key7"[..], b"key199", b"absent", b"kex7", b"", &too_long] {
            f.store.prefetch_table(key);
            f.store.prefetch(key);
        }
        assert_eq!(f.records(), records, "a prefetch appends nothing");
        for i in 0..200u32 {
            assert_eq!(
                f.value(format!("key{i}").as_bytes()),
                Some(i.to_le_bytes().to_vec())
            );
        }
        assert_eq!(f.value(b"absent"), None);
    });
}

#[test]
fn get_reads_every_item_wherever_its_record_lies() {
    // A GET asks for the lines of a candidate's record past its key before comparing the
    // key: records of every size, up to the last one of a full segment (whose read-ahead
    // reaches past the mapping), must read back exactly, and a key of the same length that
    // is absent must miss.
    run(|| async {
        let mut f = fixture().await;
        let value = |i: u32| vec![(i % 251) as u8; (i as usize * 37) % 700];
        for round in 0..2u32 {
            for i in 0..600u32 {
                f.stored(format!("key{i:05}").as_bytes(), &value(i + round), i, 0);
            }
        }
        assert!(
            f.store.log().counters().segments_created >= 6,
            "the items span many segments: {:?}",
            f.store.log().counters()
        );
        for i in 0..600u32 {
            let key = format!("key{i:05}");
            assert_eq!(f.value(key.as_bytes()), Some(value(i + 1)), "{key}");
            assert_eq!(f.value(format!("kex{i:05}").as_bytes()), None);
        }
    });
}

/// The stale state of `key`'s item: `None` if there is none.
fn stale_of(store: &mut Store<SimStorage>, key: &[u8]) -> Option<bool> {
    store.get(key).expect("get").map(|item| item.is_stale())
}

#[test]
fn invalidate_marks_the_item_stale_with_a_new_cas_and_keeps_it_across_a_restart() {
    run(|| async {
        let mut f = fixture().await;
        assert_eq!(
            f.store.invalidate(b"missing", None).expect("invalidate"),
            None
        );
        f.stored(b"k", b"value", 5, 100);
        let cas = f.cas(b"k");
        assert_eq!(stale_of(&mut f.store, b"k"), Some(false));
        let marked = f.store.invalidate(b"k", None).expect("invalidate");
        let marked = marked.expect("the item is there");
        assert!(marked.cas > cas, "a new CAS: {} after {cas}", marked.cas);
        let item = f.store.get(b"k").expect("get").expect("kept");
        assert_eq!(
            (
                item.value(),
                item.flags(),
                item.cas(),
                item.expiry(),
                item.is_stale()
            ),
            (&b"value"[..], 5, marked.cas, NOW + 100, true)
        );
        drop(item);
        // A new expiry with the mark; a touch keeps the mark.
        f.store.invalidate(b"k", Some(30)).expect("invalidate");
        assert!(f.store.touch(b"k", 50).expect("touch").is_some());
        f.reopen().await;
        let item = f.store.get(b"k").expect("get").expect("survives");
        assert_eq!((item.expiry(), item.is_stale()), (NOW + 50, true));
        drop(item);
        // Any new value is fresh again.
        f.stored(b"k", b"new", 0, 0);
        assert_eq!(stale_of(&mut f.store, b"k"), Some(false));
        f.store.invalidate(b"k", None).expect("invalidate");
        let incremented = f.set(SetMode::Set, b"n", b"1", 0, 0);
        assert!(matches!(incremented, StoreOutcome::Stored(_)));
        f.store.invalidate(b"n", None).expect("invalidate");
        f.store.delta(b"n", Delta::Incr(1)).expect("incr");
        assert_eq!(stale_of(&mut f.store, b"n"), Some(false));
        let appended = f.set(SetMode::Append, b"k", b"+", 0, 0);
        assert!(matches!(appended, StoreOutcome::Stored(_)));
        assert_eq!(stale_of(&mut f.store, b"k"), Some(false));
    });
}

#[test]
fn a_cas_older_than_the_items_stores_the_value_stale_with_the_items_expiry() {
    run(|| async {
        let mut f = fixture().await;
        assert_eq!(
            f.set(SetMode::CasOrStale(1), b"missing", b"v", 0, 0),
            StoreOutcome::NotFound
        );
        let first = f.stored(b"k", b"one", 0, 100).cas;
        let second = f.stored(b"k", b"two", 0, 200).cas;
        // The item's own CAS: an ordinary cas, fresh, with the new expiry.
        let StoreOutcome::Stored(third) =
            f.set(SetMode::CasOrStale(second), b"k", b"three", 1, 300)
        else {
            panic!("a matching CAS stores");
        };
        let item = f.store.get(b"k").expect("get").expect("stored");
        assert_eq!((item.expiry(), item.is_stale()), (NOW + 300, false));
        drop(item);
        // An older one: stored, stale, with the item's expiry (not the one asked for).
        let StoreOutcome::Stored(late) = f.set(SetMode::CasOrStale(first), b"k", b"late", 2, 999)
        else {
            panic!("an older CAS stores, stale");
        };
        assert!(late.cas > third.cas);
        let item = f.store.get(b"k").expect("get").expect("stored");
        assert_eq!(
            (item.value(), item.flags(), item.expiry(), item.is_stale()),
            (&b"late"[..], 2, NOW + 300, true)
        );
        drop(item);
        // A newer one, and 0, are refused.
        let current = f.cas(b"k");
        assert_eq!(
            f.set(SetMode::CasOrStale(current + 1), b"k", b"x", 0, 0),
            StoreOutcome::Exists
        );
        assert_eq!(
            f.set(SetMode::CasOrStale(0), b"k", b"x", 0, 0),
            StoreOutcome::Exists
        );
        f.reopen().await;
        assert_eq!(stale_of(&mut f.store, b"k"), Some(true));
    });
}
