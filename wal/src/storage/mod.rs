//! Where segment bytes live.
//!
//! The log is written against two small traits so that tests can run it on a simulated disk
//! that keeps "written" and "durable" apart and can lose power at any moment
//! ([`SimStorage`]), and production runs it on real files ([`FsStorage`]).
//!
//! A [`SegmentFile`] is a fixed-size, writable memory region backed by a file: the log writes
//! records into it through a raw pointer and reads them back as slices (zero-copy).
//! [`SegmentFile::sync`] makes every byte written so far durable. [`Storage`] names, creates,
//! lists and removes segment files in one shard directory.

mod fs;
mod sim;

pub use fs::{FsSegment, FsStorage, PREPARE_THREAD_NAME, UNMAP_THREAD_NAME};
pub use sim::{SimCrashOptions, SimDisk, SimStorage};

use crate::error::WalError;
use std::future::Future;
use std::io;
use std::path::PathBuf;

/// How to prepare a segment ahead of need, by the log that will append to it. Both map its
/// pages in off the executor's core (the kernel zero-fills every new page, which would
/// otherwise happen in a page fault on the executor thread, in the middle of an append);
/// neither changes its contents. A new segment (a spare) also gets zeros written over it,
/// and for a synced log made durable: then its blocks are written ones, and syncing an
/// append into them needs no metadata change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    /// For a log that never syncs: map the pages writable, in whatever page-cache folios the
    /// kernel likes (a spare: write zeros over it, see [`Storage::create_spare`]). This
    /// marks them dirty, which would make a synced log's next fdatasync write the whole
    /// segment.
    Unsynced,
    /// For a log that syncs: keep the page cache in one-page folios (so that an fdatasync
    /// writes only the pages appends dirtied) and map the pages for reading only (the first
    /// store to each still faults, but cheaply).
    Synced,
}

/// A segment's id: its position in the log, also its file name. Ids start at 1 and increase.
pub type SegmentId = u64;

/// A fixed-size memory region backed by a segment file.
///
/// # Safety
/// Implementations guarantee that `as_mut_ptr()` points to `len()` bytes that stay valid,
/// readable and writable (through this pointer only) for as long as the value lives, and that
/// `sync` makes bytes written through that pointer durable. For a segment made by
/// [`Storage::create_spare`]: only once [`SegmentFile::finish_preparation`] returned `Ok`
/// (before, its file may not be allocated yet, and a touch would be SIGBUS).
pub unsafe trait SegmentFile: 'static {
    /// Size of the region in bytes (the segment size).
    fn len(&self) -> usize;

    /// Whether the region is empty (never, for a real segment).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start of the region; page-aligned.
    fn as_mut_ptr(&self) -> *mut u8;

    /// Makes a segment made by [`Storage::create_spare`] ready for appends: waits until its
    /// file is allocated (allocating it here if the background work has not begun), and
    /// stops any background writing of it. Fails if the file could not be allocated; the
    /// segment must then not be used. Ok at once by default.
    fn finish_preparation(&self) -> io::Result<()> {
        Ok(())
    }

    /// Tells the file that the log removed it for good: for a synced log, the directory
    /// sync that made the removal durable has returned. Its blocks may then be freed before
    /// the last reference to it goes. No-op by default.
    fn removed(&self) {}

    /// Tells the background preparation of a segment made by [`Storage::create_spare`]
    /// that the log waits for it to end (a new log's first segment): it then goes as fast
    /// as it can, where it otherwise leaves the disk to the logs' appends. No-op by default.
    fn hurry_preparation(&self) {}

    /// Whether the background preparation of a segment made by [`Storage::create_spare`]
    /// has ended (done, stopped, or given up). True at once by default.
    fn preparation_ended(&self) -> bool {
        true
    }

    /// Makes every byte written to the region so far durable (fdatasync). Must not block the
    /// executor thread.
    fn sync(&self) -> impl Future<Output = io::Result<()>>;
}

/// One shard directory of segment files.
pub trait Storage: 'static {
    /// The segment files of this storage.
    type File: SegmentFile;

    /// A human-readable location of a segment, for errors and logs (its path).
    fn segment_path(&self, id: SegmentId) -> PathBuf;

    /// The directory, for errors and logs.
    fn dir_path(&self) -> PathBuf;

    /// The ids of the segment files present, in increasing order. Anything in the directory
    /// that is not a segment file is an error: the directory belongs to the log.
    fn list(&self) -> Result<Vec<SegmentId>, WalError>;

    /// Creates a new segment file of `size_bytes` bytes, all zero, preallocated so that
    /// writes into it cannot fail for lack of space, and maps it. Must not exist yet.
    fn create(&self, id: SegmentId, size_bytes: usize) -> io::Result<Self::File>;

    /// Maps an existing segment file. `None` if the file is empty: a segment whose creation
    /// was cut short (the process stopped before it was allocated), which never held a
    /// record.
    fn open(&self, id: SegmentId) -> io::Result<Option<Self::File>>;

    /// Drops what the OS caches of a segment file and does not hold as dirty, so that the
    /// next read of it comes from the disk. Recovery calls it for the newest segments before
    /// it opens them: after a failed writeback Linux keeps the page cached and marks it clean,
    /// and reports the error once, to the process that saw it fail; a server restarted
    /// without a reboot would read bytes that never reached the disk, build on them, and lose
    /// what it acknowledged after them at the next power cut. A no-op where there is no such
    /// cache.
    fn drop_cached(&self, id: SegmentId) -> io::Result<()> {
        let _ = id;
        Ok(())
    }

    /// Removes a segment file. The removal is durable after the next [`Storage::sync_dir`].
    fn remove(&self, id: SegmentId) -> io::Result<()>;

    /// Starts preparing bytes `[from, len)` of a segment, which hold zeros and are not in use
    /// yet, so that appending into them later is cheap (see [`Preparation`]). What must
    /// precede any append is done before this returns; the rest (populating the pages)
    /// continues in the background, best effort. The contents stay the same. A no-op where
    /// there is nothing to gain.
    fn prepare(&self, file: &Self::File, from: usize, how: Preparation) -> io::Result<()> {
        let _ = (file, from, how);
        Ok(())
    }

    /// Creates a segment ahead of need, as [`Storage::create`], and starts preparing it as
    /// [`Storage::prepare`]. Nothing may touch its bytes until
    /// [`SegmentFile::finish_preparation`] succeeded: until then the background work may
    /// still be allocating the file, or writing it (zeros over zeros). By default: `create`,
    /// then `prepare` (best effort).
    fn create_spare(
        &self,
        id: SegmentId,
        size_bytes: usize,
        how: Preparation,
    ) -> io::Result<Self::File> {
        let file = self.create(id, size_bytes)?;
        if let Err(error) = self.prepare(&file, 0, how) {
            tracing::debug!(%error, "preparing a spare segment failed; writes into it will be slower");
        }
        Ok(file)
    }

    /// Makes creations and removals of segment files durable (fsync of the directory).
    fn sync_dir(&self) -> impl Future<Output = io::Result<()>>;
}

/// File name of a segment: its id, zero-padded to 20 digits so that names sort like ids.
pub fn segment_file_name(id: SegmentId) -> String {
    format!("{id:020}.seg")
}

/// The id in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<SegmentId> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_like_ids_and_parse_back() {
        let ids = [1u64, 9, 10, 99, 100, 12345678901234567890];
        let names: Vec<String> = ids.iter().map(|&id| segment_file_name(id)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (&id, name) in ids.iter().zip(&names) {
            assert_eq!(parse_segment_file_name(name), Some(id));
        }
        for bad in [
            "1.seg",
            "00000000000000000001.seg.tmp",
            "0000000000000000000a.seg",
            "x",
            "",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
        assert_eq!(parse_segment_file_name(&segment_file_name(0)), None);
    }
}
