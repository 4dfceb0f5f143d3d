//! A server's place in its mirror group: its state (Terracotta's names), the group term it
//! has seen, and what it tells its peers with every heartbeat. The term survives restarts in
//! `<data>/terrace-group.toml`.

use serde::Deserialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A server's state in its mirror group. The names are Terracotta's, in logs and `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Just started; no active known yet.
    Starting,
    /// The active: serves clients, streams to passives.
    ActiveCoordinator,
    /// A passive that has not synced from the active yet.
    PassiveUninitialized,
    /// A passive receiving the active's snapshot.
    Initializing,
    /// A passive in sync with the active: may take over.
    PassiveStandby,
}

impl State {
    /// Terracotta's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::ActiveCoordinator => "ACTIVE-COORDINATOR",
            Self::PassiveUninitialized => "PASSIVE-UNINITIALIZED",
            Self::Initializing => "INITIALIZING",
            Self::PassiveStandby => "PASSIVE-STANDBY",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Starting,
            Self::ActiveCoordinator,
            Self::PassiveUninitialized,
            Self::Initializing,
            Self::PassiveStandby,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether a server in this state may become the active: a fresh start (its data is
    /// its own) or a passive in sync with the active it replaces.
    pub fn may_become_active(self) -> bool {
        matches!(self, Self::Starting | Self::PassiveStandby)
    }
}

/// What a server tells its peers with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Its state.
    pub state: State,
    /// The highest group term it has seen.
    pub term: u64,
    /// The term its newest data was written in (0: none).
    pub data_term: u64,
    /// How much data it holds: the sum over its shards of their last LSN.
    pub lsn: u64,
    /// The active it knows of.
    pub active: Option<String>,
    /// Whether its data is recovered (its LSN means something yet).
    pub ready: bool,
    /// An active's passives that are PASSIVE-STANDBY: every shard in its sync set.
    pub standbys: Vec<String>,
}

/// The group file in a data dir.
pub const GROUP_FILE: &str = "terrace-group.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    term: u64,
    data_term: u64,
    /// Absent in files written before it existed: taken as `data_term`.
    active_term: Option<u64>,
    /// Written by a development build (a6121ec) for a mark since withdrawn: accepted and
    /// ignored, which leaves every shard to the dirty db (the side that keeps data).
    #[serde(default, rename = "partial_snapshots")]
    _partial_snapshots: Option<Vec<u32>>,
}

/// The persisted terms of a server: the highest term seen, and the term of its newest data.
#[derive(Debug)]
pub struct Terms {
    path: PathBuf,
    /// Highest term seen.
    pub term: u64,
    /// Term of the newest data.
    pub data_term: u64,
    /// The last term in which this server was the active itself. Below `data_term`: its
    /// newest data came from another active (it was a passive), and another server may hold
    /// newer data, so it does not elect itself alone.
    pub active_term: u64,
}

impl Terms {
    /// Reads `<data>/terrace-group.toml` (zeros if absent).
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(GROUP_FILE);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<GroupFile>(&text).map_err(|e| {
                format!(
                    "{}: unreadable: {}; restore it from a backup, or remove it to start at \
                     term 0 (this server may then lose an election it should win)",
                    path.display(),
                    e.message()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GroupFile::default(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        Ok(Self {
            path,
            term: file.term,
            data_term: file.data_term,
            active_term: file.active_term.unwrap_or(file.data_term),
        })
    }

    /// Records new terms durably (a temporary file, fsynced, renamed over, the directory
    /// fsynced) before anything acts on them.
    pub fn store(&mut self, term: u64, data_term: u64) -> std::io::Result<()> {
        self.store_all(term, data_term, self.active_term)
    }

    /// Records new terms, this server's own active term included (see [`Terms::store`]).
    pub fn store_all(
        &mut self,
        term: u64,
        data_term: u64,
        active_term: u64,
    ) -> std::io::Result<()> {
        let text = format!(
            "# Written by terrace-server: the mirror group terms of this data. Do not edit.\n\
             term = {term}\ndata_term = {data_term}\nactive_term = {active_term}\n"
        );
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.term = term;
        self.data_term = data_term;
        self.active_term = active_term;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn group_files_load_with_and_without_optional_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GROUP_FILE);
        std::fs::write(&path, "term = 4\ndata_term = 3\n").unwrap();
        let terms = Terms::load(dir.path()).unwrap();
        assert_eq!((terms.term, terms.data_term, terms.active_term), (4, 3, 3));
        std::fs::write(
            &path,
            "term = 4\ndata_term = 3\nactive_term = 2\npartial_snapshots = [1, 5]\n",
        )
        .unwrap();
        let terms = Terms::load(dir.path()).unwrap();
        assert_eq!(terms.active_term, 2);
        std::fs::write(&path, "term = 4\ndata_term = 3\nterm_of_the_moon = 1\n").unwrap();
        assert!(
            Terms::load(dir.path()).is_err(),
            "other unknown fields are refused"
        );
    }
}
