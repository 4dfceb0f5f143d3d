//! `reshard`: a stopped server's permanent-store data dir rewritten with another shard count.
//!
//! A data dir keeps the shard count it was created with (a key's shard is its hash modulo the
//! count). To change it, every live item is read from the old shards and written, with its
//! key, value, client flags and absolute expiry, into new shards laid out for the new count,
//! in a temporary directory beside the data dir. The new records get LSNs above every old one,
//! so CAS values stay unique and increasing (each item gets a new CAS, as any write would give
//! it). A delayed `flush_all` still pending is carried over. Everything is synced, then the
//! new data dir is swapped in as `restore` does it, and the old contents are moved to
//! `<data>.before-reshard-<time>`, not deleted.
//!
//! - The data dir is locked the whole time: no server can start on it meanwhile.
//! - The old shards are opened as a backup reads them (`RecoveryPolicy::Strict`): nothing in
//!   them is changed, and one that needs repair (the torn tail a crash leaves) is refused,
//!   with the fix: start the server once and stop it, which repairs it.
//! - An interrupted reshard leaves the data dir as it was; the next reshard (or restore)
//!   removes its temporary copy, or moves aside old contents a swap had just moved out,
//!   exactly as for `restore` (see its module doc).

use super::error::BackupError;
use super::files;
use super::progress::Progress;
use super::restore::{
    COMPLETE_MARKER, INCOMPLETE_MARKER, clean_leftovers, discard, refuse_mount_point,
    swap_into_place,
};
use super::source::LockedDataDir;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_node::cluster::dirty_db::DIRTY_DB_DIR;
use terrace_node::cluster::state::{GROUP_FILE, Terms};
use terrace_node::constants::SHARDS_MAX;
use terrace_node::data_dir::{self, Meta};
use terrace_node::shard::Topology;
use terrace_wal::constants::SEGMENT_SIZE_DEFAULT_BYTES;
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy};
use terrace_wal::storage::FsStorage;
use terrace_wal::store::{
    Clock, CompactionConfig, SetMode, Store, StoreConfig, SystemClock, WhenFull,
};

/// What `reshard` calls its temporary directory and the old contents it moves aside.
const RESHARD: &str = "reshard";

/// What `reshard` did.
#[derive(Debug, Clone)]
pub struct ReshardReport {
    /// The data dir, absolute.
    pub data_dir: PathBuf,
    /// The shard count before.
    pub from_shards: u32,
    /// The shard count now.
    pub to_shards: u32,
    /// Live items copied.
    pub items: u64,
    /// Their keys' and values' bytes.
    pub bytes: u64,
    /// Items per new shard.
    pub items_per_shard: Vec<u64>,
    /// When a delayed `flush_all` carried over takes effect (unix seconds).
    pub pending_flush_at: Option<u32>,
    /// Where the old contents went.
    pub previous_contents: Option<PathBuf>,
    /// The dirty db (data a passive set aside) among the old contents, if there is one: it
    /// is not copied, and stays there.
    pub old_dirty_db: Option<PathBuf>,
    /// The new segments' size.
    pub segment_size_bytes: usize,
    /// What the new shards take on disk (segments are preallocated).
    pub bytes_on_disk: u64,
    /// Copies left by interrupted reshards, removed.
    pub removed_leftovers: Vec<PathBuf>,
    /// Old contents an interrupted reshard had swapped out, moved aside.
    pub recovered_contents: Vec<PathBuf>,
    /// Wall time.
    pub duration: Duration,
}

/// Rewrites the data dir `data` with `shards` shards, in segments of `segment_size_bytes`
/// (`None`: as large as the largest old segment file).
pub fn reshard(
    data: &Path,
    shards: u32,
    segment_size_bytes: Option<usize>,
    show_progress: bool,
) -> Result<ReshardReport, BackupError> {
    let started = Instant::now();
    // A symbolic link is followed: the new data dir is made beside the real one, on its
    // filesystem, and the link keeps pointing at it.
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    // Locked (no server runs on it or can start) until the new data dir is in place.
    let source = LockedDataDir::open_for(
        &data,
        "stop the server first: a reshard rewrites a stopped server's data dir",
    )?;
    let target = source.path.clone();
    let from_shards = source.meta.shards;
    let refuse = |problem: String, fix: &str| BackupError::Refused {
        path: target.clone(),
        problem,
        fix: fix.to_string(),
    };
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string_lossy().into_owned()),
        _ => {
            return Err(refuse(
                "is a filesystem root".into(),
                "a reshard writes beside the data dir",
            ));
        }
    };
    refuse_mount_point(&target, RESHARD)?;
    // First, whatever an interrupted reshard left (also when there is nothing else to do).
    let (removed_leftovers, recovered_contents) =
        clean_leftovers(&target, &parent, &name, RESHARD)?;
    if !(1..=SHARDS_MAX).contains(&shards) {
        return Err(refuse(
            format!("--shards {shards} is out of range"),
            &format!("give 1 to {SHARDS_MAX}"),
        ));
    }
    if source.meta.persistence != "permanent-store" {
        return Err(refuse(
            format!("holds {} data", source.meta.persistence),
            "a temporary-swap-only data dir is emptied at every start, which gives it the \
             configured storage.shards then: set that instead",
        ));
    }
    if from_shards == shards {
        return Err(refuse(
            format!("has {shards} shards already"),
            "nothing to do",
        ));
    }

    // Each old shard's segment size: new segments are made as large as the largest, so
    // that every item fits as it did.
    let mut largest_segment = 0u64;
    for shard in 0..from_shards {
        for (_, _, len) in source.segments(shard)? {
            largest_segment = largest_segment.max(len);
        }
    }
    let largest_segment = usize::try_from(largest_segment).unwrap_or(usize::MAX);
    let segment_size_bytes = match segment_size_bytes {
        Some(size) => size,
        None if largest_segment == 0 => SEGMENT_SIZE_DEFAULT_BYTES,
        None => largest_segment,
    };

    // The new records carry the term of the data, as the server stamps its own.
    let data_term = Terms::load(&target)
        .map_err(|problem| refuse(problem, "the data dir was not changed"))?
        .data_term;

    let tmp = parent.join(format!(".{name}.{RESHARD}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(BackupError::io("remove", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(BackupError::io("create directory", &tmp))?;
    files::write_new_file(&tmp.join(INCOMPLETE_MARKER), b"", 0)?;
    files::sync_dir(&tmp)?;
    files::sync_dir(&parent)?;

    let job = Job {
        source: target.clone(),
        data_term,
        tmp: tmp.clone(),
        from_shards,
        to_shards: shards,
        segment_size_bytes,
        show_progress,
    };
    let copied = match job.run().and_then(|copied| {
        finish_data_dir(&target, &tmp, &source.meta, shards)?;
        Ok(copied)
    }) {
        Ok(copied) => copied,
        Err(e) => {
            // Our own partial copy; the data dir was not touched.
            discard(&tmp, &parent, &name);
            return Err(e);
        }
    };
    let marked = std::fs::rename(tmp.join(INCOMPLETE_MARKER), tmp.join(COMPLETE_MARKER))
        .map_err(BackupError::io("mark complete", &tmp))
        .and_then(|()| files::sync_dir(&tmp));
    if let Err(e) = marked {
        discard(&tmp, &parent, &name);
        return Err(e);
    }
    let previous_contents = match swap_into_place(&tmp, &target, &parent, &name, RESHARD) {
        Ok(previous) => previous,
        Err(e) => {
            // Still marked complete: the swap did not happen, and the copy is ours to remove.
            // Otherwise it holds the old contents, which the next run moves aside.
            if tmp.join(COMPLETE_MARKER).exists() {
                discard(&tmp, &parent, &name);
            }
            return Err(e);
        }
    };
    files::sync_dir(&parent)?;
    drop(source);
    files::remove_if_exists(&target.join(COMPLETE_MARKER))?;
    files::sync_dir(&target)?;
    let old_dirty_db = previous_contents
        .as_ref()
        .map(|old| old.join(DIRTY_DB_DIR))
        .filter(|dir| dir.exists());
    let bytes_on_disk = files::disk_usage(&target.join(data_dir::SHARDS_DIR));
    Ok(ReshardReport {
        data_dir: target,
        segment_size_bytes,
        bytes_on_disk,
        old_dirty_db,
        from_shards,
        to_shards: shards,
        items: copied.items,
        bytes: copied.bytes,
        items_per_shard: copied.items_per_shard,
        pending_flush_at: copied.pending_flush_at,
        previous_contents,
        removed_leftovers,
        recovered_contents,
        duration: started.elapsed(),
    })
}

/// The meta file (the new count) and the group terms file (as it was) in the new data dir.
fn finish_data_dir(target: &Path, tmp: &Path, meta: &Meta, shards: u32) -> Result<(), BackupError> {
    let group_file = target.join(GROUP_FILE);
    if group_file.exists() {
        let bytes = std::fs::read(&group_file).map_err(BackupError::io("read", &group_file))?;
        files::write_new_file(&tmp.join(GROUP_FILE), &bytes, bytes.len() as u64)?;
    }
    let meta = Meta {
        shards,
        ..meta.clone()
    };
    data_dir::write_meta_file(tmp, &meta).map_err(BackupError::io("write the meta file in", tmp))
}

/// What was copied.
#[derive(Debug, Default)]
struct Copied {
    items: u64,
    bytes: u64,
    items_per_shard: Vec<u64>,
    pending_flush_at: Option<u32>,
}

/// The copy itself, on a glommio executor (the stores' I/O runs on io_uring).
struct Job {
    source: PathBuf,
    data_term: u64,
    tmp: PathBuf,
    from_shards: u32,
    to_shards: u32,
    segment_size_bytes: usize,
    show_progress: bool,
}

impl Job {
    fn run(self) -> Result<Copied, BackupError> {
        let tmp = self.tmp.clone();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("reshard")
            .spawn(move || async move { self.copy().await })
            .map_err(|e| BackupError::Refused {
                path: tmp.clone(),
                problem: format!("cannot start an io_uring executor: {e}"),
                fix: "check that io_uring is available and the memlock limit (ulimit -l)".into(),
            })?
            .join()
            .map_err(|e| BackupError::Refused {
                path: tmp,
                problem: format!("the copy stopped: {e}"),
                fix: "the data dir was not changed; see the message above".into(),
            })?
    }

    fn store_config(&self, durability: Durability, item_size_max_bytes: usize) -> StoreConfig {
        StoreConfig {
            log: LogConfig {
                segment_size_bytes: self.segment_size_bytes,
                durability,
                // The server checks its storage.capacity against the data at start.
                capacity_bytes: u64::MAX,
            },
            when_full: WhenFull::Refuse,
            item_size_max_bytes,
            compaction: CompactionConfig::default(),
        }
    }

    async fn copy(self) -> Result<Copied, BackupError> {
        let clock: Rc<dyn Clock> = Rc::new(SystemClock);
        let damaged = |dir: &Path, e: &dyn std::fmt::Display| BackupError::Refused {
            path: dir.to_path_buf(),
            problem: format!("cannot be read as it is: {e}"),
            fix: "if the server was killed or crashed, start it once and stop it (that cuts the \
                  torn tail its last unacknowledged writes left), then reshard; otherwise \
                  restore the data dir from a snapshot"
                .into(),
        };
        // Every old shard, opened as a backup reads it: nothing in it is changed.
        let mut old = Vec::new();
        let mut largest_value = 1usize;
        // What the copy will write, for its progress bar.
        let mut live_bytes = 0u64;
        let mut next_lsn = 1u64;
        let mut pending_flush_at: Option<u32> = None;
        for shard in 0..self.from_shards {
            let dir = data_dir::shard_dir_in(&self.source, shard);
            let storage = FsStorage::open(&dir).await.map_err(|e| damaged(&dir, &e))?;
            // The item size limit bounds writes only: nothing is written to an old store.
            let config = self.store_config(Durability::None, 1);
            let (store, _) =
                Store::open(storage, config, Rc::clone(&clock), RecoveryPolicy::Strict)
                    .await
                    .map_err(|e| damaged(&dir, &e))?;
            store.for_each_live(|item| {
                largest_value = largest_value.max(item.value().len());
                live_bytes += (item.key().len() + item.value().len()) as u64;
            });
            next_lsn = next_lsn.max(store.last_lsn() + 1);
            // A delayed flush_all still to come: the latest one wins, as in one store. One
            // whose time has passed (not yet logged as in effect: the shard saw no
            // operation since) is in effect already: `for_each_live` leaves out what it
            // flushed, and carried over it would flush the copies.
            if let Some(at) = store.pending_flush_at().filter(|&at| at > clock.now_secs()) {
                pending_flush_at = Some(pending_flush_at.map_or(at, |other| other.max(at)));
            }
            old.push(store);
        }

        let topology = Topology {
            shards: self.to_shards,
            executors: 1,
        };
        // The largest item must fit in a segment of the size asked for.
        if let Err(e) = self
            .store_config(Durability::Fsync, largest_value)
            .validate()
        {
            return Err(BackupError::Refused {
                path: self.source.clone(),
                problem: format!(
                    "its largest value ({largest_value} bytes) does not fit in segments of {} \
                     bytes: {e}",
                    self.segment_size_bytes
                ),
                fix: "give a larger --segment-size, or leave it out (as large as the largest \
                      old segment)"
                    .into(),
            });
        }
        let shards_dir = self.tmp.join(data_dir::SHARDS_DIR);
        files::create_dirs(&shards_dir)?;
        let mut new = Vec::new();
        for shard in 0..self.to_shards {
            let dir = data_dir::shard_dir_in(&self.tmp, shard);
            files::create_dirs(&dir)?;
            let failed = |e: &dyn std::fmt::Display| BackupError::Refused {
                path: dir.clone(),
                problem: format!("cannot write a new shard: {e}"),
                fix: "check the disk (space, permissions); the data dir was not changed".into(),
            };
            let storage = FsStorage::open(&dir).await.map_err(|e| failed(&e))?;
            let config = self.store_config(Durability::Fsync, largest_value);
            let (mut store, _) = Store::open(
                storage,
                config,
                Rc::clone(&clock),
                RecoveryPolicy::TruncateTornTail,
            )
            .await
            .map_err(|e| failed(&e))?;
            // Above every old LSN: CAS values are never reused.
            store.skip_to(next_lsn).map_err(|e| failed(&e))?;
            store.set_term(self.data_term);
            new.push((dir, store));
        }

        let progress = Progress::bytes(self.show_progress, "reshard", live_bytes);
        let mut copied = Copied {
            items_per_shard: vec![0; self.to_shards as usize],
            pending_flush_at,
            ..Copied::default()
        };
        let mut first_error: Option<BackupError> = None;
        for store in &old {
            store.for_each_live(|item| {
                if first_error.is_some() {
                    return;
                }
                let shard = topology.shard_of(item.key()) as usize;
                let (dir, target) = &mut new[shard];
                // An absolute expiry (0: never) is a valid exptime: past 30 days it is read
                // as a unix time.
                let exptime = i64::from(item.expiry());
                let written = target
                    .set(
                        SetMode::Set,
                        item.key(),
                        item.value(),
                        item.flags(),
                        exptime,
                    )
                    // A stale item stays stale (meta invalidation): marked again.
                    .and_then(|stored| {
                        if item.is_stale() {
                            target.invalidate(item.key(), None)?;
                        }
                        Ok(stored)
                    });
                match written {
                    Ok(_) => {
                        let bytes = (item.key().len() + item.value().len()) as u64;
                        copied.items += 1;
                        copied.bytes += bytes;
                        copied.items_per_shard[shard] += 1;
                        progress.advance(bytes);
                    }
                    Err(e) => {
                        first_error = Some(BackupError::Refused {
                            path: dir.clone(),
                            problem: format!(
                                "cannot write key {:?}: {e}",
                                String::from_utf8_lossy(item.key())
                            ),
                            fix: "check the disk; the data dir was not changed".into(),
                        });
                    }
                }
            });
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(at) = pending_flush_at {
            for (dir, store) in &mut new {
                store
                    .flush_all(i64::from(at))
                    .map_err(|e| BackupError::Refused {
                        path: dir.clone(),
                        problem: format!("cannot carry over the pending flush_all: {e}"),
                        fix: "check the disk; the data dir was not changed".into(),
                    })?;
            }
        }
        for (dir, store) in &new {
            let last = store.last_lsn();
            store
                .commit()
                .wait_durable(last)
                .await
                .map_err(|e| BackupError::Refused {
                    path: dir.clone(),
                    problem: format!("cannot sync a new shard: {e}"),
                    fix: "check the disk; the data dir was not changed".into(),
                })?;
        }
        drop(new);
        for shard in 0..self.to_shards {
            files::sync_dir(&data_dir::shard_dir_in(&self.tmp, shard))?;
        }
        files::sync_dir(&shards_dir)?;
        progress.finish();
        Ok(copied)
    }
}
