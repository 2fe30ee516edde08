//! `-E`: workers forked from a preloaded Perl process (the zygote) instead
//! of exec'd (protocol/multiplexor.md §7.4, protocol/worker-protocol.md §1.2).

mod mux_support;
use mux_support::*;
use std::process::Command;

fn good(r: &str) -> bool {
    r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR")
}

#[test]
fn workers_are_forked_from_the_preloaded_filter() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "-x", "2"]);
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    let pid = mx.req_s("pid");
    let loaded = mx.req_s("loadpid");
    // Loaded once, in another process than the worker.
    assert_ne!(pid, loaded);
    assert_eq!(mx.req_s("argv"), "-embserver\n");
    assert_eq!(mx.req_s("cwd"), format!("{}\n", mx.spool.path.display()));
    assert_eq!(mx.req_s("umask"), "0077\n");
    assert_eq!(mx.req_s("sigpipe"), "IGNORE\n");
    assert_eq!(mx.req_s("fds"), "0,1,2\n");
    // A second worker comes from the same load.
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.contains('B'));
    assert_eq!(mx.req_s("loadpid"), loaded);
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
    // A worker dying mid-request is noticed and replaced.
    assert_eq!(mx.req(b"die\n"), b"ERR No response from worker\n");
    mx.wait_for("status", |r| !r.contains('K'));
    assert_eq!(mx.wait_for("ping", good), "PONG\n");
    // reread loads the filter again.
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    let again = mx.wait_for("loadpid", |r| good(r) && *r != loaded);
    assert_ne!(again, loaded);
}

#[test]
fn preloaded_workers_run_nicer_than_the_multiplexor() {
    // protocol/multiplexor.md §28: the preloading process takes the step,
    // and the workers it forks inherit it.
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "--worker-nice", "3"]);
    let want = (nice_of(mx.pid()) + 3).min(19);
    for what in ["pid", "loadpid"] {
        let pid: i32 = mx.req_s(what).trim().parse().unwrap();
        assert_eq!(nice_of(pid), want, "{what}");
    }
}

#[test]
fn preloading_loads_what_a_first_scan_would() {
    // protocol/multiplexor.md §23.1.
    require_perl_modules!("IO::FDPass", "MIME::Decoder");
    let loaded = |extra: &[&str], m: &str| {
        let sp = Spool::new();
        std::fs::write(sp.file("worker-load-mime"), "").unwrap();
        let mx = Mx::start_in(sp, &worker_path(), extra);
        mx.req_s(&format!("inc {m}"))
    };
    for m in [
        "PerlIO/scalar.pm",
        "MIME/Decoder/NBit.pm",
        "MIME/Decoder/Base64.pm",
        "MIME/Decoder/QuotedPrint.pm",
        "MIME/Decoder/Binary.pm",
    ] {
        assert_eq!(loaded(&["-E"], m), "loaded\n", "{m}");
    }
    // An exec'd worker loads them at first use, as upstream's.
    assert_eq!(loaded(&[], "MIME/Decoder/Base64.pm"), "not loaded\n");
}

#[test]
fn forked_worker_closing_its_reply_channel_is_noticed_at_once() {
    require_perl_modules!("IO::FDPass");
    // The busy timeout is far away: only the end of file on the worker's
    // stdout can answer within the bound below. The worker closes a
    // duplicate of fd 1 that lands on fd 3, where the preloading process
    // kept its control socket (protocol/multiplexor.md §23).
    let mx = Mx::start(&["-E", "-x", "2", "-b", "120"]);
    let t0 = std::time::Instant::now();
    assert_eq!(mx.req(b"closeout\n"), b"ERR No response from worker\n");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(10),
        "noticed only after {:?}",
        t0.elapsed()
    );
    assert_eq!(mx.wait_for("ping", good), "PONG\n");
}

#[test]
fn status_pipe_with_preloading() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "-Z", "-x", "2"]);
    assert_eq!(mx.req_s("argv"), "-embserveru\n");
    assert_eq!(mx.req_s("fds"), "0,1,2,3\n");
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"tag preloaded%20tag 2\n"));
    mx.wait_for("busyworkers", |r| r.contains("(preloaded tag)"));
    assert_eq!(t.join().unwrap(), b"tagged\n");
}

#[test]
fn filter_that_fails_to_load_is_a_clear_startup_error() {
    require_perl_modules!("IO::FDPass");
    let sp = Spool::new();
    std::fs::write(sp.file("worker-fail-load"), "").unwrap();
    let mut args = base_args(&sp, &worker_path());
    args.push("-E".into());
    // Should it start after all, it must not outlive the test.
    let pidfile = sp.file("mx.pid");
    let _guard = common::PidFileGuard(pidfile.clone());
    args.extend(["-p".into(), pidfile.display().to_string()]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = format!(
        "Error from child: perl_parse failed - you may have an error in {}; please check with perl -c.  MULTIPLEXOR IS TERMINATING.\n",
        worker_path().display()
    );
    assert!(err.starts_with(&first), "{err}");
    assert!(err.contains("load failure requested"), "{err}");
    assert!(!sp.file("mx.sock").exists());
}

#[test]
fn real_mailmunge_filter_preloaded() {
    require_perl_modules!("IO::FDPass");
    let sp = Spool::new();
    let perl_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("perl");
    let filter = sp.file("filter.pl");
    // exit(0) after run() must end the load, not the preloading process.
    std::fs::write(
        &filter,
        format!("use lib '{}';\nuse Mailmunge::Filter;\nmy $filter = Mailmunge::Filter->new();\n$filter->run();\nexit(0);\n", perl_dir.display()),
    )
    .unwrap();
    // No execute bit needed with -E.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mx = Mx::start_in(sp, &filter, &["-E"]);
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert_eq!(
        mx.req(b"tick 0\n"),
        b"error: External agents may not invoke 'tick'\n"
    );
    // A verdict through the real filter's default callbacks.
    assert_eq!(
        mx.req(b"relayok 192.0.2.1 host.example 4321 192.0.2.2 25 NOQUEUE\n"),
        b"ok 1 ok 250 2.1.0 0\n"
    );
}

#[test]
fn reread_with_a_broken_filter_keeps_the_loaded_one() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start_logged(&["-E", "-x", "2", "-r", "1"]);
    let loaded = mx.req_s("loadpid");
    assert!(good(&loaded));
    std::fs::write(mx.spool.file("worker-fail-load"), "").unwrap();
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    mx.wait_log("keeping the filter loaded before");
    std::fs::remove_file(mx.spool.file("worker-fail-load")).unwrap();
    // Workers come from the previous load again.
    let r = mx.wait_for("loadpid", |r| *r == loaded);
    assert_eq!(r, loaded);
}

#[test]
fn taint_switch_on_the_shebang_line_is_honoured() {
    require_perl_modules!("IO::FDPass");
    let sp = Spool::new();
    let src = std::fs::read_to_string(worker_path()).unwrap();
    let body = src.split_once('\n').unwrap().1;
    let filter = sp.dir.path().join("tainted.pl");
    std::fs::write(&filter, format!("#!/usr/bin/perl -T\n{body}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&filter, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mx = Mx::start_in(sp, &filter, &["-E"]);
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    assert_ne!(mx.req_s("pid"), mx.req_s("loadpid"));
    // Loaded in taint mode, as `filter -server` would run.
    assert_eq!(mx.req_s("taint"), "tainted\n");
}

#[test]
fn without_io_fdpass_workers_are_started_with_perl() {
    let sp = Spool::new();
    // A module of that name that fails to load stands in for a missing one.
    let lib = sp.dir.path().join("lib");
    std::fs::create_dir_all(lib.join("IO")).unwrap();
    std::fs::write(lib.join("IO/FDPass.pm"), "die qq{not installed\\n};\n").unwrap();
    let l = lib.display().to_string();
    let mx = Mx::start_env(sp, &["-E"], &[("PERL5LIB", &l)]);
    mx.wait_log("Ignoring -E flag: the Perl module IO::FDPass is needed for -E");
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    // Each worker loaded the filter itself.
    assert_eq!(mx.req_s("pid"), mx.req_s("loadpid"));
    assert_eq!(mx.req_s("argv"), "-server\n");
}

#[test]
fn stalled_preloading_process_does_not_stop_the_multiplexor() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "-m", "1", "-x", "3"]);
    let zygote: i32 = mx.req_s("loadpid").trim().parse().unwrap();
    // The one worker is kept busy, so the next request needs a fork.
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let busy = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with('B'));
    // SAFETY: stopping the preloading process this test started.
    unsafe { libc::kill(zygote, libc::SIGSTOP) };
    let stalled = Held { pids: vec![zygote] };
    let sock = mx.sock.clone();
    let waiting = std::thread::spawn(move || request(&sock, b"ping\n"));
    // While its fork request hangs, the multiplexor keeps answering: the
    // second worker shows as busy and the request is still waiting.
    mx.wait_for("status", |r| r.starts_with("BB"));
    assert_eq!(mx.req_s("free"), "1\n");
    assert!(!waiting.is_finished(), "the fork cannot have completed");
    drop(stalled);
    assert_eq!(waiting.join().unwrap(), b"PONG\n");
    assert_eq!(mx.req_s("loadpid").trim(), zygote.to_string());
    drop(held);
    assert_eq!(busy.join().unwrap(), b"held\n");
}

/// Processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(parent)
        })
        .collect()
}

/// The spares of the preloading process `zygote` (children waiting to
/// become workers, protocol/multiplexor.md §23).
fn spares_of(zygote: u32) -> Vec<u32> {
    children_of(zygote)
        .into_iter()
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            cmd.starts_with(b"mailmunge-multiplexor: spare worker")
        })
        .collect()
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn reread_leaves_no_spare_of_the_old_filter() {
    require_perl_modules!("IO::FDPass");
    let mx = Mx::start(&["-E", "-x", "2"]);
    assert_eq!(mx.req(b"ping\n"), b"PONG\n");
    let loaded: u32 = mx.req_s("loadpid").trim().parse().unwrap();
    eventually("no spare forked", || spares_of(loaded).len() == 1);
    let old = spares_of(loaded)[0];
    // The next worker is the spare, forked before it was asked for.
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.contains('B'));
    assert_eq!(mx.req_s("pid").trim(), old.to_string());
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
    eventually("no next spare", || {
        spares_of(loaded).len() == 1 && spares_of(loaded)[0] != old
    });
    let spare = spares_of(loaded)[0];
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    // The new preloading process (workers started meanwhile with perl
    // would not say which it is).
    let mux = mx.pid() as u32;
    let newer = || {
        children_of(mux).into_iter().find(|&p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            p != loaded && cmd.starts_with(b"mailmunge-multiplexor: preloaded")
        })
    };
    eventually("no new preloading process", || newer().is_some());
    let again = newer().unwrap();
    eventually("the old filter's spare is still there", || {
        !std::path::Path::new(&format!("/proc/{spare}")).exists()
    });
    eventually("the new filter has no spare", || {
        spares_of(again).len() == 1
    });
}

/// Mailmunge::Filter's start-up steps that need no descriptors (syslog,
/// the spool directory) are done by the spare while it waits, and not
/// again once it serves (protocol/multiplexor.md §23).
#[test]
fn the_spare_prepares_the_worker_before_it_is_needed() {
    require_perl_modules!("IO::FDPass");
    let sp = Spool::new();
    let perl_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("perl");
    let record = sp.file("prepared");
    let filter = sp.file("filter.pl");
    std::fs::write(
        &filter,
        format!(
            r#"use lib '{}';
package Probe;
use base 'Mailmunge::Filter';
# Called by _init_logging: records which process prepared a worker.
sub log_identifier {{
    my ($self) = @_;
    open(my $fh, '>>', '{}') or die;
    print $fh "$$\n";
    close($fh);
    return $self->SUPER::log_identifier();
}}
package main;
Probe->new()->run();
exit(0);
"#,
            perl_dir.display(),
            record.display()
        ),
    )
    .unwrap();
    // Each worker serves one request: requests soon reach the spare.
    let mx = Mx::start_in(sp, &filter, &["-E", "-x", "2", "-r", "1"]);
    let mux = mx.pid() as u32;
    let zygote = || {
        children_of(mux).into_iter().find(|&p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            cmd.starts_with(b"mailmunge-multiplexor: preloaded")
        })
    };
    eventually("no preloading process", || zygote().is_some());
    let zygote = zygote().unwrap();
    let recorded = || -> Vec<u32> {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        text.lines().filter_map(|l| l.parse().ok()).collect()
    };
    let is_spare = |p: u32| spares_of(zygote).contains(&p);
    // A spare that has prepared, seen while it is still a spare.
    eventually("no spare prepared while waiting", || {
        recorded().into_iter().any(is_spare)
    });
    let spare = recorded().into_iter().find(|&p| is_spare(p)).unwrap();
    eventually("the spare never served", || {
        assert_eq!(mx.req(b"ping\n"), b"PONG\n");
        !is_spare(spare)
    });
    // It served without preparing again.
    let pids = recorded();
    assert_eq!(pids.iter().filter(|&&p| p == spare).count(), 1, "{pids:?}");
}
