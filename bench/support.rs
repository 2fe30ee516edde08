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
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Process groups of the running daemons and the scratch directory, for the
/// interrupt handler.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());
static SCRATCH_ROOT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

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
        let groups: Vec<i32> = LIVE_GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
        for &g in &groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), Signal::SIGTERM);
        }
        std::thread::sleep(Duration::from_secs(2));
        for &g in &groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), Signal::SIGKILL);
        }
        if let Some(root) = SCRATCH_ROOT.lock().ok().and_then(|r| r.clone()) {
            let _ = std::fs::remove_dir_all(root);
        }
        std::process::exit(128 + sig as i32);
    });
    Ok(())
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
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
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
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        if let Ok(mut g) = LIVE_GROUPS.lock() {
            g.push(child.id() as i32);
        }
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

    /// Stops the process group; returns how long the leader took to exit.
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        if let Ok(mut g) = LIVE_GROUPS.lock() {
            g.retain(|&p| p != pgid.as_raw());
        }
        let t = Instant::now();
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                let took = t.elapsed();
                // Workers that outlive their multiplexor get the same end.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                return Some(took);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        None
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
    let mut d = Daemon::spawn("mailmunge-multiplexor", cmd, s.root.join("mux.log"))?;
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(r) = mux_request(&s.mux_socket(), b"status\n") {
            if !r.is_empty() {
                return Ok(d);
            }
        }
        d.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "multiplexor did not answer within {START_LIMIT:?}; output:\n{}",
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
    let mut s = mailmunge::sockspec::connect_unix(sock).await?;
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
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} CPUs ({model}), load average {} at start",
        load.join(" ")
    )
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

/// A tokio stream seen through the `futures` I/O traits (what miltr-client
/// speaks).
pub struct Compat<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> futures_io::AsyncRead for Compat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> futures_io::AsyncWrite for Compat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
