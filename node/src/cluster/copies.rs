//! Which shards hold nothing but a copy of an active's data: `<data>/terrace-copies.toml`.
//!
//! A passive follows a term's active shard by shard: it either resumes from its own data,
//! when that is a prefix of the active's log, or empties the shard (moving its data to the
//! dirty db when it may hold writes of its own) and receives the active's snapshot. Either
//! way, from then on the shard holds only records that active has too (or newer versions
//! of them), until this server becomes the active itself. If the shard must be emptied for
//! another snapshot from the same term's active (an interrupted sync that cannot be
//! resumed, because the active's log has gaps there; a passive that fell too far behind),
//! its data is simply removed. Moving it to the dirty db instead made a copy each time, and
//! with `dirtydb_rolling > 0` a few in a row could roll the copy that held this server's
//! own writes out. A snapshot from another term's active is different: the old active may
//! be gone, and the copy may hold the last of its writes, so it goes to the dirty db as
//! before.
//!
//! A file of its own, not a field of the group file: older servers refuse unknown fields
//! there, and dirty-db copies take the group file along.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file in a data dir.
pub const COPIES_FILE: &str = "terrace-copies.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopiesFile {
    /// (shard, term of the active whose data it is a copy of).
    copies: Vec<(u32, u64)>,
}

/// The shards holding a copy of an active's data: for each, that active's term.
#[derive(Debug)]
pub struct CopiedShards {
    path: PathBuf,
    marks: BTreeMap<u32, u64>,
}

impl CopiedShards {
    /// Reads `<data>/terrace-copies.toml` (none if absent).
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(COPIES_FILE);
        let file: CopiesFile = super::small_file::load(
            &path,
            "remove it (a shard that must take a new snapshot then moves its data to the dirty \
             db, as if it were its own)",
        )?;
        Ok(Self {
            path,
            marks: file.copies.into_iter().collect(),
        })
    }

    /// The term of the active whose data `shard` holds a copy of, if it is a copy.
    pub fn term_of(&self, shard: u32) -> Option<u64> {
        self.marks.get(&shard).copied()
    }

    /// Records durably that `shard` holds a copy of term `term`'s active's data. On an error
    /// the marks stay as they were in memory; on disk either state errs towards keeping
    /// data (an older term's mark, or none, means the dirty db).
    pub fn mark(&mut self, shard: u32, term: u64) -> std::io::Result<()> {
        if self.term_of(shard) == Some(term) {
            return Ok(());
        }
        let before = self.marks.insert(shard, term);
        let stored = self.store();
        if stored.is_err() {
            match before {
                Some(old) => self.marks.insert(shard, old),
                None => self.marks.remove(&shard),
            };
        }
        stored
    }

    /// Forgets every mark, durably: this server is becoming the active, and from now on its
    /// shards take its own writes. On an error nothing is forgotten.
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.marks.is_empty() {
            return Ok(());
        }
        let before = std::mem::take(&mut self.marks);
        let stored = self.store();
        if stored.is_err() {
            self.marks = before;
        }
        stored
    }

    /// Replaces the file, atomically and durably.
    fn store(&self) -> std::io::Result<()> {
        let pairs: Vec<String> = self
            .marks
            .iter()
            .map(|(shard, term)| format!("[{shard}, {term}]"))
            .collect();
        let text = format!(
            "# Written by terrace-server: shards that hold only a copy of an active's data, as \
             [shard, that active's term]. Do not edit.\ncopies = [{}]\n",
            pairs.join(", ")
        );
        super::small_file::store(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn marks_survive_reloads_and_clearing_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut marks = CopiedShards::load(dir.path()).unwrap();
        assert_eq!(marks.term_of(2), None);
        marks.mark(2, 7).unwrap();
        marks.mark(5, 7).unwrap();
        marks.mark(5, 9).unwrap();
        let again = CopiedShards::load(dir.path()).unwrap();
        assert_eq!(
            (again.term_of(2), again.term_of(5), again.term_of(0)),
            (Some(7), Some(9), None)
        );
        let mut again = again;
        again.clear().unwrap();
        assert_eq!(CopiedShards::load(dir.path()).unwrap().term_of(5), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(COPIES_FILE), "copies = 3\n").unwrap();
        let error = CopiedShards::load(dir.path()).unwrap_err();
        assert!(error.contains("remove it"), "{error}");
    }
}
