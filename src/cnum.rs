//! Numbers as C's `sscanf("%d")`/`atoi` read them: upstream's option and
//! protocol parsing accepts leading blanks and ignores trailing garbage
//! (`10abc` is 10), and several replies depend on that.

/// C's `isspace` in the C locale: what `sscanf` skips before a number.
pub fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Reads a leading decimal integer: optional blanks, an optional sign, then
/// digits; stops at the first non-digit. `None` when no digit was found.
pub fn scan_int(s: &str) -> Option<i64> {
    let t = s.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    // Saturate rather than overflow on absurd input.
    let v: i64 = digits.parse().unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

/// `atoi`: like [`scan_int`] but 0 when nothing could be read.
pub fn atoi(s: &str) -> i64 {
    scan_int(s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_like() {
        assert_eq!(scan_int("10abc"), Some(10));
        assert_eq!(scan_int("  -7"), Some(-7));
        assert_eq!(scan_int("+3"), Some(3));
        assert_eq!(scan_int("abc"), None);
        assert_eq!(scan_int(""), None);
        assert_eq!(scan_int("-"), None);
        assert_eq!(atoi("x"), 0);
    }
}
