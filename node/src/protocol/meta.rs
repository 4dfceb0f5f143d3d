//! memcached's meta commands: `mg` (get), `ms` (set), `md` (delete), `ma` (arithmetic) and
//! `mn` (no-op), parsed in place as the classic ones are.
//!
//! A meta request is `<cmd> <key> [<datalen>] <flag>*`: each flag is one letter, some with a
//! token right after it (`T30`, `Oabc`). The reply is a two-letter code (`VA`, `HD`, `EN`,
//! `NS`, `EX`, `NF`, `MN`) followed by the *return flags* the request asked for, in the
//! order it asked for them. Letters, errors, quiet mode and the return flags each command
//! gives follow memcached 1.6 as it answers (checked against memcached 1.6.18 by
//! `tests/meta.rs`). Stale items (invalidation) are built: `md`'s `I` (with `T`) marks an
//! item stale instead of removing it, `ms`'s `I` stores a value whose CAS is older than the
//! item's as stale, and `mg` shows a stale item with `X` (and the win token, `W`, to its
//! first client). A flag that would change what an operation does and that Terrace does
//! not implement (`ms`'s `N`) is refused with [`ProtocolError::FlagNotSupported`] rather
//! than ignored, so a client never reads an answer that means something it did not ask
//! for; the access-time return flags `h` and `l` are accepted and left out of the reply
//! (see [`GET`]).

use super::ProtocolError;
use super::parse::{Parsed, key_ok, tokens};
use base64::Engine as _;
use terrace_wal::constants::KEY_LEN_MAX_BYTES;
use terrace_wal::store::SetMode;
use terrace_wal::store::number;

/// Most flags a meta request may carry (memcached refuses more with "options flags are too
/// long").
pub const META_FLAGS_MAX: usize = 17;
/// Longest opaque token, its `O` included, as memcached.
pub const OPAQUE_LEN_MAX_BYTES: usize = 32;

/// Which meta command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    /// `mg`.
    Get,
    /// `ms`.
    Set,
    /// `md`.
    Delete,
    /// `ma`.
    Arithmetic,
}

/// A meta request, borrowing from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta<'a> {
    pub kind: MetaKind,
    /// The key as sent: base64 when `base64` is set ([`Meta::key`] decodes it).
    pub key_token: &'a [u8],
    /// `b`: the key is base64 (and is returned so, with a `b` after it).
    pub base64: bool,
    /// `q`: the reply of the usual outcome is left out (a miss for `mg`, success for the
    /// others); failures and errors are still sent.
    pub quiet: bool,
    /// `v`: the value is returned (`mg`; `ma` returns the number).
    pub value: bool,
    /// `O<token>`: returned as it came.
    pub opaque: Option<&'a [u8]>,
    /// The return flags asked for (`O k c f s t`), in request order.
    pub returns: ReturnFlags,
    /// `T<ttl>`: `mg` and `ma` touch the item, `ms` stores it with this expiry.
    pub ttl: Option<i64>,
    /// `C<cas>`: run only if the item's CAS is this one.
    pub compare_cas: Option<u64>,
    /// `F<flags>` of `ms`.
    pub client_flags: u32,
    /// `M<mode>` of `ms` (never [`SetMode::Cas`]: a CAS is `compare_cas`).
    pub set_mode: SetMode,
    /// `M<mode>` of `ma`: increment (true, the default) or decrement.
    pub incr: bool,
    /// `D<delta>` of `ma` (default 1).
    pub delta: u64,
    /// `N<ttl>`: on a miss, `ma` creates the counter with this expiry, `mg` an empty item
    /// (and hands its client the win token).
    pub vivify: Option<i64>,
    /// `R<ttl>` of `mg`: an item with less time than this left hands its first client the
    /// win token (to recache it).
    pub recache: Option<i64>,
    /// Where `T`, `N`, `R` and `t` stand among the flags: memcached reads them in order, so
    /// an `R` after a `T` looks at the time the touch gave, `t` shows the TTL as the flags
    /// before it left it, and of `T` and `N` the later one sets a created item's TTL.
    pub order: FlagOrder,
    /// `J<initial>` of `ma`: the value a created counter starts at (default 0).
    pub initial: u64,
    /// `I` (invalidate): `md` marks the item stale (and sets its expiry to `T`'s, if
    /// given) instead of removing it; `ms` with a `C` older than the item's CAS stores the
    /// value marked stale instead of failing.
    pub invalidate: bool,
    /// The data block of `ms`.
    pub data: &'a [u8],
}

/// Positions among a request's flags (0 the first flag) of those whose order changes what
/// they do; `None` if absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlagOrder {
    /// `T`.
    pub touch: Option<u8>,
    /// `N`.
    pub vivify: Option<u8>,
    /// `R`.
    pub recache: Option<u8>,
    /// `t`.
    pub ttl_shown: Option<u8>,
}

/// The return flags of a request, in the order asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReturnFlags {
    letters: [u8; 6],
    len: u8,
}

impl ReturnFlags {
    fn push(&mut self, letter: u8) {
        debug_assert!(!self.iter().any(|l| l == letter), "checked for duplicates");
        self.letters[usize::from(self.len)] = letter;
        self.len += 1;
    }

    /// The letters, in request order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.letters[..usize::from(self.len)].iter().copied()
    }
}

impl Meta<'_> {
    /// The TTL of an item `N<vivify>` creates: `N`'s, or `T`'s when `T` came after it.
    pub fn created_ttl(&self, vivify: i64) -> i64 {
        self.created_ttl_before(u8::MAX).unwrap_or(vivify)
    }

    /// The TTL that the flags before `position` gave an item `N` created (the later of `T`
    /// and `N`), if any did.
    pub fn created_ttl_before(&self, position: u8) -> Option<i64> {
        let touch = self.order.touch.filter(|&at| at < position);
        let vivify = self.order.vivify.filter(|&at| at < position);
        match (touch, vivify) {
            (Some(t), Some(n)) if n > t => self.vivify,
            (Some(_), _) => self.ttl,
            (None, Some(_)) => self.vivify,
            (None, None) => None,
        }
    }

    /// Whether `R` looks at the time left after the touch (it comes after `T`).
    pub fn recache_after_touch(&self) -> bool {
        matches!((self.order.touch, self.order.recache), (Some(t), Some(r)) if t < r)
    }

    /// Whether `t` shows the TTL before the touch (it comes before `T`).
    pub fn ttl_shown_before_touch(&self) -> bool {
        matches!((self.order.touch, self.order.ttl_shown), (Some(t), Some(shown)) if shown < t)
    }

    /// The key: the token as sent, or its base64 decoding in `buf` (checked at parse time:
    /// it decodes, to 1 to 250 bytes).
    pub fn key<'b>(&'b self, buf: &'b mut [u8; KEY_LEN_MAX_BYTES]) -> &'b [u8] {
        if !self.base64 {
            return self.key_token;
        }
        match decode_key(self.key_token, buf) {
            Some(len) => &buf[..len],
            // Not reached: parse checked that the token decodes. An empty key is refused by
            // the store as a bad key, never looked up.
            None => &[],
        }
    }
}

/// Decodes a base64 key into `buf`; its length, if it decodes to 1 to 250 bytes.
fn decode_key(token: &[u8], buf: &mut [u8; KEY_LEN_MAX_BYTES]) -> Option<usize> {
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(token, buf)
        .ok()?;
    (len > 0).then_some(len)
}

/// What each command accepts. `ignored`: letters memcached accepts and does nothing with
/// for this command; `unsupported`: letters memcached implements and Terrace does not.
struct Grammar {
    allowed: &'static [u8],
    ignored: &'static [u8],
    unsupported: &'static [u8],
    /// The error for an unknown or repeated letter (memcached words it per command).
    invalid: ProtocolError,
    duplicate: ProtocolError,
    /// The error for a bad numeric token.
    bad_token: ProtocolError,
    /// The error for more than `META_FLAGS_MAX` flags.
    too_many: ProtocolError,
}

/// `mg`: `h` (hit before) and `l` (seconds since the last access) are accepted and not
/// returned, since Terrace keeps no access times (a client asking for them by default, as
/// meta-memcache does, reads "unknown", never a made-up number); `u` (do not bump the item
/// in the LRU) is accepted: Terrace has no LRU to bump; `C` is accepted and means nothing
/// to `mg`, as in memcached.
const GET: Grammar = Grammar {
    allowed: b"bcfkNOqRstvT",
    ignored: b"hluC",
    unsupported: b"",
    invalid: ProtocolError::InvalidFlag,
    duplicate: ProtocolError::DuplicateFlag,
    bad_token: ProtocolError::BadToken,
    too_many: ProtocolError::FlagsTooLong,
};

const SET: Grammar = Grammar {
    allowed: b"bcCFIkOqTM",
    ignored: b"fst",
    unsupported: b"N",
    invalid: ProtocolError::InvalidFlag,
    duplicate: ProtocolError::DuplicateFlag,
    bad_token: ProtocolError::BadToken,
    too_many: ProtocolError::OptionsTooLong,
};

/// `md`: `T` changes only an item that `I` marks stale (memcached accepts it without `I`
/// and does nothing with it).
const DELETE: Grammar = Grammar {
    allowed: b"bCIkOqT",
    ignored: b"cfstv",
    unsupported: b"",
    invalid: ProtocolError::InvalidOrDuplicateFlag,
    duplicate: ProtocolError::InvalidOrDuplicateFlag,
    bad_token: ProtocolError::InvalidOrDuplicateFlag,
    too_many: ProtocolError::OptionsTooLong,
};

const ARITHMETIC: Grammar = Grammar {
    allowed: b"bcCDJkMNOqtTv",
    ignored: b"fs",
    unsupported: b"",
    invalid: ProtocolError::InvalidOrDuplicateFlag,
    duplicate: ProtocolError::InvalidOrDuplicateFlag,
    bad_token: ProtocolError::InvalidOrDuplicateFlag,
    too_many: ProtocolError::OptionsTooLong,
};

/// Parses `mg`/`ms`/`md`/`ma` (`rest`: the line after the command name; `buf`: the receive
/// buffer from the request's start, for the data block of `ms`).
pub(super) fn parse<'a>(
    kind: MetaKind,
    rest: &'a [u8],
    buf: &'a [u8],
    line_len: usize,
    item_size_max_bytes: usize,
) -> Parsed<'a> {
    let mut words = tokens(rest);
    let Some(key_token) = words.next() else {
        return invalid(ProtocolError::UnknownCommand, line_len);
    };
    // `ms <key> <datalen>`: once the length is known, a refused request's data block is
    // skipped, never run as commands.
    let data_len = if kind == MetaKind::Set {
        match words
            .next()
            .and_then(number::parse_i32)
            .filter(|&n| i64::from(n) <= super::parse::DATA_LEN_MAX)
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(len) => Some(len),
            None => return invalid(ProtocolError::BadCommandLine, line_len),
        }
    } else {
        None
    };
    let refuse = |error: ProtocolError, delete_key: Option<&'a [u8]>| match data_len {
        Some(len) => Parsed::Swallow {
            error,
            len: line_len,
            skip_bytes: len.saturating_add(2),
            delete_key,
            noreply: false,
        },
        None => invalid(error, line_len),
    };
    let mut meta = Meta {
        kind,
        key_token,
        base64: false,
        quiet: false,
        value: false,
        opaque: None,
        returns: ReturnFlags::default(),
        ttl: None,
        compare_cas: None,
        client_flags: 0,
        set_mode: SetMode::Set,
        incr: true,
        delta: 1,
        vivify: None,
        recache: None,
        order: FlagOrder::default(),
        initial: 0,
        invalidate: false,
        data: &[],
    };
    if let Err(error) = read_flags(&mut meta, words) {
        return refuse(error, None);
    }
    let mut key_buf = [0u8; KEY_LEN_MAX_BYTES];
    if meta.base64 {
        match decode_key(key_token, &mut key_buf) {
            None => return refuse(ProtocolError::KeyDecode, None),
            // A key the store cannot hold (spaces or control bytes) is refused here, by every
            // command alike, not looked up as a miss.
            Some(len) if !key_ok(&key_buf[..len]) => {
                return refuse(ProtocolError::BadCommandLine, None);
            }
            Some(_) => {}
        }
    } else if !key_ok(key_token) {
        return refuse(ProtocolError::BadCommandLine, None);
    }
    let Some(data_len) = data_len else {
        return Parsed::Request {
            command: super::Command::Meta(meta),
            len: line_len,
        };
    };
    if data_len > item_size_max_bytes {
        // As memcached's meta path: a refused `ms` drops the key's old value, whatever its
        // mode (the classic commands do so for `set` only). Not for a base64 key: the
        // connection deletes by the key as sent.
        let drop_old = !meta.base64;
        return refuse(ProtocolError::TooLarge, drop_old.then_some(key_token));
    }
    let total = line_len + data_len + 2;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    if &buf[line_len + data_len..total] != b"\r\n" {
        return invalid(ProtocolError::BadDataChunk, total);
    }
    meta.data = &buf[line_len..line_len + data_len];
    Parsed::Request {
        command: super::Command::Meta(meta),
        len: total,
    }
}

fn invalid<'a>(error: ProtocolError, len: usize) -> Parsed<'a> {
    Parsed::Invalid {
        error,
        len,
        noreply: false,
    }
}

/// Reads the flag tokens into `meta`.
fn read_flags<'a>(
    meta: &mut Meta<'a>,
    words: impl Iterator<Item = &'a [u8]> + Clone,
) -> Result<(), ProtocolError> {
    let grammar = match meta.kind {
        MetaKind::Get => &GET,
        MetaKind::Set => &SET,
        MetaKind::Delete => &DELETE,
        MetaKind::Arithmetic => &ARITHMETIC,
    };
    // Counted before any flag is looked at, as memcached does.
    if words.clone().count() > META_FLAGS_MAX {
        return Err(grammar.too_many);
    }
    let mut seen = [false; 128];
    for (position, word) in words.enumerate() {
        let (letter, arg) = (word[0], &word[1..]);
        if grammar.unsupported.contains(&letter) {
            return Err(ProtocolError::FlagNotSupported);
        }
        let known = grammar.allowed.contains(&letter) || grammar.ignored.contains(&letter);
        if !known {
            return Err(grammar.invalid);
        }
        let seen = &mut seen[usize::from(letter & 0x7f)];
        if *seen {
            return Err(grammar.duplicate);
        }
        *seen = true;
        if grammar.ignored.contains(&letter) {
            continue;
        }
        // Fewer than `META_FLAGS_MAX` flags: checked above.
        let at = u8::try_from(position).ok();
        match letter {
            b'T' => meta.order.touch = at,
            b'N' => meta.order.vivify = at,
            b'R' => meta.order.recache = at,
            b't' => meta.order.ttl_shown = at,
            _ => {}
        }
        let bad = grammar.bad_token;
        match letter {
            b'b' => meta.base64 = true,
            b'I' => meta.invalidate = true,
            b'q' => meta.quiet = true,
            b'v' => meta.value = true,
            b'O' => {
                if word.len() > OPAQUE_LEN_MAX_BYTES {
                    return Err(ProtocolError::OpaqueTooLong);
                }
                meta.opaque = Some(arg);
                meta.returns.push(letter);
            }
            b'c' | b'f' | b'k' | b's' | b't' => meta.returns.push(letter),
            b'T' => meta.ttl = Some(signed(arg).ok_or(bad)?),
            b'N' => meta.vivify = Some(signed(arg).ok_or(bad)?),
            b'R' => meta.recache = Some(signed(arg).ok_or(bad)?),
            b'C' => meta.compare_cas = Some(unsigned(arg).ok_or(bad)?),
            b'D' => meta.delta = unsigned(arg).ok_or(bad)?,
            b'J' => meta.initial = unsigned(arg).ok_or(bad)?,
            // memcached words a bad `F` differently from the other numbers.
            b'F' => {
                meta.client_flags = unsigned(arg)
                    .and_then(|f| u32::try_from(f).ok())
                    .ok_or(ProtocolError::BadCommandLine)?;
            }
            b'M' => read_mode(meta, arg)?,
            _ => return Err(grammar.invalid),
        }
    }
    Ok(())
}

/// `M<mode>`: `ms` E(add) A(ppend) P(repend) R(eplace) S(et); `ma` I or + (increment),
/// D or - (decrement). Upper case only, as memcached.
fn read_mode(meta: &mut Meta<'_>, arg: &[u8]) -> Result<(), ProtocolError> {
    match (meta.kind, arg) {
        (MetaKind::Set, [_, _, ..] | []) => return Err(ProtocolError::ModeLength),
        (MetaKind::Arithmetic, [_, _, ..] | []) => {
            return Err(ProtocolError::InvalidOrDuplicateFlag);
        }
        (MetaKind::Set, [mode]) => {
            meta.set_mode = match mode {
                b'E' => SetMode::Add,
                b'A' => SetMode::Append,
                b'P' => SetMode::Prepend,
                b'R' => SetMode::Replace,
                b'S' => SetMode::Set,
                _ => return Err(ProtocolError::InvalidSetMode),
            };
        }
        (MetaKind::Arithmetic, [b'I' | b'+']) => meta.incr = true,
        (MetaKind::Arithmetic, [b'D' | b'-']) => meta.incr = false,
        (MetaKind::Arithmetic, _) => return Err(ProtocolError::InvalidArithmeticMode),
        _ => return Err(ProtocolError::InvalidFlag),
    }
    Ok(())
}

/// Digits only: meta numbers have no sign (memcached refuses `D-1`).
fn unsigned(token: &[u8]) -> Option<u64> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    number::parse_u64(token)
}

/// A TTL: memcached's exptime, a signed 32-bit number.
fn signed(token: &[u8]) -> Option<i64> {
    number::parse_i32(token).map(i64::from)
}
