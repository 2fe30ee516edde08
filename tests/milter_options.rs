//! Command-line options (protocol/milter.md §1–§2, §4.2–§4.3, §5.4):
//! prcap/-v/usage and start-up errors, negotiation (-N, -y), Sendmail-style
//! queue ids, -a, -x, -X, -L, -G, -d, -T, DO-NOT-DELETE-WORK-DIRS, pid/lock
//! files and daemon mode, and the inet listener form used by the e2e harness.

mod milter_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use milter_support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailmunge"))
}

#[test]
fn prcap_version_and_usage() {
    let out = bin().arg("prcap").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "SMFI_VERSION                   1.0.1 (New-Style)");
    assert_eq!(lines[1], "MILTER_BUILDLIB_HAS_CHGFROM    1");
    assert_eq!(lines[12], "MILTER_BUILDLIB_HAS_VERSION    1");
    assert_eq!(lines[13], "");
    assert!(
        lines[14].starts_with("PERL_PATH                      /"),
        "{}",
        lines[14]
    );
    assert_eq!(
        &lines[15..],
        [
            "SPOOLDIR                       /var/spool/mailmunge",
            "QDIR                           /var/spool/mm-quarantine",
            "CONFDIR                        /etc/mailmunge",
            "VERSION                        3.09"
        ]
    );

    let out = bin().arg("-v").output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"mailmunge version 3.09\n");
    // -v acts where it is met: a bad option after it is never read
    // (protocol/cli.md §2).
    let out = bin().args(["-Dv", "-Z"]).output().unwrap();
    assert_eq!(
        (out.status.code(), &out.stdout[..], &out.stderr[..]),
        (Some(0), &b"mailmunge version 3.09\n"[..], &b""[..])
    );

    // -h: the usage; a bad option: getopt's complaint first (protocol/cli.md §3).
    for (args, complaint) in [
        (&["-h"][..], ""),
        (&["-Z"], ": invalid option -- 'Z'\n"),
        (&["-D", "-m"], ": option requires an argument -- 'm'\n"),
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let usage = "mailmunge version 3.09\nUsage: mailmunge [options]\n";
        let (before, after) = err.split_once(usage).unwrap_or_else(|| panic!("{err}"));
        if complaint.is_empty() {
            assert_eq!(before, "");
        } else {
            assert!(before.ends_with(complaint), "{err}");
            assert_eq!(before.lines().count(), 1, "{err}");
        }
        assert!(
            after.contains("\n  -p conn           -- Milter socket"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = bin().args(["-m", "/x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": You must use the `-p' option.\n"));
    let out = bin().args(["-p", "unix:/tmp/x.sock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": You must use the `-m' option.\n"));
    let out = bin()
        .args(["-p", "unix:/tmp/x.sock", "-m", "/x", "-S", "nosuch"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": Unknown syslog facility nosuch\n"));
    let out = bin()
        .args(["-p", "unix:/tmp/x.sock", "-m", "/x", "-U", "no-such-user-x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with(": Unknown user `no-such-user-x'"));
    if common::is_root() {
        let out = bin()
            .args(["-p", "unix:/tmp/x.sock", "-m", "/x"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "ERROR: You must not run mailmunge as root.\nUse the -U option to set a non-root user.\n"
        );
    }
}

fn start(flags: &[&str]) -> (Scratch, FakeMux, Milter) {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let milter = Milter::start(scratch.path(), &mux_path, &scratch.spool, flags, &[]);
    (scratch, mux, milter)
}

fn assert_log(m: &Milter, needle: &str) {
    for _ in 0..100 {
        if m.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("log lacks {needle:?}:\n{}", m.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_flags() {
    let (_s, _mux, m) = start(&[]);
    let mut mta = m.connect().await;
    assert_eq!(
        mta.negotiate().await,
        Packet {
            kind: b'O',
            data: vec![0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 8, 0]
        }
    );
    // An MTA offering less gets exactly what it offered, and no RCPT_REJ unless offered.
    let mut mta = m.connect().await;
    let r = mta
        .call(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x3f, 0, 0, 0, 0x7f])
        .await;
    assert_eq!(r.data, vec![0, 0, 0, 6, 0, 0, 0, 0x3f, 0, 0, 0, 0]);

    let (_s, _mux, m) = start(&["-N"]);
    let mut mta = m.connect().await;
    assert_eq!(
        mta.negotiate().await.data,
        vec![0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 0, 0]
    );

    let (_s, _mux, m) = start(&["-y", "-a", "foo", "-a", "x"]);
    let mut mta = m.connect().await;
    let r = mta.negotiate().await;
    let list = "_ {auth_authen} {auth_author} {auth_ssf} {auth_type} {cert_issuer} {cert_subject} {cipher} {cipher_bits} {daemon_name} {daemon_port} i {if_addr} {if_name} j {mail_addr} {mail_host} {mail_mailer} {tls_version} {verify} {rcpt_addr} {rcpt_host} {rcpt_mailer} {foo} x";
    let mut want = vec![0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 8, 0];
    for stage in 0..7u32 {
        want.extend_from_slice(&stage.to_be_bytes());
        want.extend_from_slice(list.as_bytes());
        want.push(0);
    }
    assert_eq!(r.data, want);
    // An MTA that does not offer SETSYMLIST gets no lists.
    let mut mta = m.connect().await;
    let r = mta
        .call(b'O', &[0, 0, 0, 6, 0, 0, 0, 0xff, 0, 0x1f, 0xff, 0xff])
        .await;
    assert_eq!(r.data, vec![0, 0, 0, 6, 0, 0, 0, 0xff, 0, 0, 8, 0]);
    assert_log(&m, "smfi_setsymlist() failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_style_queue_id_extra_macros_and_loopback_equivalent() {
    let (scratch, mux, m) = start(&[
        "-r",
        "-s",
        "-a",
        "foo",
        "-a",
        "absent",
        "-L",
        "192.0.2.10",
        "-x",
        "custom 100%",
    ]);
    mux.push(Step::new("relayok", "ok 1"));
    mux.push(Step::new("senderok", "ok 1"));
    mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    let mut mta = m.connect().await;
    mta.negotiate().await;
    mta.macros(
        b'C',
        &[
            ("j", "mx.example.com"),
            ("{if_addr}", "10.0.0.1"),
            ("{daemon_port}", "25"),
        ],
    )
    .await;
    assert_eq!(
        mta.connect_inet("client.example.net", "192.0.2.10", 4000)
            .await
            .kind,
        b'c'
    );
    mta.macros(
        b'M',
        &[
            ("i", "4XYZ123"),
            ("{foo}", "bar baz"),
            ("{mail_mailer}", "esmtp"),
        ],
    )
    .await;
    assert_eq!(mta.mail(&[b"<a@example.net>", b"SIZE=10"]).await.kind, b'c');
    assert_eq!(scratch.leftover_dirs(), ["mm-4XYZ123"]);
    mta.macros(
        b'R',
        &[
            ("{rcpt_mailer}", "error"),
            ("{rcpt_host}", "5.1.1"),
            ("{rcpt_addr}", "User unknown"),
        ],
    )
    .await;
    assert_eq!(mta.rcpt(&[b"<rejected@example.com>"]).await.kind, b'c');
    mta.macros(b'E', &[("i", "4XYZ123")]).await;
    assert_eq!(mta.eoh().await.kind, b'c');
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, b'c');
    // {if_addr} differs from our address: forgotten at MAIL FROM, so no " on ...".
    assert_eq!(
        mods,
        vec![Packet {
            kind: b'h',
            data: b"X-Scanned-By\0custom 100%\0".to_vec()
        }]
    );
    let log = mux.log.lock().unwrap();
    let lines: Vec<String> = log
        .lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .filter(|l| !l.starts_with("free"))
        .collect();
    assert_eq!(
        lines[0],
        "relayok 127.0.0.1 client.example.net 4000 10.0.0.1 25 NOQUEUE\n"
    );
    let spool = scratch.spool_str();
    assert_eq!(lines[1], format!("senderok <a@example.net> 127.0.0.1 client.example.net UNKNOWN {spool}/mm-4XYZ123 4XYZ123 SIZE=10\n"));
    assert_eq!(lines[2], format!("scan 4XYZ123 {spool}/mm-4XYZ123\n"));
    let cmds = String::from_utf8_lossy(&log.scans[0].1[0].1).into_owned();
    let body = cmds.split_once('\n').unwrap().1;
    assert_eq!(
        body,
        "S<a@example.net>\nsSIZE=10\n=daemon_port 25\n=i 4XYZ123\n=if_addr 10.0.0.1\n=j mx.example.com\n=mail_mailer esmtp\n\
=client_port 4000\n=foo bar%20baz\nQ4XYZ123\n=i 4XYZ123\nHclient.example.net\nI127.0.0.1\n\
R<rejected@example.com> error 5.1.1 User%20unknown\nF\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_debug_flag_and_times() {
    for (flags, dir_mode, file_mode, sock_mode) in [
        (&[][..], 0o700, 0o600, 0o700),
        (&["-G", "-d", "-T", "-X"][..], 0o750, 0o640, 0o770),
    ] {
        let (scratch, mux, m) = start(flags);
        mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&m.socket), sock_mode, "{flags:?}");
        let mut mta = m.connect().await;
        mta.negotiate_through_rcpt().await;
        mta.header(b"Subject", b"x").await;
        mta.eoh().await;
        let dirs = scratch.leftover_dirs();
        let dir = scratch.spool.join(&dirs[0]);
        assert_eq!(mode(&dir), dir_mode, "{flags:?}");
        let (mods, _) = mta.eom().await;
        // The files as the worker found them at the scan.
        let want: Vec<(String, u32)> = [".", "COMMANDS", "HEADERS", "INPUTMSG", "PRISTINE_HEADERS"]
            .iter()
            .map(|f| (f.to_string(), if *f == "." { dir_mode } else { file_mode }))
            .collect();
        assert_eq!(mux.log.lock().unwrap().scan_modes[0], want, "{flags:?}");
        if flags.is_empty() {
            assert_eq!(mods.len(), 1);
        } else {
            assert!(mods.is_empty(), "-X: no X-Scanned-By");
            assert_log(&m, "Not cleaning up ");
            assert_log(&m, " because of command-line `-d' flag");
            assert_log(&m, "NOQUEUE: Filter time is ");
            assert!(dir.exists());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_delete_flag_file() {
    let (scratch, mux, m) = start(&[]);
    std::fs::write(scratch.spool.join("DO-NOT-DELETE-WORK-DIRS"), b"").unwrap();
    mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    let mut mta = m.connect().await;
    mta.negotiate_through_rcpt().await;
    mta.eoh().await;
    assert_eq!(mta.eom().await.1.kind, b'c');
    assert_log(
        &m,
        &format!("because of {}/DO-NOT-DELETE-WORK-DIRS", scratch.spool_str()),
    );
    assert_eq!(scratch.leftover_dirs().len(), 1);
}

/// protocol/milter.md §18.1: a directory kept with `-d` after an abort
/// holds everything received, although the milter had only queued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_directory_holds_what_was_queued() {
    let (scratch, _mux, m) = start(&["-d"]);
    let mut mta = m.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    mta.mail(&[b"<a@b>"]).await;
    mta.rcpt(&[b"<c@d>"]).await;
    mta.header(b"Subject", b"kept").await;
    mta.eoh().await;
    mta.body(b"line\r\n").await;
    mta.send(b'A', b"").await;
    let dirs = scratch.leftover_dirs();
    assert_eq!(dirs.len(), 1);
    let dir = scratch.spool.join(&dirs[0]);
    // The abort is answered without a reply: wait for the log line that
    // says the directory is kept (written after its queues).
    assert_log(&m, " because of command-line `-d' flag");
    let read = |f: &str| String::from_utf8(std::fs::read(dir.join(f)).unwrap()).unwrap();
    assert_eq!(read("INPUTMSG"), "Subject: kept\n\nline\n");
    assert_eq!(read("HEADERS"), "Subject: kept\n");
    assert_eq!(read("PRISTINE_HEADERS"), "Subject: kept\n");
    let cmds = read("COMMANDS");
    assert!(cmds.ends_with("R<c@d> ? ? ?\nUkept\n"), "{cmds}");
}

/// A milter on `-p inet:<free port><host>`, and the port.
fn start_inet(host: &str) -> (Scratch, FakeMux, Milter, u16) {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = Milter::start_on(
        &format!("inet:{port}{host}"),
        scratch.path().join("unused"),
        scratch.path(),
        &mux.path,
        &scratch.spool,
        &[],
        &[],
    );
    (scratch, mux, m, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inet_listener() {
    let (_scratch, _mux, m, port) = start_inet("@127.0.0.1");
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut mta = MtaClient::new(s);
    assert_eq!(
        mta.negotiate().await.data,
        vec![0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 8, 0]
    );
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, b'c');
    assert!(!m.log().contains("listens on all addresses"), "{}", m.log());
    drop(m);
}

/// protocol/SECURITY.md §3: `-p inet:PORT` without a host listens on every
/// address, which the milter says in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inet_listener_on_all_addresses_is_logged() {
    let (_scratch, _mux, m, port) = start_inet("");
    assert_log(
        &m,
        &format!("WARNING: socket inet:{port} listens on all addresses (0.0.0.0:{port})"),
    );
}

#[test]
fn daemon_mode_pid_and_lock_files() {
    let scratch = Scratch::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mux_path = scratch.path().join("mx.sock");
    let _mux =
        rt.block_on(async { FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str()) });
    let run_dir = scratch.path().join("run");
    common::create_open_dir(&run_dir);
    let pidfile = run_dir.join("mailmunge.pid");
    let sock = run_dir.join("milter.sock");
    // protocol/SECURITY.md §2: descriptors the starter left open, at any number.
    let marker = scratch.path().join("inherited");
    let inherited = std::fs::File::create(&marker).unwrap();
    let launch = || {
        let mut c = bin();
        for fd in [7, 1500] {
            common::inherit_fd(&mut c, &inherited, fd);
        }
        c.arg("-p")
            .arg(format!("unix:{}", sock.display()))
            .arg("-m")
            .arg(&mux_path)
            .arg("-z")
            .arg(&scratch.spool);
        c.arg("-P")
            .arg(&pidfile)
            .env("MAILMUNGE_MY_IP", "192.0.2.1");
        c.args(common::worker_user_args());
        c.output().unwrap()
    };
    let out = launch();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = common::KillOnDrop(pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        common::fds_open_on(pid as u32, &marker),
        Vec::<String>::new(),
        "inherited descriptors still open in the daemon"
    );
    assert_eq!(
        std::fs::metadata(&pidfile).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(run_dir.join("mailmunge.pid.lock").exists());
    // A second copy cannot take the lock.
    let out = launch();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error from child: Cannot lock lockfile: Is another copy running?\n"
    );
    // SIGTERM stops the daemon, which removes its pid file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..250 {
        if !pidfile.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pidfile.exists(), "pid file removed at exit");
}

/// protocol/SECURITY.md §4: a PID file that is a symlink is refused (the
/// milter opens it as root), and the file it points at stays as it was.
#[test]
fn symlinked_pid_file_is_refused() {
    let scratch = Scratch::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mux_path = scratch.path().join("mx.sock");
    let _mux =
        rt.block_on(async { FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str()) });
    let victim = common::Victim::new(scratch.path(), "mailmunge.pid");
    let sock = scratch.path().join("milter.sock");
    let out = bin()
        .arg("-p")
        .arg(format!("unix:{}", sock.display()))
        .args(["-m", mux_path.to_str().unwrap(), "-z", &scratch.spool_str()])
        .args(["-P", victim.link.to_str().unwrap()])
        .args(common::worker_user_args())
        .env("MAILMUNGE_MY_IP", "192.0.2.1")
        .output()
        .unwrap();
    victim.assert_untouched();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}: Could not open PID file {}: not a regular file but a symbolic link\n",
            env!("CARGO_BIN_EXE_mailmunge"),
            victim.link.display()
        )
    );
}

/// protocol/SECURITY.md §5: started as the target user but with root's
/// group (and the capabilities to change groups), the milter ends up with
/// the user's own groups and no capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_drop_sheds_root_group_as_the_target_user() {
    if !common::is_root() {
        eprintln!("skipped: starting a daemon as another user with group 0 needs root");
        return;
    }
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let _mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let m = Milter::start_with(scratch.path(), &mux_path, &scratch.spool, &[], &[], |cmd| {
        common::as_worker_with_root_group(cmd, true)
    });
    common::assert_worker_credentials(m.child.id(), "milter");
}

/// Regression (bench finding): with the usual soft limit of 1024 the milter
/// tempfailed mail once about a thousand sessions were open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_limit_raised_to_hard_limit() {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let _mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let m = Milter::start_with(scratch.path(), &mux_path, &scratch.spool, &[], &[], |cmd| {
        common::set_soft_nofile(cmd, 256)
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_ne!(f[3], "256", "{line}");
    assert_eq!(
        f[3], f[4],
        "soft limit not raised to the hard limit: {line}"
    );
}
