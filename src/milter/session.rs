//! Per-SMTP-session state and the indymilter callbacks
//! (protocol/milter.md §3, §5).
//!
//! Each MTA connection is one tokio task inside indymilter; the state lives
//! in `Context::data`. Every multiplexor request is one connection with a
//! client-side timeout, so a wedged multiplexor tempfails mail instead of
//! hanging the session.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indymilter::{
    ActionError, Actions, Callbacks, Context, ContextActions, EomActions, EomContext, MacroStage,
    Macros, NegotiateContext, ProtoOpts, SetErrorReply, SmtpReplyError, SocketInfo, Status,
};

use super::commands::{CommandsBlock, STANDARD_MACROS};
use super::reply::{self, build_reply, split_reply_fields, CheckReply, Class, Verdict};
use super::results::{self, Action, Results};
use super::spool::{self, pristine_header_line, BodyFilter, WorkDir};
use crate::blocking;
use crate::mm_log;
use crate::mxclient;

/// The NEWBODY chunk size of one replacebody packet.
const BODY_CHUNK: usize = 4096;
/// Request lines the C multiplexor refuses (its limit is 4095 bytes).
const C_MUX_MAX_LINE: usize = 4095;

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
}

impl Config {
    fn no_delete_flag(&self) -> PathBuf {
        PathBuf::from(format!("{}/DO-NOT-DELETE-WORK-DIRS", self.spool_dir))
    }
}

/// State of one SMTP connection.
#[derive(Debug, Default)]
pub struct Conn {
    hostname: Option<Vec<u8>>,
    hostip: Option<String>,
    hostport: u32,
    myip: Option<String>,
    /// `myip` came from `{if_addr}` and differs from the computed address:
    /// upstream forgets it at the first MAIL FROM.
    myip_from_macro: bool,
    daemon_port: u32,
    helo: Option<Vec<u8>>,
    /// The MTA queue id; `None` is upstream's `NOQUEUE`.
    qid: Option<Vec<u8>>,
    qid_written: bool,
    msg: Option<Msg>,
}

/// State of the message being received.
#[derive(Debug)]
struct Msg {
    dir: WorkDir,
    sender: Vec<u8>,
    first_rcpt: Option<Vec<u8>>,
    content_types: u32,
    seen_mime_version: bool,
    body: BodyFilter,
    filter_failed: bool,
}

impl Conn {
    fn qid(&self) -> String {
        match &self.qid {
            Some(q) => String::from_utf8_lossy(q).into_owned(),
            None => "NOQUEUE".to_string(),
        }
    }

    fn qid_bytes(&self) -> &[u8] {
        self.qid.as_deref().unwrap_or(b"NOQUEUE")
    }

    /// Upstream's `set_queueid`: adopt the `i` macro when it is defined and
    /// new. (An empty `i` counts as undefined.)
    fn set_queueid(&mut self, m: &Macros) {
        let Some(v) = macro_value(m, "i") else { return };
        if v.is_empty() || self.qid.as_deref() == Some(v) {
            return;
        }
        if self.qid.is_some() {
            self.qid_written = false;
        }
        self.qid = Some(v.to_vec());
    }

    fn ip_or_unknown(&self) -> Vec<u8> {
        match &self.hostip {
            Some(ip) if !ip.is_empty() => ip.as_bytes().to_vec(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    fn name_or_ip(&self) -> Vec<u8> {
        match &self.hostname {
            Some(n) if !n.is_empty() => n.clone(),
            _ => self.ip_or_unknown(),
        }
    }

    /// HELO for a request line: `UNKNOWN` when none was seen and also when
    /// it was empty (an empty field would shift the worker's arguments).
    fn helo_field(&self) -> Vec<u8> {
        match &self.helo {
            Some(h) if !h.is_empty() => h.clone(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    fn myip_field(&self) -> Vec<u8> {
        match &self.myip {
            Some(ip) if !ip.is_empty() => ip.as_bytes().to_vec(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    /// Writes `Q<qid>` and the `=i` line if a real qid is known and not yet
    /// in COMMANDS.
    fn pending_qid_lines(&mut self, m: &Macros, block: &mut CommandsBlock) {
        if let Some(q) = self.qid.clone() {
            if !self.qid_written {
                block.line(b'Q', Some(&q));
                append_macro(block, m, "i");
                self.qid_written = true;
            }
        }
    }
}

/// Looks a macro up the way upstream does: multi-character names in braces.
fn macro_value<'a>(m: &'a Macros, name: &str) -> Option<&'a [u8]> {
    let key = if name.len() > 1 {
        format!("{{{name}}}")
    } else {
        name.to_string()
    };
    let key = CString::new(key).ok()?;
    m.get(&key).map(|v| v.to_bytes())
}

/// `=name value` if the macro is defined (an empty value is defined).
fn append_macro(block: &mut CommandsBlock, m: &Macros, name: &str) {
    if let Some(v) = macro_value(m, name) {
        block.macro_line(name.as_bytes(), v);
    }
}

/// The client address as upstream reports it (protocol/milter.md §3.1 step 6).
fn host_ip(sock: &SocketInfo) -> Option<String> {
    match sock {
        SocketInfo::Unknown => None,
        SocketInfo::Unix(_) => Some("127.0.0.1".to_string()),
        SocketInfo::Inet(a) => Some(match a.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => ipv6_text(&v6),
        }),
    }
}

/// IPv6 text as glibc's inet_ntop writes it, reduced to the dotted quad for
/// IPv4-mapped and IPv4-compatible addresses.
fn ipv6_text(v6: &Ipv6Addr) -> String {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.to_string();
    }
    let s = v6.segments();
    let tail = u32::from(s[6]) << 16 | u32::from(s[7]);
    // IN6_IS_ADDR_V4COMPAT, and glibc prints it dotted only when the seventh
    // group is non-zero.
    if s[..6].iter().all(|&g| g == 0) && tail > 1 && s[6] != 0 {
        return Ipv4Addr::from(tail).to_string();
    }
    v6.to_string()
}

fn is_localhost(sock: &SocketInfo) -> bool {
    match sock {
        SocketInfo::Unknown => true,
        SocketInfo::Unix(_) => false,
        SocketInfo::Inet(a) => match a.ip() {
            IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
            IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
        },
    }
}

/// Sends one request and returns the raw reply; failures are logged with
/// upstream's `MXCommand:` wording and mean "tempfail".
async fn mx_request(cfg: &Config, log_qid: &str, line: &[u8]) -> Option<Vec<u8>> {
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
async fn check(cfg: &Config, log_qid: &str, line: &[u8]) -> Option<CheckReply> {
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

/// Stores an SMTP reply in the context, logging like libmilter's failures.
fn set_reply(
    target: &mut indymilter::SmtpReply,
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
async fn set_dsn(target: &mut indymilter::SmtpReply, qid: &str, msg: &[u8], class: Option<Class>) {
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
async fn verdict_status(
    reply: &mut indymilter::SmtpReply,
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

/// The filter (or the multiplexor running it) failed: tempfail, and keep
/// the working directory for inspection when `-k` asks for that.
async fn filter_failed(cfg: &Config, conn: &mut Conn) -> Status {
    if let Some(msg) = conn.msg.as_mut() {
        msg.filter_failed = true;
    }
    cleanup(cfg, conn).await;
    Status::Tempfail
}

/// Closes the files and removes the working directory unless told to keep
/// it (protocol/milter.md §4.3), on the blocking pool. Forgets the message
/// either way.
async fn cleanup(cfg: &Config, conn: &mut Conn) {
    let Some(msg) = conn.msg.take() else {
        return;
    };
    let keep = KeepRules {
        debug: cfg.debug,
        flag: cfg.no_delete_flag(),
        keep_failed: cfg.keep_failed && msg.filter_failed,
    };
    let qid = conn.qid();
    blocking::run(move || remove_working_directory(&keep, &qid, &msg.dir.into_path())).await;
}

/// What keeps a working directory after its message (protocol/milter.md §4.3).
struct KeepRules {
    /// `-d`
    debug: bool,
    /// `<spool>/DO-NOT-DELETE-WORK-DIRS`
    flag: PathBuf,
    /// `-k` and the filter failed.
    keep_failed: bool,
}

/// Blocking: runs on the blocking pool.
fn remove_working_directory(keep: &KeepRules, qid: &str, dir: &str) {
    if dir.is_empty() {
        return;
    }
    if keep.debug {
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {dir} because of command-line `-d' flag"
        );
        return;
    }
    let flag = &keep.flag;
    if flag.exists() {
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {dir} because of {}",
            flag.display()
        );
        return;
    }
    if keep.keep_failed {
        mm_log!(Warning, qid = qid, "Filter failed.  Message kept in {dir}");
        return;
    }
    if let Err(e) = spool::remove_tree(Path::new(dir), &mut |m| mm_log!(Warning, "{m}")) {
        mm_log!(Error, qid = qid, "failed to clean up {dir}: {e}");
    }
}

fn no_private_data(callback: &str) -> Status {
    mm_log!(
        Warning,
        "{callback}: Unable to obtain private data from milter context"
    );
    Status::Tempfail
}

// ---------------------------------------------------------------------------
// Callbacks

async fn negotiate(
    cfg: &Config,
    cx: &mut NegotiateContext<Conn>,
    actions: Actions,
    opts: ProtoOpts,
) -> Status {
    cx.requested_actions = actions;
    cx.requested_opts = if cfg.see_rejected_rcpts && opts.contains(ProtoOpts::REJECTED_RCPT) {
        ProtoOpts::REJECTED_RCPT
    } else {
        ProtoOpts::empty()
    };
    if cfg.setsymlist {
        // Macro lists may only be sent to an MTA that offered to take them.
        let list = CString::new(super::commands::symlist(&cfg.extra_macros))
            .ok()
            .filter(|_| actions.contains(Actions::REQUEST_MACROS));
        match list {
            Some(list) => {
                for stage in MacroStage::all() {
                    cx.requested_macros.insert(stage, list.clone());
                }
            }
            None => mm_log!(Info, "smfi_setsymlist() failed"),
        }
    }
    Status::Continue
}

async fn connect(
    cfg: &Config,
    cx: &mut Context<Conn>,
    hostname: CString,
    sock: SocketInfo,
) -> Status {
    if cx.data.is_some() {
        close(cfg, cx).await;
    }
    if !cfg.allow_queue {
        let Some(n) = free_workers(cfg).await else {
            mm_log!(Warning, "mfconnect: Error communicating with multiplexor");
            return Status::Tempfail;
        };
        let is_local = is_localhost(&sock);
        let reserved = cfg.reserved_for_loopback;
        let required = if reserved >= 0 && !is_local {
            reserved
        } else {
            0
        };
        if n <= required && (reserved < 0 || !is_local) {
            mm_log!(
                Warning,
                "mfconnect: No free workers: Need {}, found {}",
                required + 1,
                n
            );
            return Status::Tempfail;
        }
    }

    let mut conn = Conn {
        hostname: Some(hostname.into_bytes()),
        ..Default::default()
    };
    if let SocketInfo::Inet(a) = &sock {
        conn.hostport = u32::from(a.port());
    }
    conn.hostip = host_ip(&sock);
    if let (Some(ip), Some(eq)) = (&conn.hostip, &cfg.equiv_loopback) {
        if ip == eq {
            conn.hostip = Some("127.0.0.1".to_string());
        }
    }
    match macro_value(&cx.macros, "if_addr") {
        Some(me) if !me.is_empty() => {
            let me = String::from_utf8_lossy(me).into_owned();
            conn.myip_from_macro = cfg.my_ip.as_deref() != Some(me.as_str());
            conn.myip = Some(me);
        }
        _ => conn.myip = cfg.my_ip.clone(),
    }
    if let Some(p) = macro_value(&cx.macros, "daemon_port") {
        if let Some(v) = crate::cformat::number::scan_int(&String::from_utf8_lossy(p)) {
            conn.daemon_port = v as u32;
        }
    }
    conn.set_queueid(&cx.macros);

    let mut status = Status::Continue;
    if cfg.relay_check {
        let line = mxclient::request_line(
            "relayok",
            &[
                conn.ip_or_unknown(),
                conn.name_or_ip(),
                conn.hostport.to_string().into_bytes(),
                conn.myip_field(),
                conn.daemon_port.to_string().into_bytes(),
                conn.qid_bytes().to_vec(),
            ],
        );
        // No reply text and no delay at connect (upstream cannot set one).
        status = match check(cfg, "NOQUEUE", &line).await.map(|r| r.verdict) {
            Some(Verdict::Continue) => Status::Continue,
            Some(Verdict::Reject) => Status::Reject,
            Some(Verdict::Accept) => Status::Accept,
            Some(Verdict::Discard) => Status::Discard,
            Some(Verdict::Tempfail) | None => Status::Tempfail,
        };
    }
    cx.data = Some(conn);
    if debug_allocation() {
        let data = cx
            .data
            .as_ref()
            .map(|d| d as *const Conn)
            .unwrap_or(std::ptr::null());
        mm_log!(
            Debug,
            "Allocating private data: ctx={:p} data={data:p}",
            cx as *const _
        );
    }
    status
}

/// `MM_DEBUG_ALLOCATION` set to anything logs per-connection state
/// allocation and release.
fn debug_allocation() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MM_DEBUG_ALLOCATION").is_some())
}

async fn helo(cfg: &Config, cx: &mut Context<Conn>, arg: CString) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    conn.helo = Some(arg.into_bytes());
    conn.set_queueid(&cx.macros);
    if !cfg.helo_check {
        return Status::Continue;
    }
    let line = mxclient::request_line(
        "helook",
        &[
            conn.ip_or_unknown(),
            conn.name_or_ip(),
            conn.helo_field(),
            conn.hostport.to_string().into_bytes(),
            conn.myip_field(),
            conn.daemon_port.to_string().into_bytes(),
            conn.qid_bytes().to_vec(),
        ],
    );
    let outcome = check(cfg, "NOQUEUE", &line).await;
    let (status, verdict) = verdict_status(&mut cx.reply, &conn.qid(), outcome).await;
    if verdict != Verdict::Continue {
        cleanup(cfg, conn).await;
    }
    status
}

async fn mail(cfg: &Config, cx: &mut Context<Conn>, args: Vec<CString>) -> Status {
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
    let qid = conn.qid();
    let sender = args
        .first()
        .map(|a| a.as_bytes().to_vec())
        .unwrap_or_default();

    let (name, refused) = spool::dir_name(conn.qid.as_deref(), &id);
    if let Some(why) = refused {
        mm_log!(
            Warning,
            qid = qid,
            "queue id {:?} {why}: working directory named mm-{id} instead",
            String::from_utf8_lossy(conn.qid.as_deref().unwrap_or_default())
        );
    }
    let name = name.to_string();
    let dir = match WorkDir::create(&cfg.spool_dir, &name, cfg.conserve_fds).await {
        Ok(d) => d,
        Err(e) => {
            mm_log!(Warning, qid = qid, "{e}");
            cleanup(cfg, conn).await;
            return Status::Tempfail;
        }
    };
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
    conn.msg = Some(Msg {
        dir,
        sender: sender.clone(),
        first_rcpt: None,
        content_types: 0,
        seen_mime_version: false,
        body: BodyFilter::new(cfg.strip_bare_cr),
        filter_failed: false,
    });

    let mut block = CommandsBlock::new();
    block
        .line(b'i', Some(id.as_bytes()))
        .line(b'S', Some(&sender));
    for a in args.iter().skip(1) {
        block.line(b's', Some(a.as_bytes()));
    }
    for m in STANDARD_MACROS {
        append_macro(&mut block, &cx.macros, m);
    }
    block.macro_line(b"client_port", conn.hostport.to_string().as_bytes());
    for m in &cfg.extra_macros {
        append_macro(&mut block, &cx.macros, m);
    }
    if conn.myip_from_macro {
        conn.myip = None;
        conn.myip_from_macro = false;
    }
    conn.pending_qid_lines(&cx.macros, &mut block);
    block.line(b'H', conn.hostname.as_deref());
    block.line(b'I', conn.hostip.as_deref().map(str::as_bytes));
    if let Some(h) = &conn.helo {
        block.line(b'E', Some(h));
    }
    let (ip, name, helo) = (conn.ip_or_unknown(), conn.name_or_ip(), conn.helo_field());
    let qid_field = conn.qid_bytes().to_vec();
    let msg = conn.msg.as_mut().expect("just created");
    let block = block.as_bytes().to_vec();
    let written = msg
        .dir
        .with_files(move |f| {
            f.headers.touch()?;
            f.pristine.touch()?;
            f.commands.append(&block)
        })
        .await;
    if let Err(e) = written {
        mm_log!(Warning, qid = qid, "{e}");
        cleanup(cfg, conn).await;
        return Status::Tempfail;
    }

    if !cfg.sender_check {
        return Status::Continue;
    }
    let mut fields = vec![
        if sender.is_empty() {
            b"UNKNOWN".to_vec()
        } else {
            sender
        },
        ip,
        name,
        helo,
        msg.dir.path.as_bytes().to_vec(),
        qid_field,
    ];
    fields.extend(args.iter().skip(1).map(|a| a.as_bytes().to_vec()));
    let line = mxclient::request_line("senderok", &fields);
    let outcome = check(cfg, &qid, &line).await;
    let (status, verdict) = verdict_status(&mut cx.reply, &qid, outcome).await;
    if verdict != Verdict::Continue {
        cleanup(cfg, conn).await;
    }
    status
}

async fn rcpt(cfg: &Config, cx: &mut Context<Conn>, args: Vec<CString>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("rcptto");
    };
    conn.set_queueid(&cx.macros);
    let qid = conn.qid();
    if conn.msg.is_none() {
        mm_log!(Warning, qid = qid, "rcptto: no message in progress");
        return Status::Tempfail;
    }
    let mut qblock = CommandsBlock::new();
    conn.pending_qid_lines(&cx.macros, &mut qblock);
    if !qblock.is_empty() {
        let msg = conn.msg.as_mut().expect("checked");
        let qblock = qblock.as_bytes().to_vec();
        if let Err(e) = msg
            .dir
            .with_files(move |f| f.commands.append(&qblock))
            .await
        {
            mm_log!(Warning, qid = qid, "{e}");
            conn.qid_written = false;
        }
    }
    let field = |name| match macro_value(&cx.macros, name) {
        Some(v) if !v.is_empty() => v.to_vec(),
        _ => b"?".to_vec(),
    };
    let (mailer, host, addr) = (field("rcpt_mailer"), field("rcpt_host"), field("rcpt_addr"));
    let rcpt = args
        .first()
        .map(|a| a.as_bytes().to_vec())
        .unwrap_or_default();

    if cfg.rcpt_check {
        let (ip, name, helo) = (conn.ip_or_unknown(), conn.name_or_ip(), conn.helo_field());
        let qid_field = conn.qid_bytes().to_vec();
        let msg = conn.msg.as_mut().expect("checked");
        let first = msg.first_rcpt.get_or_insert_with(|| rcpt.clone()).clone();
        let or_unknown = |v: &[u8]| {
            if v.is_empty() {
                b"UNKNOWN".to_vec()
            } else {
                v.to_vec()
            }
        };
        let mut fields = vec![
            or_unknown(&rcpt),
            or_unknown(&msg.sender),
            ip,
            name,
            or_unknown(&first),
            helo,
            msg.dir.path.as_bytes().to_vec(),
            qid_field,
            mailer.clone(),
            host.clone(),
            addr.clone(),
        ];
        fields.extend(args.iter().skip(1).map(|a| a.as_bytes().to_vec()));
        let line = mxclient::request_line("recipok", &fields);
        let outcome = check(cfg, &qid, &line).await;
        let (status, verdict) = verdict_status(&mut cx.reply, &qid, outcome).await;
        match verdict {
            Verdict::Continue => {}
            // A refused recipient keeps the transaction going.
            Verdict::Reject | Verdict::Tempfail => return status,
            Verdict::Accept | Verdict::Discard => {
                cleanup(cfg, conn).await;
                return status;
            }
        }
    }

    let mut block = CommandsBlock::new();
    block.recipient(&rcpt, &mailer, &host, &addr);
    for a in args.iter().skip(1) {
        block.line(b'r', Some(a.as_bytes()));
    }
    let msg = conn.msg.as_mut().expect("checked");
    let block = block.as_bytes().to_vec();
    if let Err(e) = msg.dir.with_files(move |f| f.commands.append(&block)).await {
        mm_log!(Warning, qid = qid, "{e}");
        cleanup(cfg, conn).await;
        return Status::Tempfail;
    }
    Status::Continue
}

async fn header(cfg: &Config, cx: &mut Context<Conn>, name: CString, value: CString) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return no_private_data("header");
    };
    let qid = conn.qid();
    let Some(msg) = conn.msg.as_mut() else {
        mm_log!(Warning, qid = qid, "header: no message in progress");
        return Status::Tempfail;
    };
    let (name, value) = (name.as_bytes(), value.as_bytes());
    let mut write = true;
    if name.eq_ignore_ascii_case(b"content-type") {
        msg.content_types += 1;
        // Only the first Content-Type reaches the filter; the others are
        // deleted at end of message.
        write = msg.content_types == 1;
    } else if name.eq_ignore_ascii_case(b"mime-version") {
        msg.seen_mime_version = true;
    }
    let mut suspicious = false;
    if write {
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
            mm_log!(Warning, qid = qid, "{e}");
            cleanup(cfg, conn).await;
            return Status::Tempfail;
        }
    }
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
    if !block.is_empty() {
        let block = block.as_bytes().to_vec();
        if let Err(e) = msg.dir.with_files(move |f| f.commands.append(&block)).await {
            mm_log!(Warning, qid = qid, "{e}");
            cleanup(cfg, conn).await;
            return Status::Tempfail;
        }
    }
    Status::Continue
}

async fn eoh(cfg: &Config, cx: &mut Context<Conn>) -> Status {
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
        mm_log!(Warning, qid = qid, "{e}");
        cleanup(cfg, conn).await;
        return Status::Tempfail;
    }
    Status::Continue
}

async fn body(cfg: &Config, cx: &mut Context<Conn>, chunk: bytes::Bytes) -> Status {
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
            mm_log!(Warning, qid = qid, "writen failed: {e}");
            cleanup(cfg, conn).await;
            return Status::Tempfail;
        }
    }
    Status::Continue
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

fn action_failed(qid: &str, what: &str, e: &ActionError) {
    mm_log!(Warning, qid = qid, "{what} returned MI_FAILURE ({e})");
}

/// NEWBODY is read this many packets at a time on the blocking pool.
const BODY_CHUNKS_PER_READ: usize = 16;

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

/// Streams NEWBODY to the MTA in 4096-byte replacebody packets. Returns
/// false (after logging) when the message must be tempfailed. The file is
/// opened and read on the blocking pool; like RESULTS it must be a regular
/// file (protocol/SECURITY.md §1).
async fn replace_body(actions: &EomActions, qid: &str, dir: &str) -> bool {
    let path = format!("{dir}/NEWBODY");
    let opened = {
        let path = path.clone();
        blocking::run(move || {
            blocking::open_regular(Path::new(&path), std::fs::OpenOptions::new().read(true))
        })
        .await
    };
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => {
            mm_log!(Warning, qid = qid, "Could not open {path} for reading: {e}");
            return false;
        }
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
        if n < buf.len() {
            return true;
        }
    }
}

async fn eom(cfg: &Config, cx: &mut EomContext<Conn>) -> Status {
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
    let mut block = CommandsBlock::new();
    conn.pending_qid_lines(&cx.macros, &mut block);
    let msg = conn.msg.as_mut().expect("checked");
    if msg.body.suspicious() {
        block.line(b'?', None);
    }
    block.line(b'F', None);
    let block = block.as_bytes().to_vec();
    let written = msg
        .dir
        .with_files(move |f| {
            let r = f.commands.append(&block);
            f.close_all();
            r
        })
        .await;
    if let Err(e) = written {
        mm_log!(Warning, qid = qid, "{e}");
        cleanup(cfg, conn).await;
        return Status::Tempfail;
    }
    let dir = msg.dir.path.clone();

    let line = mxclient::request_line("scan", &[conn.qid_bytes(), dir.as_bytes()]);
    match mx_request(cfg, &qid, &line).await {
        Some(ans) if ans == b"ok\n" => {}
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
            return filter_failed(cfg, conn).await;
        }
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

async fn apply_results(
    cfg: &Config,
    conn: &mut Conn,
    actions: &EomActions,
    reply: &mut indymilter::SmtpReply,
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
    // Refuse values that would inject header lines or break the header
    // grammar before sending anything: a half-applied result is worse. A
    // bare CR in a header value is not worth a tempfail on every retry: it
    // becomes a space (protocol/milter.md §15).
    match results::sanitize_actions(&mut to_apply) {
        Err((i, e)) => {
            mm_log!(
                Error,
                qid = qid,
                "RESULTS instruction {} refused: {e}: Tempfailing",
                i + 1
            );
            return filter_failed(cfg, conn).await;
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
        }
    }
    let seen_mime_version = conn
        .msg
        .as_ref()
        .map(|m| m.seen_mime_version)
        .unwrap_or(true);
    for action in &to_apply {
        let r = match action {
            Action::Bounce { code, dsn, text } => {
                mm_log!(Debug, qid = qid, "Bouncing because filter instructed us to");
                set_reply(
                    reply,
                    qid,
                    Class::Perm,
                    code.as_deref(),
                    dsn.as_deref(),
                    text.as_deref(),
                );
                cleanup(cfg, conn).await;
                return Status::Reject;
            }
            Action::Discard => {
                mm_log!(
                    Debug,
                    qid = qid,
                    "Discarding because filter instructed us to"
                );
                cleanup(cfg, conn).await;
                return Status::Discard;
            }
            Action::Tempfail { code, dsn, text } => {
                mm_log!(
                    Debug,
                    qid = qid,
                    "Tempfailing because filter instructed us to"
                );
                set_reply(
                    reply,
                    qid,
                    Class::Temp,
                    code.as_deref(),
                    dsn.as_deref(),
                    text.as_deref(),
                );
                cleanup(cfg, conn).await;
                return Status::Tempfail;
            }
            Action::ReplaceBody => {
                if !replace_body(actions, qid, dir).await {
                    return filter_failed(cfg, conn).await;
                }
                Ok(())
            }
            Action::ContentType(v) => {
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
            Action::Quarantine(reason) => {
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
            Action::Unknown(c) => {
                mm_log!(
                    Warning,
                    qid = qid,
                    "Unknown command '{}' in RESULTS file",
                    char::from(*c).escape_default()
                );
                Ok(())
            }
        };
        if let Err((what, e)) = r {
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

/// Bytes from RESULTS are NUL-free (decoding stops at a NUL).
fn cstring(v: &[u8]) -> CString {
    CString::new(v.to_vec()).unwrap_or_default()
}

async fn abort(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    if let Some(conn) = cx.data.as_mut() {
        cleanup(cfg, conn).await;
    }
    Status::Continue
}

async fn close(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    if debug_allocation() {
        if let Some(d) = cx.data.as_ref() {
            mm_log!(
                Debug,
                "Deallocating private data: ctx={:p} data={:p}",
                cx as *const _,
                d as *const Conn
            );
        }
    }
    if let Some(mut conn) = cx.data.take() {
        cleanup(cfg, &mut conn).await;
    }
    Status::Continue
}

/// The indymilter callbacks, all registered so the MTA sends every event.
pub fn callbacks(cfg: Arc<Config>) -> Callbacks<Conn> {
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
        .on_data(|_cx| Box::pin(async { Status::Continue }))
        .on_header(cb!(header, |cx, name, value|))
        .on_eoh(cb!(eoh, |cx|))
        .on_body(cb!(body, |cx, chunk|))
        .on_eom(cb!(eom, |cx|))
        .on_abort(cb!(abort, |cx|))
        .on_close(cb!(close, |cx|))
        .on_unknown(|_cx, _arg| Box::pin(async { Status::Continue }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses() {
        let inet = |s: &str| SocketInfo::Inet(s.parse().unwrap());
        assert_eq!(host_ip(&inet("192.0.2.1:25")).as_deref(), Some("192.0.2.1"));
        assert_eq!(
            host_ip(&inet("[::ffff:192.0.2.1]:25")).as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            host_ip(&inet("[::192.0.2.1]:25")).as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            host_ip(&inet("[2001:db8::1]:25")).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(host_ip(&inet("[::1]:25")).as_deref(), Some("::1"));
        assert_eq!(host_ip(&inet("[::2]:25")).as_deref(), Some("::2"));
        assert_eq!(
            host_ip(&SocketInfo::Unix(CString::new("/s").unwrap())).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host_ip(&SocketInfo::Unknown), None);
        assert!(is_localhost(&inet("127.0.0.1:1")));
        assert!(is_localhost(&inet("[::1]:1")));
        assert!(!is_localhost(&inet("[::ffff:127.0.0.1]:1")));
        assert!(!is_localhost(&inet("127.0.0.2:1")));
        assert!(!is_localhost(&SocketInfo::Unix(
            CString::new("/s").unwrap()
        )));
        assert!(is_localhost(&SocketInfo::Unknown));
    }
}
