//! The `Type=notify` units' contract: `mailmunge-start -D multiplexor` with
//! `NOTIFY_SOCKET` set sends `READY=1` only once the control socket answers,
//! and the multiplexor stops on SIGTERM (protocol/deployment.md §9).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::{is_root, PidFileGuard};

const START: &str = env!("CARGO_BIN_EXE_mailmunge-start");

/// `free` over the control socket, as the milter asks it.
fn free(sock: &Path) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"free\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A 0755 scratch directory with a 0750 spool in it that the worker user
/// owns (as root).
fn scratch_spool() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o750)).unwrap();
    if is_root() {
        let u = nix::unistd::User::from_name("mailmunge")
            .unwrap()
            .expect("user mailmunge (see .ci/install-deps)");
        nix::unistd::chown(&spool, Some(u.uid), Some(u.gid)).unwrap();
    }
    (dir, spool)
}

/// A socket in `dir` standing in for systemd's NOTIFY_SOCKET; the
/// multiplexor sends after dropping privileges, so anyone may write to it.
fn notify_socket(dir: &Path) -> (std::path::PathBuf, UnixDatagram) {
    let path = dir.join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (path, rx)
}

#[test]
fn multiplexor_notifies_systemd_when_ready_and_stops_on_sigterm() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (dir, spool) = scratch_spool();
    let user = if is_root() { "mailmunge" } else { "" };
    let (notify, rx) = notify_socket(dir.path());

    let mut child = Command::new(START)
        .args(["-D", "multiplexor"])
        .env("SPOOLDIR", &spool)
        .env("MX_USER", user)
        .env("MX_MINIMUM", "1")
        .env("MX_MAXIMUM", "2")
        .env("FILTER", top.join("examples/mailmunge-filter.pl"))
        .env("PERL5LIB", top.join("perl"))
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sock = spool.join("mailmunge-multiplexor.sock");

    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("no READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the control socket answers at once.
    let answer = free(&sock).expect("control socket does not answer after READY=1");
    assert!(
        answer.trim_end().parse::<u32>().is_ok(),
        "free answered {answer:?}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "mailmunge-start must exec the daemon, not exit"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "multiplexor did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(!sock.exists(), "control socket left behind");
}

/// A spool and a filter that dies at start-up, in a directory the worker
/// user can reach.
fn dying_filter_setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, spool) = scratch_spool();
    let filter = dir.path().join("dies.pl");
    std::fs::write(
        &filter,
        "#!/usr/bin/perl\ndie \"the database is down\\n\";\n",
    )
    .unwrap();
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, spool, filter)
}

#[test]
fn start_as_daemon_reports_workers_that_cannot_start() {
    let (_dir, spool, filter) = dying_filter_setup();
    let pidfile = spool.join("mx.pid");
    let _guard = PidFileGuard(pidfile.clone());
    let out = Command::new(START)
        .arg("multiplexor")
        .env("SPOOLDIR", &spool)
        .env("MX_USER", if is_root() { "mailmunge" } else { "" })
        .env("MX_MINIMUM", "1")
        .env("MX_PIDFILE", &pidfile)
        .env("FILTER", &filter)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("mailmunge-start: the multiplexor is running, but no worker answers: the filter's workers fail: Worker "),
        "{err}"
    );
    assert!(
        err.contains("\nIts stderr:\n  the database is down"),
        "{err}"
    );
    assert!(pidfile.exists(), "the daemon keeps running for mm-mx-ctrl");
    // The guard (declared after `dir`) stops the daemon before `dir` goes.
}

#[test]
fn status_tells_systemd_why_workers_die() {
    let (dir, spool, filter) = dying_filter_setup();
    let (notify, rx) = notify_socket(dir.path());
    let mut child = Command::new(START)
        .args(["-D", "multiplexor"])
        .env("SPOOLDIR", &spool)
        .env("MX_USER", if is_root() { "mailmunge" } else { "" })
        .env("MX_MINIMUM", "1")
        .env("FILTER", &filter)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rx.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.starts_with("STATUS=");
        seen.push(msg);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("STATUS=workers die at start-up (exit status 255): the database is down"),
        "{seen:?}"
    );
}
