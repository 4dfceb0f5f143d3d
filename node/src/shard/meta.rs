//! memcached's meta commands on a shard's store: `mg`, `ms`, `md`, `ma` (see
//! `protocol::meta` for the request and the flags).
//!
//! Each runs the same store operations as the classic commands, under the same durability
//! rule (a reply waits for every record it shows or rests on), and writes the meta reply:
//! a code, then the return flags the request asked for, in its order. A `C<cas>` condition
//! is checked against the item and the operation run in one step: a shard's store is used
//! by one task at a time, so nothing can change the item in between.

use super::{Durable, LocalShards, MAPPED_VALUE_MIN_BYTES, MappedItem, Refusal};
use crate::protocol::{Meta, MetaKind, reply};
use crate::stats::Stat;
use terrace_wal::error::StoreError;
use terrace_wal::store::expiry::{expiry_from_exptime, is_expired};
use terrace_wal::store::{Delta, SetMode, StoreOutcome, number};

/// What the return flags may show of an item.
#[derive(Debug, Clone, Copy, Default)]
struct Shown {
    cas: u64,
    flags: u32,
    size: usize,
    /// Absolute expiry in unix seconds, 0 never.
    expiry: u32,
    /// `mg`'s win token (see `win_tokens`): shown after the return flags, whatever was
    /// asked.
    token: Token,
    /// `mg` of a stale item (marked by `md ... I`, or stored by `ms ... I` with an older
    /// CAS): `X` after the return flags, between a `Z` and a `W` as memcached writes them.
    stale: bool,
}

/// What an `mg` tells of its item's win token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Token {
    /// Nothing.
    #[default]
    None,
    /// `W`: this client won it.
    Won,
    /// `Z`: another client has.
    Sent,
}

/// Return flags each outcome may carry (memcached 1.6's choice per command); others asked
/// for are left out.
const ON_MISS: &[u8] = b"Ok";
const GET_HIT: &[u8] = b"Okcfst";
const SET_DONE: &[u8] = b"Okc";
const DELETE_DONE: &[u8] = b"Ok";
const ARITHMETIC_DONE: &[u8] = b"Oktc";

/// A one-key result: the reply is written, this is what it must wait for.
type MetaResult = Result<Option<Durable>, Refusal>;

/// How a `C<cas>` condition came out.
enum Condition {
    /// No condition, or it holds.
    Holds,
    /// No such item (`NF`).
    Missing,
    /// The item's CAS differs (`EX`).
    Changed,
}

impl LocalShards {
    /// Runs a meta request on this executor's shard of `key` (`meta.key`, decoded by the
    /// caller, which routed by it). `mapped` as for [`LocalShards::get`]: where an `mg` may
    /// leave a large value to be sent from its mapping.
    pub fn meta(
        &self,
        meta: &Meta<'_>,
        key: &[u8],
        out: &mut Vec<u8>,
        mapped: Option<&mut Vec<(usize, MappedItem)>>,
    ) -> MetaResult {
        match meta.kind {
            MetaKind::Get => self.meta_get(meta, key, out, mapped),
            MetaKind::Set => self.meta_set(meta, key, out),
            MetaKind::Delete => self.meta_delete(meta, key, out),
            MetaKind::Arithmetic => self.meta_arithmetic(meta, key, out),
        }
    }

    /// `mg`: `VA <size> <flags>` and the value with `v`, else `HD <flags>`; `EN` on a miss.
    /// With `T`, the item is touched as `gat` does.
    fn meta_get(
        &self,
        meta: &Meta<'_>,
        key: &[u8],
        out: &mut Vec<u8>,
        mapped: Option<&mut Vec<(usize, MappedItem)>>,
    ) -> MetaResult {
        let (shard, store) = self.store_of(key);
        self.counters.bump(Stat::cmd_get);
        // `R` and `t` before `T` look at the time the item had left before the touch; after
        // it, at the time the touch gave it (memcached reads the flags in order).
        let recache_before_touch = meta.recache.is_some() && !meta.recache_after_touch();
        let expiry_before_touch =
            if meta.ttl.is_some() && (recache_before_touch || meta.ttl_shown_before_touch()) {
                let item = store.borrow_mut().get(key).ok().flatten();
                item.map(|i| i.expiry())
            } else {
                None
            };
        let found = match meta.ttl {
            None => store
                .borrow_mut()
                .get(key)
                .ok()
                .flatten()
                .map(|item| (item.lsn(), item)),
            Some(ttl) => {
                self.counters.bump(Stat::cmd_touch);
                self.stamp(store);
                let touched = store.borrow_mut().get_and_touch(key, ttl);
                match touched.map_err(|error| self.refuse(shard, error))? {
                    Some((item, written)) => {
                        self.counters.bump(Stat::touch_hits);
                        Some((written.lsn.max(item.lsn()), item))
                    }
                    None => {
                        self.counters.bump(Stat::touch_misses);
                        None
                    }
                }
            }
        };
        let Some((lsn, item)) = found else {
            self.counters.bump(Stat::get_misses);
            if let Some(ttl) = meta.vivify {
                return self.meta_vivify(meta, key, out, ttl);
            }
            if !meta.quiet {
                self.head(out, b"EN", meta, None, ON_MISS, shard);
            }
            return Ok(self.absence(shard));
        };
        self.counters.bump(Stat::get_hits);
        let value = item.value();
        let (cas, expiry, stale) = (item.cas(), item.expiry(), item.is_stale());
        let token = if self.win_tokens.sent(key, cas) {
            Token::Sent
        } else {
            // `R`: less time left than asked (an item that never expires has all the time).
            let now = i64::from(self.now_secs(shard));
            let expiry_seen = match expiry_before_touch {
                Some(before) if recache_before_touch => before,
                _ => expiry,
            };
            let recache = meta
                .recache
                .is_some_and(|ttl| expiry_seen != 0 && i64::from(expiry_seen) - now < ttl);
            // A stale item's first reader is told to fetch the value anew, as memcached.
            if recache || stale {
                self.hand_out_token(key, cas);
                Token::Won
            } else {
                Token::None
            }
        };
        let now = self.now_secs(shard);
        let shown = Shown {
            cas,
            flags: item.flags(),
            size: value.len(),
            expiry: shown_expiry(meta, false, expiry_before_touch, expiry, now),
            token,
            stale,
        };
        if meta.value {
            out.extend_from_slice(b"VA ");
            reply::number(out, value.len() as u64);
            self.flags(out, meta, Some(&shown), GET_HIT, shard);
            match mapped {
                Some(mapped) if value.len() >= MAPPED_VALUE_MIN_BYTES => {
                    mapped.push((out.len(), item));
                }
                _ => out.extend_from_slice(value),
            }
            out.extend_from_slice(b"\r\n");
        } else {
            self.head(out, b"HD", meta, Some(&shown), GET_HIT, shard);
        }
        let wait = if meta.ttl.is_some() {
            self.written(shard, lsn)
        } else {
            self.durable(shard, lsn)
        };
        Ok(wait)
    }

    /// `mg` with `N<ttl>` of a missing item: an empty one is stored (flags 0, expiry `ttl`,
    /// or `T`'s if given) and shown as a hit, with the win token (`W`). A write: the reply
    /// waits for it as for any.
    fn meta_vivify(&self, meta: &Meta<'_>, key: &[u8], out: &mut Vec<u8>, ttl: i64) -> MetaResult {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        let exptime = meta.created_ttl(ttl);
        let stored = store.borrow_mut().set(SetMode::Add, key, b"", 0, exptime);
        let written = match stored.map_err(|error| self.refuse(shard, error))? {
            StoreOutcome::Stored(written) => written,
            // Not reached: the miss above and the add run in one step.
            _ => return Ok(self.refused(out, b"NS", meta, shard)),
        };
        self.counters.bump(Stat::cmd_set);
        self.hand_out_token(key, written.cas);
        let now = self.now_secs(shard);
        let expiry = expiry_from_exptime(exptime, now);
        let shown = Shown {
            cas: written.cas,
            expiry: shown_expiry(meta, true, None, expiry, now),
            token: Token::Won,
            ..Shown::default()
        };
        if meta.value {
            out.extend_from_slice(b"VA 0");
            self.flags(out, meta, Some(&shown), GET_HIT, shard);
            out.extend_from_slice(b"\r\n");
        } else {
            self.head(out, b"HD", meta, Some(&shown), GET_HIT, shard);
        }
        Ok(self.written(shard, written.lsn))
    }

    /// Marks the item of `key` with `cas` as having handed out its win token.
    fn hand_out_token(&self, key: &[u8], cas: u64) {
        self.win_tokens.hand_out(key, cas, |key| {
            let (_, store) = self.store_of(key);
            let item = store.borrow_mut().get(key).ok().flatten();
            item.map(|item| item.cas())
        });
    }

    /// `ms`: `HD` stored, `NS` not stored (the mode's condition), `EX` the CAS differs, `NF`
    /// a CAS given for a missing item.
    fn meta_set(&self, meta: &Meta<'_>, key: &[u8], out: &mut Vec<u8>) -> MetaResult {
        let (shard, store) = self.store_of(key);
        self.counters.bump(Stat::cmd_set);
        self.stamp(store);
        let exptime = meta.ttl.unwrap_or(0);
        // As memcached: a set or a replace with a CAS is `cas` (`NF` when missing, `EX` when
        // changed; `C0` too compares); an append or a prepend with a CAS other than 0 answers
        // `EX` when the item changed (`NS` when it is missing, as without a CAS), with `C0`
        // it compares nothing; an add ignores the CAS.
        // With `I`, a CAS older than the item's stores the value marked stale (it keeps the
        // item's expiry, and a win token it handed out), as memcached.
        let (mode, condition) = match (meta.set_mode, meta.compare_cas) {
            (SetMode::Set | SetMode::Replace, Some(cas)) if meta.invalidate => {
                (SetMode::CasOrStale(cas), None)
            }
            (SetMode::Set | SetMode::Replace, Some(cas)) => (SetMode::Cas(cas), None),
            (mode @ (SetMode::Append | SetMode::Prepend), Some(cas)) if cas != 0 => {
                (mode, Some(cas))
            }
            (mode, _) => (mode, None),
        };
        if let Some(cas) = condition {
            let current = store.borrow_mut().get(key).ok().flatten().map(|i| i.cas());
            if current.is_some_and(|current| current != cas) {
                self.counters.bump(Stat::cas_badval);
                return Ok(self.refused(out, b"EX", meta, shard));
            }
        }
        // The item replaced by a stale store, if it had handed out its win token.
        let token_sent = match mode {
            SetMode::CasOrStale(_) => {
                let current = store.borrow_mut().get(key).ok().flatten().map(|i| i.cas());
                current.filter(|&cas| self.win_tokens.sent(key, cas))
            }
            _ => None,
        };
        let outcome = store
            .borrow_mut()
            .set(mode, key, meta.data, meta.client_flags, exptime);
        match outcome.map_err(|error| self.refuse(shard, error))? {
            StoreOutcome::Stored(written) => {
                if matches!(mode, SetMode::Cas(_) | SetMode::CasOrStale(_)) || condition.is_some() {
                    self.counters.bump(Stat::cas_hits);
                }
                // Stored stale (an older CAS): the new version keeps the token as handed out.
                if let (SetMode::CasOrStale(cas), Some(current)) = (mode, token_sent)
                    && cas != current
                {
                    self.hand_out_token(key, written.cas);
                }
                if !meta.quiet {
                    let shown = Shown {
                        cas: written.cas,
                        ..Shown::default()
                    };
                    self.head(out, b"HD", meta, Some(&shown), SET_DONE, shard);
                }
                Ok(self.written(shard, written.lsn))
            }
            StoreOutcome::NotStored => Ok(self.refused(out, b"NS", meta, shard)),
            StoreOutcome::Exists => {
                self.counters.bump(Stat::cas_badval);
                Ok(self.refused(out, b"EX", meta, shard))
            }
            StoreOutcome::NotFound => {
                self.counters.bump(Stat::cas_misses);
                Ok(self.refused(out, b"NF", meta, shard))
            }
        }
    }

    /// `md`: `HD` deleted (with `I`: marked stale), `NF` no such item,
    /// `EX` the CAS differs.
    fn meta_delete(&self, meta: &Meta<'_>, key: &[u8], out: &mut Vec<u8>) -> MetaResult {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        match self.condition(meta, key)? {
            Condition::Holds => {}
            Condition::Missing => {
                self.counters.bump(Stat::delete_misses);
                return Ok(self.refused(out, b"NF", meta, shard));
            }
            Condition::Changed => return Ok(self.refused(out, b"EX", meta, shard)),
        }
        // With `I` the item stays, marked stale, with a new CAS and `T`'s expiry if given;
        // its new version has a win token to hand out (the next `mg` says `X W`). memcached
        // counts that in no delete statistic.
        let changed = if meta.invalidate {
            store.borrow_mut().invalidate(key, meta.ttl)
        } else {
            store.borrow_mut().delete(key)
        };
        match changed.map_err(|error| self.refuse(shard, error))? {
            Some(written) => {
                if !meta.invalidate {
                    self.counters.bump(Stat::delete_hits);
                }
                if !meta.quiet {
                    self.head(out, b"HD", meta, None, DELETE_DONE, shard);
                }
                Ok(self.written(shard, written.lsn))
            }
            None => {
                self.counters.bump(Stat::delete_misses);
                Ok(self.refused(out, b"NF", meta, shard))
            }
        }
    }

    /// `ma`: `HD`, or `VA <len>` and the new number with `v`; `NF` on a miss unless `N`
    /// creates the counter at `J` (returned as it is, not yet changed; a `C` is not checked
    /// then, as memcached); `EX` when a `C` other than 0 differs (checked before the value is
    /// found not to be a number, as memcached); `T` also sets the expiry of a counter that
    /// was there.
    fn meta_arithmetic(&self, meta: &Meta<'_>, key: &[u8], out: &mut Vec<u8>) -> MetaResult {
        let (shard, store) = self.store_of(key);
        self.stamp(store);
        let (hit, miss) = if meta.incr {
            (Stat::incr_hits, Stat::incr_misses)
        } else {
            (Stat::decr_hits, Stat::decr_misses)
        };
        let current = store.borrow_mut().get(key).ok().flatten();
        // For `t` before `T`; `None`: the counter is created.
        let mut expiry_before_touch = None;
        let (number, mut lsn) = match current {
            Some(item) => {
                if meta
                    .compare_cas
                    .is_some_and(|cas| cas != 0 && cas != item.cas())
                {
                    return Ok(self.refused(out, b"EX", meta, shard));
                }
                // Checked before the touch, so that a refused change changes nothing.
                if number::parse_u64(item.value()).is_none() {
                    return Err(self.refuse(shard, StoreError::NonNumeric));
                }
                expiry_before_touch = Some(item.expiry());
                drop(item);
                // The touch first: if the increment then failed (the log full), a retry
                // would touch again, which is harmless; the other way round it would count
                // twice. Not a touch that expires the counter at once (a negative TTL): as
                // in memcached, the counter changes first, and then expires.
                let now = self.now_secs(shard);
                let expires_at_once = meta
                    .ttl
                    .is_some_and(|ttl| is_expired(expiry_from_exptime(ttl, now), now));
                let mut lsn = 0;
                let touch = |lsn: &mut u64| -> Result<(), Refusal> {
                    if let Some(ttl) = meta.ttl {
                        let touched = store.borrow_mut().touch(key, ttl);
                        if let Some(touched) = touched.map_err(|error| self.refuse(shard, error))? {
                            *lsn = touched.lsn;
                        }
                    }
                    Ok(())
                };
                if !expires_at_once {
                    touch(&mut lsn)?;
                }
                let delta = if meta.incr {
                    Delta::Incr(meta.delta)
                } else {
                    Delta::Decr(meta.delta)
                };
                let changed = store.borrow_mut().delta(key, delta);
                let number = match changed.map_err(|error| self.refuse(shard, error))? {
                    Some((number, written)) => {
                        self.counters.bump(hit);
                        lsn = lsn.max(written.lsn);
                        number
                    }
                    // Not reached: the item was found above, in the same step.
                    None => {
                        self.counters.bump(miss);
                        return Ok(self.refused(out, b"NF", meta, shard));
                    }
                };
                if expires_at_once {
                    touch(&mut lsn)?;
                }
                (number, lsn)
            }
            None => {
                self.counters.bump(miss);
                let Some(ttl) = meta.vivify else {
                    return Ok(self.refused(out, b"NF", meta, shard));
                };
                let initial = itoa::Buffer::new().format(meta.initial).as_bytes().to_vec();
                let exptime = meta.created_ttl(ttl);
                let created = store
                    .borrow_mut()
                    .set(SetMode::Add, key, &initial, 0, exptime);
                match created.map_err(|error| self.refuse(shard, error))? {
                    StoreOutcome::Stored(written) => (meta.initial, written.lsn),
                    // Not reached: the miss above and the add run in one step.
                    _ => return Ok(self.refused(out, b"NF", meta, shard)),
                }
            }
        };
        // The item as it is now, for `c` and `t`.
        let now = self.now_secs(shard);
        let created = expiry_before_touch.is_none();
        let shown = store.borrow_mut().get(key).ok().flatten().map(|item| {
            lsn = lsn.max(item.lsn());
            Shown {
                cas: item.cas(),
                flags: item.flags(),
                size: item.value().len(),
                expiry: shown_expiry(meta, created, expiry_before_touch, item.expiry(), now),
                token: Token::None,
                stale: false,
            }
        });
        if !meta.quiet {
            if meta.value {
                let digits = itoa::Buffer::new().format(number).len();
                out.extend_from_slice(b"VA ");
                reply::number(out, digits as u64);
                self.flags(out, meta, shown.as_ref(), ARITHMETIC_DONE, shard);
                reply::counter(out, number);
            } else {
                self.head(out, b"HD", meta, shown.as_ref(), ARITHMETIC_DONE, shard);
            }
        }
        Ok(self.written(shard, lsn))
    }

    /// Checks `meta`'s `C<cas>` against the item now.
    fn condition(&self, meta: &Meta<'_>, key: &[u8]) -> Result<Condition, Refusal> {
        let Some(cas) = meta.compare_cas else {
            return Ok(Condition::Holds);
        };
        let (_, store) = self.store_of(key);
        let item = store.borrow_mut().get(key).ok().flatten();
        Ok(match item {
            None => Condition::Missing,
            Some(item) if item.cas() != cas => Condition::Changed,
            Some(_) => Condition::Holds,
        })
    }

    /// A reply that reports nothing was changed (`NS`, `EX`, `NF`), with the return flags a
    /// miss shows (an `ms` also its `c`, as 0, as memcached). Shown in quiet mode too, and,
    /// as every absence, it waits for the shard's last record (see `absence`).
    fn refused(
        &self,
        out: &mut Vec<u8>,
        code: &[u8],
        meta: &Meta<'_>,
        shard: u32,
    ) -> Option<Durable> {
        let nothing = Shown::default();
        let (shown, letters) = match meta.kind {
            MetaKind::Set => (Some(&nothing), SET_DONE),
            _ => (None, ON_MISS),
        };
        self.head(out, code, meta, shown, letters, shard);
        self.absence(shard)
    }

    /// `code`, the return flags and the line's end.
    fn head(
        &self,
        out: &mut Vec<u8>,
        code: &[u8],
        meta: &Meta<'_>,
        shown: Option<&Shown>,
        letters: &[u8],
        shard: u32,
    ) {
        out.extend_from_slice(code);
        self.flags(out, meta, shown, letters, shard);
    }

    /// The return flags `meta` asked for that `letters` allows, each after a space, in the
    /// request's order; then `\r\n`.
    fn flags(
        &self,
        out: &mut Vec<u8>,
        meta: &Meta<'_>,
        shown: Option<&Shown>,
        letters: &[u8],
        shard: u32,
    ) {
        for letter in meta.returns.iter().filter(|l| letters.contains(l)) {
            match (letter, shown) {
                (b'O', _) => {
                    out.extend_from_slice(b" O");
                    out.extend_from_slice(meta.opaque.unwrap_or_default());
                }
                (b'k', _) => {
                    out.extend_from_slice(b" k");
                    out.extend_from_slice(meta.key_token);
                    if meta.base64 {
                        out.extend_from_slice(b" b");
                    }
                }
                (b'c', Some(shown)) => {
                    out.extend_from_slice(b" c");
                    reply::number(out, shown.cas);
                }
                (b'f', Some(shown)) => {
                    out.extend_from_slice(b" f");
                    reply::number(out, u64::from(shown.flags));
                }
                (b's', Some(shown)) => {
                    out.extend_from_slice(b" s");
                    reply::number(out, shown.size as u64);
                }
                (b't', Some(shown)) => {
                    out.extend_from_slice(b" t");
                    if shown.expiry == 0 {
                        out.extend_from_slice(b"-1");
                    } else {
                        let now = self.now_secs(shard);
                        reply::number(out, u64::from(shown.expiry.saturating_sub(now)));
                    }
                }
                _ => {}
            }
        }
        if let Some(shown) = shown {
            if shown.token == Token::Sent {
                out.extend_from_slice(b" Z");
            }
            if shown.stale {
                out.extend_from_slice(b" X");
            }
            if shown.token == Token::Won {
                out.extend_from_slice(b" W");
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The store's clock (the server's, shifted by `debugtime`), in unix seconds.
    fn now_secs(&self, shard: u32) -> u32 {
        self.stores[shard as usize]
            .as_ref()
            .map_or(0, |store| store.borrow().now_secs())
    }
}

/// The expiry `t` shows: as the flags before it left it, since memcached reads them in order.
/// `created`: `N` (`mg`, `ma`) created the item, which had no expiry before a `T` or `N`;
/// `before_touch`: an existing item's expiry before a `T`; `after`: the item's expiry once
/// every flag is applied.
fn shown_expiry(
    meta: &Meta<'_>,
    created: bool,
    before_touch: Option<u32>,
    after: u32,
    now: u32,
) -> u32 {
    match meta.order.ttl_shown {
        None => after,
        Some(position) if created => meta
            .created_ttl_before(position)
            .map_or(0, |ttl| expiry_from_exptime(ttl, now)),
        Some(_) if meta.ttl_shown_before_touch() => before_touch.unwrap_or(after),
        Some(_) => after,
    }
}
