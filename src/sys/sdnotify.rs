//! Readiness notification to systemd (`Type=notify` units, see
//! protocol/deployment.md §9).
//!
//! With `-D` under systemd, a daemon calls [`ready`] at the moment it would
//! otherwise write `X` on its readiness pipe: the multiplexor once its
//! control socket listens and the first worker was started, the milter once
//! the multiplexor answered `free`. Without `NOTIFY_SOCKET` in the
//! environment (not started by systemd) every call is a no-op, so daemons
//! can call it unconditionally.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Sends one notification (`READY=1`, `STOPPING=1`, `STATUS=…`). `Ok(false)`
/// when no notification socket is configured.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(ENV) else {
        return Ok(false);
    };
    let target = target.into_encoded_bytes();
    let addr = match target.strip_prefix(b"@") {
        // Abstract namespace: systemd writes the leading NUL as '@'.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None if target.starts_with(b"/") => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&target))?
        }
        None => {
            return Err(io::Error::other(
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    // Never wait on systemd: callers may be on an async runtime thread.
    sock.set_nonblocking(true)?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// `READY=1`. Errors are returned for logging; they must not stop the daemon.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `STOPPING=1`, sent when a SIGTERM shutdown begins.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process environment, so keep it in one function.
    #[test]
    fn sends_to_path_and_abstract_sockets_and_is_silent_without_systemd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(ENV, &path);
        assert!(ready().unwrap());
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("mm-sdnotify-test-{}", std::process::id());
        let arx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        std::env::set_var(ENV, format!("@{name}"));
        assert!(stopping().unwrap());
        let n = arx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        std::env::set_var(ENV, "relative");
        assert!(ready().is_err());
        std::env::remove_var(ENV);
        assert!(!ready().unwrap());
    }
}
