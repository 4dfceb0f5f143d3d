//! `wal-bench`: the storage log measured against this machine's own limits, in one run.
//!
//! Every Terrace number is reported next to a baseline the same process measures on the same
//! filesystem and core, as a ratio: the machine is shared and noisy, so absolute numbers from
//! different runs do not compare, ratios from one run do.
//!
//! Parts (all by default, or one with `--only`):
//! - `fsync`: the disk's own latency: 4 KiB write + fdatasync, appending and overwriting.
//! - `durable`: durable appends of 100-byte values with 1, 8 and 64 writers (group commit).
//! - `volatile`: appends that are never synced, against a plain sequential `write` loop.
//! - `recovery`: opening a shard of `--size-mib` against reading its files sequentially.
//! - `memory`: anonymous memory per key of the index.

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::error::Error;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_wal::format::record::put_record_len_max;
use terrace_wal::format::{Put, ValueParts};
use terrace_wal::log::{AppendClass, Durability, Log, LogConfig, RecoveryPolicy};
use terrace_wal::storage::{FsStorage, PREPARE_THREAD_NAME, UNMAP_THREAD_NAME};
use terrace_wal::store::{SetMode, Store, StoreConfig, SystemClock, WhenFull};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Fsync,
    Durable,
    Volatile,
    Recovery,
    Memory,
}

/// Measures Terrace's storage log against the machine's own limits, in one run.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory on the filesystem to measure; a temporary directory is made inside it.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Run only this part (the durable part also runs the fsync baseline it is compared to).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Tiny sizes: checks that every part runs, in a few seconds. Numbers mean little.
    #[arg(long)]
    smoke: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds each durable-append configuration runs (per repetition).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Repetitions of the durable and volatile parts and of the warm-cache open; the median
    /// is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Bytes appended by the volatile part, which also become the shard the recovery part
    /// opens, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Value size of the volatile part's records, in bytes.
    #[arg(long, default_value_t = 1000)]
    volatile_value_bytes: usize,
    /// Keys inserted by the memory part.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// fdatasync calls in each raw baseline loop.
    #[arg(long, default_value_t = 1000)]
    fsync_iterations: u64,
}

impl Args {
    fn apply_smoke(&mut self) {
        if self.smoke {
            self.seconds = 0.2;
            self.repeat = 1;
            self.size_mib = 16;
            self.keys = 10_000;
            self.fsync_iterations = 30;
        }
    }

    fn runs(&self, part: Part) -> bool {
        self.only
            .is_none_or(|only| only == part || (only == Part::Durable && part == Part::Fsync))
    }

    fn segment_size_bytes(&self) -> usize {
        if self.smoke { 4 << 20 } else { 64 << 20 }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
struct Row {
    metric: String,
    terrace: f64,
    baseline: Option<f64>,
    unit: &'static str,
    /// How the ratio compares to its target: (target text, passed).
    target: Option<(String, bool)>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.terrace / b)
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn micros(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The raw disk: a loop of 4 KiB write + fdatasync. Returns (appending, overwriting).
fn fsync_baseline(dir: &Path, iterations: u64) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let block = [0x5au8; 4096];
    let mut append = histogram()?;
    let mut file = File::create(dir.join("fsync-append"))?;
    for _ in 0..iterations {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        append.record(started.elapsed().as_nanos() as u64)?;
    }
    let mut overwrite = histogram()?;
    let file = File::create(dir.join("fsync-overwrite"))?;
    for i in 0..iterations {
        file.write_all_at(&block, i * 4096)?;
    }
    file.sync_all()?;
    for i in 0..iterations {
        let started = Instant::now();
        file.write_all_at(&block, i * 4096)?;
        file.sync_data()?;
        overwrite.record(started.elapsed().as_nanos() as u64)?;
    }
    std::fs::remove_file(dir.join("fsync-append"))?;
    std::fs::remove_file(dir.join("fsync-overwrite"))?;
    Ok((append, overwrite))
}

/// A put record of `key` and `value`, and its length bound.
fn put<'a>(key: &'a str, value: &'a [u8], cas: u64) -> (Put<'a>, usize) {
    let body = Put {
        key: key.as_bytes(),
        value: ValueParts::whole(value),
        flags: 0,
        expiry: 0,
        cas,
    };
    (body, put_record_len_max(key.len(), value.len()))
}

/// Durable appends of 100-byte values by `writers` tasks for `seconds`. Returns
/// (records per second, append-to-durable latency histogram).
async fn durable_appends(
    dir: &Path,
    writers: usize,
    seconds: f64,
    segment_size_bytes: usize,
) -> Result<(f64, Histogram<u64>)> {
    let shard = dir.join(format!("durable-{writers}"));
    let config = LogConfig {
        segment_size_bytes,
        durability: Durability::Fsync,
        capacity_bytes: u64::MAX,
    };
    let (log, _) = Log::open(
        FsStorage::open(&shard).await?,
        config,
        RecoveryPolicy::TruncateTornTail,
        &mut |_, _, _| {},
    )
    .await?;
    let log = Rc::new(RefCell::new(log));
    let latencies = Rc::new(RefCell::new(histogram()?));
    let warmup = Duration::from_secs_f64(seconds / 10.0);
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (log, latencies) = (Rc::clone(&log), Rc::clone(&latencies));
        tasks.push(glommio::spawn_local(async move {
            let value = [b'v'; 100];
            let mut counted = 0u64;
            let mut i = 0u64;
            loop {
                let begun = Instant::now();
                if begun >= deadline {
                    return Ok::<u64, String>(counted);
                }
                let key = format!("w{writer:03}-{i:010}");
                i += 1;
                let (body, len_max) = put(&key, &value, 0);
                let appended = log
                    .borrow_mut()
                    .append(&body, len_max, AppendClass::Client)
                    .map_err(|e| e.to_string())?;
                let commit = Rc::clone(log.borrow().commit());
                commit
                    .wait_durable(appended.lsn)
                    .await
                    .map_err(|e| e.to_string())?;
                if begun >= measure_from {
                    let nanos = begun.elapsed().as_nanos() as u64;
                    latencies
                        .borrow_mut()
                        .record(nanos)
                        .map_err(|e| e.to_string())?;
                    counted += 1;
                }
            }
        }));
    }
    let mut records = 0;
    for task in tasks {
        records += task.await?;
    }
    let elapsed = deadline
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    drop(log);
    std::fs::remove_dir_all(&shard)?;
    let latencies = latencies.borrow().clone();
    Ok((records as f64 / elapsed, latencies))
}

/// Appends `total_bytes` of records without syncing. Returns MB/s of record bytes.
async fn volatile_appends(
    shard: &Path,
    total_bytes: u64,
    value_bytes: usize,
    segment_size_bytes: usize,
) -> Result<f64> {
    let config = LogConfig {
        segment_size_bytes,
        durability: Durability::None,
        capacity_bytes: u64::MAX,
    };
    let (mut log, _) = Log::open(
        FsStorage::open(shard).await?,
        config,
        RecoveryPolicy::TruncateTornTail,
        &mut |_, _, _| {},
    )
    .await?;
    let value = vec![b'v'; value_bytes];
    let started = Instant::now();
    let mut i = 0u64;
    while log.counters().bytes_appended < total_bytes {
        // A million distinct keys, overwritten: the recovery part rebuilds a real index.
        let key = format!("key:{:08}", i % 1_000_000);
        i += 1;
        let (body, len_max) = put(&key, &value, i);
        log.append(&body, len_max, AppendClass::Client)?;
        if i.is_multiple_of(4096) {
            glommio::yield_if_needed().await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(log.counters().bytes_appended as f64 / elapsed / 1e6)
}

/// A plain sequential write loop of `total_bytes` in 64 KiB writes. Returns MB/s.
fn write_loop(path: &Path, total_bytes: u64) -> Result<f64> {
    let chunk = vec![b'w'; 64 << 10];
    let started = Instant::now();
    let mut file = File::create(path)?;
    let mut written = 0u64;
    while written < total_bytes {
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    drop(file);
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(written as f64 / elapsed / 1e6)
}

/// Writes back every dirty page of the system (sync(2)).
fn sync_everything() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc_sync() };
}

/// Lets an opened (and dropped) shard's background work end before the next measurement:
/// the log prepares its tail and a spare segment after opening (zeros written on threads of
/// its own, never synced in a log that does not sync) and unmaps on another thread. Left
/// running, that work would compete with the next read for the CPUs, and the next open
/// would pay for its writeback: recovery makes the newest segment durable, and here that
/// meant flushing the previous open's zeros (~100 ms, a third of a warm open). A restart in
/// permanent-store finds those zeros already durable (they are written with a sync there).
fn settle_after_open() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_threads_running() {
        if Instant::now() >= deadline {
            eprintln!(
                "wal-bench: the log's background threads still run after 30 s; measuring anyway"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sync_everything();
}

/// Whether a thread of the log's background work (preparing or unmapping segments) runs.
fn log_threads_running() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| {
            let comm = comm.trim_end();
            comm == PREPARE_THREAD_NAME || comm == UNMAP_THREAD_NAME
        })
    })
}

/// Drops the page cache so the next reads come from the disk. Returns whether it could.
fn drop_caches() -> bool {
    sync_everything();
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").is_ok()
}

unsafe extern "C" {
    #[link_name = "sync"]
    fn libc_sync();
}

/// Reads every file of `shard` sequentially. Returns seconds.
fn read_files(shard: &Path) -> Result<f64> {
    let mut buffer = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut entries: Vec<_> = std::fs::read_dir(shard)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let mut file = File::open(entry.path())?;
        while file.read(&mut buffer)? > 0 {}
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Opens the shard as a store would at start-up. Returns seconds.
async fn open_shard(shard: &Path, segment_size_bytes: usize) -> Result<f64> {
    let config = StoreConfig {
        log: LogConfig {
            segment_size_bytes,
            durability: Durability::None,
            capacity_bytes: u64::MAX,
        },
        when_full: WhenFull::Refuse,
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let (store, report) = Store::open(
        FsStorage::open(shard).await?,
        config,
        Rc::new(SystemClock),
        RecoveryPolicy::TruncateTornTail,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    if report.records == 0 || store.index_len() == 0 {
        return Err("the recovery shard is empty".into());
    }
    Ok(elapsed)
}

/// Anonymous resident memory of this process, in bytes.
fn rss_anon_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .ok_or("no RssAnon in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("bad RssAnon line")?
        .parse()?;
    Ok(kib * 1024)
}

/// Inserts `keys` keys into a store. Returns (anonymous bytes per key, index bytes per key).
async fn index_memory(shard: &Path, keys: u64) -> Result<(f64, f64)> {
    let config = StoreConfig {
        log: LogConfig {
            segment_size_bytes: 64 << 20,
            durability: Durability::None,
            capacity_bytes: u64::MAX,
        },
        when_full: WhenFull::Refuse,
        ..StoreConfig::default()
    };
    let (mut store, _) = Store::open(
        FsStorage::open(shard).await?,
        config,
        Rc::new(SystemClock),
        RecoveryPolicy::TruncateTornTail,
    )
    .await?;
    let before = rss_anon_bytes()?;
    for i in 0..keys {
        let key = format!("key:{i:08}");
        store.set(SetMode::Set, key.as_bytes(), b"0123456789", 0, 0)?;
    }
    let after = rss_anon_bytes()?;
    let anon = after.saturating_sub(before) as f64 / keys as f64;
    let index = store.index_bytes() as f64 / keys as f64;
    Ok((anon, index))
}

async fn run(mut args: Args) -> Result<Vec<Row>> {
    args.apply_smoke();
    std::fs::create_dir_all(&args.dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("wal-bench-")
        .tempdir_in(&args.dir)?;
    let dir = scratch.path();
    let segment = args.segment_size_bytes();
    let mut rows = Vec::new();
    let progress = |what: &str| {
        if !args.json {
            eprintln!("wal-bench: {what}");
        }
    };

    // The index's memory is measured first (and reported last), while the allocator has seen
    // nothing else: the buffers the other parts free leave glibc's heaps in states that add
    // to the growth of the resident set while the keys go in. After the recovery part
    // (records prepared on two threads) that was ~13 bytes a key (65 against 52.7 alone),
    // none of it the index's.
    let memory = if args.runs(Part::Memory) {
        progress("index memory");
        Some(index_memory(&dir.join("memory"), args.keys).await?)
    } else {
        None
    };

    let mut raw_p50_us = None;
    if args.runs(Part::Fsync) {
        progress("fsync baseline");
        let (append, overwrite) = fsync_baseline(dir, args.fsync_iterations)?;
        for (name, h) in [("append", &append), ("overwrite", &overwrite)] {
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                rows.push(Row {
                    metric: format!("raw 4 KiB {name} + fdatasync {label}"),
                    terrace: micros(h, q),
                    baseline: None,
                    unit: "us",
                    target: None,
                });
            }
        }
        raw_p50_us = Some(micros(&append, 0.5));
    }

    if args.runs(Part::Durable) {
        let raw_us = raw_p50_us.ok_or("the durable part needs the fsync baseline")?;
        for writers in [1usize, 8, 64] {
            progress(&format!("durable appends, {writers} writers"));
            let mut throughputs = Vec::new();
            let mut p50s = Vec::new();
            let mut p99s = Vec::new();
            for _ in 0..args.repeat {
                let (rate, h) = durable_appends(dir, writers, args.seconds, segment).await?;
                throughputs.push(rate);
                p50s.push(micros(&h, 0.5));
                p99s.push(micros(&h, 0.99));
            }
            let rate = median(throughputs);
            let per_sync_time = rate * raw_us / 1e6;
            rows.push(Row {
                metric: format!("durable appends, {writers} writers: records per fdatasync-time"),
                terrace: per_sync_time,
                baseline: Some(1.0),
                unit: "records",
                target: (writers == 64).then(|| (">= 16x".to_string(), per_sync_time >= 16.0)),
            });
            rows.push(Row {
                metric: format!("durable appends, {writers} writers: records/s"),
                terrace: rate,
                baseline: None,
                unit: "1/s",
                target: None,
            });
            let p99 = median(p99s);
            rows.push(Row {
                metric: format!("durable appends, {writers} writers: p50 latency"),
                terrace: median(p50s),
                baseline: Some(raw_us),
                unit: "us",
                target: None,
            });
            rows.push(Row {
                metric: format!("durable appends, {writers} writers: p99 latency"),
                terrace: p99,
                baseline: Some(raw_us),
                unit: "us",
                target: (writers == 64).then(|| ("<= 3x".to_string(), p99 <= 3.0 * raw_us)),
            });
        }
    }

    let shard = dir.join("volatile");
    let total_bytes = args.size_mib << 20;
    if args.runs(Part::Volatile) || args.runs(Part::Recovery) {
        progress("volatile appends");
        let mut terrace = Vec::new();
        let mut baseline = Vec::new();
        for round in 0..args.repeat {
            if round > 0 || shard.exists() {
                std::fs::remove_dir_all(&shard).ok();
            }
            // Each measurement starts with no dirty pages left by the previous one, so neither
            // pays for the other's writeback.
            baseline.push(write_loop(&dir.join("write-loop"), total_bytes)?);
            sync_everything();
            terrace.push(
                volatile_appends(&shard, total_bytes, args.volatile_value_bytes, segment).await?,
            );
            sync_everything();
        }
        let (terrace, baseline) = (median(terrace), median(baseline));
        if args.runs(Part::Volatile) {
            rows.push(Row {
                metric: format!(
                    "appends without sync, {}-byte values",
                    args.volatile_value_bytes
                ),
                terrace,
                baseline: Some(baseline),
                unit: "MB/s",
                target: Some((">= 0.7x".into(), terrace >= 0.7 * baseline)),
            });
        }
    }

    if args.runs(Part::Recovery) {
        progress("recovery");
        for entry in std::fs::read_dir(&shard)? {
            File::open(entry?.path())?.sync_all()?;
        }
        let cold = drop_caches();
        let read_cold = read_files(&shard)?;
        drop_caches();
        let open_cold = open_shard(&shard, segment).await?;
        settle_after_open();
        // Warm: the median of `--repeat` pairs, as the other parts (one open swings by
        // ±20 % on this shared host from one run to the next).
        let (mut reads, mut opens) = (Vec::new(), Vec::new());
        for _ in 0..args.repeat.max(1) {
            reads.push(read_files(&shard)?);
            opens.push(open_shard(&shard, segment).await?);
            settle_after_open();
        }
        let (read_warm, open_warm) = (median(reads), median(opens));
        let label = if cold {
            "cold cache"
        } else {
            "cache not dropped (not root?)"
        };
        rows.push(Row {
            metric: format!("open a {} MiB shard, {label}", args.size_mib),
            terrace: open_cold,
            baseline: Some(read_cold),
            unit: "s",
            target: Some(("<= 2x".into(), open_cold <= 2.0 * read_cold)),
        });
        rows.push(Row {
            metric: format!("open a {} MiB shard, warm cache", args.size_mib),
            terrace: open_warm,
            baseline: Some(read_warm),
            unit: "s",
            target: Some(("<= 2x".into(), open_warm <= 2.0 * read_warm)),
        });
    }
    if shard.exists() {
        std::fs::remove_dir_all(&shard)?;
    }

    if let Some((anon, index)) = memory {
        let key_len = 12.0; // "key:%08d"
        rows.push(Row {
            metric: format!("anonymous memory per key, {} keys", args.keys),
            terrace: anon,
            baseline: Some(64.0 + key_len),
            unit: "bytes",
            target: Some(("<= 1x".into(), anon <= 64.0 + key_len)),
        });
        rows.push(Row {
            metric: "index table bytes per key".into(),
            terrace: index,
            baseline: None,
            unit: "bytes",
            target: None,
        });
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<62} {:>12} {:>12} {:>8} {:>8} {:>6}",
        "metric", "terrace", "baseline", "ratio", "target", "ok"
    );
    for row in rows {
        let baseline = row.baseline.map_or(String::from("-"), |b| {
            if b < 10.0 {
                format!("{b:.3}")
            } else {
                format!("{b:.1}")
            }
        });
        let ratio = row
            .ratio()
            .map_or(String::from("-"), |r| format!("{r:.2}x"));
        let (target, ok) = match &row.target {
            Some((t, ok)) => (t.as_str(), if *ok { "yes" } else { "NO" }),
            None => ("", ""),
        };
        println!(
            "{:<62} {:>12} {:>12} {:>8} {:>8} {:>6}",
            format!("{} ({})", row.metric, row.unit),
            if row.terrace < 10.0 {
                format!("{:.3}", row.terrace)
            } else {
                format!("{:.1}", row.terrace)
            },
            baseline,
            ratio,
            target,
            ok
        );
    }
}

fn print_json(rows: &[Row]) -> Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "metric": row.metric,
                "unit": row.unit,
                "terrace": row.terrace,
                "baseline": row.baseline,
                "ratio": row.ratio(),
                "target": row.target.as_ref().map(|(t, _)| t),
                "pass": row.target.as_ref().map(|(_, ok)| ok),
            })
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let outcome = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .name("wal-bench")
        .spawn(move || async move { run(args).await.map_err(|e| e.to_string()) })
        .map_err(|e| e.to_string())
        .and_then(|handle| handle.join().map_err(|e| e.to_string()));
    match outcome {
        Ok(Ok(rows)) => {
            let printed = if json {
                print_json(&rows).map_err(|e| e.to_string())
            } else {
                print_table(&rows);
                Ok(())
            };
            match printed {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wal-bench: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("wal-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
