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

/// Makes the started command inherit `file` as descriptor `fd` (not
/// close-on-exec), as a careless starter would leave it; the soft
/// descriptor limit is raised to the hard one so that high numbers fit.
pub fn inherit_fd(cmd: &mut Command, file: &std::fs::File, fd: i32) {
    use std::os::fd::AsRawFd;
    let src = file.as_raw_fd();
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut l: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            if libc::dup2(src, fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptors of process `pid` that refer to `path`.
pub fn fds_open_on(pid: u32, path: &Path) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Kills the process with SIGKILL when dropped, if it still runs: a
/// daemon a test started must not outlive a failed assertion.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain syscall; pid 0 and below are never signalled.
        if self.0 > 0 && unsafe { libc::kill(self.0, 0) } == 0 {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// A root-owned file a symlinked PID file points at, with its contents
/// and mode recorded, to show the daemons leave it alone
/// (protocol/SECURITY.md §4).
pub struct Victim {
    pub path: PathBuf,
    pub link: PathBuf,
}

impl Victim {
    /// Creates `<dir>/victim` (mode 0600) and the symlink `<dir>/<link>` to it.
    pub fn new(dir: &Path, link: &str) -> Victim {
        let path = dir.join("victim");
        std::fs::write(&path, "precious\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join(link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        Victim { path, link }
    }

    /// Panics unless contents and mode are as created. A daemon that did
    /// write its PID there is killed (it would run on otherwise).
    pub fn assert_untouched(&self) {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let _guard = text.trim().parse().ok().map(KillOnDrop);
        assert_eq!(text, "precious\n", "the victim file was written");
        let mode = std::fs::metadata(&self.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the victim file's mode was changed");
    }
}
