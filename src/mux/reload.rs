//! Safe reread (`reread` command and SIGINT, `protocol/safe-reread.md`):
//! before a new generation is started, the filter must pass
//! `perl -c`, run like a worker (same user, environment, cwd, limits). A
//! filter that does not compile is refused and the running workers keep
//! serving, where upstream would retire them and tempfail mail until the
//! filter is fixed.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use super::child::{first_line, interpreter, ChildSetup};
use super::options::Options;
use super::pool::Mux;
use crate::sys::daemon::{self, LOG_ERR, LOG_INFO};

/// Reply to an accepted `reread` (upstream's text,
/// protocol/multiplexor.md §4.3).
pub const REREAD_DONE: &[u8] = b"Forced reread of filter rules\n";
/// Start of the reply to a refused `reread`.
pub const REFUSED_PREFIX: &str = "error: Filter rules not reread: ";
/// Longest piece of perl's output quoted in a reply or log line.
pub const MAX_MESSAGE: usize = 2000;

/// Why a filter check failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    /// `perl -c` reported errors (its output, joined into one line).
    #[error("{0}")]
    Compile(String),
    #[error("could not run {perl}: {err}")]
    Spawn { perl: String, err: String },
    #[error("perl -c {filter} did not finish within {secs} s")]
    Timeout { filter: String, secs: u64 },
}

/// What the check found when it did not refuse.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// `perl -c` passed.
    Compiles,
    /// The filter runs through this non-perl program; not checked.
    NotPerl(String),
}

/// Turns perl's output into one printable line of bounded length.
pub fn one_line(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let mut s = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>();
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

/// Runs `perl -c FILTER` the way a worker would run; Ok when it compiles.
pub async fn check_filter(opts: &Options) -> Result<Checked, CheckError> {
    let interp = match interpreter(&first_line(&opts.filter)) {
        Ok(i) => i,
        Err(prog) => return Ok(Checked::NotPerl(prog)),
    };
    let mut cmd = tokio::process::Command::new(&interp.perl);
    cmd.args(&interp.switches)
        .arg("-c")
        .arg(&opts.filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Same cwd, signal dispositions and rlimits as a worker.
    // Same cwd, signal dispositions and rlimits as a worker.
    ChildSetup::new(opts, -1).install(cmd.as_std_mut());
    let child = cmd.spawn().map_err(|e| CheckError::Spawn {
        perl: interp.perl.display().to_string(),
        err: e.to_string(),
    })?;
    let secs = opts.busy_time;
    let out = match tokio::time::timeout(Duration::from_secs(secs), child.wait_with_output()).await
    {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(CheckError::Spawn {
                perl: interp.perl.display().to_string(),
                err: e.to_string(),
            })
        }
        Err(_) => {
            return Err(CheckError::Timeout {
                filter: opts.filter.display().to_string(),
                secs,
            })
        }
    };
    if out.status.success() {
        return Ok(Checked::Compiles);
    }
    let mut all = out.stderr;
    all.extend_from_slice(&out.stdout);
    let msg = one_line(&all);
    Err(CheckError::Compile(if msg.is_empty() {
        format!("perl -c {} failed ({})", opts.filter.display(), out.status)
    } else {
        msg
    }))
}

/// One reread at a time: a second request waits for the first check.
static REREADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks the filter, then starts a new generation; or refuses, logs why
/// and leaves the workers alone. Returns the reply for the control socket.
pub async fn reread(mux: &Arc<Mux>) -> Vec<u8> {
    let _one = REREADING.lock().await;
    match check_filter(&mux.opts).await {
        Ok(checked) => {
            if let Checked::NotPerl(prog) = &checked {
                daemon::log(
                    LOG_INFO,
                    &format!(
                        "{} runs through {prog}, not perl: not checked before the reread",
                        mux.opts.filter.display()
                    ),
                );
            }
            let mut p = mux.lock();
            p.reread();
            p.metrics.reread("done");
            if mux.opts.verbose && checked == Checked::Compiles {
                daemon::log(
                    LOG_INFO,
                    &format!(
                        "{} compiles; rereading filter rules (generation {})",
                        mux.opts.filter.display(),
                        p.generation
                    ),
                );
            }
            REREAD_DONE.to_vec()
        }
        Err(e) => {
            mux.lock().metrics.reread("refused");
            daemon::log(
                LOG_ERR,
                &format!("Filter rules not reread, workers keep the rules loaded before: {e}"),
            );
            format!("{REFUSED_PREFIX}{e}\n").into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_one_bounded_line() {
        assert_eq!(
            one_line(b"syntax error at /f line 3, near \"}\"\n/f had compilation errors.\n"),
            "syntax error at /f line 3, near \"}\"; /f had compilation errors."
        );
        assert_eq!(one_line(b"a\tb\r\n\n  c  \n"), "a b; c");
        let long = one_line(&"é".repeat(5000).into_bytes());
        assert!(long.len() <= MAX_MESSAGE + 4 && long.ends_with(" ..."));
    }
}
