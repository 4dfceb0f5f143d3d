//! `verify`: a snapshot is checked end to end, the way recovery would check it and more:
//! the manifest's own checksum, every listed file's presence, size and CRC, every segment
//! header, every record's CRC and structure, LSN order within and across segments, and that
//! what the files hold is what the manifest says. The first problem found is the answer,
//! naming the file and the offset.

use super::error::BackupError;
use super::files::{self, AlignedBuffer};
use super::manifest::{MANIFEST_FILE, Manifest, SNAPSHOT_SHARDS_DIR, SegmentEntry, shard_dir_name};
use super::parallel::per_shard;
use super::progress::Progress;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use terrace_wal::format::{Body, RecordKind, RecordRef};
use terrace_wal::format::{SegmentHeader, SegmentHeaderCheck};
use terrace_wal::log::scan::{HeaderState, LogScanner, SegmentCursor, classify_headers};

/// What a verified snapshot holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Shards.
    pub shards: u32,
    /// Segment files.
    pub segments: usize,
    /// Records, and of them puts, deletes (tombstones), touches, flushes.
    pub records: u64,
    /// Put records.
    pub puts: u64,
    /// Delete records.
    pub deletes: u64,
    /// Touch records.
    pub touches: u64,
    /// flush_all records.
    pub flushes: u64,
    /// Keys that hold a value at the end of the log and had not expired when the snapshot
    /// was taken (deletes, touches and immediate flushes applied; a delayed `flush_all`
    /// still pending at the cut is not).
    pub keys: u64,
    /// Bytes of the stored segment files.
    pub bytes: u64,
    /// Files in the snapshot's shard directories that the manifest does not list (left from
    /// an interrupted `create`; harmless, removed by the next `create`).
    pub unlisted_files: Vec<String>,
    /// Wall time.
    #[serde(skip)]
    pub duration: Duration,
}

impl VerifyReport {
    /// Adds another shard's counts.
    pub fn add(&mut self, other: &Self) {
        self.segments += other.segments;
        self.records += other.records;
        self.puts += other.puts;
        self.deletes += other.deletes;
        self.touches += other.touches;
        self.flushes += other.flushes;
        self.keys += other.keys;
        self.bytes += other.bytes;
    }
}

/// Verifies the snapshot in `dir`.
pub fn verify(dir: &Path, show_progress: bool) -> Result<(Manifest, VerifyReport), BackupError> {
    let started = Instant::now();
    let manifest = read_manifest(dir)?;
    let (_, _, total) = manifest.totals();
    let progress = Progress::bytes(show_progress, "verify", total);
    let mut report = VerifyReport {
        shards: manifest.source.shard_count,
        ..VerifyReport::default()
    };
    check_shape(dir, &manifest)?;
    let at = u32::try_from(manifest.created_unix_secs).unwrap_or(u32::MAX);
    let parts = per_shard(manifest.shards.len(), |index, buffer| {
        let shard = &manifest.shards[index];
        let mut part = VerifyReport::default();
        let mut scanner = LogScanner::new();
        // Key hash -> (CAS, expiry) of its live value. A fixed hasher: counts are the same
        // every run.
        let mut live: HashMap<u64, (u64, u32)> = HashMap::new();
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        for entry in &shard.segments {
            check_segment(dir, buffer, &mut scanner, entry, |record| {
                tally(&mut part, &mut live, &hasher, record);
            })?;
            part.segments += 1;
            part.bytes += entry.stored_bytes;
            progress.advance(entry.stored_bytes);
        }
        if scanner.last_lsn() != shard.last_lsn {
            return Err(BackupError::Manifest {
                path: dir.join(MANIFEST_FILE),
                problem: format!(
                    "shard {} ends at LSN {} but the manifest says {}",
                    shard.shard,
                    scanner.last_lsn(),
                    shard.last_lsn
                ),
            });
        }
        part.keys = live
            .values()
            .filter(|(_, expiry)| *expiry == 0 || *expiry > at)
            .count() as u64;
        Ok(part)
    })?;
    for part in &parts {
        report.add(part);
    }
    progress.finish();
    report.unlisted_files = unlisted_files(dir, &manifest)?;
    report.duration = started.elapsed();
    Ok((manifest, report))
}

/// Reads the segment file `entry` of a snapshot in `dir` and checks it completely: size,
/// CRC, header, records (with `scanner`, which carries the LSN checks across the shard's
/// segments) and what the manifest says about it. `visit` sees every record. Returns the
/// checked bytes.
pub fn check_segment<'b>(
    dir: &Path,
    buffer: &'b mut AlignedBuffer,
    scanner: &mut LogScanner,
    entry: &SegmentEntry,
    mut visit: impl FnMut(RecordRef<'_>),
) -> Result<&'b [u8], BackupError> {
    let path = dir.join(&entry.file);
    check_listed_size(&path, entry)?;
    // Records are checked as the bytes arrive, while they are in the CPU cache; whether the
    // file as a whole is sound is decided once it is all read.
    let mut cursor: Option<SegmentCursor> = None;
    let mut early = None;
    let started = &*scanner;
    let bytes = buffer.read_prefix_each(&path, u64::MAX, |prefix| {
        if cursor.is_none()
            && early.is_none()
            && let SegmentHeaderCheck::Valid(header) = SegmentHeader::check(prefix)
        {
            match started.begin_segment(&header) {
                Ok(begun) => cursor = Some(begun),
                Err(damage) => early = Some(damage),
            }
        }
        if let Some(cursor) = cursor.as_mut() {
            cursor.advance(prefix, |_, record| visit(record));
        }
    })?;
    if bytes.len() as u64 != entry.stored_bytes {
        return Err(BackupError::Damaged {
            path,
            offset: bytes.len() as u64,
            reason: "the file changed size while it was read".into(),
        });
    }
    let crc = buffer.crc32();
    let bytes = buffer.bytes();
    let damaged = |offset: u64, reason: String| BackupError::Damaged {
        path: path.clone(),
        offset,
        reason,
    };
    if format!("{crc:08x}") != entry.crc32 {
        return Err(damaged(
            0,
            format!(
                "checksum {crc:08x} does not match the manifest's {}: the file changed after \
                 the snapshot was taken",
                entry.crc32
            ),
        ));
    }
    let header = match classify_headers([(entry.id, bytes)])
        .map_err(|d| damaged(d.offset, d.reason))?
        .pop()
    {
        Some((_, HeaderState::Activated(header))) => header,
        _ => return Err(damaged(0, "segment header is zero".into())),
    };
    if header.size_bytes != entry.segment_bytes {
        return Err(damaged(
            0,
            format!(
                "header says a {}-byte segment, the manifest {}",
                header.size_bytes, entry.segment_bytes
            ),
        ));
    }
    if let Some(d) = early {
        return Err(damaged(d.offset, d.reason));
    }
    let Some(cursor) = cursor else {
        unreachable!("a valid header starts the cursor as soon as it is read");
    };
    // Any invalid byte in a snapshot is damage: a torn tail was left out at create.
    let scan = scanner
        .end_segment(cursor, bytes, false)
        .map_err(|d| damaged(d.offset, d.reason))?;
    let found = (
        scan.first_lsn,
        scan.last_lsn,
        scan.records,
        scan.records_end as u64,
    );
    let listed = (
        entry.first_lsn,
        entry.last_lsn,
        entry.records,
        entry.records_end,
    );
    if found != listed {
        return Err(damaged(
            0,
            format!(
                "holds LSNs {}..={}, {} records ending at byte {}; the manifest says {}..={}, \
                 {} records ending at byte {}",
                found.0, found.1, found.2, found.3, listed.0, listed.1, listed.2, listed.3
            ),
        ));
    }
    Ok(bytes)
}

/// Reads the manifest, which must exist.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    if !dir.is_dir() {
        return Err(BackupError::Refused {
            path: dir.to_path_buf(),
            problem: "no such directory".into(),
            fix: "give the directory a `backup-data create --out` wrote".into(),
        });
    }
    Manifest::read(dir)?.ok_or_else(|| BackupError::Missing {
        path: dir.join(MANIFEST_FILE),
    })
}

/// Checks what the manifest says about itself: one entry per shard in order, segments in
/// increasing id order, file paths inside the shard's directory, sizes that add up.
pub fn check_shape(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let bad = |problem: String| BackupError::Manifest {
        path: dir.join(MANIFEST_FILE),
        problem,
    };
    if manifest.shards.len() as u64 != u64::from(manifest.source.shard_count) {
        return Err(bad(format!(
            "lists {} shards but says the data dir has {}",
            manifest.shards.len(),
            manifest.source.shard_count
        )));
    }
    for (index, shard) in manifest.shards.iter().enumerate() {
        if shard.shard as usize != index {
            return Err(bad(format!(
                "shard {} listed in place {index}",
                shard.shard
            )));
        }
        let expected_dir = PathBuf::from(shard_dir_name(shard.shard));
        for (i, entry) in shard.segments.iter().enumerate() {
            let file = Path::new(&entry.file);
            let inside = file.parent() == Some(expected_dir.as_path())
                && file.components().all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(bad(format!(
                    "segment file {} is not in {}",
                    entry.file,
                    expected_dir.display()
                )));
            }
            if i > 0 && entry.id <= shard.segments[i - 1].id {
                return Err(bad(format!(
                    "shard {}: segment {} listed after segment {}",
                    shard.shard,
                    entry.id,
                    shard.segments[i - 1].id
                )));
            }
            let size_ok = if entry.linked {
                entry.stored_bytes == entry.segment_bytes
            } else {
                entry.stored_bytes == entry.records_end
            };
            if !size_ok || entry.records_end > entry.segment_bytes {
                return Err(bad(format!(
                    "{}: stored {} bytes, records end at {}, segment of {} bytes: these do not fit together",
                    entry.file, entry.stored_bytes, entry.records_end, entry.segment_bytes
                )));
            }
        }
    }
    Ok(())
}

/// Checks that a listed file is there and has the listed size.
fn check_listed_size(path: &Path, entry: &SegmentEntry) -> Result<(), BackupError> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(BackupError::Io {
                op: "stat",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if len != entry.stored_bytes {
        return Err(BackupError::Damaged {
            path: path.to_path_buf(),
            offset: len.min(entry.stored_bytes),
            reason: format!(
                "{len} bytes where the manifest says {}: the file was truncated or extended",
                entry.stored_bytes
            ),
        });
    }
    Ok(())
}

fn tally(
    report: &mut VerifyReport,
    live: &mut HashMap<u64, (u64, u32)>,
    hasher: &BuildHasherDefault<DefaultHasher>,
    record: RecordRef<'_>,
) {
    report.records += 1;
    // SAFETY: the scanner hands out only records that passed `check_record` on these bytes.
    let body = unsafe { record.body_unchecked() };
    match (record.kind, body) {
        (RecordKind::Put, Body::Put(put)) => {
            report.puts += 1;
            live.insert(
                hasher.hash_one(&*put.key),
                (put.cas.to_native(), put.expiry.to_native()),
            );
        }
        (RecordKind::Delete, Body::Delete(delete)) => {
            report.deletes += 1;
            live.remove(&hasher.hash_one(&*delete.key));
        }
        (RecordKind::Touch, Body::Touch(touch)) => {
            report.touches += 1;
            if let Some(item) = live.get_mut(&hasher.hash_one(&*touch.key))
                && item.0 == touch.cas.to_native()
            {
                item.1 = touch.expiry.to_native();
            }
        }
        (RecordKind::Flush, Body::Flush(flush)) => {
            report.flushes += 1;
            let boundary = flush.boundary_lsn.to_native();
            if boundary > 0 {
                live.retain(|_, (cas, _)| *cas >= boundary);
            }
        }
        _ => unreachable!("record kind and body disagree"),
    }
}

/// Files under the shard directories that the manifest does not list.
fn unlisted_files(dir: &Path, manifest: &Manifest) -> Result<Vec<String>, BackupError> {
    let listed: std::collections::HashSet<&str> = manifest
        .shards
        .iter()
        .flat_map(|s| &s.segments)
        .map(|e| e.file.as_str())
        .collect();
    let mut unlisted = Vec::new();
    for shard_name in files::list_names(&dir.join(SNAPSHOT_SHARDS_DIR))? {
        let relative_dir = format!("{SNAPSHOT_SHARDS_DIR}/{shard_name}");
        for name in files::list_names(&dir.join(&relative_dir))? {
            let relative = format!("{relative_dir}/{name}");
            if !listed.contains(relative.as_str()) {
                unlisted.push(relative);
            }
        }
    }
    Ok(unlisted)
}
