//! Requests and replies on the wire: the memcached text protocol and enough RESP (SET, GET)
//! to drive Redis with the same load generator.
//!
//! Reply parsers are incremental: they look at the front of the receive buffer and say how
//! many bytes one whole reply takes, or that more bytes are needed, or that the bytes cannot be
//! a reply at all (garbage: the connection is dropped and the error counted).

use std::io::Write as _;

/// Which protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The memcached text protocol (Terrace, memcached, proxies).
    Memcache,
    /// memcached's meta commands: `ms <key> <len>` and `mg <key> v` (Terrace, memcached 1.6+).
    Meta,
    /// Redis's RESP2 (SET and GET only).
    Resp,
}

/// The kinds of request the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Store a value.
    Set,
    /// Read a value.
    Get,
}

/// What one reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A store was acknowledged.
    Stored,
    /// A read found the key.
    Hit,
    /// A read did not find the key.
    Miss,
    /// The server answered with an error or an unexpected reply (its first line).
    Error(String),
}

/// A reply parse that cannot go on: the bytes are not a reply of this protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage(pub String);

/// A reply line longer than this without `\r\n` is garbage, not a slow reply.
const LINE_LEN_MAX: usize = 4096;

/// Appends one request to `out`.
pub fn encode(protocol: Protocol, op: Op, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    // Writes into a Vec cannot fail.
    let _ = match (protocol, op) {
        (Protocol::Memcache, Op::Set) => {
            out.extend_from_slice(b"set ");
            out.extend_from_slice(key);
            write!(out, " 0 0 {}\r\n", value.len())
        }
        (Protocol::Memcache, Op::Get) => {
            out.extend_from_slice(b"get ");
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
            return;
        }
        (Protocol::Meta, Op::Set) => {
            out.extend_from_slice(b"ms ");
            out.extend_from_slice(key);
            write!(out, " {}\r\n", value.len())
        }
        (Protocol::Meta, Op::Get) => {
            out.extend_from_slice(b"mg ");
            out.extend_from_slice(key);
            out.extend_from_slice(b" v\r\n");
            return;
        }
        (Protocol::Resp, Op::Set) => {
            let _ = write!(out, "*3\r\n$3\r\nSET\r\n${}\r\n", key.len());
            out.extend_from_slice(key);
            write!(out, "\r\n${}\r\n", value.len())
        }
        (Protocol::Resp, Op::Get) => {
            let _ = write!(out, "*2\r\n$3\r\nGET\r\n${}\r\n", key.len());
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
            return;
        }
    };
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the reply at the front of `buf`: `Ok(Some((len, outcome)))` for a whole reply of
/// `len` bytes, `Ok(None)` when more bytes are needed.
pub fn parse_reply(protocol: Protocol, buf: &[u8]) -> Result<Option<(usize, Outcome)>, Garbage> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > LINE_LEN_MAX {
            Err(Garbage(format!(
                "a {}-byte reply line without \\r\\n",
                buf.len()
            )))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..line_end];
    let after_line = line_end + 2;
    match protocol {
        Protocol::Memcache => parse_memcache(buf, line, after_line),
        Protocol::Meta => parse_meta(buf, line, after_line),
        Protocol::Resp => parse_resp(buf, line, after_line),
    }
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// The length of a data block announced by a reply, and the bytes it then takes.
fn data_block(
    buf: &[u8],
    start: usize,
    len: &[u8],
    trailer: &[u8],
) -> Result<Option<usize>, Garbage> {
    let len: usize = std::str::from_utf8(len)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Garbage(format!("bad length {:?}", text(len))))?;
    let end = start + len;
    let total = end + 2 + trailer.len();
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" || &buf[end + 2..total] != trailer {
        return Err(Garbage("data block not followed by its terminator".into()));
    }
    Ok(Some(total))
}

fn parse_memcache(
    buf: &[u8],
    line: &[u8],
    after_line: usize,
) -> Result<Option<(usize, Outcome)>, Garbage> {
    let outcome = match line {
        b"STORED" => Outcome::Stored,
        b"END" => Outcome::Miss,
        b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" | b"ERROR" => Outcome::Error(text(line)),
        _ if line.starts_with(b"CLIENT_ERROR ") || line.starts_with(b"SERVER_ERROR ") => {
            Outcome::Error(text(line))
        }
        _ if line.starts_with(b"VALUE ") => {
            // VALUE <key> <flags> <bytes> [<cas>]
            let mut fields = line.split(|&b| b == b' ');
            let len = fields.nth(3).ok_or_else(|| Garbage(text(line)))?;
            return Ok(data_block(buf, after_line, len, b"END\r\n")?.map(|n| (n, Outcome::Hit)));
        }
        _ => return Err(Garbage(text(line))),
    };
    Ok(Some((after_line, outcome)))
}

fn parse_meta(
    buf: &[u8],
    line: &[u8],
    after_line: usize,
) -> Result<Option<(usize, Outcome)>, Garbage> {
    let outcome = match line {
        b"HD" => Outcome::Stored,
        b"EN" => Outcome::Miss,
        b"NS" | b"EX" | b"NF" | b"ERROR" => Outcome::Error(text(line)),
        _ if line.starts_with(b"CLIENT_ERROR ") || line.starts_with(b"SERVER_ERROR ") => {
            Outcome::Error(text(line))
        }
        _ if line.starts_with(b"VA ") => {
            // VA <bytes> <flags>*
            let len = line[3..]
                .split(|&b| b == b' ')
                .next()
                .ok_or_else(|| Garbage(text(line)))?;
            return Ok(data_block(buf, after_line, len, b"")?.map(|n| (n, Outcome::Hit)));
        }
        _ => return Err(Garbage(text(line))),
    };
    Ok(Some((after_line, outcome)))
}

fn parse_resp(
    buf: &[u8],
    line: &[u8],
    after_line: usize,
) -> Result<Option<(usize, Outcome)>, Garbage> {
    let outcome = match line {
        b"+OK" => Outcome::Stored,
        b"$-1" => Outcome::Miss,
        [b'-', ..] | [b'+', ..] => Outcome::Error(text(line)),
        [b'$', len @ ..] => {
            return Ok(data_block(buf, after_line, len, b"")?.map(|n| (n, Outcome::Hit)));
        }
        _ => return Err(Garbage(text(line))),
    };
    Ok(Some((after_line, outcome)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn all(protocol: Protocol, mut buf: &[u8]) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Some((len, outcome)) = parse_reply(protocol, buf).unwrap() {
            out.push(outcome);
            buf = &buf[len..];
        }
        assert!(buf.is_empty(), "left over: {:?}", text(buf));
        out
    }

    #[test]
    fn memcache_requests_and_replies() {
        let mut out = Vec::new();
        encode(Protocol::Memcache, Op::Set, b"k1", b"abc", &mut out);
        encode(Protocol::Memcache, Op::Get, b"k1", b"", &mut out);
        assert_eq!(out, b"set k1 0 0 3\r\nabc\r\nget k1\r\n");
        let replies = b"STORED\r\nVALUE k1 0 3\r\nabc\r\nEND\r\nEND\r\nVALUE k 5 2 99\r\n\r\n\r\nEND\r\nSERVER_ERROR out of memory storing object\r\nERROR\r\n";
        assert_eq!(
            all(Protocol::Memcache, replies),
            vec![
                Outcome::Stored,
                Outcome::Hit,
                Outcome::Miss,
                Outcome::Hit,
                Outcome::Error("SERVER_ERROR out of memory storing object".into()),
                Outcome::Error("ERROR".into()),
            ]
        );
    }

    #[test]
    fn meta_requests_and_replies() {
        let mut out = Vec::new();
        encode(Protocol::Meta, Op::Set, b"k1", b"abc", &mut out);
        encode(Protocol::Meta, Op::Get, b"k1", b"", &mut out);
        assert_eq!(out, b"ms k1 3\r\nabc\r\nmg k1 v\r\n");
        let replies =
            b"HD\r\nVA 3\r\nabc\r\nEN\r\nVA 0 f5\r\n\r\nNS\r\nCLIENT_ERROR bad data chunk\r\n";
        assert_eq!(
            all(Protocol::Meta, replies),
            vec![
                Outcome::Stored,
                Outcome::Hit,
                Outcome::Miss,
                Outcome::Hit,
                Outcome::Error("NS".into()),
                Outcome::Error("CLIENT_ERROR bad data chunk".into()),
            ]
        );
        for cut in 0..b"VA 5\r\nhello\r\n".len() {
            assert_eq!(
                parse_reply(Protocol::Meta, &b"VA 5\r\nhello\r\n"[..cut]),
                Ok(None)
            );
        }
        assert!(parse_reply(Protocol::Meta, b"VA 1\r\nab\r\n").is_err());
    }

    #[test]
    fn resp_requests_and_replies() {
        let mut out = Vec::new();
        encode(Protocol::Resp, Op::Set, b"k1", b"abc", &mut out);
        encode(Protocol::Resp, Op::Get, b"k1", b"", &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$3\r\nabc\r\n*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n"
        );
        let replies = b"+OK\r\n$3\r\na\r\n\r\n$-1\r\n-ERR wrong\r\n$0\r\n\r\n";
        assert_eq!(
            all(Protocol::Resp, replies),
            vec![
                Outcome::Stored,
                Outcome::Hit,
                Outcome::Miss,
                Outcome::Error("-ERR wrong".into()),
                Outcome::Hit,
            ]
        );
    }

    #[test]
    fn partial_replies_ask_for_more_at_every_cut() {
        for (protocol, reply) in [
            (
                Protocol::Memcache,
                &b"VALUE key 0 5\r\nhello\r\nEND\r\n"[..],
            ),
            (Protocol::Resp, &b"$5\r\nhello\r\n"[..]),
        ] {
            for cut in 0..reply.len() {
                assert_eq!(parse_reply(protocol, &reply[..cut]), Ok(None), "cut {cut}");
            }
            assert_eq!(
                parse_reply(protocol, reply),
                Ok(Some((reply.len(), Outcome::Hit)))
            );
        }
    }

    #[test]
    fn garbage_is_reported_not_waited_for() {
        assert!(parse_reply(Protocol::Memcache, b"HELLO\r\n").is_err());
        assert!(parse_reply(Protocol::Memcache, b"VALUE k 0 x\r\n").is_err());
        assert!(parse_reply(Protocol::Memcache, b"VALUE k 0 1\r\nab\r\nEND\r\n").is_err());
        assert!(parse_reply(Protocol::Resp, b":1\r\n").is_err());
        assert!(parse_reply(Protocol::Memcache, &[b'x'; LINE_LEN_MAX + 1]).is_err());
        assert_eq!(parse_reply(Protocol::Memcache, &[b'x'; 100]), Ok(None));
    }
}
