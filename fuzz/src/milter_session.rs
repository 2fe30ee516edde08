//! A whole milter session (src/milter/session.rs and mtastream.rs on
//! indymilter): the MTA's packets from the input, a scripted multiplexor
//! whose verdicts and RESULTS file also come from the input.
//!
//! Input: a flags byte (which checks are on, -y, -N, bare-CR stripping),
//! a byte choosing the verdict and `free` replies, a 16-bit length and
//! that many bytes of RESULTS, then the MTA's byte stream.
//!
//! Checked: nothing panics; every request's working directory lies
//! directly inside the spool; once the session is over the spool is
//! empty again (no working directory left behind).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use mailmunge::milter::mtastream::{MtaStream, DEFAULT_MAX_PACKET};
use mailmunge::milter::session::{callbacks, Config};
use mailmunge::wire::sockspec::Stream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::Cursor;

/// Replies to relayok/helook/senderok/recipok.
const VERDICTS: [&[u8]; 8] = [
    b"ok 1\n",
    b"ok 0 Go%20away 550 5.7.1 0\n",
    b"ok -1 Try%20later 451 4.3.0\n",
    b"ok 2\n",
    b"ok 3\n",
    b"error: no such command\n",
    b"ok 1 Fine 250 2.1.0 0\n",
    b"ok 0 two%0Alines 561 5.07.1\n",
];
const FREE: [&[u8]; 4] = [b"9\n", b"0\n", b"error: busy\n", b""];

/// What the scripted multiplexor answers for the current input.
#[derive(Default)]
struct Script {
    verdict: &'static [u8],
    free: &'static [u8],
    results: Vec<u8>,
}

struct Fixture {
    spool: PathBuf,
    mx_socket: PathBuf,
    script: Arc<Mutex<Script>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::scratch_dir("session");
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).expect("spool");
        let f = Fixture {
            mx_socket: dir.join("mx.sock"),
            spool,
            script: Arc::default(),
        };
        let listener = crate::block_on(async { tokio::net::UnixListener::bind(&f.mx_socket) })
            .expect("multiplexor socket");
        let (script, spool) = (f.script.clone(), f.spool.clone());
        crate::block_on(async move {
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else { continue };
                    tokio::spawn(serve_mux(s, script.clone(), spool.clone()));
                }
            });
        });
        f
    })
}

/// One multiplexor request: one line in, one reply out, close.
async fn serve_mux(s: tokio::net::UnixStream, script: Arc<Mutex<Script>>, spool: PathBuf) {
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await.is_err() {
        return;
    }
    let words: Vec<&[u8]> = line
        .strip_suffix(b"\n")
        .unwrap_or(&line)
        .split(|&b| b == b' ')
        .collect();
    let reply: Vec<u8> = {
        let script = script.lock().unwrap();
        match words[0] {
            b"free" => script.free.to_vec(),
            b"relayok" | b"helook" | b"senderok" | b"recipok" => script.verdict.to_vec(),
            b"scan" => {
                assert_eq!(words.len(), 3, "scan request {line:?}");
                let dir = PathBuf::from(String::from_utf8(mailmunge::wire::percent::decode(words[2])).unwrap());
                assert_eq!(dir.parent(), Some(spool.as_path()), "working directory outside the spool");
                std::fs::write(dir.join("RESULTS"), &script.results).expect("RESULTS");
                std::fs::write(dir.join("NEWBODY"), b"replaced\r\nbody\r\n").expect("NEWBODY");
                b"ok\n".to_vec()
            }
            _ => b"error: Unknown command\n".to_vec(),
        }
    };
    let _ = r.get_mut().write_all(&reply).await;
    let _ = r.get_mut().shutdown().await;
}

/// Hands indymilter one connection, then nothing more.
struct OneConnection(Option<MtaStream>);

impl indymilter::Listener for OneConnection {
    type Io = MtaStream;
    fn poll_accept(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<MtaStream>> {
        match self.0.take() {
            Some(s) => Poll::Ready(Ok(s)),
            None => Poll::Pending,
        }
    }
}

fn config(f: &Fixture, flags: u8, more: u8) -> Config {
    let bit = |n: u8| flags & (1 << n) != 0;
    Config {
        mx_socket: f.mx_socket.clone(),
        spool_dir: f.spool.to_str().expect("UTF-8 path").to_string(),
        relay_check: bit(0),
        helo_check: bit(1),
        sender_check: bit(2),
        rcpt_check: bit(3),
        allow_queue: bit(4),
        reserved_for_loopback: i64::from(more >> 6) - 1,
        equiv_loopback: Some("192.0.2.7".into()),
        see_rejected_rcpts: bit(6),
        setsymlist: bit(5),
        extra_macros: vec!["auth_type".into(), "fuzz".into()],
        scanned_by: "mailmunge-fuzz".into(),
        conserve_fds: more & 8 != 0,
        strip_bare_cr: bit(7),
        keep_failed: false,
        debug: false,
        log_times: false,
        my_ip: Some("192.0.2.1".into()),
        mx_timeout: Some(Duration::from_secs(600)),
        reservations: Default::default(),
    }
}

pub fn run(data: &[u8]) {
    let f = fixture();
    let mut c = Cursor(data);
    let (flags, more) = (c.byte(), c.byte());
    let n = usize::from(c.u16());
    {
        let mut s = f.script.lock().unwrap();
        s.verdict = VERDICTS[usize::from(more & 7)];
        s.free = FREE[usize::from(more >> 4 & 3)];
        s.results = c.take(n).to_vec();
    }
    let mta = c.rest().to_vec();
    let cfg = Arc::new(config(f, flags, more));
    crate::block_on(session(cfg, mta));
    assert_spool_empty(&f.spool);
}

async fn session(cfg: Arc<Config>, input: Vec<u8>) {
    let (ours, mut mta) = tokio::net::UnixStream::pair().expect("socket pair");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let milter = tokio::spawn(indymilter::run(
        OneConnection(Some(MtaStream::new(Stream::Unix(ours), DEFAULT_MAX_PACKET, None))),
        callbacks(cfg),
        indymilter::Config::default(),
        stopped,
    ));
    let (mut rd, mut wr) = mta.split();
    let write = async {
        // The milter may hang up before reading everything.
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
    };
    let mut replies = Vec::new();
    let read = rd.read_to_end(&mut replies);
    let (_, r) = tokio::join!(write, read);
    let _ = r;
    drop(mta);
    let _ = stop.send(());
    milter.await.expect("milter task").expect("milter");
}

fn assert_spool_empty(spool: &Path) {
    let left: Vec<_> = std::fs::read_dir(spool)
        .expect("spool")
        .map(|e| e.expect("entry").path())
        .collect();
    for p in &left {
        let _ = std::fs::remove_dir_all(p);
    }
    assert!(left.is_empty(), "left in the spool: {left:?}");
}
