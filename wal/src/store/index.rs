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
use std::cell::Cell;
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

/// Whether the put record an entry points to is of a stale item (`RECORD_FLAG_STALE`).
pub(crate) fn is_stale<F: SegmentFile>(segments: &impl SegmentLookup<F>, entry: &Entry) -> bool {
    segment_of(segments, entry)
        .record(entry.offset())
        .is_stale()
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

fn address_of(entry: &Entry) -> usize {
    std::ptr::from_ref(entry).addr()
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
    /// Where the table's memory is, as last seen by [`Index::prefetch_table`].
    layout: Cell<Option<TableLayout>>,
}

/// An occupied bucket of the table and its entry's address: from them follow the addresses
/// of every bucket and control byte of the table's current allocation. hashbrown lays a
/// table out as `[entry n-1, ..., entry 1, entry 0 | control byte 0, 1, ..., n-1, ...]`: entry
/// `i` ends `i * size_of::<Entry>()` bytes before the control bytes start, and a hash's probe
/// starts at bucket `hash & (n - 1)`. hashbrown does not export addresses; these are derived,
/// and used only for `prefetch` instructions, which never fault and change nothing: were
/// hashbrown's layout to change, the prefetches would miss, not break anything (a test
/// checks the derivation against the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableLayout {
    buckets: usize,
    index: usize,
    /// The entry's address (an address, not a pointer: nothing is read through it).
    entry: usize,
    /// Where the control bytes start, which is where entry 0 ends.
    control: usize,
}

impl TableLayout {
    /// The layout of `table`'s allocation, `None` while it holds nothing.
    fn of(table: &HashTable<Entry>) -> Option<Self> {
        let index = table.iter_buckets().next()?;
        let entry = address_of(table.get_bucket(index)?);
        Some(Self {
            buckets: table.num_buckets(),
            index,
            entry,
            control: entry.wrapping_add((index + 1) * size_of::<Entry>()),
        })
    }

    /// Whether `table` is still laid out so: its remembered entry is where it was (if it is,
    /// the whole allocation is, since every address follows from that one).
    fn still_fits(&self, table: &HashTable<Entry>) -> bool {
        self.buckets == table.num_buckets()
            && table
                .get_bucket(self.index)
                .is_some_and(|entry| address_of(entry) == self.entry)
    }

    fn probe_start(&self, hash: u64) -> usize {
        (hash as usize) & (self.buckets - 1)
    }

    fn control_address(&self, index: usize) -> usize {
        self.control.wrapping_add(index)
    }

    fn entry_address(&self, index: usize) -> usize {
        self.control
            .wrapping_sub((index + 1).wrapping_mul(size_of::<Entry>()))
    }
}

/// The line size of the CPU caches that [`prefetch_read`] fills.
const CACHE_LINE_BYTES: usize = 64;

/// Control bytes hashbrown reads at once, from a probe's start (the SSE2 group width).
const PROBE_GROUP_BYTES: usize = 16;

/// Buckets from a probe's start whose entries [`Index::prefetch_table`] fetches: an entry is
/// placed in the first free bucket from its probe start, most often that one or the next.
const PREFETCH_ENTRIES: usize = 2;

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
            layout: Cell::new(None),
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

    /// The entry that points at the put record at `offset` of segment `segment`, whose key
    /// hashes to `hash`: found by its location, reading no record. An entry points at one
    /// record, so the entry that points at this one is its key's; if none does, the record
    /// was superseded (or its key deleted). Compaction asks this of every put it scans, and
    /// most are superseded: comparing keys would read each one's current record, a cache
    /// miss anywhere in the log, only to find that the locations differ.
    pub fn get_at(&self, hash: u64, segment: u32, offset: usize) -> Option<Entry> {
        let offset_div = Entry::offset_div(offset);
        self.table
            .find(hash, |e| e.segment == segment && e.offset_div == offset_div)
            .copied()
    }

    /// The entry for `key`, asking the CPU for the first `record_bytes` of a candidate's record
    /// before its key is compared. The comparison stalls on the record's first line; a reader
    /// of the item then needs the lines after it (the value, and the archive root at the
    /// record's end), which this fetches alongside instead of one miss after another. A
    /// candidate that turns out not to be `key` costs only the prefetches.
    pub fn get_reading<F: SegmentFile>(
        &self,
        segments: &impl SegmentLookup<F>,
        hash: u64,
        key: &[u8],
        record_bytes: usize,
    ) -> Option<Entry> {
        self.table
            .find(hash, |e| {
                if usize::from(e.key_len) != key.len() {
                    return false;
                }
                let segment = segment_of(segments, e);
                // The record's start plus one line per CACHE_LINE_BYTES: a prefetch never
                // faults, so a record shorter than `record_bytes` (or at the end of the
                // mapping) costs nothing but the request for lines no one reads.
                let start = segment.file().as_mut_ptr().wrapping_add(e.offset());
                let mut at = CACHE_LINE_BYTES;
                while at < record_bytes {
                    prefetch_read(start.wrapping_add(at));
                    at += CACHE_LINE_BYTES;
                }
                key_of(segments, e) == key
            })
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

    /// Asks the CPU for the table's lines that a lookup of `hash` reads first (the control
    /// bytes of its probe's first group and the first entries from its start) without waiting
    /// for them, so that [`Index::prefetch`] of the same hash, a request later, finds them in
    /// cache instead of stalling on them. Reads nothing of the table but one control byte,
    /// the same on every call (to check that the table has not moved).
    pub fn prefetch_table(&self, hash: u64) {
        let layout = match self.layout.get() {
            Some(layout) if layout.still_fits(&self.table) => layout,
            _ => {
                let Some(layout) = TableLayout::of(&self.table) else {
                    return;
                };
                self.layout.set(Some(layout));
                layout
            }
        };
        let pos = layout.probe_start(hash);
        let at = std::ptr::without_provenance::<u8>;
        let control = layout.control_address(pos);
        prefetch_read(at(control));
        prefetch_read(at(control.wrapping_add(PROBE_GROUP_BYTES - 1)));
        // Entries `pos`, `pos + 1`, ... lie at falling addresses.
        let first_end = layout
            .entry_address(pos)
            .wrapping_add(size_of::<Entry>() - 1);
        prefetch_read(at(first_end));
        prefetch_read(at(layout.entry_address(pos + PREFETCH_ENTRIES - 1)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry standing for key number `id` (kept in `segment`), hashed by a fixed hasher.
    fn entry(id: u32) -> Entry {
        Entry {
            segment: id,
            offset_div: 0,
            expiry: 0,
            since: 0,
            touch_segment: 0,
            key_len: 1,
        }
    }

    /// A fixed, well-mixed hash of the entry's id (splitmix64's finalizer). Not the index's
    /// own hasher: foldhash is seeded at random per process, and with some seeds its hashes
    /// of small consecutive integers cluster in the low bits, which made the share of entries
    /// in their probe's first group (checked below) vary from run to run.
    fn hash_of(e: &Entry) -> u64 {
        let mut z = u64::from(e.segment).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn table_layout_names_the_addresses_hashbrown_uses() {
        let mut table: HashTable<Entry> = HashTable::new();
        assert_eq!(
            TableLayout::of(&table),
            None,
            "an empty table has no layout"
        );
        let mut last: Option<TableLayout> = None;
        for id in 0..20_000u32 {
            let e = entry(id);
            table.insert_unique(hash_of(&e), e, hash_of);
            if id % 1_000 != 999 {
                continue;
            }
            let layout = TableLayout::of(&table).expect("a layout");
            assert!(layout.still_fits(&table));
            if let Some(before) = last
                && before.buckets != layout.buckets
            {
                assert!(!before.still_fits(&table), "a grown table moved");
            }
            last = Some(layout);
            // Every entry is where the layout says its bucket is.
            for index in table.iter_buckets() {
                let actual = address_of(table.get_bucket(index).expect("occupied"));
                assert_eq!(layout.entry_address(index), actual, "bucket {index}");
            }
            // The control bytes follow entry 0, and a probe starts at `hash & (n - 1)`: an
            // entry is placed in the first free bucket from its probe start, almost always
            // within the first group of control bytes that the probe reads.
            assert_eq!(
                layout.control_address(0),
                layout.entry_address(0) + size_of::<Entry>()
            );
            let near = (0..=id)
                .filter(|&i| {
                    let hash = hash_of(&entry(i));
                    let index = table
                        .find_bucket_index(hash, |e| e.segment == i)
                        .expect("present");
                    let from_start =
                        index.wrapping_sub(layout.probe_start(hash)) & (layout.buckets - 1);
                    from_start < PROBE_GROUP_BYTES
                })
                .count();
            assert!(
                near * 10 >= (id as usize + 1) * 9,
                "{near} of {} entries in their probe's first group",
                id + 1
            );
        }
    }

    #[test]
    fn get_at_finds_an_entry_by_its_record_location_only() {
        let mut index = Index::new();
        let at = |id: u32| Entry {
            offset_div: id * 3 + 1,
            ..entry(id)
        };
        for id in 0..2_000u32 {
            let e = at(id);
            index.table.insert_unique(hash_of(&e), e, hash_of);
        }
        for id in 0..2_000u32 {
            let e = at(id);
            let hash = hash_of(&e);
            assert_eq!(index.get_at(hash, e.segment, e.offset()), Some(e));
            // The same key's hash with another location: a superseded record.
            let moved = e.offset() + RECORD_ALIGN_BYTES;
            assert_eq!(index.get_at(hash, e.segment, moved), None);
            assert_eq!(index.get_at(hash, e.segment + 1, e.offset()), None);
        }
    }

    #[test]
    fn prefetch_table_follows_the_table_as_it_grows_and_empties() {
        let mut index = Index::new();
        index.prefetch_table(42); // empty: nothing to fetch
        assert_eq!(index.layout.get(), None);
        for id in 0..5_000u32 {
            let e = entry(id);
            index.table.insert_unique(hash_of(&e), e, hash_of);
            index.prefetch_table(u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let layout = index.layout.get().expect("remembered");
            assert!(layout.still_fits(&index.table), "after {id} inserts");
        }
        index.table.clear();
        index.prefetch_table(7);
        assert!(
            !index.layout.get().expect("kept").still_fits(&index.table),
            "an emptied table does not fit its old layout"
        );
    }
}
