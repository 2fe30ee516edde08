//! Start-up as a daemon (readiness pipe, PID and lock files), start-up
//! errors, and SIGTERM clean-up (protocol/multiplexor.md §2).

mod mux_support;
use common::KillOnDrop;
use mux_support::*;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn daemon_reports_ready_only_when_listening() {
    let sp = Spool::new();
    let pidf = sp.file("mx.pid");
    let lockf = sp.file("mx.lock");
    let mut args = base_args(&sp, &worker_path());
    args.extend([
        "-p".into(),
        pidf.display().to_string(),
        "-o".into(),
        lockf.display().to_string(),
    ]);
    let st = Command::new(BIN).args(&args).status().unwrap();
    assert_eq!(st.code(), Some(0));
    // No waiting: the launcher returned only once the socket accepts.
    assert_eq!(request(&sp.file("mx.sock"), b"ping\n"), b"PONG\n");
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim_end()
        .parse()
        .unwrap();
    assert!(std::fs::read_to_string(&pidf).unwrap().ends_with('\n'));
    let _guard = KillOnDrop(pid);
    assert!(alive(pid));
    // Nothing of the daemon's own leaks into workers.
    assert_eq!(request(&sp.file("mx.sock"), b"fds\n"), b"0,1,2\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pidf).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // A second copy on the same lock file fails through the pipe.
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error from child: Cannot lock lockfile: Is another copy running?\n"
    );
    assert!(pidf.exists(), "the running copy's PID file must survive");

    // SIGTERM: PID file, -o lock file and socket go away, the daemon exits.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(25);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "daemon still running 25 s after SIGTERM");
    assert!(!pidf.exists());
    assert!(!lockf.exists());
    assert!(!sp.file("mx.sock").exists());
}

#[test]
fn startup_errors() {
    let sp = Spool::new();
    let run = |extra: &[&str]| {
        let mut args = base_args(&sp, &worker_path());
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(BIN).args(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["-s", "inet:4444"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "Error from child: Argument to -s option must be a UNIX-domain socket, not a TCP socket.\n"
    );
    let (code, _, err) = run(&["-D", "-s", "inet:4444"]);
    assert_eq!(
        (code, err.as_str()),
        (
            Some(1),
            "Argument to -s option must be a UNIX-domain socket, not a TCP socket.\n"
        )
    );
    let (code, _, err) = run(&["-q", "200"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!("{BIN}: Request queue size 200 too big (128 max)\n")
    );
    let (code, out, _) = run(&["-v"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "mailmunge-multiplexor version 3.09\n")
    );
    let (code, _, err) = run(&["-f", "relative.pl"]);
    assert_eq!(
        (code, err),
        (
            Some(1),
            format!("{BIN}: -f: You must supply an absolute path for filter program\n")
        )
    );
    let missing = sp.file("nope.pl").display().to_string();
    let (code, _, err) = run(&["-f", &missing]);
    assert_eq!(
        (code, err),
        (
            Some(1),
            format!("{BIN}: Unable to stat({missing}): No such file or directory\n")
        )
    );
    let dir = sp.path.display().to_string();
    let (code, _, err) = run(&["-f", &dir]);
    assert_eq!(
        (code, err),
        (
            Some(1),
            format!("{BIN}: Filter program {dir} is not a regular file.\n")
        )
    );
    let (code, _, err) = run(&["-h"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("Usage: "));
    let (code, _, err) = run(&["-k"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("\n\nUsage: "), "{err}");
    if common::is_root() {
        let out = Command::new(BIN)
            .args(["-D", "-z", "/tmp", "-f", "/bin/true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "ERROR: You must not run mailmunge-multiplexor as root.\nUse the -U option to set a non-root user.\n");
        let out = Command::new(BIN)
            .args(["-D", "-U", "no-such-user-xyz", "-f", "/bin/true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{BIN}: Unknown user 'no-such-user-xyz'\n")
        );
    }
}

#[test]
fn sigterm_lets_busy_workers_answer_then_exits() {
    let mut mx = Mx::start(&["-x", "2"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.contains('B'));
    mx.signal(libc::SIGTERM);
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
    assert_eq!(mx.wait_exit(Duration::from_secs(25)), Some(0));
    assert!(!mx.sock.exists());
}

/// protocol/SECURITY.md §2: every descriptor the starter left open is
/// closed, whatever its number (upstream stops at 255), and a TCP socket
/// on all addresses is reported (protocol/SECURITY.md §3).
#[test]
fn inherited_descriptors_are_closed_and_wildcard_sockets_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("inherited");
    let inherited = std::fs::File::create(&marker).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("inet_any:{port}");
    let mx = Mx::start_configured(&["-a", &spec], |cmd| {
        for fd in [7, 1500] {
            common::inherit_fd(cmd, &inherited, fd);
        }
    });
    assert_eq!(
        common::fds_open_on(mx.pid() as u32, &marker),
        Vec::<String>::new(),
        "inherited descriptors still open in the multiplexor"
    );
    mx.wait_log(&format!(
        "WARNING: socket {spec} listens on all addresses (0.0.0.0:{port})"
    ));
}

/// protocol/SECURITY.md §4: a PID file that is a symlink is refused (the
/// multiplexor opens it as root), and the file it points at stays as it was.
#[test]
fn symlinked_pid_file_is_refused() {
    let sp = Spool::new();
    let victim = common::Victim::new(sp.dir.path(), "mx.pid");
    let mut args = base_args(&sp, &worker_path());
    args.extend(["-p".into(), victim.link.display().to_string()]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    victim.assert_untouched();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{BIN}: Could not open PID file {}: not a regular file but a symbolic link\n",
            victim.link.display()
        )
    );
}

/// protocol/SECURITY.md §5: started as the target user but with root's
/// group (and the capabilities to change groups), the multiplexor and its
/// workers end up with the user's own groups and no capability. Without
/// those capabilities it refuses to run with root's group.
#[test]
fn privilege_drop_sheds_root_group_as_the_target_user() {
    if !common::is_root() {
        eprintln!("skipped: starting a daemon as another user with group 0 needs root");
        return;
    }
    let mx = Mx::start_configured(&[], |cmd| common::as_worker_with_root_group(cmd, true));
    common::assert_worker_credentials(mx.pid() as u32, "multiplexor");
    let worker: u32 = mx.req_s("pid").trim().parse().unwrap();
    common::assert_worker_credentials(worker, "worker");

    let sp = Spool::new();
    let mut cmd = Command::new(BIN);
    cmd.args(base_args(&sp, &worker_path()))
        .arg("-D")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    common::as_worker_with_root_group(&mut cmd, false);
    let mut child = cmd.spawn().unwrap();
    let _guard = KillOnDrop(-(child.id() as i32));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "ran on with root's group");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        err,
        format!("{BIN}: initgroups: Operation not permitted (os error 1)\n")
    );
}
