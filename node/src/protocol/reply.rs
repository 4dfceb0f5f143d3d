//! Writing replies into a connection's send buffer. Fixed replies are constants; the rest
//! is written without `format!` (no allocation but the buffer's own growth).

pub const STORED: &[u8] = b"STORED\r\n";
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
pub const EXISTS: &[u8] = b"EXISTS\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
pub const END: &[u8] = b"END\r\n";
pub const OK: &[u8] = b"OK\r\n";
pub const RESET: &[u8] = b"RESET\r\n";
pub const ERROR: &[u8] = b"ERROR\r\n";
pub const MN: &[u8] = b"MN\r\n";
pub const NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
pub const OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";

/// Appends the decimal digits of `n`.
pub fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n`.
pub fn value(out: &mut Vec<u8>, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 64);
    value_header(out, key, flags, data.len(), cas);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The `VALUE <key> <flags> <bytes> [<cas>]` line of an item, without its data block.
pub fn value_header(out: &mut Vec<u8>, key: &[u8], flags: u32, len: usize, cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    number(out, u64::from(flags));
    out.push(b' ');
    number(out, len as u64);
    if let Some(cas) = cas {
        out.push(b' ');
        number(out, cas);
    }
    out.extend_from_slice(b"\r\n");
}

/// The new value of `incr`/`decr`.
pub fn counter(out: &mut Vec<u8>, n: u64) {
    number(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `SERVER_ERROR <message>\r\n`, with the message kept to one line.
pub fn server_error(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"SERVER_ERROR ");
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `STAT <name> <value>\r\n`.
pub fn stat(out: &mut Vec<u8>, name: &str, value: impl std::fmt::Display) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "STAT {name} {value}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_values_are_written_like_memcached() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 12345, u64::MAX] {
            out.clear();
            number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        value(&mut out, b"k", 5, b"abc", None);
        value(&mut out, b"k", 0, b"", Some(9));
        assert_eq!(out, b"VALUE k 5 3\r\nabc\r\nVALUE k 0 0 9\r\n\r\n");
        out.clear();
        server_error(&mut out, "disk\nfailed");
        assert_eq!(out, b"SERVER_ERROR disk failed\r\n");
    }
}
