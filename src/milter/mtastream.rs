//! The MTA connection as indymilter reads it, with one repair on the way in.
//!
//! Sendmail reports an IPv6 client in SMFIC_CONNECT as `IPv6:2001:db8::1`
//! (its own address literal syntax). libmilter strips that `IPv6:` prefix
//! before parsing the address; indymilter does not, fails to parse the
//! packet and drops the session, so Sendmail tempfailed every IPv6 client.
//! This adapter splits the inbound byte stream into milter packets and
//! strips the prefix from connect packets; every other packet, and every
//! byte written, passes through unchanged.
//!
//! It also ends a connection itself, with a log line, where indymilter
//! would end it silently or misread it: a packet over `--max-packet`, a
//! packet of length 0 (no command byte: indymilter would take the next
//! packet's first byte as its command) and an unknown command byte; and
//! it logs the first content command that arrives outside a mail
//! transaction, which indymilter ignores without a reply
//! (protocol/SECURITY.md §9).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::sockspec::Stream;

/// Default for `--max-packet`: the largest milter packet (its length
/// field) a connection may send (protocol/SECURITY.md §9). Postfix sends
/// headers of up to 100 KiB in one packet and body chunks of 64 KiB.
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024;

/// Once everything read was handed on, a buffer grown past this is
/// given back, so an idle session keeps (almost) nothing here.
const KEEP_CAPACITY: usize = 512;

/// Room made for one read from the MTA (more when the packet being read
/// is known to be longer, up to its end).
const READ_CHUNK: usize = 16 * 1024;

/// An accepted MTA connection whose connect packets are repaired and whose
/// packets are bounded in size.
#[derive(Debug)]
pub struct MtaStream {
    inner: Stream,
    max_packet: usize,
    /// Bytes read from the MTA: `buf[pos..framed]` are checked (and
    /// possibly repaired) packets ready for indymilter, the last of them
    /// possibly only begun (its rest comes [`MtaStream::direct`]);
    /// `buf[framed..]` the start of a packet still arriving. One buffer,
    /// framed in place: no copy or allocation per packet.
    buf: Vec<u8>,
    pos: usize,
    framed: usize,
    /// Bytes of the packet being read that go from the socket straight
    /// into the reader's memory: its header was checked and it needs no
    /// repair, so the rest is not staged in `buf` (protocol/milter.md §18.8).
    /// While non-zero, `framed == buf.len()`.
    direct: usize,
    /// Set when the MTA sent a packet the adapter refuses: the connection
    /// ends once the packets before it have been read.
    refused: Option<Refusal>,
    eof: bool,
    /// Whether a MAIL command opened a transaction that has not ended.
    in_transaction: bool,
    /// Whether a command outside a transaction was logged already.
    order_logged: bool,
    /// Held for as long as the connection lives (connection counting).
    _open: Option<OpenConnection>,
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct OpenConnection(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnection {
    /// Counts one more connection in `count`; returns the guard and the new
    /// number.
    pub fn new(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> (OpenConnection, usize) {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        (OpenConnection(count.clone()), n)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MtaStream {
    pub fn new(inner: Stream, max_packet: usize, open: Option<OpenConnection>) -> MtaStream {
        MtaStream {
            inner,
            max_packet,
            buf: Vec::new(),
            pos: 0,
            framed: 0,
            direct: 0,
            refused: None,
            eof: false,
            in_transaction: false,
            order_logged: false,
            _open: open,
        }
    }

    /// Frames every complete packet after `framed`, stopping at the first
    /// one refused.
    fn frame(&mut self) {
        loop {
            if self.eof {
                // Whatever is left goes on as it is (a truncated packet
                // is indymilter's to report).
                self.framed = self.buf.len();
                return;
            }
            let rest = &self.buf[self.framed..];
            if rest.len() < 4 {
                return;
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if let Some(r) = check_length(len, self.max_packet)
                .or_else(|| rest.get(4).and_then(|&cmd| check_command(cmd)))
            {
                self.refuse(r);
                return;
            }
            if rest.len() < 4 + len {
                if rest.len() > 4 && rest[4] != b'C' {
                    // Only a connect packet may need repair: the rest of
                    // any other passes through unstaged.
                    let (cmd, missing) = (rest[4], 4 + len - rest.len());
                    self.note_order(cmd);
                    self.direct = missing;
                    self.framed = self.buf.len();
                }
                return;
            }
            self.note_order(rest[4]);
            let start = self.framed;
            let len = match connect_repair_at(&self.buf[start + 4..start + 4 + len]) {
                Some(at) => {
                    // Sendmail's `IPv6:` prefix goes, in place.
                    let at = start + 4 + at;
                    self.buf.drain(at..at + IPV6_TAG.len());
                    let len = len - IPV6_TAG.len();
                    self.buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
                    len
                }
                None => len,
            };
            self.framed = start + 4 + len;
        }
    }

    /// Logs why the connection ends and drops what was not framed.
    fn refuse(&mut self, r: Refusal) {
        crate::mm_log!(
            Warning,
            "{}; connection closed",
            r.describe(self.max_packet)
        );
        self.refused = Some(r);
        self.buf.truncate(self.framed);
    }

    /// Room for the next read: at least [`READ_CHUNK`], or the rest of the
    /// packet being read when its length is known (it is at most
    /// `max_packet`, checked by [`MtaStream::frame`]; only a connect
    /// packet is staged whole).
    fn make_room(&mut self) {
        if self.pos > 0 {
            // Everything before `pos` was handed on.
            self.buf.drain(..self.pos);
            self.framed -= self.pos;
            self.pos = 0;
        }
        let rest = &self.buf[self.framed..];
        let want = if rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            (4 + len).saturating_sub(rest.len()).max(READ_CHUNK)
        } else {
            READ_CHUNK
        };
        self.buf.reserve(want);
    }

    /// Gives the (empty) buffer back unless a mail transaction is open:
    /// an idle session holds none, while a session in a message keeps it
    /// for the next command instead of allocating and freeing it around
    /// every read (protocol/milter.md §18.3, §18.6).
    fn release_if_idle(&mut self) {
        if !self.in_transaction && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Follows MAIL ... end of message, and logs the first content command
    /// that comes outside that span (indymilter skips it without a reply,
    /// as libmilter does, so an MTA doing this would wait for nothing).
    fn note_order(&mut self, cmd: u8) {
        match cmd {
            b'M' => self.in_transaction = true,
            b'A' | b'C' | b'K' | b'Q' => self.in_transaction = false,
            b'R' | b'T' | b'L' | b'N' | b'B' | b'E' => {
                if !self.in_transaction && !self.order_logged {
                    self.order_logged = true;
                    crate::mm_log!(
                        Warning,
                        "milter command '{}' ({}) outside a mail transaction (no MAIL before it); ignored, as are any more on this connection without a log line",
                        cmd as char,
                        command_name(cmd)
                    );
                }
                if cmd == b'E' {
                    self.in_transaction = false;
                }
            }
            _ => {}
        }
    }
}

/// Why the adapter ends a connection (protocol/SECURITY.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The length field is over `--max-packet`.
    Oversized(usize),
    /// The length field is 0: not even a command byte.
    Empty,
    /// A command byte the milter protocol does not have.
    UnknownCommand(u8),
}

impl Refusal {
    fn describe(self, max_packet: usize) -> String {
        match self {
            Refusal::Oversized(len) => format!(
                "milter packet of {len} bytes is over the limit of {max_packet} (--max-packet)"
            ),
            Refusal::Empty => "milter packet of length 0 (it has no command byte)".to_string(),
            Refusal::UnknownCommand(b) => format!("unknown milter command 0x{b:02x}"),
        }
    }
}

/// The command bytes an MTA may send (SMFIC_*, milter protocol 6; the
/// set indymilter parses).
const COMMANDS: &[u8] = b"ABCDEHKLMNOQRTU";

fn check_length(len: usize, max_packet: usize) -> Option<Refusal> {
    if len > max_packet {
        Some(Refusal::Oversized(len))
    } else if len == 0 {
        Some(Refusal::Empty)
    } else {
        None
    }
}

fn check_command(cmd: u8) -> Option<Refusal> {
    (!COMMANDS.contains(&cmd)).then_some(Refusal::UnknownCommand(cmd))
}

fn command_name(cmd: u8) -> &'static str {
    match cmd {
        b'R' => "RCPT",
        b'T' => "DATA",
        b'L' => "header",
        b'N' => "end of headers",
        b'B' => "body chunk",
        b'E' => "end of message",
        _ => "command",
    }
}

/// Sendmail's prefix of an IPv6 client address.
const IPV6_TAG: &[u8] = b"IPv6:";

/// For an SMFIC_CONNECT payload (`C` host NUL family port(2) address NUL)
/// of family `6` whose address starts with `IPv6:`, returns the offset of
/// that prefix in the payload; `None` when nothing needs changing.
fn connect_repair_at(payload: &[u8]) -> Option<usize> {
    if payload.first() != Some(&b'C') {
        return None;
    }
    let host_end = 1 + payload[1..].iter().position(|&b| b == 0)?;
    let family_at = host_end + 1;
    if payload.get(family_at) != Some(&b'6') {
        return None;
    }
    let addr_at = family_at + 3;
    let addr = payload.get(addr_at..)?;
    if addr.len() < IPV6_TAG.len() || !addr[..IPV6_TAG.len()].eq_ignore_ascii_case(IPV6_TAG) {
        return None;
    }
    Some(addr_at)
}

/// The payload without its `IPv6:` prefix; `None` when nothing needs
/// changing (the tests' view of [`connect_repair_at`]).
#[cfg(test)]
fn repair_connect(payload: &[u8]) -> Option<Vec<u8>> {
    let at = connect_repair_at(payload)?;
    let mut fixed = payload.to_vec();
    fixed.drain(at..at + IPV6_TAG.len());
    Some(fixed)
}

impl AsyncRead for MtaStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.framed {
                let n = out.remaining().min(this.framed - this.pos);
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.buf.len() {
                    this.buf.clear();
                    this.pos = 0;
                    this.framed = 0;
                    this.release_if_idle();
                }
                return Poll::Ready(Ok(()));
            }
            if this.direct > 0 {
                return this.read_direct(cx, out);
            }
            if let Some(r) = this.refused {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    r.describe(this.max_packet),
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.make_room();
            let mut rb = ReadBuf::uninit(this.buf.spare_capacity_mut());
            let filled = match read_into(&mut this.inner, cx, &mut rb) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if this.buf.is_empty() {
                        this.release_if_idle();
                    }
                    return Poll::Pending;
                }
            };
            // SAFETY: the read initialised `filled` bytes of the spare
            // capacity, right after the current length.
            unsafe { this.buf.set_len(this.buf.len() + filled) };
            if filled == 0 {
                this.eof = true;
            }
            this.frame();
        }
    }
}

/// One read from the MTA into the empty `rb`, which borrows memory of the
/// caller's: the number of bytes read. The callers mark those bytes
/// initialised in their own memory, which is only sound if the reader
/// filled `rb` and did not put another buffer in its place: checked.
fn read_into(
    inner: &mut Stream,
    cx: &mut Context<'_>,
    rb: &mut ReadBuf<'_>,
) -> Poll<io::Result<usize>> {
    let start = rb.filled().as_ptr();
    match Pin::new(inner).poll_read(cx, rb) {
        Poll::Ready(Ok(())) => {
            assert_eq!(start, rb.filled().as_ptr());
            Poll::Ready(Ok(rb.filled().len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl MtaStream {
    /// Reads the rest of a checked packet from the socket straight into
    /// `out` (at most [`MtaStream::direct`] bytes): one copy fewer than
    /// staging it in `buf`.
    fn read_direct(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            // A read of 0 bytes must not look like the end of the stream.
            return Poll::Ready(Ok(()));
        }
        let n = match read_into(&mut self.inner, cx, &mut out.take(self.direct)) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                self.release_if_idle();
                return Poll::Pending;
            }
        };
        if n == 0 {
            // The MTA went away inside a packet: the reader sees the end
            // (a truncated packet is indymilter's to report).
            self.eof = true;
            self.direct = 0;
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the read initialised these `n` bytes of `out`'s
        // unfilled part, right after what was filled.
        unsafe { out.assume_init(n) };
        out.advance(n);
        self.direct -= n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MtaStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(payload);
        p
    }

    fn connect(family: u8, addr: &[u8]) -> Vec<u8> {
        let mut p = b"Cmx.example\0".to_vec();
        p.push(family);
        p.extend_from_slice(&25u16.to_be_bytes());
        p.extend_from_slice(addr);
        p.push(0);
        p
    }

    #[test]
    fn strips_sendmail_ipv6_prefix() {
        assert_eq!(
            repair_connect(&connect(b'6', b"IPv6:0:0:0:0:0:0:0:1")),
            Some(connect(b'6', b"0:0:0:0:0:0:0:1"))
        );
        assert_eq!(
            repair_connect(&connect(b'6', b"ipv6:::1")),
            Some(connect(b'6', b"::1"))
        );
    }

    #[test]
    fn leaves_everything_else_alone() {
        assert_eq!(repair_connect(&connect(b'6', b"::1")), None);
        assert_eq!(repair_connect(&connect(b'4', b"IPv6:1.2.3.4")), None);
        assert_eq!(repair_connect(b"Chost\0U/tmp/sock\0"), None);
        assert_eq!(repair_connect(b"Chost\0"), None);
        assert_eq!(repair_connect(b"Chost-without-nul"), None);
        assert_eq!(repair_connect(b"Hhelo\0"), None);
        assert_eq!(repair_connect(b""), None);
    }

    /// Feeds `input` in `step`-byte pieces through the adapter and returns
    /// what indymilter would read, or the read error.
    async fn through(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = MtaStream::new(Stream::Unix(a), DEFAULT_MAX_PACKET, None);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            let mut b = b;
            for piece in input.chunks(step) {
                if b.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let mut out = Vec::new();
        let r = ours.read_to_end(&mut out).await;
        drop(ours);
        writer.await.unwrap();
        r.map(|_| out)
    }

    /// Sends `p`, then reads exactly its bytes back through `ours`.
    async fn pass(ours: &mut MtaStream, mta: &mut tokio::net::UnixStream, p: &[u8]) {
        mta.write_all(p).await.unwrap();
        let mut got = vec![0u8; p.len()];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(got, p);
    }

    #[tokio::test]
    async fn buffer_kept_in_a_transaction_given_back_after_it() {
        let (a, mut mta) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = MtaStream::new(Stream::Unix(a), DEFAULT_MAX_PACKET, None);
        pass(&mut ours, &mut mta, &packet(b"Hmx.example\0")).await;
        assert_eq!(ours.buf.capacity(), 0, "idle after HELO: nothing held");
        pass(&mut ours, &mut mta, &packet(b"M<a@b>\0")).await;
        pass(&mut ours, &mut mta, &packet(b"R<c@d>\0")).await;
        assert!(ours.buf.capacity() >= READ_CHUNK, "kept within the message");
        pass(&mut ours, &mut mta, &packet(b"E")).await;
        assert_eq!(ours.buf.capacity(), 0, "given back at end of message");
    }

    #[tokio::test]
    async fn frames_split_anywhere_and_repairs_in_place() {
        let mut input = packet(b"O\0\0\0\x06\0\0\x01\xff\0\0\0\0");
        input.extend(packet(&connect(b'6', b"IPv6:2001:db8::1")));
        input.extend(packet(b"Hmx.example\0"));
        let mut want = packet(b"O\0\0\0\x06\0\0\x01\xff\0\0\0\0");
        want.extend(packet(&connect(b'6', b"2001:db8::1")));
        want.extend(packet(b"Hmx.example\0"));
        for step in [1, 3, 7, 1000] {
            assert_eq!(through(&input, step).await.unwrap(), want, "step {step}");
        }
    }

    /// The rest of a packet that needs no repair goes from the socket to
    /// the reader unstaged (protocol/milter.md §18.8); the packets after
    /// it are framed and repaired as before.
    #[tokio::test]
    async fn packet_rest_bypasses_the_buffer() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut chunk = b"B".to_vec();
        chunk.extend_from_slice(&body);
        let (a, mut mta) = tokio::net::UnixStream::pair().unwrap();
        let mut ours = MtaStream::new(Stream::Unix(a), DEFAULT_MAX_PACKET, None);
        pass(&mut ours, &mut mta, &packet(b"M<a@b>\0")).await;
        let p = packet(&chunk);
        let writer = tokio::spawn(async move {
            mta.write_all(&p).await.unwrap();
            mta
        });
        let mut got = vec![0u8; 4 + chunk.len()];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(got, packet(&chunk));
        assert!(
            ours.buf.capacity() < 2 * READ_CHUNK,
            "staged {} bytes of a {}-byte packet",
            ours.buf.capacity(),
            got.len()
        );
        let mut mta = writer.await.unwrap();
        pass(&mut ours, &mut mta, &packet(b"E")).await;

        let mut input = packet(b"Hmx.example\0");
        input.extend(packet(&chunk));
        input.extend(packet(&connect(b'6', b"IPv6:2001:db8::1")));
        input.extend(packet(b"Ltiny\0x\0"));
        let mut want = packet(b"Hmx.example\0");
        want.extend(packet(&chunk));
        want.extend(packet(&connect(b'6', b"2001:db8::1")));
        want.extend(packet(b"Ltiny\0x\0"));
        for step in [5, 4099, 65536, 1 << 20] {
            assert_eq!(through(&input, step).await.unwrap(), want, "step {step}");
        }
    }

    #[tokio::test]
    async fn truncated_input_passes_through_oversized_packets_end_it() {
        let truncated = b"\0\0\0\x10Cabc".to_vec();
        assert_eq!(through(&truncated, 2).await.unwrap(), truncated);
        let mut huge = vec![0x7f, 0xff, 0xff, 0xff];
        huge.extend_from_slice(b"garbage after an absurd length");
        let e = through(&huge, 5).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Exactly at the limit is fine; one byte more is not.
        let mut at = ((DEFAULT_MAX_PACKET) as u32).to_be_bytes().to_vec();
        at.extend(std::iter::repeat_n(b'L', DEFAULT_MAX_PACKET));
        assert_eq!(through(&at, 65536).await.unwrap().len(), at.len());
        let mut over = ((DEFAULT_MAX_PACKET + 1) as u32).to_be_bytes().to_vec();
        over.extend(std::iter::repeat_n(b'L', DEFAULT_MAX_PACKET + 1));
        assert!(through(&over, 65536).await.is_err());
    }

    #[tokio::test]
    async fn empty_packets_and_unknown_commands_end_the_stream_after_what_came_before() {
        let good = packet(b"O\0\0\0\x06\0\0\x01\xff\0\0\0\0");
        for bad in [
            vec![0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 1, b'Q'],
            packet(b"Zjunk"),
            packet(b"\x00"),
        ] {
            let mut input = good.clone();
            input.extend(&bad);
            input.extend(packet(b"Q"));
            for step in [1, 4, 5, 1000] {
                let (a, b) = tokio::net::UnixStream::pair().unwrap();
                let mut ours = MtaStream::new(Stream::Unix(a), DEFAULT_MAX_PACKET, None);
                let mut b = b;
                for piece in input.chunks(step) {
                    b.write_all(piece).await.unwrap();
                }
                let mut out = vec![0u8; good.len()];
                ours.read_exact(&mut out).await.unwrap();
                assert_eq!(out, good, "{bad:?} step {step}");
                let e = ours.read_u8().await.unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?} step {step}");
            }
        }
        // A known command byte waits for the rest of its packet.
        let partial = [0, 0, 0, 9, b'H'];
        assert_eq!(through(&partial, 1).await.unwrap(), partial);
    }

    #[test]
    fn refusals_say_what_was_wrong() {
        assert_eq!(check_length(0, 10), Some(Refusal::Empty));
        assert_eq!(check_length(11, 10), Some(Refusal::Oversized(11)));
        assert_eq!(check_length(10, 10), None);
        assert_eq!(check_command(b'Z'), Some(Refusal::UnknownCommand(b'Z')));
        for &c in COMMANDS {
            assert_eq!(check_command(c), None);
        }
        assert_eq!(
            Refusal::UnknownCommand(0xfe).describe(1),
            "unknown milter command 0xfe"
        );
        assert_eq!(
            Refusal::Empty.describe(1),
            "milter packet of length 0 (it has no command byte)"
        );
    }

    #[tokio::test]
    async fn content_outside_a_transaction_is_noticed_once() {
        let fresh = || {
            let (a, _) = tokio::net::UnixStream::pair().unwrap();
            MtaStream::new(Stream::Unix(a), DEFAULT_MAX_PACKET, None)
        };
        let mut s = fresh();
        s.note_order(b'B');
        assert!(s.order_logged, "body before MAIL");
        let mut s = fresh();
        for c in *b"DMRTLNBE" {
            s.note_order(c);
        }
        assert!(!s.order_logged, "a whole transaction");
        s.note_order(b'R');
        assert!(s.order_logged, "RCPT after the end of message");
        let mut s = fresh();
        for c in *b"MRAB" {
            s.note_order(c);
        }
        assert!(s.order_logged, "body after an abort");
    }
}
