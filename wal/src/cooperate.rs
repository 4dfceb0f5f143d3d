//! Long-running tasks on an executor (compaction, a replication stream) giving way to the rest.

use std::time::Duration;

/// Lets the executor run every other ready task *and poll for I/O* before the caller goes
/// on, sleeping at least `at_least`.
///
/// Neither `yield_if_needed` nor `yield_now` / `yield_task_queue_now` do that: the first
/// yields only once glommio's 100 ms preemption timer fired, and a task that yields but stays
/// runnable keeps the executor from polling for I/O until that timer fires. Every client of
/// the executor then waited ~100 ms for its next read (seen with a compaction running under
/// a SET load). A sleeping task is not runnable: the executor runs what is ready, polls I/O,
/// and the timer brings the task back. A zero-length timer would be ready at once, hence the
/// floor of one microsecond.
pub async fn pause(at_least: Duration) {
    glommio::timer::sleep(at_least.max(Duration::from_micros(1))).await;
}
