//! `benches/compare --smoke` must never rot: it starts memcached, two Redis servers and two
//! Terrace servers, drives each workload briefly, and prints the table. What the numbers are
//! is not checked (tiny runs on a shared machine); that it produced them is.

mod common;

use std::time::Duration;

#[test]
fn compare_smoke_produces_the_table() {
    // It may install memcached and redis first.
    let (status, stdout, stderr) = common::run_smoke(
        "compare",
        &["terrace-server", "terrace-bench"],
        Duration::from_secs(900),
    );
    assert!(
        status.success(),
        "compare --smoke failed:\n{stdout}\n{stderr}"
    );
    for row in [
        "| SET-only, pipeline 1 | terrace-temp / memcached |",
        "| 1:10 SET:GET, pipeline 1 | terrace-temp / memcached |",
        "| SET-only, pipeline 16 | terrace-temp / memcached |",
        "| 1:10 SET:GET, pipeline 16 | terrace-temp / memcached |",
        "| SET-only, pipeline 1 | terrace-perm / redis-always |",
        "| SET-only, pipeline 1 | terrace-perm / redis-everysec |",
        "| SET-only, pipeline 1, 8 shards | terrace-perm-8logs / redis-always |",
        "storage.shards = \"auto\", which chose",
        "permanent-store SET rate / its own temporary-swap-only SET rate",
        "4 KiB append + fdatasync p50",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    // Every row has two throughputs and both are numbers above zero ("0 /" would mean none).
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("terrace-"))
    {
        let throughputs = line.split('|').nth(3).expect("ops/s column");
        assert!(
            throughputs.split(" / ").all(|n| n
                .trim()
                .replace(',', "")
                .parse::<f64>()
                .is_ok_and(|v| v > 0.0)),
            "{line}"
        );
    }
}
