//! The index of one shard: key -> where its current item lives.
//!
//! Keys are not copied into memory: an entry holds the location of the item's `Put` record
//! and the key's length, and the key is read from the mapping when two keys must be compared
//! (on a hash match of the same length, or to rehash when the table grows). That keeps an
//! entry at 24 bytes and the anonymous memory of the index near 50 bytes per key, whatever the
//! key length (see the memory benchmark).
//!
//! A key is read from where FORMAT.md puts it, the first bytes of the put's payload, so that a
//! comparison reads one or two cache lines of the record: not its header, and not the archive
//! root at its end (after the value). A SET of an existing key took four cache misses before
//! (table control bytes, entry, record header, root) and takes three now.
//!
//! Flags, CAS and the value are read from the record too; the entry keeps only what changes
//! without a new put (expiry, via touch) and what compaction needs without reading records.

use crate::constants::{KEY_LEN_MAX_BYTES, RECORD_ALIGN_BYTES, RECORD_HEADER_LEN_BYTES};
use crate::format::{ArchivedPut, Body};
use crate::log::Segment;
use crate::storage::SegmentFile;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher as _;
use std::rc::Rc;

/// Where a key's current item is, and what the store needs to know about it without reading
/// the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Segment of the item's `Put` record.
    pub segment: u32,
    /// Offset of that record in its segment, divided by the record alignment.
    pub offset_div: u32,
    /// Absolute expiry in unix seconds, 0 never. Differs from the record's after a touch.
    pub expiry: u32,
    /// Oldest segment that may hold any record of this key (older puts, tombstones): a
    /// tombstone for the key is needed while a segment in `[since, tombstone's segment)` exists.
    pub since: u32,
    /// Segment of the latest `Touch` record that set `expiry`, 0 if none.
    pub touch_segment: u32,
    /// Length of the key, 1 to `KEY_LEN_MAX_BYTES`.
    pub key_len: u8,
}

const _: () = assert!(size_of::<Entry>() == 24);
const _: () = assert!(KEY_LEN_MAX_BYTES <= u8::MAX as usize);

impl Entry {
    /// Byte offset of the put record.
    pub fn offset(&self) -> usize {
        self.offset_div as usize * RECORD_ALIGN_BYTES
    }

    /// The stored offset for a byte offset.
    pub fn offset_div(offset: usize) -> u32 {
        debug_assert_eq!(offset % RECORD_ALIGN_BYTES, 0);
        (offset / RECORD_ALIGN_BYTES) as u32
    }
}

/// Finds segments by id, for reading keys out of records.
pub(crate) trait SegmentLookup<F> {
    fn segment(&self, id: u32) -> Option<&Rc<Segment<F>>>;
}

/// The segment an entry's put record is in. Index entries only point into live segments: a
/// missing one is a bug, not a state to handle.
pub(crate) fn segment_of<'a, F: SegmentFile>(
    segments: &'a impl SegmentLookup<F>,
    entry: &Entry,
) -> &'a Rc<Segment<F>> {
    let Some(segment) = segments.segment(entry.segment) else {
        panic!("index entry points to missing segment {}", entry.segment);
    };
    segment
}

/// The put record an entry points to.
pub(crate) fn put_of<'a, F: SegmentFile>(
    segments: &'a impl SegmentLookup<F>,
    entry: &Entry,
) -> &'a ArchivedPut<'static> {
    let segment = segment_of(segments, entry);
    // SAFETY: index entries only ever point at validated put records of live segments.
    match unsafe { segment.record(entry.offset()).body_unchecked() } {
        Body::Put(put) => put,
        other => panic!("index entry points to a {other:?}, not a put"),
    }
}

/// The key of the put record an entry points to: the first `key_len` bytes of its payload
/// (checked for every put when it is validated, see `format::check_payload`).
pub(crate) fn key_of<'a, F: SegmentFile>(
    segments: &'a impl SegmentLookup<F>,
    entry: &Entry,
) -> &'a [u8] {
    let segment = segment_of(segments, entry);
    let start = entry.offset() + RECORD_HEADER_LEN_BYTES;
    let key = segment.slice(start, start + usize::from(entry.key_len));
    debug_assert_eq!(key, put_of(segments, entry).key.as_ref());
    key
}

/// Whether an entry is `key`'s: the lengths first, which costs no read of the mapping.
fn is_key_of<F: SegmentFile>(segments: &impl SegmentLookup<F>, entry: &Entry, key: &[u8]) -> bool {
    usize::from(entry.key_len) == key.len() && key_of(segments, entry) == key
}

/// Asks the CPU to bring the cache line at `address` into its caches; never faults, and a
/// no-op where there is no such instruction.
#[inline(always)]
fn prefetch_read(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and does not fault,
        // whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Hashes keys as an [`Index`] does ([`Index::key_hasher`]).
#[derive(Clone)]
pub(crate) struct KeyHasher(DefaultHashBuilder);

impl KeyHasher {
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.0.hash_one(key)
    }
}

/// The index: a hash table of entries, keyed by the key bytes in the records.
pub(crate) struct Index {
    table: HashTable<Entry>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("len", &self.table.len())
            .finish()
    }
}

impl Index {
    pub fn new() -> Self {
        Self {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// A hasher that hashes keys as this index does, for another thread (recovery hashes
    /// the keys of the records it checks on the checking threads).
    pub fn key_hasher(&self) -> KeyHasher {
        KeyHasher(self.hasher.clone())
    }

    /// The entry for `key`.
    pub fn get<F: SegmentFile>(
        &self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key: &[u8],
    ) -> Option<Entry> {
        self.table
            .find(hash, |e| is_key_of(segments, e, key))
            .copied()
    }

    /// Prepares a lookup of a key of `key_len` bytes with `hash`, so that one made shortly
    /// after it (the next request of a burst) finds in cache what it reads: this reads the
    /// table's lines for `hash` (taking their misses now), and asks the CPU to fetch the key of
    /// every candidate entry from its record, without waiting for it. Reads nothing else.
    pub fn prefetch<F: SegmentFile>(
        &self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key_len: usize,
    ) {
        let _ = self.table.find(hash, |e| {
            if usize::from(e.key_len) == key_len
                && let Some(segment) = segments.segment(e.segment)
            {
                let start = e.offset() + RECORD_HEADER_LEN_BYTES;
                let stored_key = segment.slice(start, start + key_len);
                // Its first and last bytes: a key can straddle two cache lines.
                prefetch_read(stored_key.as_ptr());
                prefetch_read(stored_key.as_ptr().wrapping_add(key_len - 1));
            }
            // Go on: every candidate's key is fetched, as the lookup will compare them all.
            false
        });
    }

    /// Sets the entry for `key` to `make(previous entry)`, in one probe; returns the entry it
    /// replaced. The new entry's put record must be readable through `segments`.
    ///
    /// `is_key` says whether a stored key of `key_len` bytes is the one being set: replay
    /// reads its own key from the record only when the table has a candidate to compare.
    pub fn upsert<F: SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key_len: usize,
        is_key: impl Fn(&[u8]) -> bool,
        make: impl FnOnce(Option<&Entry>) -> Entry,
    ) -> Option<Entry> {
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |e| usize::from(e.key_len) == key_len && is_key(key_of(segments, e)),
            |e| hasher.hash_one(key_of(segments, e)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                let entry = make(Some(occupied.get()));
                Some(std::mem::replace(occupied.get_mut(), entry))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(make(None));
                None
            }
        }
    }

    /// Changes the entry for `key` in place; returns whether it exists.
    pub fn update<F: SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key: &[u8],
        change: impl FnOnce(&mut Entry),
    ) -> bool {
        match self.table.find_mut(hash, |e| is_key_of(segments, e, key)) {
            Some(entry) => {
                change(entry);
                true
            }
            None => false,
        }
    }

    /// Removes the entry for `key`.
    pub fn remove<F: SegmentFile>(
        &mut self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key: &[u8],
    ) -> Option<Entry> {
        self.table
            .find_entry(hash, |e| is_key_of(segments, e, key))
            .ok()
            .map(|occupied| occupied.remove().0)
    }

    /// Makes room for `additional` more entries without growing (recovery, which would
    /// otherwise rehash the table, reading every key from the mappings, each time it grows).
    pub fn reserve<F: SegmentFile>(&mut self, segments: &impl SegmentLookup<F>, additional: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |e| hasher.hash_one(key_of(segments, e)));
    }

    /// Gives back memory reserved beyond need.
    pub fn shrink_to_fit<F: SegmentFile>(&mut self, segments: &impl SegmentLookup<F>) {
        let hasher = &self.hasher;
        self.table
            .shrink_to_fit(|e| hasher.hash_one(key_of(segments, e)));
    }

    /// The table's bucket count, as a number of bits: entries are placed by the low bits of
    /// their hash, so inserting in order of `hash & (2^bits - 1)` walks the table in order.
    pub fn bucket_bits(&self) -> u32 {
        // hashbrown keeps 1/8 of a power-of-two bucket array free.
        let buckets = (self.table.capacity().saturating_mul(8) / 7).next_power_of_two();
        buckets.trailing_zeros()
    }

    /// Entries the table holds without growing.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Every entry (for checks and expiry sweeps).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    /// Bytes of memory the table holds (buckets and control bytes).
    pub fn allocation_bytes(&self) -> usize {
        self.table.allocation_size()
    }
}
