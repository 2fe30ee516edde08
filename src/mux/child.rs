//! Starting filter processes (workers, the `-E` preloading process and the
//! `perl -c` check): which perl runs the filter, with which switches, and
//! what a child sets up between fork and exec.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::options::Options;
use crate::sys::daemon;

/// The first line of the filter file (empty when unreadable).
pub fn first_line(filter: &Path) -> String {
    std::fs::read(filter)
        .ok()
        .and_then(|b| {
            b.split(|&c| c == b'\n')
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned())
        })
        .unwrap_or_default()
}

/// How to run perl on the filter: the interpreter and the switches perl
/// insists on seeing on its command line (`-T`/`-t` on the `#!` line).
#[derive(Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub perl: PathBuf,
    pub switches: Vec<String>,
}

/// Reads the filter's `#!` line: a perl named there is used (workers are
/// exec'd through it), else `perl` from PATH. `Err(program)` when the line
/// names another program (a shell wrapper, say): perl cannot check that.
pub fn interpreter(first_line: &str) -> Result<Interpreter, String> {
    let mut perl = PathBuf::from("perl");
    let mut switches = Vec::new();
    if let Some(rest) = first_line.strip_prefix("#!") {
        let mut words = rest.split_whitespace();
        let mut prog = words.next().unwrap_or("");
        if Path::new(prog).file_name().is_some_and(|n| n == "env") {
            prog = words.next().unwrap_or("");
        }
        if Path::new(prog)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("perl"))
        {
            perl = PathBuf::from(prog);
        } else if !prog.is_empty() {
            return Err(prog.to_string());
        }
        for w in words.filter(|w| w.starts_with('-') && !w.starts_with("--")) {
            for taint in ['T', 't'] {
                if w[1..].contains(taint) && !switches.iter().any(|s: &String| s.contains(taint)) {
                    switches.push(format!("-{taint}"));
                }
            }
        }
    }
    Ok(Interpreter { perl, switches })
}

fn perl_path() -> &'static str {
    if std::path::Path::new("/usr/bin/perl").exists() {
        "/usr/bin/perl"
    } else {
        "perl"
    }
}

/// The perl that runs the filter under `-E` (the system perl, as upstream's
/// embedded interpreter) and the taint switches of the filter's `#!` line,
/// which perl insists on seeing on its command line.
pub fn perl_command(filter: &std::path::Path) -> (&'static str, Vec<String>) {
    let switches = interpreter(&first_line(filter))
        .map(|i| i.switches)
        .unwrap_or_default();
    (perl_path(), switches)
}

/// The nice value for a worker `step`s above the multiplexor's own
/// (protocol/multiplexor.md §28), at most 19; none for 0.
fn worker_priority(step: i32) -> Option<libc::c_int> {
    if step <= 0 {
        return None;
    }
    // getpriority may legitimately return -1: errno tells an error apart.
    nix::errno::Errno::clear();
    // SAFETY: a plain system call that reads no memory of ours.
    let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if nix::errno::Errno::last_raw() != 0 {
        return None;
    }
    Some((ours + step).min(19))
}

/// Everything a child needs after fork, prepared before it: cwd, signal
/// dispositions, rlimits, and which descriptor becomes fd 3.
pub struct ChildSetup {
    spool: CString,
    status_w: i32,
    rss_bytes: u64,
    mem_bytes: u64,
    /// The descriptor limit the multiplexor was started with.
    nofile: Option<libc::rlimit>,
    /// The nice value to take (`--worker-nice` above ours), or none.
    nice: Option<libc::c_int>,
}

impl ChildSetup {
    /// `fd3`: the descriptor to put on fd 3 in the child, or -1 for none.
    pub fn new(opts: &Options, fd3: i32) -> ChildSetup {
        ChildSetup {
            spool: CString::new(opts.spool_dir.as_os_str().as_bytes()).unwrap_or_default(),
            status_w: fd3,
            rss_bytes: opts.rss_kb.saturating_mul(1024),
            mem_bytes: opts.mem_kb.saturating_mul(1024),
            nofile: daemon::original_nofile(),
            nice: worker_priority(opts.worker_nice),
        }
    }

    /// Makes `cmd` apply this setup in the child, between fork and exec.
    pub fn install(self, cmd: &mut std::process::Command) {
        // SAFETY: the hook runs in the forked child of a multi-threaded
        // process, where only async-signal-safe calls are allowed: `apply`
        // makes nothing but syscalls and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                self.apply();
                Ok(())
            });
        }
    }

    /// Runs in the forked child before exec: only async-signal-safe calls
    /// (the nix wrappers used here allocate nothing: `spool` is already a
    /// C string). Failures are ignored, as upstream's child ignores them.
    fn apply(&self) {
        use nix::sys::resource::{setrlimit, Resource};
        let _ = nix::unistd::chdir(self.spool.as_c_str());
        if let Some(n) = self.nice {
            // SAFETY: a plain system call on this process; raising the
            // nice value needs no privilege.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
        }
        // SAFETY: SIG_DFL and SIG_IGN install no handler that could run;
        // nix's signal() is unsafe for handlers only, and sigaction would
        // need a struct built here: the libc call is the simplest.
        unsafe {
            for sig in [libc::SIGTERM, libc::SIGCHLD, libc::SIGHUP, libc::SIGINT] {
                libc::signal(sig, libc::SIG_DFL);
            }
            // Upstream workers inherit SIGPIPE ignored; std resets it to the
            // default before this hook runs.
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // Workers get the descriptor limit we were started with, not the one
        // we raised for ourselves.
        if let Some(l) = &self.nofile {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, l.rlim_cur, l.rlim_max);
        }
        if self.rss_bytes > 0 {
            let _ = setrlimit(Resource::RLIMIT_RSS, self.rss_bytes, self.rss_bytes);
        }
        if self.mem_bytes > 0 {
            let _ = setrlimit(Resource::RLIMIT_AS, self.mem_bytes, self.mem_bytes);
            let _ = setrlimit(Resource::RLIMIT_DATA, self.mem_bytes, self.mem_bytes);
        }
        let first_closed = if self.status_w >= 0 {
            if self.status_w == 3 {
                let _ = fcntl(3, FcntlArg::F_SETFD(FdFlag::empty()));
            } else {
                let _ = nix::unistd::dup2(self.status_w, 3);
            }
            4
        } else {
            3
        };
        // Nothing but 0..2 (and 3 with -Z) may survive exec, whatever the
        // multiplexor itself inherited.
        // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing; it
        // only marks descriptors, and no Rust object of the child uses them
        // before exec. nix has no wrapper.
        let marked = unsafe {
            libc::close_range(
                first_closed as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC as i32,
            )
        } == 0;
        if !marked {
            for fd in first_closed..1024 {
                let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs() {
        let perl = |p: &str, sw: &[&str]| {
            Ok(Interpreter {
                perl: p.into(),
                switches: sw.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(interpreter("#!/usr/bin/perl"), perl("/usr/bin/perl", &[]));
        assert_eq!(
            interpreter("#!/usr/bin/perl -w"),
            perl("/usr/bin/perl", &[])
        );
        assert_eq!(
            interpreter("#!/usr/bin/perl -wT"),
            perl("/usr/bin/perl", &["-T"])
        );
        assert_eq!(
            interpreter("#! /usr/bin/env perl5.36 -t"),
            perl("perl5.36", &["-t"])
        );
        assert_eq!(interpreter("use strict;"), perl("perl", &[]));
        assert_eq!(interpreter(""), perl("perl", &[]));
        assert_eq!(interpreter("#!"), perl("perl", &[]));
        // A wrapper in another language cannot be checked by perl.
        assert_eq!(interpreter("#!/bin/sh -e"), Err("/bin/sh".to_string()));
        assert_eq!(
            interpreter("#!/usr/bin/env python3"),
            Err("python3".to_string())
        );
    }
}
