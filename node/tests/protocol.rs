//! The memcached text protocol over real TCP against the real binary: exact reply bytes.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{Client, Server, write_config};

fn server(persistence: &str, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), persistence);
    let server = Server::start(&config, extra);
    (dir, server)
}

#[test]
fn every_command_answers_like_memcached() {
    let (_dir, server) = server("permanent-store", &["--enable-debugtime"]);
    let mut c = server.connect();
    let steps: &[(&str, &str)] = &[
        ("set k 5 0 3\r\nabc\r\n", "STORED\r\n"),
        ("get k\r\n", "VALUE k 5 3\r\nabc\r\nEND\r\n"),
        ("add k 0 0 1\r\nx\r\n", "NOT_STORED\r\n"),
        ("add k2 0 0 1\r\nx\r\n", "STORED\r\n"),
        ("replace nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n"),
        ("replace k2 7 0 2\r\nyy\r\n", "STORED\r\n"),
        ("append k 0 0 2\r\nde\r\n", "STORED\r\n"),
        ("prepend k 0 0 2\r\n__\r\n", "STORED\r\n"),
        (
            "get k k2\r\n",
            "VALUE k 5 7\r\n__abcde\r\nVALUE k2 7 2\r\nyy\r\nEND\r\n",
        ),
        ("append nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n"),
        ("set n 0 0 2\r\n10\r\n", "STORED\r\n"),
        ("incr n 5\r\n", "15\r\n"),
        ("decr n 100\r\n", "0\r\n"),
        ("incr nope 1\r\n", "NOT_FOUND\r\n"),
        (
            "incr k 1\r\n",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            "incr n abc\r\n",
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        ),
        ("set big 0 0 20\r\n18446744073709551615\r\n", "STORED\r\n"),
        ("incr big 1\r\n", "0\r\n"),
        ("touch n 100\r\n", "TOUCHED\r\n"),
        ("touch nope 100\r\n", "NOT_FOUND\r\n"),
        (
            "touch n abc\r\n",
            "CLIENT_ERROR invalid exptime argument\r\n",
        ),
        ("delete k2\r\n", "DELETED\r\n"),
        ("delete k2\r\n", "NOT_FOUND\r\n"),
        (
            "delete k 1\r\n",
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        ("get k2\r\n", "END\r\n"),
        ("cas k 0 0 1 1\r\nx\r\n", "EXISTS\r\n"),
        ("cas nope 0 0 1 1\r\nx\r\n", "NOT_FOUND\r\n"),
        ("bogus\r\n", "ERROR\r\n"),
        ("set k 0 0\r\n", "ERROR\r\n"),
        (
            "set k 0 0 1\r\nab\r\n",
            "CLIENT_ERROR bad data chunk\r\nERROR\r\n",
        ),
        ("verbosity 1\r\n", "OK\r\n"),
        ("stats nonsense\r\n", "ERROR\r\n"),
        ("stats reset\r\n", "RESET\r\n"),
        ("gat 100 nope\r\n", "END\r\n"),
        ("gat x k\r\n", "CLIENT_ERROR invalid exptime argument\r\n"),
    ];
    for (request, expected) in steps {
        let got = c.call_exact(request, expected.len());
        assert_eq!(&got, expected, "request {request:?}");
    }
    // gets returns a CAS that cas accepts once.
    let reply = c.call_end("gets k\r\n");
    let cas: u64 = reply
        .split("\r\n")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c.call(&format!("cas k 3 0 1 {cas}\r\nz\r\n")), "STORED\r\n");
    assert_eq!(c.call(&format!("cas k 3 0 1 {cas}\r\nw\r\n")), "EXISTS\r\n");
    let reply = c.call_end("gats 0 k\r\n");
    assert!(reply.starts_with("VALUE k 3 1 "), "{reply}");
    assert!(c.call("version\r\n").starts_with("VERSION "));
    let stats = c.call_end("stats\r\n");
    for name in [
        "cmd_set",
        "terrace_segments",
        "terrace_segments_compacted",
        "terrace_compaction_bytes_rewritten",
        "terrace_items_reclaimed",
        "terrace_tombstones_dropped",
        "terrace_tombstone_covers",
    ] {
        assert!(stats.contains(&format!("STAT {name} ")), "{name}: {stats}");
    }
    assert!(
        c.call_end("stats settings\r\n")
            .contains("STAT item_size_max 1048576\r\n")
    );

    // Expiry, with the server clock moved by debugtime.
    assert_eq!(c.call("set e 0 100 1\r\nx\r\n"), "STORED\r\n");
    assert_eq!(c.call("set gone 0 -1 1\r\nx\r\n"), "STORED\r\n");
    assert_eq!(c.get("gone"), None);
    assert_eq!(c.get("e").as_deref(), Some("x"));
    assert_eq!(c.call("debugtime 101\r\n"), "OK\r\n");
    assert_eq!(c.get("e"), None);
    // flush_all with a delay, then now.
    c.set("f", "1");
    assert_eq!(c.call("flush_all 10\r\n"), "OK\r\n");
    assert_eq!(c.get("f").as_deref(), Some("1"));
    assert_eq!(c.call("debugtime 11\r\n"), "OK\r\n");
    assert_eq!(c.get("f"), None);
    c.set("after", "1");
    assert_eq!(c.call("flush_all\r\n"), "OK\r\n");
    assert_eq!(c.get("after"), None);
    c.send(b"quit\r\n");
    assert!(c.is_closed());
}

#[test]
fn debugtime_is_refused_unless_enabled() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    assert_eq!(c.call("debugtime 100\r\n"), "ERROR\r\n");
}

#[test]
fn noreply_pipelining_and_limits() {
    let (_dir, server) = server("permanent-store", &[]);
    let mut c = server.connect();
    // noreply: no reply at all, but the effect happens.
    c.send(b"set a 0 0 1 noreply\r\n1\r\nincr a 4 noreply\r\ntouch a 0 noreply\r\ndelete zz noreply\r\nflush_all 0 noreply\r\nset b 0 0 1 noreply\r\n2\r\n");
    assert_eq!(c.call_end("get a b\r\n"), "VALUE b 0 1\r\n2\r\nEND\r\n");

    // Thousands of requests in one write, replies in order, across shards and cores.
    let n = 3000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(
            format!("set key{i} {i} 0 {}\r\nv{i}\r\n", format!("v{i}").len()).as_bytes(),
        );
    }
    for i in 0..n {
        batch.extend_from_slice(format!("get key{i}\r\n").as_bytes());
    }
    c.send(&batch);
    let mut expected = String::new();
    for _ in 0..n {
        expected.push_str("STORED\r\n");
    }
    for i in 0..n {
        expected.push_str(&format!(
            "VALUE key{i} {i} {}\r\nv{i}\r\nEND\r\n",
            format!("v{i}").len()
        ));
    }
    let got = String::from_utf8(c.read_exact_n(expected.len())).unwrap();
    assert!(got == expected, "pipelined replies out of order or wrong");

    // One multi-key get across every shard, in request order, misses skipped.
    let mut line = String::from("get");
    let mut expected = String::new();
    for i in (0..n).step_by(7) {
        line.push_str(&format!(" key{i} missing{i}"));
        expected.push_str(&format!(
            "VALUE key{i} {i} {}\r\nv{i}\r\n",
            format!("v{i}").len()
        ));
    }
    expected.push_str("END\r\n");
    assert_eq!(c.call_end(&format!("{line}\r\n")), expected);

    // Keys: 250 bytes is fine, 251 is not.
    let k250 = "k".repeat(250);
    assert_eq!(c.set(&k250, "x"), "STORED\r\n");
    assert_eq!(c.get(&k250).as_deref(), Some("x"));
    let k251 = "k".repeat(251);
    assert_eq!(
        c.set(&k251, "x"),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        c.call(&format!("get {k251}\r\n")),
        "CLIENT_ERROR bad command line format\r\n"
    );

    // Values: 1 MiB is fine; larger is refused, swallowed, and a set drops the old value.
    let mib = "m".repeat(1 << 20);
    assert_eq!(c.set("v", &mib), "STORED\r\n");
    assert_eq!(c.get("v").map(|v| v.len()), Some(1 << 20));
    let over = "o".repeat((1 << 20) + 1);
    assert_eq!(
        c.set("v", &over),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(c.get("v"), None);
    c.set("w", "keep");
    assert_eq!(
        c.call(&format!("add w 0 0 {}\r\n{over}\r\n", over.len())),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(c.get("w").as_deref(), Some("keep"));

    // Bare \n line endings.
    c.send(b"set bare 0 0 2\nhi\r\nget bare\n");
    assert_eq!(
        String::from_utf8(c.read_until(b"END\r\n")).unwrap(),
        "STORED\r\nVALUE bare 0 2\r\nhi\r\nEND\r\n"
    );

    // A line over 2048 bytes without a newline closes the connection.
    let mut long = server.connect();
    long.send(&vec![b'x'; 3000]);
    assert!(long.is_closed());
    // The server is fine.
    assert_eq!(c.get("bare").as_deref(), Some("hi"));
}

trait CallExact {
    fn call_exact(&mut self, request: &str, len: usize) -> String;
}

impl CallExact for Client {
    fn call_exact(&mut self, request: &str, len: usize) -> String {
        self.send(request.as_bytes());
        String::from_utf8(self.read_exact_n(len)).unwrap()
    }
}

/// `backup cut` answers the cut's shape (the whole exchange is tested with `backup-data` in
/// `tools/tests/backup.rs`); a cut is released once, by its connection only; anything else
/// after `backup` is an error.
#[test]
fn backup_admin_command() {
    let (dir, server) = server("permanent-store", &["--cores", "2"]);
    let mut c = server.connect();
    assert_eq!(c.set("k", "v"), "STORED\r\n");
    let reply = c.call_end("backup cut\r\n");
    let lines: Vec<&str> = reply.trim_end().split("\r\n").collect();
    let head: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!((head[0], head[2]), ("CUT", "8"), "{reply}");
    let data_dir = std::fs::canonicalize(dir.path().join("data")).expect("data dir");
    assert_eq!(
        lines[1],
        format!("DATA_DIR {}", data_dir.display()),
        "{reply}"
    );
    let shards: Vec<&&str> = lines.iter().filter(|l| l.starts_with("SHARD ")).collect();
    assert_eq!(shards.len(), 8, "{reply}");
    // One record was written: exactly one shard's last LSN is 1.
    let lsns: Vec<u64> = shards
        .iter()
        .map(|l| l.split(' ').nth(2).expect("lsn").parse().expect("number"))
        .collect();
    assert_eq!(lsns.iter().sum::<u64>(), 1, "{reply}");
    assert_eq!(lines.last(), Some(&"END"));
    let id = head[1];
    let mut other = server.connect();
    assert_eq!(
        other.call(&format!("backup release {id}\r\n")),
        "NOT_FOUND\r\n"
    );
    assert_eq!(c.call(&format!("backup release {id}\r\n")), "RELEASED\r\n");
    assert_eq!(c.call(&format!("backup release {id}\r\n")), "NOT_FOUND\r\n");
    for bad in [
        "backup\r\n",
        "backup cut now\r\n",
        "backup release\r\n",
        "backup fly\r\n",
    ] {
        assert_eq!(c.call(bad), "ERROR\r\n", "{bad}");
    }
    // Still serving.
    assert_eq!(c.get("k").as_deref(), Some("v"));
}

/// `shutdown` is memcached's: refused unless the server was started to allow it
/// (`--enable-shutdown`, memcached's -A); with it, `OK` and a clean stop.
#[test]
fn shutdown_only_when_enabled() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    assert_eq!(c.call("shutdown\r\n"), "ERROR: shutdown not enabled\r\n");
    assert_eq!(
        c.call("shutdown now\r\n"),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(c.set("k", "v"), "STORED\r\n");
    let (_dir, mut server) = server_with_shutdown();
    assert_eq!(server.connect().call("shutdown\r\n"), "OK\r\n");
    let mut child = server.child.take().expect("running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

fn server_with_shutdown() -> (tempfile::TempDir, Server) {
    server("permanent-store", &["--enable-shutdown"])
}

/// Sends `request` followed by `version\r\n` and returns everything answered up to and
/// including the version line: a reply that should not have been sent shows up before it.
fn replies_before_version(c: &mut Client, request: &[u8]) -> String {
    let version = c.call("version\r\n");
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"version\r\n");
    c.send(&bytes);
    let got = String::from_utf8(c.read_until(version.as_bytes())).unwrap();
    got.strip_suffix(&version).unwrap().to_string()
}

/// memcached 1.6.18 answers nothing at all to a well-formed `noreply` request, errors
/// included. Terrace sent the error of a `noreply` request for a key of the connection's own
/// core (and nothing for a key of another core), the error of an oversized `set ... noreply`,
/// and `CLIENT_ERROR bad data chunk` after a `noreply` set: a client pipelining `noreply`
/// writes then read replies it never asked for and paired later replies wrongly.
#[test]
fn noreply_requests_get_no_error_on_any_core() {
    let (_dir, server) = server("temporary-swap-only", &["--cores", "2"]);
    let mut c = server.connect();
    // Enough keys that both cores own some of them.
    for i in 0..16 {
        let request = format!("set n{i} 0 0 3\r\nabc\r\nincr n{i} 1 noreply\r\n");
        assert_eq!(
            replies_before_version(&mut c, request.as_bytes()),
            "STORED\r\n",
            "key n{i}"
        );
        assert_eq!(
            replies_before_version(&mut c, format!("touch n{i} x noreply\r\n").as_bytes()),
            ""
        );
    }
    // A refused oversized set: nothing answered, the data skipped, the old value gone.
    assert_eq!(c.set("big", "old"), "STORED\r\n");
    let mut request = b"set big 0 0 2000000 noreply\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 2_000_000));
    request.extend_from_slice(b"\r\n");
    assert_eq!(replies_before_version(&mut c, &request), "");
    assert_eq!(c.get("big"), None);
    // A bad data chunk is not answered; the stray `\r\n` after it is an empty line (`ERROR`),
    // exactly as memcached.
    assert_eq!(
        replies_before_version(&mut c, b"set k 0 0 1 noreply\r\nAB\r\n"),
        "ERROR\r\n"
    );
    assert_eq!(
        replies_before_version(&mut c, b"delete k 5 noreply\r\nflush_all x noreply\r\n"),
        ""
    );
}

/// incr/decr read a stored counter and a delta as memcached's safe_strtoull does (checked
/// against 1.6.18): leading whitespace, a `+`, leading zeros and anything after a space are
/// fine; `12abc`, `-1` and numbers past 2^64 - 1 are not. Numeric arguments take a `+` too:
/// `set e 0 0 +1` stores, and its data block is never run as a command.
#[test]
fn numbers_are_read_as_memcached_reads_them() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    for (value, incr, reply) in [
        (" 12", "1", "13\r\n"),
        ("12 abc", "1", "13\r\n"),
        ("000000000000000000012", "1", "13\r\n"),
        ("5", "+3", "8\r\n"),
        ("-0", "1", "1\r\n"),
        (
            "12abc",
            "1",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            "-1",
            "1",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            "18446744073709551616",
            "1",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        ("5", "-1", "CLIENT_ERROR invalid numeric delta argument\r\n"),
        (
            "5",
            "3abc",
            "CLIENT_ERROR invalid numeric delta argument\r\n",
        ),
    ] {
        assert_eq!(c.set("n", value), "STORED\r\n");
        assert_eq!(
            c.call(&format!("incr n {incr}\r\n")),
            reply,
            "{value:?} + {incr}"
        );
    }
    assert_eq!(
        replies_before_version(&mut c, b"set e +5 +100 +1\r\nA\r\n"),
        "STORED\r\n"
    );
    assert_eq!(c.call_end("get e\r\n"), "VALUE e 5 1\r\nA\r\nEND\r\n");
    assert_eq!(c.call("touch e +10\r\n"), "TOUCHED\r\n");
}

/// A wrong number of arguments is `ERROR` in memcached 1.6.18, checked before any argument
/// is read; Terrace answered `CLIENT_ERROR bad command line format` (and took `delete
/// noreply` for a delete without a key, where memcached deletes the key "noreply").
#[test]
fn argument_counts_are_checked_as_memcached_checks_them() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    for (request, reply) in [
        ("set k 0 0\r\n", "ERROR\r\n"),
        // The data line of a cas with a missing unique runs as a command, as memcached.
        ("cas k 0 0 1\r\nA\r\n", "ERROR\r\nERROR\r\n"),
        ("delete\r\n", "ERROR\r\n"),
        ("delete a b c d\r\n", "ERROR\r\n"),
        ("flush_all 1 2 3\r\n", "ERROR\r\n"),
        ("delete noreply\r\n", "NOT_FOUND\r\n"),
        (
            "flush_all abc\r\n",
            "CLIENT_ERROR invalid exptime argument\r\n",
        ),
        ("set k 0 0 1 extra\r\nA\r\n", "STORED\r\n"),
        (
            "incr k 1 extra\r\n",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        ("touch k 10 extra\r\n", "TOUCHED\r\n"),
        (
            "delete k extra\r\n",
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        ("delete k 0\r\n", "DELETED\r\n"),
    ] {
        assert_eq!(
            replies_before_version(&mut c, request.as_bytes()),
            reply,
            "{request:?}"
        );
    }
    assert_eq!(c.set("noreply", "x"), "STORED\r\n");
    assert_eq!(c.call("delete noreply\r\n"), "DELETED\r\n");
}

/// memcached 1.6.18 returns the item a `gat`/`gats` touches even when the new exptime is
/// already past, and only then is it gone; `gat 10` with no key answers `END`. Terrace
/// answered a bare `END` (the value was lost unseen) and `ERROR`.
#[test]
fn gat_returns_the_item_it_expires_and_takes_no_keys() {
    let (_dir, server) = server("temporary-swap-only", &["--cores", "2"]);
    let mut c = server.connect();
    // Keys on both cores.
    for key in ["g", "h", "i", "j"] {
        assert_eq!(c.set(key, "A"), "STORED\r\n");
        assert_eq!(
            c.call_end(&format!("gat -1 {key}\r\n")),
            format!("VALUE {key} 0 1\r\nA\r\nEND\r\n")
        );
        assert_eq!(c.call_end(&format!("get {key}\r\n")), "END\r\n");
    }
    assert_eq!(c.set("g", "B"), "STORED\r\n");
    let reply = c.call_end("gats -1 g\r\n");
    assert!(reply.starts_with("VALUE g 0 1 "), "{reply}");
    assert_eq!(c.call_end("gets g\r\n"), "END\r\n");
    assert_eq!(c.call_end("gat 10\r\n"), "END\r\n");
    assert_eq!(c.call_end("gats 10\r\n"), "END\r\n");
    assert_eq!(c.call("gat\r\n"), "ERROR\r\n");
}

/// The receive buffer holds the largest request: a set line whose newline is at offset 2048
/// (memcached's line limit) and a value of `item_size_max`. Terrace's cap was one byte short
/// (it forgot the newline) and reset such a connection. A line longer than 2048 bytes whose
/// newline arrives with it is run, as memcached 1.6.18 runs it; memcached also looks past up
/// to 100 leading spaces for a long `get`.
#[test]
fn long_lines_and_the_largest_request() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    let mib = 1 << 20;
    let mut request = b"set big 0 0 1048576".to_vec();
    request.resize(2047, b' ');
    request.extend_from_slice(b"\r\n");
    assert_eq!(request.iter().position(|&b| b == b'\n'), Some(2048));
    request.extend(std::iter::repeat_n(b'v', mib));
    request.extend_from_slice(b"\r\n");
    assert_eq!(replies_before_version(&mut c, &request), "STORED\r\n");
    assert_eq!(c.get("big").map(|v| v.len()), Some(mib));

    // One write, so the newline arrives in the same read as the start of the line.
    let mut padded = b"set k 0 0 1".to_vec();
    padded.resize(3000, b' ');
    padded.extend_from_slice(b"\r\nA\r\n");
    assert_eq!(replies_before_version(&mut c, &padded), "STORED\r\n");
    let long_key = format!("set {} 0 0 1\r\nA\r\n", "k".repeat(2990));
    assert_eq!(
        replies_before_version(&mut c, long_key.as_bytes()),
        "CLIENT_ERROR bad command line format\r\n"
    );
    let mut get = " ".repeat(50);
    get.push_str("get");
    for _ in 0..1500 {
        get.push_str(" k");
    }
    get.push_str("\r\n");
    let mut spaced = server.connect();
    // Sent in two writes: the first has no newline and is past 2048 bytes.
    let (head, tail) = get.split_at(2500);
    spaced.send(head.as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    spaced.send(tail.as_bytes());
    let reply = String::from_utf8(spaced.read_until(b"END\r\n")).unwrap();
    assert_eq!(reply.matches("VALUE k 0 1\r\nA\r\n").count(), 1500);
}

/// An append or prepend whose result would pass item_size_max is `NOT_STORED` in memcached
/// 1.6.18, the old value kept; Terrace answered `SERVER_ERROR object too large for cache`.
#[test]
fn append_past_the_item_size_is_not_stored() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    let full = "x".repeat(1 << 20);
    assert_eq!(c.set("a", &full), "STORED\r\n");
    assert_eq!(c.call("append a 0 0 1\r\ny\r\n"), "NOT_STORED\r\n");
    assert_eq!(c.call("prepend a 0 0 1\r\ny\r\n"), "NOT_STORED\r\n");
    assert_eq!(c.get("a").as_deref(), Some(full.as_str()));
}

/// memcached 1.6.18 runs `stats` by its first argument; Terrace answered `ERROR` to
/// `stats reset now` and `stats settings x`. (`version x` and `quit x` stay `ERROR`, as before
/// memcached 1.6: memccapable expects that of a server reporting version 0.x.)
#[test]
fn stats_runs_its_first_argument() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    assert_eq!(c.call("stats reset now\r\n"), "RESET\r\n");
    assert!(
        c.call_end("stats settings x\r\n")
            .contains("STAT item_size_max 1048576\r\n")
    );
    assert_eq!(c.call("stats nonsense x\r\n"), "ERROR\r\n");
    assert_eq!(c.call("version x\r\n"), "ERROR\r\n");
}

/// Monitoring clients send `stats`, `stats slabs` and `stats items` (and `stats settings`)
/// one after the other on one connection and read each reply up to its `END`, splitting every
/// line on single spaces into `STAT <name> <value>` (the Prometheus memcached exporter's
/// client does; it fails the whole scrape on a line of another shape). Terrace has no slab
/// allocator: it answers the slab commands as memcached does with no slab class in use.
#[test]
fn monitoring_clients_read_every_stats_reply_to_its_end() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    c.set("k", "v");
    let mut replies = Vec::new();
    for request in [
        "stats",
        "stats slabs",
        "stats items",
        "stats settings",
        "stats sizes",
    ] {
        // A reply without its END leaves this read waiting until the client's timeout.
        let reply = c.call_end(&format!("{request}\r\n"));
        let lines: Vec<&str> = reply.trim_end_matches("END\r\n").lines().collect();
        for line in &lines {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(
                fields.len() == 3 && fields[0] == "STAT" && !fields[2].is_empty(),
                "{request}: {line:?} is not `STAT <name> <value>`"
            );
        }
        replies.push(reply);
    }
    assert!(
        replies[0].contains("STAT curr_items 1\r\n"),
        "{}",
        replies[0]
    );
    assert_eq!(
        replies[1],
        "STAT active_slabs 0\r\nSTAT total_malloced 0\r\nEND\r\n"
    );
    assert_eq!(replies[2], "END\r\n");
    assert!(replies[3].contains("STAT maxconns "), "{}", replies[3]);
    assert_eq!(replies[4], "STAT sizes_status disabled\r\nEND\r\n");
    // The connection is still in step: the next request gets its own reply.
    assert_eq!(c.get("k").as_deref(), Some("v"));
}

/// `bytes` is what the logs take (segment files, preallocated ones included), as
/// `limit_maxbytes` caps it; `terrace_live_bytes` is what of it is still needed: a key
/// overwritten a hundred times counts once, and its records of older values not at all.
#[test]
fn live_bytes_count_the_current_records_only() {
    let (_dir, server) = server("temporary-swap-only", &[]);
    let mut c = server.connect();
    let stat = |c: &mut Client, name: &str| -> u64 {
        let stats = c.call_end("stats\r\n");
        let prefix = format!("STAT {name} ");
        let line = stats
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name} in {stats}"));
        line[prefix.len()..].trim().parse().expect("a number")
    };
    assert_eq!(stat(&mut c, "terrace_live_bytes"), 0);
    assert_eq!(c.set("k", "first value"), "STORED\r\n");
    let one = stat(&mut c, "terrace_live_bytes");
    assert!(one > "first value".len() as u64, "{one}");
    for i in 0..100 {
        assert_eq!(c.set("k", &format!("value {i:05}")), "STORED\r\n");
    }
    // Same key and value lengths: the same record length, once.
    assert_eq!(stat(&mut c, "terrace_live_bytes"), one);
    assert!(stat(&mut c, "bytes") > one);
    assert_eq!(c.set("other", "first value"), "STORED\r\n");
    assert!(stat(&mut c, "terrace_live_bytes") > one);
}

/// Values of 16 KiB and more are sent straight from the segment mapping, in pieces between
/// the rest of the reply, and answers from the other core are spliced in between: the bytes
/// must be exactly a copy's, in request order, for get, gets, gat and pipelined requests.
#[test]
fn large_values_sent_from_the_mapping_arrive_whole_and_in_order() {
    let (_dir, server) = server("permanent-store", &["--cores", "2"]);
    let mut c = server.connect();
    // Sizes around the threshold; enough keys that both cores own some of each size.
    let sizes = [5usize, 16383, 16384, 16385, 300_000, 1 << 20];
    let value = |i: usize, size: usize| -> Vec<u8> {
        (0..size)
            .map(|j| b'a' + ((i * 7 + j * 13) % 26) as u8)
            .collect()
    };
    let mut keys = Vec::new();
    for i in 0..24 {
        let size = sizes[i % sizes.len()];
        let key = format!("large{i}");
        let mut request = format!("set {key} {i} 0 {size}\r\n").into_bytes();
        request.extend_from_slice(&value(i, size));
        request.extend_from_slice(b"\r\n");
        c.send(&request);
        assert_eq!(c.read_until(b"\r\n"), b"STORED\r\n", "{key}");
        keys.push((key, i, size));
    }
    let item = |out: &mut Vec<u8>, (key, i, size): &(String, usize, usize)| {
        out.extend_from_slice(format!("VALUE {key} {i} {size}\r\n").as_bytes());
        out.extend_from_slice(&value(*i, *size));
        out.extend_from_slice(b"\r\n");
    };

    // One get of every key, with misses between them.
    let mut line = String::from("get");
    let mut expected = Vec::new();
    for k in &keys {
        line.push_str(&format!(" {} missing-{}", k.0, k.0));
        item(&mut expected, k);
    }
    expected.extend_from_slice(b"END\r\n");
    c.send(format!("{line}\r\n").as_bytes());
    // Several MiB: the socket fills while the client waits, so the server's sends stop part
    // way and go on when the client reads.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        c.read_exact_n(expected.len()) == expected,
        "multi-key get differs"
    );

    // Pipelined: each key alone, then gat (which also touches), in one write.
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for k in keys.iter().rev() {
        batch.extend_from_slice(format!("get {}\r\ngat 0 {}\r\n", k.0, k.0).as_bytes());
        for _ in 0..2 {
            item(&mut expected, k);
            expected.extend_from_slice(b"END\r\n");
        }
    }
    c.send(&batch);
    assert!(
        c.read_exact_n(expected.len()) == expected,
        "pipelined gets differ"
    );

    // gets carries the CAS after the length; the value still arrives whole.
    let (key, i, size) = &keys[4];
    c.send(format!("gets {key}\r\n").as_bytes());
    let reply = c.read_until(b"END\r\n");
    let header_end = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
    let header = String::from_utf8_lossy(&reply[..header_end]).to_string();
    assert!(
        header.starts_with(&format!("VALUE {key} {i} {size} ")),
        "{header}"
    );
    assert!(reply[header_end..header_end + size] == value(*i, *size)[..]);
    assert_eq!(&reply[header_end + size..], b"\r\nEND\r\n");
}
