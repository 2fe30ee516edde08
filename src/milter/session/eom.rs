//! The end of a message: the scan request and reading RESULTS
//! (protocol/milter.md §5.1), or its abort (protocol/milter.md §3.10).

use std::path::Path;
use std::time::Instant;

use indymilter::{Context, EomContext, Macros, Status};

use super::apply::apply_results;
use super::cleanup::{cleanup, filter_failed, write_failed};
use super::mxrequest::mx_request;
use super::smtp_reply::set_reply;
use super::state::no_private_data;
use super::{Config, Conn};
use crate::milter::commands::CommandsBlock;
use crate::milter::reply::Class;
use crate::milter::results;
use crate::milter::spool::SpoolError;
use crate::mm_log;
use crate::sys::blocking;
use crate::wire::mxclient;

pub(super) async fn eom(cfg: &Config, cx: &mut EomContext<Conn>) -> Status {
    let start = Instant::now();
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("eom");
    };
    conn.set_queueid(&cx.macros);
    let qid = conn.qid();
    if conn.msg.is_none() {
        mm_log!(Warning, qid = qid, "eom: no message in progress");
        return Status::Tempfail;
    }
    if let Err(e) = close_files(conn, &cx.macros).await {
        return write_failed(cfg, conn, &qid, e).await;
    }
    let dir = conn.msg.as_ref().expect("checked").dir.path.clone();
    if !scan(cfg, conn, &qid, &dir).await {
        return filter_failed(cfg, conn).await;
    }
    let read = {
        let (qid, dir) = (qid.clone(), dir.clone());
        blocking::run(move || read_results(&qid, &dir)).await
    };
    let Ok(data) = read else {
        return filter_failed(cfg, conn).await;
    };
    let status = match results::parse(&data) {
        Err(e) => {
            // Upstream quirk kept: a worker's overlong line bounces the
            // message (554), it is not tempfailed (protocol/milter.md §10.13).
            mm_log!(Warning, qid = qid, "{e}");
            cleanup(cfg, conn).await;
            set_reply(
                &mut cx.reply,
                &qid,
                Class::Perm,
                Some(b"554"),
                Some(b"5.4.0"),
                Some(b"Overlong line in RESULTS file"),
            );
            Status::Reject
        }
        Ok(res) => apply_results(cfg, conn, &cx.actions, &mut cx.reply, &qid, &dir, res).await,
    };
    if cfg.log_times {
        mm_log!(
            Info,
            qid = conn.qid(),
            "Filter time is {}ms",
            start.elapsed().as_millis()
        );
    }
    status
}

/// Writes the end-of-message COMMANDS block, with everything still
/// queued, and closes the spool files (protocol/milter.md §5.1 steps 2-3).
async fn close_files(conn: &mut Conn, macros: &Macros) -> Result<(), SpoolError> {
    let mut block = CommandsBlock::new();
    conn.pending_qid_lines(macros, &mut block);
    let msg = conn.msg.as_mut().expect("checked");
    if msg.body.suspicious() {
        block.line(b'?', None);
    }
    block.line(b'F', None);
    msg.dir.files().commands.buffer(block.as_bytes());
    msg.dir
        .with_files(move |f| {
            let r = f.flush_all();
            f.close_all();
            r
        })
        .await
}

/// `scan <qid> <dir>`: true when the multiplexor answered exactly `ok\n`;
/// anything else is logged and means the filter failed. Sent on the
/// message's reservation when it has one (protocol/milter.md §17).
async fn scan(cfg: &Config, conn: &mut Conn, qid: &str, dir: &str) -> bool {
    let line = mxclient::request_line("scan", &[conn.qid_bytes(), dir.as_bytes()]);
    let held = conn.msg.as_mut().and_then(|m| m.reservation.take());
    let reserved = match held {
        Some(h) => super::reserve::scan_reserved(cfg, h, qid, &line).await,
        None => None,
    };
    let answer = match reserved {
        Some(answer) => answer,
        None => mx_request(cfg, qid, &line).await,
    };
    match answer {
        Some(ans) if ans == b"ok\n" => true,
        other => {
            if let Some(mut ans) = other {
                if ans.last() == Some(&b'\n') {
                    ans.pop();
                }
                mm_log!(
                    Error,
                    qid = qid,
                    "Error from multiplexor: {}",
                    String::from_utf8_lossy(&ans)
                );
            }
            false
        }
    }
}

/// Reads RESULTS; `Err(())` after logging means "tempfail, filter failed".
/// Blocking: runs on the blocking pool. RESULTS must be a regular file
/// (protocol/SECURITY.md §1): a FIFO would otherwise hold the open forever.
fn read_results(qid: &str, dir: &str) -> Result<Vec<u8>, ()> {
    let path = format!("{dir}/RESULTS");
    let f = match blocking::open_regular(Path::new(&path), std::fs::OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => {
            mm_log!(Warning, qid = qid, "Filter did not create RESULTS file");
            return Err(());
        }
        Err(e) => {
            mm_log!(Warning, qid = qid, "RESULTS file refused: {e}: Tempfailing");
            return Err(());
        }
    };
    let size = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            mm_log!(Warning, qid = qid, "Unable to stat RESULTS file: {e}");
            return Err(());
        }
    };
    if size > results::MAX_SIZE {
        // Upstream quirk kept: the typo `byes` (protocol/milter.md §5.1).
        mm_log!(
            Warning,
            qid = qid,
            "RESULTS file is unreasonably large - {size} byes; max is {} bytes",
            results::MAX_SIZE
        );
        return Err(());
    }
    let mut data = Vec::with_capacity(size as usize);
    use std::io::Read;
    if let Err(e) = f.take(results::MAX_SIZE + 1).read_to_end(&mut data) {
        mm_log!(Warning, qid = qid, "Error reading RESULTS file: {e}");
        return Err(());
    }
    Ok(data)
}

pub(super) async fn abort(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    if let Some(conn) = cx.data.as_mut() {
        cleanup(cfg, conn).await;
    }
    Status::Continue
}
