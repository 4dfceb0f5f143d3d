//! `backup-data` end to end: real servers, real snapshots, real restores.
//!
//! What a user relies on: a restored data dir serves exactly what was backed up (values,
//! flags, CAS, expiry, deletions); an online snapshot holds every write acknowledged before
//! it; any damaged byte is found and named; an interrupted restore never leaves a half data
//! dir; a running server's data dir is never read offline.
//!
//! `TERRACE_BACKUP_KILL_ROUNDS` sets the interrupted-restore rounds (default 3).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod cli;
#[path = "../../node/tests/common/mod.rs"]
mod common;

use cli::{TOOL_TIMEOUT, backup_data, json_of, text};
use common::{Client, Server, env_count, output_within, write_config};
use rand::{Rng as _, SeedableRng as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A config in `dir` (data in `dir/data`) with small segments, so that shards span several.
fn config(dir: &Path) -> PathBuf {
    write_config(dir, "permanent-store")
}

/// Every key's `gets` line and value (`VALUE key flags len cas` + data), or absent.
fn snapshot_of(client: &mut Client, keys: &[String]) -> BTreeMap<String, Option<String>> {
    keys.iter()
        .map(|key| {
            let reply = client.call_end(&format!("gets {key}\r\n"));
            let value = (reply != "END\r\n").then(|| reply.clone());
            (key.clone(), value)
        })
        .collect()
}

/// Segment files of a data dir: shard/name -> bytes.
fn segment_bytes(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for shard in std::fs::read_dir(data.join("shards")).expect("shards") {
        let shard = shard.expect("entry").path();
        for segment in std::fs::read_dir(&shard).expect("shard dir") {
            let segment = segment.expect("entry").path();
            let name = format!(
                "{}/{}",
                shard.file_name().expect("name").to_string_lossy(),
                segment.file_name().expect("name").to_string_lossy()
            );
            files.insert(name, std::fs::read(&segment).expect("read segment"));
        }
    }
    files
}

/// Loads a server with overwrites, deletes, touches, increments, expiring and expired items,
/// big values (several segments per shard). Returns every key used.
fn load(client: &mut Client, rounds: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let far_future = 2_000_000_000u64; // 2033-05-18, an absolute expiry
    for i in 0..400 {
        let key = format!("key:{i}");
        let value = format!("{i}-{}", "v".repeat(40_000 + i % 300));
        let exptime = match i % 4 {
            0 => 0,
            1 => 3600,
            2 => far_future,
            _ => 86_400 * 7,
        };
        assert_eq!(
            client.call(&format!(
                "set {key} {} {exptime} {}\r\n{value}\r\n",
                i % 5,
                value.len()
            )),
            "STORED\r\n"
        );
        keys.push(key);
    }
    for round in 0..rounds {
        for i in (0..400).step_by(3) {
            let value = format!("round {round} {}", "w".repeat(4000));
            client.set(&format!("key:{i}"), &value);
        }
    }
    for i in (0..400).step_by(10) {
        assert_eq!(client.call(&format!("delete key:{i}\r\n")), "DELETED\r\n");
    }
    for i in (1..400).step_by(7) {
        client.call(&format!("touch key:{i} 7200\r\n"));
    }
    assert_eq!(client.call("set counter 3 0 2\r\n40\r\n"), "STORED\r\n");
    assert_eq!(client.call("incr counter 2\r\n"), "42\r\n");
    assert_eq!(client.call("set gone 0 -1 1\r\nx\r\n"), "STORED\r\n");
    keys.push("counter".into());
    keys.push("gone".into());
    keys
}

#[test]
fn offline_round_trip_restores_exactly_what_was_there() {
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = config(root.path());
    let data = root.path().join("data");
    let snapshot = root.path().join("snapshot");
    let mut server = Server::start(&cfg, &["--cores", "2"]);
    let mut client = server.connect();
    let keys = load(&mut client, 3);
    let before = snapshot_of(&mut client, &keys);
    assert!(before.values().filter(|v| v.is_some()).count() > 300);
    assert_eq!(before["gone"], None);
    drop(client);
    assert!(server.terminate().success());

    let created = json_of(&[&"create", &"--data-dir", &data, &"--out", &snapshot]);
    assert_eq!(created["source"]["mode"], "offline");
    assert_eq!(created["source"]["server"], "t1");
    assert!(
        created["segments"].as_u64().expect("segments") > 8,
        "several segments per shard: {created}"
    );
    let verified = json_of(&[&"verify", &snapshot]);
    let live = before.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(verified["contents"]["keys"], live, "{verified}");
    assert_eq!(verified["contents"]["records"], created["records"]);

    // Restore into a new dir: the segments are byte-identical to the source up to their
    // last record (so every expiry and CAS is), and a server on it serves the same items.
    let restored = root.path().join("restored");
    json_of(&[&"restore", &snapshot, &"--data-dir", &restored]);
    let source_files = segment_bytes(&data);
    let restored_files = segment_bytes(&restored);
    // Every segment of the source is restored but the spares (prepared, never used: zero).
    for (name, bytes) in &source_files {
        assert!(
            restored_files.contains_key(name) || bytes.iter().all(|&b| b == 0),
            "{name} holds data but was not restored"
        );
    }
    for (name, bytes) in &restored_files {
        let source = source_files
            .get(name)
            .unwrap_or_else(|| panic!("{name} restored but not in the source"));
        assert_eq!(
            bytes.len(),
            source.len(),
            "{name}: restored at its full size"
        );
        assert!(bytes == source, "{name} differs from the source");
    }
    let restored_arg = restored.display().to_string();
    let mut on_restored = Server::start(&cfg, &["--cores", "2", "--data", &restored_arg]);
    let mut client = on_restored.connect();
    assert_eq!(snapshot_of(&mut client, &keys), before);

    // Incremental: more writes on the source, a second snapshot into the same directory
    // writes only what changed, and restoring it over the first restore (--force) keeps the
    // old contents aside.
    drop(client);
    assert!(on_restored.terminate().success());
    server.restart();
    let mut client = server.connect();
    client.set("key:1", "after the first snapshot");
    let after = snapshot_of(&mut client, &keys);
    drop(client);
    assert!(server.terminate().success());
    let second = json_of(&[&"create", &"--data-dir", &data, &"--out", &snapshot]);
    assert!(
        second["reused_files"].as_u64().expect("reused") >= 8,
        "{second}"
    );
    assert!(
        second["written_files"].as_u64().expect("written") >= 1,
        "{second}"
    );
    assert!(
        second["written_files"].as_u64() < created["written_files"].as_u64(),
        "{second}"
    );
    json_of(&[&"verify", &snapshot]);
    let refused = backup_data(&[&"restore", &snapshot, &"--data-dir", &restored]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("not empty"), "{}", text(&refused));
    let forced = json_of(&[&"restore", &snapshot, &"--data-dir", &restored, &"--force"]);
    let aside = PathBuf::from(
        forced["previous_contents_moved_to"]
            .as_str()
            .expect("old contents moved aside"),
    );
    assert!(aside.join("terrace-meta.toml").exists());
    on_restored.restart();
    let mut client = on_restored.connect();
    assert_eq!(snapshot_of(&mut client, &keys), after);
}

#[test]
fn online_snapshot_holds_every_write_acknowledged_before_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = config(root.path());
    let data = root.path().join("data");
    let snapshot = root.path().join("snapshot");
    let mut server = Server::start(&cfg, &["--cores", "2"]);
    let port = server.port;

    // A writer acknowledges key n only after the server acknowledged it; n increases.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut client = Client::connect(port);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 2_000_000 {
                let mut burst = String::new();
                for i in n..n + 20 {
                    let value = format!("value-{i}");
                    burst.push_str(&format!("set w:{i} 0 0 {}\r\n{value}\r\n", value.len()));
                }
                client.send(burst.as_bytes());
                assert_eq!(client.read_exact_n(8 * 20), b"STORED\r\n".repeat(20));
                n += 20;
                acked.store(n, Ordering::Release);
            }
            n
        })
    };
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::Acquire) < count {
            assert!(Instant::now() < deadline, "writer stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(2000);
    // Offline create must refuse the running server's data dir, and point at online mode.
    let refused = backup_data(&[&"create", &"--data-dir", &data, &"--out", &snapshot]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("running server"),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("--server"), "{}", text(&refused));
    assert!(!snapshot.exists(), "a refused create writes nothing");

    let acked_before = acked.load(Ordering::Acquire);
    let address = format!("127.0.0.1:{port}");
    let created = json_of(&[&"create", &"--server", &address, &"--out", &snapshot]);
    let acked_after = acked.load(Ordering::Acquire);
    wait_for(acked_after + 1000);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(server.terminate().success());
    assert_eq!(created["source"]["mode"], "online");
    let cut_lsns: Vec<u64> = created["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["last_lsn"].as_u64().expect("lsn"))
        .collect();
    assert_eq!(cut_lsns.len(), 8);
    let verified = json_of(&[&"verify", &snapshot]);
    assert_eq!(
        verified["contents"]["records"],
        cut_lsns.iter().sum::<u64>()
    );

    // The snapshot is the source's log cut at those LSNs: each restored segment is a prefix
    // of the source segment (which went on growing after the cut).
    let restored = root.path().join("restored");
    json_of(&[&"restore", &snapshot, &"--data-dir", &restored]);
    let source_files = segment_bytes(&data);
    for (name, bytes) in segment_bytes(&restored) {
        let source = &source_files[&name];
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        assert_eq!(bytes[..used], source[..used], "{name}");
    }
    let restored_arg = restored.display().to_string();
    let on_restored = Server::start(&cfg, &["--cores", "2", "--data", &restored_arg]);
    let mut client = on_restored.connect();
    let mut present = 0;
    for i in 0..written {
        let value = client.get(&format!("w:{i}"));
        if i < acked_before {
            assert_eq!(
                value.as_deref(),
                Some(format!("value-{i}").as_str()),
                "w:{i} was acknowledged before the cut"
            );
        }
        if let Some(value) = value {
            assert_eq!(value, format!("value-{i}"), "nothing invented");
            present += 1;
        }
    }
    assert!(present >= acked_before && present <= acked_after + 20);
    println!(
        "acknowledged before the cut {acked_before}, after {acked_after}, in the snapshot {present}"
    );
}

/// Flips bytes all over a snapshot: `verify` fails naming the file each time, `restore`
/// refuses. A missing file is reported as missing.
#[test]
fn any_damaged_byte_is_found_and_named() {
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = config(root.path());
    let data = root.path().join("data");
    let snapshot = root.path().join("snapshot");
    let mut server = Server::start(&cfg, &["--cores", "1"]);
    let mut client = server.connect();
    for i in 0..300 {
        client.set(&format!("k{i}"), &format!("value {i} {}", "x".repeat(i)));
    }
    drop(client);
    assert!(server.terminate().success());
    json_of(&[&"create", &"--data-dir", &data, &"--out", &snapshot]);
    let mut files = vec![snapshot.join("manifest.json")];
    for shard in std::fs::read_dir(snapshot.join("shards")).expect("shards") {
        for file in std::fs::read_dir(shard.expect("entry").path()).expect("shard") {
            files.push(file.expect("entry").path());
        }
    }
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let target = root.path().join("target");
    for round in 0..24 {
        let file = &files[round % files.len()];
        let original = std::fs::read(file).expect("read");
        // Header, first record, then anywhere.
        let at = match round / files.len() {
            0 => rng.random_range(0..original.len().min(64)),
            1 => rng.random_range(0..original.len().min(256)),
            _ => rng.random_range(0..original.len()),
        };
        let mut damaged = original.clone();
        damaged[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(file, &damaged).expect("write");
        let verify = backup_data(&[&"verify", &snapshot]);
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            verify.status.code(),
            Some(1),
            "byte {at} of {name}: {}",
            text(&verify)
        );
        assert!(
            text(&verify).contains(&name),
            "byte {at} of {name}: {}",
            text(&verify)
        );
        let restore = backup_data(&[&"restore", &snapshot, &"--data-dir", &target]);
        assert_eq!(restore.status.code(), Some(1), "{}", text(&restore));
        assert!(!target.exists(), "a refused restore leaves nothing");
        std::fs::write(file, &original).expect("write");
    }
    json_of(&[&"verify", &snapshot]);

    // A missing file.
    let segment = files.last().expect("a segment");
    let kept = std::fs::read(segment).expect("read");
    std::fs::remove_file(segment).expect("remove");
    let verify = backup_data(&[&"verify", &snapshot]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("missing"), "{}", text(&verify));
    // A truncated one.
    std::fs::write(segment, &kept[..kept.len() - 16]).expect("write");
    let verify = backup_data(&[&"verify", &snapshot]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("truncated"), "{}", text(&verify));
}

/// kill -9 at random moments of a restore over an existing data dir: afterwards the data dir
/// is exactly the old one or exactly the new one, and the next restore cleans up.
#[test]
fn interrupted_restore_leaves_the_old_or_the_new_data_dir() {
    let rounds = env_count("TERRACE_BACKUP_KILL_ROUNDS", 3);
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = config(root.path());
    let data = root.path().join("data");
    let (old_snapshot, new_snapshot) = (root.path().join("old"), root.path().join("new"));
    let mut server = Server::start(&cfg, &["--cores", "1"]);
    let mut client = server.connect();
    client.set("generation", "old");
    drop(client);
    assert!(server.terminate().success());
    json_of(&[&"create", &"--data-dir", &data, &"--out", &old_snapshot]);
    server.restart();
    let mut client = server.connect();
    client.set("generation", "new");
    for i in 0..2000 {
        client.set(&format!("bulk:{i}"), &"b".repeat(8000));
    }
    drop(client);
    assert!(server.terminate().success());
    json_of(&[&"create", &"--data-dir", &data, &"--out", &new_snapshot]);

    let reference = |snapshot: &Path, name: &str| {
        let dir = root.path().join(name);
        json_of(&[&"restore", &snapshot, &"--data-dir", &dir]);
        segment_bytes(&dir)
    };
    let (old, new) = (
        reference(&old_snapshot, "ref-old"),
        reference(&new_snapshot, "ref-new"),
    );
    let target = root.path().join("target");
    let timing = Instant::now();
    json_of(&[
        &"restore",
        &new_snapshot,
        &"--data-dir",
        &root.path().join("timing"),
    ]);
    let full = timing.elapsed();
    let seed: u64 = rand::random();
    println!("seed {seed}, a whole restore takes {full:?}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut saw_old, mut saw_new) = (0, 0);
    for round in 0..rounds {
        if target.exists() {
            std::fs::remove_dir_all(&target).expect("clear");
        }
        json_of(&[&"restore", &old_snapshot, &"--data-dir", &target]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_backup-data"))
            .args(["restore", "--force", "--quiet", "--data-dir"])
            .arg(&target)
            .arg(&new_snapshot)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backup-data");
        let delay = full.mul_f64(rng.random_range(0.0..1.2));
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let now = segment_bytes(&target);
        if now == old {
            saw_old += 1;
        } else if now == new {
            saw_new += 1;
        } else {
            panic!("round {round}: killed after {delay:?}, the data dir is neither old nor new");
        }
    }
    println!("old {saw_old} times, new {saw_new} times");
    // The next restore removes what an interrupted one left, and completes.
    let done = json_of(&[
        &"restore",
        &new_snapshot,
        &"--data-dir",
        &target,
        &"--force",
    ]);
    assert_eq!(segment_bytes(&target), new, "{done}");
    let leftovers: Vec<String> = std::fs::read_dir(root.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".target.restore-"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn refusals_and_bad_arguments_say_what_is_wrong() {
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = config(root.path());
    let data = root.path().join("data");
    let snapshot = root.path().join("snapshot");
    let mut server = Server::start(&cfg, &["--cores", "1"]);
    server.connect().set("k", "v");

    // A server's data dir: neither read offline nor restored over, --force or not.
    json_of(&[
        &"create",
        &"--server",
        &format!("127.0.0.1:{}", server.port),
        &"--out",
        &snapshot,
    ]);
    let over_running = backup_data(&[&"restore", &snapshot, &"--data-dir", &data, &"--force"]);
    assert_eq!(
        over_running.status.code(),
        Some(1),
        "{}",
        text(&over_running)
    );
    assert!(
        text(&over_running).contains("running server"),
        "{}",
        text(&over_running)
    );
    assert!(server.terminate().success());

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["create".into(), "--out".into(), "x".into()],
            2,
            "--data-dir",
        ),
        (
            vec!["verify".into(), "/nonexistent/snapshot".into()],
            1,
            "no such directory",
        ),
        (
            vec!["info".into(), root.path().display().to_string()],
            1,
            "missing",
        ),
        (
            vec![
                "create".into(),
                "--data-dir".into(),
                root.path().join("nothing").display().to_string(),
                "--out".into(),
                "y".into(),
            ],
            1,
            "no such directory",
        ),
        (
            vec![
                "create".into(),
                "--data-dir".into(),
                root.path().display().to_string(),
                "--out".into(),
                "y".into(),
            ],
            1,
            "not a Terrace data dir",
        ),
        (
            vec![
                "create".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--out".into(),
                data.join("inside").display().to_string(),
            ],
            1,
            "outside the data dir",
        ),
        (
            vec![
                "create".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--out".into(),
                root.path().display().to_string(),
            ],
            1,
            "overlaps",
        ),
        (
            vec![
                "create".into(),
                "--server".into(),
                "127.0.0.1:1".into(),
                "--out".into(),
                "z".into(),
            ],
            1,
            "cannot connect",
        ),
    ];
    for (args, code, says) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_backup-data"));
        command.args(&args).current_dir(root.path());
        let output = output_within(&mut command, TOOL_TIMEOUT);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&output)
        );
        assert!(text(&output).contains(says), "{args:?}: {}", text(&output));
    }
    // A non-empty directory that is not a snapshot is never written into.
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let output = backup_data(&[&"create", &"--data-dir", &data, &"--out", &foreign]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("not a snapshot"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read_dir(&foreign).expect("list").count(), 1);
    // info and list describe what the snapshot holds.
    let info = json_of(&[&"info", &snapshot]);
    assert_eq!(info["source"]["server"], "t1");
    assert_eq!(info["shards"].as_array().map(Vec::len), Some(8));
    let list = json_of(&[&"list", &snapshot]);
    assert_eq!(
        list.as_array().map(Vec::len),
        info["segments"].as_u64().map(|n| n as usize)
    );
}
