//! Multiplexor integration tests: built-ins, forwarding, worker start-up
//! environment and the fault cases that need no long timeout
//! (protocol/multiplexor.md §4–§7, protocol/worker-protocol.md §1.1).

mod mux_support;
use mux_support::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn builtins_exact_bytes() {
    let mx = Mx::start(&["-x", "2"]);
    assert_eq!(mx.req(b"version\n"), b"3.09");
    // The first worker is started before the socket is ready.
    let st = mx.wait_for("status", |r| r.starts_with("IS "));
    let f: Vec<&str> = st.trim_end().split(' ').collect();
    assert_eq!(&f[..5], ["IS", "0", "1", "0", "0"], "{st:?}");
    assert!(st.ends_with('\n'));
    assert_eq!(mx.req(b"free\n"), b"2\n");
    assert_eq!(mx.req(b"free\r\n"), b"2\n");
    assert_eq!(mx.req(b"msgs\n"), b"0\n");
    assert_eq!(
        mx.req(b"tick\n"),
        b"error: External agents may not invoke 'tick'\n"
    );
    assert_eq!(
        mx.req(b"tick 0\n"),
        b"error: External agents may not invoke 'tick'\n"
    );
    assert_eq!(
        mx.req(b"foo_no_such_command\n"),
        b"error: Unknown command\n"
    );
    let help = mx.req_s("help");
    assert!(help.starts_with("help             -- List available multiplexor commands\n"));
    assert!(help.ends_with("(Analogous hload commands provide hourly information)\n"));
    assert_eq!(
        mx.req(b"workerinfo 7\n"),
        b"error: Worker number out of range\n"
    );
    let wi = mx.req_s("workerinfo 0");
    let lines: Vec<&str> = wi.lines().collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0], "Worker 0");
    assert_eq!(lines[1], "State Idle");
    assert!(lines[2].starts_with("PID ") && lines[2] != "PID -1");
    assert_eq!(lines[8], "StatusTag ");
    assert_eq!(
        mx.req(b"load1 5\n"),
        b"error: Invalid 'back' amount (must be 10-600)\n"
    );
    assert_eq!(mx.req_s("histo"), "   1 0\n   2 0\n");
    let w = mx.req_s("workers");
    assert!(w.starts_with("0 I ") && w.contains("\n1 S ago="), "{w:?}");
    assert_eq!(mx.req(b"busyworkers\n"), b"");
}

#[test]
fn forwarding_and_worker_environment() {
    let mx = Mx::start(&["-x", "2"]);
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert_eq!(
        mx.req(b"PING extra\n"),
        b"ok 0 Unknown%20command 554 5.7.1 0\n"
    );
    assert_eq!(mx.req(b"echo a%20b  c\n"), b"a%20b  c\n");
    assert_eq!(mx.req_s("argv"), "-server\n");
    assert_eq!(mx.req_s("cwd"), format!("{}\n", mx.spool.path.display()));
    assert_eq!(mx.req_s("umask"), "0077\n");
    assert_eq!(mx.req_s("sigpipe"), "IGNORE\n");
    assert_eq!(mx.req_s("fds"), "0,1,2\n");
    // The environment is passed unchanged.
    assert_eq!(mx.req_s("env CARGO_PKG_NAME"), "mailmunge\n");
    // A scan counts as a message.
    assert_eq!(mx.req(b"scan QID /tmp\n"), b"ok\n");
    assert_eq!(mx.req(b"msgs\n"), b"1\n");
    let w = mx.req_s("workers");
    assert!(
        w.starts_with("0 I ") && w.contains(" last=scan ago="),
        "{w:?}"
    );
    let l = mx.req_s("load");
    assert!(l.starts_with("1 1 1 1 1.000000 "), "{l}");
    assert_eq!(l.split(' ').count(), 29);
    // Every dispatch so far found exactly one busy worker.
    assert_eq!(mx.req_s("histo"), "   1 10\n   2 0\n");
}

#[test]
fn status_pipe_and_group_umask() {
    let mx = Mx::start(&["-x", "2", "-Z", "-G"]);
    assert_eq!(mx.req_s("argv"), "-serveru\n");
    assert_eq!(mx.req_s("fds"), "0,1,2,3\n");
    assert_eq!(mx.req_s("umask"), "0027\n");
    let mode = std::fs::metadata(&mx.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o770);
    // A tag written on fd 3 shows while the worker is busy.
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"tag 1:%20hello%20there 3\n"));
    let w = mx.wait_for("busyworkers", |r| r.contains("(1: hello there)"));
    assert!(w.starts_with("0 B "), "{w:?}");
    let wi = mx.req_s("workerinfo 0");
    assert!(
        wi.contains("\nState Busy\n") && wi.ends_with("StatusTag 1: hello there\n"),
        "{wi}"
    );
    assert_eq!(t.join().unwrap(), b"tagged\n");
}

#[test]
fn command_length_limits() {
    let mx = Mx::start(&[]);
    let mut ok = b"echo ".to_vec();
    ok.resize(4094, b'a');
    let mut line = ok.clone();
    line.push(b'\n');
    let mut expect = ok[5..].to_vec();
    expect.push(b'\n');
    assert_eq!(mx.req(&line), expect);
    let mut long = ok.clone();
    long.push(b'a');
    long.push(b'\n');
    assert_eq!(mx.req(&long), b"error: Command too long\n");
    // An overlong line that goes on well past the buffer.
    let mut huge = vec![b'z'; 20000];
    huge.push(b'\n');
    assert_eq!(mx.req(&huge), b"error: Command too long\n");
    // No newline before EOF: nothing is dispatched, nothing answered.
    let mut s = std::os::unix::net::UnixStream::connect(&mx.sock).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"free").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"");
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    // Binary garbage is just an unknown command for the worker.
    assert_eq!(
        mx.req(b"\x00\xff\xfe garbage\x01\n"),
        b"ok 0 Unknown%20command 554 5.7.1 0\n"
    );
    assert_eq!(mx.req(b"free\n"), b"2\n");
}

/// Bytes that are not UTF-8, and NUL bytes, are read as upstream's C code
/// reads its request buffer (protocol/multiplexor.md §4.4).
#[test]
fn hostile_bytes_are_read_as_upstream_reads_them() {
    let mx = Mx::start(&["-x", "2"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    // An external tick never reaches a worker, whatever follows the word.
    for line in [&b"tick \xff\n"[..], b"tick \x00\n", b"tick 0\xc3\n"] {
        assert_eq!(
            mx.req(line),
            b"error: External agents may not invoke 'tick'\n",
            "{line:?}"
        );
    }
    // Numeric arguments are read up to the first byte that is not a digit.
    assert!(mx
        .req_s("workerinfo 0\u{fffd}")
        .starts_with("Worker 0\nState "));
    assert!(mx
        .req(b"workerinfo 1\xff\xfe\n")
        .starts_with(b"Worker 1\nState "));
    assert_eq!(
        mx.req(b"workerinfo \x00 1\n"),
        b"error: Invalid worker number\n"
    );
    assert_eq!(
        mx.req(b"load1 5\xff\n"),
        b"error: Invalid 'back' amount (must be 10-600)\n"
    );
    assert!(!mx.req(b"load1 30\x0099\n").starts_with(b"error"));
    // A forwarded line ends at its first NUL.
    assert_eq!(mx.req(b"echo abc\x00def ghi\n"), b"abc\n");
    assert_eq!(mx.req(b"ping\x00\xff\n"), b"PONG\n");
    // An exact command with more after a NUL is not that command (upstream
    // compares the length first); the worker gets what precedes the NUL.
    assert_eq!(
        mx.req(b"free\x00\n"),
        b"ok 0 Unknown%20command 554 5.7.1 0\n"
    );
    assert_eq!(mx.req(b"free\n"), b"2\n");
}

#[test]
fn worker_crash_mid_request_is_replaced() {
    let mx = Mx::start(&["-x", "1"]);
    let pid1 = mx.req_s("pid");
    assert_eq!(mx.req(b"die\n"), b"ERR No response from worker\n");
    // A partial line before exit is relayed as is.
    let r = mx.wait_for("halfexit", |r| r != "error: No free workers\n");
    assert_eq!(r, "half");
    let pid2 = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(pid1, pid2);
}

#[test]
fn protocol_violations_retire_the_worker() {
    let mx = Mx::start(&["-x", "1"]);
    let pid1 = mx.req_s("pid");
    // Two lines for one command: the first is the reply, the worker goes.
    assert_eq!(mx.req(b"twolines\n"), b"one\n");
    let pid2 = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(pid1, pid2);
    // An overlong reply is cut at 4096 bytes, without newline
    // (protocol/multiplexor.md §7.5).
    let r = mx.req(b"big 5000\n");
    assert_eq!(r, vec![b'x'; 4096]);
    let pid3 = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(pid2, pid3);
    // Output while idle is just as wrong.
    assert_eq!(mx.req(b"late\n"), b"first\n");
    let pid4 = mx.wait_for("pid", |r| r.trim_end().parse::<u32>().is_ok() && r != pid3);
    assert_ne!(pid3, pid4);
    let r = mx.req(b"big 4095\n");
    assert_eq!(r.len(), 4096);
    assert_eq!(r.last(), Some(&b'\n'));
}

#[test]
fn no_free_workers() {
    let mx = Mx::start(&["-x", "1"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("B "));
    assert_eq!(mx.req(b"ping\n"), b"error: No free workers\n");
    assert_eq!(
        mx.req(b"no_such_thing at all\n"),
        b"error: No free workers\n"
    );
    // Built-ins still work.
    assert_eq!(mx.req(b"free\n"), b"0\n");
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
}

#[test]
fn partial_reply_does_not_stall_others() {
    let mx = Mx::start(&["-x", "2", "-m", "2"]);
    mx.wait_for("status", |r| r.starts_with("II "));
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"partial 4\n"));
    mx.wait_for("status", |r| r.contains('B'));
    // The other worker and the built-ins answer while the first reply is
    // still half written.
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert!(mx.req_s("status").contains('B'));
    assert!(
        !t.is_finished(),
        "the partial request finished before the others were served"
    );
    assert_eq!(t.join().unwrap(), b"partial\n");
}

#[test]
fn request_limit_retires_workers() {
    let mx = Mx::start(&["-x", "1", "-r", "2"]);
    let a = mx.req_s("pid");
    let b = mx.req_s("pid");
    assert_eq!(a, b);
    let c = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(a, c);
}

#[test]
fn reread_starts_a_new_generation() {
    let mx = Mx::start(&["-x", "2"]);
    let a = mx.req_s("pid");
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    let b = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(a, b);
    // SIGINT does the same.
    mx.signal(libc::SIGINT);
    let c = mx.wait_for("pid", |r| {
        r.ends_with('\n') && !r.starts_with("error") && *r != b
    });
    assert_ne!(b, c);
}

#[test]
fn unprivileged_socket() {
    let sp = Spool::new();
    let a = sp.file("unpriv.sock").display().to_string();
    let mx = Mx::start_in(sp, &worker_path(), &["-a", &a]);
    let u = std::path::Path::new(&a);
    let mode = std::fs::metadata(u).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777);
    let smode = std::fs::metadata(&mx.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(smode, 0o700);
    let priv_err = b"error: Attempt to use privileged command on unprivileged socket\n";
    for cmd in ["ping", "reread", "scan a b", "load1", "rawload", ""] {
        assert_eq!(request(u, format!("{cmd}\n").as_bytes()), priv_err, "{cmd}");
    }
    assert_eq!(
        request(u, b"load1 5\n"),
        b"error: Invalid 'back' amount (must be 10-600)\n"
    );
    assert_eq!(
        request(u, b"foo_no_such_command\n"),
        b"error: Unknown command\n"
    );
    assert_eq!(request(u, b"free\n"), b"2\n");
    assert_eq!(request(u, b"\xff\xfe\n"), priv_err);
    assert_eq!(request(u, b"version\n"), b"3.09");
    let h = String::from_utf8(request(u, b"help\n")).unwrap();
    assert!(
        !h.contains("reread")
            && h.contains(
                "rawload1 secs    -- Display worker load in computer-readable alternate format\n"
            )
    );
}

/// protocol/multiplexor.md §4.3: at most 20 unprivileged connections may wait
/// for their request line; one more is accepted and closed at once with no
/// reply, and a place freed by an answered request can be taken again.
#[test]
fn unprivileged_socket_lets_twenty_wait() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    let sp = Spool::new();
    let a = sp.file("unpriv.sock").display().to_string();
    // A long -c keeps the silent connections waiting for the whole test.
    let _mx = Mx::start_in(sp, &worker_path(), &["-a", &a, "-c", "120"]);
    let u = std::path::Path::new(&a);
    let mut waiting: Vec<UnixStream> = (0..20)
        .map(|i| UnixStream::connect(u).unwrap_or_else(|e| panic!("connect {i}: {e}")))
        .collect();
    // Accepted after the 20 (one listener, FIFO), so it finds them all
    // waiting. The close may reach us as EOF, EPIPE or ECONNRESET.
    let mut extra = UnixStream::connect(u).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = extra.write_all(b"version\n");
    let mut got = Vec::new();
    match extra.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("21st connection: {e} (a timeout means it was served)"),
    }
    assert_eq!(got, b"", "the 21st waiting connection must get no reply");
    let mut first = waiting.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    first.write_all(b"version\n").unwrap();
    let mut r = Vec::new();
    first.read_to_end(&mut r).expect("reply before timeout");
    assert_eq!(r, b"3.09");
    assert_eq!(request(u, b"version\n"), b"3.09");
}

#[test]
fn queueing() {
    let mx = Mx::start(&["-x", "1", "-q", "2", "-Q", "1"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("B "));
    // Waits one second in the queue, then gives up.
    assert_eq!(mx.req(b"ping\n"), b"error: Queued request timed out\n");
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");

    let mx = Mx::start(&["-x", "1", "-q", "1", "-Q", "20"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("B "));
    let sock2 = mx.sock.clone();
    let q = std::thread::spawn(move || request(&sock2, b"ping\n"));
    let st = mx.wait_for("status", |r| r.split(' ').nth(4) == Some("1"));
    assert!(
        st.starts_with("B ") && st.split(' ').nth(3) == Some("1"),
        "{st}"
    );
    // The queue is full: a third request is refused at once.
    assert_eq!(mx.req(b"ping\n"), b"error: No free workers\n");
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
    assert_eq!(q.join().unwrap(), b"PONG\n");
}

#[test]
fn per_domain_recipok_limit() {
    let mx = Mx::start(&["-x", "3", "-y", "1"]);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"recipok <a@Example.com> 3\n"));
    mx.wait_for("busyworkers", |r| r.contains(" recipok "));
    assert_eq!(
        mx.req(b"recipok <b@example.COM> 0\n"),
        b"ok -1 Per-domain%20recipok%20limit%20hit;%20please%20try%20again%20later\n"
    );
    assert_eq!(
        mx.req(b"recipok <b@other.org> 0\n"),
        b"ok 1 ok 250 2.1.0 0\n"
    );
    assert_eq!(t.join().unwrap(), b"ok 1 ok 250 2.1.0 0\n");
    assert_eq!(
        mx.req(b"recipok <c@example.com> 0\n"),
        b"ok 1 ok 250 2.1.0 0\n"
    );
}

#[test]
fn stats_file_records_events() {
    let sp = Spool::new();
    let stats = sp.file("stats").display().to_string();
    let mx = Mx::start_in(sp, &worker_path(), &["-x", "2", "-t", &stats, "-u"]);
    assert_eq!(mx.req(b"scan Q1 /x\n"), b"ok\n");
    let text = std::fs::read_to_string(&stats).unwrap();
    let events: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(
        events,
        ["StartWorker", "StartFilter", "EndFilter"],
        "{text}"
    );
    assert!(text.lines().next().unwrap().ends_with(" StartWorker worker=0 nworkers=1 nbusy=0 reason=\"Bringing workers up to minWorkers (1)\""), "{text}");
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .ends_with(" EndFilter worker=0 nworkers=1 nbusy=0 numRequests=1"),
        "{text}"
    );
    let mode = std::fs::metadata(&stats).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn command_that_cannot_be_written_is_answered_at_once() {
    let mx = Mx::start(&["-x", "1"]);
    let pid1 = mx.req_s("pid");
    assert_eq!(mx.req(b"closein\n"), b"closed\n");
    assert_eq!(
        mx.req(b"ping\n"),
        b"error: Error talking to worker process\n"
    );
    // The worker is killed and replaced.
    let pid2 = mx.wait_for("pid", |r| r.trim_end().parse::<u32>().is_ok());
    assert_ne!(pid1, pid2);
}

#[test]
fn concurrent_clients_get_their_own_replies() {
    let mx = Mx::start(&["-x", "4", "-m", "4", "-q", "128", "-Q", "60"]);
    mx.wait_for("status", |r| r.starts_with("IIII "));
    let threads: Vec<_> = (0..48)
        .map(|i| {
            let sock = mx.sock.clone();
            std::thread::spawn(move || {
                for j in 0..5 {
                    let tok = format!("tok-{i}-{j}");
                    let r = request(&sock, format!("echo {tok}\n").as_bytes());
                    assert_eq!(String::from_utf8_lossy(&r), format!("{tok}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Nothing went wrong on the way: the same four workers served it all.
    let st = mx.req_s("status");
    assert!(st.starts_with("IIII 0 4 128 0 "), "{st}");
}

#[test]
fn worker_flooding_stderr_does_not_block() {
    let mx = Mx::start(&["-x", "1"]);
    // 20 MB on stderr, far beyond any pipe buffer.
    assert_eq!(mx.req(b"spew 20000\n"), b"spewed\n");
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
}
