#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests stop at the first unexpected result"
)]

mod common;

use common::{open_sim, run, small_config, sync_all};
use terrace_wal::log::Durability;
use terrace_wal::storage::{SimCrashOptions, SimDisk};
use terrace_wal::store::{ManualClock, SetMode, StoreOutcome};

#[test]
fn set_get_reopen() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = ManualClock::new(1_000_000);
        let config = small_config(64 << 10, Durability::Fsync);
        let (mut store, _) = open_sim(&disk, config.clone(), &clock).await;
        for i in 0..2000u32 {
            let key = format!("key-{}", i % 300);
            let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            let out = store
                .set(SetMode::Set, key.as_bytes(), value.as_bytes(), i, 0)
                .unwrap();
            assert!(matches!(out, StoreOutcome::Stored(_)));
        }
        sync_all(&store).await;
        let segments = store.log().segment_count();
        assert!(segments > 3, "{segments}");
        drop(store);
        let disk2 = disk.crash(SimCrashOptions::with_seed(1));
        let (mut store, report) = open_sim(&disk2, config, &clock).await;
        assert_eq!(report.records, 2000);
        for i in 1700..2000u32 {
            let key = format!("key-{}", i % 300);
            let value = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            let item = store.get(key.as_bytes()).unwrap().expect("present");
            assert_eq!(item.value(), value.as_bytes());
            assert_eq!(item.flags(), i);
        }
        store.check_invariants();
    });
}
