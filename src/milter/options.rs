//! Command-line options of `mailmunge` (protocol/milter.md §1.3): upstream's
//! letters in the shared getopt syntax (protocol/cli.md §1): clustered flags,
//! the last occurrence wins, `-h`/`-v` act where met, getopt's complaint and
//! the usage on stderr with exit status 1 for a bad option.

use std::ffi::OsString;

use crate::cformat::getopt::{self, Name::Long, Name::Short, Opt};

/// Most `-a` macros upstream accepts.
pub const MAX_EXTRA_MACROS: usize = 30;
/// Longest `-a` macro name upstream accepts.
pub const MAX_MACRO_NAME: usize = 200;

/// The command line, option by option; values are checked after parsing,
/// as protocol/milter.md §1.3 orders the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Every `-p` in order: the last is the listen socket, and upstream
    /// removes the socket file of each one.
    pub conns: Vec<String>,
    /// Multiplexor socket path.
    pub mx_socket: Option<String>,
    /// Run as this user.
    pub user: Option<String>,
    /// Spool directory.
    pub spool_dir: Option<String>,
    pub relay_check: bool,
    pub helo_check: bool,
    pub sender_check: bool,
    pub rcpt_check: bool,
    /// Let new connections queue in the multiplexor (no `free` check).
    pub allow_queue: bool,
    /// Workers reserved for loopback connections (sscanf semantics).
    pub reserved: Option<String>,
    /// Address treated as equivalent to 127.0.0.1.
    pub equiv_loopback: Option<String>,
    /// Do not ask the MTA for rejected recipients.
    pub no_rejected_rcpts: bool,
    /// Request the macro lists in negotiation.
    pub setsymlist: bool,
    /// Extra macros to pass in COMMANDS, in order.
    pub extra_macros: Vec<String>,
    /// X-Scanned-By text of the last `-x` or `-X` (which is `-x ""`).
    pub scanned_by: Option<String>,
    pub conserve_fds: bool,
    pub strip_bare_cr: bool,
    pub keep_failed: bool,
    pub debug: bool,
    pub log_times: bool,
    pub group_access: bool,
    pub backlog: Option<String>,
    pub pidfile: Option<String>,
    pub lockfile: Option<String>,
    pub facility: Option<String>,
    pub foreground: bool,
    pub version: bool,
    pub help: bool,
    /// Most MTA connections served at once; more wait in the listen queue
    /// (ours, protocol/SECURITY.md §9).
    pub max_connections: Option<usize>,
    /// Largest milter packet accepted, in bytes (ours, protocol/SECURITY.md §9).
    pub max_packet: Option<usize>,
}

/// Default for `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Upstream's getopt string `GNCDHL:MP:o:R:S:TU:Xa:b:cdhkm:p:qrstvx:z:y`
/// plus our long options, in the order of the usage text
/// (protocol/milter.md §1.3; syntax: protocol/cli.md §1).
#[rustfmt::skip]
pub const OPTIONS: &[Opt<Options>] = &[
    Opt::flag(Short('C'), "Reopen spool files in every callback (conserve descriptors)", |o| o.conserve_fds = true),
    Opt::flag(Short('D'), "Stay in the foreground", |o| o.foreground = true),
    Opt::flag(Short('G'), "Group-writable socket, group-readable spool files", |o| o.group_access = true),
    Opt::flag(Short('H'), "Ask the filter about HELO arguments", |o| o.helo_check = true),
    Opt::text(Short('L'), "ip.addr", "Treat this client address like 127.0.0.1", |o, v| o.equiv_loopback = Some(v)),
    // Accepted and ignored (historical).
    Opt::flag(Short('M'), "", |_| {}),
    Opt::flag(Short('N'), "Do not ask the MTA for recipients it rejected", |o| o.no_rejected_rcpts = true),
    Opt::text(Short('P'), "file", "Write the daemon's process id to file", |o, v| o.pidfile = Some(v)),
    Opt::text(Short('R'), "num", "Keep num workers free for loopback connections", |o, v| o.reserved = Some(v)),
    Opt::text(Short('S'), "facility", "syslog facility", |o, v| o.facility = Some(v)),
    Opt::flag(Short('T'), "Log filter times", |o| o.log_times = true),
    Opt::text(Short('U'), "user", "Run as user (required when started as root)", |o, v| o.user = Some(v)),
    Opt::flag(Short('X'), "Do not add an X-Scanned-By header", |o| o.scanned_by = Some(String::new())),
    Opt::text(Short('a'), "macro", "Pass an additional MTA macro to the filter", |o, v| o.extra_macros.push(v)),
    Opt::text(Short('b'), "n", "listen() backlog", |o, v| o.backlog = Some(v)),
    Opt::flag(Short('c'), "Remove bare <CR> characters from the body", |o| o.strip_bare_cr = true),
    Opt::flag(Short('d'), "Debugging: never remove working directories", |o| o.debug = true),
    Opt::last(Short('h'), "Show this help and exit", |o| o.help = true),
    Opt::flag(Short('k'), "Keep working directories of failed scans", |o| o.keep_failed = true),
    Opt::text(Short('m'), "/path", "UNIX-domain socket of the multiplexor", |o, v| o.mx_socket = Some(v)),
    Opt::text(Short('o'), "file", "Lock file", |o, v| o.lockfile = Some(v)),
    Opt::text(Short('p'), "conn", "Milter socket (unix:/path, inet:port@host, inet6:port@host)", |o, v| o.conns.push(v)),
    Opt::flag(Short('q'), "Let new connections queue in the multiplexor", |o| o.allow_queue = true),
    Opt::flag(Short('r'), "Ask the filter about the connecting relay", |o| o.relay_check = true),
    Opt::flag(Short('s'), "Ask the filter about each sender", |o| o.sender_check = true),
    Opt::flag(Short('t'), "Ask the filter about each recipient", |o| o.rcpt_check = true),
    Opt::last(Short('v'), "Print the version and exit", |o| o.version = true),
    Opt::text(Short('x'), "string", "X-Scanned-By header text", |o, v| o.scanned_by = Some(v)),
    Opt::flag(Short('y'), "Request the macro lists from the MTA", |o| o.setsymlist = true),
    Opt::text(Short('z'), "dir", "Spool directory", |o, v| o.spool_dir = Some(v)),
    Opt::checked(Long("max-connections"), "N", "Most MTA connections served at once (default 4096)", |o, v| {
        o.max_connections = Some(getopt::decimal("--max-connections", &v)?);
        Ok(())
    }),
    Opt::checked(Long("max-packet"), "BYTES", "Largest milter packet accepted", |o, v| {
        o.max_packet = Some(getopt::decimal("--max-packet", &v)?);
        Ok(())
    }),
];

impl Options {
    /// Parses argv (argv\[0\] included) like upstream's getopt; the error
    /// is getopt's complaint.
    pub fn parse_args<I, T>(args: I) -> Result<Options, getopt::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        getopt::parse_argv(OPTIONS, &args)
    }

    /// The listen socket: the last `-p`.
    pub fn conn(&self) -> Option<&str> {
        self.conns.last().map(String::as_str)
    }

    /// `-R`: `sscanf("%d")`, unchanged (-1) when not a number, clamped at -1.
    pub fn reserved_for_loopback(&self) -> i64 {
        self.reserved
            .as_deref()
            .and_then(crate::cformat::number::scan_int)
            .unwrap_or(-1)
            .max(-1)
    }

    /// `-b`: any value below 5 (including garbage) becomes 5; `None` keeps
    /// the default backlog.
    pub fn listen_backlog(&self) -> Option<i32> {
        self.backlog.as_deref().map(|s| {
            crate::cformat::number::scan_int(s)
                .unwrap_or(-1)
                .clamp(5, i32::MAX as i64) as i32
        })
    }

    /// X-Scanned-By text; empty means no header.
    pub fn scanned_by_text(&self) -> String {
        self.scanned_by
            .clone()
            .unwrap_or_else(|| format!("mailmunge {}", crate::VERSION))
    }
}

/// Upstream's usage text (printed to stderr, exit status 1).
pub fn usage() -> String {
    format!(
        "mailmunge version {}\nUsage: mailmunge [options]\nOptions:\n{}",
        crate::VERSION,
        getopt::usage_lines(OPTIONS, "  ", 17)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::parse_args(std::iter::once("mailmunge").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn table_is_sound() {
        assert_eq!(getopt::table_errors(OPTIONS), Vec::<String>::new());
        // Upstream's getopt string, letter for letter (protocol/milter.md §1.3).
        assert_eq!(
            getopt::optstring_letters(&getopt::optstring(OPTIONS)),
            getopt::optstring_letters("GNCDHL:MP:o:R:S:TU:Xa:b:cdhkm:p:qrstvx:z:y")
        );
    }

    #[test]
    fn clustered_and_repeated() {
        let o = parse(&[
            "-rst",
            "-p",
            "inet:1@127.0.0.1",
            "-p",
            "unix:/x",
            "-m/mx",
            "-a",
            "foo",
            "-a",
            "x",
            "-D",
        ]);
        assert!(o.relay_check && o.sender_check && o.rcpt_check && !o.helo_check && o.foreground);
        assert_eq!(o.conn(), Some("unix:/x"));
        assert_eq!(o.mx_socket.as_deref(), Some("/mx"));
        assert_eq!(o.extra_macros, vec!["foo", "x"]);
        assert_eq!(o.scanned_by_text(), "mailmunge 3.09");
    }

    #[test]
    fn numeric_quirks() {
        assert_eq!(parse(&["-R", "abc"]).reserved_for_loopback(), -1);
        assert_eq!(parse(&["-R", "-5"]).reserved_for_loopback(), -1);
        assert_eq!(parse(&["-R", "2x"]).reserved_for_loopback(), 2);
        assert_eq!(parse(&[]).reserved_for_loopback(), -1);
        assert_eq!(parse(&["-b", "1"]).listen_backlog(), Some(5));
        assert_eq!(parse(&["-b", "zz"]).listen_backlog(), Some(5));
        assert_eq!(parse(&["-b", "100"]).listen_backlog(), Some(100));
        assert_eq!(parse(&[]).listen_backlog(), None);
        assert_eq!(parse(&["--max-connections", "7"]).max_connections, Some(7));
        assert_eq!(parse(&["--max-packet=70000"]).max_packet, Some(70000));
        let e = Options::parse_args(["mailmunge", "--max-packet", "7k"]).unwrap_err();
        assert_eq!(
            e.message("mailmunge"),
            "mailmunge: --max-packet: not a number: '7k'\n"
        );
    }

    #[test]
    fn scanned_by() {
        assert_eq!(parse(&["-x", ""]).scanned_by_text(), "");
        assert_eq!(parse(&["-x", "-custom"]).scanned_by_text(), "-custom");
        assert_eq!(parse(&["-X"]).scanned_by_text(), "");
        assert_eq!(parse(&["-X", "-x", "again"]).scanned_by_text(), "again");
        assert_eq!(parse(&["-xfirst", "-dX"]).scanned_by_text(), "");
        assert_eq!(
            parse(&["-dX", "-m", "-X", "-x", "t"]).scanned_by_text(),
            "t"
        );
        assert_eq!(parse(&["-X", "-m", "-x"]).scanned_by_text(), "");
        let o = parse(&["-p", "unix:/a", "-Dp/b", "-m", "-p", "-pinet:1"]);
        assert_eq!(o.conns, ["unix:/a", "/b", "inet:1"]);
        assert_eq!(o.mx_socket.as_deref(), Some("-p"));
    }

    #[test]
    fn help_version_and_errors() {
        assert_eq!(
            Options::parse_args(["mailmunge", "-Z"])
                .unwrap_err()
                .message("mailmunge"),
            "mailmunge: invalid option -- 'Z'\n"
        );
        assert!(parse(&["-h"]).help);
        // -v ends the parse where it is met, as upstream exits there.
        let o = parse(&["-r", "-v", "-Z", "-s"]);
        assert!(o.version && o.relay_check && !o.sender_check);
        // Operands are ignored, and options after them still count.
        let o = parse(&["stray", "-q"]);
        assert!(o.allow_queue);
        let u = usage();
        assert!(u.starts_with("mailmunge version 3.09\nUsage: mailmunge [options]\nOptions:\n  -C                -- Reopen"), "{u}");
        assert!(u.contains("\n  --max-packet BYTES -- Largest"), "{u}");
        assert!(!u.contains("-M"), "{u}");
    }
}
