//! Spare segments are prepared ahead of need on a background thread, which, for a log that
//! never syncs, writes zeros over the whole spare. An append must never be overwritten by
//! it: a log on real files that fills segment after segment as fast as it can (so that most
//! spares become the tail while their zeros are still being written) keeps every record, in
//! memory and after a reopen.
//!
//! `TERRACE_SPARE_ROUNDS` sets the number of seeded rounds (default 3).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{append_random, env_count, log_records, open_log_collect};
use common::run;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy};
use terrace_wal::storage::FsStorage;

/// Several pieces of the zero-writing each (64 KiB), small enough to fill in microseconds.
const SEGMENT: usize = 256 << 10;
const SEGMENTS: usize = 48;

#[test]
fn appends_into_spares_still_being_prepared_are_never_overwritten() {
    for seed in 0..env_count("TERRACE_SPARE_ROUNDS", 3) {
        run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = LogConfig {
                segment_size_bytes: SEGMENT,
                durability: Durability::None,
                capacity_bytes: u64::MAX,
            };
            let open = || async {
                open_log_collect(
                    FsStorage::open(dir.path()).await.expect("open dir"),
                    config,
                    RecoveryPolicy::TruncateTornTail,
                )
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: open: {e}"))
            };
            let (mut log, report, _) = open().await;
            assert_eq!(report.records, 0);
            let mut rng = SmallRng::seed_from_u64(seed);
            while log.segment_count() < SEGMENTS {
                append_random(&mut log, &mut rng, 3000);
            }
            let appended = log_records(&log);
            assert_eq!(appended.len() as u64, log.next_lsn() - 1);
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
