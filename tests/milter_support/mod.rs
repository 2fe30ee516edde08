//! Test harness for the milter: a fake multiplexor (unix socket, scripted
//! replies, copies of the working-directory files at `scan`), a raw milter
//! client that plays the MTA, and a runner for the real `mailmunge` binary.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One scripted multiplexor exchange.
#[derive(Debug, Clone)]
pub struct Step {
    /// Command word expected (`relayok`, `scan`, ...).
    pub command: String,
    /// Expected decoded arguments after normalisation; `None` = don't check.
    pub args: Option<Vec<String>>,
    /// Reply line without the newline (sent with `\n`), or raw bytes.
    pub reply: Vec<u8>,
    /// At `scan`: files to drop into the working directory first.
    pub results: Vec<(String, Vec<u8>)>,
    /// At `scan`: FIFOs to create there (after `results`), as a broken or
    /// hostile worker might leave them.
    pub fifos: Vec<String>,
    /// Seconds to wait before answering.
    pub delay: Duration,
}

impl Step {
    pub fn new(command: &str, reply: &str) -> Step {
        Step {
            command: command.into(),
            args: None,
            reply: format!("{reply}\n").into_bytes(),
            results: vec![],
            fifos: vec![],
            delay: Duration::ZERO,
        }
    }
    pub fn raw(command: &str, reply: &[u8]) -> Step {
        Step {
            reply: reply.to_vec(),
            ..Step::new(command, "")
        }
    }
    pub fn with_file(mut self, name: &str, data: &[u8]) -> Step {
        self.results.push((name.into(), data.to_vec()));
        self
    }
    pub fn with_fifo(mut self, name: &str) -> Step {
        self.fifos.push(name.into());
        self
    }
    pub fn delayed(mut self, d: Duration) -> Step {
        self.delay = d;
        self
    }
}

/// What the fake multiplexor saw.
#[derive(Debug, Default)]
pub struct MuxLog {
    /// Raw request lines (free included).
    pub lines: Vec<Vec<u8>>,
    /// Mismatches against the script.
    pub errors: Vec<String>,
    /// Copies of the working-directory files at each scan: (dir, name -> bytes).
    pub scans: Vec<Scan>,
    /// Permission bits of the working directory (`.`) and its four files
    /// at each scan, as the worker finds them.
    pub scan_modes: Vec<Vec<(String, u32)>>,
    /// Copies of the working directory's COMMANDS at each sender and
    /// recipient check: the worker reads it then (protocol/milter.md §7.3).
    pub checks: Vec<Scan>,
    pub free_count: usize,
    /// `help` requests (the milter's reservation probe), answered as
    /// upstream's multiplexor does and not in `lines`.
    pub help_count: usize,
}

/// A scan: the directory and copies of (file name, bytes).
pub type Scan = (String, Vec<(String, Vec<u8>)>);

pub struct FakeMux {
    pub path: PathBuf,
    pub log: Arc<Mutex<MuxLog>>,
    script: Arc<Mutex<VecDeque<Step>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The start and end of upstream's privileged `help` text.
pub const UPSTREAM_HELP: &[u8] = b"help             -- List available multiplexor commands\nscan /path       -- Run a scan (do not invoke using md-mx-ctrl)\n(Analogous hload commands provide hourly information)\n";

/// Upstream's `help` plus the line by which ours advertises worker
/// reservations (protocol/multiplexor.md §27).
pub const RESERVING_HELP: &[u8] = b"help             -- List available multiplexor commands\nmmrs-reserve     -- Hold a worker for a message until its scan\nscan /path       -- Run a scan (do not invoke using md-mx-ctrl)\n";

/// The free-worker answer of the fake multiplexor.
pub static FREE_REPLY: &str = "9\n";

impl FakeMux {
    /// Starts a fake multiplexor at `path` with a script; `free` is always
    /// answered with `free_reply` and does not consume a step.
    pub fn start(path: &Path, steps: Vec<Step>, free_reply: &'static str, spool: &str) -> FakeMux {
        FakeMux::start_with_help(path, steps, free_reply, spool, UPSTREAM_HELP)
    }

    /// As `start`, answering `help` with `help` (e.g. `RESERVING_HELP`).
    pub fn start_with_help(
        path: &Path,
        steps: Vec<Step>,
        free_reply: &'static str,
        spool: &str,
        help: &'static [u8],
    ) -> FakeMux {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = Arc::new(Mutex::new(MuxLog::default()));
        let script = Arc::new(Mutex::new(VecDeque::from(steps)));
        let (log2, script2, spool) = (log.clone(), script.clone(), spool.to_string());
        let task = tokio::spawn(async move {
            let ids = Arc::new(Mutex::new(Vec::<String>::new()));
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (log, script, spool, ids) =
                    (log2.clone(), script2.clone(), spool.clone(), ids.clone());
                let answers = Answers { free_reply, help };
                tokio::spawn(async move { serve(s, log, script, &spool, ids, answers).await });
            }
        });
        FakeMux {
            path: path.to_path_buf(),
            log,
            script,
            task,
        }
    }

    pub fn remaining(&self) -> usize {
        self.script.lock().unwrap().len()
    }

    pub fn push(&self, step: Step) {
        self.script.lock().unwrap().push_back(step);
    }
}

impl Drop for FakeMux {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replaces the spool path by `<SPOOL>` and each distinct `mm-<id>` by
/// `mm-MMID<n>` (numbered by first appearance).
pub fn normalise(s: &str, spool: &str, ids: &Mutex<Vec<String>>) -> String {
    let s = s.replace(spool, "<SPOOL>");
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find("<SPOOL>/mm-") {
        let start = i + "<SPOOL>/mm-".len();
        out.push_str(&rest[..start]);
        let id: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        out.push_str(&mmid(&id, ids));
        rest = &rest[start + id.len()..];
    }
    out.push_str(rest);
    out
}

pub fn mmid(id: &str, ids: &Mutex<Vec<String>>) -> String {
    let mut ids = ids.lock().unwrap();
    let n = match ids.iter().position(|x| x == id) {
        Some(n) => n,
        None => {
            ids.push(id.to_string());
            ids.len() - 1
        }
    };
    format!("MMID{}", n + 1)
}

/// What the fake multiplexor answers itself, without a script step.
#[derive(Clone, Copy)]
struct Answers {
    free_reply: &'static str,
    help: &'static [u8],
}

async fn serve(
    s: UnixStream,
    log: Arc<Mutex<MuxLog>>,
    script: Arc<Mutex<VecDeque<Step>>>,
    spool: &str,
    ids: Arc<Mutex<Vec<String>>>,
    answers: Answers,
) {
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await.is_err() {
        return;
    }
    if line == b"help\n" {
        // Upstream's multiplexor lists no reservation request
        // (protocol/milter.md §17.1): the milter goes on without one.
        log.lock().unwrap().help_count += 1;
        let _ = r.get_mut().write_all(answers.help).await;
        return;
    }
    log.lock().unwrap().lines.push(line.clone());
    let text = String::from_utf8_lossy(&line)
        .trim_end_matches('\n')
        .to_string();
    let mut words = text.split(' ');
    let cmd = words.next().unwrap_or("").to_string();
    if cmd == "free" {
        log.lock().unwrap().free_count += 1;
        let _ = r.get_mut().write_all(answers.free_reply.as_bytes()).await;
        return;
    }
    let args: Vec<String> = words
        .map(|w| {
            String::from_utf8_lossy(&mailmunge::wire::percent::decode(w.as_bytes())).into_owned()
        })
        .collect();
    let step = script.lock().unwrap().pop_front();
    let Some(step) = step else {
        log.lock()
            .unwrap()
            .errors
            .push(format!("unexpected request {text:?}"));
        let _ = r.get_mut().write_all(b"error: script exhausted\n").await;
        return;
    };
    if step.command != cmd {
        log.lock()
            .unwrap()
            .errors
            .push(format!("expected {} got {text:?}", step.command));
    }
    if let Some(expected) = &step.args {
        let got: Vec<String> = args.iter().map(|a| normalise(a, spool, &ids)).collect();
        if &got != expected {
            log.lock()
                .unwrap()
                .errors
                .push(format!("{cmd}: expected args {expected:?}, got {got:?}"));
        }
    }
    let check_dir = match cmd.as_str() {
        "senderok" => args.get(4),
        "recipok" => args.get(6),
        _ => None,
    };
    if let Some(dir) = check_dir {
        let files = std::fs::read(Path::new(dir).join("COMMANDS"))
            .map(|b| vec![("COMMANDS".to_string(), b)])
            .unwrap_or_default();
        log.lock().unwrap().checks.push((dir.clone(), files));
    }
    if cmd == "scan" && args.len() == 2 {
        let dir = &args[1];
        let mut files = vec![];
        for name in ["COMMANDS", "HEADERS", "INPUTMSG", "PRISTINE_HEADERS"] {
            if let Ok(b) = std::fs::read(Path::new(dir).join(name)) {
                files.push((name.to_string(), b));
            }
        }
        let mut modes = vec![];
        for name in [".", "COMMANDS", "HEADERS", "INPUTMSG", "PRISTINE_HEADERS"] {
            if let Ok(m) = std::fs::metadata(Path::new(dir).join(name)) {
                modes.push((name.to_string(), m.permissions().mode() & 0o777));
            }
        }
        let mut l = log.lock().unwrap();
        l.scans.push((dir.clone(), files));
        l.scan_modes.push(modes);
        drop(l);
        for (name, data) in &step.results {
            std::fs::write(Path::new(dir).join(name), data).unwrap();
        }
        for name in &step.fifos {
            let p = Path::new(dir).join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
            // Readable by the milter's user whatever the umask.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    if !step.delay.is_zero() {
        tokio::time::sleep(step.delay).await;
    }
    let _ = r.get_mut().write_all(&step.reply).await;
}

// ---------------------------------------------------------------------------
// The milter process

pub struct Milter {
    pub child: Child,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
}

impl Milter {
    /// Starts `mailmunge -p unix:<socket> -m <mux> -z <spool> -D <extra>`
    /// (plus `-U mailmunge` when running as root) and waits until the
    /// socket accepts connections.
    pub fn start(
        dir: &Path,
        mux: &Path,
        spool: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Milter {
        Milter::start_with(dir, mux, spool, extra, env, |_| {})
    }

    /// Like [`Milter::start`], after `configure` has adjusted the command
    /// (descriptor limit, inherited descriptors, credentials).
    pub fn start_with(
        dir: &Path,
        mux: &Path,
        spool: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Milter {
        let sockdir = dir.join("msock");
        common::create_open_dir(&sockdir);
        let socket = sockdir.join("milter.sock");
        Milter::start_configured(
            &format!("unix:{}", socket.display()),
            socket.clone(),
            dir,
            mux,
            spool,
            extra,
            env,
            configure,
        )
    }

    pub fn start_on(
        spec: &str,
        socket: PathBuf,
        dir: &Path,
        mux: &Path,
        spool: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Milter {
        Milter::start_configured(spec, socket, dir, mux, spool, extra, env, |_| {})
    }

    /// Like [`Milter::start_on`], after `configure` has adjusted the
    /// command.
    #[allow(clippy::too_many_arguments)]
    pub fn start_configured(
        spec: &str,
        socket: PathBuf,
        dir: &Path,
        mux: &Path,
        spool: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Milter {
        let stderr_path = dir.join("milter.stderr");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailmunge"));
        cmd.arg("-p")
            .arg(spec)
            .arg("-m")
            .arg(mux)
            .arg("-z")
            .arg(spool)
            .arg("-D")
            .args(common::worker_user_args());
        cmd.args(extra)
            .env("MAILMUNGE_LOG_STDERR", "1")
            .env("MAILMUNGE_MY_IP", "192.0.2.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut m = Milter {
            child,
            socket,
            stderr_path,
        };
        m.wait_ready();
        m
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(25);
        while Instant::now() < deadline {
            if self.log().contains("entering main loop") {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "milter exited ({st}) during start-up; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("milter did not start; its log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub async fn connect(&self) -> MtaClient {
        MtaClient::new(UnixStream::connect(&self.socket).await.unwrap())
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world-traversable scratch directory with a 0777 spool inside (the
/// milter runs as `mailmunge` when the tests run as root).
pub struct Scratch {
    pub tmp: tempfile::TempDir,
    pub spool: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let (tmp, spool) = common::scratch_with_spool();
        Scratch { tmp, spool }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn spool_str(&self) -> String {
        self.spool.to_str().unwrap().to_string()
    }
    /// Working directories still present in the spool.
    pub fn leftover_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("mm-"))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The MTA side of the milter protocol: the library's client, with every
// failure a test failure.

use mailmunge::wire::mtaclient::{self, MtaError};
#[allow(unused_imports)] // not every harness uses both
pub use mailmunge::wire::mtaclient::{nul_join as z, Offer, Packet};

/// How long a test waits for any one packet from the milter.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

pub struct MtaClient {
    c: mtaclient::MtaClient,
}

impl MtaClient {
    pub fn new(s: impl mtaclient::Io + 'static) -> MtaClient {
        MtaClient {
            c: mtaclient::MtaClient::new(s).with_timeout(Some(REPLY_LIMIT)),
        }
    }

    pub async fn send(&mut self, kind: u8, data: &[u8]) {
        self.c.send(kind, data).await.unwrap();
    }

    /// Bytes as given, not framed as a packet.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.c.send_raw(bytes).await.unwrap();
    }

    /// Reads one packet; `None` once the milter has closed or reset the
    /// connection. No packet within 10 s fails the test.
    pub async fn recv(&mut self) -> Option<Packet> {
        match self.c.recv().await {
            Ok(p) => p,
            Err(MtaError::Io(_)) => None,
            Err(e) => panic!("milter reply within {REPLY_LIMIT:?}: {e}"),
        }
    }

    pub async fn call(&mut self, kind: u8, data: &[u8]) -> Packet {
        self.send(kind, data).await;
        self.recv().await.expect("a reply")
    }

    /// Option negotiation as Postfix 3 offers it (version 6, all actions,
    /// all protocol flags); returns the milter's reply.
    pub async fn negotiate(&mut self) -> Packet {
        self.c.negotiate(Offer::POSTFIX).await.unwrap()
    }

    /// Negotiation with another offer (an older MTA).
    pub async fn negotiate_with(&mut self, offer: mtaclient::Offer) -> Packet {
        self.c.negotiate(offer).await.unwrap()
    }

    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        self.c.macros(stage, pairs).await.unwrap();
    }

    pub async fn connect_inet(&mut self, host: &str, addr: &str, port: u16) -> Packet {
        answer(self.c.connect_info(host, addr, port).await)
    }

    /// The usual start of a test transaction, replies unchecked:
    /// negotiation, a client `h` at 192.0.2.10, MAIL `<a@b>`, RCPT `<c@d>`.
    pub async fn negotiate_through_rcpt(&mut self) {
        self.negotiate().await;
        self.connect_inet("h", "192.0.2.10", 1).await;
        self.mail(&[b"<a@b>"]).await;
        self.rcpt(&[b"<c@d>"]).await;
    }

    pub async fn helo(&mut self, h: &str) -> Packet {
        answer(self.c.helo(h).await)
    }

    pub async fn mail(&mut self, args: &[&[u8]]) -> Packet {
        answer(self.c.mail(args).await)
    }

    pub async fn rcpt(&mut self, args: &[&[u8]]) -> Packet {
        answer(self.c.rcpt(args).await)
    }

    pub async fn header(&mut self, name: &[u8], value: &[u8]) -> Packet {
        answer(self.c.header(name, value).await)
    }

    pub async fn eoh(&mut self) -> Packet {
        answer(self.c.eoh().await)
    }

    pub async fn body(&mut self, chunk: &[u8]) -> Packet {
        answer(self.c.body(chunk).await)
    }

    /// End of message: every packet up to the final verdict, and the verdict.
    pub async fn eom(&mut self) -> (Vec<Packet>, Packet) {
        let e = self.c.end_of_message(&[]).await.expect("eom reply");
        (e.changes, e.verdict)
    }
}

/// The reply to a stage; our milter declines none and answers each.
fn answer(r: Result<Option<Packet>, MtaError>) -> Packet {
    r.expect("a reply").expect("the milter answers every stage")
}

pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Unescapes the golden files' quoted strings: `\0 \r \n \t \\ \" \xHH`.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'0' => out.push(0),
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

/// Splits `"a" "b c"` into unescaped strings.
pub fn quoted_list(s: &str) -> Vec<String> {
    let mut out = vec![];
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            out.push(String::from_utf8_lossy(&unescape(&s[start..j])).into_owned());
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}
