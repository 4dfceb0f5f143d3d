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
    Body, InvalidRecord, RecordCheck, RecordRef, SegmentHeader, SegmentHeaderCheck, check_record,
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
        visit: impl FnMut(usize, RecordRef<'b>),
    ) -> Result<SegmentScan, Damage> {
        let mut cursor = self.begin_segment(header)?;
        cursor.advance(bytes, visit);
        self.end_segment(cursor, bytes, is_newest)
    }

    /// Starts the next activated segment, checking its first LSN against the segments
    /// before it. Feed its bytes to the cursor ([`SegmentCursor::advance`]) as they arrive,
    /// then finish with [`LogScanner::end_segment`].
    pub fn begin_segment(&self, header: &SegmentHeader) -> Result<SegmentCursor, Damage> {
        self.check_follows(header)?;
        Ok(SegmentCursor::new(header))
    }

    /// Takes the next activated segment as checked on its own ([`check_segment`], possibly
    /// on another thread): the checks across segments first, exactly as
    /// [`LogScanner::scan_segment`] makes them before it looks at the records, then the
    /// segment's own result. Segments must be accepted in order.
    pub fn accept(
        &mut self,
        header: &SegmentHeader,
        checked: Result<SegmentScan, Damage>,
    ) -> Result<SegmentScan, Damage> {
        self.check_follows(header)?;
        let scan = checked?;
        assert_eq!(
            (scan.id, scan.first_lsn),
            (header.segment_id, header.first_lsn),
            "a segment accepted with another segment's check"
        );
        self.note(&scan);
        Ok(scan)
    }

    /// The checks of a segment against the segments before it.
    fn check_follows(&self, header: &SegmentHeader) -> Result<(), Damage> {
        let id = header.segment_id;
        if header.first_lsn <= self.last_lsn {
            return Err(Damage {
                segment: id,
                offset: SEGMENT_HEADER_FIRST_LSN_OFFSET as u64,
                reason: format!(
                    "first LSN {} is not after the previous segment's last LSN {}",
                    header.first_lsn, self.last_lsn
                ),
            });
        }
        // LSNs are consecutive across the whole log when written; only removed segments leave
        // gaps. Between neighbours, a gap means records lost at the end of the older one (a
        // zeroed tail there would otherwise look like a clean end).
        if let Some((previous_id, previous_end)) = self.previous
            && previous_id + 1 == id
            && header.first_lsn != self.last_lsn + 1
        {
            return Err(Damage {
                segment: previous_id,
                offset: previous_end as u64,
                reason: format!(
                    "records end at LSN {} but the next segment starts at LSN {}: records at \
                     the end of this segment are missing",
                    self.last_lsn, header.first_lsn
                ),
            });
        }
        Ok(())
    }

    /// Remembers a scanned segment for the checks of the ones after it.
    fn note(&mut self, scan: &SegmentScan) {
        if scan.records > 0 {
            self.last_lsn = scan.last_lsn;
        }
        self.previous = Some((scan.id, scan.records_end));
    }

    /// Finishes a segment: `bytes` is all of it (as for [`LogScanner::scan_segment`]), and
    /// the cursor must have advanced over all of it. Decides what stops the records and
    /// checks that only zeros follow them (a torn tail if `is_newest`, damage otherwise).
    pub fn end_segment(
        &mut self,
        cursor: SegmentCursor,
        bytes: &[u8],
        is_newest: bool,
    ) -> Result<SegmentScan, Damage> {
        let scan = finish_segment(cursor, bytes, is_newest)?;
        self.note(&scan);
        Ok(scan)
    }
}

/// Checks one activated segment on its own: its records, and what follows them. The checks
/// across segments are left to [`LogScanner::accept`], so that segments can be checked in any
/// order, on any thread; `bytes` and `is_newest` are as for [`LogScanner::scan_segment`].
/// `visit` sees every valid record with its offset, in order.
pub fn check_segment<'b>(
    header: &SegmentHeader,
    bytes: &'b [u8],
    is_newest: bool,
    visit: impl FnMut(usize, RecordRef<'b>),
) -> Result<SegmentScan, Damage> {
    let mut cursor = SegmentCursor::new(header);
    cursor.advance(bytes, visit);
    finish_segment(cursor, bytes, is_newest)
}

/// Decides what stops a segment's records (the cursor has advanced over all of `bytes`) and
/// checks that only zeros follow them (a torn tail if `is_newest`, damage otherwise).
fn finish_segment(
    cursor: SegmentCursor,
    bytes: &[u8],
    is_newest: bool,
) -> Result<SegmentScan, Damage> {
    let SegmentCursor {
        id,
        first_lsn,
        offset,
        expected_lsn,
        records,
    } = cursor;
    let damage = |offset: usize, reason: String| Damage {
        segment: id,
        offset: offset as u64,
        reason,
    };
    let stop = match check_record(bytes, offset) {
        RecordCheck::End => None,
        RecordCheck::Invalid(reason) => Some(reason),
        // `advance` stops at a valid record only when its LSN is not the next one, or when
        // it is a tombstone whose item does not follow it.
        RecordCheck::Valid(record) if record.lsn == expected_lsn => {
            assert!(
                record.item_follows(),
                "segment {id}: end_segment before the cursor advanced over all bytes"
            );
            Some(InvalidRecord::ItemMissing { lsn: record.lsn })
        }
        RecordCheck::Valid(record) => Some(InvalidRecord::LsnOutOfSequence {
            found: record.lsn,
            expected: expected_lsn,
        }),
    };
    // After the last whole record, a segment holds only zeros, unless it is the newest and
    // a sync was cut short.
    let rest = &bytes[offset..];
    let torn = match last_nonzero(rest).map(|i| offset + i + 1) {
        Some(end) => {
            if !is_newest {
                return Err(match stop {
                    Some(reason) => damage(offset, reason.to_string()),
                    None => damage(
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
    Ok(SegmentScan {
        id,
        first_lsn,
        last_lsn: expected_lsn - 1,
        records_end: offset,
        records,
        torn,
    })
}

/// Where the scan of one segment stands: records before `offset` are checked and visited.
#[derive(Debug)]
pub struct SegmentCursor {
    id: SegmentId,
    first_lsn: u64,
    offset: usize,
    expected_lsn: u64,
    records: u64,
}

impl SegmentCursor {
    /// A cursor at the first record of the segment `header` starts.
    fn new(header: &SegmentHeader) -> Self {
        Self {
            id: header.segment_id,
            first_lsn: header.first_lsn,
            offset: SEGMENT_HEADER_LEN_BYTES,
            expected_lsn: header.first_lsn,
            records: 0,
        }
    }

    /// Checks and visits the records that lie whole within `available` (a prefix of the
    /// segment, from offset 0, that may grow between calls), stopping at the first one that
    /// is not valid within it. What stops it is decided only at the end
    /// ([`LogScanner::end_segment`]): a record may just not have arrived whole yet.
    pub fn advance<'b>(
        &mut self,
        available: &'b [u8],
        mut visit: impl FnMut(usize, RecordRef<'b>),
    ) {
        while let RecordCheck::Valid(record) = check_record(available, self.offset) {
            if record.lsn != self.expected_lsn {
                return;
            }
            // A tombstone written with the item after it counts only with that item: alone
            // (a power cut kept one and not the other) it would delete the item.
            let partner = if record.item_follows() {
                match partner_of(available, self.offset, &record) {
                    Some(partner) => Some(partner),
                    None => return,
                }
            } else {
                None
            };
            for record in std::iter::once(record).chain(partner) {
                visit(self.offset, record);
                self.records += 1;
                self.expected_lsn += 1;
                self.offset += record.total_len;
            }
        }
    }
}

/// The put that must follow the tombstone `record` at `offset` (`RECORD_FLAG_ITEM_FOLLOWS`):
/// the next record, valid, with the next LSN, of the same key.
fn partner_of<'b>(
    available: &'b [u8],
    offset: usize,
    record: &RecordRef<'b>,
) -> Option<RecordRef<'b>> {
    let RecordCheck::Valid(next) = check_record(available, offset + record.total_len) else {
        return None;
    };
    // SAFETY: both records passed `check_record` just now, on these bytes.
    let same_key = match unsafe { (record.body_unchecked(), next.body_unchecked()) } {
        (Body::Delete(delete), Body::Put(put)) => delete.key.as_ref() == put.key.as_ref(),
        _ => false,
    };
    (next.lsn == record.lsn + 1 && same_key).then_some(next)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Put, ValueParts, write_record};

    /// A 16-aligned segment of `records` puts (values of varied sizes), with `garbage` bytes
    /// written after them.
    fn segment(records: u64, garbage: &[u8]) -> (SegmentHeader, Vec<u128>, usize) {
        let size = 1 << 16;
        let mut words = vec![0u128; size / 16];
        // SAFETY: u128 has no invalid bit patterns and u8 has alignment 1.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size) };
        let header = SegmentHeader {
            segment_id: 1,
            size_bytes: size as u64,
            first_lsn: 10,
            version: crate::constants::FORMAT_VERSION,
        };
        bytes[..SEGMENT_HEADER_LEN_BYTES].copy_from_slice(&header.encode());
        let mut offset = SEGMENT_HEADER_LEN_BYTES;
        for i in 0..records {
            let value = vec![b'v'; (i as usize * 37) % 500];
            let key = format!("key{i}");
            let body = Put {
                key: key.as_bytes(),
                value: ValueParts::whole(&value),
                flags: 0,
                expiry: 0,
                cas: 10 + i,
            };
            offset += write_record(&mut bytes[offset..], 10 + i, &body).expect("fits");
        }
        bytes[offset..offset + garbage.len()].copy_from_slice(garbage);
        (header, words, offset)
    }

    fn as_bytes(words: &[u128]) -> &[u8] {
        // SAFETY: as in `segment`.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 16) }
    }

    /// Feeding a segment in pieces of any size finds exactly what one scan of the whole
    /// finds: the same records in the same order, the same end, the same torn tail. (The
    /// backup verifier feeds pieces as they are read.)
    #[test]
    fn pieces_scan_like_the_whole() {
        for garbage in [&[][..], &[7u8; 5][..], &[0xff; 40][..]] {
            let (header, words, _) = segment(60, garbage);
            let bytes = as_bytes(&words);
            let mut whole_visits = Vec::new();
            let whole = LogScanner::new().scan_segment(&header, bytes, true, |offset, r| {
                whole_visits.push((offset, r.lsn));
            });
            for piece in [1usize, 15, 16, 100, 4096, 70_000] {
                let mut scanner = LogScanner::new();
                let mut visits = Vec::new();
                let mut cursor = scanner.begin_segment(&header).expect("begins");
                let mut end = 0;
                while end < bytes.len() {
                    end = (end + piece).min(bytes.len());
                    cursor.advance(&bytes[..end], |offset, r| visits.push((offset, r.lsn)));
                }
                let pieces = scanner.end_segment(cursor, bytes, true);
                assert_eq!(pieces, whole, "pieces of {piece}");
                assert_eq!(visits, whole_visits, "pieces of {piece}");
            }
            let whole = whole.expect("newest segment: garbage is a torn tail");
            assert_eq!(whole.records, 60);
            assert_eq!(whole.torn.is_some(), !garbage.is_empty());
        }
    }

    /// Garbage after the records of a segment that is not the newest is damage, named at
    /// its offset.
    #[test]
    fn garbage_in_a_sealed_segment_is_damage() {
        let (header, words, end) = segment(5, &[1, 2, 3]);
        let damage = LogScanner::new()
            .scan_segment(&header, as_bytes(&words), false, |_, _| {})
            .expect_err("damage");
        assert_eq!((damage.segment, damage.offset), (1, end as u64));
    }
}
