//! Numbers as C's `sscanf("%d %lf …")` and `atoi` read them.
//!
//! Upstream parses options, protocol fields and replies with `sscanf`, and
//! its quirks decide what they mean: whitespace (newlines included) is
//! skipped before each number, a number stops at the first byte that cannot
//! continue it (`10abc` is 10), and scanning stops at the first conversion
//! that fails.

/// C's `isspace` in the C locale: what `sscanf` skips before a number.
pub fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Reads a leading decimal integer: optional blanks, an optional sign, then
/// digits; stops at the first non-digit. `None` when no digit was found.
/// Out-of-range values saturate, as `strtol` does.
pub fn scan_int(s: &str) -> Option<i64> {
    Scanner::new(s.as_bytes()).long()
}

/// A cursor over the bytes to read.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Scanner { input, pos: 0 }
    }

    fn skip_space(&mut self) {
        while self.pos < self.input.len() && is_c_space(self.input[self.pos]) {
            self.pos += 1;
        }
    }

    fn peek(&self, off: usize) -> Option<u8> {
        self.input.get(self.pos + off).copied()
    }

    fn digits_from(&self, mut at: usize) -> usize {
        while at < self.input.len() && self.input[at].is_ascii_digit() {
            at += 1;
        }
        at
    }

    /// `%d`: optional sign and decimal digits. Out-of-range values wrap the
    /// way glibc's conversion stores a saturated `long` into an `int`.
    pub fn int(&mut self) -> Option<i32> {
        self.long().map(|v| v as i32)
    }

    /// `%ld`: optional sign and decimal digits, saturating out of range.
    pub fn long(&mut self) -> Option<i64> {
        self.skip_space();
        let start = self.pos;
        let mut at = start;
        if matches!(self.peek(0), Some(b'+' | b'-')) {
            at += 1;
        }
        let end = self.digits_from(at);
        if end == at {
            return None;
        }
        let text = std::str::from_utf8(&self.input[start..end]).ok()?;
        let wide: i64 = text.parse().unwrap_or(if text.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        });
        self.pos = end;
        Some(wide)
    }

    /// `%lf`: decimal floating point with optional fraction and exponent,
    /// or `inf`/`infinity`/`nan` in any case.
    pub fn float(&mut self) -> Option<f64> {
        self.skip_space();
        let start = self.pos;
        let mut at = start;
        let neg = match self.peek(0) {
            Some(b'-') => {
                at += 1;
                true
            }
            Some(b'+') => {
                at += 1;
                false
            }
            _ => false,
        };
        let rest = &self.input[at..];
        let lower: Vec<u8> = rest
            .iter()
            .take(8)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        for (word, value) in [
            (&b"infinity"[..], f64::INFINITY),
            (b"inf", f64::INFINITY),
            (b"nan", f64::NAN),
        ] {
            if lower.starts_with(word) {
                self.pos = at + word.len();
                return Some(if neg { -value } else { value });
            }
        }
        if let Some(v) = self.hex_float(at) {
            return Some(if neg { -v } else { v });
        }
        let int_end = self.digits_from(at);
        let mut end = int_end;
        let mut ndigits = int_end - at;
        if self.input.get(end) == Some(&b'.') {
            let frac_end = self.digits_from(end + 1);
            ndigits += frac_end - (end + 1);
            end = frac_end;
        }
        if ndigits == 0 {
            return None;
        }
        if matches!(self.input.get(end), Some(b'e' | b'E')) {
            let mut e = end + 1;
            if matches!(self.input.get(e), Some(b'+' | b'-')) {
                e += 1;
            }
            // glibc cannot push back an `e` (and sign) it has consumed, so
            // "4e" reads as 4 and leaves nothing behind.
            end = self.digits_from(e);
        }
        let mut text = String::from_utf8_lossy(&self.input[start..end]).into_owned();
        if text.ends_with(['e', 'E', '+', '-']) {
            text = text
                .trim_end_matches(['+', '-'])
                .trim_end_matches(['e', 'E'])
                .to_string();
        }
        let v: f64 = text.parse().ok()?;
        self.pos = end;
        Some(v)
    }

    /// strtod's hexadecimal form, `0x1.8p3`, starting at `at`.
    fn hex_float(&mut self, at: usize) -> Option<f64> {
        let b = self.input;
        if !(b.get(at) == Some(&b'0') && matches!(b.get(at + 1), Some(b'x' | b'X'))) {
            return None;
        }
        let mut i = at + 2;
        let (mut v, mut scale, mut seen, mut frac) = (0f64, 0i32, false, false);
        while let Some(&c) = b.get(i) {
            if c == b'.' && !frac {
                frac = true;
            } else if let Some(d) = (c as char).to_digit(16) {
                v = v * 16.0 + d as f64;
                if frac {
                    scale -= 4;
                }
                seen = true;
            } else {
                break;
            }
            i += 1;
        }
        if !seen {
            return None;
        }
        if matches!(b.get(i), Some(b'p' | b'P')) {
            let mut j = i + 1;
            let neg = b.get(j) == Some(&b'-');
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let end = self.digits_from(j);
            if end > j {
                let e: i32 = std::str::from_utf8(&b[j..end])
                    .ok()?
                    .parse()
                    .unwrap_or(i32::MAX / 2);
                scale = scale.saturating_add(if neg { -e } else { e });
                i = end;
            }
        }
        self.pos = i;
        Some(v * 2f64.powi(scale))
    }

    /// The bytes not consumed yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.input[self.pos..]
    }
}

/// One conversion of a scan pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    Int,
    Float,
}

/// A value read by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i32),
    Float(f64),
}

impl Num {
    pub fn as_i32(self) -> i32 {
        match self {
            Num::Int(i) => i,
            Num::Float(f) => f as i32,
        }
    }
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Applies `pattern` like `sscanf` and returns the values converted before
/// the first failure (so `len()` is sscanf's return value, minus its EOF case).
pub fn scan(input: &[u8], pattern: &[Conv]) -> Vec<Num> {
    let mut s = Scanner::new(input);
    let mut out = Vec::with_capacity(pattern.len());
    for c in pattern {
        let v = match c {
            Conv::Int => s.int().map(Num::Int),
            Conv::Float => s.float().map(Num::Float),
        };
        match v {
            Some(v) => out.push(v),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_int_like_atoi() {
        assert_eq!(scan_int("10abc"), Some(10));
        assert_eq!(scan_int("  -7"), Some(-7));
        assert_eq!(scan_int("+3"), Some(3));
        assert_eq!(scan_int("abc"), None);
        assert_eq!(scan_int(""), None);
        assert_eq!(scan_int("-"), None);
        assert_eq!(scan_int("+-3"), None);
        assert_eq!(scan_int("-99999999999999999999"), Some(i64::MIN));
    }

    #[test]
    fn ints_like_sscanf() {
        let mut s = Scanner::new(b"  12 -3\n+4x 5");
        assert_eq!(s.int(), Some(12));
        assert_eq!(s.int(), Some(-3));
        assert_eq!(s.int(), Some(4));
        assert_eq!(s.int(), None);
        assert_eq!(s.rest(), b"x 5");
        // %d stops at the decimal point; the next %lf takes the fraction.
        let v = scan(b"1.5", &[Conv::Int, Conv::Float]);
        assert_eq!(v, vec![Num::Int(1), Num::Float(0.5)]);
        // glibc reads a long, saturating, then stores it into an int.
        let v = scan(b"99999999999 99999999999999999999", &[Conv::Int; 2]);
        assert_eq!(v, vec![Num::Int(1215752191), Num::Int(-1)]);
    }

    #[test]
    fn floats_like_strtod() {
        // Values as glibc's sscanf reads them (checked with a C program).
        let v = scan(b"1.000000 .5 2. -3e2 4e 5 0x10 0x1.8p1", &[Conv::Float; 9]);
        let f: Vec<f64> = v.iter().map(|n| n.as_f64()).collect();
        assert_eq!(f, vec![1.0, 0.5, 2.0, -300.0, 4.0, 5.0, 16.0, 3.0]);
        let v = scan(b"1E+1 inf -NaN", &[Conv::Float; 3]);
        assert_eq!(v[0], Num::Float(10.0));
        assert_eq!(v[1], Num::Float(f64::INFINITY));
        assert!(v[2].as_f64().is_nan());
        assert!(scan(b"error: x", &[Conv::Int]).is_empty());
        assert!(scan(b".", &[Conv::Float]).is_empty());
    }
}
