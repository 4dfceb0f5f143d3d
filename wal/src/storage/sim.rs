//! A simulated disk for crash tests: it keeps what was written (the "page cache", which the
//! log maps) apart from what is durable, and can lose power at any moment.
//!
//! - Writes land in memory only. `sync` of a segment copies its memory to its durable image.
//! - Creating or removing a segment changes the directory the process sees; the change is
//!   durable only after `sync_dir`.
//! - [`SimDisk::crash`] returns the disk as it would be found after a power cut: every durable
//!   byte, plus a random subset of the unsynced sectors (so unsynced records may vanish, appear
//!   whole, or appear torn at sector granularity, in any order), a random subset of unsynced
//!   creations, and a random subset of unsynced removals undone.
//! - Syncs can be made to fail from the n-th on, to test fail-stop, or to take a given time
//!   (a disk that stalls its flushes).
//! - A removed segment the log calls `removed` on loses its contents, on the disk too, as a
//!   real file whose blocks are freed early does (see `FsSegment`): if its removal was not
//!   durable yet, a crash that undoes it finds a file of zeros.
//!
//! Everything is deterministic for a given seed.

use super::{SegmentFile, SegmentId, Storage, segment_file_name};
use crate::constants::{PAGE_SIZE_BYTES, SECTOR_SIZE_BYTES};
use crate::error::WalError;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::rc::Rc;

/// Segment file contents by id: what a disk holds.
pub type DiskImage = BTreeMap<SegmentId, Vec<u8>>;

/// How a power cut treats what was not yet durable.
#[derive(Debug, Clone, Copy)]
pub struct SimCrashOptions {
    /// Seed of the random choices.
    pub seed: u64,
    /// Chance (percent) that an unsynced sector reached the disk anyway.
    pub sector_persisted_percent: u8,
    /// Chance (percent) that an unsynced file creation survives.
    pub creation_survives_percent: u8,
    /// Chance (percent) that an unsynced removal is undone.
    pub removal_undone_percent: u8,
}

impl SimCrashOptions {
    /// Coin flips for everything, from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            sector_persisted_percent: 50,
            creation_survives_percent: 50,
            removal_undone_percent: 50,
        }
    }
}

/// A zeroed, page-aligned heap region standing in for a shared file mapping.
#[derive(Debug)]
struct SimMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl SimMem {
    fn zeroed(len: usize) -> Self {
        assert!(len > 0, "segments are never empty");
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let mem = Self::zeroed(bytes.len());
        // SAFETY: `mem` owns `len` writable bytes, disjoint from `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.ptr.as_ptr(), bytes.len()) };
        mem
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, PAGE_SIZE_BYTES) {
            Ok(layout) => layout,
            Err(_) => panic!("segment of {len} bytes cannot be allocated"),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // SAFETY: `ptr` is valid for `len` bytes while `self` lives. The log may hold slices
        // into this region; copying out of it only reads.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }.to_vec()
    }
}

impl Drop for SimMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

#[derive(Debug)]
struct SimFileState {
    mem: Rc<SimMem>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct DiskState {
    /// The directory as the running process sees it.
    files: BTreeMap<SegmentId, SimFileState>,
    /// The directory as the disk holds it (after the last `sync_dir`).
    durable_names: BTreeSet<SegmentId>,
    /// Removed files whose removal is not durable yet, with their durable contents.
    unlinked: BTreeMap<SegmentId, Vec<u8>>,
    /// Segment syncs completed or failed so far.
    syncs: u64,
    /// Directory syncs so far.
    dir_syncs: u64,
    /// Every segment sync numbered this or higher fails with EIO.
    fail_syncs_from: Option<u64>,
    /// Every directory sync fails with EIO (and leaves the directory as it was on disk).
    fail_dir_syncs: bool,
    /// How long each segment sync takes (a disk that stalls its flushes).
    sync_delay: Option<std::time::Duration>,
}

/// A handle to one simulated disk (one shard directory). Clones share the disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<DiskState>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A disk holding exactly `image`, all durable.
    pub fn from_image(image: &DiskImage) -> Self {
        let disk = Self::new();
        {
            let mut state = disk.state.borrow_mut();
            for (&id, bytes) in image {
                state.files.insert(
                    id,
                    SimFileState {
                        mem: Rc::new(SimMem::from_bytes(bytes)),
                        durable: bytes.clone(),
                    },
                );
                state.durable_names.insert(id);
            }
        }
        disk
    }

    /// What the disk durably holds now (what a clean power cut would leave, with nothing
    /// unsynced surviving).
    pub fn durable_image(&self) -> DiskImage {
        let state = self.state.borrow();
        state
            .durable_names
            .iter()
            .filter_map(|id| {
                let bytes = match state.files.get(id) {
                    Some(file) => file.durable.clone(),
                    None => state.unlinked.get(id)?.clone(),
                };
                Some((*id, bytes))
            })
            .collect()
    }

    /// What the running process sees now (memory, synced or not).
    pub fn visible_image(&self) -> DiskImage {
        let state = self.state.borrow();
        state
            .files
            .iter()
            .map(|(&id, file)| (id, file.mem.snapshot()))
            .collect()
    }

    /// The disk found after a power cut now, as a new, independent disk.
    pub fn crash(&self, options: SimCrashOptions) -> SimDisk {
        let mut rng = SmallRng::seed_from_u64(options.seed);
        let mut chance = |percent: u8| rng.random_range(0..100u8) < percent;
        let state = self.state.borrow();
        let mut image = DiskImage::new();
        for (&id, file) in &state.files {
            let name_durable = state.durable_names.contains(&id);
            if !name_durable && !chance(options.creation_survives_percent) {
                continue;
            }
            let memory = file.mem.snapshot();
            let mut bytes = file.durable.clone();
            for (sector, (disk, mem)) in bytes
                .chunks_mut(SECTOR_SIZE_BYTES)
                .zip(memory.chunks(SECTOR_SIZE_BYTES))
                .enumerate()
            {
                let _ = sector;
                if disk != mem && chance(options.sector_persisted_percent) {
                    disk.copy_from_slice(mem);
                }
            }
            image.insert(id, bytes);
        }
        for (&id, durable) in &state.unlinked {
            if state.durable_names.contains(&id) && chance(options.removal_undone_percent) {
                image.insert(id, durable.clone());
            }
        }
        drop(state);
        SimDisk::from_image(&image)
    }

    /// Makes every segment sync numbered `n` or later (counting from 0) fail with EIO.
    pub fn fail_syncs_from(&self, n: u64) {
        self.state.borrow_mut().fail_syncs_from = Some(n);
    }

    /// Makes every segment sync from now on take `delay` (a disk that stalls its flushes).
    pub fn delay_syncs(&self, delay: std::time::Duration) {
        self.state.borrow_mut().sync_delay = Some(delay);
    }

    /// Makes every directory sync from now on fail with EIO.
    pub fn fail_dir_syncs(&self) {
        self.state.borrow_mut().fail_dir_syncs = true;
    }

    /// Segment syncs issued so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Directory syncs issued so far.
    pub fn dir_syncs(&self) -> u64 {
        self.state.borrow().dir_syncs
    }

    /// Ids of the segment files the process sees.
    pub fn segment_ids(&self) -> Vec<SegmentId> {
        self.state.borrow().files.keys().copied().collect()
    }

    /// Total bytes of the segment files the process sees.
    pub fn used_bytes(&self) -> u64 {
        let state = self.state.borrow();
        state.files.values().map(|f| f.mem.len as u64).sum()
    }
}

/// A shard directory on a [`SimDisk`].
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: SimDisk,
}

impl SimStorage {
    /// Storage on `disk`.
    pub fn new(disk: SimDisk) -> Self {
        Self { disk }
    }

    /// The disk.
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }
}

fn not_found(id: SegmentId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no segment {id} on the simulated disk"),
    )
}

impl Storage for SimStorage {
    type File = SimSegment;

    fn segment_path(&self, id: SegmentId) -> PathBuf {
        PathBuf::from("sim").join(segment_file_name(id))
    }

    fn dir_path(&self) -> PathBuf {
        PathBuf::from("sim")
    }

    fn list(&self) -> Result<Vec<SegmentId>, WalError> {
        Ok(self.disk.segment_ids())
    }

    fn create(&self, id: SegmentId, size_bytes: usize) -> io::Result<SimSegment> {
        let mut state = self.disk.state.borrow_mut();
        if state.files.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {id} exists"),
            ));
        }
        let mem = Rc::new(SimMem::zeroed(size_bytes));
        let durable = vec![0u8; size_bytes];
        state.unlinked.remove(&id);
        state.files.insert(
            id,
            SimFileState {
                mem: Rc::clone(&mem),
                durable,
            },
        );
        Ok(SimSegment {
            id,
            mem,
            disk: self.disk.clone(),
        })
    }

    fn open(&self, id: SegmentId) -> io::Result<Option<SimSegment>> {
        let state = self.disk.state.borrow();
        let file = state.files.get(&id).ok_or_else(|| not_found(id))?;
        Ok(Some(SimSegment {
            id,
            mem: Rc::clone(&file.mem),
            disk: self.disk.clone(),
        }))
    }

    fn remove(&self, id: SegmentId) -> io::Result<()> {
        let mut state = self.disk.state.borrow_mut();
        let file = state.files.remove(&id).ok_or_else(|| not_found(id))?;
        state.unlinked.insert(id, file.durable);
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        yield_now().await;
        let mut state = self.disk.state.borrow_mut();
        state.dir_syncs += 1;
        if state.fail_dir_syncs {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            ));
        }
        state.durable_names = state.files.keys().copied().collect();
        state.unlinked.clear();
        Ok(())
    }
}

/// A segment on a [`SimDisk`].
#[derive(Debug)]
pub struct SimSegment {
    id: SegmentId,
    mem: Rc<SimMem>,
    disk: SimDisk,
}

// SAFETY: `mem` is a heap region of `len` bytes owned (shared) by this value; only the log
// writes to it, through this pointer.
unsafe impl SegmentFile for SimSegment {
    fn len(&self) -> usize {
        self.mem.len
    }

    fn as_mut_ptr(&self) -> *mut u8 {
        self.mem.ptr.as_ptr()
    }

    /// What freeing a removed file's blocks early does on a real disk (`FsSegment`): its
    /// contents become zeros, on the disk too. Harmless once the removal is durable (the
    /// name is gone for good); told too early, a crash that undoes the removal brings the
    /// name back on a file of zeros, which recovery calls damage.
    fn removed(&self) {
        let mut state = self.disk.state.borrow_mut();
        if let Some(durable) = state.unlinked.get_mut(&self.id) {
            durable.fill(0);
        }
    }

    async fn sync(&self) -> io::Result<()> {
        // A real fdatasync takes time: let other tasks append while it is "in flight". What
        // is durable is what was written when the sync started.
        let contents = self.mem.snapshot();
        yield_now().await;
        let delay = self.disk.state.borrow().sync_delay;
        if let Some(delay) = delay {
            glommio::timer::sleep(delay).await;
        }
        let mut state = self.disk.state.borrow_mut();
        let number = state.syncs;
        state.syncs += 1;
        if state.fail_syncs_from.is_some_and(|n| number >= n) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            ));
        }
        let id = self.id;
        if let Some(file) = state.files.get_mut(&id) {
            if Rc::ptr_eq(&file.mem, &self.mem) {
                file.durable = contents;
            }
        } else if let Some(durable) = state.unlinked.get_mut(&id) {
            *durable = contents;
        }
        Ok(())
    }
}

/// Yields once to the executor, so that other tasks run.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
