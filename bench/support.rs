//! Shared pieces of the benchmark programs in `examples/bench_*.rs`: a
//! scratch directory the worker user can use, the real daemons started in
//! the foreground and stopped on drop, control-socket requests, /proc
//! readings and latency percentiles.
//!
//! Included with `#[path]` by each example, so some items are unused in one
//! of them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use mailmunge::ctrl::format::StatusReply;

/// Process groups of the running daemons and the scratch directory, for the
/// interrupt handler.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());
static SCRATCH_ROOT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
/// Set once an interrupt is being handled: no daemon may start any more.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes an interrupted run (Ctrl-C, SIGTERM, SIGHUP) clean up too: the
/// daemons run in their own process groups, so the terminal's signal does
/// not reach them, and they drop privileges, which clears a parent-death
/// signal. Call first in `main`, before any other thread exists: the
/// signals are blocked in every thread and taken by one waiting thread.
/// (`Daemon::spawn` gives the daemons an empty signal mask again.)
pub fn install_interrupt_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block().context("block signals")?;
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        eprintln!("\ninterrupted ({sig}): stopping the daemons");
        // Under the lock, so that no daemon starts after the snapshot.
        let groups: Vec<i32> = LIVE_GROUPS
            .lock()
            .map(|g| {
                STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
                g.clone()
            })
            .unwrap_or_default();
        for &g in &groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), Signal::SIGTERM);
        }
        // Reap the daemons (our children) so that none is left a zombie;
        // give them 2 s to exit on SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !reap_groups(&groups) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &g in &groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !reap_groups(&groups) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(root) = SCRATCH_ROOT.lock().ok().and_then(|r| r.clone()) {
            let _ = std::fs::remove_dir_all(root);
        }
        std::process::exit(128 + sig as i32);
    });
    Ok(())
}

/// Reaps whatever children of ours in `groups` have exited; true when none
/// is left.
fn reap_groups(groups: &[i32]) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut all_gone = true;
    for &g in groups {
        loop {
            match waitpid(nix::unistd::Pid::from_raw(-g), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    all_gone = false;
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    all_gone
}

/// Upper bound of every wait for a daemon to come up.
pub const START_LIMIT: Duration = Duration::from_secs(30);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `-U mailmunge` when running as root (the daemons refuse root workers).
pub fn user_args() -> Vec<String> {
    if is_root() {
        vec!["-U".into(), "mailmunge".into()]
    } else {
        vec![]
    }
}

/// Directory of the daemon binaries: `MM_BENCH_BIN_DIR`, else the profile
/// directory this example was built into (`target/release` for
/// `cargo run --release --example ...`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MM_BENCH_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected example location")?;
    Ok(dir.to_path_buf())
}

/// Path of one daemon binary, with a hint when it has not been built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} not found: build the daemons first (cargo build --release --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// A temporary tree the worker user can read and write: world-readable
/// copies of `perl/` and the no-op filter, and a 0777 spool directory.
pub struct Scratch {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub spool: PathBuf,
    pub perl: PathBuf,
    pub filter: PathBuf,
}

impl Scratch {
    /// Creates the tree under `--spool-base DIR`, by default /dev/shm when
    /// it is a tmpfs (where a production spool belongs), else the system
    /// temporary directory.
    pub fn new() -> Result<Scratch> {
        let base: String = arg("--spool-base", String::new())?;
        let base = if !base.is_empty() {
            PathBuf::from(base)
        } else if fs_type(Path::new("/dev/shm")).as_deref() == Some("tmpfs") {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("mm-bench-")
            .tempdir_in(&base)
            .with_context(|| format!("tempdir in {}", base.display()))?;
        let root = dir.path().to_path_buf();
        chmod(&root, 0o755)?;
        let spool = root.join("spool");
        std::fs::create_dir(&spool)?;
        chmod(&spool, 0o777)?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let perl = root.join("perl");
        copy_tree(&src.join("perl"), &perl)?;
        let filter = root.join("noop-filter.pl");
        std::fs::copy(src.join("bench/noop-filter.pl"), &filter).context("copy the filter")?;
        chmod(&filter, 0o755)?;
        if let Ok(mut r) = SCRATCH_ROOT.lock() {
            *r = Some(root.clone());
        }
        Ok(Scratch {
            _dir: dir,
            root,
            spool,
            perl,
            filter,
        })
    }

    /// A world-readable copy of the repository file `rel` in the scratch
    /// root, for daemons that run as another user.
    pub fn copy_in(&self, rel: &str) -> Result<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let name = src.file_name().context("file name")?;
        let dst = self.root.join(name);
        std::fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
        chmod(&dst, 0o755)?;
        Ok(dst)
    }

    /// One line saying where the spool is and on what file system.
    pub fn describe(&self) -> String {
        format!(
            "spool {} on {}",
            self.spool.display(),
            fs_type(&self.spool).unwrap_or_else(|| "an unknown file system".into())
        )
    }

    pub fn mux_socket(&self) -> PathBuf {
        self.spool.join("mx.sock")
    }

    /// `mailmunge -D -p SPEC -m MUX -z SPOOL` for this scratch stack (as the
    /// unprivileged user when root); callers add their own options.
    pub fn milter_command(&self, spec: &str) -> Result<Command> {
        let mut cmd = Command::new(binary("mailmunge")?);
        cmd.args(user_args())
            .arg("-D")
            .arg("-p")
            .arg(spec)
            .arg("-m")
            .arg(self.mux_socket())
            .arg("-z")
            .arg(&self.spool)
            .env("MAILMUNGE_MY_IP", "127.0.0.1");
        Ok(cmd)
    }

    /// `PERL5LIB` for the workers: our copy first.
    pub fn perl5lib(&self) -> String {
        match std::env::var("PERL5LIB") {
            Ok(v) if !v.is_empty() => format!("{}:{v}", self.perl.display()),
            _ => self.perl.display().to_string(),
        }
    }
}

/// The file system type of the mount holding `p`, from /proc/self/mounts
/// (longest matching mount point).
pub fn fs_type(p: &Path) -> Option<String> {
    let p = p.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && p.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

/// Extra daemon options from `--NAME "-I 64 ..."` (split on white space).
pub fn extra_args(name: &str) -> Result<Vec<String>> {
    let s: String = arg(name, String::new())?;
    Ok(s.split_whitespace().map(str::to_string).collect())
}

pub fn chmod(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Copies a directory tree, making it world-readable (dirs 0755, files 0644).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).with_context(|| format!("mkdir {}", to.display()))?;
    chmod(to, 0o755)?;
    for e in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)
                .with_context(|| format!("copy {}", e.path().display()))?;
            chmod(&target, 0o644)?;
        }
    }
    Ok(())
}

/// A daemon started with `-D` in its own process group; SIGTERM to the
/// group on drop, SIGKILL if it has not exited after 10 s.
pub struct Daemon {
    pub name: &'static str,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Daemon> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?);
        Daemon::spawn_logged(name, cmd, log, out)
    }

    /// Like `spawn`, but with pipes on the process's stdin and stdout (a
    /// Perl worker driven directly); stderr goes to `log`.
    pub fn spawn_piped(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
    ) -> Result<(Daemon, std::process::ChildStdin, std::process::ChildStdout)> {
        let err =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut d = Daemon::spawn_logged(name, cmd, log, err)?;
        let child = d.child.as_mut().context("child")?;
        let (i, o) = (child.stdin.take(), child.stdout.take());
        Ok((d, i.context("stdin")?, o.context("stdout")?))
    }

    fn spawn_logged(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        err: std::fs::File,
    ) -> Result<Daemon> {
        cmd.stderr(err).process_group(0);
        // SAFETY: sigprocmask is async-signal-safe. `Command` keeps the
        // parent's signal mask, and ours blocks the stop signals (see
        // install_interrupt_cleanup): a daemon must start with none blocked.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::signal::SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)
            });
        }
        // Spawned under the lock: the interrupt handler either sees this
        // daemon or has already forbidden it.
        let mut groups = LIVE_GROUPS
            .lock()
            .map_err(|_| anyhow::anyhow!("daemon list poisoned"))?;
        if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted: not starting {name}");
        }
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        groups.push(child.id() as i32);
        drop(groups);
        Ok(Daemon {
            name,
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's output so far (for error messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "{} exited ({st}); its output:\n{}",
                    self.name,
                    self.output()
                );
            }
        }
        Ok(())
    }

    /// Sends SIGTERM to the process group without waiting (several daemons
    /// can then wind down at once; `stop` collects them).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Stops the process group; returns how long the leader took to exit.
    pub fn stop(&mut self) -> Option<Duration> {
        self.stop_within(Duration::from_secs(10))
    }

    /// Stops the process group, with SIGKILL after `limit`; returns how
    /// long the leader took to exit on SIGTERM.
    pub fn stop_within(&mut self, limit: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let t = Instant::now();
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let mut took = None;
        while t.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                took = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Workers that outlive their multiplexor get the same end.
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        if took.is_none() {
            let _ = child.wait();
        }
        // Only now: until it is gone, an interrupt must still kill it.
        if let Ok(mut g) = LIVE_GROUPS.lock() {
            g.retain(|&p| p != pgid.as_raw());
        }
        took
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `mailmunge-multiplexor -D` on the scratch spool with the no-op
/// filter and waits until its control socket answers `status`.
pub fn start_mux(s: &Scratch, extra: &[&str]) -> Result<Daemon> {
    let mut cmd = Command::new(binary("mailmunge-multiplexor")?);
    cmd.args(user_args())
        .arg("-D")
        .arg("-z")
        .arg(&s.spool)
        .arg("-s")
        .arg(s.mux_socket())
        .arg("-f")
        .arg(&s.filter)
        .args(extra)
        .args(extra_args("--mux-args")?)
        .env("PERL5LIB", s.perl5lib())
        .env("MAILMUNGE_SPOOLDIR", &s.spool)
        .env("MAILMUNGE_MTA", "postfix");
    spawn_mux(
        "mailmunge-multiplexor",
        cmd,
        s.root.join("mux.log"),
        &s.mux_socket(),
    )
}

/// Starts a multiplexor (`cmd`, in the foreground) with its output in
/// `log` and waits until its control socket `sock` answers `status`.
pub fn spawn_mux(name: &'static str, cmd: Command, log: PathBuf, sock: &Path) -> Result<Daemon> {
    let mut d = Daemon::spawn(name, cmd, log)?;
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(r) = mux_request(sock, b"status\n") {
            if !r.is_empty() {
                return Ok(d);
            }
        }
        d.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{name} did not answer within {START_LIMIT:?}; output:\n{}",
                d.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One control-socket round trip (blocking): send the line, read to EOF.
pub fn mux_request(sock: &Path, line: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(line)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// The same round trip on tokio; like the milter, it waits while the
/// multiplexor's listen queue is full.
pub async fn mux_request_async(sock: &Path, line: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = mailmunge::wire::sockspec::connect_unix(sock).await?;
    s.write_all(line).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply within 60 s"))??;
    Ok(out)
}

/// Pids of the running workers, from the multiplexor's `workers` report.
pub fn worker_pids(sock: &Path) -> Vec<u32> {
    let Ok(r) = mux_request(sock, b"workers\n") else {
        return vec![];
    };
    String::from_utf8_lossy(&r)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_slot, state, pid) = (f.next()?, f.next()?, f.next()?);
            if state == "S" {
                return None;
            }
            pid.parse().ok()
        })
        .collect()
}

/// Memory and CPU of one process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStat {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        cpu_ticks: ticks,
        threads: field("Threads:"),
        fds,
    })
}

/// CPU ticks summed over several processes (gone ones count 0).
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| proc_stat(p))
        .map(|s| s.cpu_ticks)
        .sum()
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Converts clock ticks to milliseconds.
pub fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 * 1000.0 / ticks_per_second() as f64
}

/// CPU of whole process trees, counting processes that came and went.
///
/// One snapshot reads `/proc/*/stat` of every process. The CPU of a tree at
/// that instant is, over its live members, their own utime+stime plus
/// their cutime+cstime: the kernel adds a child's times (its own and those
/// of the children it reaped) to its parent's when the parent reaps it, so a
/// worker that exited and was waited for between two snapshots is still
/// counted, in its parent's (multiplexor's or preloading process's)
/// cutime; a zombie keeps its own times until it is reaped. Only children
/// nobody waits for (SIGCHLD ignored) would escape; neither multiplexor
/// ignores it. The difference of two snapshots is the tree's CPU between
/// them.
pub struct ProcTree {
    /// pid -> (ppid, own ticks, reaped children's ticks)
    procs: std::collections::HashMap<u32, (u32, u64, u64)>,
}

impl ProcTree {
    pub fn snapshot() -> ProcTree {
        let mut procs = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(v) = stat_times(pid) {
                    procs.insert(pid, v);
                }
            }
        }
        ProcTree { procs }
    }

    /// `root` and every live descendant.
    pub fn members(&self, root: u32) -> Vec<u32> {
        let mut out = vec![];
        if !self.procs.contains_key(&root) {
            return out;
        }
        let mut todo = vec![root];
        while let Some(p) = todo.pop() {
            out.push(p);
            todo.extend(self.procs.iter().filter(|(_, v)| v.0 == p).map(|(&c, _)| c));
        }
        out
    }

    /// CPU ticks of `root`'s tree so far (see the type's comment).
    pub fn tree_ticks(&self, root: u32) -> u64 {
        self.members(root)
            .iter()
            .filter_map(|p| self.procs.get(p))
            .map(|v| v.1 + v.2)
            .sum()
    }

    /// CPU ticks of `pid` itself (utime+stime).
    pub fn own_ticks(&self, pid: u32) -> u64 {
        self.procs.get(&pid).map(|v| v.1).unwrap_or(0)
    }
}

/// The machine's (idle, total) CPU ticks so far, from /proc/stat's `cpu`
/// line (idle and iowait count as idle).
pub fn machine_idle() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().sum()))
}

/// Idle share in % between two `machine_idle` readings (NaN if unknown).
pub fn idle_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
            100.0 * i1.saturating_sub(i0) as f64 / (t1 - t0) as f64
        }
        _ => f64::NAN,
    }
}

/// (ppid, utime+stime, cutime+cstime) from /proc/PID/stat.
fn stat_times(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3 of the
    // whole line, ppid 4, utime..cstime 14..17.
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Live descendants of `pid` (not `pid` itself), from
/// /proc/PID/task/TID/children: cheaper than reading all of /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in kids
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Proportional set size of a process in kB (its share of pages it shares
/// with others, e.g. forked workers), from /proc/PID/smaps_rollup.
pub fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the RSS of a process in a background thread; `stop` returns the
/// highest value seen.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(st) = proc_stat(pid) {
                    peak = peak.max(st.rss_kb);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

/// Latency samples of one run.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The q-quantile (nearest rank) in milliseconds; 0 without samples.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.sort_unstable();
        let rank = ((q * self.samples.len() as f64).ceil() as usize).clamp(1, self.samples.len());
        self.samples[rank - 1].as_secs_f64() * 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0
            / self.samples.len() as f64
    }
}

/// The outcome of one timed run of concurrent clients.
#[derive(Debug, Default)]
pub struct Run {
    /// Requests (or sessions) completed.
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// One sample per completed request.
    pub lat: Latencies,
    /// Time by stage summed over the completed messages, for drivers that
    /// know stages (`milter_client::STAGES`).
    pub stages: [Duration; 4],
}

/// Adds `b` to `a`, element by element.
#[allow(dead_code)]
pub fn add_durations(a: &mut [Duration; 4], b: &[Duration; 4]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

impl Run {
    /// Adds one client's latencies, error count and first error.
    pub fn add(&mut self, lat: Latencies, errors: usize, first_error: Option<String>) {
        self.ok += lat.len();
        self.errors += errors;
        if self.first_error.is_none() {
            self.first_error = first_error;
        }
        self.lat.extend(lat);
    }

    /// Completed requests per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU milliseconds per 1000 completed requests for `ticks` of CPU time.
    pub fn cpu_ms_per_1000(&self, ticks: u64) -> f64 {
        if self.ok > 0 {
            ticks_ms(ticks) * 1000.0 / self.ok as f64
        } else {
            0.0
        }
    }
}

/// Raises the soft RLIMIT_NOFILE towards `want` (at most the hard limit);
/// returns the soft limit now in force. Children inherit it.
pub fn raise_nofile(want: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = want.min(hard).max(soft);
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// One line about the machine the figures come from.
pub fn machine_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{}, load average {} at start", cpu_note(), load.join(" "))
}

/// The number and model of the CPUs.
pub fn cpu_note() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs ({model})")
}

/// The commit the benchmark was built from (short hash).
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The date and time now, as `2026-12-06 07:30 UTC`.
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Whether the bare flag `name` is on the command line.
pub fn has_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Replaces the text between the `begin` and `end` marker lines of the
/// repository file `rel` (a generated section of a README).
pub fn write_generated(rel: &str, begin: &str, end: &str, section: &str) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
        bail!("{rel} has no generated section ({begin} ... {end})");
    };
    let new = format!("{}{begin}\n\n{section}\n{}", &text[..a], &text[b..]);
    std::fs::write(&path, new).with_context(|| format!("write {}", path.display()))
}

/// A `--name value` option from argv, else the default.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name}: bad value {v}"))
        }
    }
}

/// A comma-separated list option (`--clients 1,4,16`).
pub fn list_arg(name: &str, default: &[usize]) -> Result<Vec<usize>> {
    let s: String = arg(
        name,
        default
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )?;
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("{name}: bad number {p}"))
        })
        .collect()
}

/// What `activation_rounds` measured.
pub struct Activation {
    /// Requests that had to start a worker.
    pub cold: Latencies,
    /// The next request, on the worker just started.
    pub warm: Latencies,
    /// `free` asked every 2 ms meanwhile.
    pub free: Latencies,
    pub free_max: Duration,
}

/// On-demand worker activation, on a multiplexor started with `-r 2` (a
/// worker serves two requests, then retires) and a long `-w` (the
/// minimum-worker filler does not replace it): once every slot is
/// Stopped, the next `request` has to start a worker (cold) and the one
/// after runs on that worker (warm). A thread asks `free` every 2 ms
/// meanwhile; its worst latency shows whether starting a worker holds up
/// the multiplexor's other clients. `request` does one round trip and
/// returns the reply, which must equal `ok`.
pub fn activation_rounds(
    sock: &Path,
    mux: &mut Daemon,
    rounds: usize,
    request: &dyn Fn() -> Result<Vec<u8>>,
    ok: &[u8],
) -> Result<Activation> {
    // The start-up worker answers first.
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let last = request()?;
        if last == ok {
            break;
        }
        mux.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "no successful request (last answer {:?}); output:\n{}",
                String::from_utf8_lossy(&last),
                mux.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, sock) = (stop.clone(), sock.to_path_buf());
        std::thread::spawn(move || {
            let mut lat = Latencies::default();
            let mut max = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                if mux_request(&sock, b"free\n").is_ok() {
                    let d = t.elapsed();
                    max = max.max(d);
                    lat.push(d);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (lat, max)
        })
    };
    let (mut cold, mut warm) = (Latencies::default(), Latencies::default());
    let mut result = Ok(());
    for _ in 0..rounds {
        if let Err(e) = wait_all_stopped(sock, mux, request) {
            result = Err(e);
            break;
        }
        let t = Instant::now();
        let r = request();
        cold.push(t.elapsed());
        let t = Instant::now();
        let r2 = request();
        warm.push(t.elapsed());
        match (r, r2) {
            (Ok(a), Ok(b)) if a == ok && b == ok => {}
            (a, b) => {
                result = Err(anyhow::anyhow!("requests answered {a:?} / {b:?}"));
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (free, free_max) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("free prober panicked"))?;
    result?;
    Ok(Activation {
        cold,
        warm,
        free,
        free_max,
    })
}

/// Polls `status` until every slot is Stopped (retired workers reaped);
/// an Idle worker with a request left is given an untimed request so that
/// it retires too.
fn wait_all_stopped(
    sock: &Path,
    mux: &mut Daemon,
    request: &dyn Fn() -> Result<Vec<u8>>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = mux_request(sock, b"status\n")?;
        let st = StatusReply::parse(&r);
        if st
            .as_ref()
            .is_some_and(|st| st.count(b'S') == st.letters.len())
        {
            return Ok(());
        }
        if st.is_some_and(|st| st.count(b'I') > 0) {
            request()?;
        }
        mux.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "workers still running after 20 s: {}",
                String::from_utf8_lossy(&r)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
