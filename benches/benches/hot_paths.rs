//! Micro-benchmarks of the hot paths (criterion): parsing a request, encoding a record and
//! its CRC, finding a key in the index, and appending with and without durability.
//!
//! `cargo bench -p terrace-benches --bench hot_paths` (add `-- <filter>` for one group). The
//! numbers are per operation on this machine; compare runs of the same machine, not machines.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "benchmark set-up")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::{LocalExecutorBuilder, Placement};
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_node::protocol::{Limits, Parsed, parse};
use terrace_wal::format::{Put, ValueParts, check_record, write_record};
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy};
use terrace_wal::storage::FsStorage;
use terrace_wal::store::{SetMode, Store, StoreConfig, StoreOutcome, SystemClock, WhenFull};

const LIMITS: Limits = Limits {
    item_size_max_bytes: 1 << 20,
};

fn protocol_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let set = format!("set key:000000012345 0 0 100\r\n{}\r\n", "v".repeat(100));
    let get = b"get key:000000012345\r\n".to_vec();
    let multi_get: Vec<u8> = {
        let keys: Vec<String> = (0..16).map(|i| format!("key:{i:012}")).collect();
        format!("get {}\r\n", keys.join(" ")).into_bytes()
    };
    for (name, input) in [
        ("set 100B", set.as_bytes()),
        ("get", &get[..]),
        ("get 16 keys", &multi_get[..]),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| match parse(black_box(input), &LIMITS) {
                Parsed::Request { len, .. } => len,
                other => panic!("{other:?}"),
            })
        });
    }
    group.finish();
}

/// 16-aligned scratch space for records.
#[repr(C, align(16))]
struct Aligned([u8; 4096]);

fn record_encode_and_crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    let value = vec![b'v'; 100];
    let mut buf = Box::new(Aligned([0; 4096]));
    group.bench_function("encode put 100B (rkyv + crc32)", |b| {
        let mut lsn = 0u64;
        b.iter(|| {
            lsn += 1;
            let put = Put {
                key: b"key:000000012345",
                value: ValueParts::whole(&value),
                flags: 0,
                expiry: 0,
                cas: lsn,
            };
            write_record(&mut buf.0, lsn, black_box(&put))
        })
    });
    let len = write_record(
        &mut buf.0,
        1,
        &Put {
            key: b"key:000000012345",
            value: ValueParts::whole(&value),
            flags: 0,
            expiry: 0,
            cas: 1,
        },
    )
    .unwrap_or(0);
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("check put 100B (crc32 + archive validation)", |b| {
        b.iter(|| check_record(black_box(&buf.0[..]), 0))
    });
    let kib = vec![7u8; 1024];
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("crc32 1 KiB", |b| {
        b.iter(|| crc32fast::hash(black_box(&kib)))
    });
    group.finish();
}

/// What a store benchmark does per iteration.
#[derive(Debug, Clone, Copy)]
enum StoreOp {
    /// Look a preloaded key up in the index and read its value.
    Lookup,
    /// Append a 100-byte put (temporary-swap-only: no sync).
    Append,
    /// Append a 100-byte put and wait for its fdatasync (permanent-store, one writer).
    AppendDurable,
    /// Set a preloaded key to a new 100-byte value: an index lookup that misses the cache
    /// (table lines and the old record's key) and an append.
    Overwrite,
    /// The same, with the next set's lookup warmed first (`Store::prefetch`), as the server
    /// does for the next request of a pipelined burst.
    OverwriteWarmed,
    /// The same, also asking for the index lines of the set after the next
    /// (`Store::prefetch_table`), as the server does two requests ahead.
    OverwriteWarmedTwoAhead,
}

const KEYS: u64 = 100_000;
/// Operations run before any is measured: past segment creation, the first directory sync
/// and the page faults of a fresh segment, which are start-up costs, not hot-path costs.
const WARM_UP_OPS: u64 = 20_000;

/// A store on its own glommio executor thread (as in the server), kept for the whole
/// benchmark: each request is a number of iterations, each answer the time they took.
struct StoreWorker {
    iterations: std::sync::mpsc::Sender<u64>,
    elapsed: std::sync::mpsc::Receiver<Duration>,
}

impl StoreWorker {
    fn start(op: StoreOp) -> Self {
        let (iterations, requests) = std::sync::mpsc::channel::<u64>();
        let (answers, elapsed) = std::sync::mpsc::channel::<Duration>();
        let durability = match op {
            StoreOp::AppendDurable => Durability::Fsync,
            _ => Durability::None,
        };
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let dir = tempfile::tempdir().expect("temp dir");
                let config = StoreConfig {
                    log: LogConfig {
                        segment_size_bytes: 64 << 20,
                        durability,
                        capacity_bytes: u64::MAX,
                    },
                    when_full: WhenFull::Refuse,
                    ..StoreConfig::default()
                };
                let storage = FsStorage::open(dir.path()).await.expect("storage");
                let (mut store, _) = Store::open(
                    storage,
                    config,
                    Rc::new(SystemClock),
                    RecoveryPolicy::TruncateTornTail,
                )
                .await
                .expect("store");
                let keys: Vec<String> = (0..KEYS).map(|i| format!("key:{i:012}")).collect();
                let commit = store.commit();
                let mut next = 0u64;
                let key_at = |n: u64| keys[(n * 7919 % KEYS) as usize].as_bytes();
                let step = async |store: &mut Store<FsStorage>, next: &mut u64| {
                    let key = key_at(*next);
                    *next += 1;
                    match op {
                        StoreOp::Overwrite => {
                            black_box(store.set(SetMode::Set, key, &[b'w'; 100], 0, 0).ok());
                        }
                        StoreOp::OverwriteWarmed => {
                            store.prefetch(key_at(*next));
                            black_box(store.set(SetMode::Set, key, &[b'w'; 100], 0, 0).ok());
                        }
                        StoreOp::OverwriteWarmedTwoAhead => {
                            store.prefetch(key_at(*next));
                            store.prefetch_table(key_at(*next + 1));
                            black_box(store.set(SetMode::Set, key, &[b'w'; 100], 0, 0).ok());
                        }
                        StoreOp::Lookup => {
                            black_box(store.get(key).ok().flatten().map(|i| i.value().len()));
                        }
                        StoreOp::Append => {
                            black_box(store.set(SetMode::Set, key, &[b'v'; 100], 0, 0).ok());
                        }
                        StoreOp::AppendDurable => {
                            if let Ok(StoreOutcome::Stored(written)) =
                                store.set(SetMode::Set, key, &[b'v'; 100], 0, 0)
                            {
                                commit.wait_durable(written.lsn).await.expect("durable");
                            }
                        }
                    }
                };
                if !matches!(op, StoreOp::Append | StoreOp::AppendDurable) {
                    for key in &keys {
                        store
                            .set(SetMode::Set, key.as_bytes(), &[b'v'; 100], 0, 0)
                            .expect("preload");
                    }
                }
                for _ in 0..WARM_UP_OPS {
                    step(&mut store, &mut next).await;
                }
                // Blocking between batches is fine: this executor runs nothing else.
                while let Ok(iters) = requests.recv() {
                    let started = Instant::now();
                    for _ in 0..iters {
                        step(&mut store, &mut next).await;
                    }
                    if answers.send(started.elapsed()).is_err() {
                        break;
                    }
                }
            })
            .expect("executor");
        Self {
            iterations,
            elapsed,
        }
    }

    fn time(&self, iters: u64) -> Duration {
        self.iterations.send(iters).expect("store worker gone");
        self.elapsed.recv().expect("store worker gone")
    }
}

fn store_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    for (name, op) in [
        ("index lookup + value read, 100k keys", StoreOp::Lookup),
        ("append put 100B, no sync", StoreOp::Append),
        (
            "append put 100B + wait durable, one writer",
            StoreOp::AppendDurable,
        ),
        ("set existing key 100B, 100k keys", StoreOp::Overwrite),
        (
            "set existing key 100B, next key warmed",
            StoreOp::OverwriteWarmed,
        ),
        (
            "set existing key 100B, next key warmed, table lines two ahead",
            StoreOp::OverwriteWarmedTwoAhead,
        ),
    ] {
        let worker = StoreWorker::start(op);
        if let StoreOp::AppendDurable = op {
            group.sample_size(10);
        }
        group.bench_function(name, |b| b.iter_custom(|iters| worker.time(iters)));
    }
    group.finish();
}

criterion_group!(benches, protocol_parse, record_encode_and_crc, store_paths);
criterion_main!(benches);
