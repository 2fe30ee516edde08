//! The notifier (-O), socketmap (-N) and tick (-X/-P) integrations
//! (protocol/multiplexor.md §12–§14).

mod mux_support;
use mux_support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[test]
fn notifier_sequence_for_one_request() {
    let sp = Spool::new();
    let n = sp.file("notify.sock");
    let ns = n.display().to_string();
    let mx = Mx::start_in(sp, &worker_path(), &["-x", "2", "-O", &ns]);
    let s = UnixStream::connect(&n).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "*OK\n");
    (&s).write_all(b"?*\n").unwrap();
    // Wait until the subscription is in effect: requests until events flow.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    loop {
        assert_eq!(mx.req(b"ping\n"), b"PONG\n");
        let mut l = String::new();
        if r.read_line(&mut l).is_ok() && !l.is_empty() {
            break;
        }
    }
    // Drain what is left of that request's events.
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(mx.req(b"sleep 0\n"), b"slept 0\n");
    let mut got = Vec::new();
    for _ in 0..5 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        got.push(l);
    }
    assert_eq!(
        got,
        [
            "S 0 StateChange Idle -> Busy\n",
            "F 1\n",
            "S 0 sleep 0\n",
            "S 0 StateChange Busy -> Idle\n",
            "F 2\n"
        ]
    );
}

#[test]
fn socketmap_lookup() {
    let sp = Spool::new();
    let m = sp.file("map.sock");
    let ms = format!("unix:{}", m.display());
    let _mx = Mx::start_in(sp, &worker_path(), &["-x", "2", "-N", &ms]);
    let mut s = UnixStream::connect(&m).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"12:virtuser a@b,").unwrap();
    let mut buf = vec![0u8; 32];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, b"28:OK value for a@b/in virtuser,");
    // Same connection, next request; the key is encoded for the worker.
    s.write_all(b"20:mymap key with space,").unwrap();
    let expect = b"36:OK value for key with space/in mymap,";
    let mut buf = vec![0u8; expect.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, expect);
}

#[test]
fn ticks_reach_a_worker() {
    let mx = Mx::start(&["-x", "1", "-X", "1", "-P", "2"]);
    // Ticks are requests to the worker but not messages.
    mx.wait_for("workerinfo 0", |r| {
        r.lines()
            .find_map(|l| l.strip_prefix("NumRequests "))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 3)
    });
    assert_eq!(mx.req(b"msgs\n"), b"0\n");
}
