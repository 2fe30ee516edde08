//! The SMTP reply the MTA sends for a verdict
//! (protocol/milter.md §2.6, §3.11).

use std::ffi::CString;
use std::time::Duration;

use indymilter::{SetErrorReply, SmtpReply, SmtpReplyError, Status};

use crate::milter::reply::{self, build_reply, split_reply_fields, CheckReply, Class, Verdict};
use crate::mm_log;

/// Stores an SMTP reply in the context, logging like libmilter's failures.
pub(super) fn set_reply(
    target: &mut SmtpReply,
    qid: &str,
    class: Class,
    code: Option<&[u8]>,
    dsn: Option<&[u8]>,
    text: Option<&[u8]>,
) {
    let r = build_reply(class, code, dsn, text);
    let lines = |r: &reply::SmtpReply| -> Vec<CString> {
        r.lines
            .iter()
            .map(|l| CString::new(l.clone()).expect("sanitised text has no NUL"))
            .collect()
    };
    match target.set_error_reply(&r.code, Some(&r.dsn), lines(&r)) {
        Ok(()) => {}
        Err(SmtpReplyError::InvalidReplyCode | SmtpReplyError::InvalidEnhancedStatusCode) => {
            // indymilter is stricter than libmilter about codes (e.g. 461,
            // 5.07.1); keep the text with the default codes.
            mm_log!(
                Warning,
                qid = qid,
                "reply code {} {} not accepted by the milter library; using {} {}",
                r.code,
                r.dsn,
                class.default_code(),
                class.default_dsn()
            );
            if target
                .set_error_reply(class.default_code(), Some(class.default_dsn()), lines(&r))
                .is_err()
            {
                mm_log!(Warning, qid = qid, "set_reply returned MI_FAILURE");
            }
        }
        Err(SmtpReplyError::InvalidReplyText) => {
            mm_log!(Warning, qid = qid, "set_reply returned MI_FAILURE")
        }
    }
}

/// Upstream's `set_dsn`: honour the delay, then set the reply for 4/5.
async fn set_dsn(target: &mut SmtpReply, qid: &str, msg: &[u8], class: Option<Class>) {
    if msg.is_empty() {
        return;
    }
    let f = split_reply_fields(msg);
    if f.delay > 0 {
        tokio::time::sleep(Duration::from_secs(f.delay as u64)).await;
    }
    if let Some(class) = class {
        set_reply(
            target,
            qid,
            class,
            f.code.as_deref(),
            f.dsn.as_deref(),
            Some(&f.text),
        );
    }
}

/// Maps a check outcome at helo/mail/rcpt to the status, setting the reply
/// and honouring the delay (protocol/milter.md §3.11). Returns the status and
/// whether the verdict ends the transaction (cleanup needed).
pub(super) async fn verdict_status(
    reply: &mut SmtpReply,
    qid: &str,
    outcome: Option<CheckReply>,
) -> (Status, Verdict) {
    let Some(r) = outcome else {
        return (Status::Tempfail, Verdict::Tempfail);
    };
    let class = match r.verdict {
        Verdict::Reject => Some(Class::Perm),
        Verdict::Tempfail => Some(Class::Temp),
        _ => None,
    };
    set_dsn(reply, qid, &r.msg, class).await;
    let status = match r.verdict {
        Verdict::Reject => Status::Reject,
        Verdict::Tempfail => Status::Tempfail,
        Verdict::Accept => Status::Accept,
        Verdict::Discard => Status::Discard,
        Verdict::Continue => Status::Continue,
    };
    (status, r.verdict)
}
