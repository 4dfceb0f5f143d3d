//! Power cuts at any moment, on the simulated disk, while writers, syncs and compaction are
//! in flight. After recovery: every acknowledged write is there, nothing that was never
//! written appears, and the state is exactly the writes up to the recovered LSN, in order.
//!
//! Rounds: `TERRACE_CRASH_ROUNDS` (default 100); replay one with `TERRACE_CRASH_SEED=<n>`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{env_count, live_items};
use common::{open_sim, run, small_config};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk, SimStorage};
use terrace_wal::store::{ManualClock, SetMode, Store, StoreConfig, StoreOutcome, compact_once};

const SEGMENT: usize = 16 << 10;

/// A write that went into the log.
#[derive(Debug, Clone)]
struct Op {
    lsn: u64,
    key: Vec<u8>,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
    acknowledged: bool,
}

type Shared = Rc<RefCell<Store<SimStorage>>>;
type History = Rc<RefCell<Vec<Op>>>;

fn config(seed: u64) -> StoreConfig {
    let mut config = small_config(SEGMENT, Durability::Fsync);
    config.compaction.bytes_per_sec = 1 << 40;
    config.compaction.live_percent_max = if seed.is_multiple_of(3) { 100 } else { 50 };
    config
}

fn crash_options(seed: u64) -> SimCrashOptions {
    let mut options = SimCrashOptions::with_seed(seed);
    options.sector_persisted_percent = [0, 50, 100][(seed % 3) as usize];
    options.creation_survives_percent = [0, 100, 50][(seed / 3 % 3) as usize];
    options.removal_undone_percent = [100, 0, 50][(seed / 9 % 3) as usize];
    options
}

/// One writer: random sets and deletes on a small key space, each awaited for durability.
async fn writer(store: Shared, history: History, stop: Rc<Cell<bool>>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    while !stop.get() {
        let key = format!("key-{}", rng.random_range(0..16)).into_bytes();
        let lsn = store.borrow().log().next_lsn();
        let (written, value) = if rng.random_range(0..5) == 0 {
            match store.borrow_mut().delete(&key).expect("delete") {
                Some(written) => (written, None),
                None => continue,
            }
        } else {
            let mut value = format!("{}:{lsn}:", String::from_utf8_lossy(&key)).into_bytes();
            value.resize(
                value.len() + rng.random_range(0..900),
                b'a' + (lsn % 26) as u8,
            );
            let outcome = store.borrow_mut().set(SetMode::Set, &key, &value, 0, 0);
            match outcome.expect("set") {
                StoreOutcome::Stored(written) => (written, Some(value)),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(written.lsn, lsn);
        let index = {
            let mut history = history.borrow_mut();
            history.push(Op {
                lsn,
                key,
                value,
                acknowledged: false,
            });
            history.len() - 1
        };
        let commit = store.borrow().commit();
        if commit.wait_durable(lsn).await.is_ok() && !stop.get() {
            history.borrow_mut()[index].acknowledged = true;
        }
    }
}

/// Compaction running alongside the writers.
async fn compactor(store: Shared, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        // A compaction that fails because the old disk was cut off is fine: the store on it
        // is abandoned.
        let _ = compact_once(&store).await;
        glommio::executor().yield_now().await;
    }
}

/// The state that replaying `ops` up to `last_lsn` gives, on top of `state`.
fn replay(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: &[Op], last_lsn: u64) {
    for op in ops.iter().filter(|op| op.lsn <= last_lsn) {
        match &op.value {
            Some(value) => state.insert(op.key.clone(), value.clone()),
            None => state.remove(&op.key),
        };
    }
}

/// Runs writers (and maybe a compactor) on `store`, cuts the power after a random number of
/// acknowledgments, stops everything, and returns the crashed disk and the epoch's history.
async fn epoch(
    store: &Shared,
    disk: &SimDisk,
    seed: u64,
    rng: &mut SmallRng,
) -> (SimDisk, Vec<Op>) {
    let history: History = Rc::new(RefCell::new(Vec::new()));
    let stop = Rc::new(Cell::new(false));
    let mut tasks = Vec::new();
    for w in 0..rng.random_range(2..8u64) {
        tasks.push(glommio::spawn_local(writer(
            Rc::clone(store),
            Rc::clone(&history),
            Rc::clone(&stop),
            seed * 100 + w,
        )));
    }
    if seed.is_multiple_of(3) {
        tasks.push(glommio::spawn_local(compactor(
            Rc::clone(store),
            Rc::clone(&stop),
        )));
    }
    let target = rng.random_range(0..300usize);
    let mut yields = 0;
    while history.borrow().iter().filter(|op| op.acknowledged).count() < target && yields < 100_000
    {
        glommio::executor().yield_now().await;
        yields += 1;
    }
    // A few more yields so the cut lands at an arbitrary point of a sync round.
    for _ in 0..rng.random_range(0..5) {
        glommio::executor().yield_now().await;
    }
    let crashed = disk.crash(crash_options(seed));
    stop.set(true);
    for task in tasks {
        task.await;
    }
    let history = history.borrow().clone();
    (crashed, history)
}

/// Opens the crashed disk and checks it against the history; returns the store and the
/// recovered state.
async fn recover_and_check(
    crashed: &SimDisk,
    seed: u64,
    clock: &ManualClock,
    before: &BTreeMap<Vec<u8>, Vec<u8>>,
    history: &[Op],
    what: &str,
) -> (Shared, BTreeMap<Vec<u8>, Vec<u8>>) {
    let (store, report) = open_sim(crashed, config(seed), clock).await;
    let last_lsn = store.log().next_lsn() - 1;
    let acknowledged_max = history
        .iter()
        .filter(|op| op.acknowledged)
        .map(|op| op.lsn)
        .max()
        .unwrap_or(0);
    assert!(
        last_lsn >= acknowledged_max,
        "seed {seed} {what}: recovered up to LSN {last_lsn}, but LSN {acknowledged_max} was acknowledged ({report:?})"
    );
    let mut expected = before.clone();
    replay(&mut expected, history, last_lsn);
    let recovered: BTreeMap<Vec<u8>, Vec<u8>> = live_items(&store)
        .into_iter()
        .map(|(key, item)| (key, item.0))
        .collect();
    if recovered != expected {
        let differing: Vec<_> = expected
            .keys()
            .chain(recovered.keys())
            .filter(|k| expected.get(*k) != recovered.get(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        panic!(
            "seed {seed} {what}: recovered state differs from the writes up to LSN {last_lsn} in keys {differing:?}"
        );
    }
    store.check_invariants();
    (Rc::new(RefCell::new(store)), recovered)
}

fn seeds() -> Vec<u64> {
    match std::env::var("TERRACE_CRASH_SEED") {
        Ok(one) => vec![one.trim().parse().expect("TERRACE_CRASH_SEED is a number")],
        Err(_) => (0..env_count("TERRACE_CRASH_ROUNDS", 100)).collect(),
    }
}

#[test]
fn power_cuts_lose_nothing_acknowledged_and_invent_nothing() {
    run(|| async {
        let mut acknowledged_total = 0;
        for seed in seeds() {
            let mut rng = SmallRng::seed_from_u64(seed);
            let clock = ManualClock::new(1_000_000);
            let disk = SimDisk::new();
            let (store, _) = open_sim(&disk, config(seed), &clock).await;
            let store = Rc::new(RefCell::new(store));
            let (crashed, history) = epoch(&store, &disk, seed, &mut rng).await;
            drop(store);
            acknowledged_total += history.iter().filter(|op| op.acknowledged).count();
            recover_and_check(
                &crashed,
                seed,
                &clock,
                &BTreeMap::new(),
                &history,
                "first cut",
            )
            .await;
        }
        assert!(
            acknowledged_total > 1000,
            "the rounds acknowledged only {acknowledged_total} writes"
        );
    });
}

/// Crash, recover, write more, crash again: the first epoch's torn tail must never come back
/// (recovery zeroes it), both epochs' acknowledged writes survive, LSNs and CAS keep growing.
#[test]
fn a_second_power_cut_after_recovery() {
    run(|| async {
        for seed in seeds() {
            let seed = seed + 10_000;
            let mut rng = SmallRng::seed_from_u64(seed);
            let clock = ManualClock::new(1_000_000);
            let disk = SimDisk::new();
            let (store, _) = open_sim(&disk, config(seed), &clock).await;
            let store = Rc::new(RefCell::new(store));
            let (crashed, first) = epoch(&store, &disk, seed, &mut rng).await;
            drop(store);
            let (store, state) = recover_and_check(
                &crashed,
                seed,
                &clock,
                &BTreeMap::new(),
                &first,
                "first cut",
            )
            .await;
            let cas_floor = store.borrow().log().next_lsn();
            let (crashed_again, second) = epoch(&store, &crashed, seed + 1, &mut rng).await;
            drop(store);
            let (store, _) =
                recover_and_check(&crashed_again, seed, &clock, &state, &second, "second cut")
                    .await;
            for op in &second {
                assert!(op.lsn >= cas_floor, "seed {seed}: LSN {} reused", op.lsn);
            }
            let out = store
                .borrow_mut()
                .set(SetMode::Set, b"after", b"x", 0, 0)
                .expect("set");
            let StoreOutcome::Stored(written) = out else {
                panic!("{out:?}");
            };
            assert!(written.cas >= cas_floor);
        }
    });
}

/// Compaction copies a tombstone whose key was stored again together with the key's item
/// after it (`compact_delete`): a power cut during the sync that covers the two may keep the
/// tombstone and not the item. Recovery must not take the tombstone alone (it would delete
/// the acknowledged item). Found by a review, 2026-12-08.
mod tombstone_and_item_pair {
    use super::SEGMENT;
    use super::common::recovery::log_records;
    use super::common::{open_sim, run, small_config, sync_all};
    use terrace_wal::constants::SECTOR_SIZE_BYTES;
    use terrace_wal::format::RecordKind;
    use terrace_wal::log::Durability;
    use terrace_wal::storage::{SimCrashOptions, SimDisk};
    use terrace_wal::store::{ManualClock, SetMode, Store, StoreConfig, StoreOutcome};

    fn pair_config() -> StoreConfig {
        let mut config = small_config(SEGMENT, Durability::Fsync);
        config.compaction.bytes_per_sec = 1 << 40;
        config
    }

    fn set_one<S: terrace_wal::storage::Storage>(store: &mut Store<S>, key: &[u8], value: &[u8]) {
        let out = store.set(SetMode::Set, key, value, 7, 0).expect("set");
        assert!(matches!(out, StoreOutcome::Stored(_)), "{out:?}");
    }

    /// Builds: K=A in segment 1; K deleted (tombstone T, since = 1) at the start of segment 2;
    /// K=P (acknowledged) in segment 2; segment 2 sealed; everything durable. Then compacts
    /// segment 2 by hand (not synced yet). Returns the disk, the store, P, and the tail records
    /// written by compaction.
    async fn scenario() -> (SimDisk, Store<terrace_wal::storage::SimStorage>, Vec<u8>) {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_700_000_000);
        let (mut store, _) = open_sim(&disk, pair_config(), &clock).await;
        set_one(&mut store, b"K", b"A-old-value");
        // Fill segment 1 until the next record rolls over.
        let mut i = 0;
        while store.log().tail().id() == 1 {
            let free = store.log().tail().free_bytes();
            let len = if free > 1200 { 1000 } else { 10 };
            set_one(&mut store, format!("fill-{i}").as_bytes(), &vec![b'f'; len]);
            i += 1;
        }
        let deleted = store.delete(b"K").expect("delete").expect("present");
        let victim = store
            .log()
            .segments()
            .find(|s| s.first_lsn() <= deleted.lsn && deleted.lsn <= s.last_lsn())
            .unwrap()
            .id();
        assert_eq!(victim, 2);
        let p = vec![b'P'; 3000];
        set_one(&mut store, b"K", &p);
        while store.log().tail().id() == victim {
            set_one(&mut store, b"roll", &vec![b'r'; 1000]);
        }
        sync_all(&store).await; // everything so far acknowledged
        assert_eq!(store.get(b"K").unwrap().unwrap().value(), &p[..]);
        // One compaction batch over the victim (what compact_once does before it waits for
        // durability): T is rewritten at the tail, then K's item P after it.
        let progress = store.compact_some(victim, 0, usize::MAX).expect("compact");
        assert_eq!(progress.next_offset, None);
        (disk, store, p)
    }

    /// Deterministic: the power cut persists the sectors up to the end of the tombstone copy
    /// and none after (a state the simulated disk's own `crash` can produce: every unsynced
    /// sector persists or not independently).
    #[test]
    fn a_power_cut_between_a_tombstone_copy_and_its_item_keeps_the_item() {
        run(|| async {
            let (disk, store, p) = scenario().await;
            let tail = store.log().tail().id();
            let records = log_records(store.log());
            let durable_end = {
                let t = store.log().tail();
                // durable part of the tail: everything before the compaction's first record
                let first_copy_lsn = store.commit().durable_lsn() + 1;
                records
                    .iter()
                    .find(|r| r.segment == t.id() && r.lsn == first_copy_lsn)
                    .map(|r| r.offset)
                    .unwrap()
            };
            let tomb = records
                .iter()
                .filter(|r| r.segment == tail && r.offset >= durable_end)
                .find(|r| r.kind == RecordKind::Delete)
                .expect("tombstone copy at the tail")
                .clone();
            let item = records
                .iter()
                .find(|r| r.segment == tail && r.lsn == tomb.lsn + 1)
                .expect("item copy right after it")
                .clone();
            assert_eq!(item.kind, RecordKind::Put);
            eprintln!(
                "tail {tail}: tombstone copy LSN {} at {}..{}, item copy LSN {} at {}..{}",
                tomb.lsn,
                tomb.offset,
                tomb.end(),
                item.lsn,
                item.offset,
                item.end()
            );
            // Power cut: sectors up to the one holding the end of the tombstone copy reached the
            // disk, later ones did not.
            let mut image = disk.durable_image();
            let visible = disk.visible_image();
            let cut = tomb.end().div_ceil(SECTOR_SIZE_BYTES) * SECTOR_SIZE_BYTES;
            assert!(cut < item.end(), "the item copy spans past the cut sector");
            image.get_mut(&tail).unwrap()[..cut].copy_from_slice(&visible[&tail][..cut]);
            drop(store);
            let crashed = SimDisk::from_image(&image);
            let clock = ManualClock::new(1_700_000_000);
            let (mut reopened, report) = open_sim(&crashed, pair_config(), &clock).await;
            eprintln!("recovery: {report:?}");
            let got = reopened.get(b"K").unwrap().map(|i| i.value().to_vec());
            assert!(
                got.as_deref() == Some(&p[..]),
                "acknowledged K=P (3000 bytes) lost: got {:?} bytes; the tombstone copy survived \
                 without the item copy",
                got.map(|v| v.len())
            );
        });
    }

    /// The same with the simulated disk's own random power cuts (50% of unsynced sectors
    /// persist): some seeds lose the acknowledged item.
    #[test]
    fn random_power_cuts_during_compaction_keep_acknowledged_item() {
        run(|| async {
            let mut lost = Vec::new();
            for seed in 0..200u64 {
                let (disk, store, p) = scenario().await;
                let crashed = disk.crash(SimCrashOptions::with_seed(seed));
                drop(store);
                let clock = ManualClock::new(1_700_000_000);
                let (mut reopened, _) = open_sim(&crashed, pair_config(), &clock).await;
                let got = reopened.get(b"K").unwrap().map(|i| i.value().to_vec());
                if got.as_deref() != Some(&p[..]) {
                    lost.push(seed);
                }
            }
            assert!(
                lost.is_empty(),
                "acknowledged K=P lost after power cuts with seeds {lost:?}"
            );
        });
    }
}
