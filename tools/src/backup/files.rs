//! File helpers with the durability rules of the rest of Terrace: a file counts as written
//! only once it and its directory entry are fsynced, and a file that replaces another is
//! written under a temporary name and renamed over.

use super::error::BackupError;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::Path;

/// A reusable read buffer whose bytes start 16-aligned, as record payloads must be for rkyv's
/// checked access.
#[derive(Debug, Default)]
pub struct AlignedBuffer {
    words: Vec<u128>,
    len: usize,
    /// CRC-32 of the bytes read.
    crc32: u32,
}

/// Bytes read per `read` call: small enough that the CRC of each piece is computed while it
/// is still in the CPU cache (a second pass over a 64 MiB segment would come from memory).
const READ_CHUNK_BYTES: usize = 1 << 20;

impl AlignedBuffer {
    /// Reads the whole of `path` into the buffer (replacing what it held) and returns it.
    pub fn read_file(&mut self, path: &Path) -> Result<&[u8], BackupError> {
        self.read_prefix(path, u64::MAX)
    }

    /// Reads the first `limit` bytes of `path` (all of it if shorter) into the buffer.
    pub fn read_prefix(&mut self, path: &Path, limit: u64) -> Result<&[u8], BackupError> {
        self.read_prefix_each(path, limit, |_| {})
    }

    /// As [`AlignedBuffer::read_prefix`], calling `arrived` with everything read so far
    /// after each piece (of [`READ_CHUNK_BYTES`]): work on bytes just read finds them in the
    /// CPU cache.
    pub fn read_prefix_each(
        &mut self,
        path: &Path,
        limit: u64,
        mut arrived: impl FnMut(&[u8]),
    ) -> Result<&[u8], BackupError> {
        let mut file = File::open(path).map_err(BackupError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(BackupError::io("stat", path))?
            .len()
            .min(limit);
        let len = usize::try_from(len).map_err(|_| BackupError::Damaged {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("{len} bytes is too large a file"),
        })?;
        // Grown (and zeroed) only when a larger file comes: zeroing 64 MiB per segment cost
        // as much as reading it. Every byte up to `len` is overwritten by the reads below.
        let words = len.div_ceil(16);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
        self.len = len;
        let bytes = self.bytes_mut();
        let mut filled = 0;
        let mut hasher = crc32fast::Hasher::new();
        while filled < len {
            let end = len.min(filled + READ_CHUNK_BYTES);
            let n = file
                .read(&mut bytes[filled..end])
                .map_err(BackupError::io("read", path))?;
            if n == 0 {
                return Err(BackupError::Damaged {
                    path: path.to_path_buf(),
                    offset: filled as u64,
                    reason: "the file ended early (it was truncated while being read)".into(),
                });
            }
            hasher.update(&bytes[filled..filled + n]);
            filled += n;
            arrived(&bytes[..filled]);
        }
        self.crc32 = hasher.finalize();
        Ok(self.bytes())
    }

    /// CRC-32 of the bytes read.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes (zeroed when grown, then
        // read into); u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Writes `bytes` to a new file `path` (which must not exist) and fsyncs it. With
/// `preallocate_bytes` larger than the bytes, the file is first given that size with
/// fallocate (the rest reads as zeros), as a segment file must be.
pub fn write_new_file(
    path: &Path,
    bytes: &[u8],
    preallocate_bytes: u64,
) -> Result<(), BackupError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(BackupError::io("create", path))?;
    if preallocate_bytes > bytes.len() as u64 {
        rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            preallocate_bytes,
        )
        .map_err(|e| BackupError::Io {
            op: "preallocate (fallocate)",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    // Written in pieces, each handed to the disk at once (fadvise DONTNEED starts writeback
    // of dirty pages without waiting for it), so that the disk writes while the next piece
    // is read and checked, and the closing fsync waits only for the last piece.
    let mut offset = 0;
    for piece in bytes.chunks(WRITEBACK_CHUNK_BYTES) {
        file.write_all(piece)
            .map_err(BackupError::io("write", path))?;
        // Best effort: without it the fsync below still writes everything.
        let _ = rustix::fs::fadvise(
            &file,
            offset,
            std::num::NonZeroU64::new(piece.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        offset += piece.len() as u64;
    }
    file.sync_all().map_err(BackupError::io("fsync", path))
}

/// Bytes written before their writeback is started (see [`write_new_file`]).
const WRITEBACK_CHUNK_BYTES: usize = 8 << 20;

/// Writes `bytes` as `path` atomically: a temporary file beside it, fsynced, renamed over,
/// the directory fsynced.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let tmp = path.with_extension("tmp");
    remove_if_exists(&tmp)?;
    write_new_file(&tmp, bytes, 0)?;
    std::fs::rename(&tmp, path).map_err(BackupError::io("rename into place", path))?;
    sync_parent(path)
}

/// Removes `path` if it exists.
pub fn remove_if_exists(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Fsyncs a directory, making creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io("fsync directory", dir))
}

/// Bytes that the files under `dir` take on disk (allocated blocks), recursively; what
/// cannot be read counts as 0.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Fsyncs the directory that holds `path`.
pub fn sync_parent(path: &Path) -> Result<(), BackupError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and its parents, fsyncing each directory it created and the parent of the
/// topmost one.
pub fn create_dirs(dir: &Path) -> Result<(), BackupError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        // Created meanwhile (by another thread of this pass).
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(BackupError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Names in `dir`, sorted. A directory that does not exist has none.
pub fn list_names(dir: &Path) -> Result<Vec<String>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(BackupError::Io {
                op: "list",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BackupError::io("list", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
