//! Command-line options of `mailmunge` (protocol/milter.md §1.3), with
//! upstream's letters and getopt-like behaviour: clustered flags, last
//! occurrence wins, `-h`/unknown options print the usage to stderr and exit 1.

use clap::{ArgAction, Parser};

/// Most `-a` macros upstream accepts.
pub const MAX_EXTRA_MACROS: usize = 30;
/// Longest `-a` macro name upstream accepts.
pub const MAX_MACRO_NAME: usize = 200;

#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "mailmunge",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    allow_hyphen_values = true
)]
pub struct Options {
    /// Milter listen socket (`unix:/path`, `/path`, `inet:PORT@HOST`, `inet6:PORT@HOST`).
    #[arg(short = 'p')]
    pub conn: Option<String>,
    /// Multiplexor socket path.
    #[arg(short = 'm')]
    pub mx_socket: Option<String>,
    /// Run as this user.
    #[arg(short = 'U')]
    pub user: Option<String>,
    /// Spool directory.
    #[arg(short = 'z')]
    pub spool_dir: Option<String>,
    #[arg(short = 'r', action = ArgAction::SetTrue)]
    pub relay_check: bool,
    #[arg(short = 'H', action = ArgAction::SetTrue)]
    pub helo_check: bool,
    #[arg(short = 's', action = ArgAction::SetTrue)]
    pub sender_check: bool,
    #[arg(short = 't', action = ArgAction::SetTrue)]
    pub rcpt_check: bool,
    /// Let new connections queue in the multiplexor (no `free` check).
    #[arg(short = 'q', action = ArgAction::SetTrue)]
    pub allow_queue: bool,
    /// Workers reserved for loopback connections (sscanf semantics).
    #[arg(short = 'R')]
    pub reserved: Option<String>,
    /// Address treated as equivalent to 127.0.0.1.
    #[arg(short = 'L')]
    pub equiv_loopback: Option<String>,
    /// Do not ask the MTA for rejected recipients.
    #[arg(short = 'N', action = ArgAction::SetTrue)]
    pub no_rejected_rcpts: bool,
    /// Request the macro lists in negotiation.
    #[arg(short = 'y', action = ArgAction::SetTrue)]
    pub setsymlist: bool,
    /// Extra macro to pass in COMMANDS (repeatable).
    #[arg(short = 'a', action = ArgAction::Append)]
    pub extra_macros: Vec<String>,
    /// X-Scanned-By text (empty disables the header).
    #[arg(short = 'x', allow_hyphen_values = true)]
    pub scanned_by: Option<String>,
    #[arg(short = 'X', action = ArgAction::SetTrue)]
    pub no_scanned_by: bool,
    #[arg(short = 'C', action = ArgAction::SetTrue)]
    pub conserve_fds: bool,
    #[arg(short = 'c', action = ArgAction::SetTrue)]
    pub strip_bare_cr: bool,
    #[arg(short = 'k', action = ArgAction::SetTrue)]
    pub keep_failed: bool,
    #[arg(short = 'd', action = ArgAction::SetTrue)]
    pub debug: bool,
    #[arg(short = 'T', action = ArgAction::SetTrue)]
    pub log_times: bool,
    #[arg(short = 'G', action = ArgAction::SetTrue)]
    pub group_access: bool,
    #[arg(short = 'b')]
    pub backlog: Option<String>,
    #[arg(short = 'P')]
    pub pidfile: Option<String>,
    #[arg(short = 'o')]
    pub lockfile: Option<String>,
    #[arg(short = 'S')]
    pub facility: Option<String>,
    #[arg(short = 'D', action = ArgAction::SetTrue)]
    pub foreground: bool,
    /// Accepted and ignored (historical).
    #[arg(short = 'M', action = ArgAction::SetTrue)]
    pub historical_m: bool,
    #[arg(short = 'v', action = ArgAction::SetTrue)]
    pub version: bool,
    #[arg(short = 'h', action = ArgAction::SetTrue)]
    pub help: bool,
    /// Most MTA connections served at once; more wait in the listen queue
    /// (ours, protocol/SECURITY.md §9).
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest milter packet accepted, in bytes (ours, protocol/SECURITY.md §9).
    #[arg(long = "max-packet", value_name = "BYTES")]
    pub max_packet: Option<usize>,
}

/// Default for `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Options that take an argument (upstream's getopt string).
const WITH_ARG: &str = "LPoRSUabmpxz";

impl Options {
    /// Parses argv (argv[0] included) like upstream's getopt.
    pub fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let mut o = Options::try_parse_from(&args)?;
        // -x TEXT and -X set the same thing; the later one wins.
        if let Some(last) = last_scanned_by_option(&args[1.min(args.len())..]) {
            match last {
                Some(text) => {
                    o.no_scanned_by = false;
                    o.scanned_by = Some(text);
                }
                None => o.no_scanned_by = true,
            }
        }
        Ok(o)
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
        if self.no_scanned_by {
            return String::new();
        }
        self.scanned_by
            .clone()
            .unwrap_or_else(|| format!("mailmunge {}", crate::VERSION))
    }
}

/// Walks argv (without argv[0]) as getopt would: every option letter in
/// order, with its argument for the options that take one.
pub fn getopt_walk(args: &[String]) -> Vec<(char, Option<String>)> {
    let mut out = vec![];
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        let Some(flags) = a.strip_prefix('-') else {
            continue;
        };
        for (pos, c) in flags.char_indices() {
            if WITH_ARG.contains(c) {
                let attached = &flags[pos + c.len_utf8()..];
                let value = if !attached.is_empty() {
                    Some(attached.to_string())
                } else {
                    i += 1;
                    args.get(i - 1).cloned()
                };
                out.push((c, value));
                break;
            }
            out.push((c, None));
        }
    }
    out
}

/// The last `-x` (`Some(text)`) or `-X` (`None`) given, if any.
fn last_scanned_by_option(args: &[String]) -> Option<Option<String>> {
    getopt_walk(args)
        .into_iter()
        .rev()
        .find_map(|(c, v)| match c {
            'x' => Some(v),
            'X' => Some(None),
            _ => None,
        })
}

/// Every `-p` value, in order (upstream removes each one's socket file).
pub fn all_conns(args: &[String]) -> Vec<String> {
    getopt_walk(args)
        .into_iter()
        .filter(|(c, _)| *c == 'p')
        .filter_map(|(_, v)| v)
        .collect()
}

/// Upstream's usage text (printed to stderr, exit status 1).
pub fn usage() -> String {
    let v = crate::VERSION;
    let lines = [
        "Usage: mailmunge [options]",
        "Options:",
        "  -C                -- Reopen spool files in every callback (conserve descriptors)",
        "  -D                -- Stay in the foreground",
        "  -G                -- Group-writable socket, group-readable spool files",
        "  -H                -- Ask the filter about HELO arguments",
        "  -L ip.addr        -- Treat this client address like 127.0.0.1",
        "  -N                -- Do not ask the MTA for recipients it rejected",
        "  -P file           -- Write the daemon's process id to file",
        "  -R num            -- Keep num workers free for loopback connections",
        "  -S facility       -- syslog facility",
        "  -T                -- Log filter times",
        "  -U user           -- Run as user (required when started as root)",
        "  -X                -- Do not add an X-Scanned-By header",
        "  -a macro          -- Pass an additional MTA macro to the filter",
        "  -b n              -- listen() backlog",
        "  -c                -- Remove bare <CR> characters from the body",
        "  -d                -- Debugging: never remove working directories",
        "  -h                -- Show this help and exit",
        "  -k                -- Keep working directories of failed scans",
        "  -m /path          -- UNIX-domain socket of the multiplexor",
        "  -o file           -- Lock file",
        "  -p conn           -- Milter socket (unix:/path, inet:port@host, inet6:port@host)",
        "  -q                -- Let new connections queue in the multiplexor",
        "  -r                -- Ask the filter about the connecting relay",
        "  -s                -- Ask the filter about each sender",
        "  -t                -- Ask the filter about each recipient",
        "  -v                -- Print the version and exit",
        "  -x string         -- X-Scanned-By header text",
        "  -y                -- Request the macro lists from the MTA",
        "  -z dir            -- Spool directory",
    ];
    let mut s = format!("mailmunge version {v}\n");
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::parse_args(std::iter::once("mailmunge").chain(args.iter().copied())).unwrap()
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
        assert_eq!(o.conn.as_deref(), Some("unix:/x"));
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
        let args: Vec<String> = ["-p", "unix:/a", "-Dp/b", "-m", "-p", "-pinet:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(all_conns(&args), ["unix:/a", "/b", "inet:1"]);
        assert!(Options::try_parse_from(["mailmunge", "-Z"]).is_err());
        assert!(parse(&["-h"]).help);
    }
}
