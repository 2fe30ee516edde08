//! The real mm-mx-ctrl against the real mailmunge-multiplexor with the test
//! worker (t/data/mux/worker.pl): the client-side formats over live
//! replies, encoding through to the worker, -i/-b, and the extensions.

mod mux_support;
use mux_support::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

const CTRL: &str = env!("CARGO_BIN_EXE_mm-mx-ctrl");

fn ctrl(mx: &Mx, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(CTRL)
        .arg("-s")
        .arg(&mx.sock)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mm-mx-ctrl");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[track_caller]
fn out(mx: &Mx, args: &[&str]) -> String {
    let o = ctrl(mx, args, b"");
    assert!(
        o.stderr.is_empty(),
        "stderr of {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "status of {args:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// A pool of two with one idle worker and a request queue of 2, quiet.
fn idle_pool() -> Mx {
    let mx = Mx::start(&["-x", "2", "-q", "2"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    mx
}

#[test]
fn status_formats_from_live_replies() {
    let mx = idle_pool();
    assert_eq!(
        out(&mx, &["status"]),
        "Max workers: 2\nWorker 0: idle\nWorker 1: stopped\n"
    );
    assert_eq!(out(&mx, &["barstatus"]), "  0/2 ..    0/2 .. 0\n");
    assert_eq!(
        out(&mx, &["-b", "status"]),
        "<\nMax workers: 2\nWorker 0: idle\nWorker 1: stopped\n>\n"
    );
    let raw = out(&mx, &["rawstatus"]);
    assert!(
        raw.starts_with("IS 0 1 2 0 ") && raw.ends_with('\n'),
        "{raw:?}"
    );
    let j: serde_json::Value = serde_json::from_str(&out(&mx, &["jsonstatus"])).unwrap();
    assert_eq!(j["workers"], serde_json::json!(["idle", "stopped"]));
    assert_eq!(j["queue_size"], 2);
}

#[test]
fn load_formats_from_live_replies() {
    let mx = idle_pool();
    // Nothing has run: every count is 0 and the server reports an average
    // of 1 busy worker for empty windows (protocol/multiplexor.md §5.5).
    assert_eq!(
        out(&mx, &["load"]),
        "  Load              Msgs        Msgs/Sec     Avg ms/Scan   Avg Busy Workers\n\
10 Sec               0            0.00             0.0            1.00\n 1 Min               0            0.00             0.0            1.00\n \
5 Min               0            0.00             0.0            1.00\n10 Min               0            0.00             0.0            1.00\n"
    );
    assert_eq!(
        out(&mx, &["hload-recipok"]),
        "  Load              RCPT        RCPT/Sec     Avg ms/RCPT   Avg Busy Workers\n    \
1h               0            0.00             0.0            0.00\n    4h               0            0.00             0.0            0.00\n   \
12h               0            0.00             0.0            0.00\n   24h               0            0.00             0.0            0.00\n"
    );
    // Two scans: load1 reports them.
    assert_eq!(out(&mx, &["scan", "QID", "/tmp"]), "ok\n");
    assert_eq!(out(&mx, &["scan", "QID2", "/tmp"]), "ok\n");
    let l1 = out(&mx, &["load1", "60"]);
    let lines: Vec<&str> = l1.lines().collect();
    assert_eq!(lines[0], "Statistics for last 60 seconds:");
    assert_eq!(
        lines[1],
        "       Cmd             Num           Num/s      AvgWorkers           AvgMS"
    );
    assert!(
        lines[2].starts_with("      Scan               2             0.0             1.0 "),
        "{l1}"
    );
    assert_eq!(
        lines[3],
        "   Relayok               0             0.0             0.0             0.0"
    );
    assert_eq!(
        &lines[6..],
        [
            "",
            "Current Snapshot:",
            "Workers: busy=0 idle=1 stopped=1 killed=0",
            "Cmds:   scan=0 relayok=0 senderok=0 recipok=0",
            "Queue:  size=2 queued=0"
        ]
    );
    assert_eq!(out(&mx, &["msgs"]), "2\n");
    let raw1 = out(&mx, &["rawload1", "60"]);
    assert_eq!(raw1.split_whitespace().count(), 26, "{raw1:?}");
    let raw = out(&mx, &["rawload"]);
    assert_eq!(raw.split_whitespace().count(), 29, "{raw:?}");
    let j: serde_json::Value = serde_json::from_str(&out(&mx, &["jsonload"])).unwrap();
    assert_eq!(j["windows"][0]["count"], 2);
    assert_eq!(j["msgs"], 2);
    // load1 with a bad window: the server's error, exit 1.
    let o = ctrl(&mx, &["load1", "5"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Could not interpret response: error: Invalid 'back' amount (must be 10-600)\n"
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn pass_through_reaches_the_worker_encoded_and_comes_back_decoded() {
    let mx = idle_pool();
    assert_eq!(out(&mx, &["version"]), "3.09\n");
    assert_eq!(out(&mx, &["free"]), "2\n");
    // The worker echoes its (still encoded) arguments; mm-mx-ctrl decodes.
    assert_eq!(
        out(&mx, &["echo", "a b", "c%d", "x'y", "é"]),
        "a b c%d x'y é\n"
    );
    assert_eq!(
        out(
            &mx,
            &["relayok", "10.0.0.1", "h", "4567", "127.0.0.1", "25", "qid"]
        ),
        "ok 0 Unknown command 554 5.7.1 0\n"
    );
    assert_eq!(out(&mx, &["reread"]), "Forced reread of filter rules\n");
    assert_eq!(out(&mx, &["busyworkers"]), "");
    assert_eq!(out(&mx, &["-b", "busyworkers"]), "<\n>\n");
    let wi = out(&mx, &["workerinfo", "1"]);
    assert!(
        wi.starts_with("Worker 1\nState ") && wi.ends_with("StatusTag \n"),
        "{wi:?}"
    );
    assert_eq!(
        out(&mx, &["foo_no_such_command"]),
        "error: Unknown command\n"
    );
}

#[test]
fn interactive_bracketed_session_like_the_tcl_monitor() {
    let mx = idle_pool();
    let o = ctrl(
        &mx,
        &["-i", "-b"],
        b"rawload\nbusyworkers\nrawload1 60\nping\nfree",
    );
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8(o.stdout).unwrap();
    let blocks: Vec<&str> = text.split(">\n").collect();
    assert_eq!(blocks.len(), 6, "{text:?}");
    assert!(
        blocks.iter().take(5).all(|b| b.starts_with("<\n")),
        "{text:?}"
    );
    assert_eq!(
        blocks[0]
            .trim_start_matches("<\n")
            .split_whitespace()
            .count(),
        29
    );
    assert_eq!(blocks[1], "<\n");
    assert_eq!(
        blocks[2]
            .trim_start_matches("<\n")
            .split_whitespace()
            .count(),
        26
    );
    assert_eq!(blocks[3], "<\nPONG\n");
    // The last line had no newline; it was still answered.
    assert_eq!(blocks[4], "<\n2\n");
    assert_eq!(blocks[5], "");
}

#[test]
fn busy_workers_show_up_in_status_and_top() {
    let mx = idle_pool();
    let sock = mx.sock.clone();
    let sleeper = std::thread::spawn(move || {
        Command::new(CTRL)
            .arg("-s")
            .arg(&sock)
            .args(["sleep", "3"])
            .output()
            .unwrap()
    });
    mx.wait_for("status", |r| r.starts_with('B'));
    assert_eq!(
        out(&mx, &["status"]),
        "Max workers: 2\nWorker 0: busy\nWorker 1: stopped\n"
    );
    assert_eq!(out(&mx, &["barstatus"]), "  1/2 B.    0/2 .. 0\n");
    let bw = out(&mx, &["busyworkers"]);
    assert!(bw.starts_with("0 B ") && bw.contains(" ago="), "{bw:?}");
    let j: serde_json::Value = serde_json::from_str(&out(&mx, &["jsonbusyworkers"])).unwrap();
    assert_eq!(j["workers"][0]["slot"], 0);
    assert_eq!(j["workers"][0]["state"], "busy");
    assert!(
        j["workers"][0]["pid"].as_i64().is_some_and(|p| p > 1),
        "{j}"
    );
    assert_eq!(j["workers"].as_array().unwrap().len(), 1);
    let top = out(&mx, &["top", "1", "1"]);
    let lines: Vec<&str> = top.lines().collect();
    assert_eq!(lines[0], "mm-mx-ctrl top: 1 multiplexor(s), every 1s");
    assert!(
        lines[4].starts_with(&format!(
            "{:<28}     1/2    0    1    0     0/2        0 ",
            mx.sock.display()
        )),
        "{top}"
    );
    assert_eq!(lines[5], "  [B.]");
    let o = sleeper.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "slept 3\n");
}

#[test]
fn unprivileged_socket_serves_the_client_side_formats() {
    let mx = Mx::start(&["-x", "2", "-a", "unpriv.sock"]);
    mx.wait_for("status", |r| r.starts_with("IS "));
    let unpriv = mx.spool.file("unpriv.sock");
    let run = |args: &[&str]| {
        let o = Command::new(CTRL)
            .arg("-s")
            .arg(&unpriv)
            .args(args)
            .output()
            .unwrap();
        (String::from_utf8(o.stdout).unwrap(), o.status.code())
    };
    // The raw aliases and formats are translated client-side, so they work
    // on -a, which only knows the server's read-only commands.
    assert_eq!(run(&["barstatus"]), ("  0/2 .. 0\n".to_string(), Some(0)));
    assert_eq!(run(&["rawload"]).0.split_whitespace().count(), 29);
    assert!(run(&["load"]).0.starts_with("  Load              Msgs"));
    assert_eq!(
        run(&["reread"]),
        (
            "error: Attempt to use privileged command on unprivileged socket\n".to_string(),
            Some(0)
        )
    );
}
