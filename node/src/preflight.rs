//! Checks before start-up, each failing with a message that says what to do: io_uring is
//! usable, the memlock limit is enough for glommio, the CPUs to pin executors to; and, for a
//! new permanent-store data dir, what a disk flush costs there.

use crate::constants::{
    EXECUTOR_IO_MEMORY_BYTES, FLUSH_PROBE_FILE, FLUSH_PROBE_ROUNDS, GLOMMIO_MEMLOCK_MIN_BYTES,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// A start-up check that failed.
#[derive(Debug, thiserror::Error)]
#[error("{problem}; {fix}")]
pub struct PreflightError {
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// glommio panics when io_uring is unavailable (old kernel, seccomp in a container,
/// `kernel.io_uring_disabled`): probe it ourselves first.
pub fn check_io_uring() -> Result<(), PreflightError> {
    let mut params = rustix::io_uring::io_uring_params::default();
    // SAFETY: `params` is a valid, zeroed io_uring_params; the ring is closed at once and
    // never mapped.
    match unsafe { rustix::io_uring::io_uring_setup(4, &mut params) } {
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(errno) => Err(PreflightError {
            problem: format!("io_uring is not available: io_uring_setup failed ({errno})"),
            fix: "terrace-server needs Linux 5.8 or newer with io_uring enabled: check \
                  `sysctl kernel.io_uring_disabled` (must be 0) and, in a container, a seccomp \
                  profile that allows io_uring_setup/io_uring_enter"
                .into(),
        }),
    }
}

/// Raises the soft memlock limit to the hard one, and checks it covers `executors`.
pub fn raise_memlock(executors: usize) -> Result<u64, PreflightError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Memlock);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        // Best effort: if raising fails we check what we have below.
        let _ = setrlimit(Resource::Memlock, limit);
    }
    let current = getrlimit(Resource::Memlock).current.unwrap_or(u64::MAX);
    let needed = GLOMMIO_MEMLOCK_MIN_BYTES + (executors * EXECUTOR_IO_MEMORY_BYTES) as u64;
    if current < needed {
        return Err(PreflightError {
            problem: format!(
                "the locked-memory limit is {current} bytes; {executors} executors need {needed}"
            ),
            fix: "raise it (`ulimit -l unlimited`, LimitMEMLOCK= in a systemd unit, or \
                  --ulimit memlock=-1 for docker), or run fewer cores (--cores)"
                .into(),
        });
    }
    Ok(current)
}

/// The CPUs this process may run on (its affinity mask, so `taskset` is honoured).
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// The CPUs to pin `cores` executors to (0: all allowed).
pub fn pick_cpus(cores: usize) -> Result<Vec<usize>, PreflightError> {
    let allowed = allowed_cpus();
    if allowed.is_empty() {
        return Err(PreflightError {
            problem: "this process may run on no CPU".into(),
            fix: "check the affinity it was started with (taskset, cgroups)".into(),
        });
    }
    if cores == 0 {
        return Ok(allowed);
    }
    if cores > allowed.len() {
        return Err(PreflightError {
            problem: format!(
                "--cores {cores}, but this process may run on {} CPUs ({allowed:?})",
                allowed.len()
            ),
            fix: "ask for at most that many, or 0 for all".into(),
        });
    }
    Ok(allowed[..cores].to_vec())
}

/// The median time of a 4 KiB write + fdatasync in `dir`, over `FLUSH_PROBE_ROUNDS` rounds
/// (a few ms on a slow disk). Each round appends, as a log does, so each fdatasync has data
/// to write. The probe file is removed afterwards (and first, if a crash left it).
pub fn measure_flush(dir: &Path) -> std::io::Result<Duration> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join(FLUSH_PROBE_FILE);
    let _ = std::fs::remove_file(&path);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        let page = [0x5au8; 4096];
        let mut rounds = Vec::with_capacity(FLUSH_PROBE_ROUNDS);
        for round in 0..FLUSH_PROBE_ROUNDS {
            let start = Instant::now();
            file.write_all_at(&page, (round * page.len()) as u64)?;
            file.sync_data()?;
            rounds.push(start.elapsed());
        }
        rounds.sort();
        Ok(rounds[rounds.len() / 2])
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// What to tell an operator about a new permanent-store data dir's shard count, given the
/// flush time measured there: a warning when the disk's flush is slow and there are more
/// than `SLOW_FLUSH_LOGS_PER_CORE` logs per core (each log flushes on its own, and the device
/// merges none of them), else `None`.
pub fn shards_advice(flush: Duration, shards: u32, executors: usize) -> Option<String> {
    use crate::constants::{SLOW_FLUSH_LOGS_PER_CORE, SLOW_FLUSH_MICROS};
    let slow = flush >= Duration::from_micros(SLOW_FLUSH_MICROS);
    let many = shards as usize > SLOW_FLUSH_LOGS_PER_CORE * executors.max(1);
    (slow && many).then(|| {
        format!(
            "a 4 KiB write + fdatasync on this disk takes {} us: with {shards} shards on {executors} \
             cores each core runs {:.0} logs that flush on their own, and permanent-store will \
             spend its cores on flushes; on such a disk one shard per core is faster \
             (storage.shards = {executors}, or \"auto\", which measures and chooses; the count is \
             fixed when a data dir is created, so start on a new one). README: \"Choosing \
             storage.shards\"",
            flush.as_micros(),
            f64::from(shards) / executors.max(1) as f64,
        )
    })
}

/// The shard count `storage.shards = "auto"` gives a new data dir on `executors` cores: one
/// log per core when each log's syncs are slow (`few_logs`: permanent-store on a disk whose
/// flush is slow, or could not be measured), else `AUTO_SHARDS_PER_CORE` per core, whose
/// syncs overlap in the disk; at most `AUTO_SHARDS_MAX` (one per core on more cores than
/// that), and at most `capacity_shards`, the count whose four segments each the capacity
/// holds. At least one.
pub fn auto_shards(few_logs: bool, executors: usize, capacity_shards: u64) -> u32 {
    use crate::constants::{AUTO_SHARDS_MAX, AUTO_SHARDS_PER_CORE, SHARDS_MAX};
    let cores = u32::try_from(executors.max(1)).unwrap_or(SHARDS_MAX);
    let per_core = if few_logs { 1 } else { AUTO_SHARDS_PER_CORE };
    let fits = u32::try_from(capacity_shards).unwrap_or(SHARDS_MAX);
    per_core
        .saturating_mul(cores)
        .min(AUTO_SHARDS_MAX.max(cores))
        .min(SHARDS_MAX)
        .min(fits)
        .max(1)
}

/// Whether a measured flush (or a failed measurement) calls for few logs per core.
pub fn flush_is_slow(flush: Option<Duration>) -> bool {
    flush.is_none_or(|f| f >= Duration::from_micros(crate::constants::SLOW_FLUSH_MICROS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_probe_measures_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let flush = measure_flush(dir.path()).expect("probe");
        assert!(flush > Duration::ZERO);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "the probe left {left:?}");
    }

    #[test]
    fn advice_only_for_many_logs_on_a_slow_disk() {
        let slow = Duration::from_micros(230);
        let fast = Duration::from_micros(60);
        let advice = shards_advice(slow, 8, 2).expect("8 shards on 2 cores, slow disk");
        assert!(advice.contains("storage.shards = 2"), "{advice}");
        assert!(advice.contains("230 us"), "{advice}");
        assert_eq!(shards_advice(slow, 2, 2), None);
        assert_eq!(shards_advice(slow, 4, 2), None);
        assert_eq!(shards_advice(fast, 8, 2), None);
        assert!(shards_advice(slow, 8, 1).is_some());
    }

    #[test]
    fn auto_gives_one_log_per_core_where_flushes_are_slow() {
        assert!(flush_is_slow(Some(Duration::from_micros(230))));
        assert!(!flush_is_slow(Some(Duration::from_micros(60))));
        assert!(
            flush_is_slow(None),
            "an unmeasured disk gets the count that is never poor"
        );
        // (few logs, cores, what the capacity holds) -> shards
        assert_eq!(auto_shards(true, 1, u64::MAX), 1);
        assert_eq!(auto_shards(true, 2, u64::MAX), 2);
        assert_eq!(auto_shards(false, 1, u64::MAX), 4);
        assert_eq!(auto_shards(false, 2, u64::MAX), 8);
        assert_eq!(auto_shards(false, 32, u64::MAX), 64, "capped");
        assert_eq!(
            auto_shards(true, 96, u64::MAX),
            96,
            "but every core gets one"
        );
        assert_eq!(auto_shards(false, 96, u64::MAX), 96);
        assert_eq!(auto_shards(false, 4, 5), 5, "what the capacity holds");
        assert_eq!(auto_shards(true, 4, 0), 1);
        assert_eq!(auto_shards(false, 0, u64::MAX), 4, "0 cores is read as one");
        // Whatever the rule gives, no slow disk gets the warning about too many logs.
        for cores in 1..=8 {
            let shards = auto_shards(true, cores, u64::MAX);
            assert_eq!(
                shards_advice(Duration::from_micros(500), shards, cores),
                None
            );
        }
    }
}
