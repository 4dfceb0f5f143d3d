//! Open-loop pacing: when each request of a connection is meant to be sent.
//!
//! Latency in an open-loop run is measured from the intended send time, not from the moment
//! the request actually went out: when the server stalls, the requests that should have been
//! sent during the stall are sent late, all at once, and their latency includes the time they
//! spent waiting to be sent. That is the coordinated-omission correction of wrk2; without it a
//! stall shows up as one slow request instead of the thousands a real client would have seen.

use std::time::{Duration, Instant};

/// The intended send times of one connection: evenly spaced at `per_sec`, shifted by `phase`
/// (a fraction of one interval) so that connections do not all send at the same instant.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    per_sec: f64,
    phase: f64,
    taken: u64,
}

impl Schedule {
    /// `per_sec` > 0; `phase` in [0, 1).
    pub fn new(start: Instant, per_sec: f64, phase: f64) -> Self {
        assert!(per_sec > 0.0 && per_sec.is_finite(), "rate {per_sec}");
        assert!((0.0..1.0).contains(&phase), "phase {phase}");
        Self {
            start,
            per_sec,
            phase,
            taken: 0,
        }
    }

    /// The intended send time of request `k` (counting from 0).
    pub fn intended(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64((k as f64 + self.phase) / self.per_sec)
    }

    /// When the next request is due.
    pub fn next_due(&self) -> Instant {
        self.intended(self.taken)
    }

    /// The next request's intended time, if it is due by `now` (call until `None` to catch up
    /// after a stall: every overdue request keeps its own intended time).
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next_due();
        (due <= now).then(|| {
            self.taken += 1;
            due
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_from_the_phase() {
        let start = Instant::now();
        let s = Schedule::new(start, 1000.0, 0.5);
        assert_eq!(s.intended(0) - start, Duration::from_micros(500));
        assert_eq!(s.intended(1) - start, Duration::from_micros(1500));
        assert_eq!(s.intended(1000) - start, Duration::from_micros(1_000_500));
    }

    #[test]
    fn a_stall_releases_every_overdue_request_with_its_own_intended_time() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 100.0, 0.0);
        assert_eq!(s.take_due(start), Some(start));
        assert_eq!(s.take_due(start), None, "the next is 10 ms later");
        // The sender was stalled for 55 ms: five requests are overdue, each keeps its time,
        // so each one's latency will count the time it waited to be sent.
        let late = start + Duration::from_millis(55);
        let overdue: Vec<Duration> = std::iter::from_fn(|| s.take_due(late))
            .map(|t| t - start)
            .collect();
        assert_eq!(
            overdue,
            (1..=5)
                .map(|k| Duration::from_millis(10 * k))
                .collect::<Vec<_>>()
        );
        assert_eq!(s.next_due() - start, Duration::from_millis(60));
    }
}
