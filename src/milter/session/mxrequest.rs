//! Requests to the multiplexor (protocol/milter.md §7). Every request is
//! one connection with a client-side timeout, so a wedged multiplexor
//! tempfails mail instead of hanging the session.

use super::Config;
use crate::milter::reply::{self, CheckReply};
use crate::mm_log;
use crate::wire::mxclient;

/// Request lines the C multiplexor refuses (its limit is 4095 bytes).
const C_MUX_MAX_LINE: usize = 4095;

/// Sends one request and returns the raw reply; failures are logged with
/// upstream's `MXCommand:` wording and mean "tempfail".
pub(super) async fn mx_request(cfg: &Config, log_qid: &str, line: &[u8]) -> Option<Vec<u8>> {
    if line.len() >= C_MUX_MAX_LINE {
        mm_log!(
            Warning,
            qid = log_qid,
            "request line is {} bytes; the C multiplexor refuses lines of {C_MUX_MAX_LINE} bytes or more",
            line.len()
        );
    }
    match mxclient::request(&cfg.mx_socket, line, cfg.mx_timeout).await {
        Ok(r) => {
            if r.truncated {
                mm_log!(
                    Warning,
                    qid = log_qid,
                    "MXCommand: Overlong reply from multiplexor was truncated!"
                );
            }
            Some(r.bytes)
        }
        Err(e) => {
            mm_log!(Error, qid = log_qid, "MXCommand: {e}");
            None
        }
    }
}

/// `free`: the number of free workers, or `None` on any error.
pub async fn free_workers(cfg: &Config) -> Option<i64> {
    let ans = mx_request(cfg, "NOQUEUE", b"free\n").await?;
    reply::parse_free_reply(&ans)
}

/// A check command; `None` means tempfail without reply text.
pub(super) async fn check(cfg: &Config, log_qid: &str, line: &[u8]) -> Option<CheckReply> {
    let ans = mx_request(cfg, log_qid, line).await?;
    match reply::parse_check_reply(&ans) {
        Ok(r) => Some(r),
        Err(text) => {
            mm_log!(
                Error,
                qid = log_qid,
                "Error from multiplexor: {}",
                String::from_utf8_lossy(&text)
            );
            None
        }
    }
}
