//! The whole stack without an MTA: our milter, our multiplexor and our Perl
//! workers running upstream's capture filter, fed the exact MTA packets of
//! the six recorded sessions. Every packet the MTA receives must equal what
//! upstream's C milter + multiplexor + Perl sent (tests/data/milter/golden).

mod milter_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use milter_support::*;

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

struct Mux(Child);

impl Drop for Mux {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..250 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum Item {
    Send(u8, Vec<u8>),
    Exact(u8, Vec<u8>),
    Hashed(u8, usize, u64),
}

fn wire(case: &str) -> Vec<Item> {
    let text = std::fs::read_to_string(
        top()
            .join("tests/data/milter/golden")
            .join(case)
            .join("wire.txt"),
    )
    .unwrap();
    text.lines()
        .map(|l| {
            let (dir, kind, rest) = (l.as_bytes()[0], l.as_bytes()[3], &l[6..]);
            let (len, rest) = rest.strip_prefix("len=").unwrap().split_once(' ').unwrap();
            if let Some(h) = rest.strip_prefix("fnv64=") {
                return Item::Hashed(
                    kind,
                    len.parse().unwrap(),
                    u64::from_str_radix(h, 16).unwrap(),
                );
            }
            let data = unescape(&rest[1..rest.len() - 1]);
            if dir == b'>' {
                Item::Send(kind, data)
            } else {
                Item::Exact(kind, data)
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sessions_through_our_multiplexor_and_workers() {
    require_perl_modules!("MIME::Tools", "HTML::Parser");
    let filter_src = top().join("t/data/core/golden/filter");
    if !filter_src.join("capture-filter.pl").exists() {
        panic!("capture filter missing at {}", filter_src.display());
    }
    let scratch = Scratch::new();
    let tmp = scratch.path();
    copy_tree(&top().join("perl"), &tmp.join("perl"));
    copy_tree(&filter_src, &tmp.join("filter"));
    let stub = top().join("t/data/core/golden/stub");
    let mut perl5lib = tmp.join("perl").display().to_string();
    if stub.exists() {
        copy_tree(&stub, &tmp.join("stub"));
        perl5lib.push_str(&format!(":{}", tmp.join("stub").display()));
    }
    let (cap, qdir) = (tmp.join("cap"), tmp.join("quarantine"));
    common::create_open_dir(&cap);
    common::create_open_dir(&qdir);
    let mux_sock = scratch.spool.join("mx.sock");
    let mux_log = std::fs::File::create(tmp.join("mux.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailmunge-multiplexor"));
    cmd.args(["-D", "-m", "1", "-x", "2"])
        .arg("-z")
        .arg(&scratch.spool)
        .arg("-s")
        .arg(&mux_sock)
        .arg("-f")
        .arg(tmp.join("filter/capture-filter.pl"));
    cmd.args(common::worker_user_args());
    cmd.env("PERL5LIB", &perl5lib)
        .env("MAILMUNGE_SPOOLDIR", &scratch.spool)
        .env("MAILMUNGE_MTA", "postfix")
        .env("MM_CAPTURE_DIR", &cap)
        .env("MM_QUARANTINE_DIR", &qdir)
        .stdin(Stdio::null())
        .stdout(mux_log.try_clone().unwrap())
        .stderr(mux_log);
    let _mux = Mux(cmd.spawn().unwrap());
    let mux_out = || std::fs::read_to_string(tmp.join("mux.log")).unwrap_or_default();
    for _ in 0..200 {
        if mux_sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mux_sock.exists(),
        "multiplexor did not start:\n{}",
        mux_out()
    );
    let milter = Milter::start(
        tmp,
        &mux_sock,
        &scratch.spool,
        &["-r", "-H", "-s", "-t"],
        &[],
    );

    for case in [
        "c01-basic",
        "c02-folded-headers",
        "c14-60-rcpts",
        "c24-all-mods",
        "v01-relay-reject",
        "v09-sender-verdicts",
    ] {
        let mut mta = milter.connect().await;
        for (n, item) in wire(case).into_iter().enumerate() {
            let ctx = || {
                format!(
                    "{case} wire item {n}\nmilter log:\n{}\nmultiplexor log:\n{}",
                    milter.log(),
                    mux_out()
                )
            };
            match item {
                Item::Send(k, d) => mta.send(k, &d).await,
                Item::Exact(k, d) => {
                    let got = mta
                        .recv()
                        .await
                        .unwrap_or_else(|| panic!("connection closed; {}", ctx()));
                    let want = Packet { kind: k, data: d };
                    assert_eq!(got, want, "got {got}, want {want}; {}", ctx());
                }
                Item::Hashed(k, len, h) => {
                    let got = mta
                        .recv()
                        .await
                        .unwrap_or_else(|| panic!("connection closed; {}", ctx()));
                    assert_eq!(
                        (got.kind, got.data.len(), fnv64(&got.data)),
                        (k, len, h),
                        "got {got}; {}",
                        ctx()
                    );
                }
            }
        }
        assert!(mta.recv().await.is_none(), "{case}: open after quit");
    }
    for _ in 0..100 {
        if scratch.leftover_dirs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        scratch.leftover_dirs().is_empty(),
        "left behind: {:?}",
        scratch.leftover_dirs()
    );
}
