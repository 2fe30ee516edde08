//! Applying RESULTS to the MTA: verdicts, header, recipient and body
//! changes, then the closing touches (protocol/milter.md §5.3–§5.5).

use std::ffi::CString;
use std::path::Path;

use indymilter::{ActionError, ContextActions, EomActions, SmtpReply, Status};

use super::cleanup::{cleanup, filter_failed};
use super::smtp_reply::set_reply;
use super::{Config, Conn};
use crate::milter::reply::Class;
use crate::milter::results::{self, Action, Results};
use crate::mm_log;
use crate::sys::blocking;

/// The NEWBODY chunk size of one replacebody packet.
const BODY_CHUNK: usize = 4096;
/// NEWBODY is read this many packets at a time on the blocking pool.
const BODY_CHUNKS_PER_READ: usize = 16;

/// A failed milter action: the C function's name and the error.
type ActionResult = Result<(), (&'static str, ActionError)>;

pub(super) async fn apply_results(
    cfg: &Config,
    conn: &mut Conn,
    actions: &EomActions,
    reply: &mut SmtpReply,
    qid: &str,
    dir: &str,
    res: Results,
) -> Status {
    let Results {
        actions: all,
        rejecting,
        finished,
    } = res;
    // Modifications are skipped when the message is refused.
    let mut to_apply: Vec<Action> = all
        .into_iter()
        .filter(|a| !rejecting || !a.is_modification())
        .collect();
    if !sanitize(qid, &mut to_apply) {
        return filter_failed(cfg, conn).await;
    }
    let seen_mime_version = conn
        .msg
        .as_ref()
        .map(|m| m.seen_mime_version)
        .unwrap_or(true);
    for action in &to_apply {
        if let Some(status) = verdict(cfg, conn, reply, qid, action).await {
            return status;
        }
        if matches!(action, Action::ReplaceBody) && !replace_body(actions, qid, dir).await {
            return filter_failed(cfg, conn).await;
        }
        if let Err((what, e)) = modify(actions, qid, action, seen_mime_version).await {
            action_failed(qid, what, &e);
        }
    }
    if !finished {
        mm_log!(
            Error,
            qid = qid,
            "RESULTS file did not finish with 'F' line: Tempfailing"
        );
        return filter_failed(cfg, conn).await;
    }
    after_f(cfg, conn, actions, qid, rejecting).await
}

/// Refuses values that would inject header lines or break the header
/// grammar before sending anything: a half-applied result is worse. A bare
/// CR in a header value is not worth a tempfail on every retry: it becomes
/// a space (protocol/milter.md §15). Returns false after logging a refusal.
fn sanitize(qid: &str, to_apply: &mut [Action]) -> bool {
    match results::sanitize_actions(to_apply) {
        Err((i, e)) => {
            mm_log!(
                Error,
                qid = qid,
                "RESULTS instruction {} refused: {e}: Tempfailing",
                i + 1
            );
            false
        }
        Ok(replaced) => {
            for i in replaced {
                mm_log!(
                    Warning,
                    qid = qid,
                    "RESULTS instruction {}: bare CR in header value replaced by a space",
                    i + 1
                );
            }
            true
        }
    }
}

/// `B`, `D` and `T` end the message at once; `None` for any other action.
async fn verdict(
    cfg: &Config,
    conn: &mut Conn,
    reply: &mut SmtpReply,
    qid: &str,
    action: &Action,
) -> Option<Status> {
    let status = match action {
        Action::Bounce { code, dsn, text } => {
            mm_log!(Debug, qid = qid, "Bouncing because filter instructed us to");
            let (code, dsn, text) = (code.as_deref(), dsn.as_deref(), text.as_deref());
            set_reply(reply, qid, Class::Perm, code, dsn, text);
            Status::Reject
        }
        Action::Discard => {
            mm_log!(
                Debug,
                qid = qid,
                "Discarding because filter instructed us to"
            );
            Status::Discard
        }
        Action::Tempfail { code, dsn, text } => {
            mm_log!(
                Debug,
                qid = qid,
                "Tempfailing because filter instructed us to"
            );
            let (code, dsn, text) = (code.as_deref(), dsn.as_deref(), text.as_deref());
            set_reply(reply, qid, Class::Temp, code, dsn, text);
            Status::Tempfail
        }
        _ => return None,
    };
    cleanup(cfg, conn).await;
    Some(status)
}

/// Sends one header, recipient, sender or quarantine change to the MTA; the
/// verdicts and the body are not changes of this kind.
async fn modify(
    actions: &EomActions,
    qid: &str,
    action: &Action,
    seen_mime_version: bool,
) -> ActionResult {
    match action {
        Action::Bounce { .. } | Action::Discard | Action::Tempfail { .. } | Action::ReplaceBody => {
            Ok(())
        }
        Action::ContentType(v) => content_type(actions, qid, v, seen_mime_version).await,
        Action::AddHeader { name, value } => actions
            .add_header(cstring(name), cstring(value))
            .await
            .map_err(|e| ("smfi_addheader", e)),
        Action::InsertHeader { index, name, value } => actions
            .insert_header(*index, cstring(name), cstring(value))
            .await
            .map_err(|e| ("smfi_insheader", e)),
        Action::ChangeHeader { name, index, value } => actions
            .change_header(cstring(name), *index, Some(cstring(value)))
            .await
            .map_err(|e| ("smfi_chgheader", e)),
        Action::DeleteHeader { name, index } => actions
            .change_header(cstring(name), *index, None::<CString>)
            .await
            .map_err(|e| ("smfi_chgheader", e)),
        Action::AddRcpt(a) => actions
            .add_recipient(cstring(a))
            .await
            .map_err(|e| ("smfi_addrcpt", e)),
        Action::DeleteRcpt(a) => actions
            .delete_recipient(cstring(a))
            .await
            .map_err(|e| ("smfi_delrcpt", e)),
        Action::ChangeFrom(a) => actions
            .change_sender(cstring(a), None::<CString>)
            .await
            .map_err(|e| ("smfi_chgfrom", e)),
        Action::Quarantine(reason) => quarantine(actions, qid, reason).await,
        Action::Unknown(c) => {
            mm_log!(
                Warning,
                qid = qid,
                "Unknown command '{}' in RESULTS file",
                char::from(*c).escape_default()
            );
            Ok(())
        }
    }
}

/// `M`: a new Content-Type, and MIME-Version when the message had none.
async fn content_type(
    actions: &EomActions,
    qid: &str,
    v: &[u8],
    seen_mime_version: bool,
) -> ActionResult {
    if !v.is_empty() {
        if let Err(e) = actions
            .change_header("Content-Type", 1, Some(cstring(v)))
            .await
        {
            action_failed(qid, "smfi_chgheader", &e);
        }
    }
    if !seen_mime_version {
        actions
            .change_header("MIME-Version", 1, Some("1.0"))
            .await
            .map_err(|e| ("smfi_chgheader", e))
    } else {
        Ok(())
    }
}

/// `Q`: an empty reason fails in libmilter and is only logged.
async fn quarantine(actions: &EomActions, qid: &str, reason: &[u8]) -> ActionResult {
    if reason.is_empty() {
        mm_log!(
            Warning,
            qid = qid,
            "do_sm_quarantine returned MI_FAILURE (empty reason)"
        );
        Ok(())
    } else {
        actions
            .quarantine(cstring(reason))
            .await
            .map_err(|e| ("do_sm_quarantine", e))
    }
}

/// After `F` (protocol/milter.md §5.4): X-Scanned-By, extra Content-Type
/// headers deleted, cleanup.
async fn after_f(
    cfg: &Config,
    conn: &mut Conn,
    actions: &EomActions,
    qid: &str,
    rejecting: bool,
) -> Status {
    if !cfg.scanned_by.is_empty() && !rejecting {
        let v = match &conn.myip {
            Some(ip) => format!("{} on {ip}", cfg.scanned_by),
            None => cfg.scanned_by.clone(),
        };
        if let Err(e) = actions.add_header("X-Scanned-By", v).await {
            action_failed(qid, "smfi_addheader", &e);
        }
    }
    let n = conn.msg.as_ref().map(|m| m.content_types).unwrap_or(0);
    if n > 1 {
        mm_log!(
            Warning,
            qid = qid,
            "WARNING: {n} Content-Type headers found -- deleting all but first"
        );
        // Highest index first: correct whether or not the MTA renumbers
        // the remaining headers after a deletion.
        for j in (2..=n).rev() {
            if let Err(e) = actions
                .change_header("Content-Type", j as i32, None::<CString>)
                .await
            {
                action_failed(qid, "smfi_chgheader", &e);
            }
        }
    }
    cleanup(cfg, conn).await;
    Status::Continue
}

fn action_failed(qid: &str, what: &str, e: &ActionError) {
    mm_log!(Warning, qid = qid, "{what} returned MI_FAILURE ({e})");
}

/// Bytes from RESULTS are NUL-free (decoding stops at a NUL).
fn cstring(v: &[u8]) -> CString {
    CString::new(v.to_vec()).unwrap_or_default()
}

/// Streams NEWBODY to the MTA in 4096-byte replacebody packets
/// (protocol/milter.md §5.5). Returns false (after logging) when the
/// message must be tempfailed.
async fn replace_body(actions: &EomActions, qid: &str, dir: &str) -> bool {
    let path = format!("{dir}/NEWBODY");
    let Some(mut file) = open_newbody(qid, &path).await else {
        return false;
    };
    let mut buf = vec![0u8; BODY_CHUNK * BODY_CHUNKS_PER_READ];
    loop {
        // Whole blocks, so that every packet but the last is 4096 bytes.
        let (f, b, r) = blocking::run(move || {
            let r = read_full(&mut file, &mut buf);
            (file, buf, r)
        })
        .await;
        (file, buf) = (f, b);
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                mm_log!(Warning, qid = qid, "Error reading {path}: {e}");
                return false;
            }
        };
        for chunk in buf[..n].chunks(BODY_CHUNK) {
            match actions.replace_body(chunk).await {
                Ok(()) => {}
                Err(ActionError::NotAvailable) => {
                    mm_log!(
                        Warning,
                        qid = qid,
                        "smfi_replacebody returned MI_FAILURE (the MTA did not allow body changes)"
                    );
                    return true;
                }
                Err(e) => {
                    action_failed(qid, "smfi_replacebody", &e);
                    return false;
                }
            }
        }
        // Upstream quirk kept: an empty NEWBODY sends no packet, so the
        // original body stays (protocol/milter.md §10.8).
        if n < buf.len() {
            return true;
        }
    }
}

/// Opens NEWBODY on the blocking pool; like RESULTS it must be a regular
/// file (protocol/SECURITY.md §1). Logs a failure.
async fn open_newbody(qid: &str, path: &str) -> Option<std::fs::File> {
    let opened = {
        let path = path.to_string();
        blocking::run(move || {
            blocking::open_regular(Path::new(&path), std::fs::OpenOptions::new().read(true))
        })
        .await
    };
    match opened {
        Ok(f) => Some(f),
        Err(e) => {
            mm_log!(Warning, qid = qid, "Could not open {path} for reading: {e}");
            None
        }
    }
}

/// Fills `buf` from `file` unless the file ends first; returns the count.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
