//! Parsing requests in place from a connection's receive buffer.
//!
//! [`parse`] looks at the front of the buffer and says what is there: not enough bytes yet,
//! one whole request (borrowing its key and data from the buffer), a bad request to answer
//! with an error, a data block to skip, or a reason to close the connection. It never
//! allocates and never panics on any input; "need more bytes" is not an error.
//!
//! Tokenizing follows memcached: tokens are separated by one or more spaces, a line ends at
//! `\n` with an optional `\r` before it, `noreply` counts only as the last token.

use super::ProtocolError;
use super::meta::{self, Meta, MetaKind};
use crate::constants::{
    GET_KEYS_MAX, GET_LEADING_SPACES_MAX, GET_LINE_LEN_MAX_BYTES, LINE_LEN_MAX_BYTES,
    LINE_WITH_NEWLINE_LEN_MAX_BYTES, TOKENS_MAX,
};
use terrace_wal::constants::KEY_LEN_MAX_BYTES;
use terrace_wal::store::number::{self, parse_u32, parse_u64};
use terrace_wal::store::{Delta, SetMode};

/// What the parser needs to know about the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest value accepted; a larger data block is skipped, not buffered.
    pub item_size_max_bytes: usize,
}

/// One request, borrowing from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get`/`gets <key>*`.
    Get { keys: Keys<'a>, with_cas: bool },
    /// `gat`/`gats <exptime> <key>*`.
    GetAndTouch {
        exptime: i64,
        keys: Keys<'a>,
        with_cas: bool,
    },
    /// `set`/`add`/`replace`/`append`/`prepend`/`cas`.
    Store {
        mode: SetMode,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        data: &'a [u8],
        noreply: bool,
    },
    /// `delete <key> [0] [noreply]`.
    Delete { key: &'a [u8], noreply: bool },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Delta {
        key: &'a [u8],
        delta: Delta,
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll { delay: i64, noreply: bool },
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]` (accepted, changes nothing: logging is set at start).
    Verbosity { noreply: bool },
    /// `quit`.
    Quit,
    /// `stats [args]`: the sub-command, its first argument (empty for the general block);
    /// memcached ignores the rest.
    Stats { args: &'a [u8] },
    /// `debugtime <seconds>`: shift the server clock (only with `--enable-debugtime`).
    DebugTime { shift_secs: i64 },
    /// `shutdown [graceful]`: stop the server (only with `--enable-shutdown`).
    Shutdown,
    /// A meta command: `mg`, `ms`, `md`, `ma`.
    Meta(Meta<'a>),
    /// `mn`: answers `MN`, which tells a client every earlier (quiet) request was answered.
    MetaNoop,
    /// `backup <args>`: Terrace's online-backup admin command (`backup cut`,
    /// `backup release <id>`); the arguments, trimmed.
    Backup { args: &'a [u8] },
}

impl Command<'_> {
    /// Whether it reads or writes stored data (what only a group's active serves).
    pub fn touches_data(&self) -> bool {
        matches!(
            self,
            Self::Get { .. }
                | Self::GetAndTouch { .. }
                | Self::Store { .. }
                | Self::Delete { .. }
                | Self::Delta { .. }
                | Self::Touch { .. }
                | Self::FlushAll { .. }
                | Self::Meta(_)
                | Self::Backup { .. }
        )
    }

    /// Whether a passive forwards it to its group's active: the memcached data commands.
    pub fn forwardable(&self) -> bool {
        self.touches_data() && !matches!(self, Self::Backup { .. })
    }

    /// Whether the client asked for no reply.
    pub fn noreply(&self) -> bool {
        match self {
            Self::Store { noreply, .. }
            | Self::Delete { noreply, .. }
            | Self::Delta { noreply, .. }
            | Self::Touch { noreply, .. }
            | Self::FlushAll { noreply, .. }
            | Self::Verbosity { noreply } => *noreply,
            _ => false,
        }
    }
}

/// The keys of a get line, in order (already checked: up to `GET_KEYS_MAX` keys, each 1 to
/// 250 bytes; at least one for `get`/`gets`, maybe none for `gat`/`gats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    rest: &'a [u8],
}

impl<'a> Keys<'a> {
    /// The keys in request order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        tokens(self.rest)
    }
}

/// What the front of the receive buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole request yet: read more.
    Incomplete,
    /// A whole request, `len` bytes long.
    Request { command: Command<'a>, len: usize },
    /// A bad request, `len` bytes long: answer with `error` and go on. `noreply`: the request
    /// was well formed enough to ask for no reply, and memcached then drops even its error
    /// (its `out_string` skips every reply of a `noreply` request): answer nothing.
    Invalid {
        error: ProtocolError,
        len: usize,
        noreply: bool,
    },
    /// A storage request whose data block will not be stored: consume the `len`-byte line,
    /// then skip `skip_bytes` more (the data block and its `\r\n`, not buffered), answer
    /// with `error`. `delete_key`: a `set` that is refused also removes the key's old value,
    /// as memcached does (so a reader never sees a stale value the client thinks replaced).
    /// `noreply`: as for `Invalid`, the error is not sent (the old value is still removed).
    Swallow {
        error: ProtocolError,
        len: usize,
        skip_bytes: usize,
        delete_key: Option<&'a [u8]>,
        noreply: bool,
    },
    /// The connection must be closed (a line too long to be a request).
    Close,
}

/// Parses the request at the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let is_get = starts_get(buf);
    let Some(newline) = find_newline(buf) else {
        let max = if is_get {
            GET_LINE_LEN_MAX_BYTES
        } else {
            LINE_LEN_MAX_BYTES
        };
        return if buf.len() > max {
            Parsed::Close
        } else {
            Parsed::Incomplete
        };
    };
    let line_len = newline + 1;
    // As memcached, whose check is made on what it has read: a line whose newline is here is
    // run even past LINE_LEN_MAX_BYTES, so how the bytes were split into reads decides
    // whether a line of 2049 to 16384 bytes is run or closes the connection.
    let max = if is_get {
        GET_LINE_LEN_MAX_BYTES
    } else {
        LINE_WITH_NEWLINE_LEN_MAX_BYTES
    };
    if line_len > max {
        return Parsed::Close;
    }
    let line = strip_cr(&buf[..newline]);
    let mut words = tokens(line);
    let Some(name) = words.next() else {
        return invalid(ProtocolError::UnknownCommand, line_len);
    };
    let rest = after(line, name);
    match name {
        b"get" => parse_get(rest, false, line_len),
        b"gets" => parse_get(rest, true, line_len),
        b"gat" => parse_gat(rest, false, line_len),
        b"gats" => parse_gat(rest, true, line_len),
        b"set" => parse_store(SetKind::Set, rest, buf, line_len, limits),
        b"add" => parse_store(SetKind::Add, rest, buf, line_len, limits),
        b"replace" => parse_store(SetKind::Replace, rest, buf, line_len, limits),
        b"append" => parse_store(SetKind::Append, rest, buf, line_len, limits),
        b"prepend" => parse_store(SetKind::Prepend, rest, buf, line_len, limits),
        b"cas" => parse_store(SetKind::Cas, rest, buf, line_len, limits),
        b"delete" => parse_delete(rest, line_len),
        b"incr" => parse_delta(rest, true, line_len),
        b"decr" => parse_delta(rest, false, line_len),
        b"touch" => parse_touch(rest, line_len),
        b"flush_all" => parse_flush_all(rest, line_len),
        // memcached 1.6 ignores anything after these (`version x`), 1.5 answered ERROR. Clients
        // tell them apart by the version reported: memccapable (tests/third_party.rs) expects
        // ERROR from a server that reports a version below 1.6, as Terrace does (0.x).
        b"version" => simple(rest, Command::Version, line_len),
        b"quit" => simple(rest, Command::Quit, line_len),
        b"verbosity" => parse_verbosity(rest, line_len),
        // memcached picks the sub-command by its first token (`stats reset now` resets).
        b"stats" => request(
            Command::Stats {
                args: tokens(rest).next().unwrap_or_default(),
            },
            line_len,
        ),
        b"mg" => meta::parse(
            MetaKind::Get,
            rest,
            buf,
            line_len,
            limits.item_size_max_bytes,
        ),
        b"ms" => meta::parse(
            MetaKind::Set,
            rest,
            buf,
            line_len,
            limits.item_size_max_bytes,
        ),
        b"md" => meta::parse(
            MetaKind::Delete,
            rest,
            buf,
            line_len,
            limits.item_size_max_bytes,
        ),
        b"ma" => meta::parse(
            MetaKind::Arithmetic,
            rest,
            buf,
            line_len,
            limits.item_size_max_bytes,
        ),
        // memcached ignores anything after `mn`.
        b"mn" => request(Command::MetaNoop, line_len),
        b"debugtime" => parse_debugtime(rest, line_len),
        b"backup" => request(Command::Backup { args: trim(rest) }, line_len),
        b"shutdown" => match trim(rest) {
            b"" | b"graceful" => request(Command::Shutdown, line_len),
            _ => invalid(ProtocolError::BadCommandLine, line_len),
        },
        _ => invalid(ProtocolError::UnknownCommand, line_len),
    }
}

/// Whether the request starting `buf` is a get (which may be long: many keys), after up to
/// `GET_LEADING_SPACES_MAX` leading spaces as memcached allows.
/// The key a request at the front of `buf` will look up first, if the bytes there look like
/// one of the one-key commands (meta ones too) or a `get`, for warming the caches ahead of
/// it (see `LocalShards::prefetch`). A guess: it needs only the line's first two tokens,
/// checks nothing else (a base64 meta key is warmed as it is spelled: a miss), and a wrong
/// answer costs a wasted prefetch, not a wrong reply.
pub fn first_key(buf: &[u8]) -> Option<&[u8]> {
    // The command word and the key: at most a word, a space and a longest key.
    let line = &buf[..buf.len().min(16 + KEY_LEN_MAX_BYTES)];
    let space = line.iter().position(|&b| b == b' ')?;
    match &line[..space] {
        b"get" | b"gets" | b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas"
        | b"delete" | b"incr" | b"decr" | b"touch" | b"mg" | b"ms" | b"md" | b"ma" => {}
        _ => return None,
    }
    let rest = &line[space..];
    let start = rest.iter().position(|&b| b != b' ')?;
    let len = rest[start..]
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))?;
    Some(&rest[start..start + len]).filter(|key| !key.is_empty())
}

/// The length of the request at the front of `buf`, if all of it is there and it is one of
/// the commands [`first_key`] reads: its line, and for a storage command its data block (the
/// line's fifth token says how long) and the block's `\r\n`. For looking past the next
/// request to the one after it; a guess as `first_key`'s is: it checks nothing else, and a
/// wrong answer costs a wasted prefetch.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    let line = &buf[..buf.len().min(LINE_WITH_NEWLINE_LEN_MAX_BYTES)];
    let line_len = find_newline(line)? + 1;
    let mut words = tokens(strip_cr(&line[..line_len - 1]));
    let data_len = match words.next()? {
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            // <command> <key> <flags> <exptime> <bytes>
            let bytes = parse_u64(words.nth(3)?)?;
            usize::try_from(bytes).ok()?.checked_add(2)?
        }
        // ms <key> <datalen> <flags>*
        b"ms" => {
            let bytes = parse_u64(words.nth(1)?)?;
            usize::try_from(bytes).ok()?.checked_add(2)?
        }
        b"get" | b"gets" | b"delete" | b"incr" | b"decr" | b"touch" | b"mg" | b"md" | b"ma" => 0,
        _ => return None,
    };
    let len = line_len.checked_add(data_len)?;
    (len <= buf.len()).then_some(len)
}

fn starts_get(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let head = &buf[spaces..];
    spaces <= GET_LEADING_SPACES_MAX
        && [&b"get "[..], b"gets ", b"gat ", b"gats "]
            .iter()
            .any(|prefix| head.starts_with(prefix))
}

fn find_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Space-separated tokens, skipping runs of spaces.
pub(super) fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// The part of `line` after the token `word` (a subslice of it).
fn after<'a>(line: &'a [u8], word: &'a [u8]) -> &'a [u8] {
    let end = (word.as_ptr() as usize - line.as_ptr() as usize) + word.len();
    &line[end..]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn request(command: Command<'_>, len: usize) -> Parsed<'_> {
    Parsed::Request { command, len }
}

fn invalid<'a>(error: ProtocolError, len: usize) -> Parsed<'a> {
    Parsed::Invalid {
        error,
        len,
        noreply: false,
    }
}

/// A bad request that asked for no reply: memcached sends it no error either.
fn invalid_noreply<'a>(error: ProtocolError, len: usize, noreply: bool) -> Parsed<'a> {
    Parsed::Invalid {
        error,
        len,
        noreply,
    }
}

/// Up to `TOKENS_MAX` tokens; `None` if there are more.
fn collect_tokens(rest: &[u8]) -> Option<([&[u8]; TOKENS_MAX], usize)> {
    let mut out: [&[u8]; TOKENS_MAX] = [&[]; TOKENS_MAX];
    let mut n = 0;
    for token in tokens(rest) {
        if n == TOKENS_MAX {
            return None;
        }
        out[n] = token;
        n += 1;
    }
    Some((out, n))
}

/// memcached's `set_noreply_maybe`: a request asks for no reply when its last token is
/// `noreply`, whatever position that is (`incr k noreply` is a silent bad delta).
fn asks_noreply(args: &[&[u8]]) -> bool {
    args.last().is_some_and(|last| *last == b"noreply")
}

pub(super) fn key_ok(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= KEY_LEN_MAX_BYTES && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// The longest data block memcached takes the length of (`INT_MAX - 2`): with its `\r\n` it
/// fits in an i32.
pub(super) const DATA_LEN_MAX: i64 = i32::MAX as i64 - 2;

/// A signed decimal that fits memcached's 32-bit `exptime`/`vlen` (its `safe_strtol`: a
/// leading `+` is fine, as in `set k 0 0 +1`).
fn parse_i32(token: &[u8]) -> Option<i64> {
    number::parse_i32(token).map(i64::from)
}

fn simple<'a>(rest: &'a [u8], command: Command<'a>, len: usize) -> Parsed<'a> {
    if tokens(rest).next().is_some() {
        return invalid(ProtocolError::UnknownCommand, len);
    }
    request(command, len)
}

/// The keys of a get line; `keys_required`: whether none is an error (`get`), or just an empty
/// answer (`gat 10` answers `END` in memcached: its exptime is the token it requires).
fn get_keys(rest: &[u8], keys_required: bool) -> Result<Keys<'_>, ProtocolError> {
    let mut count = 0;
    for key in tokens(rest) {
        count += 1;
        if !key_ok(key) || count > GET_KEYS_MAX {
            return Err(ProtocolError::BadCommandLine);
        }
    }
    if count == 0 && keys_required {
        return Err(ProtocolError::UnknownCommand);
    }
    Ok(Keys { rest })
}

fn parse_get(rest: &[u8], with_cas: bool, len: usize) -> Parsed<'_> {
    match get_keys(rest, true) {
        Ok(keys) => request(Command::Get { keys, with_cas }, len),
        Err(error) => invalid(error, len),
    }
}

fn parse_gat(rest: &[u8], with_cas: bool, len: usize) -> Parsed<'_> {
    let Some(first) = tokens(rest).next() else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    let Some(exptime) = parse_i32(first) else {
        return invalid(ProtocolError::InvalidExptime, len);
    };
    match get_keys(after(rest, first), false) {
        Ok(keys) => request(
            Command::GetAndTouch {
                exptime,
                keys,
                with_cas,
            },
            len,
        ),
        Err(error) => invalid(error, len),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SetKind {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

fn parse_store<'a>(
    kind: SetKind,
    rest: &'a [u8],
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed<'a> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, line_len);
    };
    // memcached counts the arguments before it reads any: a wrong count is `ERROR`; one more
    // than needed is `noreply` or ignored (`set k 0 0 1 x` stores).
    let args = &tokens[..n];
    let expected = if kind == SetKind::Cas { 5 } else { 4 };
    if n != expected && n != expected + 1 {
        return invalid(ProtocolError::UnknownCommand, line_len);
    }
    let noreply = asks_noreply(args);
    let (key, flags, exptime, vlen) = (args[0], parse_u32(args[1]), parse_i32(args[2]), args[3]);
    // Without a length we cannot know where the data block ends: answer and read on, as
    // memcached does (the data line will then get its own error).
    // memcached refuses a length whose data block with its `\r\n` would not fit in an i32
    // (2147483646 and up) the same way, and skips nothing.
    let Some(vlen) = parse_i32(vlen)
        .filter(|&v| v <= DATA_LEN_MAX)
        .and_then(|v| usize::try_from(v).ok())
    else {
        return invalid_noreply(ProtocolError::BadCommandLine, line_len, noreply);
    };
    let skip_bytes = vlen.saturating_add(2);
    let refuse = |error, delete_key| Parsed::Swallow {
        error,
        len: line_len,
        skip_bytes,
        delete_key,
        noreply,
    };
    let mode = match kind {
        SetKind::Set => Some(SetMode::Set),
        SetKind::Add => Some(SetMode::Add),
        SetKind::Replace => Some(SetMode::Replace),
        SetKind::Append => Some(SetMode::Append),
        SetKind::Prepend => Some(SetMode::Prepend),
        SetKind::Cas => parse_u64(args[4]).map(SetMode::Cas),
    };
    let (Some(flags), Some(exptime), Some(mode)) = (flags, exptime, mode) else {
        return refuse(ProtocolError::BadCommandLine, None);
    };
    if !key_ok(key) {
        // memcached answers and then parses the data block as commands; we know its length,
        // so skip it instead: a value must never be executed as a request.
        return refuse(ProtocolError::BadCommandLine, None);
    }
    if vlen > limits.item_size_max_bytes {
        return refuse(
            ProtocolError::TooLarge,
            (kind == SetKind::Set).then_some(key),
        );
    }
    let total = line_len + skip_bytes;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    if &buf[line_len + vlen..total] != b"\r\n" {
        return invalid_noreply(ProtocolError::BadDataChunk, total, noreply);
    }
    request(
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            data: &buf[line_len..line_len + vlen],
            noreply,
        },
        total,
    )
}

fn parse_delete(rest: &[u8], len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    let args = &tokens[..n];
    if !(1..=3).contains(&n) {
        return invalid(ProtocolError::UnknownCommand, len);
    }
    // As memcached: `noreply` is looked for only after a key (`delete noreply` deletes the key
    // "noreply"), and the old hold time is accepted if it is zero.
    let noreply = n > 1 && asks_noreply(args);
    let hold_is_zero = n > 1 && args[1] == b"0";
    let ok = match n {
        1 => true,
        2 => hold_is_zero || noreply,
        _ => hold_is_zero && noreply,
    };
    if !ok {
        return invalid_noreply(ProtocolError::DeleteUsage, len, noreply);
    }
    if !key_ok(args[0]) {
        return invalid_noreply(ProtocolError::BadCommandLine, len, noreply);
    }
    request(
        Command::Delete {
            key: args[0],
            noreply,
        },
        len,
    )
}

fn parse_delta(rest: &[u8], incr: bool, len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    // Two arguments, or three (the third `noreply` or ignored), as memcached.
    let args = &tokens[..n];
    let (key, amount) = match args {
        [first, second] | [first, second, _] => (*first, *second),
        _ => return invalid(ProtocolError::UnknownCommand, len),
    };
    let noreply = asks_noreply(args);
    if !key_ok(key) {
        return invalid_noreply(ProtocolError::BadCommandLine, len, noreply);
    }
    let Some(amount) = parse_u64(amount) else {
        return invalid_noreply(ProtocolError::InvalidDelta, len, noreply);
    };
    let delta = if incr {
        Delta::Incr(amount)
    } else {
        Delta::Decr(amount)
    };
    request(
        Command::Delta {
            key,
            delta,
            noreply,
        },
        len,
    )
}

fn parse_touch(rest: &[u8], len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    // Two arguments, or three (the third `noreply` or ignored), as memcached.
    let args = &tokens[..n];
    let (key, exptime) = match args {
        [first, second] | [first, second, _] => (*first, *second),
        _ => return invalid(ProtocolError::UnknownCommand, len),
    };
    let noreply = asks_noreply(args);
    if !key_ok(key) {
        return invalid_noreply(ProtocolError::BadCommandLine, len, noreply);
    }
    let Some(exptime) = parse_i32(exptime) else {
        return invalid_noreply(ProtocolError::InvalidExptime, len, noreply);
    };
    request(
        Command::Touch {
            key,
            exptime,
            noreply,
        },
        len,
    )
}

fn parse_flush_all(rest: &[u8], len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    // As memcached: at most two arguments; unless the only one is `noreply`, the first is the
    // delay (`flush_all 0 2` ignores the 2, `flush_all noreply 5` is a bad delay).
    let args = &tokens[..n];
    if n > 2 {
        return invalid(ProtocolError::UnknownCommand, len);
    }
    let noreply = asks_noreply(args);
    let delay = if n == usize::from(noreply) {
        0
    } else {
        match parse_i32(args[0]) {
            Some(delay) => delay,
            None => return invalid_noreply(ProtocolError::InvalidExptime, len, noreply),
        }
    };
    request(Command::FlushAll { delay, noreply }, len)
}

fn parse_verbosity(rest: &[u8], len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::UnknownCommand, len);
    };
    // As memcached 1.6: one or two arguments, else ERROR; a trailing `noreply` silences the
    // reply whatever the level says (memcached's out_string drops even the error), otherwise
    // the first argument must be a number.
    let args = &tokens[..n];
    if args.is_empty() || args.len() > 2 {
        return invalid(ProtocolError::UnknownCommand, len);
    }
    if args.last().is_some_and(|last| *last == b"noreply") {
        return request(Command::Verbosity { noreply: true }, len);
    }
    match parse_u32(args[0]) {
        Some(_) => request(Command::Verbosity { noreply: false }, len),
        None => invalid(ProtocolError::BadCommandLine, len),
    }
}

fn parse_debugtime(rest: &[u8], len: usize) -> Parsed<'_> {
    let Some((tokens, n)) = collect_tokens(rest) else {
        return invalid(ProtocolError::BadCommandLine, len);
    };
    match &tokens[..n] {
        [shift] => match parse_i32(shift) {
            Some(shift_secs) => request(Command::DebugTime { shift_secs }, len),
            None => invalid(ProtocolError::BadCommandLine, len),
        },
        _ => invalid(ProtocolError::BadCommandLine, len),
    }
}
