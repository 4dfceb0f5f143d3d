//! A passive forwards data requests to its group's active (Terracotta's clients wait rather
//! than fail; seed 000). One upstream connection per client connection, opened when first
//! needed, one request at a time, in order with the connection's other replies.
//!
//! - A request is sent as the client wrote it, except that `noreply` is dropped: the active
//!   always answers, so that its replies can be framed, and the answer is discarded here for
//!   a client that asked for none.
//! - A reply is framed by what was asked: the get family reads `VALUE` blocks (skipping their
//!   data by length) and error parts up to `END`; everything else is one line.
//! - With no active known (an election under way), a request waits, at most
//!   `client_reconnect_window` and [`FORWARD_HOLD_MAX`]; if this server becomes the active
//!   meanwhile, it serves the request itself.
//! - If the upstream fails, the request's outcome is unknown: the client gets a
//!   `SERVER_ERROR` that says so, and the next request opens a new upstream.

use super::{Connection, Replies};
use crate::protocol::{Command, reply};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest a request waits for an active.
pub const FORWARD_HOLD_MAX: Duration = Duration::from_secs(30);
/// Longest a connection to the active may take to open.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the active may take to answer a forwarded request.
const FORWARD_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a held request looks for an active.
const HOLD_POLL: Duration = Duration::from_millis(20);
/// Longest reply line accepted from the active.
const REPLY_LINE_MAX_BYTES: usize = 64 << 10;

/// The connection to the active that this client connection's requests go through.
pub(super) struct Upstream {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

/// What to do with a request on a server that does not serve data.
pub(super) enum Forwarded {
    /// Answered (forwarded, or refused).
    Done,
    /// This server became the active while the request waited: serve it here.
    ServeHere,
}

impl Connection {
    /// Forwards one data request (`raw`: its bytes as received) to the active.
    pub(super) async fn forward(
        &mut self,
        command: &Command<'_>,
        raw: &[u8],
        replies: &mut Replies,
    ) -> Forwarded {
        let group = std::sync::Arc::clone(&self.executor.shared.group);
        let hold = group
            .cluster()
            .client_reconnect_window
            .min(FORWARD_HOLD_MAX);
        let deadline = Instant::now() + hold;
        let (name, addr) = loop {
            if group.serving() {
                return Forwarded::ServeHere;
            }
            if let Some(active) = group.active_client_address() {
                break active;
            }
            if Instant::now() >= deadline || self.executor.stop.is_stopped() {
                reply::server_error(&mut replies.out, &group.not_serving_reply());
                return Forwarded::Done;
            }
            glommio::timer::sleep(HOLD_POLL).await;
        };
        let noreply = command.noreply();
        let request = without_noreply(raw, noreply);
        let values = matches!(command, Command::Get { .. } | Command::GetAndTouch { .. });
        match self.exchange(addr, &request, values).await {
            Ok(answer) => {
                if !noreply {
                    replies.out.extend_from_slice(&answer);
                }
            }
            Err(error) => {
                self.upstream = None;
                reply::server_error(
                    &mut replies.out,
                    &format!(
                        "forwarding to the active {name} ({addr}) failed: {error}; the \
                         request's outcome is unknown"
                    ),
                );
            }
        }
        Forwarded::Done
    }

    /// Sends `request` to the active at `addr` and reads its whole reply.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        request: &[u8],
        values: bool,
    ) -> std::io::Result<Vec<u8>> {
        if self.upstream.as_ref().is_none_or(|u| u.addr != addr) {
            let stream = TcpStream::connect_timeout(addr, FORWARD_CONNECT_TIMEOUT).await?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(FORWARD_REPLY_TIMEOUT))?;
            stream.set_write_timeout(Some(FORWARD_REPLY_TIMEOUT))?;
            self.upstream = Some(Upstream {
                addr,
                stream,
                buf: Vec::new(),
                start: 0,
            });
        }
        let Some(upstream) = self.upstream.as_mut() else {
            unreachable!("opened above");
        };
        upstream.stream.write_all(request).await?;
        let mut answer = Vec::new();
        loop {
            let line = upstream.line().await?;
            answer.extend_from_slice(&line);
            if !values || line.starts_with(b"END") {
                break;
            }
            // An error inside a multi-key reply (a `gat` refused for one key) is one of its
            // parts: `END` still follows. (Requests reach here parsed and valid, so the active
            // never answers a get family request with a lone error line.)
            if is_error(&line) {
                continue;
            }
            // `VALUE <key> <flags> <bytes> [<cas>]`, then the data and \r\n.
            let bytes = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|_| line.starts_with(b"VALUE "))
                .ok_or_else(|| invalid("a reply line that is neither VALUE nor END"))?;
            let data = upstream.take(bytes + 2).await?;
            answer.extend_from_slice(&data);
        }
        Ok(answer)
    }
}

impl Upstream {
    /// Reads more from the active.
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the active closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next reply line, `\r\n` included.
    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.buf[self.start..self.start + i + 1].to_vec();
                self.start += i + 1;
                return Ok(line);
            }
            if self.buf.len() - self.start > REPLY_LINE_MAX_BYTES {
                return Err(invalid("a reply line too long"));
            }
            self.fill().await?;
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() - self.start < n {
            self.fill().await?;
        }
        let data = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(data)
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn is_error(line: &[u8]) -> bool {
    line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}

/// The request with its command line's trailing `noreply` token removed (when it has one).
fn without_noreply(raw: &[u8], noreply: bool) -> Vec<u8> {
    if !noreply {
        return raw.to_vec();
    }
    let Some(newline) = raw.iter().position(|&b| b == b'\n') else {
        return raw.to_vec();
    };
    let (line, rest) = raw.split_at(newline);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let trimmed = line.trim_ascii_end();
    let line = trimmed
        .strip_suffix(b"noreply")
        .unwrap_or(trimmed)
        .trim_ascii_end();
    let mut request = Vec::with_capacity(raw.len());
    request.extend_from_slice(line);
    request.extend_from_slice(b"\r");
    request.extend_from_slice(rest);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noreply_is_dropped_from_the_command_line_only() {
        assert_eq!(
            without_noreply(b"set k 0 0 7 noreply\r\nnoreply\r\n", true),
            b"set k 0 0 7\r\nnoreply\r\n"
        );
        assert_eq!(
            without_noreply(b"delete k noreply\n", true),
            b"delete k\r\n"
        );
        assert_eq!(without_noreply(b"get k\r\n", false), b"get k\r\n");
    }
}
