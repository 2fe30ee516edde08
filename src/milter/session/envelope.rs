//! The envelope callbacks: MAIL FROM starts a message in its working
//! directory, RCPT TO adds recipients (protocol/milter.md §3.3, §3.4).

use std::ffi::CString;
use std::path::Path;

use indymilter::{Context, Macros, SmtpReply, Status};

use super::cleanup::{cleanup, write_failed};
use super::mxrequest::check;
use super::smtp_reply::verdict_status;
use super::state::{append_macro, macro_value, no_private_data, Msg};
use super::{Config, Conn};
use crate::milter::commands::{self, CommandsBlock, STANDARD_MACROS};
use crate::milter::reply::Verdict;
use crate::milter::spool::{self, BodyFilter, WorkDir};
use crate::mm_log;
use crate::sys::blocking;
use crate::wire::mxclient;

pub(super) async fn mail(cfg: &Config, cx: &mut Context<Conn>, args: Vec<CString>) -> Status {
    let id = spool::generate_id();
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("envfrom");
    };
    // A queue id never carries over to the next message (upstream's stale
    // qid bug): without an `i` macro now, there is none yet.
    if macro_value(&cx.macros, "i").is_none_or(<[u8]>::is_empty) {
        conn.qid = None;
    }
    conn.set_queueid(&cx.macros);
    conn.qid_written = false;
    let sender = first_arg(&args);
    if !start_message(cfg, conn, &cx.macros, &id, &sender, &args).await {
        return Status::Tempfail;
    }
    if !cfg.sender_check {
        return Status::Continue;
    }
    sender_check(cfg, conn, &mut cx.reply, sender, &args).await
}

/// The command's first argument (the address), empty when there is none.
fn first_arg(args: &[CString]) -> Vec<u8> {
    args.first()
        .map(|a| a.as_bytes().to_vec())
        .unwrap_or_default()
}

/// An empty request field would shift the worker's arguments.
fn or_unknown(v: &[u8]) -> Vec<u8> {
    if v.is_empty() {
        b"UNKNOWN".to_vec()
    } else {
        v.to_vec()
    }
}

/// Creates the message's working directory with its MAIL block of
/// COMMANDS and empty HEADERS and PRISTINE_HEADERS (one trip to the
/// blocking pool), removing the previous message's directory if one was
/// left behind. Returns false after logging and cleaning up when the
/// directory cannot be made or written.
async fn start_message(
    cfg: &Config,
    conn: &mut Conn,
    macros: &Macros,
    id: &str,
    sender: &[u8],
    args: &[CString],
) -> bool {
    let qid = conn.qid();
    let (name, refused) = spool::dir_name(conn.qid.as_deref(), id);
    if let Some(why) = refused {
        mm_log!(
            Warning,
            qid = qid,
            "queue id {:?} {why}: working directory named mm-{id} instead",
            String::from_utf8_lossy(conn.qid.as_deref().unwrap_or_default())
        );
    }
    let name = name.to_string();
    let block = mail_commands(cfg, conn, macros, id, sender, args);
    let created = WorkDir::create(&cfg.spool_dir, &name, cfg.conserve_fds, move |f| {
        f.headers.touch()?;
        f.pristine.touch()?;
        f.commands.append(&block)
    })
    .await;
    let (dir, failure) = match created {
        Ok(d) => (d, None),
        Err((Some(d), e)) => (d, Some(e)),
        Err((None, e)) => {
            write_failed(cfg, conn, &qid, e).await;
            return false;
        }
    };
    mail_block_written(conn);
    // A directory left behind by the previous message goes now, whatever -d/-k say.
    if let Some(old) = conn.msg.take() {
        blocking::run(move || {
            let path = old.dir.into_path();
            if Path::new(&path).exists() {
                let _ = spool::remove_tree(Path::new(&path), &mut |m| mm_log!(Warning, "{m}"));
            }
        })
        .await;
    }
    conn.msg = Some(Box::new(Msg {
        dir,
        sender: sender.to_vec(),
        first_rcpt: None,
        content_types: 0,
        seen_mime_version: false,
        body: BodyFilter::new(cfg.strip_bare_cr),
        filter_failed: false,
        reservation: None,
    }));
    if let Some(e) = failure {
        write_failed(cfg, conn, &qid, e).await;
        return false;
    }
    true
}

/// The MAIL block of COMMANDS (protocol/milter.md §4.7). The connection
/// state it reflects changes only once the block is written
/// ([`mail_block_written`]).
fn mail_commands(
    cfg: &Config,
    conn: &Conn,
    macros: &Macros,
    id: &str,
    sender: &[u8],
    args: &[CString],
) -> Vec<u8> {
    let mut block = CommandsBlock::new();
    block
        .line(b'i', Some(id.as_bytes()))
        .line(b'S', Some(sender));
    for a in args.iter().skip(1) {
        block.line(b's', Some(a.as_bytes()));
    }
    for m in STANDARD_MACROS {
        append_macro(&mut block, macros, m);
    }
    block.macro_line(b"client_port", conn.hostport.to_string().as_bytes());
    for m in &cfg.extra_macros {
        append_macro(&mut block, macros, m);
    }
    if let Some(q) = &conn.qid {
        block.line(b'Q', Some(q));
        append_macro(&mut block, macros, "i");
    }
    block.line(b'H', conn.hostname.as_deref());
    block.line(b'I', conn.hostip.as_deref().map(str::as_bytes));
    if let Some(h) = &conn.helo {
        block.line(b'E', Some(h));
    }
    block.into_bytes()
}

/// The connection state after the MAIL block went to COMMANDS: the queue
/// id is in it, and my address is forgotten when it came from `{if_addr}`.
fn mail_block_written(conn: &mut Conn) {
    // Upstream quirk kept: an address taken from `{if_addr}` is forgotten
    // here, so X-Scanned-By loses ` on <ip>` (protocol/milter.md §10.6).
    if conn.myip_from_macro {
        conn.myip = None;
        conn.myip_from_macro = false;
    }
    if conn.qid.is_some() {
        conn.qid_written = true;
    }
}

/// `senderok` (`-s`); a verdict other than continue ends the message.
async fn sender_check(
    cfg: &Config,
    conn: &mut Conn,
    reply: &mut SmtpReply,
    sender: Vec<u8>,
    args: &[CString],
) -> Status {
    let qid = conn.qid();
    let msg = conn.msg.as_ref().expect("just created");
    let mut fields = vec![
        or_unknown(&sender),
        conn.ip_or_unknown(),
        conn.name_or_ip(),
        conn.helo_field(),
        msg.dir.path.as_bytes().to_vec(),
        conn.qid_bytes().to_vec(),
    ];
    fields.extend(args.iter().skip(1).map(|a| a.as_bytes().to_vec()));
    let line = mxclient::request_line("senderok", &fields);
    let outcome = check(cfg, &qid, &line).await;
    let (status, verdict) = verdict_status(reply, &qid, outcome).await;
    if verdict != Verdict::Continue {
        cleanup(cfg, conn).await;
    }
    status
}

/// `{rcpt_mailer}`, `{rcpt_host}` and `{rcpt_addr}`, `?` when missing or
/// empty; borrowed from the macro table (no copy per recipient,
/// protocol/milter.md §18.6).
struct RcptMacros<'a> {
    mailer: &'a [u8],
    host: &'a [u8],
    addr: &'a [u8],
}

impl<'a> RcptMacros<'a> {
    fn from(m: &'a Macros) -> Self {
        let field = |name| match macro_value(m, name) {
            Some(v) if !v.is_empty() => v,
            _ => b"?".as_slice(),
        };
        RcptMacros {
            mailer: field("rcpt_mailer"),
            host: field("rcpt_host"),
            addr: field("rcpt_addr"),
        }
    }
}

pub(super) async fn rcpt(cfg: &Config, cx: &mut Context<Conn>, args: Vec<CString>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("rcptto");
    };
    conn.set_queueid(&cx.macros);
    if conn.msg.is_none() {
        mm_log!(Warning, qid = conn.qid(), "rcptto: no message in progress");
        return Status::Tempfail;
    }
    queue_pending_qid(conn, &cx.macros);
    let rm = RcptMacros::from(&cx.macros);
    let rcpt = args.first().map_or(&b""[..], |a| a.as_bytes());
    if cfg.rcpt_check {
        // The worker reads COMMANDS for recipok (protocol/milter.md §7.3).
        let msg = conn.msg.as_mut().expect("checked");
        if let Err(e) = msg.dir.flush().await {
            let qid = conn.qid();
            return write_failed(cfg, conn, &qid, e).await;
        }
        if let Some(status) = recipient_check(cfg, conn, &mut cx.reply, rcpt, &rm, &args).await {
            return status;
        }
    }
    let msg = conn.msg.as_mut().expect("checked");
    // Rendered straight into the COMMANDS queue (no block per recipient).
    let queue = msg.dir.files().commands.pending_mut();
    commands::recipient_into(queue, rcpt, rm.mailer, rm.host, rm.addr);
    for a in args.iter().skip(1) {
        commands::line_into(queue, b'r', Some(a.as_bytes()));
    }
    if let Err(e) = msg.dir.settle().await {
        let qid = conn.qid();
        return write_failed(cfg, conn, &qid, e).await;
    }
    Status::Continue
}

/// A queue id learnt since MAIL goes to COMMANDS ahead of the recipient
/// (protocol/milter.md §3.4 step 1), queued with it.
fn queue_pending_qid(conn: &mut Conn, macros: &Macros) {
    let mut qblock = CommandsBlock::new();
    conn.pending_qid_lines(macros, &mut qblock);
    if !qblock.is_empty() {
        let msg = conn.msg.as_mut().expect("checked");
        msg.dir.files().commands.buffer(qblock.as_bytes());
    }
}

/// `recipok` (`-t`). Returns the status when the verdict ends the command
/// (protocol/milter.md §3.11), `None` to go on and record the recipient.
async fn recipient_check(
    cfg: &Config,
    conn: &mut Conn,
    reply: &mut SmtpReply,
    rcpt: &[u8],
    rm: &RcptMacros<'_>,
    args: &[CString],
) -> Option<Status> {
    let qid = conn.qid();
    let (ip, name, helo) = (conn.ip_or_unknown(), conn.name_or_ip(), conn.helo_field());
    let qid_field = conn.qid_bytes().to_vec();
    let msg = conn.msg.as_mut().expect("checked");
    let first = msg.first_rcpt.get_or_insert_with(|| rcpt.to_vec()).clone();
    let mut fields = vec![
        or_unknown(rcpt),
        or_unknown(&msg.sender),
        ip,
        name,
        or_unknown(&first),
        helo,
        msg.dir.path.as_bytes().to_vec(),
        qid_field,
        rm.mailer.to_vec(),
        rm.host.to_vec(),
        rm.addr.to_vec(),
    ];
    fields.extend(args.iter().skip(1).map(|a| a.as_bytes().to_vec()));
    let line = mxclient::request_line("recipok", &fields);
    let outcome = check(cfg, &qid, &line).await;
    let (status, verdict) = verdict_status(reply, &qid, outcome).await;
    match verdict {
        Verdict::Continue => None,
        // A refused recipient keeps the transaction going.
        Verdict::Reject | Verdict::Tempfail => Some(status),
        Verdict::Accept | Verdict::Discard => {
            cleanup(cfg, conn).await;
            Some(status)
        }
    }
}
