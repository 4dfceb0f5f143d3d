//! The store of one shard: the index and memcached's semantics on top of the log.
//!
//! Every state change writes exactly one record, then updates the index; the caller makes it
//! durable with `commit().wait_durable(lsn)` before acknowledging it. Reads return an [`Item`]
//! that borrows the value from the segment mapping (zero-copy) and keeps the segment alive.
//!
//! Invariants:
//! - An index entry always points at a valid `Put` record of an existing segment.
//! - An item's CAS is the LSN of the record that first stored its value: unique, increasing,
//!   never reused after a restart, kept when compaction moves the record, unchanged by touch.
//! - Replaying the log in order rebuilds exactly the index the live operations built: the same
//!   code decides both (the `apply_*` functions).
//! - A key's older records stay dead across restarts: a tombstone is kept (or moved by
//!   compaction) while any segment that may hold an older record of the key exists.
//!
//! Module map: [`expiry`] (clock, memcached exptime), [`number`] (memcached's number syntax),
//! `index` (the hash index), `compaction` (reclaiming dead space, eviction).

mod compaction;
pub mod expiry;
mod index;
pub mod number;
mod tombstones;

pub use compaction::{
    CompactionConfig, CompactionMode, CompactionProgress, Needed, ReclaimWalk, compact_once,
    spawn_compactor,
};
pub use expiry::{Clock, ManualClock, SystemClock};

use crate::constants::{KEY_LEN_MAX_BYTES, RECORD_FLAG_STALE};
use crate::error::{KeyProblem, StoreError, WalError};
use crate::format::{
    Body, Delete, Flush, Put, RecordCheck, RecordKind, RecordRef, Touch, ValueParts, check_record,
    is_item_follows, record::put_record_len_max, record::small_record_len_max,
    record::touch_record_len,
};
use crate::log::{
    AppendClass, Appended, Durability, GroupCommit, Log, LogConfig, RecoveredRecord,
    RecoveryPolicy, RecoveryReport, Segment,
};
use crate::storage::{SegmentId, Storage};
use expiry::{expiry_from_exptime, is_expired};
use index::{Entry, Index, KeyHasher, SegmentLookup, put_of, segment_of};
use std::rc::Rc;
use tombstones::TombstoneCovers;

/// memcached's default item size limit.
pub const ITEM_SIZE_MAX_DEFAULT_BYTES: usize = 1 << 20;

/// Bytes of a record a GET asks for while it compares the key (`Index::get_reading`): the
/// whole record of a small item (32-byte header, key, value, 32-byte archive root: 192
/// bytes for a 16-byte key and a 100-byte value), so that the value and the root at the
/// record's end arrive with the key's line instead of one miss after another. Larger
/// values stream in as they are copied.
const ITEM_READ_AHEAD_BYTES: usize = 256;

/// What the writer of a put found as the key's entry before writing (checked in debug
/// builds against the index, which the put then updates).
#[derive(Debug, Clone, Copy)]
enum Previous {
    Known(Option<Entry>),
    /// A plain set, which replaces whatever is there without looking.
    NotLooked,
}

/// What to do when the capacity is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the write (permanent-store: nothing is ever lost).
    Refuse,
    /// Evict the oldest segment, with every item in it (temporary-swap-only, FIFO by
    /// segment). Only for logs that are never recovered: without tombstones, evicted keys'
    /// older versions could come back on recovery.
    EvictOldest,
}

/// How a store is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The log under it.
    pub log: LogConfig,
    /// What a full capacity means.
    pub when_full: WhenFull,
    /// Largest value accepted (memcached's item size max).
    pub item_size_max_bytes: usize,
    /// Compaction settings.
    pub compaction: CompactionConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            when_full: WhenFull::Refuse,
            item_size_max_bytes: ITEM_SIZE_MAX_DEFAULT_BYTES,
            compaction: CompactionConfig::default(),
        }
    }
}

impl StoreConfig {
    /// Checks the settings and how they fit together.
    pub fn validate(&self) -> Result<(), WalError> {
        self.log.validate()?;
        // The largest item, and a tombstone before it: compaction writes the two into one
        // segment when it copies a tombstone whose key holds an item.
        let needed = put_record_len_max(KEY_LEN_MAX_BYTES, self.item_size_max_bytes)
            + small_record_len_max(KEY_LEN_MAX_BYTES);
        if needed > self.log.record_len_max() {
            return Err(WalError::Config {
                field: "item_size_max_bytes",
                value: self.item_size_max_bytes.to_string(),
                fix: format!(
                    "an item of that size needs a {needed}-byte record with a tombstone \
                     before it, more than a {}-byte segment holds; lower it or raise \
                     segment_size_bytes",
                    self.log.segment_size_bytes
                ),
            });
        }
        if self.when_full == WhenFull::EvictOldest && self.log.durability == Durability::Fsync {
            return Err(WalError::Config {
                field: "when_full",
                value: "EvictOldest".into(),
                fix: "eviction is for temporary-swap-only (Durability::None); a durable store \
                      refuses writes when full"
                    .into(),
            });
        }
        self.compaction.validate()
    }
}

/// A write that went into the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// LSN of the record: wait for it to be durable before acknowledging.
    pub lsn: u64,
    /// CAS of the stored item (for puts; for other records, the LSN).
    pub cas: u64,
}

/// The set family of memcached commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key holds no item.
    Add,
    /// Store only if the key holds an item.
    Replace,
    /// Add the data after the existing value (flags and expiry unchanged).
    Append,
    /// Add the data before the existing value (flags and expiry unchanged).
    Prepend,
    /// Store only if the item's CAS is still this one.
    Cas(u64),
    /// memcached's meta `ms ... C<cas> I`: as `Cas`, but a CAS older (lower) than the item's
    /// stores the value all the same, marked stale, with the item's expiry: a late writer's
    /// value is kept, and readers are told it is stale (see [`Item::is_stale`]).
    CasOrStale(u64),
}

/// The outcome of a set-family command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored (`STORED`).
    Stored(Written),
    /// The condition did not hold (`NOT_STORED`).
    NotStored,
    /// `cas` on an item modified since (`EXISTS`).
    Exists,
    /// `cas` on a missing item (`NOT_FOUND`).
    NotFound,
}

/// The outcome of `delete` and `touch`: the record written, or `None` for `NOT_FOUND`.
pub type Changed = Option<Written>;

/// What `gat` returns: the item, and the touch record to wait for.
pub type TouchedItem<F> = (Item<F>, Written);

/// Whether `incr` or `decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// Add, wrapping at 2^64.
    Incr(u64),
    /// Subtract, stopping at 0.
    Decr(u64),
}

/// Counters of a store's activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Items evicted with their segment (temporary-swap-only when full).
    pub evictions: u64,
    /// Segments compacted.
    pub segments_compacted: u64,
    /// Segments a passive removed because nothing in them was needed any more
    /// ([`CompactionMode::ReclaimOnly`]).
    pub segments_reclaimed: u64,
    /// Bytes of records rewritten by compaction.
    pub compaction_bytes_rewritten: u64,
    /// Expired or flushed items dropped by compaction.
    pub items_reclaimed: u64,
    /// Tombstones dropped because no older record of their key remained (by compaction, or
    /// with a segment a passive reclaimed).
    pub tombstones_dropped: u64,
}

/// A delayed `flush_all` not yet in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingFlush {
    /// When it takes effect.
    at: u32,
    /// LSN of its record.
    lsn: u64,
    /// It took effect at this boundary, but its boundary record could not be appended yet
    /// (the log was full): the boundary stays fixed until it is logged, and the pending
    /// record stays needed (compaction keeps it) so that a restart still knows of it.
    unlogged_boundary: Option<u64>,
}

/// What `flush_all` has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FlushState {
    /// Items with a CAS below this are flushed.
    flushed_below: u64,
    /// The boundary's record LSN is kept with it implicitly (the boundary is that LSN).
    pending: Option<PendingFlush>,
}

/// An item, read in place from its segment. Holding it keeps the segment's mapping alive
/// (even if compaction removes the file meanwhile), so it may be kept across awaits.
pub struct Item<F> {
    segment: Rc<Segment<F>>,
    offset: usize,
    expiry: u32,
    /// The last LSN of the other records that keep the item visible, 0 if none: for an item
    /// whose expiry a touch set, the log's last LSN when it was read (the touch record is at
    /// or before it); with a delayed `flush_all` pending, that flush's record (it may have
    /// replaced an earlier, sooner one that a crash would bring back).
    kept_by: u64,
}

impl<F> std::fmt::Debug for Item<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("segment", &self.segment.id())
            .field("offset", &self.offset)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl<F: crate::storage::SegmentFile> Item<F> {
    fn put(&self) -> &crate::format::ArchivedPut<'static> {
        // SAFETY: items are made from index entries, which point at validated put records.
        match unsafe { self.segment.record(self.offset).body_unchecked() } {
            Body::Put(put) => put,
            other => panic!("item points to a {other:?}, not a put"),
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        self.put().key.as_ref()
    }

    /// The value, borrowed from the segment mapping.
    pub fn value(&self) -> &[u8] {
        self.put().value.as_ref()
    }

    /// Client flags.
    pub fn flags(&self) -> u32 {
        self.put().flags.to_native()
    }

    /// CAS unique.
    pub fn cas(&self) -> u64 {
        self.put().cas.to_native()
    }

    /// Absolute expiry in unix seconds, 0 never.
    pub fn expiry(&self) -> u32 {
        self.expiry
    }

    /// Whether the item is stale: marked so by [`Store::invalidate`], or stored by
    /// [`SetMode::CasOrStale`] with an older CAS. Replacing it (any set, append, `incr`)
    /// stores a fresh one; a touch keeps the mark.
    pub fn is_stale(&self) -> bool {
        self.segment.record(self.offset).is_stale()
    }

    /// The LSN that must be durable before the item is shown to a client: its value's
    /// record, or the touch or pending `flush_all` that keeps it visible (a crash that lost
    /// those would take the item back).
    pub fn lsn(&self) -> u64 {
        self.segment.record(self.offset).lsn.max(self.kept_by)
    }
}

impl<S: Storage> SegmentLookup<S::File> for Log<S> {
    fn segment(&self, id: u32) -> Option<&Rc<Segment<S::File>>> {
        Log::segment(self, u64::from(id))
    }
}

/// Checks a key: 1 to 250 bytes, no whitespace or control characters.
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        Err(StoreError::InvalidKey(KeyProblem::Empty))
    } else if key.len() > KEY_LEN_MAX_BYTES {
        Err(StoreError::InvalidKey(KeyProblem::TooLong))
    } else if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        Err(StoreError::InvalidKey(KeyProblem::BadByte))
    } else {
        Ok(())
    }
}

/// The state that replay and live operations both change, with the index.
struct State {
    index: Index,
    flush: FlushState,
    /// What a passive's reclaim needs to know about the tombstones in its log.
    covers: TombstoneCovers,
}

impl State {
    /// Marks the records of an entry that is replaced or removed as dead.
    fn retire_entry<F: crate::storage::SegmentFile>(
        segments: &impl SegmentLookup<F>,
        entry: &Entry,
        key_len: usize,
    ) {
        if let Some(segment) = segments.segment(entry.segment) {
            segment.sub_live(segment.record(entry.offset()).total_len);
        }
        Self::retire_touch(segments, entry, key_len);
    }

    /// Marks the touch record that set an entry's expiry, if any, as dead.
    fn retire_touch<F: crate::storage::SegmentFile>(
        segments: &impl SegmentLookup<F>,
        entry: &Entry,
        key_len: usize,
    ) {
        if entry.touch_segment != 0
            && let Some(segment) = segments.segment(entry.touch_segment)
        {
            segment.sub_live(touch_record_len(key_len));
        }
    }

    /// A put record at (`segment`, `offset`) becomes the key's item. The key is given as
    /// (hash, length, bytes on demand): replay reads the bytes from the record only when the
    /// index has a candidate entry to compare them with.
    fn apply_put<'k, F: crate::storage::SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        segment: &Segment<F>,
        offset: usize,
        record_len: usize,
        (hash, key_len, key): (u64, usize, impl Fn() -> &'k [u8]),
        expiry: u32,
    ) {
        let id = segment.id32();
        let key_len_u8 = u8::try_from(key_len).unwrap_or_else(|_| {
            unreachable!(
                "a {key_len}-byte key: keys are checked before writing, records when validated"
            )
        });
        let previous = self.index.upsert(
            segments,
            hash,
            key_len,
            |stored| stored == key(),
            |previous| Entry {
                segment: id,
                offset_div: Entry::offset_div(offset),
                expiry,
                since: previous.map_or(id, |p| p.since.min(id)),
                touch_segment: 0,
                key_len: key_len_u8,
            },
        );
        if let Some(previous) = &previous {
            Self::retire_entry(segments, previous, key_len);
        }
        segment.add_live(record_len);
        segment.note_expiry(expiry);
    }

    /// A tombstone for `key` at `segment`.
    fn apply_delete<F: crate::storage::SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        segment: &Segment<F>,
        record_len: usize,
        key: &[u8],
    ) {
        let hash = self.index.hash(key);
        let removed = self.index.remove(segments, hash, key);
        self.covers
            .add(hash, segment.id32(), removed.as_ref().map(|e| e.since));
        if let Some(previous) = &removed {
            Self::retire_entry(segments, previous, key.len());
        }
        // Tombstones count as live: compaction (a passive's reclaim) decides whether they are
        // still needed.
        segment.add_held(record_len);
    }

    /// A touch record for `key`'s item with CAS `cas`.
    fn apply_touch<F: crate::storage::SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        segment: &Segment<F>,
        record_len: usize,
        key: &[u8],
        cas: u64,
        expiry: u32,
    ) {
        let hash = self.index.hash(key);
        let Some(entry) = self.index.get(segments, hash, key) else {
            return;
        };
        if put_of(segments, &entry).cas.to_native() != cas {
            return;
        }
        debug_assert_eq!(record_len, touch_record_len(key.len()));
        Self::retire_touch(segments, &entry, key.len());
        if let Some(put_segment) = segments.segment(entry.segment) {
            put_segment.note_expiry(expiry);
        }
        segment.add_live(record_len);
        let id = segment.id32();
        self.index.update(segments, hash, key, |e| {
            e.expiry = expiry;
            e.touch_segment = id;
        });
    }

    /// A flush record with LSN `lsn`.
    fn apply_flush<F: crate::storage::SegmentFile>(
        &mut self,
        segment: &Segment<F>,
        record_len: usize,
        lsn: u64,
        boundary_lsn: u64,
        at: u32,
    ) {
        segment.add_held(record_len);
        if boundary_lsn == 0 {
            self.flush.pending = Some(PendingFlush {
                at,
                lsn,
                unlogged_boundary: None,
            });
        } else {
            self.flush.flushed_below = self.flush.flushed_below.max(boundary_lsn);
            if self.flush.pending.is_some_and(|p| boundary_lsn > p.lsn) {
                self.flush.pending = None;
            }
        }
    }

    /// Takes one recovered record, as recovery prepared it ([`prepare_record`]): a flush is
    /// applied at once (it changes no index entry); a record of a key is deferred to
    /// [`State::apply_deferred`], which applies a batch in the order of the index's buckets.
    fn replay<F: crate::storage::SegmentFile>(
        &mut self,
        segment: &Segment<F>,
        at: RecoveredRecord,
        prepared: PreparedRecord,
        deferred: &mut Vec<Deferred>,
    ) {
        match prepared {
            PreparedRecord::Flush {
                boundary_lsn,
                at: flush_at,
            } => {
                self.apply_flush(segment, at.total_len, at.lsn, boundary_lsn, flush_at);
            }
            PreparedRecord::Key {
                kind,
                hash,
                expiry,
                key_len,
            } => deferred.push(Deferred {
                hash,
                segment: segment.id32(),
                offset: Entry::offset_div(at.offset),
                record_len: at.total_len as u32,
                expiry,
                key_len,
                kind,
            }),
        }
    }

    /// Applies deferred key records. Sorted by the index bucket their hash falls in (a
    /// stable sort: the records of one key keep their log order, which is all that replay
    /// depends on), the inserts walk the table in address order instead of missing the cache
    /// on every record; a key's bytes are read from its record only when the table compares.
    fn apply_deferred<F: crate::storage::SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        deferred: &mut Vec<Deferred>,
        scratch: &mut Vec<Deferred>,
    ) {
        sort_by_low_hash_bits(deferred, scratch, self.index.bucket_bits());
        for d in deferred.drain(..) {
            let Some(segment) = segments.segment(d.segment) else {
                panic!("replayed record in unknown segment {}", d.segment);
            };
            let offset = d.offset as usize * crate::constants::RECORD_ALIGN_BYTES;
            let record_len = d.record_len as usize;
            let key = || replayed_key(segment, offset);
            match d.kind {
                DeferredKind::Put => self.apply_put(
                    segments,
                    segment,
                    offset,
                    record_len,
                    (d.hash, usize::from(d.key_len), key),
                    d.expiry,
                ),
                DeferredKind::Delete => self.apply_delete(segments, segment, record_len, key()),
                DeferredKind::Touch => {
                    // SAFETY: validated by recovery, as every deferred record.
                    if let Body::Touch(touch) = unsafe { segment.record(offset).body_unchecked() } {
                        let (cas, expiry) = (touch.cas.to_native(), touch.expiry.to_native());
                        self.apply_touch(segments, segment, record_len, key(), cas, expiry);
                    }
                }
            }
        }
    }
}

/// What replay needs of a recovered record, read from it by the thread that checked it (while
/// its bytes are in that thread's cache) instead of by the replay (see [`Store::open`]).
#[derive(Debug, Clone, Copy)]
enum PreparedRecord {
    /// A put, delete or touch.
    Key {
        kind: DeferredKind,
        hash: u64,
        /// A put's expiry (0 for the others).
        expiry: u32,
        key_len: u8,
    },
    /// A flush.
    Flush { boundary_lsn: u64, at: u32 },
}

/// Reads what replay needs of a record that recovery has just validated.
fn prepare_record(hasher: &KeyHasher, record: RecordRef<'_>) -> PreparedRecord {
    // SAFETY: recovery hands the preparer only records it has validated.
    let (kind, key, expiry) = match unsafe { record.body_unchecked() } {
        Body::Put(put) => (DeferredKind::Put, put.key.as_ref(), put.expiry.to_native()),
        Body::Delete(delete) => (DeferredKind::Delete, delete.key.as_ref(), 0),
        // Rare: its CAS and expiry are read back from the record when it is applied.
        Body::Touch(touch) => (DeferredKind::Touch, touch.key.as_ref(), 0),
        Body::Flush(flush) => {
            return PreparedRecord::Flush {
                boundary_lsn: flush.boundary_lsn.to_native(),
                at: flush.at.to_native(),
            };
        }
    };
    // Validation refuses a key longer than that (`format::record`), so it fits the byte.
    debug_assert!(key.len() <= KEY_LEN_MAX_BYTES && KEY_LEN_MAX_BYTES <= usize::from(u8::MAX));
    PreparedRecord::Key {
        kind,
        hash: hasher.hash(key),
        expiry,
        key_len: key.len() as u8,
    }
}

/// A recovered record of a key, waiting to be applied to the index (see
/// [`State::apply_deferred`]).
#[derive(Debug, Clone, Copy)]
struct Deferred {
    hash: u64,
    segment: u32,
    /// Offset divided by the record alignment, as in index entries.
    offset: u32,
    record_len: u32,
    /// A put's expiry.
    expiry: u32,
    /// Keys are at most 250 bytes.
    key_len: u8,
    kind: DeferredKind,
}

const _: () = assert!(std::mem::size_of::<Deferred>() == 32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeferredKind {
    Put,
    Delete,
    Touch,
}

/// Records deferred before they are applied: a bounded buffer (32 bytes a record, twice over
/// with the sort's scratch space: 16 MiB while a shard opens), sorted as a batch. Larger
/// batches walk the table more nearly in order: 2^14 records opened 1 GiB in ~0.38 s, 2^16
/// in ~0.37 s, 2^18 in ~0.33 s (wal-bench, warm cache). A batch spans segments: applied at
/// every segment's end as well, batches held one segment's records (~31k of 1 KiB in 32 MiB)
/// and the warm open took 0.348 s against 0.314 s (medians, 2026-12-06). Larger still is
/// slower (2^20: 0.375 s): the last batch is applied after the checking thread has finished,
/// instead of alongside it.
const REPLAY_BATCH_RECORDS: usize = 1 << 18;

/// The key of a validated put, delete or touch record.
fn replayed_key<F: crate::storage::SegmentFile>(segment: &Segment<F>, offset: usize) -> &[u8] {
    // SAFETY: recovery validated every record it handed to replay, at this offset.
    match unsafe { segment.record(offset).body_unchecked() } {
        Body::Put(put) => put.key.as_ref(),
        Body::Delete(delete) => delete.key.as_ref(),
        Body::Touch(touch) => touch.key.as_ref(),
        Body::Flush(_) => panic!("a flush record was deferred as a key record"),
    }
}

/// Stable LSD radix sort of `items` by the low `bits` bits of their hash. Passes alternate
/// between `items` and `scratch` (one scatter per pass, no copy back except after an odd
/// number of passes).
fn sort_by_low_hash_bits(items: &mut [Deferred], scratch: &mut Vec<Deferred>, bits: u32) {
    const DIGIT_BITS: u32 = 11;
    if items.len() < 2 || bits == 0 {
        return;
    }
    scratch.clear();
    scratch.resize(items.len(), items[0]);
    let mut in_scratch = false;
    let mut shift = 0;
    while shift < bits {
        let width = DIGIT_BITS.min(bits - shift);
        let mask = (1usize << width) - 1;
        let digit = |d: &Deferred| (d.hash >> shift) as usize & mask;
        let (from, to): (&[Deferred], &mut [Deferred]) = if in_scratch {
            (&scratch[..], &mut items[..])
        } else {
            (&items[..], &mut scratch[..])
        };
        let mut starts = vec![0usize; mask + 2];
        for d in from {
            starts[digit(d) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        for d in from {
            let slot = &mut starts[digit(d)];
            to[*slot] = *d;
            *slot += 1;
        }
        in_scratch = !in_scratch;
        shift += width;
    }
    if in_scratch {
        items.copy_from_slice(scratch);
    }
}

/// Segments seen so far during recovery, for reading keys before the log exists.
struct ReplaySegments<F> {
    segments: Vec<Rc<Segment<F>>>,
}

impl<F> SegmentLookup<F> for ReplaySegments<F> {
    fn segment(&self, id: u32) -> Option<&Rc<Segment<F>>> {
        let index = self
            .segments
            .binary_search_by_key(&u64::from(id), |s| s.id())
            .ok()?;
        self.segments.get(index)
    }
}

/// The store of one shard.
pub struct Store<S: Storage> {
    log: Log<S>,
    state: State,
    clock: Rc<dyn Clock>,
    config: StoreConfig,
    counters: StoreCounters,
    /// What the compactor may do (see [`CompactionMode`]).
    compaction_mode: CompactionMode,
    /// Segments the reclaim of a passive walked and found a needed record in, with how long
    /// that record stays needed: not walked again until then (see
    /// `compaction::reclaim_once`).
    reclaim_refused: std::collections::HashMap<SegmentId, compaction::KeptWhile>,
    /// Unique per opened store in this process: a compaction round that awaited while the
    /// store behind its `RefCell` was replaced (a passive resetting a shard) notices.
    instance: u64,
}

/// Stores opened so far in this process (for [`Store::instance`]).
static STORES_OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<S: Storage> std::fmt::Debug for Store<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("log", &self.log)
            .field("items", &self.state.index.len())
            .field("flush", &self.state.flush)
            .finish()
    }
}

impl<S: Storage> Store<S> {
    /// Opens the store in `storage`: recovers the log under `policy` and rebuilds the index.
    pub async fn open(
        storage: S,
        config: StoreConfig,
        clock: Rc<dyn Clock>,
        policy: RecoveryPolicy,
    ) -> Result<(Self, RecoveryReport), WalError> {
        config.validate()?;
        let mut state = State {
            index: Index::new(),
            flush: FlushState::default(),
            // Kept through replay, whatever the store turns out to be (see
            // `set_compaction_mode`): a passive's covers must be complete.
            covers: TombstoneCovers::new(),
        };
        let mut seen = ReplaySegments {
            segments: Vec::new(),
        };
        // Size the index once, from the first segment's records per segment, instead of
        // letting it grow (and rehash, reading every key back from the mappings) repeatedly.
        let segment_count = storage.list()?.len();
        let mut records = 0usize;
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut scratch: Vec<Deferred> = Vec::new();
        // Recovery calls this on the checking threads: the replay below then never reads a
        // record it only defers (a cache miss or two per record, a third of the replay's time).
        let hasher = state.index.key_hasher();
        let prepare = move |record: RecordRef<'_>| prepare_record(&hasher, record);
        let mut visit =
            |segment: &Rc<Segment<S::File>>, at: RecoveredRecord, prepared: PreparedRecord| {
                if seen
                    .segments
                    .last()
                    .is_none_or(|last| last.id() != segment.id())
                {
                    if seen.segments.len() == 1 {
                        let estimate = records.saturating_mul(segment_count);
                        state
                            .index
                            .reserve(&seen, estimate.saturating_sub(state.index.len()));
                    }
                    seen.segments.push(Rc::clone(segment));
                }
                records += 1;
                state.replay(segment, at, prepared, &mut deferred);
                if deferred.len() >= REPLAY_BATCH_RECORDS {
                    state.apply_deferred(&seen, &mut deferred, &mut scratch);
                }
            };
        let (log, report) =
            Log::open_prepared(storage, config.log, policy, &prepare, &mut visit).await?;
        state.apply_deferred(&seen, &mut deferred, &mut scratch);
        if state.index.capacity() > 2 * state.index.len() + 1024 {
            state.index.shrink_to_fit(&log);
        }
        drop(seen);
        Ok((
            Self {
                log,
                state,
                clock,
                config,
                counters: StoreCounters::default(),
                compaction_mode: CompactionMode::Compact,
                reclaim_refused: std::collections::HashMap::new(),
                instance: STORES_OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
            report,
        ))
    }

    /// The log.
    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    /// Stamps the records this store writes from now on with the mirror group `term`.
    pub fn set_term(&mut self, term: u64) {
        self.log.set_term(term);
    }

    /// The term this store stamps its records with.
    pub fn term(&self) -> u64 {
        self.log.term()
    }

    /// Sets what the compactor may do: compact (an active), only reclaim (a passive), or
    /// nothing (until the server knows which it is).
    pub fn set_compaction_mode(&mut self, mode: CompactionMode) {
        if mode != self.compaction_mode {
            // What a passive could not drop, a later one may (the records that kept it may
            // have gone meanwhile); nor are removed segments' ids kept forever.
            self.reclaim_refused.clear();
        }
        match mode {
            // An active's compaction reads the tombstones' own `since_segment`.
            CompactionMode::Compact => self.state.covers.stop(),
            CompactionMode::ReclaimOnly | CompactionMode::Paused => {
                self.state.covers.resume(self.log.tail().id32());
            }
        }
        self.compaction_mode = mode;
    }

    /// What the compactor may do.
    pub fn compaction_mode(&self) -> CompactionMode {
        self.compaction_mode
    }

    /// LSN of the last record appended (0 if none): every state the store shows now,
    /// absences included, is covered once it is durable.
    pub fn last_lsn(&self) -> u64 {
        self.log.next_lsn() - 1
    }

    /// This store's number among the stores opened in this process.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Moves the log forward to `lsn` (see [`Log::skip_to`]): a passive applying its active's
    /// snapshot, which has gaps where compaction removed segments.
    pub fn skip_to(&mut self, lsn: u64) -> Result<(), StoreError> {
        Ok(self.log.skip_to(lsn)?)
    }

    /// Group commit, to wait for durability without holding the store.
    pub fn commit(&self) -> Rc<GroupCommit<S>> {
        Rc::clone(self.log.commit())
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Counters.
    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// Tombstones whose reach a passive keeps in memory, by key hash and segment (see
    /// `tombstones`; 0 on a store that compacts).
    pub fn tombstone_covers(&self) -> usize {
        self.state.covers.len()
    }

    /// Keys in the index (including expired and flushed items not yet reclaimed).
    pub fn index_len(&self) -> usize {
        self.state.index.len()
    }

    /// Bytes the index table occupies.
    pub fn index_bytes(&self) -> usize {
        self.state.index.allocation_bytes()
    }

    /// The time now, from the store's clock.
    pub fn now_secs(&self) -> u32 {
        self.clock.now_secs()
    }

    /// Items with a CAS below this are flushed at `now`. A delayed flush that is due counts
    /// even before an operation has written its record (`tick`): reads that do not tick, like
    /// `for_each_live`, see the same as `get`.
    fn flush_boundary(&self, now: u32) -> u64 {
        match self.state.flush.pending {
            Some(PendingFlush {
                unlogged_boundary: Some(boundary),
                ..
            }) => boundary,
            Some(pending) if now >= pending.at => self.log.next_lsn(),
            _ => self.state.flush.flushed_below,
        }
    }

    /// Whether an entry is a live item now.
    fn is_live(&self, entry: &Entry, now: u32) -> bool {
        if is_expired(entry.expiry, now) {
            return false;
        }
        // Every CAS is at least 1: with no flush (boundary 0 or 1), the record need not be read.
        let boundary = self.flush_boundary(now);
        boundary <= 1 || put_of(&self.log, entry).cas.to_native() >= boundary
    }

    /// The live entry for `key`.
    fn live_entry(&self, hash: u64, key: &[u8], now: u32) -> Option<Entry> {
        self.state
            .index
            .get(&self.log, hash, key)
            .filter(|e| self.is_live(e, now))
    }

    fn item(&self, entry: &Entry) -> Item<S::File> {
        let segment = segment_of(&self.log, entry);
        Item {
            segment: Rc::clone(segment),
            offset: entry.offset(),
            expiry: entry.expiry,
            // Where the touch record is is known (`touch_segment`), its LSN is not: the
            // log's last LSN covers it.
            kept_by: if entry.touch_segment == 0 {
                0
            } else {
                self.log.next_lsn() - 1
            }
            .max(self.state.flush.pending.map_or(0, |p| p.lsn)),
        }
    }

    /// Brings a delayed flush into effect once its time has come. Writing its record may
    /// fail (full, failed disk); the flush then holds in memory at a fixed boundary until its
    /// record can be written (see `PendingFlush::unlogged_boundary`).
    fn tick(&mut self, now: u32) {
        let Some(pending) = self.state.flush.pending else {
            return;
        };
        if now < pending.at {
            return;
        }
        let boundary = pending
            .unlogged_boundary
            .unwrap_or_else(|| self.log.next_lsn());
        let body = Flush {
            boundary_lsn: boundary,
            at: pending.at,
        };
        match self
            .log
            .append(&body, small_record_len_max(0), AppendClass::Compaction)
        {
            Ok(appended) => self.after_flush_append(&appended, boundary, pending.at),
            Err(error) => {
                // In effect now all the same, at this boundary, and logged at the next
                // operation that finds room. No client write is acknowledged meanwhile: it
                // would need room too.
                if pending.unlogged_boundary.is_none() {
                    tracing::warn!(%error, "could not log a delayed flush_all coming into effect; \
                        it is in effect, and logged as soon as there is room");
                }
                self.state.flush.pending = Some(PendingFlush {
                    unlogged_boundary: Some(boundary),
                    ..pending
                });
            }
        }
    }

    fn after_flush_append(&mut self, appended: &Appended, boundary: u64, at: u32) {
        let segment = Rc::clone(self.appended_segment(appended));
        self.state
            .apply_flush(&segment, appended.len, appended.lsn, boundary, at);
    }

    fn appended_segment(&self, appended: &Appended) -> &Rc<Segment<S::File>> {
        match self.log.segment(appended.segment) {
            Some(segment) => segment,
            None => panic!("segment {} just appended to is gone", appended.segment),
        }
    }

    /// Makes sure a record of up to `len_max` bytes can be appended by a client: if the tail
    /// is too full and no new segment fits, evicts (temporary-swap-only) or refuses.
    fn make_room(&mut self, len_max: usize) -> Result<(), StoreError> {
        let tail = self.log.tail();
        if !tail.is_sealed() && tail.free_bytes() >= len_max {
            return Ok(());
        }
        while !self.log.can_roll_over(AppendClass::Client) {
            let full = WalError::Full {
                capacity_bytes: self.config.log.capacity_bytes,
                used_bytes: self.log.used_bytes(),
            };
            match self.config.when_full {
                WhenFull::Refuse => return Err(full.into()),
                WhenFull::EvictOldest => {
                    if !self.evict_oldest()? {
                        return Err(full.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a put record for `key` and makes it the key's item.
    #[expect(
        clippy::too_many_arguments,
        reason = "one record's fields, named at call sites"
    )]
    fn write_put(
        &mut self,
        key: &[u8],
        value: ValueParts<'_>,
        flags: u32,
        expiry: u32,
        cas: Option<u64>,
        stale: bool,
        class: AppendClass,
        previous: Previous,
    ) -> Result<Written, WalError> {
        let lsn = self.log.next_lsn();
        let cas = cas.unwrap_or(lsn);
        let body = Put {
            key,
            value,
            flags,
            expiry,
            cas,
        };
        let record_flags = if stale { RECORD_FLAG_STALE } else { 0 };
        let appended = self.log.append_flagged(
            &body,
            record_flags,
            put_record_len_max(key.len(), value.len()),
            class,
        )?;
        assert_eq!(appended.lsn, lsn);
        let segment = Rc::clone(self.appended_segment(&appended));
        if let Previous::Known(previous) = previous {
            debug_assert_eq!(
                previous,
                self.state
                    .index
                    .get(&self.log, self.state.index.hash(key), key)
            );
        }
        self.index_put(&segment, &appended, key, expiry);
        Ok(Written { lsn, cas })
    }

    /// Makes the put record just appended (`appended`, in `segment`) the item of `key`.
    fn index_put(
        &mut self,
        segment: &Segment<S::File>,
        appended: &Appended,
        key: &[u8],
        expiry: u32,
    ) {
        let hash = self.state.index.hash(key);
        self.state.apply_put(
            &self.log,
            segment,
            appended.offset,
            appended.len,
            (hash, key.len(), || key),
            expiry,
        );
    }

    /// Applies a record copied from another store's log (a passive following its active):
    /// appends it byte for byte, with its LSN (see [`Log::append_copy`]), and changes the
    /// index as recovery would. The result equals the source's store up to that LSN. A
    /// tombstone that counts only with the item after it (`RECORD_FLAG_ITEM_FOLLOWS`) is
    /// refused here: it goes with that item, through [`Store::apply_copy_pair`].
    pub fn apply_copy(&mut self, record: &[u8]) -> Result<Written, StoreError> {
        if is_item_follows(record) {
            return Err(WalError::BadCopy {
                reason: "a tombstone whose item follows it is applied only with that item".into(),
            }
            .into());
        }
        self.apply_one(record, record.len())
    }

    /// Applies a tombstone that counts only with the item after it (`RECORD_FLAG_ITEM_FOLLOWS`)
    /// and that item, copied from another store's log, as [`Store::apply_copy`] applies one
    /// record: both or neither, in one segment, as in the log they came from. Applied one at
    /// a time, a stream cut between them (the active lost) would leave the tombstone alone:
    /// the key's item deleted here, and the tombstone cut by this log's recovery as a torn
    /// tail, taking the records appended after it along. Returns the item's `Written`.
    pub fn apply_copy_pair(
        &mut self,
        tombstone: &[u8],
        item: &[u8],
    ) -> Result<Written, StoreError> {
        let bad = |reason: &str| -> StoreError {
            WalError::BadCopy {
                reason: format!("a tombstone and the item after it: {reason}"),
            }
            .into()
        };
        if !is_item_follows(tombstone) {
            return Err(bad("the first is not a tombstone whose item follows it"));
        }
        // Both are checked before either is appended: an item refused after its tombstone
        // went in would leave the tombstone alone. In an aligned copy: the archive is read
        // in place.
        let pair_len = tombstone.len() + item.len();
        if pair_len > self.config.log.record_len_max() {
            return Err(bad("together they are larger than a segment"));
        }
        let mut scratch = vec![0u128; pair_len.div_ceil(16)];
        // SAFETY: u128 has no invalid bit patterns and u8 has alignment 1.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), scratch.len() * 16)
        };
        bytes[..tombstone.len()].copy_from_slice(tombstone);
        bytes[tombstone.len()..pair_len].copy_from_slice(item);
        let (RecordCheck::Valid(first), RecordCheck::Valid(second)) =
            (check_record(bytes, 0), check_record(bytes, tombstone.len()))
        else {
            return Err(bad("not two valid records"));
        };
        // SAFETY: both passed `check_record` just now, on these bytes.
        let same_key = match unsafe { (first.body_unchecked(), second.body_unchecked()) } {
            (Body::Delete(delete), Body::Put(put)) => delete.key.as_ref() == put.key.as_ref(),
            _ => false,
        };
        if !same_key
            || second.lsn != first.lsn + 1
            || first.total_len != tombstone.len()
            || second.total_len != item.len()
        {
            return Err(bad(
                "the second is not the put of the same key at the next LSN",
            ));
        }
        self.apply_one(tombstone, pair_len)?;
        self.apply_one(item, item.len())
    }

    /// Appends one copied record with `room` bytes free for it in the tail (see
    /// [`Log::append_copy`]) and changes the index as recovery would.
    fn apply_one(&mut self, record: &[u8], room: usize) -> Result<Written, StoreError> {
        let appended = self
            .log
            .append_copy(record, room, AppendClass::Compaction)?;
        let segment = Rc::clone(self.appended_segment(&appended));
        let copied = segment.record(appended.offset);
        // SAFETY: `append_copy` validated the record where it landed.
        let body = unsafe { copied.body_unchecked() };
        let mut cas = appended.lsn;
        match body {
            Body::Put(put) => {
                cas = put.cas.to_native();
                self.index_put(
                    &segment,
                    &appended,
                    put.key.as_ref(),
                    put.expiry.to_native(),
                );
            }
            Body::Delete(delete) => {
                self.state
                    .apply_delete(&self.log, &segment, appended.len, delete.key.as_ref());
            }
            Body::Touch(touch) => self.state.apply_touch(
                &self.log,
                &segment,
                appended.len,
                touch.key.as_ref(),
                touch.cas.to_native(),
                touch.expiry.to_native(),
            ),
            Body::Flush(flush) => self.state.apply_flush(
                &segment,
                appended.len,
                appended.lsn,
                flush.boundary_lsn.to_native(),
                flush.at.to_native(),
            ),
        }
        Ok(Written {
            lsn: appended.lsn,
            cas,
        })
    }

    /// memcached's set, add, replace, append, prepend and cas. `exptime` is memcached's
    /// (relative up to 30 days, else unix time; negative: already expired); it is ignored by
    /// append and prepend, which keep the item's flags and expiry.
    pub fn set(
        &mut self,
        mode: SetMode,
        key: &[u8],
        value: &[u8],
        flags: u32,
        exptime: i64,
    ) -> Result<StoreOutcome, StoreError> {
        check_key(key)?;
        let now = self.clock.now_secs();
        self.tick(now);
        let item_max = self.config.item_size_max_bytes;
        if value.len() > item_max {
            return Err(StoreError::TooLarge {
                len_bytes: value.len(),
                max_bytes: item_max,
            });
        }
        let hash = self.state.index.hash(key);
        // Only the conditional modes look at the current item before writing: a plain set
        // replaces whatever is there, and skipping the look saves a probe and the read of the
        // old record's CAS (at the end of the record, past its value). It asks for the
        // table's lines instead, so that they arrive while the record is serialized and
        // appended, and the index update after it finds them in cache.
        let live = match mode {
            SetMode::Set => {
                self.state.index.prefetch_table(hash);
                None
            }
            _ => self.live_entry(hash, key, now),
        };
        // `CasOrStale` with an older CAS stores the value marked stale.
        let mut stale = false;
        let (stored_len, flags, expiry) = match mode {
            SetMode::Set => (value.len(), flags, expiry_from_exptime(exptime, now)),
            SetMode::Add if live.is_some() => return Ok(StoreOutcome::NotStored),
            SetMode::Add => (value.len(), flags, expiry_from_exptime(exptime, now)),
            SetMode::Replace if live.is_none() => return Ok(StoreOutcome::NotStored),
            SetMode::Replace => (value.len(), flags, expiry_from_exptime(exptime, now)),
            SetMode::Cas(cas) => match &live {
                None => return Ok(StoreOutcome::NotFound),
                Some(e) if put_of(&self.log, e).cas.to_native() != cas => {
                    return Ok(StoreOutcome::Exists);
                }
                Some(_) => (value.len(), flags, expiry_from_exptime(exptime, now)),
            },
            SetMode::CasOrStale(cas) => match &live {
                None => return Ok(StoreOutcome::NotFound),
                Some(e) => {
                    let current = put_of(&self.log, e).cas.to_native();
                    if cas == current {
                        (value.len(), flags, expiry_from_exptime(exptime, now))
                    } else if cas != 0 && cas < current {
                        stale = true;
                        (value.len(), flags, e.expiry)
                    } else {
                        return Ok(StoreOutcome::Exists);
                    }
                }
            },
            SetMode::Append | SetMode::Prepend => match &live {
                None => return Ok(StoreOutcome::NotStored),
                Some(e) => {
                    let put = put_of(&self.log, e);
                    (
                        put.value.len() + value.len(),
                        put.flags.to_native(),
                        e.expiry,
                    )
                }
            },
        };
        if stored_len > item_max {
            // Only append/prepend get here (the value alone fits): memcached cannot allocate
            // the combined item and answers NOT_STORED, keeping the old value.
            return Ok(StoreOutcome::NotStored);
        }
        self.make_room(put_record_len_max(key.len(), stored_len))?;
        let written = match mode {
            SetMode::Append | SetMode::Prepend => {
                // make_room may have evicted the key's segment: look again.
                let Some(entry) = self.state.index.get(&self.log, hash, key) else {
                    return Ok(StoreOutcome::NotStored);
                };
                // Keep the old value's segment alive while the new record is written; the
                // new record goes to the tail, after every byte of the old one.
                let old_item = self.item(&entry);
                let old = old_item.value();
                let parts = if mode == SetMode::Append {
                    ValueParts::concat(old, value)
                } else {
                    ValueParts::concat(value, old)
                };
                self.write_put(
                    key,
                    parts,
                    flags,
                    expiry,
                    None,
                    false,
                    AppendClass::Client,
                    Previous::Known(Some(entry)),
                )?
            }
            // The other modes replace whatever entry the key has now. For the conditional
            // ones, make_room may since have evicted the item they checked; they store all
            // the same.
            _ => self.write_put(
                key,
                ValueParts::whole(value),
                flags,
                expiry,
                None,
                stale,
                AppendClass::Client,
                Previous::NotLooked,
            )?,
        };
        Ok(StoreOutcome::Stored(written))
    }

    /// What every one-key operation but `set` starts with: the key checked, the clock read,
    /// a delayed `flush_all` brought into effect if due; the key's hash and the time.
    fn begin(&mut self, key: &[u8]) -> Result<(u64, u32), StoreError> {
        check_key(key)?;
        let now = self.clock.now_secs();
        self.tick(now);
        Ok((self.state.index.hash(key), now))
    }

    /// memcached's get/gets: the live item for `key`.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Item<S::File>>, StoreError> {
        let (hash, now) = self.begin(key)?;
        Ok(self
            .state
            .index
            .get_reading(&self.log, hash, key, ITEM_READ_AHEAD_BYTES)
            .filter(|e| self.is_live(e, now))
            .map(|e| self.item(&e)))
    }

    /// Prepares a lookup of `key` that comes shortly after (the next request of a burst): see
    /// `Index::prefetch`. Changes nothing, and needs no check of the key (the request that
    /// uses it is checked when it runs): a key no entry has the length of touches no record.
    pub fn prefetch(&self, key: &[u8]) {
        let hash = self.state.index.hash(key);
        self.state.index.prefetch(&self.log, hash, key.len());
    }

    /// The step before [`Store::prefetch`], a request earlier: asks for the index table's
    /// lines that a lookup of `key` reads, without waiting for them (see
    /// `Index::prefetch_table`). Changes nothing and reads no record.
    pub fn prefetch_table(&self, key: &[u8]) {
        self.state.index.prefetch_table(self.state.index.hash(key));
    }

    /// memcached's delete.
    pub fn delete(&mut self, key: &[u8]) -> Result<Changed, StoreError> {
        let (hash, now) = self.begin(key)?;
        if self.live_entry(hash, key, now).is_none() {
            return Ok(None);
        }
        self.make_room(small_record_len_max(key.len()))?;
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        let body = Delete {
            key,
            since_segment: entry.since,
        };
        let appended =
            self.log
                .append(&body, small_record_len_max(key.len()), AppendClass::Client)?;
        let segment = Rc::clone(self.appended_segment(&appended));
        self.state
            .apply_delete(&self.log, &segment, appended.len, key);
        Ok(Some(Written {
            lsn: appended.lsn,
            cas: appended.lsn,
        }))
    }

    /// memcached's touch: a new expiry for the live item, keeping its CAS.
    pub fn touch(&mut self, key: &[u8], exptime: i64) -> Result<Changed, StoreError> {
        let (hash, now) = self.begin(key)?;
        if self.live_entry(hash, key, now).is_none() {
            return Ok(None);
        }
        self.make_room(touch_record_len(key.len()))?;
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        let cas = put_of(&self.log, &entry).cas.to_native();
        let expiry = expiry_from_exptime(exptime, now);
        let body = Touch { key, cas, expiry };
        let appended = self
            .log
            .append(&body, touch_record_len(key.len()), AppendClass::Client)?;
        assert_eq!(appended.len, touch_record_len(key.len()));
        let segment = Rc::clone(self.appended_segment(&appended));
        self.state
            .apply_touch(&self.log, &segment, appended.len, key, cas, expiry);
        Ok(Some(Written {
            lsn: appended.lsn,
            cas,
        }))
    }

    /// memcached's meta `md <key> I [T<ttl>]`: the live item is kept but marked stale, with a
    /// new CAS (so a later `ms ... C<old cas>` sees the item changed), and with `exptime`,
    /// if given, as its new expiry (memcached's rules). One put record: the item's value,
    /// flags and the stale mark, so that the mark survives a restart.
    pub fn invalidate(&mut self, key: &[u8], exptime: Option<i64>) -> Result<Changed, StoreError> {
        let (hash, now) = self.begin(key)?;
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        let value_len = put_of(&self.log, &entry).value.len();
        self.make_room(put_record_len_max(key.len(), value_len))?;
        // make_room may have evicted the key's segment: look again.
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        // Keeps the value's segment mapped while its copy is written.
        let old = self.item(&entry);
        let expiry = exptime.map_or(entry.expiry, |exptime| expiry_from_exptime(exptime, now));
        let written = self.write_put(
            key,
            ValueParts::whole(old.value()),
            old.flags(),
            expiry,
            None,
            true,
            AppendClass::Client,
            Previous::Known(Some(entry)),
        )?;
        Ok(Some(written))
    }

    /// memcached's gat/gats: touch, then get. One record.
    pub fn get_and_touch(
        &mut self,
        key: &[u8],
        exptime: i64,
    ) -> Result<Option<TouchedItem<S::File>>, StoreError> {
        let Some(written) = self.touch(key, exptime)? else {
            return Ok(None);
        };
        let hash = self.state.index.hash(key);
        // memcached returns the item it touched even when the new expiry is already past
        // (`gat -1 k` answers the value once, then it is gone): take the entry the touch just
        // updated without asking whether it is still live.
        Ok(self
            .state
            .index
            .get(&self.log, hash, key)
            .map(|e| (self.item(&e), written)))
    }

    /// memcached's incr/decr on a decimal value: returns the new value.
    pub fn delta(
        &mut self,
        key: &[u8],
        delta: Delta,
    ) -> Result<Option<(u64, Written)>, StoreError> {
        let (hash, now) = self.begin(key)?;
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        let put = put_of(&self.log, &entry);
        // memcached's safe_strtoull: ` 12`, `12 abc` and `+12` count as 12, `12abc` does not.
        let current = number::parse_u64(put.value.as_ref()).ok_or(StoreError::NonNumeric)?;
        let flags = put.flags.to_native();
        let new = match delta {
            Delta::Incr(n) => current.wrapping_add(n),
            Delta::Decr(n) => current.saturating_sub(n),
        };
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(new).as_bytes();
        self.make_room(put_record_len_max(key.len(), digits.len()))?;
        let Some(entry) = self.live_entry(hash, key, now) else {
            return Ok(None);
        };
        let written = self.write_put(
            key,
            ValueParts::whole(digits),
            flags,
            entry.expiry,
            None,
            false,
            AppendClass::Client,
            Previous::Known(Some(entry)),
        )?;
        Ok(Some((new, written)))
    }

    /// memcached's flush_all: with `delay` 0 (or negative) every item is invalid at once;
    /// otherwise (memcached exptime rules) at that time, and every item stored before then.
    pub fn flush_all(&mut self, delay: i64) -> Result<Written, StoreError> {
        let now = self.clock.now_secs();
        self.tick(now);
        let at = if delay <= 0 {
            now
        } else {
            expiry_from_exptime(delay, now)
        };
        self.make_room(small_record_len_max(0))?;
        let lsn = self.log.next_lsn();
        let immediate = at <= now;
        let body = Flush {
            boundary_lsn: if immediate { lsn } else { 0 },
            at,
        };
        let appended = self
            .log
            .append(&body, small_record_len_max(0), AppendClass::Client)?;
        self.after_flush_append(&appended, body.boundary_lsn, at);
        Ok(Written { lsn, cas: lsn })
    }

    /// When a delayed `flush_all` that has not taken effect yet will (unix seconds).
    pub fn pending_flush_at(&self) -> Option<u32> {
        self.state.flush.pending.map(|pending| pending.at)
    }

    /// Calls `f` with every live item (for tests, checks and tools; slow: reads every record).
    pub fn for_each_live(&self, mut f: impl FnMut(&Item<S::File>)) {
        let now = self.clock.now_secs();
        for entry in self.state.index.iter() {
            if self.is_live(entry, now) {
                f(&self.item(entry));
            }
        }
    }

    /// Checks the accounting invariants (for tests): every entry points at a put of its key,
    /// and no segment has less live data than its index entries point at.
    pub fn check_invariants(&self) {
        use std::collections::HashMap;
        let mut put_bytes: HashMap<u64, u64> = HashMap::new();
        for entry in self.state.index.iter() {
            let Some(segment) = self.log.segment(u64::from(entry.segment)) else {
                panic!("entry points at missing segment {}", entry.segment);
            };
            let record = segment.record(entry.offset());
            assert_eq!(record.kind, RecordKind::Put);
            *put_bytes.entry(segment.id()).or_default() += record.total_len as u64;
            assert!(
                entry.since <= entry.segment,
                "since after the put's segment"
            );
        }
        for segment in self.log.segments() {
            let puts = put_bytes.get(&segment.id()).copied().unwrap_or(0);
            assert!(
                segment.live_bytes() >= puts,
                "segment {} counts {} live bytes, its items alone take {puts}",
                segment.id(),
                segment.live_bytes()
            );
        }
    }
}

#[cfg(test)]
mod replay_order_tests {
    use super::*;

    fn deferred(hash: u64, offset: u32) -> Deferred {
        Deferred {
            hash,
            segment: 1,
            offset,
            record_len: 0,
            expiry: 0,
            key_len: 1,
            kind: DeferredKind::Put,
        }
    }

    #[test]
    fn sorting_by_bucket_keeps_each_keys_records_in_log_order() {
        // Offsets stand for log order; equal hashes stand for one key's records.
        let mut items: Vec<Deferred> = (0..5000u32)
            .map(|i| deferred(u64::from(i % 97).wrapping_mul(0x9e37_79b9_7f4a_7c15), i))
            .collect();
        let mut scratch = Vec::new();
        for bits in [0, 3, 11, 12, 23] {
            let mut sorted = items.clone();
            sort_by_low_hash_bits(&mut sorted, &mut scratch, bits);
            let mask = (1u64 << bits) - 1;
            for pair in sorted.windows(2) {
                let (a, b) = (pair[0].hash & mask, pair[1].hash & mask);
                assert!(
                    a < b
                        || (a == b
                            && (pair[0].hash != pair[1].hash || pair[0].offset < pair[1].offset)),
                    "bits {bits}: {:?} before {:?}",
                    pair[0],
                    pair[1]
                );
            }
            let mut offsets: Vec<u32> = sorted.iter().map(|d| d.offset).collect();
            offsets.sort_unstable();
            assert_eq!(
                offsets,
                (0..5000).collect::<Vec<_>>(),
                "nothing lost or doubled"
            );
        }
        items.clear();
        sort_by_low_hash_bits(&mut items, &mut scratch, 20);
        assert!(items.is_empty());
    }
}
