//! `benches/backup --smoke` must never rot: it fills a small data dir through a real server,
//! then times backup-data create, verify and restore next to cp -r and read-crc. What the
//! numbers are is not checked (tiny runs on a shared machine); that it produced them is.

mod common;

use std::time::Duration;

#[test]
fn backup_bench_smoke_produces_the_table() {
    let (status, stdout, stderr) = common::run_smoke(
        "backup",
        &["terrace-server", "backup-data", "read-crc"],
        Duration::from_secs(600),
    );
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
