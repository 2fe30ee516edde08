//! Milter benchmark (bench/README.md): a load generator built on the
//! library's MTA-side client plays the MTA against the real `mailmunge` and
//! `mailmunge-multiplexor` with no-op Perl workers (bench/noop-filter.pl),
//! over a unix socket and over TCP on 127.0.0.1, then holds many idle
//! (negotiated) milter connections and checks that new sessions are still
//! served.
//!
//! cargo build --release --bins && cargo run --release --example bench_milter
//!
//! Options: --seconds N (per measurement, default 5), --sessions 1,4,16,
//! --idle 1000,10000 (0 skips the probe), --milter-nofile N (start the
//! milter with this soft and hard RLIMIT_NOFILE: it raises its soft limit
//! to the hard one itself),
//! --spool-base DIR (default /dev/shm when it is a tmpfs), --mux-args and
//! --milter-args "..." (extra daemon options).

#[path = "../bench/milter_client.rs"]
mod milter_client;
#[path = "../bench/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use milter_client::{drive, free_tcp_port, one_message, Message, Session, Target};
use support::{Daemon, Scratch};

/// The message of every session: 2 kB of plain text, one recipient.
fn message() -> Arc<Message> {
    Arc::new(Message::plain(2300, 1))
}

/// Starts `mailmunge -D` on `target`, connected to the scratch multiplexor,
/// and waits until it accepts connections.
fn start_milter(scratch: &Scratch, target: &Target, nofile: Option<u64>) -> Result<Daemon> {
    let mut cmd = scratch.milter_command(&target.spec())?;
    cmd.args(support::extra_args("--milter-args")?);
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let (_, hard) =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
                let n = n.min(hard);
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)?;
                Ok(())
            });
        }
    }
    milter_client::spawn_milter(
        "mailmunge",
        cmd,
        scratch.root.join(format!("milter-{}.log", target.name())),
        target,
    )
}

fn main() -> Result<()> {
    support::install_interrupt_cleanup()?;
    let seconds: f64 = support::arg("--seconds", 5.0)?;
    let sessions = support::list_arg("--sessions", &[1, 4, 16])?;
    let idle = support::list_arg("--idle", &[1000, 10000])?;
    let milter_nofile: u64 = support::arg("--milter-nofile", 0)?;
    let milter_nofile = (milter_nofile > 0).then_some(milter_nofile);
    let max_sessions = sessions.iter().copied().max().unwrap_or(1);
    let max_idle = idle.iter().copied().max().unwrap_or(0) as u64;
    // The daemons started below inherit this limit.
    let nofile = support::raise_nofile(max_idle + 1024)?;
    println!("# mailmunge milter benchmark");
    println!("machine: {}", support::machine_note());
    println!("per measurement: {seconds} s; sessions: {sessions:?}; RLIMIT_NOFILE (generator, inherited by the daemons): {nofile}");
    if let Some(n) = milter_nofile {
        println!("milter started with soft RLIMIT_NOFILE {n}");
    }
    if (max_idle + 64) > nofile {
        println!("warning: RLIMIT_NOFILE {nofile} is too low for {max_idle} idle connections");
    }

    let scratch = Scratch::new()?;
    println!("{}", scratch.describe());
    // One worker per concurrent session: the milter's connect-time `free`
    // check then never finds the pool exhausted (queueing is not measured).
    let max_workers = max_sessions.to_string();
    let mut mux = support::start_mux(
        &scratch,
        &["-m", "2", "-x", &max_workers, "-r", "1000000", "-i", "3600"],
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let targets = [
        Target::Unix(scratch.spool.join("milter.sock")),
        Target::Tcp(free_tcp_port()?),
    ];
    for target in &targets {
        let mut milter = start_milter(&scratch, target, milter_nofile)?;
        let client = milter_client::client();
        let first = rt.block_on(one_message(target, &client, &message()));
        match first {
            Ok(v) if v.passed() => {
                if target.name() == "unix" {
                    println!(
                        "\nfirst message: final action {}, modifications: {}",
                        v.describe(),
                        v.changes()
                    );
                }
            }
            Ok(v) => bail!(
                "first message: final action {}; milter output:\n{}",
                v.describe(),
                milter.output()
            ),
            Err(e) => bail!(
                "first message failed: {e}; milter output:\n{}\nmultiplexor output:\n{}",
                milter.output(),
                mux.output()
            ),
        }
        // Warm-up brings up the workers.
        let warm = rt.block_on(drive(target, message(), max_sessions, 3.0_f64.min(seconds)));
        if warm.ok == 0 {
            bail!(
                "warm-up failed: {:?}; milter output:\n{}",
                warm.first_error,
                milter.output()
            );
        }
        let workers = support::worker_pids(&scratch.mux_socket());
        let milter_pid = milter.pid();
        println!(
            "\n## {} socket ({}), {} workers",
            target.name(),
            target.spec(),
            workers.len()
        );
        println!();
        println!("| sessions | msgs/s | p50 ms | p99 ms | errors | milter CPU ms/1000 msgs | mux CPU ms/1000 msgs | workers CPU ms/1000 msgs | milter peak RSS kB |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &n in &sessions {
            milter.check_alive()?;
            let pids = [milter_pid, mux.pid()];
            let before: Vec<u64> = pids.iter().map(|&p| support::cpu_ticks(&[p])).collect();
            let wbefore = support::cpu_ticks(&workers);
            let sampler = support::RssSampler::start(milter_pid);
            let mut run = rt.block_on(drive(target, message(), n, seconds));
            let peak = sampler.stop();
            let after: Vec<u64> = pids.iter().map(|&p| support::cpu_ticks(&[p])).collect();
            let wafter = support::cpu_ticks(&workers);
            println!(
                "| {n} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {peak} |",
                run.per_second(),
                run.lat.quantile_ms(0.5),
                run.lat.quantile_ms(0.99),
                run.errors,
                run.cpu_ms_per_1000(after[0] - before[0]),
                run.cpu_ms_per_1000(after[1] - before[1]),
                run.cpu_ms_per_1000(wafter - wbefore),
            );
            if let Some(e) = run.first_error {
                println!("|  | first error: {e} | | | | | | | |");
            }
        }
        let st = support::proc_stat(milter_pid).context("milter /proc")?;
        println!(
            "milter after the runs: RSS {} kB (VmHWM {} kB), {} threads, {} fds",
            st.rss_kb, st.hwm_kb, st.threads, st.fds
        );
        if milter.stop().is_none() {
            println!("warning: the milter needed SIGKILL to stop");
        }
    }

    if max_idle > 0 {
        idle_probe(&scratch, &rt, &idle, milter_nofile)?;
    }
    mux.check_alive()?;
    mux.stop();
    Ok(())
}

/// Holds `counts` negotiated, idle connections (cumulatively) on a fresh
/// unix-socket milter, reporting its RSS and serving live sessions beside
/// them.
fn idle_probe(
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    counts: &[usize],
    nofile: Option<u64>,
) -> Result<()> {
    let target = Target::Unix(scratch.spool.join("milter-idle.sock"));
    let mut milter = start_milter(scratch, &target, nofile)?;
    let pid = milter.pid();
    std::thread::sleep(Duration::from_millis(300));
    let base = support::proc_stat(pid).context("milter /proc")?;
    println!("\n## idle sessions (unix socket): negotiated, then silent");
    println!();
    println!("| idle connections | open time s | milter RSS kB | kB per idle conn | milter threads | milter fds | live msgs/s beside them | live p50 ms | live p99 ms | live errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| 0 | - | {} | - | {} | {} | - | - | - | - |",
        base.rss_kb, base.threads, base.fds
    );
    let mut held: Vec<Session> = Vec::new();
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    for &n in &sorted {
        let t = Instant::now();
        let (failures, first_failure) = milter_client::open_idle(rt, &target, n, false, &mut held);
        let open_time = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let alive = milter.check_alive();
        let st = support::proc_stat(pid);
        let (rss, threads, fds) = st
            .map(|s| (s.rss_kb, s.threads, s.fds))
            .unwrap_or((0, 0, 0));
        let per_conn = if held.is_empty() {
            0.0
        } else {
            (rss as f64 - base.rss_kb as f64) / held.len() as f64
        };
        let mut live = if alive.is_ok() {
            Some(rt.block_on(drive(&target, message(), 4, 3.0)))
        } else {
            None
        };
        let lrow = match live.as_mut() {
            Some(r) => format!(
                "{:.0} | {:.2} | {:.2} | {}",
                r.ok as f64 / r.elapsed.as_secs_f64(),
                r.lat.quantile_ms(0.5),
                r.lat.quantile_ms(0.99),
                r.errors
            ),
            None => "- | - | - | milter gone".into(),
        };
        println!(
            "| {} | {open_time:.1} | {rss} | {per_conn:.1} | {threads} | {fds} | {lrow} |",
            held.len()
        );
        if let Some(e) = first_failure {
            println!("|  | {failures} connections failed; first: {e} | | | | | | | | |");
        }
        if let Some(e) = live.and_then(|r| r.first_error) {
            println!("|  | first live error: {e} | | | | | | | | |");
        }
        if let Err(e) = alive {
            println!(
                "\nthe milter died while holding {} connections: {e}",
                held.len()
            );
            return Ok(());
        }
    }
    // The idle sessions still answer: one of them completes a message.
    if let Some(s) = held.last_mut() {
        let r = rt.block_on(milter_client::greet(s, "late.example", 40001));
        println!(
            "an idle session still answers after the probe: {}",
            if r.is_ok() { "yes" } else { "NO" }
        );
    }
    let held_n = held.len();
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    if let Some(st) = support::proc_stat(pid) {
        println!(
            "after closing the {held_n} idle connections: milter RSS {} kB (VmHWM {} kB), {} fds",
            st.rss_kb, st.hwm_kb, st.fds
        );
    }
    milter.stop();
    Ok(())
}
