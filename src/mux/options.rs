//! Command-line options of `mailmunge-multiplexor`
//! (protocol/multiplexor.md §2): the upstream letters, parsed with clap,
//! numbers read like C's `%d`, then the same defaults, clamps and fatal errors
//! as upstream.

use clap::Parser;
use std::path::PathBuf;

use crate::cformat::number::scan_int;

/// Build-time defaults (protocol/multiplexor.md §1).
pub const SPOOLDIR: &str = "/var/spool/mailmunge";
pub const CONFDIR: &str = "/etc/mailmunge";
/// Hard maximum of `-q`.
pub const MAX_QUEUE_SIZE: i64 = 128;

/// Raw options as typed on the command line. Numbers stay strings so that
/// they can be read with C's rules.
#[derive(Parser, Debug, Default)]
#[command(
    name = "mailmunge-multiplexor",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true
)]
pub struct Cli {
    #[arg(short = 'U')]
    pub user: Option<String>,
    #[arg(short = 'm', allow_hyphen_values = true)]
    pub min_workers: Option<String>,
    #[arg(short = 'x', allow_hyphen_values = true)]
    pub max_workers: Option<String>,
    #[arg(short = 'y', allow_hyphen_values = true)]
    pub recipok_per_domain: Option<String>,
    #[arg(short = 'r', allow_hyphen_values = true)]
    pub max_requests: Option<String>,
    #[arg(short = 'V', allow_hyphen_values = true)]
    pub max_lifetime: Option<String>,
    #[arg(short = 'i', allow_hyphen_values = true)]
    pub idle_time: Option<String>,
    #[arg(short = 'b', allow_hyphen_values = true)]
    pub busy_time: Option<String>,
    #[arg(short = 'c', allow_hyphen_values = true)]
    pub cmd_time: Option<String>,
    #[arg(short = 'w', allow_hyphen_values = true)]
    pub slew: Option<String>,
    #[arg(short = 'W', allow_hyphen_values = true)]
    pub wait: Option<String>,
    #[arg(short = 'q', allow_hyphen_values = true)]
    pub queue_size: Option<String>,
    #[arg(short = 'Q', allow_hyphen_values = true)]
    pub queue_timeout: Option<String>,
    #[arg(short = 'I', allow_hyphen_values = true)]
    pub backlog: Option<String>,
    #[arg(short = 'L', allow_hyphen_values = true)]
    pub log_interval: Option<String>,
    #[arg(short = 'R', allow_hyphen_values = true)]
    pub rss_kb: Option<String>,
    #[arg(short = 'M', allow_hyphen_values = true)]
    pub mem_kb: Option<String>,
    #[arg(short = 'X', allow_hyphen_values = true)]
    pub tick_interval: Option<String>,
    #[arg(short = 'P', allow_hyphen_values = true)]
    pub tick_types: Option<String>,
    #[arg(short = 's')]
    pub socket: Option<String>,
    #[arg(short = 'a')]
    pub unpriv_socket: Option<String>,
    #[arg(short = 'N')]
    pub map_socket: Option<String>,
    #[arg(short = 'O')]
    pub notify_socket: Option<String>,
    #[arg(short = 'z')]
    pub spool_dir: Option<String>,
    #[arg(short = 'f')]
    pub filter: Option<String>,
    #[arg(short = 'p')]
    pub pid_file: Option<String>,
    #[arg(short = 'o')]
    pub lock_file: Option<String>,
    #[arg(short = 't')]
    pub stats_file: Option<String>,
    #[arg(short = 'S')]
    pub facility: Option<String>,
    #[arg(short = 'Y')]
    pub ident: Option<String>,
    #[arg(short = 'T')]
    pub stats_syslog: bool,
    #[arg(short = 'u')]
    pub stats_flush: bool,
    #[arg(short = 'l')]
    pub verbose: bool,
    #[arg(short = 'Z')]
    pub status_tags: bool,
    #[arg(short = 'G')]
    pub group_perms: bool,
    #[arg(short = 'D')]
    pub foreground: bool,
    #[arg(short = 'E')]
    pub embedded: bool,
    #[arg(short = 'A')]
    pub log_scheduling: bool,
    #[arg(short = 'd')]
    pub event_debug: bool,
    #[arg(short = 'v')]
    pub version: bool,
    #[arg(short = 'h')]
    pub help: bool,
    /// Our extension: Prometheus metrics endpoint (protocol/metrics.md).
    #[arg(long = "metrics")]
    pub metrics: Option<String>,
}

/// Normalised options.
#[derive(Debug, Clone)]
pub struct Options {
    pub argv0: String,
    pub user: Option<String>,
    pub min_workers: usize,
    pub max_workers: usize,
    /// `-y`; 0 = disabled.
    pub recipok_per_domain: usize,
    pub max_requests: u64,
    /// `-V`; `None` = unlimited.
    pub max_lifetime: Option<u64>,
    pub idle_time: u64,
    pub busy_time: u64,
    pub cmd_time: u64,
    pub slew: u64,
    pub wait: u64,
    pub queue_size: usize,
    pub queue_timeout: u64,
    pub backlog: i32,
    pub log_interval: u64,
    pub rss_kb: u64,
    pub mem_kb: u64,
    pub tick_interval: u64,
    pub tick_types: u32,
    pub socket: String,
    pub unpriv_socket: Option<String>,
    pub map_socket: Option<String>,
    pub notify_socket: Option<String>,
    pub spool_dir: PathBuf,
    pub filter: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// `-o` as given (unlinked at shutdown).
    pub lock_file: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    pub stats_syslog: bool,
    pub stats_flush: bool,
    pub verbose: bool,
    pub status_tags: bool,
    pub group_perms: bool,
    pub foreground: bool,
    pub embedded: bool,
    pub log_scheduling: bool,
    pub facility: libc::c_int,
    pub ident: String,
    /// `--metrics` socket specification.
    pub metrics: Option<String>,
}

/// Why option parsing stopped the program.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// `-v`: print this to stdout, exit 0.
    Version(String),
    /// `-h` or a bad option: print the optional message, the usage text, exit 1.
    Usage(Option<String>),
    /// A fatal message for stderr, exit 1.
    Fatal(String),
}

impl Options {
    /// The lock file actually used: `-o`, else `<pidfile>.lock`, else none.
    pub fn effective_lock_file(&self) -> Option<PathBuf> {
        self.lock_file.clone().or_else(|| {
            self.pid_file.as_ref().map(|p| {
                let mut s = p.clone().into_os_string();
                s.push(".lock");
                PathBuf::from(s)
            })
        })
    }

    /// The busy (reply) timeout.
    pub fn busy_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.busy_time)
    }

    /// The client/command timeout.
    pub fn cmd_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cmd_time)
    }

    /// Parses and normalises argv (argv[0] included).
    pub fn parse<I, T>(args: I) -> Result<Options, Exit>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let argv0 = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mailmunge-multiplexor".into());
        let cli = Cli::try_parse_from(&args).map_err(|e| {
            let first = e.render().to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or("invalid option")
                .trim_start_matches("error: ")
                .to_string();
            Exit::Usage(Some(format!("{argv0}: {first}")))
        })?;
        Options::from_cli(argv0, cli)
    }

    /// Applies upstream's defaults and clamps to raw options.
    pub fn from_cli(argv0: String, c: Cli) -> Result<Options, Exit> {
        if c.version {
            return Err(Exit::Version(format!(
                "mailmunge-multiplexor version {}\n",
                crate::VERSION
            )));
        }
        if c.help {
            return Err(Exit::Usage(None));
        }
        let num = |v: &Option<String>, default: i64| -> Result<i64, Exit> {
            match v {
                None => Ok(default),
                Some(s) => scan_int(s).ok_or(Exit::Usage(None)),
            }
        };
        let max_workers = num(&c.max_workers, 2)?.max(1);
        let min_workers = num(&c.min_workers, 0)?.max(1).min(max_workers);
        let mut per_domain = num(&c.recipok_per_domain, 0)?.max(0);
        if per_domain >= max_workers {
            per_domain = 0;
        }
        let max_requests = num(&c.max_requests, 500)?.max(1);
        let lifetime = num(&c.max_lifetime, 0)?;
        let idle_time = num(&c.idle_time, 300)?.max(10);
        let busy_time = num(&c.busy_time, 120)?.max(10);
        let cmd_time = num(&c.cmd_time, 10)?.max(10);
        let slew = num(&c.slew, 1)?.max(1);
        let wait = num(&c.wait, 0)?.max(0);
        let queue_size = num(&c.queue_size, 0)?.max(0);
        if queue_size > MAX_QUEUE_SIZE {
            return Err(Exit::Fatal(format!(
                "{argv0}: Request queue size {queue_size} too big ({MAX_QUEUE_SIZE} max)"
            )));
        }
        let queue_timeout = num(&c.queue_timeout, 30)?.clamp(1, 600);
        let backlog = match &c.backlog {
            Some(_) => num(&c.backlog, 0)?.clamp(5, 200),
            None => (max_workers / 4).clamp(5, 200),
        };
        let log_interval = match num(&c.log_interval, 0)? {
            n if n <= 0 => 0,
            n if n < 5 => 5,
            n => n,
        };
        let rss_kb = num(&c.rss_kb, 0)?;
        let mem_kb = num(&c.mem_kb, 0)?;
        let tick_interval = num(&c.tick_interval, 0)?.max(0);
        let tick_types = num(&c.tick_types, 1)?.clamp(1, 30);
        let facility = match &c.facility {
            None => libc::LOG_MAIL,
            Some(f) => crate::sys::daemon::syslog_facility(f)
                .ok_or_else(|| Exit::Fatal(format!("{argv0}: Unknown syslog facility {f}")))?,
        };
        let filter = c
            .filter
            .clone()
            .unwrap_or_else(|| format!("{CONFDIR}/mailmunge-filter.pl"));
        if !filter.starts_with('/') {
            return Err(Exit::Fatal(format!(
                "{argv0}: -f: You must supply an absolute path for filter program"
            )));
        }
        let spool_dir = PathBuf::from(c.spool_dir.clone().unwrap_or_else(|| SPOOLDIR.to_string()));
        let socket = c
            .socket
            .clone()
            .unwrap_or_else(|| format!("{}/mailmunge-multiplexor.sock", spool_dir.display()));
        if let Some(m) = &c.metrics {
            crate::wire::sockspec::SockSpec::parse_mux(m)
                .map_err(|e| Exit::Fatal(format!("{argv0}: --metrics: {e}")))?;
        }
        if c.embedded && !cfg!(unix) {
            return Err(Exit::Fatal("embedded mode needs a Unix system".into()));
        }
        Ok(Options {
            argv0,
            user: c.user,
            min_workers: min_workers as usize,
            max_workers: max_workers as usize,
            recipok_per_domain: per_domain as usize,
            max_requests: max_requests as u64,
            max_lifetime: if lifetime <= 0 {
                None
            } else {
                Some(lifetime as u64)
            },
            idle_time: idle_time as u64,
            busy_time: busy_time as u64,
            cmd_time: cmd_time as u64,
            slew: slew as u64,
            wait: wait as u64,
            queue_size: queue_size as usize,
            queue_timeout: queue_timeout as u64,
            backlog: backlog as i32,
            log_interval: log_interval as u64,
            // Upstream casts the int to unsigned long: a negative value wraps.
            rss_kb: rss_kb as u64,
            mem_kb: mem_kb as u64,
            tick_interval: tick_interval as u64,
            tick_types: tick_types as u32,
            socket,
            unpriv_socket: c.unpriv_socket,
            map_socket: c.map_socket,
            notify_socket: c.notify_socket,
            spool_dir,
            filter: PathBuf::from(filter),
            pid_file: c.pid_file.map(PathBuf::from),
            lock_file: c.lock_file.map(PathBuf::from),
            stats_file: c.stats_file.map(PathBuf::from),
            stats_syslog: c.stats_syslog,
            stats_flush: c.stats_flush,
            verbose: c.verbose,
            status_tags: c.status_tags,
            group_perms: c.group_perms,
            foreground: c.foreground,
            embedded: c.embedded,
            log_scheduling: c.log_scheduling,
            facility,
            ident: c.ident.unwrap_or_else(|| "mailmunge-multiplexor".into()),
            metrics: c.metrics,
        })
    }
}

/// The usage text printed by `-h` and on option errors.
pub fn usage(argv0: &str) -> String {
    let lines: &[(&str, &str)] = &[
        ("-h", "Print usage info and exit"),
        ("-v", "Print version and exit"),
        ("-t filename", "Log statistics to filename"),
        ("-p filename", "Write process-ID in filename"),
        ("-o file", "Use specified file as a lock file"),
        ("-T", "Log statistics to syslog"),
        ("-u", "Flush stats file after each write"),
        ("-Z", "Accept and process status updates from workers"),
        ("-U user", "Run as 'user' instead of root"),
        ("-m minWorkers", "Minimum number of workers (at least 1)"),
        ("-x maxWorkers", "Maximum number of workers (default 2)"),
        (
            "-y n",
            "Maximum concurrent recipok per domain (0 = no limit)",
        ),
        (
            "-r maxRequests",
            "Requests a worker serves before retiring (default 500)",
        ),
        (
            "-V maxLifetime",
            "Seconds a worker lives before retiring (default unlimited)",
        ),
        (
            "-i idleTime",
            "Idle seconds before a surplus worker is stopped (default 300)",
        ),
        (
            "-b busyTime",
            "Seconds a worker may take to answer (default 120)",
        ),
        (
            "-c cmdTime",
            "Seconds allowed for a client to send its command (default 10)",
        ),
        (
            "-w waitTime",
            "Seconds between activations made to reach minWorkers (default 1)",
        ),
        (
            "-W waitTime",
            "Minimum seconds between any two activations (default 0)",
        ),
        (
            "-z spooldir",
            "Spool directory (default /var/spool/mailmunge)",
        ),
        ("-s sock", "UNIX-domain control socket"),
        ("-a socket", "Unprivileged control socket"),
        ("-f filter", "Absolute path of the filter program"),
        ("-l", "Log worker stderr and other details to syslog"),
        ("-d", "Debugging of the event loop (ignored)"),
        ("-R kbytes", "RSS limit of workers in kB"),
        ("-M kbytes", "Memory (address space) limit of workers in kB"),
        ("-S facility", "Syslog facility (default mail)"),
        (
            "-Y label",
            "Syslog identifier (default mailmunge-multiplexor)",
        ),
        ("-L interval", "Log worker status every interval seconds"),
        ("-q size", "Request queue size (default 0, max 128)"),
        (
            "-Q timeout",
            "Seconds a request may wait in the queue (default 30)",
        ),
        ("-I backlog", "listen() backlog"),
        ("-D", "Do not fork into the background"),
        ("-E", "Preload the filter once and fork workers from it"),
        ("-O sock", "Listen on sock for notification listeners"),
        ("-N sock", "Listen on sock for Sendmail socketmap requests"),
        ("-X n", "Run a tick every n seconds"),
        ("-P n", "Number of tick types (1..30)"),
        ("-G", "Group-accessible sockets and files"),
        (
            "--metrics sock",
            "Serve Prometheus metrics on sock (inet:PORT)",
        ),
    ];
    let mut s = format!("Usage: {argv0} [options]\nOptions:\n");
    for (o, t) in lines {
        s.push_str(&format!("  {o:<16} -- {t}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, Exit> {
        let mut v = vec!["mux"];
        v.extend_from_slice(args);
        Options::parse(v)
    }

    #[test]
    fn defaults() {
        let o = p(&[]).unwrap();
        assert_eq!((o.min_workers, o.max_workers), (1, 2));
        assert_eq!(
            (o.max_requests, o.idle_time, o.busy_time, o.cmd_time),
            (500, 300, 120, 10)
        );
        assert_eq!(
            (o.slew, o.wait, o.queue_size, o.queue_timeout, o.backlog),
            (1, 0, 0, 30, 5)
        );
        assert_eq!(o.socket, "/var/spool/mailmunge/mailmunge-multiplexor.sock");
        assert_eq!(
            o.filter,
            PathBuf::from("/etc/mailmunge/mailmunge-filter.pl")
        );
        assert_eq!(o.max_lifetime, None);
        assert_eq!(o.facility, libc::LOG_MAIL);
        assert_eq!(o.ident, "mailmunge-multiplexor");
    }

    #[test]
    fn clamps_like_upstream() {
        let o = p(&[
            "-m", "5", "-x", "3", "-b", "2", "-c", "0", "-i", "9", "-Q", "900", "-L", "3", "-P",
            "99", "-y", "3",
        ])
        .unwrap();
        assert_eq!((o.min_workers, o.max_workers), (3, 3));
        assert_eq!(
            (o.busy_time, o.cmd_time, o.idle_time, o.queue_timeout),
            (10, 10, 10, 600)
        );
        assert_eq!(
            (o.log_interval, o.tick_types, o.recipok_per_domain),
            (5, 30, 0)
        );
        let o = p(&[
            "-x", "0", "-m", "-4", "-V", "-1", "-y", "1", "-x", "8", "-I", "1000",
        ])
        .unwrap();
        assert_eq!(
            (
                o.min_workers,
                o.max_workers,
                o.recipok_per_domain,
                o.backlog
            ),
            (1, 8, 1, 200)
        );
        assert_eq!(o.max_lifetime, None);
        assert_eq!(p(&["-x", "40"]).unwrap().backlog, 10);
    }

    #[test]
    fn numbers_read_like_sscanf() {
        assert_eq!(p(&["-x", "10abc"]).unwrap().max_workers, 10);
        assert_eq!(p(&["-x", " 7"]).unwrap().max_workers, 7);
        assert_eq!(p(&["-x4"]).unwrap().max_workers, 4);
        assert_eq!(p(&["-x", "abc"]).unwrap_err(), Exit::Usage(None));
    }

    #[test]
    fn fatal_messages() {
        assert_eq!(
            p(&["-q", "200"]).unwrap_err(),
            Exit::Fatal("mux: Request queue size 200 too big (128 max)".into())
        );
        assert_eq!(
            p(&["-f", "rel.pl"]).unwrap_err(),
            Exit::Fatal("mux: -f: You must supply an absolute path for filter program".into())
        );
        assert_eq!(
            p(&["-S", "nope"]).unwrap_err(),
            Exit::Fatal("mux: Unknown syslog facility nope".into())
        );
        assert_eq!(
            p(&["-v"]).unwrap_err(),
            Exit::Version("mailmunge-multiplexor version 3.09\n".into())
        );
        assert_eq!(p(&["-h"]).unwrap_err(), Exit::Usage(None));
        assert!(matches!(p(&["-k"]).unwrap_err(), Exit::Usage(Some(_))));
    }

    #[test]
    fn combined_flags_and_overrides() {
        let o = p(&["-DZl", "-z", "/tmp/x", "-x", "3", "-x", "6"]).unwrap();
        assert!(o.foreground && o.status_tags && o.verbose);
        assert_eq!(o.max_workers, 6);
        assert_eq!(o.socket, "/tmp/x/mailmunge-multiplexor.sock");
        let o = p(&["-p", "/run/mx.pid"]).unwrap();
        assert_eq!(
            o.effective_lock_file(),
            Some(PathBuf::from("/run/mx.pid.lock"))
        );
    }
}
