//! The message content callbacks: headers, end of headers and body chunks
//! go to the spool files (protocol/milter.md §3.6–§3.8, §4.4–§4.6).

use std::ffi::CString;

use indymilter::{Context, Status};

use super::cleanup::write_failed;
use super::state::{no_private_data, Msg};
use super::{Config, Conn};
use crate::milter::commands::CommandsBlock;
use crate::milter::spool::{self, BodyFilter};
use crate::mm_log;

pub(super) async fn header(
    cfg: &Config,
    cx: &mut Context<Conn>,
    name: CString,
    value: CString,
) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("header");
    };
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = conn.qid(), "header: no message in progress");
        return Status::Tempfail;
    };
    let (name, value) = (name.as_bytes(), value.as_bytes());
    let mut suspicious = false;
    if note_header(msg, name) {
        // Rendered straight into the queues of INPUTMSG, PRISTINE_HEADERS
        // (the same bytes) and HEADERS; written at the next flush.
        let f = msg.dir.files();
        let input = f.inputmsg.pending_mut();
        let at = input.len();
        suspicious = spool::pristine_header_into(input, name, value);
        let line = &f.inputmsg.pending_mut()[at..];
        f.pristine.pending_mut().extend_from_slice(line);
        spool::headers_line_into(f.headers.pending_mut(), name, value);
    }
    header_commands(
        msg.dir.files().commands.pending_mut(),
        name,
        value,
        suspicious,
    );
    if let Err(e) = msg.dir.settle().await {
        let qid = conn.qid();
        return write_failed(cfg, conn, &qid, e).await;
    }
    Status::Continue
}

/// Counts Content-Type headers and notes MIME-Version; returns whether the
/// header goes to the spool files. Only the first Content-Type reaches the
/// filter; the others are deleted at end of message.
fn note_header(msg: &mut Msg, name: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(b"content-type") {
        msg.content_types += 1;
        return msg.content_types == 1;
    }
    if name.eq_ignore_ascii_case(b"mime-version") {
        msg.seen_mime_version = true;
    }
    true
}

/// Appends the COMMANDS lines of one header (protocol/milter.md §3.6
/// step 4) to `out`; most headers have none.
fn header_commands(out: &mut Vec<u8>, name: &[u8], value: &[u8], suspicious: bool) {
    let letter = if spool::stripped_eq_ignore_case(name, b"subject") {
        Some(b'U')
    } else if spool::stripped_eq_ignore_case(name, b"message-id") {
        Some(b'X')
    } else {
        None
    };
    if !suspicious && letter.is_none() {
        return;
    }
    let mut block = CommandsBlock::new();
    if suspicious {
        block.line(b'!', None);
    }
    if let Some(letter) = letter {
        block.line(letter, Some(&spool::strip_crlf(value)));
    }
    out.extend_from_slice(block.as_bytes());
}

pub(super) async fn eoh(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("eoh");
    };
    conn.set_queueid(&cx.macros);
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = conn.qid(), "eoh: no message in progress");
        return Status::Tempfail;
    };
    msg.body = BodyFilter::new(cfg.strip_bare_cr);
    let f = msg.dir.files();
    f.headers.finish();
    f.pristine.finish();
    f.inputmsg.buffer(b"\n");
    if let Err(e) = msg.dir.settle().await {
        let qid = conn.qid();
        return write_failed(cfg, conn, &qid, e).await;
    }
    Status::Continue
}

pub(super) async fn body(cfg: &Config, cx: &mut Context<Conn>, chunk: bytes::Bytes) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("body");
    };
    conn.set_queueid(&cx.macros);
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = conn.qid(), "body: no message in progress");
        return Status::Tempfail;
    };
    if chunk.is_empty() {
        return Status::Continue;
    }
    msg.body
        .feed_into(&chunk, msg.dir.files().inputmsg.pending_mut());
    if let Err(e) = msg.dir.settle().await {
        let qid = conn.qid();
        return write_failed(cfg, conn, &qid, format!("writen failed: {e}")).await;
    }
    Status::Continue
}
