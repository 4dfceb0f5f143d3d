//! `terrace-bench`: see `terrace-bench --help` and the README's "Benchmarks" section.

use clap::Parser as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use terrace_tools::bench::options::{Options, Plan};
use terrace_tools::bench::output::{Series, hgrm, hgrm_path, plot_svg};
use terrace_tools::bench::report::Report;
use terrace_tools::bench::run::{Progress, RunResult, run};
use terrace_tools::bench::wire::Op;

/// Exit status when an option is wrong.
const EXIT_USAGE: u8 = 2;
/// Exit status when a run failed (could not connect, load thread failed).
const EXIT_FAILED: u8 = 1;

fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let plan = match options.plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("terrace-bench: {e}");
            return std::process::ExitCode::from(EXIT_USAGE);
        }
    };
    let mut reports = Vec::new();
    let mut results = Vec::new();
    let mut failed = false;
    for (name, addr) in &plan.servers {
        let progress = Arc::new(Progress {
            done: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        });
        let ticker = (!plan.quiet).then(|| progress_line(name.clone(), Arc::clone(&progress)));
        let result = run(&plan, *addr, &progress);
        if let Some((stop, thread)) = ticker {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        match result {
            Ok(result) => {
                let report = Report::new(name, &result);
                failed |= report.failure.is_some();
                if !plan.json {
                    print!("{}", report.text());
                }
                reports.push(report);
                results.push((name.clone(), result));
            }
            Err(e) => {
                eprintln!("terrace-bench: {name}: {e}");
                return std::process::ExitCode::from(EXIT_FAILED);
            }
        }
    }
    if let Err(e) = write_files(&plan, &results) {
        eprintln!("terrace-bench: {e}");
        return std::process::ExitCode::from(EXIT_FAILED);
    }
    if plan.json {
        let doc = serde_json::json!({ "plan": plan, "results": reports });
        println!("{doc:#}");
    }
    if failed {
        std::process::ExitCode::from(EXIT_FAILED)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Prints `ops/s so far, elapsed` to stderr once a second until told to stop.
fn progress_line(
    server: String,
    progress: Arc<Progress>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = (start, 0u64);
        while !stop_flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            if now.duration_since(last.0) < Duration::from_secs(1) {
                continue;
            }
            let done = progress.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            eprint!(
                "\r{server}: {:>6.1}s {:>10.0} ops/s {:>12} requests",
                now.duration_since(start).as_secs_f64(),
                rate,
                done
            );
            let _ = std::io::stderr().flush();
            last = (now, done);
        }
        eprint!("\r\x1b[2K");
    });
    (stop, thread)
}

/// `--hgrm` and `--plot`.
fn write_files(plan: &Plan, results: &[(String, RunResult)]) -> Result<(), String> {
    // (server index, operation, distribution)
    let series: Vec<(usize, &str, Series<'_>)> = results
        .iter()
        .enumerate()
        .flat_map(|(n, (name, result))| {
            [(Op::Set, "set"), (Op::Get, "get")]
                .into_iter()
                .filter(|(op, _)| !result.tally.latency(*op).is_empty())
                .map(move |(op, label)| {
                    let series = Series {
                        label: format!("{name} {label}"),
                        histogram: result.tally.latency(op),
                    };
                    (n, label, series)
                })
        })
        .collect();
    if let Some(path) = &plan.hgrm {
        for (n, op, s) in &series {
            let file = hgrm_path(path, *n, op, series.len());
            std::fs::write(&file, hgrm(s.histogram))
                .map_err(|e| format!("--hgrm {}: {e}", file.display()))?;
        }
    }
    let series: Vec<Series<'_>> = series.into_iter().map(|(_, _, s)| s).collect();
    if let Some(path) = &plan.plot {
        let mode = match plan.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => format!("closed loop, pipeline {}", plan.pipeline),
        };
        let title = format!(
            "terrace-bench: {} connections, {mode}, set:get {}:{}",
            plan.connections, plan.ratio.0, plan.ratio.1
        );
        std::fs::write(path, plot_svg(&title, &series))
            .map_err(|e| format!("--plot {}: {e}", path.display()))?;
    }
    Ok(())
}
