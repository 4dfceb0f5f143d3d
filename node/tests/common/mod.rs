//! Starting the real `terrace-server` binary for tests: on 127.0.0.1, a free port, its own
//! data dir; always killed when the handle is dropped.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wait_timeout::ChildExt as _;

/// How long a server may take to start or stop.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A count from the environment (stress tests), or `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ports handed out in this process: the tests of one binary run in parallel, and a port
/// released by one test could otherwise be handed to another before the first binds it.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// `N` distinct free ports on 127.0.0.1, never handed out before in this process (all bound
/// at once, then released for the servers to bind).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut listeners = Vec::new();
    for _ in 0..10_000 {
        if listeners.len() == N {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().expect("local addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            listeners.push(listener);
        }
    }
    assert_eq!(listeners.len(), N, "no {N} fresh ports");
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// A free port on 127.0.0.1 (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// A config for tests: small segments so a server starts fast and takes little disk.
pub fn write_config(dir: &Path, persistence: &str) -> PathBuf {
    let path = dir.join("test.toml");
    let text = format!(
        r#"
[cluster]
persistence = "{persistence}"
[storage]
shards = 8
segment_size = "2MiB"
capacity = "512MiB"
item_size_max = "1MiB"
[[servers]]
name = "t1"
host = "127.0.0.1"
client_port = 11211
data = "{}"
"#,
        dir.join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The `terrace-server` binary: this package's, or, from another package's tests (the tools
/// share this module), the one beside them, brought up to date first (once per process, in
/// the tests' own profile): a binary left from an older build would test old code.
pub fn server_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_terrace-server") {
        return path.into();
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test exe");
            let bin_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target dir");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
                "build",
                "-q",
                "-p",
                "terrace-node",
                "--bin",
                "terrace-server",
            ]);
            if bin_dir.file_name().is_some_and(|name| name == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "cargo build of terrace-server failed");
            bin_dir.join("terrace-server")
        })
        .clone()
}

/// A two-server mirror group config in `dir` (data dirs below it), permanent-store, with fast
/// health checks and a 500 ms election time unless `extra_cluster` sets one.
pub fn pair_config(
    dir: &Path,
    name: &str,
    (g1, g2, c1, c2): (u16, u16, u16, u16),
    extra_cluster: &str,
) -> PathBuf {
    let path = dir.join(name);
    let extra_cluster = if extra_cluster.contains("election_time") {
        extra_cluster.to_string()
    } else {
        format!("election_time = \"500ms\"\n{extra_cluster}")
    };
    let text = format!(
        r#"
[cluster]
persistence = "permanent-store"
health_check_interval = "100ms"
health_check_missed = 5
{extra_cluster}
[storage]
shards = 4
segment_size = "2MiB"
[[servers]]
name = "s1"
host = "127.0.0.1"
client_port = {c1}
group_port = {g1}
data = "{}"
[[servers]]
name = "s2"
host = "127.0.0.1"
client_port = {c2}
group_port = {g2}
data = "{}"
[[mirror_groups]]
name = "g1"
servers = ["s1", "s2"]
"#,
        dir.join("s1").display(),
        dir.join("s2").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running server.
pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    /// The `-f` config; none: the embedded default.
    pub config: Option<PathBuf>,
    /// The working directory relative paths resolve from; none: the test's own.
    pub cwd: Option<PathBuf>,
    pub extra_args: Vec<String>,
    pub stderr_log: PathBuf,
}

impl Server {
    /// Starts a server with `config` on a free port, waits until it listens.
    pub fn start(config: &Path, extra_args: &[&str]) -> Self {
        Self::start_at(config, free_port(), extra_args)
    }

    /// Starts a server with `config` listening on `port`, waits until it listens.
    pub fn start_at(config: &Path, port: u16, extra_args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port,
            config: Some(config.to_path_buf()),
            cwd: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            // One log per server: several may share a config (a mirror group).
            stderr_log: config.with_extension(format!("{port}.stderr.log")),
        };
        server.restart();
        server
    }

    /// Starts a server with no config (the embedded default, as `terrace-server` with no
    /// arguments) in the working directory `cwd`, on a free port; waits until it listens.
    pub fn start_default_in(cwd: &Path, extra_args: &[&str]) -> Self {
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            config: None,
            cwd: Some(cwd.to_path_buf()),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            stderr_log: cwd.join(format!("{port}.stderr.log")),
        };
        server.restart();
        server
    }

    /// Starts the server again (same port, config and arguments).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("stderr log");
        let mut command = Command::new(server_binary());
        if let Some(config) = &self.config {
            command.arg("-f").arg(config);
        }
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn terrace-server");
        // The server prints one line on stdout when every executor listens.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.contains("listening on") => {}
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "server did not start ({other:?}, {status:?}); stderr:\n{}",
                    std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
                );
            }
        }
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop within {START_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// Sends it `signal` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    }

    /// Waits until every thread of the process is stopped (after SIGSTOP: the signal takes
    /// effect a moment later, and a request sent meanwhile could still be served).
    pub fn wait_stopped(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("its threads")
                .filter_map(Result::ok)
                .all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        // `pid (comm) S ...`: the state follows the last ')'.
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                    })
                });
            if all_stopped {
                return;
            }
            assert!(Instant::now() < deadline, "server {pid} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw memcached text-protocol client.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads until the received bytes end with `terminator` (e.g. "END\r\n"), or fails.
    pub fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        let mut chunk = [0u8; 65536];
        while !self.buf.ends_with(terminator) {
            let n = self.stream.read(&mut chunk).expect("read (timed out?)");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
        std::mem::take(&mut self.buf)
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        let mut chunk = [0u8; 65536];
        while self.buf.len() < n {
            let got = self.stream.read(&mut chunk).expect("read (timed out?)");
            assert!(got > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..got]);
        }
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Sends `request` and reads one line of reply.
    pub fn call(&mut self, request: &str) -> String {
        self.send(request.as_bytes());
        String::from_utf8(self.read_until(b"\r\n")).expect("utf8")
    }

    /// Sends `request` and returns everything up to and including `END\r\n`.
    pub fn call_end(&mut self, request: &str) -> String {
        self.send(request.as_bytes());
        String::from_utf8(self.read_until(b"END\r\n")).expect("utf8")
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(self.stream.read(&mut chunk), Ok(0) | Err(_))
    }

    pub fn set(&mut self, key: &str, value: &str) -> String {
        self.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
    }

    /// The value of `key`, if any.
    pub fn get(&mut self, key: &str) -> Option<String> {
        let reply = self.call_end(&format!("get {key}\r\n"));
        let mut lines = reply.split("\r\n");
        let header = lines.next()?;
        if header == "END" {
            return None;
        }
        Some(lines.next().expect("value line").to_string())
    }
}

/// Sets `prefix{i}` = `v{i}` for `i` in `range`, pipelined in batches; every reply must be
/// STORED.
pub fn write_keys(port: u16, prefix: &str, range: std::ops::Range<u64>) {
    let mut c = Client::connect(port);
    let ids: Vec<u64> = range.collect();
    for batch in ids.chunks(200) {
        let mut request = String::new();
        for i in batch {
            let value = format!("v{i}");
            request.push_str(&format!(
                "set {prefix}{i} 0 0 {}\r\n{value}\r\n",
                value.len()
            ));
        }
        c.send(request.as_bytes());
        let expected = "STORED\r\n".repeat(batch.len());
        let got = c.read_exact_n(expected.len());
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }
}

/// Checks that `prefix{i}` = `v{i}` for every `i` in `range`, with multi-key gets.
pub fn check_keys(port: u16, prefix: &str, range: std::ops::Range<u64>) {
    let mut c = Client::connect(port);
    let ids: Vec<u64> = range.collect();
    for batch in ids.chunks(100) {
        let keys: Vec<String> = batch.iter().map(|i| format!("{prefix}{i}")).collect();
        let reply = c.call_end(&format!("get {}\r\n", keys.join(" ")));
        let mut expected = String::new();
        for i in batch {
            let value = format!("v{i}");
            expected.push_str(&format!(
                "VALUE {prefix}{i} 0 {}\r\n{value}\r\n",
                value.len()
            ));
        }
        expected.push_str("END\r\n");
        assert_eq!(reply, expected, "keys {prefix}{}..", batch[0]);
    }
}

/// What a writer saw.
#[derive(Default)]
pub struct Written {
    /// Keys acknowledged (value = key), with when.
    pub acked: Vec<(String, Instant)>,
    /// Replies other than STORED, and failed connections.
    pub errors: Vec<String>,
}

/// Writes `prefix-<n>` = `prefix-<n>` through `port`, one request at a time, until `stop`;
/// reconnects after an error.
pub fn writer(port: u16, prefix: String, stop: Arc<AtomicBool>) -> JoinHandle<Written> {
    std::thread::spawn(move || {
        let mut written = Written::default();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
                written.errors.push("connect failed".into());
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(40)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut stream = stream;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("{prefix}-{n}");
                n += 1;
                let request = format!("set {key} 0 0 {}\r\n{key}\r\n", key.len());
                let mut line = String::new();
                let ok = stream.write_all(request.as_bytes()).is_ok()
                    && reader.read_line(&mut line).is_ok_and(|read| read > 0);
                if ok && line == "STORED\r\n" {
                    written.acked.push((key, Instant::now()));
                    continue;
                }
                written.errors.push(format!("{key}: {line:?}"));
                break;
            }
        }
        written
    })
}

/// Every acknowledged key is on the server at `port`, with its value.
pub fn check_acked(port: u16, written: &Written) {
    let mut c = Client::connect(port);
    for batch in written.acked.chunks(100) {
        let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
        let reply = c.call_end(&format!("get {}\r\n", keys.join(" ")));
        let mut expected = String::new();
        for key in &keys {
            expected.push_str(&format!("VALUE {key} 0 {}\r\n{key}\r\n", key.len()));
        }
        expected.push_str("END\r\n");
        assert_eq!(reply, expected, "acknowledged writes missing");
    }
}

/// `stats cluster` of `server` as (name, value) pairs.
pub fn cluster_stats(server: &Server) -> Vec<(String, String)> {
    let reply = server.connect().call_end("stats cluster\r\n");
    reply
        .lines()
        .filter_map(|line| line.strip_prefix("STAT "))
        .filter_map(|line| line.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One value of `stats cluster`.
pub fn stat(server: &Server, name: &str) -> Option<String> {
    cluster_stats(server)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The number a `stats` reply gives for `name`.
#[allow(dead_code, reason = "not every test binary reads stats")]
pub fn number_stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// A pair of `pair_config` in `dir`, each server on `cores` cores: s1 the active, s2 its
/// PASSIVE-STANDBY; and their client ports.
#[allow(dead_code, reason = "not every test binary starts a pair")]
pub fn start_pair(dir: &Path, cores: &str) -> (Server, Server, (u16, u16)) {
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir, "pair.toml", (g1, g2, c1, c2), "");
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", cores]);
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    let s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", cores]);
    wait_for(&s2, "s2:state", "PASSIVE-STANDBY");
    (s1, s2, (c1, c2))
}

/// Waits (at most 30 s) until `server`'s `stats cluster` says `name` is `value`.
pub fn wait_for(server: &Server, name: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = stat(server, name);
        if now.as_deref() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, not {value}, after 30 s; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` to completion with its output captured, killing it after `limit`: a hung
/// client or installer fails the test instead of hanging it.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let Some(status) = child.wait_timeout(limit).expect("wait") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} did not finish within {limit:?}");
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Bound on installing a package (network).
pub const INSTALL_LIMIT: Duration = Duration::from_secs(600);

/// Whether `program` is on the PATH.
pub fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs Debian's `package` unless `present` says it is there already.
pub fn debian_package(package: &str, present: impl Fn() -> bool) {
    if present() {
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        output_within(
            command.env("DEBIAN_FRONTEND", "noninteractive").args(args),
            INSTALL_LIMIT,
        )
    };
    let install = ["install", "-y", "-q", package];
    if !apt(&install).status.success() {
        // A fresh machine may have no package lists yet.
        let _ = apt(&["update", "-q"]);
        let out = apt(&install);
        assert!(
            out.status.success(),
            "apt-get install {package} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Copies directory `from` to `to` (which must not exist), recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
