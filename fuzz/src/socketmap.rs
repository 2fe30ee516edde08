//! The Sendmail socketmap server (src/wire/socketmap.rs): a stream of netstring
//! requests on one connection, each answered from a scripted lookup.
//!
//! Input: a byte choosing the lookup outcome, a 16-bit length and that
//! many bytes of worker reply, then the client's byte stream. The replies
//! must be exactly those of a reference reading of the stream, which
//! stops at the first unreadable request as the server closes there.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mailmunge::cformat::number::scan_int;
use mailmunge::cformat::string::until_nul;
use mailmunge::wire::socketmap::{self, encode_netstring, parse_request, MapOutcome, Request};
use mailmunge::wire::sockspec::SockSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cursor;

struct Fixture {
    socket: PathBuf,
    outcome: Arc<Mutex<MapOutcome>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let socket = crate::scratch_dir("socketmap").join("map.sock");
        let outcome = Arc::new(Mutex::new(MapOutcome::NoFreeWorkers));
        let spec = SockSpec::parse_mux(socket.to_str().expect("UTF-8 path")).expect("spec");
        let o = outcome.clone();
        crate::block_on(async move {
            let listener = spec.bind(5).expect("bind");
            let handler = move |req: socketmap::MapRequest| {
                let o = o.lock().unwrap().clone();
                async move {
                    let cmd = req.worker_command();
                    let words = cmd.split(|&b| b == b' ').count();
                    assert!(cmd.ends_with(b"\n") && words == 3, "{cmd:?}");
                    o
                }
            };
            let cfg = socketmap::Config {
                reply_timeout: Duration::from_secs(600),
                request_timeout: Some(Duration::from_secs(600)),
            };
            tokio::spawn(socketmap::run(listener, handler, cfg, std::future::pending()));
        });
        Fixture { socket, outcome }
    })
}

fn outcome(sel: u8, reply: &[u8]) -> MapOutcome {
    match sel % 8 {
        0 | 1 | 2 => MapOutcome::Reply(reply.to_vec()),
        3 => MapOutcome::NoFreeWorkers,
        4 => MapOutcome::ActivationFailed,
        5 => MapOutcome::CouldNotSend,
        6 => MapOutcome::BusyTimeout,
        _ => MapOutcome::TempFail(String::from_utf8_lossy(reply).into_owned()),
    }
}

pub fn run(data: &[u8]) {
    let f = fixture();
    let mut c = Cursor(data);
    let sel = c.byte();
    let n = usize::from(c.u16());
    let o = outcome(sel, c.take(n));
    let stream = c.rest();
    *f.outcome.lock().unwrap() = o.clone();

    let want = reference(stream, &o.payload());
    let got = crate::block_on(exchange(&f.socket, stream));
    assert_eq!(got, want);
}

async fn exchange(socket: &std::path::Path, stream: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let (mut rd, mut wr) = s.split();
    let write = async {
        // The server closes at the first bad request, maybe before reading all.
        let _ = wr.write_all(stream).await;
        let _ = wr.shutdown().await;
    };
    let mut out = Vec::new();
    let read = rd.read_to_end(&mut out);
    let (_, r) = tokio::join!(write, read);
    let _ = r;
    out
}

/// The replies the server owes for `stream`: requests are `<len>:` (a
/// number as `%d` reads it from the first 16 bytes before the colon, at
/// most 65536) and `len + 1` bytes of body; the first request that cannot
/// be read ends the connection.
fn reference(mut stream: &[u8], lookup: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let Some(colon) = stream.iter().position(|&b| b == b':') else { break };
        let prefix = &stream[..colon.min(16)];
        let len = match scan_int(&String::from_utf8_lossy(until_nul(prefix))) {
            Some(n) if (0..=65536).contains(&n) => n as usize,
            _ => break,
        };
        let Some(body) = stream.get(colon + 1..colon + 2 + len) else { break };
        stream = &stream[colon + 2 + len..];
        let payload = match parse_request(body) {
            Request::Refused(p) => p.to_vec(),
            Request::Lookup(m) => {
                assert!(!m.map.contains(&b' ') && !m.map.contains(&0));
                assert!(!m.key.contains(&0));
                lookup.to_vec()
            }
        };
        match encode_netstring(&payload) {
            Some(r) => out.extend(r),
            None => break,
        }
    }
    out
}
