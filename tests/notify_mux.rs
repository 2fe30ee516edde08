//! The multiplexor's -O notifier socket with real workers
//! (multiplexor.md §14, observed sequences of §19).

mod mux_support;
use mux_support::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

struct Listener {
    r: BufReader<UnixStream>,
}

impl Listener {
    fn connect(mx: &Mx) -> Listener {
        // -O is created just after -s, so it may not exist quite yet.
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match UnixStream::connect(mx.spool.file("notify.sock")) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect notifier: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Listener { r: BufReader::new(s) }
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("notifier line before timeout");
        l
    }
    /// Subscribes and waits until the subscription is in effect: `R` is
    /// requested (via `reread`) until one arrives, then the rest is drained
    /// up to a marker state change.
    fn subscribe(&mut self, mx: &Mx, types: &str) {
        self.r.get_mut().write_all(format!("?{types}R\n").as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        self.r.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        'outer: loop {
            assert!(Instant::now() < deadline, "subscription never took effect");
            mx.req_s("reread");
            loop {
                let mut l = String::new();
                match self.r.read_line(&mut l) {
                    Ok(_) if l == "R\n" => break 'outer,
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        // Drain anything the rereads caused (idle workers are retired).
        loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        self.r.get_mut().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
}

#[test]
fn banner_and_state_changes_of_a_request() {
    let mx = Mx::start(&["-x", "3", "-Z", "-O", "notify.sock"]);
    mx.wait_for("status", |r| r.starts_with("ISS "));
    let mut l = Listener::connect(&mx);
    assert_eq!(l.line(), "*OK\n");
    l.subscribe(&mx, "SFZY");
    mx.wait_for("status", |r| r.starts_with("ISS "));
    let mut msgs = Vec::new();
    // One command: the worker goes busy with a tag, then idle again.
    assert_eq!(mx.req(b"tag 1:%20tagging 0.5\n"), b"tagged\n");
    loop {
        let m = l.line();
        let done = m.starts_with("S 0 StateChange Busy -> Idle");
        msgs.push(m);
        if done {
            break;
        }
    }
    let f = |s: &str| msgs.iter().position(|m| m == s).unwrap_or_else(|| panic!("{s:?} missing from {msgs:?}"));
    let busy = f("S 0 StateChange Idle -> Busy\n");
    assert_eq!(msgs[busy + 1], "F 2\n", "{msgs:?}");
    assert!(f("S 0 tag 1: tagging\n") > busy, "{msgs:?}");
    assert!(f("S 0 1: tagging\n") > busy, "{msgs:?}");
    assert_eq!(l.line(), "F 3\n");
}

#[test]
fn all_busy_gives_z_then_y() {
    let mx = Mx::start(&["-x", "1", "-O", "notify.sock"]);
    mx.wait_for("status", |r| r.starts_with("I "));
    let mut l = Listener::connect(&mx);
    assert_eq!(l.line(), "*OK\n");
    l.subscribe(&mx, "FZY");
    mx.wait_for("status", |r| r.starts_with("I "));
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert_eq!([l.line(), l.line(), l.line(), l.line()], ["F 0\n", "Z\n", "F 1\n", "Y\n"]);
}

#[test]
fn sixth_listener_refused() {
    let mx = Mx::start(&["-x", "1", "-O", "notify.sock"]);
    let mut ls: Vec<Listener> = (0..5).map(|_| Listener::connect(&mx)).collect();
    for l in ls.iter_mut() {
        assert_eq!(l.line(), "*OK\n");
    }
    let mut sixth = Listener::connect(&mx);
    assert_eq!(sixth.line(), "*ERR No free listening slots\n");
    assert_eq!(sixth.line(), "");
}
