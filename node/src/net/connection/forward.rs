//! A passive forwards data requests to its group's active (Terracotta's clients wait rather
//! than fail; seed 000). One upstream connection per client connection, opened when first
//! needed; replies in order with the connection's other replies.
//!
//! - Pipelined requests go together: when a request is sent, the forwardable requests that
//!   follow it in the client's burst are sent with it (up to [`AHEAD_REQUESTS_MAX`] and
//!   [`AHEAD_BYTES_MAX`], small enough to sit in the socket's buffer whatever the active
//!   answers meanwhile), and each reads its own reply when its turn comes. One round trip
//!   for a burst, not one per request.
//! - A request is sent as the client wrote it, except that `noreply` is dropped: the active
//!   always answers, so that its replies can be framed, and the answer is discarded here for
//!   a client that asked for none.
//! - A reply is framed by what was asked: a get family request is sent followed by `mn`,
//!   and its reply is everything before the `MN` (`VALUE` blocks, their data skipped by
//!   length, error parts and `END`; or a lone error line from a server that could not
//!   forward it, such as the active of a moment ago during a planned failover: without the
//!   fence that line could not be told from the start of a longer reply); `VA` is followed
//!   by its data; everything else is one line.
//! - With no active known (an election under way), a request waits, at most
//!   `client_reconnect_window` and [`FORWARD_HOLD_MAX`]; if this server becomes the active
//!   meanwhile, it serves the request itself.
//! - If the upstream fails (the active died: a failover follows), the request waits for the
//!   next active, within the same bounds, and is sent again when that is safe: it was never
//!   sent (the connection could not be opened, or an idle one was found closed), or sending it
//!   twice gives the same state and the same reply (reads, `set`, `replace`, `touch`, `gat`).
//!   Requests sent ahead on a connection that failed count as sent.
//!   Otherwise (`add`, `cas`, `append`, `prepend`, `incr`, `decr`, `delete`, and `flush_all`,
//!   which would erase writes made since) its outcome cannot be known: the client gets a
//!   `SERVER_ERROR` that says so. (A resent `set` lands after writes other clients made to the
//!   same key during the failover, as if it had been sent last.)

use super::{Connection, Replies};
use crate::protocol::{Command, MetaKind, Parsed, parse, reply};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_wal::store::SetMode;

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
/// Most requests sent ahead of their turn with one.
pub const AHEAD_REQUESTS_MAX: usize = 64;
/// Most bytes of requests sent ahead with one: they must fit in the socket's send buffer
/// (16 KiB by default) even while the active, answering the first ones, waits for us to
/// read, or both sides would wait on each other.
pub const AHEAD_BYTES_MAX: usize = 12 << 10;

/// The connection to the active that this client connection's requests go through.
pub(super) struct Upstream {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// Which of this client connection's upstreams it is (requests sent ahead name it).
    serial: u64,
}

/// A request of the current burst sent to the active ahead of its turn.
pub(super) struct SentAhead {
    /// Where it starts in the connection's receive buffer.
    at: usize,
    /// The upstream it went on: if that one has failed since, its outcome is unknown.
    serial: u64,
    /// The active it was sent to.
    active: (String, SocketAddr),
}

/// What to do with a request on a server that does not serve data.
pub(super) enum Forwarded {
    /// Answered (forwarded, or refused).
    Done,
    /// This server became the active while the request waited: serve it here.
    ServeHere,
}

impl Connection {
    /// Whether the request at `at` in the receive buffer was sent to the active ahead of
    /// its turn: it must be answered by [`Connection::forward`], whatever happens since.
    pub(super) fn sent_ahead(&self, at: usize) -> bool {
        self.ahead.front().is_some_and(|a| a.at == at)
    }

    /// Forwards one data request (`raw`: its bytes as received, at `at` in the receive
    /// buffer, `following` the rest of the burst after it; `None` for a request of the
    /// server's own) to the active.
    pub(super) async fn forward(
        &mut self,
        command: &Command<'_>,
        raw: &[u8],
        at: Option<(usize, &[u8])>,
        replies: &mut Replies,
    ) -> Forwarded {
        let group = std::sync::Arc::clone(&self.executor.shared.group);
        let hold = group
            .cluster()
            .client_reconnect_window
            .min(FORWARD_HOLD_MAX);
        let deadline = Instant::now() + hold;
        let noreply = command.noreply();
        // A quiet meta request is sent without its `q`, for the same reason as `noreply`;
        // the answer it would not have had is dropped here.
        let quiet = match command {
            Command::Meta(meta) if meta.quiet => Some(meta.kind),
            _ => None,
        };
        let request = as_sent(command, raw);
        let values = fenced(command);
        let repeatable = repeatable(command);
        let executor = Rc::clone(&self.executor);
        let counters = &executor.shards.counters;
        let deliver = |answer: Vec<u8>, replies: &mut Replies| {
            counters.bump(crate::stats::Stat::terrace_forwarded);
            let silenced = quiet.is_some_and(|kind| quiet_drops(kind, &answer));
            if !noreply && !silenced {
                replies.out.extend_from_slice(&answer);
            }
        };
        if let Some(ahead) = at
            .filter(|(at, _)| self.sent_ahead(*at))
            .and_then(|_| self.ahead.pop_front())
        {
            let failure = match self.answer_ahead(&ahead, values).await {
                Ok(answer) => {
                    deliver(answer, replies);
                    return Forwarded::Done;
                }
                Err(failure) => failure,
            };
            self.upstream = None;
            if !repeatable {
                let (name, addr) = &ahead.active;
                let message = format!(
                    "forwarding to the active {name} ({addr}) failed: {}; the request's \
                     outcome is unknown",
                    failure.error
                );
                reply::server_error(&mut replies.out, &message);
                return Forwarded::Done;
            }
            // Safe to send again: on to the active there is now.
        }
        // Requests of the burst to send with this one, when it goes out.
        let following = at.map(|(at, following)| (at + raw.len(), following));
        loop {
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
            let failure = match self
                .exchange((&name, addr), &request, values, following)
                .await
            {
                Ok(answer) => {
                    deliver(answer, replies);
                    return Forwarded::Done;
                }
                Err(failure) => failure,
            };
            self.upstream = None;
            let again = !failure.sent || repeatable;
            if again && Instant::now() < deadline && !self.executor.stop.is_stopped() {
                // The active is gone or going: wait for the group to notice and elect.
                glommio::timer::sleep(HOLD_POLL).await;
                continue;
            }
            let error = failure.error;
            let message = if failure.sent {
                format!(
                    "forwarding to the active {name} ({addr}) failed: {error}; the request's \
                     outcome is unknown"
                )
            } else {
                format!(
                    "the active {name} ({addr}) cannot be reached: {error}; the request was \
                     not applied"
                )
            };
            reply::server_error(&mut replies.out, &message);
            return Forwarded::Done;
        }
    }

    /// Reads the reply of a request sent ahead (see [`SentAhead`]).
    async fn answer_ahead(&mut self, ahead: &SentAhead, values: bool) -> Result<Vec<u8>, Failure> {
        let lost = Failure {
            error: std::io::Error::other("the connection it was sent on failed"),
            sent: true,
        };
        let Some(upstream) = self.upstream.as_mut().filter(|u| u.serial == ahead.serial) else {
            return Err(lost);
        };
        let group = std::sync::Arc::clone(&self.executor.shared.group);
        let became_active = became_active(&group, &ahead.active.0);
        futures_lite::future::or(upstream.answer(values), became_active)
            .await
            .map_err(|error| Failure { error, sent: true })
    }

    /// The forwardable requests at the start of `following` (at `at` in the receive
    /// buffer), as they are sent to the active, within the bounds for sending ahead; each
    /// noted as sent ahead on upstream `serial` to `active`.
    fn take_ahead(
        &mut self,
        (mut at, mut following): (usize, &[u8]),
        serial: u64,
        active: (&str, SocketAddr),
    ) -> Vec<u8> {
        let mut batch = Vec::new();
        while self.ahead.len() < AHEAD_REQUESTS_MAX {
            let Parsed::Request { command, len } = parse(following, &self.executor.limits) else {
                break;
            };
            if !command.forwardable() || batch.len() + len > AHEAD_BYTES_MAX {
                break;
            }
            batch.extend(as_sent(&command, &following[..len]));
            self.executor
                .shards
                .counters
                .bump(crate::stats::Stat::terrace_forwarded_ahead);
            self.ahead.push_back(SentAhead {
                at,
                serial,
                active: (active.0.to_string(), active.1),
            });
            at += len;
            following = &following[len..];
        }
        batch
    }

    /// Sends `request` to the active at `addr`, with the requests of `following` that may go
    /// ahead with it (see [`Connection::take_ahead`]), and reads its whole reply.
    async fn exchange(
        &mut self,
        (name, addr): (&str, SocketAddr),
        request: &[u8],
        values: bool,
        following: Option<(usize, &[u8])>,
    ) -> Result<Vec<u8>, Failure> {
        let not_sent = |error| Failure { error, sent: false };
        if self
            .upstream
            .as_ref()
            .is_some_and(|u| u.addr != addr || u.closed())
        {
            self.upstream = None;
        }
        if self.upstream.is_none() {
            let stream = TcpStream::connect_timeout(addr, FORWARD_CONNECT_TIMEOUT)
                .await
                .map_err(|e| not_sent(e.into()))?;
            let ready = stream
                .set_nodelay(true)
                .and_then(|()| stream.set_read_timeout(Some(FORWARD_REPLY_TIMEOUT)))
                .and_then(|()| stream.set_write_timeout(Some(FORWARD_REPLY_TIMEOUT)));
            ready.map_err(|e| not_sent(e.into()))?;
            self.upstreams_opened += 1;
            self.upstream = Some(Upstream {
                addr,
                stream,
                buf: Vec::new(),
                start: 0,
                serial: self.upstreams_opened,
            });
        }
        let serial = self.upstreams_opened;
        // Sent ahead only when none are waiting: those that are are the requests that follow
        // (sent on a connection since failed, they are answered for in their turn).
        let ahead = match following {
            Some(following) if self.ahead.is_empty() => {
                self.take_ahead(following, serial, (name, addr))
            }
            _ => Vec::new(),
        };
        let Some(upstream) = self.upstream.as_mut() else {
            unreachable!("opened above");
        };
        // This server may become the active while the request is out (the old active was
        // paused and lost the group): then its answer may never come, and this server is
        // where the request belongs.
        // (A planned failover is different: the old active, still joined, answers or
        // forwards the request here.)
        let group = std::sync::Arc::clone(&self.executor.shared.group);
        let became_active = became_active(&group, name);
        futures_lite::future::or(upstream.exchange(request, &ahead, values), became_active)
            .await
            .map_err(|error| Failure { error, sent: true })
    }
}

/// Fails once this server has become the active while `active` is no longer in the group
/// (see `exchange`).
async fn became_active(
    group: &crate::cluster::group::Group,
    active: &str,
) -> std::io::Result<Vec<u8>> {
    while !group.serving() || group.is_joined(active) {
        glommio::timer::sleep(HOLD_POLL).await;
    }
    Err(std::io::Error::other("this server became the active"))
}

/// Why a forwarded request failed.
struct Failure {
    error: std::io::Error,
    /// Whether any of it may have reached the active.
    sent: bool,
}

/// Whether a request may be sent to the next active after it may already have been applied
/// by the last one: applying it twice leaves the same state and gives the same reply.
fn repeatable(command: &Command<'_>) -> bool {
    match command {
        Command::Get { .. } | Command::GetAndTouch { .. } | Command::Touch { .. } => true,
        Command::Version | Command::Verbosity { .. } => true,
        Command::Store { mode, .. } => matches!(mode, SetMode::Set | SetMode::Replace),
        Command::Meta(meta) => match meta.kind {
            // A second `N` or `R` would tell another client has won the token (`Z`) when
            // this one did.
            MetaKind::Get => meta.ttl.is_none() && meta.vivify.is_none() && meta.recache.is_none(),
            MetaKind::Set => {
                meta.compare_cas.is_none()
                    && matches!(meta.set_mode, SetMode::Set | SetMode::Replace)
            }
            MetaKind::Delete | MetaKind::Arithmetic => false,
        },
        _ => false,
    }
}

impl Upstream {
    /// Whether the active closed this (idle) connection: it stopped or died since the last
    /// request. Checked before a request is sent on it, so that a request is not lost to a
    /// connection that was dead before it was written.
    fn closed(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: the stream owns this fd and outlives the call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        match rustix::net::recv(
            fd,
            &mut byte,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => true,
            // Bytes nobody asked for: out of step; start over.
            Ok(_) => true,
            Err(e) => e != rustix::io::Errno::AGAIN,
        }
    }

    /// Sends a request, and `ahead` after it in the same write, and reads the request's
    /// whole reply.
    async fn exchange(
        &mut self,
        request: &[u8],
        ahead: &[u8],
        values: bool,
    ) -> std::io::Result<Vec<u8>> {
        if ahead.is_empty() {
            self.stream.write_all(request).await?;
        } else {
            let mut both = Vec::with_capacity(request.len() + ahead.len());
            both.extend_from_slice(request);
            both.extend_from_slice(ahead);
            self.stream.write_all(&both).await?;
        }
        self.answer(values).await
    }

    /// Reads the next reply, whole: for the get family (`fenced`) up to the `MN` after it,
    /// which is left out.
    async fn answer(&mut self, fenced: bool) -> std::io::Result<Vec<u8>> {
        let upstream = self;
        let mut answer = Vec::new();
        loop {
            let line = upstream.line().await?;
            if fenced && line == b"MN\r\n" {
                break;
            }
            answer.extend_from_slice(&line);
            if let Some(rest) = line.strip_prefix(b"VA ") {
                // A meta reply with a value: `VA <bytes> <flags>*`, the data and \r\n.
                let bytes = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| invalid("a VA reply line without its length"))?;
                let data = upstream.take(bytes + 2).await?;
                answer.extend_from_slice(&data);
                break;
            }
            if !fenced {
                break;
            }
            // `END`, an error part of a multi-key reply (a `gat` refused for one key), or a
            // lone error: the fence says where the reply ends.
            if line.starts_with(b"END") || is_error(&line) {
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

/// Whether a request's reply is read up to a fence (see the module's notes): the get family.
fn fenced(command: &Command<'_>) -> bool {
    matches!(command, Command::Get { .. } | Command::GetAndTouch { .. })
}

/// A request (`raw`: its bytes as received) as it is sent to the active: without `noreply`
/// or a meta `q` (the active always answers, so that its replies can be framed), and
/// followed by `mn` when its reply is [`fenced`].
fn as_sent(command: &Command<'_>, raw: &[u8]) -> Vec<u8> {
    let mut request = match command {
        Command::Meta(meta) if meta.quiet => without_quiet(raw),
        _ => without_noreply(raw, command.noreply()),
    };
    if fenced(command) {
        request.extend_from_slice(b"mn\r\n");
    }
    request
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

/// The request with the `q` flag taken out of its command line (a meta request's flags
/// are one token each, so the flag is a token `q` after the key).
fn without_quiet(raw: &[u8]) -> Vec<u8> {
    let Some(newline) = raw.iter().position(|&b| b == b'\n') else {
        return raw.to_vec();
    };
    let (line, rest) = raw.split_at(newline);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // The command, the key and, for `ms`, the data length are not flags (a key may be "q").
    let fixed = if line.starts_with(b"ms ") { 3 } else { 2 };
    let mut request = Vec::with_capacity(raw.len());
    for (i, token) in line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .enumerate()
        .filter(|(i, t)| *i < fixed || *t != b"q")
        .map(|(_, t)| t)
        .enumerate()
    {
        if i > 0 {
            request.push(b' ');
        }
        request.extend_from_slice(token);
    }
    request.extend_from_slice(b"\r");
    request.extend_from_slice(rest);
    request
}

/// Whether a quiet meta request of `kind` would not have been answered `answer`: `mg`
/// leaves out a miss, the others their success.
fn quiet_drops(kind: MetaKind, answer: &[u8]) -> bool {
    match kind {
        MetaKind::Get => answer.starts_with(b"EN"),
        MetaKind::Set | MetaKind::Delete => answer.starts_with(b"HD"),
        MetaKind::Arithmetic => answer.starts_with(b"HD") || answer.starts_with(b"VA"),
    }
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

    /// A get answered by a lone error line (a server that could not forward it) ends at
    /// its fence: the reply of the request sent after it is that request's own. (Found by
    /// review: without the fence, the get's reply took in the next one's.)
    #[test]
    fn a_lone_error_for_a_get_ends_at_its_fence() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let active = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut asked = Vec::new();
            let mut chunk = [0u8; 256];
            while !asked.ends_with(b"get c\r\nmn\r\n") {
                let n = s.read(&mut chunk).expect("read (timed out?)");
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&asked));
                asked.extend_from_slice(&chunk[..n]);
            }
            s.write_all(
                b"SERVER_ERROR not serving\r\nMN\r\nVALUE b 0 2\r\nMN\r\nEND\r\nMN\r\n\
                  SERVER_ERROR out of memory storing object\r\nEND\r\nMN\r\n",
            )
            .expect("write");
            asked
        });
        let answers = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                let mut upstream = Upstream {
                    addr,
                    stream,
                    buf: Vec::new(),
                    start: 0,
                    serial: 1,
                };
                let get = |key: &str| {
                    let raw = format!("get {key}\r\n");
                    let limits = crate::protocol::Limits {
                        item_size_max_bytes: 1 << 20,
                    };
                    let Parsed::Request { command, .. } = parse(raw.as_bytes(), &limits) else {
                        panic!("a get");
                    };
                    as_sent(&command, raw.as_bytes())
                };
                let mut ahead = get("b");
                ahead.extend(get("c"));
                let mut answers = vec![upstream.exchange(&get("a"), &ahead, true).await];
                answers.push(upstream.answer(true).await);
                answers.push(upstream.answer(true).await);
                answers
            })
            .expect("executor")
            .join()
            .expect("join");
        let asked = active.join().expect("active");
        assert_eq!(asked, b"get a\r\nmn\r\nget b\r\nmn\r\nget c\r\nmn\r\n");
        let answers: Vec<String> = answers
            .into_iter()
            .map(|a| String::from_utf8_lossy(&a.expect("answer")).into_owned())
            .collect();
        assert_eq!(
            answers,
            [
                "SERVER_ERROR not serving\r\n",
                // A value that holds "MN" is read by its length, not taken for the fence.
                "VALUE b 0 2\r\nMN\r\nEND\r\n",
                "SERVER_ERROR out of memory storing object\r\nEND\r\n",
            ]
        );
    }

    #[test]
    fn quiet_is_dropped_from_the_command_line_only() {
        assert_eq!(
            without_quiet(b"ms k 1 q  T5\r\nq\r\n"),
            b"ms k 1 T5\r\nq\r\n"
        );
        assert_eq!(without_quiet(b"mg q q v\n"), b"mg q v\r\n");
        assert_eq!(without_quiet(b"ms k q q\r\n"), b"ms k q\r\n");
        assert!(quiet_drops(MetaKind::Get, b"EN\r\n"));
        assert!(!quiet_drops(MetaKind::Get, b"HD\r\n"));
        assert!(quiet_drops(MetaKind::Arithmetic, b"VA 1\r\n5\r\n"));
        assert!(!quiet_drops(MetaKind::Delete, b"NF\r\n"));
    }
}
