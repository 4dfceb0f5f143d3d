//! The passive's side of a shard's replication: while this server is a passive that knows
//! its active, each shard it owns keeps one stream from the active, applies its records in
//! order (`Store::apply_copy` checks each one where it lands) and acknowledges what is in its
//! log: after its own group commit in permanent-store.

use super::frame::{self, FLAG_SNAPSHOT, Header, Kind};
use super::{Context, own_digest};
use crate::cluster::group::{ReplicationSource, ShardSync};
use crate::cluster::wire::{Message, PROTOCOL_VERSION, ReplicateRequest};
use crate::shard::ShardStore;
use futures_lite::AsyncWriteExt as _;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use terrace_wal::constants::{RECORD_HEADER_LEN_BYTES, RECORD_LEN_OFFSET, RECORD_LSN_OFFSET};
use terrace_wal::format::{is_item_follows, record_len};

use super::sync_set::Signal;

/// How long a shard waits before asking its active again after a stream ended.
const RETRY_MILLIS: u64 = 100;
/// How often the state of this server is checked while it has no active to follow.
const IDLE_POLL_MILLIS: u64 = 20;

/// Follows the active for `shard` until the executor stops.
pub async fn follow(ctx: Rc<Context>, shard: u32) {
    let mut last_error: Option<String> = None;
    while !ctx.stop.is_stopped() {
        let Some(source) = ctx.shared.group.replication_source() else {
            glommio::timer::sleep(Duration::from_millis(IDLE_POLL_MILLIS)).await;
            continue;
        };
        let result = Follower {
            ctx: &ctx,
            shard,
            source: &source,
        }
        .run()
        .await;
        ctx.shared.group.set_shard_sync(shard, ShardSync::Idle);
        if let Err(error) = result {
            // Logged once per distinct cause: a passive waiting for its active to come back
            // would otherwise log every retry.
            if last_error.as_ref() != Some(&error) {
                tracing::info!(shard, active = %source.active, %error, "replication stream ended; asking again");
                last_error = Some(error);
            }
        }
        glommio::timer::sleep(Duration::from_millis(RETRY_MILLIS)).await;
    }
}

struct Follower<'a> {
    ctx: &'a Context,
    shard: u32,
    source: &'a ReplicationSource,
}

impl Follower<'_> {
    fn store(&self) -> Result<Rc<RefCell<ShardStore>>, String> {
        self.ctx
            .shards
            .shard_store(self.shard)
            .cloned()
            .ok_or_else(|| format!("shard {} is not owned here", self.shard))
    }

    async fn run(&self) -> Result<(), String> {
        let group = &self.ctx.shared.group;
        let limit = group.silence_limit();
        let io = |e: std::io::Error| format!("connection failed: {e}");
        let mut stream = TcpStream::connect_timeout(self.source.addr, limit)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.source.addr))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let store = self.store()?;
        // What this passive announces holding counts as acknowledged by it: so it must be
        // durable (a stream that ended may have left records appended but not yet synced).
        let commit = store.borrow().commit();
        let appended = store.borrow().log().next_lsn() - 1;
        commit
            .wait_durable(appended)
            .await
            .map_err(|e| format!("cannot make shard {} durable: {e}", self.shard))?;
        let (next_lsn, (digest_records, digest)) = {
            let store = store.borrow();
            (store.log().next_lsn(), own_digest(&store))
        };
        let request = Message::Replicate(ReplicateRequest {
            version: PROTOCOL_VERSION,
            from: group.me().to_string(),
            to: self.source.active.clone(),
            fingerprint: group.cluster().fingerprint,
            term: self.source.term,
            shard: self.shard,
            next_lsn,
            digest_records,
            digest,
        });
        let mut line = Vec::new();
        request.write_to(&mut line).map_err(io)?;
        stream.write_all(&line).await.map_err(io)?;
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let mut payload = Vec::new();
        let start = frame::read(&mut reader, &mut payload).await.map_err(io)?;
        match start.kind {
            Kind::Start => {}
            Kind::Refuse => {
                return Err(format!("refused: {}", String::from_utf8_lossy(&payload)));
            }
            other => return Err(format!("a {other:?} frame where START belongs")),
        }
        if start.term != self.source.term {
            return Err(format!(
                "a stream of term {}, expected {}",
                start.term, self.source.term
            ));
        }
        // This stream was asked for while this server followed that active; if it has become
        // the active since (or seen a newer term), the stream must not touch its data.
        let stale = || Err("this server has moved on to a newer term: the stream is stale".into());
        let snapshot = start.flags & FLAG_SNAPSHOT != 0;
        if snapshot {
            if !group.begin_snapshot(self.shard, self.source.term) {
                return stale();
            }
            self.reset(&store).await?;
            group.set_sync_bytes(self.shard, 0, start.value);
            tracing::info!(
                shard = self.shard,
                bytes = start.value,
                "INITIALIZING shard {} from NodeID[{}]: receiving its snapshot",
                self.shard,
                self.source.active
            );
        } else {
            if group.serving() || group.term() > self.source.term {
                return stale();
            }
            if start.lsn != next_lsn {
                return Err(format!(
                    "a stream from LSN {}, expected {next_lsn}",
                    start.lsn
                ));
            }
            group.set_shard_sync(self.shard, ShardSync::CatchingUp);
            group.set_sync_bytes(self.shard, 0, 0);
        }
        let applied = Cell::new(store.borrow().log().next_lsn() - 1);
        let progress = Signal::default();
        let receive = self.receive(
            &store,
            &mut reader,
            (snapshot, start.value),
            &applied,
            &progress,
        );
        // What is acknowledged so far: taken now, not when `acknowledge` first runs (by then
        // `receive` may have applied a whole snapshot, which would then never be acknowledged).
        let mut acked = applied.get();
        let acknowledge = async {
            loop {
                progress.wait_until(|| applied.get() > acked).await;
                let target = applied.get();
                let commit = store.borrow().commit();
                commit
                    .wait_durable(target)
                    .await
                    .map_err(|e| format!("this server's log failed: {e}"))?;
                frame::write(
                    &mut writer,
                    Header::new(Kind::Ack, self.source.term, target),
                    &[],
                )
                .await
                .map_err(io)?;
                acked = target;
            }
        };
        futures_lite::future::or(receive, acknowledge).await
    }

    /// Applies frames until the stream ends.
    async fn receive(
        &self,
        store: &Rc<RefCell<ShardStore>>,
        reader: &mut futures_lite::io::ReadHalf<TcpStream>,
        (mut in_snapshot, snapshot_bytes): (bool, u64),
        applied: &Cell<u64>,
        progress: &Signal,
    ) -> Result<(), String> {
        let group = &self.ctx.shared.group;
        let io = |e: std::io::Error| format!("connection failed: {e}");
        let mut payload = Vec::new();
        let mut received = 0u64;
        let mut logged = Instant::now();
        loop {
            let header = frame::read(reader, &mut payload).await.map_err(io)?;
            if header.term != self.source.term {
                return Err(format!(
                    "a frame of term {}, this stream's is {}",
                    header.term, self.source.term
                ));
            }
            if group.term() > self.source.term {
                return Err("a newer term began: following its active".into());
            }
            match header.kind {
                Kind::Records => {
                    let last = apply(&mut store.borrow_mut(), &payload, in_snapshot)?;
                    applied.set(last);
                    progress.notify();
                    if in_snapshot {
                        received += payload.len() as u64;
                        group.set_sync_bytes(self.shard, received, snapshot_bytes);
                        if logged.elapsed() >= Duration::from_secs(2) {
                            logged = Instant::now();
                            tracing::info!(
                                shard = self.shard,
                                bytes = received,
                                of = snapshot_bytes,
                                "INITIALIZING shard {}: {}%",
                                self.shard,
                                percent(received, snapshot_bytes)
                            );
                        }
                    }
                    // Every batch: reads of a snapshot in full flow complete without waiting,
                    // so this task stays runnable, and only a pause lets the executor poll
                    // for its clients' I/O in between (see `cooperate::pause`).
                    terrace_wal::cooperate::pause(Duration::ZERO).await;
                }
                Kind::SnapshotEnd => {
                    in_snapshot = false;
                    // The snapshot may end in a gap (an empty tail after removed segments):
                    // the next record is the one after its last.
                    let next = header.lsn.saturating_add(1);
                    if store.borrow().log().next_lsn() < next {
                        store
                            .borrow_mut()
                            .skip_to(next)
                            .map_err(|e| format!("cannot skip to LSN {next}: {e}"))?;
                        // Acknowledged like records (once durable): the active lets this
                        // passive into the sync set only when it has acknowledged the whole
                        // snapshot, and an idle shard sends nothing more that would.
                        applied.set(applied.get().max(header.lsn));
                        progress.notify();
                    }
                    group.set_sync_bytes(self.shard, received, received);
                    group.set_shard_sync(self.shard, ShardSync::CatchingUp);
                    tracing::info!(
                        shard = self.shard,
                        bytes = received,
                        last_lsn = header.lsn,
                        "INITIALIZING shard {}: snapshot received; catching up",
                        self.shard
                    );
                }
                Kind::InSync => {
                    // Every record before `lsn` is here; once durable, this shard is in sync.
                    let (commit, last) = {
                        let store = store.borrow();
                        (store.commit(), store.log().next_lsn() - 1)
                    };
                    if last + 1 != header.lsn {
                        return Err(format!(
                            "in sync at LSN {} but this log's next is {}",
                            header.lsn,
                            last + 1
                        ));
                    }
                    commit
                        .wait_durable(last)
                        .await
                        .map_err(|e| format!("this server's log failed: {e}"))?;
                    group.set_shard_sync(self.shard, ShardSync::InSync);
                }
                Kind::Keepalive => {}
                Kind::Refuse => {
                    return Err(format!("refused: {}", String::from_utf8_lossy(&payload)));
                }
                other => return Err(format!("unexpected {other:?} frame from the active")),
            }
        }
    }

    /// Empties the shard before a snapshot: permanent-store data goes to the dirty db.
    async fn reset(&self, store: &Rc<RefCell<ShardStore>>) -> Result<(), String> {
        let settings = &self.ctx.shared.settings;
        let dir = self
            .ctx
            .shard_dirs
            .get(self.shard as usize)
            .ok_or("no directory for the shard")?;
        let last_lsn = store.borrow().log().next_lsn() - 1;
        let permanent = settings.persistence == crate::config::Persistence::PermanentStore;
        if last_lsn > 0 && permanent {
            let moved = self
                .ctx
                .dirty_db
                .move_shard(self.shard, dir, self.ctx.shared.group.term())
                .map_err(|e| format!("cannot move the shard's data to the dirty db: {e}"))?;
            tracing::warn!(
                shard = self.shard,
                last_lsn,
                dirty_db = %moved.display(),
                "shard {}'s data is not a prefix of NodeID[{}]'s: moved it to the dirty db",
                self.shard,
                self.source.active
            );
        } else {
            crate::cluster::dirty_db::empty_dir(dir)
                .map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
        }
        let fresh = crate::server::open_store(&self.ctx.shared, self.shard, dir)
            .await
            .map_err(|e| format!("cannot open the emptied shard: {e}"))?;
        let mut fresh = fresh;
        fresh.set_compaction_mode(terrace_wal::store::CompactionMode::Paused);
        *store.borrow_mut() = fresh;
        Ok(())
    }
}

/// Appends a frame's records; returns the last one's LSN. Inside a snapshot the log skips
/// forward over gaps (segments the active's compaction removed); elsewhere a gap is an error.
fn apply(store: &mut ShardStore, mut records: &[u8], in_snapshot: bool) -> Result<u64, String> {
    let mut last = store.log().next_lsn() - 1;
    while !records.is_empty() {
        let (record, lsn) = first_record(records)?;
        let next = store.log().next_lsn();
        if lsn > next {
            if !in_snapshot {
                return Err(format!("LSN {lsn} after {last}: records are missing"));
            }
            store.skip_to(lsn).map_err(|e| e.to_string())?;
        }
        records = &records[record.len()..];
        if is_item_follows(record) {
            // A tombstone that counts only with the item after it: the two go in together
            // (the sender keeps them in one frame), or neither.
            let (item, _) = first_record(records).map_err(|_| {
                format!(
                    "the frame ends after the tombstone at LSN {lsn}, before the item that \
                     must follow it"
                )
            })?;
            store
                .apply_copy_pair(record, item)
                .map_err(|e| format!("cannot apply LSNs {lsn} and {}: {e}", lsn + 1))?;
            last = lsn + 1;
            records = &records[item.len()..];
            continue;
        }
        store
            .apply_copy(record)
            .map_err(|e| format!("cannot apply LSN {lsn}: {e}"))?;
        last = lsn;
    }
    Ok(last)
}

/// The whole record at the start of a frame's `records`, and its LSN (read from its header,
/// not checked: `apply_copy` checks it where it lands).
fn first_record(records: &[u8]) -> Result<(&[u8], u64), String> {
    let header = records
        .get(..RECORD_HEADER_LEN_BYTES)
        .ok_or("a frame ends inside a record header")?;
    let word = |at: usize, n: usize| -> u64 {
        header[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    let len = record_len(word(RECORD_LEN_OFFSET, 4) as usize);
    let record = records.get(..len).ok_or("a frame ends inside a record")?;
    Ok((record, word(RECORD_LSN_OFFSET, 8)))
}

fn percent(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(100).min(100)
}
