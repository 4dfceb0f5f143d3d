//! `benches/ha --smoke` must never rot: it runs a single server and HA pairs under
//! terrace-bench, an INITIALIZING sync next to a loopback copy, and kill -9 failovers. What the
//! numbers are is not checked (tiny runs on a shared machine); that it produced them is.

mod common;

use std::time::Duration;

#[test]
fn ha_bench_smoke_produces_the_tables() {
    let (status, stdout, stderr) = common::run_smoke(
        "ha",
        &["terrace-server", "terrace-bench"],
        Duration::from_secs(600),
    );
    assert!(status.success(), "ha --smoke failed:\n{stdout}\n{stderr}");
    for row in [
        "| single server | ",
        "| pair, sync | ",
        "| pair, async | ",
        "| passive start -> PASSIVE-STANDBY",
        "| defaults (health 1 s x 3, election_time 5 s) | 1 | ",
        "| tuned (health 100 ms x 3, election_time 500 ms) | 1 | ",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    // Throughputs and pauses are numbers above zero.
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("| pair") || l.starts_with("| single"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<f64>().is_ok_and(|t| t > 0.0), "{line}");
    }
}
