//! Shards: which executor owns which, and memcached's operations on a shard's store.
//!
//! A key's shard is `crc32(key) % shards` (stable across processes and versions); shard `s`
//! is owned by executor `s % executors`. Operations here run on the owning executor, write
//! their reply into a buffer, and say which LSN must be durable before the reply may be
//! sent ([`Durable`]). Requests for another executor's shards go through [`route`].

pub mod clock;
mod meta;
pub mod route;
mod win_tokens;

use crate::cluster::replication::sync_set::ShardReplicas;
use crate::protocol::reply;
use crate::stats::{Counters, Snapshot, Stat};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use terrace_wal::error::{StoreError, WalError};
use terrace_wal::log::{GroupCommit, LogPin};
use terrace_wal::storage::{FsSegment, FsStorage};
use terrace_wal::store::{Delta, SetMode, Store, StoreOutcome, Written};

/// A shard's store on real files.
pub type ShardStore = Store<FsStorage>;

/// Which executor owns which shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Shards of the server.
    pub shards: u32,
    /// Executors of the server.
    pub executors: usize,
}

impl Topology {
    /// The shard of `key`.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        crc32fast::hash(key) % self.shards
    }

    /// The executor that owns `shard`.
    pub fn owner_of(&self, shard: u32) -> usize {
        shard as usize % self.executors
    }

    /// The executor that owns `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> usize {
        self.owner_of(self.shard_of(key))
    }
}

/// A reply may be sent once this LSN of this shard is durable, and (sync replication)
/// acknowledged by every passive in the shard's sync set.
#[derive(Debug, Clone)]
pub struct Durable {
    /// The shard's group commit.
    pub commit: Rc<GroupCommit<FsStorage>>,
    /// The LSN.
    pub lsn: u64,
    /// The shard's passives, when writes wait for them.
    pub replicas: Option<Rc<ShardReplicas>>,
}

/// Why a reply must not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotAcknowledged {
    /// The shard failed a sync.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// This server stopped being the active before its passives acknowledged the write.
    #[error(
        "this server stopped being the active of its mirror group before its passives \
         acknowledged the write; its outcome is unknown: retry on the new active"
    )]
    NoLongerActive,
}

impl Durable {
    /// Waits for it. An error means the reply must not be sent.
    pub async fn wait(&self) -> Result<(), NotAcknowledged> {
        if self.commit.durable_lsn() < self.lsn {
            self.commit.wait_durable(self.lsn).await?;
        }
        if let Some(replicas) = &self.replicas
            && !replicas.wait_acknowledged(self.lsn).await
        {
            return Err(NotAcknowledged::NoLongerActive);
        }
        Ok(())
    }
}

/// The shards one executor owns, and its counters.
#[derive(Debug)]
pub struct LocalShards {
    topology: Topology,
    /// By shard id; `None` for shards other executors own.
    stores: Vec<Option<Rc<RefCell<ShardStore>>>>,
    /// The passives following each owned shard (by shard id), when this server is active.
    replicas: Vec<Option<Rc<ShardReplicas>>>,
    /// Writes wait for the passives in the sync set (`replication = "sync"`).
    sync_replication: bool,
    /// The term this server is the active in: its records carry it.
    term: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// This server is the active of its mirror group (always, without one).
    serving: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// This executor's counters.
    pub counters: Counters,
    /// Online-backup cuts held on this executor's shards, by cut id: their segments are not
    /// removed until the cut is released.
    backup_pins: RefCell<HashMap<u64, Vec<LogPin<FsSegment>>>>,
    /// Cuts this executor has handed out (for unique cut ids).
    cuts_issued: Cell<u64>,
    /// Items of this executor's shards that have handed out their win token (`mg`'s `N`
    /// and `R`).
    win_tokens: win_tokens::WinTokens,
}

/// One shard's part of an online-backup cut: every record up to `last_lsn`, in these
/// segments up to these lengths, is durable and pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCut {
    /// The shard.
    pub shard: u32,
    /// LSN of the last record in the cut.
    pub last_lsn: u64,
    /// The segments: id, bytes that belong to the cut, size of the segment file.
    pub segments: Vec<(u64, u64, u64)>,
}

impl LocalShards {
    /// Shards of `topology` owned by this executor, in `stores` (by shard id). With
    /// `sync_replication`, writes wait for the passives in each shard's sync set, while
    /// `serving` (this server is the active) holds.
    pub fn new(
        topology: Topology,
        stores: Vec<Option<Rc<RefCell<ShardStore>>>>,
        (sync_replication, flags): (bool, crate::cluster::group::GroupFlags),
    ) -> Self {
        assert_eq!(stores.len(), topology.shards as usize);
        Self {
            topology,
            replicas: stores
                .iter()
                .map(|s| {
                    s.as_ref().map(|_| {
                        Rc::new(ShardReplicas::new((
                            std::sync::Arc::clone(&flags.serving),
                            std::sync::Arc::clone(&flags.handing_over),
                        )))
                    })
                })
                .collect(),
            sync_replication,
            serving: std::sync::Arc::clone(&flags.serving),
            term: flags.term,
            stores,
            counters: Counters::default(),
            backup_pins: RefCell::default(),
            cuts_issued: Cell::new(0),
            win_tokens: win_tokens::WinTokens::default(),
        }
    }

    /// Whether this server is the active of its mirror group: only then may client
    /// operations touch its shards (a passive's logs are copies of its active's).
    pub fn serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The topology.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The stores this executor owns, with their shard ids.
    pub fn owned(&self) -> impl Iterator<Item = (u32, &Rc<RefCell<ShardStore>>)> {
        self.stores
            .iter()
            .enumerate()
            .filter_map(|(id, store)| store.as_ref().map(|s| (id as u32, s)))
    }

    /// The store of `shard`, if this executor owns it.
    pub fn shard_store(&self, shard: u32) -> Option<&Rc<RefCell<ShardStore>>> {
        self.stores.get(shard as usize)?.as_ref()
    }

    /// The passives of `shard`, if this executor owns it.
    pub fn replicas(&self, shard: u32) -> Option<&Rc<ShardReplicas>> {
        self.replicas.get(shard as usize)?.as_ref()
    }

    /// The store of `key`, which this executor must own.
    fn store_of(&self, key: &[u8]) -> (u32, &Rc<RefCell<ShardStore>>) {
        let shard = self.topology.shard_of(key);
        match &self.stores[shard as usize] {
            Some(store) => (shard, store),
            None => panic!("shard {shard} is not owned by this executor"),
        }
    }

    /// Warms the caches for a lookup of `key` that comes shortly (the next request of a
    /// burst), if its shard is on this executor: see `Store::prefetch`. Changes nothing.
    pub fn prefetch(&self, key: &[u8]) {
        if let Some(store) = self.local_store_of(key) {
            store.prefetch(key);
        }
    }

    /// The step before `prefetch`, a request earlier (the request after the next): asks for
    /// the index table's lines of `key`'s lookup without waiting for them, so that `prefetch`
    /// does not stall on them. Changes nothing.
    pub fn prefetch_table(&self, key: &[u8]) {
        if let Some(store) = self.local_store_of(key) {
            store.prefetch_table(key);
        }
    }

    /// `key`'s store, for a look that changes nothing: `None` if another executor owns it
    /// or it is in use right now.
    fn local_store_of(&self, key: &[u8]) -> Option<std::cell::Ref<'_, ShardStore>> {
        let shard = self.topology.shard_of(key);
        self.stores.get(shard as usize)?.as_ref()?.try_borrow().ok()
    }

    /// Stamps `store`'s next records with this server's active term (checked before every
    /// write: the term changes only when this server becomes the active, before it serves).
    pub fn stamp(&self, store: &Rc<RefCell<ShardStore>>) {
        let term = self.term.load(std::sync::atomic::Ordering::SeqCst);
        if store.borrow().term() != term {
            store.borrow_mut().set_term(term);
        }
    }

    /// What a reply showing or confirming LSN `lsn` of `shard` must wait for, if anything.
    fn durable(&self, shard: u32, lsn: u64) -> Option<Durable> {
        let store = self.stores[shard as usize].as_ref()?;
        let commit = store.borrow().commit();
        let replicas = self.replicas[shard as usize]
            .as_ref()
            .filter(|r| self.sync_replication && !r.acknowledged(lsn));
        if let Some(replicas) = replicas {
            // The record waited for may not be a client's write (compaction's, a delayed
            // flush_all's taking effect): wake the streams, or they would send it only with
            // their next keepalive.
            replicas.appended.notify();
        }
        (commit.durable_lsn() < lsn || replicas.is_some()).then(|| Durable {
            commit,
            lsn,
            replicas: replicas.cloned(),
        })
    }

    /// What a reply reporting an *absence* in `shard` must wait for: a miss, `NOT_FOUND`,
    /// `NOT_STORED` or `EXISTS` may rest on another client's `delete`, `set` or `flush_all`
    /// that is not durable yet, and a crash would take it back. Which record made the
    /// difference is not known (a deleted key leaves no index entry), so the reply waits for
    /// the shard's last record, as every reply in Redis's `appendfsync always` does. With
    /// nothing unsynced, as in a read-mostly shard, it waits for nothing.
    fn absence(&self, shard: u32) -> Option<Durable> {
        let lsn = self.stores[shard as usize].as_ref()?.borrow().last_lsn();
        self.durable(shard, lsn)
    }

    /// `error` as a reply. A refusal that shows something about a key another client may
    /// have just written (its value is not a number; it is there, but the log is full) waits
    /// like an absence: that write may not be durable yet.
    fn refuse(&self, shard: u32, error: StoreError) -> Refusal {
        let shows_state = matches!(
            error,
            StoreError::NonNumeric | StoreError::Wal(WalError::Full { .. })
        );
        let mut refusal = Refusal::new(shard, error);
        if shows_state {
            refusal.wait = self.absence(shard);
        }
        refusal
    }

    /// A write appended `lsn` to `shard`: wakes the shard's replication streams, and says
    /// what its reply must wait for.
    fn written(&self, shard: u32, lsn: u64) -> Option<Durable> {
        if let Some(replicas) = &self.replicas[shard as usize] {
            replicas.appended.notify();
        }
        self.durable(shard, lsn)
    }

    /// `get`/`gets` of one key: writes its `VALUE` block if it is there.
    ///
    /// With `mapped`, a value of at least [`MAPPED_VALUE_MIN_BYTES`] is not copied into `out`:
    /// its item goes into `mapped` with the offset of `out` where the value belongs, and the
    /// reply is written from the segment mapping.
    pub fn get(
        &self,
        key: &[u8],
        with_cas: bool,
        out: &mut Vec<u8>,
        mapped: Option<&mut Vec<(usize, MappedItem)>>,
    ) -> Option<Durable> {
        let (shard, store) = self.store_of(key);
        let item = store.borrow_mut().get(key);
        match item {
            Ok(Some(item)) => {
                self.counters.bump(Stat::get_hits);
                let lsn = item.lsn();
                value_reply(out, item, with_cas, mapped);
                self.durable(shard, lsn)
            }
            Ok(None) => {
                self.counters.bump(Stat::get_misses);
                self.absence(shard)
            }
            Err(_) => {
                self.counters.bump(Stat::get_misses);
                None
            }
        }
    }

    /// `gat`/`gats` of one key; `mapped` as for [`Self::get`].
    pub fn get_and_touch(
        &self,
        key: &[u8],
        exptime: i64,
        with_cas: bool,
        out: &mut Vec<u8>,
        mapped: Option<&mut Vec<(usize, MappedItem)>>,
    ) -> Result<Option<Durable>, Refusal> {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        let touched = store.borrow_mut().get_and_touch(key, exptime);
        match touched {
            Ok(Some((item, written))) => {
                self.counters.bump(Stat::get_hits);
                self.counters.bump(Stat::touch_hits);
                let lsn = written.lsn.max(item.lsn());
                value_reply(out, item, with_cas, mapped);
                Ok(self.written(shard, lsn))
            }
            Ok(None) => {
                self.counters.bump(Stat::get_misses);
                self.counters.bump(Stat::touch_misses);
                Ok(self.absence(shard))
            }
            Err(error) => Err(self.refuse(shard, error)),
        }
    }

    /// The set family.
    pub fn store(
        &self,
        mode: SetMode,
        key: &[u8],
        flags: u32,
        exptime: i64,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Durable>, Refusal> {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        let outcome = store.borrow_mut().set(mode, key, data, flags, exptime);
        let outcome = outcome.map_err(|error| self.refuse(shard, error))?;
        let is_cas = matches!(mode, SetMode::Cas(_));
        let (text, durable) = match outcome {
            StoreOutcome::Stored(written) => {
                if is_cas {
                    self.counters.bump(Stat::cas_hits);
                }
                (reply::STORED, self.written(shard, written.lsn))
            }
            StoreOutcome::NotStored => (reply::NOT_STORED, self.absence(shard)),
            StoreOutcome::Exists => {
                self.counters.bump(Stat::cas_badval);
                (reply::EXISTS, self.absence(shard))
            }
            StoreOutcome::NotFound => {
                self.counters.bump(Stat::cas_misses);
                (reply::NOT_FOUND, self.absence(shard))
            }
        };
        out.extend_from_slice(text);
        Ok(durable)
    }

    /// `delete`. `count`: false for the delete that follows a refused `set`, which is not a
    /// client's delete.
    pub fn delete(
        &self,
        key: &[u8],
        count: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<Durable>, Refusal> {
        let stats = count.then_some((Stat::delete_hits, Stat::delete_misses));
        self.change(
            key,
            stats,
            out,
            |store| store.delete(key).map(|r| r.map(|written| (written, ()))),
            |_, out| {
                out.extend_from_slice(reply::DELETED);
            },
        )
    }

    /// `incr`/`decr`.
    pub fn delta(
        &self,
        key: &[u8],
        delta: Delta,
        out: &mut Vec<u8>,
    ) -> Result<Option<Durable>, Refusal> {
        let stats = match delta {
            Delta::Incr(_) => (Stat::incr_hits, Stat::incr_misses),
            Delta::Decr(_) => (Stat::decr_hits, Stat::decr_misses),
        };
        self.change(
            key,
            Some(stats),
            out,
            |store| {
                store
                    .delta(key, delta)
                    .map(|r| r.map(|(value, written)| (written, value)))
            },
            |value, out| reply::counter(out, value),
        )
    }

    /// `touch`.
    pub fn touch(
        &self,
        key: &[u8],
        exptime: i64,
        out: &mut Vec<u8>,
    ) -> Result<Option<Durable>, Refusal> {
        let stats = (Stat::touch_hits, Stat::touch_misses);
        self.change(
            key,
            Some(stats),
            out,
            |store| {
                store
                    .touch(key, exptime)
                    .map(|r| r.map(|written| (written, ())))
            },
            |(), out| out.extend_from_slice(reply::TOUCHED),
        )
    }

    /// A one-key change that either happened (a record was written: `found` writes the
    /// reply) or found no item (`NOT_FOUND`); `stats` are the (hit, miss) counters.
    fn change<T>(
        &self,
        key: &[u8],
        stats: Option<(Stat, Stat)>,
        out: &mut Vec<u8>,
        run: impl FnOnce(&mut ShardStore) -> Result<Option<(Written, T)>, StoreError>,
        found: impl FnOnce(T, &mut Vec<u8>),
    ) -> Result<Option<Durable>, Refusal> {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        let result = run(&mut store.borrow_mut());
        match result.map_err(|error| self.refuse(shard, error))? {
            Some((written, value)) => {
                if let Some((hit, _)) = stats {
                    self.counters.bump(hit);
                }
                found(value, out);
                Ok(self.written(shard, written.lsn))
            }
            None => {
                if let Some((_, miss)) = stats {
                    self.counters.bump(miss);
                }
                out.extend_from_slice(reply::NOT_FOUND);
                Ok(self.absence(shard))
            }
        }
    }

    /// `flush_all` on every shard of this executor. Returns what to wait for.
    pub fn flush_all(&self, delay: i64) -> Result<Vec<Durable>, Refusal> {
        let mut waits = Vec::new();
        for (shard, store) in self.owned() {
            self.stamp(store);
            let written = store.borrow_mut().flush_all(delay);
            let written = written.map_err(|error| self.refuse(shard, error))?;
            waits.extend(self.written(shard, written.lsn));
        }
        Ok(waits)
    }

    /// A cut id unique in this process: the executor's index and a counter.
    pub fn next_cut_id(&self, executor: usize) -> u64 {
        let n = self.cuts_issued.get() + 1;
        self.cuts_issued.set(n);
        ((executor as u64) << 48) | n
    }

    /// Pins every shard of this executor for the online-backup cut `cut`: each shard's
    /// segments as they are now, up to its last appended record. Returns what to wait for
    /// before the cut may be described ([`LocalShards::describe_cut`]) and read: its records
    /// must be durable. `None` if too many cuts are held already.
    pub fn pin_for_backup(&self, cut: u64) -> Option<Vec<Durable>> {
        let mut held = self.backup_pins.borrow_mut();
        if held.len() >= crate::constants::BACKUP_CUTS_MAX {
            return None;
        }
        let mut pins = Vec::new();
        let mut waits = Vec::new();
        for (shard, store) in self.owned() {
            let pin = store.borrow().log().pin();
            waits.extend(self.durable(shard, pin.last_lsn()));
            pins.push(pin);
        }
        held.insert(cut, pins);
        Some(waits)
    }

    /// The cut `cut` of this executor's shards, once its records are durable. A segment
    /// whose header is still pending holds no record of the cut (a segment's header is
    /// written by the sync that makes its first records durable) and is left out: its header
    /// may be written while the cut is read.
    pub fn describe_cut(&self, cut: u64) -> Vec<ShardCut> {
        let held = self.backup_pins.borrow();
        let Some(pins) = held.get(&cut) else {
            return Vec::new();
        };
        self.owned()
            .zip(pins)
            .map(|((shard, _), pin)| ShardCut {
                shard,
                last_lsn: pin.last_lsn(),
                segments: pin
                    .segments()
                    .filter(|(segment, _)| !segment.header_pending())
                    .map(|(segment, end)| (segment.id(), end as u64, segment.size_bytes() as u64))
                    .collect(),
            })
            .collect()
    }

    /// Releases the cut `cut` on this executor; whether it held it.
    pub fn release_backup(&self, cut: u64) -> bool {
        self.backup_pins.borrow_mut().remove(&cut).is_some()
    }

    /// This executor's numbers for `stats`.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.counters.snapshot();
        for (_, store) in self.owned() {
            let store = store.borrow();
            let log = store.log().counters();
            snapshot.curr_items += store.index_len() as u64;
            snapshot.bytes += store.log().used_bytes();
            snapshot.live_bytes += store.log().segments().map(|s| s.live_bytes()).sum::<u64>();
            snapshot.evictions += store.counters().evictions;
            snapshot.total_items += log.records_appended;
            snapshot.syncs += log.syncs_issued;
            snapshot.slow_sync_rounds += log.slow_sync_rounds;
            snapshot.records_appended += log.records_appended;
            snapshot.failed_shards += u64::from(store.commit().failure().is_some());
            snapshot.segments += store.log().segment_count() as u64;
            let compaction = store.counters();
            snapshot.segments_compacted += compaction.segments_compacted;
            snapshot.segments_reclaimed += compaction.segments_reclaimed;
            snapshot.compaction_bytes_rewritten += compaction.compaction_bytes_rewritten;
            snapshot.items_reclaimed += compaction.items_reclaimed;
            snapshot.tombstones_dropped += compaction.tombstones_dropped;
            snapshot.tombstone_covers += store.tombstone_covers() as u64;
        }
        snapshot
    }
}

/// An item a reply holds on to, to send its value straight from the segment mapping. Holding
/// it keeps the segment mapped: records are never changed once written, and a segment that
/// compaction or eviction retires meanwhile is unmapped only when its last holder lets go.
pub type MappedItem = terrace_wal::store::Item<<FsStorage as terrace_wal::storage::Storage>::File>;

/// Values at least this long are sent from the mapping rather than copied into the reply
/// buffer (when the caller can send from the mapping): below it, one copy costs less than
/// the extra `send` of a reply in pieces.
pub const MAPPED_VALUE_MIN_BYTES: usize = 16 << 10;

/// Most values one connection's pending replies hold in their mappings; later ones are
/// copied. A held item keeps its whole segment file, even one that compaction or eviction
/// has retired (its disk space is then outside the capacity accounting), for as long as the
/// reply waits: a client that stops reading must not pin more than a few segments.
pub const MAPPED_VALUES_PER_REPLY_MAX: usize = 8;

/// The `VALUE` block of an item: copied into `out`, or, if `mapped` is given and the value
/// large enough, its line in `out` and the item in `mapped`.
fn value_reply(
    out: &mut Vec<u8>,
    item: MappedItem,
    with_cas: bool,
    mapped: Option<&mut Vec<(usize, MappedItem)>>,
) {
    let cas = with_cas.then(|| item.cas());
    let value = item.value();
    match mapped {
        Some(mapped) if value.len() >= MAPPED_VALUE_MIN_BYTES => {
            reply::value_header(out, item.key(), item.flags(), value.len(), cas);
            mapped.push((out.len(), item));
            out.extend_from_slice(b"\r\n");
        }
        _ => reply::value(out, item.key(), item.flags(), value, cas),
    }
}

/// A write the store refused, as a memcached reply.
#[derive(Debug)]
pub struct Refusal {
    /// The reply line, with `\r\n`.
    pub reply: Vec<u8>,
    /// The shard failed (fail-stop): log it.
    pub failed: bool,
    /// What the reply must wait for, if anything (see `LocalShards::refuse`).
    pub wait: Option<Durable>,
}

impl Refusal {
    fn new(shard: u32, error: StoreError) -> Self {
        let mut reply = Vec::new();
        let mut failed = false;
        match &error {
            StoreError::InvalidKey(_) => {
                reply.extend_from_slice(crate::protocol::ProtocolError::BadCommandLine.reply());
            }
            StoreError::TooLarge { .. } => reply.extend_from_slice(reply::TOO_LARGE),
            StoreError::NonNumeric => reply.extend_from_slice(reply::NON_NUMERIC),
            StoreError::Wal(WalError::Full { .. }) => {
                reply.extend_from_slice(reply::OUT_OF_MEMORY);
            }
            StoreError::Wal(wal) => {
                failed = true;
                let message = if wal.is_poisoned() {
                    format!("shard {shard} refuses writes after a disk error: {wal}")
                } else {
                    format!("shard {shard}: {wal}")
                };
                reply::server_error(&mut reply, &message);
            }
        }
        Self {
            reply,
            failed,
            wait: None,
        }
    }
}

#[cfg(test)]
mod tests;
