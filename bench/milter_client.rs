//! The MTA side of the milter benchmarks (`examples/bench_milter.rs`,
//! `examples/bench_compare.rs`, `examples/soak.rs`): milter sessions played
//! with the library's client (`mailmunge::wire::mtaclient`,
//! protocol/milter.md §16) over a unix socket or TCP, one message per
//! connection, and timed runs of concurrent sessions.
//!
//! Included with `#[path]` after `support.rs` (it uses `crate::support`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailmunge::wire::mtaclient::{self, MtaClient, MtaError, Offer, Packet};
use mailmunge::wire::sockspec::SockSpec;

use crate::support::{self, Daemon, Latencies, Run, START_LIMIT};

/// Where a milter listens.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Unix(_) => "unix",
            Target::Tcp(_) => "tcp",
        }
    }

    /// The milter's `-p` argument (libmilter's syntax, which ours shares).
    pub fn spec(&self) -> String {
        match self {
            Target::Unix(p) => format!("unix:{}", p.display()),
            Target::Tcp(a) => format!("inet:{}@{}", a.port(), a.ip()),
        }
    }

    fn sock_spec(&self) -> SockSpec {
        match self {
            Target::Unix(p) => SockSpec::Unix(p.clone()),
            Target::Tcp(a) => SockSpec::Tcp(*a),
        }
    }
}

/// A TCP address on loopback that nothing listens on right now.
pub fn free_tcp_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

pub type Session = MtaClient;

/// What the benchmark MTA offers in the negotiation.
pub type Client = Offer;

/// Opens a connection and does the option negotiation.
pub async fn open(target: &Target, client: &Client) -> Result<Session, String> {
    let mut s = MtaClient::connect(&target.sock_spec(), None)
        .await
        .map_err(|e| e.to_string())?;
    s.negotiate(*client)
        .await
        .map_err(|e| format!("negotiate: {e}"))?;
    Ok(s)
}

/// The offer of every benchmark session: version 6, the actions of
/// version 6 but SETSYMLIST, and of the protocol options only
/// SMFIP_NODATA (0x200), by which an MTA says it has a DATA stage, as
/// Postfix and Sendmail do (protocol/milter.md §17.4). So the milter is
/// asked and answers at every stage it registered; one without a DATA
/// callback (libmilter's, when the filter has none) asks not to be sent it.
pub fn client() -> Client {
    Offer {
        version: 6,
        actions: 0xff,
        protocol: 0x200,
    }
}

/// Checks that the milter let a stage through.
fn proceed(what: &str, r: Result<Option<Packet>, MtaError>) -> Result<(), String> {
    match mtaclient::Verdict::of(r.map_err(|e| format!("{what}: {e}"))?.as_ref()) {
        Ok(mtaclient::Verdict::Continue | mtaclient::Verdict::NotAsked) => Ok(()),
        Ok(v) => Err(format!("{what}: {v:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Connect and HELO as `host` (a client on 127.0.0.1, port `port`).
pub async fn greet(s: &mut Session, host: &str, port: u16) -> Result<(), String> {
    proceed("connect", s.connect_info(host, "127.0.0.1", port).await)?;
    proceed("helo", s.helo(host).await)
}

/// One message as an MTA hands it to a milter.
pub struct Message {
    pub headers: Vec<(String, String)>,
    /// Body with CRLF line ends, as it comes over SMTP.
    pub body: Vec<u8>,
    pub recipients: Vec<String>,
}

impl Message {
    /// A plain-text message of about `bytes` bytes (headers included) for
    /// `recipients` recipients.
    pub fn plain(bytes: usize, recipients: usize) -> Message {
        let line = "Line of a plain benchmark body, long enough to look like mail.\r\n";
        let body = line.repeat(bytes.saturating_sub(300) / line.len() + 1);
        Message::with_body("text/plain; charset=us-ascii", body, recipients)
    }

    /// multipart/mixed: a short text part and a base64 attachment, about
    /// `bytes` bytes in all.
    pub fn with_attachment(bytes: usize) -> Message {
        let boundary = "=-bench-boundary-4711";
        let mut body = format!(
            "This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        );
        for _ in 0..20 {
            body.push_str("Please find the report attached; the figures are in the appendix.\r\n");
        }
        body.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n"
        ));
        let lines = bytes.saturating_sub(body.len() + 400) / 78 + 1;
        body.push_str(&base64_lines(lines));
        body.push_str(&format!("\r\n--{boundary}--\r\n"));
        Message::with_body(
            &format!("multipart/mixed; boundary=\"{boundary}\""),
            body,
            1,
        )
    }

    fn with_body(content_type: &str, body: String, recipients: usize) -> Message {
        let pairs = [
            ("From", "Sender <sender@example.com>"),
            ("To", "Recipient <rcpt@example.net>"),
            ("Subject", "benchmark message"),
            ("Date", "Thu, 26 Nov 2026 12:00:00 +0000"),
            ("Message-ID", "<bench@example.com>"),
            ("MIME-Version", "1.0"),
            ("Content-Type", content_type),
        ];
        Message {
            headers: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.into_bytes(),
            recipients: (0..recipients.max(1))
                .map(|i| format!("<rcpt{i}@example.net>"))
                .collect(),
        }
    }

    /// Size as the MTA would store it: headers, blank line, body.
    pub fn size(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + 2
            + self.body.len()
    }
}

/// `n` lines of 76 base64 characters (valid base64 of pseudo-random bytes:
/// any run of alphabet characters in groups of four decodes).
fn base64_lines(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u32 = 0x9e37_79b9;
    let mut out = String::with_capacity(n * 78);
    for _ in 0..n {
        for _ in 0..76 {
            // xorshift32: cheap, deterministic, not compressible by accident.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(ALPHABET[(x % 64) as usize] as char);
        }
        out.push_str("\r\n");
    }
    out
}

/// What the milter answered at end of message, typed
/// (protocol/milter.md §16).
pub struct Verdict {
    /// The end-of-message verdict.
    pub verdict: mtaclient::Verdict,
    /// The changes in the order the milter sent them.
    pub modifications: Vec<mtaclient::Modification>,
    /// Where the message's time went, as the MTA saw it (`STAGES`).
    pub stages: [Duration; 4],
}

/// The stages of a message's time, as the MTA waits for the milter.
#[allow(dead_code)]
pub const STAGES: [&str; 4] = [
    "connect to HELO",
    "MAIL",
    "RCPT to last body chunk",
    "end of message",
];

impl Verdict {
    /// True when the milter let the message through (`continue`).
    pub fn passed(&self) -> bool {
        self.verdict == mtaclient::Verdict::Continue
    }

    /// True when the milter tempfailed the message (the MTA retries it).
    pub fn tempfailed(&self) -> bool {
        matches!(self.verdict, mtaclient::Verdict::Tempfail { .. })
    }

    /// True when one of the changes adds a header called `name`.
    pub fn adds_header(&self, name: &str) -> bool {
        self.modifications.iter().any(
            |m| matches!(m, mtaclient::Modification::AddHeader { name: n, .. } if n.eq_ignore_ascii_case(name)),
        )
    }

    /// The verdict in words: `continue`, or its `Debug` form with the
    /// reply (`Tempfail { reply: ".." }`).
    pub fn describe(&self) -> String {
        match &self.verdict {
            mtaclient::Verdict::Continue => "continue".to_string(),
            other => format!("{other:?}"),
        }
    }

    /// The changes in words, `; ` between them.
    pub fn changes(&self) -> String {
        let words: Vec<String> = self.modifications.iter().map(|m| m.to_string()).collect();
        words.join("; ")
    }
}

/// One SMTP transaction on a fresh connection, as an MTA plays it.
pub async fn one_message(
    target: &Target,
    client: &Client,
    msg: &Message,
) -> Result<Verdict, String> {
    let mut marks = [Instant::now(); 5];
    let mut s = open(target, client).await?;
    greet(&mut s, "client.example", 40000).await?;
    marks[1] = Instant::now();
    proceed("mail", s.mail(&[b"<sender@example.com>"]).await)?;
    marks[2] = Instant::now();
    for r in &msg.recipients {
        proceed("rcpt", s.rcpt(&[r.as_bytes()]).await)?;
    }
    proceed("data", s.data().await)?;
    for (n, v) in &msg.headers {
        proceed("header", s.header(n.as_bytes(), v.as_bytes()).await)?;
    }
    proceed("eoh", s.eoh().await)?;
    for chunk in msg.body.chunks(mtaclient::BODY_CHUNK) {
        proceed("body", s.body(chunk).await)?;
    }
    marks[3] = Instant::now();
    let eom = s
        .end_of_message(&[])
        .await
        .and_then(|e| e.decode())
        .map_err(|e| format!("eom: {e}"))?;
    marks[4] = Instant::now();
    s.quit(false).await.map_err(|e| format!("quit: {e}"))?;
    Ok(Verdict {
        verdict: eom.verdict,
        modifications: eom.modifications,
        stages: std::array::from_fn(|i| marks[i + 1] - marks[i]),
    })
}

/// What one message of a driving session came to: the milter's verdict, a
/// refusal or error on the way (its text), or no answer within 60 s.
pub type Outcome = Result<Result<Verdict, String>, tokio::time::error::Elapsed>;

/// `sessions` concurrent MTA sessions, one message per connection, back to
/// back until `seconds` are up. Each outcome goes to `tally` with how long
/// the message took, into that session's state `S`; when `tally` says so
/// the session pauses 10 ms before the next message (a refused message is
/// not retried in a tight loop). Returns every session's state and the
/// time taken.
pub async fn drive_with<S, F>(
    target: &Target,
    msg: Arc<Message>,
    sessions: usize,
    seconds: f64,
    tally: F,
) -> (Vec<S>, Duration)
where
    S: Default + Send + 'static,
    F: Fn(&mut S, Outcome, Duration) -> bool + Copy + Send + 'static,
{
    let client = Arc::new(client());
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (target, client, msg) = (target.clone(), client.clone(), msg.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = S::default();
            while Instant::now() < until {
                let t = Instant::now();
                let one = one_message(&target, &client, &msg);
                let r = tokio::time::timeout(Duration::from_secs(60), one).await;
                if tally(&mut state, r, t.elapsed()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            state
        }));
    }
    let mut states = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            states.push(s);
        }
    }
    (states, started.elapsed())
}

/// [`drive_with`] counting latencies: a message counts when the milter
/// lets it through (`continue`).
pub async fn drive(target: &Target, msg: Arc<Message>, sessions: usize, seconds: f64) -> Run {
    type Tally = (Latencies, usize, Option<String>, [Duration; 4]);
    let (states, elapsed) =
        drive_with(target, msg, sessions, seconds, |st: &mut Tally, r, took| {
            let failure = match r {
                Ok(Ok(v)) if v.passed() => {
                    st.0.push(took);
                    support::add_durations(&mut st.3, &v.stages);
                    return false;
                }
                Ok(Ok(v)) => format!("final action {}", v.describe()),
                Ok(Err(e)) => {
                    st.1 += 1;
                    st.2.get_or_insert(e);
                    return true;
                }
                Err(_) => "no answer within 60 s".into(),
            };
            st.1 += 1;
            st.2.get_or_insert(failure);
            false
        })
        .await;
    let mut run = Run::default();
    for (lat, errors, first, stages) in states {
        run.add(lat, errors, first);
        support::add_durations(&mut run.stages, &stages);
    }
    run.elapsed = elapsed;
    run
}

/// Starts a milter (`cmd`, in the foreground) with its output in `log`
/// and waits until a connection to `target` gets through negotiation.
pub fn spawn_milter(
    name: &'static str,
    cmd: std::process::Command,
    log: PathBuf,
    target: &Target,
) -> anyhow::Result<Daemon> {
    let mut d = Daemon::spawn(name, cmd, log)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = client();
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let ok = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), open(target, &client)).await
        });
        if ok.is_ok_and(|r| r.is_ok()) {
            return Ok(d);
        }
        d.check_alive()?;
        if Instant::now() > deadline {
            anyhow::bail!(
                "{name} did not answer on {} within {START_LIMIT:?}; output:\n{}",
                target.spec(),
                d.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens idle sessions on `target` until `held` has `n` (in batches, which
/// keep the accept backlog from overflowing), giving up after 100
/// failures. Each session negotiates, and with `helo` also sends connect
/// and HELO. Returns the failures and the first one.
pub fn open_idle(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    n: usize,
    helo: bool,
    held: &mut Vec<Session>,
) -> (usize, Option<String>) {
    let client = Arc::new(client());
    let (mut failures, mut first) = (0usize, None);
    while held.len() < n && failures < 100 {
        let batch = (n - held.len()).min(128);
        let opened = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..batch {
                let (target, client) = (target.clone(), client.clone());
                tasks.push(tokio::spawn(async move {
                    let f = async {
                        let mut s = open(&target, &client).await?;
                        if helo {
                            greet(&mut s, "idle.example", 40002).await?;
                        }
                        Ok::<_, String>(s)
                    };
                    tokio::time::timeout(Duration::from_secs(20), f)
                        .await
                        .unwrap_or_else(|_| Err("timed out".into()))
                }));
            }
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            v
        });
        for r in opened {
            match r {
                Ok(s) => held.push(s),
                Err(e) => {
                    failures += 1;
                    first.get_or_insert(e);
                }
            }
        }
    }
    (failures, first)
}
