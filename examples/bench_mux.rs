//! Multiplexor benchmark (bench/README.md): `scan` round trips through the
//! control socket of the real `mailmunge-multiplexor` with no-op Perl
//! workers (bench/noop-filter.pl) at several client counts, the same for
//! the built-in `free` (no worker involved), on-demand worker activation
//! time with and without `-E`, and the multiplexor's RSS idle and under
//! load.
//!
//! cargo build --release --bins && cargo run --release --example bench_mux
//!
//! Options: --seconds N (per measurement, default 5), --clients 1,4,16,
//! --activations N (default 10), --spool-base DIR (default /dev/shm when it
//! is a tmpfs), --mux-args "..." (extra multiplexor options).

#[path = "../bench/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use support::{Latencies, Run, Scratch};

/// The message every scan parses.
const MESSAGE: &str = "Received: from client.example (client.example [127.0.0.1])\n\tby mx.example with ESMTP id 4Bench\n\
From: Sender <sender@example.com>\nTo: Recipient <rcpt@example.net>\nSubject: benchmark message\n\
Date: Thu, 26 Nov 2026 12:00:00 +0000\nMessage-ID: <bench@example.com>\nMIME-Version: 1.0\n\
Content-Type: text/plain; charset=us-ascii\n\n";

fn main() -> Result<()> {
    support::install_interrupt_cleanup()?;
    let seconds: f64 = support::arg("--seconds", 5.0)?;
    let clients = support::list_arg("--clients", &[1, 4, 16])?;
    let activations: usize = support::arg("--activations", 10)?;
    let max_clients = clients.iter().copied().max().unwrap_or(1);
    println!("# mailmunge-multiplexor benchmark");
    println!("machine: {}", support::machine_note());
    println!("per measurement: {seconds} s; clients: {clients:?}");

    let scratch = Scratch::new()?;
    println!("{}", scratch.describe());
    let dirs = (0..max_clients)
        .map(|i| make_workdir(&scratch.spool, i))
        .collect::<Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    throughput(&scratch, &rt, &dirs, &clients, seconds)?;
    for embedded in [false, true] {
        activation(&scratch, &dirs[0], activations, embedded)?;
    }
    Ok(())
}

/// A working directory holding what a scan reads (COMMANDS, INPUTMSG,
/// HEADERS), writable by the worker user; scans reuse it.
fn make_workdir(spool: &Path, i: usize) -> Result<PathBuf> {
    let dir = spool.join(format!("mm-bench{i}"));
    std::fs::create_dir(&dir)?;
    support::chmod(&dir, 0o777)?;
    let body: String = (0..30)
        .map(|n| format!("Line {n} of a plain benchmark body, long enough to look like mail.\n"))
        .collect();
    let headers = MESSAGE.trim_end_matches('\n').to_string() + "\n";
    let files = [
        ("COMMANDS", "S<sender@example.com>\nQBench\nR<rcpt@example.net> smtp example.net rcpt@example.net\nF\n".to_string()),
        ("INPUTMSG", format!("{MESSAGE}{body}")),
        ("HEADERS", headers),
    ];
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::write(&p, data)?;
        support::chmod(&p, 0o666)?;
    }
    Ok(dir)
}

fn scan_line(dir: &Path) -> Vec<u8> {
    format!("scan Bench {}\n", dir.display()).into_bytes()
}

/// Removes what the previous scan left behind (the worker refuses to
/// reuse an existing `Work` directory), as the milter would start from a
/// fresh working directory.
fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("Work"));
}

/// One blocking scan of `dir`, untimed.
fn scan(sock: &Path, dir: &Path) -> Result<Vec<u8>> {
    clean(dir);
    Ok(support::mux_request(sock, &scan_line(dir))?)
}

/// Outcome of one timed run.
/// `clients` tasks, each sending its request back to back until the time is
/// up; a reply counts as good when `good` accepts it.
fn drive(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    lines: &[(Vec<u8>, Option<PathBuf>)],
    clients: usize,
    seconds: f64,
    good: fn(&[u8]) -> bool,
) -> Run {
    let sock = Arc::new(sock.to_path_buf());
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (line, dir) = lines[c % lines.len()].clone();
            let sock = sock.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Latencies::default();
                let (mut errors, mut first_error) = (0, None);
                while Instant::now() < until {
                    if let Some(d) = &dir {
                        clean(d);
                    }
                    let t = Instant::now();
                    match support::mux_request_async(&sock, &line).await {
                        Ok(r) if good(&r) => lat.push(t.elapsed()),
                        Ok(r) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                String::from_utf8_lossy(&r).trim_end().to_string()
                            });
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                            // Do not spin on a dead socket.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (lat, errors, first_error)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                all.push(r);
            }
        }
        all
    });
    let mut run = Run {
        elapsed: started.elapsed(),
        ..Run::default()
    };
    for (lat, errors, first) in results {
        run.add(lat, errors, first);
    }
    run
}

fn scan_ok(r: &[u8]) -> bool {
    r == b"ok\n"
}

fn free_ok(r: &[u8]) -> bool {
    r.first().is_some_and(u8::is_ascii_digit)
}

fn throughput(
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    dirs: &[PathBuf],
    clients: &[usize],
    seconds: f64,
) -> Result<()> {
    let max_clients = dirs.len();
    let max_workers = max_clients.to_string();
    // Workers never retire for age or request count during the run, so the
    // figures are round trips only (activation is measured separately).
    let mut mux = support::start_mux(
        scratch,
        &["-m", "1", "-x", &max_workers, "-r", "1000000", "-i", "3600"],
    )?;
    let sock = scratch.mux_socket();
    let mux_pid = mux.pid();
    let first = scan(&sock, &dirs[0])?;
    if first != b"ok\n" {
        bail!(
            "first scan answered {:?}; multiplexor output:\n{}",
            String::from_utf8_lossy(&first),
            mux.output()
        );
    }
    let results =
        std::fs::read_to_string(dirs[0].join("RESULTS")).context("RESULTS after the first scan")?;
    println!("\nfilter: Mailmunge::Filter subclass with an empty filter_message; each scan reads COMMANDS,");
    println!(
        "parses a {}-byte INPUTMSG and writes RESULTS ({:?}).",
        std::fs::metadata(dirs[0].join("INPUTMSG"))?.len(),
        results
    );
    std::thread::sleep(Duration::from_millis(500));
    let idle1 = support::proc_stat(mux_pid).context("multiplexor /proc")?;

    // Warm-up at the highest concurrency brings up one worker per client.
    let lines: Vec<(Vec<u8>, Option<PathBuf>)> = dirs
        .iter()
        .map(|d| (scan_line(d), Some(d.clone())))
        .collect();
    let warm = drive(
        rt,
        &sock,
        &lines,
        max_clients,
        3.0_f64.min(seconds),
        scan_ok,
    );
    if warm.ok == 0 {
        bail!(
            "warm-up made no successful scan ({:?}); output:\n{}",
            warm.first_error,
            mux.output()
        );
    }
    let workers = support::worker_pids(&sock);
    std::thread::sleep(Duration::from_millis(500));
    let idle_n = support::proc_stat(mux_pid).context("multiplexor /proc")?;

    println!(
        "\n## scan round trips (control socket -> worker -> reply), {} workers running",
        workers.len()
    );
    println!();
    println!("| clients | requests/s | p50 ms | p99 ms | errors | mux CPU ms/1000 req | workers CPU ms/1000 req | mux peak RSS kB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut peak_all = 0;
    for &c in clients {
        mux.check_alive()?;
        let before = (support::cpu_ticks(&[mux_pid]), support::cpu_ticks(&workers));
        let sampler = support::RssSampler::start(mux_pid);
        let mut run = drive(rt, &sock, &lines, c, seconds, scan_ok);
        let peak = sampler.stop();
        peak_all = peak_all.max(peak);
        let after = (support::cpu_ticks(&[mux_pid]), support::cpu_ticks(&workers));
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.0} | {peak} |",
            run.per_second(),
            run.lat.quantile_ms(0.50),
            run.lat.quantile_ms(0.99),
            run.errors,
            run.cpu_ms_per_1000(after.0 - before.0),
            run.cpu_ms_per_1000(after.1 - before.1),
        );
        if let Some(e) = run.first_error {
            println!("|  | first error: {e} | | | | | | |");
        }
    }

    println!("\n## control socket only (`free`, answered by the multiplexor itself)");
    println!();
    println!("| clients | requests/s | p50 ms | p99 ms | errors | mux CPU ms/1000 req |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &c in clients {
        let before = support::cpu_ticks(&[mux_pid]);
        let mut run = drive(
            rt,
            &sock,
            &[(b"free\n".to_vec(), None)],
            c,
            seconds,
            free_ok,
        );
        let after = support::cpu_ticks(&[mux_pid]);
        let per_k = run.cpu_ms_per_1000(after - before);
        println!(
            "| {c} | {:.0} | {:.3} | {:.3} | {} | {per_k:.1} |",
            run.per_second(),
            run.lat.quantile_ms(0.50),
            run.lat.quantile_ms(0.99),
            run.errors
        );
    }
    let end = support::proc_stat(mux_pid).context("multiplexor /proc")?;
    println!("\n## multiplexor memory (VmRSS from /proc/PID/status)");
    println!();
    println!("| state | RSS kB |");
    println!("|---|---:|");
    println!("| idle, 1 worker | {} |", idle1.rss_kb);
    println!(
        "| idle, {} workers (after warm-up) | {} |",
        workers.len(),
        idle_n.rss_kb
    );
    println!("| under load (peak of 50 ms samples) | {peak_all} |");
    println!("| after the runs | {} (VmHWM {}) |", end.rss_kb, end.hwm_kb);
    println!("threads: {}, open fds: {}", end.threads, end.fds);
    match mux.stop() {
        Some(t) => println!(
            "SIGTERM to the multiplexor and its {} workers: all gone in {:.0} ms",
            workers.len(),
            t.as_secs_f64() * 1000.0
        ),
        None => println!("warning: the multiplexor needed SIGKILL to stop"),
    }
    Ok(())
}

/// On-demand activation. With `-r 2` every worker serves two requests and
/// retires, and a long `-w` keeps the minimum-worker filler from starting a
/// replacement; so once every slot is Stopped, the next scan has to start a
/// worker (cold) and the one after it runs on that worker (warm). The
/// difference of the medians is the activation time. Meanwhile a thread
/// asks `free` every 2 ms: its worst latency shows whether starting a
/// worker holds up the multiplexor's other clients.
fn activation(scratch: &Scratch, dir: &Path, rounds: usize, embedded: bool) -> Result<()> {
    let mut args = vec!["-m", "1", "-x", "4", "-w", "600", "-r", "2", "-i", "3600"];
    if embedded {
        args.push("-E");
    }
    let mut mux = support::start_mux(scratch, &args)?;
    let sock = scratch.mux_socket();
    let a = support::activation_rounds(&sock, &mut mux, rounds, &|| scan(&sock, dir), b"ok\n")?;
    let (mut cold, mut warm, mut free_lat, free_max) = (a.cold, a.warm, a.free, a.free_max);
    let ignored = mux.output().contains("Ignoring -E");
    let label = match (embedded, ignored) {
        (false, _) => "without -E (fork+exec of the filter)".to_string(),
        (true, false) => "with -E (fork of the preloaded filter)".to_string(),
        (true, true) => "with -E: NOT IMPLEMENTED by this multiplexor (it prints \"Ignoring -E flag\"), so this is exec again".to_string(),
    };
    let (c50, cmax, w50) = (
        cold.quantile_ms(0.5),
        cold.quantile_ms(1.0),
        warm.quantile_ms(0.5),
    );
    println!("\n## worker activation {label}");
    println!();
    println!("{rounds} rounds: scan needing a new worker p50 {c50:.1} ms (max {cmax:.1} ms); second scan on that worker p50 {w50:.1} ms;");
    println!(
        "activation ~ {:.1} ms (difference of the medians)",
        c50 - w50
    );
    println!(
        "`free` asked every 2 ms meanwhile ({} answers): p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        free_lat.len(),
        free_lat.quantile_ms(0.5),
        free_lat.quantile_ms(0.99),
        free_max.as_secs_f64() * 1000.0
    );
    mux.stop();
    Ok(())
}
