//! Worker reservations (protocol/multiplexor.md §27): `mmrs-reserve` holds a
//! worker for the scan sent next on the same connection; the worker is
//! released when the connection closes, when something else than a scan
//! comes, or after `-b` seconds; none is reserved when none is free.
//! The tests of this file run concurrently; the expiry one needs the 10 s
//! minimum of `-b`.

mod mux_support;
use mux_support::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Sends a reservation request; the connection and the first answer line.
fn reserve(mx: &Mx, args: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(&mx.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("mmrs-reserve {args}\n").as_bytes())
        .unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    (s, String::from_utf8(line).unwrap())
}

/// The slot number of a `reserved N` answer.
fn slot_of(answer: &str) -> usize {
    answer
        .strip_prefix("reserved ")
        .and_then(|n| n.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not a reservation: {answer:?}"))
}

fn rest(mut s: UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("closed before the timeout");
    out
}

fn busy(status: &str) -> usize {
    status.split(' ').next().unwrap().matches('B').count()
}

#[test]
fn reserved_worker_runs_the_scan_sent_next() {
    let mx = Mx::start(&["-x", "2", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    let (mut s, ans) = reserve(&mx, "Q1%20x 0");
    let slot = slot_of(&ans);
    // Reserved = busy for every client: not counted as free, shown as B
    // with the reservation as its status tag.
    assert_eq!(busy(&mx.req_s("status")), 1);
    assert_eq!(mx.req_s("free"), "1\n");
    let workers = mx.req_s("busyworkers");
    assert!(
        workers.starts_with(&format!("{slot} B "))
            && workers.trim_end().ends_with("(reserved Q1 x)"),
        "{workers}"
    );
    s.write_all(b"scan Q1 /nonexistent\n").unwrap();
    assert_eq!(rest(s), b"ok\n");
    let info = mx.req_s(&format!("workerinfo {slot}"));
    assert!(info.contains("\nNumScans 1\n"), "{info}");
    assert_eq!(mx.req_s("msgs"), "1\n");
    mx.wait_for("status", |r| busy(r) == 0);
    assert_eq!(mx.req_s("free"), "2\n");
}

#[test]
fn closing_the_connection_releases_the_worker() {
    let mx = Mx::start(&["-x", "1", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("I "));
    let (s, ans) = reserve(&mx, "Q2 0");
    slot_of(&ans);
    assert_eq!(mx.req_s("free"), "0\n");
    drop(s);
    mx.wait_for("free", |r| r == "1\n");
    // The released worker serves again, and nothing was scanned.
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert_eq!(mx.req_s("msgs"), "0\n");
}

#[test]
fn no_reservation_without_a_free_worker() {
    let mx = Mx::start(&["-x", "2", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    // A stopped slot is activated for a reservation, as for a scan.
    let (_a, first) = reserve(&mx, "A 0");
    // `keep`: leave that many free workers (the milter's -R).
    let (s, kept) = reserve(&mx, "B 1");
    assert_eq!(kept, "error: No free workers\n");
    assert_eq!(rest(s), b"");
    let (_b, second) = reserve(&mx, "C 0");
    assert_ne!(slot_of(&first), slot_of(&second));
    let (s, none) = reserve(&mx, "D 0");
    assert_eq!(none, "error: No free workers\n");
    assert_eq!(rest(s), b"", "a refusal closes the connection");
    // Upstream's clients see the reserved workers as busy.
    assert_eq!(mx.req_s("status").split(' ').next().unwrap(), "BB");
    assert_eq!(mx.req(b"scan X /y\n"), b"error: No free workers\n");
}

/// A request that finds every worker held waits for one to come free, up
/// to 5 s (protocol/multiplexor.md §27.2), instead of being refused at once.
#[test]
fn a_reservation_waits_for_a_worker_to_come_free() {
    let mx = Mx::start(&["-x", "1", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("I "));
    let (holder, first) = reserve(&mx, "W1 0");
    let slot = slot_of(&first);
    // Nothing comes free: refused, but only after the wait.
    let t0 = Instant::now();
    let (_, refused) = reserve(&mx, "W2 0");
    assert_eq!(refused, "error: No free workers\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(4500),
        "{:?}",
        t0.elapsed()
    );
    // A worker let go in the meantime goes to the waiting request at once.
    let (sent_tx, sent) = std::sync::mpsc::channel();
    let sock = mx.sock.clone();
    let waiter = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"mmrs-reserve W3 0\n").unwrap();
        sent_tx.send(()).unwrap();
        let mut line = [0u8; 64];
        let n = s.read(&mut line).unwrap();
        String::from_utf8_lossy(&line[..n]).into_owned()
    });
    sent.recv().unwrap();
    let t1 = Instant::now();
    drop(holder);
    let second = waiter.join().unwrap();
    assert_eq!(slot_of(&second), slot);
    assert!(t1.elapsed() < Duration::from_secs(4), "{:?}", t1.elapsed());
}

#[test]
fn only_a_scan_uses_a_reservation() {
    let mx = Mx::start_logged(&["-x", "1", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("I "));
    let (mut s, ans) = reserve(&mx, "Q3 0");
    slot_of(&ans);
    s.write_all(b"ping\n").unwrap();
    assert_eq!(rest(s), b"error: A reserved worker only runs a scan\n");
    mx.wait_for("free", |r| r == "1\n");
    mx.wait_log("Q3: Worker 0 reserved but not used: the client sent something other than a scan; releasing it");
}

#[test]
fn a_scan_whose_reserved_worker_died_takes_another() {
    let mx = Mx::start(&["-x", "2", "-m", "1"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    let (mut s, ans) = reserve(&mx, "Q4 0");
    let slot = slot_of(&ans);
    let pid: i32 = mx
        .req_s(&format!("workerinfo {slot}"))
        .lines()
        .find_map(|l| l.strip_prefix("PID "))
        .unwrap()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    mx.wait_for("status", |r| busy(r) == 0);
    s.write_all(b"scan Q4 /nonexistent\n").unwrap();
    assert_eq!(rest(s), b"ok\n");
    assert_eq!(mx.req_s("msgs"), "1\n");
}

#[test]
fn an_unused_reservation_expires_after_the_busy_timeout() {
    let mx = Mx::start_logged(&["-x", "1", "-m", "1", "-b", "10"]);
    mx.wait_for("status", |r| r.starts_with("I "));
    let started = Instant::now();
    let (s, ans) = reserve(&mx, "Q5 0");
    slot_of(&ans);
    // The multiplexor closes the connection without a word.
    assert_eq!(rest(s), b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(25),
        "{waited:?}"
    );
    mx.wait_log("Q5: Worker 0 reserved but not used: no scan within 10 s; releasing it");
    assert_eq!(mx.req_s("free"), "1\n");
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
}

#[test]
fn queueing_multiplexor_declines_and_help_advertises() {
    let sp = Spool::new();
    let a = sp.file("unpriv.sock").display().to_string();
    let mx = Mx::start_in(sp, &worker_path(), &["-x", "1", "-q", "4", "-a", &a]);
    let (s, ans) = reserve(&mx, "Q6 0");
    assert_eq!(ans, "not-reserved queue\n");
    assert_eq!(rest(s), b"");
    assert_eq!(busy(&mx.req_s("status")), 0);
    // Privileged only; advertised in the privileged help.
    assert_eq!(
        request(std::path::Path::new(&a), b"mmrs-reserve Q6 0\n"),
        b"error: Attempt to use privileged command on unprivileged socket\n"
    );
    let help = mx.req_s("help");
    assert!(help.contains("\nmmrs-reserve     -- "), "{help}");
    let uhelp = String::from_utf8(request(std::path::Path::new(&a), b"help\n")).unwrap();
    assert!(!uhelp.contains("mmrs-reserve"));
}
