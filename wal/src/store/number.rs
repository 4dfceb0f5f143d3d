//! memcached's number syntax: how its `safe_strtoull`/`safe_strtoul`/`safe_strtol` read a
//! decimal with C's `strtoull`/`strtoul`/`strtol`. The store reads a counter this way for
//! `incr`/`decr`; the request parser reads every numeric argument this way.
//!
//! The syntax: optional leading C whitespace (space, `\t`, `\n`, `\v`, `\f`, `\r`), an optional
//! `+` or `-`, at least one decimal digit, then the end or C whitespace (anything after that
//! is ignored). Text ends at its first NUL byte, as a C string does. A magnitude beyond
//! 2^64 - 1 is refused (ERANGE).
//!
//! Where memcached 1.6 is looser than this, on purpose: it stores `strtoul`'s and `strtol`'s
//! 64-bit results into 32-bit variables, so flags `4294967296` become `0` and a length
//! `4294967297` becomes `1`. Here a number that does not fit is refused instead.

/// C's `isspace` in the "C" locale.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What `strtoull` reads: (the text up to its NUL, minus sign present, magnitude), or `None`
/// without digits, with a magnitude over `u64::MAX`, or with something other than whitespace
/// right after the digits.
fn scan(text: &[u8]) -> Option<(&[u8], bool, u64)> {
    let text = match text.iter().position(|&b| b == 0) {
        Some(nul) => &text[..nul],
        None => text,
    };
    let mut i = text
        .iter()
        .position(|&b| !is_c_space(b))
        .unwrap_or(text.len());
    let negative = match text.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = i;
    let mut magnitude: u64 = 0;
    while let Some(&d) = text.get(i).filter(|d| d.is_ascii_digit()) {
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    if i == digits || text.get(i).is_some_and(|&b| !is_c_space(b)) {
        return None;
    }
    Some((text, negative, magnitude))
}

/// `safe_strtoull`: `strtoull` wraps a negative number around (`-0` is 0, and
/// `-9223372036854775809` is 9223372036854775807); memcached refuses only a result that is
/// negative as a signed number when the text holds a `-`.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    let (text, negative, magnitude) = scan(text)?;
    let value = if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    };
    if i64::try_from(value).is_err() && text.contains(&b'-') {
        return None;
    }
    Some(value)
}

/// `safe_strtoul` into 32 bits (client flags, `verbosity`): as [`parse_u64`], and refused
/// unless it fits (memcached would truncate it).
pub fn parse_u32(text: &[u8]) -> Option<u32> {
    parse_u64(text).and_then(|value| u32::try_from(value).ok())
}

/// `safe_strtol` into 32 bits (exptime, data length): a signed decimal, refused unless it
/// fits (memcached would truncate it).
pub fn parse_i32(text: &[u8]) -> Option<i32> {
    let (_, negative, magnitude) = scan(text)?;
    let magnitude = i64::try_from(magnitude).ok()?;
    i32::try_from(if negative { -magnitude } else { magnitude }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case was checked against memcached 1.6.18 (`set n 0 0 <len>`, `<value>`,
    /// `incr n 1`): a stored value it increments from, or `None` where it answers
    /// `CLIENT_ERROR cannot increment or decrement non-numeric value`.
    #[test]
    fn counters_read_as_memcached_reads_them() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"12", Some(12)),
            (b" 12", Some(12)),
            (b"\t12", Some(12)),
            (b"12 abc", Some(12)),
            (b"12 ", Some(12)),
            (b"12\n", Some(12)),
            (b"12\0abc", Some(12)),
            (b"+12", Some(12)),
            (b"-0", Some(0)),
            (b"000000000000000000012", Some(12)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"-9223372036854775809", Some(9_223_372_036_854_775_807)),
            (b"", None),
            (b" ", None),
            (b"+", None),
            (b"12abc", None),
            (b"-1", None),
            (b"18446744073709551616", None),
            (b"abc", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_u64(text),
                *expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn arguments_accept_a_sign_and_refuse_what_does_not_fit() {
        assert_eq!(parse_i32(b"+1"), Some(1));
        assert_eq!(parse_i32(b"-100"), Some(-100));
        assert_eq!(parse_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_i32(b"-2147483648"), Some(i32::MIN));
        assert_eq!(parse_i32(b"2147483648"), None);
        assert_eq!(parse_i32(b"1x"), None);
        assert_eq!(parse_u32(b"+5"), Some(5));
        assert_eq!(parse_u32(b"-0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
    }
}
