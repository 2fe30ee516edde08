//! Helpers for the multiplexor integration tests: start the real binary on a
//! temporary spool dir with the protocol-speaking test worker, talk to its
//! control sockets, clean up.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailmunge-multiplexor");

static WORKER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_worker_copy() {
    if let Some(dir) = WORKER.get().and_then(|p| p.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The test worker (t/data/mux/worker.pl), copied to a world-readable
/// temporary directory so that the `-U mailmunge` user can run it wherever
/// the source tree lives. Removed when the test program exits.
pub fn worker_path() -> PathBuf {
    WORKER
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("mm-mux-worker")
                .tempdir()
                .unwrap()
                .keep();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let w = dir.join("worker.pl");
            std::fs::copy(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("t/data/mux/worker.pl"),
                &w,
            )
            .unwrap();
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
            unsafe { libc::atexit(remove_worker_copy) };
            w
        })
        .clone()
}

/// A spool directory the `-U mailmunge` worker user can use.
pub struct Spool {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Spool {
    pub fn new() -> Spool {
        let (dir, path) = common::scratch_with_spool();
        Spool { dir, path }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// The options every test needs: user (as root), spool, socket, filter.
pub fn base_args(spool: &Spool, filter: &Path) -> Vec<String> {
    let mut a: Vec<String> = common::worker_user_args()
        .into_iter()
        .map(String::from)
        .collect();
    a.extend([
        "-z".into(),
        spool.path.display().to_string(),
        "-s".into(),
        spool.file("mx.sock").display().to_string(),
        "-f".into(),
        filter.display().to_string(),
    ]);
    a
}

/// A multiplexor running in the foreground (-D) in its own process group.
pub struct Mx {
    pub child: Option<Child>,
    pub spool: Spool,
    pub sock: PathBuf,
}

impl Mx {
    /// Starts with the test worker and the given extra options; waits until
    /// the control socket answers.
    pub fn start(extra: &[&str]) -> Mx {
        Mx::start_in(Spool::new(), &worker_path(), extra)
    }

    pub fn start_in(spool: Spool, filter: &Path, extra: &[&str]) -> Mx {
        Mx::start_full(spool, filter, extra, false)
    }

    /// Like `start_in`, with syslog messages copied to `<tmp>/log`
    /// (MAILMUNGE_LOG_STDERR); read them with [`Mx::log`].
    pub fn start_logged(extra: &[&str]) -> Mx {
        Mx::start_full(Spool::new(), &worker_path(), extra, true)
    }

    /// Starts with the soft descriptor limit set to `soft`.
    pub fn start_with_nofile(extra: &[&str], soft: u64) -> Mx {
        Mx::start_cmd(
            Spool::new(),
            &worker_path(),
            extra,
            false,
            Some(soft),
            &[],
            |_| {},
        )
    }

    /// Starts logged (see `start_logged`) after `configure` has adjusted the
    /// command (inherited descriptors, credentials).
    pub fn start_configured(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Mx {
        Mx::start_cmd(
            Spool::new(),
            &worker_path(),
            extra,
            true,
            None,
            &[],
            configure,
        )
    }

    pub fn start_full(spool: Spool, filter: &Path, extra: &[&str], logged: bool) -> Mx {
        Mx::start_cmd(spool, filter, extra, logged, None, &[], |_| {})
    }

    /// Starts in `spool` with extra environment variables, logging to
    /// `<tmp>/log`.
    pub fn start_env(spool: Spool, extra: &[&str], env: &[(&str, &str)]) -> Mx {
        Mx::start_cmd(spool, &worker_path(), extra, true, None, env, |_| {})
    }

    fn start_cmd(
        spool: Spool,
        filter: &Path,
        extra: &[&str],
        logged: bool,
        nofile: Option<u64>,
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Mx {
        let mut args = base_args(&spool, filter);
        args.push("-D".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(BIN);
        cmd.args(&args).stdin(Stdio::null()).process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(soft) = nofile {
            common::set_soft_nofile(&mut cmd, soft);
        }
        if logged {
            let f = std::fs::File::create(spool.dir.path().join("log")).unwrap();
            cmd.env("MAILMUNGE_LOG_STDERR", "1").stderr(f);
        }
        configure(&mut cmd);
        let child = cmd.spawn().expect("start multiplexor");
        let sock = spool.file("mx.sock");
        let mx = Mx {
            child: Some(child),
            spool,
            sock,
        };
        mx.wait_ready();
        mx
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "multiplexor did not open {} within 20 s",
            self.sock.display()
        );
    }

    /// What the multiplexor logged so far (see `start_logged`).
    pub fn log(&self) -> String {
        // Lossy: one stray byte (a worker's stderr is logged as it comes)
        // must not make the whole log look empty.
        std::fs::read(self.spool.dir.path().join("log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            if Instant::now() > deadline {
                panic!("log never contained {needle:?}; log:\n{l}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// One request on the privileged socket; the whole reply.
    pub fn req(&self, line: &[u8]) -> Vec<u8> {
        request(&self.sock, line)
    }

    pub fn req_s(&self, line: &str) -> String {
        String::from_utf8_lossy(&self.req(format!("{line}\n").as_bytes())).into_owned()
    }

    /// Waits for a reply to match, polling (state changes are asynchronous).
    pub fn wait_for(&self, line: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.req_s(line);
            if pred(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!("`{line}` never gave the expected reply; last: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` workers are idle and stops them (SIGSTOP) until the
    /// guard is dropped: a request sent meanwhile keeps its worker busy for
    /// as long as the test needs, instead of for a sleep that a slow
    /// machine may outlast.
    pub fn hold_idle_workers(&self, n: usize) -> Held {
        let idle = |r: &str| -> Vec<i32> {
            r.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    // A slot whose process is still starting shows pid -1:
                    // never signal that (kill(-1) reaches every process).
                    (f.len() > 2 && f[1] == "I")
                        .then(|| f[2].parse::<i32>().unwrap())
                        .filter(|&pid| pid > 1)
                })
                .collect()
        };
        let w = self.wait_for("workers", |r| idle(r).len() == n);
        let pids = idle(&w);
        for &p in &pids {
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        Held { pids }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the multiplexor to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// Workers stopped by [`Mx::hold_idle_workers`]; continued when dropped.
pub struct Held {
    pub pids: Vec<i32>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for &p in &self.pids {
            unsafe { libc::kill(p, libc::SIGCONT) };
        }
    }
}

/// One request line on a socket, reply read to EOF (30 s bound).
pub fn request(sock: &Path, line: &[u8]) -> Vec<u8> {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(line).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("reply before timeout");
    out
}

/// The nice value of process `pid` (field 19 of /proc/PID/stat).
#[allow(dead_code)]
pub fn nice_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(16).unwrap().parse().unwrap()
}
