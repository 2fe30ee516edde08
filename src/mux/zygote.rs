//! `-E` without linking libperl: a long-lived Perl process (the "zygote",
//! `zygote.pl`) loads the filter once with `-embserver`/`-embserveru`, the
//! way upstream's embedded interpreter does (protocol/worker-protocol.md §1.2),
//! and forks a worker per activation. The child receives its
//! stdin/stdout/stderr (and the `-Z` status pipe) as descriptors passed with
//! SCM_RIGHTS, puts them on fds 0–3 and calls `main::_mailmunge_do_main_loop`.
//!
//! Workers are the zygote's children, so the zygote reports their exits
//! (`exit <pid> <wait status>` on its stdout); if it dies, their exits are
//! noticed by polling the pid instead.
//!
//! Failure handling: a filter that fails to load at start-up is fatal
//! (upstream's `perl_parse failed` message plus Perl's own errors). On
//! `reread` a new zygote is loaded; until it is ready, and for good if it
//! fails to load (the error is logged), activations use the previous
//! zygote only if the reload failed, and plain `perl FILTER -server` in the
//! meantime. A zygote that dies is restarted after a pause; activations
//! fall back to `perl FILTER -server` meanwhile.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader, Interest};
use tokio::sync::oneshot;

use super::child::{perl_command, ChildSetup};
use super::options::Options;
use crate::sys::daemon::{self, LOG_ERR, LOG_INFO};
use crate::sys::process::ProcessHandle;
use tokio::io::unix::AsyncFd;

/// The zygote program.
pub const ZYGOTE_PL: &str = include_str!("zygote.pl");

/// How long a filter may take to load.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a fork request may take.
pub const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit statuses reported by a zygote, handed to whoever waits for that pid.
#[derive(Default)]
struct Registry {
    waiters: HashMap<u32, oneshot::Sender<i32>>,
    /// Exits that arrived before their pid was registered.
    early: HashMap<u32, i32>,
    closed: bool,
}

/// Why a zygote could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Perl lacks IO::FDPass: preloading is impossible on this system.
    #[error("{0}")]
    NoFdPass(String),
    /// The filter (or perl) failed; the text includes Perl's messages.
    #[error("{0}")]
    Failed(String),
}

/// A running zygote. Shared (`Arc`) by the worker tasks waiting for a
/// fork; the exchange itself is async and never runs under the pool's lock
/// (protocol/multiplexor.md §23).
pub struct Zygote {
    pub pid: u32,
    /// The control connection: one fork exchange at a time.
    conn: tokio::sync::Mutex<TokioBufReader<tokio::net::UnixStream>>,
    /// The control connection's descriptor, owned by `conn`.
    control_fd: std::os::fd::RawFd,
    registry: Arc<Mutex<Registry>>,
    status_pipe: bool,
}

impl Zygote {
    /// Starts a zygote and waits until the filter is loaded. `Err` carries
    /// a readable reason (including Perl's error output).
    pub async fn start(opts: &Options) -> Result<Zygote, StartError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| StartError::Failed(format!("socketpair: {e}")))?;
        let mode = if opts.status_tags {
            "-embserveru"
        } else {
            "-embserver"
        };
        let (perl, switches) = perl_command(&opts.filter);
        let mut cmd = tokio::process::Command::new(perl);
        cmd.args(&switches)
            .arg("-e")
            .arg(ZYGOTE_PL)
            .arg("--")
            .arg(&opts.filter)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        ChildSetup::new(opts, theirs.as_raw_fd()).install(cmd.as_std_mut());
        let mut child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot start perl: {e}")))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        let registry = Arc::new(Mutex::new(Registry::default()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_events(out, registry.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(read_stderr(err, errors.clone(), opts.verbose));
        }
        tokio::spawn(async move {
            match child.wait().await {
                Ok(st) if st.success() => {}
                Ok(st) => daemon::log(LOG_INFO, &format!("Preloading process {pid} exited: {st}")),
                Err(e) => daemon::log(LOG_ERR, &format!("Preloading process {pid}: {e}")),
            }
        });
        let mut rd = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .map(TokioBufReader::new)
            .map_err(|e| StartError::Failed(e.to_string()))?;
        let mut line = String::new();
        let r = tokio::time::timeout(LOAD_TIMEOUT, rd.read_line(&mut line)).await;
        let line = line.trim_end().to_string();
        if matches!(r, Ok(Ok(_))) && line == "ready" {
            return Ok(Zygote {
                pid,
                control_fd: rd.get_ref().as_raw_fd(),
                conn: tokio::sync::Mutex::new(rd),
                registry,
                status_pipe: opts.status_tags,
            });
        }
        // Give the stderr reader a moment to collect Perl's messages.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let perl_errors = errors.lock().map(|e| e.join("\n")).unwrap_or_default();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some(msg) = line.strip_prefix("error nofdpass ") {
            return Err(StartError::NoFdPass(msg.to_string()));
        }
        let reason = match line.strip_prefix("error ") {
            Some(msg) => msg.to_string(),
            None => "the preloading process exited before it was ready".to_string(),
        };
        Err(StartError::Failed(if perl_errors.is_empty() {
            reason
        } else {
            format!("{reason}\n{perl_errors}")
        }))
    }

    /// Forks a worker that gets `fds` (stdin read end, stdout write end,
    /// stderr write end, and the status write end with `-Z`). Returns its
    /// pid and a receiver for its wait status. The whole exchange, waiting
    /// for our turn included, is bounded by [`FORK_TIMEOUT`]; after an
    /// error the connection may be out of step, so the caller gives this
    /// zygote up.
    pub async fn fork(
        &self,
        slot: usize,
        fds: &[OwnedFd],
    ) -> io::Result<(ProcessHandle, oneshot::Receiver<i32>)> {
        let want = if self.status_pipe { 4 } else { 3 };
        if fds.len() != want {
            return Err(io::Error::other("wrong number of descriptors"));
        }
        let answered = tokio::time::timeout(FORK_TIMEOUT, self.exchange(slot, fds))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {} s", FORK_TIMEOUT.as_secs()),
                ))
            })
            .and_then(|line| {
                let line = line.trim_end();
                line.parse::<u32>().map_err(|_| {
                    io::Error::other(line.strip_prefix("error ").unwrap_or(line).to_string())
                })
            })
            .and_then(|pid| bind_forked_pid(pid, self.pid).map(|h| (pid, h)));
        let (pid, handle) = answered.inspect_err(|_| self.retire())?;
        let (tx, rx) = oneshot::channel();
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = reg.early.remove(&pid) {
            let _ = tx.send(st);
        } else if !reg.closed {
            reg.waiters.insert(pid, tx);
        }
        Ok((handle, rx))
    }

    /// `fork SLOT`, the descriptors one message each, then the answer line.
    async fn exchange(&self, slot: usize, fds: &[OwnedFd]) -> io::Result<String> {
        let mut conn = self.conn.lock().await;
        conn.get_mut()
            .write_all(format!("fork {slot}\n").as_bytes())
            .await?;
        for fd in fds {
            send_fd(conn.get_ref(), fd).await?;
        }
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "preloading process closed its socket",
            ));
        }
        Ok(line)
    }
}

/// One descriptor, with the NUL byte IO::FDPass expects.
async fn send_fd(sock: &tokio::net::UnixStream, fd: &OwnedFd) -> io::Result<()> {
    let raw = [fd.as_raw_fd()];
    sock.async_io(Interest::WRITABLE, || {
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        nix::sys::socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(b"\0")],
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)
    })
    .await?;
    Ok(())
}

/// The pid the preloading process reported must be a process it forked:
/// never 0, 1 or ours (a signal to 0 or -1 would reach our own process
/// group or everyone), and its parent must be the preloading process.
/// The handle is bound (pidfd) before the parent is checked, so the
/// process checked is the one later signalled (protocol/SECURITY.md §6).
pub fn bind_forked_pid(pid: u32, zygote: u32) -> io::Result<ProcessHandle> {
    let bad = |why: &str| io::Error::other(format!("preloading process reported pid {pid}: {why}"));
    if pid <= 1 || pid == std::process::id() || pid > i32::MAX as u32 {
        return Err(bad("not a worker's pid"));
    }
    let handle = ProcessHandle::bind(pid);
    // A worker that exited at once is gone already; its exit arrives as an
    // event and it is never signalled.
    if handle.is_gone() {
        return Ok(handle);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    let Ok(stat) = stat else { return Ok(handle) };
    match parent_of(&stat) {
        Some(ppid) if ppid == zygote => Ok(handle),
        _ => Err(bad("not a child of the preloading process")),
    }
}

/// The parent pid in a `/proc/PID/stat` line (the field after the state,
/// which follows the command name in parentheses).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Zygote {
    /// Tells the zygote to stop forking (end of file on its control
    /// socket); it exits once its last worker has been reaped. After a
    /// failed exchange the stream may be out of step, so it is given up at
    /// once rather than when the last user lets go
    /// (protocol/multiplexor.md §23).
    fn retire(&self) {
        // `shutdown` needs only the descriptor, not the connection's lock
        // (an exchange may hold it); the socket stays open until dropped.
        let _ = nix::sys::socket::shutdown(self.control_fd, nix::sys::socket::Shutdown::Both);
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.retire();
    }
}

async fn read_events(out: tokio::process::ChildStdout, registry: Arc<Mutex<Registry>>) {
    let mut lines = TokioBufReader::new(out).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let mut it = l.split(' ');
        if let (Some("exit"), Some(pid), Some(st)) = (it.next(), it.next(), it.next()) {
            if let (Ok(pid), Ok(st)) = (pid.parse::<u32>(), st.parse::<i32>()) {
                let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                match reg.waiters.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(st);
                    }
                    None => {
                        reg.early.insert(pid, st);
                    }
                }
            }
        }
    }
    // The zygote is gone: waiters fall back to watching the pid.
    let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
    reg.closed = true;
    reg.waiters.clear();
}

async fn read_stderr(
    err: tokio::process::ChildStderr,
    keep: Arc<Mutex<Vec<String>>>,
    verbose: bool,
) {
    let mut lines = TokioBufReader::new(err).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
        if k.len() < 20 {
            k.push(l.clone());
            daemon::log(LOG_ERR, &format!("Preloading process stderr: {l}"));
        } else if verbose {
            daemon::log(LOG_INFO, &format!("Preloading process stderr: {l}"));
        }
    }
}

/// How long a forked worker's status may lag behind its end before it is
/// no longer waited for (a zygote that stopped reaping must not hold its
/// workers' tasks for ever).
const EXIT_REPORT_GRACE: Duration = Duration::from_secs(5);

/// Waits for a zygote child to end: its status from the zygote or, if none
/// comes (the zygote went away or stopped reaping), until its pidfd reports
/// the end (the status then reads as SIGKILL).
pub async fn wait_forked(
    handle: &ProcessHandle,
    exit: &mut Option<oneshot::Receiver<i32>>,
) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
    if let Some(rx) = exit.as_mut() {
        let reported = tokio::select! {
            st = &mut *rx => Some(st),
            () = process_ended(handle) => None,
        };
        let reported = match reported {
            Some(st) => st.ok(),
            None => tokio::time::timeout(EXIT_REPORT_GRACE, rx)
                .await
                .ok()
                .and_then(Result::ok),
        };
        *exit = None;
        if let Some(st) = reported {
            return std::process::ExitStatus::from_raw(st);
        }
    }
    process_ended(handle).await;
    killed
}

/// Returns once the process has ended (a zombie counts as ended).
async fn process_ended(handle: &ProcessHandle) {
    if let Some(fd) = handle.pidfd() {
        // A pidfd becomes readable when its process ends.
        // SAFETY: the AsyncFd shares ownership of the pidfd (Arc), which
        // stays open at least as long as the registration.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            let _ = afd.readable().await;
            return;
        }
    }
    // No pidfd (old kernel): poll; signal 0 only checks for existence.
    while handle.signal(0).is_ok() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn reported_pids_are_checked() {
        let me = std::process::id();
        for pid in [0, 1, me, u32::MAX] {
            assert!(bind_forked_pid(pid, 4242).is_err(), "{pid}");
        }
        // A live process whose parent is not the preloading process.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(bind_forked_pid(child.id(), me + 1).is_err());
        let h = bind_forked_pid(child.id(), me).unwrap();
        assert!(h.pidfd().is_some(), "bound by a pidfd");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_of("12 (a) b) S 34 12"), Some(34));
    }

    /// A stand-in filter: each worker answers `fds` with its open
    /// descriptors, `name` with its $0, anything else with `ok`, and exits
    /// at the end of its input.
    const FILTER: &str = r#"$main::MAILMUNGE_FILTER = 1;
$| = 1;
sub main::_mailmunge_do_main_loop {
    while (my $l = <STDIN>) {
        if ($l eq "fds\n") { print join(',', grep { -e "/proc/self/fd/$_" } 0 .. 63), "\n"; }
        elsif ($l eq "name\n") { print "$0\n"; }
        else { print "ok\n"; }
    }
}
1;
"#;

    fn have_fdpass() -> bool {
        let ok = std::process::Command::new("perl")
            .args(["-MIO::FDPass", "-e1"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: Perl lacks IO::FDPass");
        }
        ok
    }

    /// A loaded zygote, killed when the test ends however it ends (its
    /// workers end with their input).
    struct Loaded {
        z: Zygote,
        _dir: tempfile::TempDir,
    }

    impl Drop for Loaded {
        fn drop(&mut self) {
            let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
            let _ = self.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }

    impl Loaded {
        async fn new() -> Loaded {
            Loaded::with(&[]).await
        }

        /// With more multiplexor options (`-Z`).
        async fn with(extra: &[&str]) -> Loaded {
            let dir = tempfile::tempdir().unwrap();
            let filter = dir.path().join("filter.pl");
            std::fs::write(&filter, FILTER).unwrap();
            let mut args: Vec<std::ffi::OsString> =
                vec!["mailmunge-multiplexor".into(), "-E".into()];
            args.extend(extra.iter().map(|a| a.into()));
            args.extend(["-f".into(), filter.clone().into_os_string()]);
            let opts = Options::parse(args).unwrap();
            let z = Zygote::start(&opts).await.unwrap();
            Loaded { z, _dir: dir }
        }

        fn signal(&self, sig: nix::sys::signal::Signal) -> nix::Result<()> {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.z.pid as i32), sig)
        }

        /// Forks a worker; returns it, its reported exit, and our end of
        /// its stdin, whose closing ends it.
        async fn worker(&self, slot: usize) -> (ProcessHandle, oneshot::Receiver<i32>, OwnedFd) {
            let (ends, stdin) = worker_ends();
            let (h, exit) = self.z.fork(slot, &ends).await.unwrap();
            (h, exit, stdin)
        }

        /// Forks a worker we can talk to.
        async fn talking_worker(
            &self,
            slot: usize,
        ) -> (ProcessHandle, oneshot::Receiver<i32>, Talk) {
            let (in_r, in_w) = nix::unistd::pipe().unwrap();
            let (out_r, out_w) = nix::unistd::pipe().unwrap();
            let (_err_r, err_w) = nix::unistd::pipe().unwrap();
            let mut ends = vec![in_r, out_w, err_w];
            let _status_r = if self.z.status_pipe {
                let (r, w) = nix::unistd::pipe().unwrap();
                ends.push(w);
                Some(r)
            } else {
                None
            };
            let (h, exit) = self.z.fork(slot, &ends).await.unwrap();
            let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).unwrap();
            let talk = Talk {
                stdin: std::fs::File::from(in_w),
                stdout: TokioBufReader::new(stdout),
            };
            (h, exit, talk)
        }

        /// The zygote's children other than `known`, once there is one
        /// (polled, bounded): the spare it forks in advance.
        async fn spare(&self, known: &[u32]) -> u32 {
            for _ in 0..3000 {
                let new: Vec<u32> = children_of(self.z.pid)
                    .into_iter()
                    .filter(|p| !known.contains(p))
                    .collect();
                if let [one] = new[..] {
                    return one;
                }
                assert!(new.len() < 2, "more than one spare: {new:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the preloading process forked no spare");
        }

        /// Whether the zygote reported an exit for `pid` (looked at once
        /// its event stream has ended).
        async fn reported(&self, pid: u32) -> bool {
            for _ in 0..3000 {
                let seen = {
                    let reg = self.z.registry.lock().unwrap();
                    reg.closed.then(|| reg.early.contains_key(&pid))
                };
                if let Some(seen) = seen {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the preloading process's event stream never ended");
        }
    }

    /// A worker's stdin and stdout.
    struct Talk {
        stdin: std::fs::File,
        stdout: TokioBufReader<tokio::net::unix::pipe::Receiver>,
    }

    impl Talk {
        /// One line to the worker, its answer (without the newline).
        async fn ask(&mut self, line: &str) -> String {
            use std::io::Write;
            self.stdin
                .write_all(format!("{line}\n").as_bytes())
                .unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(30), self.stdout.read_line(&mut answer))
                .await
                .expect("the worker did not answer")
                .unwrap();
            answer.trim_end().to_string()
        }
    }

    /// Processes whose parent is `pid` (from /proc).
    fn children_of(pid: u32) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|st| parent_of(&st))
                    == Some(pid)
            })
            .collect()
    }

    /// The ends a worker gets (stdin, stdout, stderr) and our end of its
    /// stdin.
    fn worker_ends() -> (Vec<OwnedFd>, OwnedFd) {
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let (_out_r, out_w) = nix::unistd::pipe().unwrap();
        let (_err_r, err_w) = nix::unistd::pipe().unwrap();
        (vec![in_r, out_w, err_w], in_w)
    }

    /// Polls (bounded) until `pid` sleeps in the system call `nr`.
    async fn blocked_in(pid: u32, nr: &str) {
        for _ in 0..1000 {
            let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if now.split(' ').next() == Some(nr) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {pid} never blocked in system call {nr}");
    }

    async fn ends_within(pid: u32, limit: Duration) -> bool {
        let h = ProcessHandle::bind(pid);
        tokio::time::timeout(limit, process_ended(&h)).await.is_ok()
    }

    /// Regression (found by the soak): a worker's SIGCHLD arriving while
    /// the zygote waited for a descriptor broke the exchange, and the zygote
    /// then blocked for good on the NUL bytes left behind
    /// (protocol/multiplexor.md §23).
    #[cfg(target_arch = "x86_64")]
    #[tokio::test]
    async fn a_worker_ending_during_a_fork_does_not_break_the_exchange() {
        if !have_fdpass() {
            return;
        }
        let l = Loaded::new().await;
        let (a, a_exit, a_stdin) = l.worker(1).await;
        let (b_ends, _b_stdin) = worker_ends();
        let mut conn = l.z.conn.lock().await;
        conn.get_mut().write_all(b"fork 2\n").await.unwrap();
        send_fd(conn.get_ref(), &b_ends[0]).await.unwrap();
        // recvmsg, for the second descriptor, is system call 47 on x86_64.
        blocked_in(l.z.pid, "47").await;
        drop(a_stdin);
        process_ended(&a).await;
        for fd in &b_ends[1..] {
            send_fd(conn.get_ref(), fd).await.unwrap();
        }
        let mut answer = String::new();
        conn.read_line(&mut answer).await.unwrap();
        assert!(
            answer.trim_end().parse::<u32>().is_ok(),
            "answer: {answer:?}"
        );
        drop(conn);
        // Reported by the zygote (the fallback would read as SIGKILL).
        let st = wait_forked(&a, &mut Some(a_exit)).await;
        assert_eq!(st.code(), Some(0), "{st:?}");
    }

    /// A request line that does not end puts the zygote out of step: it
    /// stops forking, goes on reporting its workers' exits, and exits after
    /// the last one.
    #[tokio::test]
    async fn an_unfinished_request_retires_the_zygote() {
        if !have_fdpass() {
            return;
        }
        let l = Loaded::new().await;
        let (a, a_exit, a_stdin) = l.worker(1).await;
        let mut conn = l.z.conn.lock().await;
        conn.get_mut().write_all(b"fork").await.unwrap();
        let mut answer = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read_line(&mut answer))
            .await
            .expect("the zygote never gave the connection up")
            .unwrap_or(0);
        assert_eq!(n, 0, "answer: {answer:?}");
        drop(conn);
        assert!(
            !ends_within(l.z.pid, Duration::from_millis(300)).await,
            "it waits for its worker"
        );
        drop(a_stdin);
        let st = wait_forked(&a, &mut Some(a_exit)).await;
        assert_eq!(st.code(), Some(0), "{st:?}");
        assert!(
            ends_within(l.z.pid, Duration::from_secs(30)).await,
            "zygote still there"
        );
    }

    /// A zygote that stopped reaping does not hold its workers' tasks.
    #[tokio::test]
    async fn a_worker_whose_exit_is_never_reported_is_not_waited_for() {
        if !have_fdpass() {
            return;
        }
        let l = Loaded::new().await;
        let (a, a_exit, a_stdin) = l.worker(1).await;
        l.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
        drop(a_stdin);
        let mut exit = Some(a_exit);
        let waited = tokio::time::timeout(Duration::from_secs(60), wait_forked(&a, &mut exit));
        let st = waited
            .await
            .expect("still waiting for a report that cannot come");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    }

    /// The spare (protocol/multiplexor.md §23): a fork request is answered
    /// with a child forked before it, set up as a fresh child would be;
    /// the next spare follows.
    #[tokio::test]
    async fn a_fork_request_is_served_by_the_spare() {
        if !have_fdpass() {
            return;
        }
        for extra in [&[][..], &["-Z"][..]] {
            let l = Loaded::with(extra).await;
            let spare = l.spare(&[]).await;
            let (w, exit, mut talk) = l.talking_worker(7).await;
            assert_eq!(w.pid(), spare, "{extra:?}");
            let fds = if extra.is_empty() { "0,1,2" } else { "0,1,2,3" };
            assert_eq!(talk.ask("fds").await, fds, "{extra:?}");
            assert_eq!(talk.ask("name").await, "mailmunge: Filtering worker 7");
            let next = l.spare(&[spare]).await;
            assert_ne!(next, spare);
            // Its exit is reported like any worker's.
            drop(talk);
            let st = wait_forked(&w, &mut Some(exit)).await;
            assert_eq!(st.code(), Some(0), "{st:?}");
        }
    }

    /// A spare that died is not handed a request (a fresh child is forked)
    /// and its end is not reported: the multiplexor never heard of it.
    #[tokio::test]
    async fn a_dead_spare_is_passed_over() {
        if !have_fdpass() {
            return;
        }
        let l = Loaded::new().await;
        let spare = l.spare(&[]).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(spare as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(ends_within(spare, Duration::from_secs(30)).await);
        let (w, exit, mut talk) = l.talking_worker(1).await;
        assert_ne!(w.pid(), spare);
        assert_eq!(talk.ask("name").await, "mailmunge: Filtering worker 1");
        drop(talk);
        let st = wait_forked(&w, &mut Some(exit)).await;
        assert_eq!(st.code(), Some(0), "{st:?}");
        l.z.retire();
        assert!(!l.reported(spare).await, "the spare's end was reported");
    }

    /// A zygote told to stop (reread, or given up) lets its spare go, which
    /// exits without running the filter and without being reported; a
    /// zygote that dies takes its spare with it.
    #[tokio::test]
    async fn the_spare_never_outlives_its_zygote() {
        if !have_fdpass() {
            return;
        }
        let l = Loaded::new().await;
        let spare = l.spare(&[]).await;
        l.z.retire();
        assert!(
            ends_within(spare, Duration::from_secs(30)).await,
            "spare still there"
        );
        assert!(
            ends_within(l.z.pid, Duration::from_secs(30)).await,
            "zygote still there"
        );
        assert!(!l.reported(spare).await, "the spare's end was reported");

        let l = Loaded::new().await;
        let spare = l.spare(&[]).await;
        l.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(
            ends_within(spare, Duration::from_secs(30)).await,
            "spare outlived its zygote"
        );
    }
}
