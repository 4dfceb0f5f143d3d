//! Checks before start-up, each failing with a message that says what to do: io_uring is
//! usable, the memlock limit is enough for glommio, the CPUs to pin executors to.

use crate::constants::{EXECUTOR_IO_MEMORY_BYTES, GLOMMIO_MEMLOCK_MIN_BYTES};

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
