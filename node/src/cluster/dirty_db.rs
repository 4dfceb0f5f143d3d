//! The dirty db (Terracotta's name): where a server that must follow an active puts its own
//! permanent-store data when that data is not a prefix of the active's log, instead of
//! deleting it. `<data>/dirty-db-backup/dirty-db-<UTC time>/` holds the moved shards (in the
//! data dir layout, `shards/NNNN/`), with copies of the meta and group files, so an operator
//! can inspect it or restore it. One copy per term in which data was moved. With
//! `dirtydb_rolling = N > 0` only the newest N copies are kept; every move and every prune is
//! logged.

use crate::data_dir::{META_FILE, shard_dir_in};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The dirty db directory in a data dir.
pub const DIRTY_DB_DIR: &str = "dirty-db-backup";
/// Prefix of each copy's directory.
pub const COPY_PREFIX: &str = "dirty-db-";

/// A server's dirty db.
#[derive(Debug)]
pub struct DirtyDb {
    data_dir: PathBuf,
    rolling: u32,
    /// The copy data moves into in the current term: (term, its directory).
    current: Mutex<Option<(u64, PathBuf)>>,
}

impl DirtyDb {
    /// The dirty db of `data_dir`, keeping the newest `rolling` copies (0: all).
    pub fn new(data_dir: &Path, rolling: u32) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            rolling,
            current: Mutex::new(None),
        }
    }

    /// Moves shard `shard`'s directory `dir` into the copy for `term` (created on first use)
    /// and leaves an empty directory in its place. Returns the copy's directory.
    pub fn move_shard(&self, shard: u32, dir: &Path, term: u64) -> io::Result<PathBuf> {
        let mut copy = self.copy_for(term, false)?;
        if shard_dir_in(&copy, shard).exists() {
            // This shard was moved aside once already in this term: a copy of its own.
            copy = self.copy_for(term, true)?;
        }
        let target = shard_dir_in(&copy, shard);
        let parent = target
            .parent()
            .ok_or_else(|| io::Error::other("no parent"))?;
        std::fs::create_dir_all(parent)?;
        // The copy's `shards/` must be durable before a shard moves into it: the move is
        // made durable below, and the shard's old place is emptied.
        sync_dir(&copy)?;
        std::fs::rename(dir, &target)?;
        std::fs::create_dir(dir)?;
        sync_dir(parent)?;
        if let Some(shards) = dir.parent() {
            sync_dir(shards)?;
        }
        Ok(copy)
    }

    fn copy_for(&self, term: u64, new: bool) -> io::Result<PathBuf> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((t, path)) = &*current
            && *t == term
            && !new
        {
            return Ok(path.clone());
        }
        let root = self.data_dir.join(DIRTY_DB_DIR);
        std::fs::create_dir_all(&root)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stem = format!(
            "{COPY_PREFIX}{}",
            crate::time::utc_string(secs).replace([':', '-'], "")
        );
        // Copies are pruned oldest first by name, so a new name must sort after every
        // existing one (within a second: `-0001`, `-0002`, ...; never a pruned name again).
        let newest = list_copies(&root).into_iter().max();
        let mut path = root.join(&stem);
        for n in 1.. {
            if !path.exists() && newest.as_ref().is_none_or(|newest| path > *newest) {
                break;
            }
            path = root.join(format!("{stem}-{n:04}"));
        }
        std::fs::create_dir(&path)?;
        for file in [META_FILE, crate::cluster::state::GROUP_FILE] {
            let from = self.data_dir.join(file);
            if from.exists() {
                std::fs::copy(&from, path.join(file))?;
            }
        }
        sync_dir(&path)?;
        sync_dir(&root)?;
        tracing::warn!(
            dirty_db = %path.display(),
            term,
            "created a dirty db copy: data that is not the active's is moved here, not deleted"
        );
        self.prune(&root, &path);
        *current = Some((term, path.clone()));
        Ok(path)
    }

    /// Removes the oldest copies beyond the rolling count (never `keep`).
    fn prune(&self, root: &Path, keep: &Path) {
        if self.rolling == 0 {
            return;
        }
        let mut copies = list_copies(root);
        copies.sort();
        let excess = copies.len().saturating_sub(self.rolling as usize);
        for old in copies.into_iter().take(excess) {
            if old == keep {
                continue;
            }
            match std::fs::remove_dir_all(&old) {
                Ok(()) => tracing::warn!(
                    dirty_db = %old.display(),
                    rolling = self.rolling,
                    "removed an old dirty db copy (cluster.dirtydb_rolling)"
                ),
                Err(error) => tracing::error!(
                    dirty_db = %old.display(),
                    %error,
                    "cannot remove an old dirty db copy"
                ),
            }
        }
    }
}

/// The copies in a dirty db directory.
pub fn list_copies(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(COPY_PREFIX))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every file in `dir` (a shard's segments), durably.
pub fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn shards_move_into_one_copy_per_term_and_old_copies_roll_off() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(META_FILE), "meta").unwrap();
        let db = DirtyDb::new(data.path(), 2);
        let mut copies = Vec::new();
        for term in 1..=3u64 {
            for shard in 0..2 {
                let dir = shard_dir_in(data.path(), shard);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("1.seg"), format!("term {term}")).unwrap();
                let copy = db.move_shard(shard, &dir, term).unwrap();
                assert!(
                    std::fs::read_dir(&dir).unwrap().next().is_none(),
                    "left empty"
                );
                assert_eq!(
                    std::fs::read_to_string(shard_dir_in(&copy, shard).join("1.seg")).unwrap(),
                    format!("term {term}")
                );
                assert!(copy.join(META_FILE).exists());
                copies.push(copy);
            }
            assert_eq!(
                copies[copies.len() - 1],
                copies[copies.len() - 2],
                "one copy per term"
            );
        }
        // The same shard moved twice in one term: a copy of its own, nothing overwritten.
        let dir = shard_dir_in(data.path(), 0);
        std::fs::write(dir.join("2.seg"), "again").unwrap();
        let again = db.move_shard(0, &dir, 3).unwrap();
        assert_ne!(again, copies[5]);
        assert!(shard_dir_in(&copies[5], 0).join("1.seg").exists());
        assert!(shard_dir_in(&again, 0).join("2.seg").exists());
        let kept = list_copies(&data.path().join(DIRTY_DB_DIR));
        assert_eq!(kept.len(), 2, "rolling count honoured: {kept:?}");
        assert!(!copies[0].exists() && copies[5].exists() && again.exists());
    }
}
