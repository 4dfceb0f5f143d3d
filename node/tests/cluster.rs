//! Mirror group membership with real servers on 127.0.0.1: the config handshake, heartbeats,
//! and Terracotta's `NodeID[..] joined/left the cluster` lines, seen in the logs and in
//! `stats cluster`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{Server, free_ports, output_within, pair_config, stat, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_pair_joins_and_sees_its_peer_leave_and_come_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s1, "s2:health", "joined");
    wait_for(&s2, "s1:health", "joined");
    assert_eq!(stat(&s1, "s1:health").as_deref(), Some("self"));
    assert_eq!(stat(&s1, "cluster:group").as_deref(), Some("g1"));
    assert_eq!(
        stat(&s1, "cluster:fingerprint"),
        stat(&s2, "cluster:fingerprint")
    );
    assert!(
        s1.log().contains("NodeID[s2] joined the cluster"),
        "{}",
        s1.log()
    );
    assert!(
        s2.log().contains("NodeID[s1] joined the cluster"),
        "{}",
        s2.log()
    );

    // kill -9: gone within the health timeout (5 x 100 ms), back when it restarts.
    s2.kill();
    let killed = Instant::now();
    wait_for(&s1, "s2:health", "gone");
    let noticed = killed.elapsed();
    assert!(
        s1.log().contains("NodeID[s2] left the cluster"),
        "{}",
        s1.log()
    );
    s2.restart();
    wait_for(&s1, "s2:health", "joined");
    wait_for(&s2, "s1:health", "joined");

    // A paused process (SIGSTOP) stops answering heartbeats: gone; resumed: joined again.
    s1.signal(rustix::process::Signal::STOP);
    let stopped = Instant::now();
    wait_for(&s2, "s1:health", "gone");
    let paused = stopped.elapsed();
    s1.signal(rustix::process::Signal::CONT);
    wait_for(&s2, "s1:health", "joined");
    wait_for(&s1, "s2:health", "joined");
    assert!(
        s2.log().contains("NodeID[s1] left the cluster"),
        "{}",
        s2.log()
    );
    // The pause was shorter than the health limit plus the election time: the active stayed
    // the active, and the passive is (again) in sync with it.
    wait_for(&s1, "s1:state", "ACTIVE-COORDINATOR");
    wait_for(&s2, "s2:state", "PASSIVE-STANDBY");
    println!("departure noticed after kill -9: {noticed:?}; after SIGSTOP: {paused:?}");
}

/// Both servers start at once: the one with the newest data becomes ACTIVE-COORDINATOR,
/// whatever the order; the other follows it and points its clients at it.
#[test]
fn the_server_with_the_newest_data_becomes_active() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    // s2 alone: after the election time it is the active, and takes writes.
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    let mut client = s2.connect();
    for i in 0..100 {
        assert_eq!(client.set(&format!("k{i}"), "v"), "STORED\r\n");
    }
    drop(client);
    assert!(s2.terminate().success());

    // Now s1 (no data) starts first, then s2: s2 still wins, with a higher term.
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    s2.restart();
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    wait_for(&s1, "s1:state", "PASSIVE-STANDBY");
    wait_for(&s1, "cluster:active", "s2");
    assert_eq!(stat(&s2, "cluster:term").as_deref(), Some("2"));
    assert_eq!(stat(&s1, "cluster:term").as_deref(), Some("2"));
    assert!(
        s2.log().contains("Becoming State[ ACTIVE-COORDINATOR ]"),
        "{}",
        s2.log()
    );
    assert!(
        s1.log().contains("Moved to State[ PASSIVE-UNINITIALIZED ]"),
        "{}",
        s1.log()
    );
    // The passive forwards data requests to the active; its admin commands are its own.
    assert_eq!(s1.connect().get("k1").as_deref(), Some("v"));
    assert_eq!(stat(&s1, "s1:health").as_deref(), Some("self"));
    assert_eq!(s2.connect().get("k1").as_deref(), Some("v"));
}

#[test]
fn a_server_with_another_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    let other = pair_config(
        dir.path(),
        "other.toml",
        (g1, g2, c1, c2),
        "election_time = \"3s\"",
    );
    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    let s2 = Server::start_at(&other, c2, &["-n", "s2", "--cores", "1"]);
    wait_for(&s1, "s2:health", "refused");
    wait_for(&s2, "s1:health", "refused");
    for server in [&s1, &s2] {
        let log = server.log();
        assert!(
            log.contains(
                "cluster config differs: cluster.election_time is 500ms on s1 but 3000ms on s2"
            ),
            "{log}"
        );
        assert!(!log.contains("joined the cluster"), "{log}");
    }
}

#[test]
fn a_taken_group_port_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let [g2, client, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (port, g2, client, c2), "");
    let output = output_within(
        Command::new(common::server_binary())
            .arg("-f")
            .arg(&config)
            .args(["-n", "s1", "--cores", "1", "--listen"])
            .arg(format!("127.0.0.1:{client}")),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("group port"), "{stderr}");
    assert!(stderr.contains(&port.to_string()), "{stderr}");
}

#[test]
fn a_server_alone_in_its_group_reports_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::write_config(dir.path(), "temporary-swap-only");
    let server = Server::start(&config, &["--cores", "1"]);
    assert_eq!(stat(&server, "t1:health").as_deref(), Some("self"));
    assert_eq!(stat(&server, "cluster:group").as_deref(), Some("default"));
    // Alone, it is the active at once.
    assert_eq!(
        stat(&server, "t1:state").as_deref(),
        Some("ACTIVE-COORDINATOR")
    );
    assert!(
        server
            .log()
            .contains("Becoming State[ ACTIVE-COORDINATOR ]")
    );
}

/// A client of the passive works as if it were connected to the active: every data command,
/// pipelined, noreply included; and a request sent while there is no active yet waits for
/// one instead of failing.
#[test]
fn a_passive_forwards_data_requests_to_the_active() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [g1, g2, c1, c2] = free_ports();
    let config = pair_config(dir.path(), "pair.toml", (g1, g2, c1, c2), "");
    // s2 alone and STARTING: a write waits out the election (500 ms) and is then served.
    let mut s2 = Server::start_at(&config, c2, &["-n", "s2", "--cores", "1"]);
    let held = Instant::now();
    assert_eq!(s2.connect().set("early", "1"), "STORED\r\n");
    println!(
        "a write held through the election took {:?}",
        held.elapsed()
    );
    assert!(s2.terminate().success());

    let s1 = Server::start_at(&config, c1, &["-n", "s1", "--cores", "1"]);
    s2.restart();
    // s2 holds the data, so it is the active; s1 forwards.
    wait_for(&s2, "s2:state", "ACTIVE-COORDINATOR");
    wait_for(&s1, "cluster:active", "s2");
    let mut c = s1.connect();
    let steps: &[(&str, &str)] = &[
        ("get early\r\n", "VALUE early 0 1\r\n1\r\nEND\r\n"),
        ("set a 5 0 2\r\nxy\r\n", "STORED\r\n"),
        (
            "set b 0 0 7 noreply\r\nnoreply\r\nget a b\r\n",
            "VALUE a 5 2\r\nxy\r\nVALUE b 0 7\r\nnoreply\r\nEND\r\n",
        ),
        ("append a 0 0 1\r\nz\r\n", "STORED\r\n"),
        ("set n 0 0 1\r\n9\r\nincr n 1\r\n", "STORED\r\n10\r\n"),
        ("delete b\r\ndelete b\r\n", "DELETED\r\nNOT_FOUND\r\n"),
        ("touch a 100\r\n", "TOUCHED\r\n"),
        ("get a missing\r\n", "VALUE a 5 3\r\nxyz\r\nEND\r\n"),
        (
            "incr a 1\r\n",
            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        ("version\r\n", &format!("VERSION {}\r\n", "0.1.0")),
        // Meta commands: a value's reply is framed by its length, a quiet one answers only
        // what quiet mode shows (the active is asked without the `q`).
        (
            "ms m 2 F3 T0 q\r\nhi\r\nmg m v f k\r\n",
            "VA 2 f3 km\r\nhi\r\n",
        ),
        ("mg nope v q\r\nmg nope v\r\nmn\r\n", "EN\r\nMN\r\n"),
        (
            "ma cnt N0 J5 v\r\nma cnt q v\r\nma cnt v\r\n",
            "VA 1\r\n5\r\nVA 1\r\n7\r\n",
        ),
        ("md m q\r\nmd m q\r\n", "NF\r\n"),
        ("ms q 1 q C1\r\nx\r\n", "NF\r\n"),
        // Win tokens are the active's: the first vivify wins, the next is told another did.
        (
            "mg lease N30 v q\r\nmg lease N30 v q\r\n",
            "VA 0 W\r\n\r\nVA 0 Z\r\n\r\n",
        ),
    ];
    for (request, expected) in steps {
        c.send(request.as_bytes());
        let got = c.read_exact_n(expected.len());
        assert_eq!(String::from_utf8_lossy(&got), *expected, "{request:?}");
    }
    // The writes are the active's.
    assert_eq!(s2.connect().get("a").as_deref(), Some("xyz"));
    let gets = c.call_end("gets a\r\n");
    assert!(gets.starts_with("VALUE a 5 3 "), "{gets}");
}

/// A burst of pipelined requests written to a passive in one go is forwarded together (each
/// request's followers are sent ahead with it) and answered exactly as the active answers the
/// same burst: every command kind, `noreply`, quiet meta requests, multi-key gets, errors,
/// and requests the passive answers itself in between.
#[test]
fn a_pipelined_burst_through_a_passive_answers_as_the_active() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_s1, _s2, (c1, c2)) = common::start_pair(dir.path(), "2");

    let mut burst = String::new();
    for i in 0..600 {
        let k = format!("k{}", i % 37);
        let value = "v".repeat(i % 50 + 1);
        burst.push_str(&match i % 15 {
            0 => format!("set {k} {i} 0 {}\r\n{value}\r\n", value.len()),
            1 => format!("set {k} 1 0 {} noreply\r\n{value}\r\n", value.len()),
            2 => format!("get {k} k{} nokey\r\n", (i + 5) % 37),
            3 => format!("add {k} 0 0 1\r\nx\r\n"),
            4 => format!("append {k} 0 0 2\r\n++\r\n"),
            5 => format!("delete {k}\r\n"),
            6 => format!("set n{k} 0 0 1\r\n7\r\nincr n{k} 5\r\ndecr n{k} 100\r\n"),
            7 => format!("touch {k} 100\r\n"),
            8 => format!("ms {k} {} T0 q\r\n{value}\r\nmg {k} v f s\r\n", value.len()),
            9 => format!("mg missing{i} v q\r\nmd {k} q\r\nmd {k}\r\n"),
            10 => format!("ma c{k} N0 J3 v\r\nma c{k} q\r\n"),
            // Answered by the passive itself, between forwarded ones.
            11 => "version\r\n".to_string(),
            12 => format!("incr {k} 1\r\n"),
            13 => format!("gat 100 {k} nokey\r\n"),
            _ => format!("prepend {k} 0 0 1 noreply\r\n<\r\n"),
        });
    }
    burst.push_str("mn\r\n");
    let play = |port: u16| {
        let mut c = common::Client::connect(port);
        c.send(b"flush_all\r\n");
        assert_eq!(c.read_until(b"OK\r\n"), b"OK\r\n");
        let started = Instant::now();
        c.send(burst.as_bytes());
        let reply = String::from_utf8_lossy(&c.read_until(b"MN\r\n")).into_owned();
        (reply, started.elapsed())
    };
    let (through_passive, passive_took) = play(c2);
    let (from_active, active_took) = play(c1);
    println!(
        "{} bytes of requests: through the passive {passive_took:?}, to the active {active_took:?}",
        burst.len()
    );
    assert_eq!(through_passive.len(), from_active.len());
    for (n, (a, b)) in through_passive.lines().zip(from_active.lines()).enumerate() {
        assert_eq!(a, b, "reply line {n}");
    }
    // The passive counts what it forwarded, and what went ahead of its turn: 20 requests
    // every 15 steps (`version` is its own), and the flush_all; most of them ahead.
    let stats = common::Client::connect(c2).call_end("stats\r\n");
    let stat = |name: &str| common::number_stat(&stats, name);
    let (forwarded, ahead) = (stat("terrace_forwarded"), stat("terrace_forwarded_ahead"));
    assert_eq!(forwarded, 600 / 15 * 20 + 1);
    assert!(
        ahead >= forwarded / 2 && ahead < forwarded,
        "{ahead} of {forwarded} ahead"
    );
}
