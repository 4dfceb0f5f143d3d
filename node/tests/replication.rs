//! Mirror group replication with real servers on 127.0.0.1: a passive syncs from the active
//! (PASSIVE-UNINITIALIZED -> INITIALIZING -> PASSIVE-STANDBY) while writes go on, takes over
//! when the active is killed with every acknowledged write, and the old active comes back as
//! a passive (its data resynced, or moved to the dirty db when it is not a prefix).
//!
//! `TERRACE_HA_KEYS` sets how many keys are written before and during the sync (default
//! 20000 each; the full check is 100000).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{
    Client, Server, check_keys, env_count, free_ports, pair_config, wait_for, write_keys,
};
use std::time::Instant;

/// Counts the log lines of `server` that contain `text`.
fn count(server: &Server, text: &str) -> usize {
    server.log().matches(text).count()
}

#[test]
fn a_passive_syncs_during_writes_and_takes_over_with_every_acknowledged_write() {
    let keys = env_count("TERRACE_HA_KEYS", 20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    let mut s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "2"]);
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    write_keys(c1, "before", 0..keys);

    // s2 joins while a client keeps writing to s1.
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "2"]);
    let writer = std::thread::spawn(move || write_keys(c1, "during", 0..keys));
    wait_for(&s2, "s2:state", "PASSIVE-STANDBY");
    writer.join().expect("writer");
    wait_for(&s1, "cluster:standbys", "s2");
    for line in [
        "Moved to State[ PASSIVE-UNINITIALIZED ]",
        "Moved to State[ INITIALIZING ]",
        "Moved to State[ PASSIVE-STANDBY ]",
    ] {
        assert_eq!(count(&s2, line), 1, "{line}; log:\n{}", s2.log());
    }
    // Written through the passive: forwarded to the active, replicated back.
    write_keys(c2, "via-passive", 0..500);

    // kill -9 the active: s2 takes over with every acknowledged write.
    s1.kill();
    let killed = Instant::now();
    let mut c = Client::connect(c2);
    assert_eq!(c.set("after-failover", "1"), "STORED\r\n");
    println!(
        "failover pause (kill -9 to the first write acknowledged): {:?}",
        killed.elapsed()
    );
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    assert_eq!(count(&s2, "Starting reconnect window"), 1, "{}", s2.log());
    check_keys(c2, "before", 0..keys);
    check_keys(c2, "during", 0..keys);
    check_keys(c2, "via-passive", 0..500);

    // The old active comes back as a passive, catches up, and could take over again.
    write_keys(c2, "while-s1-down", 0..2000);
    s1.restart();
    wait_for(&s1, "s1:state", "PASSIVE-STANDBY");
    write_keys(c2, "s1-back", 0..2000);
    let log = s1.log();
    assert!(
        log.contains("moved it to the dirty db")
            || log.contains("resyncing from LSN")
            || s2.log().contains("resyncing from LSN"),
        "says whether it resynced from its own data or moved it aside:\n{log}"
    );
    s2.kill();
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    check_keys(c1, "before", 0..keys);
    check_keys(c1, "during", 0..keys);
    check_keys(c1, "while-s1-down", 0..2000);
    check_keys(c1, "s1-back", 0..2000);
    assert_eq!(
        Client::connect(c1).get("after-failover").as_deref(),
        Some("1")
    );
    println!("s1:\n{}\ns2:\n{}", s1.log(), s2.log());
    drop(s2);
}

/// Segment files in a data dir's shards.
fn segment_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("shards"))
        .expect("shards dir")
        .map(|shard| {
            std::fs::read_dir(shard.expect("shard").path())
                .expect("shard dir")
                .filter(|f| {
                    f.as_ref()
                        .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "seg"))
                })
                .count()
        })
        .sum()
}

/// Under overwrites and deletes a passive removes the segments nothing needs any more (the
/// active's compaction copies and newer writes, which reach it as records, supersede what
/// they held; a tombstone goes once no older segment of the passive may hold a record of
/// its key), so its disk use stays near the active's instead of growing with every byte the
/// active was ever sent; and it takes over with every latest value, and every delete.
#[test]
fn a_passive_reclaims_what_overwrites_and_deletes_left_behind_and_takes_over_whole() {
    // 40 MB of overwrites of 1 MB of data, a tenth of it deleted after each round, into 4
    // shards of 2 MiB segments: each shard keeps its tail and a spare, and a segment or two
    // that compaction has not reached yet. Without reclaiming, the passive held 28 segment
    // files here, the active 8; reclaiming, but keeping every segment with a tombstone, 28.
    let (rounds, keys) = (40, 1000);
    let deleted_in = |round: u64| (round % 10) * 100..(round % 10) * 100 + 100;
    let value = |round: u64, key: u64| format!("{round}-{key}-{}", "x".repeat(990));
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut s1, s2, (c1, c2)) = common::start_pair(dir.path(), "1");

    let mut c = Client::connect(c1);
    for round in 0..rounds {
        for batch in (0..keys).collect::<Vec<u64>>().chunks(100) {
            let mut request = String::new();
            for &key in batch {
                let v = value(round, key);
                request.push_str(&format!("set hot{key} 0 0 {}\r\n{v}\r\n", v.len()));
            }
            c.send(request.as_bytes());
            let expected = "STORED\r\n".repeat(batch.len());
            assert_eq!(
                String::from_utf8_lossy(&c.read_exact_n(expected.len())),
                expected
            );
        }
        let deletes: String = deleted_in(round)
            .map(|key| format!("delete hot{key}\r\n"))
            .collect();
        c.send(deletes.as_bytes());
        let expected = "DELETED\r\n".repeat(100);
        assert_eq!(
            String::from_utf8_lossy(&c.read_exact_n(expected.len())),
            expected
        );
    }
    let (s1_data, s2_data) = (dir.path().join("s1"), dir.path().join("s2"));
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let bound = 4 * 4;
    while segment_files(&s2_data) > bound && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (active_files, passive_files) = (segment_files(&s1_data), segment_files(&s2_data));
    println!("segment files after {rounds} rounds: active {active_files}, passive {passive_files}");
    assert!(
        passive_files <= bound,
        "the passive holds {passive_files} segment files (active {active_files}); log:\n{}",
        s2.log()
    );

    // The passive answers `stats` itself, with what it reclaimed.
    let stats = Client::connect(c2).call_end("stats\r\n");
    let stat = |name: &str| common::number_stat(&stats, name);
    assert!(stat("terrace_segments_reclaimed") >= 4, "{stats}");
    // It dropped tombstones with the segments, and keeps the reach of those it holds.
    assert!(stat("terrace_tombstones_dropped") >= 100, "{stats}");
    assert!(stat("terrace_tombstone_covers") >= 100, "{stats}");

    s1.kill();
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    let mut c = Client::connect(c2);
    for key in 0..keys {
        let expected = value(rounds - 1, key);
        let expected = (!deleted_in(rounds - 1).contains(&key)).then_some(expected.as_str());
        assert_eq!(c.get(&format!("hot{key}")).as_deref(), expected, "hot{key}");
    }
    drop(s1);
    drop(s2);
}

/// A server whose data is not a prefix of the active's (it wrote records the active never
/// had) moves its data to the dirty db before it syncs, says so, and becomes PASSIVE-STANDBY
/// with the active's data. Here: the active is paused with a write waiting in its socket, the
/// passive takes over and writes, then the old active resumes, applies the waiting write (its
/// client gets an error: it can no longer be acknowledged) and steps down.
#[test]
fn a_server_with_diverged_data_moves_it_to_the_dirty_db_and_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(
        dir.path(),
        "pair.toml",
        (g1, g2, c1, c2),
        "dirtydb_rolling = 1\n",
    );
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s2, "s2:state", "PASSIVE-STANDBY");
    write_keys(c1, "both", 0..1000);
    s1.signal(rustix::process::Signal::STOP);
    s1.wait_stopped();
    let mut waiting = Client::connect(c1);
    waiting.send(b"set only-s1 0 0 4\r\nlost\r\n");
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    write_keys(c2, "only-s2", 0..1500);
    s1.signal(rustix::process::Signal::CONT);
    let reply = String::from_utf8(waiting.read_until(b"\r\n")).expect("utf8");
    assert!(reply.starts_with("SERVER_ERROR"), "{reply}");
    wait_for(&s1, "s1:state", "PASSIVE-STANDBY");
    let log = s1.log();
    assert!(log.contains("split brain"), "{log}");
    assert!(
        log.contains("moved it to the dirty db"),
        "the reply was {reply:?}; s1:\n{log}\ns2:\n{}",
        s2.log()
    );
    assert!(log.contains("Moved to State[ INITIALIZING ]"), "{log}");
    let dirty = dir.path().join("s1").join("dirty-db-backup");
    let copies: Vec<_> = std::fs::read_dir(&dirty)
        .expect("dirty db")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].join("terrace-meta.toml").exists());
    assert!(copies[0].join("shards").is_dir());
    // s1 now holds s2's data: it takes over with it.
    s2.kill();
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    check_keys(c1, "both", 0..1000);
    check_keys(c1, "only-s2", 0..1500);
    // The write s1 applied alone is not in the group's data; it is in its dirty db.
    assert_eq!(Client::connect(c1).get("only-s1"), None);
}

/// An old active that comes back holding exactly the new active's data (nothing was written
/// since the failover) resyncs from its own data, with nothing to receive, and is a standby
/// again.
#[test]
fn a_returning_server_with_nothing_to_catch_up_becomes_a_standby() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    let mut s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s2, "s2:state", "PASSIVE-STANDBY");
    write_keys(c1, "k", 0..100);
    s1.kill();
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    s1.restart();
    wait_for(&s1, "s1:state", "PASSIVE-STANDBY");
    assert!(s2.log().contains("holds a prefix"), "{}", s2.log());
    check_keys(c1, "k", 0..100);
}
