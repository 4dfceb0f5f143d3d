//! Online snapshots: a running server pins a consistent cut, this tool copies it.
//!
//! The tool sends `backup cut` on the server's client port (see the server's
//! `net/connection/backup.rs` for the exchange). The server pins every shard's segments up
//! to its last record once those records are durable, and answers with its data dir and,
//! per shard, the segments and how many bytes of each belong to the cut. The tool reads
//! those bytes from the segment files, which must therefore be readable from where it runs
//! (the server's host). Bytes inside a cut never change: sealed segments are immutable, and
//! the newest one only grows after the cut. The pin lasts as long as the connection: if the
//! tool dies, the server releases it.

use super::create::{CreateOptions, CreateReport, SourceSegment, SourceShard, write_snapshot};
use super::error::BackupError;
use super::manifest::SourceInfo;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use terrace_node::data_dir;
use terrace_node::shard::ShardCut;
use terrace_wal::storage::segment_file_name;

/// How long to wait for the server to answer (a cut waits for one group commit per shard).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply line accepted.
const LINE_LEN_MAX_BYTES: usize = 64 << 10;

/// A cut as the server described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The cut's id, to release it.
    pub id: u64,
    /// The server's data dir.
    pub data_dir: PathBuf,
    /// The server's name.
    pub server: String,
    /// Per shard, in order: its last LSN and its segments (id, bytes in the cut, file size).
    pub shards: Vec<ShardCut>,
}

/// `create --server`: a snapshot of a running server, taken without stopping its clients.
pub fn create_online(
    server: &str,
    out: &Path,
    options: CreateOptions,
) -> Result<CreateReport, BackupError> {
    let fail = |problem: String| BackupError::Server {
        server: server.to_string(),
        problem,
    };
    let addr = server
        .to_socket_addrs()
        .map_err(|e| fail(format!("not an address ({e}); give HOST:PORT")))?
        .next()
        .ok_or_else(|| fail("the name resolves to no address".into()))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| fail(format!("cannot set a timeout: {e}")))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| fail(format!("cannot use the connection: {e}")))?;
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"backup cut\r\n")
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    let cut = read_cut(&mut reader).map_err(fail)?;
    super::create::refuse_overlap(out, &cut.data_dir)?;

    let meta = data_dir::read_meta(&cut.data_dir)?.ok_or_else(|| BackupError::Refused {
        path: cut.data_dir.clone(),
        problem: format!("no {} here", data_dir::META_FILE),
        fix: "run backup-data on the server's host: it reads the pinned segment files from the \
              server's data dir"
            .into(),
    })?;
    if meta
        .server
        .as_deref()
        .is_some_and(|name| name != cut.server)
    {
        return Err(BackupError::Refused {
            path: cut.data_dir.clone(),
            problem: format!(
                "holds the data of server {}, but the cut is server {}'s",
                meta.server.as_deref().unwrap_or_default(),
                cut.server
            ),
            fix: "run backup-data on the host of the server given with --server: it reads that \
                  server's segment files"
                .into(),
        });
    }
    if meta.shards as usize != cut.shards.len() {
        return Err(fail(format!(
            "described {} shards, but its data dir {} has {}",
            cut.shards.len(),
            cut.data_dir.display(),
            meta.shards
        )));
    }
    let shards: Vec<SourceShard> = cut
        .shards
        .iter()
        .map(|shard_cut| SourceShard {
            shard: shard_cut.shard,
            segments: shard_cut
                .segments
                .iter()
                .map(|&(id, cut_bytes, file_bytes)| SourceSegment {
                    id,
                    path: data_dir::shard_dir_in(&cut.data_dir, shard_cut.shard)
                        .join(segment_file_name(id)),
                    file_bytes,
                    cut_bytes,
                })
                .collect(),
            cut_last_lsn: Some(shard_cut.last_lsn),
        })
        .collect();
    let info = SourceInfo {
        mode: "online".into(),
        data_dir: cut.data_dir.display().to_string(),
        server: meta.server.clone(),
        address: Some(server.to_string()),
        persistence: meta.persistence.clone(),
        data_dir_format: meta.format,
        shard_count: meta.shards,
    };
    // Each shard's files are checked against the cut's LSN before the manifest is written.
    let report = write_snapshot(out, info, &shards, options)?;
    // Released explicitly; closing the connection would release it too.
    writer
        .write_all(format!("backup release {}\r\n", cut.id).as_bytes())
        .map_err(|e| fail(format!("cannot release the cut: {e}")))?;
    let line = read_line(&mut reader).map_err(fail)?;
    if line != "RELEASED" {
        return Err(fail(format!(
            "releasing the cut: unexpected reply `{line}`"
        )));
    }
    Ok(report)
}

fn read_line<R: std::io::BufRead>(reader: &mut R) -> Result<String, String> {
    let mut line = Vec::new();
    let n = std::io::Read::take(reader, LINE_LEN_MAX_BYTES as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading its reply: {e}"))?;
    if n == 0 {
        return Err("it closed the connection".into());
    }
    if line.last() != Some(&b'\n') {
        return Err("its reply line is too long or cut short".into());
    }
    let text = String::from_utf8(line).map_err(|_| "its reply is not UTF-8".to_string())?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads the reply to `backup cut`.
pub fn read_cut<R: std::io::BufRead>(reader: &mut R) -> Result<Cut, String> {
    let bad = |line: &str| format!("unexpected reply `{line}`");
    let first = read_line(reader)?;
    if first == "ERROR" {
        return Err(
            "it does not know `backup cut`: is it a Terrace server of this version?".into(),
        );
    }
    if first.starts_with("SERVER_ERROR") || first.starts_with("CLIENT_ERROR") {
        return Err(first);
    }
    let mut words = first.split(' ');
    let (Some("CUT"), Some(id), Some(count), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad(&first));
    };
    let id: u64 = id.parse().map_err(|_| bad(&first))?;
    let count: u32 = count.parse().map_err(|_| bad(&first))?;
    let line = read_line(reader)?;
    let data_dir = PathBuf::from(line.strip_prefix("DATA_DIR ").ok_or_else(|| bad(&line))?);
    let line = read_line(reader)?;
    let server = line
        .strip_prefix("SERVER ")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| bad(&line))?
        .to_string();
    let mut shards = Vec::new();
    for expected in 0..count {
        let line = read_line(reader)?;
        let numbers = numbers_after(&line, "SHARD ", 3).ok_or_else(|| bad(&line))?;
        if numbers[0] != u64::from(expected) {
            return Err(format!(
                "shard {} where shard {expected} was expected",
                numbers[0]
            ));
        }
        let mut segments = Vec::new();
        for _ in 0..numbers[2] {
            let line = read_line(reader)?;
            let s = numbers_after(&line, "SEGMENT ", 3).ok_or_else(|| bad(&line))?;
            if s[1] > s[2] {
                return Err(bad(&line));
            }
            segments.push((s[0], s[1], s[2]));
        }
        shards.push(ShardCut {
            shard: expected,
            last_lsn: numbers[1],
            segments,
        });
    }
    let end = read_line(reader)?;
    if end != "END" {
        return Err(bad(&end));
    }
    Ok(Cut {
        id,
        data_dir,
        server,
        shards,
    })
}

/// The `n` decimal numbers after `prefix` on `line`, if that is exactly what it holds.
fn numbers_after(line: &str, prefix: &str, n: usize) -> Option<Vec<u64>> {
    let numbers: Vec<u64> = line
        .strip_prefix(prefix)?
        .split(' ')
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    (numbers.len() == n).then_some(numbers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn reads_a_cut_and_refuses_what_is_not_one() {
        let reply = b"CUT 7 2\r\nDATA_DIR /var/lib/terrace data\r\nSERVER s1\r\nSHARD 0 12 1\r\nSEGMENT 3 4096 65536\r\nSHARD 1 0 0\r\nEND\r\n";
        let cut = read_cut(&mut &reply[..]).unwrap();
        assert_eq!(
            cut,
            Cut {
                id: 7,
                data_dir: "/var/lib/terrace data".into(),
                server: "s1".into(),
                shards: vec![
                    ShardCut {
                        shard: 0,
                        last_lsn: 12,
                        segments: vec![(3, 4096, 65536)]
                    },
                    ShardCut {
                        shard: 1,
                        last_lsn: 0,
                        segments: vec![]
                    },
                ],
            }
        );
        for bad in [
            &b"ERROR\r\n"[..],
            b"SERVER_ERROR too many backup cuts held\r\n",
            b"CUT 7 1\r\nDATA_DIR /d\r\nSERVER s1\r\nSHARD 1 0 0\r\nEND\r\n",
            b"CUT 7 1\r\nDATA_DIR /d\r\nSERVER s1\r\nSHARD 0 5 1\r\nSEGMENT 1 70000 65536\r\nEND\r\n",
            b"CUT 7 1\r\nDATA_DIR /d\r\nSERVER s1\r\nSHARD 0 0 0\r\n",
            b"CUT 7 1\r\nDATA_DIR /d\r\nSHARD 0 0 0\r\nEND\r\n",
            b"CUT x 1\r\n",
        ] {
            assert!(
                read_cut(&mut &bad[..]).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
