//! The notifier socket (src/wire/notify.rs): a listener's subscription lines,
//! split and cut anywhere. Whatever a listener sends, it stays served: a
//! final `?Q` line must take effect and the next `Q` event reach it.

use std::path::PathBuf;
use std::sync::OnceLock;

use mailmunge::wire::notify::{self, Notifier};
use mailmunge::wire::sockspec::SockSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cursor;

struct Fixture {
    socket: PathBuf,
    notifier: Notifier,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let socket = crate::scratch_dir("notify").join("notify.sock");
        let notifier = Notifier::new();
        let spec = SockSpec::parse_mux(socket.to_str().expect("UTF-8 path")).expect("spec");
        let n = notifier.clone();
        crate::block_on(async move {
            let listener = spec.bind(5).expect("bind");
            tokio::spawn(notify::run(listener, n, std::future::pending()));
        });
        Fixture { socket, notifier }
    })
}

pub fn run(data: &[u8]) {
    let f = fixture();
    let mut c = Cursor(data);
    let step = usize::from(c.byte() % 64) + 1;
    let input = c.rest();
    crate::block_on(listen(f, input, step));
}

async fn listen(f: &Fixture, input: &[u8], step: usize) {
    let mut s = tokio::net::UnixStream::connect(&f.socket).await.expect("connect");
    let mut got = Vec::new();
    read_until_suffix(&mut s, &mut got, b"*OK\n").await;
    for piece in input.chunks(step) {
        s.write_all(piece).await.expect("write");
        tokio::task::yield_now().await;
    }
    s.write_all(b"\n?Q\n").await.expect("write");
    while f.notifier.subscribed(b'Q') == 0 {
        tokio::task::yield_now().await;
    }
    f.notifier.send(b"Q fuzz\n");
    read_until_suffix(&mut s, &mut got, b"Q fuzz\n").await;
    drop(s);
    // The slot is free again before the next input connects.
    while f.notifier.listeners() != 0 {
        tokio::task::yield_now().await;
    }
}

async fn read_until_suffix(s: &mut tokio::net::UnixStream, got: &mut Vec<u8>, suffix: &[u8]) {
    while !got.ends_with(suffix) {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "listener closed; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}
