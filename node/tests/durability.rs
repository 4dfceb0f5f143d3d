//! kill -9 while clients write (permanent-store): after a restart every acknowledged write
//! is there with its flags, and nothing that was never written appears.
//!
//! Rounds: TERRACE_KILL_ROUNDS (default 3); seed: TERRACE_KILL_SEED.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{Client, Server, write_config};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a writer knows: per key, the values it sent, and the last one acknowledged.
#[derive(Default, Clone)]
struct Knowledge {
    /// key -> every value ever sent for it (acknowledged or not), in order.
    sent: HashMap<String, Vec<String>>,
    /// key -> index into `sent` of the last acknowledged value.
    acked: HashMap<String, usize>,
}

/// Writes `set`s on its own keys until the connection breaks; records what was acked.
fn writer(port: u16, id: usize, seed: u64, knowledge: Arc<Mutex<Knowledge>>, deadline: Instant) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut counter = 0u64;
    while Instant::now() < deadline {
        // A small pipeline of sets, then read their replies.
        let batch: Vec<(String, String)> = (0..rng.random_range(1..8))
            .map(|_| {
                counter += 1;
                let key = format!("w{id}-k{}", rng.random_range(0..40));
                let value = format!("{id}-{counter}-{}", "x".repeat(rng.random_range(0..200)));
                (key, value)
            })
            .collect();
        let mut request = Vec::new();
        {
            let mut k = knowledge.lock().unwrap();
            for (key, value) in &batch {
                request.extend_from_slice(
                    format!(
                        "set {key} {} 0 {}\r\n{value}\r\n",
                        counter % 1000,
                        value.len()
                    )
                    .as_bytes(),
                );
                k.sent.entry(key.clone()).or_default().push(value.clone());
            }
        }
        if stream.write_all(&request).is_err() {
            return;
        }
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.iter().filter(|&&b| b == b'\n').count() < batch.len() {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        let mut k = knowledge.lock().unwrap();
        for ((key, value), line) in batch.iter().zip(text.split("\r\n")) {
            assert_eq!(line, "STORED", "unexpected reply");
            let index = k.sent[key].iter().rposition(|v| v == value).unwrap();
            k.acked.insert(key.clone(), index);
        }
    }
}

/// What a writer thread runs: `(port, writer id, seed, shared knowledge, deadline)`.
type Writer<K> = fn(u16, usize, u64, Arc<Mutex<K>>, Instant);

/// Rounds (TERRACE_KILL_ROUNDS, default 3) of: 8 `writer` threads against a permanent-store
/// server, kill -9 at a random moment, restart, then `check(seed, round, client, knowledge)`.
fn kill_9_rounds<K: Default + Send + 'static>(
    salt: u64,
    writer: Writer<K>,
    mut check: impl FnMut(u64, u64, &mut Client, &mut K),
) {
    let rounds = common::env_count("TERRACE_KILL_ROUNDS", 3);
    let seed = common::env_count("TERRACE_KILL_SEED", 7);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "permanent-store");
    let mut server = Server::start(&config, &[]);
    let knowledge = Arc::new(Mutex::new(K::default()));
    let mut rng = SmallRng::seed_from_u64(seed ^ salt);
    for round in 0..rounds {
        let run_for = Duration::from_millis(rng.random_range(200..1200));
        let deadline = Instant::now() + run_for + Duration::from_secs(5);
        let writers: Vec<_> = (0..8)
            .map(|id| {
                let knowledge = Arc::clone(&knowledge);
                let port = server.port;
                let writer_seed = seed ^ (round << 8) ^ id as u64;
                std::thread::spawn(move || writer(port, id, writer_seed, knowledge, deadline))
            })
            .collect();
        std::thread::sleep(run_for);
        server.kill();
        for w in writers {
            w.join()
                .expect("writer panicked (a reply it did not expect?)");
        }
        server.restart();
        let mut c: Client = server.connect();
        check(seed, round, &mut c, &mut knowledge.lock().unwrap());
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    kill_9_rounds(0, writer, |seed, round, c, k| {
        let mut checked = 0;
        for (key, values) in &k.sent {
            let found = c.get(key);
            match (found, k.acked.get(key)) {
                (Some(value), Some(&acked)) => {
                    // The acknowledged value or a later one that was sent (its reply lost).
                    let at = values.iter().rposition(|v| *v == value);
                    assert!(
                        at.is_some_and(|at| at >= acked),
                        "seed {seed} round {round}: {key} holds an older or unknown value"
                    );
                }
                (Some(value), None) => assert!(
                    values.contains(&value),
                    "seed {seed} round {round}: {key} holds a value never written"
                ),
                (None, Some(_)) => {
                    panic!("seed {seed} round {round}: acknowledged {key} is lost")
                }
                (None, None) => {}
            }
            checked += 1;
        }
        assert!(checked > 0, "no writes happened");
        // Writes after a restart continue: settle the knowledge to what is there now.
        let keys: Vec<String> = k.sent.keys().cloned().collect();
        for key in keys {
            match c.get(&key) {
                Some(value) => {
                    k.sent.insert(key.clone(), vec![value]);
                    k.acked.insert(key, 0);
                }
                None => {
                    k.sent.remove(&key);
                    k.acked.remove(&key);
                }
            }
        }
    });
}

/// A key's content: its value, or nothing.
type Content = Option<String>;

/// The operations of the mixed kill -9 test.
#[derive(Debug, Clone)]
enum MixedOp {
    Set(String),
    Add(String),
    Append(String),
    Incr(u64),
    Delete,
}

impl MixedOp {
    fn request(&self, key: &str) -> String {
        match self {
            Self::Set(v) => format!("set {key} 0 0 {}\r\n{v}\r\n", v.len()),
            Self::Add(v) => format!("add {key} 0 0 {}\r\n{v}\r\n", v.len()),
            Self::Append(v) => format!("append {key} 0 0 {}\r\n{v}\r\n", v.len()),
            Self::Incr(by) => format!("incr {key} {by}\r\n"),
            Self::Delete => format!("delete {key}\r\n"),
        }
    }

    /// The content after this operation on `before`, and memcached's reply line.
    fn apply(&self, before: &Content) -> (Content, String) {
        let stored = |c: Content| (c, "STORED".to_string());
        match (self, before) {
            (Self::Set(v), _) => stored(Some(v.clone())),
            (Self::Add(v), None) => stored(Some(v.clone())),
            (Self::Add(_), Some(_)) => (before.clone(), "NOT_STORED".into()),
            (Self::Append(v), Some(old)) => stored(Some(format!("{old}{v}"))),
            (Self::Append(_), None) => (None, "NOT_STORED".into()),
            (Self::Incr(by), Some(old)) => {
                let n: u64 = old.parse().expect("the model incrs numbers only");
                let new = n.wrapping_add(*by).to_string();
                (Some(new.clone()), new)
            }
            (Self::Incr(_), None) => (None, "NOT_FOUND".into()),
            (Self::Delete, Some(_)) => (None, "DELETED".into()),
            (Self::Delete, None) => (None, "NOT_FOUND".into()),
        }
    }
}

/// Per key: the content every acknowledged operation adds up to, and the operation sent
/// but not acknowledged yet (it may or may not have happened when the server died).
#[derive(Default, Clone)]
struct Ledger {
    acked: HashMap<String, Content>,
    pending: HashMap<String, MixedOp>,
}

/// One operation at a time on its own keys; each reply must be the one the model predicts.
fn mixed_writer(port: u16, id: usize, seed: u64, ledger: Arc<Mutex<Ledger>>, deadline: Instant) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut counter = 0u64;
    while Instant::now() < deadline {
        let key = format!("m{id}-k{}", rng.random_range(0..12));
        let before = ledger.lock().unwrap().acked.get(&key).cloned().flatten();
        counter += 1;
        // Values are decimal numbers, so incr applies to any of them; short, so that
        // appends and increments never overflow a u64.
        let fresh = format!("{}", rng.random_range(1..1000u64) * 1000 + counter % 1000);
        let numeric_room = before.as_ref().is_none_or(|v| v.len() < 12);
        let op = match rng.random_range(0..10) {
            0..=2 => MixedOp::Set(fresh),
            3 => MixedOp::Add(fresh),
            4 | 5 if numeric_room => MixedOp::Append(format!("{}", rng.random_range(0..10))),
            6 | 7 => MixedOp::Incr(rng.random_range(1..100)),
            8 | 9 => MixedOp::Delete,
            _ => MixedOp::Set(fresh),
        };
        ledger
            .lock()
            .unwrap()
            .pending
            .insert(key.clone(), op.clone());
        if stream.write_all(op.request(&key).as_bytes()).is_err() {
            return;
        }
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => return,
            }
        }
        let reply = String::from_utf8_lossy(&line[..line.len() - 2]).to_string();
        let (after, expected) = op.apply(&before);
        assert_eq!(reply, expected, "{op:?} on {key} holding {before:?}");
        let mut l = ledger.lock().unwrap();
        l.pending.remove(&key);
        l.acked.insert(key, after);
    }
}

/// kill -9 while clients set, add, append, incr and delete (permanent-store): after a
/// restart every key holds what its acknowledged operations add up to, or that plus the
/// one operation whose reply was lost. An acknowledged delete stays deleted, an
/// acknowledged incr is not undone. Rounds: TERRACE_KILL_ROUNDS (default 3).
#[test]
fn acknowledged_deletes_appends_and_increments_survive_kill_9() {
    let mut operations = 0;
    kill_9_rounds(0x5eed, mixed_writer, |seed, round, c, l: &mut Ledger| {
        operations += l.acked.len();
        let keys: std::collections::BTreeSet<String> =
            l.acked.keys().chain(l.pending.keys()).cloned().collect();
        for key in keys {
            let acked = l.acked.get(&key).cloned().flatten();
            let mut allowed = vec![acked.clone()];
            if let Some(op) = l.pending.get(&key) {
                allowed.push(op.apply(&acked).0);
            }
            let found = c.get(&key);
            assert!(
                allowed.contains(&found),
                "seed {seed} round {round}: {key} holds {found:?}, allowed {allowed:?}"
            );
            // The next round starts from what is there.
            l.acked.insert(key.clone(), found);
            l.pending.remove(&key);
        }
    });
    assert!(operations > 0, "no operations happened");
}
