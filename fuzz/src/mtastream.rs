//! The inbound MTA stream (src/milter/mtastream.rs): packet framing over
//! reads split anywhere, the packet size limit, and the removal of
//! Sendmail's `IPv6:` prefix from connect packets, the refusal of empty
//! packets and unknown commands. What indymilter reads
//! must equal what a whole-input reference gives, however the bytes arrive.
//!
//! Input: a byte choosing the chunk size, a byte choosing the packet size
//! limit, then the MTA's byte stream.

use mailmunge::milter::mtastream::MtaStream;
use mailmunge::wire::sockspec::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cursor;

pub fn run(data: &[u8]) {
    let mut c = Cursor(data);
    let step = usize::from(c.byte() % 64) + 1;
    let max_packet = usize::from(c.byte()) * 16;
    let input = c.rest().to_vec();
    let want = reference(&input, max_packet);
    let got = crate::block_on(through(input, step, max_packet));
    assert_eq!(got, want);
}

/// What indymilter reads, and whether the stream ended in an error.
async fn through(input: Vec<u8>, step: usize, max_packet: usize) -> (Vec<u8>, bool) {
    let (ours, mut theirs) = tokio::net::UnixStream::pair().expect("socket pair");
    let mut stream = MtaStream::new(Stream::Unix(ours), max_packet, None);
    let write = async move {
        for piece in input.chunks(step) {
            // The stream stops reading after a packet over the limit.
            if theirs.write_all(piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let _ = theirs.shutdown().await;
    };
    let mut out = Vec::new();
    let read = async {
        let r = stream.read_to_end(&mut out).await;
        drop(stream);
        r
    };
    let (_, r) = tokio::join!(write, read);
    (out, r.is_err())
}

/// The stream as the whole input framed at once: complete packets, the
/// connect ones repaired; then an error at a packet over the limit, of
/// length 0 or with an unknown command byte, or else whatever could not
/// be framed, unchanged.
fn reference(input: &[u8], max_packet: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(head) = rest.get(..4) {
        let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        if len > max_packet || len == 0 {
            return (out, true);
        }
        if rest.get(4).is_some_and(|c| !b"ABCDEHKLMNOQRTU".contains(c)) {
            return (out, true);
        }
        if rest.len() < 4 + len {
            break;
        }
        let payload = without_ipv6_tag(&rest[4..4 + len]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        rest = &rest[4 + len..];
    }
    out.extend_from_slice(rest);
    (out, false)
}
/// A connect payload is `C`, host name, NUL, family byte, port (2 bytes),
/// address: for family `6`, an address tagged `IPv6:` loses the tag.
fn without_ipv6_tag(p: &[u8]) -> Vec<u8> {
    let Some(host) = p.strip_prefix(b"C") else {
        return p.to_vec();
    };
    let Some(nul) = host.iter().position(|&b| b == 0) else {
        return p.to_vec();
    };
    let after_host = &host[nul + 1..];
    match after_host {
        [b'6', _, _, addr @ ..] if addr.len() >= 5 && addr[..5].eq_ignore_ascii_case(b"ipv6:") => {
            let keep = p.len() - addr.len();
            [&p[..keep], &addr[5..]].concat()
        }
        _ => p.to_vec(),
    }
}
