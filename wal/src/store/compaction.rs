//! Reclaiming space: compaction of sealed segments, and eviction when a cache is full.
//!
//! Compaction picks the sealed, durable segment with the least live data (below a
//! threshold), walks its records and, for each one still needed, writes it again at the head:
//! - a put that is still its key's item is rewritten with the item's current expiry (which
//!   absorbs any touch) and its CAS; an expired or flushed one is dropped, leaving a tombstone
//!   if an older record of the key may still exist;
//! - a tombstone is dropped once no segment from its `since` up to its own exists; otherwise
//!   it moves, and if the key was stored again meanwhile, its item moves after it (replay
//!   applies records in log order);
//! - a touch moves if it still holds its item's expiry; a flush moves while it still matters.
//!
//! Liveness is checked right before each rewrite, in the same synchronous step, so client
//! writes that interleave (compaction yields between batches) are never overwritten by stale
//! copies. Once every needed record is rewritten and durable, the segment is retired; its file
//! is removed (and the directory synced) when no pin holds it.
//!
//! Compaction runs in a task of its own, in a low-share task queue, yields between batches
//! and limits the bytes it rewrites per second, so client requests keep their latency.
//!
//! A passive only reclaims ([`CompactionMode::ReclaimOnly`]): its log holds its active's
//! records and must not gain any of its own, but once the active's compaction copies (which
//! arrive as records like any other) or newer writes have superseded everything in one of
//! its sealed segments, that segment is removed, as the active removed its own; so is one
//! whose items are all dead (expired or flushed), dropped from the index as compaction drops
//! them, unless a key of one has an older record left (compaction writes a tombstone then).
//! Tombstones and flushes go with their segment once compaction would drop them: a
//! tombstone once no segment is left that may hold an older record of its key (known by
//! its cover, see `tombstones`: the record's own `since_segment` names the active's
//! segments), a flush once it has come into effect and no older segment is left. Each
//! candidate is walked record by record against the index before it goes, so a wrong
//! live-byte count keeps data rather than losing it; one found to hold a needed record is
//! not walked again until what keeps that record needed has gone ([`KeptWhile`]).

use super::{
    Previous, Store, StoreError,
    index::{is_stale, put_of},
};
use crate::constants::{
    COMPACTION_BATCH_BYTES, COMPACTION_BATCH_PAUSE, COMPACTION_BYTES_PER_SEC_DEFAULT,
    COMPACTION_LIVE_PERCENT_DEFAULT, RECLAIM_EXPIRY_GRACE_SECS, RECORD_FLAG_ITEM_FOLLOWS,
    SEGMENT_HEADER_LEN_BYTES,
};
use crate::cooperate;
use crate::error::WalError;
use crate::format::{
    ArchivedDelete, ArchivedFlush, ArchivedPut, ArchivedTouch, Body, Delete, Flush, RecordKind,
    Touch, ValueParts, record::put_record_len_max, record::small_record_len_max,
    record::touch_record_len,
};
use crate::log::{AppendClass, Segment};
use crate::storage::{SegmentId, Storage};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Records ahead of the one being compacted whose index lookups are warmed: a superseded
/// record costs little more than its lookup, so the table's lines must be asked for several
/// records before they are needed to arrive in time.
const LOOKAHEAD_RECORDS: usize = 8;

/// Compaction settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Sealed segments whose live data is below this percentage of their size are compacted.
    pub live_percent_max: u8,
    /// Most bytes of records rewritten per second.
    pub bytes_per_sec: u64,
    /// How long the compactor sleeps when there is nothing to do.
    pub idle_interval: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            live_percent_max: COMPACTION_LIVE_PERCENT_DEFAULT,
            bytes_per_sec: COMPACTION_BYTES_PER_SEC_DEFAULT,
            idle_interval: Duration::from_millis(200),
        }
    }
}

impl CompactionConfig {
    pub(crate) fn validate(&self) -> Result<(), WalError> {
        if self.live_percent_max == 0 || self.live_percent_max > 100 {
            return Err(WalError::Config {
                field: "compaction.live_percent_max",
                value: self.live_percent_max.to_string(),
                fix: "use a percentage from 1 to 100".into(),
            });
        }
        if self.bytes_per_sec == 0 {
            return Err(WalError::Config {
                field: "compaction.bytes_per_sec",
                value: "0".into(),
                fix: "use a positive rate; compaction that never runs lets the disk fill".into(),
            });
        }
        Ok(())
    }
}

/// What a store's compactor may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionMode {
    /// Rewrite the needed records of sparse segments at the head, then remove the segments:
    /// an active, or a server outside a mirror group.
    Compact,
    /// Only remove sealed segments nothing in which is needed any more, writing no record: a
    /// passive, whose log holds its active's records and nothing of its own.
    ReclaimOnly,
    /// Nothing: until the server knows whether it is an active or a passive.
    Paused,
}

/// How long a record that a passive's reclaim found needed stays so, and its segment with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeptWhile {
    /// A segment from this one up to the refused one exists: a tombstone, or a dead item, of
    /// a key whose older records may lie there.
    OlderFrom(u32),
    /// The delayed flush logged at this LSN is still to come.
    FlushPending(u64),
    /// The flush with this boundary is the one in effect, and another segment holds records
    /// from before it.
    FlushInEffect(u64),
    /// The item of this key hash whose put is at this (segment, offset) still has its
    /// expiry from a touch in the refused segment.
    Touch(u64, u32, usize),
    /// The compaction mode stays: a live item (the live-byte count was wrong, or the clock
    /// went back).
    ModeStays,
}

/// A record of a segment a passive's reclaim walked that is still needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// Where it is.
    pub offset: usize,
    kept_while: KeptWhile,
}

/// What a passive's reclaim found in the records of its victim that it walked so far: what
/// goes with the segment.
#[derive(Debug, Default)]
pub struct ReclaimWalk {
    /// Offsets of dead items the index still points at (dropped from it with the segment).
    dead: Vec<usize>,
    /// Key hashes of its tombstones (their covers lose one with the segment).
    tombstones: Vec<u64>,
}

/// How far a call to [`Store::compact_some`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionProgress {
    /// Where to continue, or `None` when the segment is done.
    pub next_offset: Option<usize>,
    /// Bytes of records written at the head by this call.
    pub bytes_rewritten: usize,
}

impl<S: Storage> Store<S> {
    /// Live bytes of `segment` as compaction should see them: a segment whose items are all
    /// expired, or all flushed, holds nothing live but maybe some tombstones.
    fn effective_live_bytes(&self, segment: &Segment<S::File>, now: u32) -> u64 {
        let expiry_max = segment.expiry_max();
        let all_expired = expiry_max != 0 && expiry_max != u32::MAX && expiry_max <= now;
        let all_flushed = segment.last_lsn() < self.state.flush.flushed_below;
        if all_expired || all_flushed {
            0
        } else {
            segment.live_bytes()
        }
    }

    /// The segment most worth compacting now: sealed, durable, not retired, with the least
    /// live data, below the threshold.
    pub fn compaction_victim(&self) -> Option<SegmentId> {
        let now = self.clock.now_secs();
        let durable = self.log.commit().durable_lsn();
        let percent = u64::from(self.config.compaction.live_percent_max);
        self.log
            .segments()
            .filter(|s| self.may_remove(s, durable))
            .map(|s| (self.effective_live_bytes(s, now), s))
            .filter(|(live, s)| live * 100 < percent * s.size_bytes() as u64)
            .min_by_key(|(live, s)| (*live, s.id()))
            .map(|(_, s)| s.id())
    }

    /// The oldest segment a passive may be able to remove: sealed, durable, not retired, not
    /// refused for a reason that still holds, and holding by the live-byte count no live
    /// record but tombstones and flushes (no current item or touch), or only dead items (all
    /// expired, or all older than a flush in effect). Returns it with whether its live-byte
    /// count was zero.
    pub fn reclaim_victim(&self) -> Option<(SegmentId, bool)> {
        let durable = self.log.commit().durable_lsn();
        let now = self.reclaim_now();
        self.log
            .segments()
            .find(|s| {
                self.may_remove(s, durable)
                    && !self.still_refused(s.id())
                    && (self.effective_live_bytes(s, now) == 0 || s.live_bytes() == s.held_bytes())
            })
            .map(|s| (s.id(), s.live_bytes() == 0))
    }

    /// Whether a segment may be compacted or reclaimed: sealed, durable, not retired. (A
    /// sealed tail, a recovered version-1 segment, may be: what compaction copies out of it
    /// starts a newer segment. Its file goes only once one exists: `removable_segments`.)
    fn may_remove(&self, segment: &Segment<S::File>, durable: u64) -> bool {
        segment.is_sealed()
            && !segment.is_retired()
            && !segment.header_pending()
            && segment.last_lsn() <= durable
    }

    /// The time a passive's reclaim judges expiry by: [`RECLAIM_EXPIRY_GRACE_SECS`] ago.
    fn reclaim_now(&self) -> u32 {
        self.clock
            .now_secs()
            .saturating_sub(RECLAIM_EXPIRY_GRACE_SECS)
    }

    /// Whether the reclaim refused `segment` for a reason that still holds.
    fn still_refused(&self, segment: SegmentId) -> bool {
        match self.reclaim_refused.get(&segment) {
            None => false,
            Some(KeptWhile::ModeStays) => true,
            Some(KeptWhile::OlderFrom(since)) => {
                self.log.any_segment_in(u64::from(*since), segment)
            }
            Some(KeptWhile::FlushPending(lsn)) => {
                self.state.flush.pending.is_some_and(|p| p.lsn == *lsn)
            }
            Some(KeptWhile::FlushInEffect(boundary)) => self.flush_in_effect(segment, *boundary),
            Some(KeptWhile::Touch(hash, put_segment, put_offset)) => self
                .state
                .index
                .get_at(*hash, *put_segment, *put_offset)
                .is_some_and(|entry| u64::from(entry.touch_segment) == segment),
        }
    }

    /// Checks the records of `victim` from `from_offset` on, about `budget_bytes` of them,
    /// for one that is still needed: a live item the index points at, a dead one of a key
    /// with older records left (compaction would write a tombstone for it), the touch that
    /// set an item's expiry, a tombstone of a key with older records left (by its cover), a
    /// flush still in effect or to come. What goes with the segment is noted in `walk`. `Ok(next offset)`, `None` at
    /// the end; or `Err` with a needed record. What is unneeded stays so: later records only
    /// supersede, a dead item stays dead, and segments only go (a key's older records with
    /// them).
    pub fn reclaim_check(
        &self,
        victim: SegmentId,
        from_offset: usize,
        budget_bytes: usize,
        walk: &mut ReclaimWalk,
    ) -> Result<Option<usize>, Needed> {
        let Some(segment) = self.log.segment(victim) else {
            return Ok(None);
        };
        assert!(segment.is_sealed(), "reclaiming the tail segment {victim}");
        let now = self.reclaim_now();
        let end = segment.written_bytes();
        let mut offset = from_offset.max(SEGMENT_HEADER_LEN_BYTES);
        let mut checked = 0;
        while offset < end && checked < budget_bytes {
            let record = segment.record(offset);
            // Needed while a segment from `since` up to this one is left.
            let older_from = |since: u32| {
                self.log
                    .any_segment_in(u64::from(since), segment.id())
                    .then_some(KeptWhile::OlderFrom(since))
            };
            // SAFETY: the record was validated when recovered or written.
            let needed = match unsafe { record.body_unchecked() } {
                Body::Put(put) => {
                    let hash = self.state.index.hash(put.key.as_ref());
                    match self.state.index.get_at(hash, segment.id32(), offset) {
                        None => None,
                        Some(entry) if self.is_live(&entry, now) => Some(KeptWhile::ModeStays),
                        Some(entry) => {
                            let older = older_from(entry.since);
                            if older.is_none() {
                                walk.dead.push(offset);
                            }
                            older
                        }
                    }
                }
                Body::Touch(touch) => {
                    let key = touch.key.as_ref();
                    let hash = self.state.index.hash(key);
                    // Needed while it holds its item's expiry, and its item's put is not here
                    // (a put here is dead, or the walk would have stopped at it: it goes with
                    // the segment). Without it, recovery would give the put its own expiry
                    // back (a later one, or none).
                    self.state
                        .index
                        .get(&self.log, hash, key)
                        .filter(|e| {
                            e.touch_segment == segment.id32() && e.segment != segment.id32()
                        })
                        .map(|e| KeptWhile::Touch(hash, e.segment, e.offset()))
                }
                Body::Delete(delete) => {
                    let hash = self.state.index.hash(delete.key.as_ref());
                    let older = older_from(self.state.covers.since(hash, segment.id32()));
                    if older.is_none() {
                        walk.tombstones.push(hash);
                    }
                    older
                }
                Body::Flush(flush) => self.flush_needed(segment, record.lsn, flush),
            };
            if let Some(kept_while) = needed {
                return Err(Needed { offset, kept_while });
            }
            offset += record.total_len;
            checked += record.total_len;
        }
        Ok((offset < end).then_some(offset))
    }

    /// Compacts records of `victim` from `from_offset` on, about `budget_bytes` of them.
    /// When it returns `next_offset: None`, every needed record of the segment has been
    /// rewritten (not necessarily durably yet).
    pub fn compact_some(
        &mut self,
        victim: SegmentId,
        from_offset: usize,
        budget_bytes: usize,
    ) -> Result<CompactionProgress, StoreError> {
        let Some(segment) = self.log.segment(victim).map(Rc::clone) else {
            return Ok(CompactionProgress {
                next_offset: None,
                bytes_rewritten: 0,
            });
        };
        assert!(segment.is_sealed(), "compacting the tail segment {victim}");
        let before = self.log.counters().bytes_appended;
        let end = segment.written_bytes();
        let mut offset = from_offset.max(SEGMENT_HEADER_LEN_BYTES);
        let mut processed = 0;
        // The records in `[offset, ahead)`, up to LOOKAHEAD_RECORDS of them, have had the index
        // table's lines for their keys asked for: each lookup then finds them in cache rather
        // than stalling on two misses (the scan itself reads the segment in order).
        let mut ahead = offset;
        let mut warmed = 0;
        while offset < end && processed < budget_bytes {
            while ahead < end && warmed < LOOKAHEAD_RECORDS {
                let record = segment.record(ahead);
                // SAFETY: as below.
                if let Body::Put(put) = unsafe { record.body_unchecked() } {
                    self.state
                        .index
                        .prefetch_table(self.state.index.hash(put.key.as_ref()));
                }
                ahead += record.total_len;
                warmed += 1;
            }
            warmed -= 1;
            let record = segment.record(offset);
            // SAFETY: the record was validated when recovered or written.
            match unsafe { record.body_unchecked() } {
                Body::Put(put) => self.compact_put(&segment, offset, put)?,
                Body::Delete(delete) => self.compact_delete(&segment, record.term, delete)?,
                Body::Touch(touch) => self.compact_touch(&segment, touch)?,
                Body::Flush(flush) => self.compact_flush(&segment, record.lsn, flush)?,
            }
            offset += record.total_len;
            processed += record.total_len;
        }
        let bytes_rewritten = (self.log.counters().bytes_appended - before) as usize;
        self.counters.compaction_bytes_rewritten += bytes_rewritten as u64;
        Ok(CompactionProgress {
            next_offset: (offset < end).then_some(offset),
            bytes_rewritten,
        })
    }

    fn compact_put(
        &mut self,
        segment: &Rc<Segment<S::File>>,
        offset: usize,
        put: &ArchivedPut<'static>,
    ) -> Result<(), StoreError> {
        let key = put.key.as_ref();
        let hash = self.state.index.hash(key);
        let found = self.state.index.get_at(hash, segment.id32(), offset);
        // The lookup by key finds the same, once its entry's location is checked.
        debug_assert_eq!(
            found,
            self.state
                .index
                .get(&self.log, hash, key)
                .filter(|e| u64::from(e.segment) == segment.id() && e.offset() == offset)
        );
        let Some(entry) = found else {
            return Ok(()); // superseded or deleted
        };
        let now = self.clock.now_secs();
        if self.is_live(&entry, now) {
            let value = put.value.as_ref();
            let stale = segment.record(offset).is_stale();
            self.write_put(
                key,
                ValueParts::whole(value),
                put.flags.to_native(),
                entry.expiry,
                Some(put.cas.to_native()),
                stale,
                AppendClass::Compaction,
                Previous::Known(Some(entry)),
            )?;
            return Ok(());
        }
        // Expired or flushed: reclaim it.
        self.counters.items_reclaimed += 1;
        if self
            .log
            .any_segment_in(u64::from(entry.since), segment.id())
        {
            let body = Delete {
                key,
                since_segment: entry.since,
            };
            let appended = self.log.append(
                &body,
                small_record_len_max(key.len()),
                AppendClass::Compaction,
            )?;
            let tail = Rc::clone(self.appended_segment(&appended));
            self.state.apply_delete(&self.log, &tail, appended.len, key);
        } else if let Some(removed) = self.state.index.remove(&self.log, hash, key) {
            super::State::retire_entry(&self.log, &removed, key.len());
        }
        Ok(())
    }

    fn compact_delete(
        &mut self,
        segment: &Rc<Segment<S::File>>,
        term: u64,
        delete: &ArchivedDelete<'static>,
    ) -> Result<(), StoreError> {
        let key = delete.key.as_ref();
        // `since_segment` is a segment id of the log that wrote the tombstone. A tombstone
        // copied from another server (a passive's log is the active's records, in segments
        // of its own) names that server's segments, which mean nothing here: it then covers
        // every older segment of this log. This store wrote the records stamped with its
        // own term (a term has one active; 0 outside mirror groups).
        let since = if term == self.term() {
            delete.since_segment.to_native()
        } else {
            self.log.segments().next().map_or(0, |oldest| oldest.id32())
        };
        if !self.log.any_segment_in(u64::from(since), segment.id()) {
            self.counters.tombstones_dropped += 1;
            return Ok(());
        }
        let hash = self.state.index.hash(key);
        // The key was stored again since. The tombstone must still come after the older
        // records it covers, and the key's item after the tombstone (replay applies them in
        // log order): both are written again, in that order. (Letting the item's entry take
        // over the tombstone's `since` instead is not enough: that lives only in memory, and
        // after a restart nothing would cover the older records.)
        let stored_again = self.state.index.get(&self.log, hash, key).map(|entry| {
            let put = put_of(&self.log, &entry);
            let live = self.is_live(&entry, self.clock.now_secs());
            let item = live.then(|| {
                let stale = is_stale(&self.log, &entry);
                (put.value.as_ref().to_vec(), put.flags.to_native(), stale)
            });
            (entry, put.cas.to_native(), item)
        });
        let body = Delete {
            key,
            since_segment: since,
        };
        // Both or neither: a tombstone written without the item after it would delete an
        // acknowledged item. The pair goes into one segment, and the tombstone says that the
        // item follows it: recovery takes it only with the item (a power cut during the sync
        // that covers them may keep the one and not the other).
        let mut flags = 0;
        if let Some((_, _, Some((value, _, _)))) = &stored_again {
            let pair = small_record_len_max(key.len()) + put_record_len_max(key.len(), value.len());
            self.log.reserve(pair, AppendClass::Compaction)?;
            flags = RECORD_FLAG_ITEM_FOLLOWS;
        }
        let appended = self.log.append_flagged(
            &body,
            flags,
            small_record_len_max(key.len()),
            AppendClass::Compaction,
        )?;
        let tail = Rc::clone(self.appended_segment(&appended));
        // Removes the item's entry, if any, as replay will.
        self.state.apply_delete(&self.log, &tail, appended.len, key);
        if let Some((entry, cas, Some((value, flags, stale)))) = stored_again {
            self.write_put(
                key,
                ValueParts::whole(&value),
                flags,
                entry.expiry,
                Some(cas),
                stale,
                AppendClass::Compaction,
                Previous::Known(None),
            )?;
        }
        Ok(())
    }

    fn compact_touch(
        &mut self,
        segment: &Rc<Segment<S::File>>,
        touch: &ArchivedTouch<'static>,
    ) -> Result<(), StoreError> {
        let key = touch.key.as_ref();
        let cas = touch.cas.to_native();
        let expiry = touch.expiry.to_native();
        let hash = self.state.index.hash(key);
        let Some(entry) = self.state.index.get(&self.log, hash, key) else {
            return Ok(());
        };
        let current = u64::from(entry.touch_segment) == segment.id()
            && entry.expiry == expiry
            && put_of(&self.log, &entry).cas.to_native() == cas;
        if !current {
            return Ok(());
        }
        let body = Touch { key, cas, expiry };
        let appended =
            self.log
                .append(&body, touch_record_len(key.len()), AppendClass::Compaction)?;
        let tail = Rc::clone(self.appended_segment(&appended));
        self.state
            .apply_touch(&self.log, &tail, appended.len, key, cas, expiry);
        Ok(())
    }

    fn compact_flush(
        &mut self,
        segment: &Rc<Segment<S::File>>,
        lsn: u64,
        flush: &ArchivedFlush,
    ) -> Result<(), StoreError> {
        let boundary = flush.boundary_lsn.to_native();
        let at = flush.at.to_native();
        if self.flush_needed(segment, lsn, flush).is_none() {
            return Ok(());
        }
        let body = Flush {
            boundary_lsn: boundary,
            at,
        };
        let appended = self
            .log
            .append(&body, small_record_len_max(0), AppendClass::Compaction)?;
        self.after_flush_append(&appended, boundary, at);
        Ok(())
    }

    /// Whether the flush record at `lsn` of `segment` is still needed, and how long: a
    /// delayed one until it comes into effect (the record of its boundary replaces it then);
    /// the one in effect while a segment that may hold an item it flushed is left (older
    /// than its own: items stored later are in later segments), unless a later flush has
    /// replaced it.
    fn flush_needed(
        &self,
        segment: &Segment<S::File>,
        lsn: u64,
        flush: &ArchivedFlush,
    ) -> Option<KeptWhile> {
        let boundary = flush.boundary_lsn.to_native();
        if boundary == 0 {
            let pending = self.state.flush.pending.is_some_and(|p| p.lsn == lsn);
            return pending.then_some(KeptWhile::FlushPending(lsn));
        }
        self.flush_in_effect(segment.id(), boundary)
            .then_some(KeptWhile::FlushInEffect(boundary))
    }

    /// Whether a flush record in `segment` with `boundary` is still needed: it is the one in
    /// effect, and a segment other than its own holds records from before it.
    fn flush_in_effect(&self, segment: SegmentId, boundary: u64) -> bool {
        boundary == self.state.flush.flushed_below
            && self
                .log
                .segments()
                .any(|s| s.id() != segment && s.first_lsn() < boundary)
    }

    /// Drops from the index the dead items of `victim` it still points at (their keys have
    /// no older record left), as compaction drops them, and from the tombstones' covers the
    /// segment's tombstones, and retires the segment: a passive's reclaim, after
    /// [`Store::reclaim_check`] walked it all and found nothing needed. Returns false,
    /// changing nothing, if one of those items is live again (the clock was set back since
    /// the check).
    fn reclaim_segment(&mut self, victim: SegmentId, walk: &ReclaimWalk) -> bool {
        let Some(segment) = self.log.segment(victim).map(Rc::clone) else {
            return false;
        };
        let now = self.reclaim_now();
        // (hash, key) of every dead item the index still points at.
        let mut drop = Vec::with_capacity(walk.dead.len());
        for &offset in &walk.dead {
            let record = segment.record(offset);
            // SAFETY: the record was validated when recovered or written.
            let Body::Put(put) = (unsafe { record.body_unchecked() }) else {
                unreachable!("a dead item's offset holds a put");
            };
            let key = put.key.as_ref();
            let hash = self.state.index.hash(key);
            match self.state.index.get_at(hash, segment.id32(), offset) {
                None => {} // superseded meanwhile
                Some(entry) if self.is_live(&entry, now) => return false,
                Some(_) => drop.push((hash, key)),
            }
        }
        for (hash, key) in drop {
            if let Some(removed) = self.state.index.remove(&self.log, hash, key) {
                super::State::retire_entry(&self.log, &removed, key.len());
                self.counters.items_reclaimed += 1;
            }
        }
        for &hash in &walk.tombstones {
            self.state.covers.remove(hash, segment.id32());
        }
        self.counters.tombstones_dropped += walk.tombstones.len() as u64;
        self.reclaim_refused.remove(&victim);
        segment.retire();
        self.counters.segments_reclaimed += 1;
        true
    }

    /// Marks a compacted segment as retired: nothing in it is needed any more.
    pub fn retire_segment(&mut self, id: SegmentId) {
        if let Some(segment) = self.log.segment(id) {
            assert!(segment.is_sealed());
            segment.retire();
            self.counters.segments_compacted += 1;
        }
    }

    /// Retired segments no pin holds: their files can go. Never the log's tail: it is the
    /// newest segment, whose last LSN the next record follows after a restart. A tail is
    /// sealed only as a recovered version-1 segment (it takes no more records, see
    /// `FORMAT_VERSION_OLDEST_READ`); retired, it stays until a newer segment exists.
    pub fn removable_segments(&self) -> Vec<SegmentId> {
        let tail = self.log.tail().id();
        self.log
            .segments()
            .filter(|s| s.is_retired() && !s.is_pinned() && s.id() != tail)
            .map(|s| s.id())
            .collect()
    }

    /// Evicts the oldest unpinned sealed segment with every item in it (temporary-swap-only
    /// when full). Returns whether there was one.
    pub(crate) fn evict_oldest(&mut self) -> Result<bool, StoreError> {
        // Never the tail (sealed only as a recovered version-1 segment: see
        // `removable_segments`).
        let tail = self.log.tail().id();
        let Some(victim) = self
            .log
            .segments()
            .find(|s| s.is_sealed() && !s.is_pinned() && s.id() != tail)
            .map(Rc::clone)
        else {
            return Ok(false);
        };
        let mut evicted = 0u64;
        for (offset, record) in victim.records() {
            if record.kind == RecordKind::Delete {
                // SAFETY: the record was validated when written.
                if let Body::Delete(delete) = unsafe { record.body_unchecked() } {
                    let hash = self.state.index.hash(delete.key.as_ref());
                    self.state.covers.remove(hash, victim.id32());
                }
                continue;
            }
            if record.kind != RecordKind::Put {
                continue;
            }
            // SAFETY: the record was validated when written.
            let Body::Put(put) = (unsafe { record.body_unchecked() }) else {
                continue;
            };
            let key = put.key.as_ref();
            let hash = self.state.index.hash(key);
            let points_here = self
                .state
                .index
                .get(&self.log, hash, key)
                .is_some_and(|e| u64::from(e.segment) == victim.id() && e.offset() == offset);
            if points_here && let Some(entry) = self.state.index.remove(&self.log, hash, key) {
                super::State::retire_entry(&self.log, &entry, key.len());
                evicted += 1;
            }
        }
        self.counters.evictions += evicted;
        self.log.unlink_segment(victim.id())?;
        self.log.forget_segment(victim.id());
        tracing::debug!(
            segment = victim.id(),
            items = evicted,
            "evicted oldest segment"
        );
        Ok(true)
    }
}

/// One round of compaction work: removes retired segments no longer pinned, then compacts
/// one victim, if there is one, to the end. Returns whether it compacted a segment. A round
/// stops early, having changed nothing more, when compaction is paused or the store behind
/// the `RefCell` is replaced while it waits.
pub async fn compact_once<S: Storage>(store: &Rc<RefCell<Store<S>>>) -> Result<bool, StoreError> {
    let (instance, mode) = {
        let store = store.borrow();
        (store.instance(), store.compaction_mode())
    };
    let still = |store: &Rc<RefCell<Store<S>>>| {
        let store = store.borrow();
        store.instance() == instance && store.compaction_mode() == mode
    };
    if mode == CompactionMode::Paused {
        return Ok(false);
    }
    if let Some(cause) = store.borrow().commit().failure() {
        // A stopped shard changes nothing on disk any more.
        return Err(WalError::Poisoned { cause }.into());
    }
    remove_retired(store).await?;
    if !still(store) {
        return Ok(false);
    }
    if mode == CompactionMode::ReclaimOnly {
        return reclaim_once(store, still).await;
    }
    if store.borrow().state.covers.tracking() {
        // Kept through replay for a passive (see `Store::open`); a store that compacts
        // (an active, or a library user that never set a mode) has no use for them.
        store.borrow_mut().state.covers.stop();
    }
    let Some(victim) = store.borrow().compaction_victim() else {
        return Ok(false);
    };
    let config = store.borrow().config.compaction;
    let mut offset = Some(SEGMENT_HEADER_LEN_BYTES);
    while let Some(from) = offset {
        let progress = store
            .borrow_mut()
            .compact_some(victim, from, COMPACTION_BATCH_BYTES)?;
        offset = progress.next_offset;
        // The I/O budget (time for the bytes rewritten), and every batch a pause that lets the
        // executor poll for I/O (see `cooperate::pause`: yielding the task queue instead cost
        // 30 % of SET throughput at pipeline 16, every read waiting up to 100 ms).
        let budget = progress.bytes_rewritten as f64 / config.bytes_per_sec as f64;
        cooperate::pause(Duration::from_secs_f64(budget).max(COMPACTION_BATCH_PAUSE)).await;
        if !still(store) {
            // What was copied so far is a set of ordinary records; the victim stays.
            return Ok(false);
        }
    }
    // Everything moved out of the victim must be durable before its file goes.
    if !appended_durable(store, &still).await? {
        return Ok(false);
    }
    store.borrow_mut().retire_segment(victim);
    remove_retired(store).await?;
    Ok(true)
}

/// A passive's round: removes the oldest segment nothing in which is needed any more, if
/// there is one, without writing a record. Returns whether it removed one.
async fn reclaim_once<S: Storage>(
    store: &Rc<RefCell<Store<S>>>,
    still: impl Fn(&Rc<RefCell<Store<S>>>) -> bool,
) -> Result<bool, StoreError> {
    // A segment found to hold a needed record is noted as refused (not a candidate again
    // while that holds), and the next candidate walked in the same round.
    let (victim, walk) = loop {
        let Some((victim, counted_empty)) = store.borrow().reclaim_victim() else {
            return Ok(false);
        };
        match walk_victim(store, victim, counted_empty, &still).await {
            Walked::Unneeded(walk) => break (victim, walk),
            Walked::Refused => {}
            Walked::Stopped => return Ok(false),
        }
    };
    // What superseded its records must be durable before its file goes.
    if !appended_durable(store, &still).await? {
        return Ok(false);
    }
    if !store.borrow_mut().reclaim_segment(victim, &walk) {
        return Ok(false);
    }
    remove_retired(store).await?;
    Ok(true)
}

/// What a passive's reclaim found walking a candidate.
enum Walked {
    /// Nothing in it is needed: it can go, with what the walk noted.
    Unneeded(ReclaimWalk),
    /// A needed record: noted as refused.
    Refused,
    /// The round stopped (`still`) before the end.
    Stopped,
}

/// Walks the records of `victim`, a batch at a time, for one still needed.
async fn walk_victim<S: Storage>(
    store: &Rc<RefCell<Store<S>>>,
    victim: SegmentId,
    counted_empty: bool,
    still: &impl Fn(&Rc<RefCell<Store<S>>>) -> bool,
) -> Walked {
    let mut offset = Some(SEGMENT_HEADER_LEN_BYTES);
    let mut walk = ReclaimWalk::default();
    while let Some(from) = offset {
        let checked = store
            .borrow()
            .reclaim_check(victim, from, COMPACTION_BATCH_BYTES, &mut walk);
        match checked {
            Ok(next) => offset = next,
            Err(Needed {
                offset: at,
                kept_while,
            }) => {
                if counted_empty {
                    // The live-byte count said nothing here is needed, the index says
                    // otherwise: the count is wrong (a bug), and the segment stays.
                    tracing::error!(
                        segment = victim,
                        offset = at,
                        "a segment counted as holding no live record holds a needed one: kept"
                    );
                    debug_assert!(
                        false,
                        "segment {victim} offset {at}: live bytes undercounted"
                    );
                }
                // Otherwise it holds a record a passive cannot drop yet: a tombstone or dead
                // item of a key with older records left, a flush still in effect or to come.
                // It is not walked again until that has gone.
                store
                    .borrow_mut()
                    .reclaim_refused
                    .insert(victim, kept_while);
                return Walked::Refused;
            }
        }
        cooperate::pause(COMPACTION_BATCH_PAUSE).await;
        if !still(store) {
            return Walked::Stopped;
        }
    }
    Walked::Unneeded(walk)
}

/// Waits until every record appended so far is durable; returns whether the round still
/// goes on (`still`) afterwards.
async fn appended_durable<S: Storage>(
    store: &Rc<RefCell<Store<S>>>,
    still: impl Fn(&Rc<RefCell<Store<S>>>) -> bool,
) -> Result<bool, StoreError> {
    let (commit, last_lsn) = {
        let store = store.borrow();
        (store.commit(), store.log.next_lsn() - 1)
    };
    commit.wait_durable(last_lsn).await?;
    Ok(still(store))
}

/// Removes the files of retired, unpinned segments, durably, then forgets them.
async fn remove_retired<S: Storage>(store: &Rc<RefCell<Store<S>>>) -> Result<(), StoreError> {
    let (ids, storage, durability, instance) = {
        let store = store.borrow();
        (
            store.removable_segments(),
            Rc::clone(store.log.storage()),
            store.log.config().durability,
            store.instance(),
        )
    };
    if ids.is_empty() {
        return Ok(());
    }
    for &id in &ids {
        store.borrow_mut().log.unlink_segment(id)?;
    }
    if durability == crate::log::Durability::Fsync
        && let Err(source) = storage.sync_dir().await
    {
        // Which names the directory holds on disk is now unknown: the shard stops, as
        // after any failed sync (fail-stop), rather than go on with a directory it cannot
        // trust.
        let error = WalError::Io {
            op: "fsync shard directory",
            path: storage.dir_path(),
            source,
        };
        tracing::error!(%error, "sync failed: the shard stops accepting writes");
        let cause = store.borrow().commit().fail(error);
        return Err(WalError::Poisoned { cause }.into());
    }
    let mut store = store.borrow_mut();
    if store.instance() != instance {
        // Replaced while the directory synced: these ids are not the new store's.
        return Ok(());
    }
    for id in ids {
        store.log.forget_segment(id);
        tracing::debug!(segment = id, "removed compacted segment");
    }
    Ok(())
}

/// Runs compaction for `store` until the log fails: in a task queue of its own with
/// `shares` (low, e.g. 10 against the default 1000), so that it yields to client work.
pub fn spawn_compactor<S: Storage>(
    store: Rc<RefCell<Store<S>>>,
    shares: usize,
) -> Result<glommio::Task<()>, glommio::GlommioError<()>> {
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(shares),
        glommio::Latency::NotImportant,
        "compaction",
    );
    glommio::spawn_local_into(
        async move {
            let idle = store.borrow().config.compaction.idle_interval;
            loop {
                match compact_once(&store).await {
                    Ok(true) => {}
                    Ok(false) => glommio::timer::sleep(idle).await,
                    Err(StoreError::Wal(error)) if error.is_poisoned() => {
                        tracing::error!(%error, "compaction stops: the shard refuses writes");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "compaction failed; retrying later");
                        glommio::timer::sleep(idle).await;
                    }
                }
            }
        },
        queue,
    )
}
