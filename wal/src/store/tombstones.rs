//! What a passive needs to know to drop a tombstone.
//!
//! A tombstone is needed while a record of its key older than it may remain: without it,
//! recovery would bring that record back. The active knows how far back that is from the
//! tombstone itself (`since_segment`, the oldest of its segments that may hold a record of
//! the key, written into the record). A passive's log holds the active's records in segments
//! of its own, where the active's ids mean nothing, and it writes no record of its own; so it
//! keeps the same fact in memory, in its own segment ids, for every key with tombstones in
//! its log: a [`Cover`]. Built as records are applied (recovery replays them all in log
//! order; a replicated one is applied as it arrives), dropped tombstone by tombstone as the
//! segments holding them are removed.
//!
//! Keys are known here by their hash only. Tombstones of different keys with the same hash
//! share a cover, the oldest of theirs: a collision keeps a tombstone longer, never drops one
//! too early.

use std::collections::HashMap;

/// The tombstones of one key hash in the log.
#[derive(Debug, Clone, Copy)]
struct Cover {
    /// The oldest segment that may hold a record one of these tombstones deletes.
    since: u32,
    /// How many tombstones of the hash the log holds.
    tombstones: u32,
}

/// Covers of the tombstones in a store's log, while a passive may need them.
#[derive(Debug)]
pub(super) struct TombstoneCovers {
    covers: HashMap<u64, Cover>,
    /// Covers are kept (a passive, or a store that has not been told yet what it is). An
    /// active's compaction reads `since_segment` from the tombstones themselves, and does
    /// not pay for covers.
    tracking: bool,
    /// Kept since the store opened, never interrupted: then a key with neither an item nor a
    /// cover has no record in the log, and a tombstone of it covers nothing. Once tracking
    /// stopped, such a tombstone is taken to cover every older segment.
    complete: bool,
}

impl TombstoneCovers {
    /// Tracking, from the first record replayed.
    pub(super) fn new() -> Self {
        Self {
            covers: HashMap::new(),
            tracking: true,
            complete: true,
        }
    }

    /// Stops keeping covers (an active) and forgets them.
    pub(super) fn stop(&mut self) {
        self.tracking = false;
        self.complete = false;
        self.covers = HashMap::new();
    }

    /// Keeps covers again (a passive): of the tombstones applied from now on. Those applied
    /// while stopped have none, and count as covering every older segment.
    pub(super) fn resume(&mut self) {
        self.tracking = true;
    }

    /// A tombstone of a key with `hash`, in segment `at`, was applied. `removed_since` is the
    /// `since` of the item it removed, if it removed one.
    pub(super) fn add(&mut self, hash: u64, at: u32, removed_since: Option<u32>) {
        if !self.tracking {
            return;
        }
        let alone = if self.complete { at } else { 0 };
        let cover = self.covers.entry(hash).or_insert(Cover {
            since: removed_since.unwrap_or(alone),
            tombstones: 0,
        });
        if let Some(since) = removed_since {
            cover.since = cover.since.min(since);
        }
        cover.tombstones += 1;
    }

    /// The oldest segment that may hold a record a tombstone of `hash` deletes: 0 (every
    /// segment) when it is not known.
    pub(super) fn since(&self, hash: u64) -> u32 {
        self.covers.get(&hash).map_or(0, |cover| cover.since)
    }

    /// A tombstone of `hash` left the log with its segment.
    pub(super) fn remove(&mut self, hash: u64) {
        let Some(cover) = self.covers.get_mut(&hash) else {
            return;
        };
        cover.tombstones -= 1;
        if cover.tombstones == 0 {
            self.covers.remove(&hash);
        }
    }

    /// Key hashes with covers.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.covers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::TombstoneCovers;

    #[test]
    fn a_tombstone_covers_back_to_the_oldest_record_it_removed() {
        let mut covers = TombstoneCovers::new();
        covers.add(7, 5, Some(2));
        covers.add(7, 9, Some(6));
        assert_eq!(covers.since(7), 2);
        // A tombstone of a key with nothing left in a complete log covers nothing older.
        covers.add(8, 4, None);
        assert_eq!(covers.since(8), 4);
        // A copy of a tombstone (the key had no item) keeps its key's cover.
        covers.add(7, 12, None);
        assert_eq!(covers.since(7), 2);
        covers.remove(7);
        covers.remove(7);
        assert_eq!(covers.since(7), 2);
        covers.remove(7);
        assert_eq!(covers.since(7), 0, "no tombstone left: unknown");
        assert_eq!(covers.len(), 1);
    }

    #[test]
    fn once_stopped_an_unknown_key_is_taken_to_cover_everything() {
        let mut covers = TombstoneCovers::new();
        covers.add(1, 3, Some(1));
        covers.stop();
        assert_eq!(covers.since(1), 0);
        covers.add(2, 5, None);
        assert_eq!(covers.len(), 0, "not kept while stopped");
        covers.resume();
        covers.add(2, 6, None);
        assert_eq!(covers.since(2), 0);
        covers.add(3, 6, Some(4));
        assert_eq!(covers.since(3), 4);
    }
}
