//! `create`: a consistent snapshot of every shard, written so that the snapshot directory
//! always holds one complete snapshot, old or new, whenever the tool stops.
//!
//! Order of writes:
//! 1. Each segment file is written under a temporary name, fsynced, renamed to its final name
//!    (which carries the CRC of its bytes, so it never replaces a file the previous manifest
//!    lists), and its directory fsynced. Unchanged segments of an earlier snapshot of the same
//!    server are kept as they are (incremental).
//! 2. The manifest is written atomically (temporary file, fsync, rename, directory fsync).
//! 3. Only then are files that no manifest lists any more removed.
//!
//! A segment is read and checked (header, every record's CRC and structure, LSN order) before
//! a byte of it is stored; the torn tail of a newest segment is left out and reported.

use super::error::BackupError;
use super::files::{self, AlignedBuffer};
use super::manifest::{
    MANIFEST_FILE, Manifest, SNAPSHOT_FORMAT, SNAPSHOT_SHARDS_DIR, SegmentEntry, ShardEntry,
    SourceInfo, TornTailEntry, segment_file_name, shard_dir_name, utc_string,
};
use super::parallel::per_shard;
use super::progress::Progress;
use super::source::read_header;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use terrace_wal::format::SegmentHeader;
use terrace_wal::log::scan::{HeaderState, LogScanner, classify_headers};
use terrace_wal::storage::SegmentId;

/// How to write a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Hard-link sealed segments instead of copying them, where the snapshot is on the same
    /// filesystem. Sealed segments never change, so the link is a faithful copy, but it shares
    /// the disk blocks with the data dir: it protects against deletion and operator error, not
    /// against the disk failing.
    pub link: bool,
    /// Draw a progress bar.
    pub show_progress: bool,
}

/// One segment to snapshot.
#[derive(Debug, Clone)]
pub struct SourceSegment {
    /// Segment id.
    pub id: SegmentId,
    /// Its file.
    pub path: PathBuf,
    /// The file's size.
    pub file_bytes: u64,
    /// Bytes of the file that belong to the cut (the whole file offline; up to the cut's last
    /// record in the newest segment of an online cut, which keeps growing).
    pub cut_bytes: u64,
}

/// One shard to snapshot: its segment files in id order.
#[derive(Debug, Clone)]
pub struct SourceShard {
    /// The shard number.
    pub shard: u32,
    /// Its segments.
    pub segments: Vec<SourceSegment>,
    /// For an online cut: the last LSN the server said the cut holds. Every byte of a cut is
    /// durable, so nothing in it may be torn, and its files must end exactly there.
    pub cut_last_lsn: Option<u64>,
}

/// What `create` did.
#[derive(Debug, Clone)]
pub struct CreateReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Segment files written (copied).
    pub written_files: usize,
    /// Bytes written.
    pub written_bytes: u64,
    /// Segment files kept from the earlier snapshot in the directory.
    pub reused_files: usize,
    /// Segment files hard-linked.
    pub linked_files: usize,
    /// Files of the earlier snapshot removed after the new manifest was in place.
    pub removed_files: usize,
    /// Never-activated (spare) segments skipped: they hold no record.
    pub spare_segments: usize,
    /// Wall time.
    pub duration: Duration,
}

/// Writes a snapshot of `shards` into `out`.
pub fn write_snapshot(
    out: &Path,
    source: SourceInfo,
    shards: &[SourceShard],
    options: CreateOptions,
) -> Result<CreateReport, BackupError> {
    let started = Instant::now();
    let (previous, _lock) = prepare_out_dir(out, &source)?;
    // Files of the earlier snapshot that may be kept: file name -> its entry.
    let reusable: HashMap<&str, &SegmentEntry> = previous
        .as_ref()
        .map(|m| {
            m.shards
                .iter()
                .flat_map(|s| &s.segments)
                .map(|e| (e.file.as_str(), e))
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = shards
        .iter()
        .flat_map(|s| &s.segments)
        .map(|s| s.cut_bytes)
        .sum();
    let progress = Progress::bytes(options.show_progress, "snapshot", total);
    let created_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = CreateReport {
        manifest: Manifest {
            format: SNAPSHOT_FORMAT,
            created_by: format!("backup-data {}", env!("CARGO_PKG_VERSION")),
            created_unix_secs,
            created_utc: utc_string(created_unix_secs),
            source,
            shards: Vec::with_capacity(shards.len()),
        },
        written_files: 0,
        written_bytes: 0,
        reused_files: 0,
        linked_files: 0,
        removed_files: 0,
        spare_segments: 0,
        duration: Duration::ZERO,
    };
    files::create_dirs(&out.join(SNAPSHOT_SHARDS_DIR))?;
    let parts = per_shard(shards.len(), |index, buffer| {
        snapshot_shard(out, &shards[index], options, &reusable, buffer, &progress)
    })?;
    for (entry, counts) in parts {
        report.written_files += counts.written_files;
        report.written_bytes += counts.written_bytes;
        report.reused_files += counts.reused_files;
        report.linked_files += counts.linked_files;
        report.spare_segments += counts.spare_segments;
        report.manifest.shards.push(entry);
    }
    progress.finish();
    files::replace_file(
        &out.join(MANIFEST_FILE),
        report.manifest.encode()?.as_bytes(),
    )?;
    report.removed_files = remove_unlisted(out, &report.manifest)?;
    report.duration = started.elapsed();
    Ok(report)
}

/// Checks that `out` is empty, new, or holds an earlier snapshot of the same source (which is
/// returned, for an incremental snapshot).
fn prepare_out_dir(
    out: &Path,
    source: &SourceInfo,
) -> Result<(Option<Manifest>, File), BackupError> {
    files::create_dirs(out)?;
    let previous = Manifest::read(out).map_err(|e| BackupError::Refused {
        path: out.to_path_buf(),
        problem: format!("holds a snapshot whose manifest cannot be used ({e})"),
        fix: "give --out a new directory; the old snapshot was not touched".into(),
    })?;
    match &previous {
        None => {
            let names: Vec<String> = files::list_names(out)?
                .into_iter()
                .filter(|n| n != OUT_LOCK_FILE)
                .collect();
            if !names.is_empty() {
                return Err(BackupError::Refused {
                    path: out.to_path_buf(),
                    problem: format!(
                        "not empty and not a snapshot (no {MANIFEST_FILE}): holds {}",
                        names.join(", ")
                    ),
                    fix: "give --out a new or empty directory; nothing was touched".into(),
                });
            }
        }
        Some(old) => {
            let same = old.source.data_dir == source.data_dir
                && old.source.server == source.server
                && old.source.shard_count == source.shard_count;
            if !same {
                return Err(BackupError::Refused {
                    path: out.to_path_buf(),
                    problem: format!(
                        "holds a snapshot of another data dir ({}, server {}, {} shards)",
                        old.source.data_dir,
                        old.source.server.as_deref().unwrap_or("unnamed"),
                        old.source.shard_count
                    ),
                    fix: "an incremental snapshot needs the same server and data dir; give \
                          --out a new directory"
                        .into(),
                });
            }
        }
    }
    // Two creates into one directory would remove each other's files.
    let lock_path = out.join(OUT_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(BackupError::io("open", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| BackupError::Refused {
            path: out.to_path_buf(),
            problem: "another backup-data create is writing into it".into(),
            fix: "wait for it to finish, or give --out another directory".into(),
        },
    )?;
    Ok((previous, lock))
}

/// Held by a `create` for as long as it writes into a snapshot directory.
const OUT_LOCK_FILE: &str = ".backup-data.lock";

/// What snapshotting one shard did (see [`CreateReport`]).
#[derive(Debug, Default)]
struct ShardCounts {
    written_files: usize,
    written_bytes: u64,
    reused_files: usize,
    linked_files: usize,
    spare_segments: usize,
}

fn snapshot_shard(
    out: &Path,
    shard: &SourceShard,
    options: CreateOptions,
    reusable: &HashMap<&str, &SegmentEntry>,
    buffer: &mut AlignedBuffer,
    progress: &Progress,
) -> Result<(ShardEntry, ShardCounts), BackupError> {
    let mut report = ShardCounts::default();
    let relative_dir = shard_dir_name(shard.shard);
    let dir = out.join(&relative_dir);
    files::create_dirs(&dir)?;
    let headers = shard
        .segments
        .iter()
        .map(|s| read_header(&s.path).map(|h| (s.id, h)))
        .collect::<Result<Vec<_>, _>>()?;
    let path_of = |id: SegmentId| {
        shard
            .segments
            .iter()
            .find(|s| s.id == id)
            .map_or_else(PathBuf::new, |s| s.path.clone())
    };
    let damaged = |damage: terrace_wal::log::scan::Damage| BackupError::Damaged {
        path: path_of(damage.segment),
        offset: damage.offset,
        reason: damage.reason,
    };
    let states =
        classify_headers(headers.iter().map(|(id, h)| (*id, h.as_slice()))).map_err(damaged)?;
    let activated: Vec<(&SourceSegment, SegmentHeader)> = shard
        .segments
        .iter()
        .zip(&states)
        .filter_map(|(segment, (_, state))| match state {
            HeaderState::Activated(header) => Some((segment, *header)),
            HeaderState::NeverActivated => None,
        })
        .collect();
    report.spare_segments += shard.segments.len() - activated.len();
    let mut entry = ShardEntry {
        shard: shard.shard,
        last_lsn: 0,
        segments: Vec::with_capacity(activated.len()),
        torn_tail_left_out: None,
    };
    let mut scanner = LogScanner::new();
    for (index, (segment, header)) in activated.iter().enumerate() {
        let is_newest = index + 1 == activated.len();
        if header.size_bytes != segment.file_bytes {
            return Err(BackupError::Damaged {
                path: segment.path.clone(),
                offset: 0,
                reason: format!(
                    "header says {} bytes, file has {}: the file was truncated or extended",
                    header.size_bytes, segment.file_bytes
                ),
            });
        }
        let bytes = buffer.read_prefix(&segment.path, segment.cut_bytes)?;
        if (bytes.len() as u64) < segment.cut_bytes {
            return Err(BackupError::Damaged {
                path: segment.path.clone(),
                offset: bytes.len() as u64,
                reason: "the file is shorter than the cut".into(),
            });
        }
        // Offline, the newest segment may end in a torn tail (left out); an online cut holds
        // only durable records, so any invalid byte in it is damage.
        let torn_allowed = is_newest && shard.cut_last_lsn.is_none();
        let scan = scanner
            .scan_segment(header, bytes, torn_allowed, |_, _| {})
            .map_err(damaged)?;
        if let Some(torn) = scan.torn {
            entry.torn_tail_left_out = Some(TornTailEntry {
                segment: segment.id,
                offset: torn.offset as u64,
                bytes: (torn.end - torn.offset) as u64,
                reason: torn.reason.map_or_else(
                    || "non-zero bytes after the last record".to_string(),
                    |r| r.to_string(),
                ),
            });
        }
        // Sealed segments never change again, so a link is a faithful copy; the newest one
        // takes appends when the server runs again, so it is always copied.
        let link = options.link && !is_newest && segment.cut_bytes == segment.file_bytes;
        let stored = if link {
            bytes
        } else {
            &bytes[..scan.records_end]
        };
        let crc = crc32fast::hash(stored);
        let name = segment_file_name(segment.id, crc);
        let relative = format!("{relative_dir}/{name}");
        let target = dir.join(&name);
        let unchanged = reusable.get(relative.as_str()).is_some_and(|old| {
            old.stored_bytes == stored.len() as u64
                && std::fs::metadata(&target).is_ok_and(|m| m.len() == old.stored_bytes)
        });
        let mut linked = false;
        if unchanged {
            report.reused_files += 1;
            linked = reusable
                .get(relative.as_str())
                .is_some_and(|old| old.linked);
        } else {
            files::remove_if_exists(&target)?;
            if link && std::fs::hard_link(&segment.path, &target).is_ok() {
                linked = true;
                report.linked_files += 1;
            } else {
                // Not linked (not asked, or another filesystem): a copy, under a temporary
                // name until it is whole and durable.
                let tmp = dir.join(format!("{name}.tmp"));
                files::remove_if_exists(&tmp)?;
                files::write_new_file(&tmp, stored, 0)?;
                std::fs::rename(&tmp, &target).map_err(BackupError::io("rename", &target))?;
                report.written_files += 1;
                report.written_bytes += stored.len() as u64;
            }
        }
        progress.advance(segment.cut_bytes);
        entry.segments.push(SegmentEntry {
            id: segment.id,
            file: relative,
            stored_bytes: stored.len() as u64,
            segment_bytes: segment.file_bytes,
            first_lsn: scan.first_lsn,
            last_lsn: scan.last_lsn,
            records: scan.records,
            records_end: scan.records_end as u64,
            crc32: format!("{crc:08x}"),
            linked,
        });
    }
    entry.last_lsn = scanner.last_lsn();
    if let Some(cut) = shard.cut_last_lsn
        && cut != entry.last_lsn
    {
        // Checked before the manifest is written: a wrong cut never replaces a good snapshot.
        return Err(BackupError::Damaged {
            path: shard
                .segments
                .last()
                .map_or_else(PathBuf::new, |s| s.path.clone()),
            offset: 0,
            reason: format!(
                "shard {}: the server's cut ends at LSN {cut}, its files at LSN {}",
                shard.shard, entry.last_lsn
            ),
        });
    }
    files::sync_dir(&dir)?;
    Ok((entry, report))
}

/// Removes segment and temporary files under the snapshot's shard directories that
/// `manifest` does not list. Returns how many.
fn remove_unlisted(out: &Path, manifest: &Manifest) -> Result<usize, BackupError> {
    let listed: HashSet<&str> = manifest
        .shards
        .iter()
        .flat_map(|s| &s.segments)
        .map(|e| e.file.as_str())
        .collect();
    let mut removed = 0;
    for shard_name in files::list_names(&out.join(SNAPSHOT_SHARDS_DIR))? {
        let relative_dir = format!("{SNAPSHOT_SHARDS_DIR}/{shard_name}");
        let dir = out.join(&relative_dir);
        let mut changed = false;
        for name in files::list_names(&dir)? {
            let ours = name.ends_with(".seg") || name.ends_with(".seg.tmp");
            if ours && !listed.contains(format!("{relative_dir}/{name}").as_str()) {
                files::remove_if_exists(&dir.join(&name))?;
                removed += 1;
                changed = true;
            }
        }
        if changed {
            files::sync_dir(&dir)?;
        }
    }
    Ok(removed)
}

/// Refuses an `--out` inside the data dir (or holding it): the server would find a foreign
/// directory among its shards.
pub fn refuse_overlap(out: &Path, data_dir: &Path) -> Result<(), BackupError> {
    let out_abs = std::path::absolute(out).map_err(BackupError::io("resolve", out))?;
    if out_abs.starts_with(data_dir) || data_dir.starts_with(&out_abs) {
        return Err(BackupError::Refused {
            path: out.to_path_buf(),
            problem: format!(
                "overlaps the data dir {} being backed up",
                data_dir.display()
            ),
            fix: "give --out a directory outside the data dir".into(),
        });
    }
    Ok(())
}

/// `create --data-dir`: a snapshot of a stopped server's data dir. The data dir's lock is held
/// throughout, so no server can start on it while it is read.
pub fn create_offline(
    data_dir: &Path,
    out: &Path,
    options: CreateOptions,
) -> Result<CreateReport, BackupError> {
    let source = super::source::LockedDataDir::open(data_dir)?;
    refuse_overlap(out, &source.path)?;
    let shards = (0..source.meta.shards)
        .map(|shard| {
            let segments = source
                .segments(shard)?
                .into_iter()
                .map(|(id, path, len)| SourceSegment {
                    id,
                    path,
                    file_bytes: len,
                    cut_bytes: len,
                })
                .collect();
            Ok(SourceShard {
                shard,
                segments,
                cut_last_lsn: None,
            })
        })
        .collect::<Result<Vec<_>, BackupError>>()?;
    let info = SourceInfo {
        mode: "offline".into(),
        data_dir: source.path.display().to_string(),
        server: source.meta.server.clone(),
        address: None,
        persistence: source.meta.persistence.clone(),
        data_dir_format: source.meta.format,
        shard_count: source.meta.shards,
    };
    write_snapshot(out, info, &shards, options)
}
