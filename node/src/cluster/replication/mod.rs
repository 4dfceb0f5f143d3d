//! Replication: the active streams each shard's log to every passive, record for record, so
//! that a passive's log is a copy of the active's (same LSNs, same bytes) and can take over.
//!
//! One TCP connection per (passive, shard), opened by the passive on the active's group port
//! with a `REPLICATE` line (`cluster::wire`), then [`frame`]s. The connection belongs to the
//! executors that own the shard on either side: the active's [`sender`] reads its log with a
//! cursor and sends batches of records straight from the mapping; the passive's [`receiver`]
//! appends each record as it came (`Store::apply_copy`: CRC and structure checked where it
//! lands) and acknowledges what is in its log (after its own group commit in
//! permanent-store). Records are sent as soon as they are appended, before the active's own
//! fsync, so that both fsyncs overlap.
//!
//! Where a stream starts:
//! - the passive holds a prefix of the active's log (the CRCs of its last records match the
//!   active's at the same LSNs, [`digest`]): from its next LSN (a partial resync);
//! - otherwise a snapshot: the active pins its segments and streams their records, then the
//!   records after them. A passive with permanent-store data first moves that data to the dirty
//!   db (`cluster::dirty_db`).
//!
//! Once a stream has sent everything appended, the passive enters the shard's sync set
//! ([`sync_set`]): with `replication = "sync"` every later write on the shard is acknowledged
//! to its client only after the passive acknowledged it. A passive that keeps writes waiting
//! longer than the health-check limit is dropped from the set (logged) and its stream closed;
//! it reconnects and catches up again.

pub mod frame;
pub mod receiver;
pub mod sender;
pub mod sync_set;

use crate::net::{LocalStop, Shared};
use crate::shard::{LocalShards, ShardStore};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use terrace_wal::log::Log;
use terrace_wal::storage::FsStorage;

/// How many of a passive's last records its prefix check covers, at most.
pub const DIGEST_RECORDS_MAX: u32 = 8;
/// Records per frame: a batch is cut once it holds this many bytes.
pub const BATCH_BYTES: usize = 1 << 20;

/// What the replication tasks of one executor need.
#[derive(Debug)]
pub struct Context {
    /// The executor's index.
    pub executor: usize,
    /// Its shards.
    pub shards: Rc<LocalShards>,
    /// The server's shared state (group, settings, clock).
    pub shared: Arc<Shared>,
    /// Every shard's directory, by shard id.
    pub shard_dirs: Vec<PathBuf>,
    /// The executor's stop signal.
    pub stop: Rc<LocalStop>,
    /// Where a passive moves data that is not a prefix of its active's.
    pub dirty_db: Arc<super::dirty_db::DirtyDb>,
}

/// CRC-32 over the CRCs of the `k` records ending at LSN `last`, if the log holds all of
/// them (no gap between them).
pub fn digest(log: &Log<FsStorage>, last: u64, k: u32) -> Option<u32> {
    let k = u64::from(k);
    if k == 0 || last < k {
        return None;
    }
    let mut cursor = log.cursor_at(last - k + 1)?;
    let mut hasher = crc32fast::Hasher::new();
    for _ in 0..k {
        let (_, record) = cursor.next(log, last).ok()??;
        hasher.update(&record[..4]);
    }
    Some(hasher.finalize())
}

/// A passive's prefix check of its own log: (records covered, digest); (0, 0) if empty.
pub fn own_digest(store: &ShardStore) -> (u32, u32) {
    let log = store.log();
    let last = log.next_lsn() - 1;
    (1..=DIGEST_RECORDS_MAX)
        .rev()
        .find_map(|k| digest(log, last, k).map(|d| (k, d)))
        .unwrap_or((0, 0))
}
