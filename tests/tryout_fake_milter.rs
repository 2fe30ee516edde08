//! mm-try's MTA side against a scripted milter: negotiation flags honoured,
//! macros sent, every end-of-message action decoded and applied.

use mailmunge::tryout::{self, Modification, Transaction, Verdict};
use mailmunge::wire::sockspec::SockSpec;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// Packets as (command byte, data).
type Packets = Vec<(u8, Vec<u8>)>;

fn read_packet(s: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    let cmd = buf.remove(0);
    Some((cmd, buf))
}

fn write_packet(s: &mut UnixStream, cmd: u8, data: &[u8]) {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    s.write_all(&p).unwrap();
}

fn txn() -> Transaction {
    Transaction {
        client_ip: "192.0.2.1".into(),
        client_name: "client.example".into(),
        client_port: 4567,
        helo: "client.example".into(),
        sender: "<a@example.org>".into(),
        recipients: vec!["<b@example.com>".into(), "<bad@example.com>".into()],
        message: b"From: a@example.org\nSubject: hi\nX-Old: 1\n\nbody line\n".to_vec(),
        hostname: "mx.example".into(),
        queue_id: "QID1".into(),
    }
}

/// Runs `script` as the milter for one connection; returns everything the
/// client sent, as (command, data) packets.
fn with_milter(
    script: impl FnOnce(&mut UnixStream, &mut Packets) + Send + 'static,
    t: &Transaction,
) -> (Result<tryout::Outcome, tryout::TryError>, Packets) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.sock");
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut seen = Vec::new();
        script(&mut s, &mut seen);
        // Drain whatever else the client sends until it closes.
        while let Some(p) = read_packet(&mut s) {
            seen.push(p);
        }
        seen
    });
    let out = tryout::run(
        &SockSpec::Unix(path.clone()),
        "test",
        t,
        Duration::from_secs(10),
    );
    let seen = h.join().unwrap();
    (out, seen)
}

/// Reads packets until one with command `want`, answering each stage
/// command (not macros) with `c`.
fn continue_until(s: &mut UnixStream, seen: &mut Packets, want: u8, answer_others: bool) {
    loop {
        let p = read_packet(s).expect("client closed early");
        let cmd = p.0;
        seen.push(p);
        if cmd == want {
            return;
        }
        if answer_others && cmd != b'D' {
            write_packet(s, b'c', b"");
        }
    }
}

#[test]
fn end_of_message_actions_are_decoded_and_applied() {
    let (out, seen) = with_milter(
        |s, seen| {
            let (cmd, data) = read_packet(s).unwrap();
            assert_eq!(cmd, b'O');
            assert_eq!(&data[..4], &6u32.to_be_bytes());
            // Want everything, replies for all stages, no header replies.
            let mut reply = Vec::new();
            for v in [6u32, 0x1ff, 0x80] {
                reply.extend_from_slice(&v.to_be_bytes());
            }
            write_packet(s, b'O', &reply);
            // connect, helo, mail: continue; first rcpt ok, second rejected.
            for want in [b'C', b'H', b'M'] {
                continue_until(s, seen, want, false);
                write_packet(s, b'c', b"");
            }
            continue_until(s, seen, b'R', false);
            write_packet(s, b'c', b"");
            continue_until(s, seen, b'R', false);
            write_packet(s, b'y', b"550 5.1.1 No such user\0");
            continue_until(s, seen, b'T', false);
            write_packet(s, b'c', b"");
            // Headers get no reply (NR_HDR); eoh and body do.
            continue_until(s, seen, b'N', false);
            write_packet(s, b'c', b"");
            continue_until(s, seen, b'B', false);
            write_packet(s, b'c', b"");
            continue_until(s, seen, b'E', false);
            write_packet(s, b'h', b"X-Added\0yes\0");
            write_packet(
                s,
                b'i',
                &[&0u32.to_be_bytes()[..], b"X-First\0top\0"].concat(),
            );
            write_packet(s, b'm', &[&1u32.to_be_bytes()[..], b"X-Old\0\0"].concat());
            write_packet(
                s,
                b'm',
                &[&1u32.to_be_bytes()[..], b"Subject\0changed\0"].concat(),
            );
            write_packet(s, b'e', b"<new@example.org>\0SIZE=10\0");
            write_packet(s, b'2', b"<c@example.com>\0NOTIFY=NEVER\0");
            write_packet(s, b'-', b"<b@example.com>\0");
            write_packet(s, b'q', b"held for review\0");
            write_packet(s, b'p', b"");
            write_packet(s, b'b', b"new ");
            write_packet(s, b'b', b"body\r\n");
            write_packet(s, b'a', b"");
        },
        &txn(),
    );
    let out = out.unwrap();
    let verdicts: Vec<(&str, &Verdict)> =
        out.stages.iter().map(|s| (s.stage, &s.verdict)).collect();
    assert_eq!(verdicts[0], ("connect", &Verdict::Continue));
    assert_eq!(
        verdicts[4],
        (
            "rcpt",
            &Verdict::Reject {
                reply: "550 5.1.1 No such user".into()
            }
        )
    );
    assert!(out
        .stages
        .iter()
        .filter(|s| s.stage == "header")
        .all(|s| s.verdict == Verdict::NotAsked));
    assert_eq!(out.final_verdict, Verdict::Accept);
    assert_eq!(out.smtp_reply, "250 2.0.0 Ok");
    assert_eq!(
        out.modifications,
        vec![
            Modification::AddHeader {
                name: "X-Added".into(),
                value: "yes".into()
            },
            Modification::InsertHeader {
                index: 0,
                name: "X-First".into(),
                value: "top".into()
            },
            Modification::ChangeHeader {
                index: 1,
                name: "X-Old".into(),
                value: "".into()
            },
            Modification::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: "changed".into()
            },
            Modification::ChangeSender {
                sender: "<new@example.org>".into(),
                args: Some("SIZE=10".into())
            },
            Modification::AddRecipient {
                recipient: "<c@example.com>".into(),
                args: Some("NOTIFY=NEVER".into())
            },
            Modification::DeleteRecipient {
                recipient: "<b@example.com>".into()
            },
            Modification::Quarantine {
                reason: "held for review".into()
            },
            Modification::ReplaceBody { length: 10 },
        ]
    );
    assert_eq!(out.sender, "<new@example.org>");
    assert_eq!(out.recipients, ["<c@example.com>"]);
    assert_eq!(
        String::from_utf8(out.result.clone()).unwrap(),
        "X-First: top\nFrom: a@example.org\nSubject: changed\nX-Added: yes\n\nnew body\n"
    );
    assert!(
        out.diff.contains("-X-Old: 1\n")
            && out.diff.contains("+X-First: top\n")
            && out.diff.contains("-body line\n+new body\n"),
        "{}",
        out.diff
    );

    // What the milter saw: macros before connect (with {client_addr}) and
    // MAIL (with the queue id), header values without the leading space,
    // the body with CRLF, and no rejected recipient's data.
    let macro_for = |stage: u8| {
        seen.iter()
            .find(|(c, d)| *c == b'D' && d[0] == stage)
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    let conn = macro_for(b'C');
    assert!(conn
        .windows(b"{client_addr}\x00192.0.2.1\x00".len())
        .any(|w| w == b"{client_addr}\x00192.0.2.1\x00"));
    assert!(macro_for(b'M')
        .windows(b"i\x00QID1\x00".len())
        .any(|w| w == b"i\x00QID1\x00"));
    let connect = &seen.iter().find(|(c, _)| *c == b'C').unwrap().1;
    assert_eq!(
        connect,
        &[
            &b"client.example\x004"[..],
            &4567u16.to_be_bytes(),
            b"192.0.2.1\x00"
        ]
        .concat()
    );
    let headers: Vec<&Vec<u8>> = seen
        .iter()
        .filter(|(c, _)| *c == b'L')
        .map(|(_, d)| d)
        .collect();
    assert_eq!(headers[1], &b"Subject\x00hi\x00".to_vec());
    let body = &seen.iter().find(|(c, _)| *c == b'B').unwrap().1;
    assert_eq!(body, b"body line\r\n");
}

#[test]
fn skipped_stages_are_not_sent_and_early_rejects_end_the_transaction() {
    let (out, seen) = with_milter(
        |s, seen| {
            read_packet(s).unwrap();
            let mut reply = Vec::new();
            // No connect, no helo, no reply for MAIL.
            for v in [6u32, 0x1ff, 0x1 | 0x2 | 0x4000] {
                reply.extend_from_slice(&v.to_be_bytes());
            }
            write_packet(s, b'O', &reply);
            continue_until(s, seen, b'R', false);
            write_packet(s, b't', b"");
            let (cmd, _) = read_packet(s).unwrap();
            assert_eq!(cmd, b'D'); // macros for the second recipient
            read_packet(s).unwrap();
            write_packet(s, b'r', b"");
        },
        &txn(),
    );
    let out = out.unwrap();
    let stages: Vec<(&str, Verdict)> = out
        .stages
        .iter()
        .map(|s| (s.stage, s.verdict.clone()))
        .collect();
    assert_eq!(stages[0], ("connect", Verdict::NotAsked));
    assert_eq!(stages[1], ("helo", Verdict::NotAsked));
    assert_eq!(stages[2], ("mail", Verdict::NotAsked));
    assert_eq!(stages.len(), 5);
    // All recipients refused: the last refusal is the answer.
    assert_eq!(
        out.final_verdict,
        Verdict::Reject {
            reply: "550 5.7.1 Command rejected".into()
        }
    );
    assert!(
        !seen.iter().any(|(c, _)| *c == b'C' || *c == b'H'),
        "skipped stages were sent"
    );
    assert!(
        seen.iter().any(|(c, _)| *c == b'M'),
        "MAIL is still sent without reply"
    );
}

#[test]
fn a_milter_that_hangs_up_is_a_clear_error() {
    let (out, _) = with_milter(
        |s, _| {
            read_packet(s).unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
        },
        &txn(),
    );
    let e = out.unwrap_err().to_string();
    assert_eq!(e, "milter protocol error: the milter closed the connection");
}

#[test]
fn nothing_listening_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = tryout::run(
        &SockSpec::Unix(dir.path().join("none")),
        "unix:/none",
        &txn(),
        Duration::from_secs(1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("cannot connect to the milter at unix:/none: "),
        "{e}"
    );
}

/// The `mm-try` program's command line (protocol/cli.md §3, §4): help and
/// version on stdout with status 0; a usage error is status 1, not 2
/// (which means "rejected"); options after the message file still count.
#[test]
fn command_line_help_version_and_usage_errors() {
    let mm_try = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mm-try"))
            .args(args)
            .env_remove("POSIXLY_CORRECT")
            .output()
            .unwrap()
    };
    let o = mm_try(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.starts_with("Usage: mm-try [options] [MESSAGE]\n"),
        "{help}"
    );
    assert!(help.contains("  --env-file FILE        -- "), "{help}");
    let o = mm_try(&["-V"]);
    assert_eq!(
        (o.status.code(), &o.stdout[..]),
        (Some(0), &b"mm-try 3.09\n"[..])
    );
    let o = mm_try(&["--to"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "mm-try: option '--to' requires an argument\n\
         Usage: mm-try [options] [MESSAGE]\n\
         Try 'mm-try --help' for more information.\n"
    );
    // The message, then the options: the socket given after it is the one
    // tried (nothing listens there).
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(
        &msg,
        "From: a@example.com\r\nTo: b@example.com\r\n\r\nhi\r\n",
    )
    .unwrap();
    let sock = dir.path().join("none.sock");
    let o = mm_try(&[
        msg.to_str().unwrap(),
        "--env-file=-/nonexistent",
        "-m",
        sock.to_str().unwrap(),
        "--timeout",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "mm-try: cannot connect to the milter at {}: ",
            sock.display()
        )),
        "{err}"
    );
}
