//! Running a `benches/` Python harness from a test: with the binaries `cargo test
//! --workspace` built (built here if missing), bounded in time, output through files.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt as _;

/// Runs `python3 benches/<script> --smoke --bin-dir <debug binaries>`, after building
/// `binaries` if one is missing. Returns its status, stdout and stderr; fails the test if it
/// runs longer than `limit`.
pub fn run_smoke(script: &str, binaries: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    // The binaries `cargo test --workspace` built, next to this test's own directory.
    let exe = std::env::current_exe().expect("test exe");
    let bin_dir: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = root.parent().expect("workspace root");
    if binaries.iter().any(|bin| !bin_dir.join(bin).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(root).arg("build");
        for bin in binaries {
            build.args(["--bin", bin]);
        }
        assert!(
            build.status().expect("run cargo build").success(),
            "cargo build failed"
        );
    }
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new("python3")
        .arg(root.join("benches").join(script))
        .args(["--smoke", "--bin-dir"])
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("run python3 benches/{script}: {e}"));
    let Some(status) = child.wait_timeout(limit).expect("wait") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("benches/{script} --smoke did not finish in {limit:?}");
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, stdout, stderr)
}
