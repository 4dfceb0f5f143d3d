//! Time and expiry, memcached's way.
//!
//! Expiry is stored as an absolute unix time in seconds (`u32`, 0 = never), so that it means
//! the same after a restart. An item is expired when `expiry != 0 && expiry <= now`.

use crate::constants::EXPTIME_RELATIVE_MAX_SECS;
use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

/// Where the store reads the time from. Injectable so tests (and memcached's `debugtime`)
/// can move it.
pub trait Clock: fmt::Debug {
    /// Now, in unix seconds.
    fn now_secs(&self) -> u32;
}

/// The system clock, read coarsely.
///
/// Every request reads it (expiry is checked on access), and expiry counts whole seconds:
/// the kernel's coarse real-time clock, which the vDSO answers from the time of the last
/// scheduler tick (at most a few milliseconds old) without reading the TSC, is enough, and
/// cheaper. At SET pipeline 16 the precise clock (`SystemTime::now`) took about 3 % of the
/// executor's time (`perf`, 2026-12-07, AMD host).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u32 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        u32::try_from(now.tv_sec.max(0)).unwrap_or(u32::MAX)
    }
}

/// A clock that moves only when told to. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Rc<Cell<u32>>,
}

impl ManualClock {
    /// A clock at `now_secs`.
    pub fn new(now_secs: u32) -> Self {
        Self {
            now: Rc::new(Cell::new(now_secs)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, secs: u32) {
        self.now.set(self.now.get().saturating_add(secs));
    }

    /// Sets the time.
    pub fn set(&self, now_secs: u32) {
        self.now.set(now_secs);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u32 {
        self.now.get()
    }
}

/// The stored expiry of an item that is already expired (any time in the past will do; 1 is
/// never `0`, which means "never").
pub const EXPIRED: u32 = 1;

/// Converts memcached's `exptime` to an absolute expiry: 0 never expires, a negative value is
/// already expired, up to 30 days is relative to `now`, anything larger is a unix time.
pub fn expiry_from_exptime(exptime: i64, now_secs: u32) -> u32 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        EXPIRED
    } else if exptime <= EXPTIME_RELATIVE_MAX_SECS {
        // `exptime` is at most 30 days: the sum fits in u64; clamp to the u32 range.
        let at = u64::from(now_secs) + exptime as u64;
        u32::try_from(at).unwrap_or(u32::MAX)
    } else if exptime <= i64::from(now_secs) {
        EXPIRED
    } else {
        u32::try_from(exptime).unwrap_or(u32::MAX)
    }
}

/// Whether an item with this stored expiry is expired at `now_secs`.
pub fn is_expired(expiry: u32, now_secs: u32) -> bool {
    expiry != 0 && expiry <= now_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse clock is the unix time (not, say, seconds since boot), and at most a tick
    /// behind the precise one: expiry is absolute unix seconds, kept across restarts.
    #[test]
    fn system_clock_reads_unix_seconds() {
        let precise = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let before = precise();
        let coarse = u64::from(SystemClock.now_secs());
        let after = precise();
        assert!(
            before.saturating_sub(1) <= coarse && coarse <= after,
            "coarse clock {coarse} outside [{before} - 1, {after}]"
        );
    }

    #[test]
    fn memcached_exptime_rules() {
        let now = 1_700_000_000;
        assert_eq!(expiry_from_exptime(0, now), 0);
        assert_eq!(expiry_from_exptime(-1, now), EXPIRED);
        assert_eq!(expiry_from_exptime(10, now), now + 10);
        assert_eq!(
            expiry_from_exptime(EXPTIME_RELATIVE_MAX_SECS, now),
            now + EXPTIME_RELATIVE_MAX_SECS as u32
        );
        // Larger than 30 days: absolute. In the past: expired at once.
        assert_eq!(
            expiry_from_exptime(EXPTIME_RELATIVE_MAX_SECS + 1, now),
            EXPIRED
        );
        assert_eq!(expiry_from_exptime(i64::from(now) + 5, now), now + 5);
        assert_eq!(expiry_from_exptime(i64::MAX, now), u32::MAX);
        assert!(is_expired(EXPIRED, now));
        assert!(is_expired(now, now));
        assert!(!is_expired(now + 1, now));
        assert!(!is_expired(0, now));
    }
}
