//! Segments as real files: preallocated with fallocate, mapped shared with memmap2, made
//! durable with an io_uring fdatasync (glommio's `BufferedFile`), which writes back the pages
//! dirtied through the mapping without blocking the executor thread.
//!
//! Must be used inside a glommio executor (syncs go through its ring). Never uses `DmaFile`:
//! see NOTES.md on glommio's O_DIRECT probe bug.

use super::{
    Preparation, SegmentFile, SegmentId, Storage, parse_segment_file_name, segment_file_name,
};
use crate::error::WalError;
use glommio::io::{BufferedFile, Directory};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A shard directory of segment files on a real filesystem.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// Kept open to fsync the directory after creating or removing segments.
    dir_handle: Directory,
}

impl FsStorage {
    /// Opens (creating it if needed) the shard directory `dir`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, WalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| WalError::Io {
            op: "create shard directory",
            path: dir.clone(),
            source,
        })?;
        let dir_handle = Directory::open(&dir).await.map_err(|e| WalError::Io {
            op: "open shard directory",
            path: dir.clone(),
            source: e.into(),
        })?;
        Ok(Self { dir, dir_handle })
    }
}

impl Storage for FsStorage {
    type File = FsSegment;

    fn segment_path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(segment_file_name(id))
    }

    fn dir_path(&self) -> PathBuf {
        self.dir.clone()
    }

    fn list(&self) -> Result<Vec<SegmentId>, WalError> {
        let io_error = |source| WalError::Io {
            op: "list shard directory",
            path: self.dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name();
            let id = name.to_str().and_then(parse_segment_file_name);
            let is_file = entry.file_type().map_err(io_error)?.is_file();
            match id {
                Some(id) if is_file => ids.push(id),
                _ => {
                    return Err(WalError::UnexpectedFile {
                        path: entry.path(),
                        dir: self.dir.clone(),
                    });
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create(&self, id: SegmentId, size_bytes: usize) -> io::Result<FsSegment> {
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Preallocate so that a store through the mapping can never hit ENOSPC (which would
        // arrive as SIGBUS), and so that the file's size is fixed from the start.
        if let Err(e) = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            size_bytes as u64,
        ) {
            drop(file);
            // Leave no half-made segment behind: it would hold nothing, and a directory must
            // hold only segments the log knows.
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        FsSegment::map(file, size_bytes)
    }

    fn open(&self, id: SegmentId) -> io::Result<FsSegment> {
        let path = self.segment_path(id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
        FsSegment::map(file, len)
    }

    fn remove(&self, id: SegmentId) -> io::Result<()> {
        std::fs::remove_file(self.segment_path(id))
    }

    fn prepare(
        &self,
        file: &FsSegment,
        from: usize,
        how: Preparation,
    ) -> impl Future<Output = io::Result<()>> + 'static {
        // On a thread of glommio's blocking pool, so the work is done off the executor's core.
        // The Arc keeps the mapping alive until the thread is done.
        let map = Arc::clone(&file.map);
        let advice = match how {
            Preparation::PopulateWrite => memmap2::Advice::PopulateWrite,
            Preparation::PopulateRead => memmap2::Advice::PopulateRead,
        };
        glommio::executor().spawn_blocking(move || {
            let len = map.len().saturating_sub(from);
            map.advise_range(advice, from, len)
        })
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.dir_handle.sync().await.map_err(Into::into)
    }
}

/// One mapped segment file.
#[derive(Debug)]
pub struct FsSegment {
    /// Shared with a background preparation, which must not outlive the mapping.
    map: Arc<MmapRaw>,
    /// The same file, for io_uring fdatasync; owns the descriptor.
    file: BufferedFile,
}

impl FsSegment {
    fn map(file: std::fs::File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment file is empty",
            ));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        // SAFETY: `into_raw_fd` hands over a valid, owned descriptor; BufferedFile closes it.
        let file = unsafe { BufferedFile::from_raw_fd(file.into_raw_fd()) };
        Ok(Self {
            map: Arc::new(map),
            file,
        })
    }
}

// SAFETY: the shared mapping is `len()` bytes, lives as long as `self.map`, and fdatasync on the
// file writes back pages dirtied through a shared mapping of it.
unsafe impl SegmentFile for FsSegment {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(Into::into)
    }
}
