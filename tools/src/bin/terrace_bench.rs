//! `terrace-bench`: see `terrace-bench --help` and the README's "Benchmarks" section.

use clap::Parser as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use terrace_tools::bench::options::Options;
use terrace_tools::bench::report::Report;
use terrace_tools::bench::run::{Progress, run};

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
            }
            Err(e) => {
                eprintln!("terrace-bench: {name}: {e}");
                return std::process::ExitCode::from(EXIT_FAILED);
            }
        }
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
