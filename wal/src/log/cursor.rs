//! Reading a log in LSN order from a given LSN on, as records are appended: what an active
//! streams to a passive. A cursor holds the segment it reads (so the mapping stays valid even
//! if compaction removes the file) and moves to the next segment when it reaches the end of a
//! sealed one. If the records it needs next are gone (compaction removed a segment the cursor
//! had not reached), it says so: the reader must start over from a snapshot.

use super::Log;
use super::segment::Segment;
use crate::constants::SEGMENT_HEADER_LEN_BYTES;
use crate::storage::{SegmentFile, Storage};
use std::rc::Rc;

/// Where a reader of the log stands: the next record it will read.
#[derive(Debug)]
pub struct LogCursor<F> {
    segment: Rc<Segment<F>>,
    offset: usize,
    next_lsn: u64,
}

/// The records a cursor needs next are no longer in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the log no longer holds LSN {lsn} (compaction removed its segment): start from a snapshot"
)]
pub struct FellBehind {
    /// The LSN the cursor needed.
    pub lsn: u64,
}

impl<S: Storage> Log<S> {
    /// A cursor whose first record will be the one with LSN `lsn` (`lsn` may be the next LSN
    /// to be appended). `None` if the log no longer (or does not yet) hold it.
    pub fn cursor_at(&self, lsn: u64) -> Option<LogCursor<S::File>> {
        if lsn > self.next_lsn() || lsn == 0 {
            return None;
        }
        let segment = self
            .segments()
            .find(|s| s.first_lsn() <= lsn && lsn <= s.last_lsn() + 1)?;
        // Walk to the record: LSNs are consecutive within a segment.
        let mut offset = SEGMENT_HEADER_LEN_BYTES;
        for _ in segment.first_lsn()..lsn {
            offset += segment.record(offset).total_len;
        }
        Some(LogCursor {
            segment: Rc::clone(segment),
            offset,
            next_lsn: lsn,
        })
    }
}

impl<S: Storage> Log<S> {
    /// Whether the log holds every record from LSN `lsn` to its end, with no gap (a cursor
    /// at `lsn` would not fall behind unless compaction removes segments later).
    pub fn holds_from(&self, lsn: u64) -> bool {
        if self.cursor_at(lsn).is_none() {
            return false;
        }
        let mut expected: Option<u64> = None;
        for segment in self.segments().filter(|s| s.last_lsn() + 1 >= lsn) {
            if let Some(first) = expected
                && segment.first_lsn() != first
            {
                return false;
            }
            expected = Some(segment.last_lsn() + 1);
        }
        true
    }
}

impl<F: SegmentFile> LogCursor<F> {
    /// LSN of the next record it will read.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The next record, whole (header, payload, padding), if its LSN is at most `up_to` (for
    /// example the log's durable LSN). `Ok(None)`: nothing more to read yet.
    pub fn next<'c, S: Storage<File = F>>(
        &'c mut self,
        log: &Log<S>,
        up_to: u64,
    ) -> Result<Option<(u64, &'c [u8])>, FellBehind> {
        if self.next_lsn > up_to {
            return Ok(None);
        }
        if self.offset >= self.segment.written_bytes() {
            if !self.segment.is_sealed() {
                return Ok(None);
            }
            // The next segment must start exactly where this one ended; if it starts later,
            // the segments between were removed.
            let Some(next) = log.segments().find(|s| s.id() > self.segment.id()) else {
                return Ok(None);
            };
            if next.first_lsn() != self.next_lsn {
                return Err(FellBehind { lsn: self.next_lsn });
            }
            self.segment = Rc::clone(next);
            self.offset = SEGMENT_HEADER_LEN_BYTES;
            if self.offset >= self.segment.written_bytes() {
                return Ok(None);
            }
        }
        let record = self.segment.record(self.offset);
        assert_eq!(record.lsn, self.next_lsn, "log cursor out of step");
        let start = self.offset;
        let end = start + record.total_len;
        self.offset = end;
        self.next_lsn += 1;
        Ok(Some((record.lsn, self.segment.slice(start, end))))
    }
}
