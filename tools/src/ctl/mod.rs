//! # terrace-ctl: the cluster as an operator sees it
//!
//! `status` asks every server of a cluster config, on its client port, for `stats cluster`
//! and `stats`, and reports per server: reachable or not, state, term, LSN, lag behind its
//! group's active, connected clients. `failover` hands a group over to a PASSIVE-STANDBY
//! (planned), `shutdown` stops a cluster passives first.

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
        /// Each shard's last LSN.
        shard_lsns: Vec<u64>,
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
        shard_lsns: get(&format!("{name}:shard_lsns"))
            .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default(),
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

/// What `failover` did.
#[derive(Debug, Clone, Serialize)]
pub struct FailedOver {
    /// The mirror group.
    pub group: String,
    /// The server that was active.
    pub from: String,
    /// The server that is active now.
    pub to: String,
    /// What the old active said.
    pub report: String,
}

/// A planned failover of one mirror group (seed 001's safe procedure): waits (at most
/// `wait`) until the group has an active and a PASSIVE-STANDBY (`to`, if given), then asks
/// the active, on its group port, to hand over. The active stops taking new requests (they
/// wait, then go to the new active), waits until the standby has acknowledged every record,
/// and tells it to take over at the next term; then it follows it. No acknowledged write is
/// lost and clients see a pause, not an error.
pub fn failover(
    path: &Path,
    (group, to): (Option<&str>, Option<&str>),
    wait: Duration,
    timeout: Duration,
) -> Result<FailedOver, String> {
    let deadline = Instant::now() + wait;
    let (group, from) = loop {
        let servers = status(path, timeout).map_err(|e| e.to_string())?;
        let mut groups: Vec<&str> = servers.iter().map(|s| s.group.as_str()).collect();
        groups.dedup();
        let group = match (group, groups.as_slice()) {
            (Some(g), _) if groups.contains(&g) => g.to_string(),
            (Some(g), _) => return Err(format!("the config has no mirror group {g}")),
            (None, [only]) => (*only).to_string(),
            (None, _) => {
                return Err(format!(
                    "the config has several mirror groups ({}): name one with --group",
                    groups.join(", ")
                ));
            }
        };
        let state_of = |name: &str| {
            servers.iter().find_map(|s| match &s.seen {
                Seen::Up { state, .. } if s.name == name && s.group == group => Some(state.clone()),
                _ => None,
            })
        };
        let members: Vec<&ServerStatus> = servers.iter().filter(|s| s.group == group).collect();
        let active = members
            .iter()
            .find(|s| state_of(&s.name).as_deref() == Some("ACTIVE-COORDINATOR"))
            .map(|s| s.name.clone());
        let standby = members.iter().any(|s| {
            state_of(&s.name).as_deref() == Some("PASSIVE-STANDBY")
                && to.is_none_or(|to| to == s.name)
        });
        match active {
            Some(active) if standby => break (group, active),
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "mirror group {group} has no ACTIVE-COORDINATOR with a PASSIVE-STANDBY{} \
                     after {} ms; see terrace-ctl status",
                    to.map(|t| format!(" {t}")).unwrap_or_default(),
                    wait.as_millis()
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let settings = terrace_node::config::Settings::load(
        Some(path),
        Some(&from),
        &terrace_node::config::Overrides::default(),
    )
    .map_err(|e| e.to_string())?;
    let member = settings
        .cluster
        .members
        .iter()
        .find(|m| m.name == from)
        .ok_or_else(|| format!("{from} is not in the config"))?;
    let group_port = member
        .group_port
        .ok_or_else(|| format!("{from} has no group_port in the config"))?;
    let (mut stream, _) = connect(&format!("{}:{group_port}", member.host), timeout)?;
    let request = terrace_node::cluster::wire::Message::HandOver {
        version: terrace_node::cluster::wire::PROTOCOL_VERSION,
        fingerprint: settings.cluster.fingerprint,
        to: to.map(str::to_string),
    };
    request
        .write_to(&mut stream)
        .map_err(|e| format!("cannot ask {from}: {e}"))?;
    stream
        .set_read_timeout(Some(HANDOVER_ANSWER_MAX))
        .map_err(|e| e.to_string())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = Vec::new();
    let answered = terrace_node::cluster::wire::read_line(&mut reader, &mut line)
        .map_err(|e| format!("{from} did not answer: {e}"))?;
    if !answered {
        return Err(format!("{from} closed the connection without an answer"));
    }
    let mut none = || Err(std::io::Error::other("one line expected"));
    let report = match terrace_node::cluster::wire::parse(&line, &mut none) {
        Ok(terrace_node::cluster::wire::Message::Done { text }) => text,
        Ok(terrace_node::cluster::wire::Message::Refuse { reason }) => {
            return Err(format!("{from} refused: {reason}"));
        }
        other => return Err(format!("{from} answered {other:?}")),
    };
    // The new active, as its own client port says.
    let deadline = Instant::now() + wait;
    loop {
        let servers = status(path, timeout).map_err(|e| e.to_string())?;
        let now = servers.iter().find_map(|s| match &s.seen {
            Seen::Up { state, .. }
                if s.group == group && state == "ACTIVE-COORDINATOR" && s.name != from =>
            {
                Some(s.name.clone())
            }
            _ => None,
        });
        if let Some(to) = now {
            return Ok(FailedOver {
                group,
                from,
                to,
                report,
            });
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{from} handed over ({report}), but no new ACTIVE-COORDINATOR shows after {} ms",
                wait.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Longest `failover` waits for the active's answer.
const HANDOVER_ANSWER_MAX: Duration = Duration::from_secs(60);
