//! # terrace-ctl: the cluster as an operator sees it
//!
//! `status` asks every server of a cluster config, on its client port, for `stats cluster`
//! and `stats`, and reports per server: reachable or not, state, term, LSN, lag behind its
//! group's active, connected clients. (`failover` and `shutdown` come with replication.)

use serde::Serialize;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::{Duration, Instant};
use terrace_node::config::{ConfigError, load_groups};

/// Longest reply accepted from a server.
const REPLY_LEN_MAX_BYTES: usize = 1 << 20;

/// One server, as `status` found it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Its mirror group.
    pub group: String,
    /// Its name.
    pub name: String,
    /// Its client address.
    pub address: String,
    /// What it said, or why it could not be asked.
    #[serde(flatten)]
    pub seen: Seen,
    /// How far its LSN is behind its group's active (`None`: no active, or unreachable).
    pub lag: Option<u64>,
}

/// What a server said about itself.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Seen {
    /// It answered.
    Up {
        /// Its state.
        state: String,
        /// Its term.
        term: u64,
        /// Sum of its shards' last LSNs.
        lsn: u64,
        /// The active it knows of.
        active: Option<String>,
        /// Client connections (this one included).
        clients: u64,
    },
    /// It did not.
    Down {
        /// Why.
        unreachable: String,
    },
}

/// Asks every server of the cluster config at `path`.
pub fn status(path: &Path, timeout: Duration) -> Result<Vec<ServerStatus>, ConfigError> {
    let groups = load_groups(path)?;
    let mut servers = Vec::new();
    for (group, members) in &groups {
        let first = servers.len();
        for member in members {
            let address = format!("{}:{}", member.host, member.client_port);
            let seen = match ask(&address, timeout) {
                Ok(seen) => seen,
                Err(unreachable) => Seen::Down { unreachable },
            };
            servers.push(ServerStatus {
                group: group.clone(),
                name: member.name.clone(),
                address,
                seen,
                lag: None,
            });
        }
        // Lag behind the active the group's own members report as ACTIVE-COORDINATOR.
        let active_lsn = servers[first..].iter().find_map(|s| match &s.seen {
            Seen::Up { state, lsn, .. } if state == "ACTIVE-COORDINATOR" => Some(*lsn),
            _ => None,
        });
        for server in &mut servers[first..] {
            if let (Some(active), Seen::Up { lsn, .. }) = (active_lsn, &server.seen) {
                server.lag = Some(active.saturating_sub(*lsn));
            }
        }
    }
    Ok(servers)
}

/// Problems `status` found: unreachable servers, groups without exactly one active.
pub fn problems(servers: &[ServerStatus]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut groups: Vec<&str> = servers.iter().map(|s| s.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let members: Vec<&ServerStatus> = servers.iter().filter(|s| s.group == group).collect();
        for server in &members {
            if let Seen::Down { unreachable } = &server.seen {
                problems.push(format!(
                    "{} ({}) is unreachable: {unreachable}",
                    server.name, server.address
                ));
            }
        }
        let actives: Vec<&str> = members
            .iter()
            .filter(|s| matches!(&s.seen, Seen::Up { state, .. } if state == "ACTIVE-COORDINATOR"))
            .map(|s| s.name.as_str())
            .collect();
        match actives.len() {
            1 => {}
            0 => problems.push(format!("mirror group {group} has no ACTIVE-COORDINATOR")),
            _ => problems.push(format!(
                "mirror group {group} has {} ACTIVE-COORDINATORs ({}): split brain",
                actives.len(),
                actives.join(", ")
            )),
        }
    }
    problems
}

/// A connection to `address`, with `timeout` for connecting, reading and writing.
fn connect(address: &str, timeout: Duration) -> Result<(TcpStream, std::net::SocketAddr), String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("resolves to no address")?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    Ok((stream, addr))
}

/// `stats cluster` and `stats` of the server at `address`.
fn ask(address: &str, timeout: Duration) -> Result<Seen, String> {
    let (mut stream, _) = connect(address, timeout)?;
    stream
        .write_all(b"stats cluster\r\nstats\r\n")
        .map_err(|e| format!("cannot send: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    // Two replies, each ending in END (or a one-line error).
    while reply.windows(5).filter(|w| w == b"END\r\n").count() < 2 {
        if Instant::now() > deadline || reply.len() > REPLY_LEN_MAX_BYTES {
            return Err("no complete answer in time".into());
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("reading its answer: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed the connection; it said: {}",
                String::from_utf8_lossy(&reply).trim()
            ));
        }
        reply.extend_from_slice(&chunk[..n]);
        if reply.starts_with(b"ERROR") || reply.starts_with(b"SERVER_ERROR") {
            return Err(format!(
                "does not answer `stats cluster` (not a Terrace server of this version?): {}",
                String::from_utf8_lossy(&reply).trim()
            ));
        }
    }
    let text = String::from_utf8_lossy(&reply);
    let stats: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let get = |key: &str| stats.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let name = stats
        .iter()
        .find(|(k, v)| k.ends_with(":health") && *v == "self")
        .and_then(|(k, _)| k.strip_suffix(":health"))
        .ok_or("its `stats cluster` does not say which server it is")?;
    let number = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Seen::Up {
        state: get(&format!("{name}:state"))
            .unwrap_or("unknown")
            .to_string(),
        term: number("cluster:term"),
        lsn: number(&format!("{name}:lsn")),
        active: get("cluster:active")
            .filter(|a| *a != "-")
            .map(str::to_string),
        clients: number("curr_connections"),
    })
}

/// What `shutdown` did to one server.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    /// Its name.
    pub name: String,
    /// `stopped`, `already down`, or why it was not stopped.
    pub outcome: String,
}

/// Stops every server of the cluster config at `path`, group by group: the passives first,
/// then the active (so that no passive takes over from an active being stopped, and the
/// active stops last with the newest data). Each server is asked with the `shutdown`
/// command (it must run with `--enable-shutdown`) and waited for until its client port
/// closes. A group whose passive cannot be stopped keeps its active running.
pub fn shutdown(
    path: &Path,
    timeout: Duration,
    mut progress: impl FnMut(&Stopped),
) -> Result<Vec<Stopped>, ConfigError> {
    let servers = status(path, timeout)?;
    let mut outcomes = Vec::new();
    let mut groups: Vec<&str> = servers.iter().map(|s| s.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let mut members: Vec<&ServerStatus> = servers.iter().filter(|s| s.group == group).collect();
        // Passives (and anything not active) first, the active last.
        members.sort_by_key(
            |s| matches!(&s.seen, Seen::Up { state, .. } if state == "ACTIVE-COORDINATOR"),
        );
        let mut failed = false;
        for server in members {
            let outcome = match (&server.seen, failed) {
                (Seen::Down { .. }, _) => "already down".to_string(),
                (Seen::Up { .. }, true) => {
                    "not stopped: a server of its group before it could not be".to_string()
                }
                (Seen::Up { .. }, false) => match stop_one(&server.address, timeout) {
                    Ok(()) => "stopped".to_string(),
                    Err(why) => {
                        failed = true;
                        format!("not stopped: {why}")
                    }
                },
            };
            let stopped = Stopped {
                name: server.name.clone(),
                outcome,
            };
            progress(&stopped);
            outcomes.push(stopped);
        }
    }
    Ok(outcomes)
}

/// Sends `shutdown` to the server at `address` and waits until its port closes.
fn stop_one(address: &str, timeout: Duration) -> Result<(), String> {
    let (mut stream, addr) = connect(address, timeout)?;
    stream
        .write_all(b"shutdown\r\n")
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut reply = [0u8; 128];
    let n = stream.read(&mut reply).map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply[..n]);
    if reply.trim() != "OK" {
        return Err(if reply.contains("not enabled") {
            "its shutdown command is not enabled: start it with --enable-shutdown".into()
        } else {
            format!("it answered `{}`", reply.trim())
        });
    }
    drop(stream);
    // It finishes in-flight requests and syncs: wait until it no longer answers.
    let deadline = Instant::now() + STOP_WAIT_MAX;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        if Instant::now() > deadline {
            return Err(format!(
                "still answering {STOP_WAIT_MAX:?} after it accepted to stop"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Longest `shutdown` waits for one server to stop.
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);
