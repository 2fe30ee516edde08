//! `mm-mx-ctrl top` (our extension): a live view of one or several
//! multiplexors, refreshed every few seconds from their `status` and `load`
//! replies. `mm-mx-ctrl -s A -s B top [SECS [COUNT]]`: every `-s` given is
//! shown; COUNT refreshes then exit (0 = until interrupted). On a terminal
//! the screen is redrawn in place; otherwise frames are printed one after
//! another, so the output can be logged or tested.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use super::cli::{error_message, exchange};
use super::format::{self, cfix};
use super::options::Options;
use crate::wire::mxclient::MxError;

/// Why a multiplexor could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The exchange failed (text as mm-mx-ctrl prints it, minus its prefix).
    #[error("{0}")]
    Unreachable(String),
    #[error("bad {what} reply: {reply}")]
    BadReply { what: &'static str, reply: String },
}

/// One multiplexor's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The `status` reply.
    pub status: format::StatusReply,
    /// Scans completed in the last 10 s and 1 min.
    pub scans_10s: i64,
    pub scans_1m: i64,
    /// Average scan time (ms) over 10 s and 1 min.
    pub ms_10s: f64,
    pub ms_1m: f64,
}

impl Snapshot {
    /// Builds a snapshot from a `status` and a `load` reply.
    pub fn from_replies(status: &[u8], load: &[u8]) -> Result<Snapshot, SnapshotError> {
        let bad = |what: &'static str, r: &[u8]| SnapshotError::BadReply {
            what,
            reply: String::from_utf8_lossy(crate::cformat::string::until_nul(r))
                .trim_end()
                .to_string(),
        };
        let st = format::StatusReply::parse(status).ok_or_else(|| bad("status", status))?;
        let l = format::scan_all(load, &format::LOAD_PATTERN[..format::LOAD_WINDOW_NUMBERS])
            .ok_or_else(|| bad("load", load))?;
        Ok(Snapshot {
            status: st,
            scans_10s: l[0].as_i32() as i64,
            scans_1m: l[1].as_i32() as i64,
            ms_10s: l[8].as_f64(),
            ms_1m: l[9].as_f64(),
        })
    }
}

fn uptime(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

/// Renders one frame.
pub fn render(rows: &[(String, Result<Snapshot, SnapshotError>)], interval: u64) -> String {
    let mut f = format!(
        "mm-mx-ctrl top: {} multiplexor(s), every {interval}s\n\n",
        rows.len()
    );
    f.push_str(&format!(
        "{:<28} {:>7} {:>4} {:>4} {:>4} {:>7} {:>8} {:>7} {:>7} {:>9} {:>9} {:>11}\n",
        "SOCKET",
        "BUSY",
        "IDLE",
        "STOP",
        "KILL",
        "QUEUE",
        "MSGS",
        "MSG/S",
        "MSG/S",
        "MS/MSG",
        "MS/MSG",
        "UPTIME"
    ));
    let units = format!(
        "{:<28} {:>7} {:>4} {:>4} {:>4} {:>7} {:>8} {:>7} {:>7} {:>9} {:>9}",
        "", "", "", "", "", "", "", "10s", "1m", "10s", "1m"
    );
    f.push_str(units.trim_end());
    f.push('\n');
    for (name, row) in rows {
        match row {
            Ok(snap) => {
                // A number the reply lacks shows as 0.
                let (s, n) = (&snap.status, |v: Option<i64>| v.unwrap_or(0));
                f.push_str(&format!(
                    "{:<28} {:>7} {:>4} {:>4} {:>4} {:>7} {:>8} {} {} {} {} {:>11}\n",
                    name,
                    format!("{}/{}", s.busy(), s.letters.len()),
                    s.count(b'I'),
                    s.count(b'S'),
                    s.count(b'K'),
                    format!("{}/{}", n(s.queued), n(s.queue_size)),
                    n(s.msgs),
                    cfix(snap.scans_10s as f64 / 10.0, 7, 2),
                    cfix(snap.scans_1m as f64 / 60.0, 7, 2),
                    cfix(snap.ms_10s, 9, 1),
                    cfix(snap.ms_1m, 9, 1),
                    uptime(n(s.uptime))
                ));
                let cells: String = s
                    .letters
                    .iter()
                    .map(|&c| match c {
                        b'B' => 'B',
                        b'I' => 'i',
                        b'K' => 'k',
                        _ => '.',
                    })
                    .collect();
                f.push_str(&format!("  [{cells}]\n"));
            }
            Err(e) => f.push_str(&format!("{name:<28} {e}\n")),
        }
    }
    f
}

async fn snapshot(socket: &OsString, timeout: Option<Duration>) -> Result<Snapshot, SnapshotError> {
    let trim = |e: MxError| {
        SnapshotError::Unreachable(
            error_message(&e)
                .trim_end()
                .trim_start_matches("ERROR MXCommand: ")
                .to_string(),
        )
    };
    let status = exchange(socket, b"status\n", timeout).await.map_err(trim)?;
    let load = exchange(socket, b"load\n", timeout).await.map_err(trim)?;
    Snapshot::from_replies(&status, &load)
}

fn parse_arg(words: &[Vec<u8>], i: usize, default: u64) -> Option<u64> {
    match words.get(i) {
        None => Some(default),
        Some(w) => std::str::from_utf8(w).ok()?.parse().ok(),
    }
}

/// Runs the live view; returns the exit status (1 when every multiplexor
/// failed in the last frame).
pub async fn run(o: &Options) -> i32 {
    let (Some(interval), Some(count)) = (parse_arg(&o.words, 1, 2), parse_arg(&o.words, 2, 0))
    else {
        eprintln!("mm-mx-ctrl: usage: top [interval-seconds [count]]");
        return 1;
    };
    if o.words.len() > 3 {
        eprintln!("mm-mx-ctrl: usage: top [interval-seconds [count]]");
        return 1;
    }
    let interval = interval.max(1);
    let sockets = if o.sockets.is_empty() {
        vec![o.socket()]
    } else {
        o.sockets.clone()
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut n = 0u64;
    loop {
        let rows = futures_util::future::join_all(sockets.iter().map(|s| async move {
            (
                s.to_string_lossy().into_owned(),
                snapshot(s, o.timeout).await,
            )
        }))
        .await;
        let mut frame = String::new();
        if tty {
            frame.push_str("\x1b[H\x1b[2J");
        } else if n > 0 {
            frame.push('\n');
        }
        frame.push_str(&render(&rows, interval));
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return 1;
        }
        drop(out);
        n += 1;
        if count != 0 && n >= count {
            return if rows.iter().all(|(_, r)| r.is_err()) {
                1
            } else {
                0
            };
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let snap = Snapshot::from_replies(
            b"BISK 120 3 2 1 90061\n",
            b"3 12 12 12 2.0 1.5 1.5 1.5 2003.333 1502.5 0 0 0 0 0 0 0 0 0 0 1 1 1 1 120 3 2 1 90061\n",
        )
        .unwrap();
        assert_eq!(snap.scans_1m, 12);
        let rows = vec![
            ("/run/mx.sock".to_string(), Ok(snap)),
            (
                "/nowhere.sock".to_string(),
                Err(SnapshotError::Unreachable(
                    "connect: No such file or directory: Is multiplexor running?".to_string(),
                )),
            ),
        ];
        let want = "mm-mx-ctrl top: 2 multiplexor(s), every 5s\n\n\
SOCKET                          BUSY IDLE STOP KILL   QUEUE     MSGS   MSG/S   MSG/S    MS/MSG    MS/MSG      UPTIME\n"
            .to_string()
            + &" ".repeat(73)
            + "10s      1m       10s        1m\n\
/run/mx.sock                     1/4    1    1    1     1/2      120    0.30    0.20    2003.3    1502.5  1d01:01:01\n  \
[Bi.k]\n\
/nowhere.sock                connect: No such file or directory: Is multiplexor running?\n";
        assert_eq!(render(&rows, 5), want);
        assert_eq!(
            Snapshot::from_replies(b"error: x\n", b"")
                .unwrap_err()
                .to_string(),
            "bad status reply: error: x"
        );
    }
}
