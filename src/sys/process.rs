//! A handle on one worker process that signals only that process, even
//! after its pid has been reused (protocol/SECURITY.md §6).
//!
//! Workers we fork ourselves stay zombies until we reap them, so their pid
//! is safe to signal until then. Workers forked by the `-E` preloading
//! process are not our children: their pid could be recycled between
//! their exit and the event reporting it. For those the handle holds a
//! pidfd, opened as soon as the pid is reported, and signals through it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Which process a handle points to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProcessHandle {
    pid: u32,
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    /// Our own child, not reaped yet: the pid cannot be reused.
    Child,
    /// Someone else's child, bound by a pidfd.
    PidFd(Arc<OwnedFd>),
    /// Gone before it could be bound: never signalled.
    Gone,
}

impl ProcessHandle {
    /// A child of this process (reaped only by us).
    pub fn child(pid: u32) -> ProcessHandle {
        ProcessHandle {
            pid,
            target: Target::Child,
        }
    }

    /// Binds to the process that has `pid` now. A process that no longer
    /// exists gives a handle that never signals. Kernels without pidfds
    /// (before 5.3) fall back to the pid.
    pub fn bind(pid: u32) -> ProcessHandle {
        let target = match pidfd_open(pid) {
            Ok(fd) => Target::PidFd(Arc::new(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Target::Gone,
            Err(_) => Target::Child,
        };
        ProcessHandle { pid, target }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, when the handle has one (readable once the process ended).
    pub fn pidfd(&self) -> Option<Arc<OwnedFd>> {
        match &self.target {
            Target::PidFd(fd) => Some(fd.clone()),
            _ => None,
        }
    }

    /// Whether the process was already gone when it was bound.
    pub fn is_gone(&self) -> bool {
        matches!(self.target, Target::Gone)
    }

    /// Sends `sig`. ESRCH when the process has ended, also when its pid
    /// now belongs to another process (pidfd) — callers mostly ignore
    /// errors, since a worker may end at any time.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        match &self.target {
            Target::Child => {
                let sig = nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?;
                let pid = nix::unistd::Pid::from_raw(self.pid as libc::pid_t);
                nix::sys::signal::kill(pid, sig).map_err(io::Error::from)
            }
            Target::PidFd(fd) => {
                // SAFETY: plain syscall on a pidfd we own; a null siginfo
                // and zero flags are what pidfd_send_signal(2) documents
                // for an ordinary kill.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
            Target::Gone => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }
}

/// `pidfd_open(2)`: a descriptor bound to the process that has `pid` now.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fresh descriptor pidfd_open just returned, owned by
    // nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_bound_handle_signals_its_process() {
        let mut child = sleeper();
        let h = ProcessHandle::bind(child.id());
        assert!(h.pidfd().is_some());
        h.signal(libc::SIGKILL).unwrap();
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_handle_outlives_its_process_without_reaching_another() {
        let mut child = sleeper();
        let h = ProcessHandle::bind(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the pid is free for reuse, but the pidfd still names the
        // process that ended, so nothing else can be reached through it.
        let e = h.signal(libc::SIGTERM).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
        let late = ProcessHandle::bind(child.id());
        if late.is_gone() {
            assert_eq!(
                late.signal(libc::SIGTERM).unwrap_err().raw_os_error(),
                Some(libc::ESRCH)
            );
        }
    }
}
