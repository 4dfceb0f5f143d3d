//! Threads that work beside an executor: segment preparation, unmapping, recovery checks.

/// Makes the calling thread a background thread at `nice` (or its own, if lower: raising a
/// priority takes a privilege) that may run on any CPU. Best effort.
///
/// A thread started by an executor inherits its pinning, and would take time from its core
/// even while another core idles. A lower priority does not make its turns short: the
/// scheduler lets whatever thread it picks run until the next tick (4 ms here), even at
/// nice 19 and with a custom slice (`perf sched` under SET load); it only makes them rare.
pub(crate) fn run_in_background(nice: i32) {
    let mut cpus = rustix::thread::CpuSet::new();
    for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
        cpus.set(cpu);
    }
    // The kernel keeps only the CPUs the process may use.
    let _ = rustix::thread::sched_setaffinity(None, &cpus);
    let own = rustix::process::getpriority_process(None).unwrap_or(0);
    if nice > own {
        // On Linux, the calling thread only.
        let _ = rustix::process::setpriority_process(None, nice);
    }
}
