//! Exact bytes of the working-directory files for tricky input, with
//! hand-written expectations (protocol/milter.md §3.6, §3.8, §4.4–§4.7): folded
//! headers, 8-bit bytes, bare CRs split across body chunks, NULs, missing
//! macros, many recipients with ESMTP arguments, and the queue id of a second
//! message on the same connection.

mod milter_support;

use milter_support::*;

fn start(flags: &[&str]) -> (Scratch, FakeMux, Milter) {
    let scratch = Scratch::new();
    let mux_path = scratch.path().join("mx.sock");
    let mux = FakeMux::start(&mux_path, vec![], FREE_REPLY, &scratch.spool_str());
    let milter = Milter::start(scratch.path(), &mux_path, &scratch.spool, flags, &[]);
    (scratch, mux, milter)
}

fn scanned(mux: &FakeMux, n: usize) -> std::collections::HashMap<String, Vec<u8>> {
    mux.log.lock().unwrap().scans[n].1.iter().cloned().collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Replaces the 8-character generated id in `i` lines.
fn mask_id(commands: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    for line in commands.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'i') && line.len() == 10 {
            out.extend_from_slice(b"i<ID>\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_headers_and_body_without_macros() {
    tricky(&[]).await;
}

/// -C reopens the files in every callback; the bytes must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_input_with_conserved_descriptors() {
    tricky(&["-C"]).await;
}

async fn tricky(flags: &[&str]) {
    let (scratch, mux, milter) = start(flags);
    mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    let mut mta = milter.connect().await;
    mta.negotiate().await;
    // No macros at all; client on IPv6-mapped IPv4.
    let mut c = b"[198.51.100.9]\x006".to_vec();
    c.extend_from_slice(&2525u16.to_be_bytes());
    c.extend_from_slice(b"::ffff:198.51.100.9\0");
    assert_eq!(mta.call(b'C', &c).await.kind, b'c');
    assert_eq!(mta.helo("").await.kind, b'c');
    assert_eq!(mta.mail(&[b"<>", b"BODY=8BITMIME"]).await.kind, b'c');
    for n in 1..=3 {
        let r = format!("<u{n}@example.com>");
        assert_eq!(
            mta.rcpt(&[r.as_bytes(), b"NOTIFY=NEVER", b"ORCPT=rfc822;u%2B1@x"])
                .await
                .kind,
            b'c'
        );
    }
    for (n, v) in [
        (&b"Subject"[..], &b"caf\xc3\xa9 \x01ctl"[..]),
        (b"To", b"a@example.com,\n\tb@example.com"),
        (b"X-Bare-CR", b"one\rtwo"),
        (b"X-CRLF", b"one\r\n two"),
        (b"Content-Type", b"text/plain"),
        (b"content-type", b"text/html"),
        (b"Message-ID", b"\n <m@x>"),
        (b"X-Empty", b""),
    ] {
        assert_eq!(mta.header(n, v).await.kind, b'c');
    }
    assert_eq!(mta.eoh().await.kind, b'c');
    for chunk in [
        &b"line1\r\nline2\r"[..],
        b"\nbare\rcr\r",
        b"x\0nul\r\n",
        b"end\r",
    ] {
        assert_eq!(mta.body(chunk).await.kind, b'c');
    }
    let (mods, v) = mta.eom().await;
    assert_eq!(v.kind, b'c');
    // X-Scanned-By, then the second Content-Type is deleted.
    assert_eq!(
        mods,
        vec![
            Packet {
                kind: b'h',
                data: b"X-Scanned-By\0mailmunge 3.09 on 192.0.2.1\0".to_vec()
            },
            Packet {
                kind: b'm',
                data: [&2u32.to_be_bytes()[..], b"Content-Type\0\0"].concat()
            },
        ]
    );
    let f = scanned(&mux, 0);
    let dir = &mux.log.lock().unwrap().scans[0].0.clone();
    assert_eq!(
        show(&mask_id(&f["COMMANDS"])),
        show(
            b"i<ID>\nS<>\nsBODY=8BITMIME\n=client_port 2525\nH[198.51.100.9]\nI198.51.100.9\nE\n\
R<u1@example.com> ? ? ?\nrNOTIFY=NEVER\nrORCPT=rfc822;u%252B1@x\n\
R<u2@example.com> ? ? ?\nrNOTIFY=NEVER\nrORCPT=rfc822;u%252B1@x\n\
R<u3@example.com> ? ? ?\nrNOTIFY=NEVER\nrORCPT=rfc822;u%252B1@x\n\
Ucaf%C3%A9%20%01ctl\n!\nX%20<m@x>\n?\nF\n"
        )
    );
    let headers = b"Subject: caf\xc3\xa9 \x01ctl\nTo: a@example.com,\tb@example.com\nX-Bare-CR: onetwo\nX-CRLF: one two\nContent-Type: text/plain\nMessage-ID:  <m@x>\nX-Empty: \n";
    assert_eq!(show(&f["HEADERS"]), show(headers));
    let pristine = b"Subject: caf\xc3\xa9 \x01ctl\nTo: a@example.com,\n\tb@example.com\nX-Bare-CR: one two\nX-CRLF: one\r\n two\nContent-Type: text/plain\nMessage-ID: \n <m@x>\nX-Empty: \n";
    assert_eq!(show(&f["PRISTINE_HEADERS"]), show(pristine));
    let mut input = pristine.to_vec();
    input.extend_from_slice(b"\nline1\nline2\nbare\rcr\rx\0nul\nend");
    assert_eq!(f["INPUTMSG"], input, "{}", show(&f["INPUTMSG"]));
    assert!(dir.contains("/mm-"));
    drop(milter);
    assert!(scratch.leftover_dirs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_bare_cr_with_c() {
    let (_scratch, mux, milter) = start(&["-c"]);
    mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    let mut mta = milter.connect().await;
    mta.negotiate_through_rcpt().await;
    mta.eoh().await;
    mta.body(b"a\rb\r").await;
    mta.body(b"c\r\n").await;
    mta.eom().await;
    let f = scanned(&mux, 0);
    assert_eq!(f["INPUTMSG"], b"\nabc\n");
    assert!(f["COMMANDS"].ends_with(b"?\nF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_id_does_not_leak_into_the_next_message() {
    let (_scratch, mux, milter) = start(&["-s", "-t"]);
    for _ in 0..2 {
        mux.push(Step::new("senderok", "ok 1 ok 250 2.1.0 0"));
        mux.push(Step::new("recipok", "ok 1 ok 250 2.1.0 0"));
        mux.push(Step::new("recipok", "ok 1 ok 250 2.1.0 0"));
        mux.push(Step::new("scan", "ok").with_file("RESULTS", b"F\n"));
    }
    let mut mta = milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    for qid in ["AAA1", "BBB2"] {
        mta.macros(b'M', &[("{mail_addr}", "a@b")]).await;
        assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, b'c');
        mta.macros(b'R', &[("{rcpt_mailer}", "smtp")]).await;
        assert_eq!(mta.rcpt(&[b"<c@d>"]).await.kind, b'c');
        // Postfix defines i from the second recipient on.
        mta.macros(b'R', &[("i", qid), ("{rcpt_mailer}", "smtp")])
            .await;
        assert_eq!(mta.rcpt(&[b"<e@f>"]).await.kind, b'c');
        mta.macros(b'N', &[("i", qid)]).await;
        assert_eq!(mta.eoh().await.kind, b'c');
        mta.macros(b'E', &[("i", qid)]).await;
        assert_eq!(mta.eom().await.1.kind, b'c');
    }
    let log = mux.log.lock().unwrap();
    let lines: Vec<String> = log
        .lines
        .iter()
        .map(|l| show(l))
        .filter(|l| !l.starts_with("free"))
        .collect();
    assert_eq!(lines.len(), 8);
    // The second message's sender check and first recipient check carry NOQUEUE
    // and its directory is named after a fresh id, not the first qid.
    assert!(
        lines[4].starts_with("senderok <a@b> ") && lines[4].contains(" NOQUEUE"),
        "{}",
        lines[4]
    );
    assert!(!lines[4].contains("mm-AAA1"), "{}", lines[4]);
    assert!(lines[5].contains(" NOQUEUE smtp ? ?"), "{}", lines[5]);
    assert!(lines[6].contains(" BBB2 smtp ? ?"), "{}", lines[6]);
    assert!(lines[7].starts_with("scan BBB2 "), "{}", lines[7]);
    let cmds = show(
        &log.scans[1]
            .1
            .iter()
            .find(|(n, _)| n == "COMMANDS")
            .unwrap()
            .1,
    );
    assert!(!cmds.contains("AAA1"), "{cmds}");
    assert!(
        cmds.contains("R<c@d> smtp ? ?\nQBBB2\n=i BBB2\nR<e@f> smtp ? ?\n"),
        "{cmds}"
    );
}

/// protocol/milter.md §3.11: a refused recipient leaves the transaction (and
/// its directory) alone and gets no R line; accept/discard at RCPT end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_and_helo_verdicts() {
    let (scratch, mux, milter) = start(&["-H", "-t"]);
    mux.push(Step::new("helook", "ok -1 busy%20now 421 4.3.2 0"));
    mux.push(Step::new("helook", "ok 1 ok 250 2.1.0 0"));
    mux.push(Step::new("recipok", "ok 0 no%20such%20user 550 5.1.1 0"));
    mux.push(Step::new("recipok", "ok -1"));
    mux.push(Step::new("recipok", "ok 1 ok 250 2.1.0 0"));
    mux.push(Step::new("recipok", "ok 2 fine 250 2.1.0 0"));
    let mut mta = milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    assert_eq!(mta.helo("first").await, Packet::reply("421 4.3.2 busy now"));
    assert_eq!(mta.helo("second").await.kind, b'c');
    assert_eq!(mta.mail(&[b"<a@b>"]).await.kind, b'c');
    assert_eq!(
        mta.rcpt(&[b"<nobody@x>"]).await,
        Packet::reply("550 5.1.1 no such user")
    );
    // A bare "ok -1" carries no text: the MTA's own tempfail text is used.
    assert_eq!(
        mta.rcpt(&[b"<later@x>"]).await,
        Packet {
            kind: b't',
            data: vec![]
        }
    );
    assert_eq!(mta.rcpt(&[b"<ok@x>"]).await.kind, b'c');
    assert_eq!(scratch.leftover_dirs().len(), 1);
    let lines: Vec<String> = mux
        .log
        .lock()
        .unwrap()
        .lines
        .iter()
        .map(|l| show(l))
        .filter(|l| l.starts_with("recipok"))
        .collect();
    // FIRSTRCPT is the first recipient checked, even though it was refused.
    assert!(
        lines[2].starts_with("recipok <ok@x> <a@b> 192.0.2.10 h <nobody@x> second "),
        "{}",
        lines[2]
    );
    // Accept-and-stop-filtering at RCPT ends the transaction and its directory.
    assert_eq!(mta.rcpt(&[b"<vip@x>"]).await.kind, b'a');
    assert!(scratch.leftover_dirs().is_empty());
    // COMMANDS as the worker read it for that last check: every recipient
    // let through so far is in it, the refused ones are not.
    let log = mux.log.lock().unwrap();
    assert_eq!(log.checks.len(), 4);
    let cmds = show(&log.checks[3].1[0].1);
    assert!(cmds.ends_with("Esecond\nR<ok@x> ? ? ?\n"), "{cmds}");
    assert!(
        !cmds.contains("nobody") && !cmds.contains("later"),
        "{cmds}"
    );
}

/// Codes libmilter would pass but indymilter refuses keep their text with
/// the default codes (protocol/milter.md §12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_reply_codes_fall_back_to_defaults() {
    let (_scratch, mux, milter) = start(&["-s"]);
    mux.push(Step::new("senderok", "ok 0 odd%20code 561 5.7.1 0"));
    mux.push(Step::new("senderok", "ok -1 zero%20led 451 4.07.1 0"));
    let mut mta = milter.connect().await;
    mta.negotiate().await;
    mta.connect_inet("h", "192.0.2.10", 1).await;
    assert_eq!(
        mta.mail(&[b"<a@b>"]).await,
        Packet::reply("554 5.7.1 odd code")
    );
    assert_eq!(
        mta.mail(&[b"<a@b>"]).await,
        Packet::reply("451 4.3.0 zero led")
    );
    assert!(milter
        .log()
        .contains("reply code 561 5.7.1 not accepted by the milter library; using 554 5.7.1"));
}
