//! mm-mx-ctrl against a fake multiplexor (protocol/mm-mx-ctrl.md): exact
//! stdout and stderr bytes and exit codes for every command, using the reply
//! bytes of upstream's observed runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mm-mx-ctrl");

/// What the fake multiplexor does with one request.
#[derive(Clone)]
enum Answer {
    Reply(Vec<u8>),
    /// Never answers (for the timeout).
    Hang,
}

const STATUS: &[u8] = b"IISS 0 2 2 0 6\n";
const LOAD: &[u8] = b"0 0 0 0 1.000000 1.000000 1.000000 1.000000 0.000000 0.000000 0.000000 0.000000 2 2 2 2 0 0 0 0 0 2 2 0 0 2 2 0 6\n";
const LOAD_RECIPOK: &[u8] = b"3 4 4 4 2.000000 2.000000 2.000000 2.000000 2003.333333 1502.500000 1502.500000 1502.500000 0 0 0 0 0 0 0 0 0 3 1 0 0 2 2 0 6\n";
const LOAD1: &[u8] = b"1 1.000000 0.000000 1 1.000000 0.000000 0 0.000000 0.000000 4 2.000000 1502.500000 0 3 1 0 1 2 2 0 60 60 0 0 0 0\n";
const HLOAD: &[u8] =
    b"0 0 0 0 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0 0 0 0\n";
const HELP: &[u8] = b"help             -- List available multiplexor commands\nstatus           -- Display worker status\n(Analogous hload commands provide hourly information)\n";

fn canned() -> HashMap<Vec<u8>, Answer> {
    let mut m = HashMap::new();
    let mut put = |req: &str, reply: &[u8]| {
        m.insert(req.as_bytes().to_vec(), Answer::Reply(reply.to_vec()));
    };
    put("status\n", STATUS);
    put("load\n", LOAD);
    put("load-relayok\n", LOAD);
    put("load-senderok\n", LOAD);
    put("load-recipok\n", LOAD_RECIPOK);
    put("load1 60\n", LOAD1);
    put(
        "load1 5\n",
        b"error: Invalid 'back' amount (must be 10-600)\n",
    );
    put("hload\n", HLOAD);
    put("hload-relayok\n", HLOAD);
    put("hload-senderok\n", HLOAD);
    put("hload-recipok\n", HLOAD);
    put("msgs\n", b"17\n");
    put("reread\n", b"Forced reread of filter rules\n");
    put("free\n", b"4\n");
    put("version\n", b"3.09");
    put("help\n", HELP);
    put("busyworkers\n", b"");
    put(
        "workers\n",
        b"0 B 14849 last=relayok ago=0 (1: sleeping 2)\n1 I 14892 ago=5\n3 S ago=6\n",
    );
    put(
        "relayok 10.0.0.1 foo.example.com 4567 127.0.0.1 25 qid-goes-here\n",
        b"ok 1 ok 250 2.1.0 0\n",
    );
    put("senderok <a@b>\n", b"ok 0 Go%20away%25 550 5.7.1 0\n");
    put("echo a%20b c%25d x%27y %C3%A9\n", b"echoed\n");
    put("sleep\n", b"");
    m.insert(b"sleep\n".to_vec(), Answer::Hang);
    m
}

/// A fake multiplexor on a UNIX socket: one request line per connection,
/// a canned reply, then close. Records what it was sent.
struct FakeMux {
    _dir: tempfile::TempDir,
    path: PathBuf,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn serve(mut s: impl Read + Write, answers: &HashMap<Vec<u8>, Answer>, seen: &Mutex<Vec<Vec<u8>>>) {
    let mut line = Vec::new();
    let mut r = BufReader::new(&mut s);
    let _ = r.read_until(b'\n', &mut line);
    drop(r);
    seen.lock().unwrap().push(line.clone());
    match answers.get(&line) {
        Some(Answer::Reply(b)) => {
            let _ = s.write_all(b);
        }
        Some(Answer::Hang) => std::thread::sleep(Duration::from_secs(30)),
        None => {
            let _ = s.write_all(b"error: Unknown command\n");
        }
    }
}

impl FakeMux {
    fn start() -> FakeMux {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mx.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(canned());
        let (seen2, answers2) = (seen.clone(), answers.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (seen, answers) = (seen2.clone(), answers2.clone());
                std::thread::spawn(move || serve(conn, &answers, &seen));
            }
        });
        FakeMux {
            _dir: dir,
            path,
            seen,
        }
    }

    fn sock(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("POSIXLY_CORRECT");
    let mut child = c.spawn().expect("run mm-mx-ctrl");
    let input = stdin.unwrap_or(b"").to_vec();
    let mut si = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = si.write_all(&input);
    });
    child.wait_with_output().unwrap()
}

/// Runs `mm-mx-ctrl -s SOCK args…` and checks stdout, stderr and status.
#[track_caller]
fn check(mux: &FakeMux, args: &[&str], out: &str, err: &str, code: i32) {
    let mut full = vec!["-s", mux.sock()];
    full.extend_from_slice(args);
    let o = run(&full, None);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        out,
        "stdout of {args:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        err,
        "stderr of {args:?}"
    );
    assert_eq!(o.status.code(), Some(code), "status of {args:?}");
}

const STATUS_OUT: &str =
    "Max workers: 4\nWorker 0: idle\nWorker 1: idle\nWorker 2: stopped\nWorker 3: stopped\n";
const LOAD_OUT: &str = "  Load              Msgs        Msgs/Sec     Avg ms/Scan   Avg Busy Workers\n\
10 Sec               0            0.00             0.0            1.00\n 1 Min               0            0.00             0.0            1.00\n \
5 Min               0            0.00             0.0            1.00\n10 Min               0            0.00             0.0            1.00\n";
const LOAD1_OUT: &str = "Statistics for last 60 seconds:\n       Cmd             Num           Num/s      AvgWorkers           AvgMS\n      \
Scan               1             0.0             1.0             0.0\n   Relayok               1             0.0             1.0             0.0\n  \
Senderok               0             0.0             0.0             0.0\n   Recipok               4             0.1             2.0          1502.5\n\n\
Current Snapshot:\nWorkers: busy=0 idle=3 stopped=1 killed=0\nCmds:   scan=0 relayok=0 senderok=0 recipok=0\nQueue:  size=2 queued=0\n";

fn hload_out(x: &str, y: &str) -> String {
    let mut s = format!(
        "{:>6} {:>17} {:>15} {:>15}   Avg Busy Workers\n",
        "Load",
        x,
        format!("{x}/Sec"),
        format!("Avg ms/{y}")
    );
    for l in [" 1h", " 4h", "12h", "24h"] {
        s.push_str(&format!(
            "{l:>6}               0            0.00             0.0            0.00\n"
        ));
    }
    s
}

fn load_out(x: &str, y: &str) -> String {
    LOAD_OUT.replacen(
        "  Load              Msgs        Msgs/Sec     Avg ms/Scan",
        &format!(
            "{:>6} {:>17} {:>15} {:>15}",
            "Load",
            x,
            format!("{x}/Sec"),
            format!("Avg ms/{y}")
        ),
        1,
    )
}

#[test]
fn formatted_commands() {
    let mux = FakeMux::start();
    check(&mux, &["status"], STATUS_OUT, "", 0);
    check(&mux, &["barstatus"], "  0/4 ....    0/2 .. 0\n", "", 0);
    check(&mux, &["load"], LOAD_OUT, "", 0);
    check(&mux, &["load-relayok"], &load_out("Conn", "Conn"), "", 0);
    check(&mux, &["load-senderok"], &load_out("MAIL", "MAIL"), "", 0);
    check(
        &mux,
        &["load-recipok"],
        "  Load              RCPT        RCPT/Sec     Avg ms/RCPT   Avg Busy Workers\n\
10 Sec               3            0.30          2003.3            2.00\n 1 Min               4            0.07          1502.5            2.00\n \
5 Min               4            0.01          1502.5            2.00\n10 Min               4            0.01          1502.5            2.00\n",
        "",
        0,
    );
    check(&mux, &["load1", "60"], LOAD1_OUT, "", 0);
    check(&mux, &["hload"], &hload_out("Msgs", "Scan"), "", 0);
    check(&mux, &["hload-relayok"], &hload_out("Conn", "Conn"), "", 0);
    check(&mux, &["hload-senderok"], &hload_out("MAIL", "MAIL"), "", 0);
    check(&mux, &["hload-recipok"], &hload_out("RCPT", "RCPT"), "", 0);
    let sent = mux.requests();
    assert_eq!(
        sent,
        [
            "status\n",
            "status\n",
            "load\n",
            "load-relayok\n",
            "load-senderok\n",
            "load-recipok\n",
            "load1 60\n",
            "hload\n",
            "hload-relayok\n",
            "hload-senderok\n",
            "hload-recipok\n"
        ]
    );
}

#[test]
fn raw_aliases_print_the_reply_undecoded() {
    let mux = FakeMux::start();
    check(&mux, &["rawstatus"], "IISS 0 2 2 0 6\n", "", 0);
    check(&mux, &["msgs"], "17\n", "", 0);
    check(&mux, &["reread"], "Forced reread of filter rules\n", "", 0);
    let text = |b: &'static [u8]| std::str::from_utf8(b).unwrap();
    for (words, reply) in [
        (&["rawload"][..], LOAD),
        (&["rawload-relayok"], LOAD),
        (&["rawload-senderok"], LOAD),
        (&["rawload-recipok"], LOAD_RECIPOK),
        (&["rawload1", "60"], LOAD1),
        (&["rawhload"], HLOAD),
        (&["rawhload-relayok"], HLOAD),
        (&["rawhload-senderok"], HLOAD),
        (&["rawhload-recipok"], HLOAD),
    ] {
        check(&mux, words, text(reply), "", 0);
    }
    assert_eq!(
        mux.requests(),
        [
            "status\n",
            "msgs\n",
            "reread\n",
            "load\n",
            "load-relayok\n",
            "load-senderok\n",
            "load-recipok\n",
            "load1 60\n",
            "hload\n",
            "hload-relayok\n",
            "hload-senderok\n",
            "hload-recipok\n"
        ]
    );
}

#[test]
fn pass_through_decodes_and_encodes() {
    let mux = FakeMux::start();
    check(&mux, &["version"], "3.09\n", "", 0);
    check(&mux, &["free"], "4\n", "", 0);
    check(&mux, &["busyworkers"], "", "", 0);
    check(&mux, &["-b", "busyworkers"], "<\n>\n", "", 0);
    check(
        &mux,
        &["workers"],
        "0 B 14849 last=relayok ago=0 (1: sleeping 2)\n1 I 14892 ago=5\n3 S ago=6\n",
        "",
        0,
    );
    check(
        &mux,
        &[
            "relayok",
            "10.0.0.1",
            "foo.example.com",
            "4567",
            "127.0.0.1",
            "25",
            "qid-goes-here",
        ],
        "ok 1 ok 250 2.1.0 0\n",
        "",
        0,
    );
    check(
        &mux,
        &["senderok", "<a@b>"],
        "ok 0 Go away% 550 5.7.1 0\n",
        "",
        0,
    );
    check(&mux, &["echo", "a b", "c%d", "x'y", "é"], "echoed\n", "", 0);
    // An error reply still exits 0; "status now" is not the status command.
    check(&mux, &["status", "now"], "error: Unknown command\n", "", 0);
    let sent = mux.requests();
    assert_eq!(sent[7], "echo a%20b c%25d x%27y %C3%A9\n");
    assert_eq!(sent[8], "status now\n");
}

#[test]
fn brackets() {
    let mux = FakeMux::start();
    check(
        &mux,
        &["-b", "status"],
        &format!("<\n{STATUS_OUT}>\n"),
        "",
        0,
    );
    check(
        &mux,
        &["-b", "barstatus"],
        "<\n  0/4 ....    0/2 .. 0\n>\n",
        "",
        0,
    );
    check(&mux, &["-b", "load"], &format!("<\n{LOAD_OUT}>\n"), "", 0);
    check(
        &mux,
        &["-b", "load1", "60"],
        &format!("<\n{LOAD1_OUT}>\n"),
        "",
        0,
    );
    check(
        &mux,
        &["-b", "hload"],
        &format!("<\n{}>\n", hload_out("Msgs", "Scan")),
        "",
        0,
    );
    check(&mux, &["version", "-b"], "<\n3.09\n>\n", "", 0);
    check(&mux, &["-b", "rawstatus"], "<\nIISS 0 2 2 0 6\n>\n", "", 0);
    // Errors are never bracketed.
    check(
        &mux,
        &["-b", "load1", "5"],
        "Could not interpret response: error: Invalid 'back' amount (must be 10-600)\n",
        "",
        1,
    );
}

#[test]
fn error_replies_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // A status request answered with an error (a socket where everything is
    // unknown): printed after ERROR on stderr, exit 1.
    let path = dir.path().join("err.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            serve(c, &HashMap::new(), &Mutex::new(Vec::new()));
        }
    });
    let sock = path.to_str().unwrap();
    let o = run(&["-s", sock, "status"], None);
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice(), o.status.code()),
        (&b""[..], &b"ERROR error: Unknown command\n"[..], Some(1))
    );
    let o = run(&["-s", sock, "-b", "barstatus"], None);
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice(), o.status.code()),
        (&b""[..], &b"ERROR error: Unknown command\n"[..], Some(1))
    );
    // load and hload now check their reply (protocol/mm-mx-ctrl.md §9.2).
    for cmd in ["load", "load-recipok", "hload", "hload-senderok"] {
        let o = run(&["-s", sock, cmd], None);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "Could not interpret response: error: Unknown command\n",
            "{cmd}"
        );
        assert_eq!(o.status.code(), Some(1));
    }
    let mux = FakeMux::start();
    check(
        &mux,
        &["load1", "5"],
        "Could not interpret response: error: Invalid 'back' amount (must be 10-600)\n",
        "",
        1,
    );
}

#[test]
fn connection_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let m = missing.to_str().unwrap();
    let msg = "ERROR MXCommand: connect: No such file or directory: Is multiplexor running?\n";
    for args in [
        vec!["-s", m, "status"],
        vec!["-s", m, "free"],
        vec!["-s", m, "load1", "60"],
    ] {
        let o = run(&args, None);
        assert_eq!(String::from_utf8_lossy(&o.stderr), msg);
        assert!(o.stdout.is_empty());
        assert_eq!(o.status.code(), Some(1));
    }
    // With -i the message goes to stdout and the exit status is 0.
    let o = run(&["-s", m, "-i"], Some(b"free\nstatus\n"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{msg}{msg}"));
    assert!(o.stderr.is_empty());
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn timeout_instead_of_hanging() {
    let mux = FakeMux::start();
    check(
        &mux,
        &["-t", "1", "sleep"],
        "",
        "ERROR MXCommand: no complete reply within 1 seconds: Is multiplexor running?\n",
        1,
    );
}

#[test]
fn interactive_mode() {
    let mux = FakeMux::start();
    let o = run(
        &["-s", mux.sock(), "-i", "-b"],
        Some(b"rawload\nbusyworkers\nrawload1 60\nsenderok <a@b>\nload1 5\nstatus"),
    );
    let want = format!(
        "<\n{}>\n<\n>\n<\n{}>\n<\nok 0 Go away% 550 5.7.1 0\n>\nCould not interpret response: error: Invalid 'back' amount (must be 10-600)\n<\n{STATUS_OUT}>\n",
        std::str::from_utf8(LOAD).unwrap(),
        std::str::from_utf8(LOAD1).unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    assert_eq!(o.status.code(), Some(0));
    // Lines are sent verbatim (not encoded); the last one gets its newline.
    assert_eq!(
        mux.requests(),
        [
            "load\n",
            "busyworkers\n",
            "load1 60\n",
            "senderok <a@b>\n",
            "load1 5\n",
            "status\n"
        ]
    );
}

const USAGE: &str = "Usage: mm-mx-ctrl [options] command\n\nOptions:\n-h               -- Display help\n\
-s path          -- Specify path to multiplexor socket\n-i               -- Read commands from stdin\n-b               -- Bracket responses with < and >\n";

#[test]
fn usage_and_help() {
    let mux = FakeMux::start();
    let help = format!(
        "{USAGE}\nPossible commands:\n{}",
        std::str::from_utf8(HELP).unwrap()
    );
    check(&mux, &["-h"], "", &help, 0);
    // Without a command: usage (with help), exit 1.
    check(&mux, &[], "", &help, 1);
    check(&mux, &["-b"], "", &help, 1);
    // Unknown option: getopt's message with argv[0], then the usage.
    check(
        &mux,
        &["status", "-x"],
        "",
        &format!("{BIN}: invalid option -- 'x'\n{help}"),
        1,
    );
    // Only a -s before -h counts; the help request's error goes to stderr.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let o = run(
        &["-s", missing.to_str().unwrap(), "-h", "-s", mux.sock()],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "{USAGE}ERROR MXCommand: connect: No such file or directory: Is multiplexor running?\n"
        )
    );
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["-s", missing.to_str().unwrap(), "-i", "-h"], None);
    assert_eq!(String::from_utf8_lossy(&o.stderr), USAGE);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ERROR MXCommand: connect: No such file or directory: Is multiplexor running?\n"
    );
    let o = run(&["-s"], None);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with(&format!(
        "{BIN}: option requires an argument -- 's'\n{USAGE}"
    )));
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn json_extensions() {
    let mux = FakeMux::start();
    check(
        &mux,
        &["jsonstatus"],
        "{\"max_workers\":4,\"workers\":[\"idle\",\"idle\",\"stopped\",\"stopped\"],\"busy\":0,\"idle\":2,\"stopped\":2,\"killed\":0,\"msgs\":0,\"activations\":2,\"queue_size\":2,\"queued\":0,\"uptime\":6}\n",
        "",
        0,
    );
    let o = run(&["-s", mux.sock(), "jsonload"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command"], "scan");
    assert_eq!(v["windows"][3]["seconds"], 600);
    assert_eq!(v["windows"][0]["avg_busy_workers"], 1.0);
    assert_eq!(v["windows"][1]["activated"], 2);
    assert_eq!(v["workers"]["stopped"], 2);
    assert_eq!(v["uptime"], 6);
    let o = run(&["-s", mux.sock(), "jsonload1", "60"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["seconds"], 60);
    assert_eq!(v["commands"][3]["avg_ms"], 1502.5);
    let o = run(&["-s", mux.sock(), "jsonhload-recipok"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command"], "recipok");
    assert_eq!(v["windows"][2]["hours"], 12);
    check(
        &mux,
        &["jsonload1", "5"],
        "Could not interpret response: error: Invalid 'back' amount (must be 10-600)\n",
        "",
        1,
    );
    let o = run(&["-s", mux.sock(), "jsonworkers"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["workers"][0]["tag"], "1: sleeping 2");
    assert_eq!(v["workers"][1]["pid"], 14892);
    assert_eq!(v["workers"][2]["state"], "stopped");
    check(&mux, &["jsonbusyworkers"], "{\"workers\":[]}\n", "", 0);
    assert_eq!(
        mux.requests(),
        [
            "status\n",
            "load\n",
            "load1 60\n",
            "hload-recipok\n",
            "load1 5\n",
            "workers\n",
            "busyworkers\n"
        ]
    );
}

#[test]
fn top_one_frame() {
    let mux = FakeMux::start();
    let dir = tempfile::tempdir().unwrap();
    let missing: &Path = &dir.path().join("gone.sock");
    let o = run(
        &[
            "-s",
            mux.sock(),
            "-s",
            missing.to_str().unwrap(),
            "top",
            "1",
            "1",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "mm-mx-ctrl top: 2 multiplexor(s), every 1s");
    assert_eq!(lines[4], format!("{:<28}     0/4    2    2    0     0/2        0    0.00    0.00       0.0       0.0     0:00:06", mux.sock()));
    assert_eq!(lines[5], "  [ii..]");
    assert_eq!(
        lines[6],
        format!(
            "{:<28} connect: No such file or directory: Is multiplexor running?",
            missing.to_str().unwrap()
        )
    );
    assert_eq!(o.status.code(), Some(0));
    let o = run(&["-s", mux.sock(), "top", "x"], None);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn inet_socket_extension() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let answers = canned();
        let seen = Mutex::new(Vec::new());
        for c in l.incoming().flatten() {
            serve(c, &answers, &seen);
        }
    });
    let o = run(&["-s", &format!("inet:{port}"), "free"], None);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "4\n");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn write_error_is_reported_not_fatal_signal() {
    // A server that accepts and closes without reading: writing a request
    // larger than the socket buffer fails (SIGPIPE is ignored,
    // protocol/mm-mx-ctrl.md §9.4).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rude.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            drop(c);
        }
    });
    let mut big = vec![b'x'; 4 << 20];
    big.push(b'\n');
    let o = run(&["-s", path.to_str().unwrap(), "-i"], Some(&big));
    let err = String::from_utf8_lossy(&o.stdout);
    assert!(
        err.starts_with("ERROR MXCommand: write: ") && err.ends_with(": Is multiplexor running?\n"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(0));
}
