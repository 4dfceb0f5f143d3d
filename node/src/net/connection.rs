//! One client connection: read, run every complete request of the read, write all their
//! replies at once, in order.
//!
//! Replies of one read burst are gathered in one buffer. Requests for shards of this
//! executor run inline and write their reply straight into it; requests for other
//! executors' shards are sent at once (so they run concurrently) and their replies are
//! spliced in at their place when the burst is written. Before anything is written, every
//! write of the burst is durable (permanent-store: its group-committed fdatasync), and so is
//! every value a `get` returns: a client never sees what a crash could take back.

use super::Executor;
use crate::constants::{
    GET_LINE_LEN_MAX_BYTES, LINE_WITH_NEWLINE_LEN_MAX_BYTES, RECV_BUFFER_INITIAL_BYTES,
    RECV_CHUNK_BYTES, REPLY_FLUSH_BYTES,
};
use crate::protocol::{Command, Parsed, ProtocolError, first_key, parse, reply, request_len};
use crate::shard::route::{Answer, Op, Slot, refusal_bytes};
use crate::shard::{Durable, MAPPED_VALUE_MIN_BYTES, MAPPED_VALUES_PER_REPLY_MAX, MappedItem};
use crate::stats::Stat;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;
use std::collections::BTreeMap;
use std::rc::Rc;
use terrace_wal::constants::KEY_LEN_MAX_BYTES;

mod backup;
mod forward;

/// Where a remote reply part goes: (offset in the reply buffer, sequence number among
/// parts at the same offset, part index in the answer).
type Place = (usize, u64, usize);

/// A reply still to come from another executor, and where its parts go.
struct Remote {
    slot: Rc<Slot>,
    places: Vec<Place>,
}

/// The replies of one burst.
#[derive(Default)]
struct Replies {
    out: Vec<u8>,
    waits: Vec<Durable>,
    remotes: Vec<Remote>,
    /// Values sent straight from their segment mapping, with the offset in `out` where each
    /// belongs, in increasing order. Never at the offset of a remote answer: a value's place
    /// is after its `VALUE` line, which is in `out`.
    mapped: Vec<(usize, MappedItem)>,
    /// Bytes of the values in `mapped`.
    mapped_bytes: usize,
    seq: u64,
    quit: bool,
}

impl Replies {
    fn is_empty(&self) -> bool {
        self.out.is_empty() && self.remotes.is_empty() && self.waits.is_empty()
    }

    /// Reply bytes gathered so far (remote answers not counted).
    fn len(&self) -> usize {
        self.out.len() + self.mapped_bytes
    }

    /// Counts the values a shard added to `mapped` since it held `before` of them.
    fn count_mapped(&mut self, before: usize) {
        for (_, item) in &self.mapped[before..] {
            self.mapped_bytes += item.value().len();
        }
    }

    /// Adds a durability wait, merged with an earlier one on the same shard (the later LSN
    /// covers both): a pipelined burst of writes to one shard waits once.
    fn wait_for(&mut self, wait: Option<Durable>) {
        let Some(wait) = wait else { return };
        match self
            .waits
            .iter_mut()
            .find(|w| Rc::ptr_eq(&w.commit, &wait.commit))
        {
            Some(earlier) => {
                earlier.lsn = earlier.lsn.max(wait.lsn);
                // A read's wait may not need the passives (they had its record already); a
                // write's merged into it still does.
                earlier.replicas = earlier.replicas.take().or(wait.replicas);
            }
            None => self.waits.push(wait),
        }
    }

    fn place(&mut self, part: usize) -> Place {
        self.seq += 1;
        (self.out.len(), self.seq, part)
    }
}

/// Serves one connection until the client leaves, breaks the protocol beyond repair, or
/// the server stops.
pub async fn serve(stream: TcpStream, executor: Rc<Executor>, id: u64) {
    let counters = &executor.shards.counters;
    counters.bump(Stat::total_connections);
    counters
        .curr_connections
        .set(counters.curr_connections.get() + 1);
    let mut connection = Connection {
        stream,
        executor: Rc::clone(&executor),
        id,
        cuts: Vec::new(),
        upstream: None,
        upstreams_opened: 0,
        ahead: std::collections::VecDeque::new(),
    };
    if let Err(reason) = connection.run().await {
        tracing::debug!(connection = id, %reason, "connection closed");
    }
    // A backup cut lives no longer than the connection that asked for it.
    connection.release_cuts().await;
    executor.stop.forget(id);
    let counters = &executor.shards.counters;
    counters
        .curr_connections
        .set(counters.curr_connections.get().saturating_sub(1));
}

struct Connection {
    stream: TcpStream,
    executor: Rc<Executor>,
    id: u64,
    /// Online-backup cuts this connection holds (released when it closes).
    cuts: Vec<u64>,
    /// On a passive: the connection to the active its data requests are forwarded to.
    upstream: Option<forward::Upstream>,
    /// Upstreams opened so far (each is numbered).
    upstreams_opened: u64,
    /// Requests of the current burst already sent to the active, oldest first (see
    /// `forward`).
    ahead: std::collections::VecDeque<forward::SentAhead>,
}

impl Connection {
    async fn run(&mut self) -> Result<(), String> {
        // The largest request: the longest line the parser runs, newline included, then the
        // largest data block and its `\r\n`.
        let limit = GET_LINE_LEN_MAX_BYTES
            .max(LINE_WITH_NEWLINE_LEN_MAX_BYTES + self.executor.limits.item_size_max_bytes + 2);
        let mut buf = vec![0u8; RECV_BUFFER_INITIAL_BYTES];
        let (mut start, mut filled) = (0usize, 0usize);
        // Bytes of a refused data block still to skip.
        let mut swallow = 0usize;
        let mut replies = Replies::default();
        loop {
            // Every complete request in the buffer.
            loop {
                if swallow > 0 {
                    let n = swallow.min(filled - start);
                    start += n;
                    swallow -= n;
                    if swallow > 0 {
                        break;
                    }
                }
                match parse(&buf[start..filled], &self.executor.limits) {
                    Parsed::Incomplete => break,
                    Parsed::Close => {
                        self.flush(&mut replies).await?;
                        return Err("request line too long".into());
                    }
                    Parsed::Invalid {
                        error,
                        len,
                        noreply,
                    } => {
                        if !noreply {
                            replies.out.extend_from_slice(error.reply());
                        }
                        start += len;
                    }
                    Parsed::Swallow {
                        error,
                        len,
                        skip_bytes,
                        delete_key,
                        noreply,
                    } => {
                        // memcached drops the old value of a refused set; so do we, with no
                        // reply of its own (on a passive: the active does, forwarded).
                        let here = match delete_key {
                            Some(key) if !self.executor.shared.group.serving() => {
                                let mut raw = b"delete ".to_vec();
                                raw.extend_from_slice(key);
                                raw.extend_from_slice(b" noreply\r\n");
                                let delete = Command::Delete { key, noreply: true };
                                // Its own reply, or a failure to forward it, is not the
                                // client's: the refused set answers for itself below.
                                let mut unheard = Replies::default();
                                matches!(
                                    self.forward(&delete, &raw, None, &mut unheard).await,
                                    forward::Forwarded::ServeHere
                                )
                            }
                            _ => true,
                        };
                        if let Some(key) = delete_key.filter(|_| here) {
                            self.keyed(
                                key,
                                true,
                                &mut replies,
                                |shards, out| shards.delete(key, false, out),
                                || Op::Delete {
                                    key: key.to_vec(),
                                    count: false,
                                },
                            )
                            .await;
                        }
                        if !noreply {
                            replies.out.extend_from_slice(error.reply());
                        }
                        start += len;
                        swallow = skip_bytes;
                    }
                    Parsed::Request { command, len } => {
                        let command_start = start;
                        start += len;
                        // The lookups of the next requests of the burst, if they are here, are
                        // warmed while this one runs (at pipeline 16 their cache misses were a
                        // third of the executor's time), in two steps: the index table's lines
                        // of the request after the next are asked for now; the next one's,
                        // asked for a request ago, are read now and the key of each of its
                        // candidate entries asked for from its record.
                        let next = &buf[start..filled];
                        if let Some(next_key) = first_key(next) {
                            self.executor.shards.prefetch(next_key);
                            if let Some(after) =
                                request_len(next).and_then(|n| first_key(&next[n..]))
                            {
                                self.executor.shards.prefetch_table(after);
                            }
                        }
                        // A request sent ahead to the active is answered from there, even if this
                        // server has become the active since.
                        let forwarded = if (command.forwardable()
                            && !self.executor.shared.group.serving())
                            || self.sent_ahead(command_start)
                        {
                            let raw = &buf[command_start..start];
                            let following = (command_start, &buf[start..filled]);
                            self.forward(&command, raw, Some(following), &mut replies)
                                .await
                        } else {
                            forward::Forwarded::ServeHere
                        };
                        if let forward::Forwarded::ServeHere = forwarded {
                            let raw = &buf[command_start..start];
                            self.execute(command, raw, &mut replies).await;
                        }
                        debug_assert!(command_start < start);
                        if replies.quit {
                            self.flush(&mut replies).await?;
                            return Ok(());
                        }
                    }
                }
                if replies.len() >= REPLY_FLUSH_BYTES {
                    self.flush(&mut replies).await?;
                }
            }
            if !replies.is_empty() {
                self.flush(&mut replies).await?;
            }
            // Requests sent ahead are complete requests of this burst: each has had its turn.
            // (Were one left, its offset would name another request after the buffer moves.)
            if !self.ahead.is_empty() {
                debug_assert!(
                    false,
                    "{} requests sent ahead were not answered",
                    self.ahead.len()
                );
                self.ahead.clear();
                self.upstream = None;
            }

            // Make room for the next read.
            if start == filled {
                start = 0;
                filled = 0;
                if buf.len() > RECV_BUFFER_INITIAL_BYTES {
                    buf = vec![0u8; RECV_BUFFER_INITIAL_BYTES];
                }
            } else if start > 0 && buf.len() - filled < RECV_CHUNK_BYTES.min(buf.len() / 2) {
                buf.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            }
            if filled == buf.len() {
                if buf.len() >= limit {
                    return Err("request larger than any request can be".into());
                }
                buf.resize((buf.len() * 2).min(limit), 0);
            }

            let stop = &self.executor.stop;
            let read = futures_lite::future::or(
                async { Some(self.stream.read(&mut buf[filled..]).await) },
                async {
                    stop.wait(self.id).await;
                    None
                },
            )
            .await;
            match read {
                None => return Ok(()),
                Some(Ok(0)) => return Ok(()),
                Some(Ok(n)) => {
                    filled += n;
                    self.executor
                        .shards
                        .counters
                        .add(Stat::bytes_read, n as u64);
                }
                Some(Err(e)) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Waits for durability and remote replies, then writes the burst's replies at once.
    async fn flush(&mut self, replies: &mut Replies) -> Result<(), String> {
        for wait in replies.waits.drain(..) {
            if let Err(error) = wait.wait().await {
                // Nothing of this burst may be acknowledged: say why, and close.
                let mut out = Vec::new();
                reply::server_error(&mut out, &format!("data not durable: {error}"));
                let _ = self.stream.write_all(&out).await;
                return Err(format!("sync failed: {error}"));
            }
        }
        let mut out = std::mem::take(&mut replies.out);
        let mut inserts: BTreeMap<(usize, u64), Vec<u8>> = BTreeMap::new();
        if !replies.remotes.is_empty() {
            for remote in replies.remotes.drain(..) {
                match remote.slot.answer().await {
                    Answer::Bytes(bytes) => {
                        if let Some(&(at, seq, _)) = remote.places.first() {
                            inserts.insert((at, seq), bytes);
                        }
                    }
                    Answer::Parts(mut parts) => {
                        for (at, seq, part) in remote.places {
                            if let Some(bytes) = parts.get_mut(part) {
                                inserts.insert((at, seq), std::mem::take(bytes));
                            }
                        }
                    }
                    Answer::Stats(_) | Answer::Cut(_) => {}
                }
            }
        }
        replies.seq = 0;
        let mapped = std::mem::take(&mut replies.mapped);
        replies.mapped_bytes = 0;
        if inserts.is_empty() && mapped.is_empty() {
            if !out.is_empty() {
                self.stream
                    .write_all(&out)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                self.executor
                    .shards
                    .counters
                    .add(Stat::bytes_written, out.len() as u64);
            }
        } else {
            self.write_in_pieces(&out, &inserts, &mapped).await?;
        }
        out.clear();
        replies.out = out;
        Ok(())
    }

    /// Writes `out` with the remote answers and the mapped values in their places, in as few
    /// `sendmsg` calls as the socket takes (one, usually). Mapped values, and remote answers
    /// as large, are sent as they are; smaller answers are copied in with the reply's text.
    async fn write_in_pieces(
        &mut self,
        out: &[u8],
        inserts: &BTreeMap<(usize, u64), Vec<u8>>,
        mapped: &[(usize, MappedItem)],
    ) -> Result<(), String> {
        // In place order. A remote answer never shares a place with a mapped value (see
        // `Replies`); remote answers that share one come in their sequence order.
        let mut places: Vec<(usize, u64, &[u8])> = inserts
            .iter()
            .map(|(&(at, seq), bytes)| (at, seq, bytes.as_slice()))
            .chain(mapped.iter().map(|(at, item)| (*at, 0, item.value())))
            .collect();
        places.sort_by_key(|&(at, seq, _)| (at, seq));
        let mut text = Vec::with_capacity(out.len());
        let mut large = Vec::new();
        let mut from = 0;
        for (at, _, bytes) in places {
            text.extend_from_slice(&out[from..at]);
            from = at;
            if bytes.len() < MAPPED_VALUE_MIN_BYTES {
                text.extend_from_slice(bytes);
            } else {
                large.push((text.len(), bytes));
            }
        }
        text.extend_from_slice(&out[from..]);
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(2 * large.len() + 1);
        let mut start = 0;
        for (cut, bytes) in large {
            pieces.push(&text[start..cut]);
            pieces.push(bytes);
            start = cut;
        }
        pieces.push(&text[start..]);
        let written: usize = pieces.iter().map(|p| p.len()).sum();
        write_all_vectored(&mut self.stream, &mut pieces)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.executor
            .shards
            .counters
            .add(Stat::bytes_written, written as u64);
        Ok(())
    }

    fn me(&self) -> usize {
        self.executor.router.me()
    }

    /// Sends `op` to executor `owner`; its reply goes at the current end of the buffer.
    async fn remote(&self, owner: usize, op: Op, noreply: bool, replies: &mut Replies) {
        let slot = self.executor.router.send(owner, op).await;
        if !noreply {
            let place = replies.place(0);
            replies.remotes.push(Remote {
                slot,
                places: vec![place],
            });
        }
    }

    /// Runs a one-key write locally or remotely; `noreply` drops its reply, errors too, as
    /// memcached does (and as a remote executor's reply is dropped: both paths must agree).
    async fn keyed(
        &mut self,
        key: &[u8],
        noreply: bool,
        replies: &mut Replies,
        local: impl FnOnce(
            &crate::shard::LocalShards,
            &mut Vec<u8>,
        ) -> Result<Option<Durable>, crate::shard::Refusal>,
        remote: impl FnOnce() -> Op,
    ) {
        let owner = self.executor.topology.owner_of_key(key);
        if owner != self.me() {
            return self.remote(owner, remote(), noreply, replies).await;
        }
        let mark = replies.out.len();
        match local(&self.executor.shards, &mut replies.out) {
            Ok(wait) => {
                if noreply {
                    replies.out.truncate(mark);
                } else {
                    replies.wait_for(wait);
                }
            }
            Err(mut refusal) => {
                let wait = refusal.wait.take();
                // refusal_bytes logs a failed shard whether or not the client hears of it.
                let reply = refusal_bytes(refusal);
                if !noreply {
                    replies.wait_for(wait);
                    replies.out.extend_from_slice(&reply);
                }
            }
        }
    }

    /// Runs one request (`raw`: its bytes as received).
    async fn execute(&mut self, command: Command<'_>, raw: &[u8], replies: &mut Replies) {
        let counters = &self.executor.shards.counters;
        let noreply = command.noreply();
        // Only the active of a mirror group serves data: requests a passive cannot forward
        // (backup cuts, or all of them when forwarding gave up) are refused, naming the active.
        let group = &self.executor.shared.group;
        if command.touches_data() && !group.serving() {
            reply::server_error(&mut replies.out, &group.not_serving_reply());
            return;
        }
        match command {
            Command::Get { keys, with_cas } => {
                self.gets(keys.iter(), None, with_cas, replies).await;
            }
            Command::GetAndTouch {
                exptime,
                keys,
                with_cas,
            } => {
                self.gets(keys.iter(), Some(exptime), with_cas, replies)
                    .await;
            }
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                ..
            } => {
                counters.bump(Stat::cmd_set);
                self.keyed(
                    key,
                    noreply,
                    replies,
                    |shards, out| shards.store(mode, key, flags, exptime, data, out),
                    || Op::Store {
                        mode,
                        key: key.to_vec(),
                        flags,
                        exptime,
                        data: data.to_vec(),
                    },
                )
                .await;
            }
            Command::Delete { key, .. } => {
                self.keyed(
                    key,
                    noreply,
                    replies,
                    |shards, out| shards.delete(key, true, out),
                    || Op::Delete {
                        key: key.to_vec(),
                        count: true,
                    },
                )
                .await;
            }
            Command::Delta { key, delta, .. } => {
                self.keyed(
                    key,
                    noreply,
                    replies,
                    |shards, out| shards.delta(key, delta, out),
                    || Op::Delta {
                        key: key.to_vec(),
                        delta,
                    },
                )
                .await;
            }
            Command::Touch { key, exptime, .. } => {
                counters.bump(Stat::cmd_touch);
                self.keyed(
                    key,
                    noreply,
                    replies,
                    |shards, out| shards.touch(key, exptime, out),
                    || Op::Touch {
                        key: key.to_vec(),
                        exptime,
                    },
                )
                .await;
            }
            Command::FlushAll { delay, .. } => {
                counters.bump(Stat::cmd_flush);
                let reply = self.flush_all(delay).await;
                if !noreply {
                    replies.out.extend_from_slice(&reply);
                } else if reply != reply::OK {
                    // memcached sends a noreply request nothing, errors included.
                    tracing::warn!(
                        reply = %String::from_utf8_lossy(&reply).trim_end(),
                        "flush_all noreply failed"
                    );
                }
            }
            Command::Meta(meta) => {
                let mut key_buf = [0u8; KEY_LEN_MAX_BYTES];
                let key = meta.key(&mut key_buf);
                let owner = self.executor.topology.owner_of_key(key);
                if owner != self.me() {
                    // That executor parses the request again from its bytes (it was parsed
                    // here: it parses the same way).
                    let op = Op::Meta {
                        request: raw.to_vec(),
                    };
                    return self.remote(owner, op, false, replies).await;
                }
                // As `get`: a large value of an `mg` is sent from its mapping.
                let before = replies.mapped.len();
                let mapped = (before < MAPPED_VALUES_PER_REPLY_MAX).then_some(&mut replies.mapped);
                match self
                    .executor
                    .shards
                    .meta(&meta, key, &mut replies.out, mapped)
                {
                    Ok(wait) => replies.wait_for(wait),
                    Err(mut refusal) => {
                        replies.wait_for(refusal.wait.take());
                        replies.out.extend_from_slice(&refusal_bytes(refusal));
                    }
                }
                replies.count_mapped(before);
            }
            Command::MetaNoop => replies.out.extend_from_slice(reply::MN),
            Command::Version => {
                replies.out.extend_from_slice(b"VERSION ");
                replies
                    .out
                    .extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
                replies.out.extend_from_slice(b"\r\n");
            }
            Command::Verbosity { .. } => {
                if !noreply {
                    replies.out.extend_from_slice(reply::OK);
                }
            }
            Command::Quit => replies.quit = true,
            Command::Stats { args } => self.stats(args, replies).await,
            Command::Backup { args } => self.backup(args, replies).await,
            Command::Shutdown => match &self.executor.shared.shutdown {
                Some(stopping) => {
                    tracing::info!(
                        "stopping (shutdown command): finishing in-flight requests, then syncing"
                    );
                    replies.out.extend_from_slice(reply::OK);
                    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // memcached's answer without -A.
                None => replies
                    .out
                    .extend_from_slice(b"ERROR: shutdown not enabled\r\n"),
            },
            Command::DebugTime { shift_secs } => {
                if self.executor.shared.debugtime_enabled {
                    self.executor.shared.clock.shift(shift_secs);
                    tracing::info!(
                        shift_secs,
                        total_shift_secs = self.executor.shared.clock.shift_secs(),
                        "debugtime: server clock shifted"
                    );
                    replies.out.extend_from_slice(reply::OK);
                } else {
                    replies
                        .out
                        .extend_from_slice(ProtocolError::UnknownCommand.reply());
                }
            }
        }
    }

    /// `get`, `gets`, `gat`, `gats`: local keys inline, the rest in one request per executor.
    async fn gets<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k [u8]>,
        touch: Option<i64>,
        with_cas: bool,
        replies: &mut Replies,
    ) {
        let counters = &self.executor.shards.counters;
        let me = self.me();
        let topology = self.executor.topology;
        // Per remote executor: its keys, and where each one's reply goes.
        let mut remote: BTreeMap<usize, (Vec<Vec<u8>>, Vec<Place>)> = BTreeMap::new();
        for key in keys {
            counters.bump(Stat::cmd_get);
            if touch.is_some() {
                counters.bump(Stat::cmd_touch);
            }
            let owner = topology.owner_of_key(key);
            if owner != me {
                let place = replies.place(0);
                let (keys, places) = remote.entry(owner).or_default();
                places.push((place.0, place.1, keys.len()));
                keys.push(key.to_vec());
                continue;
            }
            let shards = &self.executor.shards;
            let before = replies.mapped.len();
            let mapped = (before < MAPPED_VALUES_PER_REPLY_MAX).then_some(&mut replies.mapped);
            match touch {
                None => {
                    let wait = shards.get(key, with_cas, &mut replies.out, mapped);
                    replies.wait_for(wait);
                }
                Some(exptime) => {
                    match shards.get_and_touch(key, exptime, with_cas, &mut replies.out, mapped) {
                        Ok(wait) => replies.wait_for(wait),
                        Err(mut refusal) => {
                            replies.wait_for(refusal.wait.take());
                            replies.out.extend_from_slice(&refusal_bytes(refusal));
                        }
                    }
                }
            }
            replies.count_mapped(before);
        }
        for (owner, (keys, places)) in remote {
            let op = match touch {
                None => Op::Get { keys, with_cas },
                Some(exptime) => Op::GetAndTouch {
                    keys,
                    exptime,
                    with_cas,
                },
            };
            let slot = self.executor.router.send(owner, op).await;
            replies.remotes.push(Remote { slot, places });
        }
        replies.out.extend_from_slice(reply::END);
    }

    /// Runs `op` on every executor (this one inline); returns each answer.
    async fn everywhere(&self, op: impl Fn() -> Op) -> Vec<Answer> {
        let mut slots = Vec::new();
        for executor in 0..self.executor.shared.executors {
            if executor != self.me() {
                slots.push(self.executor.router.send(executor, op()).await);
            }
        }
        let mut answers = Vec::new();
        for slot in slots {
            answers.push(slot.answer().await);
        }
        answers
    }

    async fn flush_all(&mut self, delay: i64) -> Vec<u8> {
        let local = self.executor.shards.flush_all(delay);
        let mut result = match local {
            Ok(waits) => {
                let mut result = reply::OK.to_vec();
                for wait in waits {
                    if let Err(error) = wait.wait().await {
                        result.clear();
                        reply::server_error(
                            &mut result,
                            &format!("flush_all not durable: {error}"),
                        );
                        break;
                    }
                }
                result
            }
            Err(refusal) => refusal_bytes(refusal),
        };
        for answer in self.everywhere(|| Op::FlushAll { delay }).await {
            if let Answer::Bytes(bytes) = answer
                && bytes != reply::OK
                && result == reply::OK
            {
                result = bytes;
            }
        }
        result
    }

    /// Writes the replies gathered so far, for a command that gathers from every executor
    /// and answers in place after them. False if the connection is done for.
    async fn flush_earlier(&mut self, replies: &mut Replies) -> bool {
        let mut earlier = std::mem::take(replies);
        let quit = earlier.quit;
        if self.flush(&mut earlier).await.is_err() {
            replies.quit = true;
            return false;
        }
        replies.quit = quit;
        true
    }

    async fn stats(&mut self, args: &[u8], replies: &mut Replies) {
        if !self.flush_earlier(replies).await {
            return;
        }
        let out = &mut replies.out;
        match args {
            b"" => {
                let mut total = self.executor.shards.snapshot();
                for answer in self.everywhere(|| Op::Stats).await {
                    if let Answer::Stats(snapshot) = answer {
                        total.add(&snapshot);
                    }
                }
                crate::stats::general(out, &self.executor.shared, &total);
            }
            b"settings" => crate::stats::settings(out, &self.executor.shared),
            b"slabs" => crate::stats::slabs(out),
            b"items" => crate::stats::items(out),
            b"sizes" => crate::stats::sizes(out),
            b"cluster" => crate::stats::cluster(out, &self.executor.shared),
            b"reset" => {
                self.executor.shards.counters.reset();
                let _ = self.everywhere(|| Op::ResetStats).await;
                out.extend_from_slice(reply::RESET);
            }
            _ => out.extend_from_slice(reply::ERROR),
        }
    }
}

/// Most pieces handed to one `sendmsg` (Linux's `UIO_MAXIOV` is 1024).
const IOVECS_PER_SEND_MAX: usize = 64;

/// Writes every piece, in order: `sendmsg` without waiting while the socket takes the bytes
/// (one system call for a whole reply in pieces), and glommio's write, which waits for the
/// socket to drain, when it does not.
async fn write_all_vectored(stream: &mut TcpStream, pieces: &mut [&[u8]]) -> std::io::Result<()> {
    use futures_lite::AsyncWriteExt as _;
    use std::os::fd::{AsRawFd as _, BorrowedFd};
    let mut next = 0;
    while next < pieces.len() {
        if pieces[next].is_empty() {
            next += 1;
            continue;
        }
        let slices: Vec<std::io::IoSlice<'_>> = pieces[next..]
            .iter()
            .filter(|p| !p.is_empty())
            .take(IOVECS_PER_SEND_MAX)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        // SAFETY: the stream owns this fd and outlives the call.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let sent = rustix::net::sendmsg(
            fd,
            &slices,
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        );
        let mut sent = match sent {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => {
                // Full: let glommio wait for room and send the next piece.
                stream.write_all(pieces[next]).await?;
                next += 1;
                continue;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        while sent > 0 {
            let piece = &mut pieces[next];
            let n = sent.min(piece.len());
            *piece = &piece[n..];
            sent -= n;
            if piece.is_empty() {
                next += 1;
            }
        }
    }
    Ok(())
}
