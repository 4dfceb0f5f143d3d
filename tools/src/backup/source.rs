//! Reading a stopped server's data dir for a snapshot: its lock proves no server runs on it
//! (and keeps one from starting while we read), its meta file gives the shard count.

use super::error::BackupError;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use terrace_node::data_dir::{self, DataDirLock, Meta};
use terrace_wal::constants::SEGMENT_HEADER_LEN_BYTES;
use terrace_wal::storage::{SegmentId, parse_segment_file_name};

/// A data dir, locked for as long as this lives.
#[derive(Debug)]
pub struct LockedDataDir {
    /// The data dir, absolute.
    pub path: PathBuf,
    /// What its meta file says.
    pub meta: Meta,
    _lock: DataDirLock,
}

impl LockedDataDir {
    /// Locks `path` and reads its meta file, to snapshot it. Refuses a data dir a server
    /// holds, and a directory that is not a Terrace data dir.
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        Self::open_for(
            path,
            "stop the server first, or take the snapshot online: backup-data create --server \
             HOST:PORT --out DIR (it does not stop client traffic)",
        )
    }

    /// As [`LockedDataDir::open`]; `fix_when_held`: what to tell when a server holds it.
    pub fn open_for(path: &Path, fix_when_held: &str) -> Result<Self, BackupError> {
        let path = std::path::absolute(path).map_err(BackupError::io("resolve", path))?;
        if !path.is_dir() {
            return Err(BackupError::Refused {
                path,
                problem: "no such directory".into(),
                fix: "give the data dir of a stopped server (servers[].data in its config)".into(),
            });
        }
        if data_dir::read_meta(&path)?.is_none() {
            return Err(BackupError::Refused {
                path,
                problem: format!("not a Terrace data dir (no {})", data_dir::META_FILE),
                fix: "give the data dir of a stopped server (servers[].data in its config)".into(),
            });
        }
        let lock = data_dir::lock(&path).map_err(|e| BackupError::Refused {
            path: path.clone(),
            problem: super::source::held_by(&e),
            fix: fix_when_held.into(),
        })?;
        // Read again under the lock: a server may have rewritten it before we held the lock.
        let meta = data_dir::read_meta(&path)?.ok_or_else(|| BackupError::Refused {
            path: path.clone(),
            problem: format!("{} disappeared", data_dir::META_FILE),
            fix: "check what else uses this directory".into(),
        })?;
        if meta.format != data_dir::DATA_DIR_FORMAT {
            return Err(BackupError::Refused {
                path,
                problem: format!(
                    "data dir layout version {} (this backup-data reads {})",
                    meta.format,
                    data_dir::DATA_DIR_FORMAT
                ),
                fix: "use the backup-data of the Terrace version that wrote it".into(),
            });
        }
        Ok(Self {
            path,
            meta,
            _lock: lock,
        })
    }

    /// The segment files of shard `shard`, in id order, with their sizes. Anything else in
    /// the shard directory is refused: a shard directory holds only segments.
    pub fn segments(&self, shard: u32) -> Result<Vec<(SegmentId, PathBuf, u64)>, BackupError> {
        let dir = data_dir::shard_dir_in(&self.path, shard);
        if !dir.is_dir() {
            return Err(BackupError::Damaged {
                path: dir,
                offset: 0,
                reason: format!(
                    "shard directory missing, but {} says there are {} shards",
                    data_dir::META_FILE,
                    self.meta.shards
                ),
            });
        }
        let mut segments = Vec::new();
        for name in super::files::list_names(&dir)? {
            let path = dir.join(&name);
            let Some(id) = parse_segment_file_name(&name).filter(|_| path.is_file()) else {
                return Err(BackupError::Refused {
                    path,
                    problem: "not a segment file, in a shard directory".into(),
                    fix: "move it out of the data dir; shard directories hold only segments".into(),
                });
            };
            let len = std::fs::metadata(&path)
                .map_err(BackupError::io("stat", &path))?
                .len();
            segments.push((id, path, len));
        }
        segments.sort_unstable_by_key(|(id, _, _)| *id);
        Ok(segments)
    }
}

/// The first bytes of a file, up to a segment header's length (fewer if it is shorter).
pub fn read_header(path: &Path) -> Result<Vec<u8>, BackupError> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN_BYTES);
    File::open(path)
        .and_then(|f| {
            f.take(SEGMENT_HEADER_LEN_BYTES as u64)
                .read_to_end(&mut header)
        })
        .map_err(BackupError::io("read the header of", path))?;
    Ok(header)
}

/// Who holds a data dir's lock, from the error taking it: "a running server (pid N) holds it".
pub fn held_by(error: &data_dir::DataDirError) -> String {
    let pid = std::fs::read_to_string(error.path.join(data_dir::LOCK_FILE)).unwrap_or_default();
    match pid.trim() {
        "" => "a running server holds it".to_string(),
        pid => format!("a running server (pid {pid}) holds it"),
    }
}
