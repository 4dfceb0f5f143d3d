//! The benchmark must never rot: `wal-bench --smoke` runs every part at a tiny size and
//! reports a positive number for every metric. What the numbers are is not checked here
//! (this machine is shared and noisy); the README shows a full run.

use std::process::Command;

#[test]
fn every_part_runs_and_reports_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_wal-bench"))
        .args(["--smoke", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run wal-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "wal-bench --smoke failed: {stderr}"
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("wal-bench --json prints JSON");
    let rows = rows.as_array().expect("an array of rows");
    for wanted in [
        "raw 4 KiB append + fdatasync p50",
        "durable appends, 64 writers: p99 latency",
        "durable appends, 64 writers: records per fdatasync-time",
        "appends without sync",
        "open a 16 MiB shard, warm cache",
        "anonymous memory per key",
        "index table bytes per key",
    ] {
        let row = rows
            .iter()
            .find(|r| r["metric"].as_str().is_some_and(|m| m.starts_with(wanted)))
            .unwrap_or_else(|| panic!("no row {wanted:?} in {rows:?}"));
        let value = row["terrace"].as_f64().expect("a number");
        // Memory per key at the smoke size can round to 0 (RSS moves in pages).
        if !wanted.starts_with("anonymous") {
            assert!(value > 0.0, "{wanted}: {value}");
        }
    }
    // Nothing is left behind in the directory it was given.
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0);
}
