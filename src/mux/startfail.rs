//! Workers that die before answering their first request, and what they
//! wrote on stderr (protocol/multiplexor.md §26).
//!
//! A filter that cannot load (a missing Perl module, a syntax error, a `die`
//! at start-up) kills every worker the same way. Upstream logs only "died
//! prematurely" and leaves the Perl message to `-l` and syslog; on a host
//! without a syslog daemon the admin never sees it. We keep the last
//! start-up failure with its stderr text so that the log line, systemd's
//! service status and `mm-mx-ctrl lasterror` can all show it.

use std::collections::{HashMap, VecDeque};

/// Ends a `lasterror` reply while the dead worker's stderr is not yet read
/// to its end (its exit can be seen first); clients wait for the rest.
pub const STDERR_PENDING: &str = "Its stderr is still being read.";

/// The whole `lasterror` reply when no worker has died at start-up.
pub const NO_FAILURE: &str = "none";

/// Lines of a worker's stderr kept while it has not answered a request.
const TAIL_LINES: usize = 20;
/// Bytes of a worker's stderr kept while it has not answered a request.
const TAIL_BYTES: usize = 4096;

/// The last lines a worker wrote on stderr, bounded in lines and bytes.
#[derive(Debug, Default, Clone)]
pub struct StderrTail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl StderrTail {
    /// Adds a line (without its newline), dropping the oldest past the bounds.
    pub fn push(&mut self, line: &str) {
        let line: String = line.chars().take(TAIL_BYTES).collect();
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The kept lines joined by `\n`.
    pub fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// One worker that exited before it answered a request.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFailure {
    pub wid: u64,
    pub slot: usize,
    pub pid: u32,
    /// "exit status N" or "signal N".
    pub exit: String,
    /// Seconds since the epoch.
    pub at: i64,
    /// What it wrote on stderr; `None` until its stderr was read to the end.
    pub stderr: Option<String>,
}

impl StartFailure {
    /// The log line, once the stderr text is known (one line: syslog
    /// readers grep lines).
    fn log_line(&self) -> Option<String> {
        let text = self.stderr.as_deref()?;
        // A worker killed by a signal often says nothing; "its stderr
        // said: " followed by nothing reads like a cut-off line.
        let said = if text.trim().is_empty() {
            "it wrote nothing on stderr".to_string()
        } else {
            format!("its stderr said: {}", text.replace('\n', " | "))
        };
        Some(format!(
            "Worker {} (pid {}) died before answering a request ({}); {said}",
            self.slot, self.pid, self.exit
        ))
    }

    /// The first stderr line, for systemd's one-line status.
    pub fn headline(&self) -> String {
        let first = self
            .stderr
            .as_deref()
            .and_then(|t| t.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("no message on stderr");
        format!("workers die at start-up ({}): {first}", self.exit)
    }
}

/// What changed, for the caller to log and announce.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A failure is complete (exit and stderr known): log this line.
    Failed(String),
    /// A worker answered after failures: start-up works again.
    Recovered,
}

/// The last start-up failure and stderr texts waiting for their exit.
#[derive(Debug, Default)]
pub struct StartFailures {
    last: Option<StartFailure>,
    /// Set once a worker answered after `last` happened.
    recovered: bool,
    /// Stderr texts of workers whose stderr closed before they were reaped.
    early: HashMap<u64, String>,
}

impl StartFailures {
    /// A worker was reaped before it answered a request.
    pub fn died(&mut self, mut f: StartFailure) -> Option<Event> {
        if let Some(text) = self.early.remove(&f.wid) {
            f.stderr = Some(text);
        }
        let line = f.log_line();
        self.last = Some(f);
        self.recovered = false;
        line.map(Event::Failed)
    }

    /// A worker was reaped after answering, or on purpose: its early stderr
    /// text, if any, is of no use.
    pub fn forget(&mut self, wid: u64) {
        self.early.remove(&wid);
    }

    /// A worker that never answered closed its stderr. `reaped` says
    /// whether the pool already saw it exit.
    pub fn stderr_closed(&mut self, wid: u64, tail: &StderrTail, reaped: bool) -> Option<Event> {
        let text = tail.text();
        match &mut self.last {
            Some(f) if f.wid == wid && f.stderr.is_none() => {
                f.stderr = Some(text);
                f.log_line().map(Event::Failed)
            }
            _ => {
                if !reaped {
                    self.early.insert(wid, text);
                }
                None
            }
        }
    }

    /// A worker answered a request.
    pub fn answered(&mut self) -> Option<Event> {
        if self.last.is_some() && !self.recovered {
            self.recovered = true;
            return Some(Event::Recovered);
        }
        None
    }

    /// The failure that is still current: none happened, or none since a
    /// worker last answered.
    pub fn current(&self) -> Option<&StartFailure> {
        self.last.as_ref().filter(|_| !self.recovered)
    }

    /// The `lasterror` reply text, before percent-encoding.
    pub fn report(&self, now: i64) -> String {
        let Some(f) = &self.last else {
            return NO_FAILURE.into();
        };
        let ago = (now - f.at).max(0);
        let state = if self.recovered {
            "a worker has answered since"
        } else {
            "no worker has answered since"
        };
        let mut s = format!(
            "Worker {} (pid {}) died before answering a request, {ago} s ago ({}); {state}.",
            f.slot, f.pid, f.exit
        );
        match f.stderr.as_deref() {
            Some(t) if !t.is_empty() => {
                s.push_str("\nIts stderr:");
                for l in t.lines() {
                    s.push_str("\n  ");
                    s.push_str(l);
                }
            }
            Some(_) => s.push_str("\nIt wrote nothing on stderr."),
            None => {
                s.push('\n');
                s.push_str(STDERR_PENDING);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(wid: u64) -> StartFailure {
        StartFailure {
            wid,
            slot: 1,
            pid: 42,
            exit: "exit status 2".into(),
            at: 100,
            stderr: None,
        }
    }

    fn tail(lines: &[&str]) -> StderrTail {
        let mut t = StderrTail::default();
        for l in lines {
            t.push(l);
        }
        t
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = StderrTail::default();
        for i in 0..100 {
            t.push(&format!("line {i}"));
        }
        assert_eq!(t.text().lines().count(), TAIL_LINES);
        assert!(t.text().ends_with("line 99"));
        t.push(&"x".repeat(10_000));
        assert_eq!(t.text(), "x".repeat(TAIL_BYTES));
    }

    #[test]
    fn stderr_before_exit() {
        let mut s = StartFailures::default();
        let t = tail(&["Can't locate MIME/Tools.pm in @INC", "BEGIN failed"]);
        assert_eq!(s.stderr_closed(7, &t, false), None);
        let ev = s.died(failure(7)).unwrap();
        assert_eq!(
            ev,
            Event::Failed(
                "Worker 1 (pid 42) died before answering a request (exit status 2); \
                 its stderr said: Can't locate MIME/Tools.pm in @INC | BEGIN failed"
                    .into()
            )
        );
        assert_eq!(
            s.report(103),
            "Worker 1 (pid 42) died before answering a request, 3 s ago (exit status 2); \
             no worker has answered since.\nIts stderr:\n  Can't locate MIME/Tools.pm in @INC\n  BEGIN failed"
        );
        assert_eq!(
            s.current().unwrap().headline(),
            "workers die at start-up (exit status 2): Can't locate MIME/Tools.pm in @INC"
        );
    }

    #[test]
    fn exit_before_stderr() {
        let mut s = StartFailures::default();
        assert_eq!(s.died(failure(3)), None);
        let ev = s.stderr_closed(3, &tail(&["boom"]), true);
        assert!(matches!(ev, Some(Event::Failed(l)) if l.ends_with("said: boom")));
        // A later, unrelated worker's stderr is not kept once it was reaped.
        assert_eq!(s.stderr_closed(4, &tail(&["x"]), true), None);
        assert!(s.early.is_empty());
    }

    #[test]
    fn recovery_and_forget() {
        let mut s = StartFailures::default();
        assert_eq!(s.report(0), "none");
        assert_eq!(s.answered(), None);
        s.stderr_closed(9, &tail(&["early"]), false);
        s.forget(9);
        assert!(s.early.is_empty());
        s.died(failure(5));
        s.stderr_closed(5, &StderrTail::default(), true);
        assert!(s.current().is_some());
        assert_eq!(s.answered(), Some(Event::Recovered));
        assert_eq!(s.answered(), None);
        assert!(s.current().is_none());
        assert!(s
            .report(100)
            .contains("a worker has answered since.\nIt wrote nothing on stderr."));
    }

    #[test]
    fn silent_worker_is_reported_as_silent() {
        let mut s = StartFailures::default();
        assert_eq!(s.died(failure(6)), None);
        let ev = s.stderr_closed(6, &StderrTail::default(), true);
        assert_eq!(
            ev,
            Some(Event::Failed(
                "Worker 1 (pid 42) died before answering a request (exit status 2); \
                 it wrote nothing on stderr"
                    .into()
            ))
        );
        assert_eq!(
            s.current().unwrap().headline(),
            "workers die at start-up (exit status 2): no message on stderr"
        );
    }

    #[test]
    fn report_says_when_stderr_is_not_read_yet() {
        let mut s = StartFailures::default();
        s.died(failure(3));
        let pending = format!("no worker has answered since.\n{STDERR_PENDING}");
        assert!(s.report(100).ends_with(&pending), "{}", s.report(100));
        s.stderr_closed(3, &tail(&["boom"]), true);
        assert!(
            s.report(100).ends_with("\nIts stderr:\n  boom"),
            "{}",
            s.report(100)
        );
    }
}
