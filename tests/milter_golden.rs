//! Replays the six sessions recorded against upstream's C milter
//! (tests/data/milter/golden): the exact MTA
//! packets go in, and we check the exact packets coming back, the requests
//! and arguments reaching the multiplexor, and the bytes of COMMANDS,
//! HEADERS, INPUTMSG and PRISTINE_HEADERS at `scan` time.

mod milter_support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use milter_support::*;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/milter/golden")
        .join(case)
}

/// The multiplexor script from the recorded stage files.
fn script(case: &str) -> Vec<Step> {
    let dir = case_dir(case);
    let mut names: Vec<_> = std::fs::read_dir(dir.join("stages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let files = dir.join("files");
    names
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap()
                    .to_string()
            };
            let command = field("command ");
            let args = quoted_list(&field("args "));
            let reply = quoted_list(&field("reply ")).remove(0);
            let mut step = Step::new(&command, &reply);
            step.args = Some(args);
            if command == "scan" {
                for f in ["RESULTS", "NEWBODY"] {
                    if let Ok(b) = std::fs::read(files.join(f)) {
                        step = step.with_file(f, &b);
                    }
                }
            }
            step
        })
        .collect()
}

/// Expected packet from the MTA's point of view.
enum Expect {
    Exact(Packet),
    Hashed { kind: u8, len: usize, fnv: u64 },
}

enum WireItem {
    Send(Packet),
    Recv(Expect),
}

fn wire(case: &str) -> Vec<WireItem> {
    let text = std::fs::read_to_string(case_dir(case).join("wire.txt")).unwrap();
    text.lines()
        .map(|l| {
            let dir = l.as_bytes()[0];
            let kind = l.as_bytes()[3];
            let rest = &l[6..];
            let (len, rest) = rest.strip_prefix("len=").unwrap().split_once(' ').unwrap();
            let len: usize = len.parse().unwrap();
            if let Some(h) = rest.strip_prefix("fnv64=") {
                assert_eq!(dir, b'<', "only replies are hashed");
                return WireItem::Recv(Expect::Hashed {
                    kind,
                    len,
                    fnv: u64::from_str_radix(h, 16).unwrap(),
                });
            }
            let data = unescape(&rest[1..rest.len() - 1]);
            assert_eq!(data.len(), len, "{l}");
            let p = Packet { kind, data };
            if dir == b'>' {
                WireItem::Send(p)
            } else {
                WireItem::Recv(Expect::Exact(p))
            }
        })
        .collect()
}

fn normalise_commands(data: &[u8], ids: &Mutex<Vec<String>>) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match line.strip_prefix('i') {
            Some(id) => {
                let id = id.trim_end_matches('\n');
                out.push('i');
                out.push_str(&mmid(id, ids));
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

async fn run_case(case: &str) {
    let scratch = Scratch::new();
    let spool = scratch.spool_str();
    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, script(case), FREE_REPLY, &spool);
    let milter = Milter::start(
        scratch.path(),
        &mux_path,
        &scratch.spool,
        &["-r", "-H", "-s", "-t"],
        &[],
    );
    let mut mta = milter.connect().await;

    for (n, item) in wire(case).into_iter().enumerate() {
        match item {
            WireItem::Send(p) => mta.send(p.kind, &p.data).await,
            WireItem::Recv(expect) => {
                let got = mta.recv().await.unwrap_or_else(|| {
                    panic!(
                        "{case}: wire item {n}: milter closed the connection; log:\n{}",
                        milter.log()
                    )
                });
                match expect {
                    Expect::Exact(p) => assert_eq!(
                        got,
                        p,
                        "{case}: wire item {n}: got {got}, want {p}; log:\n{}",
                        milter.log()
                    ),
                    Expect::Hashed { kind, len, fnv } => {
                        assert_eq!(
                            (got.kind, got.data.len()),
                            (kind, len),
                            "{case}: wire item {n}: {got}"
                        );
                        assert_eq!(fnv64(&got.data), fnv, "{case}: wire item {n}: {got}");
                    }
                }
            }
        }
    }
    // After QUIT the milter closes the connection.
    assert!(
        mta.recv().await.is_none(),
        "{case}: connection still open after quit"
    );

    let log = std::mem::take(&mut *mux.log.lock().unwrap());
    assert!(
        log.errors.is_empty(),
        "{case}: multiplexor saw: {:#?}\nmilter log:\n{}",
        log.errors,
        milter.log()
    );
    assert_eq!(
        mux.remaining(),
        0,
        "{case}: not every recorded request was made"
    );
    // The fake multiplexor answers `help` as upstream's does: the milter
    // must never send it our reservation request (protocol/milter.md §17.1).
    assert!(
        !log.lines.iter().any(|l| l.starts_with(b"mmrs-")),
        "{case}: a reservation request reached an upstream multiplexor"
    );
    let files = case_dir(case).join("files");
    if files.exists() {
        assert_eq!(log.scans.len(), 1, "{case}: one scan");
        let ids = Mutex::new(vec![]);
        // Number the ids the way the stage arguments did (first MAIL first).
        for l in &log.lines {
            let l = String::from_utf8_lossy(l);
            if let Some(i) = l.find("/mm-") {
                let id: String = l[i + 4..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                mmid(&id, &ids);
            }
        }
        for (name, got) in &log.scans[0].1 {
            let want = std::fs::read(files.join(name)).unwrap();
            let got = if name == "COMMANDS" {
                normalise_commands(got, &ids)
            } else {
                got.clone()
            };
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{case}: {name} differs"
            );
            assert_eq!(got, want, "{case}: {name} bytes differ");
        }
        let names: Vec<&str> = log.scans[0].1.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["COMMANDS", "HEADERS", "INPUTMSG", "PRISTINE_HEADERS"],
            "{case}"
        );
    }
    // Every working directory was removed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !scratch.leftover_dirs().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        scratch.leftover_dirs().is_empty(),
        "{case}: left behind {:?}",
        scratch.leftover_dirs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c01_basic() {
    run_case("c01-basic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_folded_headers() {
    run_case("c02-folded-headers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c14_60_rcpts() {
    run_case("c14-60-rcpts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c24_all_mods() {
    run_case("c24-all-mods").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v01_relay_reject() {
    run_case("v01-relay-reject").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v09_sender_verdicts() {
    run_case("v09-sender-verdicts").await;
}
