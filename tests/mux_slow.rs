//! Fault cases that need the minimum 10 s timeouts of upstream (`-b`, `-c`,
//! `-i`) or ten worker restarts. The tests of this file run concurrently, so
//! the whole file takes about as long as its slowest test.

mod mux_support;
use mux_support::*;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn busy_timeout_kills_and_replaces_the_worker() {
    let mx = Mx::start(&["-x", "5", "-m", "5", "-b", "10"]);
    mx.wait_for("status", |r| r.starts_with("IIIII "));
    let hangs: Vec<_> = (0..4)
        .map(|_| {
            let sock = mx.sock.clone();
            std::thread::spawn(move || request(&sock, b"hang\n"))
        })
        .collect();
    mx.wait_for("status", |r| {
        r.starts_with("BBBBI ") || r.chars().take(5).filter(|&c| c == 'B').count() == 4
    });
    // Meanwhile the fifth worker serves.
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    let replies: Vec<Vec<u8>> = hangs.into_iter().map(|t| t.join().unwrap()).collect();
    let normal = b"ERR Filter timed out - check filter rules or system load\n".to_vec();
    let overloaded =
        b"ERR Filter timed out - system may be overloaded (consider increasing busy timeout)\n"
            .to_vec();
    for r in &replies {
        assert!(
            *r == normal || *r == overloaded,
            "{}",
            String::from_utf8_lossy(r)
        );
    }
    // The first to time out saw four busy workers.
    assert!(replies.contains(&overloaded));
    // The hung processes are gone and replaced on demand.
    mx.wait_for("status", |r| !r.contains('K') && !r.contains('B'));
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
}

#[test]
fn busy_timeout_reaches_a_forked_worker_through_its_pidfd() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "-m", "1", "-x", "1", "-b", "10"]);
    let pid: u32 = mx.req_s("pid").trim().parse().unwrap();
    let sock = mx.sock.clone();
    let hang = std::thread::spawn(move || request(&sock, b"hang\n"));
    mx.wait_for("status", |r| r.starts_with('B'));
    // The worker is the preloading process's child, not ours: the
    // multiplexor signals it through the pidfd it bound at fork time
    // (protocol/SECURITY.md §6).
    let reply = String::from_utf8(hang.join().unwrap()).unwrap();
    assert!(reply.starts_with("ERR Filter timed out"), "{reply}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "worker {pid} still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let next: u32 = mx
        .wait_for("pid", |r| r.trim().parse::<u32>().is_ok())
        .trim()
        .parse()
        .unwrap();
    assert_ne!(next, pid);
}

#[test]
fn client_that_never_sends_newline_is_dropped() {
    let mx = Mx::start(&["-c", "10"]);
    let mut s = std::os::unix::net::UnixStream::connect(&mx.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"fre").unwrap();
    // Other clients are served meanwhile.
    assert_eq!(mx.req(b"free\n"), b"2\n");
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("closed within the -c timeout");
    assert_eq!(out, b"");
}

#[test]
fn filter_failing_at_start_stops_the_multiplexor() {
    let sp = Spool::new();
    std::fs::write(sp.file("worker-exit-at-start"), "42\n").unwrap();
    let mut mx = Mx::start_in(sp, &worker_path(), &["-x", "2"]);
    // A request reaching a dying worker gets an error, never a hang.
    let r = mx.req_s("ping");
    assert!(
        [
            "ERR No response from worker\n",
            "error: Error talking to worker process\n",
            "error: No free workers\n",
            "error: Unable to activate worker\n",
            "error: Multiplexor is shutting down\n"
        ]
        .contains(&r.as_str()),
        "{r:?}"
    );
    // Ten consecutive exit-42 workers (one per -w second) end it.
    assert_eq!(
        mx.wait_exit(Duration::from_secs(40)),
        Some(0),
        "multiplexor kept running"
    );
}

#[test]
fn idle_workers_above_minimum_are_stopped() {
    let mx = Mx::start(&["-x", "2", "-m", "1", "-i", "10"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("B"));
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
    assert!(mx.req_s("status").starts_with("II "));
    // Within two idle periods one of them is retired; one stays (-m 1).
    let st = mx.wait_for("status", |r| r.starts_with("IS ") || r.starts_with("SI "));
    assert_eq!(st.split(' ').nth(2), Some("2"));
}

#[test]
fn preloading_process_that_dies_is_replaced() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start_logged(&["-E", "-x", "2", "-r", "1"]);
    let loaded: i32 = mx.req_s("loadpid").trim_end().parse().unwrap();
    unsafe { libc::kill(loaded, libc::SIGKILL) };
    // Requests keep working meanwhile (workers started with perl).
    let fresh = |r: &str| r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR");
    assert_eq!(mx.wait_for("ping", fresh), "PONG\n");
    mx.wait_log("starting workers with perl until it is back");
    // Within about ten seconds a new zygote serves again.
    let log = mx.wait_log("preloaded (pid ");
    let tail = &log[log.rfind("preloaded (pid ").unwrap() + "preloaded (pid ".len()..];
    let zygote = tail[..tail.find(')').unwrap()].to_string();
    assert_ne!(zygote, loaded.to_string());
    mx.wait_for("loadpid", |r| r.trim_end() == zygote);
}
