//! The report of a run: text for people, JSON for scripts.

use super::run::RunResult;
use super::wire::Op;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles of one operation, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            mean_us: histogram.mean() / 1000.0,
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p99_9_us: us(histogram.value_at_quantile(0.999)),
            p99_99_us: us(histogram.value_at_quantile(0.9999)),
            max_us: us(histogram.max()),
        })
    }
}

/// What one server did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    pub seconds: f64,
    pub requests: u64,
    pub ops_per_sec: f64,
    pub stored: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub errors_by_reply: BTreeMap<String, u64>,
    pub set: Option<Latency>,
    pub get: Option<Latency>,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
}

impl Report {
    pub fn new(server: &str, result: &RunResult) -> Self {
        let tally = &result.tally;
        let seconds = result.elapsed.as_secs_f64();
        let requests = tally.requests();
        Self {
            server: server.to_string(),
            seconds,
            requests,
            ops_per_sec: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            stored: tally.stored,
            hits: tally.hits,
            misses: tally.misses,
            errors: tally.error_count(),
            errors_by_reply: tally.errors.clone(),
            set: Latency::of(tally.latency(Op::Set)),
            get: Latency::of(tally.latency(Op::Get)),
            failure: result.failure.clone(),
        }
    }

    /// The report as people read it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {:.0} ops/s, {} requests in {:.2}s; stored {}, hits {}, misses {}, errors {}",
            self.server,
            self.ops_per_sec,
            self.requests,
            self.seconds,
            self.stored,
            self.hits,
            self.misses,
            self.errors
        );
        let _ = writeln!(
            out,
            "  {:<4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (µs)",
            "op", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for (name, latency) in [("set", &self.set), ("get", &self.get)] {
            if let Some(l) = latency {
                let _ = writeln!(
                    out,
                    "  {:<4} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    name, l.count, l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.p99_99_us, l.max_us
                );
            }
        }
        for (what, n) in &self.errors_by_reply {
            let _ = writeln!(out, "  error x{n}: {what}");
        }
        if let Some(why) = &self.failure {
            let _ = writeln!(out, "  STOPPED EARLY: {why}");
        }
        out
    }
}
