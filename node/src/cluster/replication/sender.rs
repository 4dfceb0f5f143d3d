//! The active's side of a shard's replication stream: where to start (a partial resync or a
//! snapshot), the snapshot, then every record as it is appended; acknowledgments come back on
//! the same connection and move the passive along in the shard's sync set.

use super::frame::{self, FLAG_SNAPSHOT, Header, Kind};
use super::sync_set::{Replica, ShardReplicas};
use super::{BATCH_BYTES, Context, digest};
use crate::cluster::wire::ReplicateRequest;
use crate::shard::ShardStore;
use futures_lite::io::{ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::rc::Rc;
use std::time::Duration;
use terrace_wal::constants::SEGMENT_HEADER_LEN_BYTES;
use terrace_wal::format::is_item_follows;

/// Serves a replication connection the group port handed to this executor, until it ends.
pub async fn serve(ctx: Rc<Context>, request: ReplicateRequest, stream: std::net::TcpStream) {
    // SAFETY: `into_raw_fd` gives up an open, connected TCP socket; the glommio stream now
    // owns it and closes it.
    let stream = unsafe { TcpStream::from_raw_fd(stream.into_raw_fd()) };
    let (peer, shard) = (request.from.clone(), request.shard);
    let (Some(store), Some(replicas)) = (
        ctx.shards.shard_store(shard).cloned(),
        ctx.shards.replicas(shard).cloned(),
    ) else {
        tracing::warn!(
            peer,
            shard,
            "a replication stream for a shard this executor does not own"
        );
        return;
    };
    let group = &ctx.shared.group;
    let term = group.term();
    if let Err(error) = stream.set_write_timeout(Some(group.silence_limit())) {
        tracing::debug!(%error, "cannot set a write timeout on a replication stream");
    }
    let (reader, mut writer) = futures_lite::io::split(stream);
    let refusal = if !group.serving() {
        Some(format!("{} is not the ACTIVE-COORDINATOR", group.me()))
    } else if request.term > term {
        Some(format!(
            "{} has term {term}, older than {}",
            group.me(),
            request.term
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::debug!(peer, shard, %reason, "refused a replication stream");
        let _ = futures_lite::AsyncWriteExt::write_all(&mut writer, &frame::refusal(&reason)).await;
        return;
    }
    let replica = replicas.attach(&peer);
    let stream = Stream {
        ctx: &ctx,
        shard,
        term,
        store,
        replicas: &replicas,
        replica: &replica,
    };
    let ended =
        futures_lite::future::or(stream.send(&request, writer), stream.read_acks(reader)).await;
    let reason = match ended {
        Ok(()) => replica
            .closed()
            .unwrap_or_else(|| "the stream ended".into()),
        Err(error) => error,
    };
    let was_in_sync = replica.counted();
    replicas.close(&replica, reason.clone());
    if was_in_sync {
        // The passive may have taken over (this server was paused or cut off): writes keep
        // waiting for it a while, long enough to hear of a higher term and stop serving.
        // (A newer stream from the same passive that gets in sync ends the wait early.)
        let grace = group.silence_limit();
        tracing::warn!(
            shard,
            %reason,
            grace_ms = grace.as_millis() as u64,
            "the stream of NodeID[{peer}], in the sync set of shard {shard}, ended; writes \
             wait for it a while longer"
        );
        replicas.released_within(&replica, grace).await;
    }
    replicas.detach(&replica);
    // Another stream from the same passive may have replaced this one.
    group.set_replica_in_sync(&peer, shard, replicas.peer_in_sync(&peer));
    if was_in_sync {
        tracing::warn!(
            shard,
            %reason,
            "NodeID[{peer}] left the sync set of shard {shard}; writes no longer wait for it"
        );
    } else {
        tracing::info!(shard, %reason, "replication stream to NodeID[{peer}] ended");
    }
}

/// One stream, on the active.
struct Stream<'a> {
    ctx: &'a Context,
    shard: u32,
    term: u64,
    store: Rc<RefCell<ShardStore>>,
    replicas: &'a ShardReplicas,
    replica: &'a Rc<Replica>,
}

type Writer = WriteHalf<TcpStream>;

impl Stream<'_> {
    fn header(&self, kind: Kind, lsn: u64) -> Header {
        Header::new(kind, self.term, lsn)
    }

    /// Sends one frame of this stream's term.
    async fn put(
        &self,
        writer: &mut Writer,
        kind: Kind,
        lsn: u64,
        payload: &[u8],
    ) -> Result<(), String> {
        frame::write(writer, self.header(kind, lsn), payload)
            .await
            .map_err(|e| format!("connection failed: {e}"))
    }

    /// Whether the passive holds a prefix of this log and can continue from its next LSN. An
    /// empty passive gets a snapshot (which reports its progress), even of a whole log.
    fn continues(&self, request: &ReplicateRequest) -> bool {
        let store = self.store.borrow();
        let log = store.log();
        let next = request.next_lsn;
        next > 1
            && next <= log.next_lsn()
            && log.holds_from(next)
            && digest(log, next - 1, request.digest_records) == Some(request.digest)
    }

    /// Sends the stream: its start, a snapshot if needed, then records as they come.
    async fn send(&self, request: &ReplicateRequest, mut writer: Writer) -> Result<(), String> {
        let peer = &self.replica.peer;
        let next = if self.continues(request) {
            let next = request.next_lsn;
            tracing::info!(
                shard = self.shard,
                from_lsn = next,
                "NodeID[{peer}] holds a prefix of shard {}: resyncing from LSN {next}",
                self.shard
            );
            self.put(&mut writer, Kind::Start, next, &[]).await?;
            // The passive holds everything before `next` (it recovered it from its own disk):
            // as good as acknowledged. (Without this, a passive with nothing to catch up on
            // would never acknowledge anything, and never enter the sync set.)
            self.replica.note_sent(next - 1);
            self.replicas.ack(self.replica, next - 1);
            next
        } else {
            self.send_snapshot(&mut writer).await?
        };
        let cursor = self.store.borrow().log().cursor_at(next);
        let Some(mut cursor) = cursor else {
            return Err(format!(
                "the log no longer holds LSN {next}; the passive starts over"
            ));
        };
        let limit = self.ctx.shared.group.silence_limit();
        let keepalive = self.ctx.shared.group.cluster().health_check_interval;
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        loop {
            if let Some(reason) = self.replica.closed() {
                return Err(reason);
            }
            let group = &self.ctx.shared.group;
            // (`replicas.serving()`: still the active, or handing over on purpose.)
            if !self.replicas.serving() || group.term() != self.term {
                return Err("this server is no longer the active of this term".into());
            }
            if self.replicas.overdue(self.replica, limit) {
                return Err(format!(
                    "no acknowledgment for {} ms (the health-check limit)",
                    limit.as_millis()
                ));
            }
            if !group.is_joined(peer) {
                return Err(format!("NodeID[{peer}] left the cluster (health checks)"));
            }
            batch.clear();
            let mut first = 0;
            {
                let store = self.store.borrow();
                let log = store.log();
                let up_to = log.next_lsn() - 1;
                // A tombstone whose item follows it never ends a frame: the passive applies
                // the two together (see `Store::apply_copy_pair`).
                let mut pair_open = false;
                while batch.len() < BATCH_BYTES || pair_open {
                    match cursor.next(log, up_to) {
                        Ok(Some((lsn, record))) => {
                            if first == 0 {
                                first = lsn;
                            }
                            batch.extend_from_slice(record);
                            pair_open = is_item_follows(record);
                        }
                        Ok(None) => break,
                        Err(behind) => return Err(behind.to_string()),
                    }
                }
            }
            if !batch.is_empty() {
                self.put(&mut writer, Kind::Records, first, &batch).await?;
                self.replica.note_sent(cursor.next_lsn() - 1);
                continue;
            }
            let sent_all = cursor.next_lsn() - 1;
            if !self.replica.in_sync() && self.replica.acked() >= sent_all {
                // Caught up, and everything sent is in the passive's log: from here on writes
                // wait for this passive. (Not before: a passive still applying a snapshot
                // would keep them waiting.)
                self.replicas.enter_sync_set(self.replica);
                self.ctx
                    .shared
                    .group
                    .set_replica_in_sync(peer, self.shard, true);
                self.put(&mut writer, Kind::InSync, cursor.next_lsn(), &[])
                    .await?;
                tracing::debug!(shard = self.shard, "NodeID[{peer}] is in the sync set");
            }
            let store = &self.store;
            let waiting_for = cursor.next_lsn();
            let woken = futures_lite::future::or(
                async {
                    self.replicas
                        .appended
                        .wait_until(|| {
                            store.borrow().log().next_lsn() > waiting_for
                                || self.replica.closed().is_some()
                                || (!self.replica.in_sync()
                                    && self.replica.acked() >= waiting_for - 1)
                        })
                        .await;
                    true
                },
                async {
                    glommio::timer::sleep(keepalive.min(limit / 2).max(Duration::from_millis(5)))
                        .await;
                    false
                },
            )
            .await;
            if !woken {
                self.put(&mut writer, Kind::Keepalive, cursor.next_lsn(), &[])
                    .await?;
            }
        }
    }

    /// Pins the log and streams every record of it; returns the LSN that follows.
    async fn send_snapshot(&self, writer: &mut Writer) -> Result<u64, String> {
        let pin = self.store.borrow().log().pin();
        let total: u64 = pin
            .segments()
            .map(|(_, end)| end.saturating_sub(SEGMENT_HEADER_LEN_BYTES) as u64)
            .sum();
        let first = pin
            .segments()
            .find(|(s, end)| *end > SEGMENT_HEADER_LEN_BYTES && s.first_lsn() <= pin.last_lsn())
            .map_or(pin.last_lsn() + 1, |(s, _)| s.first_lsn());
        let peer = &self.replica.peer;
        tracing::info!(
            shard = self.shard,
            bytes = total,
            first_lsn = first,
            last_lsn = pin.last_lsn(),
            "sending NodeID[{peer}] a snapshot of shard {}",
            self.shard
        );
        let mut start = self.header(Kind::Start, first);
        start.flags = FLAG_SNAPSHOT;
        start.value = total;
        frame::write(writer, start, &[])
            .await
            .map_err(|e| format!("connection failed: {e}"))?;
        for (segment, end) in pin.segments() {
            // Whole records, in batches, straight from the mapping.
            let mut batch: Option<(usize, u64)> = None;
            let mut batch_end = SEGMENT_HEADER_LEN_BYTES;
            for (offset, record) in segment.records() {
                if offset >= end {
                    break;
                }
                let (from, lsn) = *batch.get_or_insert((offset, record.lsn));
                batch_end = offset + record.total_len;
                // Never between a tombstone and the item that follows it.
                if batch_end - from >= BATCH_BYTES && !record.item_follows() {
                    let bytes = segment.slice(from, batch_end);
                    self.put(writer, Kind::Records, lsn, bytes).await?;
                    batch = None;
                }
            }
            if let Some((from, lsn)) = batch {
                let bytes = segment.slice(from, batch_end);
                self.put(writer, Kind::Records, lsn, bytes).await?;
            }
            if let Some(reason) = self.replica.closed() {
                return Err(reason);
            }
        }
        self.replica.note_sent(pin.last_lsn());
        self.put(writer, Kind::SnapshotEnd, pin.last_lsn(), &[])
            .await?;
        Ok(pin.last_lsn() + 1)
    }

    /// Reads the passive's acknowledgments until the connection ends.
    async fn read_acks(&self, mut reader: ReadHalf<TcpStream>) -> Result<(), String> {
        let mut payload = Vec::new();
        loop {
            let header = frame::read(&mut reader, &mut payload)
                .await
                .map_err(|e| format!("connection failed: {e}"))?;
            match header.kind {
                Kind::Ack if header.term == self.term => {
                    self.replicas.ack(self.replica, header.lsn)
                }
                Kind::Ack => {
                    return Err(format!(
                        "an acknowledgment for term {}, this stream's is {}",
                        header.term, self.term
                    ));
                }
                other => return Err(format!("unexpected {other:?} frame from the passive")),
            }
        }
    }
}
