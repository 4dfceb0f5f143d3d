//! `backup-data reshard` end to end: a real server's data dir rewritten with another shard
//! count, then served.
//!
//! What a user relies on: every live item is there afterwards with its value, flags and
//! expiry, nothing deleted or expired comes back, CAS values stay above every old one, a
//! delayed `flush_all` still happens, the old contents are kept aside, a running server's
//! data dir is refused, and a reshard killed at any moment leaves the old data dir or the
//! new one. `TERRACE_RESHARD_KILL_ROUNDS` sets the kill rounds (default 3).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod cli;
#[path = "../../node/tests/common/mod.rs"]
mod common;

use cli::{backup_data, text};
use common::{Client, Server, env_count, write_config};
use rand::{Rng as _, SeedableRng as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `backup-data reshard --json`, which must succeed.
fn reshard(data: &Path, shards: u32) -> serde_json::Value {
    let out = backup_data(&[
        &"reshard",
        &"--data-dir",
        &data,
        &"--shards",
        &shards.to_string(),
        &"--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// The test config with `shards` shards.
fn config_with_shards(dir: &Path, shards: u32) -> PathBuf {
    let path = write_config(dir, "permanent-store");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("shards = 8", &format!("shards = {shards}")),
    )
    .unwrap();
    path
}

fn shards_in_meta(data: &Path) -> String {
    std::fs::read_to_string(data.join("terrace-meta.toml"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("shards"))
        .unwrap()
        .to_string()
}

/// Sets, overwrites, deletes, touches, a counter, and items that expire in an hour, in a
/// week, at an absolute time, or already did. Returns every key used.
fn load(client: &mut Client) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..3000 {
        let key = format!("key:{i}");
        let exptime = match i % 4 {
            0 => 0,
            1 => 3600,
            2 => 2_000_000_000, // 2033-05-18
            _ => 86_400 * 7,
        };
        let value = format!("{i}-{}", "v".repeat(i % 700));
        let reply = client.call(&format!(
            "set {key} {} {exptime} {}\r\n{value}\r\n",
            i % 13,
            value.len()
        ));
        assert_eq!(reply, "STORED\r\n");
        keys.push(key);
    }
    for i in (0..3000).step_by(3) {
        client.set(&format!("key:{i}"), &format!("again {i}"));
    }
    for i in (0..3000).step_by(10) {
        assert_eq!(client.call(&format!("delete key:{i}\r\n")), "DELETED\r\n");
    }
    for i in (1..3000).step_by(7) {
        client.call(&format!("touch key:{i} 7200\r\n"));
    }
    // Marked stale (meta invalidation): they stay stale.
    for i in (1..3000).step_by(11).filter(|i| i % 10 != 0) {
        assert_eq!(client.call(&format!("md key:{i} I\r\n")), "HD\r\n");
    }
    assert_eq!(client.call("set counter 3 0 2\r\n40\r\n"), "STORED\r\n");
    assert_eq!(client.call("incr counter 2\r\n"), "42\r\n");
    assert_eq!(client.call("set gone 0 -1 1\r\nx\r\n"), "STORED\r\n");
    keys.push("counter".into());
    keys.push("gone".into());
    keys
}

/// Every key's value line and data (`VALUE key flags len` + data), TTL left (`t` of `mg`),
/// CAS, and whether it is stale (`X` from `mg`); absent keys map to `None`.
type Contents = BTreeMap<String, Option<(String, i64, u64, bool)>>;

fn contents(client: &mut Client, keys: &[String]) -> Contents {
    keys.iter()
        .map(|key| {
            let reply = client.call_end(&format!("gets {key}\r\n"));
            if reply == "END\r\n" {
                return (key.clone(), None);
            }
            let (line, rest) = reply.split_once("\r\n").unwrap();
            let mut words: Vec<&str> = line.split(' ').collect();
            let cas: u64 = words.pop().unwrap().parse().unwrap();
            let value = format!("{} {}", words.join(" "), rest.trim_end_matches("END\r\n"));
            let reply = client.call(&format!("mg {key} t\r\n"));
            let mut flags = reply.trim_end().split(' ');
            assert_eq!(flags.next(), Some("HD"), "{reply:?}");
            let ttl: i64 = flags
                .next()
                .unwrap()
                .strip_prefix('t')
                .unwrap()
                .parse()
                .unwrap();
            let stale = flags.any(|flag| flag == "X");
            (key.clone(), Some((value, ttl, cas, stale)))
        })
        .collect()
}

#[test]
fn reshard_keeps_every_live_item_and_the_old_data_aside() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let mut server = Server::start(
        &config_with_shards(root.path(), 2),
        &["--cores", "2", "--enable-debugtime"],
    );
    let mut client = server.connect();
    let keys = load(&mut client);
    // A delayed flush_all, due in a day: it must still come after the reshard.
    assert_eq!(client.call("flush_all 86400\r\n"), "OK\r\n");
    let before = contents(&mut client, &keys);
    let stale = before.values().flatten().filter(|item| item.3).count();
    assert!(stale > 200, "{stale} stale items");
    drop(client);

    // A running server's data dir is refused.
    let refused = backup_data(&[&"reshard", &"--data-dir", &data, &"--shards", &"5"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("running server"),
        "{}",
        text(&refused)
    );
    assert!(server.terminate().success());

    let report = reshard(&data, 5);
    let live = before.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(report["items"], live, "{report}");
    assert_eq!(report["from_shards"], 2);
    assert_eq!(shards_in_meta(&data), "shards = 5");
    let per_shard: Vec<u64> = report["items_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), live);
    assert!(per_shard.iter().all(|&n| n > live / 10), "{per_shard:?}");
    assert!(report["pending_flush_at"].as_u64().is_some(), "{report}");
    // The old contents, as they were, beside it.
    let aside = PathBuf::from(report["previous_contents_moved_to"].as_str().unwrap());
    assert_eq!(shards_in_meta(&aside), "shards = 2");

    // Served with the new count, on a different number of cores.
    let mut server = Server::start(
        &config_with_shards(root.path(), 5),
        &["--cores", "1", "--enable-debugtime"],
    );
    let mut client = server.connect();
    let after = contents(&mut client, &keys);
    let old_cas_max = before
        .values()
        .flatten()
        .map(|(_, _, cas, _)| *cas)
        .max()
        .unwrap();
    for key in &keys {
        match (&before[key], &after[key]) {
            (None, None) => {}
            (Some((value, ttl, _, stale)), Some((new_value, new_ttl, cas, new_stale))) => {
                assert_eq!(value, new_value, "{key}");
                assert_eq!(stale, new_stale, "{key}: stale");
                // The same absolute expiry, read a little later.
                assert!(
                    *ttl == -1 && *new_ttl == -1 || (ttl - new_ttl).abs() <= 5,
                    "{key}: ttl {ttl} then {new_ttl}"
                );
                assert!(
                    *cas > old_cas_max,
                    "{key}: cas {cas} not above {old_cas_max}"
                );
            }
            (was, now) => panic!("{key}: {was:?} became {now:?}"),
        }
    }
    assert_eq!(client.call("incr counter 1\r\n"), "43\r\n");
    // Writes go on, and survive a restart.
    client.set("after", "reshard");
    drop(client);
    assert!(server.terminate().success());
    server.restart();
    let mut client = server.connect();
    assert_eq!(client.get("after").as_deref(), Some("reshard"));
    // The delayed flush_all still comes: a day later, everything written before it is gone.
    assert_eq!(client.call("debugtime 86401\r\n"), "OK\r\n");
    assert_eq!(client.get("counter"), None);
    assert_eq!(client.get("key:1"), None);
    drop(client);
    assert!(server.terminate().success());

    // What is refused, and why.
    for (shards, why) in [("5", "already"), ("0", "out of range")] {
        let out = backup_data(&[&"reshard", &"--data-dir", &data, &"--shards", &shards]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
    }
    let temporary = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&write_config(temporary.path(), "temporary-swap-only"), &[]);
    drop(server);
    let out = backup_data(&[
        &"reshard",
        &"--data-dir",
        &temporary.path().join("data"),
        &"--shards",
        &"3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("temporary-swap-only"), "{}", text(&out));
}

/// Segment files and meta of a data dir: name -> bytes.
fn files_of(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "meta".into(),
        std::fs::read(data.join("terrace-meta.toml")).unwrap(),
    );
    for shard in std::fs::read_dir(data.join("shards")).unwrap() {
        let shard = shard.unwrap().path();
        for segment in std::fs::read_dir(&shard).unwrap() {
            let segment = segment.unwrap().path();
            let name = segment.strip_prefix(data).unwrap().display().to_string();
            files.insert(name, std::fs::read(&segment).unwrap());
        }
    }
    files
}

/// A delayed `flush_all` whose time has passed, on a shard that saw no request since (so
/// it is not logged as in effect yet), is in effect: the items written after it on other
/// shards are kept, not flushed by a copy of it.
#[test]
fn a_flush_already_due_is_not_carried_over() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let cfg = config_with_shards(root.path(), 2);
    let mut server = Server::start(&cfg, &["--cores", "2"]);
    let mut client = server.connect();
    client.set("before", "flushed");
    assert_eq!(client.call("flush_all 2\r\n"), "OK\r\n");
    // The flush's time passes (the tool reads the real clock), then keys are written to
    // the other shard only (keys hash by crc32).
    std::thread::sleep(Duration::from_millis(3100));
    let shard_of = |key: &str| crc32fast::hash(key.as_bytes()) % 2;
    let quiet_shard = shard_of("before");
    let keys: Vec<String> = (0..200)
        .map(|i| format!("after:{i}"))
        .filter(|key| shard_of(key) != quiet_shard)
        .collect();
    for key in &keys {
        client.set(key, "kept");
    }
    drop(client);
    assert!(server.terminate().success());
    let report = reshard(&data, 3);
    assert!(report["pending_flush_at"].is_null(), "{report}");
    assert_eq!(report["items"], keys.len() as u64, "{report}");
    let mut server = Server::start(&config_with_shards(root.path(), 3), &["--cores", "1"]);
    let mut client = server.connect();
    assert_eq!(client.get("before"), None);
    for key in &keys {
        assert_eq!(client.get(key).as_deref(), Some("kept"), "{key}");
    }
    drop(client);
    assert!(server.terminate().success());
}

/// A data dir reached through a symbolic link is resharded where it is (the link keeps
/// pointing at it); `--segment-size` sets the new segments' size.
#[test]
fn a_linked_data_dir_stays_where_it_is() {
    let root = tempfile::tempdir().expect("temp dir");
    let real = root.path().join("disk").join("data");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    let cfg = config_with_shards(root.path(), 2);
    let mut server = Server::start(&cfg, &["--cores", "1"]);
    server.connect().set("k", "v");
    assert!(server.terminate().success());
    std::fs::rename(root.path().join("data"), &real).unwrap();
    std::os::unix::fs::symlink(&real, root.path().join("data")).unwrap();
    let out = backup_data(&[
        &"reshard",
        &"--data-dir",
        &root.path().join("data"),
        &"--shards",
        &"3",
        &"--segment-size",
        &"1MiB",
        &"--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["segment_size_bytes"], 1 << 20, "{report}");
    assert!(
        std::fs::symlink_metadata(root.path().join("data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(shards_in_meta(&real), "shards = 3");
    let mut server = Server::start(&config_with_shards(root.path(), 3), &["--cores", "1"]);
    let mut client = server.connect();
    assert_eq!(client.get("k").as_deref(), Some("v"));
    client.set("big", &"b".repeat(100_000));
    drop(client);
    assert!(server.terminate().success());
    // Segments too small for the largest value are refused, naming the fix.
    let out = backup_data(&[
        &"reshard",
        &"--data-dir",
        &real,
        &"--shards",
        &"4",
        &"--segment-size",
        &"64KiB",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--segment-size"), "{}", text(&out));
    assert_eq!(shards_in_meta(&real), "shards = 3");
}

#[test]
fn a_killed_reshard_leaves_the_old_data_dir_or_the_new_one() {
    let rounds = env_count("TERRACE_RESHARD_KILL_ROUNDS", 3);
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let mut server = Server::start(&config_with_shards(root.path(), 2), &["--cores", "1"]);
    let mut client = server.connect();
    for i in 0..3000 {
        client.set(&format!("k{i}"), &"x".repeat(2000));
    }
    drop(client);
    assert!(server.terminate().success());
    let original = files_of(&data);
    let pristine = root.path().join("pristine");
    common::copy_dir(&data, &pristine);

    let timing = Instant::now();
    reshard(&data, 3);
    let full = timing.elapsed();
    let seed: u64 = rand::random();
    println!("seed {seed}, a whole reshard takes {full:?}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut saw_old, mut saw_new) = (0, 0);
    for round in 0..rounds {
        std::fs::remove_dir_all(&data).unwrap();
        common::copy_dir(&pristine, &data);
        let mut child = Command::new(env!("CARGO_BIN_EXE_backup-data"))
            .args(["reshard", "--quiet", "--shards", "3", "--data-dir"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backup-data");
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        match shards_in_meta(&data).as_str() {
            "shards = 2" => {
                assert_eq!(
                    files_of(&data),
                    original,
                    "round {round}: changed after {delay:?}"
                );
                saw_old += 1;
            }
            "shards = 3" => saw_new += 1,
            other => panic!("round {round}: {other}"),
        }
        // The next reshard cleans up and completes (or there is nothing left to do).
        let out = backup_data(&[&"reshard", &"--data-dir", &data, &"--shards", &"3"]);
        assert!(
            out.status.success() || text(&out).contains("already"),
            "{}",
            text(&out)
        );
        let mut server = Server::start(&config_with_shards(root.path(), 3), &["--cores", "1"]);
        let mut client = server.connect();
        for i in (0..3000).step_by(97) {
            assert_eq!(
                client.get(&format!("k{i}")).map(|v| v.len()),
                Some(2000),
                "k{i}"
            );
        }
        drop(client);
        assert!(server.terminate().success());
        let leftovers: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".data.reshard-"))
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }
    println!("old {saw_old} times, new {saw_new} times");
}
