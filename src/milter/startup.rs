//! Program start-up (protocol/milter.md §1.3–§1.5): option checks, privilege
//! drop, daemonising with a readiness pipe, pid/lock files, the wait for the
//! multiplexor, and the indymilter main loop with signal handling.

use std::future::Future;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use super::mtastream::{MtaStream, OpenConnection};
use super::options::{self, Options, MAX_EXTRA_MACROS, MAX_MACRO_NAME};
use super::session::{self, Config};
use crate::mm_log;
use crate::sys::daemon;
use crate::wire::sockspec::{Listener, SockSpec, Stream};

/// Default spool directory (configure's SPOOLDIR).
pub const SPOOLDIR: &str = "/var/spool/mailmunge";
/// Default client-side bound on one multiplexor request: above the busy
/// timeout of the packaged units (600 s), so the multiplexor's own timeout
/// normally fires first.
const DEFAULT_MX_TIMEOUT: Duration = Duration::from_secs(660);

/// `mailmunge prcap`: the capability dump (protocol/milter.md §1.2).
pub fn prcap() -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<30} {v}\n"));
    line("SMFI_VERSION", "1.0.1 (New-Style)");
    for cap in [
        "CHGFROM",
        "CHGHDRS",
        "DATA",
        "INSHEADER",
        "NEGOTIATE",
        "OPENSOCKET",
        "PROGRESS",
        "QUARANTINE",
        "SETMLREPLY",
        "SETSYMLIST",
        "UNKNOWN",
        "VERSION",
    ] {
        line(&format!("MILTER_BUILDLIB_HAS_{cap}"), "1");
    }
    s.push('\n');
    let perl = find_perl();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<30} {v}\n"));
    line("PERL_PATH", &perl);
    line("SPOOLDIR", SPOOLDIR);
    line("QDIR", "/var/spool/mm-quarantine");
    line("CONFDIR", "/etc/mailmunge");
    line("VERSION", crate::VERSION);
    s
}

fn find_perl() -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("perl"))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/bin/perl".to_string())
}

fn die(msg: impl AsRef<str>) -> ! {
    eprint!("{}", msg.as_ref());
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}

/// What the command line settled, checked before anything else happens.
struct Startup {
    argv0: String,
    opts: Options,
    facility: libc::c_int,
    /// The `-p` argument and its parsed form.
    conn: String,
    sockspec: SockSpec,
    mx_socket: String,
    spool_dir: String,
}

/// The lock file held while running, and its path.
type Lock = Option<(std::fs::File, String)>;

/// The program: `args` includes argv[0]. Returns the exit status. The
/// steps follow protocol/milter.md §1.4.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    let argv0 = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mailmunge".into());
    if args.len() == 2 && args[1] == "prcap" {
        print!("{}", prcap());
        return 0;
    }
    daemon::set_umask(0o077);
    let s = match check_options(argv0, args) {
        ControlFlow::Continue(s) => s,
        ControlFlow::Break(status) => return status,
    };
    let pidfile = open_pidfile(&s);
    become_user(&s);
    let mut ready = daemonise(&s, pidfile.as_ref());
    let Ok(lock) = lock_files(&s.opts, pidfile, &mut ready) else {
        return 1;
    };
    let cfg = session_config(&s);
    let Some(rt) = runtime(&mut ready) else {
        return 1;
    };
    let status = rt.block_on(serve(&s, cfg, &mut ready));
    remove_files(&s.opts);
    if let Some((f, path)) = lock {
        drop(f);
        if s.opts.lockfile.is_none() {
            daemon::unlink_quietly(Path::new(&path));
        }
    }
    status
}

/// Parses and checks the command line; dies with upstream's messages.
/// `Break` carries the exit status of a run that ends here (`-v`).
fn check_options(argv0: String, args: Vec<std::ffi::OsString>) -> ControlFlow<i32, Startup> {
    if let Err(msg) = daemon::check_not_setid(&argv0) {
        die(format!("{msg}\n"));
    }
    // getopt's complaint, then the usage (protocol/cli.md §3).
    let opts = match Options::parse_args(args) {
        Ok(o) => o,
        Err(e) => die(format!("{}{}", e.message(&argv0), options::usage())),
    };
    if opts.version {
        println!("mailmunge version {}", crate::VERSION);
        return ControlFlow::Break(0);
    }
    if opts.help {
        die(options::usage());
    }
    check_macros(&argv0, &opts.extra_macros);
    let facility = match &opts.facility {
        Some(f) => daemon::syslog_facility(f)
            .unwrap_or_else(|| die(format!("{argv0}: Unknown syslog facility {f}\n"))),
        None => libc::LOG_MAIL,
    };
    let (conn, sockspec) = listen_spec(&argv0, &opts);
    let Some(mx_socket) = opts.mx_socket.clone() else {
        die(format!("{argv0}: You must use the `-m' option.\n"));
    };
    let spool_dir = spool_dir(&opts);
    ControlFlow::Continue(Startup {
        argv0,
        opts,
        facility,
        conn,
        sockspec,
        mx_socket,
        spool_dir,
    })
}

fn check_macros(argv0: &str, extra_macros: &[String]) {
    if let Some(m) = extra_macros.iter().find(|m| m.len() > MAX_MACRO_NAME) {
        die(format!("{argv0}: Macro name too long: {m}\n"));
    }
    if extra_macros.len() > MAX_EXTRA_MACROS {
        die(format!(
            "{argv0}: Too many Sendmail macros (max {MAX_EXTRA_MACROS})\n"
        ));
    }
}

/// The `-p` socket to listen on. Each `-p` names a socket the milter may
/// have left behind; like upstream, an earlier one is cleared too (sockets
/// only), the last is the one used.
fn listen_spec(argv0: &str, opts: &Options) -> (String, SockSpec) {
    if opts.conns.iter().any(String::is_empty) {
        die(format!("{argv0}: Illegal conn: \n"));
    }
    for c in opts.conns.iter().rev().skip(1) {
        if let Ok(SockSpec::Unix(p)) = SockSpec::parse_milter(c) {
            daemon::remove_socket(&p);
        }
    }
    let conn = match opts.conn() {
        Some(c) => c.to_string(),
        None => die(format!("{argv0}: You must use the `-p' option.\n")),
    };
    let sockspec = SockSpec::parse_milter(&conn)
        .unwrap_or_else(|e| die(format!("{argv0}: Could not open connection {conn}: {e}\n")));
    (conn, sockspec)
}

/// Workers chdir to their own spool directory before each command, so a
/// relative working-directory path would point nowhere: anchor it here.
fn spool_dir(opts: &Options) -> String {
    let mut spool_dir = opts
        .spool_dir
        .clone()
        .unwrap_or_else(|| SPOOLDIR.to_string());
    if !spool_dir.starts_with('/') {
        if let Ok(cwd) = std::env::current_dir() {
            spool_dir = format!("{}/{spool_dir}", cwd.display());
        }
    }
    spool_dir
}

/// The pid file is opened before privileges are dropped.
fn open_pidfile(s: &Startup) -> Option<daemon::PidFile> {
    s.opts.pidfile.as_ref().map(|p| {
        daemon::PidFile::open(Path::new(p)).unwrap_or_else(|e| {
            super::log::init(s.facility);
            mm_log!(Error, "{e}");
            die(format!("{}: {e}\n", s.argv0))
        })
    })
}

/// Drops to `-U`, refuses to go on as root, and moves to the spool.
fn become_user(s: &Startup) {
    let argv0 = &s.argv0;
    if let Some(user) = &s.opts.user {
        match daemon::drop_privileges(user) {
            Ok(()) => {}
            Err(daemon::DaemonError::UnknownUser(_)) => {
                die(format!("{argv0}: Unknown user `{user}'"))
            }
            Err(e) => die(format!("{argv0}: Could not drop privileges: {e}")),
        }
    }
    if daemon::running_as_root() {
        die("ERROR: You must not run mailmunge as root.\nUse the -U option to set a non-root user.\n");
    }
    if let Err(e) = std::env::set_current_dir(&s.spool_dir) {
        die(format!("{argv0}: Unable to chdir({}): {e}\n", s.spool_dir));
    }
}

/// Daemonises (unless `-f`) before any thread exists: the tokio runtime
/// comes later. Then closes what the starter left open and starts logging.
fn daemonise(s: &Startup, pidfile: Option<&daemon::PidFile>) -> daemon::Readiness {
    let ready = if s.opts.foreground {
        daemon::Readiness::foreground()
    } else {
        daemon::daemonize().unwrap_or_else(|e| die(format!("{}: {e}\n", s.argv0)))
    };
    // Nothing the starter left open stays open (protocol/SECURITY.md §2).
    let mut keep: Vec<i32> = ready.raw_fd().into_iter().collect();
    keep.extend(pidfile.map(daemon::PidFile::raw_fd));
    daemon::close_inherited_fds(&keep);
    super::log::init(s.facility);
    // Every SMTP session holds a descriptor; the usual soft limit of 1024
    // would cap concurrent sessions well below what the milter can serve.
    daemon::raise_nofile();
    ready
}

/// Takes the lock (`-o`, else `<pidfile>.lock`) and writes the pid
/// (protocol/milter.md §1.5). `Err` after reporting: another copy runs.
fn lock_files(
    opts: &Options,
    pidfile: Option<daemon::PidFile>,
    ready: &mut daemon::Readiness,
) -> Result<Lock, ()> {
    let path = match (&opts.lockfile, &opts.pidfile) {
        (Some(l), _) => l.clone(),
        (None, Some(p)) => format!("{p}.lock"),
        (None, None) => return Ok(None),
    };
    let lock = match daemon::lock_file(Path::new(&path)) {
        Ok(f) => Some((f, path)),
        Err(e) => {
            mm_log!(Error, "{e}.  Is another copy running?");
            ready.fail("Cannot lock lockfile: Is another copy running?");
            return Err(());
        }
    };
    if let Some(p) = pidfile {
        if let Err(e) = p.write_pid(std::process::id()) {
            mm_log!(Error, "Could not write PID file: {e}");
        }
    }
    Ok(lock)
}

/// The callbacks' configuration; logs the address the host appears to have.
fn session_config(s: &Startup) -> Config {
    let my_ip = my_ip_address();
    match &my_ip {
        Some(ip) => mm_log!(Info, "My IP address appears to be {ip}"),
        None => mm_log!(
            Warning,
            "Could not determine my own IP address!  Ensure that this host has a default route."
        ),
    }
    let opts = &s.opts;
    Config {
        mx_socket: PathBuf::from(&s.mx_socket),
        spool_dir: s.spool_dir.clone(),
        relay_check: opts.relay_check,
        helo_check: opts.helo_check,
        sender_check: opts.sender_check,
        rcpt_check: opts.rcpt_check,
        allow_queue: opts.allow_queue,
        reserved_for_loopback: opts.reserved_for_loopback(),
        equiv_loopback: opts.equiv_loopback.clone(),
        see_rejected_rcpts: !opts.no_rejected_rcpts,
        setsymlist: opts.setsymlist,
        extra_macros: opts.extra_macros.clone(),
        scanned_by: opts.scanned_by_text(),
        conserve_fds: opts.conserve_fds,
        strip_bare_cr: opts.strip_bare_cr,
        keep_failed: opts.keep_failed,
        debug: opts.debug,
        log_times: opts.log_times,
        my_ip,
        mx_timeout: mx_timeout(),
        reservations: Default::default(),
    }
}

/// Sessions are I/O-bound tasks: one runtime thread serves every MTA
/// connection, and file work goes to the blocking pool
/// (`crate::sys::blocking`). A multi-thread runtime cost more CPU per
/// message than it could win: indymilter hands every milter command
/// between two tasks of a session, and on several workers each hand-off
/// may wake another thread (protocol/milter.md §18.2). `None` after
/// reporting a failure.
fn runtime(ready: &mut daemon::Readiness) -> Option<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    match b.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            mm_log!(Error, "cannot start the runtime: {e}");
            ready.fail("cannot start the runtime");
            None
        }
    }
}

/// Listens, waits for the multiplexor, reports ready, then runs the milter
/// until a signal. Returns the exit status.
async fn serve(s: &Startup, cfg: Config, ready: &mut daemon::Readiness) -> i32 {
    let Some(listener) = listen(s, ready) else {
        return 1;
    };
    mm_log!(
        Info,
        "mailmunge {} alive. workersReservedForLoopback={} AllowNewConnectionsToQueue={} doRelayCheck={} doHeloCheck={} doSenderCheck={} doRecipientCheck={}",
        crate::VERSION,
        cfg.reserved_for_loopback,
        cfg.allow_queue as i32,
        cfg.relay_check as i32,
        cfg.helo_check as i32,
        cfg.sender_check as i32,
        cfg.rcpt_check as i32
    );
    if !wait_for_multiplexor(&cfg).await {
        mm_log!(
            Error,
            "mailmunge-multiplexor socket did not appear.  Exiting."
        );
        ready.fail("mailmunge-multiplexor socket did not appear.  Exiting.");
        remove_files(&s.opts);
        return 1;
    }
    mm_log!(
        Info,
        "mailmunge-multiplexor is responding - entering main loop"
    );
    ready.ready();
    run_loop(&s.opts, listener, cfg).await
}

/// Binds `-p`; the umask brackets the socket creation (`-G` opens it to
/// the group). `None` after reporting a failure.
fn listen(s: &Startup, ready: &mut daemon::Readiness) -> Option<Listener> {
    let (socket_umask, file_umask) = if s.opts.group_access {
        (0o007, 0o027)
    } else {
        (0o077, 0o077)
    };
    daemon::set_umask(socket_umask);
    let backlog = s.opts.listen_backlog().unwrap_or(libc::SOMAXCONN.max(20));
    let bound = s.sockspec.bind(backlog);
    daemon::set_umask(file_umask);
    let conn = &s.conn;
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            mm_log!(Error, "Could not open connection {conn}: {e}");
            ready.fail(&format!("Could not open connection {conn}: {e}"));
            return None;
        }
    };
    if let Some(w) = s.sockspec.all_addresses_warning(conn) {
        mm_log!(Warning, "{w}");
    }
    Some(listener)
}

/// indymilter's main loop until a stop signal; the UNIX socket goes with it.
async fn run_loop(opts: &Options, listener: Listener, cfg: Config) -> i32 {
    let unix_path = listener.path().map(|p| p.to_path_buf());
    let limits = Limits::from(opts);
    let config = indymilter::Config {
        max_connections: limits.connections,
        ..Default::default()
    };
    let callbacks = session::callbacks(Arc::new(cfg));
    let listener = NoDelayListener::new(listener, limits);
    let r = indymilter::run(
        listener,
        callbacks,
        config,
        shutdown_signal(opts.foreground),
    )
    .await;
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    match r {
        Ok(()) => 0,
        Err(e) => {
            mm_log!(Error, "milter main loop failed: {e}");
            1
        }
    }
}

/// At exit the pid file and an explicit `-o` lock file are removed, as
/// upstream does.
fn remove_files(opts: &Options) {
    if let Some(p) = &opts.pidfile {
        daemon::unlink_quietly(Path::new(p));
    }
    if let Some(p) = &opts.lockfile {
        daemon::unlink_quietly(Path::new(p));
    }
}

/// `MAILMUNGE_MX_TIMEOUT` (seconds; 0 = wait forever) overrides the default
/// bound on multiplexor requests.
fn mx_timeout() -> Option<Duration> {
    match std::env::var("MAILMUNGE_MX_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(DEFAULT_MX_TIMEOUT),
    }
}

/// Up to 200 tries, 100 ms apart, for a `free` answer
/// (protocol/milter.md §1.4 step 10).
async fn wait_for_multiplexor(cfg: &Config) -> bool {
    let probe = Config {
        mx_timeout: Some(Duration::from_secs(2)),
        ..cfg.clone()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tokio::time::Instant::now() > deadline {
            break;
        }
        if let Some(n) = quiet_free(&probe).await {
            if n >= 0 {
                return true;
            }
        }
    }
    false
}

/// `free` without the per-failure error lines (the start-up loop expects
/// failures while the multiplexor comes up).
async fn quiet_free(cfg: &Config) -> Option<i64> {
    let r = crate::wire::mxclient::request(&cfg.mx_socket, b"free\n", cfg.mx_timeout)
        .await
        .ok()?;
    super::reply::parse_free_reply(&r.bytes)
}

/// The host's address as upstream determines it: the source address of a
/// UDP "connection" to 8.8.8.8:53 (nothing is sent). `MAILMUNGE_MY_IP`
/// overrides it (tests, hosts without a default route).
fn my_ip_address() -> Option<String> {
    if let Ok(v) = std::env::var("MAILMUNGE_MY_IP") {
        return if v.is_empty() { None } else { Some(v) };
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("8.8.8.8:53").ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

/// SIGTERM, SIGINT and (in the foreground) SIGHUP stop the milter; a
/// daemon ignores SIGHUP, as upstream's does.
async fn shutdown_signal(foreground: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut hup = if foreground {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => {}
        _ = recv(&mut int) => {}
        _ = recv(&mut hup) => {}
    }
    mm_log!(Info, "mailmunge stopping on signal");
}

/// Accepts MTA connections for indymilter; TCP ones get TCP_NODELAY so each
/// milter reply leaves at once instead of waiting on delayed ACKs. Running
/// out of descriptors pauses accepting for a moment instead of ending the
/// milter.
struct NoDelayListener {
    inner: Listener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    limits: Limits,
    /// Connections open now.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// Bounds on what MTA clients may hold (protocol/SECURITY.md §9).
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    packet: usize,
}

impl From<&Options> for Limits {
    fn from(o: &Options) -> Limits {
        Limits {
            connections: o
                .max_connections
                .unwrap_or(super::options::DEFAULT_MAX_CONNECTIONS)
                .max(1),
            packet: o
                .max_packet
                .unwrap_or(super::mtastream::DEFAULT_MAX_PACKET)
                .max(1024),
        }
    }
}

impl NoDelayListener {
    fn new(inner: Listener, limits: Limits) -> Self {
        NoDelayListener {
            inner,
            backoff: None,
            limits,
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Wraps an accepted connection; says so in the log when it takes the
    /// last allowed slot (further connections then wait).
    fn wrap(&self, stream: Stream) -> MtaStream {
        let (open, n) = OpenConnection::new(&self.open);
        if n == self.limits.connections {
            mm_log!(
                Warning,
                "{n} MTA connections are open, the --max-connections limit; new ones wait until one closes"
            );
        }
        MtaStream::new(stream, self.limits.packet, Some(open))
    }
}

impl indymilter::Listener for NoDelayListener {
    type Io = MtaStream;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<MtaStream>> {
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            let r = match &mut self.inner {
                Listener::Unix(l, _) => {
                    tokio::net::UnixListener::poll_accept(l, cx).map_ok(|(s, _)| Stream::Unix(s))
                }
                Listener::Tcp(l) => tokio::net::TcpListener::poll_accept(l, cx).map_ok(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
            };
            match r {
                Poll::Ready(Err(e)) if is_transient_accept_error(&e) => {
                    // A client that gave up before accept must not end the milter.
                    mm_log!(Warning, "accept failed: {e}");
                }
                Poll::Ready(Err(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    mm_log!(Error, "accept failed: {e}; pausing for 100ms");
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
                other => return other.map_ok(|s| self.wrap(s)),
            }
        }
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}
