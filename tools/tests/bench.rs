//! terrace-bench against a real terrace-server (exact counts) and against servers that
//! misbehave (errors reported, never a hang or a panic).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wait_timeout::ChildExt as _;

const BENCH: &str = env!("CARGO_BIN_EXE_terrace-bench");

/// The terrace-server binary next to terrace-bench (built by `cargo test --workspace`;
/// built here when this crate's tests run alone).
fn server_binary() -> PathBuf {
    let path = PathBuf::from(BENCH).with_file_name("terrace-server");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "terrace-node", "--bin", "terrace-server"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build terrace-server failed");
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary-swap-only terrace-server on a free port; killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(server_binary())
            .args([
                "--cores",
                "1",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data",
            ])
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "server did not start");
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => panic!("server exited before listening"),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs terrace-bench with `args` (and --json --quiet), bounded in time.
fn bench(args: &[&str]) -> (std::process::ExitStatus, serde_json::Value, String) {
    let mut child = Command::new(BENCH)
        .args(args)
        .args(["--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = child.wait_timeout(Duration::from_secs(60)).unwrap() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("terrace-bench {args:?} did not finish in 60 s");
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (status, json, stderr)
}

fn result(json: &serde_json::Value) -> &serde_json::Value {
    &json["results"][0]
}

/// In both memcached protocols: the classic commands and the meta ones (`ms`/`mg`).
#[test]
fn exact_request_counts_with_hits_and_misses_from_the_preloaded_keys() {
    for protocol in ["memcache", "meta"] {
        exact_counts(protocol);
    }
}

fn exact_counts(protocol: &str) {
    let server = Server::start();
    let addr = format!("127.0.0.1:{}", server.port);
    // Preload keys 0..100, in order, each once.
    let (status, json, stderr) = bench(&[
        "--server",
        &addr,
        "--protocol",
        protocol,
        "--requests",
        "100",
        "--keys",
        "100",
        "--connections",
        "4",
        "--key-pattern",
        "sequential",
        "--ratio",
        "1:0",
        "--pipeline",
        "5",
    ]);
    assert!(status.success(), "{protocol}: {stderr}");
    let r = result(&json);
    assert_eq!(
        (r["requests"].as_u64(), r["stored"].as_u64()),
        (Some(100), Some(100)),
        "{r}"
    );
    assert_eq!(r["errors"], 0);
    assert_eq!(r["set"]["count"], 100);

    // Two connections walk 200 keys from their own halves: the first reads only the 100
    // preloaded keys (hits), the second only keys never written (misses).
    let (status, json, stderr) = bench(&[
        "--server",
        &addr,
        "--protocol",
        protocol,
        "--requests",
        "1000",
        "--keys",
        "200",
        "--connections",
        "2",
        "--key-pattern",
        "sequential",
        "--ratio",
        "0:1",
        "--pipeline",
        "7",
    ]);
    assert!(status.success(), "{protocol}: {stderr}");
    let r = result(&json);
    assert_eq!(r["requests"], 1000, "{r}");
    assert_eq!(
        (r["hits"].as_u64(), r["misses"].as_u64()),
        (Some(500), Some(500)),
        "{r}"
    );
    assert_eq!(r["errors"], 0);
    assert_eq!(r["get"]["count"], 1000);
    assert!(r["get"]["p50_us"].as_f64().unwrap() > 0.0);
}

/// A fake server on a free port: each accepted connection is handed to `serve`.
fn fake_server(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn answer_every_request_with(mut stream: TcpStream, reply: &[u8]) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(reply).is_err() {
            return;
        }
    }
}

#[test]
fn misbehaving_servers_are_reported_as_errors_not_hangs() {
    let garbage = fake_server(|s| answer_every_request_with(s, b"HELLO THERE\r\n"));
    let closer = fake_server(drop);
    let silent = fake_server(|s| {
        std::thread::sleep(Duration::from_secs(30));
        drop(s);
    });
    for (port, error) in [
        (garbage, "garbage reply: HELLO THERE"),
        (closer, "connection closed by the server"),
        (silent, "no reply within"),
    ] {
        let addr = format!("127.0.0.1:{port}");
        let (status, json, stderr) = bench(&[
            "--server",
            &addr,
            "--requests",
            "6",
            "--connections",
            "2",
            "--timeout",
            "300ms",
        ]);
        assert!(status.success(), "{addr}: {stderr}");
        let r = result(&json);
        assert_eq!(r["requests"], 6, "{r}");
        assert_eq!(r["errors"], 6, "{r}");
        let by_reply = r["errors_by_reply"].as_object().unwrap();
        assert!(
            by_reply.keys().any(|k| k.starts_with(error)),
            "{error}: {r}"
        );
    }
}

#[test]
fn a_server_that_is_not_there_stops_the_run_with_a_message() {
    let port = free_port();
    let (status, json, _) = bench(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "--requests",
        "10",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(status.code(), Some(1));
    let why = result(&json)["failure"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.starts_with("cannot connect"), "{json}");
}

#[test]
fn bad_options_exit_2_naming_the_option() {
    let out = Command::new(BENCH)
        .args(["--pipeline", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pipeline"));
}

#[test]
fn open_loop_sends_exactly_the_requests_at_the_rate_and_writes_hgrm_and_plot() {
    let server = Server::start();
    let addr = format!("127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("lat.hgrm");
    let plot = dir.path().join("lat.svg");
    let started = Instant::now();
    let (status, json, stderr) = bench(&[
        "--server",
        &addr,
        "--requests",
        "400",
        "--rate",
        "1000",
        "--connections",
        "4",
        "--ratio",
        "1:1",
        "--keys",
        "50",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    assert!(status.success(), "{stderr}");
    let r = result(&json);
    assert_eq!(r["requests"], 400, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    let (sets, gets) = (
        r["set"]["count"].as_u64().unwrap(),
        r["get"]["count"].as_u64().unwrap(),
    );
    assert_eq!(sets + gets, 400);
    assert_eq!(r["stored"].as_u64(), Some(sets));
    // 400 requests at 1000/s cannot finish in much less than 0.4 s: the loop is paced.
    assert!(took >= Duration::from_millis(350), "{took:?}");
    // One distribution per operation, and a plot with a line for each.
    for op in ["set", "get"] {
        let text = std::fs::read_to_string(dir.path().join(format!("lat.0.{op}.hgrm"))).unwrap();
        assert!(
            text.contains("Percentile") && text.contains("#[Max"),
            "{text}"
        );
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}
