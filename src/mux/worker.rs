//! Worker processes: starting one (protocol/multiplexor.md §7.3,
//! protocol/worker-protocol.md §1.1) and the task that owns its pipes for
//! its whole life.
//!
//! Each worker has one task that writes commands to its stdin and reads
//! replies from its stdout (non-blocking, with a per-worker buffer), plus
//! small tasks draining stderr (protocol/multiplexor.md §9) and the `-Z`
//! status pipe (protocol/multiplexor.md §8). A worker
//! that writes half a line, floods output or hangs therefore delays nobody
//! but the request it is serving.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::child::{perl_command, ChildSetup};
use super::job::{Completion, Job, LaunchWorker, Launcher, Outcome, ToWorker};
use super::options::Options;
use super::pool::Mux;
use super::zygote::Zygote;
use super::State;
use crate::sys::daemon::{self, LOG_ERR, LOG_INFO, LOG_WARNING};
use crate::sys::process::{pidfd_open, ProcessHandle};

/// Longest reply line relayed (protocol/multiplexor.md §7.5); longer ones are truncated.
pub const MAX_REPLY_LINE: usize = 4096;
/// Grace periods of the retirement sequence (protocol/multiplexor.md §7.12).
pub const TERM_AFTER: Duration = Duration::from_secs(10);
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// A worker process: our own child (reaped by us with wait4, so that its
/// resource usage can be logged), or a child of the `-E` zygote.
pub enum Proc {
    Own {
        pid: u32,
        pidfd: Option<AsyncFd<OwnedFd>>,
        usage: Option<libc::rusage>,
    },
    Forked {
        handle: ProcessHandle,
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
                    *pidfd = pidfd_open(*pid).ok().and_then(|fd| {
                        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
                    });
                }
                match pidfd {
                    Some(fd) => fd.readable().await?.clear_ready(),
                    // No pidfd (old kernel): poll.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            },
            Proc::Forked { handle, exit } => Ok(super::zygote::wait_forked(handle, exit).await),
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
    pub handle: ProcessHandle,
    pub proc: Proc,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub status: Option<pipe::Receiver>,
}

/// How workers are started: the launcher's state, owned by its task alone.
pub enum Spawner {
    /// fork + exec of the filter (`filter -server`).
    Exec,
    /// `-E`: forked from a preloaded zygote when one is ready, otherwise
    /// `perl FILTER -server`.
    Zygote {
        current: Option<Arc<Zygote>>,
        /// A reread asked for a new load; until it is ready, workers are
        /// started with perl so that they run the new rules.
        reloading: bool,
        /// A load is under way.
        loading: bool,
    },
    /// `-E` where preloading is impossible (no IO::FDPass):
    /// `perl FILTER -server`, like upstream's build without embedded Perl.
    Perl,
}

impl Spawner {
    /// Before start-up preloaded anything: `-E` starts workers with perl
    /// (a load is under way), otherwise by exec.
    pub fn initial(opts: &Options) -> Spawner {
        if opts.embedded {
            Spawner::Zygote {
                current: None,
                reloading: false,
                loading: true,
            }
        } else {
            Spawner::Exec
        }
    }

    /// `-E` with the zygote the start-up loaded.
    pub fn preloaded(z: Zygote) -> Spawner {
        Spawner::Zygote {
            current: Some(Arc::new(z)),
            reloading: false,
            loading: false,
        }
    }

    /// How the next worker is started.
    fn plan(&self) -> Plan {
        match self {
            Spawner::Exec => Plan::Exec { via_perl: false },
            Spawner::Perl => Plan::Exec { via_perl: true },
            Spawner::Zygote {
                current: Some(z),
                reloading: false,
                ..
            } => Plan::Fork(z.clone()),
            Spawner::Zygote { .. } => Plan::Exec { via_perl: true },
        }
    }

    /// Starts a load unless one is under way (`fresh`: for a reread) or
    /// preloading is off; the result arrives as [`Event::Preloaded`].
    fn load(
        &mut self,
        opts: &Arc<Options>,
        events: &mpsc::UnboundedSender<Event>,
        delay: Duration,
        fresh: bool,
    ) {
        let Spawner::Zygote {
            reloading, loading, ..
        } = self
        else {
            return;
        };
        if *loading {
            return;
        }
        *loading = true;
        *reloading = fresh;
        let (opts, events) = (opts.clone(), events.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Preloaded(Zygote::start(&opts).await));
        });
    }

    /// True when a preloaded zygote is missing and none is being loaded.
    fn needs_zygote(&self) -> bool {
        matches!(
            self,
            Spawner::Zygote {
                current: None,
                loading: false,
                ..
            }
        )
    }

    fn preloaded_result(&mut self, opts: &Options, r: Result<Zygote, super::zygote::StartError>) {
        let Spawner::Zygote {
            current,
            reloading,
            loading,
        } = self
        else {
            return;
        };
        *loading = false;
        *reloading = false;
        match r {
            Ok(z) => {
                daemon::log(
                    LOG_INFO,
                    &format!("Filter {} preloaded (pid {})", opts.filter.display(), z.pid),
                );
                *current = Some(Arc::new(z));
            }
            Err(e) => {
                let fallback = if current.is_some() {
                    "keeping the filter loaded before"
                } else {
                    "starting workers with perl instead"
                };
                daemon::log(
                    LOG_ERR,
                    &format!(
                        "Could not preload {}: {e}; {fallback}",
                        opts.filter.display()
                    ),
                );
            }
        }
    }

    /// The zygote `z` failed a fork: stop using it.
    fn zygote_failed(&mut self, z: &Arc<Zygote>, e: &io::Error) {
        if let Spawner::Zygote { current, .. } = self {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, z)) {
                *current = None;
                daemon::log(daemon::LOG_ERR, &format!("Preloading process {} could not fork a worker: {e}; starting workers with perl until it is back", z.pid));
            }
        }
    }
}

/// How one worker is to be started.
enum Plan {
    Exec { via_perl: bool },
    Fork(Arc<Zygote>),
}

/// What the launcher's own tasks report to it.
enum Event {
    Preloaded(Result<Zygote, super::zygote::StartError>),
    ZygoteFailed(Arc<Zygote>, io::Error),
}

/// The pool's [`Launcher`]: starts workers by fork + exec (under the pool's
/// lock, as upstream does: the pid is known when the slot is handed out), or
/// asks the `-E` preloading process to fork one, in the worker's own task,
/// so that a stalled preloading process delays only that worker
/// (protocol/multiplexor.md §21, §23). Owns the preloading state together
/// with its event task.
pub struct Starter {
    mux: std::sync::Weak<Mux>,
    spawner: Arc<std::sync::Mutex<Spawner>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Starter {
    /// Installs the starter for `mux` (from the daemon's start-up, inside
    /// the runtime); returns the shared preloading state, which start-up
    /// sets once the filter is preloaded.
    pub fn install(mux: &Arc<Mux>, spawner: Spawner) -> Arc<std::sync::Mutex<Spawner>> {
        let spawner = Arc::new(std::sync::Mutex::new(spawner));
        let (events, rx) = mpsc::unbounded_channel();
        tokio::spawn(handle_events(mux.opts.clone(), spawner.clone(), rx));
        mux.lock().launcher = Box::new(Starter {
            mux: Arc::downgrade(mux),
            spawner: spawner.clone(),
            events,
        });
        spawner
    }

    fn spawner(&self) -> std::sync::MutexGuard<'_, Spawner> {
        self.spawner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Launcher for Starter {
    fn launch(&mut self, w: LaunchWorker) -> io::Result<Option<ProcessHandle>> {
        let mux = self
            .mux
            .upgrade()
            .ok_or_else(|| io::Error::other("the multiplexor is stopping"))?;
        let plan = self.spawner().plan();
        let pid = match plan {
            Plan::Exec { via_perl } => {
                let s = spawn_exec(&mux.opts, via_perl)?;
                let handle = s.handle.clone();
                tokio::spawn(run(mux.clone(), w.slot, w.wid, s, w.rx));
                Some(handle)
            }
            Plan::Fork(z) => {
                tokio::spawn(start_forked(mux.clone(), w, z, self.events.clone()));
                None
            }
        };
        let mut sp = self.spawner();
        if sp.needs_zygote() {
            sp.load(&mux.opts, &self.events, Duration::from_secs(10), false);
        }
        Ok(pid)
    }

    fn reload(&mut self) {
        if let Some(mux) = self.mux.upgrade() {
            let events = self.events.clone();
            self.spawner()
                .load(&mux.opts, &events, Duration::ZERO, true);
        }
    }
}

/// Results of loads and failed forks, applied to the preloading state.
async fn handle_events(
    opts: Arc<Options>,
    spawner: Arc<std::sync::Mutex<Spawner>>,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    while let Some(ev) = events.recv().await {
        let mut sp = spawner.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::Preloaded(r) => sp.preloaded_result(&opts, r),
            Event::ZygoteFailed(z, e) => sp.zygote_failed(&z, &e),
        }
    }
}

/// Has the preloading process fork a worker (perl starts it instead if
/// that fails), then runs its task; if no process could be started, the
/// slot is given back and whatever was sent to it gets a failure.
async fn start_forked(
    mux: Arc<Mux>,
    w: LaunchWorker,
    z: Arc<Zygote>,
    events: mpsc::UnboundedSender<Event>,
) {
    let LaunchWorker {
        slot,
        wid,
        reason,
        mut rx,
    } = w;
    // The zygote is let go once it has forked: a worker's task must not keep
    // a replaced zygote from being told to stop (protocol/multiplexor.md §23).
    let started = match fork(&z, &mux.opts, slot).await {
        Ok(s) => {
            drop(z);
            Ok(s)
        }
        Err(e) => {
            let _ = events.send(Event::ZygoteFailed(z, e));
            exec(&mux, true).await
        }
    };
    match started {
        Ok(s) => {
            mux.lock()
                .worker_started(slot, wid, s.handle.clone(), &reason);
            run(mux, slot, wid, s, rx).await;
        }
        Err(e) => {
            mux.lock().start_failed(slot, wid, &e);
            rx.close();
            while let Ok(m) = rx.try_recv() {
                if let ToWorker::Job(job) = m {
                    let _ = job.reply.send(Outcome::ActivateFailed);
                }
            }
        }
    }
}

/// fork + exec, off the runtime threads (exec is waited for).
async fn exec(mux: &Arc<Mux>, via_perl: bool) -> io::Result<Spawned> {
    let opts = mux.opts.clone();
    tokio::task::spawn_blocking(move || spawn_exec(&opts, via_perl))
        .await
        .map_err(io::Error::other)?
}

/// Creates a pipe with both ends close-on-exec: (read end, write end).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Has the zygote fork a worker wired to fresh pipes.
async fn fork(z: &Zygote, opts: &Options, slot: usize) -> io::Result<Spawned> {
    let (in_r, in_w) = cloexec_pipe()?;
    let (out_r, out_w) = cloexec_pipe()?;
    let (err_r, err_w) = cloexec_pipe()?;
    let mut theirs = vec![in_r, out_w, err_w];
    let status = if opts.status_tags {
        let (r, w) = cloexec_pipe()?;
        theirs.push(w);
        Some(pipe::Receiver::from_owned_fd(r)?)
    } else {
        None
    };
    // Our ends are registered with the runtime before the exchange, not on
    // the activation's path after the answer.
    let stdin = pipe::Sender::from_owned_fd(in_w)?;
    let stdout = pipe::Receiver::from_owned_fd(out_r)?;
    let stderr = pipe::Receiver::from_owned_fd(err_r)?;
    let (handle, exit) = z.fork(slot, &theirs).await?;
    Ok(Spawned {
        handle: handle.clone(),
        proc: Proc::Forked {
            handle,
            exit: Some(exit),
        },
        stdin,
        stdout,
        stderr,
        status,
    })
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
        let (perl, switches) = perl_command(&opts.filter);
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
    ChildSetup::new(
        opts,
        status.as_ref().map(|(_, w)| w.as_raw_fd()).unwrap_or(-1),
    )
    .install(&mut cmd);
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
        handle: ProcessHandle::child(pid),
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
async fn run(
    mux: Arc<Mux>,
    slot: usize,
    wid: u64,
    w: Spawned,
    mut rx: mpsc::UnboundedReceiver<ToWorker>,
) {
    let Spawned {
        handle,
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
    let mut t = WorkerTask {
        pid: handle.pid(),
        mux,
        slot,
        wid,
        handle,
        stdin: Some(stdin),
        out: LineReader::new(stdout),
        escalate: None,
        rx_open: true,
    };
    let exit = loop {
        let deadline = t.next_deadline();
        tokio::select! {
            biased;
            m = rx.recv(), if t.rx_open => t.on_message(m).await,
            st = child.wait() => break st,
            r = t.out.fill(), if !t.out.at_eof() => t.on_output(r),
            _ = tokio::time::sleep_until(deadline), if t.escalate.is_some() => t.on_escalation_due(),
        }
    };
    if let Some(ru) = child.usage() {
        t.mux.lock().log_usage(slot, wid, ru);
    }
    t.reaped(exit);
    fail_queued_jobs(rx);
}

/// What the worker task keeps between events: the worker's pipes and how
/// far its retirement has got.
struct WorkerTask {
    mux: Arc<Mux>,
    slot: usize,
    wid: u64,
    pid: u32,
    handle: ProcessHandle,
    /// `None` once the worker is retiring: no more commands go to it.
    stdin: Option<pipe::Sender>,
    out: LineReader<pipe::Receiver>,
    /// When to send which signal if the worker has not exited by then.
    escalate: Option<(tokio::time::Instant, libc::c_int)>,
    /// False once the pool has dropped its sender.
    rx_open: bool,
}

impl WorkerTask {
    /// When the escalation timer fires; far away when none is armed.
    fn next_deadline(&self) -> tokio::time::Instant {
        self.escalate
            .map(|(t, _)| t)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400))
    }

    /// A message from the pool: run a job, start retiring, or (`None`, the
    /// pool is gone) retire gently.
    async fn on_message(&mut self, m: Option<ToWorker>) {
        match m {
            Some(ToWorker::Job(job)) => match self.stdin.as_mut() {
                Some(w) => serve(&self.mux, self.slot, self.wid, w, &mut self.out, job).await,
                None => {
                    let _ = job.reply.send(Outcome::NoResponse);
                }
            },
            Some(ToWorker::Retire { busy }) => {
                if self.stdin.take().is_some() {
                    self.escalate = Some(if busy {
                        let _ = self.handle.signal(libc::SIGTERM);
                        (tokio::time::Instant::now() + KILL_AFTER, libc::SIGKILL)
                    } else {
                        (tokio::time::Instant::now() + TERM_AFTER, libc::SIGTERM)
                    });
                }
            }
            None => {
                self.rx_open = false;
                if self.stdin.take().is_some() {
                    self.escalate = Some((tokio::time::Instant::now() + TERM_AFTER, libc::SIGTERM));
                }
            }
        }
    }

    /// Output read while no command is running.
    fn on_output(&mut self, r: io::Result<usize>) {
        let (slot, pid) = (self.slot, self.pid);
        if matches!(r, Ok(n) if n > 0) && self.stdin.is_none() {
            // Already retiring: whatever it prints on its way out
            // is nobody's reply.
            self.out.clear();
        } else if matches!(r, Ok(n) if n > 0) {
            // Output nobody asked for: the worker is out of step
            // with the protocol (protocol/multiplexor.md §20.2), so retire it.
            self.out.clear();
            daemon::log(
                LOG_WARNING,
                &format!("Worker {slot} (pid {pid}) wrote output while idle; retiring it"),
            );
            let mut p = self.mux.lock();
            if p.slots[slot].wid == self.wid {
                p.kill(slot, "Unsolicited output from worker");
            }
        } else if r.is_err() {
            self.out.clear();
        }
    }

    /// The retiring worker has not exited in time: send the armed signal
    /// and arm SIGKILL after SIGTERM.
    fn on_escalation_due(&mut self) {
        let (slot, pid) = (self.slot, self.pid);
        if let Some((_, sig)) = self.escalate {
            let what = if sig == libc::SIGTERM {
                "taking too long to exit; sending SIGTERM"
            } else {
                "taking way too long to exit; sending SIGKILL"
            };
            if self.mux.opts.verbose {
                daemon::log(LOG_INFO, &format!("Worker {slot} (pid {pid}) {what}"));
            }
            let _ = self.handle.signal(libc::SIGCONT);
            let _ = self.handle.signal(sig);
            self.escalate = if sig == libc::SIGTERM {
                Some((tokio::time::Instant::now() + KILL_AFTER, libc::SIGKILL))
            } else {
                None
            };
        }
    }

    /// Tells the pool the worker is gone; a failed wait counts as killed.
    fn reaped(&self, exit: io::Result<std::process::ExitStatus>) {
        let (slot, wid, pid) = (self.slot, self.wid, self.pid);
        match exit {
            Ok(status) => self.mux.lock().reaped(slot, wid, status),
            Err(e) => {
                daemon::log(
                    LOG_WARNING,
                    &format!("Worker {slot} (pid {pid}): wait failed: {e}"),
                );
                use std::os::unix::process::ExitStatusExt;
                self.mux.lock().reaped(
                    slot,
                    wid,
                    std::process::ExitStatus::from_raw(libc::SIGKILL),
                );
            }
        }
    }
}

/// Jobs still queued for a reaped worker get no response rather than
/// waiting forever.
fn fail_queued_jobs(mut rx: mpsc::UnboundedReceiver<ToWorker>) {
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

/// Reads a worker's stderr so it never blocks, logging lines with `-l` (protocol/multiplexor.md §9).
async fn drain_stderr(mux: Arc<Mux>, slot: usize, wid: u64, stderr: pipe::Receiver) {
    let mut r = LineReader::new(stderr);
    // What it said last, for a worker that dies before answering
    // (protocol/multiplexor.md §26).
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
                    crate::sys::logging::emit(
                        LOG_INFO,
                        qid,
                        &format!("Worker {slot} stderr: {text}"),
                    );
                }
            }
        }
    }
    mux.lock().worker_stderr_closed(slot, wid, &tail);
}

/// Reads `-Z` status lines from fd 3 (protocol/multiplexor.md §8), whole lines at a time (protocol/multiplexor.md §20.7):
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
