//! Recovery: rebuilding a log from its segment files.
//!
//! Segments are scanned in id order, records in offset order. Every record's bounds, reserved
//! bytes, kind, checksum, archive structure and LSN (consecutive within a segment, increasing
//! across segments) are checked, and each valid record is handed to the caller, which rebuilds
//! its index from them. Segments are checked by two threads, a helper and the opening thread,
//! each taking the next unchecked segment; the check also hands each valid record to the
//! caller's preparer while its bytes are in cache, and the opening thread then replays the
//! prepared records into the index in log order, without reading them again. The checks
//! across segments are made in log order as each segment is replayed, so the damage reported
//! is always the first in the log.
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
use crate::format::{InvalidRecord, RecordRef, SegmentHeader};
use crate::log::scan::{
    Damage, HeaderState, LogScanner, SegmentScan, check_segment, classify_headers, last_nonzero,
};
use crate::log::segment::Segment;
use crate::storage::{SegmentFile as _, SegmentId, Storage};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Called by recovery with every valid record, in log order: its segment, its offset, the record.
pub type RecordVisitor<'v, F> = dyn FnMut(&Rc<Segment<F>>, usize, RecordRef<'_>) + 'v;

/// Called by recovery on the thread that checks a segment, with each valid record while its
/// bytes are in that thread's cache: what the visitor will need of it, so that the replay
/// (which runs on another thread, later) need not read the record again.
pub type RecordPreparer<'p, P> = dyn Fn(RecordRef<'_>) -> P + Sync + 'p;

/// Called by recovery with every valid record, in log order, and what the preparer made of it.
pub type PreparedVisitor<'v, F, P> = dyn FnMut(&Rc<Segment<F>>, RecoveredRecord, P) + 'v;

/// Where a recovered record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredRecord {
    /// Offset in its segment.
    pub offset: usize,
    /// Bytes it occupies, padding included.
    pub total_len: usize,
    /// Its LSN.
    pub lsn: u64,
}

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

/// Recovers the segments of `storage`, calling `prepare` with every valid record as it is
/// checked (on either of two threads, in no particular order) and `visit` with every valid
/// record and what `prepare` made of it, in log order, on this thread.
pub(crate) async fn recover<S: Storage, P: Send>(
    storage: &S,
    policy: RecoveryPolicy,
    prepare: &RecordPreparer<'_, P>,
    visit: &mut PreparedVisitor<'_, S::File, P>,
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

    // Only the newest activated segment can hold bytes that never reached the disk (every
    // segment before it was synced whole before its header was written), and after it come
    // at most the spare and a segment whose creation was cut short: read those from the
    // disk, not from what the OS kept of them (see `Storage::drop_cached`).
    for &id in ids.iter().rev().take(UNCACHED_NEWEST_SEGMENTS) {
        storage
            .drop_cached(id)
            .map_err(|source| io_error("drop cached pages of segment", id, source))?;
    }

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
    for (id, file) in &files {
        // SAFETY: the mapping is `len` bytes and nothing writes it during recovery.
        let bytes = unsafe { std::slice::from_raw_parts(file.as_mut_ptr(), file.len()) };
        if let Some(version) = SegmentHeader::newer_version(bytes) {
            return Err(WalError::NewerFormat {
                path: storage.segment_path(*id),
                version,
            });
        }
    }
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

    // Scan the activated segments: every record is checked (bounds, checksum, archive, LSN
    // order within its segment: `check_segment`), then replayed, in log order, into the
    // caller's index on this thread. Segments are checked on their own, by whichever of two
    // threads claims one first: a helper that only checks, and this thread, which checks
    // the next unclaimed segment whenever the one it must replay next is not checked yet.
    // The two share the work instead of each owning one half (checking and replaying each
    // take about half of a warm-cache open), and the checks across segments are made here,
    // in order, as each segment is accepted (`LogScanner::accept`), so the first damage in
    // log order is the one reported, as in a single pass.
    let newest_index = activated.len().checked_sub(1);
    // A version-1 tail takes no more appends (see `FORMAT_VERSION_OLDEST_READ`): the next
    // record starts a segment of the current version.
    let newest_version = activated.last().map(|(header, _)| header.version);
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
    let jobs: Vec<(SegmentHeader, &[u8])> = built
        .iter()
        .map(|(header, segment)| (*header, segment.whole_mapping()))
        .collect();
    let claims = Claims {
        next: AtomicUsize::new(0),
        replaying: AtomicUsize::new(0),
        count: jobs.len(),
    };
    // Scoped: the checking thread reads the mappings, so it must be done (it is joined here,
    // on every path) before anything can unmap or write them.
    std::thread::scope(|scope| -> Result<(), WalError> {
        let (jobs, claims) = (&jobs, &claims);
        // A segment's check also prepares its valid records, in order, for the replay.
        let check = |index: usize| {
            let (header, bytes) = &jobs[index];
            let mut prepared = Vec::new();
            check_segment(
                header,
                bytes,
                Some(index) == newest_index,
                |offset, record| {
                    let at = RecoveredRecord {
                        offset,
                        total_len: record.total_len,
                        lsn: record.lsn,
                    };
                    prepared.push((at, prepare(record)));
                },
            )
            .map(|scan| (scan, prepared))
        };
        let (checked_tx, checked_rx) = std::sync::mpsc::channel();
        let helper = std::thread::Builder::new()
            .name("terrace-recover".into())
            .spawn_scoped(scope, move || {
                // Unpinned: on the executor's own core it would only take turns with it.
                run_in_background(0);
                loop {
                    let index = match claims.claim() {
                        Claim::Segment(index) => index,
                        // Unparked when the replay moves on; the timeout only bounds a
                        // missed unpark.
                        Claim::Wait => {
                            std::thread::park_timeout(Duration::from_millis(1));
                            continue;
                        }
                        Claim::Done => return,
                    };
                    let checked = check(index);
                    let failed = checked.is_err();
                    // A receiver gone means recovery already failed on an earlier segment;
                    // after damage, the segments after it no longer matter.
                    if checked_tx.send((index, checked)).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|source| WalError::Io {
                op: "start the recovery checking thread",
                path: storage.dir_path(),
                source,
            })?;
        let helper = helper.thread().clone();
        // Stops the helper from claiming more once this thread is done, on every path.
        let _stop_claims = StopClaims(claims, &helper);
        let mut ready: Vec<Option<Checked<P>>> = (0..jobs.len()).map(|_| None).collect();
        let mut scanner = LogScanner::new();
        for (index, (header, segment)) in built.iter().enumerate() {
            let id = segment.id();
            claims.replaying.store(index, Ordering::Release);
            helper.unpark();
            let checked = loop {
                if let Some(checked) = ready[index].take() {
                    break Some(checked);
                }
                if let Ok((done, checked)) = checked_rx.try_recv() {
                    ready[done] = Some(checked);
                    continue;
                }
                // Not checked yet: check the next unclaimed segment here rather than wait.
                if let Claim::Segment(claimed) = claims.claim() {
                    ready[claimed] = Some(check(claimed));
                    continue;
                }
                // The helper holds it (every segment up to `CHECK_AHEAD_SEGMENTS` past this
                // one is claimed). It sends one result per segment it claimed and stops
                // only after damage, which ends recovery at that segment or before; a closed
                // channel here means it panicked (and the scope passes the panic on).
                match checked_rx.recv() {
                    Ok((done, checked)) => ready[done] = Some(checked),
                    Err(_) => break None,
                }
            };
            let Some(checked) = checked else {
                break;
            };
            let (checked, prepared) = match checked {
                Ok((scan, prepared)) => (Ok(scan), prepared),
                Err(damage) => (Err(damage), Vec::new()),
            };
            let scanned = scanner.accept(header, checked).map_err(corrupt_from)?;
            let mut offset = SEGMENT_HEADER_LEN_BYTES;
            for (record, prepared) in prepared {
                assert_eq!(
                    record.offset, offset,
                    "segment {id}: prepared records out of order"
                );
                segment.extend_recovered(offset + record.total_len, record.lsn);
                visit(segment, record, prepared);
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
    if let Some(newest) = segments.last()
        && newest_version.is_some_and(|version| version < crate::constants::FORMAT_VERSION)
    {
        newest.seal();
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

/// Newest segment files whose cached pages recovery drops before reading them: the newest
/// activated segment, the spare after it, one whose creation a crash cut short, and one more
/// for a crash while the spare was being activated.
const UNCACHED_NEWEST_SEGMENTS: usize = 4;

/// Segments checked ahead of the one being replayed, at most: each holds its prepared records
/// (~48 bytes a record: 19 MB for a 64 MiB segment of 100-byte values) until it is replayed,
/// and two keep the checking thread busy while the replay takes one.
const CHECK_AHEAD_SEGMENTS: usize = 2;

/// Hands out the segments to check, in log order, to whichever thread asks first, at most
/// [`CHECK_AHEAD_SEGMENTS`] past the one being replayed.
struct Claims {
    /// The next segment nobody has claimed.
    next: AtomicUsize,
    /// The segment being replayed.
    replaying: AtomicUsize,
    count: usize,
}

enum Claim {
    /// Check this segment.
    Segment(usize),
    /// Too far ahead of the replay: ask again once it has moved on.
    Wait,
    /// Every segment is claimed.
    Done,
}

impl Claims {
    fn claim(&self) -> Claim {
        loop {
            let next = self.next.load(Ordering::Acquire);
            if next >= self.count {
                return Claim::Done;
            }
            if next > self.replaying.load(Ordering::Acquire) + CHECK_AHEAD_SEGMENTS {
                return Claim::Wait;
            }
            if self
                .next
                .compare_exchange(next, next + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Claim::Segment(next);
            }
        }
    }
}

/// Ends the claiming of segments to check when dropped, and wakes the checking thread to see
/// it: it then stops after the segment it holds.
struct StopClaims<'a>(&'a Claims, &'a std::thread::Thread);

impl Drop for StopClaims<'_> {
    fn drop(&mut self) {
        self.0.next.store(self.0.count, Ordering::Release);
        self.1.unpark();
    }
}

/// A segment checked, with its valid records prepared, or the damage found in it.
type Checked<P> = Result<(SegmentScan, Vec<(RecoveredRecord, P)>), Damage>;
