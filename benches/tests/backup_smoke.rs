//! `benches/backup --smoke` must never rot: it fills a small data dir through a real server,
//! then times backup-data create, verify and restore next to cp -r and read-crc. What the
//! numbers are is not checked (tiny runs on a shared machine); that it produced them is.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt as _;

#[test]
fn backup_bench_smoke_produces_the_table() {
    // The binaries `cargo test --workspace` built, next to this test's own directory.
    let exe = std::env::current_exe().expect("test exe");
    let bin_dir: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = root.parent().expect("workspace root");
    let needed = ["terrace-server", "backup-data", "read-crc"];
    if needed.iter().any(|bin| !bin_dir.join(bin).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--bin",
                "terrace-server",
                "--bin",
                "backup-data",
                "--bin",
                "read-crc",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build failed");
    }
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new("python3")
        .arg(root.join("benches/backup"))
        .args(["--smoke", "--bin-dir"])
        .arg(&bin_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run python3 benches/backup");
    let Some(status) = child.wait_timeout(Duration::from_secs(600)).expect("wait") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("backup --smoke did not finish in 600 s");
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "backup --smoke failed:\n{stdout}\n{stderr}"
    );
    for row in [
        "| create | ",
        "| create --link | ",
        "| restore | ",
        "| verify | ",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    // Every row of the table has two times above zero.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| operation"))
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    for line in rows {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for cell in [cells[2], cells[4]] {
            assert!(cell.parse::<f64>().is_ok_and(|t| t > 0.0), "{line}");
        }
    }
}
