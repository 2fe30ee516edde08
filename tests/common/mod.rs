//! Helpers shared by the integration-test harnesses (`milter_support`,
//! `mux_support`): the daemons refuse to run workers as
//! root, so as root the tests pass `-U mailmunge` and give that user
//! directories it can use; and a daemon can be started with a lowered
//! descriptor limit.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user the workers run as when the tests run as root.
pub const WORKER_USER: &str = "mailmunge";

pub fn is_root() -> bool {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// `-U mailmunge` when running as root, nothing otherwise.
pub fn worker_user_args() -> Vec<&'static str> {
    if is_root() {
        vec!["-U", WORKER_USER]
    } else {
        vec![]
    }
}

/// Creates `path` with mode 0777 (the mode is set explicitly: the umask
/// would take bits away).
pub fn create_open_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// A temporary directory the worker user can traverse (0755; tempfile
/// makes 0700 ones) with a spool directory it can write (0777) inside.
pub fn scratch_with_spool() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = tmp.path().join("spool");
    create_open_dir(&spool);
    (tmp, spool)
}

/// Connects to a UNIX socket a daemon creates during start-up, retrying
/// until it accepts or `limit` has passed (then panics naming `what`).
pub fn connect_when_ready(
    path: &Path,
    what: &str,
    limit: std::time::Duration,
) -> std::os::unix::net::UnixStream {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() > deadline => panic!("connect {what}: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Starts the command with its soft `RLIMIT_NOFILE` set to `soft` (the
/// hard limit unchanged), as a daemon started under a low default gets.
pub fn set_soft_nofile(cmd: &mut Command, soft: u64) {
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut l: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    }
}

/// Whether an optional part of the machine is there. When it is missing,
/// a test run by hand is skipped with the reason printed; under `CI=true`,
/// where `.ci/install-deps` installs every part, the test fails instead.
pub fn have_part(part: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{part} is missing, and CI installs every part (.ci/install-deps)");
    }
    eprintln!("SKIPPED: {part} is missing (.ci/install-deps installs it)");
    false
}

/// Whether perl can load each of `modules`.
pub fn perl_modules(modules: &[&str]) -> bool {
    modules.iter().all(|m| {
        Command::new("perl")
            .arg(format!("-M{m}"))
            .arg("-e1")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Returns from the calling test (skipped, or failed under CI) unless perl
/// has every module named.
#[macro_export]
macro_rules! require_perl_modules {
    ($($m:expr),+) => {
        let mods = [$($m),+];
        if !common::have_part(&format!("Perl module {}", mods.join(", ")), common::perl_modules(&mods)) {
            return;
        }
    };
}

/// Kills the daemon named in a PID file when dropped, pass or fail.
pub struct PidFileGuard(pub PathBuf);
impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
