//! The RESULTS file a worker leaves in the working directory
//! (protocol/milter.md §5.2–§5.3), parsed into a typed list of actions before
//! anything is sent to the MTA.

use super::reply::split_word;
use crate::cformat::number::scan_int;
use crate::wire::percent::decode_c;

/// Lines this long or longer (without the newline) are refused, as upstream.
pub const MAX_LINE: usize = 8191;
/// RESULTS files larger than this are refused.
pub const MAX_SIZE: u64 = 65535;

/// One RESULTS instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `B code dsn text`: reject the message.
    Bounce {
        code: Option<Vec<u8>>,
        dsn: Option<Vec<u8>>,
        text: Option<Vec<u8>>,
    },
    /// `D`: discard the message.
    Discard,
    /// `T code dsn text`: tempfail the message.
    Tempfail {
        code: Option<Vec<u8>>,
        dsn: Option<Vec<u8>>,
        text: Option<Vec<u8>>,
    },
    /// `C`: replace the body with NEWBODY.
    ReplaceBody,
    /// `M value`: new Content-Type (empty: none), plus MIME-Version if missing.
    ContentType(Vec<u8>),
    /// `H name value`
    AddHeader { name: Vec<u8>, value: Vec<u8> },
    /// `N name idx value`
    InsertHeader {
        index: i32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    /// `I name idx value` (an empty value deletes).
    ChangeHeader {
        name: Vec<u8>,
        index: i32,
        value: Vec<u8>,
    },
    /// `J name idx`
    DeleteHeader { name: Vec<u8>, index: i32 },
    /// `R addr`
    AddRcpt(Vec<u8>),
    /// `S addr`
    DeleteRcpt(Vec<u8>),
    /// `f addr`
    ChangeFrom(Vec<u8>),
    /// `Q reason`
    Quarantine(Vec<u8>),
    /// A line with an unknown letter (logged and skipped); NUL for an empty line.
    Unknown(u8),
}

impl Action {
    /// Modifications are skipped when the message is being refused; a
    /// quarantine is applied regardless.
    pub fn is_modification(&self) -> bool {
        !matches!(
            self,
            Action::Bounce { .. }
                | Action::Discard
                | Action::Tempfail { .. }
                | Action::Quarantine(_)
                | Action::Unknown(_)
        )
    }
}

/// A parsed RESULTS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    /// The instructions before `F` (or up to and including the first
    /// B/D/T, after which upstream stops reading).
    pub actions: Vec<Action>,
    /// A B, D or T line appears anywhere in the file, even after `F`.
    pub rejecting: bool,
    /// An `F` line ended the instructions.
    pub finished: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultsError {
    #[error("Overlong line in RESULTS file - {0} chars (max {MAX_LINE})")]
    OverlongLine(usize),
}

fn index(s: &[u8], min: i32) -> i32 {
    match scan_int(&String::from_utf8_lossy(s)) {
        Some(v) if v >= min as i64 && v <= i32::MAX as i64 => v as i32,
        _ => min,
    }
}

fn split3(s: &[u8]) -> (&[u8], Option<&[u8]>, Option<&[u8]>) {
    let (a, rest) = split_word(s);
    match rest {
        Some(r) => {
            let (b, rest) = split_word(r);
            (a, Some(b), rest)
        }
        None => (a, None, None),
    }
}

/// Parses a RESULTS file's bytes.
pub fn parse(data: &[u8]) -> Result<Results, ResultsError> {
    let data = crate::cformat::string::until_nul(data);
    // Upstream quirk kept: a B, D or T line after `F` still makes the
    // message rejecting (protocol/milter.md §5.2, §10.12).
    let rejecting = data
        .split(|&b| b == b'\n')
        .any(|l| matches!(l.first(), Some(b'T' | b'D' | b'B')));
    let mut actions = Vec::new();
    let mut finished = false;
    let mut rest = data;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if line.len() >= MAX_LINE {
            return Err(ResultsError::OverlongLine(line.len()));
        }
        let action = match parse_line(line) {
            Line::Action(a) => a,
            Line::Malformed => continue,
            Line::Finish => {
                finished = true;
                break;
            }
        };
        let stop = matches!(
            action,
            Action::Bounce { .. } | Action::Discard | Action::Tempfail { .. }
        );
        actions.push(action);
        if stop {
            break;
        }
    }
    Ok(Results {
        actions,
        rejecting,
        finished,
    })
}

/// What one RESULTS line tells the reader.
enum Line {
    Action(Action),
    /// A header line missing a field: skipped silently.
    Malformed,
    /// `F`: the end of the instructions.
    Finish,
}

/// Reads one line (without its newline): the letter picks the kind.
fn parse_line(line: &[u8]) -> Line {
    let letter = line.first().copied().unwrap_or(0);
    let arg = line.get(1..).unwrap_or(&[]);
    let action = match letter {
        b'B' | b'T' => refusal(letter, arg),
        b'D' => Action::Discard,
        b'C' => Action::ReplaceBody,
        b'M' => Action::ContentType(decode_c(arg)),
        b'H' | b'N' | b'I' | b'J' => match header_edit(letter, arg) {
            Some(a) => a,
            None => return Line::Malformed,
        },
        b'R' => Action::AddRcpt(decode_c(arg)),
        b'S' => Action::DeleteRcpt(decode_c(arg)),
        b'f' => Action::ChangeFrom(decode_c(arg)),
        b'Q' => Action::Quarantine(decode_c(arg)),
        b'F' => return Line::Finish,
        other => Action::Unknown(other),
    };
    Line::Action(action)
}

/// `B` or `T`: code, DSN and text, the last two optional.
fn refusal(letter: u8, arg: &[u8]) -> Action {
    let (c, d, t) = split3(arg);
    let (code, dsn, text) = (Some(decode_c(c)), d.map(decode_c), t.map(decode_c));
    if letter == b'B' {
        Action::Bounce { code, dsn, text }
    } else {
        Action::Tempfail { code, dsn, text }
    }
}

/// `H`, `N`, `I` or `J`; `None` when a field is missing.
fn header_edit(letter: u8, arg: &[u8]) -> Option<Action> {
    match letter {
        b'H' => match split_word(arg) {
            (n, Some(v)) => Some(Action::AddHeader {
                name: decode_c(n),
                value: decode_c(v),
            }),
            _ => None,
        },
        b'J' => match split_word(arg) {
            (n, Some(i)) => Some(Action::DeleteHeader {
                name: decode_c(n),
                index: index(&decode_c(i), 1),
            }),
            _ => None,
        },
        _ => indexed_header(letter, arg),
    }
}

/// `N name idx value` (insert, index from 0) or `I name idx value`
/// (change, index from 1).
fn indexed_header(letter: u8, arg: &[u8]) -> Option<Action> {
    let (n, Some(i), Some(v)) = split3(arg) else {
        return None;
    };
    let (name, value) = (decode_c(n), decode_c(v));
    Some(if letter == b'N' {
        Action::InsertHeader {
            index: index(&decode_c(i), 0),
            name,
            value,
        }
    } else {
        Action::ChangeHeader {
            name,
            index: index(&decode_c(i), 1),
            value,
        }
    })
}

/// Why a header or address from RESULTS is refused: values that would let a
/// filter bug inject header lines or break the header grammar at the MTA.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafeValue {
    #[error("empty header name")]
    EmptyName,
    #[error("header name contains byte 0x{0:02X}")]
    BadNameByte(u8),
    #[error("header value has a line break not followed by folding whitespace")]
    BadFold,
    #[error("header value contains a bare CR")]
    BareCr,
    #[error("address or reason contains a CR or LF")]
    LineBreak,
}

/// A header field name: printable ASCII except `:` (RFC 5322 ftext).
pub fn check_header_name(name: &[u8]) -> Result<(), UnsafeValue> {
    if name.is_empty() {
        return Err(UnsafeValue::EmptyName);
    }
    match name
        .iter()
        .find(|&&b| !(33..=126).contains(&b) || b == b':')
    {
        Some(&b) => Err(UnsafeValue::BadNameByte(b)),
        None => Ok(()),
    }
}

/// A header value may contain line breaks only as folding: LF (optionally
/// preceded by CR) followed by a space or tab. A CR not followed by LF is
/// refused here; [`sanitize_actions`] replaces those by spaces first
/// (protocol/milter.md §15).
pub fn check_header_value(value: &[u8]) -> Result<(), UnsafeValue> {
    for (i, &b) in value.iter().enumerate() {
        match b {
            b'\r' if value.get(i + 1) != Some(&b'\n') => return Err(UnsafeValue::BareCr),
            b'\n' if !matches!(value.get(i + 1), Some(b' ' | b'\t')) => {
                return Err(UnsafeValue::BadFold)
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces every CR not followed by LF with a space
/// (protocol/milter.md §15); returns whether one was replaced.
pub fn replace_bare_crs(value: &mut [u8]) -> bool {
    let mut replaced = false;
    for i in 0..value.len() {
        if value[i] == b'\r' && value.get(i + 1) != Some(&b'\n') {
            value[i] = b' ';
            replaced = true;
        }
    }
    replaced
}

/// Envelope addresses and quarantine reasons are single-line values.
pub fn check_single_line(v: &[u8]) -> Result<(), UnsafeValue> {
    if v.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(UnsafeValue::LineBreak);
    }
    Ok(())
}

/// The value of a header the action adds or sets (not a deletion).
fn header_value_mut(action: &mut Action) -> Option<&mut Vec<u8>> {
    match action {
        Action::AddHeader { value, .. }
        | Action::InsertHeader { value, .. }
        | Action::ContentType(value) => Some(value),
        Action::ChangeHeader { value, .. } if !value.is_empty() => Some(value),
        _ => None,
    }
}

/// Makes the actions that would reach the MTA safe to send: bare CRs in
/// header values become spaces (the positions of the actions changed are
/// returned, for a warning), and any other unsafe value is the error of the
/// first action holding one.
pub fn sanitize_actions(actions: &mut [Action]) -> Result<Vec<usize>, (usize, UnsafeValue)> {
    let mut replaced = Vec::new();
    for (i, a) in actions.iter_mut().enumerate() {
        if header_value_mut(a).is_some_and(|v| replace_bare_crs(v)) {
            replaced.push(i);
        }
        check_action(a).map_err(|e| (i, e))?;
    }
    Ok(replaced)
}

fn check_action(action: &Action) -> Result<(), UnsafeValue> {
    match action {
        // An empty new value deletes: same rule as `J`.
        Action::ChangeHeader { name, value, .. } if value.is_empty() => {
            if name.is_empty() {
                Err(UnsafeValue::EmptyName)
            } else {
                check_single_line(name)
            }
        }
        Action::AddHeader { name, value }
        | Action::InsertHeader { name, value, .. }
        | Action::ChangeHeader { name, value, .. } => {
            check_header_name(name).and_then(|_| check_header_value(value))
        }
        // Deleting can only match an existing header: a name that could
        // never match is harmless, but it must stay on one line.
        Action::DeleteHeader { name, .. } if name.is_empty() => Err(UnsafeValue::EmptyName),
        Action::DeleteHeader { name, .. } => check_single_line(name),
        Action::ContentType(v) => check_header_value(v),
        Action::AddRcpt(v)
        | Action::DeleteRcpt(v)
        | Action::ChangeFrom(v)
        | Action::Quarantine(v) => check_single_line(v),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn golden_c24_results() {
        let r = parse(
            b"JX-Mailmunge-Remailed 1\nHX-Added added\nNX-Inserted 1 inserted%20at%201\nIX-Old 1 new%20value\nJReceived 1\nR<added@example.org>\nS<other@example.com>\nf<changed@example.net>\nQheld%20by%20the%20diff%20filter\nMmultipart/mixed;%20boundary=%22x%22\nC\nIX-Added 1 changed%20in%20wrapup\nHX-Wrapup yes\nF\n",
        )
        .unwrap();
        assert!(r.finished && !r.rejecting);
        assert_eq!(
            r.actions,
            vec![
                Action::DeleteHeader {
                    name: v("X-Mailmunge-Remailed"),
                    index: 1
                },
                Action::AddHeader {
                    name: v("X-Added"),
                    value: v("added")
                },
                Action::InsertHeader {
                    index: 1,
                    name: v("X-Inserted"),
                    value: v("inserted at 1")
                },
                Action::ChangeHeader {
                    name: v("X-Old"),
                    index: 1,
                    value: v("new value")
                },
                Action::DeleteHeader {
                    name: v("Received"),
                    index: 1
                },
                Action::AddRcpt(v("<added@example.org>")),
                Action::DeleteRcpt(v("<other@example.com>")),
                Action::ChangeFrom(v("<changed@example.net>")),
                Action::Quarantine(v("held by the diff filter")),
                Action::ContentType(v("multipart/mixed; boundary=\"x\"")),
                Action::ReplaceBody,
                Action::ChangeHeader {
                    name: v("X-Added"),
                    index: 1,
                    value: v("changed in wrapup")
                },
                Action::AddHeader {
                    name: v("X-Wrapup"),
                    value: v("yes")
                },
            ]
        );
    }

    #[test]
    fn verdicts_indexes_and_oddities() {
        let r = parse(b"HX a\nB550 5.7.1 go%20away\nHY b\nF\n").unwrap();
        assert!(r.rejecting && !r.finished);
        assert_eq!(r.actions.len(), 2);
        assert_eq!(
            r.actions[1],
            Action::Bounce {
                code: Some(v("550")),
                dsn: Some(v("5.7.1")),
                text: Some(v("go away"))
            }
        );
        // A B/D/T after F still marks the file as rejecting.
        let r = parse(b"HX a\nF\nD\n").unwrap();
        assert!(r.rejecting && r.finished);
        assert_eq!(r.actions.len(), 1);
        let r = parse(b"T\nF\n").unwrap();
        assert_eq!(
            r.actions,
            vec![Action::Tempfail {
                code: Some(vec![]),
                dsn: None,
                text: None
            }]
        );
        // Indexes: invalid or too small become the minimum.
        let r = parse(b"NX -3 v\nIX 0 v\nJX abc\nNX 2x v\nIX\nHX\nJX\n\nZ\nF").unwrap();
        assert_eq!(
            r.actions,
            vec![
                Action::InsertHeader {
                    index: 0,
                    name: v("X"),
                    value: v("v")
                },
                Action::ChangeHeader {
                    name: v("X"),
                    index: 1,
                    value: v("v")
                },
                Action::DeleteHeader {
                    name: v("X"),
                    index: 1
                },
                Action::InsertHeader {
                    index: 2,
                    name: v("X"),
                    value: v("v")
                },
                Action::Unknown(0),
                Action::Unknown(b'Z'),
            ]
        );
        assert!(r.finished);
        // An empty third field of I means "delete".
        assert_eq!(
            parse(b"IX 2 \nF\n").unwrap().actions,
            vec![Action::ChangeHeader {
                name: v("X"),
                index: 2,
                value: vec![]
            }]
        );
        // Missing F.
        let r = parse(b"HX a\n").unwrap();
        assert!(!r.finished);
        // Everything after a NUL is ignored.
        let r = parse(b"HX a\0\nF\n").unwrap();
        assert!(!r.finished);
    }

    #[test]
    fn overlong_lines() {
        let mut long = vec![b'H'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(parse(&long), Err(ResultsError::OverlongLine(MAX_LINE)));
        let mut ok = vec![b'X'; MAX_LINE - 1];
        ok.extend_from_slice(b"\nF\n");
        assert!(parse(&ok).unwrap().finished);
    }

    #[test]
    fn unsafe_values() {
        assert_eq!(check_header_value(b"folded\n\tnew value"), Ok(()));
        assert_eq!(check_header_value(b"a\r\n b"), Ok(()));
        assert_eq!(
            check_header_value(b"x\nBcc: victim@example.com"),
            Err(UnsafeValue::BadFold)
        );
        assert_eq!(check_header_value(b"x\n"), Err(UnsafeValue::BadFold));
        assert_eq!(check_header_value(b"x\ry"), Err(UnsafeValue::BareCr));
        assert_eq!(check_header_value(b"x\r"), Err(UnsafeValue::BareCr));
        assert_eq!(check_header_name(b"X-Ok"), Ok(()));
        assert_eq!(
            check_header_name(b"X Bad"),
            Err(UnsafeValue::BadNameByte(b' '))
        );
        assert_eq!(
            check_header_name(b"X:"),
            Err(UnsafeValue::BadNameByte(b':'))
        );
        assert_eq!(check_header_name(b""), Err(UnsafeValue::EmptyName));
        let acts = [
            Action::AddRcpt(v("<a@b>")),
            Action::AddHeader {
                name: v("X"),
                value: v("a\nb"),
            },
        ];
        assert_eq!(
            sanitize_actions(&mut acts.clone()),
            Err((1, UnsafeValue::BadFold))
        );
        assert_eq!(
            sanitize_actions(&mut [Action::ChangeFrom(v("<a@b>\r\nRCPT TO:<x>"))]),
            Err((0, UnsafeValue::LineBreak))
        );
        assert_eq!(
            sanitize_actions(&mut [Action::DeleteHeader {
                name: v("Odd Name"),
                index: 1
            }]),
            Ok(vec![])
        );
        assert_eq!(
            sanitize_actions(&mut [Action::DeleteHeader {
                name: v("X\nY"),
                index: 1
            }]),
            Err((0, UnsafeValue::LineBreak))
        );
        assert_eq!(
            sanitize_actions(&mut [Action::ChangeHeader {
                name: v("Odd Name"),
                index: 1,
                value: v("")
            }]),
            Ok(vec![])
        );
        assert_eq!(
            sanitize_actions(&mut [Action::ChangeHeader {
                name: v("Odd Name"),
                index: 1,
                value: v("x")
            }]),
            Err((0, UnsafeValue::BadNameByte(b' ')))
        );
    }

    #[test]
    fn bare_crs_become_spaces() {
        let cases: [(&[u8], &[u8], bool); 7] = [
            (b"seen\rwith CR", b"seen with CR", true),
            (b"end\r", b"end ", true),
            (b"\r\rtwo", b"  two", true),
            // The CR of a fold stays; the one before it does not.
            (b"a\r\r\n b", b"a \r\n b", true),
            (b"a\r\n\tb", b"a\r\n\tb", false),
            // A CR before a non-folding LF stays: the LF is refused later.
            (b"a\r\nB: c", b"a\r\nB: c", false),
            (b"plain", b"plain", false),
        ];
        for (input, want, changed) in cases {
            let mut got = input.to_vec();
            assert_eq!(replace_bare_crs(&mut got), changed, "{input:?}");
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn sanitize_replaces_bare_crs_and_reports_where() {
        let mut acts = vec![
            Action::AddHeader {
                name: v("X-After-CR"),
                value: v("seen\rwith CR"),
            },
            Action::AddRcpt(v("<a@b>")),
            Action::InsertHeader {
                index: 0,
                name: v("X-Ins"),
                value: v("a\rb"),
            },
            Action::ChangeHeader {
                name: v("X-Chg"),
                index: 1,
                value: v("c\r"),
            },
            Action::ContentType(v("text/plain;\rcharset=x")),
            Action::AddHeader {
                name: v("X-Fine"),
                value: v("folded\r\n next"),
            },
        ];
        assert_eq!(sanitize_actions(&mut acts), Ok(vec![0, 2, 3, 4]));
        assert_eq!(
            acts,
            vec![
                Action::AddHeader {
                    name: v("X-After-CR"),
                    value: v("seen with CR"),
                },
                Action::AddRcpt(v("<a@b>")),
                Action::InsertHeader {
                    index: 0,
                    name: v("X-Ins"),
                    value: v("a b"),
                },
                Action::ChangeHeader {
                    name: v("X-Chg"),
                    index: 1,
                    value: v("c "),
                },
                Action::ContentType(v("text/plain; charset=x")),
                Action::AddHeader {
                    name: v("X-Fine"),
                    value: v("folded\r\n next"),
                },
            ]
        );
        // A line break that could start a header is still refused, a CR in a
        // header name too, and an address keeps its single-line rule.
        let evil = Action::AddHeader {
            name: v("X"),
            value: v("a\r\nBcc: victim@example.com"),
        };
        assert_eq!(
            sanitize_actions(&mut [evil]),
            Err((0, UnsafeValue::BadFold))
        );
        let bad_name = Action::AddHeader {
            name: v("X\rY"),
            value: v("v"),
        };
        assert_eq!(
            sanitize_actions(&mut [bad_name]),
            Err((0, UnsafeValue::BadNameByte(b'\r')))
        );
        assert_eq!(
            sanitize_actions(&mut [Action::AddRcpt(v("<a@b>\r"))]),
            Err((0, UnsafeValue::LineBreak))
        );
    }
}
