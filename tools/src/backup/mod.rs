//! # backup-data: consistent snapshots of a data dir, verified, and restored atomically
//!
//! Module map:
//! - [`manifest`]: what a snapshot holds (`manifest.json`, with its own checksum).
//! - [`source`]: a stopped server's data dir, locked while it is read.
//! - [`create`]: writing a snapshot (offline, online, incremental).
//! - [`online`]: asking a running server for a consistent cut.
//! - [`verify`]: checking every byte of a snapshot.
//! - [`restore`]: a snapshot back into a data dir, atomically.
//! - [`reshard`]: a stopped server's data dir rewritten with another shard count.
//! - [`parallel`]: shards processed on several threads.
//! - [`files`], [`progress`], [`error`]: durable file helpers, progress bars, errors.
//!
//! A snapshot directory:
//!
//! ```text
//! <snapshot>/manifest.json                                  written last, atomically
//! <snapshot>/shards/0000/00000000000000000001-1c291ca3.seg  segment 1 of shard 0 (id-crc32)
//! ```
//!
//! Each stored segment is the segment file up to the end of its last record (the rest of a
//! segment file is zeros; `restore` gives the file its full size again), or, with `--link`, a
//! hard link to a sealed segment. Everything in a snapshot is checked before it is written
//! and again by `verify` and `restore`: the segment checks are the ones recovery makes
//! (`terrace_wal::log::scan`).

pub mod create;
pub mod error;
pub mod files;
pub mod manifest;
pub mod online;
pub mod parallel;
pub mod progress;
pub mod reshard;
pub mod restore;
pub mod source;
pub mod verify;

pub use error::BackupError;
