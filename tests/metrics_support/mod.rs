//! Helpers for the `--metrics` and safe-reread tests: start the multiplexor
//! on a filter of the test's choosing with the log captured, scrape the
//! metrics endpoint and parse the Prometheus text format.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mux_support::{base_args, Mx, Spool, BIN};

/// A loopback port nobody listens on right now (but someone may by the
/// time it is used: see [`start_with_metrics`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the multiplexor in the foreground on `filter`, syslog copied to
/// `<tmp>/log` (read it with `Mx::log`).
pub fn start(spool: Spool, filter: &Path, extra: &[&str]) -> Mx {
    let mut args = base_args(&spool, filter);
    args.push("-D".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = std::fs::File::create(spool.dir.path().join("log")).unwrap();
    let child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(log)
        .env("MAILMUNGE_LOG_STDERR", "1")
        .process_group(0)
        .spawn()
        .expect("start multiplexor");
    let sock = spool.file("mx.sock");
    let mx = Mx {
        child: Some(child),
        spool,
        sock,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&mx.sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "multiplexor did not open its socket within 20 s; log:\n{}",
            mx.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    mx
}

/// True when process `pid` has a socket listening on 127.0.0.1:`port`.
fn listens_on(pid: i32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|e| {
        std::fs::read_link(e.path())
            .is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
    })
}

/// Starts the multiplexor with `--metrics inet:PORT` and returns it with
/// the port once it listens there. The port is only free when chosen;
/// should another process take it before the multiplexor binds it (the
/// multiplexor then logs so and runs on without metrics), it is started
/// again in the same spool on another port.
pub fn start_with_metrics(spool: Spool, filter: &Path, extra: &[&str]) -> (Mx, u16) {
    let mut spool = spool;
    for _ in 0..5 {
        let port = free_port();
        let spec = format!("inet:{port}");
        let mut args = extra.to_vec();
        args.extend(["--metrics", &spec]);
        let mut mx = start(spool, filter, &args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if listens_on(mx.pid(), port) {
                return (mx, port);
            }
            if mx.log().contains("Unable to create metrics socket") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "multiplexor neither listened on {spec} nor logged why within 20 s; log:\n{}",
                mx.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Port taken meanwhile: stop this one, keep its spool.
        if let Some(mut c) = mx.child.take() {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        spool = std::mem::replace(&mut mx.spool, Spool::new());
    }
    panic!("no free metrics port in 5 tries");
}

/// One raw HTTP exchange with 127.0.0.1:port; the whole response.
pub fn http(port: u16, request: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("metrics port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("response before timeout");
    String::from_utf8(out).expect("UTF-8 response")
}

/// Parsed samples: `name{labels}` exactly as exposed → value.
pub type Samples = BTreeMap<String, f64>;

/// Checks the response and the text format, returns the samples: every
/// sample belongs to a family announced by `# TYPE`, values are numbers,
/// histogram buckets are cumulative and end in `+Inf` = `_count`.
pub fn parse(response: &str) -> Samples {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("header/body separator");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("length")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "unexpected line {line:?}"
        );
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let v: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value {line:?}"))
        };
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {series} without # TYPE");
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate sample {series}"
        );
    }
    // Histograms: cumulative buckets, +Inf equals _count.
    for (series, v) in &samples {
        if let Some(rest) = series.strip_prefix("mailmunge_mux_request_duration_seconds_count") {
            let cmd = rest.trim_start_matches('{').trim_end_matches('}');
            let buckets: Vec<f64> = samples
                .iter()
                .filter(|(k, _)| {
                    k.starts_with(&format!(
                        "mailmunge_mux_request_duration_seconds_bucket{{{cmd},le="
                    ))
                })
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(buckets.len(), 15, "{cmd}");
            let inf = samples
                [&format!("mailmunge_mux_request_duration_seconds_bucket{{{cmd},le=\"+Inf\"}}")];
            assert_eq!(inf, *v, "{cmd}: +Inf bucket = count");
            assert!(
                buckets.iter().all(|&b| b <= inf),
                "{cmd}: buckets cumulative"
            );
        }
    }
    samples
}

/// Scrapes GET /metrics and parses it.
pub fn scrape(port: u16) -> Samples {
    parse(&http(
        port,
        "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n",
    ))
}

/// A sample's value, 0 when absent (counters with no events yet).
pub fn val(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// Scrapes until `pred` holds (state changes are asynchronous).
pub fn scrape_until(port: u16, what: &str, pred: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = scrape(port);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}; last scrape: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
