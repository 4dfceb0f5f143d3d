//! Command-line options of `terrace-bench`, and their validation into a [`Plan`].

use super::wire::Protocol;
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

/// Drives memcached-protocol (or RESP) servers with a closed-loop load and reports throughput
/// and latency percentiles (HdrHistogram) per operation.
///
/// Each connection sends `--pipeline` requests at once and waits for all their replies before
/// sending more (closed loop); a request's latency runs from the write of its batch to the
/// arrival of its reply. Several `--server`s are measured one after the other with the same
/// workload, and reported side by side.
#[derive(Debug, Clone, Parser)]
#[command(name = "terrace-bench", version)]
pub struct Options {
    /// Server to measure, host:port or name=host:port (the name labels reports and plots);
    /// give it several times to compare servers in one run.
    #[arg(long = "server", default_value = "127.0.0.1:11211")]
    pub servers: Vec<String>,
    /// Protocol the servers speak: memcache (Terrace, memcached), meta (their meta commands:
    /// `ms`/`mg`) or resp (Redis: SET/GET).
    #[arg(long, value_enum, default_value = "memcache")]
    pub protocol: Protocol,
    /// Connections to each server, spread over the threads.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Load threads, each one event loop (a glommio executor).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin the load threads to, one per thread: "1", "2,3", "2-3". Unpinned if absent.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Requests each connection keeps in flight, written in one go.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Size of the key space: keys are key:000000000000 .. key:<keys-1>.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// How keys are picked: uniform, zipf:<exponent> (e.g. zipf:0.99), or sequential.
    #[arg(long, default_value = "uniform")]
    pub key_pattern: String,
    /// Value size in bytes: a number (100) or an inclusive range (100-1000).
    #[arg(long, default_value = "100")]
    pub value_size: String,
    /// Mix of sets to gets, set:get (1:10, 1:0 for sets only, 0:1 for gets only).
    #[arg(long, default_value = "1:10")]
    pub ratio: String,
    /// How long to measure (after the warm-up): 10s, 500ms, 2m. Default 10s.
    #[arg(long, conflicts_with = "requests")]
    pub duration: Option<String>,
    /// Send exactly this many requests to each server (instead of --duration; no warm-up).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load before measuring (not counted), with --duration.
    #[arg(long, default_value = "1s")]
    pub warmup: String,
    /// A reply slower than this is counted as an error and its connection reopened.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Open loop: send this many requests per second in all (spread evenly over the
    /// connections), whether or not replies have come back, and measure each request's latency
    /// from the moment it was meant to be sent (coordinated-omission correction, as wrk2).
    /// Without it the load is closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write each server's latency distribution (HdrHistogram percentile format) to FILE;
    /// with several servers or operations, one file each: FILE.<server index>.<set|get>.hgrm.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<std::path::PathBuf>,
    /// Draw latency by percentile (log scale) to an SVG file, one line per server and
    /// operation, overlaid.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// Largest key space for zipf (its table takes 8 bytes per key).
const ZIPF_KEYS_MAX: u64 = 10_000_000;

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPattern {
    /// Every key equally likely.
    Uniform,
    /// Zipf-distributed with this exponent: a few keys are hot.
    Zipf(f64),
    /// Each connection walks the key space in order from its own offset.
    Sequential,
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// After this long of measured load (plus the warm-up before it).
    Duration { warmup: Duration, measure: Duration },
    /// After exactly this many requests to the server.
    Requests(u64),
}

/// Validated options.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub servers: Vec<(String, SocketAddr)>,
    pub protocol: Protocol,
    pub connections: usize,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    pub pipeline: usize,
    pub keys: u64,
    pub key_pattern: KeyPattern,
    pub value_size: (usize, usize),
    pub ratio: (u32, u32),
    pub stop: Stop,
    #[serde(skip)]
    pub timeout: Duration,
    /// Open-loop rate in requests per second, all connections together.
    pub rate: Option<f64>,
    pub hgrm: Option<std::path::PathBuf>,
    pub plot: Option<std::path::PathBuf>,
    pub json: bool,
    pub quiet: bool,
}

/// An option that cannot be used: names the option and says what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(option: &str, value: &str, takes: &str) -> OptionError {
    OptionError(format!("--{option} {value:?}: {takes}"))
}

/// "10s", "500ms", "2m", "1.5s", or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// "1", "2,3", "2-3", "0,2-3".
pub fn parse_cpus(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

impl Options {
    /// Checks every option; the error names the option and what it takes.
    pub fn plan(&self) -> Result<Plan, OptionError> {
        let mut servers = Vec::new();
        for server in &self.servers {
            // `name=host:port` names the server in reports and plots.
            let (name, target) = match server.split_once('=') {
                Some((name, target)) if !name.is_empty() => (name.to_string(), target),
                _ => (server.clone(), server.as_str()),
            };
            let addr = target
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| {
                    bad(
                        "server",
                        server,
                        "takes host:port or name=host:port, e.g. memcached=127.0.0.1:11211",
                    )
                })?;
            servers.push((name, addr));
        }
        let positive = |option: &str, n: usize| {
            if n == 0 {
                Err(bad(option, "0", "must be at least 1"))
            } else {
                Ok(n)
            }
        };
        let threads = positive("threads", self.threads)?;
        let connections = positive("connections", self.connections)?;
        if connections < threads {
            return Err(bad(
                "connections",
                &connections.to_string(),
                "must be at least --threads (each thread drives its own connections)",
            ));
        }
        let pipeline = positive("pipeline", self.pipeline)?;
        if self.keys == 0 {
            return Err(bad("keys", "0", "must be at least 1"));
        }
        let cpus = match &self.cpus {
            None => None,
            Some(text) => {
                let cpus = parse_cpus(text)
                    .ok_or_else(|| bad("cpus", text, "takes CPU numbers: 1, 2,3 or 2-3"))?;
                if cpus.len() < threads {
                    return Err(bad("cpus", text, "needs one CPU per --threads"));
                }
                Some(cpus)
            }
        };
        let key_pattern = match self.key_pattern.as_str() {
            "uniform" => KeyPattern::Uniform,
            "sequential" => KeyPattern::Sequential,
            other => match other
                .strip_prefix("zipf:")
                .and_then(|s| s.parse::<f64>().ok())
            {
                // Zipf keeps a table of 8 bytes per key.
                Some(_) if self.keys > ZIPF_KEYS_MAX => {
                    return Err(bad(
                        "key-pattern",
                        other,
                        "zipf works on up to 10000000 --keys",
                    ));
                }
                Some(s) if s > 0.0 && s.is_finite() => KeyPattern::Zipf(s),
                _ => {
                    return Err(bad(
                        "key-pattern",
                        other,
                        "takes uniform, sequential or zipf:<exponent above 0>",
                    ));
                }
            },
        };
        let value_size = {
            let text = &self.value_size;
            let takes = "takes a size in bytes (100) or a range (100-1000), at most 1 GiB";
            let (low, high) = text.split_once('-').unwrap_or((text, text));
            match (low.trim().parse::<usize>(), high.trim().parse::<usize>()) {
                (Ok(low), Ok(high)) if low <= high && high <= 1 << 30 => (low, high),
                _ => return Err(bad("value-size", text, takes)),
            }
        };
        let ratio = match self.ratio.split_once(':') {
            Some((s, g)) => match (s.trim().parse::<u32>(), g.trim().parse::<u32>()) {
                (Ok(s), Ok(g)) if s + g > 0 => (s, g),
                _ => return Err(bad("ratio", &self.ratio, "takes set:get, e.g. 1:10 or 1:0")),
            },
            None => return Err(bad("ratio", &self.ratio, "takes set:get, e.g. 1:10 or 1:0")),
        };
        let duration = |option: &str, text: &str| {
            parse_duration(text).ok_or_else(|| bad(option, text, "takes a time: 10s, 500ms, 2m"))
        };
        let stop = match (self.requests, &self.duration) {
            (Some(0), _) => return Err(bad("requests", "0", "must be at least 1")),
            (Some(n), _) => Stop::Requests(n),
            (None, text) => {
                let measure = duration("duration", text.as_deref().unwrap_or("10s"))?;
                if measure.is_zero() {
                    return Err(bad("duration", "0", "must be longer than 0"));
                }
                Stop::Duration {
                    warmup: duration("warmup", &self.warmup)?,
                    measure,
                }
            }
        };
        let timeout = duration("timeout", &self.timeout)?;
        if timeout.is_zero() {
            return Err(bad("timeout", &self.timeout, "must be longer than 0"));
        }
        let rate = match self.rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => Some(r),
            Some(r) => {
                return Err(bad(
                    "rate",
                    &r.to_string(),
                    "takes requests per second above 0",
                ));
            }
        };
        if let Some(path) = &self.plot
            && path.extension().is_none_or(|e| e != "svg")
        {
            return Err(bad(
                "plot",
                &path.display().to_string(),
                "draws SVG: give a file name ending in .svg",
            ));
        }
        Ok(Plan {
            servers,
            protocol: self.protocol,
            connections,
            threads,
            cpus,
            pipeline,
            keys: self.keys,
            key_pattern,
            value_size,
            ratio,
            stop,
            timeout,
            rate,
            hgrm: self.hgrm.clone(),
            plot: self.plot.clone(),
            json: self.json,
            quiet: self.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, OptionError> {
        let mut argv = vec!["terrace-bench"];
        argv.extend_from_slice(args);
        Options::try_parse_from(argv).unwrap().plan()
    }

    #[test]
    fn defaults_are_a_ten_second_mixed_run_against_the_local_default_port() {
        let p = plan(&[]).unwrap();
        assert_eq!(
            p.servers[0].1,
            "127.0.0.1:11211".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(
            (p.connections, p.threads, p.pipeline, p.keys),
            (50, 1, 1, 100_000)
        );
        assert_eq!(p.ratio, (1, 10));
        assert_eq!(p.value_size, (100, 100));
        assert_eq!(p.key_pattern, KeyPattern::Uniform);
        assert_eq!(
            p.stop,
            Stop::Duration {
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn every_option_parses() {
        let p = plan(&[
            "--server",
            "127.0.0.1:1",
            "--server",
            "redis=127.0.0.1:2",
            "--protocol",
            "resp",
            "--connections",
            "8",
            "--threads",
            "2",
            "--cpus",
            "1-2",
            "--pipeline",
            "16",
            "--keys",
            "10",
            "--key-pattern",
            "zipf:0.99",
            "--value-size",
            "10-20",
            "--ratio",
            "1:0",
            "--requests",
            "1000",
            "--timeout",
            "250ms",
            "--rate",
            "5000",
            "--hgrm",
            "lat.hgrm",
            "--plot",
            "lat.svg",
        ])
        .unwrap();
        assert_eq!(p.servers.len(), 2);
        assert_eq!(
            p.servers[1],
            ("redis".to_string(), "127.0.0.1:2".parse().unwrap())
        );
        assert_eq!(p.protocol, Protocol::Resp);
        assert_eq!(p.cpus, Some(vec![1, 2]));
        assert_eq!(p.key_pattern, KeyPattern::Zipf(0.99));
        assert_eq!(p.value_size, (10, 20));
        assert_eq!(p.ratio, (1, 0));
        assert_eq!(p.stop, Stop::Requests(1000));
        assert_eq!(p.timeout, Duration::from_millis(250));
        assert_eq!(p.rate, Some(5000.0));
    }

    #[test]
    fn bad_options_name_the_option_and_the_fix() {
        for (args, option) in [
            (&["--server", "nowhere"][..], "--server"),
            (&["--threads", "0"], "--threads"),
            (&["--threads", "4", "--connections", "2"], "--connections"),
            (&["--cpus", "3-1"], "--cpus"),
            (&["--threads", "2", "--cpus", "1"], "--cpus"),
            (&["--key-pattern", "zipf:x"], "--key-pattern"),
            (&["--value-size", "9-3"], "--value-size"),
            (&["--ratio", "0:0"], "--ratio"),
            (&["--ratio", "3"], "--ratio"),
            (&["--duration", "5 parsecs"], "--duration"),
            (&["--requests", "0"], "--requests"),
            (&["--timeout", "0"], "--timeout"),
            (&["--rate", "0"], "--rate"),
            (&["--rate=-5"], "--rate"),
            (&["--plot", "out.png"], "--plot"),
        ] {
            let error = plan(args).unwrap_err().0;
            assert!(error.starts_with(option), "{args:?}: {error}");
        }
    }

    #[test]
    fn durations_and_cpu_lists() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_cpus("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_cpus(""), None);
    }
}
