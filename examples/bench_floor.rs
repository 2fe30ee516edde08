//! What indymilter itself costs, against mailmunge (bench/README.md,
//! `bench_floor`). Two milters, each fresh per run: a minimal indymilter
//! milter (bench/floor_milter.rs: this program in `serve` mode, the
//! runtime mailmunge builds, every callback registered and answering
//! continue at once, no per-connection data, no spool, no multiplexor) and
//! the real `mailmunge` (with a multiplexor of no-op workers and `-q`, so
//! connect costs no `free` request).
//!
//! - Idle sessions: N MTA connections that negotiate, send connect and
//!   HELO and then stay silent; the milter's RSS before and with them.
//!   The floor's figure per session is what indymilter holds (its 8 KiB
//!   read and 8 KiB write buffers, two tasks, a channel); mailmunge's
//!   minus the floor's is what mailmunge adds.
//! - Messages: one MTA session at a time sends the 2 kB message of
//!   bench_milter for `--seconds`; the milter's CPU per 1000 messages.
//!   The floor's figure is the protocol work no callback can avoid.
//!
//! cargo build --release --bins --examples && cargo run --release --example bench_floor
//!
//! Options: --idle N (default 10000; 0 skips), --seconds N (default 5; 0
//! skips), --reps N (default 2).

#[path = "../bench/floor_milter.rs"]
mod floor_milter;
#[path = "../bench/milter_client.rs"]
mod milter_client;
#[path = "../bench/support.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use milter_client::{Session, Target};
use support::{Daemon, Scratch};

fn main() -> Result<()> {
    if let Some(served) = floor_milter::serve_requested() {
        return served;
    }
    support::install_interrupt_cleanup()?;
    let n: usize = support::arg("--idle", 10000)?;
    let seconds: f64 = support::arg("--seconds", 5.0)?;
    let reps: usize = support::arg("--reps", 2)?;
    let nofile = support::raise_nofile(n as u64 + 1024)?;
    if (n as u64 + 64) > nofile {
        bail!("RLIMIT_NOFILE {nofile} is too low for {n} idle connections");
    }
    println!("# mailmunge against the indymilter floor");
    println!("machine: {}", support::machine_note());
    let scratch = Scratch::new()?;
    let mut mux = support::start_mux(&scratch, &["-m", "1", "-x", "2"])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if seconds > 0.0 {
        cpu_per_message(&scratch, &rt, seconds, reps)?;
    }
    if n > 0 {
        idle_sessions(&scratch, &rt, n, reps)?;
    }
    mux.check_alive()?;
    mux.stop();
    Ok(())
}

const NAMES: [&str; 2] = [floor_milter::NAME, "mailmunge"];

/// A fresh milter of kind `i` (0: the floor, 1: mailmunge) on a socket
/// named after `tag`.
fn start(scratch: &Scratch, i: usize, tag: &str, max_conn: usize) -> Result<(Target, Daemon)> {
    let target = Target::Unix(scratch.spool.join(format!("{tag}-{i}.sock")));
    let milter = if i == 0 {
        floor_milter::start(&target)?
    } else {
        start_ours(scratch, &target, max_conn)?
    };
    Ok((target, milter))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One session at a time, the 2 kB message: milter CPU per 1000 messages.
fn cpu_per_message(
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    seconds: f64,
    reps: usize,
) -> Result<()> {
    let msg = std::sync::Arc::new(milter_client::Message::plain(2300, 1));
    println!("\n## messages: 1 session, 2 kB plain, {seconds} s per run\n");
    println!("| milter | run | msgs/s | milter CPU ms/1000 msgs | errors |");
    println!("|---|---:|---:|---:|---:|");
    let mut per = [Vec::new(), Vec::new()];
    for rep in 1..=reps {
        for (i, which) in NAMES.into_iter().enumerate() {
            let (target, mut milter) = start(scratch, i, &format!("msg-{rep}"), 1000)?;
            // Warm-up: the workers are up, the allocator has its arenas.
            rt.block_on(milter_client::drive(&target, msg.clone(), 1, 1.0));
            let pid = milter.pid();
            let before = support::cpu_ticks(&[pid]);
            let run = rt.block_on(milter_client::drive(&target, msg.clone(), 1, seconds));
            let cpu = run.cpu_ms_per_1000(support::cpu_ticks(&[pid]) - before);
            milter.check_alive()?;
            println!(
                "| {which} | {rep} | {:.0} | {cpu:.0} | {} |",
                run.per_second(),
                run.errors
            );
            per[i].push(cpu);
            milter.stop();
        }
    }
    let (floor, ours) = (median(&mut per[0]), median(&mut per[1]));
    println!(
        "\nmilter CPU per 1000 messages (median): indymilter floor {floor:.0} ms, mailmunge {ours:.0} ms ({:.0} ms above the floor)",
        ours - floor
    );
    Ok(())
}

/// `n` idle sessions on each milter: RSS per session.
fn idle_sessions(
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    n: usize,
    reps: usize,
) -> Result<()> {
    println!("\n## idle sessions: {n} connections, each negotiated, connect and HELO sent, then silent\n");
    println!(
        "| milter | run | RSS before kB | RSS with them kB | kB per session | threads | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut per = [Vec::new(), Vec::new()];
    for rep in 1..=reps {
        for (i, which) in NAMES.into_iter().enumerate() {
            let (target, mut milter) = start(scratch, i, &format!("idle-{rep}"), n + 100)?;
            let row = measure(rt, &mut milter, &target, n)?;
            println!(
                "| {which} | {rep} | {} | {} | {:.2} | {} | {} |",
                row.rss0, row.rss1, row.per_session, row.threads, row.failures
            );
            per[i].push(row.per_session);
            milter.stop();
        }
    }
    let (floor, ours) = (median(&mut per[0]), median(&mut per[1]));
    println!();
    println!(
        "per idle session (median): indymilter floor {floor:.2} kB, mailmunge {ours:.2} kB, mailmunge's own {:.2} kB; {n} sessions: floor {:.1} MB, mailmunge {:.1} MB",
        ours - floor,
        floor * n as f64 / 1000.0,
        ours * n as f64 / 1000.0
    );
    Ok(())
}

struct Row {
    rss0: u64,
    rss1: u64,
    per_session: f64,
    threads: u64,
    failures: usize,
}

/// Opens `n` idle sessions on a fresh milter and reads its RSS before and
/// with them.
fn measure(
    rt: &tokio::runtime::Runtime,
    milter: &mut Daemon,
    target: &Target,
    n: usize,
) -> Result<Row> {
    let pid = milter.pid();
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = support::proc_stat(pid).context("milter /proc")?.rss_kb;
    let mut held: Vec<Session> = Vec::new();
    let (failures, first) = milter_client::open_idle(rt, target, n, true, &mut held);
    if let Some(e) = first {
        eprintln!("{failures} connections failed; first: {e}");
    }
    // Let the milter settle (its last sessions' callbacks finish).
    let settle = Instant::now() + Duration::from_secs(5);
    let mut last = 0;
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(250));
        let rss = support::proc_stat(pid).map(|s| s.rss_kb).unwrap_or(0);
        if rss == last {
            break;
        }
        last = rss;
    }
    milter.check_alive()?;
    let st = support::proc_stat(pid).context("milter /proc")?;
    let per_session = if held.is_empty() {
        0.0
    } else {
        (st.rss_kb as f64 - rss0 as f64) / held.len() as f64
    };
    drop(held);
    Ok(Row {
        rss0,
        rss1: st.rss_kb,
        per_session,
        threads: st.threads,
        failures,
    })
}

fn start_ours(scratch: &Scratch, target: &Target, max_conn: usize) -> Result<Daemon> {
    let mut cmd = scratch.milter_command(&target.spec())?;
    cmd.arg("-q")
        .arg("--max-connections")
        .arg(max_conn.to_string());
    milter_client::spawn_milter("mailmunge", cmd, scratch.root.join("milter.log"), target)
}
