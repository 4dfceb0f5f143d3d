//! Shards are independent, so the long passes (create, verify, restore) work on several at
//! once: one thread per core, each with its own read buffer. Results come back in shard
//! order, and a failure is reported for the lowest shard that failed, as a sequential pass
//! would report it.

use super::error::BackupError;
use super::files::AlignedBuffer;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most threads a pass uses.
const THREADS_MAX: usize = 8;

/// Threads for a pass over `count` shards: the cores this process may use, at most one per
/// shard and at most [`THREADS_MAX`].
fn threads_for(count: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(THREADS_MAX)
        .min(count)
        .max(1)
}

/// Runs `work(shard, buffer)` for every shard in `0..count` and returns the results in shard
/// order, or the error of the lowest shard that failed. After a failure no new shard starts.
pub fn per_shard<T: Send>(
    count: usize,
    work: impl Fn(usize, &mut AlignedBuffer) -> Result<T, BackupError> + Sync,
) -> Result<Vec<T>, BackupError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T, BackupError>>>> =
        Mutex::new((0..count).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads_for(count) {
            scope.spawn(|| {
                let mut buffer = AlignedBuffer::default();
                // Checked before taking a shard: every shard taken is run, so every shard below
                // a failed one has a result.
                while !failed.load(Ordering::Relaxed) {
                    let shard = next.fetch_add(1, Ordering::Relaxed);
                    if shard >= count {
                        break;
                    }
                    let result = work(shard, &mut buffer);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut results) = results.lock() {
                        results[shard] = Some(result);
                    }
                }
            });
        }
    });
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::with_capacity(count);
    for (shard, result) in results.into_iter().enumerate() {
        match result {
            Some(Ok(value)) => out.push(value),
            Some(Err(e)) => return Err(e),
            // Not started because an earlier shard failed; that failure was returned above.
            None => {
                return Err(BackupError::Refused {
                    path: std::path::PathBuf::new(),
                    problem: format!("shard {shard} was not processed"),
                    fix: "see the error reported for another shard".into(),
                });
            }
        }
    }
    Ok(out)
}
