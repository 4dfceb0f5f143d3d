//! Recovery: rebuilding a log from its segment files.
//!
//! Segments are scanned in id order, records in offset order. Every record's bounds, reserved
//! bytes, kind, checksum, archive structure and LSN (consecutive within a segment, increasing
//! across segments) are checked, and each valid record is handed to the caller, which rebuilds
//! its index from them. The checks run on a thread of their own, ahead of the replay into the
//! index, which takes each segment once it is checked (two cores: ~25 % faster warm-cache
//! opens than one pass).
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

use crate::background::run_in_background;
use crate::constants::SEGMENT_HEADER_LEN_BYTES;
use crate::error::WalError;
use crate::format::{InvalidRecord, RecordRef, SegmentHeader, record_at_unchecked};
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

    // Scan the activated segments, in two passes that overlap: a thread checks every record
    // (bounds, checksum, archive, LSN order: `LogScanner`), segment after segment, while this
    // thread replays the records of the segments already checked, in order, into the
    // caller's index. The checksums were ~22 % of a warm-cache open on one thread.
    let newest_index = activated.len().checked_sub(1);
    let built: Vec<(SegmentHeader, Rc<Segment<S::File>>)> = activated
        .into_iter()
        .map(|(header, file)| {
            let segment = Segment::new(
                header.segment_id,
                file,
                header.first_lsn,
                SEGMENT_HEADER_LEN_BYTES,
                header.first_lsn - 1,
                false,
            );
            (header, Rc::new(segment))
        })
        .collect();
    let mut segments: Vec<Rc<Segment<S::File>>> = Vec::with_capacity(built.len());
    let mut torn: Option<TornRegion<S::File>> = None;
    let mut last_lsn = 0;
    // Scoped: the checking thread reads the mappings, so it must be done (it is joined here,
    // on every path) before anything can unmap or write them.
    std::thread::scope(|scope| -> Result<(), WalError> {
        let (checked_tx, checked_rx) = std::sync::mpsc::channel();
        let jobs: Vec<(SegmentHeader, &[u8])> = built
            .iter()
            .map(|(header, segment)| (*header, segment.whole_mapping()))
            .collect();
        std::thread::Builder::new()
            .name("terrace-recover".into())
            .spawn_scoped(scope, move || {
                // Unpinned: on the executor's own core it would only take turns with it.
                run_in_background(0);
                let mut scanner = LogScanner::new();
                for (index, (header, bytes)) in jobs.into_iter().enumerate() {
                    let is_newest = Some(index) == newest_index;
                    let checked = scanner.scan_segment(&header, bytes, is_newest, |_, _| {});
                    let failed = checked.is_err();
                    // A receiver gone means recovery already failed on an earlier segment.
                    if checked_tx.send(checked).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|source| WalError::Io {
                op: "start the recovery checking thread",
                path: storage.dir_path(),
                source,
            })?;
        for (_, segment) in &built {
            let id = segment.id();
            // The thread sends one result per segment and stops after a failure, which ends
            // recovery here; a closed channel before that means it panicked (and the scope
            // passes the panic on).
            let Ok(checked) = checked_rx.recv() else {
                break;
            };
            let scanned = checked.map_err(corrupt_from)?;
            let bytes = segment.whole_mapping();
            let mut offset = SEGMENT_HEADER_LEN_BYTES;
            while offset < scanned.records_end {
                // SAFETY: the checking thread validated every record in
                // `[header, records_end)` of these very bytes, which nothing writes during
                // recovery.
                let record = unsafe { record_at_unchecked(bytes, offset) };
                segment.extend_recovered(offset + record.total_len, record.lsn);
                visit(segment, offset, record);
                report.records += 1;
                report.record_bytes += record.total_len as u64;
                offset += record.total_len;
            }
            assert_eq!(
                (offset, segment.last_lsn()),
                (scanned.records_end, scanned.last_lsn),
                "segment {id}: replay and check disagree"
            );
            if scanned.records > 0 {
                last_lsn = scanned.last_lsn;
            }
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
                torn = Some((Rc::clone(segment), region.offset, region.end));
            }
            segments.push(Rc::clone(segment));
        }
        Ok(())
    })?;
    assert_eq!(
        segments.len(),
        built.len(),
        "a recovery check stopped early"
    );
    drop(built);

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
