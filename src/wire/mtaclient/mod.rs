//! The MTA's side of the milter protocol (protocol/milter.md §16): the one
//! client that `mm-try`, the Rust tests and the benchmarks use to play an
//! MTA against a milter. The server side is indymilter's.
//!
//! Two layers. Packets (`send`, `recv`) for callers that check exact bytes
//! or send malformed ones; and the SMTP stages (`negotiate`, `step` and its
//! named forms, `end_of_message`), which honour what the milter declined in
//! the negotiation. Replies come back as [`Packet`]s so that tests can
//! compare them byte for byte; [`Verdict`], [`Modification`] and
//! [`EomReply`] are their typed reading.
//!
//! We do not use the `miltr-client` crate: its 0.1 releases cannot send
//! macros and cannot decode "change sender" or "add recipient with
//! parameters", both of which Mailmunge filters use.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::sockspec::SockSpec;

mod typed;

pub use typed::{EomReply, Modification, Verdict};

/// Largest body chunk libmilter accepts (an MTA never sends more at once).
pub const BODY_CHUNK: usize = 65535;
/// Largest packet we accept from the milter.
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// SMFIP_NOBODY: the milter does not want the body chunks.
pub const P_NOBODY: u32 = 0x10;

/// Why a conversation with the milter failed.
#[derive(Debug, thiserror::Error)]
pub enum MtaError {
    #[error("cannot connect to the milter: {0}")]
    Connect(std::io::Error),
    #[error("talking to the milter: {0}")]
    Io(#[from] std::io::Error),
    #[error("milter protocol error: the milter closed the connection")]
    Closed,
    #[error("milter protocol error: no answer from the milter within the timeout")]
    Timeout,
    #[error("milter protocol error: {0}")]
    Protocol(String),
}

/// One milter packet: the command or reply letter and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: u8,
    pub data: Vec<u8>,
}

impl Packet {
    /// The milter's `y` (SMTP reply) packet carrying `text` as a C string.
    pub fn reply(text: &str) -> Packet {
        Packet {
            kind: b'y',
            data: nul_join(&[text.as_bytes()]),
        }
    }

    /// True for the packets that end a stage or a message (the verdicts).
    fn is_verdict(&self) -> bool {
        matches!(self.kind, b'c' | b'a' | b'r' | b't' | b'd' | b'y')
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}' {:?}",
            self.kind as char,
            String::from_utf8_lossy(&self.data)
        )
    }
}

/// What the MTA offers in the negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub version: u32,
    /// Modification actions the MTA can perform (SMFIF_*).
    pub actions: u32,
    /// Protocol steps and options the MTA can honour (SMFIP_*).
    pub protocol: u32,
}

impl Offer {
    /// What Postfix 3 offers: version 6, every action, every protocol bit.
    pub const POSTFIX: Offer = Offer {
        version: 6,
        actions: 0x1ff,
        protocol: 0x1f_ffff,
    };

    /// Postfix's offer without SMFIP_HDR_LEADSPC, so header values travel
    /// without their leading space whatever the milter asks (mm-try).
    pub const NO_LEADSPC: Offer = Offer {
        protocol: 0x0f_ffff,
        ..Offer::POSTFIX
    };

    fn encode(self) -> Vec<u8> {
        [self.version, self.actions, self.protocol]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }
}

/// A stage of the SMTP transaction before end of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
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
    pub fn name(self) -> &'static str {
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

    /// (command letter, the milter's "do not send" bit, its "no reply"
    /// bit). The letter also names the stage in a macro packet.
    fn wire(self) -> (u8, u32, u32) {
        match self {
            Step::Connect => (b'C', 0x1, 0x1000),
            Step::Helo => (b'H', 0x2, 0x2000),
            Step::Mail => (b'M', 0x4, 0x4000),
            Step::Rcpt => (b'R', 0x8, 0x8000),
            Step::Data => (b'T', 0x200, 0x10000),
            Step::Header => (b'L', 0x20, 0x80),
            Step::Eoh => (b'N', 0x40, 0x40000),
            Step::Body => (b'B', P_NOBODY, 0x80000),
        }
    }
}

/// What the milter sent at end of message: the changes (a new body's
/// chunks among them) in order, then the verdict.
#[derive(Debug, Clone)]
pub struct Eom {
    pub changes: Vec<Packet>,
    pub verdict: Packet,
}

impl Eom {
    /// The typed reading: verdict, modifications, new body.
    pub fn decode(&self) -> Result<EomReply, MtaError> {
        EomReply::decode(self)
    }
}

/// Either kind of connected stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to a milter, played from the MTA's side.
pub struct MtaClient {
    s: Box<dyn Io>,
    /// Bound on each read and write (none: wait as long as it takes).
    timeout: Option<Duration>,
    /// The protocol bits of the milter's negotiation reply.
    protocol: u32,
}

impl MtaClient {
    /// Wraps a connected stream. Until `negotiate`, every stage is sent and
    /// answered.
    pub fn new(s: impl Io + 'static) -> MtaClient {
        MtaClient {
            s: Box::new(s),
            timeout: None,
            protocol: 0,
        }
    }

    /// Connects to the milter at `spec` (TCP without Nagle, as each command
    /// is a small write), giving up after `timeout`.
    pub async fn connect(
        spec: &SockSpec,
        timeout: Option<Duration>,
    ) -> Result<MtaClient, MtaError> {
        let stream = bounded(timeout, spec.connect())
            .await
            .map_err(|e| match e {
                MtaError::Io(e) => MtaError::Connect(e),
                MtaError::Timeout => MtaError::Connect(std::io::ErrorKind::TimedOut.into()),
                e => e,
            })?;
        Ok(MtaClient::new(stream).with_timeout(timeout))
    }

    /// Bounds each later read and write by `timeout`.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> MtaClient {
        self.timeout = timeout;
        self
    }

    /// Sends one packet.
    pub async fn send(&mut self, kind: u8, data: &[u8]) -> Result<(), MtaError> {
        let mut p = Vec::with_capacity(5 + data.len());
        p.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
        p.push(kind);
        p.extend_from_slice(data);
        bounded(self.timeout, self.s.write_all(&p)).await
    }

    /// Sends bytes exactly as given, framed or not: for tests of what the
    /// milter does with malformed input.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), MtaError> {
        bounded(self.timeout, self.s.write_all(bytes)).await
    }

    /// Reads one packet; `None` when the milter closed the connection
    /// between packets.
    pub async fn recv(&mut self) -> Result<Option<Packet>, MtaError> {
        let mut len = [0u8; 4];
        match bounded(self.timeout, self.s.read_exact(&mut len)).await {
            Err(MtaError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(None)
            }
            r => r?,
        };
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(MtaError::Protocol(format!("bad packet length {len}")));
        }
        let mut buf = vec![0u8; len];
        bounded(self.timeout, self.s.read_exact(&mut buf)).await?;
        let kind = buf.remove(0);
        Ok(Some(Packet { kind, data: buf }))
    }

    /// The next packet that is not a progress report.
    pub async fn reply(&mut self) -> Result<Packet, MtaError> {
        loop {
            match self.recv().await?.ok_or(MtaError::Closed)? {
                p if p.kind == b'p' => continue,
                p => return Ok(p),
            }
        }
    }

    /// Offers `offer` and returns the milter's reply, whose protocol bits
    /// decide from then on which stages are sent and answered.
    pub async fn negotiate(&mut self, offer: Offer) -> Result<Packet, MtaError> {
        self.send(b'O', &offer.encode()).await?;
        let p = self.recv().await?.ok_or(MtaError::Closed)?;
        if p.kind != b'O' || p.data.len() < 12 {
            return Err(MtaError::Protocol(format!(
                "bad negotiation reply {:?}",
                p.kind as char
            )));
        }
        self.protocol = u32::from_be_bytes(p.data[8..12].try_into().expect("4 bytes"));
        Ok(p)
    }

    /// True when the milter asked not to be sent `step`.
    pub fn declines(&self, step: Step) -> bool {
        self.protocol & step.wire().1 != 0
    }

    /// Sends the macros of a stage (the stage's command letter, then name
    /// and value pairs).
    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) -> Result<(), MtaError> {
        let mut d = vec![stage];
        for (name, value) in pairs {
            d.extend_from_slice(&nul_join(&[name.as_bytes(), value.as_bytes()]));
        }
        self.send(b'D', &d).await
    }

    /// Plays one stage: its macros (when there are any), the command, and
    /// the reply. `None` when the milter declined the stage (nothing is
    /// sent) or its reply.
    pub async fn step(
        &mut self,
        step: Step,
        macros: &[(&str, &str)],
        data: &[u8],
    ) -> Result<Option<Packet>, MtaError> {
        let (cmd, declined, no_reply) = step.wire();
        if self.protocol & declined != 0 {
            return Ok(None);
        }
        if !macros.is_empty() {
            self.macros(cmd, macros).await?;
        }
        self.send(cmd, data).await?;
        if self.protocol & no_reply != 0 {
            return Ok(None);
        }
        self.reply().await.map(Some)
    }

    /// SMFIC_CONNECT for a client at `addr` (IPv4 or IPv6), port `port`.
    pub async fn connect_info(
        &mut self,
        host: &str,
        addr: &str,
        port: u16,
    ) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Connect, &[], &connect_data(host, addr, port))
            .await
    }

    pub async fn helo(&mut self, name: &str) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Helo, &[], &nul_join(&[name.as_bytes()]))
            .await
    }

    /// MAIL FROM: the address, then its ESMTP arguments.
    pub async fn mail(&mut self, args: &[&[u8]]) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Mail, &[], &nul_join(args)).await
    }

    /// RCPT TO: the address, then its ESMTP arguments.
    pub async fn rcpt(&mut self, args: &[&[u8]]) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Rcpt, &[], &nul_join(args)).await
    }

    pub async fn data(&mut self) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Data, &[], &[]).await
    }

    /// One header field, its value without the space after the colon.
    pub async fn header(&mut self, name: &[u8], value: &[u8]) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Header, &[], &nul_join(&[name, value]))
            .await
    }

    pub async fn eoh(&mut self) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Eoh, &[], &[]).await
    }

    /// One body chunk (at most [`BODY_CHUNK`] bytes, CRLF line ends).
    pub async fn body(&mut self, chunk: &[u8]) -> Result<Option<Packet>, MtaError> {
        self.step(Step::Body, &[], chunk).await
    }

    /// End of message (after its macros, when there are any): collects the
    /// changes until the verdict. A packet that is neither is an error.
    pub async fn end_of_message(&mut self, macros: &[(&str, &str)]) -> Result<Eom, MtaError> {
        if !macros.is_empty() {
            self.macros(b'E', macros).await?;
        }
        self.send(b'E', &[]).await?;
        let mut changes = Vec::new();
        loop {
            let p = self.reply().await?;
            if p.is_verdict() {
                return Ok(Eom {
                    changes,
                    verdict: p,
                });
            }
            if !typed::is_change(p.kind) {
                return Err(MtaError::Protocol(format!(
                    "unexpected end-of-message packet {:?}",
                    p.kind as char
                )));
            }
            changes.push(p);
        }
    }

    /// Ends the session, first aborting a message that was started but not
    /// finished. Callers that already have their answer may ignore the
    /// error of a milter that is already gone.
    pub async fn quit(&mut self, abort: bool) -> Result<(), MtaError> {
        if abort {
            self.send(b'A', &[]).await?;
        }
        self.send(b'Q', &[]).await
    }
}

/// Runs an I/O future, within `timeout` when there is one.
async fn bounded<T>(
    timeout: Option<Duration>,
    f: impl Future<Output = std::io::Result<T>>,
) -> Result<T, MtaError> {
    match timeout {
        None => Ok(f.await?),
        Some(d) => Ok(tokio::time::timeout(d, f)
            .await
            .map_err(|_| MtaError::Timeout)??),
    }
}

/// Strings each followed by a NUL, as stage commands carry them.
pub fn nul_join(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// SMFIC_CONNECT's payload: host name, family (`4` or `6`), port, address.
pub fn connect_data(host: &str, addr: &str, port: u16) -> Vec<u8> {
    let mut d = nul_join(&[host.as_bytes()]);
    d.push(if addr.contains(':') { b'6' } else { b'4' });
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(&nul_join(&[addr.as_bytes()]));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_payload_names_the_family() {
        assert_eq!(
            connect_data("h", "192.0.2.1", 25),
            b"h\x004\x00\x19192.0.2.1\x00"
        );
        assert_eq!(connect_data("h", "::1", 1), b"h\x006\x00\x01::1\x00");
    }

    #[test]
    fn offers_encode_as_three_words() {
        assert_eq!(
            Offer::POSTFIX.encode(),
            [0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]
        );
        assert_eq!(Offer::NO_LEADSPC.encode()[8..], [0, 0x0f, 0xff, 0xff]);
    }

    /// A scripted milter on the other end of a socket pair.
    async fn pair() -> (MtaClient, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (MtaClient::new(a), b)
    }

    async fn milter_sends(s: &mut tokio::net::UnixStream, kind: u8, data: &[u8]) {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend_from_slice(data);
        s.write_all(&p).await.unwrap();
    }

    #[tokio::test]
    async fn declined_stages_are_not_sent_and_no_reply_ones_not_awaited() {
        let (mut c, mut m) = pair().await;
        let mut reply = Vec::new();
        for v in [6u32, 0x1ff, 0x2 | 0x4000] {
            reply.extend_from_slice(&v.to_be_bytes());
        }
        milter_sends(&mut m, b'O', &reply).await;
        c.negotiate(Offer::POSTFIX).await.unwrap();
        assert!(c.declines(Step::Helo) && !c.declines(Step::Mail));
        assert_eq!(c.helo("x").await.unwrap(), None);
        assert_eq!(c.mail(&[b"<a@b>"]).await.unwrap(), None);
        milter_sends(&mut m, b'p', b"").await;
        milter_sends(&mut m, b't', b"").await;
        let r = c.rcpt(&[b"<c@d>"]).await.unwrap().unwrap();
        assert_eq!(r.kind, b't');
        drop(c);
        // What reached the milter: the offer, MAIL, RCPT; no HELO.
        let mut seen = Vec::new();
        m.read_to_end(&mut seen).await.unwrap();
        let kinds: Vec<u8> = packets(&seen).iter().map(|p| p.0).collect();
        assert_eq!(kinds, b"OMR");
    }

    fn packets(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while b.len() >= 5 {
            let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            v.push((b[4], b[5..4 + len].to_vec()));
            b = &b[4 + len..];
        }
        v
    }

    #[tokio::test]
    async fn end_of_message_collects_changes_and_refuses_strangers() {
        let (mut c, mut m) = pair().await;
        milter_sends(&mut m, b'h', b"X-A\0b\0").await;
        milter_sends(&mut m, b'p', b"").await;
        milter_sends(&mut m, b'b', b"new").await;
        milter_sends(&mut m, b'y', b"451 4.3.0 later\0").await;
        let e = c.end_of_message(&[("i", "Q1")]).await.unwrap();
        assert_eq!(e.changes.len(), 2);
        assert_eq!(e.verdict, Packet::reply("451 4.3.0 later"));

        milter_sends(&mut m, b'Z', b"").await;
        let err = c.end_of_message(&[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "milter protocol error: unexpected end-of-message packet 'Z'"
        );
    }

    #[tokio::test]
    async fn end_of_file_is_none_and_a_silent_milter_times_out() {
        let (c, m) = pair().await;
        let mut c = c.with_timeout(Some(Duration::from_millis(50)));
        assert!(matches!(c.recv().await, Err(MtaError::Timeout)));
        drop(m);
        assert_eq!(c.recv().await.unwrap(), None);
        assert!(matches!(c.reply().await, Err(MtaError::Closed)));
    }
}
