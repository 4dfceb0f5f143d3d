//! The on-disk format: segment headers, record framing and record payloads.
//! `wal/FORMAT.md` draws it byte by byte; the offsets live in [`crate::constants`].

pub mod payload;
pub mod record;
pub mod segment_header;

pub use payload::{
    ArchivedDelete, ArchivedFlush, ArchivedPut, ArchivedTouch, Delete, Flush, Put, Touch,
    ValueParts,
};
pub use record::{
    Body, InvalidRecord, RecordBody, RecordCheck, RecordKind, RecordRef, check_record,
    is_item_follows, record_at_unchecked, record_len, write_record, write_record_flagged,
    write_record_in_term,
};
pub use segment_header::{SegmentHeader, SegmentHeaderCheck};
