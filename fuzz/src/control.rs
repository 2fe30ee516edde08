//! The multiplexor's control sockets (src/mux/control.rs): request framing
//! over reads split anywhere, then the unprivileged socket's dispatch
//! (the built-in commands, whose arguments are parsed here; anything else
//! is refused without reaching a worker).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mailmunge::mux::control::{dispatch, read_request, Access, MAX_CMD_LEN};
use mailmunge::mux::pool::Mux;
use mailmunge::mux::{metrics, Class, Options};
use tokio::io::AsyncWriteExt;

use crate::Cursor;

fn mux() -> &'static Arc<Mux> {
    static MUX: OnceLock<Arc<Mux>> = OnceLock::new();
    MUX.get_or_init(|| Mux::new(Options::parse(["mux", "-x", "3", "-q", "2"]).expect("options")))
}

pub fn run(data: &[u8]) {
    let mut c = Cursor(data);
    let step = usize::from(c.byte() % 64) + 1;
    let input = c.rest();
    let got = crate::block_on(framed(input, step));
    assert_eq!(got, reference(input));
    let Some(line) = got else { return };
    let _ = Class::of(&line);
    let _ = metrics::command_label(&line);
    // An empty reply is fine (`busyworkers` with none busy).
    let _ = crate::block_on(dispatch(mux(), &line, Access::Unprivileged));
}

async fn framed(input: &[u8], step: usize) -> Option<Vec<u8>> {
    let (mut w, mut r) = tokio::io::duplex(256);
    // The reader stops at the first newline: the writer is then abandoned.
    let write = async move {
        for piece in input.chunks(step) {
            let _ = w.write_all(piece).await;
        }
        drop(w);
        std::future::pending::<()>().await
    };
    tokio::select! {
        line = read_request(&mut r, Duration::from_secs(600)) => line,
        _ = write => unreachable!(),
    }
}

/// The request is the first line, without its `\n` and one `\r` before
/// it, cut to `MAX_CMD_LEN - 1` bytes; no `\n`, no request.
fn reference(input: &[u8]) -> Option<Vec<u8>> {
    let end = input.iter().position(|&b| b == b'\n')?;
    let mut line = input[..end.min(MAX_CMD_LEN - 1)].to_vec();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(line)
}
