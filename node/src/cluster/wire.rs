//! The group protocol's control messages: one text line each (plus the config lines of a
//! hello), so that a peer's behaviour can be read in a packet capture.
//!
//! ```text
//! HELLO <version> <from> <to> <fingerprint> <n>   then n lines: CONFIG <field> <value>
//! WELCOME <from>
//! REFUSE <reason>
//! PING <seq> <state> <term> <data_term> <lsn> <active|-> <ready|recovering> <standbys|->
//!                                 a heartbeat, with the sender's status (standbys: the
//!                                 passives an active counts as PASSIVE-STANDBY, by commas)
//! PONG <seq> ...                  its answer, with the answerer's status
//! TAKEOVER <term>                 (in a session) the active hands the group to this passive
//! HANDOVER <version> <fingerprint> <to|->   (terrace-ctl to the active) a planned failover
//! DONE <text>                     the answer to a HANDOVER that succeeded (REFUSE if not)
//! REPLICATE <version> <from> <to> <fingerprint> <term> <shard> <next_lsn> <k> <digest>
//!                                 a passive asks for one shard's records from `next_lsn` on;
//!                                 `digest` is the CRC-32 of the CRCs of its last `k` records
//!                                 (the prefix check); the connection then carries
//!                                 replication frames (`cluster::replication::frame`)
//! ```
//!
//! Names are config names (letters, digits, `-`, `_`, `.`: no spaces). Every line is at most
//! [`LINE_LEN_MAX_BYTES`]; a hello carries at most [`CONFIG_LINES_MAX`] config lines.

use super::state::{State, Status};
use std::io::{self, BufRead, Write};

/// Version of the group protocol. 3: replicated records carry flags (the log's format 2),
/// and a tombstone whose item follows it travels with that item; a server of version 2
/// would refuse such records mid-stream, so the handshake refuses it first.
pub const PROTOCOL_VERSION: u32 = 3;
/// Longest line accepted.
pub const LINE_LEN_MAX_BYTES: usize = 4096;
/// Most config lines in a hello.
pub const CONFIG_LINES_MAX: usize = 4096;

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The dialing server introduces itself and the config it runs.
    Hello {
        /// Its protocol version.
        version: u32,
        /// Its name.
        from: String,
        /// The name it expects to reach.
        to: String,
        /// CRC-32 of its canonical config.
        fingerprint: u32,
        /// Its canonical config, field by field.
        config: Vec<(String, String)>,
    },
    /// The hello is accepted.
    Welcome {
        /// The accepting server's name.
        from: String,
    },
    /// The hello is refused, and why.
    Refuse {
        /// Why, for the log of the refused server.
        reason: String,
    },
    /// A heartbeat.
    Ping {
        /// Sequence number.
        seq: u64,
        /// The sender's status.
        status: Status,
    },
    /// The answer to a heartbeat.
    Pong {
        /// The ping's sequence number.
        seq: u64,
        /// The answerer's status.
        status: Status,
    },
    /// A passive asks for a shard's replication stream.
    Replicate(ReplicateRequest),
    /// The active hands the group over to the receiving passive, at `term`.
    TakeOver {
        /// The new term.
        term: u64,
    },
    /// An operator asks the active for a planned failover.
    HandOver {
        /// Group protocol version.
        version: u32,
        /// Fingerprint of the operator's config.
        fingerprint: u32,
        /// The passive to hand over to (`None`: any PASSIVE-STANDBY).
        to: Option<String>,
    },
    /// A request succeeded, and what happened.
    Done {
        /// For the operator.
        text: String,
    },
}

/// What a passive asks of its active for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateRequest {
    /// Group protocol version.
    pub version: u32,
    /// The passive.
    pub from: String,
    /// The active it means to reach.
    pub to: String,
    /// Its config fingerprint.
    pub fingerprint: u32,
    /// The term of the active it follows.
    pub term: u64,
    /// The shard.
    pub shard: u32,
    /// The LSN of the next record it needs (1: it holds nothing).
    pub next_lsn: u64,
    /// How many of its last records the digest covers.
    pub digest_records: u32,
    /// CRC-32 over the CRCs of those records, oldest first.
    pub digest: u32,
}

impl Message {
    /// Writes the message.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = String::new();
        match self {
            Self::Hello {
                version,
                from,
                to,
                fingerprint,
                config,
            } => {
                text.push_str(&format!(
                    "HELLO {version} {from} {to} {fingerprint:08x} {}\n",
                    config.len()
                ));
                for (field, value) in config {
                    // Values are one line: config values never hold a newline that matters.
                    let value = value.replace('\n', " ");
                    text.push_str(&format!("CONFIG {field} {value}\n"));
                }
            }
            Self::Welcome { from } => text.push_str(&format!("WELCOME {from}\n")),
            Self::Refuse { reason } => {
                text.push_str(&format!("REFUSE {}\n", reason.replace('\n', " ")));
            }
            Self::Ping { seq, status } => {
                text.push_str(&format!("PING {seq} {}\n", status_words(status)));
            }
            Self::Pong { seq, status } => {
                text.push_str(&format!("PONG {seq} {}\n", status_words(status)));
            }
            Self::TakeOver { term } => text.push_str(&format!("TAKEOVER {term}\n")),
            Self::HandOver {
                version,
                fingerprint,
                to,
            } => text.push_str(&format!(
                "HANDOVER {version} {fingerprint:08x} {}\n",
                to.as_deref().unwrap_or("-")
            )),
            Self::Done { text: done } => {
                text.push_str(&format!("DONE {}\n", done.replace('\n', " ")));
            }
            Self::Replicate(r) => text.push_str(&format!(
                "REPLICATE {} {} {} {:08x} {} {} {} {} {:08x}\n",
                r.version,
                r.from,
                r.to,
                r.fingerprint,
                r.term,
                r.shard,
                r.next_lsn,
                r.digest_records,
                r.digest
            )),
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

fn status_words(status: &Status) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        status.state.name(),
        status.term,
        status.data_term,
        status.lsn,
        status.active.as_deref().unwrap_or("-"),
        if status.ready { "ready" } else { "recovering" },
        if status.standbys.is_empty() {
            "-".to_string()
        } else {
            status.standbys.join(",")
        }
    )
}

fn parse_status(words: &[&str]) -> Option<Status> {
    let [state, term, data_term, lsn, active, ready, standbys] = words else {
        return None;
    };
    let standbys = if *standbys == "-" {
        Vec::new()
    } else {
        standbys.split(',').map(str::to_string).collect()
    };
    let ready = match *ready {
        "ready" => true,
        "recovering" => false,
        _ => return None,
    };
    Some(Status {
        state: State::from_name(state)?,
        term: term.parse().ok()?,
        data_term: data_term.parse().ok()?,
        lsn: lsn.parse().ok()?,
        active: (*active != "-").then(|| active.to_string()),
        ready,
        standbys,
    })
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one line into `line` (which keeps a partial line across read timeouts). Returns
/// `Ok(true)` once `line` holds a whole line (without its newline), `Ok(false)` at end of
/// stream.
pub fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(false);
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > LINE_LEN_MAX_BYTES + 1 {
            return Err(invalid(format!(
                "a line longer than {LINE_LEN_MAX_BYTES} bytes"
            )));
        }
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(true);
        }
    }
}

/// Parses one line; a hello's config lines are read from `more`.
pub fn parse(line: &[u8], more: &mut dyn FnMut() -> io::Result<Vec<u8>>) -> io::Result<Message> {
    let text = std::str::from_utf8(line).map_err(|_| invalid("a line that is not UTF-8".into()))?;
    let bad = || invalid(format!("unexpected message `{text}`"));
    let mut words = text.splitn(2, ' ');
    let verb = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
    match verb {
        "HELLO" => {
            let parts: Vec<&str> = rest.split(' ').collect();
            let [version, from, to, fingerprint, count] = parts[..] else {
                return Err(bad());
            };
            let count = number(count)? as usize;
            if count > CONFIG_LINES_MAX {
                return Err(invalid(format!("a hello with {count} config lines")));
            }
            let mut config = Vec::with_capacity(count);
            for _ in 0..count {
                let line = more()?;
                let line = String::from_utf8(line)
                    .map_err(|_| invalid("a config line that is not UTF-8".into()))?;
                let body = line
                    .strip_prefix("CONFIG ")
                    .ok_or_else(|| invalid(format!("`{line}` where a CONFIG line belongs")))?;
                let (field, value) = body.split_once(' ').unwrap_or((body, ""));
                config.push((field.to_string(), value.to_string()));
            }
            Ok(Message::Hello {
                version: u32::try_from(number(version)?).map_err(|_| bad())?,
                from: from.to_string(),
                to: to.to_string(),
                fingerprint: u32::from_str_radix(fingerprint, 16).map_err(|_| bad())?,
                config,
            })
        }
        "WELCOME" if !rest.is_empty() && !rest.contains(' ') => Ok(Message::Welcome {
            from: rest.to_string(),
        }),
        "REFUSE" => Ok(Message::Refuse {
            reason: rest.to_string(),
        }),
        "PING" | "PONG" => {
            let words: Vec<&str> = rest.split(' ').collect();
            let (seq, status) = match words.split_first() {
                Some((seq, status)) => (number(seq)?, parse_status(status).ok_or_else(bad)?),
                None => return Err(bad()),
            };
            Ok(if verb == "PING" {
                Message::Ping { seq, status }
            } else {
                Message::Pong { seq, status }
            })
        }
        "TAKEOVER" => Ok(Message::TakeOver {
            term: number(rest)?,
        }),
        "HANDOVER" => {
            let parts: Vec<&str> = rest.split(' ').collect();
            let [version, fingerprint, to] = parts[..] else {
                return Err(bad());
            };
            Ok(Message::HandOver {
                version: u32::try_from(number(version)?).map_err(|_| bad())?,
                fingerprint: u32::from_str_radix(fingerprint, 16).map_err(|_| bad())?,
                to: (to != "-").then(|| to.to_string()),
            })
        }
        "DONE" => Ok(Message::Done {
            text: rest.to_string(),
        }),
        "REPLICATE" => {
            let parts: Vec<&str> = rest.split(' ').collect();
            let [
                version,
                from,
                to,
                fingerprint,
                term,
                shard,
                next_lsn,
                k,
                digest,
            ] = parts[..]
            else {
                return Err(bad());
            };
            let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
            let small = |s: &str| u32::try_from(number(s)?).map_err(|_| bad());
            Ok(Message::Replicate(ReplicateRequest {
                version: small(version)?,
                from: from.to_string(),
                to: to.to_string(),
                fingerprint: hex(fingerprint)?,
                term: number(term)?,
                shard: small(shard)?,
                next_lsn: number(next_lsn)?,
                digest_records: small(k)?,
                digest: hex(digest)?,
            }))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn round_trip(message: &Message) -> Message {
        let mut bytes = Vec::new();
        message.write_to(&mut bytes).unwrap();
        let mut reader = io::BufReader::new(&bytes[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut reader, &mut line).unwrap());
        let mut more = || {
            let mut next = Vec::new();
            assert!(read_line(&mut reader, &mut next).unwrap());
            Ok(next)
        };
        parse(&line, &mut more).unwrap()
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for message in [
            Message::Hello {
                version: 1,
                from: "s1".into(),
                to: "s2".into(),
                fingerprint: 0xdead_beef,
                config: vec![
                    ("cluster.election_time".into(), "5000ms".into()),
                    ("servers[s1].data".into(), "/var/lib/terrace/s 1".into()),
                ],
            },
            Message::Welcome { from: "s2".into() },
            Message::Refuse {
                reason: "cluster.election_time differs".into(),
            },
            Message::Ping {
                seq: 7,
                status: Status {
                    state: State::Starting,
                    term: 0,
                    data_term: 0,
                    lsn: 0,
                    active: None,
                    ready: false,
                    standbys: vec![],
                },
            },
            Message::Pong {
                seq: u64::MAX,
                status: Status {
                    state: State::ActiveCoordinator,
                    term: 3,
                    data_term: 2,
                    lsn: 12_345,
                    active: Some("s1".into()),
                    ready: true,
                    standbys: vec!["s2".into(), "s3".into()],
                },
            },
            Message::TakeOver { term: 9 },
            Message::HandOver {
                version: PROTOCOL_VERSION,
                fingerprint: 0xabcd,
                to: Some("s2".into()),
            },
            Message::HandOver {
                version: PROTOCOL_VERSION,
                fingerprint: 1,
                to: None,
            },
            Message::Done {
                text: "s2 is active".into(),
            },
            Message::Replicate(ReplicateRequest {
                version: PROTOCOL_VERSION,
                from: "s2".into(),
                to: "s1".into(),
                fingerprint: 0x0123_abcd,
                term: 4,
                shard: 7,
                next_lsn: 1_000_001,
                digest_records: 8,
                digest: 0xffff_0000,
            }),
        ] {
            assert_eq!(round_trip(&message), message);
        }
        let mut none = || Err(invalid("no more".into()));
        for garbage in [
            &b""[..],
            b"HELLO 1 s1",
            b"HELLO 1 s1 s2 zz 0",
            b"HELLO 1 s1 s2 00000000 99999999",
            b"PING x",
            b"PING 1",
            b"PING 1 ACTIVE 1 1 1 -",
            b"PONG 1 STARTING 1 1 x - ready",
            b"PONG 1 STARTING 1 1 1 - maybe",
            b"PONG 1 STARTING 1 1 1 - ready",
            b"REPLICATE 2 s2 s1 0 1 0 1 0",
            b"TAKEOVER",
            b"TAKEOVER x",
            b"HANDOVER 2 zz s2",
            b"HANDOVER 2 00",
            b"REPLICATE 2 s2 s1 zz 1 0 1 0 0",
            b"REPLICATE 2 s2 s1 0 1 99999999999 1 0 0",
            b"WELCOME",
            b"get k",
            b"\xff\xfe",
        ] {
            assert!(parse(garbage, &mut none).is_err(), "{garbage:?}");
        }
        let long = vec![b'x'; LINE_LEN_MAX_BYTES + 10];
        let mut line = Vec::new();
        assert!(read_line(&mut io::BufReader::new(&long[..]), &mut line).is_err());
    }
}
