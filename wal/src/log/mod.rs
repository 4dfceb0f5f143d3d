//! The log of one shard: its segments in order, appends into the mapped tail, group commit,
//! zero-copy reads by location, recovery, pinning and capacity.
//!
//! Invariants:
//! - LSNs are assigned at append, strictly increasing, consecutive within a segment, never
//!   reused: after a restart the next LSN follows the last record of the newest segment, and
//!   the newest segment (the tail) is never removed.
//! - Only the tail takes appends; every other segment is sealed and immutable.
//! - A record is durable once `commit().durable_lsn()` reaches its LSN; nothing in this
//!   module reports durability otherwise.
//! - After a write or sync failure the log refuses appends (fail-stop).

mod cursor;
mod group_commit;
mod recovery;
pub mod scan;
mod segment;

pub use cursor::{FellBehind, LogCursor};
pub use group_commit::{Durability, GroupCommit};
pub use recovery::{
    PreparedVisitor, RecordPreparer, RecordVisitor, RecoveredRecord, RecoveryPolicy,
    RecoveryReport, TornTail,
};
pub use segment::{Segment, SegmentRecords};

use crate::constants::{
    PAGE_SIZE_BYTES, RECORD_HEADER_LEN_BYTES, SEGMENT_HEADER_LEN_BYTES, SEGMENT_SIZE_DEFAULT_BYTES,
    SEGMENT_SIZE_MAX_BYTES, SEGMENT_SIZE_MIN_BYTES,
};
use crate::error::WalError;
use crate::format::{RecordBody, record_at_unchecked, write_record_flagged};
use crate::storage::{Preparation, SegmentFile as _, SegmentId, Storage};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// How a log is laid out and made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Size of new segment files; a multiple of the page size. Existing segments keep the
    /// size they were created with.
    pub segment_size_bytes: usize,
    /// Whether records are synced before they count as durable.
    pub durability: Durability,
    /// Most bytes of segment files the log may hold. One segment of it is kept in reserve for
    /// compaction, which needs room to move live records before it can free a segment.
    pub capacity_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            durability: Durability::Fsync,
            capacity_bytes: u64::MAX,
        }
    }
}

impl LogConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), WalError> {
        let size = self.segment_size_bytes;
        if !(SEGMENT_SIZE_MIN_BYTES..=SEGMENT_SIZE_MAX_BYTES).contains(&size)
            || !size.is_multiple_of(PAGE_SIZE_BYTES)
        {
            return Err(WalError::Config {
                field: "segment_size_bytes",
                value: size.to_string(),
                fix: format!(
                    "use a multiple of {PAGE_SIZE_BYTES} between {SEGMENT_SIZE_MIN_BYTES} and \
                     {SEGMENT_SIZE_MAX_BYTES}"
                ),
            });
        }
        if self.capacity_bytes < 2 * size as u64 {
            return Err(WalError::Config {
                field: "capacity_bytes",
                value: self.capacity_bytes.to_string(),
                fix: format!(
                    "use at least two segments ({} bytes): one to write, one in reserve for \
                     compaction",
                    2 * size
                ),
            });
        }
        Ok(())
    }

    /// The largest record a new segment holds.
    pub fn record_len_max(&self) -> usize {
        self.segment_size_bytes - SEGMENT_HEADER_LEN_BYTES
    }
}

/// Who is appending: client writes may not use the compaction reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendClass {
    /// A write on behalf of a client.
    Client,
    /// Compaction moving live records; may use the reserved segment.
    Compaction,
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its LSN.
    pub lsn: u64,
    /// Its segment.
    pub segment: SegmentId,
    /// Its offset in the segment.
    pub offset: usize,
    /// Bytes it occupies, header and padding included.
    pub len: usize,
}

/// Counters of a log's activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounters {
    /// Records appended since open.
    pub records_appended: u64,
    /// Bytes appended since open (headers and padding included).
    pub bytes_appended: u64,
    /// fdatasync calls issued since open (segments and directory).
    pub syncs_issued: u64,
    /// Group-commit rounds since open that took 100 ms or longer (see `GroupCommit`).
    pub slow_sync_rounds: u64,
    /// Segments created since open.
    pub segments_created: u64,
    /// Segments removed since open.
    pub segments_removed: u64,
}

/// Segments by id: ids are dense from the oldest, with holes where segments were removed.
struct SegmentTable<F> {
    /// Id of `slots[0]`.
    base: SegmentId,
    slots: VecDeque<Option<Rc<Segment<F>>>>,
    count: usize,
    bytes: u64,
}

impl<F: crate::storage::SegmentFile> SegmentTable<F> {
    fn new() -> Self {
        Self {
            base: 1,
            slots: VecDeque::new(),
            count: 0,
            bytes: 0,
        }
    }

    fn get(&self, id: SegmentId) -> Option<&Rc<Segment<F>>> {
        let index = id.checked_sub(self.base)?;
        self.slots.get(usize::try_from(index).ok()?)?.as_ref()
    }

    fn push(&mut self, segment: Rc<Segment<F>>) {
        let id = segment.id();
        if self.slots.is_empty() {
            self.base = id;
        }
        let index = usize::try_from(id - self.base).unwrap_or(usize::MAX);
        assert!(index >= self.slots.len(), "segment {id} added out of order");
        while self.slots.len() < index {
            self.slots.push_back(None);
        }
        self.count += 1;
        self.bytes += segment.size_bytes() as u64;
        self.slots.push_back(Some(segment));
    }

    fn remove(&mut self, id: SegmentId) -> Option<Rc<Segment<F>>> {
        let index = usize::try_from(id.checked_sub(self.base)?).ok()?;
        let segment = self.slots.get_mut(index)?.take()?;
        self.count -= 1;
        self.bytes -= segment.size_bytes() as u64;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(segment)
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Rc<Segment<F>>> {
        self.slots.iter().flatten()
    }

    fn last(&self) -> Option<&Rc<Segment<F>>> {
        self.slots.back().and_then(Option::as_ref)
    }
}

/// The log of one shard.
pub struct Log<S: Storage> {
    storage: Rc<S>,
    config: LogConfig,
    segments: SegmentTable<S::File>,
    /// The next segment, created ahead of need and not yet in the log (its header is zero,
    /// so recovery removes it if the process stops first).
    spare: Option<(SegmentId, S::File)>,
    next_lsn: u64,
    /// The mirror group term new records are stamped with.
    term: u64,
    commit: Rc<GroupCommit<S>>,
    records_appended: Cell<u64>,
    bytes_appended: Cell<u64>,
    segments_created: Cell<u64>,
    segments_removed: Cell<u64>,
}

impl<S: Storage> std::fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.storage.dir_path())
            .field("config", &self.config)
            .field("segments", &self.segments.count)
            .field("next_lsn", &self.next_lsn)
            .field("commit", &self.commit)
            .finish()
    }
}

/// How often a new log checks whether its first segment is prepared.
const FIRST_SEGMENT_POLL: std::time::Duration = std::time::Duration::from_millis(2);

impl<S: Storage> Log<S> {
    /// Opens the log in `storage`, recovering what is there under `policy`. `visit` sees every
    /// valid record in log order (to rebuild an index in the same pass).
    pub async fn open(
        storage: S,
        config: LogConfig,
        policy: RecoveryPolicy,
        visit: &mut RecordVisitor<'_, S::File>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        let mut visit_record = |segment: &Rc<Segment<S::File>>, at: RecoveredRecord, (): ()| {
            // SAFETY: recovery validated the record at this offset of these bytes, which
            // nothing has written since.
            let record = unsafe { record_at_unchecked(segment.whole_mapping(), at.offset) };
            visit(segment, at.offset, record);
        };
        Self::open_prepared(storage, config, policy, &|_| (), &mut visit_record).await
    }

    /// Opens the log as [`Log::open`] does, with the replay split in two: `prepare` sees every
    /// valid record on the thread that checked it, right after the check, in no particular
    /// order across segments; `visit` then gets, in log order, each record's place and what
    /// `prepare` made of it, without reading the record again.
    pub async fn open_prepared<P: Send>(
        storage: S,
        config: LogConfig,
        policy: RecoveryPolicy,
        prepare: &RecordPreparer<'_, P>,
        visit: &mut PreparedVisitor<'_, S::File, P>,
    ) -> Result<(Self, RecoveryReport), WalError> {
        config.validate()?;
        let storage = Rc::new(storage);
        let recovered = recovery::recover(&*storage, policy, prepare, visit).await?;
        let commit = GroupCommit::new(
            Rc::clone(&storage),
            config.durability,
            recovered.next_lsn - 1,
        );
        let mut log = Self {
            storage,
            config,
            segments: SegmentTable::new(),
            spare: None,
            next_lsn: recovered.next_lsn,
            term: 0,
            commit,
            records_appended: Cell::new(0),
            bytes_appended: Cell::new(0),
            segments_created: Cell::new(0),
            segments_removed: Cell::new(0),
        };
        for segment in recovered.segments {
            log.segments.push(segment);
        }
        let mut tail_prepared = false;
        if log.segments.count == 0 {
            if policy == RecoveryPolicy::Strict {
                return Ok((log, recovered.report));
            }
            if log.config.durability == Durability::Fsync {
                tail_prepared = log.prepare_first_segment().await;
            }
            log.create_tail(AppendClass::Client)?;
        }
        if policy != RecoveryPolicy::Strict {
            if !tail_prepared {
                // The tail was not prepared ahead (new, or cut short by a crash): prepare the
                // part still unused now, before any record goes in.
                log.prepare_tail();
            }
            log.prepare_spare();
        }
        Ok((log, recovered.report))
    }

    /// Prepares the unused part of the tail segment (see `Storage::prepare`), best effort.
    fn prepare_tail(&self) {
        let tail = self.tail();
        let prepared = self
            .storage
            .prepare(tail.file(), tail.written_bytes(), self.preparation());
        if let Err(error) = prepared {
            tracing::debug!(%error, "preparing the tail segment failed; writes will be slower");
        }
    }

    /// For a new synced log: prepares its first segment as a spare (zeros written over it and
    /// made durable, see `Preparation`) and waits until that is done, so that the log starts
    /// on written blocks like every later segment. Only when a log is created (a new shard, or
    /// one replaced by a snapshot), where a wait of one segment's write is acceptable; later
    /// segments are prepared while the one before fills. Returns whether a spare is ready for
    /// `create_tail` to take (false: it will create the segment itself).
    async fn prepare_first_segment(&mut self) -> bool {
        self.prepare_spare();
        let Some((_, file)) = &self.spare else {
            return false;
        };
        file.hurry_preparation();
        while !file.preparation_ended() {
            glommio::timer::sleep(FIRST_SEGMENT_POLL).await;
        }
        true
    }

    /// The storage.
    pub fn storage(&self) -> &Rc<S> {
        &self.storage
    }

    /// The configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Group commit: wait here for durability.
    pub fn commit(&self) -> &Rc<GroupCommit<S>> {
        &self.commit
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The mirror group term new records are stamped with.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Stamps records appended from now on with `term` (the term this server is the active
    /// in). Copied records keep their own.
    pub fn set_term(&mut self, term: u64) {
        self.term = term;
    }

    /// The segment with this id, if it exists.
    pub fn segment(&self, id: SegmentId) -> Option<&Rc<Segment<S::File>>> {
        self.segments.get(id)
    }

    /// All segments, oldest first.
    pub fn segments(&self) -> impl DoubleEndedIterator<Item = &Rc<Segment<S::File>>> {
        self.segments.iter()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.count
    }

    /// The segment taking appends.
    ///
    /// # Panics
    /// On a log opened `Strict` on an empty directory (it has no segment).
    pub fn tail(&self) -> &Rc<Segment<S::File>> {
        match self.segments.last() {
            Some(tail) => tail,
            None => panic!("log has no segment"),
        }
    }

    /// Bytes of segment files.
    pub fn used_bytes(&self) -> u64 {
        let spare = self.spare.as_ref().map_or(0, |(_, file)| file.len() as u64);
        self.segments.bytes + spare
    }

    /// Whether any segment with an id in `[from, to)` exists.
    pub fn any_segment_in(&self, from: SegmentId, to: SegmentId) -> bool {
        // None below the oldest: ids there need no look.
        (from.max(self.segments.base)..to).any(|id| self.segments.get(id).is_some())
    }

    /// Counters.
    pub fn counters(&self) -> LogCounters {
        LogCounters {
            records_appended: self.records_appended.get(),
            bytes_appended: self.bytes_appended.get(),
            syncs_issued: self.commit.syncs_issued(),
            slow_sync_rounds: self.commit.slow_rounds(),
            segments_created: self.segments_created.get(),
            segments_removed: self.segments_removed.get(),
        }
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        match self.commit.failure() {
            Some(cause) => Err(WalError::Poisoned { cause }),
            None => Ok(()),
        }
    }

    /// Appends a record whose length is at most `len_max` (see `format::record`'s bounds).
    /// The record is in the mapping when this returns; it is durable once
    /// `commit().wait_durable(lsn)` returns.
    pub fn append<T: RecordBody>(
        &mut self,
        body: &T,
        len_max: usize,
        class: AppendClass,
    ) -> Result<Appended, WalError> {
        self.append_flagged(body, 0, len_max, class)
    }

    /// Like [`Log::append`], with record `flags` (`RECORD_FLAG_STALE` on a put).
    pub fn append_flagged<T: RecordBody>(
        &mut self,
        body: &T,
        flags: u8,
        len_max: usize,
        class: AppendClass,
    ) -> Result<Appended, WalError> {
        self.reserve(len_max, class)?;
        let (lsn, term) = (self.next_lsn, self.term);
        let tail = Rc::clone(self.tail());
        let Some(offset) = tail.append_with(lsn, |dst| {
            write_record_flagged(&mut dst[..len_max], lsn, term, flags, body)
        }) else {
            // The bound given was wrong: a bug, but not one worth losing the shard over.
            panic!("record larger than its bound {len_max}");
        };
        let len = tail.written_bytes() - offset;
        debug_assert!(len >= RECORD_HEADER_LEN_BYTES);
        Ok(self.appended(lsn, &tail, offset, len))
    }

    /// Makes sure the tail can take `len_max` more bytes of records without rolling over,
    /// rolling over now if it cannot: records appended next, up to that many bytes, then all
    /// land in one segment, and none of them fails for want of room after another was
    /// written (compaction writes a tombstone and the item after it as a pair).
    pub fn reserve(&mut self, len_max: usize, class: AppendClass) -> Result<(), WalError> {
        self.check_poisoned()?;
        let room = self.config.record_len_max();
        if len_max > room {
            return Err(WalError::RecordTooLarge {
                len_bytes: len_max,
                max_bytes: room,
            });
        }
        if self.tail().is_sealed() || self.tail().free_bytes() < len_max {
            self.create_tail(class)?;
        }
        Ok(())
    }

    /// Accounts for the record of `len` bytes just written at `offset` of `tail` with `lsn`.
    fn appended(
        &mut self,
        lsn: u64,
        tail: &Rc<Segment<S::File>>,
        offset: usize,
        len: usize,
    ) -> Appended {
        self.next_lsn += 1;
        self.commit.note_append(lsn, tail);
        self.records_appended.set(self.records_appended.get() + 1);
        self.bytes_appended
            .set(self.bytes_appended.get() + len as u64);
        Appended {
            lsn,
            segment: tail.id(),
            offset,
            len,
        }
    }

    /// Appends a copy of a record that another log wrote, byte for byte: LSN and CRC included
    /// (a passive applying its active's log keeps the active's LSNs). `record` must be one
    /// whole, valid record, padding included, and its LSN must be this log's next. It is
    /// checked where it lands, in the mapping; an invalid copy is zeroed again and refused.
    /// `room`: the bytes the tail must have free for it, at least its length (a tombstone
    /// whose item follows it asks for room for the item too, see `Store::apply_copy`).
    pub fn append_copy(
        &mut self,
        record: &[u8],
        room: usize,
        class: AppendClass,
    ) -> Result<Appended, WalError> {
        self.check_poisoned()?;
        let bad = |reason: String| WalError::BadCopy { reason };
        let len = record.len();
        if len < RECORD_HEADER_LEN_BYTES
            || !len.is_multiple_of(crate::constants::RECORD_ALIGN_BYTES)
        {
            return Err(bad(format!("{len} bytes is not a whole record")));
        }
        if len > self.config.record_len_max() {
            return Err(WalError::RecordTooLarge {
                len_bytes: len,
                max_bytes: self.config.record_len_max(),
            });
        }
        let lsn = self.next_lsn;
        let mut lsn_word = [0u8; 8];
        lsn_word.copy_from_slice(
            &record[crate::constants::RECORD_LSN_OFFSET..crate::constants::RECORD_LSN_OFFSET + 8],
        );
        let found = u64::from_le_bytes(lsn_word);
        if found != lsn {
            return Err(bad(format!("its LSN is {found}, the log's next is {lsn}")));
        }
        if self.tail().is_sealed() || self.tail().free_bytes() < room.max(len) {
            self.create_tail(class)?;
        }
        let tail = Rc::clone(self.tail());
        let mut invalid = None;
        let offset = tail.append_with(lsn, |dst| {
            let dst = &mut dst[..len];
            dst.copy_from_slice(record);
            match crate::format::check_record(dst, 0) {
                // Padding is outside the CRC and carries nothing: written as zeros here,
                // whatever the copy brought (a bit flipped there on the source's disk, which
                // its recovery does not look at, must not stop its replication).
                crate::format::RecordCheck::Valid(r) if r.total_len == len => {
                    let payload_end = RECORD_HEADER_LEN_BYTES + r.payload.len();
                    dst[payload_end..].fill(0);
                    Some(len)
                }
                other => {
                    invalid = Some(match other {
                        crate::format::RecordCheck::Invalid(reason) => reason.to_string(),
                        crate::format::RecordCheck::Valid(r) => {
                            format!("a record of {} bytes in {len}", r.total_len)
                        }
                        crate::format::RecordCheck::End => "a zero header".to_string(),
                    });
                    // The bytes after the records stay zero (segment invariant).
                    dst.fill(0);
                    None
                }
            }
        });
        let Some(offset) = offset else {
            return Err(bad(invalid.unwrap_or_default()));
        };
        Ok(self.appended(lsn, &tail, offset, len))
    }

    /// Whether a new segment fits within the capacity for `class`.
    pub fn has_room_for_segment(&self, class: AppendClass) -> bool {
        let size = self.config.segment_size_bytes as u64;
        let reserve = match class {
            AppendClass::Client => size,
            AppendClass::Compaction => 0,
        };
        self.used_bytes() + size + reserve <= self.config.capacity_bytes
    }

    /// Whether the tail can be replaced by a new segment for `class`: a spare is ready, or
    /// a new file fits within the capacity.
    pub fn can_roll_over(&self, class: AppendClass) -> bool {
        self.spare.is_some() || self.has_room_for_segment(class)
    }

    /// Prepares the next segment ahead of need (`Storage::create_spare`): created and mapped
    /// now (cheap); allocated, and its pages made ready, by a background thread, so that
    /// neither `fallocate` nor the kernel's zero-filling of new pages stalls the executor.
    /// Best effort: without a spare, the next roll-over creates the segment itself.
    fn prepare_spare(&mut self) {
        if self.spare.is_some() || !self.has_room_for_segment(AppendClass::Client) {
            return;
        }
        let id = self.segments.last().map_or(1, |tail| tail.id() + 1);
        let size = self.config.segment_size_bytes;
        match self.storage.create_spare(id, size, self.preparation()) {
            Ok(file) => self.spare = Some((id, file)),
            Err(error) => tracing::warn!(
                segment = %self.storage.segment_path(id).display(),
                %error,
                "could not prepare the next segment ahead of need"
            ),
        }
    }

    /// How segments are prepared ahead of use (see `Preparation`).
    fn preparation(&self) -> Preparation {
        match self.config.durability {
            Durability::Fsync => Preparation::Synced,
            Durability::None => Preparation::Unsynced,
        }
    }

    /// Moves the log forward to `lsn`, which becomes the next record's LSN: the records in
    /// between are not in this log (a passive receiving its active's snapshot, whose log has
    /// gaps where compaction removed segments). The records so far stay; a new tail segment
    /// starts at `lsn`, with an id that skips one so that recovery sees the gap as removed
    /// segments and not as records lost at the end of the previous one. An empty tail is
    /// removed (it holds no record), and so is the spare (its id is skipped).
    pub fn skip_to(&mut self, lsn: u64) -> Result<(), WalError> {
        self.check_poisoned()?;
        if lsn < self.next_lsn {
            return Err(WalError::BadCopy {
                reason: format!(
                    "cannot skip back to LSN {lsn}: the next LSN is {}",
                    self.next_lsn
                ),
            });
        }
        if lsn >= 1 << 63 {
            // Recovery would take the new tail's header for damage (see FORMAT.md).
            return Err(WalError::BadCopy {
                reason: format!("cannot skip to LSN {lsn}: out of range"),
            });
        }
        if lsn == self.next_lsn {
            return Ok(());
        }
        let remove = |storage: &S, id: SegmentId| {
            storage.remove(id).map_err(|source| WalError::Io {
                op: "remove segment",
                path: storage.segment_path(id),
                source,
            })
        };
        if let Some((id, file)) = self.spare.take() {
            drop(file);
            remove(&self.storage, id)?;
        }
        let tail = Rc::clone(self.tail());
        if tail.last_lsn() < tail.first_lsn() {
            self.segments.remove(tail.id());
            remove(&self.storage, tail.id())?;
        }
        // Not `tail.id() + 1`: the group commit may still hold a removed empty tail.
        let id = tail.id() + 2;
        self.next_lsn = lsn;
        self.create_tail_with_id(id, AppendClass::Compaction)?;
        // Its spare was removed (the id is skipped): the new tail was made here, unprepared.
        self.prepare_tail();
        // The skipped LSNs count as appended: waiting for `lsn - 1` is waiting for the new
        // tail's header (which says where the log goes on) to be durable.
        self.commit.note_skip(lsn - 1);
        Ok(())
    }

    /// Seals the tail and starts a new one.
    fn create_tail(&mut self, class: AppendClass) -> Result<(), WalError> {
        let id = self.segments.last().map_or(1, |tail| tail.id() + 1);
        self.create_tail_with_id(id, class)
    }

    /// Seals the tail and starts segment `id` as the new one.
    fn create_tail_with_id(&mut self, id: SegmentId, class: AppendClass) -> Result<(), WalError> {
        let spare = self.spare.take().and_then(|(spare_id, file)| {
            assert_eq!(
                spare_id, id,
                "the spare is always the segment after the tail"
            );
            match file.finish_preparation() {
                Ok(()) => Some(file),
                Err(error) => {
                    // Then without it: its file goes, and the segment is made here (which
                    // fails the same way if the disk is full).
                    tracing::warn!(
                        segment = %self.storage.segment_path(id).display(), %error,
                        "the segment prepared ahead could not be allocated"
                    );
                    drop(file);
                    let _ = self.storage.remove(id);
                    None
                }
            }
        });
        let file = match spare {
            Some(file) => file,
            None => {
                if !self.has_room_for_segment(class) {
                    return Err(WalError::Full {
                        capacity_bytes: self.config.capacity_bytes,
                        used_bytes: self.used_bytes(),
                    });
                }
                self.storage
                    .create(id, self.config.segment_size_bytes)
                    .map_err(|source| WalError::Io {
                        op: "create segment",
                        path: self.storage.segment_path(id),
                        source,
                    })?
            }
        };
        if let Some(old) = self.segments.last() {
            old.seal();
        }
        let segment = Rc::new(Segment::new(
            id,
            file,
            self.next_lsn,
            SEGMENT_HEADER_LEN_BYTES,
            self.next_lsn - 1,
            true,
        ));
        group_commit::write_header_if_unsynced(self.config.durability, &segment);
        self.commit.note_new_segment(&segment);
        self.segments.push(segment);
        self.segments_created.set(self.segments_created.get() + 1);
        tracing::debug!(segment = id, first_lsn = self.next_lsn, "new tail segment");
        self.prepare_spare();
        Ok(())
    }

    /// Removes a sealed, unpinned segment's file. The segment stays known (so decisions that
    /// depend on what exists stay conservative) until [`Log::forget_segment`], which the caller
    /// calls after the directory sync that makes the removal durable.
    pub fn unlink_segment(&mut self, id: SegmentId) -> Result<(), WalError> {
        let Some(segment) = self.segments.get(id) else {
            return Ok(());
        };
        assert!(segment.is_sealed(), "removing the tail segment {id}");
        assert!(!segment.is_pinned(), "removing pinned segment {id}");
        match self.storage.remove(id) {
            // Removed by an earlier round that failed after it (another file's removal):
            // the name is gone, and the directory sync that follows makes that durable.
            // Refusing here would stop every later round at the same id.
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            removed => removed.map_err(|source| WalError::Io {
                op: "remove segment",
                path: self.storage.segment_path(id),
                source,
            }),
        }
    }

    /// Forgets a segment whose file was removed durably (for a log that never syncs: removed;
    /// its files are never recovered).
    pub fn forget_segment(&mut self, id: SegmentId) {
        if let Some(segment) = self.segments.get(id) {
            assert!(!segment.is_pinned(), "forgetting pinned segment {id}");
            segment.file().removed();
        }
        if self.segments.remove(id).is_some() {
            self.segments_removed.set(self.segments_removed.get() + 1);
        }
    }

    /// Pins every segment as it is now, up to the last appended record: their files are not
    /// removed until the pin is dropped. For snapshots and backups. Retired segments are left
    /// out: everything still needed in them was written again (durably) before they were
    /// retired, and their files may already be unlinked, awaiting the directory's sync.
    pub fn pin(&self) -> LogPin<S::File> {
        let segments: Vec<_> = self
            .segments
            .iter()
            .filter(|segment| !segment.is_retired())
            .map(|segment| {
                segment.pin();
                (Rc::clone(segment), segment.written_bytes())
            })
            .collect();
        LogPin {
            segments,
            last_lsn: self.next_lsn - 1,
        }
    }
}

/// A pin on a log's segments as they were at one moment.
#[derive(Debug)]
pub struct LogPin<F: crate::storage::SegmentFile> {
    segments: Vec<(Rc<Segment<F>>, usize)>,
    last_lsn: u64,
}

impl<F: crate::storage::SegmentFile> LogPin<F> {
    /// The pinned segments with the end of their records at pin time.
    pub fn segments(&self) -> impl Iterator<Item = (&Rc<Segment<F>>, usize)> {
        self.segments.iter().map(|(s, end)| (s, *end))
    }

    /// LSN of the last record covered.
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }
}

impl<F: crate::storage::SegmentFile> Drop for LogPin<F> {
    fn drop(&mut self) {
        for (segment, _) in &self.segments {
            segment.unpin();
        }
    }
}
