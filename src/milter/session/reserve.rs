//! A worker held for the message from the DATA command on
//! (protocol/milter.md §17): a session that cannot have one is refused
//! before its body is sent, instead of after it at end of message.
//!
//! Only our multiplexor knows the request (protocol/multiplexor.md §27);
//! whether the one at `-m` does is learnt from its `help` text, which both
//! multiplexors answer themselves. An upstream multiplexor is never sent
//! the request, so it never reaches a worker there.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indymilter::{Context, Status};

use super::cleanup::cleanup;
use super::mxrequest::mx_request;
use super::smtp_reply::set_reply;
use super::{Config, Conn};
use crate::milter::reply::Class;
use crate::mm_log;
use crate::wire::mxclient::{self, Held};
use crate::wire::reservation::{self, Answer};

/// How long a "no" from the `help` probe is believed before asking again
/// (the multiplexor may be replaced by ours meanwhile).
const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// What the milter knows about the multiplexor's reservations.
#[derive(Debug, Default)]
pub struct ReserveSupport {
    /// `Some(yes, when learnt)`; `None` before the first probe.
    known: Mutex<Option<(bool, Instant)>>,
}

impl ReserveSupport {
    fn cached(&self) -> Option<bool> {
        let known = *self.known.lock().unwrap_or_else(|e| e.into_inner());
        match known {
            Some((true, _)) => Some(true),
            Some((false, at)) if at.elapsed() < RECHECK_AFTER => Some(false),
            _ => None,
        }
    }

    /// Records what was learnt; logs when it changes.
    fn learnt(&self, yes: bool, why: &str) {
        let before = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((yes, Instant::now()));
        if before.map(|(b, _)| b) != Some(yes) {
            if yes {
                mm_log!(
                    Info,
                    "The multiplexor reserves workers: a message that cannot get one is tempfailed at DATA"
                );
            } else {
                mm_log!(
                    Info,
                    "The multiplexor does not reserve workers ({why}): workers are asked for at end of message"
                );
            }
        }
    }
}

/// Whether to send reservation requests, asking `help` when not known.
pub(super) async fn supported(cfg: &Config) -> bool {
    if let Some(yes) = cfg.reservations.cached() {
        return yes;
    }
    // An I/O error teaches nothing: the next message asks again.
    let Some(help) = mx_request(cfg, "NOQUEUE", b"help\n").await else {
        return false;
    };
    let yes = reservation::advertised(&help);
    cfg.reservations
        .learnt(yes, "its help does not list mmrs-reserve");
    yes
}

/// The DATA command: without `-q`, hold a worker for this message's scan,
/// or tempfail the message before its body comes.
pub(super) async fn data(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    if cfg.allow_queue || conn.msg.is_none() || !supported(cfg).await {
        return Status::Continue;
    }
    let qid = conn.qid();
    // `-R`: leave that many workers to loopback clients, as at connect.
    let keep = if cfg.reserved_for_loopback >= 0 && !conn.local {
        cfg.reserved_for_loopback
    } else {
        0
    };
    let line = reservation::request(conn.qid_bytes(), keep);
    let (ans, held) = match mxclient::request_held(&cfg.mx_socket, &line, cfg.mx_timeout).await {
        Ok(r) => r,
        Err(e) => {
            mm_log!(Error, qid = qid, "MXCommand: {e}");
            return refuse(cfg, cx, &qid).await;
        }
    };
    match Answer::parse(&ans) {
        Answer::Reserved if held.is_some() => {
            if let Some(msg) = conn.msg.as_mut() {
                msg.reservation = held;
            }
            Status::Continue
        }
        Answer::NotNeeded => Status::Continue,
        Answer::NoFree => {
            mm_log!(
                Warning,
                qid = qid,
                "mfdata: No free workers: tempfailing the message before it is sent"
            );
            refuse(cfg, cx, &qid).await
        }
        Answer::Reserved | Answer::Refused => {
            mm_log!(
                Error,
                qid = qid,
                "Error from multiplexor: {}",
                String::from_utf8_lossy(ans.strip_suffix(b"\n").unwrap_or(&ans))
            );
            refuse(cfg, cx, &qid).await
        }
        Answer::Foreign => {
            cfg.reservations
                .learnt(false, "it did not understand mmrs-reserve");
            Status::Continue
        }
    }
}

/// Tempfails the DATA command with a reply saying why, and ends the
/// message (its directory goes now).
async fn refuse(cfg: &Config, cx: &mut Context<Conn>, qid: &str) -> Status {
    set_reply(
        &mut cx.reply,
        qid,
        Class::Temp,
        Some(b"451"),
        Some(b"4.3.2"),
        Some(b"No free filter worker; please try again later"),
    );
    if let Some(conn) = cx.data.as_mut() {
        cleanup(cfg, conn).await;
    }
    Status::Tempfail
}

/// The scan on the reserved worker. `None` when the reservation was gone
/// before the scan reached the multiplexor (it closed the connection
/// unanswered, e.g. after its `-b` bound): the caller asks for a worker the
/// usual way.
pub(super) async fn scan_reserved(
    cfg: &Config,
    held: Held,
    qid: &str,
    line: &[u8],
) -> Option<Option<Vec<u8>>> {
    match held.request(line, cfg.mx_timeout).await {
        Ok(r) if !r.bytes.is_empty() => {
            if r.truncated {
                mm_log!(
                    Warning,
                    qid = qid,
                    "MXCommand: Overlong reply from multiplexor was truncated!"
                );
            }
            Some(Some(r.bytes))
        }
        Err(e @ mxclient::MxError::Timeout(_)) => {
            mm_log!(Error, qid = qid, "MXCommand: {e}");
            Some(None)
        }
        Ok(_) | Err(_) => {
            mm_log!(
                Info,
                qid = qid,
                "The reserved worker was released before the scan; asking for one now"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_no_is_asked_again_later() {
        let s = ReserveSupport::default();
        assert_eq!(s.cached(), None);
        s.learnt(false, "test");
        assert_eq!(s.cached(), Some(false));
        *s.known.lock().unwrap() = Some((false, Instant::now() - RECHECK_AFTER));
        assert_eq!(s.cached(), None);
        s.learnt(true, "test");
        assert_eq!(s.cached(), Some(true));
    }
}
