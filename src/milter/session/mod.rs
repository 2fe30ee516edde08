//! Per-SMTP-session state and the indymilter callbacks
//! (protocol/milter.md §3, §5).
//!
//! Each MTA connection is one tokio task inside indymilter; the state lives
//! in `Context::data`. The callbacks are wired here and live by concept:
//! `connection` (negotiate, connect, helo, close), `envelope` (mail, rcpt),
//! `content` (header, eoh, body), `eom` (the scan and RESULTS, abort) and
//! `apply` (RESULTS to the MTA), `reserve` (a worker held from DATA on); `mxrequest` talks to the multiplexor,
//! `smtp_reply` sets the MTA's reply, `cleanup` ends a working directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indymilter::{Callbacks, Status};

mod apply;
mod cleanup;
mod connection;
mod content;
mod envelope;
mod eom;
mod mxrequest;
mod reserve;
mod smtp_reply;
mod state;

pub use mxrequest::free_workers;
pub use reserve::ReserveSupport;
pub use state::Conn;

/// Everything the callbacks need that does not change at run time.
#[derive(Debug, Clone)]
pub struct Config {
    pub mx_socket: PathBuf,
    pub spool_dir: String,
    pub relay_check: bool,
    pub helo_check: bool,
    pub sender_check: bool,
    pub rcpt_check: bool,
    pub allow_queue: bool,
    pub reserved_for_loopback: i64,
    pub equiv_loopback: Option<String>,
    pub see_rejected_rcpts: bool,
    pub setsymlist: bool,
    pub extra_macros: Vec<String>,
    pub scanned_by: String,
    pub conserve_fds: bool,
    pub strip_bare_cr: bool,
    pub keep_failed: bool,
    pub debug: bool,
    pub log_times: bool,
    /// The host's own address (`MyIPAddress`), computed once at startup.
    pub my_ip: Option<String>,
    /// Bound on one multiplexor request; `None` waits forever (upstream).
    pub mx_timeout: Option<Duration>,
    /// Whether the multiplexor offers worker reservations, as last learnt
    /// (protocol/milter.md §17).
    pub reservations: Arc<ReserveSupport>,
}

impl Config {
    fn no_delete_flag(&self) -> PathBuf {
        PathBuf::from(format!("{}/DO-NOT-DELETE-WORK-DIRS", self.spool_dir))
    }
}

/// The indymilter callbacks, all registered so the MTA sends every event.
pub fn callbacks(cfg: Arc<Config>) -> Callbacks<Conn> {
    use connection::{close, connect, helo, negotiate};
    use content::{body, eoh, header};
    use envelope::{mail, rcpt};
    use eom::{abort, eom};
    use reserve::data;
    macro_rules! cb {
        ($f:ident, |$cx:ident $(, $a:ident)*|) => {{
            let cfg = cfg.clone();
            move |$cx: &mut _ $(, $a)*| {
                let cfg = cfg.clone();
                Box::pin(async move { $f(&cfg, $cx $(, $a)*).await }) as indymilter::CallbackFuture<'_>
            }
        }};
    }
    Callbacks::new()
        .on_negotiate(cb!(negotiate, |cx, actions, opts|))
        .on_connect(cb!(connect, |cx, host, sock|))
        .on_helo(cb!(helo, |cx, arg|))
        .on_mail(cb!(mail, |cx, args|))
        .on_rcpt(cb!(rcpt, |cx, args|))
        .on_data(cb!(data, |cx|))
        .on_header(cb!(header, |cx, name, value|))
        .on_eoh(cb!(eoh, |cx|))
        .on_body(cb!(body, |cx, chunk|))
        .on_eom(cb!(eom, |cx|))
        .on_abort(cb!(abort, |cx|))
        .on_close(cb!(close, |cx|))
        .on_unknown(|_cx, _arg| Box::pin(async { Status::Continue }))
}
