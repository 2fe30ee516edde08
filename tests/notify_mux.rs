//! The multiplexor's -O notifier socket with real workers
//! (protocol/multiplexor.md §14, observed sequences of §19).

mod mux_support;
use mux_support::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

struct Listener {
    r: BufReader<UnixStream>,
    /// A line whose start arrived before a read timed out.
    partial: String,
}

impl Listener {
    fn connect(mx: &Mx) -> Listener {
        // -O is created just after -s, so it may not exist quite yet.
        let s = common::connect_when_ready(
            &mx.spool.file("notify.sock"),
            "notifier",
            Duration::from_secs(20),
        );
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Listener {
            r: BufReader::new(s),
            partial: String::new(),
        }
    }
    fn line(&mut self) -> String {
        let mut l = std::mem::take(&mut self.partial);
        self.r
            .read_line(&mut l)
            .expect("notifier line before timeout");
        l
    }
    /// The next line if one arrives within `limit`. A line cut by the
    /// timeout is kept and completed by the next read.
    fn line_within(&mut self, limit: Duration) -> Option<String> {
        self.r.get_mut().set_read_timeout(Some(limit)).unwrap();
        let r = self.r.read_line(&mut self.partial);
        self.r
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        match r {
            Ok(0) => panic!("notifier closed the connection"),
            Ok(_) => Some(std::mem::take(&mut self.partial)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notifier: {e}"),
        }
    }
    fn send(&mut self, line: &str) {
        self.r.get_mut().write_all(line.as_bytes()).unwrap();
    }
    /// Subscribes to `types` and waits until the subscription is in effect.
    /// A subscription is not acknowledged, so `R` is subscribed too and
    /// `reread` requested until one arrives. Each reread is made while the
    /// status reads `idle` (the state the test starts from), so that it
    /// retires exactly the idle worker; its replacement coming up ends in
    /// the notification `settled`, read before returning, so that nothing
    /// of the rereads is left for the test to see.
    fn subscribe(&mut self, mx: &Mx, types: &str, idle: &str, settled: &str) {
        self.send(&format!("?{types}R\n"));
        let deadline = Instant::now() + Duration::from_secs(30);
        'outer: loop {
            assert!(Instant::now() < deadline, "subscription never took effect");
            mx.wait_for("status", |r| r.starts_with(idle));
            assert_eq!(mx.req_s("reread"), "Forced reread of filter rules\n");
            // Anything before the R is from rereads, ours or earlier ones.
            while let Some(l) = self.line_within(Duration::from_secs(1)) {
                if l == "R\n" {
                    break 'outer;
                }
            }
        }
        loop {
            let l = self.line();
            if l == settled {
                break;
            }
        }
        mx.wait_for("status", |r| r.starts_with(idle));
    }
}

#[test]
fn banner_and_state_changes_of_a_request() {
    let mx = Mx::start(&["-x", "3", "-Z", "-O", "notify.sock"]);
    mx.wait_for("status", |r| r.starts_with("ISS "));
    let mut l = Listener::connect(&mx);
    assert_eq!(l.line(), "*OK\n");
    // The reread retires worker 0, which is the one brought up again.
    l.subscribe(&mx, "SFZY", "ISS ", "S 0 StateChange Stopped -> Idle\n");
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
    let f = |s: &str| {
        msgs.iter()
            .position(|m| m == s)
            .unwrap_or_else(|| panic!("{s:?} missing from {msgs:?}"))
    };
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
    // No R here, and no reread to wait for it: the pings themselves show
    // when the subscription is in effect. Each ping of the one idle worker
    // gives the same four lines; only the first ping that shows anything
    // may be cut short (the subscription took effect between its two state
    // changes), giving just the second half.
    l.send("?FZY\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        assert!(Instant::now() < deadline, "no notification for any ping");
        assert_eq!(mx.req(b"ping\n"), b"PONG\n");
        if let Some(line) = l.line_within(Duration::from_millis(500)) {
            break line;
        }
    };
    let first = if first == "F 1\n" {
        assert_eq!(l.line(), "Y\n", "the second half of a ping");
        // Pings made meanwhile have whole groups on their way: any of them
        // (and this one) starts with the line read next.
        assert_eq!(mx.req(b"ping\n"), b"PONG\n");
        l.line()
    } else {
        first
    };
    assert_eq!(
        [first, l.line(), l.line(), l.line()],
        ["F 0\n", "Z\n", "F 1\n", "Y\n"]
    );
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
