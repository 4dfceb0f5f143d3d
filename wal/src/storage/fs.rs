//! Segments as real files: preallocated with fallocate, mapped shared with memmap2, made
//! durable with an io_uring fdatasync (glommio's `BufferedFile`), which writes back the pages
//! dirtied through the mapping without blocking the executor thread.
//!
//! Must be used inside a glommio executor (syncs go through its ring). Never uses `DmaFile`:
//! see NOTES.md on glommio's O_DIRECT probe bug.

use super::{
    Preparation, SegmentFile, SegmentId, Storage, parse_segment_file_name, segment_file_name,
};
use crate::background::run_in_background;
use crate::error::WalError;
use glommio::io::{BufferedFile, Directory};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::OpenOptions;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _};
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
        // Absolute: glommio's `Directory::open` passes a relative path to openat(2) with no
        // directory fd, which fails with EBADF (the embedded default data dir is relative).
        let dir = std::path::absolute(dir.as_ref()).map_err(|source| WalError::Io {
            op: "resolve shard directory",
            path: dir.as_ref().to_path_buf(),
            source,
        })?;
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
        self.create_with(id, |file| {
            allocate(&file, size_bytes)?;
            FsSegment::map(file, size_bytes, id, Allocation::Done)
        })
    }

    fn create_spare(
        &self,
        id: SegmentId,
        size_bytes: usize,
        how: Preparation,
    ) -> io::Result<FsSegment> {
        // Allocated by the preparation thread: fallocate can wait for the disk (reading a
        // block bitmap: 2-25 ms seen here), and on the executor every client would wait too.
        // Mapped now all the same: a mapping may reach past the end of its file, and nothing
        // touches these pages before `finish_preparation` (it would be SIGBUS).
        self.create_with(id, |file| {
            let segment = FsSegment::map(file, size_bytes, id, Allocation::Pending)?;
            self.spawn_preparation(&segment, 0, how, true)?;
            Ok(segment)
        })
    }

    fn open(&self, id: SegmentId) -> io::Result<Option<FsSegment>> {
        let path = self.segment_path(id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
        if len == 0 {
            return Ok(None);
        }
        FsSegment::map(file, len, id, Allocation::Done).map(Some)
    }

    fn drop_cached(&self, id: SegmentId) -> io::Result<()> {
        // Pages still dirty, or mapped by a process, stay: only clean, unmapped ones go.
        let file = OpenOptions::new().read(true).open(self.segment_path(id))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    fn remove(&self, id: SegmentId) -> io::Result<()> {
        std::fs::remove_file(self.segment_path(id))
    }

    fn prepare(&self, file: &FsSegment, from: usize, how: Preparation) -> io::Result<()> {
        self.spawn_preparation(file, from, how, false)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        self.dir_handle.sync().await.map_err(Into::into)
    }
}

impl FsStorage {
    /// Creates segment file `id` (it must not exist) and makes a segment of it with `make`.
    /// If that fails the file is removed: a half-made segment would hold nothing, and a
    /// directory must hold only segments the log knows.
    fn create_with(
        &self,
        id: SegmentId,
        make: impl FnOnce(std::fs::File) -> io::Result<FsSegment>,
    ) -> io::Result<FsSegment> {
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let made = make(file);
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Prepares bytes `[from, len)` of `file` on a thread of its own, off the executor's core:
    /// allocates the file first if it is not yet, then with `zeros` writes zeros over the
    /// bytes (see `Preparing`; for a synced log, also makes them durable), else populates
    /// their pages. Whatever happens, the thread marks the preparation done when it ends.
    fn spawn_preparation(
        &self,
        file: &FsSegment,
        from: usize,
        how: Preparation,
        zeros: bool,
    ) -> io::Result<()> {
        let (advice, populate_from) = match how {
            Preparation::Unsynced => (memmap2::Advice::PopulateWrite, from),
            // Here, before any append can touch the region: cheap, and it must not race them.
            Preparation::Synced => (memmap2::Advice::PopulateRead, file.small_folios_from(from)?),
        };
        // Not glommio's blocking pool: its threads panic when they finish after their
        // executor has exited, which a server shutting down (or a log dropped)
        // mid-preparation would do. The Arc keeps the mapping alive until the thread is done.
        let map = Arc::clone(&file.map);
        let path = self.segment_path(file.id);
        let preparing = Arc::clone(&file.preparing);
        let own = file.keep.try_clone()?;
        std::thread::Builder::new()
            .name(PREPARE_THREAD_NAME.into())
            .spawn(move || {
                let _done = MarkDone(&preparing);
                // At normal priority: allocating takes filesystem locks, and so does populating.
                run_in_background(0);
                if preparing.stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Dropped before it was needed: no need to take the space.
                    return;
                }
                if let Err(error) = preparing.allocate(&own, map.len()) {
                    tracing::debug!(segment = %path.display(), %error,
                        "allocating a segment ahead of need failed; the log will try again");
                    return;
                }
                if zeros {
                    // Writing takes no lock an executor waits for (but the piece's, see
                    // `Preparing`): it can run at the lowest priority, on whatever CPU is
                    // idle. The pages are then in the page cache, and the first store into
                    // each only maps it (no zero-filling, no allocation).
                    run_in_background(19);
                    let written = match how {
                        Preparation::Unsynced => preparing
                            .write_zeros(&own, populate_from, map.len(), ZeroWrites::WholePieces)
                            .map(drop),
                        Preparation::Synced => preparing.write_zeros_durably(&path, populate_from, map.len()),
                    };
                    if let Err(error) = written {
                        tracing::debug!(segment = %path.display(), %error,
                            "writing zeros ahead into a segment failed; appends into it will be slower");
                        return;
                    }
                    // A log that never syncs then gets its pages mapped writable as well
                    // (below), so that its appends take no page fault at all: mapping a page
                    // that is in the cache still costs a fault each. wal-bench --only
                    // volatile, six interleaved pairs on 2026-12-05 (Intel host): 1.83-2.38
                    // GB/s without, 2.10-2.65 with; on an AMD host earlier it measured no
                    // faster. A synced log keeps its one-page folios mapped by its appends:
                    // every sync write-protects them again anyway.
                    if matches!(how, Preparation::Synced)
                        || preparing.stop.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return;
                    }
                    run_in_background(0);
                }
                // In pieces: populating holds the process's mmap lock, and an executor that
                // maps or unmaps a segment meanwhile waits for it; a whole 64 MiB segment
                // held it for 50-120 ms here. At normal priority on purpose: at idle priority
                // (SCHED_IDLE) and at nice 19 alike, on a core kept busy by other work the
                // thread was preempted holding the lock and barely ran again, and the
                // executor waited on it (permanent-store writes stopped in the compare smoke
                // test, load and server on one core).
                let mut at = populate_from;
                while at < map.len() {
                    let len = PREPARE_PIECE_BYTES.min(map.len() - at);
                    if let Err(error) = map.advise_range(advice, at, len) {
                        tracing::debug!(segment = %path.display(), %error,
                            "preparing a segment failed; appends into it will be slower");
                        break;
                    }
                    at += len;
                    give_way();
                }
            })?;
        Ok(())
    }
}

/// Preallocates a segment file, so that a store through the mapping can never hit ENOSPC
/// (which would arrive as SIGBUS), and so that the file's size is fixed from the start.
fn allocate(file: &std::fs::File, size_bytes: usize) -> io::Result<()> {
    rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::empty(),
        0,
        size_bytes as u64,
    )
    .map_err(Into::into)
}

/// How `Preparing::write_zeros` cuts its writes.
#[derive(Debug, Clone, Copy)]
enum ZeroWrites {
    /// One `write` per piece: the page cache may use large folios.
    WholePieces,
    /// One `write` per page: the page cache holds one-page folios.
    OnePageEach,
}

/// The size the zero writes of a synced log's spare are cut to: one page (where pages are
/// larger, a 4 KiB write still makes a one-page folio, at the cost of more writes).
const ONE_PAGE_BYTES: usize = 4096;

/// The background preparation of a spare segment, and what the log waits for before its
/// first append (`finish`).
///
/// The spare's file is allocated here, off the executor (see `FsStorage::create_spare`).
/// For a log that never syncs, zeros are then written over it with plain `write`s. Why:
/// storing into a mapped page of a new (fallocated) file first makes the kernel allocate a
/// page and fill it with zeros, one 4 KiB page fault at a time, on the executor, and this VM
/// makes the first touch of memory slow (0.5-2 GB/s measured). `write` fills the page cache
/// in large folios and copies instead of faulting, as the plain write loop the log is
/// measured against does. A log that syncs needs its tail in one-page folios (see
/// `FsSegment::small_folios_from`): its zeros go one page per write, and are then made
/// durable (see `Preparing::write_zeros_durably`).
///
/// The writes must never overlap an append: `finish` stops them and waits for the piece in
/// progress.
#[derive(Debug)]
struct Preparing {
    stop: std::sync::atomic::AtomicBool,
    /// The log waits for the work to end: no pauses (see `leave_the_disk_to_the_logs`).
    hurry: std::sync::atomic::AtomicBool,
    /// The background work has ended (done, stopped or failed).
    done: std::sync::atomic::AtomicBool,
    /// Held while the file is allocated or a piece of it written.
    writing: std::sync::Mutex<Allocation>,
}

/// Marks a preparation done when dropped: however its thread ends.
struct MarkDone<'a>(&'a Preparing);

impl Drop for MarkDone<'_> {
    fn drop(&mut self) {
        self.0.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether a segment's file is allocated.
#[derive(Debug)]
enum Allocation {
    Pending,
    Done,
    /// The first failure, as text (an `io::Error` cannot be copied to every asker).
    Failed(io::ErrorKind, String),
}

/// How many zeros a synced log's spare gets between two fdatasyncs (see
/// `Preparing::write_zeros_durably`).
const ZERO_SYNC_BYTES: usize = 256 << 10;

/// How many times as long as a piece of background disk work took its thread then sleeps.
const DISK_PAUSE_FACTOR: u32 = 10;

/// The longest such pause: a piece that a stalled disk held for a second must not hold the
/// spare back for ten more.
const DISK_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// Paces the background threads' disk work (zeros for a spare, freeing a removed segment)
/// after a piece of it that took `took`: sleeping ten times as long keeps each such thread
/// on the disk at most 1/11 of the time, whatever the disk's speed. Per thread, not per
/// process: when several shards prepare spares at once, each takes its share (a process-wide
/// turn would make spares late when many are needed at once, and would let removed files,
/// whose space the logs already count as free, queue up). On this VM's disk a 64 MiB spare
/// is zeroed in about 2.4 s on an idle server, and a segment fills in about 5 s at the
/// fastest permanent-store SET rate measured (100-byte values). A segment that fills before
/// its spare is zeroed is still correct: `finish` stops the zeros, and the rest of the file
/// stays allocated but unwritten (its syncs then also write the extent changes, as a log
/// without spares would).
fn leave_the_disk_to_the_logs(took: std::time::Duration) {
    std::thread::sleep((took * DISK_PAUSE_FACTOR).min(DISK_PAUSE_MAX));
}

/// How much one zero-writing `write` covers (see `Preparing`). An executor in `finish` waits
/// for at most the piece in progress; but the writer runs at nice 19, and if it was preempted
/// mid-piece on a busy core, that can mean waiting for its next turn (scheduler ticks of
/// 4 ms here). Only when a segment fills before its spare is ready.
const PRE_WRITE_PIECE_BYTES: usize = 64 << 10;

impl Preparing {
    fn new(allocation: Allocation) -> Self {
        Self {
            stop: std::sync::atomic::AtomicBool::new(false),
            hurry: std::sync::atomic::AtomicBool::new(false),
            done: std::sync::atomic::AtomicBool::new(false),
            writing: std::sync::Mutex::new(allocation),
        }
    }

    /// The allocation's state, under the lock. A poisoned lock only means another holder
    /// panicked; the state it guards is still meaningful.
    fn lock(&self) -> std::sync::MutexGuard<'_, Allocation> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `file` unless that was done (or failed) already. Returns the outcome.
    fn allocate(&self, file: &std::fs::File, size_bytes: usize) -> io::Result<()> {
        let mut state = self.lock();
        if let Allocation::Pending = *state {
            *state = match allocate(file, size_bytes) {
                Ok(()) => Allocation::Done,
                Err(e) => Allocation::Failed(e.kind(), e.to_string()),
            };
        }
        match &*state {
            Allocation::Done => Ok(()),
            Allocation::Failed(kind, message) => Err(io::Error::new(*kind, message.clone())),
            Allocation::Pending => unreachable!("allocation decided just above"),
        }
    }

    /// Writes zeros over bytes `[from, to)`, a piece at a time, each under the lock. Returns
    /// whether it got to the end (false: stopped by `finish`).
    fn write_zeros(
        &self,
        file: &std::fs::File,
        from: usize,
        to: usize,
        writes: ZeroWrites,
    ) -> io::Result<bool> {
        use std::os::unix::fs::FileExt as _;
        let zeros = vec![0u8; PRE_WRITE_PIECE_BYTES];
        let write_bytes = match writes {
            ZeroWrites::WholePieces => PRE_WRITE_PIECE_BYTES,
            ZeroWrites::OnePageEach => ONE_PAGE_BYTES,
        };
        let mut at = from;
        while at < to {
            let piece = self.lock();
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(false);
            }
            let piece_end = (at + PRE_WRITE_PIECE_BYTES).min(to);
            while at < piece_end {
                let len = write_bytes.min(piece_end - at);
                file.write_all_at(&zeros[..len], at as u64)?;
                at += len;
            }
            drop(piece);
            give_way();
        }
        Ok(true)
    }

    /// For a log that syncs: writes zeros over bytes `[from, to)` of the segment at `path` one
    /// page per `write` (so that the page cache holds them in one-page folios, see
    /// `FsSegment::small_folios_from`), then, unless stopped, makes them durable. Then the
    /// file's blocks are written ones: an fdatasync after an append into them writes the
    /// appended pages and flushes, where into fallocated (unwritten) blocks it must also
    /// write the extent change that marks them written (here 58 against 100 us at p50 for a
    /// small append + fdatasync). And the pages are clean: the log's first sync does not
    /// write the zeros.
    ///
    /// Through a file description of its own: a failed writeback is then reported to the
    /// log's description as well (Linux reports it once per description), where one shared
    /// description would let this thread's fdatasync consume the error and the log's next
    /// one succeed.
    ///
    /// Synced a `ZERO_SYNC_BYTES` piece at a time, paced (see `leave_the_disk_to_the_logs`):
    /// every log's fdatasync flushes the disk's write cache, so a flush that follows 64 MiB
    /// of zeros makes the appends synced with it wait for all of them. One fdatasync after
    /// the whole segment took 36 ms here, and permanent-store SETs took 48-69 ms at p99.99,
    /// once per segment. 256 KiB and its fdatasync take about 0.35 ms.
    fn write_zeros_durably(&self, path: &Path, from: usize, to: usize) -> io::Result<()> {
        let own = OpenOptions::new().write(true).open(path)?;
        let mut at = from;
        while at < to {
            let piece_end = (at + ZERO_SYNC_BYTES).min(to);
            let started = std::time::Instant::now();
            if !self.write_zeros(&own, at, piece_end, ZeroWrites::OnePageEach)? {
                return Ok(());
            }
            own.sync_data()?;
            at = piece_end;
            if !self.hurry.load(std::sync::atomic::Ordering::SeqCst) {
                leave_the_disk_to_the_logs(started.elapsed());
            }
        }
        Ok(())
    }

    /// Stops the writing and returns once no piece is being written, and none will be, with
    /// the file allocated (here, if the preparation thread had not got to it).
    fn finish(&self, file: &std::fs::File, size_bytes: usize) -> io::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.allocate(file, size_bytes)
    }
}

/// Name of the threads that allocate and zero-fill segments ahead of need (tools that wait
/// for the log's background work to end look for it).
pub const PREPARE_THREAD_NAME: &str = "terrace-prepare";

/// Name of the threads that unmap and close dropped segments.
pub const UNMAP_THREAD_NAME: &str = "terrace-unmap";

// Linux keeps 15 bytes of a thread's name: longer ones would not match in /proc.
const _: () = assert!(PREPARE_THREAD_NAME.len() <= 15 && UNMAP_THREAD_NAME.len() <= 15);

/// How much of a segment one `madvise` call prepares (see `FsStorage::prepare`) or releases
/// (see `release_pages`).
const PREPARE_PIECE_BYTES: usize = 1 << 20;

/// Lets the executor have the CPU back, if it is waiting for it, between two pieces of
/// background work. The scheduler lets a background thread it picks run until the next tick
/// (4 ms here), nice 19 or not, while the executor, preempted, waits; `perf sched` under a
/// SET load showed the executor's core given to these threads in turns of 2-4 ms, which is
/// what its slowest requests waited. After each piece (tens to hundreds of microseconds of
/// work) the thread yields instead: a no-op when nothing else waits for the CPU.
fn give_way() {
    std::thread::yield_now();
}

/// Drops a retired segment's page table entries a piece at a time, yielding between pieces,
/// so that the `munmap` that follows has nothing left to walk: unmapping 64 MiB at once ran
/// for ~2 ms at a time on the executor's core. `MADV_DONTNEED` on a shared file mapping
/// only unmaps pages (their dirty bits go to the page cache, as `munmap`'s do): it loses
/// nothing, and takes the process's mmap lock for reading only.
fn release_pages(map: &MmapRaw) {
    let mut at = 0;
    while at < map.len() {
        let len = PREPARE_PIECE_BYTES.min(map.len() - at);
        // SAFETY: no reference into the mapping exists any more (this is its owner's last
        // use before unmapping it), and a shared file mapping's contents survive the advice.
        if unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at, len) }
            .is_err()
        {
            return;
        }
        at += len;
        give_way();
    }
}

/// How much of a removed segment's file one hole punch frees (see `free_blocks`).
const FREE_PIECE_BYTES: usize = 1 << 20;

/// Frees the blocks of a removed segment's file a piece at a time, before its last
/// descriptor closes. Why: freeing blocks on a filesystem mounted with `discard` sends the
/// disk a discard of the whole range, and the disk serves nothing else meanwhile: closing a
/// removed 64 MiB segment sent one discard that took 13-15 ms here, and every log's write
/// and flush behind it waited as long (the slowest permanent-store SETs). Punching the holes
/// 1 MiB at a time cuts it into discards the logs' requests can pass.
///
/// Only for a file the log said was removed for good (`SegmentFile::removed`: for a synced
/// log, after the directory sync that made the removal durable; on a filesystem that orders
/// nothing, such as ext4 without a journal, holes made durable before the removal could
/// leave, after a crash, the old name on a file of zeros, which recovery would rightly call
/// damage), that has no name left (its link count is 0: not even a hard link someone made),
/// and that this process no longer maps. Its contents are garbage by then (its records were
/// compacted out, or evicted), as the close would make them. Errors (a filesystem that
/// cannot punch holes) stop it here: the close frees the rest.
fn free_blocks(file: &std::fs::File) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = file.metadata() else { return };
    if meta.nlink() != 0 {
        return;
    }
    let len = meta.len();
    let mut at = 0u64;
    while at < len {
        // Whole pieces, past the end too (the size stays): a hole that ends mid-block
        // zeroes that block instead of freeing it.
        let piece = FREE_PIECE_BYTES as u64;
        let started = std::time::Instant::now();
        let punched = rustix::fs::fallocate(
            file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            at,
            piece,
        );
        if punched.is_err() {
            return;
        }
        at += piece;
        leave_the_disk_to_the_logs(started.elapsed());
    }
}

/// One mapped segment file.
#[derive(Debug)]
pub struct FsSegment {
    /// Shared with a background preparation, which must not outlive the mapping. Dropped off
    /// the executor's thread (see `Drop`).
    map: ManuallyDrop<Arc<MmapRaw>>,
    /// The same file, for io_uring fdatasync; owns a duplicate of `keep`'s descriptor.
    file: BufferedFile,
    /// The file's own descriptor, closed off the executor's thread (see `Drop`).
    keep: ManuallyDrop<std::fs::File>,
    /// The background preparation of a spare (see `Preparing`).
    preparing: Arc<Preparing>,
    /// Which segment this is, for logs.
    id: SegmentId,
    /// The log removed the file for good (see `SegmentFile::removed`, `free_blocks`).
    removed: std::cell::Cell<bool>,
}

impl FsSegment {
    fn map(
        file: std::fs::File,
        len: usize,
        id: SegmentId,
        allocation: Allocation,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "segment file is empty",
            ));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        let dup = file.try_clone()?;
        // SAFETY: `into_raw_fd` hands over a valid, owned descriptor; BufferedFile closes it.
        let synced = unsafe { BufferedFile::from_raw_fd(dup.into_raw_fd()) };
        Ok(Self {
            map: ManuallyDrop::new(Arc::new(map)),
            file: synced,
            keep: ManuallyDrop::new(file),
            preparing: Arc::new(Preparing::new(allocation)),
            id,
            removed: std::cell::Cell::new(false),
        })
    }
}

impl FsSegment {
    /// Makes the page cache of bytes `[from, len)` hold only small (one-page) folios, so that
    /// each fdatasync writes back only the pages that appends dirtied. Returns where the
    /// eviction started (at or before `from`). Every byte before `from` must be clean (synced,
    /// or never written); its contents are not changed.
    ///
    /// Why: the kernel's readahead fills the page cache with large folios (up to 2 MiB here,
    /// with `read_ahead_kb` = 8192), and dirtiness is tracked per folio. An append that
    /// dirties a few bytes of a 2 MiB folio makes the next fdatasync write all 2 MiB:
    /// measured here, mmap appends + fdatasync went from 160 us to 1.2 ms per sync as
    /// readahead ramped up (see NOTES.md). With `MADV_RANDOM` a fault maps one page and
    /// reads nothing ahead; folios that readahead already made (recovery scans the tail
    /// segment) are dropped, to come back one page at a time.
    fn small_folios_from(&self, from: usize) -> io::Result<usize> {
        // Large folios are naturally aligned, so evicting from a multiple of the largest one
        // drops the folio that holds `from` as well. 8 MiB covers every architecture's PMD.
        const LARGEST_FOLIO_BYTES: usize = 8 << 20;
        self.map.advise(memmap2::Advice::Random)?;
        let start = from.min(self.map.len()) / LARGEST_FOLIO_BYTES * LARGEST_FOLIO_BYTES;
        let len = self.map.len() - start;
        if len == 0 {
            return Ok(start);
        }
        // SAFETY: on a shared file mapping MADV_DONTNEED only unmaps the pages; the next
        // access maps the same page-cache pages (or reads them back from the file), so the
        // contents seen through the mapping do not change. Dirty pages stay dirty in the cache.
        unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)?;
        }
        // Now unmapped, clean folios of the range can be dropped; dirty ones are left alone.
        // SAFETY: `self.file` owns this descriptor and outlives the borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.file.as_raw_fd()) };
        rustix::fs::fadvise(
            fd,
            start as u64,
            std::num::NonZeroU64::new(len as u64),
            rustix::fs::Advice::DontNeed,
        )?;
        Ok(start)
    }
}

/// How long a dropped segment's descriptor outlives the executor's duplicate (see `Drop`).
const CLOSE_LAST_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for FsSegment {
    /// Unmaps and closes on a thread of its own. Unmapping a 64 MiB shared mapping walks every
    /// page (moving dirty bits to the page cache): 115 ms on the executor's thread under a SET
    /// load here. And when the file was unlinked (a compacted or evicted segment), whoever
    /// drops the last reference to it frees its page cache and its blocks, which with the
    /// `discard` mount option waits for the disk: 155 ms, every client of the executor
    /// waiting. So the thread holds the file's own descriptor until well after the
    /// executor's duplicate (`file`, closed asynchronously by glommio) is gone, and drops the
    /// last reference itself. Durability does not depend on any of it: unmapping and closing
    /// make nothing durable (fdatasync does), and the bytes stay in the page cache either way.
    /// The thread keeps normal priority: unmapping holds the process's mmap lock, and a
    /// low-priority thread preempted holding it stalls the executor (see `spawn_preparation`).
    fn drop(&mut self) {
        // A spare dropped unused: no need to go on writing it.
        self.preparing
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: `map` and `keep` are never used again: this is the value's last use of them.
        let (map, keep) = unsafe {
            (
                ManuallyDrop::take(&mut self.map),
                ManuallyDrop::take(&mut self.keep),
            )
        };
        let removed = self.removed.get();
        // If no thread can be started, the closure (and the mapping) is dropped right here.
        let _ = std::thread::Builder::new()
            .name(UNMAP_THREAD_NAME.into())
            .spawn(move || {
                run_in_background(0);
                // Otherwise a preparation still runs with the mapping, and unmaps it when done.
                let unmapped = Arc::into_inner(map)
                    .map(|map| release_pages(&map))
                    .is_some();
                // glommio closes `file` at the executor's next I/O poll, well within this.
                std::thread::sleep(CLOSE_LAST_AFTER);
                if removed && unmapped {
                    free_blocks(&keep);
                }
                drop(keep);
            });
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

    fn finish_preparation(&self) -> io::Result<()> {
        self.preparing.finish(&self.keep, self.map.len())
    }

    fn removed(&self) {
        self.removed.set(true);
    }

    fn hurry_preparation(&self) {
        self.preparing
            .hurry
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn preparation_ended(&self) -> bool {
        self.preparing
            .done
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "tests stop at the first unexpected result"
    )]

    use super::free_blocks;
    use std::os::unix::fs::{FileExt as _, MetadataExt as _};

    #[test]
    fn only_a_file_with_no_name_left_has_its_blocks_freed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        // Several pieces and a partial one.
        let data: Vec<u8> = (0..(3 << 20) + 12_345).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).expect("write");
        file.sync_data().expect("sync");

        // Still named: nothing changes.
        free_blocks(&file);
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, 0).expect("read");
        assert!(
            back == data,
            "a segment file that still has a name was changed"
        );
        let blocks = file.metadata().expect("stat").blocks();
        assert!(blocks > 0);

        // Removed: its blocks go, its size stays.
        std::fs::remove_file(&path).expect("remove");
        free_blocks(&file);
        let meta = file.metadata().expect("stat");
        if meta.blocks() == blocks {
            eprintln!(
                "skipped: the filesystem of {} cannot punch holes",
                dir.path().display()
            );
            return;
        }
        assert_eq!(meta.blocks(), 0, "blocks left after freeing a removed file");
        assert_eq!(meta.len(), data.len() as u64);
    }
}
