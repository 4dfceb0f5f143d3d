//! Record framing: the 32-byte header, the payload, the padding, and their checks.
//!
//! ```text
//! offset 0   crc32    u32 LE   over bytes [4, 32 + len)
//!        4   len      u32 LE   exact payload length
//!        8   lsn      u64 LE   log sequence number
//!        16  kind     u8       RecordKind
//!        17  flags    u8       RECORD_FLAG_STALE on a put; 0 otherwise (format version 2)
//!        18  reserved [u8; 6]  zero
//!        24  term     u64 LE   mirror group term
//!        32  payload  rkyv archive, `len` bytes, root at its end
//!        32+len       zero padding up to the next multiple of 16
//! ```
//!
//! Invariants: records start 16-aligned, so payloads are 16-aligned; a header of 32 zero bytes
//! is never a record (a record's `len` is never 0) and marks the end of a segment's records.

use crate::constants::{
    KEY_LEN_MAX_BYTES, RECORD_ALIGN_BYTES, RECORD_CRC_OFFSET, RECORD_FLAG_ITEM_FOLLOWS,
    RECORD_FLAG_STALE, RECORD_FLAGS_DELETE, RECORD_FLAGS_OFFSET, RECORD_FLAGS_PUT,
    RECORD_HEADER_LEN_BYTES, RECORD_KIND_OFFSET, RECORD_LEN_OFFSET, RECORD_LSN_OFFSET,
    RECORD_RESERVED_OFFSET, RECORD_TERM_OFFSET,
};
use crate::format::payload::{ArchivedDelete, ArchivedFlush, ArchivedPut, ArchivedTouch};
use rkyv::{
    Portable,
    api::low::{LowSerializer, to_bytes_in_with_alloc},
    rancor::{Failure, Strategy},
    ser::{allocator::SubAllocator, writer::Buffer},
    validation::{Validator, archive::ArchiveValidator},
};
use std::fmt;

/// What a record says. The numbers are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A stored item ([`crate::format::Put`]).
    Put = 1,
    /// A tombstone ([`crate::format::Delete`]).
    Delete = 2,
    /// A new expiry ([`crate::format::Touch`]).
    Touch = 3,
    /// `flush_all` ([`crate::format::Flush`]).
    Flush = 4,
}

impl RecordKind {
    /// The kind for an on-disk byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Put),
            2 => Some(Self::Delete),
            3 => Some(Self::Touch),
            4 => Some(Self::Flush),
            _ => None,
        }
    }
}

/// A payload type that can be written as a record.
pub trait RecordBody:
    for<'b> rkyv::Serialize<LowSerializer<Buffer<'b>, SubAllocator<'static>, Failure>>
{
    /// The kind byte written for this payload.
    const KIND: RecordKind;
}

impl RecordBody for crate::format::Put<'_> {
    const KIND: RecordKind = RecordKind::Put;
}
impl RecordBody for crate::format::Delete<'_> {
    const KIND: RecordKind = RecordKind::Delete;
}
impl RecordBody for crate::format::Touch<'_> {
    const KIND: RecordKind = RecordKind::Touch;
}
impl RecordBody for crate::format::Flush {
    const KIND: RecordKind = RecordKind::Flush;
}

/// Rounds `n` up to the record alignment.
pub const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1)
}

/// Total bytes a record with a payload of `payload_len` bytes occupies.
pub const fn record_len(payload_len: usize) -> usize {
    RECORD_HEADER_LEN_BYTES + align_up(payload_len)
}

/// Size of an archived root plus the padding before it, for payload size bounds.
const ROOT_SLACK_BYTES: usize = 8;

/// An upper bound on the bytes a `Put` record with these lengths occupies, to check that it
/// fits before writing it.
pub const fn put_record_len_max(key_len: usize, value_len: usize) -> usize {
    record_len(key_len + value_len + ROOT_SLACK_BYTES + size_of::<ArchivedPut<'static>>())
}

/// Exact bytes a `Touch` record for a key of `key_len` bytes occupies. The store uses it to
/// account for a touch record becoming dead without reading it back.
pub const fn touch_record_len(key_len: usize) -> usize {
    record_len(align8(key_len) + size_of::<ArchivedTouch<'static>>())
}

/// An upper bound on the bytes any record other than a put occupies for a key of `key_len`.
pub const fn small_record_len_max(key_len: usize) -> usize {
    record_len(key_len + ROOT_SLACK_BYTES + 32)
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Writes a whole record — header, payload, padding — at the start of `dst`, which must be
/// 16-aligned in memory, with term 0. Returns its length, or `None` if it does not fit.
pub fn write_record<T: RecordBody>(dst: &mut [u8], lsn: u64, body: &T) -> Option<usize> {
    write_record_in_term(dst, lsn, 0, body)
}

/// Like [`write_record`], stamped with the mirror group `term` it is written in.
pub fn write_record_in_term<T: RecordBody>(
    dst: &mut [u8],
    lsn: u64,
    term: u64,
    body: &T,
) -> Option<usize> {
    write_record_flagged(dst, lsn, term, 0, body)
}

/// Like [`write_record_in_term`], with record `flags` (only a put carries any:
/// `RECORD_FLAGS_PUT`).
pub fn write_record_flagged<T: RecordBody>(
    dst: &mut [u8],
    lsn: u64,
    term: u64,
    flags: u8,
    body: &T,
) -> Option<usize> {
    assert!(
        flags & !flags_allowed(T::KIND) == 0,
        "record flags {flags:#x} on a {:?}",
        T::KIND
    );
    debug_assert_eq!(
        dst.as_ptr() as usize % RECORD_ALIGN_BYTES,
        0,
        "record not aligned"
    );
    if dst.len() < RECORD_HEADER_LEN_BYTES {
        return None;
    }
    let (header, rest) = dst.split_at_mut(RECORD_HEADER_LEN_BYTES);
    let written = to_bytes_in_with_alloc::<_, _, Failure>(
        body,
        Buffer::from(&mut rest[..]),
        SubAllocator::empty(),
    )
    .ok()?;
    let payload_len = written.len();
    assert!(payload_len > 0, "an archive is never empty");
    let padded_len = align_up(payload_len);
    if padded_len > rest.len() {
        return None;
    }
    rest[payload_len..padded_len].fill(0);
    let len_u32 = u32::try_from(payload_len).ok()?;
    header[RECORD_LEN_OFFSET..RECORD_LSN_OFFSET].copy_from_slice(&len_u32.to_le_bytes());
    header[RECORD_LSN_OFFSET..RECORD_KIND_OFFSET].copy_from_slice(&lsn.to_le_bytes());
    header[RECORD_KIND_OFFSET] = T::KIND as u8;
    header[RECORD_FLAGS_OFFSET] = flags;
    header[RECORD_RESERVED_OFFSET..RECORD_TERM_OFFSET].fill(0);
    header[RECORD_TERM_OFFSET..].copy_from_slice(&term.to_le_bytes());
    let crc = record_crc(header, &rest[..payload_len]);
    header[RECORD_CRC_OFFSET..RECORD_LEN_OFFSET].copy_from_slice(&crc.to_le_bytes());
    Some(RECORD_HEADER_LEN_BYTES + padded_len)
}

/// Whether the record whose bytes start `record` (not checked) is a tombstone that counts
/// only with the put after it (`RECORD_FLAG_ITEM_FOLLOWS`): who moves records between logs
/// (a replication stream, a passive applying it) keeps the two together.
pub fn is_item_follows(record: &[u8]) -> bool {
    record.get(RECORD_KIND_OFFSET) == Some(&(RecordKind::Delete as u8))
        && record
            .get(RECORD_FLAGS_OFFSET)
            .is_some_and(|flags| flags & RECORD_FLAG_ITEM_FOLLOWS != 0)
}

/// The record flags a record of `kind` may carry.
const fn flags_allowed(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::Put => RECORD_FLAGS_PUT,
        RecordKind::Delete => RECORD_FLAGS_DELETE,
        RecordKind::Touch | RecordKind::Flush => 0,
    }
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[RECORD_LEN_OFFSET..RECORD_HEADER_LEN_BYTES]);
    hasher.update(payload);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidRecord {
    /// The header does not fit before the end of the segment.
    HeaderPastEnd,
    /// The payload length is 0 or runs past the end of the segment.
    BadLength {
        /// The stored payload length.
        len: u32,
    },
    /// The kind byte is not a known kind.
    UnknownKind {
        /// The stored kind byte.
        kind: u8,
    },
    /// Reserved header bytes are not zero.
    ReservedNotZero,
    /// The flags byte holds a flag this kind of record never carries.
    UnknownFlags {
        /// The record kind.
        kind: RecordKind,
        /// The stored flags byte.
        flags: u8,
    },
    /// The checksum does not match the bytes.
    CrcMismatch {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum of the bytes on disk.
        computed: u32,
    },
    /// The checksum matched but the payload is not a valid archive of its kind.
    BadPayload {
        /// The record kind.
        kind: RecordKind,
    },
    /// A tombstone written with the item after it (`RECORD_FLAG_ITEM_FOLLOWS`), without that
    /// item: the pair was cut short (in the newest segment, a torn tail).
    ItemMissing {
        /// The tombstone's LSN.
        lsn: u64,
    },
    /// A whole record, but not the one that comes next: stale bytes or damage.
    LsnOutOfSequence {
        /// The record's LSN.
        found: u64,
        /// The LSN the log expected.
        expected: u64,
    },
}

impl fmt::Display for InvalidRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderPastEnd => write!(f, "record header runs past the end of the segment"),
            Self::BadLength { len } => write!(f, "payload length {len} is out of bounds"),
            Self::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
            Self::ReservedNotZero => write!(f, "reserved header bytes are not zero"),
            Self::UnknownFlags { kind, flags } => {
                write!(
                    f,
                    "record flags {flags:#04x} are not valid on a {kind:?} record"
                )
            }
            Self::CrcMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Self::BadPayload { kind } => write!(f, "invalid {kind:?} payload"),
            Self::ItemMissing { lsn } => write!(
                f,
                "tombstone at LSN {lsn} was written with the key's item after it, which is missing"
            ),
            Self::LsnOutOfSequence { found, expected } => {
                write!(f, "record LSN {found} where {expected} was expected")
            }
        }
    }
}

/// One record, borrowed from the bytes it was read from.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Log sequence number.
    pub lsn: u64,
    /// The mirror-group term it was written in (0 outside mirror groups).
    pub term: u64,
    /// What the record says.
    pub kind: RecordKind,
    /// Record flags (`RECORD_FLAG_STALE`; 0 on all but puts).
    pub flags: u8,
    /// The payload, exactly `len` bytes, 16-aligned.
    pub payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub total_len: usize,
}

/// The payload of a record, accessed in place.
#[derive(Clone, Copy)]
pub enum Body<'a> {
    /// A stored item.
    Put(&'a ArchivedPut<'static>),
    /// A tombstone.
    Delete(&'a ArchivedDelete<'static>),
    /// A new expiry.
    Touch(&'a ArchivedTouch<'static>),
    /// A flush.
    Flush(&'a ArchivedFlush),
}

impl fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Put(put) => f
                .debug_struct("Put")
                .field("key_len", &put.key.len())
                .field("value_len", &put.value.len())
                .field("cas", &put.cas.to_native())
                .finish(),
            Self::Delete(delete) => f
                .debug_struct("Delete")
                .field("key_len", &delete.key.len())
                .field("since_segment", &delete.since_segment.to_native())
                .finish(),
            Self::Touch(touch) => f
                .debug_struct("Touch")
                .field("key_len", &touch.key.len())
                .field("cas", &touch.cas.to_native())
                .field("expiry", &touch.expiry.to_native())
                .finish(),
            Self::Flush(flush) => f
                .debug_struct("Flush")
                .field("boundary_lsn", &flush.boundary_lsn.to_native())
                .field("at", &flush.at.to_native())
                .finish(),
        }
    }
}

impl<'a> RecordRef<'a> {
    /// Whether the record is a put of a stale item (memcached's meta invalidation).
    pub fn is_stale(&self) -> bool {
        self.flags & RECORD_FLAG_STALE != 0
    }

    /// Whether the record is a tombstone that counts only with the put after it
    /// (`RECORD_FLAG_ITEM_FOLLOWS`).
    pub fn item_follows(&self) -> bool {
        self.flags & RECORD_FLAG_ITEM_FOLLOWS != 0
    }

    /// The payload accessed in place, without validation.
    ///
    /// # Safety
    /// The record must have been validated by [`check_record`] (at recovery or right after it
    /// was written), and its bytes not changed since.
    pub unsafe fn body_unchecked(&self) -> Body<'a> {
        // SAFETY: the caller guarantees that `payload` passed `check_payload` for `kind`.
        unsafe {
            match self.kind {
                RecordKind::Put => Body::Put(rkyv::access_unchecked(self.payload)),
                RecordKind::Delete => Body::Delete(rkyv::access_unchecked(self.payload)),
                RecordKind::Touch => Body::Touch(rkyv::access_unchecked(self.payload)),
                RecordKind::Flush => Body::Flush(rkyv::access_unchecked(self.payload)),
            }
        }
    }
}

/// What is at an offset of a segment.
#[derive(Debug, Clone, Copy)]
pub enum RecordCheck<'a> {
    /// A header of zero bytes (or no room for a header): no record here, the records end.
    End,
    /// A whole, valid record.
    Valid(RecordRef<'a>),
    /// Something that is not a valid record.
    Invalid(InvalidRecord),
}

/// Reads the record at `offset` of `segment` without checking it: for offsets from our own
/// index, which only points at records validated when they were recovered or written.
///
/// # Safety
/// `offset` must be the offset of a record that passed [`check_record`] on these bytes.
pub unsafe fn record_at_unchecked(segment: &[u8], offset: usize) -> RecordRef<'_> {
    let header = &segment[offset..offset + RECORD_HEADER_LEN_BYTES];
    let len = u32_at(header, RECORD_LEN_OFFSET) as usize;
    let kind_byte = header[RECORD_KIND_OFFSET];
    let Some(kind) = RecordKind::from_byte(kind_byte) else {
        unreachable!("record at {offset} has unknown kind {kind_byte}, but was validated");
    };
    let start = offset + RECORD_HEADER_LEN_BYTES;
    RecordRef {
        lsn: u64_at(header, RECORD_LSN_OFFSET),
        term: u64_at(header, RECORD_TERM_OFFSET),
        kind,
        flags: header[RECORD_FLAGS_OFFSET],
        payload: &segment[start..start + len],
        total_len: record_len(len),
    }
}

/// Checks the record at `offset` of `segment`: bounds, reserved bytes, kind, checksum and the
/// payload's archive structure. Does not check the LSN (the caller knows what to expect).
pub fn check_record(segment: &[u8], offset: usize) -> RecordCheck<'_> {
    debug_assert_eq!(offset % RECORD_ALIGN_BYTES, 0);
    let Some(header) = segment.get(offset..offset + RECORD_HEADER_LEN_BYTES) else {
        // No room for a header: a segment is sealed when the next record does not fit, so its
        // records end here.
        return if segment[offset.min(segment.len())..].iter().all(|&b| b == 0) {
            RecordCheck::End
        } else {
            RecordCheck::Invalid(InvalidRecord::HeaderPastEnd)
        };
    };
    if header.iter().all(|&b| b == 0) {
        return RecordCheck::End;
    }
    let len = u32_at(header, RECORD_LEN_OFFSET);
    let start = offset + RECORD_HEADER_LEN_BYTES;
    let padded_end = start.checked_add(align_up(len as usize));
    if len == 0 || padded_end.is_none_or(|end| end > segment.len()) {
        return RecordCheck::Invalid(InvalidRecord::BadLength { len });
    }
    let kind_byte = header[RECORD_KIND_OFFSET];
    let Some(kind) = RecordKind::from_byte(kind_byte) else {
        return RecordCheck::Invalid(InvalidRecord::UnknownKind { kind: kind_byte });
    };
    if header[RECORD_RESERVED_OFFSET..RECORD_TERM_OFFSET]
        .iter()
        .any(|&b| b != 0)
    {
        return RecordCheck::Invalid(InvalidRecord::ReservedNotZero);
    }
    let flags = header[RECORD_FLAGS_OFFSET];
    if flags & !flags_allowed(kind) != 0 {
        return RecordCheck::Invalid(InvalidRecord::UnknownFlags { kind, flags });
    }
    let payload = &segment[start..start + len as usize];
    let stored = u32_at(header, RECORD_CRC_OFFSET);
    let computed = record_crc(header, payload);
    if stored != computed {
        return RecordCheck::Invalid(InvalidRecord::CrcMismatch { stored, computed });
    }
    if !check_payload(kind, payload) {
        return RecordCheck::Invalid(InvalidRecord::BadPayload { kind });
    }
    RecordCheck::Valid(RecordRef {
        lsn: u64_at(header, RECORD_LSN_OFFSET),
        term: u64_at(header, RECORD_TERM_OFFSET),
        kind,
        flags,
        payload,
        total_len: record_len(len as usize),
    })
}

type LowValidator<'a> = Strategy<Validator<ArchiveValidator<'a>, ()>, Failure>;

fn checked<T>(payload: &[u8]) -> Option<&T>
where
    T: Portable + for<'a> rkyv::bytecheck::CheckBytes<LowValidator<'a>>,
{
    rkyv::api::low::access::<T, Failure>(payload).ok()
}

/// Whether a key read from a payload is one the store could have written: 1 to
/// `KEY_LEN_MAX_BYTES` bytes (the index keeps its length in a byte).
fn is_key_len(key: &[u8]) -> bool {
    (1..=KEY_LEN_MAX_BYTES).contains(&key.len())
}

/// Whether `payload` is a valid archive of the payload type of `kind`, with keys of a valid
/// length, and a put's key where FORMAT.md puts it: its first bytes, which the index reads
/// without the archive's root.
pub fn check_payload(kind: RecordKind, payload: &[u8]) -> bool {
    match kind {
        RecordKind::Put => checked::<ArchivedPut<'static>>(payload).is_some_and(|put| {
            let key = put.key.as_ref();
            is_key_len(key) && std::ptr::eq(key.as_ptr(), payload.as_ptr())
        }),
        RecordKind::Delete => checked::<ArchivedDelete<'static>>(payload)
            .is_some_and(|delete| is_key_len(delete.key.as_ref())),
        RecordKind::Touch => checked::<ArchivedTouch<'static>>(payload)
            .is_some_and(|touch| is_key_len(touch.key.as_ref())),
        RecordKind::Flush => checked::<ArchivedFlush>(payload).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Delete, Flush, Put, Touch, ValueParts};

    /// A 16-aligned scratch buffer.
    fn aligned(len: usize) -> Vec<u128> {
        vec![0u128; len.div_ceil(16)]
    }

    fn bytes_mut(buf: &mut [u128]) -> &mut [u8] {
        // SAFETY: u128 has no invalid bit patterns and u8 has alignment 1.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 16) }
    }

    /// A put payload for key `k` and value `vw` whose boxes are moved one byte on (key `v`,
    /// value `w`): a valid archive, with the key where the index does not read it.
    fn put_payload_with_key_moved() -> Vec<u128> {
        let mut buf = aligned(256);
        let dst = bytes_mut(&mut buf);
        let body = Put {
            key: b"k",
            value: ValueParts::whole(b"vw"),
            flags: 0,
            expiry: 0,
            cas: 1,
        };
        write_record(dst, 1, &body).expect("fits");
        let payload_len = u32_at(dst, RECORD_LEN_OFFSET) as usize;
        let payload = &mut dst[RECORD_HEADER_LEN_BYTES..RECORD_HEADER_LEN_BYTES + payload_len];
        // The root's boxes (FORMAT.md): key then value, each an i32 offset from the box's own
        // position and a u32 length.
        let root = payload_len - size_of::<ArchivedPut<'static>>();
        let key_box = root as i32;
        let value_box = key_box + 8;
        payload[root..root + 4].copy_from_slice(&(1 - key_box).to_le_bytes());
        payload[root + 8..root + 12].copy_from_slice(&(2 - value_box).to_le_bytes());
        payload[root + 12..root + 16].copy_from_slice(&1u32.to_le_bytes());
        buf
    }

    #[test]
    fn a_put_whose_key_is_not_first_in_its_payload_is_invalid() {
        let mut buf = put_payload_with_key_moved();
        let dst = bytes_mut(&mut buf);
        let payload_len = u32_at(dst, RECORD_LEN_OFFSET) as usize;
        let payload = &dst[RECORD_HEADER_LEN_BYTES..RECORD_HEADER_LEN_BYTES + payload_len];
        let put = checked::<ArchivedPut<'static>>(payload).expect("still a valid archive");
        assert_eq!(
            (put.key.as_ref(), put.value.as_ref()),
            (&b"v"[..], &b"w"[..])
        );
        assert!(!check_payload(RecordKind::Put, payload));
    }

    #[test]
    fn keys_of_a_length_the_store_never_writes_are_invalid() {
        let mut buf = aligned(1024);
        let dst = bytes_mut(&mut buf);
        for key_len in [0usize, KEY_LEN_MAX_BYTES + 1] {
            let key = vec![b'k'; key_len];
            let put = Put {
                key: &key,
                value: ValueParts::whole(b"v"),
                flags: 0,
                expiry: 0,
                cas: 1,
            };
            let delete = Delete {
                key: &key,
                since_segment: 1,
            };
            let touch = Touch {
                key: &key,
                cas: 1,
                expiry: 0,
            };
            // Each record is checked right after it is written: they share the buffer.
            for kind in [RecordKind::Put, RecordKind::Delete, RecordKind::Touch] {
                dst.fill(0);
                match kind {
                    RecordKind::Put => write_record(dst, 1, &put),
                    RecordKind::Delete => write_record(dst, 1, &delete),
                    _ => write_record(dst, 1, &touch),
                }
                .expect("fits");
                assert!(
                    matches!(
                        check_record(dst, 0),
                        RecordCheck::Invalid(InvalidRecord::BadPayload { .. })
                    ),
                    "a {kind:?} with a {key_len}-byte key"
                );
            }
        }
    }

    #[test]
    fn put_layout_and_bounds() {
        for key_len in [1usize, 7, 8, 9, 250] {
            for value_len in [0usize, 1, 15, 16, 17, 100, 4096] {
                let key = vec![b'k'; key_len];
                let value = vec![b'v'; value_len];
                let mut buf = aligned(8192);
                let dst = bytes_mut(&mut buf);
                let body = Put {
                    key: &key,
                    value: ValueParts::whole(&value),
                    flags: 7,
                    expiry: 9,
                    cas: 11,
                };
                let len = write_record(dst, 42, &body).expect("fits");
                // key, value, padding to 8, 32-byte root (FORMAT.md).
                let payload_len = (key_len + value_len).div_ceil(8) * 8 + 32;
                assert_eq!(
                    len,
                    record_len(payload_len),
                    "key {key_len} value {value_len}"
                );
                assert!(len <= put_record_len_max(key_len, value_len));
                let RecordCheck::Valid(record) = check_record(dst, 0) else {
                    panic!("written record does not check");
                };
                assert_eq!(record.lsn, 42);
                assert_eq!(record.total_len, len);
                // SAFETY: just checked.
                let Body::Put(put) = (unsafe { record.body_unchecked() }) else {
                    panic!("not a put");
                };
                assert_eq!(put.key.as_ref(), &key[..]);
                assert_eq!(put.value.as_ref(), &value[..]);
                assert_eq!(put.flags.to_native(), 7);
                assert_eq!(put.cas.to_native(), 11);
                // The next header is zero: the end.
                assert!(matches!(check_record(dst, len), RecordCheck::End));
            }
        }
    }

    #[test]
    fn concatenated_value_is_stored_joined() {
        let mut buf = aligned(1024);
        let dst = bytes_mut(&mut buf);
        let body = Put {
            key: b"k",
            value: ValueParts::concat(b"hello ", b"world"),
            flags: 0,
            expiry: 0,
            cas: 1,
        };
        write_record(dst, 1, &body).expect("fits");
        let RecordCheck::Valid(record) = check_record(dst, 0) else {
            panic!("invalid");
        };
        // SAFETY: just checked.
        let Body::Put(put) = (unsafe { record.body_unchecked() }) else {
            panic!("not a put");
        };
        assert_eq!(put.value.as_ref(), b"hello world");
    }

    #[test]
    fn small_record_bounds_hold() {
        for key_len in [1usize, 5, 8, 64, 250] {
            let key = vec![b'k'; key_len];
            let mut buf = aligned(1024);
            let dst = bytes_mut(&mut buf);
            let touch = Touch {
                key: &key,
                cas: 1,
                expiry: 2,
            };
            assert_eq!(
                write_record(dst, 1, &touch),
                Some(touch_record_len(key_len))
            );
            let delete = Delete {
                key: &key,
                since_segment: 3,
            };
            let len = write_record(dst, 1, &delete).expect("fits");
            assert!(len <= small_record_len_max(key_len));
        }
        let mut buf = aligned(1024);
        let flush = Flush {
            boundary_lsn: 5,
            at: 6,
        };
        let len = write_record(bytes_mut(&mut buf), 1, &flush).expect("fits");
        assert!(len <= small_record_len_max(0));
    }

    #[test]
    fn a_stale_put_keeps_its_flag_and_no_other_kind_or_flag_is_valid() {
        let mut buf = aligned(256);
        let dst = bytes_mut(&mut buf);
        let put = Put {
            key: b"k",
            value: ValueParts::whole(b"v"),
            flags: 0,
            expiry: 0,
            cas: 1,
        };
        write_record_flagged(dst, 1, 0, RECORD_FLAG_STALE, &put).expect("fits");
        let RecordCheck::Valid(record) = check_record(dst, 0) else {
            panic!("a stale put is valid");
        };
        assert!(record.is_stale());
        // Flags a put never carries, with a checksum that matches them.
        let set_flags = |dst: &mut [u8], flags: u8| {
            let payload_len = u32_at(dst, RECORD_LEN_OFFSET) as usize;
            dst[RECORD_FLAGS_OFFSET] = flags;
            let crc = record_crc(dst, &dst[RECORD_HEADER_LEN_BYTES..][..payload_len]);
            dst[..4].copy_from_slice(&crc.to_le_bytes());
        };
        for flags in [2u8, 0x80, RECORD_FLAG_STALE | 4] {
            set_flags(dst, flags);
            assert!(
                matches!(
                    check_record(dst, 0),
                    RecordCheck::Invalid(InvalidRecord::UnknownFlags { .. })
                ),
                "flags {flags:#x}"
            );
        }
        // The stale flag on a tombstone.
        dst.fill(0);
        let delete = Delete {
            key: b"k",
            since_segment: 1,
        };
        write_record(dst, 1, &delete).expect("fits");
        set_flags(dst, RECORD_FLAG_STALE);
        assert!(matches!(
            check_record(dst, 0),
            RecordCheck::Invalid(InvalidRecord::UnknownFlags { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_of_a_record_is_caught() {
        let mut buf = aligned(1024);
        let dst = bytes_mut(&mut buf);
        let body = Put {
            key: b"some-key",
            value: ValueParts::whole(b"some value bytes"),
            flags: 3,
            expiry: 0,
            cas: 99,
        };
        let len = write_record(dst, 5, &body).expect("fits");
        let payload_len = u32_at(dst, RECORD_LEN_OFFSET) as usize;
        let covered = RECORD_HEADER_LEN_BYTES + payload_len;
        let original = dst[..len].to_vec();
        for bit in 0..covered * 8 {
            dst[..len].copy_from_slice(&original);
            dst[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(check_record(dst, 0), RecordCheck::Invalid(_)),
                "flip of bit {bit} not caught"
            );
        }
    }

    #[test]
    fn a_record_too_large_for_its_space_is_refused() {
        let mut buf = aligned(256);
        let dst = bytes_mut(&mut buf);
        let value = [0u8; 300];
        let body = Put {
            key: b"k",
            value: ValueParts::whole(&value),
            flags: 0,
            expiry: 0,
            cas: 1,
        };
        assert_eq!(write_record(dst, 1, &body), None);
    }
}
