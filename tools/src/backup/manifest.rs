//! The manifest: what a snapshot holds, written last (atomically) by `create`, checked first
//! by `verify` and `restore`.
//!
//! On disk, `manifest.json` is one JSON object with exactly this shape:
//!
//! ```text
//! {"crc32":"<8 hex digits>","manifest":<the manifest as pretty JSON>}
//! ```
//!
//! The CRC-32 covers the exact bytes of the inner JSON, so that any changed byte of the file
//! is caught (a flipped digit in an LSN would otherwise still parse), while `jq` and other
//! readers still see plain JSON.

use super::error::BackupError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the manifest in a snapshot directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the snapshot layout and manifest.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// The directory, in a snapshot, that holds one directory per shard.
pub const SNAPSHOT_SHARDS_DIR: &str = "shards";

const PREFIX: &str = "{\"crc32\":\"";
const MIDDLE: &str = "\",\"manifest\":";
const SUFFIX: &str = "}\n";

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The tool and version that wrote it.
    pub created_by: String,
    /// When the cut was taken, unix seconds.
    pub created_unix_secs: u64,
    /// The same, readable (UTC).
    pub created_utc: String,
    /// Where the data came from.
    pub source: SourceInfo,
    /// Every shard of the data dir, in order.
    pub shards: Vec<ShardEntry>,
}

/// Where a snapshot's data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// `offline` (a stopped server's data dir) or `online` (a cut from a running server).
    pub mode: String,
    /// The data dir, as an absolute path.
    pub data_dir: String,
    /// The server that wrote the data, if the data dir records it.
    pub server: Option<String>,
    /// The online server's address (online mode).
    pub address: Option<String>,
    /// The persistence mode the data was written with.
    pub persistence: String,
    /// Layout version of the data dir.
    pub data_dir_format: u32,
    /// Shards of the data dir.
    pub shard_count: u32,
}

/// One shard of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The shard number.
    pub shard: u32,
    /// LSN of the last record in the snapshot (0: the shard held none).
    pub last_lsn: u64,
    /// Its segments, in id order.
    pub segments: Vec<SegmentEntry>,
    /// A torn tail found in the source and left out of the snapshot.
    pub torn_tail_left_out: Option<TornTailEntry>,
}

/// One segment file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    /// Segment id (as in the data dir's file name).
    pub id: u64,
    /// Path of the stored file, relative to the snapshot directory.
    pub file: String,
    /// Bytes stored: the segment up to the end of its last record, or the whole segment
    /// file if it was hard-linked.
    pub stored_bytes: u64,
    /// Size of the segment file in the data dir (restore gives it this size again).
    pub segment_bytes: u64,
    /// LSN of its first record (from its header).
    pub first_lsn: u64,
    /// LSN of its last record (`first_lsn - 1` if none).
    pub last_lsn: u64,
    /// Records in it.
    pub records: u64,
    /// Offset just past its last record.
    pub records_end: u64,
    /// CRC-32 of the stored bytes, 8 hex digits.
    pub crc32: String,
    /// Whether the stored file is a hard link to the (sealed, immutable) source segment.
    pub linked: bool,
}

/// A torn tail left out of a snapshot: bytes after the last whole record of the newest
/// segment, which no server ever acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TornTailEntry {
    /// The segment.
    pub segment: u64,
    /// Where the torn bytes start.
    pub offset: u64,
    /// How many bytes (through the last non-zero one).
    pub bytes: u64,
    /// Why they are not a record.
    pub reason: String,
}

impl Manifest {
    /// Totals over every shard: (segments, records, stored bytes).
    pub fn totals(&self) -> (usize, u64, u64) {
        self.shards
            .iter()
            .flat_map(|s| &s.segments)
            .fold((0, 0, 0), |(n, r, b), s| {
                (n + 1, r + s.records, b + s.stored_bytes)
            })
    }

    /// The file text (see the module doc).
    pub fn encode(&self) -> Result<String, BackupError> {
        let inner = serde_json::to_string_pretty(self).map_err(|e| BackupError::Manifest {
            path: MANIFEST_FILE.into(),
            problem: format!("cannot encode: {e}"),
        })?;
        let crc = crc32fast::hash(inner.as_bytes());
        Ok(format!("{PREFIX}{crc:08x}{MIDDLE}{inner}{SUFFIX}"))
    }

    /// Reads and checks `dir`'s manifest. `Ok(None)`: there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, BackupError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BackupError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        Self::decode(&text)
            .map(Some)
            .map_err(|problem| BackupError::Manifest { path, problem })
    }

    fn decode(text: &[u8]) -> Result<Self, String> {
        let damaged = "damaged: not the layout backup-data writes";
        let rest = text.strip_prefix(PREFIX.as_bytes()).ok_or(damaged)?;
        let (hex, rest) = rest.split_at_checked(8).ok_or(damaged)?;
        let rest = rest.strip_prefix(MIDDLE.as_bytes()).ok_or(damaged)?;
        let inner = rest.strip_suffix(SUFFIX.as_bytes()).ok_or(damaged)?;
        let stored = std::str::from_utf8(hex)
            .ok()
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or(damaged)?;
        let computed = crc32fast::hash(inner);
        if stored != computed {
            return Err(format!(
                "damaged: checksum {computed:08x} does not match the stored {stored:08x}"
            ));
        }
        let manifest: Self =
            serde_json::from_slice(inner).map_err(|e| format!("not a snapshot manifest: {e}"))?;
        if manifest.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "snapshot format {} (this backup-data reads {SNAPSHOT_FORMAT}); use the \
                 backup-data that wrote it",
                manifest.format
            ));
        }
        Ok(manifest)
    }
}

/// Name of a stored segment file: its id and the CRC of its bytes. A changed segment (the
/// tail, which grows) gets a new name, so an incremental `create` never overwrites a file the
/// previous manifest still lists.
pub fn segment_file_name(id: u64, crc32: u32) -> String {
    format!("{id:020}-{crc32:08x}.seg")
}

/// The directory of shard `shard` in a snapshot, relative to the snapshot.
pub fn shard_dir_name(shard: u32) -> String {
    format!("{SNAPSHOT_SHARDS_DIR}/{shard:04}")
}

pub use terrace_node::time::utc_string;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: SNAPSHOT_FORMAT,
            created_by: "backup-data test".into(),
            created_unix_secs: 1_796_000_000,
            created_utc: utc_string(1_796_000_000),
            source: SourceInfo {
                mode: "offline".into(),
                data_dir: "/data".into(),
                server: Some("s1".into()),
                address: None,
                persistence: "permanent-store".into(),
                data_dir_format: 1,
                shard_count: 1,
            },
            shards: vec![ShardEntry {
                shard: 0,
                last_lsn: 7,
                segments: vec![SegmentEntry {
                    id: 1,
                    file: "shards/0000/x.seg".into(),
                    stored_bytes: 160,
                    segment_bytes: 65536,
                    first_lsn: 1,
                    last_lsn: 7,
                    records: 7,
                    records_end: 160,
                    crc32: "0badf00d".into(),
                    linked: false,
                }],
                torn_tail_left_out: None,
            }],
        }
    }

    #[test]
    fn every_changed_byte_is_caught() {
        let text = sample().encode().unwrap().into_bytes();
        assert_eq!(Manifest::decode(&text).unwrap(), sample());
        for i in 0..text.len() {
            let mut damaged = text.clone();
            damaged[i] ^= 0x01;
            assert!(Manifest::decode(&damaged).is_err(), "byte {i} flipped");
        }
        assert!(Manifest::decode(&text[..text.len() - 1]).is_err());
    }
}
