//! The record payloads: rkyv archives of what each kind of record says.
//!
//! Writers build these from borrowed slices (the key and value straight from a request
//! buffer, or from another record's mapping) and serialize them directly into the mapped tail
//! of a segment: there is no intermediate buffer. Readers access the archived form in place.
//!
//! Invariants:
//! - A payload's root object is at its end (rkyv's layout); the record header stores the exact
//!   payload length so the root can be found.
//! - Every archived type here has an alignment of at most 8; payloads start 16-aligned.

use rkyv::{
    Archive, Place, Serialize,
    boxed::{ArchivedBox, BoxResolver},
    primitive::{ArchivedUsize, FixedUsize},
    rancor::Fallible,
    ser::{Writer, WriterExt as _},
    with::{ArchiveWith, InlineAsBox, SerializeWith},
};

/// A value given as up to two slices that are stored concatenated: `append` and `prepend`
/// write `old ++ new` without joining them in memory first.
#[derive(Clone, Copy, Debug)]
pub struct ValueParts<'a> {
    first: &'a [u8],
    second: &'a [u8],
}

impl<'a> ValueParts<'a> {
    /// A value that is one slice.
    pub fn whole(value: &'a [u8]) -> Self {
        Self {
            first: value,
            second: &[],
        }
    }

    /// A value that is `first` followed by `second`.
    pub fn concat(first: &'a [u8], second: &'a [u8]) -> Self {
        Self { first, second }
    }

    /// Length of the stored value.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Whether the stored value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// rkyv wrapper that archives [`ValueParts`] as one `ArchivedBox<[u8]>`.
#[derive(Debug)]
pub struct Concat;

impl<'a> ArchiveWith<ValueParts<'a>> for Concat {
    type Archived = ArchivedBox<[u8]>;
    type Resolver = BoxResolver;

    fn resolve_with(field: &ValueParts<'a>, resolver: BoxResolver, out: Place<Self::Archived>) {
        // Lengths were bounded by the segment size (< 4 GiB) before serializing.
        let len = field.len() as FixedUsize;
        ArchivedBox::resolve_from_raw_parts(resolver, ArchivedUsize::from_native(len), out);
    }
}

impl<'a, S> SerializeWith<ValueParts<'a>, S> for Concat
where
    S: Fallible + Writer + ?Sized,
{
    fn serialize_with(field: &ValueParts<'a>, serializer: &mut S) -> Result<BoxResolver, S::Error> {
        // Bytes have alignment 1: no padding before them.
        let pos = serializer.align(1)?;
        serializer.write(field.first)?;
        serializer.write(field.second)?;
        Ok(BoxResolver::from_pos(pos))
    }
}

/// A stored item: the whole state of one key.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct Put<'a> {
    /// The key, 1 to `KEY_LEN_MAX_BYTES` bytes.
    #[rkyv(with = InlineAsBox)]
    pub key: &'a [u8],
    /// The value.
    #[rkyv(with = Concat)]
    pub value: ValueParts<'a>,
    /// Opaque client flags (memcached's `flags`).
    pub flags: u32,
    /// Absolute expiry in unix seconds; 0 never expires.
    pub expiry: u32,
    /// The item's CAS: the LSN of the record that first stored this value. Kept when the record
    /// is rewritten by compaction, so it identifies the value, not the copy.
    pub cas: u64,
}

/// A tombstone: the key was deleted. Keeps older records of the key dead across restarts.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct Delete<'a> {
    /// The deleted key.
    #[rkyv(with = InlineAsBox)]
    pub key: &'a [u8],
    /// The oldest segment that may still hold a record of this key. The tombstone is needed
    /// while any segment from `since_segment` up to its own exists.
    pub since_segment: u32,
}

/// A new expiry for the item whose CAS is `cas` (memcached `touch`, `gat`).
#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct Touch<'a> {
    /// The touched key.
    #[rkyv(with = InlineAsBox)]
    pub key: &'a [u8],
    /// CAS of the item touched; a touch never applies to another value of the key.
    pub cas: u64,
    /// New absolute expiry in unix seconds; 0 never expires.
    pub expiry: u32,
}

/// memcached `flush_all`: every item with a CAS below `boundary_lsn` is invalid from `at` on.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
pub struct Flush {
    /// Items with a CAS below this are flushed. 0 marks a delayed flush that is still pending:
    /// when `at` arrives, the store writes a flush whose boundary is the LSN of that moment.
    pub boundary_lsn: u64,
    /// Unix seconds at which the flush takes effect.
    pub at: u32,
}
