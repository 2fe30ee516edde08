//! `mm-try`: plays the MTA's side of the milter protocol against a running
//! milter for one message, and reports what an MTA would have done.
//!
//! This module owns the MTA side of the milter wire format (the server side
//! is indymilter's). We do not use the `miltr-client` crate here: its 0.1
//! releases cannot send macros and cannot decode "change sender" or
//! "add recipient with parameters", both of which Mailmunge filters use.
//!
//! The client is blocking (one connection, one message) and every read has a
//! timeout, so a hung milter gives a clear error instead of a hung tool.

use serde::Serialize;
use std::io::{Read, Write};
use std::time::Duration;

use crate::sockspec::SockSpec;

/// Milter protocol version we speak (Postfix 3 and Sendmail 8.14+ use 6).
const VERSION: u32 = 6;
/// Every modification action an MTA can perform.
const ALL_ACTIONS: u32 = 0x1ff;
/// Every protocol step/option bit of version 6 that we can honour (all but
/// SMFIP_HDR_LEADSPC: header values go without their leading space).
const ALL_PROTOCOL: u32 = 0x0f_ffff;

// Protocol bits the milter may set in its negotiation reply.
const P_NOCONNECT: u32 = 0x1;
const P_NOHELO: u32 = 0x2;
const P_NOMAIL: u32 = 0x4;
const P_NORCPT: u32 = 0x8;
const P_NOBODY: u32 = 0x10;
const P_NOHDRS: u32 = 0x20;
const P_NOEOH: u32 = 0x40;
const P_NR_HDR: u32 = 0x80;
const P_NODATA: u32 = 0x200;
const P_NR_CONN: u32 = 0x1000;
const P_NR_HELO: u32 = 0x2000;
const P_NR_MAIL: u32 = 0x4000;
const P_NR_RCPT: u32 = 0x8000;
const P_NR_DATA: u32 = 0x10000;
const P_NR_EOH: u32 = 0x40000;
const P_NR_BODY: u32 = 0x80000;

/// Largest body chunk libmilter accepts.
const CHUNK: usize = 65535;
/// Largest packet we accept from the milter.
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// Why a try-out could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    #[error("bad milter socket {0:?}: {1}")]
    Spec(String, String),
    #[error("cannot connect to the milter at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("talking to the milter: {0}")]
    Io(#[from] std::io::Error),
    #[error("milter protocol error: {0}")]
    Protocol(String),
}

/// The SMTP transaction to play.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub client_ip: String,
    pub client_name: String,
    pub client_port: u16,
    pub helo: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message as it would arrive after DATA (headers, blank line, body).
    pub message: Vec<u8>,
    /// Value of the `j` macro (the MTA's host name).
    pub hostname: String,
    /// Value of the `i` macro (queue id).
    pub queue_id: String,
}

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
    /// True when the transaction (or, at RCPT, the recipient) stops here.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Verdict::Accept | Verdict::Reject { .. } | Verdict::Tempfail { .. } | Verdict::Discard
        )
    }

    fn word(&self) -> &'static str {
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

/// One stage of the transaction and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: &'static str,
    pub argument: String,
    #[serde(flatten)]
    pub verdict: Verdict,
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

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub stages: Vec<Stage>,
    /// The end-of-message verdict, or the verdict that ended the transaction.
    pub final_verdict: Verdict,
    /// What the MTA would answer the client at the end.
    pub smtp_reply: String,
    pub modifications: Vec<Modification>,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message after the modifications (empty unless end of message was reached).
    #[serde(skip)]
    pub result: Vec<u8>,
    /// Unified diff between the submitted and the resulting message.
    pub diff: String,
}

/// Parses a milter socket as in `SOCKET=` / `-p`, also accepting Postfix's
/// `inet:HOST:PORT` spelling from `smtpd_milters`.
pub fn parse_spec(spec: &str) -> Result<SockSpec, TryError> {
    if let Some(rest) = spec.strip_prefix("inet:") {
        if let Some((host, port)) = rest.rsplit_once(':') {
            if !rest.contains('@') && port.bytes().all(|b| b.is_ascii_digit()) {
                return SockSpec::parse_milter(&format!("inet:{port}@{host}"))
                    .map_err(|e| TryError::Spec(spec.into(), e.to_string()));
            }
        }
    }
    SockSpec::parse_milter(spec).map_err(|e| TryError::Spec(spec.into(), e.to_string()))
}

trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

struct Conn {
    s: Box<dyn Wire>,
}

impl Conn {
    fn open(spec: &SockSpec, label: &str, timeout: Duration) -> Result<Conn, TryError> {
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

    fn send(&mut self, cmd: u8, data: &[u8]) -> Result<(), TryError> {
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
    fn verdict(&mut self) -> Result<Verdict, TryError> {
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

    /// Ends the session, first aborting a message that was started but not
    /// finished. The outcome is known by then, so a milter that is already
    /// gone changes nothing.
    fn quit(&mut self, abort: bool) {
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
            let text = cstr(data);
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

/// Text up to the first NUL.
fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(crate::cstr::until_nul(b)).into_owned()
}

/// NUL-terminated strings of a packet.
fn cstrs(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn nul_join(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

fn macros(stage: u8, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![stage];
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Splits a message into its header fields (name, value as the MTA passes
/// them: without the colon and the one space after it, continuation lines
/// kept with CRLF) and the body (CRLF line endings, as on the SMTP wire).
pub fn split_message(msg: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i + 1], &text[i + 2..]),
        None if text.starts_with('\n') => ("", &text[1..]),
        None => (text.as_str(), ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
        }
    }
    (headers, body.replace('\n', "\r\n").into_bytes())
}

fn join_message(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for (n, v) in headers {
        out.push_str(n);
        out.push_str(": ");
        out.push_str(&v.replace("\r\n", "\n"));
        out.push('\n');
    }
    out.push('\n');
    let mut v = out.into_bytes();
    v.extend_from_slice(
        &String::from_utf8_lossy(body)
            .replace("\r\n", "\n")
            .into_bytes(),
    );
    v
}

/// Applies the header and body changes the way Postfix does: add appends,
/// insert puts the header before the given 0-based position, change
/// replaces the index-th (1-based) header of that name (empty value
/// deletes; a missing one is added).
pub fn apply(message: &[u8], mods: &[Modification], new_body: Option<&[u8]>) -> Vec<u8> {
    let (mut headers, body) = split_message(message);
    for m in mods {
        match m {
            Modification::AddHeader { name, value } => headers.push((name.clone(), value.clone())),
            Modification::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(headers.len());
                headers.insert(at, (name.clone(), value.clone()));
            }
            Modification::ChangeHeader { index, name, value } => {
                let pos = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth((*index).max(1) as usize - 1)
                    .map(|(i, _)| i);
                match (pos, value.is_empty()) {
                    (Some(i), true) => {
                        headers.remove(i);
                    }
                    (Some(i), false) => headers[i].1 = value.clone(),
                    (None, false) => headers.push((name.clone(), value.clone())),
                    (None, true) => {}
                }
            }
            _ => {}
        }
    }
    join_message(&headers, new_body.unwrap_or(&body))
}

/// The stages before end of message, each with its command and the
/// negotiation bits by which the milter declines the stage (`P_NO*`) or
/// its reply (`P_NR_*`).
#[derive(Debug, Clone, Copy)]
enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::Data => "data",
            Step::Header => "header",
            Step::Eoh => "eoh",
            Step::Body => "body",
        }
    }

    /// (command, declined bit, no-reply bit). The body's declined bit is
    /// checked once for all chunks by the caller, hence 0.
    fn wire(self) -> (u8, u32, u32) {
        match self {
            Step::Connect => (b'C', P_NOCONNECT, P_NR_CONN),
            Step::Helo => (b'H', P_NOHELO, P_NR_HELO),
            Step::Mail => (b'M', P_NOMAIL, P_NR_MAIL),
            Step::Rcpt => (b'R', P_NORCPT, P_NR_RCPT),
            Step::Data => (b'T', P_NODATA, P_NR_DATA),
            Step::Header => (b'L', P_NOHDRS, P_NR_HDR),
            Step::Eoh => (b'N', P_NOEOH, P_NR_EOH),
            Step::Body => (b'B', 0, P_NR_BODY),
        }
    }

    /// Plays the stage (macros first, if any) and records its verdict;
    /// `proto` is the milter's negotiated protocol mask.
    fn run(
        self,
        c: &mut Conn,
        proto: u32,
        stages: &mut Vec<Stage>,
        argument: String,
        macros: Option<Vec<u8>>,
        data: &[u8],
    ) -> Result<Verdict, TryError> {
        let (cmd, declined, noreply) = self.wire();
        let verdict = if proto & declined != 0 {
            Verdict::NotAsked
        } else {
            if let Some(m) = &macros {
                c.send(b'D', m)?;
            }
            c.send(cmd, data)?;
            if proto & noreply != 0 {
                Verdict::NotAsked
            } else {
                c.verdict()?
            }
        };
        stages.push(Stage {
            stage: self.name(),
            argument,
            verdict: verdict.clone(),
        });
        Ok(verdict)
    }
}

/// The outcome of a transaction that ended before end of message.
fn finish(stages: Vec<Stage>, v: Verdict, t: &Transaction) -> Outcome {
    let reply = match &v {
        Verdict::Reject { reply } | Verdict::Tempfail { reply } => reply.clone(),
        Verdict::Discard => "250 2.0.0 Ok (message discarded)".into(),
        _ => "250 2.0.0 Ok".into(),
    };
    Outcome {
        stages,
        final_verdict: v,
        smtp_reply: reply,
        modifications: vec![],
        sender: t.sender.clone(),
        recipients: t.recipients.clone(),
        result: vec![],
        diff: String::new(),
    }
}

/// Runs the transaction against the milter at `spec`.
pub fn run(
    spec: &SockSpec,
    label: &str,
    t: &Transaction,
    timeout: Duration,
) -> Result<Outcome, TryError> {
    let mut c = Conn::open(spec, label, timeout)?;
    let mut neg = Vec::new();
    for v in [VERSION, ALL_ACTIONS, ALL_PROTOCOL] {
        neg.extend_from_slice(&v.to_be_bytes());
    }
    c.send(b'O', &neg)?;
    let (cmd, data) = c.recv()?;
    if cmd != b'O' || data.len() < 12 {
        return Err(TryError::Protocol(format!(
            "bad negotiation reply {:?}",
            cmd as char
        )));
    }
    let word = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    let proto = word(8);

    let mut stages: Vec<Stage> = Vec::new();
    let port = t.client_port.to_string();
    // Connect.
    let mut conn = Vec::new();
    conn.extend_from_slice(t.client_name.as_bytes());
    conn.push(0);
    let ipv6 = t.client_ip.contains(':');
    conn.push(if ipv6 { b'6' } else { b'4' });
    conn.extend_from_slice(&t.client_port.to_be_bytes());
    conn.extend_from_slice(t.client_ip.as_bytes());
    conn.push(0);
    let conn_macros = macros(
        b'C',
        &[
            ("j", &t.hostname),
            ("{daemon_name}", "mm-try"),
            ("v", "mm-try"),
            ("_", &format!("{} [{}]", t.client_name, t.client_ip)),
            ("{client_addr}", &t.client_ip),
            ("{client_name}", &t.client_name),
            ("{client_port}", &port),
            ("{daemon_addr}", "127.0.0.1"),
            ("{daemon_port}", "25"),
        ],
    );
    let argument = format!("{} [{}]", t.client_name, t.client_ip);
    let v = Step::Connect.run(
        &mut c,
        proto,
        &mut stages,
        argument,
        Some(conn_macros),
        &conn,
    )?;
    if v.is_final() {
        c.quit(false);
        return Ok(finish(stages, v, t));
    }
    let v = Step::Helo.run(
        &mut c,
        proto,
        &mut stages,
        t.helo.clone(),
        None,
        &nul_join(&[t.helo.as_bytes()]),
    )?;
    if v.is_final() {
        c.quit(false);
        return Ok(finish(stages, v, t));
    }
    let addr = |a: &str| a.trim_start_matches('<').trim_end_matches('>').to_string();
    let sender_addr = addr(&t.sender);
    let mail_macros = macros(
        b'M',
        &[
            ("i", &t.queue_id),
            ("{mail_addr}", &sender_addr),
            (
                "{mail_host}",
                sender_addr.rsplit_once('@').map(|x| x.1).unwrap_or(""),
            ),
            ("{mail_mailer}", "smtp"),
        ],
    );
    let sender = nul_join(&[t.sender.as_bytes()]);
    let v = Step::Mail.run(
        &mut c,
        proto,
        &mut stages,
        t.sender.clone(),
        Some(mail_macros),
        &sender,
    )?;
    if v.is_final() {
        c.quit(true);
        return Ok(finish(stages, v, t));
    }
    let mut accepted = Vec::new();
    let mut last_refusal = None;
    for r in &t.recipients {
        let a = addr(r);
        let rcpt_macros = macros(
            b'R',
            &[
                ("{rcpt_addr}", &a),
                ("{rcpt_host}", a.rsplit_once('@').map(|x| x.1).unwrap_or("")),
                ("{rcpt_mailer}", "smtp"),
            ],
        );
        let v = Step::Rcpt.run(
            &mut c,
            proto,
            &mut stages,
            r.clone(),
            Some(rcpt_macros),
            &nul_join(&[r.as_bytes()]),
        )?;
        match v {
            Verdict::Reject { .. } | Verdict::Tempfail { .. } => last_refusal = Some(v),
            Verdict::Discard | Verdict::Accept => {
                // Whole-message verdicts given at RCPT time.
                c.quit(true);
                return Ok(finish(stages, v, t));
            }
            _ => accepted.push(r.clone()),
        }
    }
    if accepted.is_empty() {
        c.quit(true);
        let v = last_refusal.unwrap_or(Verdict::Reject {
            reply: "554 5.5.1 Error: no valid recipients".into(),
        });
        return Ok(finish(stages, v, t));
    }

    let v = Step::Data.run(&mut c, proto, &mut stages, String::new(), None, &[])?;
    if v.is_final() {
        c.quit(true);
        return Ok(finish(stages, v, t));
    }
    let (headers, body) = split_message(&t.message);
    let mut ended = None;
    for (n, val) in &headers {
        let argument = format!("{n}: {}", val.replace("\r\n", " "));
        let v = Step::Header.run(
            &mut c,
            proto,
            &mut stages,
            argument,
            None,
            &nul_join(&[n.as_bytes(), val.as_bytes()]),
        )?;
        if v.is_final() {
            ended = Some(v);
            break;
        }
    }
    if ended.is_none() {
        let v = Step::Eoh.run(&mut c, proto, &mut stages, String::new(), None, &[])?;
        if v.is_final() {
            ended = Some(v);
        }
    }
    if ended.is_none() && proto & P_NOBODY == 0 {
        for chunk in body.chunks(CHUNK) {
            let v = Step::Body.run(
                &mut c,
                proto,
                &mut stages,
                format!("{} bytes", chunk.len()),
                None,
                chunk,
            )?;
            if v.is_final() {
                ended = Some(v);
                break;
            }
            if v == Verdict::Skip {
                break;
            }
        }
    }
    if let Some(v) = ended {
        c.quit(true);
        return Ok(finish(stages, v, t));
    }

    // End of message: modifications until the final verdict.
    c.send(b'D', &macros(b'E', &[("i", &t.queue_id)]))?;
    c.send(b'E', &[])?;
    let mut mods = Vec::new();
    let mut new_body: Option<Vec<u8>> = None;
    let verdict = loop {
        let (cmd, data) = c.recv()?;
        let idx = |d: &[u8]| -> Result<(u32, Vec<String>), TryError> {
            if d.len() < 4 {
                return Err(TryError::Protocol("short header-change packet".into()));
            }
            Ok((
                u32::from_be_bytes(d[..4].try_into().expect("4 bytes")),
                cstrs(&d[4..]),
            ))
        };
        let two = |v: Vec<String>| -> (String, String) {
            let mut it = v.into_iter();
            (it.next().unwrap_or_default(), it.next().unwrap_or_default())
        };
        match cmd {
            b'h' => {
                let (name, value) = two(cstrs(&data));
                mods.push(Modification::AddHeader { name, value });
            }
            b'i' => {
                let (index, s) = idx(&data)?;
                let (name, value) = two(s);
                mods.push(Modification::InsertHeader { index, name, value });
            }
            b'm' => {
                let (index, s) = idx(&data)?;
                let (name, value) = two(s);
                mods.push(Modification::ChangeHeader { index, name, value });
            }
            b'+' => mods.push(Modification::AddRecipient {
                recipient: cstr(&data),
                args: None,
            }),
            b'2' => {
                let (recipient, args) = two(cstrs(&data));
                mods.push(Modification::AddRecipient {
                    recipient,
                    args: (!args.is_empty()).then_some(args),
                });
            }
            b'-' => mods.push(Modification::DeleteRecipient {
                recipient: cstr(&data),
            }),
            b'e' => {
                let (sender, args) = two(cstrs(&data));
                mods.push(Modification::ChangeSender {
                    sender,
                    args: (!args.is_empty()).then_some(args),
                });
            }
            b'b' => {
                let nb = new_body.get_or_insert_with(Vec::new);
                nb.extend_from_slice(&data);
            }
            b'q' => mods.push(Modification::Quarantine {
                reason: cstr(&data),
            }),
            b'p' => {}
            other => match verdict_packet(other, &data) {
                Some(v) => break v?,
                None => {
                    return Err(TryError::Protocol(format!(
                        "unexpected end-of-message packet {:?}",
                        other as char
                    )))
                }
            },
        }
    };
    c.quit(false);
    if let Some(b) = &new_body {
        mods.push(Modification::ReplaceBody { length: b.len() });
    }
    stages.push(Stage {
        stage: "eom",
        argument: String::new(),
        verdict: verdict.clone(),
    });

    let mut sender = t.sender.clone();
    let mut recipients = accepted;
    for m in &mods {
        match m {
            Modification::ChangeSender { sender: s, .. } => sender = s.clone(),
            Modification::AddRecipient { recipient, .. } => recipients.push(recipient.clone()),
            Modification::DeleteRecipient { recipient } => recipients.retain(|r| r != recipient),
            _ => {}
        }
    }
    let original = join_message(&headers, &body);
    let result = apply(&t.message, &mods, new_body.as_deref());
    let diff = unified_diff(&original, &result, "submitted", "filtered");
    let mut out = finish(stages, verdict, t);
    out.modifications = mods;
    out.sender = sender;
    out.recipients = recipients;
    out.result = result;
    out.diff = diff;
    Ok(out)
}

/// A unified diff (3 lines of context) of two texts, line by line, as
/// diff(1) prints it. Empty when they are equal.
pub fn unified_diff(a: &[u8], b: &[u8], a_name: &str, b_name: &str) -> String {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    similar::TextDiff::from_lines(a.as_ref(), b.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string()
}

/// Human-readable report.
pub fn render_text(o: &Outcome) -> String {
    let mut s = String::new();
    let mut k = 0;
    while k < o.stages.len() {
        let st = &o.stages[k];
        // A run of header stages with the same verdict is one line.
        let run = o.stages[k..]
            .iter()
            .take_while(|x| x.stage == "header" && x.verdict == st.verdict)
            .count();
        let (stage, arg) = if run > 1 {
            ("headers", format!("{run} fields"))
        } else {
            (st.stage, st.argument.clone())
        };
        let reply = st
            .verdict
            .smtp_reply()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<8} {:<40} {}{}\n",
            stage,
            arg,
            st.verdict.word(),
            reply
        ));
        k += run.max(1);
    }
    s.push_str(&format!(
        "\nverdict: {}\nSMTP reply: {}\n",
        o.final_verdict.word(),
        o.smtp_reply
    ));
    if !o.modifications.is_empty() {
        s.push_str("changes:\n");
        for m in &o.modifications {
            let line = match m {
                Modification::AddHeader { name, value } => format!("add header {name}: {value}"),
                Modification::InsertHeader { index, name, value } => {
                    format!("insert header at {index}: {name}: {value}")
                }
                Modification::ChangeHeader { index, name, value } if value.is_empty() => {
                    format!("delete header {name} #{index}")
                }
                Modification::ChangeHeader { index, name, value } => {
                    format!("change header {name} #{index}: {value}")
                }
                Modification::AddRecipient {
                    recipient,
                    args: Some(a),
                } => format!("add recipient {recipient} {a}"),
                Modification::AddRecipient {
                    recipient,
                    args: None,
                } => format!("add recipient {recipient}"),
                Modification::DeleteRecipient { recipient } => {
                    format!("delete recipient {recipient}")
                }
                Modification::ChangeSender { sender, .. } => format!("change sender to {sender}"),
                Modification::ReplaceBody { length } => format!("replace body ({length} bytes)"),
                Modification::Quarantine { reason } => format!("quarantine (hold): {reason}"),
            };
            s.push_str(&format!("  {}\n", line.replace("\r\n", " ")));
        }
    }
    if o.stages.last().is_some_and(|st| st.stage == "eom") {
        s.push_str(&format!(
            "envelope: from {} to {}\n",
            o.sender,
            o.recipients.join(", ")
        ));
    }
    if !o.diff.is_empty() {
        s.push('\n');
        s.push_str(&o.diff);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_headers_with_continuations_and_crlf_body() {
        let (h, b) = split_message(b"From: a@b\nSubject: one\n two\nX:\n\nline1\nline2\n");
        assert_eq!(
            h,
            [
                ("From".into(), "a@b".into()),
                ("Subject".into(), "one\r\n two".into()),
                ("X".into(), "".into())
            ]
        );
        assert_eq!(b, b"line1\r\nline2\r\n");
        assert_eq!(
            join_message(&h, &b),
            b"From: a@b\nSubject: one\n two\nX: \n\nline1\nline2\n"
        );
    }

    #[test]
    fn applies_header_changes_like_postfix() {
        let msg = b"A: 1\nB: 2\nA: 3\n\nbody\n";
        let mods = vec![
            Modification::ChangeHeader {
                index: 2,
                name: "a".into(),
                value: "three".into(),
            },
            Modification::ChangeHeader {
                index: 1,
                name: "B".into(),
                value: "".into(),
            },
            Modification::InsertHeader {
                index: 0,
                name: "First".into(),
                value: "x".into(),
            },
            Modification::AddHeader {
                name: "Last".into(),
                value: "y".into(),
            },
            Modification::ChangeHeader {
                index: 1,
                name: "New".into(),
                value: "z".into(),
            },
            Modification::ChangeHeader {
                index: 5,
                name: "Absent".into(),
                value: "".into(),
            },
        ];
        assert_eq!(
            apply(msg, &mods, None),
            b"First: x\nA: 1\nA: three\nLast: y\nNew: z\n\nbody\n"
        );
        assert_eq!(
            apply(msg, &[], Some(b"new\r\nbody\r\n")),
            b"A: 1\nB: 2\nA: 3\n\nnew\nbody\n"
        );
    }

    #[test]
    fn unified_diff_has_hunks_with_context() {
        let a = b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
        let b = b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\nELEVEN\n12\n";
        assert_eq!(
            unified_diff(a, b, "a", "b"),
            "--- a\n+++ b\n@@ -1,3 +1,4 @@\n+0\n 1\n 2\n 3\n@@ -8,5 +9,5 @@\n 8\n 9\n 10\n-11\n+ELEVEN\n 12\n"
        );
        assert_eq!(unified_diff(a, a, "a", "b"), "");
        assert_eq!(unified_diff(b"x", b"y", "a", "b"), "--- a\n+++ b\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n\\ No newline at end of file\n");
    }

    #[test]
    fn postfix_style_specs_are_accepted() {
        assert_eq!(
            parse_spec("inet:127.0.0.1:8872").unwrap(),
            parse_spec("inet:8872@127.0.0.1").unwrap()
        );
        assert!(matches!(
            parse_spec("unix:/x/y.sock").unwrap(),
            SockSpec::Unix(_)
        ));
        assert!(parse_spec("inet:notaport@127.0.0.1").is_err());
    }
}
