//! The multiplexor's -N Sendmail socketmap with real workers
//! (protocol/multiplexor.md §13, observed examples).

mod mux_support;
use mux_support::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn connect(mx: &Mx) -> UnixStream {
    // -N is created just after -s, so it may not exist quite yet.
    let s = common::connect_when_ready(
        &mx.spool.file("map.sock"),
        "socketmap",
        Duration::from_secs(20),
    );
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn netstring(s: &mut UnixStream) -> String {
    let mut len = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("reply");
        if b[0] == b':' {
            break;
        }
        len.push(b[0]);
    }
    let n: usize = String::from_utf8(len).unwrap().parse().unwrap();
    let mut body = vec![0u8; n + 1];
    s.read_exact(&mut body).unwrap();
    format!("{n}:{}", String::from_utf8(body).unwrap())
}

#[test]
fn lookups_through_workers() {
    let mx = Mx::start(&["-x", "1", "-N", "map.sock"]);
    let mut s = connect(&mx);
    s.write_all(b"12:virtuser a@b,").unwrap();
    assert_eq!(netstring(&mut s), "28:OK value for a@b/in virtuser,");
    // The key is encoded for the worker and the reply decoded for Sendmail.
    s.write_all(b"20:mymap key with space,").unwrap();
    assert_eq!(
        netstring(&mut s),
        "36:OK value for key with space/in mymap,"
    );
    s.write_all(b"7:nospace,").unwrap();
    assert_eq!(netstring(&mut s), "27:PERM Invalid request format,");
    // Map lookups are not scans and not queued.
    assert_eq!(mx.req(b"msgs\n"), b"0\n");
}

#[test]
fn no_free_worker_is_a_temporary_failure() {
    let mx = Mx::start(&["-x", "1", "-q", "2", "-N", "map.sock"]);
    let mut s = connect(&mx);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let busy = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("B "));
    s.write_all(b"5:m key,").unwrap();
    assert_eq!(netstring(&mut s), "20:TEMP No free workers,");
    drop(held);
    assert_eq!(busy.join().unwrap(), b"held\n");
    s.write_all(b"5:m key,").unwrap();
    assert_eq!(netstring(&mut s), "21:OK value for key/in m,");
}

#[test]
fn side_sockets_use_the_socket_umask_and_are_removed_at_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let mut mx = Mx::start(&["-x", "1", "-N", "map.sock", "-O", "notify.sock"]);
    drop(connect(&mx));
    let (map, notify) = (mx.spool.file("map.sock"), mx.spool.file("notify.sock"));
    for p in [&map, &notify] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", p.display());
    }
    mx.signal(libc::SIGTERM);
    assert_eq!(mx.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        !map.exists() && !notify.exists(),
        "UNIX side sockets are removed (protocol/multiplexor.md §20.10)"
    );
}
