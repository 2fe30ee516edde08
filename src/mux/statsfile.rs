//! The statistics file (`-t`, `-u`, `-T`; protocol/multiplexor.md §15.1–§15.2).
//!
//! Line layout: `DD/MM/YYYY:HH:MM:SS <epoch>.<mmm> <Event> worker=<n>
//! nworkers=<running> nbusy=<busy>[ <extra>]`, local time. Unlike upstream,
//! control characters and double quotes inside `reason="…"` are replaced
//! (protocol/multiplexor.md §20.6) so that one event is always one line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct StatsFile {
    path: Option<PathBuf>,
    out: Option<BufWriter<File>>,
    flush: bool,
    syslog: bool,
}

impl StatsFile {
    /// Opens the file (append, created with the current umask) if a path is
    /// given. `syslog` copies every line to syslog as `stats <rest>`.
    pub fn open(path: Option<PathBuf>, flush: bool, syslog: bool) -> StatsFile {
        let mut s = StatsFile {
            path,
            out: None,
            flush,
            syslog,
        };
        s.reopen();
        s
    }

    /// True when events are recorded anywhere.
    pub fn active(&self) -> bool {
        self.out.is_some() || self.syslog
    }

    /// Reopens the file (SIGHUP, for log rotation).
    pub fn reopen(&mut self) {
        if let Some(mut o) = self.out.take() {
            let _ = o.flush();
        }
        if let Some(p) = &self.path {
            match std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
            {
                Ok(f) => self.out = Some(BufWriter::new(f)),
                Err(e) => crate::sys::daemon::log(
                    crate::sys::daemon::LOG_ERR,
                    &format!("Could not open stats file {}: {e}", p.display()),
                ),
            }
        }
    }

    /// Writes one event line.
    pub fn event(
        &mut self,
        event: &str,
        worker: usize,
        nworkers: usize,
        nbusy: usize,
        extra: &str,
    ) {
        if !self.active() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!(
            "{} {}.{:03} {event} worker={worker} nworkers={nworkers} nbusy={nbusy}",
            local_stamp(now.as_secs() as i64),
            now.as_secs(),
            now.subsec_millis()
        );
        if !extra.is_empty() {
            line.push(' ');
            line.push_str(extra);
        }
        truncate_utf8(&mut line, 1022);
        if let Some(o) = &mut self.out {
            let _ = writeln!(o, "{line}");
            if self.flush {
                let _ = o.flush();
            }
        }
        if self.syslog {
            crate::sys::daemon::log(
                crate::sys::daemon::LOG_INFO,
                &format!("stats {}", &line[20.min(line.len())..]),
            );
        }
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        if let Some(o) = &mut self.out {
            let _ = o.flush();
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// `DD/MM/YYYY:HH:MM:SS` in local time.
pub fn local_stamp(epoch: i64) -> String {
    stamp_of(&local_tm(epoch))
}

/// The broken-down local time of `epoch` (neither std nor nix has one).
fn local_tm(epoch: i64) -> libc::tm {
    // SAFETY: libc::tm holds integers and a pointer that may be null, so
    // all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = epoch as libc::time_t;
    // SAFETY: both pointers are to live locals; the _r form keeps no
    // shared state.
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

/// The `DD/MM/YYYY:HH:MM:SS` form of a broken-down time; split from
/// `local_stamp` so the format can be tested without depending on `TZ`.
fn stamp_of(tm: &libc::tm) -> String {
    // Upstream quirk kept: day/month/year, whatever the manual says
    // (protocol/multiplexor.md §15.1).
    format!(
        "{:02}/{:02}/{:04}:{:02}:{:02}:{:02}",
        tm.tm_mday,
        tm.tm_mon + 1,
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Makes a reason safe for `reason="…"`: control characters become spaces
/// (a trailing newline is dropped) and `"` becomes `'`.
pub fn sanitize_reason(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    raw.iter()
        .map(|&b| match b {
            b'"' => '\'',
            0x20..=0x7e => b as char,
            _ => ' ',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats");
        let mut s = StatsFile::open(Some(p.clone()), true, false);
        s.event("EndFilter", 1, 2, 0, "numRequests=3");
        s.event("ReapWorker", 0, 1, 0, "");
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let f: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(f[0].len(), 19);
        assert_eq!(&f[0][2..3], "/");
        assert_eq!(&f[0][10..11], ":");
        let (secs, ms) = f[1].split_once('.').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
        assert_eq!(ms.len(), 3);
        assert_eq!(
            &f[2..],
            [
                "EndFilter",
                "worker=1",
                "nworkers=2",
                "nbusy=0",
                "numRequests=3"
            ]
        );
        assert!(lines[1].ends_with(" ReapWorker worker=0 nworkers=1 nbusy=0"));
    }

    #[test]
    fn reasons_stay_on_one_line() {
        assert_eq!(sanitize_reason(b"ping \"x\"\n"), "ping 'x'");
        assert_eq!(sanitize_reason(b"a\tb\r\n"), "a b");
    }

    fn utc_tm(epoch: libc::time_t) -> libc::tm {
        // SAFETY: as in local_tm: all zeroes is a valid libc::tm.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals.
        unsafe { libc::gmtime_r(&epoch, &mut tm) };
        tm
    }

    #[test]
    fn stamp_is_day_month_year() {
        assert_eq!(stamp_of(&utc_tm(1795697728)), "26/11/2026:12:55:28");
        // Every field is zero-padded.
        assert_eq!(stamp_of(&utc_tm(1767323045)), "02/01/2026:03:04:05");
        // local_stamp uses the local zone; with no offset it is the UTC form.
        if local_tm(1795697728).tm_gmtoff == 0 {
            assert_eq!(local_stamp(1795697728), "26/11/2026:12:55:28");
        }
    }
}
