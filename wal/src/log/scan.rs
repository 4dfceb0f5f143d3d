//! Scanning segment bytes: the checks that recovery, verification and backups share.
//!
//! Pure functions over bytes (a mapping, or a file read into memory); nothing here modifies
//! anything or decides what to do about damage. Recovery turns a torn tail into a cut;
//! a backup leaves it out of the snapshot; a verification reports it.
//!
//! The rules (wal/FORMAT.md, "Recovery"):
//! - segments are classified by header: activated ones first, then never-activated (all-zero
//!   header) ones; a zero header before an activated segment is damage;
//! - records are checked in offset order: bounds, kind, reserved bytes, CRC, archive, and an
//!   LSN that is exactly the next one;
//! - across segments, LSNs increase; neighbours (ids `N`, `N + 1`) are consecutive in LSN;
//! - after the last record only zeros follow, except in the newest segment, whose invalid or
//!   non-zero bytes are a torn tail.

use crate::constants::{
    PAGE_SIZE_BYTES, SEGMENT_HEADER_FIRST_LSN_OFFSET, SEGMENT_HEADER_LEN_BYTES,
};
use crate::format::{
    InvalidRecord, RecordCheck, RecordRef, SegmentHeader, SegmentHeaderCheck, check_record,
};
use crate::storage::SegmentId;

/// Invalid bytes where only valid ones may be: which segment, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment.
    pub segment: SegmentId,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// A segment's header, as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// In use: its records follow.
    Activated(SegmentHeader),
    /// All zero: prepared but never used; holds no acknowledged record.
    NeverActivated,
}

/// Checks the headers of a shard's segments (`(id, bytes)` in increasing id order) and
/// classifies them. A header must name its own id; a never-activated segment may only
/// follow every activated one. The caller checks sizes (it knows whether the bytes are a
/// whole file or a trimmed copy).
pub fn classify_headers<'b>(
    segments: impl IntoIterator<Item = (SegmentId, &'b [u8])>,
) -> Result<Vec<(SegmentId, HeaderState)>, Damage> {
    let mut states: Vec<(SegmentId, HeaderState)> = Vec::new();
    for (id, bytes) in segments {
        let damage = |reason: String| Damage {
            segment: id,
            offset: 0,
            reason,
        };
        match SegmentHeader::check(bytes) {
            SegmentHeaderCheck::Zero => states.push((id, HeaderState::NeverActivated)),
            SegmentHeaderCheck::Invalid(reason) => {
                return Err(damage(format!("segment header: {reason}")));
            }
            SegmentHeaderCheck::Valid(header) => {
                if let Some(&(zero_id, _)) = states
                    .iter()
                    .find(|(_, state)| *state == HeaderState::NeverActivated)
                {
                    return Err(Damage {
                        segment: zero_id,
                        offset: 0,
                        reason: format!(
                            "segment header is zero but segment {id} after it is in use"
                        ),
                    });
                }
                if header.segment_id != id {
                    return Err(damage(format!(
                        "header says segment {}, file name says {id}",
                        header.segment_id
                    )));
                }
                states.push((id, HeaderState::Activated(header)));
            }
        }
    }
    Ok(states)
}

/// Bytes at the end of the newest segment that are not whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornRegion {
    /// Offset of the first byte that is not part of a whole record.
    pub offset: usize,
    /// One past the last non-zero byte.
    pub end: usize,
    /// Why the bytes at `offset` are not a record (`None`: a zero header, with non-zero bytes
    /// further on).
    pub reason: Option<InvalidRecord>,
}

/// What one segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// The segment.
    pub id: SegmentId,
    /// LSN of the first record (from the header).
    pub first_lsn: u64,
    /// LSN of the last valid record, or `first_lsn - 1` if it has none.
    pub last_lsn: u64,
    /// End of the last valid record (the header's length if there is none).
    pub records_end: usize,
    /// Valid records.
    pub records: u64,
    /// A torn tail (only ever in the newest segment).
    pub torn: Option<TornRegion>,
}

/// Scans the activated segments of one shard in order, keeping what the checks across
/// segments need.
#[derive(Debug, Default)]
pub struct LogScanner {
    /// LSN of the last valid record so far (0: none yet).
    last_lsn: u64,
    /// The previous segment: its id and the end of its records.
    previous: Option<(SegmentId, usize)>,
}

impl LogScanner {
    /// A scanner at the start of a log.
    pub fn new() -> Self {
        Self::default()
    }

    /// LSN of the last valid record scanned (0 if none).
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Scans the records of the next activated segment: `bytes` is the segment from offset 0
    /// (the whole file, or a prefix that ends after its last record). `visit` sees every
    /// valid record with its offset, in order. Invalid bytes are damage unless `is_newest`,
    /// where they are reported as a torn tail.
    pub fn scan_segment<'b>(
        &mut self,
        header: &SegmentHeader,
        bytes: &'b [u8],
        is_newest: bool,
        mut visit: impl FnMut(usize, RecordRef<'b>),
    ) -> Result<SegmentScan, Damage> {
        let id = header.segment_id;
        let damage = |segment, offset: usize, reason: String| Damage {
            segment,
            offset: offset as u64,
            reason,
        };
        if header.first_lsn <= self.last_lsn {
            return Err(damage(
                id,
                SEGMENT_HEADER_FIRST_LSN_OFFSET,
                format!(
                    "first LSN {} is not after the previous segment's last LSN {}",
                    header.first_lsn, self.last_lsn
                ),
            ));
        }
        // LSNs are consecutive across the whole log when written; only removed segments leave
        // gaps. Between neighbours, a gap means records lost at the end of the older one (a
        // zeroed tail there would otherwise look like a clean end).
        if let Some((previous_id, previous_end)) = self.previous
            && previous_id + 1 == id
            && header.first_lsn != self.last_lsn + 1
        {
            return Err(damage(
                previous_id,
                previous_end,
                format!(
                    "records end at LSN {} but the next segment starts at LSN {}: records at \
                     the end of this segment are missing",
                    self.last_lsn, header.first_lsn
                ),
            ));
        }
        let mut offset = SEGMENT_HEADER_LEN_BYTES;
        let mut expected_lsn = header.first_lsn;
        let mut records = 0u64;
        let stop: Option<InvalidRecord> = loop {
            match check_record(bytes, offset) {
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
                    visit(offset, record);
                    records += 1;
                    expected_lsn += 1;
                    offset = end;
                }
            }
        };
        // After the last whole record, a segment holds only zeros, unless it is the newest and
        // a sync was cut short.
        let rest = &bytes[offset..];
        let torn = match last_nonzero(rest).map(|i| offset + i + 1) {
            Some(end) => {
                if !is_newest {
                    return Err(match stop {
                        Some(reason) => damage(id, offset, reason.to_string()),
                        None => damage(
                            id,
                            offset + first_nonzero(rest).unwrap_or(0),
                            "non-zero bytes after the last record".to_string(),
                        ),
                    });
                }
                Some(TornRegion {
                    offset,
                    end,
                    reason: stop,
                })
            }
            None => {
                // An invalid record made only of zero bytes cannot exist (a zero header ends
                // the records).
                assert!(
                    stop.is_none(),
                    "invalid record of zero bytes in segment {id}"
                );
                None
            }
        };
        let last_lsn = expected_lsn - 1;
        if records > 0 {
            self.last_lsn = last_lsn;
        }
        self.previous = Some((id, offset));
        Ok(SegmentScan {
            id,
            first_lsn: header.first_lsn,
            last_lsn,
            records_end: offset,
            records,
            torn,
        })
    }
}

/// Offset of the last non-zero byte of `bytes`, if any. Scans page by page from the end.
pub fn last_nonzero(bytes: &[u8]) -> Option<usize> {
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
