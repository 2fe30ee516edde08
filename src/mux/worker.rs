//! Worker processes: starting one (multiplexor.md §7.3, worker-protocol.md
//! §1.1) and the task that owns its pipes for its whole life.
//!
//! Each worker has one task that writes commands to its stdin and reads
//! replies from its stdout (non-blocking, with a per-worker buffer), plus
//! small tasks draining stderr (§9) and the `-Z` status pipe (§8). A worker
//! that writes half a line, floods output or hangs therefore delays nobody
//! but the request it is serving.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::options::Options;
use super::pool::{signal, Completion, Job, Mux, Outcome};
use super::State;
use crate::daemon::{self, LOG_INFO, LOG_WARNING};

/// Longest reply line relayed (§7.5); longer ones are truncated.
pub const MAX_REPLY_LINE: usize = 4096;
/// Grace periods of the retirement sequence (§7.12).
pub const TERM_AFTER: Duration = Duration::from_secs(10);
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// Messages to a worker's task.
#[derive(Debug)]
pub enum ToWorker {
    Job(Job),
    /// Close stdin and escalate to SIGTERM/SIGKILL if it does not exit.
    Retire {
        busy: bool,
    },
}

/// A worker process: our own child (reaped by us with wait4, so that its
/// resource usage can be logged), or a child of the `-E` zygote.
pub enum Proc {
    Own {
        pid: u32,
        pidfd: Option<AsyncFd<OwnedFd>>,
        usage: Option<libc::rusage>,
    },
    Forked {
        pid: u32,
        exit: Option<oneshot::Receiver<i32>>,
    },
}

impl Proc {
    fn own(pid: u32) -> Proc {
        Proc::Own {
            pid,
            pidfd: None,
            usage: None,
        }
    }

    /// Waits for the process to end. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            Proc::Own { pid, pidfd, usage } => loop {
                if let Some(st) = try_wait4(*pid, usage)? {
                    return Ok(st);
                }
                if pidfd.is_none() {
                    // SAFETY: the AsyncFd owns the descriptor, which stays
                    // open until the AsyncFd (deregistering it) is dropped.
                    *pidfd = pidfd_open(*pid).and_then(|fd| {
                        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
                    });
                }
                match pidfd {
                    Some(fd) => fd.readable().await?.clear_ready(),
                    // No pidfd (old kernel): poll.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            },
            Proc::Forked { pid, exit } => Ok(super::zygote::wait_forked(*pid, exit).await),
        }
    }

    /// Resource usage of a reaped child of ours.
    pub fn usage(&self) -> Option<&libc::rusage> {
        match self {
            Proc::Own { usage, .. } => usage.as_ref(),
            Proc::Forked { .. } => None,
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: as above.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps `pid` if it has exited, keeping its resource usage.
fn try_wait4(
    pid: u32,
    usage: &mut Option<libc::rusage>,
) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-parameters.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut ru) };
    match r {
        0 => Ok(None),
        r if r > 0 => {
            *usage = Some(ru);
            Ok(Some(std::process::ExitStatus::from_raw(status)))
        }
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// A started worker process and the parent's ends of its pipes.
pub struct Spawned {
    pub pid: u32,
    pub proc: Proc,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub status: Option<pipe::Receiver>,
}

/// A worker that is running, or one the `-E` zygote has yet to fork: the
/// fork exchange happens in the worker's own task, outside the pool's lock
/// (protocol/multiplexor.md §3).
pub enum Start {
    Running(Spawned),
    Fork(PendingFork),
}

impl Start {
    /// The pid, once there is a process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Start::Running(s) => Some(s.pid),
            Start::Fork(_) => None,
        }
    }
}

/// Pipes made for a worker that the zygote is asked to fork.
pub struct PendingFork {
    zygote: Arc<super::zygote::Zygote>,
    /// The child's ends: stdin read, stdout write, stderr write (+ status).
    theirs: Vec<OwnedFd>,
    ours: Spawned,
    /// Why it is started, for the log line once its pid is known.
    pub reason: String,
}

/// How workers are started.
pub enum Spawner {
    /// fork + exec of the filter (`filter -server`).
    Exec,
    /// `-E`: forked from a preloaded zygote when one is ready, otherwise
    /// `perl FILTER -server`.
    Zygote {
        current: Option<Arc<super::zygote::Zygote>>,
        reloading: bool,
    },
    /// `-E` where preloading is impossible (no IO::FDPass):
    /// `perl FILTER -server`, like upstream's build without embedded Perl.
    Perl,
}

impl Spawner {
    pub fn spawn(&mut self, opts: &Options, reason: &str) -> io::Result<Start> {
        match self {
            Spawner::Exec => spawn_exec(opts, false).map(Start::Running),
            Spawner::Perl => spawn_exec(opts, true).map(Start::Running),
            Spawner::Zygote { current, reloading } => match (current.as_ref(), *reloading) {
                (Some(z), false) => pending_fork(z.clone(), opts, reason).map(Start::Fork),
                _ => spawn_exec(opts, true).map(Start::Running),
            },
        }
    }

    /// The zygote `z` failed a fork: stop using it (a new one is loaded).
    pub fn zygote_failed(&mut self, z: &Arc<super::zygote::Zygote>) -> bool {
        match self {
            Spawner::Zygote { current, .. }
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, z)) =>
            {
                *current = None;
                true
            }
            _ => false,
        }
    }

    /// True when a preloaded zygote is missing and not being reloaded.
    pub fn needs_zygote(&self) -> bool {
        matches!(
            self,
            Spawner::Zygote {
                current: None,
                reloading: false
            }
        )
    }
}

/// Creates a pipe with both ends close-on-exec: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Fresh pipes for a worker the zygote will fork.
fn pending_fork(
    zygote: Arc<super::zygote::Zygote>,
    opts: &Options,
    reason: &str,
) -> io::Result<PendingFork> {
    let (in_r, in_w) = cloexec_pipe()?;
    let (out_r, out_w) = cloexec_pipe()?;
    let (err_r, err_w) = cloexec_pipe()?;
    let status = if opts.status_tags {
        Some(cloexec_pipe()?)
    } else {
        None
    };
    let mut theirs = vec![in_r, out_w, err_w];
    let status = match status {
        Some((r, w)) => {
            theirs.push(w);
            Some(pipe::Receiver::from_owned_fd(r)?)
        }
        None => None,
    };
    Ok(PendingFork {
        zygote,
        theirs,
        ours: Spawned {
            pid: 0,
            proc: Proc::Forked { pid: 0, exit: None },
            stdin: pipe::Sender::from_owned_fd(in_w)?,
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
            status,
        },
        reason: reason.to_string(),
    })
}

/// Has the zygote fork the worker; if it cannot, the zygote is given up
/// and the worker is started with perl instead, so the request waiting
/// for it is still served.
async fn resolve_fork(
    mux: &Arc<Mux>,
    slot: usize,
    wid: u64,
    f: PendingFork,
) -> io::Result<Spawned> {
    let PendingFork {
        zygote,
        theirs,
        mut ours,
        reason,
    } = f;
    match zygote.fork(slot, &theirs).await {
        Ok((pid, exit)) => {
            ours.pid = pid;
            ours.proc = Proc::Forked {
                pid,
                exit: Some(exit),
            };
            mux.lock().worker_forked(slot, wid, pid, &reason);
            Ok(ours)
        }
        Err(e) => {
            mux.lock().zygote_failed(&zygote, &e);
            drop(theirs);
            let spawned = spawn_exec(&mux.opts, true)?;
            mux.lock().worker_forked(slot, wid, spawned.pid, &reason);
            Ok(spawned)
        }
    }
}

/// Makes sure descriptors 0..=3 are in use, so that no pipe we create later
/// lands on fd 3, which is the status pipe's place in workers.
pub fn reserve_low_fds() {
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) if f.as_raw_fd() <= 3 => std::mem::forget(f),
            _ => break,
        }
    }
}

/// Everything a child needs after fork, prepared before it: cwd, signal
/// dispositions, rlimits, and which descriptor becomes fd 3.
pub struct ChildSetup {
    spool: CString,
    status_w: i32,
    rss_bytes: u64,
    mem_bytes: u64,
    /// The descriptor limit the multiplexor was started with.
    nofile: Option<libc::rlimit>,
}

impl ChildSetup {
    /// `fd3`: the descriptor to put on fd 3 in the child, or -1 for none.
    pub fn new(opts: &Options, fd3: i32) -> ChildSetup {
        ChildSetup {
            spool: CString::new(opts.spool_dir.as_os_str().as_bytes()).unwrap_or_default(),
            status_w: fd3,
            rss_bytes: opts.rss_kb.saturating_mul(1024),
            mem_bytes: opts.mem_kb.saturating_mul(1024),
            nofile: daemon::original_nofile(),
        }
    }

    /// Runs in the forked child before exec: only async-signal-safe calls.
    pub fn apply(&self) {
        // SAFETY: plain syscalls on the child's own state.
        unsafe {
            libc::chdir(self.spool.as_ptr());
            for sig in [libc::SIGTERM, libc::SIGCHLD, libc::SIGHUP, libc::SIGINT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            // Upstream workers inherit SIGPIPE ignored; std resets it to the
            // default before this hook runs.
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            // Workers get the descriptor limit we were started with, not
            // the one we raised for ourselves.
            if let Some(l) = &self.nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, l);
            }
            if self.rss_bytes > 0 {
                let l = libc::rlimit {
                    rlim_cur: self.rss_bytes,
                    rlim_max: self.rss_bytes,
                };
                libc::setrlimit(libc::RLIMIT_RSS, &l);
            }
            if self.mem_bytes > 0 {
                let l = libc::rlimit {
                    rlim_cur: self.mem_bytes,
                    rlim_max: self.mem_bytes,
                };
                libc::setrlimit(libc::RLIMIT_AS, &l);
                libc::setrlimit(libc::RLIMIT_DATA, &l);
            }
            let first_closed = if self.status_w >= 0 {
                if self.status_w == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else {
                    libc::dup2(self.status_w, 3);
                }
                4
            } else {
                3
            };
            // Nothing but 0..2 (and 3 with -Z) may survive exec, whatever
            // the multiplexor itself inherited.
            if libc::close_range(
                first_closed as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC as i32,
            ) != 0
            {
                for fd in first_closed..1024 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
    }
}

/// Starts `filter -server` (or `-serveru` with `-Z`); with `via_perl`,
/// `perl filter -server` (the `-E` fallback, which needs no execute bit).
pub fn spawn_exec(opts: &Options, via_perl: bool) -> io::Result<Spawned> {
    let base = opts
        .filter
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| opts.filter.clone().into_os_string());
    // std, not tokio: we reap our workers ourselves (see `Proc`).
    let mut cmd = if via_perl {
        let (perl, switches) = super::zygote::perl_command(&opts.filter);
        let mut c = std::process::Command::new(perl);
        c.args(switches).arg(&opts.filter);
        c
    } else {
        let mut c = std::process::Command::new(&opts.filter);
        c.arg0(base);
        c
    };
    cmd.arg(if opts.status_tags {
        "-serveru"
    } else {
        "-server"
    })
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let status = if opts.status_tags {
        Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?)
    } else {
        None
    };
    let setup = ChildSetup::new(
        opts,
        status.as_ref().map(|(_, w)| w.as_raw_fd()).unwrap_or(-1),
    );
    // SAFETY: the hook only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            setup.apply();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let status = match status {
        Some((r, w)) => {
            drop(w);
            Some(tokio::net::unix::pipe::Receiver::from_owned_fd(r)?)
        }
        None => None,
    };
    let missing = || io::Error::other("child pipe missing");
    let pid = child.id();
    let stdin =
        pipe::Sender::from_owned_fd(OwnedFd::from(child.stdin.take().ok_or_else(missing)?))?;
    let stdout =
        pipe::Receiver::from_owned_fd(OwnedFd::from(child.stdout.take().ok_or_else(missing)?))?;
    let stderr =
        pipe::Receiver::from_owned_fd(OwnedFd::from(child.stderr.take().ok_or_else(missing)?))?;
    Ok(Spawned {
        pid,
        proc: Proc::own(pid),
        stdin,
        stdout,
        stderr,
        status,
    })
}

/// Result of reading one reply line.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A complete line, `\n` included.
    Line(Vec<u8>),
    /// The first 4096 bytes of an overlong line.
    Truncated(Vec<u8>),
    /// Bytes without `\n`, then end of file.
    Partial(Vec<u8>),
    Eof,
}

/// A buffered line reader over a non-blocking pipe.
pub struct LineReader<R> {
    r: R,
    buf: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(r: R) -> Self {
        LineReader {
            r,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Bytes received but not consumed by a reply.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Reads more bytes; 0 at end of file. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.r.read(&mut chunk).await?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one line of at most `max` bytes (newline included).
    pub async fn read_line(&mut self, max: usize) -> LineRead {
        loop {
            let window = &self.buf[..self.buf.len().min(max)];
            if let Some(p) = window.iter().position(|&b| b == b'\n') {
                return LineRead::Line(self.buf.drain(..=p).collect());
            }
            if self.buf.len() >= max {
                return LineRead::Truncated(self.buf.drain(..max).collect());
            }
            if self.eof {
                return if self.buf.is_empty() {
                    LineRead::Eof
                } else {
                    LineRead::Partial(std::mem::take(&mut self.buf))
                };
            }
            if self.fill().await.is_err() {
                self.eof = true;
            }
        }
    }
}

/// The task owning one worker process until it is reaped.
pub async fn run(
    mux: Arc<Mux>,
    slot: usize,
    wid: u64,
    start: Start,
    mut rx: mpsc::UnboundedReceiver<ToWorker>,
) {
    let w = match start {
        Start::Running(w) => w,
        Start::Fork(f) => match resolve_fork(&mux, slot, wid, f).await {
            Ok(w) => w,
            Err(e) => {
                mux.lock().start_failed(slot, wid, &e);
                // Whatever was sent to it meanwhile gets a failure.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let ToWorker::Job(job) = m {
                        let _ = job.reply.send(Outcome::ActivateFailed);
                    }
                }
                return;
            }
        },
    };
    let Spawned {
        pid,
        proc: mut child,
        stdin,
        stdout,
        stderr,
        status,
    } = w;
    tokio::spawn(drain_stderr(mux.clone(), slot, wid, stderr));
    if let Some(st) = status {
        tokio::spawn(read_status(mux.clone(), slot, wid, st));
    }
    let mut stdin = Some(stdin);
    let mut out = LineReader::new(stdout);
    let mut escalate: Option<(tokio::time::Instant, libc::c_int)> = None;
    let mut rx_open = true;
    let exit = loop {
        let deadline = escalate
            .map(|(t, _)| t)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400));
        tokio::select! {
            biased;
            m = rx.recv(), if rx_open => match m {
                Some(ToWorker::Job(job)) => match stdin.as_mut() {
                    Some(w) => serve(&mux, slot, wid, w, &mut out, job).await,
                    None => {
                        let _ = job.reply.send(Outcome::NoResponse);
                    }
                },
                Some(ToWorker::Retire { busy }) => {
                    if stdin.take().is_some() {
                        escalate = Some(if busy {
                            signal(pid, libc::SIGTERM);
                            (tokio::time::Instant::now() + KILL_AFTER, libc::SIGKILL)
                        } else {
                            (tokio::time::Instant::now() + TERM_AFTER, libc::SIGTERM)
                        });
                    }
                }
                None => {
                    rx_open = false;
                    if stdin.take().is_some() {
                        escalate = Some((tokio::time::Instant::now() + TERM_AFTER, libc::SIGTERM));
                    }
                }
            },
            st = child.wait() => break st,
            r = out.fill(), if !out.at_eof() => {
                if matches!(r, Ok(n) if n > 0) && stdin.is_none() {
                    // Already retiring: whatever it prints on its way out
                    // is nobody's reply.
                    out.clear();
                } else if matches!(r, Ok(n) if n > 0) {
                    // Output nobody asked for: the worker is out of step
                    // with the protocol (§20.2), so retire it.
                    out.clear();
                    daemon::log(LOG_WARNING, &format!("Worker {slot} (pid {pid}) wrote output while idle; retiring it"));
                    let mut p = mux.lock();
                    if p.slots[slot].wid == wid {
                        p.kill(slot, "Unsolicited output from worker");
                    }
                } else if r.is_err() {
                    out.clear();
                }
            },
            _ = tokio::time::sleep_until(deadline), if escalate.is_some() => {
                if let Some((_, sig)) = escalate {
                    let what = if sig == libc::SIGTERM { "taking too long to exit; sending SIGTERM" } else { "taking way too long to exit; sending SIGKILL" };
                    if mux.opts.verbose {
                        daemon::log(LOG_INFO, &format!("Worker {slot} (pid {pid}) {what}"));
                    }
                    signal(pid, libc::SIGCONT);
                    signal(pid, sig);
                    escalate = if sig == libc::SIGTERM { Some((tokio::time::Instant::now() + KILL_AFTER, libc::SIGKILL)) } else { None };
                }
            }
        }
    };
    if let Some(ru) = child.usage() {
        mux.lock().log_usage(slot, wid, ru);
    }
    match exit {
        Ok(status) => mux.lock().reaped(slot, wid, status),
        Err(e) => {
            daemon::log(
                LOG_WARNING,
                &format!("Worker {slot} (pid {pid}): wait failed: {e}"),
            );
            use std::os::unix::process::ExitStatusExt;
            mux.lock()
                .reaped(slot, wid, std::process::ExitStatus::from_raw(libc::SIGKILL));
        }
    }
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let ToWorker::Job(job) = m {
            let _ = job.reply.send(Outcome::NoResponse);
        }
    }
}

/// Runs one command on the worker: write it (`-c`), read one reply (`-b`).
async fn serve(
    mux: &Arc<Mux>,
    slot: usize,
    wid: u64,
    stdin: &mut pipe::Sender,
    out: &mut LineReader<pipe::Receiver>,
    job: Job,
) {
    let started = Instant::now();
    // Anything left over from before belongs to no request.
    let stale = out.pending() > 0;
    out.clear();
    let how = match tokio::time::timeout(mux.opts.cmd_timeout(), stdin.write_all(&job.line)).await {
        Ok(Ok(())) => {
            match tokio::time::timeout(mux.opts.busy_timeout(), out.read_line(MAX_REPLY_LINE)).await
            {
                Err(_) => Completion::Timeout,
                Ok(LineRead::Line(bytes)) => {
                    let violation = if stale || out.pending() > 0 {
                        Some("Worker wrote more than one reply line")
                    } else {
                        None
                    };
                    Completion::Reply { bytes, violation }
                }
                Ok(LineRead::Truncated(bytes)) => {
                    daemon::log(
                        LOG_WARNING,
                        &format!(
                            "Worker {slot}: reply longer than {MAX_REPLY_LINE} bytes truncated"
                        ),
                    );
                    Completion::Reply {
                        bytes,
                        violation: Some("Reply line too long"),
                    }
                }
                Ok(LineRead::Partial(bytes)) => Completion::Eof(bytes),
                Ok(LineRead::Eof) => Completion::Eof(Vec::new()),
            }
        }
        _ => Completion::WriteFailed,
    };
    let outcome = mux.lock().complete(slot, wid, &job, how, started);
    let _ = job.reply.send(outcome);
}

/// Reads a worker's stderr so it never blocks, logging lines with `-l` (§9).
async fn drain_stderr(mux: Arc<Mux>, slot: usize, wid: u64, stderr: pipe::Receiver) {
    let mut r = LineReader::new(stderr);
    // What it said last, for a worker that dies before answering
    // (protocol/multiplexor.md §6).
    let mut tail = super::startfail::StderrTail::default();
    loop {
        match r.read_line(1023).await {
            LineRead::Eof => break,
            LineRead::Line(l) | LineRead::Truncated(l) | LineRead::Partial(l) => {
                let text = String::from_utf8_lossy(&l);
                let text = text.trim_end_matches(['\n', '\r']);
                tail.push(text);
                if text.contains("Out of memory!") {
                    let mut p = mux.lock();
                    if p.slots[slot].wid == wid {
                        p.slots[slot].oom = true;
                    }
                }
                if mux.opts.verbose && !text.is_empty() {
                    let qid = {
                        let p = mux.lock();
                        if p.slots[slot].wid == wid {
                            p.slots[slot].qid.clone()
                        } else {
                            String::new()
                        }
                    };
                    let qid = Some(qid.as_str()).filter(|q| !q.is_empty());
                    crate::logging::emit(LOG_INFO, qid, &format!("Worker {slot} stderr: {text}"));
                }
            }
        }
    }
    mux.lock().worker_stderr_closed(slot, wid, &tail);
}

/// Reads `-Z` status lines from fd 3 (§8), whole lines at a time (§20.7):
/// each complete line replaces the tag of a busy worker; an empty line
/// clears it.
async fn read_status(mux: Arc<Mux>, slot: usize, wid: u64, pipe: tokio::net::unix::pipe::Receiver) {
    let mut r = LineReader::new(pipe);
    loop {
        let line = match r.read_line(1024).await {
            LineRead::Eof => break,
            LineRead::Line(l) => l,
            // Overlong or unterminated lines are not tags.
            LineRead::Truncated(_) | LineRead::Partial(_) => continue,
        };
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = super::pool::printable_tag(raw);
        let mut p = mux.lock();
        if p.slots[slot].wid == wid && p.slots[slot].state == State::Busy {
            p.set_tag(slot, &text, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn line_reader_cases() {
        let (mut w, r) = tokio::io::duplex(65536);
        let mut lr = LineReader::new(r);
        w.write_all(b"ok\nextra").await.unwrap();
        assert_eq!(lr.read_line(4096).await, LineRead::Line(b"ok\n".to_vec()));
        assert_eq!(lr.pending(), 5);
        lr.clear();
        w.write_all(&vec![b'x'; 5000]).await.unwrap();
        w.write_all(b"\n").await.unwrap();
        match lr.read_line(4096).await {
            LineRead::Truncated(b) => assert_eq!(b.len(), 4096),
            other => panic!("{other:?}"),
        }
        let (mut w, r) = tokio::io::duplex(64);
        let mut lr = LineReader::new(r);
        w.write_all(b"part").await.unwrap();
        drop(w);
        assert_eq!(
            lr.read_line(4096).await,
            LineRead::Partial(b"part".to_vec())
        );
        assert_eq!(lr.read_line(4096).await, LineRead::Eof);
    }

    #[tokio::test]
    async fn exact_limit_line_fits() {
        let (mut w, r) = tokio::io::duplex(65536);
        let mut lr = LineReader::new(r);
        let mut line = vec![b'y'; 4095];
        line.push(b'\n');
        w.write_all(&line).await.unwrap();
        assert_eq!(lr.read_line(4096).await, LineRead::Line(line));
    }
}
