//! Torn tails: the newest segment cut, garbled or half-written at every byte offset.
//!
//! A power cut during a sync can leave the newest segment with any prefix of its unsynced
//! bytes, or with sectors persisted out of order. Recovery must keep exactly the records that
//! are whole, cut (zero and sync) everything after them, report what it cut, and let appends
//! continue with the next LSN; `RecoveryPolicy::Strict` must refuse the same image without
//! touching it.
//!
//! The expectation for a damaged image is computed from bytes alone: a record of the newest
//! segment survives when every byte its CRC covers (header and exact payload) is unchanged and
//! every record before it survived. The torn region starts at the end of the last survivor and
//! runs through the last non-zero byte of the segment. (Padding after a payload is outside the
//! CRC and not checked by recovery, see tests/corruption.rs; a garbled padding byte of the last
//! survivor therefore does not make it a torn record.)
//!
//! Stress: `TERRACE_TORN_TAIL_SAMPLES` (default 48) sets how many random offsets further back
//! in the segment, and how many random middle slices of the last record, are tried.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::recovery::{
    Image, RecordCopy, append_random, build_sim_log, env_count, last_nonzero, log_records,
    open_image,
};
use common::run;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use terrace_wal::constants::SEGMENT_HEADER_LEN_BYTES;
use terrace_wal::error::WalError;
use terrace_wal::log::RecoveryPolicy;
use terrace_wal::storage::{SimDisk, SimStorage, Storage as _};

/// Small segments, so that the log crosses several of them and the newest holds a handful of
/// records of varied sizes.
const SEGMENT_BYTES: usize = 16 << 10;
/// The newest segment holds at least this many records.
const TAIL_RECORDS_MIN: u64 = 8;
/// Every byte offset of the last this-many records of the newest segment is tried.
const EXHAUSTIVE_RECORDS: usize = 3;
/// Records appended after each recovery, to check that the log continues cleanly.
const APPENDS_AFTER_RECOVERY: u64 = 3;

/// What recovery must make of a damaged image of the newest segment.
#[derive(Debug)]
struct Expected {
    /// Records that survive, in every segment.
    records: Vec<RecordCopy>,
    /// End of the records of the newest segment: where a torn region starts.
    end: usize,
    /// `(garbage_bytes, zero_header)` of the torn tail, if any: bytes from `end` through the
    /// last non-zero byte, and whether the 32 bytes at `end` are zero.
    torn: Option<(u64, bool)>,
}

fn expect(original: &[u8], damaged: &[u8], newest: u64, records: &[RecordCopy]) -> Expected {
    let mut survivors = Vec::new();
    let mut end = SEGMENT_HEADER_LEN_BYTES;
    for record in records {
        if record.segment != newest {
            survivors.push(record.clone());
            continue;
        }
        let range = record.offset..record.covered_end();
        if damaged[range.clone()] != original[range] {
            break;
        }
        end = record.end();
        survivors.push(record.clone());
    }
    let torn = last_nonzero(&damaged[end..]).map(|last| {
        let header_end = (end + 32).min(damaged.len());
        (
            (last + 1) as u64,
            damaged[end..header_end].iter().all(|&b| b == 0),
        )
    });
    Expected {
        records: survivors,
        end,
        torn,
    }
}

/// Opens `damaged` strictly (must refuse a torn tail and change nothing), then with
/// `TruncateTornTail` (must keep exactly the survivors and cut the rest durably), then appends
/// and reopens (the new records follow with the next LSNs, nothing torn is left).
async fn check_case(
    what: &str,
    image: &Image,
    damaged: &Image,
    records: &[RecordCopy],
    rng: &mut SmallRng,
) {
    let newest = *image.keys().next_back().expect("segments");
    let expected = expect(&image[&newest], &damaged[&newest], newest, records);
    let newest_path = SimStorage::new(SimDisk::new()).segment_path(newest);

    // Strict: refuses, names the place, modifies nothing.
    let (disk, strict) = open_image(damaged, SEGMENT_BYTES, RecoveryPolicy::Strict).await;
    match (&expected.torn, strict) {
        (
            Some((garbage, _)),
            Err(WalError::TornTail {
                path,
                offset,
                garbage_bytes,
            }),
        ) => {
            assert_eq!(path, newest_path, "{what}");
            assert_eq!(offset, expected.end as u64, "{what}");
            assert_eq!(garbage_bytes, *garbage, "{what}");
        }
        (None, Ok((_, report, seen))) => {
            assert!(report.torn_tail.is_none(), "{what}");
            assert_eq!(seen, expected.records, "{what}: strict open of a clean cut");
        }
        (torn, other) => panic!("{what}: strict open gave {other:?}, expected torn tail {torn:?}"),
    }
    assert_eq!(
        &disk.durable_image(),
        damaged,
        "{what}: strict open changed the disk"
    );
    assert_eq!(
        &disk.visible_image(),
        damaged,
        "{what}: strict open changed the mapping"
    );

    // TruncateTornTail: exactly the survivors, the rest zeroed and synced.
    let (disk, opened) = open_image(damaged, SEGMENT_BYTES, RecoveryPolicy::TruncateTornTail).await;
    let (mut log, report, seen) = opened.unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert_eq!(seen, expected.records, "{what}: recovered records");
    let last_lsn = expected.records.last().map_or(0, |r| r.lsn);
    assert_eq!(report.last_lsn, last_lsn, "{what}");
    assert_eq!(report.records, expected.records.len() as u64, "{what}");
    assert_eq!(report.segments, image.len(), "{what}");
    assert!(report.removed_segments.is_empty(), "{what}");
    match (&expected.torn, &report.torn_tail) {
        (None, None) => assert_eq!(report.truncated_bytes(), 0, "{what}"),
        (Some((garbage, zero_header)), Some(torn)) => {
            assert_eq!(torn.segment, newest, "{what}");
            assert_eq!(torn.offset, expected.end as u64, "{what}");
            assert_eq!(torn.garbage_bytes, *garbage, "{what}");
            assert_eq!(report.truncated_bytes(), *garbage, "{what}");
            assert_eq!(
                torn.reason.is_none(),
                *zero_header,
                "{what}: reason {:?}",
                torn.reason
            );
        }
        (expected_torn, found) => {
            panic!("{what}: torn tail {found:?}, expected {expected_torn:?}")
        }
    }
    assert_eq!(log.next_lsn(), last_lsn + 1, "{what}");
    let durable = disk.durable_image();
    for (id, bytes) in damaged {
        if *id != newest {
            assert_eq!(&durable[id], bytes, "{what}: segment {id} changed");
            continue;
        }
        let cut = &durable[id];
        assert_eq!(
            cut[..expected.end],
            bytes[..expected.end],
            "{what}: records changed"
        );
        assert!(
            last_nonzero(&cut[expected.end..]).is_none(),
            "{what}: non-zero byte left durable after the cut at {}",
            expected.end + last_nonzero(&cut[expected.end..]).unwrap_or(0)
        );
    }

    // Appends continue at the cut with the next LSNs; a reopen finds nothing torn.
    let mut lsns = Vec::new();
    for _ in 0..APPENDS_AFTER_RECOVERY {
        // Sometimes large enough to need a new segment.
        lsns.push(append_random(&mut log, rng, 3000));
    }
    let wanted: Vec<u64> = (last_lsn + 1..=last_lsn + APPENDS_AFTER_RECOVERY).collect();
    assert_eq!(lsns, wanted, "{what}: LSNs after recovery");
    log.commit()
        .wait_durable(last_lsn + APPENDS_AFTER_RECOVERY)
        .await
        .expect("sync");
    let in_memory = log_records(&log);
    assert_eq!(
        in_memory[..expected.records.len()],
        expected.records[..],
        "{what}"
    );
    drop(log);
    let (_, reopened) =
        open_image(&disk.durable_image(), SEGMENT_BYTES, RecoveryPolicy::Strict).await;
    let (log, report, seen) =
        reopened.unwrap_or_else(|e| panic!("{what}: strict reopen after appends failed: {e}"));
    assert!(report.torn_tail.is_none(), "{what}");
    assert_eq!(seen, in_memory, "{what}: records after appends and reopen");
    assert_eq!(
        log.next_lsn(),
        last_lsn + APPENDS_AFTER_RECOVERY + 1,
        "{what}"
    );
}

/// The image with the newest segment's bytes from `cut` on replaced by `fill(rest)`.
fn with_tail(image: &Image, cut: usize, fill: impl FnOnce(&mut [u8])) -> Image {
    let mut damaged = image.clone();
    let newest = damaged.values_mut().next_back().expect("segments");
    fill(&mut newest[cut..]);
    damaged
}

/// The offsets tried: every byte of the last records of the newest segment (and a little
/// after), and a random sample further back.
fn cut_offsets(
    records: &[RecordCopy],
    newest: u64,
    samples: u64,
    rng: &mut SmallRng,
) -> Vec<usize> {
    let tail: Vec<&RecordCopy> = records.iter().filter(|r| r.segment == newest).collect();
    assert!(tail.len() as u64 >= TAIL_RECORDS_MIN);
    let first_exhaustive = tail[tail.len() - EXHAUSTIVE_RECORDS].offset;
    let end = tail[tail.len() - 1].end();
    let mut offsets: Vec<usize> = (first_exhaustive..=end + 40).collect();
    for _ in 0..samples {
        offsets.push(rng.random_range(64..first_exhaustive));
    }
    offsets
}

#[test]
fn cut_to_zero_at_every_offset() {
    run(|| async {
        let seed = 0x7041_0001;
        let samples = env_count("TERRACE_TORN_TAIL_SAMPLES", 48);
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build_sim_log(seed, SEGMENT_BYTES, 3, TAIL_RECORDS_MIN).await;
        let newest = *image.keys().next_back().expect("segments");
        let (mut torn_cases, mut clean_cases) = (0, 0);
        let offsets = cut_offsets(&records, newest, samples, &mut rng);
        for &cut in &offsets {
            let damaged = with_tail(&image, cut, |rest| rest.fill(0));
            let what = format!("seed {seed:#x}: newest segment {newest} zeroed from byte {cut}");
            let expected = expect(&image[&newest], &damaged[&newest], newest, &records);
            torn_cases += usize::from(expected.torn.is_some());
            clean_cases += usize::from(expected.torn.is_none());
            check_case(&what, &image, &damaged, &records, &mut rng).await;
        }
        // The sweep covers cuts inside records (torn) and at record boundaries (clean).
        assert!(
            torn_cases * 2 > offsets.len(),
            "{torn_cases} torn of {}",
            offsets.len()
        );
        assert!(clean_cases > EXHAUSTIVE_RECORDS, "{clean_cases} clean cuts");
    });
}

#[test]
fn garbage_after_the_cut_at_every_offset() {
    run(|| async {
        let seed = 0x7041_0002;
        let samples = env_count("TERRACE_TORN_TAIL_SAMPLES", 48);
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build_sim_log(seed, SEGMENT_BYTES, 3, TAIL_RECORDS_MIN).await;
        let newest = *image.keys().next_back().expect("segments");
        let data_end = records.last().expect("records").end();
        for (i, cut) in cut_offsets(&records, newest, samples, &mut rng)
            .into_iter()
            .enumerate()
        {
            // Alternately: garbage through the end of the old records and a little beyond, or
            // a short run of garbage with the old bytes (later records) left after it.
            let run_len = if i % 2 == 0 {
                (data_end + 512).saturating_sub(cut).max(1)
            } else {
                rng.random_range(1..=64)
            };
            let run_len = run_len.min(SEGMENT_BYTES - cut);
            let mut garbage = vec![0u8; run_len];
            rng.fill(&mut garbage[..]);
            let damaged = with_tail(&image, cut, |rest| {
                if i % 2 == 0 {
                    rest.fill(0);
                }
                rest[..run_len].copy_from_slice(&garbage);
            });
            let what = format!(
                "seed {seed:#x}: newest segment {newest}, {run_len} bytes of garbage from byte {cut}"
            );
            check_case(&what, &image, &damaged, &records, &mut rng).await;
        }
    });
}

#[test]
fn garbled_middle_of_the_last_record() {
    run(|| async {
        let seed = 0x7041_0003;
        let samples = env_count("TERRACE_TORN_TAIL_SAMPLES", 48);
        let mut rng = SmallRng::seed_from_u64(seed);
        let (image, records) = build_sim_log(seed, SEGMENT_BYTES, 3, TAIL_RECORDS_MIN).await;
        let newest = *image.keys().next_back().expect("segments");
        let last = records.last().expect("records").clone();
        assert_eq!(last.segment, newest);
        for _ in 0..samples.max(8) {
            // A slice strictly inside the bytes the CRC covers: the record is neither cut at
            // its start nor only missing its end.
            let start = rng.random_range(last.offset + 1..last.covered_end() - 1);
            let end = rng.random_range(start + 1..last.covered_end());
            let mut damaged = image.clone();
            let bytes = damaged.get_mut(&newest).expect("newest");
            rng.fill(&mut bytes[start..end]);
            if bytes[start..end] == image[&newest][start..end] {
                bytes[start] ^= 0x40;
            }
            let what = format!(
                "seed {seed:#x}: last record (LSN {}, offset {}) garbled in [{start}, {end})",
                last.lsn, last.offset
            );
            let expected = expect(&image[&newest], &damaged[&newest], newest, &records);
            assert_eq!(expected.records.len(), records.len() - 1, "{what}");
            assert!(matches!(expected.torn, Some((_, false))), "{what}");
            check_case(&what, &image, &damaged, &records, &mut rng).await;
        }
    });
}
