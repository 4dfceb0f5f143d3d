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

use crate::constants::{PAGE_SIZE_BYTES, SEGMENT_HEADER_LEN_BYTES};
use crate::error::WalError;
use crate::format::{
    InvalidRecord, RecordCheck, RecordRef, SegmentHeader, SegmentHeaderCheck, check_record,
};
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

/// Offset of the last non-zero byte of `bytes`, if any. Scans page by page from the end.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(PAGE_SIZE_BYTES);
        let page = &bytes[start..end];
        if page.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return page.iter().rposition(|&b| b != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

/// Offset of the first non-zero byte of `bytes`, if any.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + PAGE_SIZE_BYTES).min(bytes.len());
        let page = &bytes[start..end];
        if page.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return page.iter().position(|&b| b != 0).map(|i| start + i);
        }
        start = end;
    }
    None
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
    for &id in &ids {
        let file = storage
            .open(id)
            .map_err(|source| io_error("open segment", id, source))?;
        files.push((id, file));
    }
    let mut activated = Vec::new();
    let mut never_activated = Vec::new();
    for (id, file) in files {
        // SAFETY: the mapping is `len` bytes and nothing writes it during recovery.
        let bytes = unsafe { std::slice::from_raw_parts(file.as_mut_ptr(), file.len()) };
        match SegmentHeader::check(bytes) {
            SegmentHeaderCheck::Zero => never_activated.push((id, file)),
            SegmentHeaderCheck::Invalid(reason) => {
                return Err(corrupt(id, 0, format!("segment header: {reason}")));
            }
            SegmentHeaderCheck::Valid(header) => {
                if let Some((zero_id, _)) = never_activated.first() {
                    return Err(corrupt(
                        *zero_id,
                        0,
                        format!("segment header is zero but segment {id} after it is in use"),
                    ));
                }
                if header.segment_id != id {
                    return Err(corrupt(
                        id,
                        0,
                        format!(
                            "header says segment {}, file name says {id}",
                            header.segment_id
                        ),
                    ));
                }
                if header.size_bytes != bytes.len() as u64 {
                    return Err(corrupt(
                        id,
                        0,
                        format!(
                            "header says {} bytes, file has {}: the file was truncated or extended",
                            header.size_bytes,
                            bytes.len()
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
    let mut last_lsn = 0u64;
    // The previous segment: its id and the end of its records.
    let mut previous: Option<(SegmentId, usize)> = None;
    let mut torn: Option<TornRegion<S::File>> = None;
    for (index, (header, file)) in activated.into_iter().enumerate() {
        let id = header.segment_id;
        let is_newest = Some(index) == newest_index;
        if header.first_lsn <= last_lsn {
            return Err(corrupt(
                id,
                crate::constants::SEGMENT_HEADER_FIRST_LSN_OFFSET,
                format!(
                    "first LSN {} is not after the previous segment's last LSN {last_lsn}",
                    header.first_lsn
                ),
            ));
        }
        // LSNs are consecutive across the whole log when written; only removed segments leave
        // gaps. Between neighbours, a gap means records lost at the end of the older one (a
        // zeroed tail there would otherwise look like a clean end).
        if let Some((previous_id, previous_end)) = previous
            && previous_id + 1 == id
            && header.first_lsn != last_lsn + 1
        {
            return Err(corrupt(
                previous_id,
                previous_end,
                format!(
                    "records end at LSN {last_lsn} but the next segment starts at LSN {}: \
                     records at the end of this segment are missing",
                    header.first_lsn
                ),
            ));
        }
        let segment = Rc::new(Segment::new(
            id,
            file,
            header.first_lsn,
            SEGMENT_HEADER_LEN_BYTES,
            header.first_lsn - 1,
            false,
        ));
        let whole = segment.whole_mapping();
        let mut offset = SEGMENT_HEADER_LEN_BYTES;
        let mut expected_lsn = header.first_lsn;
        let stop: Option<InvalidRecord> = loop {
            match check_record(whole, offset) {
                RecordCheck::End => break None,
                RecordCheck::Invalid(reason) => break Some(reason),
                RecordCheck::Valid(record) => {
                    if record.lsn != expected_lsn {
                        break Some(InvalidRecord::LsnOutOfSequence {
                            found: record.lsn,
                            expected: expected_lsn,
                        });
                    }
                    let end = offset + record.total_len;
                    segment.extend_recovered(end, record.lsn);
                    visit(&segment, offset, segment.record(offset));
                    report.records += 1;
                    report.record_bytes += record.total_len as u64;
                    last_lsn = record.lsn;
                    expected_lsn += 1;
                    offset = end;
                }
            }
        };
        // After the last whole record, a segment holds only zeros, unless it is the newest and
        // a sync was cut short.
        let rest = &whole[offset..];
        if let Some(garbage_end) = last_nonzero(rest).map(|i| offset + i + 1) {
            if !is_newest {
                return Err(match stop {
                    Some(reason) => corrupt(id, offset, reason.to_string()),
                    None => corrupt(
                        id,
                        offset + first_nonzero(rest).unwrap_or(0),
                        "non-zero bytes after the last record".to_string(),
                    ),
                });
            }
            let tail = TornTail {
                segment: id,
                offset: offset as u64,
                garbage_bytes: (garbage_end - offset) as u64,
                reason: stop,
            };
            if policy == RecoveryPolicy::Strict {
                return Err(WalError::TornTail {
                    path: storage.segment_path(id),
                    offset: tail.offset,
                    garbage_bytes: tail.garbage_bytes,
                });
            }
            report.torn_tail = Some(tail);
            torn = Some((Rc::clone(&segment), offset, garbage_end));
        } else if let Some(reason) = stop {
            // An invalid record whose bytes are all zero cannot happen (a zero header is End).
            unreachable!("invalid record ({reason}) made of zero bytes in segment {id}");
        }
        previous = Some((id, offset));
        segments.push(segment);
    }

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
    if !never_activated.is_empty() {
        for (id, file) in never_activated {
            drop(file);
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
