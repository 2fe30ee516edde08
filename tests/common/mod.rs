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

/// Kills the process (or, given a negative number, the process group)
/// with SIGKILL when dropped, if it still runs: a daemon a test started
/// must not outlive a failed assertion.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    /// A negative number names a process group.
    fn drop(&mut self) {
        // SAFETY: plain syscalls; 0 and -1 (everything) are never signalled.
        if !matches!(self.0, -1 | 0) && unsafe { libc::kill(self.0, 0) } == 0 {
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

/// uid and gid of [`WORKER_USER`].
pub fn worker_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name(WORKER_USER)
        .unwrap()
        .expect("the worker user exists (.ci/install-deps creates it)");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// Starts the command as [`WORKER_USER`] (every uid) but with gid 0 and
/// supplementary group 0, as a start script that changes only the user
/// leaves it (protocol/SECURITY.md §5). With `keep_caps`, CAP_SETGID and
/// CAP_SETUID stay as ambient capabilities, so the daemon can fix its
/// groups; without, it cannot. Needs root.
pub fn as_worker_with_root_group(cmd: &mut Command, keep_caps: bool) {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let (uid, _) = worker_ids();
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: only syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::setgroups(1, [0].as_ptr()))?;
            check(libc::setresgid(0, 0, 0))?;
            check(libc::prctl(
                libc::PR_SET_KEEPCAPS,
                keep_caps as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            check(libc::setresuid(uid, uid, uid))?;
            if keep_caps {
                mailmunge::sys::daemon::set_capabilities(1 << CAP_SETGID | 1 << CAP_SETUID)?;
                for cap in [CAP_SETGID, CAP_SETUID] {
                    check(libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    ))?;
                }
            }
            Ok(())
        });
    }
}

/// Panics unless process `pid` runs with the worker user's uid, gid and
/// group list only, and without any capability.
pub fn assert_worker_credentials(pid: u32, what: &str) {
    let (uid, gid) = worker_ids();
    let user = std::ffi::CString::new(WORKER_USER).unwrap();
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&user, nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing from {what}'s status"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let ids = |v: u32| vec![v.to_string(); 4];
    assert_eq!(field("Uid:"), ids(uid), "{what}: Uid");
    assert_eq!(field("Gid:"), ids(gid), "{what}: Gid");
    let mut have: Vec<u32> = field("Groups:")
        .iter()
        .map(|g| g.parse().unwrap())
        .collect();
    have.sort_unstable();
    assert_eq!(have, groups, "{what}: Groups");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), ["0000000000000000"], "{what}: {caps}");
    }
}
