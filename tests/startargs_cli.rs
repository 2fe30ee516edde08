//! `mailmunge-start` as the units and the sysv script run it: variables from
//! the environment and from env files, exec of the daemon with the argv and
//! environment of protocol/deployment.md §2.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mailmunge-start");

fn start(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    // A clean environment, so the caller's variables cannot leak in.
    c.env_clear().env("PATH", "/usr/bin:/bin").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A fake daemon that records its argv (one per line) and a few variables.
fn fake_daemon(dir: &Path, name: &str) {
    let p = dir.join(name);
    std::fs::write(
        &p,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\necho \"HOME=$HOME LC_ALL=$LC_ALL MX_LOG=$MX_LOG MAILMUNGE_SPOOLDIR=$MAILMUNGE_SPOOLDIR\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn print_with_defaults_only() {
    let o = start(&["--print", "--bindir", "/usr/bin", "multiplexor"], &[]);
    assert_eq!(
        stdout(&o),
        "/usr/bin/mailmunge-multiplexor -G -U mailmunge -b 600 -l -m 2 -x 10 -z /var/spool/mailmunge \
         -s /var/spool/mailmunge/mailmunge-multiplexor.sock -o /var/spool/mailmunge/mailmunge-multiplexor.lock\n"
    );
    let o = start(&["--print", "-D", "--bindir", "/usr/bin", "milter"], &[]);
    assert_eq!(
        stdout(&o),
        "/usr/bin/mailmunge -D -G -U mailmunge -z /var/spool/mailmunge -p /var/spool/mailmunge/mailmunge.sock \
         -m /var/spool/mailmunge/mailmunge-multiplexor.sock -o /var/spool/mailmunge/mailmunge.lock\n"
    );
}

#[test]
fn env_files_override_the_environment_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("sysconfig");
    let b = dir.path().join("default");
    std::fs::write(&a, "MX_MAXIMUM=4\nSCANNED_BY=\"from sysconfig\"\n").unwrap();
    std::fs::write(
        &b,
        "# later file wins\nSCANNED_BY='My Scanner'\nSOCKET=inet:8872@127.0.0.1\nMX_USER=\n",
    )
    .unwrap();
    let o = start(
        &[
            "--print",
            "--bindir",
            "/b",
            "--env-file",
            a.to_str().unwrap(),
            "--env-file",
            b.to_str().unwrap(),
            "--env-file",
            "-/nonexistent/skip-me",
            "milter",
        ],
        &[("MX_RELAY_CHECK", "yes"), ("SCANNED_BY", "from env")],
    );
    assert_eq!(
        stdout(&o),
        "/b/mailmunge -G -r -x 'My Scanner' -z /var/spool/mailmunge -p inet:8872@127.0.0.1 \
         -m /var/spool/mailmunge/mailmunge-multiplexor.sock -o /var/spool/mailmunge/mailmunge.lock\n"
    );
}

#[test]
fn bad_env_file_stops_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("default");
    std::fs::write(&f, "MX_LOG=yes\nSCANNED_BY=My Scanner\n").unwrap();
    let o = start(
        &["--print", "--env-file", f.to_str().unwrap(), "milter"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("mailmunge-start: ") && err.contains("default:2: "),
        "{err}"
    );
    // A required file that does not exist is an error too.
    let o = start(
        &["--print", "--env-file", "/nonexistent/default", "milter"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn unknown_daemon_is_refused() {
    let o = start(&["--print", "postfix"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown daemon \"postfix\""));
}

/// The command line itself (protocol/cli.md §3, §4): usage errors are
/// status 1 with the usage line, help and version go to stdout with
/// status 0, options may follow the daemon word.
#[test]
fn usage_errors_help_and_version() {
    for (args, first) in [
        (
            &[][..],
            "mailmunge-start: which daemon? (`milter` or `multiplexor`)",
        ),
        (
            &["--bogus", "milter"],
            "mailmunge-start: unrecognized option '--bogus'",
        ),
        (&["-x", "milter"], "mailmunge-start: invalid option -- 'x'"),
        (
            &["--print=yes", "milter"],
            "mailmunge-start: option '--print' doesn't allow an argument",
        ),
    ] {
        let o = start(args, &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err,
            format!("{first}\nUsage: mailmunge-start [options] DAEMON\nTry 'mailmunge-start --help' for more information.\n")
        );
        assert!(o.stdout.is_empty());
    }
    let o = start(&["milter", "--help"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("\n  --bindir DIR           -- Directory holding the daemons"));
    assert_eq!(stdout(&start(&["-V"], &[])), "mailmunge-start 3.09\n");
    // Options after the daemon word, attached values, `-D` clustered with nothing.
    let o = start(&["milter", "--print", "--bindir=/b", "-D"], &[]);
    assert!(
        stdout(&o).starts_with("/b/mailmunge -D -G -U mailmunge "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn execs_the_daemon_with_argv_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    fake_daemon(dir.path(), "mailmunge-multiplexor");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let o = start(
        &[
            "-D",
            "--bindir",
            dir.path().to_str().unwrap(),
            "multiplexor",
        ],
        &[
            ("SPOOLDIR", spool.to_str().unwrap()),
            ("MX_USER", ""),
            ("MX_SYSLOG_LABEL", "two words"),
            ("MX_LOG", "yes"),
            ("LC_ALL", "de_DE.UTF-8"),
        ],
    );
    let s = spool.to_str().unwrap();
    let expected: Vec<String> = [
        "-D",
        "-G",
        "-Y",
        "two words",
        "-b",
        "600",
        "-l",
        "-m",
        "2",
        "-x",
        "10",
        "-z",
        s,
        "-s",
        &format!("{s}/mailmunge-multiplexor.sock"),
        "-o",
        &format!("{s}/mailmunge-multiplexor.lock"),
        &format!("HOME={s} LC_ALL=C MX_LOG=yes MAILMUNGE_SPOOLDIR={s}"),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), expected);
}

#[test]
fn start_removes_a_stale_socket_and_cleanup_does_too() {
    let dir = tempfile::tempdir().unwrap();
    fake_daemon(dir.path(), "mailmunge");
    let sock = dir.path().join("m.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let sock_spec = format!("unix:{}", sock.display());
    let env = [
        ("SOCKET", sock_spec.as_str()),
        ("SPOOLDIR", dir.path().to_str().unwrap()),
    ];
    let o = start(&["--bindir", dir.path().to_str().unwrap(), "milter"], &env);
    assert!(stdout(&o).contains(&format!("-p\n{sock_spec}\n")));
    assert!(!sock.exists(), "stale socket still there");

    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let o = start(&["--cleanup", "milter"], &env);
    assert_eq!(stdout(&o), "");
    assert!(!sock.exists());

    // A live socket is left alone and reported.
    let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = start(&["--cleanup", "milter"], &env);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is in use"));
    assert!(sock.exists());
}

#[test]
fn missing_daemon_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = start(
        &["--bindir", dir.path().to_str().unwrap(), "milter"],
        &[("SPOOLDIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot execute"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
