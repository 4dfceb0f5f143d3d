//! # terrace-wal
//!
//! Terrace's storage log and the per-shard store built on it. A shard is a directory of
//! fixed-size, memory-mapped segment files; the segments are the write-ahead log.
//!
//! Module map, bottom up:
//!
//! - [`constants`]: every limit and on-disk offset.
//! - [`format`]: segment headers, record framing (CRC, LSN, kind) and rkyv payloads.
//! - [`storage`]: where segment bytes live — real files ([`storage::FsStorage`]) or a
//!   simulated disk that can lose power at any moment ([`storage::SimStorage`]).
//! - [`log`]: the ordered segments of a shard: appends into the mapped tail, group commit,
//!   zero-copy reads, recovery, pinning, capacity.
//! - [`store`]: the index and memcached's semantics on top of the log, expiry, compaction.
//! - [`error`]: the error types.
//! - [`cooperate`]: how long-running tasks give way to the rest of an executor.

mod background;
pub mod constants;
pub mod cooperate;
pub mod error;
pub mod format;
pub mod log;
pub mod storage;
pub mod store;
