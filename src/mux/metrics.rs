//! Counters of the multiplexor and their Prometheus text exposition
//! (`protocol/metrics.md`). The counters live in the [`super::pool::Pool`]
//! (`pool.metrics`) so that every hook runs under the pool mutex it already
//! holds; gauges (worker states, queue, generation, messages) are read from
//! the pool at scrape time.
//!
//! Label values are always drawn from small fixed sets: client commands and
//! retirement reasons are free text, so they are folded into categories
//! here, keeping the number of series bounded whatever clients send.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write as _};
use std::time::Duration;

use super::job::Outcome;
use super::State;

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` follows.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Worker commands that get their own label value; anything else is `other`.
const KNOWN_COMMANDS: [&str; 8] = [
    "scan", "relayok", "helook", "senderok", "recipok", "map", "tick", "ping",
];

/// The `command` label of a request line: its first word when it is one of
/// the worker protocol's commands, else `other`.
pub fn command_label(line: &[u8]) -> &'static str {
    let word = line
        .split(|&b| b == b' ' || b == b'\n')
        .next()
        .unwrap_or(b"");
    KNOWN_COMMANDS
        .iter()
        .copied()
        .find(|c| c.as_bytes() == word)
        .unwrap_or("other")
}

/// The `outcome` label of a finished request.
pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Reply(_) => "reply",
        Outcome::NoResponse => "no_response",
        Outcome::Timeout { .. } => "busy_timeout",
        Outcome::WriteFailed => "write_failed",
        Outcome::NoFree => "no_free_worker",
        Outcome::ActivateFailed => "activation_failed",
        Outcome::RecipokLimit => "recipok_limit",
        Outcome::QueueTimeout => "queue_timeout",
        Outcome::ShuttingDown => "shutting_down",
    }
}

/// Folds an activation reason (pool/mod.rs wording) into a label value.
pub fn activation_label(reason: &str) -> &'static str {
    if reason.starts_with("Bringing workers up to minWorkers") {
        "min_workers"
    } else if reason.starts_with("About to perform scan") {
        "scan"
    } else if reason.starts_with("About to run tick") {
        "tick"
    } else if reason.starts_with("About to handle map") {
        "map"
    } else if reason.starts_with("About to execute command") {
        "command"
    } else if reason.starts_with("About to reserve") {
        "reservation"
    } else {
        "other"
    }
}

/// Folds a retirement reason (pool/mod.rs / worker.rs wording) into a label.
pub fn retirement_label(reason: &str) -> &'static str {
    let table: [(&str, &'static str); 9] = [
        ("Idle timeout", "idle_timeout"),
        ("Busy timeout", "busy_timeout"),
        ("Worker has processed", "max_requests"),
        ("Worker has exceeded maximum lifetime", "max_lifetime"),
        ("New generation", "reread"),
        ("Forcing reread", "reread"),
        ("Multiplexor is shutting down", "shutdown"),
        ("Error writing command", "write_failed"),
        (
            "Worker wrote more than one reply line",
            "protocol_violation",
        ),
    ];
    if reason.starts_with("Reply line too long") {
        return "protocol_violation";
    }
    table
        .iter()
        .find(|(p, _)| reason.starts_with(p))
        .map(|(_, l)| *l)
        .unwrap_or("other")
}

/// One latency histogram (cumulative buckets are computed when rendering).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

/// Event counters, updated by hooks in the pool and the control socket.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    activations: BTreeMap<&'static str, u64>,
    retirements: BTreeMap<&'static str, u64>,
    reaps: BTreeMap<&'static str, u64>,
    rereads: BTreeMap<&'static str, u64>,
    reservations: BTreeMap<&'static str, u64>,
    /// Why each retired worker (by worker id) was asked to go, until it is
    /// reaped.
    retiring: HashMap<u64, &'static str>,
}

impl Metrics {
    /// A request from a client or a socketmap lookup finished.
    pub fn request(&mut self, line: &[u8], outcome: &Outcome, took: Duration) {
        let cmd = command_label(line);
        *self
            .requests
            .entry((cmd, outcome_label(outcome)))
            .or_default() += 1;
        self.latency
            .entry(cmd)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A request refused before reaching the pool (e.g. too long).
    pub fn refused(&mut self, line: &[u8], outcome: &'static str) {
        *self
            .requests
            .entry((command_label(line), outcome))
            .or_default() += 1;
    }

    pub fn activated(&mut self, reason: &str) {
        *self
            .activations
            .entry(activation_label(reason))
            .or_default() += 1;
    }

    /// Worker `wid` is being retired for `reason`.
    pub fn retiring(&mut self, wid: u64, reason: &str) {
        let label = retirement_label(reason);
        *self.retirements.entry(label).or_default() += 1;
        self.retiring.insert(wid, label);
    }

    /// Worker `wid` was reaped; a retired worker counts under its retirement
    /// reason, any other under how it ended.
    pub fn reaped(&mut self, wid: u64, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let label = self
            .retiring
            .remove(&wid)
            .unwrap_or(match (status.code(), status.signal()) {
                (Some(42), _) => "filter_syntax_error",
                (Some(43), _) => "filter_exec_failed",
                (Some(_), _) => "died",
                (None, Some(_)) => "died_by_signal",
                (None, None) => "died",
            });
        *self.reaps.entry(label).or_default() += 1;
    }

    /// A worker reservation event (protocol/multiplexor.md §27): `held`,
    /// `used`, `released`, `expired`, `refused`, `activate_failed`.
    pub fn reservation(&mut self, event: &'static str) {
        *self.reservations.entry(event).or_default() += 1;
    }

    /// A `reread` or SIGINT: `done` or `refused`.
    pub fn reread(&mut self, result: &'static str) {
        *self.rereads.entry(result).or_default() += 1;
    }
}

/// Per-worker memory read at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct WorkerMem {
    pub slot: usize,
    pub rss_bytes: u64,
}

/// The pool's state at scrape time, taken under its lock; the scrape is
/// rendered after the lock is released.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Slots by state: idle, busy, stopped, killed.
    pub idle: usize,
    pub busy: usize,
    pub stopped: usize,
    pub killed: usize,
    pub workers_max: usize,
    pub queue_length: usize,
    pub queue_capacity: usize,
    pub msgs: u64,
    pub generation: u64,
    pub uptime: u64,
    /// Seconds the longest-busy worker has been on its request.
    pub oldest_busy: f64,
    /// Pids of running workers by slot (their memory is read later).
    pub pids: Vec<(usize, u32)>,
}

/// Resident set size of a process from `/proc/PID/statm`; `None` when it
/// is gone or unreadable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
    Some(pages * page.ok().flatten().filter(|&p| p > 0).unwrap_or(4096) as u64)
}

/// Reads the memory of the given workers.
pub fn read_mem(pids: &[(usize, u32)]) -> Vec<WorkerMem> {
    pids.iter()
        .filter_map(|&(slot, pid)| rss_bytes(pid).map(|rss_bytes| WorkerMem { slot, rss_bytes }))
        .collect()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Formats a float the way the exposition format expects (`+Inf`, plain
/// decimals).
fn num(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// A family of one unlabelled sample.
fn single(o: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}

/// A family with one label: a sample per label value.
fn by_label<L: Display, V: Display>(
    o: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    header(o, name, kind, help);
    for (l, v) in samples {
        let _ = writeln!(o, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// The whole scrape in the Prometheus text format (version 0.0.4).
pub fn render(g: &Gauges, m: &Metrics, mem: &[WorkerMem]) -> String {
    let mut o = String::with_capacity(4096);
    pool_series(&mut o, g);
    request_series(&mut o, m);
    worker_series(&mut o, m, mem);
    daemon_series(&mut o, g, m);
    o
}

/// Worker slots by state and the queue.
fn pool_series(o: &mut String, g: &Gauges) {
    let states = [
        (State::Idle, g.idle),
        (State::Busy, g.busy),
        (State::Stopped, g.stopped),
        (State::Killed, g.killed),
    ]
    .map(|(st, n)| (st.name().to_ascii_lowercase(), n));
    let workers = ("mailmunge_mux_workers", "gauge", "Worker slots by state.");
    by_label(o, workers, "state", states);
    let sizes = [
        (
            "mailmunge_mux_workers_max",
            "Number of worker slots (-x).",
            g.workers_max,
        ),
        (
            "mailmunge_mux_queue_length",
            "Requests waiting for a free worker.",
            g.queue_length,
        ),
        (
            "mailmunge_mux_queue_capacity",
            "Maximum queue length (-q).",
            g.queue_capacity,
        ),
    ];
    for (name, help, v) in sizes {
        single(o, name, "gauge", help, v);
    }
}

/// Requests by command and outcome, and their latency by command.
fn request_series(o: &mut String, m: &Metrics) {
    header(
        o,
        "mailmunge_mux_requests_total",
        "counter",
        "Requests relayed to workers, by command and outcome.",
    );
    for ((cmd, outcome), n) in &m.requests {
        let _ = writeln!(
            o,
            "mailmunge_mux_requests_total{{command=\"{cmd}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        o,
        "mailmunge_mux_request_duration_seconds",
        "histogram",
        "Time from request to reply, queueing included, by command.",
    );
    for (cmd, h) in &m.latency {
        histogram(o, cmd, h);
    }
}

/// The samples of one command's latency histogram, buckets cumulated.
fn histogram(o: &mut String, cmd: &str, h: &Histogram) {
    let name = "mailmunge_mux_request_duration_seconds";
    let mut cum = 0;
    for (i, c) in h.counts.iter().enumerate() {
        cum += c;
        let le = num(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
        let _ = writeln!(o, "{name}_bucket{{command=\"{cmd}\",le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(o, "{name}_sum{{command=\"{cmd}\"}} {}", num(h.sum));
    let _ = writeln!(o, "{name}_count{{command=\"{cmd}\"}} {}", h.count);
}

/// Worker processes: activations, retirements, reaps, memory.
fn worker_series(o: &mut String, m: &Metrics, mem: &[WorkerMem]) {
    let families = [
        (
            "mailmunge_mux_worker_activations_total",
            "Worker processes started, by reason.",
            &m.activations,
        ),
        (
            "mailmunge_mux_worker_retirements_total",
            "Workers asked to exit, by reason.",
            &m.retirements,
        ),
        (
            "mailmunge_mux_worker_reaps_total",
            "Worker processes reaped, by retirement reason or how they died.",
            &m.reaps,
        ),
    ];
    for (name, help, counts) in families {
        by_label(o, (name, "counter", help), "reason", counts);
    }
    let resident = (
        "mailmunge_mux_worker_resident_bytes",
        "gauge",
        "Resident set size of each running worker, by slot.",
    );
    by_label(
        o,
        resident,
        "slot",
        mem.iter().map(|w| (w.slot, w.rss_bytes)),
    );
}

/// Messages, filter generations and rereads, uptime, version.
fn daemon_series(o: &mut String, g: &Gauges, m: &Metrics) {
    single(
        o,
        "mailmunge_mux_messages_scanned_total",
        "counter",
        "Messages scanned (scan commands answered).",
        g.msgs,
    );
    single(
        o,
        "mailmunge_mux_generation",
        "gauge",
        "Filter generation; incremented by each accepted reread.",
        g.generation,
    );
    let rereads = (
        "mailmunge_mux_rereads_total",
        "counter",
        "Reread requests (command or SIGINT), by result.",
    );
    let results = ["done", "refused"].map(|r| (r, m.rereads.get(r).copied().unwrap_or(0)));
    by_label(o, rereads, "result", results);
    let reservations = (
        "mailmunge_mux_reservations_total",
        "counter",
        "Worker reservations for a client's next scan, by event.",
    );
    // Only once a client reserved (upstream's clients never do).
    if !m.reservations.is_empty() {
        by_label(o, reservations, "event", &m.reservations);
    }
    single(
        o,
        "mailmunge_mux_uptime_seconds",
        "gauge",
        "Seconds since the multiplexor started.",
        g.uptime,
    );
    // For alerts on a filter stuck in one request well before -b fires.
    single(
        o,
        "mailmunge_mux_oldest_busy_seconds",
        "gauge",
        "How long the longest-busy worker has been on its request (0 when none is busy).",
        format_args!("{:.3}", g.oldest_busy),
    );
    let info = (
        "mailmunge_mux_info",
        "gauge",
        "Always 1; the version as a label.",
    );
    by_label(o, info, "version", [(crate::VERSION, 1)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_bounded() {
        assert_eq!(command_label(b"scan QID /dir"), "scan");
        assert_eq!(command_label(b"recipok <a@b> <c@d>\n"), "recipok");
        assert_eq!(command_label(b"ping"), "ping");
        assert_eq!(command_label(b"scanner x"), "other");
        assert_eq!(command_label(b"\"}{evil"), "other");
        assert_eq!(command_label(b""), "other");
    }

    #[test]
    fn reasons_fold_into_categories() {
        assert_eq!(
            activation_label("Bringing workers up to minWorkers (2)"),
            "min_workers"
        );
        assert_eq!(
            activation_label("About to execute command 'ping'"),
            "command"
        );
        assert_eq!(activation_label("About to perform scan"), "scan");
        assert_eq!(activation_label("something new"), "other");
        assert_eq!(
            retirement_label("Worker has processed 500 requests"),
            "max_requests"
        );
        assert_eq!(retirement_label("Forcing reread of filter rules"), "reread");
        assert_eq!(
            retirement_label("New generation -- forcing reread of filter rules"),
            "reread"
        );
        assert_eq!(retirement_label("Idle timeout"), "idle_timeout");
        assert_eq!(
            retirement_label("Reply line too long"),
            "protocol_violation"
        );
        assert_eq!(retirement_label("???"), "other");
    }

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        h.observe(0.001);
        h.observe(0.005);
        h.observe(0.3);
        h.observe(1000.0);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[6], 1);
        assert_eq!(h.counts[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count, 4);
    }

    /// Every family with samples, as a scrape shows them.
    fn sample_scrape() -> String {
        use std::os::unix::process::ExitStatusExt;
        let mut m = Metrics::default();
        let ms = Duration::from_millis;
        m.request(b"scan QID /d", &Outcome::Reply(b"ok\n".to_vec()), ms(3));
        m.request(b"scan QID /d", &Outcome::NoFree, ms(300));
        m.request(b"recipok <a> <b>", &Outcome::QueueTimeout, ms(120_001));
        m.refused(b"x".repeat(10).as_slice(), "too_long");
        m.activated("Bringing workers up to minWorkers (1)");
        m.activated("About to perform scan");
        m.retiring(1, "Idle timeout");
        m.reaped(1, std::process::ExitStatus::from_raw(0));
        m.reaped(2, std::process::ExitStatus::from_raw(libc::SIGKILL));
        m.reread("done");
        let g = Gauges {
            idle: 1,
            busy: 2,
            stopped: 3,
            killed: 4,
            workers_max: 10,
            queue_length: 5,
            queue_capacity: 8,
            msgs: 42,
            generation: 3,
            uptime: 3600,
            oldest_busy: 1.23456,
            pids: vec![],
        };
        let mem = [
            WorkerMem {
                slot: 0,
                rss_bytes: 1 << 20,
            },
            WorkerMem {
                slot: 3,
                rss_bytes: 4096,
            },
        ];
        render(&g, &m, &mem)
    }

    #[test]
    fn render_is_exact() {
        let want = include_str!("../../tests/data/mux/metrics-render.txt")
            .replace("@VERSION@", crate::VERSION);
        assert_eq!(sample_scrape(), want);
    }

    #[test]
    fn reaps_use_the_retirement_reason() {
        use std::os::unix::process::ExitStatusExt;
        let mut m = Metrics::default();
        m.retiring(7, "Idle timeout");
        m.reaped(7, std::process::ExitStatus::from_raw(0));
        m.reaped(8, std::process::ExitStatus::from_raw(3 << 8));
        m.reaped(9, std::process::ExitStatus::from_raw(libc::SIGSEGV));
        m.reaped(10, std::process::ExitStatus::from_raw(42 << 8));
        assert_eq!(m.reaps.get("idle_timeout"), Some(&1));
        assert_eq!(m.reaps.get("died"), Some(&1));
        assert_eq!(m.reaps.get("died_by_signal"), Some(&1));
        assert_eq!(m.reaps.get("filter_syntax_error"), Some(&1));
        assert!(m.retiring.is_empty());
    }
}
