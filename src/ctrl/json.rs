//! Machine-readable variants of the client-side formats (our extension,
//! documented in protocol/mm-mx-ctrl.md): the same replies as `status`,
//! `load*`, `hload*` and `load1`, printed as one JSON object per line.

use serde::Serialize;

use super::format::{self, LoadKind, Rendered, HLOAD_PATTERN, LOAD1_PATTERN, LOAD_PATTERN};

fn state_name(c: u8) -> &'static str {
    format::state_word(c).unwrap_or("unknown")
}

fn emit<T: Serialize>(value: &T, bracket: bool) -> Rendered {
    // Serialising plain structs of numbers and strings cannot fail.
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    format::wrap(bracket, body)
}

#[derive(Serialize)]
struct Counts {
    busy: i64,
    idle: i64,
    stopped: i64,
    killed: i64,
}

/// The worker counts and totals that end both `load` and `load1` replies.
#[derive(Serialize)]
struct Totals {
    workers: Counts,
    msgs: i64,
    activations: i64,
    queue_size: i64,
    queued: i64,
    uptime: i64,
}

impl Totals {
    /// Reads busy, idle, stopped, killed, msgs, activations, queue size,
    /// queued and uptime from `at` on.
    fn read(i: impl Fn(usize) -> i64, at: usize) -> Totals {
        Totals {
            workers: Counts {
                busy: i(at),
                idle: i(at + 1),
                stopped: i(at + 2),
                killed: i(at + 3),
            },
            msgs: i(at + 4),
            activations: i(at + 5),
            queue_size: i(at + 6),
            queued: i(at + 7),
            uptime: i(at + 8),
        }
    }
}

#[derive(Serialize)]
struct Status {
    max_workers: usize,
    workers: Vec<&'static str>,
    busy: usize,
    idle: usize,
    stopped: usize,
    killed: usize,
    msgs: Option<i64>,
    activations: Option<i64>,
    queue_size: Option<i64>,
    queued: Option<i64>,
    uptime: Option<i64>,
}

/// `jsonstatus`: the `status` reply as JSON.
pub fn status(reply: &[u8], bracket: bool) -> Rendered {
    let Some(st) = format::StatusReply::parse(reply) else {
        return format::state_error(reply);
    };
    emit(
        &Status {
            max_workers: st.letters.len(),
            workers: st.letters.iter().map(|&c| state_name(c)).collect(),
            busy: st.busy(),
            idle: st.count(b'I'),
            stopped: st.count(b'S'),
            killed: st.count(b'K'),
            msgs: st.msgs,
            activations: st.activations,
            queue_size: st.queue_size,
            queued: st.queued,
            uptime: st.uptime,
        },
        bracket,
    )
}

#[derive(Serialize)]
struct LoadWindow {
    seconds: i64,
    count: i64,
    per_second: f64,
    avg_busy_workers: f64,
    avg_ms: f64,
    activated: i64,
    reaped: i64,
}

#[derive(Serialize)]
struct Load {
    command: &'static str,
    windows: Vec<LoadWindow>,
    #[serde(flatten)]
    totals: Totals,
}

/// `jsonload[-relayok|-senderok|-recipok]`: all 29 numbers of the `load` reply.
pub fn load(kind: LoadKind, reply: &[u8], bracket: bool) -> Rendered {
    let Some(n) = format::scan_all(reply, &LOAD_PATTERN) else {
        return format::interpret_error(reply);
    };
    let i = |k: usize| n[k].as_i32() as i64;
    let windows = [10, 60, 300, 600]
        .into_iter()
        .enumerate()
        .map(|(w, secs)| LoadWindow {
            seconds: secs,
            count: i(w),
            per_second: i(w) as f64 / secs as f64,
            avg_busy_workers: n[4 + w].as_f64(),
            avg_ms: n[8 + w].as_f64(),
            activated: i(12 + w),
            reaped: i(16 + w),
        })
        .collect();
    emit(
        &Load {
            command: kind.command(),
            windows,
            totals: Totals::read(i, 20),
        },
        bracket,
    )
}

#[derive(Serialize)]
struct HourWindow {
    hours: i64,
    count: i64,
    elapsed_seconds: i64,
    per_second: f64,
    avg_busy_workers: f64,
    avg_ms: f64,
}

#[derive(Serialize)]
struct HLoad {
    command: &'static str,
    windows: Vec<HourWindow>,
}

/// `jsonhload[-relayok|-senderok|-recipok]`: the 16 numbers of `hload`.
pub fn hload(kind: LoadKind, reply: &[u8], bracket: bool) -> Rendered {
    let Some(n) = format::scan_all(reply, &HLOAD_PATTERN) else {
        return format::interpret_error(reply);
    };
    let windows = [1, 4, 12, 24]
        .into_iter()
        .enumerate()
        .map(|(w, hours)| {
            let (count, secs) = (n[w].as_i32() as i64, n[12 + w].as_i32() as i64);
            HourWindow {
                hours,
                count,
                elapsed_seconds: secs,
                per_second: if secs != 0 {
                    count as f64 / secs as f64
                } else {
                    0.0
                },
                avg_busy_workers: n[4 + w].as_f64(),
                avg_ms: n[8 + w].as_f64(),
            }
        })
        .collect();
    emit(
        &HLoad {
            command: kind.command(),
            windows,
        },
        bracket,
    )
}

#[derive(Serialize)]
struct CmdLoad {
    command: &'static str,
    count: i64,
    per_second: f64,
    avg_busy_workers: f64,
    avg_ms: f64,
    busy_now: i64,
}

#[derive(Serialize)]
struct Load1 {
    seconds: i64,
    commands: Vec<CmdLoad>,
    #[serde(flatten)]
    totals: Totals,
}

/// `jsonload1 N`: the 26 numbers of `load1 N`.
pub fn load1(reply: &[u8], bracket: bool) -> Rendered {
    let Some(n) = format::scan_all(reply, &LOAD1_PATTERN) else {
        return format::interpret_error(reply);
    };
    let i = |k: usize| n[k].as_i32() as i64;
    let back = i(21);
    let commands = LoadKind::ALL
        .into_iter()
        .enumerate()
        .map(|(k, kind)| CmdLoad {
            command: kind.command(),
            count: i(3 * k),
            per_second: if back != 0 {
                i(3 * k) as f64 / back as f64
            } else {
                0.0
            },
            avg_busy_workers: n[3 * k + 1].as_f64(),
            avg_ms: n[3 * k + 2].as_f64(),
            busy_now: i(22 + k),
        })
        .collect();
    emit(
        &Load1 {
            seconds: back,
            commands,
            totals: Totals::read(i, 12),
        },
        bracket,
    )
}

#[derive(Serialize, Debug, PartialEq)]
struct WorkerLine {
    slot: i64,
    state: &'static str,
    pid: Option<i64>,
    command: Option<String>,
    last: Option<String>,
    ago: i64,
    tag: Option<String>,
}

#[derive(Serialize)]
struct Workers {
    workers: Vec<WorkerLine>,
}

/// Parses one `workers` line (protocol/multiplexor.md §5.3):
/// `<n> <S|I|B|K>[ <pid>][ <cmd>][ last=<cmd>] ago=<secs>[ (<tag>)]`.
fn worker_line(line: &str) -> Option<WorkerLine> {
    // The tag may contain anything, so split it off first: it follows the
    // ago= field.
    let ago_at = line.find(" ago=")?;
    let (head, rest) = (&line[..ago_at], &line[ago_at + 5..]);
    let (ago, tag) = match rest.split_once(' ') {
        None => (rest, None),
        Some((a, t)) => (a, Some(t.strip_prefix('(')?.strip_suffix(')')?.to_string())),
    };
    let mut tok = head.split(' ');
    let slot = tok.next()?.parse().ok()?;
    let state = match tok.next()?.as_bytes() {
        &[letter] => format::state_word(letter)?,
        _ => return None,
    };
    let mut w = WorkerLine {
        slot,
        state,
        pid: None,
        command: None,
        last: None,
        ago: ago.parse().ok()?,
        tag,
    };
    for t in tok {
        if let Some(l) = t.strip_prefix("last=") {
            w.last = Some(l.to_string());
        } else if w.pid.is_none()
            && w.command.is_none()
            && t.bytes().all(|b| b.is_ascii_digit())
            && !t.is_empty()
        {
            w.pid = t.parse().ok();
        } else if w.command.is_none() && w.last.is_none() {
            w.command = Some(t.to_string());
        } else {
            return None;
        }
    }
    Some(w)
}

/// `jsonworkers`, `jsonbusyworkers`: the `workers`/`busyworkers` report as
/// `{"workers":[{"slot":0,"state":"busy","pid":123,"command":"scan","last":"scan","ago":0,"tag":"…"},…]}`.
pub fn workers(reply: &[u8], bracket: bool) -> Rendered {
    let text = String::from_utf8_lossy(crate::cformat::string::until_nul(reply));
    let parsed: Option<Vec<WorkerLine>> = text.lines().map(worker_line).collect();
    match parsed {
        Some(workers) => emit(&Workers { workers }, bracket),
        None => format::interpret_error(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(r: &Rendered) -> &str {
        std::str::from_utf8(&r.out).unwrap()
    }

    #[test]
    fn workers_json() {
        let r = workers(b"0 B 14849 last=relayok ago=0 (1: sleeping 2)\n1 I 14892 ago=5\n2 B 19115 recipok last=recipok ago=0 (1: checking (x) recipok)\n3 S last=scan ago=6\n4 K 77 ago=1\n", false);
        let t = s(&r);
        assert_eq!(
            t,
            "{\"workers\":[{\"slot\":0,\"state\":\"busy\",\"pid\":14849,\"command\":null,\"last\":\"relayok\",\"ago\":0,\"tag\":\"1: sleeping 2\"},\
{\"slot\":1,\"state\":\"idle\",\"pid\":14892,\"command\":null,\"last\":null,\"ago\":5,\"tag\":null},\
{\"slot\":2,\"state\":\"busy\",\"pid\":19115,\"command\":\"recipok\",\"last\":\"recipok\",\"ago\":0,\"tag\":\"1: checking (x) recipok\"},\
{\"slot\":3,\"state\":\"stopped\",\"pid\":null,\"command\":null,\"last\":\"scan\",\"ago\":6,\"tag\":null},\
{\"slot\":4,\"state\":\"killed\",\"pid\":77,\"command\":null,\"last\":null,\"ago\":1,\"tag\":null}]}\n"
        );
        assert_eq!(s(&workers(b"", true)), "<\n{\"workers\":[]}\n>\n");
        let r = workers(
            b"error: Attempt to use privileged command on unprivileged socket\n",
            false,
        );
        assert!(!r.ok);
        assert!(s(&r).starts_with("Could not interpret response: error:"));
    }

    #[test]
    fn status_json() {
        let r = status(b"IBSK 12 3 2 1 60\n", false);
        assert_eq!(
            s(&r),
            "{\"max_workers\":4,\"workers\":[\"idle\",\"busy\",\"stopped\",\"killed\"],\"busy\":1,\"idle\":1,\"stopped\":1,\"killed\":1,\"msgs\":12,\"activations\":3,\"queue_size\":2,\"queued\":1,\"uptime\":60}\n"
        );
        assert_eq!(status(b"error: x\n", false).err, b"ERROR error: x\n");
    }

    #[test]
    fn load_json() {
        let r = load(
            LoadKind::Scan,
            b"3 6 6 6 2.000000 1.5 1.5 1.5 10.5 8.0 8.0 8.0 1 2 2 2 0 0 1 1 1 2 1 0 6 2 0 0 99\n",
            true,
        );
        let t = s(&r);
        assert!(t.starts_with("<\n{\"command\":\"scan\",\"windows\":[{\"seconds\":10,\"count\":3,\"per_second\":0.3,\"avg_busy_workers\":2.0,\"avg_ms\":10.5,\"activated\":1,\"reaped\":0},"), "{t}");
        assert!(t.ends_with("\"workers\":{\"busy\":1,\"idle\":2,\"stopped\":1,\"killed\":0},\"msgs\":6,\"activations\":2,\"queue_size\":0,\"queued\":0,\"uptime\":99}\n>\n"), "{t}");
        let r = load(LoadKind::Scan, b"0 0 0 0 1.0\n", false);
        assert!(!r.ok);
        assert_eq!(s(&r), "Could not interpret response: 0 0 0 0 1.0\n");
    }

    #[test]
    fn hload_and_load1_json() {
        let r = hload(
            LoadKind::Recipok,
            b"8 8 8 8 1 1 1 1 5 5 5 5 4 4 4 0\n",
            false,
        );
        assert!(s(&r).starts_with("{\"command\":\"recipok\",\"windows\":[{\"hours\":1,\"count\":8,\"elapsed_seconds\":4,\"per_second\":2.0,\"avg_busy_workers\":1.0,\"avg_ms\":5.0},"));
        assert!(
            s(&r).contains("{\"hours\":24,\"count\":8,\"elapsed_seconds\":0,\"per_second\":0.0,")
        );
        let r = load1(b"1 1.000000 0.000000 1 1.000000 0.000000 0 0.000000 0.000000 4 2.000000 1502.500000 0 3 1 0 1 2 2 0 60 60 0 0 0 1\n", false);
        let t = s(&r);
        assert!(
            t.starts_with("{\"seconds\":60,\"commands\":[{\"command\":\"scan\",\"count\":1,"),
            "{t}"
        );
        assert!(t.contains("{\"command\":\"recipok\",\"count\":4,\"per_second\":0.06666666666666667,\"avg_busy_workers\":2.0,\"avg_ms\":1502.5,\"busy_now\":1}"), "{t}");
        assert!(
            t.ends_with("\"queue_size\":2,\"queued\":0,\"uptime\":60}\n"),
            "{t}"
        );
    }
}
