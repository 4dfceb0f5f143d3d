//! Model-based test: random sequences of every store operation, clock moves, restarts and
//! compactions, checked step by step against a plain `HashMap` that implements memcached's
//! semantics on its own. A failure prints the seed and step; replay one seed with
//! `TERRACE_MODEL_SEED=<n>`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::env_count;
use common::{open_sim, run, small_config, sync_all};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use terrace_wal::error::StoreError;
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk, SimStorage};
use terrace_wal::store::{
    Delta, ManualClock, SetMode, Store, StoreConfig, StoreOutcome, compact_once,
};

const START: u32 = 1_700_000_000;
const SEGMENT: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    value: Vec<u8>,
    flags: u32,
    /// Absolute unix seconds, 0 never.
    expiry: u32,
    /// The CAS the store gave this value (the model checks it stays put when it should).
    cas: u64,
}

#[derive(Debug, Default)]
struct Model {
    items: HashMap<Vec<u8>, Item>,
    /// A delayed flush_all not yet in effect.
    pending_flush: Option<u32>,
}

/// memcached's exptime rules, written independently of the store's.
fn absolute(exptime: i64, now: u32) -> u32 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e <= 30 * 24 * 3600 => now + e as u32,
        e if e <= i64::from(now) => 1,
        e => e as u32,
    }
}

impl Model {
    /// Applies time: a due delayed flush empties everything; expired items vanish.
    fn tick(&mut self, now: u32) {
        if self.pending_flush.is_some_and(|at| now >= at) {
            self.items.clear();
            self.pending_flush = None;
        }
        self.items
            .retain(|_, item| item.expiry == 0 || item.expiry > now);
    }

    fn get(&self, key: &[u8]) -> Option<&Item> {
        self.items.get(key)
    }
}

struct Harness {
    seed: u64,
    step: usize,
    rng: SmallRng,
    disk: SimDisk,
    clock: ManualClock,
    config: StoreConfig,
    store: Rc<RefCell<Store<SimStorage>>>,
    model: Model,
    keys: Vec<Vec<u8>>,
    /// Segments compacted over all store instances.
    compactions: u64,
    restarts: u64,
}

impl Harness {
    fn at(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn key(&mut self) -> Vec<u8> {
        let i = self.rng.random_range(0..self.keys.len());
        self.keys[i].clone()
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(0..1000u64).to_string().into_bytes(),
            1 => Vec::new(),
            _ => {
                let len = self.rng.random_range(1..1500);
                let byte = self.rng.random_range(b'a'..=b'z');
                vec![byte; len]
            }
        }
    }

    fn exptime(&mut self) -> i64 {
        match self.rng.random_range(0..10) {
            0..=4 => 0,
            5 => -1,
            6 => i64::from(START) + i64::from(self.rng.random_range(0..400u32)),
            _ => i64::from(self.rng.random_range(1..60u32)),
        }
    }

    /// Writes keys that are never written again, so that some segments stay live for long:
    /// tombstones of the hot keys then have older records to cover in segments compaction
    /// does not reach (without them every segment soon dies and tombstones are dropped).
    fn write_cold(&mut self) {
        // As the store does before any write: a delayed flush that is due takes effect first.
        let now = self.now();
        self.model.tick(now);
        for i in 0..15 {
            let key = format!("cold-{}-{i}", self.step).into_bytes();
            let value = vec![b'c'; 700];
            let out = self
                .store
                .borrow_mut()
                .set(SetMode::Set, &key, &value, 0, 0);
            let StoreOutcome::Stored(w) = out.expect("set cold") else {
                panic!("{}: a cold set was not stored", self.at());
            };
            self.model.items.insert(
                key,
                Item {
                    value,
                    flags: 0,
                    expiry: 0,
                    cas: w.cas,
                },
            );
        }
    }

    fn now(&self) -> u32 {
        use terrace_wal::store::Clock as _;
        self.clock.now_secs()
    }

    /// The store's view of `key` equals the model's.
    fn check_key(&mut self, key: &[u8]) {
        let now = self.now();
        self.model.tick(now);
        let at = self.at();
        let expected = self.model.get(key).cloned();
        let got = self.store.borrow_mut().get(key).expect("get");
        match (expected, got) {
            (None, None) => {}
            (Some(e), Some(g)) => {
                assert_eq!(g.value(), &e.value[..], "{at}: value of {key:?}");
                assert_eq!(g.flags(), e.flags, "{at}: flags of {key:?}");
                assert_eq!(g.expiry(), e.expiry, "{at}: expiry of {key:?}");
                assert_eq!(g.cas(), e.cas, "{at}: CAS of {key:?}");
            }
            (e, g) => panic!(
                "{at}: {key:?}: model {e:?}, store {:?}",
                g.map(|i| i.value().to_vec())
            ),
        }
    }

    fn check_all(&mut self) {
        let now = self.now();
        self.model.tick(now);
        let mut live = HashMap::new();
        self.store.borrow().for_each_live(|item| {
            live.insert(
                item.key().to_vec(),
                (item.value().to_vec(), item.flags(), item.cas()),
            );
        });
        let expected: HashMap<_, _> = self
            .model
            .items
            .iter()
            .map(|(k, i)| (k.clone(), (i.value.clone(), i.flags, i.cas)))
            .collect();
        assert_eq!(live, expected, "{}: all live items", self.at());
        self.store.borrow().check_invariants();
    }

    fn step(&mut self) {
        let now = self.now();
        self.model.tick(now);
        let key = self.key();
        let at = self.at();
        let item_max = self.config.item_size_max_bytes;
        match self.rng.random_range(0..100) {
            0..=24 => {
                let (value, flags, exptime) = (self.value(), self.rng.random(), self.exptime());
                let mode = match self.rng.random_range(0..3) {
                    0 => SetMode::Set,
                    1 => SetMode::Add,
                    _ => SetMode::Replace,
                };
                let present = self.model.get(&key).is_some();
                let out = self
                    .store
                    .borrow_mut()
                    .set(mode, &key, &value, flags, exptime);
                let should_store = match mode {
                    SetMode::Add => !present,
                    SetMode::Replace => present,
                    _ => true,
                };
                match out.expect("set") {
                    StoreOutcome::Stored(w) => {
                        assert!(should_store, "{at}: {mode:?} stored");
                        let expiry = absolute(exptime, now);
                        self.model.items.insert(
                            key.clone(),
                            Item {
                                value,
                                flags,
                                expiry,
                                cas: w.cas,
                            },
                        );
                        self.model.tick(now);
                    }
                    StoreOutcome::NotStored => assert!(!should_store, "{at}: {mode:?} not stored"),
                    other => panic!("{at}: {mode:?} gave {other:?}"),
                }
            }
            25..=34 => {
                let extra = self.value();
                let mode = if self.rng.random() {
                    SetMode::Append
                } else {
                    SetMode::Prepend
                };
                let out = self.store.borrow_mut().set(mode, &key, &extra, 0, 0);
                match self.model.items.get_mut(&key) {
                    None => assert!(matches!(out, Ok(StoreOutcome::NotStored)), "{at}: {out:?}"),
                    Some(item) if item.value.len() + extra.len() > item_max => {
                        // memcached: NOT_STORED, the old value kept.
                        assert!(matches!(out, Ok(StoreOutcome::NotStored)), "{at}: {out:?}");
                    }
                    Some(item) => {
                        let Ok(StoreOutcome::Stored(w)) = out else {
                            panic!("{at}: {mode:?} gave {out:?}");
                        };
                        item.value = if mode == SetMode::Append {
                            [item.value.clone(), extra].concat()
                        } else {
                            [extra, item.value.clone()].concat()
                        };
                        assert!(w.cas > item.cas, "{at}: CAS did not change");
                        item.cas = w.cas;
                    }
                }
            }
            35..=44 => {
                let value = self.value();
                let model_cas = self.model.get(&key).map(|i| i.cas);
                let right = self.rng.random_bool(0.6);
                let given = match model_cas {
                    Some(cas) if right => cas,
                    Some(cas) => cas + 1 + self.rng.random_range(0..3),
                    None => self.rng.random_range(1..1000),
                };
                let out = self
                    .store
                    .borrow_mut()
                    .set(SetMode::Cas(given), &key, &value, 9, 0);
                match (model_cas, out.expect("cas")) {
                    (None, StoreOutcome::NotFound) => {}
                    (Some(cas), StoreOutcome::Exists) => assert_ne!(cas, given, "{at}"),
                    (Some(cas), StoreOutcome::Stored(w)) => {
                        assert_eq!(cas, given, "{at}: cas stored with a stale CAS");
                        self.model.items.insert(
                            key.clone(),
                            Item {
                                value,
                                flags: 9,
                                expiry: 0,
                                cas: w.cas,
                            },
                        );
                    }
                    (m, other) => panic!("{at}: cas model {m:?} store {other:?}"),
                }
            }
            45..=54 => {
                let n = self.rng.random_range(0..5u64);
                let delta = if self.rng.random() {
                    Delta::Incr(n)
                } else {
                    Delta::Decr(n)
                };
                let out = self.store.borrow_mut().delta(&key, delta);
                match self.model.items.get_mut(&key) {
                    None => assert!(matches!(out, Ok(None)), "{at}: {out:?}"),
                    Some(item) => {
                        let parsed = std::str::from_utf8(&item.value)
                            .ok()
                            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|s| s.parse::<u64>().ok());
                        match parsed {
                            None => {
                                assert!(matches!(out, Err(StoreError::NonNumeric)), "{at}: {out:?}")
                            }
                            Some(current) => {
                                let new = match delta {
                                    Delta::Incr(n) => current.wrapping_add(n),
                                    Delta::Decr(n) => current.saturating_sub(n),
                                };
                                let Ok(Some((value, w))) = out else {
                                    panic!("{at}: {delta:?} gave {out:?}");
                                };
                                assert_eq!(value, new, "{at}");
                                item.value = new.to_string().into_bytes();
                                item.cas = w.cas;
                            }
                        }
                    }
                }
            }
            55..=64 => {
                let out = self.store.borrow_mut().delete(&key).expect("delete");
                let existed = self.model.items.remove(&key).is_some();
                assert_eq!(out.is_some(), existed, "{at}: delete");
            }
            65..=72 => {
                let exptime = self.exptime();
                let gat = self.rng.random();
                let present = self.model.get(&key).is_some();
                if gat {
                    let out = self
                        .store
                        .borrow_mut()
                        .get_and_touch(&key, exptime)
                        .expect("gat");
                    // gat returns the item it touched, even to an expiry already past
                    // (memcached), and only then is it gone.
                    let before = self.model.get(&key).cloned();
                    let expiry = absolute(exptime, now);
                    if let Some(item) = self.model.items.get_mut(&key) {
                        item.expiry = expiry;
                    }
                    self.model.tick(now);
                    match (before, out) {
                        (None, None) => {}
                        (Some(e), Some((item, _))) => {
                            assert_eq!(item.value(), &e.value[..], "{at}")
                        }
                        (e, o) => panic!(
                            "{at}: gat model {e:?} store {:?}",
                            o.map(|(i, _)| i.value().to_vec())
                        ),
                    }
                } else {
                    let out = self.store.borrow_mut().touch(&key, exptime).expect("touch");
                    assert_eq!(out.is_some(), present, "{at}: touch");
                    if let Some(item) = self.model.items.get_mut(&key) {
                        item.expiry = absolute(exptime, now);
                    }
                }
            }
            73..=84 => self.check_key(&key),
            85..=87 => {
                let delay = if self.rng.random() {
                    0
                } else {
                    self.rng.random_range(1..30)
                };
                self.store.borrow_mut().flush_all(delay).expect("flush_all");
                if delay == 0 {
                    self.model.items.clear();
                    self.model.pending_flush = None;
                } else {
                    self.model.pending_flush = Some(now + delay as u32);
                }
            }
            88..=93 => {
                let secs = if self.rng.random_range(0..5) == 0 {
                    100
                } else {
                    self.rng.random_range(1..5)
                };
                self.clock.advance(secs);
            }
            _ => {} // compaction and restarts are driven by the loop
        }
    }
}

/// Returns how many segments were compacted and how many restarts happened.
async fn run_seed(seed: u64, durability: Durability, steps: usize) -> (u64, u64) {
    let mut config: StoreConfig = small_config(SEGMENT, durability);
    config.compaction.bytes_per_sec = 1 << 40;
    if seed.is_multiple_of(2) {
        config.compaction.live_percent_max = 100;
    }
    let disk = SimDisk::new();
    let clock = ManualClock::new(START);
    let (store, _) = open_sim(&disk, config.clone(), &clock).await;
    let mut h = Harness {
        seed,
        step: 0,
        rng: SmallRng::seed_from_u64(seed),
        disk,
        clock,
        config,
        store: Rc::new(RefCell::new(store)),
        model: Model::default(),
        keys: (0..12).map(|i| format!("key-{i}").into_bytes()).collect(),
        compactions: 0,
        restarts: 0,
    };
    for step in 0..steps {
        h.step = step;
        if seed.is_multiple_of(3) && step.is_multiple_of(120) {
            h.write_cold();
        }
        h.step();
        if step % 25 == 24 {
            for _ in 0..3 {
                if !compact_once(&h.store).await.expect("compact") {
                    break;
                }
                h.compactions += 1;
            }
            h.check_all();
        }
        if durability == Durability::Fsync && step % 97 == 96 {
            // A clean restart: everything synced, then the power goes.
            let synced = sync_all(&h.store.borrow());
            synced.await;
            let crashed = h.disk.crash(SimCrashOptions::with_seed(seed ^ step as u64));
            let (store, _) = open_sim(&crashed, h.config.clone(), &h.clock).await;
            h.disk = crashed;
            h.restarts += 1;
            h.store = Rc::new(RefCell::new(store));
            h.check_all();
        }
    }
    h.check_all();
    (h.compactions, h.restarts)
}

fn seeds() -> Vec<u64> {
    match std::env::var("TERRACE_MODEL_SEED") {
        Ok(one) => vec![one.trim().parse().expect("TERRACE_MODEL_SEED is a number")],
        Err(_) => (0..env_count("TERRACE_MODEL_SEEDS", 16)).collect(),
    }
}

#[test]
fn store_matches_the_model_durable() {
    run(|| async {
        let (mut compactions, mut restarts) = (0, 0);
        for seed in seeds() {
            let (c, r) = run_seed(seed, Durability::Fsync, 600).await;
            compactions += c;
            restarts += r;
        }
        // The sequences must reach the interesting paths, or the test proves little.
        assert!(
            compactions > 0 && restarts > 0,
            "{compactions} compactions, {restarts} restarts"
        );
    });
}

#[test]
fn store_matches_the_model_volatile() {
    run(|| async {
        let mut compactions = 0;
        for seed in seeds() {
            compactions += run_seed(seed + 1_000_000, Durability::None, 600).await.0;
        }
        assert!(compactions > 0);
    });
}
