//! The MTA's end of one milter connection: packets out, replies in, and the
//! decoding of the replies (verdicts and end-of-message changes).

use std::io::{Read, Write};
use std::time::Duration;

use super::{Modification, TryError, Verdict};
use crate::wire::sockspec::SockSpec;

/// Milter protocol version we speak (Postfix 3 and Sendmail 8.14+ use 6).
const VERSION: u32 = 6;
/// Every modification action an MTA can perform.
const ALL_ACTIONS: u32 = 0x1ff;
/// Every protocol step/option bit of version 6 that we can honour (all but
/// SMFIP_HDR_LEADSPC: header values go without their leading space).
const ALL_PROTOCOL: u32 = 0x0f_ffff;

// Protocol bits the milter may set in its negotiation reply.
pub(super) const P_NOCONNECT: u32 = 0x1;
pub(super) const P_NOHELO: u32 = 0x2;
pub(super) const P_NOMAIL: u32 = 0x4;
pub(super) const P_NORCPT: u32 = 0x8;
pub(super) const P_NOBODY: u32 = 0x10;
pub(super) const P_NOHDRS: u32 = 0x20;
pub(super) const P_NOEOH: u32 = 0x40;
pub(super) const P_NR_HDR: u32 = 0x80;
pub(super) const P_NODATA: u32 = 0x200;
pub(super) const P_NR_CONN: u32 = 0x1000;
pub(super) const P_NR_HELO: u32 = 0x2000;
pub(super) const P_NR_MAIL: u32 = 0x4000;
pub(super) const P_NR_RCPT: u32 = 0x8000;
pub(super) const P_NR_DATA: u32 = 0x10000;
pub(super) const P_NR_EOH: u32 = 0x40000;
pub(super) const P_NR_BODY: u32 = 0x80000;

/// Largest body chunk libmilter accepts.
pub(super) const CHUNK: usize = 65535;
/// Largest packet we accept from the milter.
const MAX_PACKET: usize = 64 * 1024 * 1024;

trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

pub(super) struct Conn {
    s: Box<dyn Wire>,
}

/// What the milter answered to end of message.
pub(super) struct EomReply {
    pub verdict: Verdict,
    /// The changes in the order the milter sent them (a new body is not
    /// among them: it is `new_body`).
    pub mods: Vec<Modification>,
    /// The replacement body, its chunks joined.
    pub new_body: Option<Vec<u8>>,
}

impl Conn {
    pub fn open(spec: &SockSpec, label: &str, timeout: Duration) -> Result<Conn, TryError> {
        let s: Box<dyn Wire> = match spec {
            SockSpec::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)
                    .map_err(|e| TryError::Connect(label.into(), e))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Box::new(s)
            }
            SockSpec::Tcp(a) => {
                let s = std::net::TcpStream::connect_timeout(a, timeout)
                    .map_err(|e| TryError::Connect(label.into(), e))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Ok(Conn { s })
    }

    /// Offers everything we can do; returns the milter's protocol mask
    /// (the stages it declines and the replies it will not send).
    pub fn negotiate(&mut self) -> Result<u32, TryError> {
        let mut offer = Vec::new();
        for v in [VERSION, ALL_ACTIONS, ALL_PROTOCOL] {
            offer.extend_from_slice(&v.to_be_bytes());
        }
        self.send(b'O', &offer)?;
        let (cmd, data) = self.recv()?;
        if cmd != b'O' || data.len() < 12 {
            return Err(TryError::Protocol(format!(
                "bad negotiation reply {:?}",
                cmd as char
            )));
        }
        Ok(u32::from_be_bytes(data[8..12].try_into().expect("4 bytes")))
    }

    pub fn send(&mut self, cmd: u8, data: &[u8]) -> Result<(), TryError> {
        let mut p = Vec::with_capacity(5 + data.len());
        p.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
        p.push(cmd);
        p.extend_from_slice(data);
        self.s.write_all(&p)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<(u8, Vec<u8>), TryError> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                TryError::Protocol("the milter closed the connection".into())
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                TryError::Protocol("no answer from the milter within the timeout".into())
            }
            _ => TryError::Io(e),
        })?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(TryError::Protocol(format!("bad packet length {len}")));
        }
        let mut buf = vec![0u8; len];
        self.s.read_exact(&mut buf)?;
        let cmd = buf.remove(0);
        Ok((cmd, buf))
    }

    /// Reads the reply to a stage command (skipping progress packets).
    pub fn verdict(&mut self) -> Result<Verdict, TryError> {
        loop {
            let (cmd, data) = self.recv()?;
            match cmd {
                b'p' => continue,
                b's' => return Ok(Verdict::Skip),
                _ => {}
            }
            return verdict_packet(cmd, &data).unwrap_or_else(|| {
                Err(TryError::Protocol(format!(
                    "unexpected reply {:?}",
                    cmd as char
                )))
            });
        }
    }

    /// Sends end of message (with the `i` macro) and collects the changes
    /// until the final verdict.
    pub fn end_of_message(&mut self, queue_id: &str) -> Result<EomReply, TryError> {
        self.send(b'D', &macros(b'E', &[("i", queue_id)]))?;
        self.send(b'E', &[])?;
        let mut mods = Vec::new();
        let mut new_body: Option<Vec<u8>> = None;
        loop {
            let (cmd, data) = self.recv()?;
            match cmd {
                b'b' => new_body
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&data),
                b'p' => {}
                _ => {
                    if let Some(m) = modification_packet(cmd, &data)? {
                        mods.push(m);
                    } else if let Some(v) = verdict_packet(cmd, &data) {
                        let verdict = v?;
                        return Ok(EomReply {
                            verdict,
                            mods,
                            new_body,
                        });
                    } else {
                        return Err(TryError::Protocol(format!(
                            "unexpected end-of-message packet {:?}",
                            cmd as char
                        )));
                    }
                }
            }
        }
    }

    /// Ends the session, first aborting a message that was started but not
    /// finished. The outcome is known by then, so a milter that is already
    /// gone changes nothing.
    pub fn quit(&mut self, abort: bool) {
        if abort {
            let _ = self.send(b'A', &[]);
        }
        let _ = self.send(b'Q', &[]);
    }
}

/// The verdict a packet carries, `None` for any other packet. Refusals
/// without a text get the texts Postfix uses.
fn verdict_packet(cmd: u8, data: &[u8]) -> Option<Result<Verdict, TryError>> {
    Some(Ok(match cmd {
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
            let text = text_until_nul(data);
            match text.as_bytes().first() {
                Some(b'4') => Verdict::Tempfail { reply: text },
                Some(b'5') => Verdict::Reject { reply: text },
                _ => {
                    return Some(Err(TryError::Protocol(format!(
                        "reply code neither 4xx nor 5xx: {text:?}"
                    ))))
                }
            }
        }
        _ => return None,
    }))
}

/// The header, envelope or quarantine change a packet carries, `None` for
/// any other packet.
fn modification_packet(cmd: u8, data: &[u8]) -> Result<Option<Modification>, TryError> {
    Ok(Some(match cmd {
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

/// A header-change packet: a 32-bit index, then name and value.
fn indexed(d: &[u8]) -> Result<(u32, (String, String)), TryError> {
    if d.len() < 4 {
        return Err(TryError::Protocol("short header-change packet".into()));
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

/// Strings each followed by a NUL, as stage commands carry them.
pub(super) fn nul_join(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// A macro packet for `stage`: the stage letter, then name and value pairs.
pub(super) fn macros(stage: u8, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![stage];
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}
