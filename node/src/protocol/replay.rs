//! The parser driven the way a connection drives it, for the property test and the fuzz
//! target: they check that how bytes are split into reads never changes what is parsed.

use super::{Limits, Parsed, first_key, parse, request_len};

/// What a byte stream parses into, request by request (each as its `Debug` text), fed to the
/// parser in chunks as a connection would: bytes arrive at the given split points (sorted),
/// and swallowed bytes are skipped without being parsed. Asserts that every parse claims at
/// least one byte and no more than it was given, and that what the connection reads ahead of
/// a request to warm its lookups (`first_key`, `request_len`) stays within the bytes it has
/// and ends a request where the parser does.
///
/// The property test and the fuzz target (`node/fuzz`) both check that any split of a stream
/// replays as the whole does ([`agrees`]).
pub fn replay(stream: &[u8], splits: &[usize], limits: &Limits) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut skip = 0usize;
    let mut fed = 0;
    let mut points: Vec<usize> = splits.to_vec();
    points.push(stream.len());
    for &point in &points {
        let point = point.clamp(fed, stream.len());
        buf.extend_from_slice(&stream[fed..point]);
        fed = point;
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.drain(..n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let ahead = request_len(&buf);
            if let Some(n) = ahead {
                assert!(n > 0 && n <= buf.len(), "request_len {n} of {}", buf.len());
            }
            if let Some(key) = first_key(&buf) {
                let at = key.as_ptr() as usize - buf.as_ptr() as usize;
                assert!(!key.is_empty() && at + key.len() <= buf.len());
            }
            match parse(&buf, limits) {
                Parsed::Incomplete => break,
                Parsed::Close => {
                    out.push("close".into());
                    return out;
                }
                Parsed::Request { command, len } => {
                    assert!(len > 0 && len <= buf.len());
                    if let Some(n) = ahead {
                        assert_eq!(n, len, "request_len against parse: {command:?}");
                    }
                    out.push(format!("{command:?}"));
                    buf.drain(..len);
                }
                Parsed::Invalid {
                    error,
                    len,
                    noreply,
                } => {
                    assert!(len > 0 && len <= buf.len());
                    out.push(format!("{error:?} noreply={noreply}"));
                    buf.drain(..len);
                }
                Parsed::Swallow {
                    error,
                    len,
                    skip_bytes,
                    noreply,
                    ..
                } => {
                    assert!(len > 0 && len <= buf.len());
                    out.push(format!("{error:?} noreply={noreply}"));
                    buf.drain(..len);
                    skip = skip_bytes;
                }
            }
        }
    }
    out
}

/// Whether `split`, what a stream replays to when read in pieces, agrees with `whole`, what it
/// replays to when read at once: the same, or the same up to a `close` where the whole went
/// on. Only that may differ, as in memcached: a piece that ends a line longer than
/// `LINE_LEN_MAX_BYTES` before its newline closes the connection, while the same line read
/// with its newline is run.
pub fn agrees(whole: &[String], split: &[String]) -> bool {
    if whole == split {
        return true;
    }
    match split.split_last() {
        Some((last, before)) => last == "close" && whole.starts_with(before),
        None => false,
    }
}
