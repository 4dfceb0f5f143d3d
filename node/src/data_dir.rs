//! The data directory: locked while a server runs, described by a small meta file, one
//! sub-directory per shard.
//!
//! ```text
//! <data>/LOCK                 flock'ed by the running server; holds its pid
//! <data>/terrace-meta.toml    format version, shard count, persistence it was written with,
//!                             the name of the server that wrote it
//! <data>/shards/0000/ ...     one shard's segment files (terrace-wal)
//! ```
//!
//! Safety rules, because this code may delete things:
//! - a directory that holds anything but these files is not ours: refuse, delete nothing;
//! - temporary-swap-only empties `shards/` at start (its data is never promised to survive),
//!   but refuses a data dir written by permanent-store;
//! - the shard count is fixed at creation (by `storage.shards`, or chosen with "auto"): a
//!   different configured count is an error, never a silent re-sharding. Only a data dir of
//!   temporary data, emptied anyway, takes a new count.

use crate::config::{Persistence, Settings, ShardCount};
use crate::constants::FLUSH_PROBE_FILE;
use serde::Deserialize;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Version of the data dir layout.
pub const DATA_DIR_FORMAT: u32 = 1;
/// The lock file, flock'ed by the server (or tool) that owns the data dir.
pub const LOCK_FILE: &str = "LOCK";
/// The meta file.
pub const META_FILE: &str = "terrace-meta.toml";
/// The directory of shard directories.
pub const SHARDS_DIR: &str = "shards";

/// A data dir problem, naming the path and the fix.
#[derive(Debug, thiserror::Error)]
#[error("data dir {path}: {problem}; {fix}")]
pub struct DataDirError {
    /// The data dir or the file in it.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// What `terrace-meta.toml` says about a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Meta {
    /// Layout version ([`DATA_DIR_FORMAT`]).
    pub format: u32,
    /// Shard count, fixed at creation.
    pub shards: u32,
    /// The persistence mode it was last written with (its name).
    pub persistence: String,
    /// The server that last wrote it (absent in data dirs written before it was recorded).
    #[serde(default)]
    pub server: Option<String>,
}

impl Meta {
    /// The meta file's text.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "# Written by Terrace {}. Do not edit: it describes the data in this directory.\n\
             format = {}\nshards = {}\npersistence = \"{}\"\n",
            env!("CARGO_PKG_VERSION"),
            self.format,
            self.shards,
            self.persistence
        );
        if let Some(server) = &self.server {
            let quoted = toml::Value::String(server.clone());
            text.push_str(&format!("server = {quoted}\n"));
        }
        text
    }
}

/// The exclusive lock on a data dir, held for as long as this lives.
#[derive(Debug)]
pub struct DataDirLock {
    /// Holds the flock.
    _file: File,
}

/// Takes the data dir's lock without waiting, writing our pid into the lock file. Fails,
/// naming the holder's pid, if a server (or a tool) holds it.
pub fn lock(path: &Path) -> Result<DataDirLock, DataDirError> {
    let fail = |problem: String, fix: &str| DataDirError {
        path: path.to_path_buf(),
        problem,
        fix: fix.to_string(),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK_FILE))
        .map_err(|e| {
            fail(
                format!("cannot open {LOCK_FILE}: {e}"),
                "check the directory's permissions",
            )
        })?;
    if let Err(errno) =
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    {
        let holder = std::fs::read_to_string(path.join(LOCK_FILE)).unwrap_or_default();
        let holder = holder.trim();
        return Err(fail(
            format!(
                "in use by another terrace-server (pid {}) ({errno})",
                if holder.is_empty() { "unknown" } else { holder }
            ),
            "stop that server, or give this one its own data dir (--data)",
        ));
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| fail(format!("cannot write {LOCK_FILE}: {e}"), "check the disk"))?;
    Ok(DataDirLock { _file: file })
}

/// Reads a data dir's meta file; `None` if it has none.
pub fn read_meta(path: &Path) -> Result<Option<Meta>, DataDirError> {
    let meta_path = path.join(META_FILE);
    match std::fs::read_to_string(&meta_path) {
        Ok(text) => Ok(Some(toml::from_str::<Meta>(&text).map_err(|e| {
            DataDirError {
                path: meta_path.clone(),
                problem: format!("unreadable: {}", e.message()),
                fix: "restore it from a backup; do not edit it by hand".into(),
            }
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataDirError {
            path: path.to_path_buf(),
            problem: format!("cannot read {META_FILE}: {e}"),
            fix: "check the disk".into(),
        }),
    }
}

/// An open, locked data dir. The lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    shards: u32,
    /// This start fixed its shard count (see [`DataDir::created`]).
    created: bool,
    /// Held for as long as the data dir is open.
    _lock: DataDirLock,
}

impl DataDir {
    /// Opens (creating if needed) and locks the data dir for `settings`. A data dir this start
    /// fixes the shard count of (a new one, or one of temporary data, which is emptied) gets
    /// `storage.shards`, or with "auto" what `choose` says for its path.
    pub fn open(
        settings: &Settings,
        choose: impl FnOnce(&Path) -> u32,
    ) -> Result<Self, DataDirError> {
        let path = settings.data_dir.clone();
        let fail = |problem: String, fix: &str| DataDirError {
            path: path.clone(),
            problem,
            fix: fix.to_string(),
        };
        std::fs::create_dir_all(&path).map_err(|e| {
            fail(
                format!("cannot create it: {e}"),
                "check the path and its permissions (servers[].data or --data)",
            )
        })?;
        let lock = lock(&path)?;
        let meta = read_meta(&path)?;
        let shards_dir = path.join(SHARDS_DIR);
        let written_by = meta
            .as_ref()
            .and_then(|m| Persistence::from_name(&m.persistence));
        // Temporary data was never promised to survive; data written without fsync cannot be
        // trusted by a permanent-store recovery either. So it is emptied, and the shard count
        // may change with it.
        let emptied = written_by == Some(Persistence::TemporarySwapOnly);
        let kept_shards = match &meta {
            None => {
                let foreign: Vec<String> = std::fs::read_dir(&path)
                    .map_err(|e| fail(format!("cannot list it: {e}"), "check its permissions"))?
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    // The flush probe of a start that stopped before writing the meta file
                    // may be left; the next probe removes it.
                    .filter(|name| name != LOCK_FILE && name != FLUSH_PROBE_FILE)
                    .collect();
                if !foreign.is_empty() {
                    return Err(fail(
                        format!(
                            "not a Terrace data dir (no {META_FILE}) and not empty: holds {}",
                            foreign.join(", ")
                        ),
                        "give the server an empty or new directory; nothing was touched",
                    ));
                }
                None
            }
            Some(meta) => {
                if meta.format != DATA_DIR_FORMAT {
                    return Err(fail(
                        format!(
                            "layout version {} (this server reads {DATA_DIR_FORMAT})",
                            meta.format
                        ),
                        "use the terrace-server version that wrote it",
                    ));
                }
                if written_by == Some(Persistence::PermanentStore)
                    && settings.persistence == Persistence::TemporarySwapOnly
                {
                    return Err(fail(
                        "holds permanent-store data, and temporary-swap-only empties its data \
                         dir at start"
                            .into(),
                        "start with --persistence permanent-store, or give this server another \
                         data dir; nothing was deleted",
                    ));
                }
                match settings.shards {
                    _ if emptied => None,
                    ShardCount::Fixed(n) if n != meta.shards => {
                        return Err(fail(
                            format!(
                                "created with {} shards, but storage.shards is {n}",
                                meta.shards
                            ),
                            "the shard count is fixed when a data dir is created: set \
                             storage.shards back (or to \"auto\", which keeps it), or start on \
                             a new data dir",
                        ));
                    }
                    _ => Some(meta.shards),
                }
            }
        };
        if emptied && shards_dir.exists() {
            let segments = count_files(&shards_dir);
            std::fs::remove_dir_all(&shards_dir).map_err(|e| {
                fail(
                    format!("cannot empty {SHARDS_DIR}/: {e}"),
                    "check the disk and permissions",
                )
            })?;
            tracing::info!(
                data_dir = %path.display(),
                segments,
                "emptied the data dir: it held temporary-swap-only data, which does not survive a restart"
            );
        }
        let shards = match (kept_shards, settings.shards) {
            (Some(kept), _) => kept,
            (None, ShardCount::Fixed(n)) => n,
            (None, ShardCount::Auto) => choose(&path),
        };
        assert!(shards >= 1, "a data dir has at least one shard");
        write_meta(&path, settings, shards)
            .map_err(|e| fail(format!("cannot write {META_FILE}: {e}"), "check the disk"))?;
        for shard in 0..shards {
            let dir = shard_dir_in(&path, shard);
            std::fs::create_dir_all(&dir).map_err(|e| {
                fail(
                    format!("cannot create {}: {e}", dir.display()),
                    "check the disk",
                )
            })?;
        }
        sync_dir(&shards_dir)
            .and_then(|()| sync_dir(&path))
            .map_err(|e| fail(format!("cannot fsync it: {e}"), "check the disk"))?;
        Ok(Self {
            path,
            shards,
            created: kept_shards.is_none(),
            _lock: lock,
        })
    }

    /// Whether this start fixed the data dir's shard count: it was new, or held temporary data
    /// (emptied).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shards in it.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The directory of shard `shard`.
    pub fn shard_dir(&self, shard: u32) -> PathBuf {
        shard_dir_in(&self.path, shard)
    }
}

/// The directory of shard `shard` in data dir `data`.
pub fn shard_dir_in(data: &Path, shard: u32) -> PathBuf {
    data.join(SHARDS_DIR).join(format!("{shard:04}"))
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Writes the meta file atomically: a temporary file, fsynced, renamed over.
fn write_meta(data: &Path, settings: &Settings, shards: u32) -> std::io::Result<()> {
    let meta = Meta {
        format: DATA_DIR_FORMAT,
        shards,
        persistence: settings.persistence.name().to_string(),
        server: Some(settings.name.clone()),
    };
    write_meta_file(data, &meta)
}

/// Writes `meta` as `data`'s meta file atomically (a temporary file, fsynced, renamed over,
/// the directory fsynced).
pub fn write_meta_file(data: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = data.join(format!("{META_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(meta.to_toml().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, data.join(META_FILE))?;
    sync_dir(data)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;
    use crate::config::Overrides;

    fn settings(dir: &Path, persistence: Persistence, shards: u32) -> Settings {
        let mut s = Settings::load(None, None, &Overrides::default()).unwrap();
        s.data_dir = dir.to_path_buf();
        s.persistence = persistence;
        s.shards = ShardCount::Fixed(shards);
        s
    }

    /// For settings with a fixed count: the chooser is never asked.
    fn never(_: &Path) -> u32 {
        unreachable!("a fixed shard count is not chosen")
    }

    #[test]
    fn lock_meta_and_safety_rules() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let perm = settings(&dir, Persistence::PermanentStore, 4);
        let open = DataDir::open(&perm, never).unwrap();
        assert!(open.shard_dir(3).is_dir());
        let meta = read_meta(&dir).unwrap().unwrap();
        assert_eq!(
            (
                meta.shards,
                meta.persistence.as_str(),
                meta.server.as_deref()
            ),
            (4, "permanent-store", Some(perm.name.as_str()))
        );
        // A second server on the same dir is refused while the first holds it.
        let error = DataDir::open(&perm, never).unwrap_err().to_string();
        assert!(
            error.contains("in use by another terrace-server"),
            "{error}"
        );
        std::fs::write(open.shard_dir(0).join("marker"), b"x").unwrap();
        drop(open);
        // Another shard count, or temporary-swap-only over permanent data: refused, kept.
        let error =
            DataDir::open(&settings(&dir, Persistence::PermanentStore, 8), never).unwrap_err();
        assert!(
            error.to_string().contains("created with 4 shards"),
            "{error}"
        );
        let error =
            DataDir::open(&settings(&dir, Persistence::TemporarySwapOnly, 4), never).unwrap_err();
        assert!(
            error.to_string().contains("holds permanent-store data"),
            "{error}"
        );
        let reopened = DataDir::open(&perm, never).unwrap();
        assert!(reopened.shard_dir(0).join("marker").exists());
        drop(reopened);

        // A directory that is not ours is never touched.
        let foreign = root.path().join("home");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("thesis.tex"), b"years of work").unwrap();
        let error = DataDir::open(
            &settings(&foreign, Persistence::TemporarySwapOnly, 4),
            never,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("not a Terrace data dir"), "{error}");
        assert!(foreign.join("thesis.tex").exists());

        // temporary-swap-only starts empty.
        let temp_dir = root.path().join("cache");
        let temp = settings(&temp_dir, Persistence::TemporarySwapOnly, 2);
        let open = DataDir::open(&temp, never).unwrap();
        std::fs::write(open.shard_dir(1).join("old"), b"x").unwrap();
        drop(open);
        let open = DataDir::open(&temp, never).unwrap();
        assert!(!open.shard_dir(1).join("old").exists());
        assert!(open.shard_dir(1).is_dir());
    }

    #[test]
    fn auto_chooses_once_and_an_existing_count_stays() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let mut perm = settings(&dir, Persistence::PermanentStore, 1);
        perm.shards = ShardCount::Auto;
        let open = DataDir::open(&perm, |path| {
            assert_eq!(path, dir.as_path());
            3
        })
        .unwrap();
        assert_eq!((open.shards(), open.created()), (3, true));
        assert!(open.shard_dir(2).is_dir());
        drop(open);
        // Reopened: the data dir's count, whatever the chooser would say now; a fixed count
        // that differs is refused, the same one accepted.
        let open = DataDir::open(&perm, never).unwrap();
        assert_eq!((open.shards(), open.created()), (3, false));
        drop(open);
        let error = DataDir::open(&settings(&dir, Persistence::PermanentStore, 5), never)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("created with 3 shards, but storage.shards is 5"),
            "{error}"
        );
        assert_eq!(
            DataDir::open(&settings(&dir, Persistence::PermanentStore, 3), never)
                .unwrap()
                .shards(),
            3
        );

        // A start stopped during its flush probe, before the meta file: not a foreign dir.
        let probed = root.path().join("probed");
        std::fs::create_dir(&probed).unwrap();
        std::fs::write(probed.join(FLUSH_PROBE_FILE), b"x").unwrap();
        let mut fresh = settings(&probed, Persistence::PermanentStore, 1);
        fresh.shards = ShardCount::Auto;
        assert_eq!(DataDir::open(&fresh, |_| 2).unwrap().shards(), 2);

        // Temporary data is emptied at start, so its count may change at every start.
        let temp_dir = root.path().join("cache");
        let mut temp = settings(&temp_dir, Persistence::TemporarySwapOnly, 2);
        drop(DataDir::open(&temp, never).unwrap());
        temp.shards = ShardCount::Auto;
        let open = DataDir::open(&temp, |_| 5).unwrap();
        assert_eq!((open.shards(), open.created()), (5, true));
        assert_eq!(read_meta(&temp_dir).unwrap().unwrap().shards, 5);
        drop(open);
        let open = DataDir::open(
            &settings(&temp_dir, Persistence::TemporarySwapOnly, 1),
            never,
        )
        .unwrap();
        assert_eq!(open.shards(), 1);
    }
}
