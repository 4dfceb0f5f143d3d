//! The server clock: the system clock plus a shift that `debugtime` moves (only when the
//! server was started with `--enable-debugtime`), shared by every executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use terrace_wal::store::{Clock, SystemClock};

/// The system clock, shifted.
#[derive(Debug, Clone, Default)]
pub struct ServerClock {
    shift_secs: Arc<AtomicI64>,
}

impl ServerClock {
    /// Moves the clock by `secs` (may be negative).
    pub fn shift(&self, secs: i64) {
        self.shift_secs.fetch_add(secs, Ordering::Relaxed);
    }

    /// The current shift.
    pub fn shift_secs(&self) -> i64 {
        self.shift_secs.load(Ordering::Relaxed)
    }
}

impl Clock for ServerClock {
    fn now_secs(&self) -> u32 {
        let now = i64::from(SystemClock.now_secs()) + self.shift_secs();
        u32::try_from(now.max(0)).unwrap_or(u32::MAX)
    }
}
