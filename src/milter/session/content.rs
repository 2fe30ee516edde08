//! The message content callbacks: headers, end of headers and body chunks
//! go to the spool files (protocol/milter.md §3.6–§3.8, §4.4–§4.6).

use std::ffi::CString;

use indymilter::{Context, Status};

use super::cleanup::write_failed;
use super::state::{no_private_data, Msg};
use super::{Config, Conn};
use crate::milter::commands::CommandsBlock;
use crate::milter::spool::{self, pristine_header_line, BodyFilter};
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
    let qid = conn.qid();
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = qid, "header: no message in progress");
        return Status::Tempfail;
    };
    let (name, value) = (name.as_bytes(), value.as_bytes());
    let mut suspicious = false;
    if note_header(msg, name) {
        let (line, s) = pristine_header_line(name, value);
        suspicious = s;
        let headers_line = spool::headers_line(name, value);
        let r = msg
            .dir
            .with_files(move |f| {
                f.inputmsg.append(&line)?;
                f.pristine.append(&line)?;
                f.headers.append(&headers_line)
            })
            .await;
        if let Err(e) = r {
            return write_failed(cfg, conn, &qid, e).await;
        }
    }
    let block = header_commands(name, value, suspicious);
    if !block.is_empty() {
        if let Err(e) = msg.dir.with_files(move |f| f.commands.append(&block)).await {
            return write_failed(cfg, conn, &qid, e).await;
        }
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

/// The COMMANDS lines of one header (protocol/milter.md §3.6 step 4);
/// empty when it has none.
fn header_commands(name: &[u8], value: &[u8], suspicious: bool) -> Vec<u8> {
    let (name, value) = (spool::strip_crlf(name), spool::strip_crlf(value));
    let mut block = CommandsBlock::new();
    if suspicious {
        block.line(b'!', None);
    }
    if name.eq_ignore_ascii_case(b"subject") {
        block.line(b'U', Some(&value));
    } else if name.eq_ignore_ascii_case(b"message-id") {
        block.line(b'X', Some(&value));
    }
    block.as_bytes().to_vec()
}

pub(super) async fn eoh(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("eoh");
    };
    conn.set_queueid(&cx.macros);
    let qid = conn.qid();
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = qid, "eoh: no message in progress");
        return Status::Tempfail;
    };
    msg.body = BodyFilter::new(cfg.strip_bare_cr);
    let r = msg
        .dir
        .with_files(|f| {
            f.headers.close();
            f.pristine.close();
            f.inputmsg.append(b"\n")
        })
        .await;
    if let Err(e) = r {
        return write_failed(cfg, conn, &qid, e).await;
    }
    Status::Continue
}

pub(super) async fn body(cfg: &Config, cx: &mut Context<Conn>, chunk: bytes::Bytes) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("body");
    };
    conn.set_queueid(&cx.macros);
    let qid = conn.qid();
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = qid, "body: no message in progress");
        return Status::Tempfail;
    };
    if chunk.is_empty() {
        return Status::Continue;
    }
    let out = msg.body.feed(&chunk);
    if !out.is_empty() {
        if let Err(e) = msg.dir.with_files(move |f| f.inputmsg.append(&out)).await {
            return write_failed(cfg, conn, &qid, format!("writen failed: {e}")).await;
        }
    }
    Status::Continue
}
