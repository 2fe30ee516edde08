//! A filter whose workers die before answering: the multiplexor keeps what
//! they wrote on stderr, logs it without `-l`, and answers `lasterror`
//! (protocol/multiplexor.md §26).

mod mux_support;
use mux_support::*;

#[test]
fn worker_dying_at_start_is_reported_with_its_stderr() {
    let sp = Spool::new();
    let exit_file = sp.file("worker-exit-at-start");
    std::fs::write(&exit_file, "2\n").unwrap();
    let mx = Mx::start_full(sp, &worker_path(), &["-x", "2"], true);
    // The multiplexor starts its minimum of one worker at once, and that
    // worker may already have died: "none" only if it has not.
    let first = mx.req_s("lasterror");
    assert!(
        first == "none\n" || first.starts_with("Worker%200%20"),
        "{first:?}"
    );
    // The request fails; the reason is kept.
    let r = mx.req_s("ping");
    assert!(!r.starts_with("PONG"), "{r:?}");
    let report = mx.wait_for("lasterror", |r| r.contains("second%20line"));
    assert!(
        report.starts_with("Worker%20"),
        "the reply is one percent-encoded line: {report:?}"
    );
    let text = String::from_utf8_lossy(&mailmunge::wire::percent::decode(
        report.trim_end().as_bytes(),
    ))
    .into_owned();
    assert!(text.contains("died before answering a request"), "{text}");
    assert!(
        text.contains("(exit status 2); no worker has answered since."),
        "{text}"
    );
    assert!(
        text.ends_with(
            "Its stderr:\n  test worker: told to exit at start with 2\n  second line of the reason"
        ),
        "{text}"
    );
    // Logged without -l, on one line.
    mx.wait_log("(exit status 2); its stderr said: test worker: told to exit at start with 2 | second line of the reason");

    // Once the cause is gone, a worker answers and the report says so.
    std::fs::remove_file(&exit_file).unwrap();
    mx.wait_for("ping", |r| r == "PONG\n");
    mx.wait_log("Workers answer requests again");
    let report = mx.req_s("lasterror");
    assert!(
        report.contains("a%20worker%20has%20answered%20since."),
        "{report}"
    );
}

#[test]
fn filter_that_does_not_compile_stops_the_start_with_perls_message() {
    let sp = Spool::new();
    let filter = sp.file("broken-filter.pl");
    std::fs::write(&filter, "#!/usr/bin/perl\nuse No::Such::Module;\n1;\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(base_args(&sp, &filter))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let start = format!(
        "Error from child: The filter {} does not compile, so no worker could start; perl -c said: Can't locate No/Such/Module.pm in @INC",
        filter.display()
    );
    assert!(err.starts_with(&start), "{err}");
    assert!(err.contains("MULTIPLEXOR IS TERMINATING."), "{err}");
    assert!(!sp.file("mx.sock").exists(), "no socket is left behind");
}
