//! Command-line options of `mailmunge-multiplexor`
//! (protocol/multiplexor.md §2): the upstream letters in the shared getopt
//! syntax (protocol/cli.md §1), numbers read like C's `%d`, then the same
//! defaults, clamps and fatal errors as upstream.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::cformat::getopt::{self, Name::Long, Name::Short, Opt};
use crate::cformat::number::scan_int;

/// Build-time defaults (protocol/multiplexor.md §1).
pub const SPOOLDIR: &str = "/var/spool/mailmunge";
pub const CONFDIR: &str = "/etc/mailmunge";
/// Hard maximum of `-q`.
pub const MAX_QUEUE_SIZE: i64 = 128;

/// Raw options as typed on the command line. Numbers stay strings so that
/// they can be read with C's rules.
#[derive(Debug, Default)]
pub struct Cli {
    pub user: Option<String>,
    pub min_workers: Option<String>,
    pub max_workers: Option<String>,
    pub recipok_per_domain: Option<String>,
    pub max_requests: Option<String>,
    pub max_lifetime: Option<String>,
    pub idle_time: Option<String>,
    pub busy_time: Option<String>,
    pub cmd_time: Option<String>,
    pub slew: Option<String>,
    pub wait: Option<String>,
    pub queue_size: Option<String>,
    pub queue_timeout: Option<String>,
    pub backlog: Option<String>,
    pub log_interval: Option<String>,
    pub rss_kb: Option<String>,
    pub mem_kb: Option<String>,
    pub tick_interval: Option<String>,
    pub tick_types: Option<String>,
    pub socket: Option<String>,
    pub unpriv_socket: Option<String>,
    pub map_socket: Option<String>,
    pub notify_socket: Option<String>,
    pub spool_dir: Option<String>,
    pub filter: Option<String>,
    pub pid_file: Option<String>,
    pub lock_file: Option<String>,
    pub stats_file: Option<String>,
    pub facility: Option<String>,
    pub ident: Option<String>,
    pub stats_syslog: bool,
    pub stats_flush: bool,
    pub verbose: bool,
    pub status_tags: bool,
    pub group_perms: bool,
    pub foreground: bool,
    pub embedded: bool,
    pub log_scheduling: bool,
    pub event_debug: bool,
    pub version: bool,
    pub help: bool,
    /// Our extension: Prometheus metrics endpoint (protocol/metrics.md).
    pub metrics: Option<String>,
    /// Our extension: how much nicer than the multiplexor workers run
    /// (protocol/multiplexor.md §28).
    pub worker_nice: Option<String>,
}

/// Upstream's getopt string
/// `GAa:Tt:um:x:y:r:i:b:c:s:hdlf:p:o:w:W:U:S:q:Q:L:R:M:I:DEO:X:Y:N:vZP:z:V:`
/// plus `--metrics` and `--worker-nice`, in the order of the usage text.
#[rustfmt::skip]
pub const OPTIONS: &[Opt<Cli>] = &[
    Opt::last(Short('h'), "Print usage info and exit", |c| c.help = true),
    Opt::last(Short('v'), "Print version and exit", |c| c.version = true),
    Opt::text(Short('t'), "filename", "Log statistics to filename", |c, v| c.stats_file = Some(v)),
    Opt::text(Short('p'), "filename", "Write process-ID in filename", |c, v| c.pid_file = Some(v)),
    Opt::text(Short('o'), "file", "Use specified file as a lock file", |c, v| c.lock_file = Some(v)),
    Opt::flag(Short('T'), "Log statistics to syslog", |c| c.stats_syslog = true),
    Opt::flag(Short('u'), "Flush stats file after each write", |c| c.stats_flush = true),
    Opt::flag(Short('Z'), "Accept and process status updates from workers", |c| c.status_tags = true),
    Opt::text(Short('U'), "user", "Run as 'user' instead of root", |c, v| c.user = Some(v)),
    Opt::text(Short('m'), "minWorkers", "Minimum number of workers (at least 1)", |c, v| c.min_workers = Some(v)),
    Opt::text(Short('x'), "maxWorkers", "Maximum number of workers (default 2)", |c, v| c.max_workers = Some(v)),
    Opt::text(Short('y'), "n", "Maximum concurrent recipok per domain (0 = no limit)", |c, v| c.recipok_per_domain = Some(v)),
    Opt::text(Short('r'), "maxRequests", "Requests a worker serves before retiring (default 500)", |c, v| c.max_requests = Some(v)),
    Opt::text(Short('V'), "maxLifetime", "Seconds a worker lives before retiring (default unlimited)", |c, v| c.max_lifetime = Some(v)),
    Opt::text(Short('i'), "idleTime", "Idle seconds before a surplus worker is stopped (default 300)", |c, v| c.idle_time = Some(v)),
    Opt::text(Short('b'), "busyTime", "Seconds a worker may take to answer (default 120)", |c, v| c.busy_time = Some(v)),
    Opt::text(Short('c'), "cmdTime", "Seconds allowed for a client to send its command (default 10)", |c, v| c.cmd_time = Some(v)),
    Opt::text(Short('w'), "waitTime", "Seconds between activations made to reach minWorkers (default 1)", |c, v| c.slew = Some(v)),
    Opt::text(Short('W'), "waitTime", "Minimum seconds between any two activations (default 0)", |c, v| c.wait = Some(v)),
    Opt::text(Short('z'), "spooldir", "Spool directory (default /var/spool/mailmunge)", |c, v| c.spool_dir = Some(v)),
    Opt::text(Short('s'), "sock", "UNIX-domain control socket", |c, v| c.socket = Some(v)),
    Opt::text(Short('a'), "socket", "Unprivileged control socket", |c, v| c.unpriv_socket = Some(v)),
    Opt::text(Short('f'), "filter", "Absolute path of the filter program", |c, v| c.filter = Some(v)),
    Opt::flag(Short('l'), "Log worker stderr and other details to syslog", |c| c.verbose = true),
    Opt::flag(Short('d'), "Debugging of the event loop (ignored)", |c| c.event_debug = true),
    Opt::text(Short('R'), "kbytes", "RSS limit of workers in kB", |c, v| c.rss_kb = Some(v)),
    Opt::text(Short('M'), "kbytes", "Memory (address space) limit of workers in kB", |c, v| c.mem_kb = Some(v)),
    Opt::text(Short('S'), "facility", "Syslog facility (default mail)", |c, v| c.facility = Some(v)),
    Opt::text(Short('Y'), "label", "Syslog identifier (default mailmunge-multiplexor)", |c, v| c.ident = Some(v)),
    Opt::text(Short('L'), "interval", "Log worker status every interval seconds", |c, v| c.log_interval = Some(v)),
    Opt::text(Short('q'), "size", "Request queue size (default 0, max 128)", |c, v| c.queue_size = Some(v)),
    Opt::text(Short('Q'), "timeout", "Seconds a request may wait in the queue (default 30)", |c, v| c.queue_timeout = Some(v)),
    Opt::text(Short('I'), "backlog", "listen() backlog", |c, v| c.backlog = Some(v)),
    Opt::flag(Short('D'), "Do not fork into the background", |c| c.foreground = true),
    Opt::flag(Short('E'), "Preload the filter once and fork workers from it", |c| c.embedded = true),
    Opt::text(Short('O'), "sock", "Listen on sock for notification listeners", |c, v| c.notify_socket = Some(v)),
    Opt::text(Short('N'), "sock", "Listen on sock for Sendmail socketmap requests", |c, v| c.map_socket = Some(v)),
    Opt::text(Short('X'), "n", "Run a tick every n seconds", |c, v| c.tick_interval = Some(v)),
    Opt::text(Short('P'), "n", "Number of tick types (1..30)", |c, v| c.tick_types = Some(v)),
    Opt::flag(Short('G'), "Group-accessible sockets and files", |c| c.group_perms = true),
    // Undocumented upstream: log every scheduling decision.
    Opt::flag(Short('A'), "", |c| c.log_scheduling = true),
    Opt::text(Long("metrics"), "sock", "Serve Prometheus metrics on sock (inet:PORT)", |c, v| c.metrics = Some(v)),
    Opt::text(Long("worker-nice"), "n", "Run workers n steps nicer than the multiplexor (default 5; 0..19)", |c, v| c.worker_nice = Some(v)),
];

/// Default of `--worker-nice` (protocol/multiplexor.md §28).
pub const DEFAULT_WORKER_NICE: i32 = 5;

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
    /// `--worker-nice`: added to the multiplexor's nice value for every
    /// worker and the preloading process; 0 = the same priority.
    pub worker_nice: i32,
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
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let argv0 = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mailmunge-multiplexor".into());
        let cli = getopt::parse_argv(OPTIONS, &args)
            .map_err(|e| Exit::Usage(Some(format!("{argv0}: {e}"))))?;
        Options::from_cli(argv0, cli)
    }

    /// Applies upstream's defaults and clamps to raw options. The groups
    /// are read in upstream's order, so the first bad value reported is the
    /// same one upstream reports.
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
        let pool = PoolLimits::from_cli(&c)?;
        let timers = Timers::from_cli(&c)?;
        let queue = QueueLimits::from_cli(&argv0, &c, pool.max_workers)?;
        let monitor = Monitoring::from_cli(&c)?;
        let facility = facility(&argv0, &c)?;
        let paths = Paths::from_cli(&argv0, &c)?;
        check_extensions(&argv0, &c)?;
        let worker_nice = worker_nice(&argv0, &c)?;
        Ok(Options {
            argv0,
            user: c.user,
            min_workers: pool.min_workers as usize,
            max_workers: pool.max_workers as usize,
            recipok_per_domain: pool.per_domain as usize,
            max_requests: pool.max_requests as u64,
            max_lifetime: pool.max_lifetime,
            idle_time: timers.idle_time as u64,
            busy_time: timers.busy_time as u64,
            cmd_time: timers.cmd_time as u64,
            slew: timers.slew as u64,
            wait: timers.wait as u64,
            queue_size: queue.queue_size as usize,
            queue_timeout: queue.queue_timeout as u64,
            backlog: queue.backlog as i32,
            log_interval: monitor.log_interval as u64,
            // Upstream casts the int to unsigned long: a negative value wraps.
            rss_kb: monitor.rss_kb as u64,
            mem_kb: monitor.mem_kb as u64,
            tick_interval: monitor.tick_interval as u64,
            tick_types: monitor.tick_types as u32,
            socket: paths.socket,
            unpriv_socket: c.unpriv_socket,
            map_socket: c.map_socket,
            notify_socket: c.notify_socket,
            spool_dir: paths.spool_dir,
            filter: paths.filter,
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
            worker_nice,
        })
    }
}

/// Reads an optional number with C's `%d` rules; absent means `default`,
/// unreadable is a usage error.
fn num(v: &Option<String>, default: i64) -> Result<i64, Exit> {
    match v {
        None => Ok(default),
        Some(s) => scan_int(s).ok_or(Exit::Usage(None)),
    }
}

/// How many workers there are and how much each may do (`-x -m -y -r -V`).
struct PoolLimits {
    max_workers: i64,
    min_workers: i64,
    per_domain: i64,
    max_requests: i64,
    max_lifetime: Option<u64>,
}

impl PoolLimits {
    fn from_cli(c: &Cli) -> Result<PoolLimits, Exit> {
        let max_workers = num(&c.max_workers, 2)?.max(1);
        // Upstream quirk kept: `-m 0` (and the default 0) means 1, so no
        // setting starts the pool empty (protocol/multiplexor.md §2).
        let min_workers = num(&c.min_workers, 0)?.max(1).min(max_workers);
        let mut per_domain = num(&c.recipok_per_domain, 0)?.max(0);
        if per_domain >= max_workers {
            per_domain = 0;
        }
        let max_requests = num(&c.max_requests, 500)?.max(1);
        let lifetime = num(&c.max_lifetime, 0)?;
        Ok(PoolLimits {
            max_workers,
            min_workers,
            per_domain,
            max_requests,
            max_lifetime: if lifetime <= 0 {
                None
            } else {
                Some(lifetime as u64)
            },
        })
    }
}

/// The timeouts and activation pacing, in seconds (`-i -b -c -w -W`).
struct Timers {
    idle_time: i64,
    busy_time: i64,
    cmd_time: i64,
    slew: i64,
    wait: i64,
}

impl Timers {
    fn from_cli(c: &Cli) -> Result<Timers, Exit> {
        Ok(Timers {
            idle_time: num(&c.idle_time, 300)?.max(10),
            busy_time: num(&c.busy_time, 120)?.max(10),
            cmd_time: num(&c.cmd_time, 10)?.max(10),
            slew: num(&c.slew, 1)?.max(1),
            wait: num(&c.wait, 0)?.max(0),
        })
    }
}

/// The request queue and the listen backlog (`-q -Q -I`).
struct QueueLimits {
    queue_size: i64,
    queue_timeout: i64,
    backlog: i64,
}

impl QueueLimits {
    fn from_cli(argv0: &str, c: &Cli, max_workers: i64) -> Result<QueueLimits, Exit> {
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
        Ok(QueueLimits {
            queue_size,
            queue_timeout,
            backlog,
        })
    }
}

/// Status logging, worker memory limits and ticks (`-L -R -M -X -P`).
struct Monitoring {
    log_interval: i64,
    rss_kb: i64,
    mem_kb: i64,
    tick_interval: i64,
    tick_types: i64,
}

impl Monitoring {
    fn from_cli(c: &Cli) -> Result<Monitoring, Exit> {
        let log_interval = match num(&c.log_interval, 0)? {
            n if n <= 0 => 0,
            n if n < 5 => 5,
            n => n,
        };
        Ok(Monitoring {
            log_interval,
            rss_kb: num(&c.rss_kb, 0)?,
            mem_kb: num(&c.mem_kb, 0)?,
            tick_interval: num(&c.tick_interval, 0)?.max(0),
            tick_types: num(&c.tick_types, 1)?.clamp(1, 30),
        })
    }
}

/// The syslog facility of `-S`; an unknown name is fatal.
fn facility(argv0: &str, c: &Cli) -> Result<libc::c_int, Exit> {
    match &c.facility {
        None => Ok(libc::LOG_MAIL),
        Some(f) => crate::sys::daemon::syslog_facility(f)
            .ok_or_else(|| Exit::Fatal(format!("{argv0}: Unknown syslog facility {f}"))),
    }
}

/// The filter program, the spool directory and the control socket in it.
struct Paths {
    filter: PathBuf,
    spool_dir: PathBuf,
    socket: String,
}

impl Paths {
    fn from_cli(argv0: &str, c: &Cli) -> Result<Paths, Exit> {
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
        Ok(Paths {
            filter: PathBuf::from(filter),
            spool_dir,
            socket,
        })
    }
}

/// Our extensions' own checks: `--metrics` must be a socket we can serve
/// on, and `-E` needs fork.
fn check_extensions(argv0: &str, c: &Cli) -> Result<(), Exit> {
    if let Some(m) = &c.metrics {
        crate::wire::sockspec::SockSpec::parse_mux(m)
            .map_err(|e| Exit::Fatal(format!("{argv0}: --metrics: {e}")))?;
    }
    if c.embedded && !cfg!(unix) {
        return Err(Exit::Fatal("embedded mode needs a Unix system".into()));
    }
    Ok(())
}

/// `--worker-nice`: a whole number from 0 to 19, else a fatal error (it is
/// ours, so no upstream clamp to mimic).
fn worker_nice(argv0: &str, c: &Cli) -> Result<i32, Exit> {
    let Some(v) = &c.worker_nice else {
        return Ok(DEFAULT_WORKER_NICE);
    };
    match v.trim().parse::<i32>() {
        Ok(n) if (0..=19).contains(&n) => Ok(n),
        _ => Err(Exit::Fatal(format!(
            "{argv0}: --worker-nice: '{v}' is not a number from 0 to 19"
        ))),
    }
}

/// The usage text printed by `-h` and on option errors.
pub fn usage(argv0: &str) -> String {
    format!(
        "Usage: {argv0} [options]\nOptions:\n{}",
        getopt::usage_lines(OPTIONS, "  ", 16)
    )
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
    fn table_is_upstreams_getopt_string() {
        assert_eq!(getopt::table_errors(OPTIONS), Vec::<String>::new());
        assert_eq!(
            getopt::optstring_letters(&getopt::optstring(OPTIONS)),
            getopt::optstring_letters(
                "GAa:Tt:um:x:y:r:i:b:c:s:hdlf:p:o:w:W:U:S:q:Q:L:R:M:I:DEO:X:Y:N:vZP:z:V:"
            )
        );
        let u = usage("mux");
        assert!(
            u.starts_with("Usage: mux [options]\nOptions:\n  -h               -- Print usage"),
            "{u}"
        );
        assert!(u.contains("\n  --metrics sock   -- Serve"), "{u}");
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
        assert_eq!(o.worker_nice, DEFAULT_WORKER_NICE);
    }

    #[test]
    fn worker_nice_is_a_number_from_0_to_19() {
        assert_eq!(p(&["--worker-nice", "0"]).unwrap().worker_nice, 0);
        assert_eq!(p(&["--worker-nice=19"]).unwrap().worker_nice, 19);
        for bad in ["20", "-1", "5x", ""] {
            assert_eq!(
                p(&["--worker-nice", bad]).unwrap_err(),
                Exit::Fatal(format!(
                    "mux: --worker-nice: '{bad}' is not a number from 0 to 19"
                )),
                "{bad}"
            );
        }
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
        assert_eq!(
            p(&["-k"]).unwrap_err(),
            Exit::Usage(Some("mux: invalid option -- 'k'".into()))
        );
        assert_eq!(
            p(&["-D", "-x"]).unwrap_err(),
            Exit::Usage(Some("mux: option requires an argument -- 'x'".into()))
        );
        // -h and -v act where they are met (upstream exits there).
        assert_eq!(p(&["-h", "-v"]).unwrap_err(), Exit::Usage(None));
        assert_eq!(
            p(&["-v", "-k"]).unwrap_err(),
            Exit::Version("mailmunge-multiplexor version 3.09\n".into())
        );
    }

    #[test]
    fn combined_flags_and_overrides() {
        let o = p(&["-DZl", "-z", "/tmp/x", "-x", "3", "-x6", "--metrics=inet:9"]).unwrap();
        assert_eq!(o.metrics.as_deref(), Some("inet:9"));
        // An argument is the next word, whatever it looks like.
        assert_eq!(p(&["-s", "-D"]).unwrap().socket, "-D");
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
