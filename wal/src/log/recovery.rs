//! Recovery: rebuilding a log from its segment files.
//!
//! Segments are scanned in id order, records in offset order. Every record's bounds, reserved
//! bytes, kind, checksum, archive structure and LSN (consecutive within a segment, increasing
//! across segments) are checked, and each valid record is handed to the caller, which rebuilds
//! its index from them in the same pass.
//!
//! What may be invalid, and what that means, follows from the write order (`group_commit`):
//! - Trailing segments whose header is all zero were never activated: no record in them was
//!   ever acknowledged. They are removed.
//! - The newest activated segment may end in a torn tail: records appended but not covered by
//!   a completed sync, persisted partly or out of order. From the first invalid record on,
//!   everything up to the last non-zero byte is cut (zeroed and synced), so that stale bytes can
//!   never be mistaken for records later.
//! - Anything invalid anywhere else is damage: recovery fails naming the file and offset.
//!
//! Nothing is modified until the whole scan has succeeded.

use crate::constants::SEGMENT_HEADER_LEN_BYTES;
use crate::error::WalError;
use crate::format::{InvalidRecord, RecordRef};
use crate::log::scan::{Damage, HeaderState, LogScanner, classify_headers, last_nonzero};
use crate::log::segment::Segment;
use crate::storage::{SegmentFile as _, SegmentId, Storage};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Called by recovery with every valid record, in log order: its segment, its offset, the record.
pub type RecordVisitor<'v, F> = dyn FnMut(&Rc<Segment<F>>, usize, RecordRef<'_>) + 'v;

/// A torn region found in the newest segment: the segment, where the region starts and ends.
type TornRegion<F> = (Rc<Segment<F>>, usize, usize);

/// What to do with bytes that are not whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryPolicy {
    /// Opening a shard to serve it: a torn tail of the newest segment is cut (it holds only
    /// records that were never acknowledged), never-activated trailing segments are removed;
    /// invalid bytes anywhere else fail the open.
    TruncateTornTail,
    /// Inspecting a shard (verification, backup): anything that would need repair fails the
    /// open, and nothing is modified.
    Strict,
}

/// A torn tail found (and, under `TruncateTornTail`, cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: SegmentId,
    /// Offset of the first byte that is not part of a whole record.
    pub offset: u64,
    /// Bytes from `offset` through the last non-zero byte.
    pub garbage_bytes: u64,
    /// Why the bytes at `offset` are not a record (`None`: a zero header, with non-zero bytes
    /// further on).
    pub reason: Option<InvalidRecord>,
}

/// What recovery did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments recovered.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Bytes of valid records (headers and padding included).
    pub record_bytes: u64,
    /// LSN of the last valid record (0 if none).
    pub last_lsn: u64,
    /// The torn tail cut from the newest segment, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Never-activated segments removed.
    pub removed_segments: Vec<SegmentId>,
    /// Wall time of the recovery.
    pub duration: Duration,
}

impl RecoveryReport {
    /// Bytes cut from the tail.
    pub fn truncated_bytes(&self) -> u64 {
        self.torn_tail.map_or(0, |t| t.garbage_bytes)
    }
}

/// The result of recovery: the segments, ready to use, the next LSN, the report.
pub(crate) struct Recovered<F> {
    pub segments: Vec<Rc<Segment<F>>>,
    pub next_lsn: u64,
    pub report: RecoveryReport,
}

/// Recovers the segments of `storage`, calling `visit` with every valid record in log order.
pub(crate) async fn recover<S: Storage>(
    storage: &S,
    policy: RecoveryPolicy,
    visit: &mut RecordVisitor<'_, S::File>,
) -> Result<Recovered<S::File>, WalError> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let ids = storage.list()?;
    let io_error = |op, id, source| WalError::Io {
        op,
        path: storage.segment_path(id),
        source,
    };
    let corrupt = |id, offset: usize, reason: String| WalError::Corrupt {
        path: storage.segment_path(id),
        offset: offset as u64,
        reason,
    };

    // Headers first: find the activated segments and the never-activated ones after them.
    let mut files = Vec::with_capacity(ids.len());
    // Empty files: segments whose creation was cut short (a spare is allocated in the
    // background). Like an all-zero spare, one is fine only after every segment in use.
    let mut empty = Vec::new();
    for &id in &ids {
        match storage
            .open(id)
            .map_err(|source| io_error("open segment", id, source))?
        {
            Some(file) => files.push((id, file)),
            None => empty.push(id),
        }
    }
    let corrupt_from = |damage: Damage| WalError::Corrupt {
        path: storage.segment_path(damage.segment),
        offset: damage.offset,
        reason: damage.reason,
    };
    let states = classify_headers(files.iter().map(|(id, file)| {
        // SAFETY: the mapping is `len` bytes and nothing writes it during recovery.
        let bytes = unsafe { std::slice::from_raw_parts(file.as_mut_ptr(), file.len()) };
        (*id, bytes)
    }))
    .map_err(corrupt_from)?;
    let newest_activated = states.iter().rev().find_map(|(id, state)| match state {
        HeaderState::Activated(_) => Some(*id),
        HeaderState::NeverActivated => None,
    });
    if let (Some(&first_empty), Some(newest)) = (empty.first(), newest_activated)
        && first_empty < newest
    {
        return Err(corrupt(
            first_empty,
            0,
            format!("segment file is empty but segment {newest} after it is in use"),
        ));
    }
    let mut activated = Vec::new();
    let mut never_activated = Vec::new();
    for ((id, file), (_, state)) in files.into_iter().zip(states) {
        match state {
            HeaderState::NeverActivated => never_activated.push((id, file)),
            HeaderState::Activated(header) => {
                if header.size_bytes != file.len() as u64 {
                    return Err(corrupt(
                        id,
                        0,
                        format!(
                            "header says {} bytes, file has {}: the file was truncated or extended",
                            header.size_bytes,
                            file.len()
                        ),
                    ));
                }
                activated.push((header, file));
            }
        }
    }

    // Scan the activated segments.
    let mut segments: Vec<Rc<Segment<S::File>>> = Vec::with_capacity(activated.len());
    let newest_index = activated.len().checked_sub(1);
    let mut scanner = LogScanner::new();
    let mut torn: Option<TornRegion<S::File>> = None;
    for (index, (header, file)) in activated.into_iter().enumerate() {
        let id = header.segment_id;
        let is_newest = Some(index) == newest_index;
        let segment = Rc::new(Segment::new(
            id,
            file,
            header.first_lsn,
            SEGMENT_HEADER_LEN_BYTES,
            header.first_lsn - 1,
            false,
        ));
        let scanned = scanner
            .scan_segment(
                &header,
                segment.whole_mapping(),
                is_newest,
                |offset, record| {
                    segment.extend_recovered(offset + record.total_len, record.lsn);
                    visit(&segment, offset, record);
                    report.records += 1;
                    report.record_bytes += record.total_len as u64;
                },
            )
            .map_err(corrupt_from)?;
        if let Some(region) = scanned.torn {
            let tail = TornTail {
                segment: id,
                offset: region.offset as u64,
                garbage_bytes: (region.end - region.offset) as u64,
                reason: region.reason,
            };
            if policy == RecoveryPolicy::Strict {
                return Err(WalError::TornTail {
                    path: storage.segment_path(id),
                    offset: tail.offset,
                    garbage_bytes: tail.garbage_bytes,
                });
            }
            report.torn_tail = Some(tail);
            torn = Some((Rc::clone(&segment), region.offset, region.end));
        }
        segments.push(segment);
    }
    let last_lsn = scanner.last_lsn();

    if policy == RecoveryPolicy::Strict {
        // An all-zero segment after the newest is the spare the log prepares ahead of need:
        // nothing to repair. Anything else in a never-activated segment would be cut.
        for (id, file) in &never_activated {
            // SAFETY: the mapping is `len` bytes and nothing writes it during recovery.
            let bytes = unsafe { std::slice::from_raw_parts(file.as_mut_ptr(), file.len()) };
            if let Some(last) = last_nonzero(bytes) {
                return Err(WalError::TornTail {
                    path: storage.segment_path(*id),
                    offset: 0,
                    garbage_bytes: last as u64 + 1,
                });
            }
        }
        never_activated.clear();
        empty.clear();
    }

    // Repairs, now that the scan succeeded.
    if let Some((segment, from, to)) = torn {
        tracing::warn!(
            segment = %storage.segment_path(segment.id()).display(),
            offset = from,
            bytes = to - from,
            "cutting torn tail: records that were appended but never acknowledged"
        );
        segment.zero_tail(from, to);
        segment.file().sync().await.map_err(|source| {
            io_error(
                "fdatasync segment after cutting its torn tail",
                segment.id(),
                source,
            )
        })?;
    }
    let never_activated_ids: Vec<SegmentId> = never_activated
        .into_iter()
        .map(|(id, _file)| id)
        .chain(empty)
        .collect();
    if !never_activated_ids.is_empty() {
        for id in never_activated_ids {
            tracing::info!(
                segment = %storage.segment_path(id).display(),
                "removing a segment that was prepared but never used: it holds no acknowledged record"
            );
            storage
                .remove(id)
                .map_err(|source| io_error("remove never-activated segment", id, source))?;
            report.removed_segments.push(id);
        }
        storage.sync_dir().await.map_err(|source| WalError::Io {
            op: "fsync shard directory",
            path: storage.dir_path(),
            source,
        })?;
    }

    // What recovery read may have come from the page cache of a process that died before
    // syncing (kill -9 leaves it behind): make it durable before anything builds on it.
    if policy == RecoveryPolicy::TruncateTornTail {
        if let Some(newest) = segments.last() {
            newest
                .file()
                .sync()
                .await
                .map_err(|source| io_error("fdatasync newest segment", newest.id(), source))?;
        }
        storage.sync_dir().await.map_err(|source| WalError::Io {
            op: "fsync shard directory",
            path: storage.dir_path(),
            source,
        })?;
    }

    let next_lsn = match segments.last() {
        Some(newest) => newest.last_lsn() + 1,
        None => 1,
    };
    for segment in segments.iter().rev().skip(1) {
        segment.seal();
    }
    report.segments = segments.len();
    report.last_lsn = last_lsn;
    report.duration = started.elapsed();
    Ok(Recovered {
        segments,
        next_lsn,
        report,
    })
}
