//! Error types. Messages name the file, offset or setting involved and, where there is one,
//! the fix.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

/// Errors of the log: opening, recovering, appending, syncing.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A sealed segment holds bytes that are not a valid record. Sealed segments were fully
    /// synced before the log moved on, so this is damage, not a torn write.
    #[error(
        "corrupt segment {} at byte offset {offset}: {reason}. The segment was sealed and synced \
         before newer segments were written, so this is damage to stored data, not a torn \
         write; the shard refuses to start rather than lose or invent records. Restore the \
         shard from a backup or resync it from a mirror",
        path.display()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the first invalid byte or record in the file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },

    /// A segment was written in a newer on-disk format than this build reads: by a newer
    /// Terrace, not damaged.
    #[error(
        "segment {} is in on-disk format version {version}, newer than this build reads (up \
         to {}): the data dir was written by a newer Terrace; run that version or a newer one \
         on it (nothing was changed)",
        path.display(),
        crate::constants::FORMAT_VERSION
    )]
    NewerFormat {
        /// The segment file.
        path: PathBuf,
        /// Its format version.
        version: u32,
    },

    /// The newest segment has a torn tail and the recovery policy does not allow cutting it.
    #[error(
        "torn tail in newest segment {} at byte offset {offset} ({garbage_bytes} bytes of \
         incomplete records): the recovery policy is strict; open with \
         RecoveryPolicy::TruncateTornTail to cut it",
        path.display()
    )]
    TornTail {
        /// The segment file.
        path: PathBuf,
        /// Offset of the first byte that is not part of a whole record.
        offset: u64,
        /// Bytes from `offset` to the last non-zero byte.
        garbage_bytes: u64,
    },

    /// The shard directory holds something that is not a segment file.
    #[error(
        "unexpected file {} in shard directory {}: a shard directory holds only its segment \
         files (named <20-digit id>.seg); move the file elsewhere",
        path.display(),
        dir.display()
    )]
    UnexpectedFile {
        /// The unexpected entry.
        path: PathBuf,
        /// The shard directory.
        dir: PathBuf,
    },

    /// An earlier write or sync failed; the log refuses writes from then on (fail-stop).
    #[error(
        "the shard refuses writes since an earlier failure: {cause}. Data acknowledged before \
         the failure is safe; restart the server once the disk is healthy"
    )]
    Poisoned {
        /// The failure that stopped the log.
        cause: Rc<WalError>,
    },

    /// The configured capacity is used up.
    #[error(
        "capacity of {capacity_bytes} bytes is full ({used_bytes} bytes in segments); raise \
         the capacity, delete data, or let compaction reclaim space"
    )]
    Full {
        /// The configured capacity.
        capacity_bytes: u64,
        /// Bytes of segment files now.
        used_bytes: u64,
    },

    /// A record larger than a segment can hold.
    #[error(
        "record of up to {len_bytes} bytes does not fit in a segment ({max_bytes} bytes at \
         most); raise the segment size"
    )]
    RecordTooLarge {
        /// Bytes the record needs.
        len_bytes: usize,
        /// The largest record a segment holds.
        max_bytes: usize,
    },

    /// A record copied from another log (replication) cannot be appended as it is.
    #[error("cannot append a copied record: {reason}")]
    BadCopy {
        /// Why: not a whole valid record, or not the LSN that comes next.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid log setting {field} = {value}: {fix}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        fix: String,
    },
}

impl WalError {
    /// Whether this error stopped the log for good (fail-stop), rather than refusing one write.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Self::Poisoned { .. })
    }
}

/// Errors of store operations that are not memcached outcomes (`NOT_FOUND`, `EXISTS` ... are
/// results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is empty, too long, or has whitespace or control characters.
    #[error("invalid key: {0}")]
    InvalidKey(KeyProblem),
    /// The value given is larger than the item size limit (an append or prepend whose result
    /// would be is `NotStored`, as in memcached).
    #[error("object too large: {len_bytes} bytes, at most {max_bytes}")]
    TooLarge {
        /// Size of the value.
        len_bytes: usize,
        /// The largest value accepted.
        max_bytes: usize,
    },
    /// `incr`/`decr` on a value that is not a decimal number.
    #[error("cannot increment or decrement non-numeric value")]
    NonNumeric,
    /// The log failed or is full.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// What is wrong with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Zero length.
    Empty,
    /// Longer than `KEY_LEN_MAX_BYTES`.
    TooLong,
    /// Contains whitespace or a control character.
    BadByte,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::TooLong => "longer than 250 bytes",
            Self::BadByte => "contains whitespace or a control character",
        })
    }
}
