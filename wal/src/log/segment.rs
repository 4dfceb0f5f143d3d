//! One segment of a log: its mapping, its append tail, and what the log knows about it.
//!
//! Invariants:
//! - Bytes `[SEGMENT_HEADER_LEN_BYTES, written)` are whole, valid records and never change
//!   again; readers may borrow them for as long as they hold the segment (`Rc`), even after
//!   the file is removed (the mapping stays valid until the last reference goes).
//! - Bytes `[written, len)` are zero (recovery zeroes a torn tail) and only the log writes
//!   them, through the raw pointer, one record at a time.
//! - Bytes `[0, SEGMENT_HEADER_LEN_BYTES)` (the header) are written once. While the header is
//!   pending, no slice covering them is handed out.

use crate::constants::{RECORD_ALIGN_BYTES, SEGMENT_HEADER_LEN_BYTES};
use crate::format::{RecordRef, SegmentHeader, record_at_unchecked};
use crate::storage::{SegmentFile, SegmentId};
use std::cell::Cell;
use std::fmt;

/// Bytes of a cache line (x86-64).
#[cfg(target_arch = "x86_64")]
const CACHE_LINE_BYTES: usize = 64;

/// How far past the tail an append prefetches: a few records of 100-byte values ahead.
#[cfg(target_arch = "x86_64")]
const TAIL_PREFETCH_BYTES: usize = 512;

/// A segment of the log.
pub struct Segment<F> {
    id: SegmentId,
    file: F,
    /// LSN of the first record (written in the header).
    first_lsn: u64,
    /// End of the records written so far.
    written: Cell<usize>,
    /// LSN of the last record written, or `first_lsn - 1` if none.
    last_lsn: Cell<u64>,
    /// Whether the header still has to be written (durable logs write it only once every
    /// earlier segment is durable; see `group_commit`).
    header_pending: Cell<bool>,
    /// No more records will be appended.
    sealed: Cell<bool>,
    /// Bytes of records that are still needed (live items and, conservatively, tombstones and
    /// flushes). Maintained by the store.
    live_bytes: Cell<u64>,
    /// The part of `live_bytes` that is tombstones and flushes: counted live until a
    /// compaction (or a passive's reclaim, for tombstones) finds them no longer needed, never
    /// retired one by one. Maintained by the store.
    held_bytes: Cell<u64>,
    /// Latest expiry of any item stored here (`u32::MAX` if one never expires): once the clock
    /// passes it, every item of this segment is dead. Maintained by the store.
    expiry_max: Cell<u32>,
    /// Pins held (snapshots, backups): a pinned segment's file is not removed.
    pins: Cell<u32>,
    /// Compaction has moved everything needed out of it; the file goes once unpinned.
    retired: Cell<bool>,
}

impl<F> fmt::Debug for Segment<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("first_lsn", &self.first_lsn)
            .field("written", &self.written.get())
            .field("last_lsn", &self.last_lsn.get())
            .field("sealed", &self.sealed.get())
            .field("live_bytes", &self.live_bytes.get())
            .field("pins", &self.pins.get())
            .field("retired", &self.retired.get())
            .finish()
    }
}

impl<F> Segment<F> {
    /// The segment id.
    pub fn id(&self) -> SegmentId {
        self.id
    }
}

impl<F: SegmentFile> Segment<F> {
    /// A segment whose records `[SEGMENT_HEADER_LEN_BYTES, written)` exist already (recovery)
    /// or none yet (a new segment: `written == SEGMENT_HEADER_LEN_BYTES`).
    pub(crate) fn new(
        id: SegmentId,
        file: F,
        first_lsn: u64,
        written: usize,
        last_lsn: u64,
        header_pending: bool,
    ) -> Self {
        assert!(written >= SEGMENT_HEADER_LEN_BYTES && written <= file.len());
        assert_eq!(written % RECORD_ALIGN_BYTES, 0);
        assert!(first_lsn > 0 && last_lsn >= first_lsn - 1);
        assert!(
            id <= u64::from(u32::MAX),
            "segment id {id} does not fit the index"
        );
        Self {
            id,
            file,
            first_lsn,
            written: Cell::new(written),
            last_lsn: Cell::new(last_lsn),
            header_pending: Cell::new(header_pending),
            sealed: Cell::new(false),
            live_bytes: Cell::new(0),
            held_bytes: Cell::new(0),
            expiry_max: Cell::new(0),
            pins: Cell::new(0),
            retired: Cell::new(false),
        }
    }

    /// The id as stored in the index.
    pub(crate) fn id32(&self) -> u32 {
        self.id as u32
    }

    /// The segment file.
    pub(crate) fn file(&self) -> &F {
        &self.file
    }

    /// Size of the segment file.
    pub fn size_bytes(&self) -> usize {
        self.file.len()
    }

    /// LSN of the first record.
    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// LSN of the last record, or `first_lsn() - 1` if it has none.
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn.get()
    }

    /// End offset of the records.
    pub fn written_bytes(&self) -> usize {
        self.written.get()
    }

    /// Bytes free for records.
    pub fn free_bytes(&self) -> usize {
        self.file.len() - self.written.get()
    }

    /// Whether it takes no more records.
    pub fn is_sealed(&self) -> bool {
        self.sealed.get()
    }

    pub(crate) fn seal(&self) {
        self.sealed.set(true);
    }

    /// Whether the header is still to be written.
    pub fn header_pending(&self) -> bool {
        self.header_pending.get()
    }

    /// Writes the header. Called once every earlier segment is durable (or, for logs that are
    /// never synced, at creation).
    pub(crate) fn write_header(&self) {
        assert!(
            self.header_pending.get(),
            "segment {} header written twice",
            self.id
        );
        let header = SegmentHeader {
            segment_id: self.id,
            size_bytes: self.file.len() as u64,
            first_lsn: self.first_lsn,
            version: crate::constants::FORMAT_VERSION,
        }
        .encode();
        // SAFETY: the header region is inside the mapping, only written here, once, and no
        // slice covering it exists while the header is pending (see `bytes`).
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), self.file.as_mut_ptr(), header.len());
        }
        self.header_pending.set(false);
    }

    /// The whole segment up to the end of its records, header included.
    ///
    /// # Panics
    /// While the header is pending.
    pub fn bytes(&self) -> &[u8] {
        assert!(
            !self.header_pending.get(),
            "segment {} header pending",
            self.id
        );
        // SAFETY: `[0, written)` is inside the mapping and never written again (invariants).
        unsafe { std::slice::from_raw_parts(self.file.as_mut_ptr(), self.written.get()) }
    }

    /// All bytes of the mapping, including the unwritten tail. Only for recovery, before the
    /// segment is shared.
    pub(crate) fn whole_mapping(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes; during recovery nothing writes to it while this
        // slice lives.
        unsafe { std::slice::from_raw_parts(self.file.as_mut_ptr(), self.file.len()) }
    }

    /// Bytes `[start, end)` of the records area. Valid for as long as the segment lives.
    pub fn slice(&self, start: usize, end: usize) -> &[u8] {
        assert!(start >= SEGMENT_HEADER_LEN_BYTES && start <= end && end <= self.written.get());
        // SAFETY: inside the immutable, written records area.
        unsafe { std::slice::from_raw_parts(self.file.as_mut_ptr().add(start), end - start) }
    }

    /// The record at `offset`, which must come from our own index or iteration (validated).
    pub(crate) fn record(&self, offset: usize) -> RecordRef<'_> {
        assert!(offset >= SEGMENT_HEADER_LEN_BYTES && offset < self.written.get());
        // SAFETY: the records area `[HEADER, written)` is immutable and its records valid. The
        // slice starts after the header, so a pending header write does not alias it.
        let area = unsafe {
            std::slice::from_raw_parts(
                self.file.as_mut_ptr().add(SEGMENT_HEADER_LEN_BYTES),
                self.written.get() - SEGMENT_HEADER_LEN_BYTES,
            )
        };
        // SAFETY: offsets given to this function are record starts (index, iteration).
        unsafe { record_at_unchecked(area, offset - SEGMENT_HEADER_LEN_BYTES) }
    }

    /// Iterates over the records, in order, with their offsets.
    pub fn records(&self) -> SegmentRecords<'_, F> {
        SegmentRecords {
            segment: self,
            offset: SEGMENT_HEADER_LEN_BYTES,
        }
    }

    /// Runs `write` on the free tail; `write` returns the bytes it used (a whole record, a
    /// multiple of the alignment) or `None` if it wrote nothing usable.
    pub(crate) fn append_with(
        &self,
        lsn: u64,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        assert!(!self.sealed.get(), "append to sealed segment {}", self.id);
        assert_eq!(
            lsn,
            self.last_lsn.get() + 1,
            "LSNs are consecutive in a segment"
        );
        let start = self.written.get();
        // SAFETY: `[written, len)` is inside the mapping, and no slice of it exists: slices are
        // only handed out for `[0, written)`.
        let tail = unsafe {
            std::slice::from_raw_parts_mut(
                self.file.as_mut_ptr().add(start),
                self.file.len() - start,
            )
        };
        let used = write(tail)?;
        assert!(used > 0 && used % RECORD_ALIGN_BYTES == 0 && used <= self.file.len() - start);
        self.written.set(start + used);
        self.last_lsn.set(lsn);
        self.prefetch_tail(start + used);
        Some(start)
    }

    /// Asks the CPU to bring the cache lines after the tail in now, so that the next appends
    /// store into lines already held instead of each waiting for its line to come from memory
    /// (the segment's pages were written long before, by the preparation thread, and left the
    /// caches since). A hint: it faults nothing and changes nothing. Without the `prfchw`
    /// target feature it compiles to a read prefetch (`prefetcht0`), which serves as well:
    /// a line no other core holds arrives exclusive, and the store then needs no more.
    fn prefetch_tail(&self, from: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let end = (from + TAIL_PREFETCH_BYTES).min(self.file.len());
            let mut at = from & !(CACHE_LINE_BYTES - 1);
            while at < end {
                // SAFETY: `at < len`: the address is inside the mapping. A prefetch never
                // faults, whatever the address.
                unsafe {
                    use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
                    _mm_prefetch::<_MM_HINT_ET0>(self.file.as_mut_ptr().add(at).cast::<i8>());
                }
                at += CACHE_LINE_BYTES;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = from;
    }

    /// Recovery found a valid record ending at `end` with `lsn`.
    pub(crate) fn extend_recovered(&self, end: usize, lsn: u64) {
        assert!(end > self.written.get() && end <= self.file.len());
        assert_eq!(lsn, self.last_lsn.get() + 1);
        self.written.set(end);
        self.last_lsn.set(lsn);
    }

    /// Zeroes `[from, to)` of the tail (recovery cutting a torn tail).
    pub(crate) fn zero_tail(&self, from: usize, to: usize) {
        assert!(from >= self.written.get() && from <= to && to <= self.file.len());
        // SAFETY: the range is beyond the written records; no slice of it exists.
        unsafe { std::ptr::write_bytes(self.file.as_mut_ptr().add(from), 0, to - from) };
    }

    /// Live bytes (see the field).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.get()
    }

    pub(crate) fn add_live(&self, bytes: usize) {
        self.live_bytes.set(self.live_bytes.get() + bytes as u64);
    }

    /// Tombstones and flushes (see `held_bytes`).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.get()
    }

    /// A tombstone or flush of `bytes`: live, and held (see `held_bytes`).
    pub(crate) fn add_held(&self, bytes: usize) {
        self.add_live(bytes);
        self.held_bytes.set(self.held_bytes.get() + bytes as u64);
    }

    pub(crate) fn sub_live(&self, bytes: usize) {
        let live = self.live_bytes.get();
        debug_assert!(
            live >= bytes as u64,
            "segment {} live bytes underflow",
            self.id
        );
        self.live_bytes.set(live.saturating_sub(bytes as u64));
    }

    /// Latest expiry of its items (see the field).
    pub fn expiry_max(&self) -> u32 {
        self.expiry_max.get()
    }

    pub(crate) fn note_expiry(&self, expiry: u32) {
        let expiry = if expiry == 0 { u32::MAX } else { expiry };
        self.expiry_max.set(self.expiry_max.get().max(expiry));
    }

    /// Whether a pin holds it.
    pub fn is_pinned(&self) -> bool {
        self.pins.get() > 0
    }

    pub(crate) fn pin(&self) {
        self.pins.set(self.pins.get() + 1);
    }

    pub(crate) fn unpin(&self) {
        let pins = self.pins.get();
        assert!(pins > 0, "segment {} unpinned more than pinned", self.id);
        self.pins.set(pins - 1);
    }

    /// Whether compaction is done with it.
    pub fn is_retired(&self) -> bool {
        self.retired.get()
    }

    pub(crate) fn retire(&self) {
        self.retired.set(true);
    }
}

/// Iterator over a segment's records.
#[derive(Debug)]
pub struct SegmentRecords<'a, F> {
    segment: &'a Segment<F>,
    offset: usize,
}

impl<'a, F: SegmentFile> Iterator for SegmentRecords<'a, F> {
    type Item = (usize, RecordRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.segment.written_bytes() {
            return None;
        }
        let offset = self.offset;
        let record = self.segment.record(offset);
        self.offset += record.total_len;
        Some((offset, record))
    }
}
