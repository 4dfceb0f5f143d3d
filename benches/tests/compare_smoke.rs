//! `benches/compare --smoke` must never rot: it starts memcached, two Redis servers and two
//! Terrace servers, drives each workload briefly, and prints the table. What the numbers are
//! is not checked (tiny runs on a shared machine); that it produced them is.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt as _;

#[test]
fn compare_smoke_produces_the_table() {
    // The binaries `cargo test --workspace` built, next to this test's own directory.
    let exe = std::env::current_exe().expect("test exe");
    let bin_dir: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = root.parent().expect("workspace root");
    if !bin_dir.join("terrace-server").exists() || !bin_dir.join("terrace-bench").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args(["build", "--bin", "terrace-server", "--bin", "terrace-bench"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build failed");
    }
    // Output to files, the run bounded in time (it may install memcached and redis first).
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new("python3")
        .arg(root.join("benches/compare"))
        .args(["--smoke", "--bin-dir"])
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run python3 benches/compare");
    let Some(status) = child.wait_timeout(Duration::from_secs(900)).expect("wait") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("compare --smoke did not finish in 900 s");
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
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
