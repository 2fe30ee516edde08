//! Connection-level callbacks: negotiation, connect, HELO and close
//! (protocol/milter.md §2.2, §3.1, §3.2, §3.10).

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use indymilter::{
    Actions, Context, MacroStage, Macros, NegotiateContext, ProtoOpts, SocketInfo, Status,
};

use super::cleanup::cleanup;
use super::mxrequest::{check, free_workers};
use super::smtp_reply::verdict_status;
use super::state::macro_value;
use super::{Config, Conn};
use crate::milter::reply::Verdict;
use crate::mm_log;
use crate::wire::mxclient;

pub(super) async fn negotiate(
    cfg: &Config,
    cx: &mut NegotiateContext<Conn>,
    actions: Actions,
    opts: ProtoOpts,
) -> Status {
    cx.requested_actions = actions;
    cx.data = Some(Conn::negotiated(opts.contains(ProtoOpts::NO_DATA)));
    cx.requested_opts = if cfg.see_rejected_rcpts && opts.contains(ProtoOpts::REJECTED_RCPT) {
        ProtoOpts::REJECTED_RCPT
    } else {
        ProtoOpts::empty()
    };
    if cfg.setsymlist {
        // Macro lists may only be sent to an MTA that offered to take them.
        let list = CString::new(crate::milter::commands::symlist(&cfg.extra_macros))
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

pub(super) async fn connect(
    cfg: &Config,
    cx: &mut Context<Conn>,
    hostname: CString,
    sock: SocketInfo,
) -> Status {
    let data_stage = cx.data.as_ref().is_some_and(|c| c.mta_data_stage);
    if cx.data.as_ref().is_some_and(Conn::is_connected) {
        close(cfg, cx).await;
    }
    cx.data = None;
    if !cfg.allow_queue && !workers_available(cfg, &sock, data_stage).await {
        return Status::Tempfail;
    }
    let mut conn = new_conn(cfg, &cx.macros, hostname, &sock);
    conn.mta_data_stage = data_stage;
    let status = if cfg.relay_check {
        relay_check(cfg, &conn).await
    } else {
        Status::Continue
    };
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

/// Without `-q`, a connection needs a free worker beyond those reserved
/// for loopback (`-R`) unless it comes from there (protocol/milter.md §3.1
/// step 2). Logs why when it does not get one.
///
/// Deliberate difference (protocol/milter.md §17.4): when our multiplexor
/// reserves workers and the MTA has a DATA stage, only an unreachable
/// multiplexor refuses here; finding no worker free is left to the
/// reservation at DATA, which waits for one instead of refusing at once.
async fn workers_available(cfg: &Config, sock: &SocketInfo, mta_data_stage: bool) -> bool {
    let Some(n) = free_workers(cfg).await else {
        mm_log!(Warning, "mfconnect: Error communicating with multiplexor");
        return false;
    };
    if mta_data_stage && super::reserve::supported(cfg).await {
        return true;
    }
    let is_local = is_localhost(sock);
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
        return false;
    }
    true
}

/// The connection's state from the client address and the connect macros.
fn new_conn(cfg: &Config, macros: &Macros, hostname: CString, sock: &SocketInfo) -> Conn {
    let mut conn = Conn {
        hostname: Some(hostname.into_bytes()),
        ..Default::default()
    };
    if let SocketInfo::Inet(a) = sock {
        conn.hostport = u32::from(a.port());
    }
    conn.hostip = host_ip(sock);
    conn.local = is_localhost(sock);
    if let (Some(ip), Some(eq)) = (&conn.hostip, &cfg.equiv_loopback) {
        if ip == eq {
            conn.hostip = Some("127.0.0.1".to_string());
        }
    }
    match macro_value(macros, "if_addr") {
        Some(me) if !me.is_empty() => {
            let me = String::from_utf8_lossy(me).into_owned();
            conn.myip_from_macro = cfg.my_ip.as_deref() != Some(me.as_str());
            conn.myip = Some(me);
        }
        _ => conn.myip = cfg.my_ip.clone(),
    }
    if let Some(p) = macro_value(macros, "daemon_port") {
        if let Some(v) = crate::cformat::number::scan_int(&String::from_utf8_lossy(p)) {
            conn.daemon_port = v as u32;
        }
    }
    conn.set_queueid(macros);
    conn
}

/// `relayok` (`-r`, protocol/milter.md §3.1 step 9). No reply text and no
/// delay at connect (upstream cannot set one).
async fn relay_check(cfg: &Config, conn: &Conn) -> Status {
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
    match check(cfg, "NOQUEUE", &line).await.map(|r| r.verdict) {
        Some(Verdict::Continue) => Status::Continue,
        Some(Verdict::Reject) => Status::Reject,
        Some(Verdict::Accept) => Status::Accept,
        Some(Verdict::Discard) => Status::Discard,
        Some(Verdict::Tempfail) | None => Status::Tempfail,
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

/// Upstream quirk kept: only 127.0.0.1 and `::1` are local for `-R`; not
/// the rest of 127/8, not a mapped address, not a UNIX socket
/// (protocol/milter.md §10.14).
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

/// `MM_DEBUG_ALLOCATION` set to anything logs per-connection state
/// allocation and release.
fn debug_allocation() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MM_DEBUG_ALLOCATION").is_some())
}

pub(super) async fn helo(cfg: &Config, cx: &mut Context<Conn>, arg: CString) -> Status {
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

pub(super) async fn close(cfg: &Config, cx: &mut Context<Conn>) -> Status {
    if debug_allocation() {
        if let Some(d) = cx.data.as_ref().filter(|c| c.is_connected()) {
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
