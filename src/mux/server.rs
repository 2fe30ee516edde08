//! Start-up, timers, signals and shutdown of the multiplexor
//! (protocol/multiplexor.md §2.1, §7.9, §7.10, §15.3, §16).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal as unix_signal, SignalKind};

use super::control::{self, Access};
use super::options::{usage, Exit, Options};
use super::pool::Mux;
use super::worker::Spawner;
use crate::cformat::strerror;
use crate::sys::daemon::{self, PidFile, Readiness, LOG_ERR, LOG_INFO, LOG_WARNING};
use crate::wire::sockspec::{Listener, SockSpec};

fn access_ok(path: &Path, mode: libc::c_int) -> bool {
    use nix::unistd::{access, AccessFlags};
    access(path, AccessFlags::from_bits_truncate(mode)).is_ok()
}

/// The filter checks of protocol/multiplexor.md §2.1 step 8.
fn check_filter(o: &Options) -> Result<(), String> {
    let f = &o.filter;
    let a0 = &o.argv0;
    let m = std::fs::metadata(f)
        .map_err(|e| format!("{a0}: Unable to stat({}): {}", f.display(), strerror(&e)))?;
    if !m.is_file() {
        return Err(format!(
            "{a0}: Filter program {} is not a regular file.",
            f.display()
        ));
    }
    if !access_ok(f, libc::R_OK) {
        return Err(format!(
            "{a0}: Filter program {} is not readable.",
            f.display()
        ));
    }
    if !o.embedded && !access_ok(f, libc::X_OK) {
        return Err(format!(
            "{a0}: Filter program {} is not executable.",
            f.display()
        ));
    }
    Ok(())
}

/// Refuses to start with a filter that does not compile: every worker
/// would die at start-up (protocol/multiplexor.md §26). Other check
/// failures are only logged; the workers will tell.
async fn compile_check(opts: &Options) -> Result<(), String> {
    use super::reload::{check_filter, CheckError};
    match check_filter(opts).await {
        Ok(_) => Ok(()),
        Err(CheckError::Compile(why)) => Err(format!(
            "The filter {} does not compile, so no worker could start; perl -c said: {why}  MULTIPLEXOR IS TERMINATING.",
            opts.filter.display()
        )),
        Err(e) => {
            daemon::log(LOG_WARNING, &format!("Could not check the filter: {e}"));
            Ok(())
        }
    }
}

/// The whole program; returns the exit status.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    daemon::set_umask(0o077);
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let argv0 = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mailmunge-multiplexor".into());
    if let Err(m) = daemon::check_not_setid(&argv0) {
        eprintln!("{m}");
        return 1;
    }
    let opts = match parse_options(&argv0, args) {
        ControlFlow::Continue(o) => o,
        ControlFlow::Break(status) => return status,
    };
    let Ok(pidfile) = prepare(&argv0, &opts) else {
        return 1;
    };
    let Ok(readiness) = daemonise(&argv0, &opts, pidfile.as_ref()) else {
        return 1;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut r = readiness;
            r.fail(&format!("Unable to start the runtime: {e}"));
            return 1;
        }
    };
    let code = rt.block_on(serve(opts, pidfile, readiness));
    rt.shutdown_timeout(Duration::from_millis(200));
    code
}

/// The options, or the exit status of a run that ends with `-v`, `-h` or
/// an error (protocol/multiplexor.md §2).
fn parse_options(argv0: &str, args: Vec<std::ffi::OsString>) -> ControlFlow<i32, Options> {
    match Options::parse(args) {
        Ok(o) => ControlFlow::Continue(o),
        Err(Exit::Version(v)) => {
            print!("{v}");
            ControlFlow::Break(0)
        }
        Err(Exit::Usage(msg)) => {
            if let Some(m) = msg {
                eprintln!("{m}\n");
            }
            eprint!("{}", usage(argv0));
            ControlFlow::Break(1)
        }
        Err(Exit::Fatal(m)) => {
            eprintln!("{m}");
            ControlFlow::Break(1)
        }
    }
}

/// Steps 4-8 of protocol/multiplexor.md §2.1: the PID file opened as the
/// invoking user, the privilege drop, the spool, the filter. `Err` after
/// the error was printed.
fn prepare(argv0: &str, opts: &Options) -> Result<Option<PidFile>, ()> {
    let pidfile = match &opts.pid_file {
        None => None,
        Some(p) => match PidFile::open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("{argv0}: {e}");
                daemon::log(LOG_ERR, &e.to_string());
                return Err(());
            }
        },
    };
    if let Some(u) = &opts.user {
        if let Err(e) = daemon::drop_privileges(u) {
            eprintln!("{argv0}: {e}");
            return Err(());
        }
    }
    if daemon::running_as_root() {
        eprintln!("ERROR: You must not run mailmunge-multiplexor as root.\nUse the -U option to set a non-root user.");
        return Err(());
    }
    if let Err(e) = std::env::set_current_dir(&opts.spool_dir) {
        let dir = opts.spool_dir.display();
        eprintln!("{argv0}: Unable to chdir({dir}): {}", strerror(&e));
        return Err(());
    }
    if let Err(m) = check_filter(opts) {
        eprintln!("{m}");
        return Err(());
    }
    Ok(pidfile)
}

/// Daemonises unless `-D` (protocol/multiplexor.md §2.2), before any thread
/// exists, and closes what the starter left open. `Err` after the error
/// was printed.
fn daemonise(argv0: &str, opts: &Options, pidfile: Option<&PidFile>) -> Result<Readiness, ()> {
    let readiness = if opts.foreground {
        Readiness::foreground()
    } else {
        match daemon::daemonize() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{argv0}: {e}");
                return Err(());
            }
        }
    };
    let mut keep: Vec<i32> = readiness.raw_fd().into_iter().collect();
    keep.extend(pidfile.map(PidFile::raw_fd));
    daemon::close_inherited_fds(&keep);
    daemon::raise_nofile();
    super::worker::reserve_low_fds();
    Ok(readiness)
}

/// Paths to clean up at exit.
struct Cleanup {
    pid_file: Option<PathBuf>,
    lock_file: Option<PathBuf>,
    sockets: Vec<PathBuf>,
}

impl Cleanup {
    fn files(&self) {
        for p in self.pid_file.iter().chain(self.lock_file.iter()) {
            daemon::unlink_quietly(p);
        }
    }
}

/// The notifier and socketmap servers: on SIGTERM they stop accepting and
/// close their listeners before the socket files are removed.
struct SideServers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SideServers {
    fn new() -> Self {
        SideServers {
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Completes once `stop` has been called.
    fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|&stopped| stopped).await;
        }
    }

    fn spawn(&mut self, server: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(server));
    }

    /// Stops the servers and waits (bounded) until their listeners are closed.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

fn bind_with_umask(
    spec: &SockSpec,
    backlog: i32,
    mask: u32,
    file_mask: u32,
) -> std::io::Result<Listener> {
    daemon::set_umask(mask);
    let r = spec.bind(backlog);
    daemon::set_umask(file_mask);
    r
}

/// Parses a socket argument and binds it under `mask`.
fn parse_and_bind(arg: &str, backlog: i32, mask: u32, file_mask: u32) -> std::io::Result<Listener> {
    let spec = SockSpec::parse_mux(arg).map_err(|e| std::io::Error::other(e.to_string()))?;
    let l = bind_with_umask(&spec, backlog, mask, file_mask)?;
    if let Some(w) = spec.all_addresses_warning(arg) {
        daemon::log(daemon::LOG_WARNING, &w);
    }
    Ok(l)
}

/// Binds one of the optional sockets (notifier, socketmap, metrics): a
/// failure is logged and the daemon runs on without it, like upstream.
fn bind_side(
    kind: &str,
    arg: &str,
    backlog: i32,
    (mask, file_mask): (u32, u32),
    cleanup: &mut Cleanup,
) -> Option<Listener> {
    match parse_and_bind(arg, backlog, mask, file_mask) {
        Ok(l) => {
            cleanup.sockets.extend(l.path().map(Path::to_path_buf));
            Some(l)
        }
        Err(e) => {
            daemon::log(
                LOG_ERR,
                &format!("Unable to create {kind} socket {arg}: {e}"),
            );
            None
        }
    }
}

/// Socket and file umasks (protocol/multiplexor.md §2.4).
#[derive(Debug, Clone, Copy)]
struct Masks {
    sock: u32,
    file: u32,
}

impl Masks {
    fn of(opts: &Options) -> Masks {
        if opts.group_perms {
            Masks {
                sock: 0o007,
                file: 0o027,
            }
        } else {
            Masks {
                sock: 0o077,
                file: 0o077,
            }
        }
    }
}

/// Start-up in progress: the readiness report still owed to the launcher
/// and what to remove if start-up fails.
struct Starting {
    ready: Readiness,
    cleanup: Cleanup,
}

impl Starting {
    /// A fatal start-up error (protocol/multiplexor.md §2.1): logged, files
    /// and sockets removed, reported; returns the exit status.
    fn fail(&mut self, msg: &str) -> i32 {
        daemon::log(LOG_ERR, msg);
        self.cleanup.files();
        for s in &self.cleanup.sockets {
            daemon::remove_socket(s);
        }
        // Last, so that the launcher returns only after the clean-up.
        self.ready.fail(msg);
        1
    }
}

/// The daemon after daemonising: the rest of the start-up of
/// protocol/multiplexor.md §2.1 (here the control socket comes last, §2.2),
/// then the wait for SIGTERM or a `stop`.
async fn serve(opts: Options, pidfile: Option<PidFile>, ready: Readiness) -> i32 {
    let masks = Masks::of(&opts);
    daemon::set_umask(masks.file);
    daemon::open_syslog(&opts.ident, opts.facility);
    let mut st = Starting {
        ready,
        cleanup: Cleanup {
            pid_file: opts.pid_file.clone(),
            lock_file: opts.lock_file.clone(),
            sockets: Vec::new(),
        },
    };
    let Ok(_lock) = lock_files(&opts, pidfile, &mut st.ready) else {
        return 1;
    };
    let (spec, unpriv) = match control_specs(&opts, masks, &mut st) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let mut sigterm = match unix_signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return st.fail(&format!("Unable to handle SIGTERM: {e}")),
    };
    log_started(&opts);
    let mux = Mux::new(opts.clone());
    // Until the filter is preloaded (-E), workers are started with perl.
    let spawner = super::worker::Starter::install(&mux, Spawner::initial(&opts));
    let side = side_servers(&mux, &opts, masks, &mut st.cleanup);
    spawn_timers(&mux);
    if let Err(msg) = prepare_workers(&opts, &spawner).await {
        return st.fail(&msg);
    }
    // The first worker starts before we report ready
    // (protocol/multiplexor.md §2.2).
    if mux.lock().fill_once() {
        mux.fill.notify_one();
    }
    if let Err(status) = open_control(&mux, &spec, unpriv, masks, &mut st) {
        return status;
    }
    st.ready.ready();
    tokio::spawn(log_alive());

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = mux.shutdown.notified() => {}
    }
    shutdown(&mux, &st.cleanup, side).await
}

/// Takes the lock file and writes the PID file
/// (protocol/multiplexor.md §2.3). `Err` after reporting that another copy
/// holds the lock; its files are left alone.
fn lock_files(
    opts: &Options,
    pidfile: Option<PidFile>,
    ready: &mut Readiness,
) -> Result<Option<std::fs::File>, ()> {
    let lock = match opts.effective_lock_file() {
        None => None,
        Some(lf) => match daemon::lock_file(&lf) {
            Ok(f) => Some(f),
            Err(e) => {
                daemon::log(LOG_ERR, &format!("{e}.  Is another copy running?"));
                ready.fail("Cannot lock lockfile: Is another copy running?");
                return Err(());
            }
        },
    };
    if let Some(pf) = pidfile {
        if let Err(e) = pf.write_pid(std::process::id()) {
            daemon::log(LOG_ERR, &format!("Could not write PID file: {e}"));
        }
    }
    Ok(lock)
}

/// Checks the `-s` specification (bound last, by `open_control`) and binds
/// `-a` under umask 000. `Err` carries the exit status after a failure.
fn control_specs(
    opts: &Options,
    masks: Masks,
    st: &mut Starting,
) -> Result<(SockSpec, Option<Listener>), i32> {
    let spec = match SockSpec::parse_mux(&opts.socket) {
        Ok(s) => s,
        Err(_) => return Err(st.fail("Unable to create listening socket.")),
    };
    if spec.is_tcp() {
        return Err(
            st.fail("Argument to -s option must be a UNIX-domain socket, not a TCP socket.")
        );
    }
    let Some(a) = &opts.unpriv_socket else {
        return Ok((spec, None));
    };
    match parse_and_bind(a, opts.backlog, 0, masks.file) {
        Ok(l) => {
            st.cleanup.sockets.extend(l.path().map(Path::to_path_buf));
            Ok((spec, Some(l)))
        }
        Err(e) => {
            daemon::log(LOG_ERR, &format!("{a}: {e}"));
            Err(st.fail("Unable to create unprivileged listening socket"))
        }
    }
}

/// The `-l` start-up line (protocol/multiplexor.md §2.1 step 14).
fn log_started(opts: &Options) {
    if !opts.verbose {
        return;
    }
    daemon::log(
        LOG_INFO,
        &format!(
            "started; minWorkers={}, maxWorkers={}, maxRequests={}, maxLifetime={}, maxIdleTime={}, busyTimeout={}, clientTimeout={}",
            opts.min_workers,
            opts.max_workers,
            opts.max_requests,
            opts.max_lifetime.map(|l| l as i64).unwrap_or(-1),
            opts.idle_time,
            opts.busy_time,
            opts.cmd_time
        ),
    );
}

/// The notifier (`-O`), socketmap (`-N`) and metrics (`--metrics`)
/// servers; a socket that cannot be made is only logged.
fn side_servers(
    mux: &Arc<Mux>,
    opts: &Options,
    masks: Masks,
    cleanup: &mut Cleanup,
) -> SideServers {
    let masks = (masks.sock, masks.file);
    let mut side = SideServers::new();
    let notify_l = opts.notify_socket.as_deref();
    if let Some(l) = notify_l.and_then(|a| bind_side("notifier", a, 5, masks, cleanup)) {
        let n = crate::wire::notify::Notifier::new();
        mux.lock().notify = Some(n.clone());
        side.spawn(crate::wire::notify::run(l, n, side.shutdown_signal()));
    }
    let map_l = opts.map_socket.as_deref();
    if let Some(l) = map_l.and_then(|a| bind_side("socketmap", a, opts.backlog, masks, cleanup)) {
        let m = mux.clone();
        let handler = move |req: crate::wire::socketmap::MapRequest| {
            let m = m.clone();
            async move { control::map_lookup(&m, req.worker_command()).await }
        };
        let cfg = crate::wire::socketmap::Config {
            reply_timeout: opts.cmd_timeout(),
            ..Default::default()
        };
        side.spawn(crate::wire::socketmap::run(
            l,
            handler,
            cfg,
            side.shutdown_signal(),
        ));
    }
    let metrics_l = opts.metrics.as_deref();
    if let Some(l) = metrics_l.and_then(|a| bind_side("metrics", a, 16, masks, cleanup)) {
        tokio::spawn(super::metrics_http::serve(mux.clone(), l));
    }
    side
}

/// Signal handlers (SIGHUP, SIGINT) and the timers: filling to `-m`, the
/// idle sweep, the `-L` status line.
fn spawn_timers(mux: &Arc<Mux>) {
    spawn_signal_tasks(mux);
    tokio::spawn(filler(mux.clone()));
    tokio::spawn(idle_timer(mux.clone()));
    if mux.opts.log_interval > 0 {
        tokio::spawn(status_logger(mux.clone()));
    }
}

/// With `-E`, preloads the filter in the zygote; without, refuses a filter
/// that does not compile. `Err` is the fatal start-up message.
async fn prepare_workers(
    opts: &Options,
    spawner: &std::sync::Mutex<Spawner>,
) -> Result<(), String> {
    if !opts.embedded {
        return compile_check(opts).await;
    }
    let preloaded = match super::zygote::Zygote::start(opts).await {
        Ok(z) => Spawner::preloaded(z),
        Err(super::zygote::StartError::NoFdPass(why)) => {
            // Like upstream's build without embedded Perl: go on
            // without preloading.
            let msg = format!("Ignoring -E flag: {why}; workers are started with perl");
            daemon::log(LOG_ERR, &msg);
            eprintln!("{}: {msg}", opts.argv0);
            Spawner::Perl
        }
        Err(e) => {
            return Err(format!(
                "perl_parse failed - you may have an error in {}; please check with perl -c.  MULTIPLEXOR IS TERMINATING.\n{e}",
                opts.filter.display()
            ))
        }
    };
    *spawner.lock().unwrap_or_else(|e| e.into_inner()) = preloaded;
    Ok(())
}

/// The control socket comes last: once it accepts, every other socket is
/// listening too (clients and init scripts poll it). Starts the ticks and
/// serves `-s` and `-a`. `Err` carries the exit status after a failure.
fn open_control(
    mux: &Arc<Mux>,
    spec: &SockSpec,
    unpriv: Option<Listener>,
    masks: Masks,
    st: &mut Starting,
) -> Result<(), i32> {
    let opts = &mux.opts;
    let main_listener = match bind_with_umask(spec, opts.backlog, masks.sock, masks.file) {
        Ok(l) => l,
        Err(e) => {
            daemon::log(LOG_ERR, &format!("{}: {e}", opts.socket));
            return Err(st.fail("Unable to create listening socket."));
        }
    };
    st.cleanup
        .sockets
        .extend(main_listener.path().map(Path::to_path_buf));
    super::ticks::start(mux);
    tokio::spawn(control::serve(
        mux.clone(),
        main_listener,
        Access::Privileged,
    ));
    if let Some(l) = unpriv {
        tokio::spawn(control::serve(mux.clone(), l, Access::Unprivileged));
    }
    Ok(())
}

fn spawn_signal_tasks(mux: &Arc<Mux>) {
    if let Ok(mut hup) = unix_signal(SignalKind::hangup()) {
        let m = mux.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                m.lock().stats.reopen();
            }
        });
    }
    if let Ok(mut int) = unix_signal(SignalKind::interrupt()) {
        let m = mux.clone();
        tokio::spawn(async move {
            while int.recv().await.is_some() {
                super::reload::reread(&m).await;
            }
        });
    }
}

/// Keeps at least `-m` workers running, one activation per `-w` seconds.
async fn filler(mux: Arc<Mux>) {
    loop {
        mux.fill.notified().await;
        loop {
            tokio::time::sleep(Duration::from_secs(mux.opts.slew)).await;
            if !mux.lock().fill_once() {
                break;
            }
        }
    }
}

async fn idle_timer(mux: Arc<Mux>) {
    let period = Duration::from_secs(mux.opts.idle_time);
    loop {
        tokio::time::sleep(period).await;
        mux.lock().idle_sweep();
    }
}

async fn status_logger(mux: Arc<Mux>) {
    let period = Duration::from_secs(mux.opts.log_interval);
    loop {
        tokio::time::sleep(period).await;
        let line = mux.lock().status_log_line();
        daemon::log(LOG_INFO, &line);
    }
}

/// Logs the `alive` line with the detected MTA, off the event loop
/// (protocol/multiplexor.md §20.16).
async fn log_alive() {
    let mta = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(detect_mta),
    )
    .await;
    let what = match mta {
        Ok(Ok(Some(name))) => format!("MTA appears to be: {name}"),
        _ => "MTA could not be identified".to_string(),
    };
    daemon::log(
        LOG_INFO,
        &format!("mailmunge-multiplexor {} alive.  {what}", crate::VERSION),
    );
}

fn detect_mta() -> Option<&'static str> {
    let postfix = access_ok(Path::new("/etc/postfix/main.cf"), libc::R_OK);
    let sendmail = access_ok(Path::new("/etc/mail/sendmail.cf"), libc::R_OK);
    match (postfix, sendmail) {
        (true, false) => return Some("Postfix"),
        (false, true) => return Some("Sendmail"),
        _ => {}
    }
    let bin = ["/usr/sbin/sendmail", "/usr/lib/sendmail"]
        .into_iter()
        .find(|p| access_ok(Path::new(p), libc::X_OK))?;
    let out = std::process::Command::new(bin)
        .arg("-bt")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
        + &String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    if text.contains("unsupported: -bt") {
        Some("Postfix")
    } else if text.contains("address test mode") {
        Some("Sendmail")
    } else {
        None
    }
}

/// SIGTERM (protocol/multiplexor.md §16): clean up files, retire workers,
/// escalate, exit 0.
async fn shutdown(mux: &Arc<Mux>, cleanup: &Cleanup, side: SideServers) -> i32 {
    daemon::log(
        LOG_INFO,
        "Received SIGTERM: Stopping workers and terminating",
    );
    cleanup.files();
    side.stop().await;
    for s in &cleanup.sockets {
        daemon::remove_socket(s);
    }
    mux.lock().begin_shutdown();
    for (sig, msg) in [
        (0, ""),
        (libc::SIGTERM, "Still some workers alive: Sending SIGTERM"),
        (libc::SIGKILL, "Still some workers alive: Sending SIGKILL"),
    ] {
        if sig != 0 {
            daemon::log(LOG_INFO, msg);
            for p in mux.lock().live_processes() {
                let _ = p.signal(libc::SIGCONT);
                let _ = p.signal(sig);
            }
        }
        for _ in 0..40 {
            if mux.lock().live_processes().is_empty() {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    0
}
