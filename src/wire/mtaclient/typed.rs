//! The typed reading of the milter's replies: the verdict of a stage and
//! the changes requested at end of message (protocol/milter.md §16).

use serde::Serialize;

use super::{Eom, MtaError, Packet};

/// What the milter answered at one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Continue,
    Accept,
    Reject {
        reply: String,
    },
    Tempfail {
        reply: String,
    },
    Discard,
    /// Stop sending body chunks (treated as continue).
    Skip,
    /// Not asked: the milter said it does not want this stage, or wants no reply.
    NotAsked,
}

impl Verdict {
    /// The verdict a stage's reply carries; `None` (the milter declined
    /// the stage or its reply) is `NotAsked`.
    pub fn of(reply: Option<&Packet>) -> Result<Verdict, MtaError> {
        let Some(p) = reply else {
            return Ok(Verdict::NotAsked);
        };
        if p.kind == b's' {
            return Ok(Verdict::Skip);
        }
        Verdict::from_packet(p).unwrap_or_else(|| {
            Err(MtaError::Protocol(format!(
                "unexpected reply {:?}",
                p.kind as char
            )))
        })
    }

    /// The verdict a packet carries, `None` for any other packet. Refusals
    /// without a text get the texts Postfix uses (protocol/milter.md §2.6).
    fn from_packet(p: &Packet) -> Option<Result<Verdict, MtaError>> {
        Some(Ok(match p.kind {
            b'c' => Verdict::Continue,
            b'a' => Verdict::Accept,
            b'd' => Verdict::Discard,
            b'r' => Verdict::Reject {
                reply: "550 5.7.1 Command rejected".into(),
            },
            b't' => Verdict::Tempfail {
                reply: "451 4.7.1 Service unavailable - try again later".into(),
            },
            b'y' => {
                let text = text_until_nul(&p.data);
                match text.as_bytes().first() {
                    Some(b'4') => Verdict::Tempfail { reply: text },
                    Some(b'5') => Verdict::Reject { reply: text },
                    _ => {
                        return Some(Err(MtaError::Protocol(format!(
                            "reply code neither 4xx nor 5xx: {text:?}"
                        ))))
                    }
                }
            }
            _ => return None,
        }))
    }

    /// True when the transaction (or, at RCPT, the recipient) stops here.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Verdict::Accept | Verdict::Reject { .. } | Verdict::Tempfail { .. } | Verdict::Discard
        )
    }

    /// One word for reports (`-` when the milter was not asked).
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject { .. } => "reject",
            Verdict::Tempfail { .. } => "tempfail",
            Verdict::Discard => "discard",
            Verdict::Skip => "skip",
            Verdict::NotAsked => "-",
        }
    }

    /// The SMTP reply an MTA would send for a refusal.
    pub fn smtp_reply(&self) -> Option<&str> {
        match self {
            Verdict::Reject { reply } | Verdict::Tempfail { reply } => Some(reply),
            _ => None,
        }
    }
}

/// A change requested at end of message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Modification {
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Empty value = delete.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    AddRecipient {
        recipient: String,
        args: Option<String>,
    },
    DeleteRecipient {
        recipient: String,
    },
    ChangeSender {
        sender: String,
        args: Option<String>,
    },
    ReplaceBody {
        length: usize,
    },
    Quarantine {
        reason: String,
    },
}

/// The change letters an MTA accepts before the end-of-message verdict
/// (the body chunks included).
pub(super) fn is_change(kind: u8) -> bool {
    matches!(
        kind,
        b'h' | b'i' | b'm' | b'+' | b'2' | b'-' | b'e' | b'q' | b'b'
    )
}

impl Modification {
    /// The header, envelope or quarantine change a packet carries, `None`
    /// for any other packet (a body chunk included).
    fn from_packet(p: &Packet) -> Result<Option<Modification>, MtaError> {
        let data = &p.data[..];
        Ok(Some(match p.kind {
            b'h' => {
                let (name, value) = two(nul_strings(data));
                Modification::AddHeader { name, value }
            }
            b'i' => {
                let (index, (name, value)) = indexed(data)?;
                Modification::InsertHeader { index, name, value }
            }
            b'm' => {
                let (index, (name, value)) = indexed(data)?;
                Modification::ChangeHeader { index, name, value }
            }
            b'+' => Modification::AddRecipient {
                recipient: text_until_nul(data),
                args: None,
            },
            b'2' => {
                let (recipient, args) = with_args(data);
                Modification::AddRecipient { recipient, args }
            }
            b'-' => Modification::DeleteRecipient {
                recipient: text_until_nul(data),
            },
            b'e' => {
                let (sender, args) = with_args(data);
                Modification::ChangeSender { sender, args }
            }
            b'q' => Modification::Quarantine {
                reason: text_until_nul(data),
            },
            _ => return Ok(None),
        }))
    }
}

/// One change in words, as `mm-try` lists them.
impl std::fmt::Display for Modification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Modification::AddHeader { name, value } => write!(f, "add header {name}: {value}"),
            Modification::InsertHeader { index, name, value } => {
                write!(f, "insert header at {index}: {name}: {value}")
            }
            Modification::ChangeHeader { index, name, value } if value.is_empty() => {
                write!(f, "delete header {name} #{index}")
            }
            Modification::ChangeHeader { index, name, value } => {
                write!(f, "change header {name} #{index}: {value}")
            }
            Modification::AddRecipient {
                recipient,
                args: Some(a),
            } => write!(f, "add recipient {recipient} {a}"),
            Modification::AddRecipient {
                recipient,
                args: None,
            } => write!(f, "add recipient {recipient}"),
            Modification::DeleteRecipient { recipient } => {
                write!(f, "delete recipient {recipient}")
            }
            Modification::ChangeSender { sender, .. } => write!(f, "change sender to {sender}"),
            Modification::ReplaceBody { length } => write!(f, "replace body ({length} bytes)"),
            Modification::Quarantine { reason } => write!(f, "quarantine (hold): {reason}"),
        }
    }
}

/// What the milter answered to end of message, read.
#[derive(Debug, Clone)]
pub struct EomReply {
    pub verdict: Verdict,
    /// The changes in the order the milter sent them, then `ReplaceBody`
    /// when there is a new body.
    pub modifications: Vec<Modification>,
    /// The replacement body, its chunks joined.
    pub new_body: Option<Vec<u8>>,
}

impl EomReply {
    pub(super) fn decode(eom: &Eom) -> Result<EomReply, MtaError> {
        let mut modifications = Vec::new();
        let mut new_body: Option<Vec<u8>> = None;
        for p in &eom.changes {
            match Modification::from_packet(p)? {
                Some(m) => modifications.push(m),
                None => new_body
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&p.data),
            }
        }
        if let Some(b) = &new_body {
            modifications.push(Modification::ReplaceBody { length: b.len() });
        }
        Ok(EomReply {
            verdict: Verdict::of(Some(&eom.verdict))?,
            modifications,
            new_body,
        })
    }
}

/// A header-change packet: a 32-bit index, then name and value.
fn indexed(d: &[u8]) -> Result<(u32, (String, String)), MtaError> {
    if d.len() < 4 {
        return Err(MtaError::Protocol("short header-change packet".into()));
    }
    let index = u32::from_be_bytes(d[..4].try_into().expect("4 bytes"));
    Ok((index, two(nul_strings(&d[4..]))))
}

/// An address and its ESMTP arguments (`None` when empty).
fn with_args(d: &[u8]) -> (String, Option<String>) {
    let (addr, args) = two(nul_strings(d));
    (addr, (!args.is_empty()).then_some(args))
}

/// The first two strings, empty where missing.
fn two(v: Vec<String>) -> (String, String) {
    let mut it = v.into_iter();
    (it.next().unwrap_or_default(), it.next().unwrap_or_default())
}

/// Text up to the first NUL.
fn text_until_nul(b: &[u8]) -> String {
    String::from_utf8_lossy(crate::cformat::string::until_nul(b)).into_owned()
}

/// NUL-terminated strings of a packet.
fn nul_strings(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: u8, data: &[u8]) -> Packet {
        Packet {
            kind,
            data: data.to_vec(),
        }
    }

    #[test]
    fn verdicts_get_postfix_texts_and_codes_pick_the_class() {
        assert_eq!(Verdict::of(None).unwrap(), Verdict::NotAsked);
        assert_eq!(Verdict::of(Some(&p(b's', b""))).unwrap(), Verdict::Skip);
        assert_eq!(
            Verdict::of(Some(&p(b'r', b""))).unwrap().smtp_reply(),
            Some("550 5.7.1 Command rejected")
        );
        assert_eq!(
            Verdict::of(Some(&Packet::reply("451 4.3.0 later"))).unwrap(),
            Verdict::Tempfail {
                reply: "451 4.3.0 later".into()
            }
        );
        assert!(Verdict::of(Some(&Packet::reply("250 ok"))).is_err());
        assert!(Verdict::of(Some(&p(b'h', b"A\0b\0"))).is_err());
    }

    #[test]
    fn end_of_message_changes_are_read_in_order_with_the_body_last() {
        let eom = Eom {
            changes: vec![
                p(b'b', b"new "),
                p(b'2', b"<c@x>\0NOTIFY=NEVER\0"),
                p(b'm', &[&2u32.to_be_bytes()[..], b"Subject\0\0"].concat()),
                p(b'b', b"body"),
            ],
            verdict: p(b'a', b""),
        };
        let r = eom.decode().unwrap();
        assert_eq!(r.verdict, Verdict::Accept);
        assert_eq!(r.new_body.as_deref(), Some(&b"new body"[..]));
        let words: Vec<String> = r.modifications.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            words,
            [
                "add recipient <c@x> NOTIFY=NEVER",
                "delete header Subject #2",
                "replace body (8 bytes)"
            ]
        );
        let short = Eom {
            changes: vec![p(b'i', b"\0\0")],
            verdict: p(b'c', b""),
        };
        assert!(short.decode().is_err());
    }
}
