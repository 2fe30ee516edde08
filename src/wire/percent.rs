//! The percent codec shared by the milter, the multiplexor, mm-mx-ctrl and the
//! Perl workers (protocol/multiplexor.md §4.2, protocol/worker-protocol.md §3).
//!
//! Two escaping variants exist upstream: request lines and worker replies escape
//! `%`, `\`, `'` and `"` besides control and 8-bit bytes; the COMMANDS file
//! escapes only control bytes, 8-bit bytes and `%`. Decoding is the same for
//! both. Test vectors live in `protocol/percent-vectors.tsv`.

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Which bytes an encoder escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Request lines to the multiplexor and verdict replies.
    Command,
    /// Values written into the COMMANDS file.
    CommandsFile,
}

fn needs_escape(b: u8, v: Variant) -> bool {
    if b <= 0x20 || b >= 0x7f || b == b'%' {
        return true;
    }
    v == Variant::Command && matches!(b, b'\\' | b'\'' | b'"')
}

/// Appends `input`, percent-encoded with variant `v`, to `out`.
pub fn encode_into(out: &mut Vec<u8>, input: &[u8], v: Variant) {
    for &b in input {
        if needs_escape(b, v) {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
}

/// Percent-encodes with the command variant.
pub fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    encode_into(&mut out, input, Variant::Command);
    out
}

/// Percent-encodes with the COMMANDS-file variant.
pub fn encode_file(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    encode_into(&mut out, input, Variant::CommandsFile);
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` (either case); any other `%` is kept as it is.
pub fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex_val(input[i + 1]), hex_val(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// Decodes like [`decode`], then ends the result at a decoded NUL, as
/// upstream's in-place decoder of C strings does.
pub fn decode_c(input: &[u8]) -> Vec<u8> {
    let mut d = decode(input);
    d.truncate(crate::cformat::string::until_nul(&d).len());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undoes the `\xHH`, `\\` and `\t` escapes of the vector file.
    fn unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 1 < b.len() {
                match b[i + 1] {
                    b'\\' => {
                        out.push(b'\\');
                        i += 2;
                    }
                    b't' => {
                        out.push(b'\t');
                        i += 2;
                    }
                    b'x' => {
                        let v = u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap();
                        out.push(v);
                        i += 4;
                    }
                    _ => panic!("bad escape in vector: {s}"),
                }
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn shared_vectors() {
        let text = include_str!("../../protocol/percent-vectors.tsv");
        let mut n = 0;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 4, "bad vector line {line:?}");
            let (input, want) = (unescape(cols[1]), unescape(cols[2]));
            let got = match cols[0] {
                "encode" => encode(&input),
                "fencode" => encode_file(&input),
                "decode" => decode(&input),
                k => panic!("unknown kind {k}"),
            };
            assert_eq!(got, want, "vector {line:?}");
            n += 1;
        }
        assert!(n > 20);
    }

    #[test]
    fn round_trip_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), all);
        assert_eq!(decode(&encode_file(&all)), all);
    }
}
