//! `/etc/default/mailmunge` variables → the command line of each daemon
//! (protocol/deployment.md §2.1, §2.2).
//!
//! Upstream builds the command lines in `/bin/sh -c` with one backtick test
//! per variable, which word-splits every value
//! (protocol/deployment.md §6.1, §6.4). Here each value becomes exactly one
//! argument; only `MM_EXTRA` is split, on blanks, because it is documented as
//! "extra arguments". The flag order is upstream's, so `ps` shows the same
//! command line for the same file.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys::daemon::StaleSocket;

/// Compiled-in spool directory (configure's SPOOLDIR).
pub const DEFAULT_SPOOLDIR: &str = "/var/spool/mailmunge";
/// Compiled-in user and group the daemons drop to (configure's MMUSER/MMGROUP).
pub const DEFAULT_USER: &str = "mailmunge";
pub const DEFAULT_GROUP: &str = "mailmunge";

/// Values both upstream launchers (units and sysv script) set before reading
/// the configuration files. Applied only when a variable is absent: an
/// explicitly empty value means "off", exactly as upstream.
pub const LAUNCHER_DEFAULTS: &[(&str, &str)] = &[
    ("MX_USER", DEFAULT_USER),
    ("MX_GROUP", DEFAULT_GROUP),
    ("MM_ALLOW_GROUP_ACCESS", "yes"),
    ("MX_BUSY", "600"),
    ("MX_LOG", "yes"),
    ("MX_MINIMUM", "2"),
    ("MX_MAXIMUM", "10"),
];

/// Which daemon to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Milter,
    Multiplexor,
}

impl Daemon {
    /// Program name in `@prefix@/bin`.
    pub fn program(self) -> &'static str {
        match self {
            Daemon::Milter => "mailmunge",
            Daemon::Multiplexor => "mailmunge-multiplexor",
        }
    }

    /// Accepts the program names and the short words the units use.
    pub fn from_name(s: &str) -> Option<Daemon> {
        match s {
            "milter" | "mailmunge" => Some(Daemon::Milter),
            "multiplexor" | "mx" | "mailmunge-multiplexor" => Some(Daemon::Multiplexor),
            _ => None,
        }
    }

    fn table(self) -> &'static [(&'static str, &'static str, Kind)] {
        match self {
            Daemon::Milter => MILTER_FLAGS,
            Daemon::Multiplexor => MULTIPLEXOR_FLAGS,
        }
    }
}

/// How a variable turns into a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Flag alone when the value is exactly `yes`.
    Yes,
    /// Flag and the value as one separate argument when the value is non-empty.
    Value,
}

use Kind::{Value, Yes};

/// protocol/deployment.md §2.1, in upstream's emission order.
const MILTER_FLAGS: &[(&str, &str, Kind)] = &[
    ("MM_CONSERVE_DESCRIPTORS", "-C", Yes),
    ("MM_ALLOW_GROUP_ACCESS", "-G", Yes),
    ("MX_HELO_CHECK", "-H", Yes),
    ("MM_EQUIV_TO_LOOPBACK", "-L", Value),
    ("MM_SUPPRESS_REJECTED_RCPTS", "-N", Yes),
    ("MM_PIDFILE", "-P", Value),
    ("MM_RESERVED_FOR_LOOPBACK", "-R", Value),
    ("SYSLOG_FACILITY", "-S", Value),
    ("LOG_FILTER_TIME", "-T", Yes),
    ("MX_USER", "-U", Value),
    ("SUPPRESS_SCANNED_BY", "-X", Yes),
    ("MM_LISTEN_BACKLOG", "-b", Value),
    ("STRIP_BARE_CR", "-c", Yes),
    ("KEEP_FAILED_DIRECTORIES", "-k", Yes),
    ("ALLOW_CONNECTIONS_TO_QUEUE", "-q", Yes),
    ("MX_RELAY_CHECK", "-r", Yes),
    ("MX_SENDER_CHECK", "-s", Yes),
    ("MX_RECIPIENT_CHECK", "-t", Yes),
    ("SCANNED_BY", "-x", Value),
    ("USE_SMFI_SETSYMLIST", "-y", Yes),
    ("SPOOLDIR", "-z", Value),
];

/// protocol/deployment.md §2.2, in upstream's emission order.
const MULTIPLEXOR_FLAGS: &[(&str, &str, Kind)] = &[
    ("MX_EMBED_PERL", "-E", Yes),
    ("MM_ALLOW_GROUP_ACCESS", "-G", Yes),
    ("MX_LISTEN_BACKLOG", "-I", Value),
    ("MX_LOG_WORKER_STATUS_INTERVAL", "-L", Value),
    ("MX_MAX_AS", "-M", Value),
    ("MX_MAP_SOCKET", "-N", Value),
    ("MX_NOTIFIER", "-O", Value),
    ("MX_PARALLEL_TICKS", "-P", Value),
    ("MX_QUEUE_TIMEOUT", "-Q", Value),
    ("MX_MAX_RSS", "-R", Value),
    ("SYSLOG_FACILITY", "-S", Value),
    ("MX_STATS_SYSLOG", "-T", Yes),
    ("MX_USER", "-U", Value),
    ("MX_MAX_LIFETIME", "-V", Value),
    ("MX_MIN_WORKER_DELAY", "-W", Value),
    ("MX_TICK_INTERVAL", "-X", Value),
    ("MX_SYSLOG_LABEL", "-Y", Value),
    ("MX_STATUS_UPDATES", "-Z", Yes),
    ("MX_UNPRIV_SOCKET", "-a", Value),
    ("MX_BUSY", "-b", Value),
    ("MX_CMD_TIMEOUT", "-c", Value),
    ("FILTER", "-f", Value),
    ("MX_IDLE", "-i", Value),
    ("MX_LOG", "-l", Yes),
    ("MX_MINIMUM", "-m", Value),
    ("MX_PIDFILE", "-p", Value),
    ("MX_QUEUE_SIZE", "-q", Value),
    ("MX_REQUESTS", "-r", Value),
    ("MX_WORKER_DELAY", "-w", Value),
    ("MX_MAXIMUM", "-x", Value),
    ("MX_RECIPOK_PERDOMAIN", "-y", Value),
    // Ours (protocol/metrics.md), not upstream's: last before -z.
    ("MX_METRICS_SOCKET", "--metrics", Value),
    ("MX_WORKER_NICE", "--worker-nice", Value),
    ("SPOOLDIR", "-z", Value),
];

/// Every variable some launcher reads, for documentation checks and `--print`.
pub fn known_variables() -> Vec<&'static str> {
    let mut v: Vec<&str> = MILTER_FLAGS
        .iter()
        .chain(MULTIPLEXOR_FLAGS)
        .map(|(n, _, _)| *n)
        .chain(["MM_EXTRA", "SOCKET", "MX_SOCKET", "MX_GROUP"])
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The configuration variables as the launcher sees them.
#[derive(Debug, Clone, Default)]
pub struct Vars(BTreeMap<String, OsString>);

impl Vars {
    pub fn new() -> Vars {
        Vars::default()
    }

    /// The current process environment.
    pub fn from_env() -> Vars {
        Vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .collect(),
        )
    }

    pub fn set(&mut self, name: &str, value: impl Into<OsString>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// Raw value, empty or not.
    pub fn raw(&self, name: &str) -> Option<&OsStr> {
        self.0.get(name).map(OsString::as_os_str)
    }

    /// Non-empty value (upstream's `[ -n "$X" ]`).
    pub fn value(&self, name: &str) -> Option<&OsStr> {
        self.raw(name).filter(|v| !v.is_empty())
    }

    /// Upstream's `[ "$X" = "yes" ]`: exactly `yes`.
    pub fn yes(&self, name: &str) -> bool {
        self.raw(name).is_some_and(|v| v.as_bytes() == b"yes")
    }

    /// Reads `--env-file` arguments in order (`-path` = skip if missing),
    /// each overriding what came before; `$NAME` in a file sees the
    /// variables known so far. Returns the assignments read, in order.
    pub fn read_env_files<S: AsRef<str>>(
        &mut self,
        specs: &[S],
    ) -> Result<Vec<(String, OsString)>, crate::config::envfile::EnvFileError> {
        let mut read = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let (optional, path) = match spec.strip_prefix('-') {
                Some(p) => (true, p),
                None => (false, spec),
            };
            let snapshot = self.clone();
            let lookup = move |n: &str| snapshot.raw(n).map(OsStr::to_owned);
            for a in crate::config::envfile::read_file(Path::new(path), optional, &lookup)?
                .unwrap_or_default()
            {
                self.set(&a.name, a.value.clone());
                read.push((a.name, a.value));
            }
        }
        Ok(read)
    }

    /// Fills [`LAUNCHER_DEFAULTS`] for absent variables.
    pub fn with_launcher_defaults(mut self) -> Vars {
        for (k, v) in LAUNCHER_DEFAULTS {
            self.0
                .entry((*k).to_owned())
                .or_insert_with(|| OsString::from(v));
        }
        self
    }

    /// `SPOOLDIR`, unset or empty meaning the compiled-in default (the units'
    /// `${SPOOLDIR:=…}`).
    pub fn spooldir(&self) -> PathBuf {
        PathBuf::from(
            self.value("SPOOLDIR")
                .unwrap_or(OsStr::new(DEFAULT_SPOOLDIR)),
        )
    }

    /// Milter listen socket: `SOCKET`, else `$SPOOLDIR/mailmunge.sock`.
    pub fn milter_socket(&self) -> OsString {
        self.value("SOCKET")
            .map(OsStr::to_owned)
            .unwrap_or_else(|| self.spooldir().join("mailmunge.sock").into_os_string())
    }

    /// Multiplexor control socket: `MX_SOCKET`, else `$SPOOLDIR/mailmunge-multiplexor.sock`.
    pub fn mx_socket(&self) -> OsString {
        self.value("MX_SOCKET")
            .map(OsStr::to_owned)
            .unwrap_or_else(|| {
                self.spooldir()
                    .join("mailmunge-multiplexor.sock")
                    .into_os_string()
            })
    }

    /// The socket `daemon` listens on.
    pub fn listen_socket(&self, daemon: Daemon) -> OsString {
        match daemon {
            Daemon::Milter => self.milter_socket(),
            Daemon::Multiplexor => self.mx_socket(),
        }
    }
}

/// Arguments after argv[0] for `daemon`. `foreground` adds the units' `-D`.
pub fn argv(daemon: Daemon, vars: &Vars, foreground: bool) -> Vec<OsString> {
    let spool = vars.spooldir();
    let mut out: Vec<OsString> = Vec::new();
    if foreground {
        out.push("-D".into());
    }
    for &(name, flag, kind) in daemon.table() {
        match kind {
            Yes if vars.yes(name) => out.push(flag.into()),
            Value => {
                let v = if name == "SPOOLDIR" {
                    Some(spool.as_os_str())
                } else {
                    vars.value(name)
                };
                if let Some(v) = v {
                    out.push(flag.into());
                    out.push(v.to_owned());
                }
            }
            Yes => {}
        }
    }
    let lock = |file: &str| spool.join(file).into_os_string();
    match daemon {
        Daemon::Milter => {
            if let Some(extra) = vars.value("MM_EXTRA") {
                out.extend(
                    extra
                        .as_bytes()
                        .split(|b| matches!(b, b' ' | b'\t' | b'\n'))
                        .filter(|w| !w.is_empty())
                        .map(|w| OsStr::from_bytes(w).to_owned()),
                );
            }
            out.extend([
                "-p".into(),
                vars.milter_socket(),
                "-m".into(),
                vars.mx_socket(),
            ]);
            out.extend(["-o".into(), lock("mailmunge.lock")]);
        }
        Daemon::Multiplexor => {
            out.extend(["-s".into(), vars.mx_socket()]);
            out.extend(["-o".into(), lock("mailmunge-multiplexor.lock")]);
        }
    }
    out
}

/// Environment the daemon gets on top of the launcher's: `HOME` is the spool
/// directory (SpamAssassin keeps its state there), `LC_ALL=C` (date
/// headers), and `MAILMUNGE_SPOOLDIR` so that the workers'
/// `Mailmunge::Constants` `Path:SPOOLDIR` is always the daemons' `-z`, even
/// when `SPOOLDIR` differs from the installed default.
pub fn extra_env(vars: &Vars) -> Vec<(&'static str, OsString)> {
    let spool = vars.spooldir().into_os_string();
    vec![
        ("HOME", spool.clone()),
        ("LC_ALL", "C".into()),
        ("MAILMUNGE_SPOOLDIR", spool),
    ]
}

/// The UNIX-socket path of a socket specification, if it is one
/// (`/path`, `unix:/path`, `local:/path`).
pub fn unix_socket_path(spec: &OsStr) -> Option<&Path> {
    let b = spec.as_bytes();
    let p = b
        .strip_prefix(b"unix:")
        .or_else(|| b.strip_prefix(b"local:"))
        .unwrap_or(b);
    p.starts_with(b"/").then(|| Path::new(OsStr::from_bytes(p)))
}

/// Removes a UNIX socket left behind by a crashed daemon. Unlike upstream's
/// `rm -f $SOCKET`, it leaves a live daemon's socket and non-socket files
/// alone, and ignores TCP specifications (protocol/deployment.md §6.5).
/// `Nothing` for a specification that is not a UNIX-domain path.
pub fn remove_stale_socket(spec: &OsStr) -> std::io::Result<StaleSocket> {
    match unix_socket_path(spec) {
        Some(path) => crate::sys::daemon::clear_socket(path, true),
        None => Ok(StaleSocket::Nothing),
    }
}

/// Creates the spool directory when it is missing (it may live on a tmpfs
/// that is empty after a reboot): mode 0750, owned by `MX_USER` and
/// `MX_GROUP` (or the user's group) when running as root. An existing
/// directory is left exactly as the admin set it up. Returns whether it was
/// created.
pub fn ensure_spooldir(vars: &Vars) -> std::io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = vars.spooldir();
    if dir.is_dir() {
        return Ok(false);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)?;
    // Mode and owner are set through a descriptor of the directory itself,
    // never through a symlink put in its place (we may be root).
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir)?;
    // The umask may have narrowed the mode.
    handle.set_permissions(std::fs::Permissions::from_mode(0o750))?;
    if nix::unistd::geteuid().is_root() {
        let name = |v| vars.value(v).and_then(|s| s.to_str());
        let user = name("MX_USER").and_then(|u| nix::unistd::User::from_name(u).ok().flatten());
        let group = name("MX_GROUP")
            .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
            .map(|g| g.gid)
            .or(user.as_ref().map(|u| u.gid));
        if user.is_some() || group.is_some() {
            std::os::unix::fs::fchown(
                &handle,
                user.map(|u| u.uid.as_raw()),
                group.map(|g| g.as_raw()),
            )?;
        }
    }
    Ok(true)
}

/// Renders a command line for humans, quoting words for a POSIX shell.
pub fn shell_line(words: &[OsString]) -> String {
    words
        .iter()
        .map(|w| {
            let s = w.to_string_lossy();
            let plain = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:@=,+%".contains(&b));
            if plain {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (k, val) in pairs {
            v.set(k, *val);
        }
        v
    }

    fn words(d: Daemon, v: &Vars) -> Vec<String> {
        argv(d, v, false)
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    /// The fixed tail every milter command line ends with, for SPOOLDIR default.
    const MILTER_TAIL: [&str; 8] = [
        "-z",
        "/var/spool/mailmunge",
        "-p",
        "/var/spool/mailmunge/mailmunge.sock",
        "-m",
        "/var/spool/mailmunge/mailmunge-multiplexor.sock",
        "-o",
        "/var/spool/mailmunge/mailmunge.lock",
    ];
    const MX_TAIL: [&str; 6] = [
        "-z",
        "/var/spool/mailmunge",
        "-s",
        "/var/spool/mailmunge/mailmunge-multiplexor.sock",
        "-o",
        "/var/spool/mailmunge/mailmunge-multiplexor.lock",
    ];

    /// Setting one variable alone (no launcher defaults) must produce exactly
    /// the flags of its table (protocol/deployment.md §2.1, §2.2), followed by
    /// the fixed tail.
    fn only(d: Daemon, name: &str, value: &str) -> Vec<String> {
        let w = words(d, &vars(&[(name, value)]));
        let tail = if d == Daemon::Milter {
            &MILTER_TAIL[..]
        } else {
            &MX_TAIL[..]
        };
        let tail: Vec<String> = tail.iter().map(|s| s.to_string()).collect();
        assert!(w.ends_with(&tail), "{name}: {w:?}");
        w[..w.len() - tail.len()].to_vec()
    }

    /// Every flag a variable turns into is one the daemon's option table
    /// knows, taking an argument exactly when the variable gives a value.
    #[test]
    fn flags_are_in_the_daemons_option_tables() {
        use crate::cformat::getopt::find;
        for &(name, flag, kind) in MILTER_FLAGS {
            let o = find(crate::milter::options::OPTIONS, flag)
                .unwrap_or_else(|| panic!("{name}: {flag}"));
            assert_eq!(o.takes_argument(), kind == Value, "{name}: {flag}");
        }
        for &(name, flag, kind) in MULTIPLEXOR_FLAGS {
            let o = find(crate::mux::options::OPTIONS, flag)
                .unwrap_or_else(|| panic!("{name}: {flag}"));
            assert_eq!(o.takes_argument(), kind == Value, "{name}: {flag}");
        }
    }

    #[test]
    fn every_milter_yes_variable() {
        for (name, flag) in [
            ("MM_CONSERVE_DESCRIPTORS", "-C"),
            ("MM_ALLOW_GROUP_ACCESS", "-G"),
            ("MX_HELO_CHECK", "-H"),
            ("MM_SUPPRESS_REJECTED_RCPTS", "-N"),
            ("LOG_FILTER_TIME", "-T"),
            ("SUPPRESS_SCANNED_BY", "-X"),
            ("STRIP_BARE_CR", "-c"),
            ("KEEP_FAILED_DIRECTORIES", "-k"),
            ("ALLOW_CONNECTIONS_TO_QUEUE", "-q"),
            ("MX_RELAY_CHECK", "-r"),
            ("MX_SENDER_CHECK", "-s"),
            ("MX_RECIPIENT_CHECK", "-t"),
            ("USE_SMFI_SETSYMLIST", "-y"),
        ] {
            assert_eq!(only(Daemon::Milter, name, "yes"), [flag], "{name}");
            // Only the literal word `yes` switches a flag on.
            for off in ["no", "Yes", "YES", "1", "true", "", "yes "] {
                assert!(only(Daemon::Milter, name, off).is_empty(), "{name}={off:?}");
            }
        }
    }

    #[test]
    fn every_milter_value_variable() {
        for (name, flag) in [
            ("MM_EQUIV_TO_LOOPBACK", "-L"),
            ("MM_PIDFILE", "-P"),
            ("MM_RESERVED_FOR_LOOPBACK", "-R"),
            ("SYSLOG_FACILITY", "-S"),
            ("MX_USER", "-U"),
            ("MM_LISTEN_BACKLOG", "-b"),
            ("SCANNED_BY", "-x"),
        ] {
            assert_eq!(only(Daemon::Milter, name, "v1"), [flag, "v1"], "{name}");
            assert!(only(Daemon::Milter, name, "").is_empty(), "{name} empty");
        }
    }

    #[test]
    fn every_multiplexor_yes_variable() {
        for (name, flag) in [
            ("MX_EMBED_PERL", "-E"),
            ("MM_ALLOW_GROUP_ACCESS", "-G"),
            ("MX_STATS_SYSLOG", "-T"),
            ("MX_STATUS_UPDATES", "-Z"),
            ("MX_LOG", "-l"),
        ] {
            assert_eq!(only(Daemon::Multiplexor, name, "yes"), [flag], "{name}");
            for off in ["no", "Yes", "1", ""] {
                assert!(
                    only(Daemon::Multiplexor, name, off).is_empty(),
                    "{name}={off:?}"
                );
            }
        }
    }

    #[test]
    fn every_multiplexor_value_variable() {
        for (name, flag) in [
            ("MX_LISTEN_BACKLOG", "-I"),
            ("MX_LOG_WORKER_STATUS_INTERVAL", "-L"),
            ("MX_MAX_AS", "-M"),
            ("MX_MAP_SOCKET", "-N"),
            ("MX_NOTIFIER", "-O"),
            ("MX_PARALLEL_TICKS", "-P"),
            ("MX_QUEUE_TIMEOUT", "-Q"),
            ("MX_MAX_RSS", "-R"),
            ("SYSLOG_FACILITY", "-S"),
            ("MX_USER", "-U"),
            ("MX_MAX_LIFETIME", "-V"),
            ("MX_MIN_WORKER_DELAY", "-W"),
            ("MX_TICK_INTERVAL", "-X"),
            ("MX_SYSLOG_LABEL", "-Y"),
            ("MX_UNPRIV_SOCKET", "-a"),
            ("MX_BUSY", "-b"),
            ("MX_CMD_TIMEOUT", "-c"),
            ("FILTER", "-f"),
            ("MX_IDLE", "-i"),
            ("MX_MINIMUM", "-m"),
            ("MX_PIDFILE", "-p"),
            ("MX_QUEUE_SIZE", "-q"),
            ("MX_REQUESTS", "-r"),
            ("MX_WORKER_DELAY", "-w"),
            ("MX_MAXIMUM", "-x"),
            ("MX_RECIPOK_PERDOMAIN", "-y"),
            ("MX_METRICS_SOCKET", "--metrics"),
            ("MX_WORKER_NICE", "--worker-nice"),
        ] {
            assert_eq!(
                only(Daemon::Multiplexor, name, "v1"),
                [flag, "v1"],
                "{name}"
            );
            assert!(
                only(Daemon::Multiplexor, name, "").is_empty(),
                "{name} empty"
            );
        }
    }

    #[test]
    fn milter_only_variables_do_not_reach_the_multiplexor_and_vice_versa() {
        for name in [
            "MX_HELO_CHECK",
            "MM_PIDFILE",
            "SCANNED_BY",
            "MM_EXTRA",
            "SOCKET",
            "MX_GROUP",
        ] {
            assert!(only(Daemon::Multiplexor, name, "yes").is_empty(), "{name}");
        }
        for name in [
            "MX_EMBED_PERL",
            "MX_BUSY",
            "FILTER",
            "MX_PIDFILE",
            "MX_GROUP",
            "MX_TICK_INTERVAL",
        ] {
            assert!(only(Daemon::Milter, name, "yes").is_empty(), "{name}");
        }
    }

    #[test]
    fn foreground_puts_dash_d_first() {
        let a = argv(Daemon::Multiplexor, &vars(&[("MX_LOG", "yes")]), true);
        assert_eq!(a[0], "-D");
        assert_eq!(a[1], "-l");
        assert_eq!(argv(Daemon::Milter, &Vars::new(), true)[0], "-D");
    }

    #[test]
    fn everything_on_keeps_upstream_flag_order() {
        let mut v = Vars::new();
        for (n, _, k) in MILTER_FLAGS.iter().chain(MULTIPLEXOR_FLAGS) {
            v.set(n, if *k == Yes { "yes" } else { "V" });
        }
        v.set("SPOOLDIR", "/s");
        let flags = |d| -> String {
            argv(d, &v, true)
                .iter()
                .map(|w| w.to_str().unwrap())
                .filter(|w| w.starts_with('-'))
                .collect()
        };
        assert_eq!(
            flags(Daemon::Milter),
            "-D-C-G-H-L-N-P-R-S-T-U-X-b-c-k-q-r-s-t-x-y-z-p-m-o"
        );
        assert_eq!(
            flags(Daemon::Multiplexor),
            "-D-E-G-I-L-M-N-O-P-Q-R-S-T-U-V-W-X-Y-Z-a-b-c-f-i-l-m-p-q-r-w-x-y--metrics--worker-nice-z-s-o"
        );
    }

    #[test]
    fn scanned_by_is_one_argument_without_added_quotes() {
        // protocol/deployment.md §6.1: upstream yields `"My` and a stray
        // `Scanner"`.
        let w = words(
            Daemon::Milter,
            &vars(&[("SCANNED_BY", "My \"Scanner\" 1.0")]),
        );
        assert_eq!(&w[..2], ["-x", "My \"Scanner\" 1.0"]);
    }

    #[test]
    fn values_with_blanks_are_not_split() {
        let w = words(
            Daemon::Multiplexor,
            &vars(&[
                ("MX_SYSLOG_LABEL", "mm two"),
                ("FILTER", "/etc/my filters/f.pl"),
            ]),
        );
        assert_eq!(&w[..4], ["-Y", "mm two", "-f", "/etc/my filters/f.pl"]);
    }

    #[test]
    fn mm_extra_is_split_on_blanks_and_placed_after_z() {
        let w = words(
            Daemon::Milter,
            &vars(&[
                ("MM_EXTRA", " -a auth_type\t-a  foo\n"),
                ("MX_RELAY_CHECK", "yes"),
            ]),
        );
        assert_eq!(
            w,
            [
                "-r",
                "-z",
                "/var/spool/mailmunge",
                "-a",
                "auth_type",
                "-a",
                "foo",
                "-p",
                "/var/spool/mailmunge/mailmunge.sock",
                "-m",
                "/var/spool/mailmunge/mailmunge-multiplexor.sock",
                "-o",
                "/var/spool/mailmunge/mailmunge.lock"
            ]
        );
    }

    #[test]
    fn spooldir_moves_sockets_and_locks_unless_sockets_are_set() {
        let v = vars(&[("SPOOLDIR", "/srv/mm")]);
        assert_eq!(
            words(Daemon::Milter, &v),
            [
                "-z",
                "/srv/mm",
                "-p",
                "/srv/mm/mailmunge.sock",
                "-m",
                "/srv/mm/mailmunge-multiplexor.sock",
                "-o",
                "/srv/mm/mailmunge.lock"
            ]
        );
        assert_eq!(
            words(Daemon::Multiplexor, &v),
            [
                "-z",
                "/srv/mm",
                "-s",
                "/srv/mm/mailmunge-multiplexor.sock",
                "-o",
                "/srv/mm/mailmunge-multiplexor.lock"
            ]
        );
        let v = vars(&[
            ("SPOOLDIR", "/srv/mm"),
            ("SOCKET", "inet:8872@127.0.0.1"),
            ("MX_SOCKET", "/run/mx.sock"),
        ]);
        assert_eq!(
            words(Daemon::Milter, &v),
            [
                "-z",
                "/srv/mm",
                "-p",
                "inet:8872@127.0.0.1",
                "-m",
                "/run/mx.sock",
                "-o",
                "/srv/mm/mailmunge.lock"
            ]
        );
        assert_eq!(
            &words(Daemon::Multiplexor, &v)[2..4],
            ["-s", "/run/mx.sock"]
        );
    }

    #[test]
    fn empty_spooldir_and_sockets_fall_back_to_defaults() {
        let v = vars(&[("SPOOLDIR", ""), ("SOCKET", ""), ("MX_SOCKET", "")]);
        assert_eq!(words(Daemon::Milter, &v), MILTER_TAIL);
        assert_eq!(words(Daemon::Multiplexor, &v), MX_TAIL);
        assert_eq!(
            extra_env(&v),
            [
                ("HOME", "/var/spool/mailmunge".into()),
                ("LC_ALL", "C".into()),
                ("MAILMUNGE_SPOOLDIR", "/var/spool/mailmunge".into())
            ]
        );
    }

    #[test]
    fn launcher_defaults_fill_only_absent_variables() {
        let v = Vars::new().with_launcher_defaults();
        assert_eq!(
            words(Daemon::Multiplexor, &v),
            [
                "-G",
                "-U",
                "mailmunge",
                "-b",
                "600",
                "-l",
                "-m",
                "2",
                "-x",
                "10"
            ]
            .into_iter()
            .chain(MX_TAIL)
            .collect::<Vec<_>>()
        );
        assert_eq!(
            words(Daemon::Milter, &v),
            ["-G", "-U", "mailmunge"]
                .into_iter()
                .chain(MILTER_TAIL)
                .collect::<Vec<_>>()
        );
        // Set-but-empty turns a default off, as `[ -n "" ]` does upstream.
        let v = vars(&[
            ("MX_USER", ""),
            ("MM_ALLOW_GROUP_ACCESS", "no"),
            ("MX_BUSY", ""),
        ])
        .with_launcher_defaults();
        assert_eq!(
            words(Daemon::Multiplexor, &v),
            ["-l", "-m", "2", "-x", "10"]
                .into_iter()
                .chain(MX_TAIL)
                .collect::<Vec<_>>()
        );
    }

    /// protocol/deployment.md §5.2: upstream's regression-test configuration
    /// under the sysv script's defaults gives these two command lines.
    #[test]
    fn regression_test_configuration_matches_upstream_command_lines() {
        let v = vars(&[
            ("MX_PIDFILE", "/var/run/mailmunge-multiplexor.pid"),
            ("MM_PIDFILE", "/var/run/mailmunge.pid"),
            ("USE_SMFI_SETSYMLIST", "no"),
            ("MX_RECIPIENT_CHECK", "yes"),
            ("MX_RELAY_CHECK", "yes"),
            ("MX_HELO_CHECK", "yes"),
            ("MX_SENDER_CHECK", "yes"),
            ("MX_LOG", "yes"),
            ("SOCKET", "inet:8872@127.0.0.1"),
            ("MX_EMBED_PERL", "yes"),
        ])
        .with_launcher_defaults();
        let line = |d| shell_line(&argv(d, &v, false));
        assert_eq!(
            line(Daemon::Milter),
            "-G -H -P /var/run/mailmunge.pid -U mailmunge -r -s -t -z /var/spool/mailmunge \
             -p inet:8872@127.0.0.1 -m /var/spool/mailmunge/mailmunge-multiplexor.sock \
             -o /var/spool/mailmunge/mailmunge.lock"
        );
        assert_eq!(
            line(Daemon::Multiplexor),
            "-E -G -U mailmunge -b 600 -l -m 2 -p /var/run/mailmunge-multiplexor.pid -x 10 \
             -z /var/spool/mailmunge -s /var/spool/mailmunge/mailmunge-multiplexor.sock \
             -o /var/spool/mailmunge/mailmunge-multiplexor.lock"
        );
    }

    #[test]
    fn known_variables_cover_section_two() {
        let k = known_variables();
        assert_eq!(k.len(), 55);
        for n in [
            "MM_EXTRA",
            "SOCKET",
            "MX_SOCKET",
            "MX_GROUP",
            "MX_TICK_INTERVAL",
            "FILTER",
            "SPOOLDIR",
        ] {
            assert!(k.contains(&n), "{n}");
        }
    }

    #[test]
    fn unix_socket_paths() {
        assert_eq!(
            unix_socket_path(OsStr::new("/a/b.sock")),
            Some(Path::new("/a/b.sock"))
        );
        assert_eq!(
            unix_socket_path(OsStr::new("unix:/a")),
            Some(Path::new("/a"))
        );
        assert_eq!(
            unix_socket_path(OsStr::new("local:/a")),
            Some(Path::new("/a"))
        );
        assert_eq!(unix_socket_path(OsStr::new("inet:8872@127.0.0.1")), None);
        assert_eq!(unix_socket_path(OsStr::new("inet6:8872")), None);
        assert_eq!(unix_socket_path(OsStr::new("relative.sock")), None);
    }

    #[test]
    fn stale_sockets_are_removed_live_ones_and_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        assert_eq!(
            remove_stale_socket(stale.as_os_str()).unwrap(),
            StaleSocket::Removed
        );
        assert!(!stale.exists());
        assert_eq!(
            remove_stale_socket(stale.as_os_str()).unwrap(),
            StaleSocket::Nothing
        );

        let live = dir.path().join("live.sock");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let spec = OsString::from(format!("unix:{}", live.display()));
        assert_eq!(remove_stale_socket(&spec).unwrap(), StaleSocket::InUse);
        assert!(live.exists());

        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        assert_eq!(
            remove_stale_socket(file.as_os_str()).unwrap(),
            StaleSocket::NotASocket
        );
        assert!(file.exists());
        assert_eq!(
            remove_stale_socket(OsStr::new("inet:1@127.0.0.1")).unwrap(),
            StaleSocket::Nothing
        );
    }

    #[test]
    fn missing_spooldir_is_created_existing_one_left_alone() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("a/spool");
        let mut v = vars(&[
            ("SPOOLDIR", spool.to_str().unwrap()),
            ("MX_USER", "mailmunge"),
            ("MX_GROUP", "mailmunge"),
        ]);
        if !nix::unistd::geteuid().is_root()
            || nix::unistd::User::from_name("mailmunge")
                .ok()
                .flatten()
                .is_none()
        {
            v.set("MX_USER", "");
            v.set("MX_GROUP", "");
        }
        assert!(ensure_spooldir(&v).unwrap());
        let m = std::fs::metadata(&spool).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        if let Some(u) = v
            .value("MX_USER")
            .and_then(|u| nix::unistd::User::from_name(u.to_str().unwrap()).unwrap())
        {
            assert_eq!(m.uid(), u.uid.as_raw());
            assert_eq!(m.gid(), u.gid.as_raw());
        }
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(!ensure_spooldir(&v).unwrap());
        assert_eq!(
            std::fs::metadata(&spool).unwrap().permissions().mode() & 0o7777,
            0o770
        );
    }

    #[test]
    fn env_files_apply_in_order_and_see_earlier_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "SPOOLDIR=/srv/a\nMX_MAXIMUM=4\n").unwrap();
        std::fs::write(&b, "SOCKET=unix:$SPOOLDIR/m.sock\nMX_MAXIMUM=8\n").unwrap();
        let mut v = vars(&[("MX_MAXIMUM", "2"), ("MX_USER", "env")]);
        let specs = [
            a.to_str().unwrap().to_string(),
            b.to_str().unwrap().to_string(),
            "-/nonexistent/x".into(),
        ];
        let read = v.read_env_files(&specs).unwrap();
        let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["SPOOLDIR", "MX_MAXIMUM", "SOCKET", "MX_MAXIMUM"]);
        assert_eq!(v.value("MX_MAXIMUM").unwrap(), "8");
        assert_eq!(v.value("MX_USER").unwrap(), "env");
        assert_eq!(v.milter_socket(), "unix:/srv/a/m.sock");
        assert!(v.read_env_files(&["/nonexistent/x"]).is_err());
    }

    #[test]
    fn shell_line_quotes_only_when_needed() {
        let w: Vec<OsString> = ["-x", "My Scanner", "it's", "", "/a/b:c@d"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(shell_line(&w), r#"-x 'My Scanner' 'it'\''s' '' /a/b:c@d"#);
    }
}
