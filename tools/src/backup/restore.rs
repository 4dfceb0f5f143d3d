//! `restore`: a snapshot back into a data dir, atomically.
//!
//! Everything is written into a temporary directory beside the target, checked as it is
//! written (each file's CRC, every record: a restore is a verify that also writes), fsynced,
//! and only then renamed into place. So an interrupted restore leaves the target as it was,
//! and a server never starts on a half-restored data dir.
//!
//! - The temporary directory is `.<name>.restore-<pid>` beside the target. It holds the marker
//!   `RESTORE-INCOMPLETE` while it is being written, renamed to `RESTORE-COMPLETE` once
//!   everything in it is durable.
//! - A target that exists is swapped with the new one in a single `renameat2(RENAME_EXCHANGE)`.
//!   With `--force`, its old contents are then moved to `<target>.before-restore-<time>`, not
//!   deleted: the operator deletes them once sure. Then the marker is removed from the target.
//! - What an interrupted restore leaves is cleaned up by the next one: a temporary directory
//!   with either marker is a copy of a snapshot and is removed (renamed to
//!   `.<name>.discard-<pid>` first, so that a crash while removing it cannot leave it
//!   without its marker under the temporary name); one without a marker holds the
//!   target's old contents, swapped out just before the interruption, and is moved to
//!   `<target>.before-restore-<time>` like a finished restore would have done. A marker left
//!   in the target itself (interrupted right after the swap) is removed.
//! - A target a running server holds (its lock) is refused, `--force` or not.

use super::error::BackupError;
use super::files;
use super::manifest::{Manifest, utc_string};
use super::parallel::per_shard;
use super::progress::Progress;
use super::verify::{VerifyReport, check_segment, check_shape, read_manifest};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use terrace_node::data_dir::{self, DATA_DIR_FORMAT, LOCK_FILE, Meta};
use terrace_wal::log::scan::LogScanner;
use terrace_wal::storage::segment_file_name;

/// Marks a temporary restore (or reshard) directory as incomplete.
pub(super) const INCOMPLETE_MARKER: &str = "RESTORE-INCOMPLETE";
/// Marks a temporary restore (or reshard) directory as complete and durable, not swapped in
/// yet.
pub(super) const COMPLETE_MARKER: &str = "RESTORE-COMPLETE";

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub manifest: Manifest,
    /// What it held.
    pub contents: VerifyReport,
    /// The data dir written.
    pub data_dir: PathBuf,
    /// Where the target's previous contents went (`--force` on a non-empty target).
    pub previous_contents: Option<PathBuf>,
    /// Leftovers of interrupted restores that were removed.
    pub removed_leftovers: Vec<PathBuf>,
    /// Old contents of the target that an interrupted restore had swapped out, moved aside.
    pub recovered_contents: Vec<PathBuf>,
    /// Wall time.
    pub duration: Duration,
}

/// Restores the snapshot in `backup` into the data dir `target`.
pub fn restore(
    backup: &Path,
    target: &Path,
    force: bool,
    show_progress: bool,
) -> Result<RestoreReport, BackupError> {
    let started = Instant::now();
    let manifest = read_manifest(backup)?;
    check_shape(backup, &manifest)?;
    if manifest.source.data_dir_format != DATA_DIR_FORMAT {
        return Err(BackupError::Refused {
            path: backup.to_path_buf(),
            problem: format!(
                "holds a data dir of layout version {} (this backup-data writes {DATA_DIR_FORMAT})",
                manifest.source.data_dir_format
            ),
            fix: "restore it with the backup-data of the Terrace version that wrote it".into(),
        });
    }
    let target = std::path::absolute(target).map_err(BackupError::io("resolve", target))?;
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string_lossy().into_owned()),
        _ => {
            return Err(BackupError::Refused {
                path: target.clone(),
                problem: "cannot restore into a filesystem root".into(),
                fix: "give --data-dir a directory below it".into(),
            });
        }
    };
    let backup_abs = std::path::absolute(backup).map_err(BackupError::io("resolve", backup))?;
    if target.starts_with(&backup_abs) || backup_abs.starts_with(&target) {
        return Err(BackupError::Refused {
            path: target,
            problem: "overlaps the snapshot being restored".into(),
            fix: "give --data-dir a directory outside the snapshot".into(),
        });
    }
    // Held until the new data dir is in place: no server may start on the old one meanwhile.
    let (lock, created) = check_target(&target, force)?;
    let cleaned = clean_leftovers(&target, &parent, &name, RESTORE);
    let (removed_leftovers, recovered_contents) = match cleaned {
        Ok(cleaned) => cleaned,
        Err(e) => {
            drop(lock);
            if created {
                remove_created(&target);
            }
            return Err(e);
        }
    };

    let tmp = parent.join(format!(".{name}.restore-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(BackupError::io("remove", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(BackupError::io("create directory", &tmp))?;
    files::write_new_file(&tmp.join(INCOMPLETE_MARKER), b"", 0)?;
    // Both: the copy's name, and its marker in it (without the marker, a copy left by a
    // crash would pass for the target's old contents).
    files::sync_dir(&tmp)?;
    files::sync_dir(&parent)?;

    let contents = match write_data_dir(backup, &manifest, &tmp, show_progress) {
        Ok(contents) => contents,
        Err(e) => {
            // Our own partial copy; the target was not touched.
            discard(&tmp, &parent, &name);
            drop(lock);
            if created {
                remove_created(&target);
            }
            return Err(e);
        }
    };
    std::fs::rename(tmp.join(INCOMPLETE_MARKER), tmp.join(COMPLETE_MARKER))
        .map_err(BackupError::io("mark complete", &tmp))?;
    files::sync_dir(&tmp)?;

    let previous_contents = swap_into_place(&tmp, &target, &parent, &name, RESTORE)?;
    files::sync_dir(&parent)?;
    drop(lock);
    files::remove_if_exists(&target.join(COMPLETE_MARKER))?;
    files::sync_dir(&target)?;
    Ok(RestoreReport {
        manifest,
        contents,
        data_dir: target,
        previous_contents,
        removed_leftovers,
        recovered_contents,
        duration: started.elapsed(),
    })
}

/// Refuses a target a server holds, or a non-empty one without `force`, or a mount point.
/// Creates the target if needed and returns its lock, held until the new data dir is in
/// place: no server can start on it meanwhile, and no second restore can run into it.
fn check_target(target: &Path, force: bool) -> Result<(data_dir::DataDirLock, bool), BackupError> {
    if target.exists() && !target.is_dir() {
        return Err(BackupError::Refused {
            path: target.to_path_buf(),
            problem: "exists and is not a directory".into(),
            fix: "give --data-dir a directory".into(),
        });
    }
    if target.is_dir() {
        let contents: Vec<String> = files::list_names(target)?
            .into_iter()
            .filter(|n| n != LOCK_FILE)
            .collect();
        if !contents.is_empty() && !force {
            return Err(BackupError::Refused {
                path: target.to_path_buf(),
                problem: format!("not empty: holds {}", contents.join(", ")),
                fix: "restore into a new or empty directory, or add --force to replace it (its \
                      contents are moved aside, not deleted)"
                    .into(),
            });
        }
    }
    let created = !target.exists();
    if created {
        files::create_dirs(target)?;
    }
    let lock = data_dir::lock(target).map_err(|e| BackupError::Refused {
        path: target.to_path_buf(),
        problem: super::source::held_by(&e),
        fix: "stop that server (or that restore) before restoring over its data".into(),
    })?;
    refuse_mount_point(target, RESTORE)?;
    Ok((lock, created))
}

/// Refuses a target that is a mount point: `word` (restore, reshard) writes the new data dir
/// beside it and renames it into place, which cannot cross filesystems.
pub(super) fn refuse_mount_point(target: &Path, word: &str) -> Result<(), BackupError> {
    let device = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .map_err(BackupError::io("stat", path))
    };
    if let Some(parent) = target.parent()
        && device(target)? != device(parent)?
    {
        return Err(BackupError::Refused {
            path: target.to_path_buf(),
            problem: format!(
                "is a mount point: a {word} writes beside it and renames the result into place, \
                 which cannot cross filesystems"
            ),
            fix: format!(
                "{word} a directory below the mount point (and point the server's data there)"
            ),
        });
    }
    Ok(())
}

/// Removes a temporary copy this run made, after a failure: renamed to a `.discard-` name
/// first, so that a crash while removing it (its marker may go first) cannot leave it
/// looking like a data dir's old contents to the next run's cleanup.
pub(super) fn discard(tmp: &Path, parent: &Path, name: &str) {
    let doomed = parent.join(format!(".{name}.discard-{}", std::process::id()));
    let gone = std::fs::rename(tmp, &doomed)
        .and_then(|()| File::open(parent)?.sync_all())
        .and_then(|()| std::fs::remove_dir_all(&doomed));
    if gone.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    let _ = files::sync_dir(parent);
}

/// Removes a target this restore created (holding only its lock file) after a failure.
fn remove_created(target: &Path) {
    let _ = std::fs::remove_file(target.join(LOCK_FILE));
    let _ = std::fs::remove_dir(target);
    let _ = files::sync_parent(target);
}

/// What `restore` calls its temporary directories and the old contents it moves aside.
const RESTORE: &str = "restore";

/// Cleans up after interrupted runs of `word` (`restore`, `reshard`) into `target` (see the
/// module doc). Returns the copies removed and the old contents moved aside.
pub(super) fn clean_leftovers(
    target: &Path,
    parent: &Path,
    name: &str,
    word: &str,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), BackupError> {
    let prefix = format!(".{name}.{word}-");
    // A copy being removed is renamed to this first: a crash midway through removing it
    // (its marker may go first) must not leave it looking like the target's old contents.
    let discard_prefix = format!(".{name}.discard-");
    let (mut removed, mut recovered) = (Vec::new(), Vec::new());
    for entry in files::list_names(parent)? {
        if entry.starts_with(&discard_prefix) {
            let path = parent.join(&entry);
            std::fs::remove_dir_all(&path).map_err(BackupError::io("remove", &path))?;
            removed.push(path);
            continue;
        }
        if !entry.starts_with(&prefix) {
            continue;
        }
        let path = parent.join(&entry);
        // Another restore that is still running (its pid is in the name) is left alone.
        let pid = entry[prefix.len()..].parse::<u32>().ok();
        if pid.is_some_and(|pid| {
            pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
        }) {
            continue;
        }
        if path.join(INCOMPLETE_MARKER).exists() || path.join(COMPLETE_MARKER).exists() {
            let doomed = parent.join(format!("{discard_prefix}{}", &entry[prefix.len()..]));
            std::fs::rename(&path, &doomed).map_err(BackupError::io("rename", &doomed))?;
            files::sync_dir(parent)?;
            std::fs::remove_dir_all(&doomed).map_err(BackupError::io("remove", &doomed))?;
            removed.push(path);
        } else {
            let aside = aside_path(parent, name, word)?;
            std::fs::rename(&path, &aside).map_err(BackupError::io("move aside to", &aside))?;
            recovered.push(aside);
        }
    }
    if !removed.is_empty() || !recovered.is_empty() {
        files::sync_dir(parent)?;
    }
    if target.join(COMPLETE_MARKER).exists() {
        files::remove_if_exists(&target.join(COMPLETE_MARKER))?;
        files::sync_dir(target)?;
    }
    Ok((removed, recovered))
}

/// A new `<name>.before-<word>-<time>[-n]` path beside the target.
fn aside_path(parent: &Path, name: &str, word: &str) -> Result<PathBuf, BackupError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stem = format!("{name}.before-{word}-{}", utc_string(secs).replace(':', ""));
    for n in 0..1000 {
        let candidate = if n == 0 {
            parent.join(&stem)
        } else {
            parent.join(format!("{stem}-{n}"))
        };
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(BackupError::Refused {
        path: parent.join(stem),
        problem: "a thousand earlier contents are kept beside it already".into(),
        fix: format!("remove old `.before-{word}-` directories you no longer need"),
    })
}

/// Writes and checks every segment of the snapshot, and the meta file, into `tmp`.
fn write_data_dir(
    backup: &Path,
    manifest: &Manifest,
    tmp: &Path,
    show_progress: bool,
) -> Result<VerifyReport, BackupError> {
    let (_, _, total) = manifest.totals();
    let progress = Progress::bytes(show_progress, "restore", total);
    let mut report = VerifyReport {
        shards: manifest.source.shard_count,
        ..VerifyReport::default()
    };
    let shards_dir = tmp.join(data_dir::SHARDS_DIR);
    std::fs::create_dir(&shards_dir).map_err(BackupError::io("create directory", &shards_dir))?;
    let parts = per_shard(manifest.shards.len(), |index, buffer| {
        let shard = &manifest.shards[index];
        let mut part = VerifyReport::default();
        let dir = data_dir::shard_dir_in(tmp, shard.shard);
        std::fs::create_dir(&dir).map_err(BackupError::io("create directory", &dir))?;
        let mut scanner = LogScanner::new();
        for entry in &shard.segments {
            let mut records = 0;
            let bytes = check_segment(backup, buffer, &mut scanner, entry, |_| records += 1)?;
            let path = dir.join(segment_file_name(entry.id));
            files::write_new_file(&path, bytes, entry.segment_bytes)?;
            part.records += records;
            part.segments += 1;
            part.bytes += entry.stored_bytes;
            progress.advance(entry.stored_bytes);
        }
        files::sync_dir(&dir)?;
        Ok(part)
    })?;
    for part in &parts {
        report.add(part);
    }
    progress.finish();
    files::sync_dir(&shards_dir)?;
    let meta = Meta {
        format: manifest.source.data_dir_format,
        shards: manifest.source.shard_count,
        persistence: manifest.source.persistence.clone(),
        server: manifest.source.server.clone(),
    };
    data_dir::write_meta_file(tmp, &meta)
        .map_err(BackupError::io("write the meta file in", tmp))?;
    Ok(report)
}

/// Puts the complete `tmp` at `target`. An existing target is swapped with it atomically;
/// what it held (other than a lock file) is moved aside (`<name>.before-<word>-<time>`) and
/// its new path returned.
pub(super) fn swap_into_place(
    tmp: &Path,
    target: &Path,
    parent: &Path,
    name: &str,
    word: &str,
) -> Result<Option<PathBuf>, BackupError> {
    if !target.exists() {
        std::fs::rename(tmp, target).map_err(BackupError::io("rename into place", target))?;
        return Ok(None);
    }
    // Chosen before the swap: a failure to find a name must come while nothing has moved.
    let aside = aside_path(parent, name, word)?;
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        tmp,
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| BackupError::Io {
        op: "swap into place (renameat2 RENAME_EXCHANGE)",
        path: target.to_path_buf(),
        source: e.into(),
    })?;
    // `tmp` now holds the old contents.
    let old: Vec<String> = files::list_names(tmp)?
        .into_iter()
        .filter(|n| n != LOCK_FILE)
        .collect();
    if old.is_empty() {
        files::remove_if_exists(&tmp.join(LOCK_FILE))?;
        std::fs::remove_dir(tmp).map_err(BackupError::io("remove", tmp))?;
        return Ok(None);
    }
    std::fs::rename(tmp, &aside).map_err(BackupError::io("move aside to", &aside))?;
    Ok(Some(aside))
}
