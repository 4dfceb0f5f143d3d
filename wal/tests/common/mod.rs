//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::rc::Rc;
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy, RecoveryReport};
use terrace_wal::storage::{SimDisk, SimStorage, Storage};
use terrace_wal::store::{Clock, CompactionConfig, ManualClock, Store, StoreConfig, WhenFull};

/// Runs `make()` to completion on a fresh glommio executor thread.
pub fn run<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(64)
        .spawn(make)
        .expect("start executor")
        .join()
        .expect("test executor panicked")
}

/// A small-segment store configuration, so tests cross many segments quickly.
pub fn small_config(segment_size_bytes: usize, durability: Durability) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size_bytes,
            durability,
            capacity_bytes: u64::MAX,
        },
        when_full: WhenFull::Refuse,
        item_size_max_bytes: segment_size_bytes / 4,
        compaction: CompactionConfig::default(),
    }
}

/// Opens a store on a simulated disk.
pub async fn open_sim(
    disk: &SimDisk,
    config: StoreConfig,
    clock: &ManualClock,
) -> (Store<SimStorage>, RecoveryReport) {
    Store::open(
        SimStorage::new(disk.clone()),
        config,
        Rc::new(clock.clone()) as Rc<dyn Clock>,
        RecoveryPolicy::TruncateTornTail,
    )
    .await
    .expect("open store")
}

/// Waits until everything the store appended is durable. The future does not borrow the
/// store, so a `RefCell` borrow used to call this ends before the wait.
pub fn sync_all<S: Storage>(store: &Store<S>) -> impl Future<Output = ()> + use<S> {
    let lsn = store.log().next_lsn() - 1;
    let commit = store.commit();
    async move { commit.wait_durable(lsn).await.expect("sync") }
}

// ==== Recovery, torn-tail, corruption and crash helpers ===================================
//
// Used by tests/torn_tail.rs, tests/corruption.rs and tests/crash.rs. Kept in a module of
// their own so that helpers other test files add above do not collide with these names.

pub mod recovery {
    use rand::rngs::SmallRng;
    use rand::{Rng as _, SeedableRng as _};
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use terrace_wal::error::WalError;
    use terrace_wal::format::record::{put_record_len_max, small_record_len_max, touch_record_len};
    use terrace_wal::format::{Delete, Put, RecordKind, Touch, ValueParts};
    use terrace_wal::log::{
        AppendClass, Durability, Log, LogConfig, RecoveryPolicy, RecoveryReport, Segment,
    };
    use terrace_wal::storage::{SegmentFile, SimDisk, SimStorage, Storage};
    use terrace_wal::store::Store;

    /// Segment contents by id, as `SimDisk::durable_image` returns them.
    pub type Image = BTreeMap<u64, Vec<u8>>;

    /// A copy of one record as the log holds it: where, which LSN, what kind, which bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RecordCopy {
        pub segment: u64,
        pub offset: usize,
        pub lsn: u64,
        pub kind: RecordKind,
        pub payload: Vec<u8>,
        /// Bytes the record occupies, padding included.
        pub total_len: usize,
    }

    impl RecordCopy {
        /// End of the bytes the record's CRC covers (header and exact payload).
        pub fn covered_end(&self) -> usize {
            self.offset + 32 + self.payload.len()
        }

        /// End of the record, padding included.
        pub fn end(&self) -> usize {
            self.offset + self.total_len
        }
    }

    /// One item as the store shows it: value, flags, CAS, expiry.
    pub type ItemCopy = (Vec<u8>, u32, u64, u32);

    /// A log configuration with small segments.
    pub fn log_config(segment_size_bytes: usize) -> LogConfig {
        LogConfig {
            segment_size_bytes,
            durability: Durability::Fsync,
            capacity_bytes: u64::MAX,
        }
    }

    /// Opens a log on `storage`, collecting every record the recovery visitor sees.
    pub async fn open_log_collect<S: Storage>(
        storage: S,
        config: LogConfig,
        policy: RecoveryPolicy,
    ) -> Result<(Log<S>, RecoveryReport, Vec<RecordCopy>), WalError> {
        let mut seen = Vec::new();
        let mut visit = |segment: &Rc<Segment<S::File>>,
                         offset: usize,
                         record: terrace_wal::format::RecordRef<'_>| {
            seen.push(RecordCopy {
                segment: segment.id(),
                offset,
                lsn: record.lsn,
                kind: record.kind,
                payload: record.payload.to_vec(),
                total_len: record.total_len,
            });
        };
        let (log, report) = Log::open(storage, config, policy, &mut visit).await?;
        Ok((log, report, seen))
    }

    /// Opens a log on a fresh simulated disk holding exactly `image`.
    pub async fn open_image(
        image: &Image,
        segment_size_bytes: usize,
        policy: RecoveryPolicy,
    ) -> (
        SimDisk,
        Result<(Log<SimStorage>, RecoveryReport, Vec<RecordCopy>), WalError>,
    ) {
        let disk = SimDisk::from_image(image);
        let result = open_log_collect(
            SimStorage::new(disk.clone()),
            log_config(segment_size_bytes),
            policy,
        )
        .await;
        (disk, result)
    }

    /// Every record in the segments a log holds now (in memory, durable or not).
    pub fn log_records<S: Storage>(log: &Log<S>) -> Vec<RecordCopy> {
        segments_records(log.segments())
    }

    /// Every record of the given segments, in order.
    pub fn segments_records<'a, F: SegmentFile>(
        segments: impl Iterator<Item = &'a Rc<Segment<F>>>,
    ) -> Vec<RecordCopy> {
        let mut out = Vec::new();
        for segment in segments {
            for (offset, record) in segment.records() {
                out.push(RecordCopy {
                    segment: segment.id(),
                    offset,
                    lsn: record.lsn,
                    kind: record.kind,
                    payload: record.payload.to_vec(),
                    total_len: record.total_len,
                });
            }
        }
        out
    }

    /// Every live item of a store, by key.
    pub fn live_items<S: Storage>(store: &Store<S>) -> BTreeMap<Vec<u8>, ItemCopy> {
        let mut items = BTreeMap::new();
        store.for_each_live(|item| {
            let previous = items.insert(
                item.key().to_vec(),
                (
                    item.value().to_vec(),
                    item.flags(),
                    item.cas(),
                    item.expiry(),
                ),
            );
            assert!(previous.is_none(), "key {:?} listed twice", item.key());
        });
        items
    }

    /// Appends one record of a random kind (mostly puts) and size. Returns its LSN.
    pub fn append_random<S: Storage>(
        log: &mut Log<S>,
        rng: &mut SmallRng,
        value_len_max: usize,
    ) -> u64 {
        let key_len = rng.random_range(1..=40);
        let key: Vec<u8> = (0..key_len)
            .map(|_| rng.random_range(b'a'..=b'z'))
            .collect();
        let lsn = log.next_lsn();
        let appended = match rng.random_range(0..10) {
            0 => log.append(
                &Delete {
                    key: &key,
                    since_segment: 1,
                },
                small_record_len_max(key.len()),
                AppendClass::Client,
            ),
            1 => log.append(
                &Touch {
                    key: &key,
                    cas: lsn / 2,
                    expiry: rng.random_range(0..1_000_000),
                },
                touch_record_len(key.len()),
                AppendClass::Client,
            ),
            _ => {
                let value_len = rng.random_range(0..=value_len_max);
                let mut value = vec![0u8; value_len];
                rng.fill(&mut value[..]);
                log.append(
                    &Put {
                        key: &key,
                        value: ValueParts::whole(&value),
                        flags: rng.random(),
                        expiry: 0,
                        // Small CASes leave zero bytes at the end of the archive's root: a
                        // cut there changes nothing, which expectations must get right.
                        cas: lsn,
                    },
                    put_record_len_max(key.len(), value.len()),
                    AppendClass::Client,
                )
            }
        };
        let appended = appended.expect("append");
        assert_eq!(appended.lsn, lsn);
        lsn
    }

    /// A synced log on a simulated disk with at least `segments_min` segments, the newest
    /// holding at least `tail_records_min` records of random kinds and sizes. Returns its
    /// durable image and its records.
    pub async fn build_sim_log(
        seed: u64,
        segment_size_bytes: usize,
        segments_min: usize,
        tail_records_min: u64,
    ) -> (Image, Vec<RecordCopy>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let disk = SimDisk::new();
        let (mut log, report, seen) = open_log_collect(
            SimStorage::new(disk.clone()),
            log_config(segment_size_bytes),
            RecoveryPolicy::TruncateTornTail,
        )
        .await
        .expect("open empty log");
        assert_eq!(report.records, 0);
        assert!(seen.is_empty());
        for _ in 0..100_000 {
            append_random(&mut log, &mut rng, 900);
            let tail = log.tail();
            if log.segment_count() >= segments_min
                && tail.last_lsn() + 1 - tail.first_lsn() >= tail_records_min
            {
                break;
            }
        }
        let last = log.next_lsn() - 1;
        log.commit().wait_durable(last).await.expect("sync");
        // Leave out the spare segment the log prepares ahead of need (all zero, unused):
        // tests that damage "the newest segment" mean the newest one in use.
        let tail = log.tail().id();
        let mut image = disk.durable_image();
        image.retain(|&id, _| id <= tail);
        let mut visible = disk.visible_image();
        visible.retain(|&id, _| id <= tail);
        assert_eq!(image, visible, "seed {seed}: a synced log is all durable");
        let records = log_records(&log);
        assert_eq!(records.len() as u64, last, "seed {seed}");
        assert!(records.windows(2).all(|w| w[1].lsn == w[0].lsn + 1));
        (image, records)
    }

    /// Offset of the last non-zero byte of `bytes`, if any.
    pub fn last_nonzero(bytes: &[u8]) -> Option<usize> {
        bytes.iter().rposition(|&b| b != 0)
    }

    /// A small count from the environment (stress knobs), or `default`.
    pub fn env_count(name: &str, default: u64) -> u64 {
        match std::env::var(name) {
            Ok(text) => match text.trim().parse() {
                Ok(n) => n,
                Err(_) => panic!("{name}={text:?} is not a count"),
            },
            Err(_) => default,
        }
    }

    /// Yields once to the executor so that other tasks run.
    pub async fn yield_now() {
        glommio::executor().yield_now().await;
    }
}
