//! Spare segments are prepared ahead of need on a background thread, which writes zeros over
//! the whole spare (for a log that syncs, one page per write, then made durable). An append
//! must never be overwritten by it: a log on real files that fills segment after segment as
//! fast as it can (so that most spares become the tail while their zeros are still being
//! written) keeps every record, in memory and after a reopen.
//!
//! For a log that syncs, the point of the zeros is that its segments' blocks are written
//! ones (not fallocated, "unwritten" extents): then syncing an append needs no metadata
//! change. Checked with FIEMAP where the filesystem has it.
//!
//! `TERRACE_SPARE_ROUNDS` sets the number of seeded rounds (default 3).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{RecordCopy, append_random, env_count, log_records, open_log_collect};
use common::run;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::path::Path;
use terrace_wal::log::{Durability, Log, LogConfig, RecoveryPolicy, RecoveryReport};
use terrace_wal::storage::{FsStorage, Storage as _};

/// Several pieces of the zero-writing each (64 KiB), small enough to fill in microseconds.
const SEGMENT: usize = 256 << 10;
const SEGMENTS: usize = 48;

#[test]
fn appends_into_spares_still_being_prepared_are_never_overwritten() {
    appends_into_spares(Durability::None);
}

#[test]
fn synced_appends_into_spares_still_being_prepared_are_never_overwritten() {
    appends_into_spares(Durability::Fsync);
}

/// Opens (creates or recovers) the log in `dir` with this file's small segments, collecting
/// what recovery saw; `what` names the case in a failure.
async fn open_fs_log(
    dir: &Path,
    durability: Durability,
    what: String,
) -> (Log<FsStorage>, RecoveryReport, Vec<RecordCopy>) {
    let config = LogConfig {
        segment_size_bytes: SEGMENT,
        durability,
        capacity_bytes: u64::MAX,
    };
    open_log_collect(
        FsStorage::open(dir).await.expect("open dir"),
        config,
        RecoveryPolicy::TruncateTornTail,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: open: {e}"))
}

fn appends_into_spares(durability: Durability) {
    for seed in 0..env_count("TERRACE_SPARE_ROUNDS", 3) {
        run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let open = || open_fs_log(dir.path(), durability, format!("seed {seed}"));
            let (mut log, report, _) = open().await;
            assert_eq!(report.records, 0);
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut appends = 0u64;
            while log.segment_count() < SEGMENTS {
                let lsn = append_random(&mut log, &mut rng, 3000);
                appends += 1;
                if durability == Durability::Fsync && appends.is_multiple_of(64) {
                    // Syncs too, while spares are being written and synced.
                    let commit = std::rc::Rc::clone(log.commit());
                    commit
                        .wait_durable(lsn)
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: sync: {e}"));
                }
            }
            let appended = log_records(&log);
            assert_eq!(appended.len() as u64, log.next_lsn() - 1);
            if durability == Durability::Fsync {
                // A synced log writes a new segment's header only in its first sync round:
                // what follows the last round is not promised.
                let commit = std::rc::Rc::clone(log.commit());
                commit
                    .wait_durable(log.next_lsn() - 1)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: sync: {e}"));
            }
            drop(log);

            // Recovery checks every record's CRC: zeros written over a record of a sealed
            // segment would fail it, naming the file; over the tail's, cut records short.
            let (_log, report, recovered) = open().await;
            assert_eq!(report.truncated_bytes(), 0, "seed {seed}");
            assert_eq!(recovered.len(), appended.len(), "seed {seed}");
            assert!(
                recovered == appended,
                "seed {seed}: records differ after reopen"
            );
        });
    }
}

/// A log moved forward over a gap (a passive installing its active's snapshot) makes its new
/// tail itself, and prepares it while appends go on: nothing appended before or after the
/// skip is lost, in memory or after a reopen.
#[test]
fn records_around_a_skip_forward_survive_the_new_tail_preparation() {
    for durability in [Durability::Fsync, Durability::None] {
        run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let open = || open_fs_log(dir.path(), durability, format!("{durability:?}"));
            let (mut log, _, _) = open().await;
            let mut rng = SmallRng::seed_from_u64(7);
            for _ in 0..100 {
                append_random(&mut log, &mut rng, 3000);
            }
            let gap_from = log.next_lsn();
            log.skip_to(gap_from + 1000).expect("skip forward");
            // Past the new tail into the segments after it.
            while log.segment_count() < 8 {
                append_random(&mut log, &mut rng, 3000);
            }
            let commit = std::rc::Rc::clone(log.commit());
            commit
                .wait_durable(log.next_lsn() - 1)
                .await
                .unwrap_or_else(|e| panic!("{durability:?}: sync: {e}"));
            let appended = log_records(&log);
            assert_eq!(
                appended.len() as u64,
                log.next_lsn() - 1 - 1000,
                "{durability:?}: every LSN but the skipped ones"
            );
            drop(log);
            let (log, report, recovered) = open().await;
            assert_eq!(report.truncated_bytes(), 0, "{durability:?}");
            assert!(
                recovered == appended,
                "{durability:?}: records differ after reopen"
            );
            let after_skip = appended.len() as u64 - 100;
            assert_eq!(
                log.next_lsn(),
                gap_from + 1000 + after_skip,
                "{durability:?}: the reopened log goes on after its last record"
            );
        });
    }
}

#[test]
fn a_synced_log_appends_into_written_blocks() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_size_bytes: SEGMENT,
            durability: Durability::Fsync,
            capacity_bytes: u64::MAX,
        };
        let storage = FsStorage::open(dir.path()).await.expect("open dir");
        let first = storage.segment_path(1);
        let spare = storage.segment_path(2);
        let (log, _, _) = open_log_collect(storage, config, RecoveryPolicy::TruncateTornTail)
            .await
            .expect("open");
        let Some(extents) = fiemap::extents(&first) else {
            eprintln!(
                "skipped: the filesystem of {} has no FIEMAP",
                first.display()
            );
            return;
        };
        // The first segment is prepared before the log opens.
        fiemap::assert_all_written(&first, &extents, SEGMENT);
        // The spare, in the background: wait for it (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let extents = fiemap::extents(&spare).expect("FIEMAP worked on the first segment");
            if fiemap::unwritten_bytes(&extents) == 0 && fiemap::mapped_bytes(&extents) == SEGMENT {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the spare {} still has unwritten blocks after 30 s: {extents:?}",
                spare.display()
            );
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(log);
    });
}

/// The extents of a file as FIEMAP reports them (without syncing it first: dirty pages over
/// unwritten blocks show as unwritten).
mod fiemap {
    use std::os::fd::AsRawFd as _;
    use std::path::Path;

    /// `_IOWR('f', 11, struct fiemap)`.
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_LAST: u32 = 0x1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS_PER_CALL: usize = 32;

    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Extent {
        pub logical: u64,
        pub physical: u64,
        pub length: u64,
        reserved64: [u64; 2],
        pub flags: u32,
        reserved: [u32; 3],
    }

    #[repr(C)]
    #[derive(Debug, Default)]
    struct Request {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS_PER_CALL],
    }

    /// Every extent of `path`; `None` if the filesystem does not support FIEMAP.
    pub fn extents(path: &Path) -> Option<Vec<Extent>> {
        let file = std::fs::File::open(path).expect("open segment");
        let mut all = Vec::new();
        let mut start = 0u64;
        loop {
            let mut request = Request {
                start,
                length: u64::MAX - start,
                extent_count: EXTENTS_PER_CALL as u32,
                ..Request::default()
            };
            // SAFETY: FS_IOC_FIEMAP reads and writes one `struct fiemap` followed by
            // `extent_count` extents, which is `Request`'s C layout.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut request) };
            if rc != 0 {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EOPNOTSUPP | libc::ENOTTY) => return None,
                    _ => panic!("FIEMAP on {}: {error}", path.display()),
                }
            }
            let got = &request.extents[..request.mapped_extents as usize];
            all.extend_from_slice(got);
            match got.last() {
                Some(last) if last.flags & FIEMAP_EXTENT_LAST == 0 => {
                    start = last.logical + last.length;
                }
                _ => return Some(all),
            }
        }
    }

    pub fn unwritten_bytes(extents: &[Extent]) -> usize {
        extents
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| e.length as usize)
            .sum()
    }

    pub fn mapped_bytes(extents: &[Extent]) -> usize {
        extents.iter().map(|e| e.length as usize).sum()
    }

    pub fn assert_all_written(path: &Path, extents: &[Extent], size: usize) {
        assert_eq!(
            mapped_bytes(extents),
            size,
            "{}: not every byte is allocated: {extents:?}",
            path.display()
        );
        assert_eq!(
            unwritten_bytes(extents),
            0,
            "{}: fallocated blocks never written: {extents:?}",
            path.display()
        );
    }
}
