//! Running `backup-data` from the tests, bounded in time, and reading what it printed.
#![allow(dead_code, reason = "each test file uses part of this")]

use std::process::{Command, Output};
use std::time::Duration;

/// Longest one `backup-data` run may take in a test.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `backup-data args`.
pub fn backup_data(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backup-data"));
    for arg in args {
        command.arg(arg);
    }
    super::common::output_within(&mut command, TOOL_TIMEOUT)
}

/// Everything a run said, for a failed assertion's message.
pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `backup-data args --json`, which must succeed, and parses its output.
pub fn json_of(args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.to_vec();
    all.push(&"--json");
    json(&backup_data(&all))
}

/// The JSON a successful run printed.
pub fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}
