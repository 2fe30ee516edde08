//! The MTA connection as indymilter reads it, with one repair on the way in.
//!
//! Sendmail reports an IPv6 client in SMFIC_CONNECT as `IPv6:2001:db8::1`
//! (its own address literal syntax). libmilter strips that `IPv6:` prefix
//! before parsing the address; indymilter does not, fails to parse the
//! packet and drops the session, so Sendmail tempfailed every IPv6 client.
//! This adapter splits the inbound byte stream into milter packets and
//! strips the prefix from connect packets; every other packet, and every
//! byte written, passes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::sockspec::Stream;

/// Default for `--max-packet`: the largest milter packet (its length
/// field) a connection may send (protocol/SECURITY.md §9). Postfix sends
/// headers of up to 100 KiB in one packet and body chunks of 64 KiB.
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024;

/// Buffers grown past this are given back once empty, so an idle session
/// keeps little memory.
const KEEP_CAPACITY: usize = 4096;

/// An accepted MTA connection whose connect packets are repaired and whose
/// packets are bounded in size.
#[derive(Debug)]
pub struct MtaStream {
    inner: Stream,
    max_packet: usize,
    /// Bytes read from the MTA and not yet framed.
    raw: Vec<u8>,
    /// Framed (and possibly repaired) bytes ready for indymilter.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Set when the MTA sent a packet over the limit: the connection ends.
    oversized: Option<usize>,
    eof: bool,
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
            raw: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            oversized: None,
            eof: false,
            _open: open,
        }
    }

    /// Moves every complete packet from `raw` to `ready`.
    fn frame(&mut self) {
        loop {
            if self.eof {
                // Whatever is left goes on as it is (a truncated packet
                // is indymilter's to report).
                self.ready.append(&mut self.raw);
                return;
            }
            if self.raw.len() < 4 {
                return;
            }
            let len =
                u32::from_be_bytes([self.raw[0], self.raw[1], self.raw[2], self.raw[3]]) as usize;
            if len > self.max_packet {
                crate::mm_log!(
                    Warning,
                    "milter packet of {len} bytes is over the limit of {} (--max-packet); connection closed",
                    self.max_packet
                );
                self.oversized = Some(len);
                self.raw = Vec::new();
                return;
            }
            if self.raw.len() < 4 + len {
                return;
            }
            let packet: Vec<u8> = self.raw.drain(..4 + len).collect();
            match repair_connect(&packet[4..]) {
                Some(payload) => {
                    self.ready
                        .extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    self.ready.extend_from_slice(&payload);
                }
                None => self.ready.extend_from_slice(&packet),
            }
        }
    }
}

/// For an SMFIC_CONNECT payload (`C` host NUL family port(2) address NUL)
/// of family `6` whose address starts with `IPv6:`, returns the payload
/// without that prefix; `None` when nothing needs changing.
fn repair_connect(payload: &[u8]) -> Option<Vec<u8>> {
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
    if addr.len() < 5 || !addr[..5].eq_ignore_ascii_case(b"IPv6:") {
        return None;
    }
    let mut fixed = Vec::with_capacity(payload.len() - 5);
    fixed.extend_from_slice(&payload[..addr_at]);
    fixed.extend_from_slice(&addr[5..]);
    Some(fixed)
}

impl AsyncRead for MtaStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                    if this.ready.capacity() > KEEP_CAPACITY {
                        this.ready = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(len) = this.oversized {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("milter packet of {len} bytes is over the limit"),
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.raw.is_empty() && this.raw.capacity() > KEEP_CAPACITY {
                this.raw = Vec::new();
            }
            let mut chunk = [0u8; 16384];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    }
                    this.raw.extend_from_slice(rb.filled());
                    this.frame();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
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
        at.extend(std::iter::repeat(b'L').take(DEFAULT_MAX_PACKET));
        assert_eq!(through(&at, 65536).await.unwrap().len(), at.len());
        let mut over = ((DEFAULT_MAX_PACKET + 1) as u32).to_be_bytes().to_vec();
        over.extend(std::iter::repeat(b'L').take(DEFAULT_MAX_PACKET + 1));
        assert!(through(&over, 65536).await.is_err());
    }
}
