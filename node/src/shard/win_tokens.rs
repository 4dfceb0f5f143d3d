//! memcached's win tokens, for `mg`'s vivify (`N`) and recache (`R`) flags: the first client
//! to find an item missing (it is created empty) or about to expire is told it has *won*
//! (`W`) and should fetch the value and store it; every other client, until the item is
//! replaced, is told someone else has (`Z`), and can wait or serve what is there. It stops
//! a thundering herd of clients all recomputing the same value.
//!
//! Which items have handed out their token is kept in memory only, by key and CAS: an item
//! replaced gets a new CAS, and with it a token to hand out. After a restart or a failover
//! every token can be won again: one more client recomputes, nothing is wrong.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Entries before the first pruning: below this, keys replaced since their token went out
/// are kept (a few KiB).
const PRUNE_AT_LEAST: usize = 1024;

/// Items of an executor's shards that have handed out their win token.
#[derive(Debug)]
pub struct WinTokens {
    /// Key -> CAS of the item that handed out its token.
    sent: RefCell<HashMap<Box<[u8]>, u64>>,
    /// Entries at which those of replaced or removed items are dropped.
    prune_at: Cell<usize>,
}

impl Default for WinTokens {
    fn default() -> Self {
        Self {
            sent: RefCell::default(),
            prune_at: Cell::new(PRUNE_AT_LEAST),
        }
    }
}

impl WinTokens {
    /// Whether the item of `key` with `cas` has handed out its token.
    pub fn sent(&self, key: &[u8], cas: u64) -> bool {
        let sent = self.sent.borrow();
        !sent.is_empty() && sent.get(key) == Some(&cas)
    }

    /// The item of `key` with `cas` hands out its token. `current` gives a key's item's CAS
    /// now, if it has one: entries of items since replaced or removed are dropped when the
    /// map has doubled since it was last pruned.
    pub fn hand_out(&self, key: &[u8], cas: u64, current: impl Fn(&[u8]) -> Option<u64>) {
        let mut sent = self.sent.borrow_mut();
        sent.insert(key.into(), cas);
        if sent.len() >= self.prune_at.get() {
            sent.retain(|key, cas| current(key) == Some(*cas));
            self.prune_at.set((sent.len() * 2).max(PRUNE_AT_LEAST));
        }
    }

    /// Entries kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.sent.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::{PRUNE_AT_LEAST, WinTokens};

    #[test]
    fn a_token_goes_out_once_per_item_version() {
        let tokens = WinTokens::default();
        assert!(!tokens.sent(b"k", 5));
        tokens.hand_out(b"k", 5, |_| Some(5));
        assert!(tokens.sent(b"k", 5));
        // The item was replaced: its new version has a token to hand out.
        assert!(!tokens.sent(b"k", 9));
        assert!(!tokens.sent(b"other", 5));
    }

    #[test]
    fn entries_of_replaced_items_are_pruned() {
        let tokens = WinTokens::default();
        // Every key's item is replaced (CAS 0 is no item's) but the last.
        let last = format!("k{}", PRUNE_AT_LEAST - 1);
        let current = |key: &[u8]| (key == last.as_bytes()).then_some(1);
        for i in 0..PRUNE_AT_LEAST {
            tokens.hand_out(format!("k{i}").as_bytes(), 1, current);
        }
        assert_eq!(tokens.len(), 1);
        assert!(tokens.sent(last.as_bytes(), 1));
    }
}
