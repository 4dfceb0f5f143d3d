//! Counts and latency histograms of a run, per operation.

use super::wire::{Op, Outcome};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies are recorded in nanoseconds, up to this.
const LATENCY_MAX_NANOS: u64 = 100_000_000_000;

/// What a run (or one thread of it) saw.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of answered requests (errors included), per operation, in nanoseconds.
    pub latency: [Histogram<u64>; 2],
    pub stored: u64,
    pub hits: u64,
    pub misses: u64,
    /// Errors by what the server said (or what went wrong with the connection).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

fn slot(op: Op) -> usize {
    match op {
        Op::Set => 0,
        Op::Get => 1,
    }
}

impl Tally {
    pub fn new() -> Self {
        #[allow(
            clippy::expect_used,
            reason = "constant bounds, valid for hdrhistogram"
        )]
        let histogram =
            || Histogram::new_with_bounds(1, LATENCY_MAX_NANOS, 3).expect("histogram bounds");
        Self {
            latency: [histogram(), histogram()],
            stored: 0,
            hits: 0,
            misses: 0,
            errors: BTreeMap::new(),
        }
    }

    /// One reply to a request of `op` that took `latency`.
    pub fn record(&mut self, op: Op, outcome: Outcome, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency[slot(op)].saturating_record(nanos.max(1));
        match outcome {
            Outcome::Stored => self.stored += 1,
            Outcome::Hit => self.hits += 1,
            Outcome::Miss => self.misses += 1,
            Outcome::Error(what) => self.error(what),
        }
    }

    /// A request that failed (the server said so, or the connection did).
    pub fn error(&mut self, what: String) {
        *self.errors.entry(what).or_insert(0) += 1;
    }

    pub fn latency(&self, op: Op) -> &Histogram<u64> {
        &self.latency[slot(op)]
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests accounted for: every request sent has a reply or an error, never both.
    pub fn requests(&self) -> u64 {
        self.stored + self.hits + self.misses + self.error_count()
    }

    pub fn merge(&mut self, other: &Tally) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.add(theirs);
        }
        self.stored += other.stored;
        self.hits += other.hits;
        self.misses += other.misses;
        for (what, n) in &other.errors {
            *self.errors.entry(what.clone()).or_insert(0) += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_counted_once_and_latencies_land_in_their_operation() {
        let mut a = Tally::new();
        a.record(Op::Set, Outcome::Stored, Duration::from_micros(100));
        a.record(Op::Get, Outcome::Hit, Duration::from_micros(200));
        a.record(Op::Get, Outcome::Miss, Duration::from_micros(300));
        a.record(
            Op::Set,
            Outcome::Error("SERVER_ERROR x".into()),
            Duration::from_micros(5),
        );
        // A request lost with its connection has no latency, only an error.
        a.error("connection closed by the server".into());
        let mut b = Tally::new();
        b.record(Op::Get, Outcome::Hit, Duration::from_millis(2));
        a.merge(&b);
        assert_eq!((a.stored, a.hits, a.misses, a.error_count()), (1, 2, 1, 2));
        assert_eq!(a.requests(), 6);
        assert_eq!(a.latency(Op::Set).len(), 2);
        assert_eq!(a.latency(Op::Get).len(), 3);
        // HdrHistogram keeps 3 significant digits.
        let max = a.latency(Op::Get).max();
        assert!((1_998_000..=2_002_000).contains(&max), "{max}");
        assert_eq!(a.errors["SERVER_ERROR x"], 1);
    }
}
