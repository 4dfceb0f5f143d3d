//! Damage to stored segments: bit flips in sealed segments, segment headers and padding,
//! zeroed records, bad file names, and what `RecoveryPolicy::Strict` refuses.
//!
//! A sealed segment (any but the newest) was completely synced before the segment after it got
//! its header, so anything invalid in it is damage: opening must fail with `WalError::Corrupt`
//! naming the file and the exact byte offset, and must change nothing. In the newest segment
//! the same damage cannot be told apart from a torn write, so it is cut as a torn tail.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{
    Image, RecordCopy, append_random, build_sim_log, last_nonzero, log_config, open_image,
    open_log_collect,
};
use common::run;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::path::{Path, PathBuf};
use terrace_wal::constants::{
    RECORD_CRC_OFFSET, RECORD_HEADER_LEN_BYTES, RECORD_RESERVED_OFFSET, RECORD_TERM_OFFSET,
    SEGMENT_HEADER_LEN_BYTES,
};
use terrace_wal::error::WalError;
use terrace_wal::log::RecoveryPolicy;
use terrace_wal::storage::{FsStorage, SimDisk, SimStorage, Storage as _, segment_file_name};

const SEGMENT_BYTES: usize = 16 << 10;

fn sim_path(id: u64) -> PathBuf {
    SimStorage::new(SimDisk::new()).segment_path(id)
}

/// A synced log of at least four segments; the newest holds at least eight records.
async fn build(seed: u64) -> (Image, Vec<RecordCopy>) {
    build_sim_log(seed, SEGMENT_BYTES, 4, 8).await
}

fn ids(image: &Image) -> Vec<u64> {
    image.keys().copied().collect()
}

fn records_of(records: &[RecordCopy], segment: u64) -> Vec<RecordCopy> {
    records
        .iter()
        .filter(|r| r.segment == segment)
        .cloned()
        .collect()
}

fn flipped(image: &Image, id: u64, byte: usize, bit: usize) -> Image {
    let mut damaged = image.clone();
    damaged.get_mut(&id).expect("segment")[byte] ^= 1 << bit;
    damaged
}

/// Opens `damaged` under both policies; both must fail with `Corrupt` at segment `id`,
/// `offset`, and leave the disk as it was. Returns the reason.
async fn expect_corrupt(damaged: &Image, id: u64, offset: usize, what: &str) -> String {
    let mut reasons = Vec::new();
    for policy in [RecoveryPolicy::TruncateTornTail, RecoveryPolicy::Strict] {
        let (disk, result) = open_image(damaged, SEGMENT_BYTES, policy).await;
        let error = match result {
            Err(error) => error,
            Ok((_, report, _)) => panic!("{what} ({policy:?}): opened, report {report:?}"),
        };
        let message = error.to_string();
        let WalError::Corrupt {
            path,
            offset: found,
            reason,
        } = error
        else {
            panic!("{what} ({policy:?}): expected Corrupt, got {message}");
        };
        assert_eq!(path, sim_path(id), "{what} ({policy:?}): {message}");
        assert_eq!(found, offset as u64, "{what} ({policy:?}): {message}");
        assert!(
            message.contains(&format!("{} at byte offset {offset}:", path.display())),
            "{what}: message does not name file and offset: {message}"
        );
        assert_eq!(
            &disk.durable_image(),
            damaged,
            "{what} ({policy:?}): failed open changed the disk"
        );
        assert_eq!(
            &disk.visible_image(),
            damaged,
            "{what} ({policy:?}): failed open changed the mapping"
        );
        reasons.push(reason);
    }
    assert_eq!(reasons[0], reasons[1], "{what}");
    reasons.swap_remove(0)
}

#[test]
fn every_bit_of_a_sealed_record_is_checked() {
    run(|| async {
        let seed = 0xC0_0001;
        let (image, records) = build(seed).await;
        let ids = ids(&image);
        // A segment with segments before and after it, and the first one.
        for &id in &[ids[1], ids[0]] {
            let sealed = records_of(&records, id);
            assert!(
                sealed.len() >= 3,
                "seed {seed:#x}: segment {id} has {} records",
                sealed.len()
            );
            // Every bit of the smallest record in the middle, of the first and of the last.
            let middle = sealed[1..sealed.len() - 1]
                .iter()
                .min_by_key(|r| r.total_len)
                .expect("middle records");
            for record in [middle, &sealed[0], &sealed[sealed.len() - 1]] {
                for byte in record.offset..record.covered_end() {
                    for bit in 0..8 {
                        let damaged = flipped(&image, id, byte, bit);
                        let what = format!(
                            "seed {seed:#x}: segment {id}, record LSN {} at {}, bit {bit} of byte {byte}",
                            record.lsn, record.offset
                        );
                        let reason = expect_corrupt(&damaged, id, record.offset, &what).await;
                        let field = byte - record.offset;
                        if (RECORD_CRC_OFFSET..RECORD_CRC_OFFSET + 4).contains(&field) {
                            assert!(reason.contains("checksum mismatch"), "{what}: {reason}");
                        }
                        if (RECORD_RESERVED_OFFSET..RECORD_TERM_OFFSET).contains(&field) {
                            assert!(reason.contains("reserved"), "{what}: {reason}");
                        }
                        // The term is inside the CRC.
                        if (RECORD_TERM_OFFSET..RECORD_HEADER_LEN_BYTES).contains(&field) {
                            assert!(reason.contains("checksum mismatch"), "{what}: {reason}");
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn random_bits_of_every_sealed_record_are_checked() {
    run(|| async {
        let seed = 0xC0_0002;
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build(seed).await;
        let newest = *ids(&image).last().expect("segments");
        for record in records.iter().filter(|r| r.segment != newest) {
            // One bit in the header, one in the payload.
            let header_byte = record.offset + rng.random_range(0..RECORD_HEADER_LEN_BYTES);
            let payload_byte =
                rng.random_range(record.offset + RECORD_HEADER_LEN_BYTES..record.covered_end());
            for byte in [header_byte, payload_byte] {
                let bit = rng.random_range(0..8);
                let damaged = flipped(&image, record.segment, byte, bit);
                let what = format!(
                    "seed {seed:#x}: segment {}, record LSN {} at {}, bit {bit} of byte {byte}",
                    record.segment, record.lsn, record.offset
                );
                expect_corrupt(&damaged, record.segment, record.offset, &what).await;
            }
        }
    });
}

#[test]
fn of_several_damaged_segments_the_first_in_log_order_is_named() {
    // Segments are checked by two threads, each taking the next unchecked one, so a later
    // segment's damage can be found first; the error must still name the earliest, as a
    // single pass would. Every pair of damaged segments among the sealed ones.
    run(|| async {
        let seed = 0xC0_0003;
        let (image, records) = build_sim_log(seed, SEGMENT_BYTES, 8, 8).await;
        let ids = ids(&image);
        let sealed = &ids[..ids.len() - 1];
        assert!(sealed.len() >= 7, "seed {seed:#x}: {} segments", ids.len());
        for (i, &first) in sealed.iter().enumerate() {
            for &later in &sealed[i + 1..] {
                let mut damaged = image.clone();
                for id in [first, later] {
                    let last = records_of(&records, id).pop().expect("records");
                    damaged.get_mut(&id).expect("segment")[last.offset + RECORD_CRC_OFFSET] ^= 1;
                }
                let last_of_first = records_of(&records, first).pop().expect("records");
                let what = format!("seed {seed:#x}: segments {first} and {later} damaged");
                expect_corrupt(&damaged, first, last_of_first.offset, &what).await;
            }
        }
    });
}

#[test]
fn non_zero_byte_after_the_last_record_of_a_sealed_segment_is_corruption() {
    run(|| async {
        let seed = 0xC0_0003;
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build(seed).await;
        let ids = ids(&image);
        for &id in &ids[..ids.len() - 1] {
            let end = records_of(&records, id).last().expect("records").end();
            assert!(
                end < SEGMENT_BYTES,
                "seed {seed:#x}: segment {id} is full to the byte"
            );
            let mut bytes = vec![end, SEGMENT_BYTES - 1, rng.random_range(end..SEGMENT_BYTES)];
            if end + RECORD_HEADER_LEN_BYTES < SEGMENT_BYTES {
                // Past a zero record header: not a record, but still not allowed.
                bytes.push(end + RECORD_HEADER_LEN_BYTES);
            }
            for byte in bytes {
                let bit = rng.random_range(0..8);
                let damaged = flipped(&image, id, byte, bit);
                let what = format!(
                    "seed {seed:#x}: segment {id}, bit {bit} of byte {byte} after its records"
                );
                expect_corrupt(
                    &damaged,
                    id,
                    if byte < end + RECORD_HEADER_LEN_BYTES {
                        end
                    } else {
                        byte
                    },
                    &what,
                )
                .await;
            }
        }
    });
}

#[test]
fn every_bit_of_a_segment_header_is_checked() {
    run(|| async {
        let seed = 0xC0_0004;
        let (image, _) = build(seed).await;
        let ids = ids(&image);
        // A sealed segment and the newest: a header is never a torn write (it is written once,
        // in one sector, after every earlier segment was synced).
        for &id in &[ids[1], ids[ids.len() - 1]] {
            for byte in 0..SEGMENT_HEADER_LEN_BYTES {
                for bit in 0..8 {
                    let damaged = flipped(&image, id, byte, bit);
                    let what =
                        format!("seed {seed:#x}: segment {id} header, bit {bit} of byte {byte}");
                    let reason = expect_corrupt(&damaged, id, 0, &what).await;
                    assert!(reason.starts_with("segment header"), "{what}: {reason}");
                }
            }
        }
    });
}

#[test]
fn zero_header_before_a_segment_in_use_is_corruption() {
    run(|| async {
        let seed = 0xC0_0005;
        let (image, _) = build(seed).await;
        let ids = ids(&image);
        let mut damaged = image.clone();
        damaged.get_mut(&ids[1]).expect("segment")[..SEGMENT_HEADER_LEN_BYTES].fill(0);
        let what = format!("seed {seed:#x}: segment {} header zeroed", ids[1]);
        let reason = expect_corrupt(&damaged, ids[1], 0, &what).await;
        assert!(
            reason.contains(&format!("segment {} after it is in use", ids[2])),
            "{reason}"
        );
    });
}

#[test]
fn header_that_does_not_match_its_file_is_corruption() {
    run(|| async {
        let seed = 0xC0_0006;
        let (image, _) = build(seed).await;
        let newest = *ids(&image).last().expect("segments");

        // The newest segment's file renamed: its header names another segment.
        let mut renamed = image.clone();
        let bytes = renamed.remove(&newest).expect("newest");
        renamed.insert(newest + 1, bytes);
        let reason = expect_corrupt(&renamed, newest + 1, 0, "newest segment renamed").await;
        assert!(
            reason.contains(&format!("header says segment {newest}")),
            "{reason}"
        );

        // A file cut short (a whole number of pages, as a filesystem might leave it).
        let mut short = image.clone();
        short
            .get_mut(&newest)
            .expect("newest")
            .truncate(SEGMENT_BYTES - 4096);
        let reason = expect_corrupt(&short, newest, 0, "newest segment truncated").await;
        assert!(reason.contains("truncated or extended"), "{reason}");
    });
}

/// The padding after a payload (up to the next multiple of 16) is written as zeros but is
/// outside the CRC, and recovery does not look at it (FORMAT.md: "a record is valid when ...";
/// padding is not in the list, and "everything after the last record must be zero" starts after
/// the padding). A flipped padding bit in a sealed segment therefore goes unnoticed. It damages
/// nothing a reader sees, and this test holds recovery to that: the open succeeds, and every
/// record, LSN and payload is exactly as written. (Whether recovery should instead report such
/// damage is an open question in the final report of this test's author.)
#[test]
fn flipped_padding_bit_in_a_sealed_segment_loses_nothing() {
    run(|| async {
        let seed = 0xC0_0007;
        let (image, records) = build(seed).await;
        let newest = *ids(&image).last().expect("segments");
        let padded: Vec<&RecordCopy> = records
            .iter()
            .filter(|r| r.segment != newest && r.end() > r.covered_end())
            .take(4)
            .collect();
        assert!(
            !padded.is_empty(),
            "seed {seed:#x}: no sealed record has padding"
        );
        for record in padded {
            for byte in record.covered_end()..record.end() {
                for bit in 0..8 {
                    let damaged = flipped(&image, record.segment, byte, bit);
                    let what = format!(
                        "seed {seed:#x}: segment {}, padding of LSN {}, bit {bit} of byte {byte}",
                        record.segment, record.lsn
                    );
                    let (_, result) =
                        open_image(&damaged, SEGMENT_BYTES, RecoveryPolicy::Strict).await;
                    let (_, report, seen) =
                        result.unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
                    assert!(report.torn_tail.is_none(), "{what}");
                    assert_eq!(seen, records, "{what}");
                }
            }
        }
    });
}

/// In the newest segment, damage to the last record looks exactly like a torn write: the
/// record is cut, the ones before it are kept, and appends continue after them.
#[test]
fn flipped_bit_in_the_newest_segments_last_record_is_cut_as_a_torn_tail() {
    run(|| async {
        let seed = 0xC0_0008;
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build(seed).await;
        let newest = *ids(&image).last().expect("segments");
        let last = records.last().expect("records").clone();
        assert_eq!(last.segment, newest);
        let mut bits: Vec<(usize, usize)> = (last.offset..last.offset + RECORD_HEADER_LEN_BYTES)
            .flat_map(|byte| (0..8).map(move |bit| (byte, bit)))
            .collect();
        for _ in 0..64 {
            bits.push((
                rng.random_range(last.offset..last.covered_end()),
                rng.random_range(0..8),
            ));
        }
        for (byte, bit) in bits {
            let damaged = flipped(&image, newest, byte, bit);
            let what = format!(
                "seed {seed:#x}: newest segment {newest}, last record, bit {bit} of byte {byte}"
            );
            let (disk, result) =
                open_image(&damaged, SEGMENT_BYTES, RecoveryPolicy::TruncateTornTail).await;
            let (mut log, report, seen) = result.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(seen[..], records[..records.len() - 1], "{what}");
            let torn = report
                .torn_tail
                .unwrap_or_else(|| panic!("{what}: no torn tail reported"));
            assert_eq!(torn.segment, newest, "{what}");
            assert_eq!(torn.offset, last.offset as u64, "{what}");
            let garbage = last_nonzero(&damaged[&newest][last.offset..]).expect("non-zero") + 1;
            assert_eq!(torn.garbage_bytes, garbage as u64, "{what}");
            assert!(torn.reason.is_some(), "{what}");
            assert_eq!(report.last_lsn, last.lsn - 1, "{what}");
            let durable = disk.durable_image();
            assert!(
                last_nonzero(&durable[&newest][last.offset..]).is_none(),
                "{what}: not zeroed"
            );
            // The next record gets the lost record's LSN (it was never acknowledged).
            assert_eq!(append_random(&mut log, &mut rng, 200), last.lsn, "{what}");
        }
    });
}

#[test]
fn strict_refuses_a_torn_tail_and_changes_nothing() {
    run(|| async {
        let seed = 0xC0_0009;
        let (image, records) = build(seed).await;
        let newest = *ids(&image).last().expect("segments");
        let last = records.last().expect("records").clone();
        let mut torn = image.clone();
        let cut = last.offset + RECORD_HEADER_LEN_BYTES + 1;
        torn.get_mut(&newest).expect("newest")[cut..].fill(0);
        let garbage = last_nonzero(&torn[&newest][last.offset..]).expect("non-zero") + 1;

        let (disk, result) = open_image(&torn, SEGMENT_BYTES, RecoveryPolicy::Strict).await;
        let Err(error) = result else {
            panic!("strict open of a torn tail must fail");
        };
        let message = error.to_string();
        assert!(
            matches!(
                &error,
                WalError::TornTail { path, offset, garbage_bytes }
                    if *path == sim_path(newest)
                        && *offset == last.offset as u64
                        && *garbage_bytes == garbage as u64
            ),
            "{error:?}"
        );
        assert!(
            message.contains("TruncateTornTail"),
            "the message says how to open it: {message}"
        );
        assert_eq!(disk.durable_image(), torn, "strict open changed the disk");
        assert_eq!(
            disk.visible_image(),
            torn,
            "strict open changed the mapping"
        );
        assert_eq!(disk.syncs(), 0);
        assert_eq!(disk.dir_syncs(), 0);

        // An all-zero, never activated segment after the newest is the spare the log prepares
        // ahead of need: strict accepts it and leaves it; with any non-zero byte it is refused.
        let mut spare = image.clone();
        spare.insert(newest + 1, vec![0u8; SEGMENT_BYTES]);
        let (disk, result) = open_image(&spare, SEGMENT_BYTES, RecoveryPolicy::Strict).await;
        let (_, _, seen) = result.expect("strict open with a spare");
        assert_eq!(seen, records);
        assert_eq!(disk.durable_image(), spare);
        let mut unactivated = spare.clone();
        unactivated.get_mut(&(newest + 1)).expect("spare")[1000] = 7;
        let (disk, result) = open_image(&unactivated, SEGMENT_BYTES, RecoveryPolicy::Strict).await;
        assert!(
            matches!(
                &result,
                Err(WalError::TornTail { path, offset: 0, garbage_bytes: 1001 }) if *path == sim_path(newest + 1)
            ),
            "{:?}",
            result.as_ref().err()
        );
        drop(result);
        assert_eq!(disk.durable_image(), unactivated);
        // The repairing open removes it (and prepares a fresh spare, not yet durable).
        let (disk, result) = open_image(
            &unactivated,
            SEGMENT_BYTES,
            RecoveryPolicy::TruncateTornTail,
        )
        .await;
        let (_, report, seen) = result.expect("repairing open");
        assert_eq!(report.removed_segments, vec![newest + 1]);
        assert_eq!(seen, records);
        assert_eq!(disk.durable_image(), image);
        assert!(disk.visible_image()[&(newest + 1)].iter().all(|&b| b == 0));
    });
}

/// Regression test for a detection gap: a sealed segment whose last records read back as zeros
/// (a lost write, or a disk that returns zeros for a bad range) opens without error and the
/// records are silently gone, because a zero record header is taken as the clean end of the
/// segment and recovery only requires LSNs to *increase* from one segment to the next.
///
/// But segment `n + 1` is created only when a record no longer fits in segment `n`, with
/// `first_lsn` = the next LSN, and gets its header only after segment `n` was synced: when two
/// adjacent ids are both present, the later one's `first_lsn` must be exactly one more than the
/// earlier one's last LSN. A shortfall means records of a sealed segment were lost, which is
/// corruption ("the shard refuses to start rather than lose or invent records").
#[test]
fn zeroed_last_record_of_a_sealed_segment_is_corruption() {
    run(|| async {
        let seed = 0xC0_000A;
        let (image, records) = build(seed).await;
        let ids = ids(&image);
        let sealed = records_of(&records, ids[1]);
        let lost = sealed.last().expect("records").clone();
        let mut damaged = image.clone();
        damaged.get_mut(&ids[1]).expect("segment")[lost.offset..lost.end()].fill(0);
        let what = format!(
            "seed {seed:#x}: last record (LSN {}, offset {}) of sealed segment {} zeroed",
            lost.lsn, lost.offset, ids[1]
        );
        expect_corrupt(&damaged, ids[1], lost.offset, &what).await;
    });
}

// ---- real files ----

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().expect("type").is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Writes a synced log of a few segments into `dir` with real files.
async fn build_fs(dir: &Path, seed: u64) -> Vec<RecordCopy> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let storage = FsStorage::open(dir).await.expect("open dir");
    let (mut log, _, _) = open_log_collect(
        storage,
        log_config(SEGMENT_BYTES),
        RecoveryPolicy::TruncateTornTail,
    )
    .await
    .expect("open");
    while log.segment_count() < 3 {
        append_random(&mut log, &mut rng, 900);
    }
    log.commit()
        .wait_durable(log.next_lsn() - 1)
        .await
        .expect("sync");
    common::recovery::log_records(&log)
}

#[test]
fn stray_file_in_the_shard_directory_is_refused_before_anything_changes() {
    run(|| async {
        let temp = tempfile::TempDir::new().expect("temp dir");
        let dir = temp.path().join("shard");
        let records = build_fs(&dir, 0xC0_000B).await;
        // Give the newest segment a torn tail: an open that went ahead would cut it.
        let newest = records.last().expect("records");
        let newest_path = dir.join(segment_file_name(newest.segment));
        let mut bytes = std::fs::read(&newest_path).expect("read");
        bytes[newest.end() + 100] = 0x5a;
        std::fs::write(&newest_path, &bytes).expect("write");
        let before = read_dir_files(&dir);

        let strays: [(&str, bool); 5] = [
            ("notes.txt", false),
            ("1.seg", false),
            ("00000000000000000000.seg", false),
            ("00000000000000000001.seg.tmp", false),
            // A directory with a segment's name.
            ("00000000000000000099.seg", true),
        ];
        for (name, is_dir) in strays {
            let stray = dir.join(name);
            if is_dir {
                std::fs::create_dir(&stray).expect("mkdir");
            } else {
                std::fs::write(&stray, b"x").expect("write stray");
            }
            for policy in [RecoveryPolicy::TruncateTornTail, RecoveryPolicy::Strict] {
                let storage = FsStorage::open(&dir).await.expect("open dir");
                let result = open_log_collect(storage, log_config(SEGMENT_BYTES), policy).await;
                let error = result
                    .err()
                    .unwrap_or_else(|| panic!("{name} ({policy:?}): opened"));
                let message = error.to_string();
                assert!(
                    matches!(&error, WalError::UnexpectedFile { path, dir: d } if *path == stray && *d == dir),
                    "{name} ({policy:?}): {error:?}"
                );
                assert!(message.contains(&stray.display().to_string()), "{message}");
            }
            if is_dir {
                std::fs::remove_dir(&stray).expect("rmdir");
            } else {
                std::fs::remove_file(&stray).expect("rm");
            }
            assert_eq!(
                read_dir_files(&dir),
                before,
                "{name}: a refused open changed the segments"
            );
        }

        // Without the stray file the open goes ahead, keeps every record and cuts the tail.
        let storage = FsStorage::open(&dir).await.expect("open dir");
        let (_, report, seen) = open_log_collect(
            storage,
            log_config(SEGMENT_BYTES),
            RecoveryPolicy::TruncateTornTail,
        )
        .await
        .expect("open");
        assert_eq!(seen, records);
        let torn = report.torn_tail.expect("torn tail");
        assert_eq!(torn.offset, newest.end() as u64);
        assert_eq!(torn.garbage_bytes, 101);
    });
}

#[test]
fn bit_flip_in_a_sealed_segment_file_names_the_file_and_offset() {
    run(|| async {
        let temp = tempfile::TempDir::new().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let records = build_fs(&dir, 0xC0_000C).await;
        let victim = records
            .iter()
            .find(|r| r.segment == 1 && r.lsn == 3)
            .expect("record 3")
            .clone();
        let path = dir.join(segment_file_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[victim.offset + RECORD_HEADER_LEN_BYTES + 2] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let before = read_dir_files(&dir);
        let storage = FsStorage::open(&dir).await.expect("open dir");
        let result = open_log_collect(
            storage,
            log_config(SEGMENT_BYTES),
            RecoveryPolicy::TruncateTornTail,
        )
        .await;
        let Err(error) = result else {
            panic!("corrupt segment opened");
        };
        assert!(
            matches!(&error, WalError::Corrupt { path: p, offset, .. } if *p == path && *offset == victim.offset as u64),
            "{error:?}"
        );
        assert!(error.to_string().contains(&format!(
            "{} at byte offset {}",
            path.display(),
            victim.offset
        )));
        assert_eq!(read_dir_files(&dir), before);
    });
}

#[test]
fn empty_segment_file_is_a_cut_short_spare_after_the_newest_and_corruption_before() {
    run(|| async {
        let temp = tempfile::TempDir::new().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let records = build_fs(&dir, 0xC0_000D).await;
        let newest = records.last().expect("records").segment;
        // The spare the log prepared (if its file is there yet) becomes an empty file: a
        // spare whose allocation never happened because the process stopped first.
        let spare = dir.join(segment_file_name(newest + 1));
        std::fs::write(&spare, b"").expect("empty spare");

        for policy in [RecoveryPolicy::Strict, RecoveryPolicy::TruncateTornTail] {
            let storage = FsStorage::open(&dir).await.expect("open dir");
            let (_, report, seen) = open_log_collect(storage, log_config(SEGMENT_BYTES), policy)
                .await
                .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
            assert_eq!(seen, records, "{policy:?}");
            match policy {
                // Strict changes nothing.
                RecoveryPolicy::Strict => assert!(spare.exists()),
                // Removed (the log then prepares a new spare with that id).
                _ => assert!(report.removed_segments.contains(&(newest + 1))),
            }
        }

        // An empty file before a segment in use is damage, named.
        let first = dir.join(segment_file_name(1));
        std::fs::write(&first, b"").expect("truncate");
        let storage = FsStorage::open(&dir).await.expect("open dir");
        let error = open_log_collect(
            storage,
            log_config(SEGMENT_BYTES),
            RecoveryPolicy::TruncateTornTail,
        )
        .await
        .expect_err("opened over an empty segment");
        assert!(
            matches!(&error, WalError::Corrupt { path, .. } if *path == first),
            "{error:?}"
        );
        assert!(error.to_string().contains("empty"), "{error}");
    });
}
