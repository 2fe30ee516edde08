//! Options that shape worker life and logging: -V, -W, -R/-M, -l, -L, -t
//! with SIGHUP (protocol/multiplexor.md §2, §7.8, §7.10, §9, §15).

mod mux_support;
use mux_support::*;

fn good(r: &str) -> bool {
    r.ends_with('\n') && !r.starts_with("error") && !r.starts_with("ERR")
}

#[test]
fn lifetime_retires_after_completion() {
    let mx = Mx::start(&["-x", "1", "-V", "1"]);
    let a = mx.req_s("pid");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    // This request is served by the old worker, which then retires.
    assert_eq!(mx.req_s("pid"), a);
    let b = mx.wait_for("pid", good);
    assert_ne!(a, b);
}

#[test]
fn activation_spacing() {
    let mx = Mx::start(&["-x", "2", "-W", "600"]);
    let held = mx.hold_idle_workers(1);
    let sock = mx.sock.clone();
    let t = std::thread::spawn(move || request(&sock, b"echo held\n"));
    mx.wait_for("status", |r| r.starts_with("BS "));
    // A second worker may not start within 600 s of the first.
    assert_eq!(mx.req(b"ping\n"), b"error: Unable to activate worker\n");
    drop(held);
    assert_eq!(t.join().unwrap(), b"held\n");
}

#[test]
fn memory_limits_reach_workers() {
    // Started with a low soft descriptor limit: the multiplexor raises its
    // own, the workers must get this one back.
    let soft = 512;
    let mx = Mx::start_with_nofile(&["-M", "1000000", "-R", "500000"], soft);
    assert_eq!(
        mx.req_s("limits"),
        format!("1024000000 1024000000 512000000 {soft}\n")
    );
    let ours = std::fs::read_to_string(format!("/proc/{}/limits", mx.pid())).unwrap();
    let line = ours
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files": raised to the hard limit.
    assert_eq!(f[3], f[4], "{line}");
}

#[test]
fn workers_run_nicer_than_the_multiplexor() {
    // protocol/multiplexor.md §28: 5 steps by default, as many as asked
    // otherwise, and 0 keeps upstream's equal priority.
    for (args, step) in [
        (&[][..], 5),
        (&["--worker-nice", "2"][..], 2),
        (&["--worker-nice", "0"][..], 0),
    ] {
        let mx = Mx::start(args);
        let worker: i32 = mx.req_s("pid").trim().parse().unwrap();
        let ours = nice_of(mx.pid());
        assert_eq!(nice_of(worker), (ours + step).min(19), "{args:?}");
    }
}

#[test]
fn verbose_logging_of_worker_stderr_and_status() {
    let mx = Mx::start_logged(&["-l", "-L", "5", "-x", "2"]);
    assert_eq!(mx.req(b"stderr hello from the filter\n"), b"ok\n");
    mx.wait_log("Worker 0 stderr: hello from the filter");
    assert_eq!(mx.req(b"scan QID77 /tmp\n"), b"ok\n");
    let log = mx.wait_log("started; minWorkers=1, maxWorkers=2, maxRequests=500, maxLifetime=-1, maxIdleTime=300, busyTimeout=120, clientTimeout=10");
    assert!(log.contains("Starting worker 0 (pid "), "{log}");
    mx.wait_log("mailmunge-multiplexor 3.09 alive.  MTA");
    mx.wait_log("Worker status: Stopped=1 Idle=1 Busy=0 Killed=0 Queued=0 Msgs=1 Activations=1");
    // Retiring the worker logs its exit and resource usage.
    assert_eq!(mx.req(b"reread\n"), b"Forced reread of filter rules\n");
    mx.wait_log("Killing idle worker 0 pid=");
    // Both lines are logged together when the worker is reaped; a failure
    // shows the whole log (the lossy read keeps a stray byte from hiding it).
    let log = mx.wait_log(") exited normally with status 0\n");
    let usage = log
        .find("Worker 0 resource usage: ")
        .unwrap_or_else(|| panic!("no usage line:\n{log}"));
    let reap = log.find("Reap: worker 0 (pid ").unwrap();
    assert!(
        log[usage..].starts_with("Worker 0 resource usage: req=2, scans=1, user="),
        "{log}"
    );
    assert!(
        log[reap..]
            .split('\n')
            .next()
            .unwrap()
            .ends_with(") exited normally with status 0"),
        "{log}"
    );
}

#[test]
fn worker_killed_from_outside_is_logged_as_unexpected() {
    let mx = Mx::start_logged(&["-l", "-x", "1"]);
    let pid: i32 = mx.req_s("pid").trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Not "as expected": the multiplexor did not kill it (protocol/multiplexor.md §17).
    let log = mx.wait_log(&format!(
        "Reap: worker 0 (pid {pid}) exited due to signal 9 (WORKER DIED UNEXPECTEDLY)"
    ));
    assert!(!log.contains("as expected"), "{log}");
}

#[test]
fn stats_file_reopened_on_sighup() {
    let sp = Spool::new();
    let stats = sp.file("stats");
    let s = stats.display().to_string();
    let mx = Mx::start_in(sp, &worker_path(), &["-t", &s, "-u"]);
    assert_eq!(mx.req(b"scan A /x\n"), b"ok\n");
    let rotated = stats.with_extension("1");
    std::fs::rename(&stats, &rotated).unwrap();
    mx.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stats.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(mx.req(b"scan B /x\n"), b"ok\n");
    let new = std::fs::read_to_string(&stats).unwrap();
    assert!(
        new.contains(" StartFilter ") && new.contains(" EndFilter "),
        "{new}"
    );
    assert!(!new.contains("StartWorker"), "{new}");
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("StartWorker"));
}

#[test]
fn minimum_is_reached_one_worker_per_slew_period() {
    let mx = Mx::start(&["-x", "3", "-m", "3", "-w", "1"]);
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = mx.req_s("status");
        let running = st
            .split(' ')
            .next()
            .unwrap()
            .chars()
            .filter(|&c| c != 'S')
            .count();
        seen.insert(running);
        if running == 3 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen.contains(&3), "{seen:?}");
    // Not all at once: the intermediate counts were visible.
    assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
}

#[test]
fn stats_to_syslog() {
    let mx = Mx::start_logged(&["-T"]);
    let log = mx.wait_log(
        " StartWorker worker=0 nworkers=1 nbusy=0 reason=\"Bringing workers up to minWorkers (1)\"",
    );
    let line = log.lines().find(|l| l.contains(" StartWorker ")).unwrap();
    // `stats <epoch>.<ms> <event> …`: the stats-file line without its date.
    let rest = &line[line.find("stats ").unwrap() + 6..];
    let (stamp, tail) = rest.split_once(' ').unwrap();
    let (secs, ms) = stamp.split_once('.').unwrap();
    assert!(secs.parse::<u64>().is_ok() && ms.len() == 3, "{line}");
    assert!(tail.starts_with("StartWorker worker=0"), "{line}");
}
