//! Safe reread (protocol/safe-reread.md): a filter that does
//! not pass `perl -c` is refused by `reread` and SIGINT, and the running
//! workers keep serving; a good one starts a new generation.

mod metrics_support;
mod mux_support;
use metrics_support::*;
use mux_support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A copy of the test worker the test may break, readable and executable by
/// the worker user.
fn own_filter(sp: &Spool) -> PathBuf {
    let f = sp.dir.path().join("filter.pl");
    std::fs::copy(worker_path(), &f).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    f
}

fn break_filter(f: &PathBuf) -> String {
    let good = std::fs::read_to_string(f).unwrap();
    std::fs::write(f, format!("{good}\nsub unfinished {{\n    my $x = 1;\n")).unwrap();
    good
}

#[test]
fn broken_filter_is_not_loaded() {
    let sp = Spool::new();
    let filter = own_filter(&sp);
    let (mx, port) = start_with_metrics(sp, &filter, &["-x", "1"]);

    // A good filter: new generation, the idle worker is replaced.
    let a = mx.req_s("pid");
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    let b = mx.wait_for("pid", |r| r.ends_with('\n') && !r.starts_with("error"));
    assert_ne!(a, b);
    assert_eq!(val(&scrape(port), "mailmunge_mux_generation"), 1.0);

    // A broken one: refused with perl's message, nothing restarted.
    let good = break_filter(&filter);
    let r = mx.req_s("reread");
    assert!(r.starts_with("error: Filter rules not reread: "), "{r:?}");
    assert!(
        r.contains("Missing right curly") && r.contains("had compilation errors"),
        "{r:?}"
    );
    assert!(
        r.ends_with('\n') && r.matches('\n').count() == 1,
        "one line: {r:?}"
    );
    assert_eq!(mx.req_s("pid"), b, "the running worker keeps serving");
    assert_eq!(mx.req_s("ping"), "PONG\n");
    let log = mx.wait_log("Filter rules not reread");
    assert!(log.contains("Missing right curly"), "{log}");
    let s = scrape(port);
    assert_eq!(val(&s, "mailmunge_mux_generation"), 1.0);
    assert_eq!(
        val(&s, "mailmunge_mux_rereads_total{result=\"refused\"}"),
        1.0
    );

    // SIGINT likewise.
    mx.signal(libc::SIGINT);
    scrape_until(port, "the SIGINT refusal", |s| {
        val(s, "mailmunge_mux_rereads_total{result=\"refused\"}") == 2.0
    });
    assert_eq!(mx.req_s("pid"), b);
    assert_eq!(val(&scrape(port), "mailmunge_mux_generation"), 1.0);

    // Fixed again: SIGINT now starts a new generation.
    std::fs::write(&filter, good).unwrap();
    mx.signal(libc::SIGINT);
    scrape_until(port, "the SIGINT reread", |s| {
        val(s, "mailmunge_mux_generation") == 2.0
    });
    let c = mx.wait_for("pid", |r| {
        r.ends_with('\n') && !r.starts_with("error") && *r != b
    });
    assert_ne!(b, c);
}

#[test]
fn reread_runs_perl_as_the_workers_do() {
    // The check sees the workers' cwd (the spool dir): a filter that only
    // compiles there must be accepted.
    let sp = Spool::new();
    let filter = own_filter(&sp);
    let mx = start(sp, &filter, &["-x", "1"]);
    let good = std::fs::read_to_string(&filter).unwrap();
    let (shebang, rest) = good.split_once('\n').unwrap();
    std::fs::write(
        &filter,
        format!("{shebang}\nBEGIN {{ -e 'mx.sock' or die \"wrong cwd\\n\" }}\n{rest}"),
    )
    .unwrap();
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = mx.req_s("pid");
    assert_eq!(mx.req_s("reread"), "Forced reread of filter rules\n");
    // The new generation runs before the file is changed again (workers
    // started later load whatever is on disk then).
    let b = mx.wait_for("pid", |r| {
        r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR")
    });
    assert_ne!(a, b);
    // A filter dying at compile time: perl's own text comes back.
    std::fs::write(
        &filter,
        format!("{shebang}\nBEGIN {{ die \"cannot load my config\\n\" }}\n{rest}"),
    )
    .unwrap();
    let r = mx.req_s("reread");
    assert!(
        r.starts_with("error: Filter rules not reread: cannot load my config"),
        "{r:?}"
    );
    assert_eq!(mx.req_s("pid"), b);
}

#[test]
fn shell_wrappers_are_not_checked() {
    // A filter that is a shell script exec'ing the real one: perl cannot
    // judge it, so the reread goes ahead as upstream's would.
    let sp = Spool::new();
    let wrapper = sp.dir.path().join("wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec perl '{}' \"$@\"\n",
            worker_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mx = start(sp, &wrapper, &["-x", "1"]);
    let a = mx.req_s("pid");
    assert_eq!(mx.req_s("reread"), "Forced reread of filter rules\n");
    let b = mx.wait_for("pid", |r| {
        r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR")
    });
    assert_ne!(a, b);
    mx.wait_log("runs through /bin/sh, not perl: not checked");
}

#[test]
fn preloaded_filter_is_kept_when_the_new_one_is_broken() {
    require_perl_modules!("IO::FDPass");
    // -E: a refused reread keeps the preloaded filter and its workers.
    let sp = Spool::new();
    let filter = own_filter(&sp);
    let mx = start(sp, &filter, &["-E", "-x", "1"]);
    let pid = mx.req_s("pid");
    let loaded = mx.req_s("loadpid");
    break_filter(&filter);
    let r = mx.req_s("reread");
    assert!(
        r.starts_with("error: Filter rules not reread: ") && r.contains("Missing right curly"),
        "{r:?}"
    );
    assert_eq!(mx.req_s("pid"), pid);
    // A worker started after the refusal still comes from the old load.
    assert_eq!(mx.req_s("die"), "ERR No response from worker\n");
    let again = mx.wait_for("loadpid", |r| {
        r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR")
    });
    assert_eq!(again, loaded);
    assert_ne!(mx.req_s("pid"), pid);
}
