//! Verdicts from the multiplexor and the SMTP replies made from them
//! (protocol/milter.md §7.4 and §2.6).

use crate::cformat::number::{is_c_space, scan_int};
use crate::cformat::string::until_nul;
use crate::wire::percent::decode_c;

/// What a check command (relayok/helook/senderok/recipok) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reject,
    Tempfail,
    Continue,
    Accept,
    Discard,
}

/// A parsed check reply: the verdict and the rest of the line (the
/// still-encoded `text code dsn delay` fields), possibly empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReply {
    pub verdict: Verdict,
    pub msg: Vec<u8>,
}

/// Parses the reply to a check command. `Err` carries the reply text (one
/// trailing newline removed) for the "Error from multiplexor" log line; the
/// caller tempfails.
pub fn parse_check_reply(ans: &[u8]) -> Result<CheckReply, Vec<u8>> {
    // The C client sees a C string: anything after a NUL does not exist.
    let ans = until_nul(ans);
    let exact = |v| {
        Ok(CheckReply {
            verdict: v,
            msg: Vec::new(),
        })
    };
    match ans {
        b"ok -1\n" => return exact(Verdict::Tempfail),
        b"ok 1\n" => return exact(Verdict::Continue),
        b"ok 2\n" => return exact(Verdict::Accept),
        b"ok 3\n" => return exact(Verdict::Discard),
        b"ok 0\n" => return exact(Verdict::Reject),
        _ => {}
    }
    let line: Vec<u8> = ans
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    for (prefix, verdict) in [
        (&b"ok 0 "[..], Verdict::Reject),
        (b"ok -1 ", Verdict::Tempfail),
        (b"ok 1 ", Verdict::Continue),
        (b"ok 2 ", Verdict::Accept),
        (b"ok 3 ", Verdict::Discard),
    ] {
        if line.len() > prefix.len() && line.starts_with(prefix) {
            return Ok(CheckReply {
                verdict,
                msg: line[prefix.len()..].to_vec(),
            });
        }
    }
    Err(line)
}

/// Parses the reply to `free`: a leading decimal integer, as `sscanf("%d")`.
pub fn parse_free_reply(ans: &[u8]) -> Option<i64> {
    scan_int(&String::from_utf8_lossy(until_nul(ans)))
}

/// Splits off the first word at the first whitespace byte (one byte, not a
/// run), as upstream's `split_on_space`: `(word, Some(rest))` or
/// `(whole, None)` when there is no whitespace.
pub fn split_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| is_c_space(b)) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// The reply fields of a verdict message: `text code dsn delay`, each decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyFields {
    pub text: Vec<u8>,
    pub code: Option<Vec<u8>>,
    pub dsn: Option<Vec<u8>>,
    /// Seconds to wait before answering the MTA (values ≤ 0 mean none).
    pub delay: i64,
}

/// Splits a verdict message into its fields (upstream's `split_on_space4`).
pub fn split_reply_fields(msg: &[u8]) -> ReplyFields {
    let (text, rest) = split_word(msg);
    let (code, rest) = match rest {
        Some(r) => {
            let (c, r) = split_word(r);
            (Some(c), r)
        }
        None => (None, None),
    };
    let (dsn, rest) = match rest {
        Some(r) => {
            let (d, r) = split_word(r);
            (Some(d), r)
        }
        None => (None, None),
    };
    let delay = rest
        .map(|r| scan_int(&String::from_utf8_lossy(&decode_c(r))).unwrap_or(0))
        .unwrap_or(0);
    ReplyFields {
        text: decode_c(text),
        code: code.map(decode_c),
        dsn: dsn.map(decode_c),
        delay,
    }
}

/// Reply class: temporary (4xx) or permanent (5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Temp,
    Perm,
}

impl Class {
    fn digit(self) -> u8 {
        match self {
            Class::Temp => b'4',
            Class::Perm => b'5',
        }
    }
    pub fn default_code(self) -> &'static str {
        match self {
            Class::Temp => "451",
            Class::Perm => "554",
        }
    }
    pub fn default_dsn(self) -> &'static str {
        match self {
            Class::Temp => "4.3.0",
            Class::Perm => "5.7.1",
        }
    }
    fn default_text(self) -> &'static [u8] {
        match self {
            Class::Temp => b"Please try again later",
            Class::Perm => b"Forbidden for policy reasons",
        }
    }
}

/// A reply ready for the MTA: code, enhanced code and one or more text lines,
/// already sanitised (`%` doubled, control and 8-bit bytes made spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: String,
    pub dsn: String,
    pub lines: Vec<Vec<u8>>,
}

/// Most lines libmilter accepts in a multi-line reply is 32; upstream splits
/// into at most 31.
const MAX_LINES: usize = 31;

fn valid_code(code: &[u8], class: Class) -> bool {
    code.len() == 3
        && code[0] == class.digit()
        && code[1].is_ascii_digit()
        && code[2].is_ascii_digit()
}

fn valid_dsn(dsn: &[u8], class: Class) -> bool {
    let digits = |s: &[u8]| (1..=3).contains(&s.len()) && s.iter().all(u8::is_ascii_digit);
    let parts: Vec<&[u8]> = dsn.split(|&b| b == b'.').collect();
    parts.len() == 3 && parts[0] == [class.digit()] && digits(parts[1]) && digits(parts[2])
}

/// Builds the reply the way upstream's `set_reply` does
/// (protocol/milter.md §2.6).
pub fn build_reply(
    class: Class,
    code: Option<&[u8]>,
    dsn: Option<&[u8]>,
    text: Option<&[u8]>,
) -> SmtpReply {
    let text = match text {
        Some(t) if !t.is_empty() => t,
        _ => class.default_text(),
    };
    let code = match code {
        Some(c) if valid_code(c, class) => String::from_utf8_lossy(c).into_owned(),
        _ => class.default_code().to_string(),
    };
    let dsn = match dsn {
        Some(d) if valid_dsn(d, class) => String::from_utf8_lossy(d).into_owned(),
        _ => class.default_dsn().to_string(),
    };
    let mut safe = Vec::with_capacity(text.len() + 8);
    for &b in text {
        if b == b'%' {
            safe.push(b'%');
        }
        // Upstream compares a signed char with ' ': on x86 every byte ≥ 0x80
        // is "negative" and so becomes a space too.
        if (b < 0x20 && b != b'\n') || b >= 0x7f {
            safe.push(b' ');
        } else {
            safe.push(b);
        }
    }
    let lines = if !text.contains(&b'\n') {
        vec![safe]
    } else {
        let mut lines = Vec::new();
        let mut rest: &[u8] = &safe;
        loop {
            if lines.len() == MAX_LINES - 1 {
                // The last line takes the remainder, newlines made spaces.
                lines.push(
                    rest.iter()
                        .map(|&b| if b == b'\n' { b' ' } else { b })
                        .collect(),
                );
                break;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    lines.push(rest[..i].to_vec());
                    rest = &rest[i + 1..];
                    if rest.is_empty() {
                        break;
                    }
                }
                None => {
                    lines.push(rest.to_vec());
                    break;
                }
            }
        }
        lines
    };
    SmtpReply { code, dsn, lines }
}

impl SmtpReply {
    /// The reply as it appears on the wire (for logs and tests).
    pub fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let n = self.lines.len();
        for (i, l) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}{} ", self.code, sep, self.dsn).as_bytes());
            out.extend_from_slice(l);
            if i + 1 < n {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_replies() {
        let ok = |v, m: &[u8]| {
            Ok(CheckReply {
                verdict: v,
                msg: m.to_vec(),
            })
        };
        assert_eq!(parse_check_reply(b"ok 1\n"), ok(Verdict::Continue, b""));
        assert_eq!(parse_check_reply(b"ok 0\n"), ok(Verdict::Reject, b""));
        assert_eq!(parse_check_reply(b"ok -1\n"), ok(Verdict::Tempfail, b""));
        assert_eq!(parse_check_reply(b"ok 2\n"), ok(Verdict::Accept, b""));
        assert_eq!(parse_check_reply(b"ok 3\n"), ok(Verdict::Discard, b""));
        assert_eq!(
            parse_check_reply(b"ok 0 a%20b 554 5.7.1 0\n"),
            ok(Verdict::Reject, b"a%20b 554 5.7.1 0")
        );
        assert_eq!(
            parse_check_reply(b"ok -1 x\r\n"),
            ok(Verdict::Tempfail, b"x")
        );
        assert_eq!(
            parse_check_reply(b"ok 1 ok 250 2.1.0 0\n"),
            ok(Verdict::Continue, b"ok 250 2.1.0 0")
        );
        // No newline: not an exact match, and "ok 1" is too short for a prefix.
        assert_eq!(parse_check_reply(b"ok 1"), Err(b"ok 1".to_vec()));
        assert_eq!(parse_check_reply(b"ok 1 "), Err(b"ok 1 ".to_vec()));
        assert_eq!(
            parse_check_reply(b"error: No free workers\n"),
            Err(b"error: No free workers".to_vec())
        );
        assert_eq!(parse_check_reply(b"ok 7 x\n"), Err(b"ok 7 x".to_vec()));
        assert_eq!(parse_check_reply(b"ok 1\0 junk"), Err(b"ok 1".to_vec()));
    }

    #[test]
    fn free_replies() {
        assert_eq!(parse_free_reply(b"3\n"), Some(3));
        assert_eq!(parse_free_reply(b"0"), Some(0));
        assert_eq!(parse_free_reply(b"error: x\n"), None);
    }

    #[test]
    fn reply_fields() {
        let f = split_reply_fields(b"I%20reject%20your%20sender 554 5.7.1 0");
        assert_eq!(
            f,
            ReplyFields {
                text: b"I reject your sender".to_vec(),
                code: Some(b"554".to_vec()),
                dsn: Some(b"5.7.1".to_vec()),
                delay: 0
            }
        );
        let f = split_reply_fields(b"Per-domain%20limit");
        assert_eq!(
            f,
            ReplyFields {
                text: b"Per-domain limit".to_vec(),
                ..Default::default()
            }
        );
        assert_eq!(split_reply_fields(b"slow 550 5.7.1 3").delay, 3);
        assert_eq!(split_reply_fields(b"x%00y 550").text, b"x");
        // Single-byte splitting: an empty field stays empty.
        let f = split_reply_fields(b"t  5.7.1 2");
        assert_eq!(
            (f.code, f.dsn, f.delay),
            (Some(vec![]), Some(b"5.7.1".to_vec()), 2)
        );
    }

    fn wire(class: Class, code: &str, dsn: &str, text: &[u8]) -> String {
        let r = build_reply(
            class,
            Some(code.as_bytes()),
            Some(dsn.as_bytes()),
            Some(text),
        );
        String::from_utf8(r.wire()).unwrap()
    }

    #[test]
    fn replies_match_upstream() {
        assert_eq!(
            wire(Class::Perm, "554", "5.7.1", b"I reject your sender"),
            "554 5.7.1 I reject your sender"
        );
        assert_eq!(
            wire(
                Class::Perm,
                "550",
                "5.1.1",
                b"Bad %25 user%0Asecond line\xC3\xA9%0A"
            ),
            "550 5.1.1 Bad %%25 user%%0Asecond line  %%0A"
        );
        assert_eq!(
            wire(
                Class::Perm,
                "550",
                "5.1.1",
                b"Bad % user\nsecond line\xC3\xA9\n"
            ),
            "550-5.1.1 Bad %% user\r\n550 5.1.1 second line  "
        );
        assert_eq!(
            wire(
                Class::Temp,
                "421",
                "4.7.0",
                b"Load 99% - retry in 5%% of an hour"
            ),
            "421 4.7.0 Load 99%% - retry in 5%%%% of an hour"
        );
        assert_eq!(
            wire(Class::Perm, "450", "4.7.1", b"wrong class code"),
            "554 5.7.1 wrong class code"
        );
        assert_eq!(
            wire(Class::Temp, "550", "5.7.1", b"wrong class code"),
            "451 4.3.0 wrong class code"
        );
        assert_eq!(
            wire(Class::Perm, "5500", "5.7.1000", b""),
            "554 5.7.1 Forbidden for policy reasons"
        );
        assert_eq!(
            wire(Class::Temp, "4x1", "4.3", b""),
            "451 4.3.0 Please try again later"
        );
        assert_eq!(
            wire(
                Class::Perm,
                "550",
                "5.7.1",
                b"Caf\xc3\xa9 refus\xe9 ctrl\x01char del\x7f end"
            ),
            "550 5.7.1 Caf   refus  ctrl char del  end"
        );
        assert_eq!(
            wire(Class::Perm, "550", "5.1.10", b"a\n\nb"),
            "550-5.1.10 a\r\n550-5.1.10 \r\n550 5.1.10 b"
        );
        let many: Vec<String> = (1..=33).map(|i| format!("line {i}")).collect();
        let w = wire(Class::Perm, "550", "5.7.1", many.join("\n").as_bytes());
        assert!(w.starts_with("550-5.7.1 line 1\r\n550-5.7.1 line 2\r\n"));
        assert!(w.ends_with("550-5.7.1 line 30\r\n550 5.7.1 line 31 line 32 line 33"));
        assert_eq!(w.matches("\r\n").count(), 30);
        let r = build_reply(Class::Perm, None, None, None);
        assert_eq!(
            r,
            SmtpReply {
                code: "554".into(),
                dsn: "5.7.1".into(),
                lines: vec![b"Forbidden for policy reasons".to_vec()]
            }
        );
    }
}
