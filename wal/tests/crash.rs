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
