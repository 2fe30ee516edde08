//! The `--metrics` endpoint (protocol/metrics.md): real multiplexor, test
//! worker, traffic through the control socket, scrapes parsed as the
//! Prometheus text format.

mod metrics_support;
mod mux_support;
use metrics_support::*;
use mux_support::*;

fn wait_idle(port: u16, n: f64) -> Samples {
    scrape_until(port, "idle workers", |s| {
        val(s, "mailmunge_mux_workers{state=\"idle\"}") >= n
            && val(s, "mailmunge_mux_workers{state=\"busy\"}") == 0.0
    })
}

#[test]
fn counters_follow_the_traffic() {
    let (mx, port) = start_with_metrics(
        Spool::new(),
        &worker_path(),
        &["-x", "3", "-m", "2", "-w", "1"],
    );
    let s = wait_idle(port, 2.0);
    assert_eq!(val(&s, "mailmunge_mux_workers_max"), 3.0);
    let states: f64 = ["idle", "busy", "stopped", "killed"]
        .iter()
        .map(|st| val(&s, &format!("mailmunge_mux_workers{{state=\"{st}\"}}")))
        .sum();
    assert_eq!(states, 3.0, "{s:#?}");
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_worker_activations_total{reason=\"min_workers\"}"
        ),
        2.0
    );
    assert_eq!(val(&s, "mailmunge_mux_queue_length"), 0.0);
    assert_eq!(val(&s, "mailmunge_mux_messages_scanned_total"), 0.0);
    assert_eq!(val(&s, "mailmunge_mux_generation"), 0.0);
    assert_eq!(val(&s, "mailmunge_mux_info{version=\"3.09\"}"), 1.0);
    // One gauge per running worker, in bytes, not kB: a perl worker has
    // more than 1 MB resident once it has loaded. Idle from the moment it
    // is exec'd, a new worker may not have loaded yet (nor its gauge be
    // readable: a worker whose /proc entry cannot be read is left out).
    let rss = |s: &Samples| {
        s.iter()
            .filter(|(k, _)| k.starts_with("mailmunge_mux_worker_resident_bytes{"))
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    scrape_until(port, "two workers with more than 1 MB resident", |s| {
        let r = rss(s);
        r.len() == 2 && r.iter().all(|&v| v > 1_000_000.0)
    });

    for _ in 0..3 {
        assert_eq!(mx.req_s("ping"), "PONG\n");
    }
    assert_eq!(mx.req_s("scan QID1 /nowhere"), "ok\n");
    assert_eq!(mx.req_s("scan QID2 /nowhere"), "ok\n");
    assert_eq!(
        mx.req_s("recipok <a@example.com> <b@example.org>"),
        "ok 1 ok 250 2.1.0 0\n"
    );
    assert_eq!(mx.req_s("sleep 0.3"), "slept 0.3\n");
    assert_eq!(mx.req_s("die"), "ERR No response from worker\n");
    let long = format!("echo {}", "x".repeat(5000));
    assert_eq!(mx.req_s(&long), "error: Command too long\n");

    let s = scrape_until(port, "the dead worker reaped", |s| {
        val(s, "mailmunge_mux_worker_reaps_total{reason=\"died\"}") == 1.0
    });
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"ping\",outcome=\"reply\"}"
        ),
        3.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"scan\",outcome=\"reply\"}"
        ),
        2.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"recipok\",outcome=\"reply\"}"
        ),
        1.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"other\",outcome=\"reply\"}"
        ),
        1.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"other\",outcome=\"no_response\"}"
        ),
        1.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_requests_total{command=\"other\",outcome=\"too_long\"}"
        ),
        1.0
    );
    assert_eq!(val(&s, "mailmunge_mux_messages_scanned_total"), 2.0);
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_request_duration_seconds_count{command=\"ping\"}"
        ),
        3.0
    );
    assert_eq!(
        val(
            &s,
            "mailmunge_mux_request_duration_seconds_count{command=\"other\"}"
        ),
        2.0
    );
    // Seconds: the 0.3 s sleep lands above the 0.25 s bound, and the sum
    // is at least 0.3 but far below 300 (milliseconds), however slow the
    // machine. (No bound on the pings: they may take long on a loaded one.)
    assert!(
        val(
            &s,
            "mailmunge_mux_request_duration_seconds_bucket{command=\"other\",le=\"0.25\"}"
        ) <= 1.0
    );
    let other = val(
        &s,
        "mailmunge_mux_request_duration_seconds_sum{command=\"other\"}",
    );
    assert!((0.3..60.0).contains(&other), "{other}");
    // Worker deaths refill to -m.
    let s = wait_idle(port, 2.0);
    assert!(
        val(
            &s,
            "mailmunge_mux_worker_activations_total{reason=\"min_workers\"}"
        ) >= 3.0,
        "{s:#?}"
    );

    // A request in progress shows in the oldest-busy gauge. The idle
    // workers are stopped first, so that the request stays in progress
    // until the gauge has been seen, however slow the scrapes.
    assert_eq!(val(&s, "mailmunge_mux_oldest_busy_seconds"), 0.0);
    let held = mx.hold_idle_workers(2);
    let sock = mx.sock.clone();
    let slow = std::thread::spawn(move || request(&sock, b"ping\n"));
    scrape_until(port, "a busy worker", |s| {
        val(s, "mailmunge_mux_oldest_busy_seconds") >= 0.2
    });
    drop(held);
    assert_eq!(slow.join().unwrap(), b"PONG\n");
    assert_eq!(val(&scrape(port), "mailmunge_mux_oldest_busy_seconds"), 0.0);

    // A reread retires the idle workers and counts under that reason.
    assert_eq!(mx.req_s("reread"), "Forced reread of filter rules\n");
    let s = scrape_until(port, "reread retirements reaped", |s| {
        val(s, "mailmunge_mux_worker_reaps_total{reason=\"reread\"}") >= 2.0
    });
    assert_eq!(val(&s, "mailmunge_mux_generation"), 1.0);
    assert_eq!(val(&s, "mailmunge_mux_rereads_total{result=\"done\"}"), 1.0);
    assert_eq!(
        val(&s, "mailmunge_mux_rereads_total{result=\"refused\"}"),
        0.0
    );
    assert!(
        val(
            &s,
            "mailmunge_mux_worker_retirements_total{reason=\"reread\"}"
        ) >= 2.0
    );
}

#[test]
fn only_get_metrics_is_served() {
    let (_mx, port) = start_with_metrics(Spool::new(), &worker_path(), &[]);
    let r = http(port, "GET / HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
    let r = http(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.0 405 Method Not Allowed\r\n") && r.contains("Allow: GET, HEAD\r\n"),
        "{r}"
    );
    let r = http(port, "hello\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{r}");
    let r = http(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.0 200 OK\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    // A query string is ignored.
    let s = parse(&http(
        port,
        "GET /metrics?name[]=x HTTP/1.1\r\nHost: x\r\n\r\n",
    ));
    assert!(s.contains_key("mailmunge_mux_queue_length"));
    // A client that sends nothing does not block others.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(scrape(port).contains_key("mailmunge_mux_uptime_seconds"));
}

#[test]
fn bad_metrics_spec_is_fatal() {
    let sp = Spool::new();
    let mut args = base_args(&sp, &worker_path());
    args.extend(["-D".into(), "--metrics".into(), "inet:notaport".into()]);
    let out = std::process::Command::new(BIN)
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics"), "{err}");
}

#[test]
fn metrics_on_a_unix_socket() {
    use std::io::{Read, Write};
    let sp = Spool::new();
    let path = sp.file("metrics.sock");
    let spec = format!("unix:{}", path.display());
    let mut mx = start(sp, &worker_path(), &["--metrics", &spec]);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .expect("metrics socket exists once the control socket does");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let samples = parse(&out);
    assert_eq!(val(&samples, "mailmunge_mux_workers_max"), 2.0);
    // Removed at exit like the control socket.
    mx.signal(libc::SIGTERM);
    assert_eq!(mx.wait_exit(std::time::Duration::from_secs(30)), Some(0));
    assert!(!path.exists(), "metrics socket removed at exit");
}

#[test]
fn a_busy_port_does_not_stop_the_multiplexor() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("inet:{}", taken.local_addr().unwrap().port());
    let mx = start(Spool::new(), &worker_path(), &["--metrics", &spec]);
    mx.wait_log(&format!("Unable to create metrics socket {spec}"));
    assert_eq!(mx.req_s("ping"), "PONG\n");
}

#[test]
fn idle_connections_beyond_the_cap_do_not_block_scrapes() {
    let (_mx, port) = start_with_metrics(Spool::new(), &worker_path(), &[]);
    // Far more silent clients than slots: each new one pushes out the
    // oldest, and a scraper still gets its answer.
    let silent: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..3 {
        assert!(scrape(port).contains_key("mailmunge_mux_uptime_seconds"));
    }
    // The oldest silent clients were closed without a reply.
    let mut first = &silent[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    use std::io::Read;
    assert_eq!(first.read_to_end(&mut buf).unwrap_or(0), 0);
}
