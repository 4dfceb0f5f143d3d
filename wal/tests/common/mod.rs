//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::rc::Rc;
use terrace_wal::log::{Durability, LogConfig, RecoveryPolicy, RecoveryReport};
use terrace_wal::storage::{SimDisk, SimStorage, Storage};
use terrace_wal::store::{Clock, CompactionConfig, ManualClock, Store, StoreConfig, WhenFull};

/// Runs `make()` to completion on a fresh glommio executor thread.
pub fn run<G, F>(make: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .ring_depth(64)
        .spawn(make)
        .expect("start executor")
        .join()
        .expect("test executor panicked");
}

/// A small-segment store configuration, so tests cross many segments quickly.
pub fn small_config(segment_size_bytes: usize, durability: Durability) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_size_bytes,
            durability,
            capacity_bytes: u64::MAX,
        },
        when_full: WhenFull::Refuse,
        item_size_max_bytes: segment_size_bytes / 4,
        compaction: CompactionConfig::default(),
    }
}

/// Opens a store on a simulated disk.
pub async fn open_sim(
    disk: &SimDisk,
    config: StoreConfig,
    clock: &ManualClock,
) -> (Store<SimStorage>, RecoveryReport) {
    Store::open(
        SimStorage::new(disk.clone()),
        config,
        Rc::new(clock.clone()) as Rc<dyn Clock>,
        RecoveryPolicy::TruncateTornTail,
    )
    .await
    .expect("open store")
}

/// Waits until everything the store appended is durable.
pub async fn sync_all<S: Storage>(store: &Store<S>) {
    let lsn = store.log().next_lsn() - 1;
    store.commit().wait_durable(lsn).await.expect("sync");
}
