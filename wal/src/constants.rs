//! Every limit and every on-disk offset of the log, in one place.
//!
//! Names carry their unit last (`_bytes`, `_secs`). Relationships between constants are checked
//! at compile time at the bottom of this file. The byte layout is drawn in `wal/FORMAT.md`;
//! a change here is a change of the on-disk format and needs a `FORMAT_VERSION` bump.

/// Version of the on-disk format written into every new segment's header. Version 2 added
/// the record flags byte (`RECORD_FLAGS_OFFSET`), reserved and zero in version 1.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads. A version-1 segment holds no record flags; the log
/// never appends to one (a recovered version-1 tail is sealed), so that a build that reads
/// only version 1 refuses a log with flags in it instead of taking them for a torn tail.
pub const FORMAT_VERSION_OLDEST_READ: u32 = 1;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TRRCSEG\0";

/// The page size segments are sized in (x86-64 and aarch64 Linux with 4 KiB pages).
pub const PAGE_SIZE_BYTES: usize = 4096;

/// Sector size assumed to be written atomically by the disk. Crash simulation tears unsynced
/// writes at this granularity; the segment header fits in one sector so a torn header is
/// either all old (zero) or all new.
pub const SECTOR_SIZE_BYTES: usize = 512;

/// Default segment size: 64 MiB.
pub const SEGMENT_SIZE_DEFAULT_BYTES: usize = 64 << 20;
/// Smallest segment size accepted (tests use small segments to exercise many rollovers).
pub const SEGMENT_SIZE_MIN_BYTES: usize = 4 * PAGE_SIZE_BYTES;
/// Largest segment size accepted: record offsets are stored divided by `RECORD_ALIGN_BYTES`
/// in a `u32` in the index, and payload lengths are `u32`.
pub const SEGMENT_SIZE_MAX_BYTES: usize = 1 << 32;

// ---- Segment header (bytes [0, SEGMENT_HEADER_LEN_BYTES) of every segment file) ----

/// Length of the segment header; records start right after it.
pub const SEGMENT_HEADER_LEN_BYTES: usize = 64;
/// `[u8; 8]` magic.
pub const SEGMENT_HEADER_MAGIC_OFFSET: usize = 0;
/// `u32` LE format version.
pub const SEGMENT_HEADER_VERSION_OFFSET: usize = 8;
/// `u32` LE header length (`SEGMENT_HEADER_LEN_BYTES`).
pub const SEGMENT_HEADER_LEN_OFFSET: usize = 12;
/// `u64` LE segment id (also in the file name).
pub const SEGMENT_HEADER_ID_OFFSET: usize = 16;
/// `u64` LE segment file size in bytes.
pub const SEGMENT_HEADER_SIZE_OFFSET: usize = 24;
/// `u64` LE LSN of the first record written into this segment.
pub const SEGMENT_HEADER_FIRST_LSN_OFFSET: usize = 32;
/// `[u8; 20]` reserved, zero.
pub const SEGMENT_HEADER_RESERVED_OFFSET: usize = 40;
/// `u32` LE crc32 of bytes `[0, SEGMENT_HEADER_CRC_OFFSET)`.
pub const SEGMENT_HEADER_CRC_OFFSET: usize = 60;

// ---- Record header (first RECORD_HEADER_LEN_BYTES bytes of every record) ----

/// Every record starts at an offset that is a multiple of this, so that its payload is too
/// (the archive needs 8-byte alignment; 16 leaves room for 16-aligned types).
pub const RECORD_ALIGN_BYTES: usize = 16;
/// Length of the record header; the payload follows it.
pub const RECORD_HEADER_LEN_BYTES: usize = 32;
/// `u32` LE crc32 over `[RECORD_LEN_OFFSET, RECORD_HEADER_LEN_BYTES + payload_len)`.
pub const RECORD_CRC_OFFSET: usize = 0;
/// `u32` LE exact payload length (the archive's root is at its end).
pub const RECORD_LEN_OFFSET: usize = 4;
/// `u64` LE log sequence number.
pub const RECORD_LSN_OFFSET: usize = 8;
/// `u8` record kind (see `format::RecordKind`).
pub const RECORD_KIND_OFFSET: usize = 16;
/// `u8` record flags (format version 2): `RECORD_FLAG_STALE` on a put,
/// `RECORD_FLAG_ITEM_FOLLOWS` on a tombstone, nothing else.
pub const RECORD_FLAGS_OFFSET: usize = 17;
/// `[u8; 6]` reserved, zero.
pub const RECORD_RESERVED_OFFSET: usize = 18;
/// Record flag: the put's item is stale (memcached's meta invalidation: `md ... I`, or an
/// `ms ... I` with an older CAS); `mg` shows it with `X`.
pub const RECORD_FLAG_STALE: u8 = 1;
/// Record flag: a tombstone that compaction copied while its key held an item, written
/// together with a copy of that item as the next record (same segment, next LSN). Recovery
/// takes the tombstone only with that item: alone (a power cut kept one and not the other)
/// it would delete the item, so it is part of the torn tail.
pub const RECORD_FLAG_ITEM_FOLLOWS: u8 = 2;
/// Every record flag a put may carry.
pub const RECORD_FLAGS_PUT: u8 = RECORD_FLAG_STALE;
/// Every record flag a tombstone may carry. Touches and flushes carry none.
pub const RECORD_FLAGS_DELETE: u8 = RECORD_FLAG_ITEM_FOLLOWS;
/// `u64` LE the mirror group term in which the record was written (0: none, or written
/// before terms were stamped). Covered by the CRC, so records written by different actives
/// at the same LSN differ even when their contents are the same.
pub const RECORD_TERM_OFFSET: usize = 24;

/// Largest key accepted by the store (memcached's limit).
pub const KEY_LEN_MAX_BYTES: usize = 250;

/// Default store capacity: no limit beyond what the disk holds.
pub const CAPACITY_DEFAULT_BYTES: u64 = u64::MAX;

/// Compaction picks sealed segments whose live fraction is below this (percent).
pub const COMPACTION_LIVE_PERCENT_DEFAULT: u8 = 50;
/// Compaction processes at most this many bytes of a victim between yields to client work.
pub const COMPACTION_BATCH_BYTES: usize = 256 << 10;
/// A passive takes an item for expired, when it reclaims, only this long after its expiry:
/// a touch the active made before the expiry may still be on its way (replication lag, the
/// two clocks' skew), and once the item is dropped a late touch finds nothing to extend. A
/// passive reclaims at all only while in sync with its active (the node's choice).
pub const RECLAIM_EXPIRY_GRACE_SECS: u32 = 60;
/// Compaction sleeps at least this long after each batch, so that the executor polls for I/O
/// in between (see `compact_once`).
pub const COMPACTION_BATCH_PAUSE: std::time::Duration = std::time::Duration::from_micros(50);
/// Default compaction I/O budget: bytes of records rewritten per second.
pub const COMPACTION_BYTES_PER_SEC_DEFAULT: u64 = 64 << 20;

/// memcached: relative expiry times are at most 30 days; larger numbers are unix times.
pub const EXPTIME_RELATIVE_MAX_SECS: i64 = 60 * 60 * 24 * 30;

const _: () = assert!(SEGMENT_HEADER_LEN_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(RECORD_HEADER_LEN_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(RECORD_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(SEGMENT_HEADER_LEN_BYTES <= SECTOR_SIZE_BYTES);
const _: () = assert!(SEGMENT_HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN_BYTES);
const _: () = assert!(SEGMENT_HEADER_RESERVED_OFFSET + 20 == SEGMENT_HEADER_CRC_OFFSET);
const _: () = assert!(RECORD_KIND_OFFSET + 1 == RECORD_FLAGS_OFFSET);
const _: () = assert!(RECORD_FLAGS_OFFSET + 1 == RECORD_RESERVED_OFFSET);
const _: () = assert!(RECORD_RESERVED_OFFSET + 6 == RECORD_TERM_OFFSET);
const _: () = assert!(FORMAT_VERSION_OLDEST_READ <= FORMAT_VERSION);
const _: () = assert!(RECORD_TERM_OFFSET + 8 == RECORD_HEADER_LEN_BYTES);
const _: () = assert!(SEGMENT_SIZE_DEFAULT_BYTES.is_multiple_of(PAGE_SIZE_BYTES));
const _: () = assert!(SEGMENT_SIZE_MIN_BYTES.is_multiple_of(PAGE_SIZE_BYTES));
const _: () = assert!(SEGMENT_SIZE_MAX_BYTES / RECORD_ALIGN_BYTES <= u32::MAX as usize + 1);

/// A group-commit round (its fdatasyncs) that takes this long or longer is counted as slow,
/// and reported in the log (see `GroupCommit`): every write of the shard waited for it.
pub const SLOW_SYNC_ROUND: std::time::Duration = std::time::Duration::from_millis(100);

/// At most one warning about slow sync rounds per log in this long; the warning counts the
/// slow rounds in between.
pub const SLOW_SYNC_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
