//! `terrace-ctl` against a real mirror group: what `status` shows, and its exit status, when
//! the group is healthy and when a server is down; `failover` under load; `shutdown`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

#[path = "../../node/tests/common/mod.rs"]
mod common;

use common::{Server, check_acked, free_ports, output_within, pair_config, wait_for, writer};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn ctl(config: &Path) -> (Output, serde_json::Value) {
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_terrace-ctl"))
            .args(["status", "--json", "--timeout-ms", "1000", "-f"])
            .arg(config),
        Duration::from_secs(60),
    );
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output, json)
}

fn server<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|s| s["name"] == name)
        .expect("listed")
}

/// A pair's config in `dir` with a short election time, and the two client ports.
fn pair(dir: &Path) -> (std::path::PathBuf, u16, u16) {
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(
        dir,
        "pair.toml",
        (g1, g2, c1, c2),
        "election_time = \"300ms\"",
    );
    (config, c1, c2)
}

#[test]
fn status_shows_the_group_and_says_when_it_is_unhealthy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, c1, c2) = pair(dir.path());
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);

    // Healthy once the election is done.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (output, report) = ctl(&config);
        if output.status.success() && report["servers"][1]["state"] == "PASSIVE-STANDBY" {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(report["healthy"], true);
    assert_eq!(server(&report, "s1")["state"], "ACTIVE-COORDINATOR");
    assert_eq!(server(&report, "s2")["state"], "PASSIVE-STANDBY");
    assert_eq!(server(&report, "s2")["active"], "s1");
    assert_eq!(server(&report, "s1")["lag"], 0);
    // A write on the active shows in its LSN.
    assert_eq!(s1.connect().set("k", "v"), "STORED\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server(&ctl(&config).1, "s1")["lsn"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "the write never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Per shard too (4 shards), adding up to the total.
    let report = ctl(&config).1;
    let shards: Vec<u64> = server(&report, "s1")["shard_lsns"]
        .as_array()
        .expect("shard_lsns")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(shards.len(), 4, "{report}");
    assert_eq!(
        Some(shards.iter().sum::<u64>()),
        server(&report, "s1")["lsn"].as_u64()
    );

    // A server down: named, and the exit status says so.
    s2.kill();
    let (output, report) = ctl(&config);
    assert_eq!(output.status.code(), Some(1), "{report}");
    // (Right after kill -9 the dead server's listener may still accept for a moment and
    // then reset: io_uring teardown, see NOTES.md. Either way it is unreachable.)
    assert!(
        server(&report, "s2")["unreachable"]
            .as_str()
            .is_some_and(|why| !why.is_empty()),
        "{report}"
    );
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("s2 (127.0.0.1:"),
        "{report}"
    );

    // A config it cannot use: exit 2, naming the field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[servers]]\nname = \"a b\"\nhost = \"h\"\nclient_port = 1\ndata = \"/d\"\n",
    )
    .expect("write");
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_terrace-ctl"))
            .args(["status", "-f"])
            .arg(&bad),
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("servers[0].name"));
}

/// `terrace-ctl shutdown`: the passive first, then the active, each waited for; both exit
/// cleanly. Servers without --enable-shutdown are not stopped, and the active of a group whose
/// passive could not be stopped keeps running.
#[test]
fn shutdown_stops_the_passives_first_then_the_active() {
    use wait_timeout::ChildExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, c1, c2) = pair(dir.path());
    let run_ctl = || {
        output_within(
            Command::new(env!("CARGO_BIN_EXE_terrace-ctl"))
                .args(["shutdown", "-f"])
                .arg(&config),
            Duration::from_secs(120),
        )
    };
    let wait_healthy = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctl(&config).0.status.success() {
            assert!(Instant::now() < deadline, "never healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Not enabled: nothing stops.
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_healthy();
    let output = run_ctl();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("s2: not stopped: its shutdown command is not enabled"),
        "{stdout}"
    );
    assert!(
        stdout.contains("s1: not stopped: a server of its group before it"),
        "{stdout}"
    );
    assert!(ctl(&config).0.status.success(), "both still up");
    drop((s1, s2));

    // Enabled: s2 (the passive) first, then s1, and both exit 0.
    let mut s1 = Server::start_at(
        &config,
        c1,
        &["-n", "s1", "--cores", "1", "--enable-shutdown"],
    );
    let mut s2 = Server::start_at(
        &config,
        c2,
        &["-n", "s2", "--cores", "1", "--enable-shutdown"],
    );
    wait_healthy();
    let output = run_ctl();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout, "s2: stopped\ns1: stopped\n");
    for server in [&mut s1, &mut s2] {
        let mut child = server.child.take().expect("running");
        let status = child
            .wait_timeout(Duration::from_secs(30))
            .expect("wait")
            .expect("exited");
        assert!(status.success(), "{status:?}");
    }
}

/// `terrace-ctl failover` under load, there and back: each time the standby becomes the
/// active, no client sees an error, every acknowledged write is on the new active, and the
/// old active follows it.
#[test]
fn failover_hands_over_under_load_with_no_error_and_no_lost_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, c1, c2) = pair(dir.path());
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    for (round, (from, to, port)) in [(&s1, "s2", c2), (&s2, "s1", c1)].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = [
            writer(c1, format!("r{round}-via-s1"), Arc::clone(&stop)),
            writer(c2, format!("r{round}-via-s2"), Arc::clone(&stop)),
        ];
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let output = output_within(
            Command::new(env!("CARGO_BIN_EXE_terrace-ctl"))
                .args(["failover", "--to", to, "-f"])
                .arg(&config),
            Duration::from_secs(120),
        );
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            from.log()
        );
        assert!(
            stdout.contains(&format!("-> {to} is ACTIVE-COORDINATOR")),
            "{stdout}"
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let results = writers.map(|w| w.join().expect("writer"));
        // The longest gap between acknowledgments: the pause clients saw.
        let mut times: Vec<Instant> = results
            .iter()
            .flat_map(|w| w.acked.iter().map(|(_, at)| *at))
            .collect();
        times.sort();
        let pause = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        for w in &results {
            assert!(w.errors.is_empty(), "client errors: {:?}", w.errors);
            check_acked(port, w);
        }
        println!(
            "failover to {to}: terrace-ctl took {took:?}; longest pause between \
             acknowledgments {pause:?}; {}",
            stdout.trim()
        );
        wait_for(
            from,
            &format!("{}:state", if to == "s2" { "s1" } else { "s2" }),
            "PASSIVE-STANDBY",
        );
    }
}
