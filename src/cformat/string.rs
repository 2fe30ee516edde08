//! Byte buffers seen as C strings. Upstream keeps requests, replies and
//! files in NUL-terminated buffers, so whatever follows a NUL byte does not
//! exist for it; to stay byte-compatible we cut at the same place.

/// The bytes before the first NUL (all of them when there is none).
pub fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_the_first_nul() {
        assert_eq!(until_nul(b"ab\0cd\0"), b"ab");
        assert_eq!(until_nul(b"\0x"), b"");
        assert_eq!(until_nul(b"plain"), b"plain");
        assert_eq!(until_nul(b""), b"");
    }
}
