//! Bad input and faults around the milter: multiplexor down, slow or
//! answering garbage, missing or hostile RESULTS/NEWBODY, MTA aborts and
//! malformed packets. Mail must be tempfailed (never accepted unfiltered),
//! the reason logged, and the working directory cleaned up (or kept with -k).

mod milter_support;

use std::time::Duration;

use milter_support::*;

struct Env {
    scratch: Scratch,
    mux: FakeMux,
    milter: Milter,
}

fn start(free: &'static str, flags: &[&str], env: &[(&str, &str)]) -> Env {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, vec![], free, &scratch.spool_str());
    let milter = Milter::start(scratch.path(), &mux_path, &scratch.spool, flags, env);
    Env {
        scratch,
        mux,
        milter,
    }
}

impl Env {
    async fn wait_clean(&self) {
        for _ in 0..250 {
            if self.scratch.leftover_dirs().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "working directories left: {:?}\nlog:\n{}",
            self.scratch.leftover_dirs(),
            self.milter.log()
        );
    }

    fn assert_log(&self, needle: &str) {
        // Log lines go through syslog's LOG_PERROR; give them a moment.
        for _ in 0..100 {
            if self.milter.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log lacks {needle:?}:\n{}", self.milter.log());
    }
}

const CONTINUE: u8 = b'c';
const TEMPFAIL: u8 = b't';

/// negotiate, connect, helo, one message up to the end of the body.
async fn message_until_eom(mta: &mut MtaClient) {
    mta.negotiate().await;
    mta.macros(b'C', &[("j", "mx.example.com"), ("{daemon_name}", "mx")])
        .await;
    assert_eq!(
        mta.connect_inet("client.example.net", "192.0.2.10", 40000)
            .await
            .kind,
        CONTINUE
    );
    assert_eq!(mta.helo("client.example.net").await.kind, CONTINUE);
    assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
    mta.macros(b'T', &[("i", "QID1")]).await;
    assert_eq!(mta.call(b'T', b"").await.kind, CONTINUE);
    assert_eq!(mta.header(b"Subject", b"hi").await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    assert_eq!(mta.body(b"body\r\n").await.kind, CONTINUE);
}

fn scan_with(files: &[(&str, &[u8])]) -> Step {
    let mut s = Step::new("scan", "ok");
    for (n, d) in files {
        s = s.with_file(n, d);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexor_gone_tempfails_connect() {
    let mut e = start(FREE_REPLY, &[], &[]);
    drop(std::mem::replace(
        &mut e.mux,
        FakeMux::start(&e.scratch.path().join("other.sock"), vec![], FREE_REPLY, ""),
    ));
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, TEMPFAIL);
    e.assert_log("NOQUEUE: MXCommand: connect: ");
    e.assert_log("mfconnect: Error communicating with multiplexor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_workers_tempfails_connect_unless_reserved_for_loopback() {
    let e = start("0\n", &[], &[]);
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, TEMPFAIL);
    e.assert_log("mfconnect: No free workers: Need 1, found 0");
    // -R 0: loopback never refused, others need more than 0 free.
    let e = start("0\n", &["-R", "0"], &[]);
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(
        mta.connect_inet("localhost", "127.0.0.1", 1).await.kind,
        CONTINUE
    );
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, TEMPFAIL);
    // -q: no free check at all.
    let e = start("0\n", &["-q"], &[]);
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
    assert_eq!(
        e.mux.log.lock().unwrap().free_count,
        1,
        "only the start-up probe"
    );
}

/// protocol/milter.md §17.4: with a multiplexor that reserves workers and
/// an MTA with a DATA stage, no worker free at connect refuses nothing
/// there; the message is refused at DATA, before its body. An MTA without
/// the DATA stage keeps upstream's connect check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_check_gives_way_to_the_reservation() {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let refusal = Step::new("mmrs-reserve", "error: No free workers");
    let mux = FakeMux::start_with_help(
        &mux_path,
        vec![refusal],
        "0\n",
        &scratch.spool_str(),
        RESERVING_HELP,
    );
    let milter = Milter::start(scratch.path(), &mux_path, &scratch.spool, &[], &[]);
    let mut mta = milter.connect().await;
    mta.negotiate().await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<c@d>"]).await.kind, CONTINUE);
    let data = mta.call(b'T', b"").await;
    assert_eq!(data.kind, b'y', "a reply set at DATA: {data:?}");
    assert!(
        String::from_utf8_lossy(&data.data).starts_with("451 4.3.2 "),
        "{data:?}"
    );
    {
        let log = mux.log.lock().unwrap();
        // The start-up probe and the connection's: it is asked, not obeyed.
        assert_eq!(log.free_count, 2, "{log:?}");
        assert!(log.errors.is_empty(), "{:?}", log.errors);
    }
    assert_eq!(mux.remaining(), 0);
    let e = Env {
        scratch,
        mux,
        milter,
    };
    e.assert_log("mfdata: No free workers: tempfailing the message before it is sent");
    e.wait_clean().await;
    assert!(!e.milter.log().contains("mfconnect"), "{}", e.milter.log());

    // Protocol version 2 (no DATA stage): refused at connect, as upstream.
    let mut mta = e.milter.connect().await;
    mta.negotiate_with(Offer {
        version: 2,
        actions: 0x3f,
        protocol: 0x7f,
    })
    .await;
    assert_eq!(mta.connect_inet("h", "192.0.2.10", 1).await.kind, TEMPFAIL);
    e.assert_log("mfconnect: No free workers: Need 1, found 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_multiplexor_tempfails_checks() {
    let e = start(FREE_REPLY, &["-s"], &[]);
    e.mux.push(Step::new("senderok", "error: No free workers"));
    e.mux.push(Step::raw("senderok", b"ok 1"));
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    let r = mta.mail(&[b"<a@b>"]).await;
    assert_eq!(r.kind, TEMPFAIL, "{r}");
    e.assert_log("NOQUEUE: Error from multiplexor: error: No free workers");
    let r = mta.mail(&[b"<a@b>"]).await;
    assert_eq!(r.kind, TEMPFAIL, "{r}");
    e.assert_log("NOQUEUE: Error from multiplexor: ok 1");
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_multiplexor_times_out() {
    let e = start(FREE_REPLY, &[], &[("MAILMUNGE_MX_TIMEOUT", "1")]);
    e.mux
        .push(Step::new("scan", "ok").delayed(Duration::from_secs(30)));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert!(mods.is_empty());
    assert_eq!(v.kind, TEMPFAIL);
    e.assert_log("QID1: MXCommand: timed out after 1s");
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_error_and_missing_results() {
    let e = start(FREE_REPLY, &[], &[]);
    e.mux
        .push(Step::new("scan", "ERR Filter timed out - something"));
    e.mux.push(Step::new("scan", "ok"));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (_, v) = mta.eom().await;
    assert_eq!(v.kind, TEMPFAIL);
    e.assert_log("QID1: Error from multiplexor: ERR Filter timed out - something");
    e.wait_clean().await;

    assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    let (_, v) = mta.eom().await;
    assert_eq!(v.kind, TEMPFAIL);
    e.assert_log("NOQUEUE: Filter did not create RESULTS file");
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_failed_directories_with_k() {
    let e = start(FREE_REPLY, &["-k"], &[]);
    e.mux.push(scan_with(&[("RESULTS", b"HX-A b\n")]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, TEMPFAIL);
    // The H line was sent before the missing F was noticed; the tempfail makes it moot.
    assert_eq!(mods.len(), 1);
    e.assert_log("QID1: RESULTS file did not finish with 'F' line: Tempfailing");
    e.assert_log("QID1: Filter failed.  Message kept in ");
    assert_eq!(
        e.scratch.leftover_dirs().len(),
        1,
        "kept: {:?}",
        e.scratch.leftover_dirs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_in_results_is_refused() {
    let e = start(FREE_REPLY, &[], &[]);
    e.mux.push(scan_with(&[(
        "RESULTS",
        b"HX-Ok fine\nHX-Evil a%0ABcc:%20victim@example.com\nF\n",
    )]));
    e.mux
        .push(scan_with(&[("RESULTS", b"HX%20Bad value\nF\n")]));
    e.mux.push(scan_with(&[(
        "RESULTS",
        b"R<x@y>%0D%0ARCPT%20TO:<z@w>\nF\n",
    )]));
    e.mux.push(scan_with(&[(
        "RESULTS",
        b"IX-Folded 1 ok%0A%09folded\nF\n",
    )]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    for n in 0..4 {
        if n > 0 {
            assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
            assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
            assert_eq!(mta.eoh().await.kind, CONTINUE);
        }
        let (mods, v) = mta.eom().await;
        if n < 3 {
            assert_eq!(v.kind, TEMPFAIL, "case {n}");
            assert!(mods.is_empty(), "case {n}: nothing may be sent: {mods:?}");
        } else {
            // Proper folding is allowed.
            assert_eq!(v.kind, CONTINUE);
            assert_eq!(
                mods[0],
                Packet {
                    kind: b'm',
                    data: [&1u32.to_be_bytes()[..], b"X-Folded\0ok\n\tfolded\0"].concat()
                }
            );
        }
    }
    e.assert_log("QID1: RESULTS instruction 2 refused: header value has a line break not followed by folding whitespace: Tempfailing");
    e.assert_log("refused: header name contains byte 0x20");
    e.assert_log("refused: address or reason contains a CR or LF");
    e.wait_clean().await;
}

/// A filter's `action_add_header('X-After-CR', "seen\rwith CR")` leaves a
/// percent-encoded bare CR in RESULTS. Upstream hands it to the MTA; we send
/// a space instead, log a warning, and apply the other actions: the message
/// must not be tempfailed (protocol/milter.md §15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_in_header_value_becomes_a_space() {
    let e = start(FREE_REPLY, &["-X"], &[]);
    e.mux.push(scan_with(&[(
        "RESULTS",
        b"HX-After-CR seen%0Dwith%20CR\nNX-Ins 0 a%0Db%0D\nR<c@example.com>\nHX-Next ok\nF\n",
    )]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, CONTINUE, "log:\n{}", e.milter.log());
    assert_eq!(
        mods,
        vec![
            Packet {
                kind: b'h',
                data: b"X-After-CR\0seen with CR\0".to_vec()
            },
            Packet {
                kind: b'i',
                data: [&0u32.to_be_bytes()[..], b"X-Ins\0a b \0"].concat()
            },
            Packet {
                kind: b'+',
                data: b"<c@example.com>\0".to_vec()
            },
            Packet {
                kind: b'h',
                data: b"X-Next\0ok\0".to_vec()
            },
        ]
    );
    e.assert_log("QID1: RESULTS instruction 1: bare CR in header value replaced by a space");
    e.assert_log("QID1: RESULTS instruction 2: bare CR in header value replaced by a space");
    assert!(
        !e.milter.log().contains("Tempfailing"),
        "{}",
        e.milter.log()
    );
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newbody_streaming_and_faults() {
    let e = start(FREE_REPLY, &["-X"], &[]);
    let big: Vec<u8> = (0..10000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    e.mux
        .push(scan_with(&[("RESULTS", b"C\nF\n"), ("NEWBODY", &big)]));
    e.mux.push(scan_with(&[("RESULTS", b"C\nF\n")]));
    e.mux
        .push(scan_with(&[("RESULTS", b"C\nF\n"), ("NEWBODY", b"")]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, CONTINUE);
    let sizes: Vec<usize> = mods.iter().map(|p| p.data.len()).collect();
    assert_eq!(sizes, [4096, 4096, 1808]);
    assert!(mods.iter().all(|p| p.kind == b'b'));
    assert_eq!(
        mods.iter().flat_map(|p| p.data.clone()).collect::<Vec<_>>(),
        big
    );

    // NEWBODY missing: tempfail.
    assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, TEMPFAIL);
    assert!(mods.is_empty());
    e.assert_log("/NEWBODY for reading: No such file or directory");

    // Empty NEWBODY: no replacebody at all (upstream keeps the original body).
    assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, CONTINUE);
    assert!(mods.is_empty());
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newbody_symlink_is_refused() {
    let e = start(FREE_REPLY, &[], &[]);
    e.mux.push(scan_with(&[("RESULTS", b"C\nF\n")]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    // Plant the symlink before the scan answer is read: the fake mux writes
    // RESULTS; we add NEWBODY -> /etc/passwd from here.
    let dirs = e.scratch.leftover_dirs();
    assert_eq!(dirs.len(), 1);
    let dir = e.scratch.spool.join(&dirs[0]);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("NEWBODY")).unwrap();
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, TEMPFAIL);
    assert!(mods.is_empty());
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_verdicts_and_overlong_line() {
    let e = start(FREE_REPLY, &[], &[]);
    let mut long = b"HX ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    long.extend_from_slice(b"\nF\n");
    e.mux.push(scan_with(&[("RESULTS", &long)]));
    e.mux.push(scan_with(&[(
        "RESULTS",
        b"HX-Skipped yes\nQreason%20here\nB550 5.7.1 go%20away%2C%20100%25\nF\n",
    )]));
    e.mux.push(scan_with(&[("RESULTS", b"T451 4.7.1\nF\n")]));
    e.mux.push(scan_with(&[("RESULTS", b"D\nF\n")]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert!(mods.is_empty());
    assert_eq!(v, Packet::reply("554 5.4.0 Overlong line in RESULTS file"));
    e.assert_log("QID1: Overlong line in RESULTS file - 9003 chars (max 8191)");

    let next = async |mta: &mut MtaClient| {
        assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
        assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
        assert_eq!(mta.eoh().await.kind, CONTINUE);
        mta.eom().await
    };
    // Bounce: modifications skipped, quarantine still applied.
    let (mods, v) = next(&mut mta).await;
    assert_eq!(
        mods,
        vec![Packet {
            kind: b'q',
            data: b"reason here\0".to_vec()
        }]
    );
    assert_eq!(v, Packet::reply("550 5.7.1 go away, 100%%"));
    // Tempfail without text gets the default text.
    let (_, v) = next(&mut mta).await;
    assert_eq!(v, Packet::reply("451 4.7.1 Please try again later"));
    let (_, v) = next(&mut mta).await;
    assert_eq!(v.kind, b'd');
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_disconnect_clean_up() {
    let e = start(FREE_REPLY, &[], &[]);
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    assert_eq!(e.scratch.leftover_dirs().len(), 1);
    mta.send(b'A', b"").await;
    e.wait_clean().await;
    // Connection lost in the middle of a body.
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    drop(mta);
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_that_session() {
    let e = start(FREE_REPLY, &[], &[]);
    let mut bad = e.milter.connect().await;
    bad.negotiate().await;
    bad.send(b'Z', b"junk").await;
    assert!(
        bad.recv().await.is_none(),
        "unknown command closes the session"
    );
    e.assert_log("unknown milter command 0x5a; connection closed");
    // A length of 0 has no command byte: closed, not read as the next packet.
    let mut bad = e.milter.connect().await;
    bad.negotiate().await;
    bad.send_raw(&[0, 0, 0, 0, 0, 0, 0, 1, b'Q']).await;
    assert!(bad.recv().await.is_none(), "length 0 closes the session");
    e.assert_log("milter packet of length 0 (it has no command byte); connection closed");
    let mut bad = e.milter.connect().await;
    bad.negotiate().await;
    // Connect info with an unparseable address.
    bad.send(b'C', b"host\x004\x00\x19not-an-ip\x00").await;
    assert!(bad.recv().await.is_none());
    // A length prefix far too large.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::UnixStream::connect(&e.milter.socket)
        .await
        .unwrap();
    raw.write_all(&[0x7f, 0xff, 0xff, 0xff, b'O'])
        .await
        .unwrap();
    assert!(MtaClient::new(raw).recv().await.is_none());
    // The milter is still serving.
    let mut good = e.milter.connect().await;
    good.negotiate().await;
    assert_eq!(good.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
    assert_eq!(good.helo("x").await.kind, CONTINUE);
    // A body chunk before MAIL is skipped without a reply (as libmilter
    // does), logged once, and the session goes on.
    good.send(b'B', b"stray body\r\n").await;
    good.send(b'B', b"another\r\n").await;
    assert_eq!(good.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    e.assert_log(
        "milter command 'B' (body chunk) outside a mail transaction (no MAIL before it); ignored",
    );
    assert_eq!(
        e.milter.log().matches("outside a mail transaction").count(),
        1,
        "logged once per connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_does_not_block_other_sessions() {
    let e = start(FREE_REPLY, &["-s"], &[]);
    e.mux.push(Step::new("senderok", "ok 0 slow 550 5.7.1 2"));
    let mut slow = e.milter.connect().await;
    slow.negotiate().await;
    slow.connect_inet("h", "192.0.2.10", 1).await;
    slow.send(b'M', &z(&[b"<a@b>"])).await;
    // While the first session waits out its delay, a second one is served.
    let mut quick = e.milter.connect().await;
    quick.negotiate().await;
    assert_eq!(
        quick.connect_inet("h2", "192.0.2.11", 2).await.kind,
        CONTINUE
    );
    assert_eq!(quick.helo("x").await.kind, CONTINUE);
    let r = slow.recv().await.unwrap();
    assert_eq!(r, Packet::reply("550 5.7.1 slow"));
    e.wait_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_write_failure_tempfails() {
    let e = start(FREE_REPLY, &["-C"], &[("MM_DEBUG_ALLOCATION", "")]);
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    // The working directory vanishes under the milter (disk trouble, an
    // over-eager cleaner): the next write fails and the message is refused.
    let dirs = e.scratch.leftover_dirs();
    std::fs::remove_dir_all(e.scratch.spool.join(&dirs[0])).unwrap();
    let r = mta.rcpt(&[b"<c@d>"]).await;
    assert_eq!(r.kind, TEMPFAIL, "{r}");
    e.assert_log("NOQUEUE: Could not open ");
    e.assert_log("/COMMANDS: No such file or directory");
    // Nothing to clean up, and the session goes on.
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    drop(mta);
    e.wait_clean().await;
    e.assert_log("Allocating private data: ctx=0x");
    e.assert_log("Deallocating private data: ctx=0x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_nc_starts_a_fresh_connection_state() {
    let e = start(FREE_REPLY, &["-r"], &[]);
    e.mux.push(Step::new("relayok", "ok 1"));
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    assert_eq!(
        mta.connect_inet("first.example", "192.0.2.10", 1)
            .await
            .kind,
        CONTINUE
    );
    assert_eq!(mta.helo("one").await.kind, CONTINUE);
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@c>"]).await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    e.mux
        .push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    assert_eq!(mta.eom().await.1.kind, CONTINUE);
    // SMFIC_QUIT_NC: the MTA reuses the milter connection for a new client.
    mta.send(b'K', b"").await;
    e.wait_clean().await;
    e.mux.push(Step::new("relayok", "ok 1"));
    assert_eq!(
        mta.connect_inet("second.example", "192.0.2.11", 2)
            .await
            .kind,
        CONTINUE
    );
    assert_eq!(mta.mail(&[b"<c@d>"]).await.kind, CONTINUE);
    let lines: Vec<String> = e
        .mux
        .log
        .lock()
        .unwrap()
        .lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(
        lines.contains(&"relayok 192.0.2.11 second.example 2 192.0.2.1 0 NOQUEUE\n".to_string()),
        "{lines:?}"
    );
    // The second client's message knows nothing of the first one's HELO.
    let dirs = e.scratch.leftover_dirs();
    assert_eq!(dirs.len(), 1);
    let cmds = std::fs::read_to_string(e.scratch.spool.join(&dirs[0]).join("COMMANDS")).unwrap();
    assert!(cmds.ends_with("Hsecond.example\nI192.0.2.11\n"), "{cmds}");
}

/// Many simultaneous MTA connections are served by a handful of threads
/// (no thread per SMTP connection), and every message gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions_few_threads() {
    let e = start(FREE_REPLY, &[], &[]);
    const N: usize = 100;
    for _ in 0..N {
        e.mux
            .push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    }
    // Open every session and leave each in the middle of a message.
    let mut sessions = Vec::new();
    for n in 0..N {
        let mut mta = e.milter.connect().await;
        mta.negotiate().await;
        let host = format!("h{n}.example");
        assert_eq!(
            mta.connect_inet(&host, "192.0.2.10", 1000 + n as u16)
                .await
                .kind,
            CONTINUE
        );
        assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
        sessions.push(mta);
    }
    assert_eq!(e.scratch.leftover_dirs().len(), N);
    let status = std::fs::read_to_string(format!("/proc/{}/status", e.milter.child.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(threads <= 16, "{threads} threads for {N} open sessions");
    // Finish them all concurrently.
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut mta| {
            tokio::spawn(async move {
                assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
                assert_eq!(mta.header(b"Subject", b"x").await.kind, CONTINUE);
                assert_eq!(mta.eoh().await.kind, CONTINUE);
                assert_eq!(mta.body(b"hello\r\n").await.kind, CONTINUE);
                let (mods, v) = mta.eom().await;
                assert_eq!(v.kind, CONTINUE);
                assert_eq!(mods.len(), 1, "X-Scanned-By");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    e.wait_clean().await;
    assert_eq!(e.mux.remaining(), 0);
}

/// protocol/milter.md §10.9: with -k the directory of a failed scan is kept on
/// every failure path, including an oversized RESULTS and a missing NEWBODY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_failed_on_oversized_results_and_missing_newbody() {
    let e = start(FREE_REPLY, &["-k"], &[]);
    let mut big = b"HX-A b\n".repeat(10000);
    big.extend_from_slice(b"F\n");
    e.mux.push(scan_with(&[("RESULTS", &big)]));
    e.mux.push(scan_with(&[("RESULTS", b"C\nF\n")]));
    let mut mta = e.milter.connect().await;
    message_until_eom(&mut mta).await;
    let (mods, v) = mta.eom().await;
    assert!(mods.is_empty());
    assert_eq!(v.kind, TEMPFAIL);
    e.assert_log("QID1: RESULTS file is unreasonably large - 70002 byes; max is 65535 bytes");
    assert_eq!(mta.mail(&[b"<a@example.net>"]).await.kind, CONTINUE);
    assert_eq!(mta.rcpt(&[b"<b@example.com>"]).await.kind, CONTINUE);
    assert_eq!(mta.eoh().await.kind, CONTINUE);
    let (mods, v) = mta.eom().await;
    assert!(mods.is_empty());
    assert_eq!(v.kind, TEMPFAIL);
    e.assert_log("/NEWBODY for reading: No such file or directory");
    // Both directories are still there for the admin to inspect.
    assert_eq!(
        e.scratch.leftover_dirs().len(),
        2,
        "{:?}",
        e.scratch.leftover_dirs()
    );
}

/// protocol/SECURITY.md §1: a worker that leaves a FIFO named RESULTS or
/// NEWBODY gets its message tempfailed at once, and the open must not hold
/// a runtime thread. There are more such messages in flight than the
/// milter has runtime threads (2-8), so a blocking open would leave none
/// to serve the ordinary session started meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_results_or_newbody_tempfails_and_blocks_nothing() {
    let e = start(FREE_REPLY, &[], &[]);
    const HOSTILE: usize = 9;
    for n in 0..HOSTILE {
        e.mux.push(if n % 2 == 0 {
            Step::new("scan", "ok").with_fifo("RESULTS")
        } else {
            scan_with(&[("RESULTS", b"C\nF\n")]).with_fifo("NEWBODY")
        });
    }
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        let mut mta = e.milter.connect().await;
        message_until_eom(&mut mta).await;
        mta.send(b'E', b"").await;
        hostile.push(mta);
    }
    // Every hostile scan has been answered before the ordinary one is scripted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.mux.remaining() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "scans not all requested"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.mux.push(scan_with(&[("RESULTS", b"F\n")]));
    let mut ordinary = e.milter.connect().await;
    message_until_eom(&mut ordinary).await;
    let (_, v) = ordinary.eom().await;
    assert_eq!(v.kind, CONTINUE, "{v}");
    for mut mta in hostile {
        let v = loop {
            let p = mta.recv().await.expect("a verdict");
            if p.kind != b'p' {
                break p;
            }
        };
        assert_eq!(v.kind, TEMPFAIL, "{v}");
    }
    e.assert_log("QID1: RESULTS file refused: not a regular file but a FIFO: Tempfailing");
    e.assert_log("/NEWBODY for reading: not a regular file but a FIFO");
    e.wait_clean().await;
}

/// protocol/SECURITY.md §3: the `i` macro names the working directory only
/// when it is safe as one path component; otherwise the generated id is
/// used and the refusal logged. (The traversal needs an existing `mm-X`,
/// which an earlier message with queue id `X` would have left.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_id_cannot_escape_the_spool() {
    let e = start(FREE_REPLY, &[], &[]);
    let outside = e.scratch.path().join("w");
    milter_support::common::create_open_dir(&outside);
    milter_support::common::create_open_dir(&e.scratch.spool.join("mm-X"));
    let mut mta = e.milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    for (n, qid) in ["X/../../w/escaped", ".."].into_iter().enumerate() {
        mta.macros(b'M', &[("i", qid)]).await;
        let r = mta.mail(&[b"<a@b>"]).await;
        assert_eq!(r.kind, CONTINUE, "{r}");
        assert!(!outside.join("escaped").exists(), "wrote outside the spool");
        e.assert_log(&format!(
            "{qid}: queue id \"{qid}\" {}: working directory named mm-",
            [
                "has characters other than A-Z a-z 0-9 . _ -",
                "is empty or only dots"
            ][n]
        ));
        let mut dirs = e.scratch.leftover_dirs();
        dirs.retain(|d| d != "mm-X");
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert_eq!(dirs[0].len(), "mm-".len() + 8, "a generated id: {dirs:?}");
    }
    // A safe queue id still names the directory.
    mta.macros(b'M', &[("i", "4AB1cD.01_2-3")]).await;
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, CONTINUE);
    assert!(e.scratch.spool.join("mm-4AB1cD.01_2-3").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_over_the_limit_close_the_session() {
    let e = start(FREE_REPLY, &["--max-packet", "70000"], &[]);
    let mut big = e.milter.connect().await;
    big.negotiate().await;
    assert_eq!(big.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
    // A header packet of 100 000 bytes, over the 70 000 allowed.
    let mut header = b"X-Big\0".to_vec();
    header.extend(std::iter::repeat_n(b'a', 100_000 - 7));
    header.push(0);
    big.send(b'L', &header).await;
    assert!(big.recv().await.is_none(), "the session is closed");
    e.assert_log("milter packet of 100001 bytes is over the limit of 70000 (--max-packet)");
    // One of 60 000 bytes is fine, and other sessions go on.
    let mut ok = e.milter.connect().await;
    ok.negotiate().await;
    assert_eq!(ok.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
    assert_eq!(ok.helo(&"x".repeat(60_000)).await.kind, CONTINUE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_their_turn() {
    let e = start(FREE_REPLY, &["--max-connections", "2"], &[]);
    let mut a = e.milter.connect().await;
    a.negotiate().await;
    let mut b = e.milter.connect().await;
    b.negotiate().await;
    e.assert_log("2 MTA connections are open, the --max-connections limit");
    // A third connects (the kernel queues it) but is not served...
    let mut c = e.milter.connect().await;
    let served = tokio::time::timeout(Duration::from_millis(500), c.negotiate()).await;
    assert!(served.is_err(), "a third session must wait");
    // ...until one of the two closes.
    drop(a);
    drop(c);
    let mut d = e.milter.connect().await;
    tokio::time::timeout(Duration::from_secs(30), d.negotiate())
        .await
        .expect("served once a slot is free");
    assert_eq!(b.connect_inet("h", "192.0.2.10", 1).await.kind, CONTINUE);
}
