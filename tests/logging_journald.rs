//! The milter logging to journald (protocol/logging.md): run under a
//! systemd-like environment (JOURNAL_STREAM naming its stderr), each line
//! reaches the journal socket once, with MESSAGE byte-identical to the
//! syslog text, PRIORITY, SYSLOG_IDENTIFIER, SYSLOG_FACILITY and, on
//! per-message lines, QUEUE_ID — and is not copied to stderr (which would
//! be the journal too).
//!
//! `tracing-journald` always sends to /run/systemd/journal/socket, so the
//! milter runs in a private mount namespace (`unshare -m`, needs root)
//! where a scratch directory holding our datagram socket is bind-mounted
//! over /run/systemd (over /run where there is no /run/systemd). Without root the test says so and checks nothing.

mod milter_support;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use milter_support::*;

type Entry = HashMap<String, Vec<u8>>;

/// Parses one native-protocol datagram: `KEY=value\n` fields, or
/// `KEY\n<u64 LE length><value>\n` for values that may hold newlines.
fn parse_entry(mut d: &[u8]) -> Entry {
    let mut e = Entry::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            e.insert(
                String::from_utf8(line[..eq].to_vec()).unwrap(),
                line[eq + 1..].to_vec(),
            );
            d = &d[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            e.insert(name, rest[8..8 + len].to_vec());
            assert_eq!(
                rest[8 + len],
                b'\n',
                "length-encoded field ends with a newline"
            );
            d = &rest[8 + len + 1..];
        }
    }
    e
}

struct Journal {
    sock: UnixDatagram,
    entries: Vec<Entry>,
    /// The milter's stderr, shown when an entry never comes (unshare or
    /// mount may have failed before the milter ran).
    stderr: std::path::PathBuf,
}

impl Journal {
    /// Waits for an entry whose MESSAGE contains `needle`.
    fn wait_for(&mut self, needle: &str) -> Entry {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(e) = self.entries.iter().find(|e| {
                e.get("MESSAGE")
                    .is_some_and(|m| String::from_utf8_lossy(m).contains(needle))
            }) {
                return e.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no journal entry with {needle:?}; got {:?}; milter stderr: {:?}",
                    self.messages(),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            match self.sock.recv(&mut buf) {
                Ok(0) => {} // the layer's connectivity probe
                Ok(n) => self.entries.push(parse_entry(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    fn messages(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| e.get("MESSAGE"))
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn field<'a>(e: &'a Entry, k: &str) -> &'a str {
    std::str::from_utf8(e.get(k).unwrap_or_else(|| panic!("no {k} in {e:?}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_lines_reach_a_journal_socket_with_fields() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("logging_journald: not root, cannot bind-mount a fake journal; nothing checked");
        return;
    }
    let scratch = Scratch::new();
    // A fake run/systemd/journal/socket.
    let run = scratch.path().join("run");
    let fake = run.join("systemd");
    std::fs::create_dir_all(fake.join("journal")).unwrap();
    for d in [&run, &fake, &fake.join("journal")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock_path = fake.join("journal/socket");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // The milter drops to the `mailmunge` user before it opens the journal.
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Over /run/systemd; a machine without systemd has none, so there the
    // whole /run is covered instead.
    let (mount_src, mount_point) = if Path::new("/run/systemd").is_dir() {
        (&fake, "/run/systemd")
    } else {
        (&run, "/run")
    };
    let stderr_path = scratch.path().join("milter.stderr");
    let mut journal = Journal {
        sock,
        entries: Vec::new(),
        stderr: stderr_path.clone(),
    };

    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let sockdir = scratch.path().join("msock");
    std::fs::create_dir_all(&sockdir).unwrap();
    std::fs::set_permissions(&sockdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let msock = sockdir.join("milter.sock");

    // systemd names the stream it connected to stderr in JOURNAL_STREAM.
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());

    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
        .arg("sh")
        .arg(mount_src)
        .arg(mount_point)
        .arg(env!("CARGO_BIN_EXE_mailmunge"))
        .args(["-p", &format!("unix:{}", msock.display())])
        .arg("-m")
        .arg(&mux_path)
        .arg("-z")
        .arg(&scratch.spool)
        .args(["-D", "-U", "mailmunge", "-S", "local3"])
        .env("JOURNAL_STREAM", &stream)
        .env("MAILMUNGE_LOG_STDERR", "1")
        .env("MAILMUNGE_MY_IP", "192.0.2.1")
        .env_remove("MAILMUNGE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("run unshare");
    let _milter = Killed(child);

    let ready = tokio::task::block_in_place(|| journal.wait_for("entering main loop"));
    assert_eq!(
        field(&ready, "MESSAGE"),
        "mailmunge-multiplexor is responding - entering main loop"
    );
    assert_eq!(field(&ready, "PRIORITY"), "6");
    assert_eq!(field(&ready, "SYSLOG_IDENTIFIER"), "mailmunge");
    assert_eq!(field(&ready, "SYSLOG_FACILITY"), "19"); // local3
    assert!(!ready.contains_key("QUEUE_ID"), "{ready:?}");

    // One message whose scan leaves no RESULTS file: a per-message warning.
    mux.push(Step::new("scan", "ok"));
    let mut mta = MtaClient::new(tokio::net::UnixStream::connect(&msock).await.unwrap());
    mta.negotiate().await;
    mta.macros(b'C', &[("j", "mx.example.com")]).await;
    mta.connect_inet("client.example.net", "192.0.2.10", 40000)
        .await;
    mta.helo("client.example.net").await;
    mta.mail(&[b"<a@example.net>"]).await;
    mta.rcpt(&[b"<b@example.com>"]).await;
    mta.macros(b'T', &[("i", "QID1")]).await;
    mta.call(b'T', b"").await;
    mta.header(b"Subject", b"hi").await;
    mta.eoh().await;
    mta.body(b"body\r\n").await;
    let (_, v) = mta.eom().await;
    assert_eq!(v.kind, b't', "tempfail without RESULTS");

    let w = tokio::task::block_in_place(|| journal.wait_for("Filter did not create RESULTS file"));
    assert_eq!(
        field(&w, "MESSAGE"),
        "QID1: Filter did not create RESULTS file"
    );
    assert_eq!(field(&w, "QUEUE_ID"), "QID1");
    assert_eq!(field(&w, "PRIORITY"), "4");
    assert_eq!(field(&w, "SYSLOG_IDENTIFIER"), "mailmunge");

    // Never twice: stderr is the journal stream, so no copy went there.
    let err = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        !err.contains("RESULTS") && !err.contains("entering main loop"),
        "lines copied to stderr as well:\n{err}"
    );
    let n = journal
        .messages()
        .iter()
        .filter(|m| m.contains("Filter did not create RESULTS file"))
        .count();
    assert_eq!(n, 1, "{:?}", journal.messages());
}

/// Outside systemd the stderr copy keeps glibc's LOG_PERROR layout,
/// `ident[pid]: text`, which the log-reading tests and admins rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_copy_has_the_perror_layout() {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let _mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let m = Milter::start(
        scratch.path(),
        &mux_path,
        &scratch.spool,
        &[],
        &[("MAILMUNGE_LOG", "syslog")],
    );
    let want = format!(
        "mailmunge[{}]: mailmunge-multiplexor is responding - entering main loop\n",
        m.child.id()
    );
    let log = m.log();
    assert!(
        log.lines().any(|l| format!("{l}\n") == want),
        "no line {want:?} in:\n{log}"
    );
}
