//! Process plumbing shared by the daemons (milter and multiplexor):
//! umask, set-id checks, privilege drop, PID and lock files, daemonising with
//! a readiness pipe (protocol/multiplexor.md §2.1–§2.4), and the entry points
//! to logging (`crate::sys::logging`: syslog or journald).
//!
//! Everything here is synchronous and meant to run before the tokio runtime
//! exists (forking a multi-threaded process is unsafe), except [`log`], which
//! may be called from anywhere.
//!
//! Typical start-up of a daemon:
//! 1. [`set_umask`], [`check_not_setid`];
//! 2. [`PidFile::open`] (as the invoking user, normally root);
//! 3. [`drop_privileges`], [`refuse_root`];
//! 4. [`daemonize`] unless running in the foreground — it returns a
//!    [`Readiness`] handle in the daemon;
//! 5. build the runtime, [`lock_file`], [`PidFile::write_pid`], open sockets;
//! 6. [`Readiness::ready`] (or [`Readiness::fail`] with the message the
//!    launcher prints as `Error from child: <message>`).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("Unknown user '{0}'")]
    UnknownUser(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Sys { what, source }
}

/// Sets the process umask and returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(mask as libc::mode_t)).bits() as u32
}

/// Refuses set-uid/set-gid execution: `Err(message)` with upstream's text
/// when real and effective ids differ.
pub fn check_not_setid(argv0: &str) -> Result<(), String> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let (uid, euid, gid, egid) = (getuid(), geteuid(), getgid(), getegid());
    if uid != euid {
        return Err(format!(
            "ERROR: {argv0} is NOT intended to run suid! Exiting."
        ));
    }
    if gid != egid {
        return Err(format!(
            "ERROR: {argv0} is NOT intended to run sgid! Exiting."
        ));
    }
    Ok(())
}

/// True when the real or effective user is root.
pub fn running_as_root() -> bool {
    nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root()
}

/// The uid and gid of a user, from the password database.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// initgroups + setgid + setuid to `user` (c/drop_privs.c), then every
/// capability dropped. Done even when we already run as that user: such a
/// process may still hold root's group ids or capabilities
/// (protocol/SECURITY.md §5). Without the right to change groups, the
/// user's own group list is accepted as it is; anything else is an error.
pub fn drop_privileges(user: &str) -> Result<(), DaemonError> {
    let (uid, gid) = lookup_user(user).ok_or_else(|| DaemonError::UnknownUser(user.to_string()))?;
    let cuser = CString::new(user).map_err(|_| DaemonError::UnknownUser(user.to_string()))?;
    use nix::unistd::{Gid, Uid};
    if let Err(e) = nix::unistd::initgroups(&cuser, Gid::from_raw(gid)) {
        if e != nix::errno::Errno::EPERM || !has_groups_of(&cuser, gid) {
            return Err(sys("initgroups")(e.into()));
        }
    }
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| sys("setgid")(e.into()))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| sys("setuid")(e.into()))?;
    // Unsupported before Linux 4.3; nothing to clear there. nix has no
    // wrapper for the ambient set.
    // SAFETY: prctl with integer arguments only; it changes nothing but
    // this process's (empty or unsupported) ambient capability set.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    set_capabilities(0).map_err(sys("capset"))
}

/// True when every id of the process (real, effective, saved gid and the
/// supplementary list) already is `gid` and the user's group list.
fn has_groups_of(user: &std::ffi::CStr, gid: u32) -> bool {
    let Ok(mut want) = nix::unistd::getgrouplist(user, nix::unistd::Gid::from_raw(gid)) else {
        return false;
    };
    let Ok(mut have) = nix::unistd::getgroups() else {
        return false;
    };
    want.sort_unstable_by_key(|g| g.as_raw());
    want.dedup();
    have.sort_unstable_by_key(|g| g.as_raw());
    have.dedup();
    let ids = nix::unistd::getresgid();
    have == want
        && ids.is_ok_and(|r| {
            [r.real, r.effective, r.saved]
                .iter()
                .all(|g| g.as_raw() == gid)
        })
}

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of capset(2); version 3 takes two.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the effective, permitted and inheritable capability sets of the
/// calling thread to `bits` (bit n = capability n). Only syscalls: safe
/// between fork and exec (the tests use it there).
pub fn set_capabilities(bits: u64) -> std::io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let half = |b: u64| CapData {
        effective: b as u32,
        permitted: b as u32,
        inheritable: b as u32,
    };
    let data = [half(bits), half(bits >> 32)];
    // SAFETY: header and two data structs as capset(2) version 3 expects,
    // both alive for the call; no wrapper in std or nix.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A PID file opened early (before privileges are dropped) and filled in
/// once the daemon is running.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    pub path: PathBuf,
}

impl PidFile {
    /// Opens (creating) the PID file read-write, mode 0644. Opened as
    /// root, it must be a regular file and is never reached through a
    /// symlink (protocol/SECURITY.md §4).
    pub fn open(path: &Path) -> Result<PidFile, DaemonError> {
        let what = format!("Could not open PID file {}", path.display());
        let file = open_rw_create(path, &what)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(sys(what))?;
        Ok(PidFile {
            file: move_high(file),
            path: path.to_path_buf(),
        })
    }

    /// The open descriptor (to keep it across [`close_inherited_fds`]).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Truncates the file and writes `<pid>\n`; the descriptor is closed.
    pub fn write_pid(mut self, pid: u32) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.write_all(format!("{pid}\n").as_bytes())
    }
}

/// Opens read-write, creating with mode 0666 & ~umask and keeping the
/// contents (a PID or lock file may belong to a running daemon). Only a
/// regular file, not reached through a symlink, is accepted: the file is
/// changed (mode, contents) before anything else is known about it.
fn open_rw_create(path: &Path, what: &str) -> Result<File, DaemonError> {
    crate::sys::blocking::open_regular(
        path,
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666),
    )
    .map_err(|e| sys(what)(e.into()))
}

/// Opens (creating, mode 0666 & ~umask) and write-locks a whole file with
/// `fcntl(F_SETLK)`. Keep the returned file open for as long as the lock
/// must be held.
pub fn lock_file(path: &Path) -> Result<File, DaemonError> {
    let what = format!("Could not lock lockfile file {}", path.display());
    let file = open_rw_create(path, &what)?;
    // Start 0 and length 0: the whole file, however long it grows.
    let fl = libc::flock {
        l_type: libc::F_WRLCK as _,
        l_whence: libc::SEEK_SET as _,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&fl))
        .map_err(|e| sys(what)(e.into()))?;
    Ok(file)
}

/// The daemon's end of the readiness pipe (protocol/multiplexor.md §2.2):
/// exactly one report, `X` for ready or `E<message>` for a start-up failure.
#[derive(Debug)]
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// A handle that reports nothing (foreground mode).
    pub fn foreground() -> Readiness {
        Readiness { pipe: None }
    }

    /// The pipe's descriptor (to keep it across [`close_inherited_fds`]).
    pub fn raw_fd(&self) -> Option<i32> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    /// Tells the launcher the daemon is up; it exits 0. In the foreground
    /// under a `Type=notify` systemd unit, tells systemd instead
    /// (protocol/deployment.md §9; a no-op without `NOTIFY_SOCKET`).
    pub fn ready(&mut self) {
        match self.pipe.take() {
            Some(mut p) => {
                let _ = p.write_all(b"X");
            }
            None => {
                if let Err(e) = crate::sys::sdnotify::ready() {
                    log(libc::LOG_WARNING, &format!("Could not notify systemd: {e}"));
                }
            }
        }
    }

    /// Tells the launcher start-up failed; it prints
    /// `Error from child: <msg>` and exits 1. In the foreground the message
    /// goes to stderr instead.
    pub fn fail(&mut self, msg: &str) {
        match self.pipe.take() {
            Some(mut p) => {
                let _ = p.write_all(format!("E{msg}").as_bytes());
            }
            None => eprintln!("{msg}"),
        }
    }
}

/// Forks into the background (fork, setsid, ignore SIGHUP, fork again).
/// The original process waits for the daemon's report and exits: 0 on `X`,
/// 1 after printing the error otherwise. Returns only in the daemon, whose
/// stdin/stdout/stderr are then reopened on /dev/null.
///
/// Must be called while the process is single-threaded.
pub fn daemonize() -> Result<Readiness, DaemonError> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys("pipe")(e.into()))?;
    // SAFETY: single-threaded at this point (documented precondition), so
    // the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| sys("fork")(e.into()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(wr);
            std::process::exit(wait_for_report(rd));
        }
        nix::unistd::ForkResult::Child => {}
    }
    drop(rd);
    let wr = move_high(wr);
    let _ = nix::unistd::setsid();
    // SAFETY: SIG_IGN installs no handler, so no handler can run unsafe
    // code (nix's signal() is unsafe for that reason alone).
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    // SAFETY: still single-threaded (the first child runs no threads).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            // SAFETY: _exit(2) ends the process at once: no atexit handler or
            // destructor runs twice (the daemon child owns them now).
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            let mut r = Readiness {
                pipe: Some(File::from(wr)),
            };
            r.fail(&format!("fork: {e}"));
            // SAFETY: as above: _exit(2) only ends the process.
            unsafe { libc::_exit(1) }
        }
    }
    stdio_to_devnull();
    Ok(Readiness {
        pipe: Some(File::from(wr)),
    })
}

/// The launcher's side: read the report and return the exit status.
fn wait_for_report(rd: OwnedFd) -> i32 {
    let mut f = File::from(rd);
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    match buf.first() {
        Some(b'X') => 0,
        Some(b'E') => {
            eprintln!("Error from child: {}", String::from_utf8_lossy(&buf[1..]));
            1
        }
        _ => {
            eprintln!(
                "Unknown reply from child: {}",
                String::from_utf8_lossy(&buf)
            );
            1
        }
    }
}

/// Reopens descriptors 0, 1 and 2 on /dev/null.
fn stdio_to_devnull() {
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(f.as_raw_fd(), fd);
        }
    }
}

/// Moves a descriptor to a number of at least 100 (close-on-exec), so that
/// short-lived early descriptors do not leave a hole at a low number that a
/// later pipe could fall into (fd 3 has a meaning for workers). Returns the
/// original on failure.
pub fn move_high<T: From<OwnedFd> + Into<OwnedFd>>(f: T) -> T {
    let fd: OwnedFd = f.into();
    use nix::fcntl::{fcntl, FcntlArg};
    let Ok(n) = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(100)) else {
        return T::from(fd);
    };
    // SAFETY: n is the fresh descriptor F_DUPFD_CLOEXEC just returned, owned
    // by nothing else; the original is dropped (closed) when `fd` goes.
    T::from(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The descriptor limit the process started with (before
/// [`raise_nofile`]), to hand back to child processes.
static ORIGINAL_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: a daemon holding a
/// few descriptors per worker and per client must not run out at the
/// usual soft default of 1024. Children should get [`original_nofile`]
/// back.
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((rlim_cur, rlim_max)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let _ = ORIGINAL_NOFILE.set(libc::rlimit { rlim_cur, rlim_max });
    if rlim_cur < rlim_max {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, rlim_max, rlim_max);
    }
}

/// The descriptor limit from before [`raise_nofile`], if it was raised.
pub fn original_nofile() -> Option<libc::rlimit> {
    ORIGINAL_NOFILE.get().copied()
}

/// Closes every descriptor from 3 up, whatever its number, except those
/// in `keep` (protocol/SECURITY.md §2): a daemon must not hold what its
/// starter left open. Uses close_range(2), or closes what /proc/self/fd
/// lists where the kernel lacks it. Call while single-threaded.
pub fn close_inherited_fds(keep: &[i32]) {
    let ranges = ranges_to_close(keep);
    if ranges.iter().all(|&(lo, hi)| close_range(lo, hi)) {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collected first: the directory's own descriptor goes away with `dir`.
    let open: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&fd)) {
            // Single-threaded: nothing owns these descriptors yet.
            let _ = nix::unistd::close(fd as i32);
        }
    }
}

/// The descriptor ranges from 3 to the largest number, minus `keep`.
fn ranges_to_close(keep: &[i32]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd >= 3)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut lo = 3u32;
    for k in keep {
        if k > lo {
            ranges.push((lo, k - 1));
        }
        lo = k + 1;
    }
    ranges.push((lo, u32::MAX));
    ranges
}

/// close_range(2) without flags; false when the kernel lacks it.
fn close_range(lo: u32, hi: u32) -> bool {
    // SAFETY: closes descriptors only, which no Rust object owns yet (see
    // close_inherited_fds). Raw syscall: nix and older C libraries lack a
    // wrapper.
    unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) == 0 }
}

/// Removes a file, ignoring errors (used at shutdown).
pub fn unlink_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Removes a UNIX socket left by us, but never a regular file
/// (protocol/multiplexor.md §20.18). Errors are ignored (shut-down path).
pub fn remove_socket(path: &Path) {
    let _ = clear_socket(path, false);
}

/// What [`clear_socket`] found at a path.
#[derive(Debug, PartialEq, Eq)]
pub enum StaleSocket {
    /// Nothing there.
    Nothing,
    /// A socket; it was removed.
    Removed,
    /// Something accepts connections on it; left alone.
    InUse,
    /// The path exists but is not a socket; left alone.
    NotASocket,
}

/// Removes the UNIX socket at `path`, never another kind of file; with
/// `keep_live`, a socket that something accepts connections on stays too.
pub fn clear_socket(path: &Path, keep_live: bool) -> std::io::Result<StaleSocket> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StaleSocket::Nothing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Ok(StaleSocket::NotASocket);
    }
    if keep_live && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Ok(StaleSocket::InUse);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(StaleSocket::Removed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StaleSocket::Nothing),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- syslog

/// Syslog priorities used by the daemons.
pub use libc::{LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_NOTICE, LOG_WARNING};

/// Maps a facility name (protocol/multiplexor.md §2 `-S`) to its value: the
/// plain names, `security` (= auth), `local0`..`local7`, or the `LOG_*`
/// spellings, case-insensitive.
pub fn syslog_facility(name: &str) -> Option<libc::c_int> {
    let lower = name.to_ascii_lowercase();
    let n = lower.strip_prefix("log_").unwrap_or(&lower);
    Some(match n {
        "auth" | "security" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "cron" => libc::LOG_CRON,
        "daemon" => libc::LOG_DAEMON,
        "ftp" => libc::LOG_FTP,
        "kern" => libc::LOG_KERN,
        "lpr" => libc::LOG_LPR,
        "mail" => libc::LOG_MAIL,
        "news" => libc::LOG_NEWS,
        "syslog" => libc::LOG_SYSLOG,
        "user" => libc::LOG_USER,
        "uucp" => libc::LOG_UUCP,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => return None,
    })
}

/// Installs the log subscriber (`crate::sys::logging::init`) with ident
/// `ident`, options LOG_PID|LOG_NDELAY and `facility`. When the
/// environment variable `MAILMUNGE_LOG_STDERR` is set, lines are copied to
/// stderr as well — handy with `-D` when debugging.
pub fn open_syslog(ident: &str, facility: libc::c_int) {
    crate::sys::logging::init(ident, facility, libc::LOG_PID | libc::LOG_NDELAY);
}

/// Logs one message (any bytes; NULs are dropped) through
/// `crate::sys::logging::emit`.
pub fn log(priority: libc::c_int, msg: &str) {
    crate::sys::logging::emit(priority, None, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities() {
        assert_eq!(syslog_facility("mail"), Some(libc::LOG_MAIL));
        assert_eq!(syslog_facility("LOG_LOCAL3"), Some(libc::LOG_LOCAL3));
        assert_eq!(syslog_facility("Security"), Some(libc::LOG_AUTH));
        assert_eq!(syslog_facility("log_authpriv"), Some(libc::LOG_AUTHPRIV));
        assert_eq!(syslog_facility("local8"), None);
        assert_eq!(syslog_facility("bogus"), None);
    }

    #[test]
    fn descriptor_ranges_skip_kept_ones() {
        assert_eq!(ranges_to_close(&[]), [(3, u32::MAX)]);
        assert_eq!(
            ranges_to_close(&[120, 0, 4, 100, 4, -1]),
            [(3, 3), (5, 99), (101, 119), (121, u32::MAX)]
        );
        assert_eq!(ranges_to_close(&[3]), [(4, u32::MAX)]);
    }

    #[test]
    fn pid_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        std::fs::write(&p, "123456789\n").unwrap();
        PidFile::open(&p).unwrap().write_pid(42).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "42\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn pid_and_lock_files_refuse_symlinks_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = PidFile::open(&link).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Could not open PID file {}: not a regular file but a symbolic link",
                link.display()
            )
        );
        assert!(lock_file(&link).is_err());
        assert!(PidFile::open(Path::new("/dev/null")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
