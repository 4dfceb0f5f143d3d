//! What a passive needs to know to drop a tombstone.
//!
//! A tombstone is needed while a record of its key older than it may remain: without it,
//! recovery would bring that record back. The active knows how far back that is from the
//! tombstone itself (`since_segment`, the oldest of its segments that may hold a record of
//! the key, written into the record). A passive's log holds the active's records in segments
//! of its own, where the active's ids mean nothing, and it writes no record of its own; so it
//! keeps the same fact in memory, in its own segment ids: a *cover* per tombstone, built as
//! records are applied (recovery replays them all in log order; a replicated one is applied
//! as it arrives) and dropped with the segment that holds the tombstone.
//!
//! A tombstone's cover is the `since` of the item it removed: every record of the key since
//! the one before (an older tombstone, which covers what came before it and stays as long as
//! that may remain). A tombstone that removed no item (a copy the active's compaction made of
//! an older one, or a tombstone of a key whose records are all gone) covers nothing of its
//! own: whatever of its key is older is covered by the original, which the passive still
//! holds, or is gone.
//!
//! Covers are kept by key hash and segment. Tombstones of different keys with the same hash
//! in one segment share a cover, the oldest of theirs: a collision keeps a tombstone longer,
//! never drops one too early.

use std::collections::HashMap;

/// Covers of the tombstones in a store's log, while a passive may need them.
#[derive(Debug)]
pub(super) struct TombstoneCovers {
    /// (key hash, segment of the tombstone) -> the oldest segment that may hold a record
    /// a tombstone of that hash in that segment deletes.
    covers: HashMap<(u64, u32), u32>,
    /// Covers are kept (a passive, or a store that has not been told yet what it is). An
    /// active's compaction reads `since_segment` from the tombstones themselves, and does
    /// not pay for covers.
    tracking: bool,
    /// Tombstones in segments up to this one may have been applied while covers were not
    /// kept (an active that became a passive): they have none, or only some, and count as
    /// covering every older segment. 0 if there are none.
    uncounted_through: u32,
}

impl TombstoneCovers {
    /// Tracking, from the first record replayed.
    pub(super) fn new() -> Self {
        Self {
            covers: HashMap::new(),
            tracking: true,
            uncounted_through: 0,
        }
    }

    /// Stops keeping covers (an active) and forgets them.
    pub(super) fn stop(&mut self) {
        self.tracking = false;
        self.covers = HashMap::new();
    }

    /// Keeps covers again (a passive), of the tombstones applied from now on; `tail`: the
    /// newest segment now, the last that may hold tombstones applied while stopped.
    pub(super) fn resume(&mut self, tail: u32) {
        if !self.tracking {
            self.tracking = true;
            self.uncounted_through = self.uncounted_through.max(tail);
        }
    }

    /// Whether covers are kept.
    pub(super) fn tracking(&self) -> bool {
        self.tracking
    }

    /// A tombstone of a key with `hash`, in segment `at`, was applied. `removed_since` is the
    /// `since` of the item it removed, if it removed one.
    pub(super) fn add(&mut self, hash: u64, at: u32, removed_since: Option<u32>) {
        if !self.tracking {
            return;
        }
        let since = removed_since.unwrap_or(at);
        self.covers
            .entry((hash, at))
            .and_modify(|cover| *cover = (*cover).min(since))
            .or_insert(since);
    }

    /// The oldest segment that may hold a record a tombstone of `hash` in segment `at`
    /// deletes: 0 (every segment) when it is not known.
    pub(super) fn since(&self, hash: u64, at: u32) -> u32 {
        if at <= self.uncounted_through {
            return 0;
        }
        self.covers.get(&(hash, at)).copied().unwrap_or(0)
    }

    /// The tombstones of `hash` in segment `at` left the log with it.
    pub(super) fn remove(&mut self, hash: u64, at: u32) {
        self.covers.remove(&(hash, at));
    }

    /// Covers kept.
    pub(super) fn len(&self) -> usize {
        self.covers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::TombstoneCovers;

    #[test]
    fn a_tombstone_covers_back_to_the_item_it_removed() {
        let mut covers = TombstoneCovers::new();
        covers.add(7, 5, Some(2));
        covers.add(7, 9, Some(6));
        assert_eq!((covers.since(7, 5), covers.since(7, 9)), (2, 6));
        // One that removed no item covers nothing of its own.
        covers.add(7, 12, None);
        assert_eq!(covers.since(7, 12), 12);
        // Two of a hash in one segment: the older cover.
        covers.add(7, 9, Some(3));
        covers.add(7, 9, Some(8));
        assert_eq!(covers.since(7, 9), 3);
        covers.remove(7, 5);
        assert_eq!(covers.since(7, 5), 0, "gone: unknown");
        assert_eq!(covers.since(7, 9), 3);
        assert_eq!(covers.len(), 2);
    }

    #[test]
    fn tombstones_applied_while_stopped_cover_everything() {
        let mut covers = TombstoneCovers::new();
        covers.add(1, 3, Some(2));
        covers.stop();
        assert_eq!(covers.since(1, 3), 0);
        covers.add(2, 5, Some(4));
        assert_eq!(covers.len(), 0, "not kept while stopped");
        covers.resume(6);
        // Segment 6 may hold tombstones applied before: every one there covers everything.
        covers.add(3, 6, Some(5));
        assert_eq!(covers.since(3, 6), 0);
        covers.add(3, 7, Some(5));
        assert_eq!(covers.since(3, 7), 5);
        covers.resume(9);
        assert_eq!(
            covers.since(3, 7),
            5,
            "resumed while tracking: nothing new uncounted"
        );
    }
}
