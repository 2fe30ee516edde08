//! The inbound MTA stream (src/milter/mtastream.rs): packet framing over
//! reads split anywhere, and the removal of Sendmail's `IPv6:` prefix from
//! connect packets. What indymilter reads must equal what a whole-input
//! reference gives, however the bytes arrive.

use mailmunge::milter::mtastream::MtaStream;
use mailmunge::sockspec::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cursor;

/// Packets longer than this pass through unframed (as in the module).
const MAX_PACKET: usize = 1 << 20;

pub fn run(data: &[u8]) {
    let mut c = Cursor(data);
    let step = usize::from(c.byte() % 64) + 1;
    let input = c.rest().to_vec();
    let want = reference(&input);
    let got = crate::block_on(through(input, step));
    assert_eq!(got, want);
}

async fn through(input: Vec<u8>, step: usize) -> Vec<u8> {
    let (ours, mut theirs) = tokio::net::UnixStream::pair().expect("socket pair");
    let mut stream = MtaStream::new(Stream::Unix(ours));
    let write = async move {
        for piece in input.chunks(step) {
            theirs.write_all(piece).await.expect("write");
            tokio::task::yield_now().await;
        }
        theirs.shutdown().await.expect("shutdown");
        theirs
    };
    let mut out = Vec::new();
    let read = stream.read_to_end(&mut out);
    let (_, r) = tokio::join!(write, read);
    r.expect("read");
    out
}

/// The stream as the whole input framed at once: complete packets, the
/// connect ones repaired, then whatever could not be framed, unchanged.
fn reference(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(head) = rest.get(..4) {
        let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        if len > MAX_PACKET || rest.len() < 4 + len {
            break;
        }
        let payload = without_ipv6_tag(&rest[4..4 + len]);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        rest = &rest[4 + len..];
    }
    out.extend_from_slice(rest);
    out
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
