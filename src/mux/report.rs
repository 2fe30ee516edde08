//! Exact text layouts of the built-in control commands
//! (protocol/multiplexor.md §5): `status`, `workers`/`busyworkers`,
//! `workerinfo`, `load*`, `load1`, `hload*`, `histo` and `help`. Monitors parse
//! these positionally.

use std::fmt::Write;

use super::pool::Pool;
use super::{Class, State};

/// `status` (protocol/multiplexor.md §5.1).
pub fn status(p: &Pool) -> String {
    let mut s: String = p.slots.iter().map(|w| w.state.letter()).collect();
    let _ = writeln!(
        s,
        " {} {} {} {} {}",
        p.msgs,
        p.activations,
        p.opts.queue_size,
        p.queue.len(),
        p.uptime()
    );
    s
}

/// `workers` and `busyworkers` (protocol/multiplexor.md §5.3).
pub fn workers(p: &Pool, busy_only: bool) -> String {
    let mut out = String::new();
    for (i, w) in p.slots.iter().enumerate() {
        if busy_only && w.state != State::Busy {
            continue;
        }
        let _ = write!(out, "{i} {}", w.state.letter());
        if w.state != State::Stopped {
            let _ = write!(out, " {}", w.pid().map(|p| p as i64).unwrap_or(-1));
        }
        if w.state == State::Busy {
            if let Some(c) = w.cur_class.filter(|c| c.tracked_index().is_some()) {
                let _ = write!(out, " {}", c.name());
            }
        }
        if let Some(c) = w.last_class {
            let _ = write!(out, " last={}", c.name());
        }
        let _ = write!(out, " ago={}", w.last_change.elapsed().as_secs());
        if !w.tag.is_empty() {
            let _ = write!(out, " ({})", w.tag);
        }
        out.push('\n');
    }
    out
}

/// `workerinfo N` (protocol/multiplexor.md §5.4); `arg` is the text after
/// `workerinfo `.
pub fn workerinfo(p: &Pool, arg: &str) -> String {
    let Some(n) = crate::cformat::number::scan_int(arg) else {
        return "error: Invalid worker number\n".into();
    };
    if n < 0 || n as usize >= p.slots.len() {
        return "error: Worker number out of range\n".into();
    }
    let w = &p.slots[n as usize];
    let age = |t: Option<std::time::Instant>| t.map(|t| t.elapsed().as_secs() as i64).unwrap_or(-1);
    // Upstream quirk kept: `StatusTag ` keeps its space when the tag is
    // empty (protocol/multiplexor.md §5.4).
    format!(
        "Worker {n}\nState {}\nPID {}\nNumRequests {}\nNumScans {}\nAge {}\nFirstReqAge {}\nLastStateChangeAge {}\nStatusTag {}\n",
        w.state.name(),
        w.pid().map(|p| p as i64).unwrap_or(-1),
        w.num_requests,
        w.num_scans,
        age(w.activated),
        age(w.first_request),
        w.last_change.elapsed().as_secs(),
        w.tag
    )
}

fn state_counts(p: &Pool) -> String {
    let c = p.counters();
    format!(
        "{} {} {} {} {} {} {} {} {}",
        c.busy,
        c.idle,
        c.stopped,
        c.killed,
        c.msgs,
        c.activations,
        p.opts.queue_size,
        c.queued,
        p.uptime()
    )
}

/// `load`, `load-relayok`, `load-senderok`, `load-recipok`
/// (protocol/multiplexor.md §5.5).
pub fn load(p: &Pool, class: Class, now: i64) -> String {
    let windows = [10, 60, 300, 600];
    let t: Vec<_> = windows
        .iter()
        .map(|&w| p.history.totals(class, now, w))
        .collect();
    // Activations and reaps live in the scan history only.
    let a: Vec<_> = windows
        .iter()
        .map(|&w| p.history.totals(Class::Scan, now, w))
        .collect();
    let mut s = String::new();
    for x in &t {
        let _ = write!(s, "{} ", x.count);
    }
    for x in &t {
        // Upstream quirk kept: a window without any command averages 1.0
        // busy workers here, 0.0 in `load1` and `hload` (protocol/multiplexor.md §5.5).
        let _ = write!(s, "{:.6} ", x.avg_busy(1.0));
    }
    for x in &t {
        let _ = write!(s, "{:.6} ", x.avg_ms());
    }
    let own = class == Class::Scan;
    for x in &a {
        let _ = write!(s, "{} ", if own { x.activated } else { 0 });
    }
    for x in &a {
        let _ = write!(s, "{} ", if own { x.reaped } else { 0 });
    }
    s.push_str(&state_counts(p));
    s.push('\n');
    s
}

/// `load1 SECS` (protocol/multiplexor.md §5.6); `arg` is the text after
/// `load1 `.
pub fn load1(p: &Pool, arg: &str, now: i64) -> String {
    let back = crate::cformat::number::scan_int(arg).unwrap_or(0);
    if !(10..=600).contains(&back) {
        return "error: Invalid 'back' amount (must be 10-600)\n".into();
    }
    let mut s = String::new();
    for c in Class::TRACKED {
        let t = p.history.totals(c, now, back);
        let _ = write!(s, "{} {:.6} {:.6} ", t.count, t.avg_busy(0.0), t.avg_ms());
    }
    s.push_str(&state_counts(p));
    let _ = write!(s, " {back}");
    for c in Class::TRACKED {
        let n = p
            .slots
            .iter()
            .filter(|w| w.state == State::Busy && w.cur_class == Some(c))
            .count();
        let _ = write!(s, " {n}");
    }
    s.push('\n');
    s
}

/// `hload*` (protocol/multiplexor.md §5.7).
pub fn hload(p: &Pool, class: Class, now: i64) -> String {
    // Upstream quirk kept: the windows are whole epoch hours (the current
    // one and those before), not sliding (protocol/multiplexor.md §20.21).
    let t: Vec<_> = [1, 4, 12, 24]
        .iter()
        .map(|&h| p.history.hour_totals(class, now, h))
        .collect();
    let mut parts: Vec<String> = Vec::with_capacity(16);
    parts.extend(t.iter().map(|x| x.count.to_string()));
    parts.extend(t.iter().map(|x| format!("{:.6}", x.avg_busy())));
    parts.extend(t.iter().map(|x| format!("{:.6}", x.avg_ms())));
    parts.extend(t.iter().map(|x| x.secs.to_string()));
    let mut s = parts.join(" ");
    s.push('\n');
    s
}

/// `histo` (protocol/multiplexor.md §5.8).
pub fn histo(p: &Pool) -> String {
    let mut s = String::new();
    for (i, n) in p.histo.iter().enumerate() {
        let _ = writeln!(s, "{:4} {}", i + 1, n);
    }
    s
}

// Upstream quirk kept: `rawstatus`, `barstatus` and `rawload*` are listed
// although only mm-mx-ctrl knows them (protocol/multiplexor.md §20.20).
const HELP_PRIV: &[(&str, &str)] = &[
    ("help", "List available multiplexor commands"),
    ("status", "Display worker status"),
    (
        "rawstatus",
        "Display worker status in computer-readable format",
    ),
    ("barstatus", "Display worker status as bar graph"),
    ("free", "Display number of free workers"),
    ("load", "Display worker load (scans)"),
    ("rawload", "Display worker load in computer-readable format"),
    ("load1 secs", "Display worker load in alternate format"),
    ("rawload1 secs", "Display worker load in alternate format"),
    ("load-relayok", "Display load (relayok requests)"),
    (
        "rawload-relayok",
        "Computer-readable load (relayok requests)",
    ),
    ("load-senderok", "Display load (senderok requests)"),
    (
        "rawload-senderok",
        "Computer-readable load (senderok requests)",
    ),
    ("load-recipok", "Display load (recipok requests)"),
    (
        "rawload-recipok",
        "Computer-readable load (recipok requests)",
    ),
    ("histo", "Display histogram of busy workers"),
    ("msgs", "Display number of messages processed since startup"),
    ("reread", "Force a re-read of filter rules"),
    ("workers", "Display workers with process-IDs"),
    ("busyworkers", "Display busy workers with process-IDs"),
    (
        "workerinfo n",
        "Display information about a particular worker",
    ),
    // Upstream quirk kept: `md-mx-ctrl`, not `mm-mx-ctrl` (protocol/multiplexor.md §5.9).
    ("scan /path", "Run a scan (do not invoke using md-mx-ctrl)"),
    // Our extension, listed so that a client can tell that this
    // multiplexor has it (protocol/multiplexor.md §27.1).
    (
        crate::wire::reservation::COMMAND,
        "Hold a worker for the scan sent next on this connection (mailmunge-rs)",
    ),
];

const HELP_UNPRIV: &[(&str, &str)] = &[
    ("help", "List available multiplexor commands"),
    ("free", "Display number of free workers"),
    ("load", "Display worker load (scans)"),
    ("rawload", "Display worker load in computer-readable format"),
    ("load1 secs", "Display worker load in alternate format"),
    (
        "rawload1 secs",
        "Display worker load in computer-readable alternate format",
    ),
    ("load-relayok", "Display load (relayok requests)"),
    (
        "rawload-relayok",
        "Computer-readable load (relayok requests)",
    ),
    ("load-senderok", "Display load (senderok requests)"),
    (
        "rawload-senderok",
        "Computer-readable load (senderok requests)",
    ),
    ("load-recipok", "Display load (recipok requests)"),
    (
        "rawload-recipok",
        "Computer-readable load (recipok requests)",
    ),
    ("status", "Display worker status"),
    ("histo", "Display histogram of busy workers"),
    ("msgs", "Display number of messages processed since startup"),
    ("workers", "Display workers with process-IDs"),
    ("busyworkers", "Display busy workers with process-IDs"),
    (
        "workerinfo n",
        "Display information about a particular worker",
    ),
];

/// `help` (protocol/multiplexor.md §5.9) for the privileged or the unprivileged
/// socket.
pub fn help(privileged: bool) -> String {
    let mut s = String::new();
    for (label, text) in if privileged { HELP_PRIV } else { HELP_UNPRIV } {
        let _ = writeln!(s, "{label:<16} -- {text}");
    }
    s.push_str("(Analogous hload commands provide hourly information)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::options::Options;
    use crate::mux::pool::Mux;

    fn mux(max: &str) -> std::sync::Arc<Mux> {
        Mux::new(Options::parse(["mux", "-x", max, "-q", "2"]).unwrap())
    }

    #[test]
    fn fresh_pool_layouts() {
        let m = mux("4");
        let p = m.lock();
        assert_eq!(status(&p), "SSSS 0 0 2 0 0\n");
        assert_eq!(
            load(&p, Class::Scan, 1_000_000),
            "0 0 0 0 1.000000 1.000000 1.000000 1.000000 0.000000 0.000000 0.000000 0.000000 0 0 0 0 0 0 0 0 0 0 4 0 0 0 2 0 0\n"
        );
        assert_eq!(
            load1(&p, "60", 1_000_000),
            "0 0.000000 0.000000 0 0.000000 0.000000 0 0.000000 0.000000 0 0.000000 0.000000 0 0 4 0 0 0 2 0 0 60 0 0 0 0\n"
        );
        assert_eq!(
            load1(&p, "5", 0),
            "error: Invalid 'back' amount (must be 10-600)\n"
        );
        assert_eq!(
            load1(&p, "601", 0),
            "error: Invalid 'back' amount (must be 10-600)\n"
        );
        assert_eq!(
            load1(&p, "x", 0),
            "error: Invalid 'back' amount (must be 10-600)\n"
        );
        assert_eq!(hload(&p, Class::RecipOk, 1_000_000), "0 0 0 0 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0 0 0 0\n");
        assert_eq!(histo(&p), "   1 0\n   2 0\n   3 0\n   4 0\n");
        assert_eq!(
            workers(&p, false),
            "0 S ago=0\n1 S ago=0\n2 S ago=0\n3 S ago=0\n"
        );
        assert_eq!(workers(&p, true), "");
    }

    #[test]
    fn workerinfo_layout_and_errors() {
        let m = mux("2");
        let p = m.lock();
        assert_eq!(
            workerinfo(&p, "1"),
            "Worker 1\nState Stopped\nPID -1\nNumRequests 0\nNumScans 0\nAge -1\nFirstReqAge -1\nLastStateChangeAge 0\nStatusTag \n"
        );
        assert_eq!(workerinfo(&p, "0junk"), workerinfo(&p, "0"));
        assert_eq!(workerinfo(&p, "x"), "error: Invalid worker number\n");
        assert_eq!(workerinfo(&p, "2"), "error: Worker number out of range\n");
        assert_eq!(workerinfo(&p, "-1"), "error: Worker number out of range\n");
    }

    #[test]
    fn load_with_history() {
        let m = mux("2");
        let mut p = m.lock();
        p.history.record(Class::Scan, 1000, 2, 100);
        p.history.record(Class::Scan, 1000, 1, 50);
        p.history.activated(1000);
        let l = load(&p, Class::Scan, 1000);
        assert!(l.starts_with("2 2 2 2 1.500000 1.500000 1.500000 1.500000 75.000000 75.000000 75.000000 75.000000 1 1 1 1 0 0 0 0 "), "{l}");
        let l = load(&p, Class::RelayOk, 1000);
        assert!(l.starts_with("0 0 0 0 1.000000 1.000000 1.000000 1.000000 0.000000 0.000000 0.000000 0.000000 0 0 0 0 0 0 0 0 "), "{l}");
        let l1 = load1(&p, "10", 1005);
        assert!(
            l1.starts_with("2 1.500000 75.000000 0 0.000000 0.000000 "),
            "{l1}"
        );
    }

    #[test]
    fn help_texts() {
        let h = help(true);
        assert!(h.starts_with("help             -- List available multiplexor commands\n"));
        assert!(h.contains("\nworkerinfo n     -- Display information about a particular worker\n"));
        assert!(h.contains("scan /path       -- Run a scan (do not invoke using md-mx-ctrl)\nmmrs-reserve     -- Hold a worker"));
        assert!(
            h.ends_with("(mailmunge-rs)\n(Analogous hload commands provide hourly information)\n")
        );
        assert_eq!(h.lines().count(), 24);
        let u = help(false);
        assert!(!u.contains("reread"));
        assert!(u.contains(
            "rawload1 secs    -- Display worker load in computer-readable alternate format\n"
        ));
        assert_eq!(u.lines().count(), 19);
    }
}
