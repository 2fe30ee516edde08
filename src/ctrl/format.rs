//! The client-side output formats of mm-mx-ctrl (protocol/mm-mx-ctrl.md §5):
//! pure functions from the multiplexor's reply bytes to the bytes upstream
//! prints.
//!
//! Replies are treated as C strings (upstream prints them with `%s`), so
//! everything from the first NUL byte on is ignored.

use crate::cformat::number::{scan, Conv, Num, Scanner};
use crate::cformat::string::until_nul;
use crate::wire::percent;

/// What one command prints, and whether it succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Bytes for standard output.
    pub out: Vec<u8>,
    /// Bytes for the error stream (stderr, or stdout in `-i` mode).
    pub err: Vec<u8>,
    /// Exit status 0 (true) or 1 (false).
    pub ok: bool,
}

impl Rendered {
    fn out(out: Vec<u8>) -> Self {
        Rendered {
            out,
            err: Vec::new(),
            ok: true,
        }
    }
    fn failed_out(out: Vec<u8>) -> Self {
        Rendered {
            out,
            err: Vec::new(),
            ok: false,
        }
    }
    fn failed_err(err: Vec<u8>) -> Self {
        Rendered {
            out: Vec::new(),
            err,
            ok: false,
        }
    }
}

/// `printf("%W.Pf")`, including glibc's spelling of infinities and NaNs.
pub fn cfix(v: f64, width: usize, prec: usize) -> String {
    let body = if v.is_nan() {
        if v.is_sign_negative() { "-nan" } else { "nan" }.to_string()
    } else if v.is_infinite() {
        if v < 0.0 { "-inf" } else { "inf" }.to_string()
    } else {
        format!("{v:.prec$}")
    };
    format!("{body:>width$}")
}

/// C's `(double) a / (double) b`, with x86's negative NaN for 0/0 (which
/// glibc prints as `-nan`).
fn cdiv(a: i32, b: i32) -> f64 {
    if b == 0 {
        return match a {
            0 => -f64::NAN,
            a if a > 0 => f64::INFINITY,
            _ => f64::NEG_INFINITY,
        };
    }
    a as f64 / b as f64
}

fn bracketed(bracket: bool, body: Vec<u8>) -> Vec<u8> {
    if !bracket {
        return body;
    }
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(b"<\n");
    v.extend_from_slice(&body);
    v.extend_from_slice(b">\n");
    v
}

fn could_not_interpret(reply: &[u8]) -> Rendered {
    let mut out = b"Could not interpret response: ".to_vec();
    out.extend_from_slice(reply);
    Rendered::failed_out(out)
}

/// The run of worker-state letters at the start of a `status` reply, or
/// `None` when the reply does not start with one (protocol/mm-mx-ctrl.md §5.1).
fn state_letters(reply: &[u8]) -> Option<&[u8]> {
    match reply.first() {
        Some(b'I' | b'K' | b'S' | b'B') => {
            let end = reply.iter().position(|&b| b == b' ').unwrap_or(reply.len());
            Some(&reply[..end])
        }
        _ => None,
    }
}

/// The word for a worker-state letter of `status` and `workers` replies.
pub(crate) fn state_word(letter: u8) -> Option<&'static str> {
    match letter {
        b'I' => Some("idle"),
        b'B' => Some("busy"),
        b'S' => Some("stopped"),
        b'K' => Some("killed"),
        _ => None,
    }
}

fn status_error(reply: &[u8]) -> Rendered {
    let mut err = b"ERROR ".to_vec();
    err.extend_from_slice(reply);
    Rendered::failed_err(err)
}

/// `status` (protocol/mm-mx-ctrl.md §5.1).
pub fn status(reply: &[u8], bracket: bool) -> Rendered {
    let reply = until_nul(reply);
    let Some(letters) = state_letters(reply) else {
        return status_error(reply);
    };
    let mut body = format!("Max workers: {}\n", letters.len()).into_bytes();
    for (i, &c) in letters.iter().enumerate() {
        body.extend_from_slice(format!("Worker {i}: ").as_bytes());
        match state_word(c) {
            Some(word) => body.extend_from_slice(word.as_bytes()),
            None => {
                body.extend_from_slice(b"unknown state '");
                body.push(c);
                body.push(b'\'');
            }
        }
        body.push(b'\n');
    }
    Rendered::out(bracketed(bracket, body))
}

/// A bar of `len` cells where the first `filled` (scaled when the total is
/// above `max`) show `mark`, computed in single precision as upstream does.
fn bar(filled: i32, total: i32, max: i32, mark: u8) -> Vec<u8> {
    if total <= max {
        (0..total.max(0))
            .map(|i| if i < filled { mark } else { b'.' })
            .collect()
    } else {
        let limit = filled as f32 / total as f32 * max as f32;
        (0..max)
            .map(|i| if (i as f32) < limit { mark } else { b'.' })
            .collect()
    }
}

/// `barstatus` (protocol/mm-mx-ctrl.md §5.2).
pub fn barstatus(reply: &[u8], bracket: bool) -> Rendered {
    let Some(st) = StatusReply::parse(reply) else {
        return state_error(reply);
    };
    let ntotal = st.letters.len() as i32;
    let nbusy = st.busy() as i32;
    // Cannot happen after the validation above (one letter at least); kept
    // because upstream has it (protocol/mm-mx-ctrl.md §5.2).
    if ntotal == 0 {
        return Rendered::out(bracketed(bracket, b"Max 0 workers ??\n".to_vec()));
    }
    // Upstream leaves a number it could not read uninitialised; we use 0.
    let get = |n: Option<i64>| n.unwrap_or(0) as i32;
    let (msgs, qsize, queued) = (get(st.msgs), get(st.queue_size), get(st.queued));
    let mut body = format!("{nbusy:3}/{ntotal} ").into_bytes();
    body.extend(bar(nbusy, ntotal, 25, b'B'));
    if qsize != 0 {
        body.extend_from_slice(format!("  {queued:3}/{qsize} ").as_bytes());
        body.extend(bar(queued, qsize, 20, b'Q'));
    }
    body.extend_from_slice(format!(" {msgs}\n").as_bytes());
    Rendered::out(bracketed(bracket, body))
}

/// Which command a `load*`/`hload*` table describes, with its column labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    Scan,
    Relayok,
    Senderok,
    Recipok,
}

impl LoadKind {
    pub const ALL: [LoadKind; 4] = [
        LoadKind::Scan,
        LoadKind::Relayok,
        LoadKind::Senderok,
        LoadKind::Recipok,
    ];

    /// The suffix of the command word: `load`, `load-relayok`, ….
    pub fn suffix(self) -> &'static str {
        match self {
            LoadKind::Scan => "",
            LoadKind::Relayok => "-relayok",
            LoadKind::Senderok => "-senderok",
            LoadKind::Recipok => "-recipok",
        }
    }

    /// The worker command this load counts.
    pub fn command(self) -> &'static str {
        match self {
            LoadKind::Scan => "scan",
            LoadKind::Relayok => "relayok",
            LoadKind::Senderok => "senderok",
            LoadKind::Recipok => "recipok",
        }
    }

    /// (count label, per-scan label) of the table header.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            LoadKind::Scan => ("Msgs", "Scan"),
            LoadKind::Relayok => ("Conn", "Conn"),
            LoadKind::Senderok => ("MAIL", "MAIL"),
            LoadKind::Recipok => ("RCPT", "RCPT"),
        }
    }

    pub fn from_suffix(s: &[u8]) -> Option<LoadKind> {
        LoadKind::ALL
            .into_iter()
            .find(|k| k.suffix().as_bytes() == s)
    }
}

fn load_header(kind: LoadKind) -> String {
    let (x, y) = kind.labels();
    format!(
        "{:>6} {:>17} {:>15} {:>15} {}\n",
        "Load",
        x,
        format!("{x}/Sec"),
        format!("Avg ms/{y}"),
        "  Avg Busy Workers"
    )
}

fn load_row(label: &str, count: i32, rate: f64, avg_ms: f64, avg_busy: f64) -> String {
    format!(
        "{label:>6} {count:15} {} {} {}\n",
        cfix(rate, 15, 2),
        cfix(avg_ms, 15, 1),
        cfix(avg_busy, 15, 2)
    )
}

/// The 29-number `load` reply (protocol/mm-mx-ctrl.md §5.3): counts, average
/// busy workers and average ms for the four windows, then activations and reaps
/// per window, the worker-state counts and the five totals. The text format
/// reads only the first [`LOAD_WINDOW_NUMBERS`], as upstream does.
#[rustfmt::skip] // one row per group of the reply
pub(crate) const LOAD_PATTERN: [Conv; 29] = [
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Float, Conv::Float, Conv::Float, Conv::Float,
    Conv::Float, Conv::Float, Conv::Float, Conv::Float,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int,
];
/// Counts, average busy workers and average ms of the four windows.
pub(crate) const LOAD_WINDOW_NUMBERS: usize = 12;

/// `load`, `load-relayok`, `load-senderok`, `load-recipok`
/// (protocol/mm-mx-ctrl.md §5.3). Unlike upstream, a reply without the 12
/// leading numbers is reported (protocol/mm-mx-ctrl.md §9.2).
pub fn load(kind: LoadKind, reply: &[u8], bracket: bool) -> Rendered {
    let reply = until_nul(reply);
    let pattern = &LOAD_PATTERN[..LOAD_WINDOW_NUMBERS];
    let n = scan(reply, pattern);
    if n.len() != pattern.len() {
        return could_not_interpret(reply);
    }
    let mut body = load_header(kind);
    for (i, (label, secs)) in [
        ("10 Sec", 10.0),
        ("1 Min", 60.0),
        ("5 Min", 300.0),
        ("10 Min", 600.0),
    ]
    .into_iter()
    .enumerate()
    {
        let count = n[i].as_i32();
        body.push_str(&load_row(
            label,
            count,
            count as f64 / secs,
            n[8 + i].as_f64(),
            n[4 + i].as_f64(),
        ));
    }
    Rendered::out(bracketed(bracket, body.into_bytes()))
}

#[rustfmt::skip] // one row per group of the reply
pub(crate) const HLOAD_PATTERN: [Conv; 16] = [
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Float, Conv::Float, Conv::Float, Conv::Float,
    Conv::Float, Conv::Float, Conv::Float, Conv::Float,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int,
];

/// `hload`, `hload-relayok`, `hload-senderok`, `hload-recipok`
/// (protocol/mm-mx-ctrl.md §5.5), with the same check as [`load`].
pub fn hload(kind: LoadKind, reply: &[u8], bracket: bool) -> Rendered {
    let reply = until_nul(reply);
    let n = scan(reply, &HLOAD_PATTERN);
    if n.len() != HLOAD_PATTERN.len() {
        return could_not_interpret(reply);
    }
    let mut body = load_header(kind);
    for (i, label) in [" 1h", " 4h", "12h", "24h"].into_iter().enumerate() {
        let (count, secs) = (n[i].as_i32(), n[12 + i].as_i32());
        let rate = if secs != 0 {
            count as f64 / secs as f64
        } else {
            0.0
        };
        body.push_str(&load_row(
            label,
            count,
            rate,
            n[8 + i].as_f64(),
            n[4 + i].as_f64(),
        ));
    }
    Rendered::out(bracketed(bracket, body.into_bytes()))
}

/// The 26-number `load1` reply pattern (protocol/mm-mx-ctrl.md §5.4).
#[rustfmt::skip] // one row per group of the reply
pub const LOAD1_PATTERN: [Conv; 26] = [
    Conv::Int, Conv::Float, Conv::Float,
    Conv::Int, Conv::Float, Conv::Float,
    Conv::Int, Conv::Float, Conv::Float,
    Conv::Int, Conv::Float, Conv::Float,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int,
    Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int, Conv::Int,
];

/// `load1 N` (protocol/mm-mx-ctrl.md §5.4).
pub fn load1(reply: &[u8], bracket: bool) -> Rendered {
    let reply = until_nul(reply);
    let n = scan(reply, &LOAD1_PATTERN);
    if n.len() != LOAD1_PATTERN.len() {
        return could_not_interpret(reply);
    }
    let i = |k: usize| n[k].as_i32();
    let back = i(21);
    let mut body = format!("Statistics for last {back} seconds:\n");
    body.push_str(&format!(
        "{:>10} {:>15} {:>15} {:>15} {:>15}\n",
        "Cmd", "Num", "Num/s", "AvgWorkers", "AvgMS"
    ));
    for (k, label) in ["Scan", "Relayok", "Senderok", "Recipok"]
        .into_iter()
        .enumerate()
    {
        let num = i(3 * k);
        body.push_str(&format!(
            "{label:>10} {num:15} {} {} {}\n",
            cfix(cdiv(num, back), 15, 1),
            cfix(n[3 * k + 1].as_f64(), 15, 1),
            cfix(n[3 * k + 2].as_f64(), 15, 1)
        ));
    }
    body.push_str(&format!(
        "\nCurrent Snapshot:\nWorkers: busy={} idle={} stopped={} killed={}\n",
        i(12),
        i(13),
        i(14),
        i(15)
    ));
    body.push_str(&format!(
        "Cmds:   scan={} relayok={} senderok={} recipok={}\n",
        i(22),
        i(23),
        i(24),
        i(25)
    ));
    body.push_str(&format!("Queue:  size={} queued={}\n", i(18), i(19)));
    Rendered::out(bracketed(bracket, body.into_bytes()))
}

/// Pass-through and raw commands (protocol/mm-mx-ctrl.md §5.6): the reply
/// (percent-decoded when `decode`), with a newline added if it lacks one;
/// always succeeds.
pub fn passthrough(reply: &[u8], decode: bool, bracket: bool) -> Rendered {
    let reply = until_nul(reply);
    let mut body = if decode {
        percent::decode_c(reply)
    } else {
        reply.to_vec()
    };
    if body.last().is_some_and(|&b| b != b'\n') {
        body.push(b'\n');
    }
    Rendered::out(bracketed(bracket, body))
}

/// Reads the numbers of a reply for the JSON formats: all of `pattern` or
/// nothing.
pub(crate) fn scan_all(reply: &[u8], pattern: &[Conv]) -> Option<Vec<Num>> {
    let n = scan(until_nul(reply), pattern);
    (n.len() == pattern.len()).then_some(n)
}

/// A `status` reply read (protocol/multiplexor.md §5.1): the state letter
/// of each worker slot, then msgs, activations, queue size, queued and
/// uptime. The numbers are read as upstream's mm-mx-ctrl reads them: from
/// the first one that does not scan on, they are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReply {
    /// One of `S`, `I`, `B`, `K` per worker slot.
    pub letters: Vec<u8>,
    pub msgs: Option<i64>,
    pub activations: Option<i64>,
    pub queue_size: Option<i64>,
    pub queued: Option<i64>,
    pub uptime: Option<i64>,
}

impl StatusReply {
    /// Reads a `status` reply; `None` when it does not start with a state
    /// letter (an error answer, or no answer).
    pub fn parse(reply: &[u8]) -> Option<StatusReply> {
        let reply = until_nul(reply);
        let letters = state_letters(reply)?;
        let mut s = Scanner::new(&reply[letters.len()..]);
        let mut n = [None; 5];
        for slot in n.iter_mut() {
            match s.int() {
                Some(v) => *slot = Some(v as i64),
                None => break,
            }
        }
        Some(StatusReply {
            letters: letters.to_vec(),
            msgs: n[0],
            activations: n[1],
            queue_size: n[2],
            queued: n[3],
            uptime: n[4],
        })
    }

    /// How many slots are in the state `letter` (`b'B'` for busy).
    pub fn count(&self, letter: u8) -> usize {
        self.letters.iter().filter(|&&b| b == letter).count()
    }

    /// How many workers are busy.
    pub fn busy(&self) -> usize {
        self.count(b'B')
    }
}

pub(crate) fn interpret_error(reply: &[u8]) -> Rendered {
    could_not_interpret(until_nul(reply))
}

pub(crate) fn state_error(reply: &[u8]) -> Rendered {
    status_error(until_nul(reply))
}

pub(crate) fn wrap(bracket: bool, body: Vec<u8>) -> Rendered {
    Rendered::out(bracketed(bracket, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(r: &Rendered) -> &str {
        std::str::from_utf8(&r.out).unwrap()
    }

    #[test]
    fn cfix_matches_glibc() {
        // Expected strings printed by glibc's printf("[%15.2f][%15.1f]").
        let cases: [(f64, &str, &str); 13] = [
            (0.125, "0.12", "0.1"),
            (2.25, "2.25", "2.2"),
            (0.005, "0.01", "0.0"),
            (1.005, "1.00", "1.0"),
            (2.675, "2.67", "2.7"),
            (-0.0, "-0.00", "-0.0"),
            (-0.001, "-0.00", "-0.0"),
            (
                1e21,
                "1000000000000000000000.00",
                "1000000000000000000000.0",
            ),
            (123456789.125, "123456789.12", "123456789.1"),
            (1502.5, "1502.50", "1502.5"),
            (2003.35, "2003.35", "2003.3"),
            (0.07, "0.07", "0.1"),
            (4.0 / 60.0, "0.07", "0.1"),
        ];
        for (v, two, one) in cases {
            assert_eq!(cfix(v, 15, 2), format!("{two:>15}"), "{v}");
            assert_eq!(cfix(v, 15, 1), format!("{one:>15}"), "{v}");
        }
        assert_eq!(cfix(cdiv(0, 0), 5, 1), " -nan");
        assert_eq!(cfix(cdiv(3, 0), 5, 1), "  inf");
    }

    #[test]
    fn status_observed() {
        let r = status(b"IISS 0 2 2 0 6\n", false);
        assert!(r.ok);
        assert_eq!(s(&r), "Max workers: 4\nWorker 0: idle\nWorker 1: idle\nWorker 2: stopped\nWorker 3: stopped\n");
        let r = status(b"BK 1 2 3 4 5\n", true);
        assert_eq!(
            s(&r),
            "<\nMax workers: 2\nWorker 0: busy\nWorker 1: killed\n>\n"
        );
        // No space: the newline counts as a (unknown) state, as upstream.
        let r = status(b"IX\n", false);
        assert_eq!(s(&r), "Max workers: 3\nWorker 0: idle\nWorker 1: unknown state 'X'\nWorker 2: unknown state '\n'\n");
    }

    #[test]
    fn status_reply_is_read_typed() {
        let st = StatusReply::parse(b"IBSKB 12 3 2 1 60\n").unwrap();
        assert_eq!(st.letters, b"IBSKB");
        assert_eq!(st.busy(), 2);
        assert_eq!((st.count(b'I'), st.count(b'S'), st.count(b'K')), (1, 1, 1));
        assert_eq!(
            [st.msgs, st.activations, st.queue_size, st.queued, st.uptime],
            [Some(12), Some(3), Some(2), Some(1), Some(60)]
        );
        // Numbers stop at the first one that does not scan.
        let st = StatusReply::parse(b"II 7 x 2\n").unwrap();
        assert_eq!(
            (st.msgs, st.activations, st.queue_size),
            (Some(7), None, None)
        );
        assert_eq!(StatusReply::parse(b"error: Unknown command\n"), None);
        assert_eq!(StatusReply::parse(b""), None);
    }

    #[test]
    fn status_errors_go_to_the_error_stream() {
        let r = status(b"error: Unknown command\n", true);
        assert_eq!(
            r,
            Rendered {
                out: vec![],
                err: b"ERROR error: Unknown command\n".to_vec(),
                ok: false
            }
        );
        let r = barstatus(b"", false);
        assert_eq!(r.err, b"ERROR ");
        assert!(!r.ok);
    }

    #[test]
    fn barstatus_observed() {
        assert_eq!(
            s(&barstatus(b"IISS 0 2 2 0 6\n", false)),
            "  0/4 ....    0/2 .. 0\n"
        );
        assert_eq!(
            s(&barstatus(b"BBBB 1 4 2 2 40\n", false)),
            "  4/4 BBBB    2/2 QQ 1\n"
        );
        assert_eq!(
            s(&barstatus(b"BIS 7 1 0 0 3\n", true)),
            "<\n  1/3 B.. 7\n>\n"
        );
    }

    #[test]
    fn barstatus_scales_long_bars() {
        // 30 workers, 10 busy: cells where i < 10/30*25 = 8.33 → 9 B's.
        let mut reply = vec![b'B'; 10];
        reply.extend(vec![b'I'; 20]);
        reply.extend_from_slice(b" 5 0 40 7 9\n");
        let want = format!(
            "{:>3}/30 {}{}  {:>3}/40 {}{} 5\n",
            10,
            "B".repeat(9),
            ".".repeat(16),
            7,
            "Q".repeat(4),
            ".".repeat(16)
        );
        assert_eq!(s(&barstatus(&reply, false)), want);
    }

    const IDLE_LOAD: &[u8] = b"0 0 0 0 1.000000 1.000000 1.000000 1.000000 0.000000 0.000000 0.000000 0.000000 2 2 2 2 0 0 0 0 0 2 2 0 0 2 2 0 6\n";

    #[test]
    fn load_observed() {
        let want = "  Load              Msgs        Msgs/Sec     Avg ms/Scan   Avg Busy Workers\n\
10 Sec               0            0.00             0.0            1.00\n \
1 Min               0            0.00             0.0            1.00\n \
5 Min               0            0.00             0.0            1.00\n\
10 Min               0            0.00             0.0            1.00\n";
        assert_eq!(s(&load(LoadKind::Scan, IDLE_LOAD, false)), want);
        let r = load(LoadKind::Recipok, b"3 4 4 4 2.0 2.0 2.0 2.0 2003.333333 1502.5 1502.5 1502.5 0 0 0 0 0 0 0 0 0 3 1 0 0 2 2 0 6\n", false);
        let text = s(&r);
        assert!(
            text.starts_with(
                "  Load              RCPT        RCPT/Sec     Avg ms/RCPT   Avg Busy Workers\n\
10 Sec               3            0.30          2003.3            2.00\n \
1 Min               4            0.07          1502.5            2.00\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn load_rejects_unparseable_replies() {
        let r = load(LoadKind::Relayok, b"error: Unknown command\n", true);
        assert_eq!(
            r,
            Rendered {
                out: b"Could not interpret response: error: Unknown command\n".to_vec(),
                err: vec![],
                ok: false
            }
        );
        assert!(!hload(LoadKind::Scan, b"1 2 3", false).ok);
    }

    #[test]
    fn hload_observed_and_rates() {
        let r = hload(LoadKind::Scan, b"0 0 0 0 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0.000000 0 0 0 0\n", false);
        assert_eq!(
            s(&r),
            "  Load              Msgs        Msgs/Sec     Avg ms/Scan   Avg Busy Workers\n    \
1h               0            0.00             0.0            0.00\n    \
4h               0            0.00             0.0            0.00\n   \
12h               0            0.00             0.0            0.00\n   \
24h               0            0.00             0.0            0.00\n"
        );
        let r = hload(
            LoadKind::Senderok,
            b"10 10 10 10 1.5 1.5 1.5 1.5 20.25 20.25 20.25 20.25 4 4 0 4\n",
            false,
        );
        let t = s(&r);
        assert!(t.starts_with("  Load              MAIL        MAIL/Sec     Avg ms/MAIL   Avg Busy Workers\n    1h              10            2.50            20.2            1.50\n"), "{t}");
        assert!(
            t.contains(
                "\n   12h              10            0.00            20.2            1.50\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn load1_observed() {
        let reply = b"1 1.000000 0.000000 1 1.000000 0.000000 0 0.000000 0.000000 4 2.000000 1502.500000 0 3 1 0 1 2 2 0 60 60 0 0 0 0\n";
        let want = "Statistics for last 60 seconds:\n       Cmd             Num           Num/s      AvgWorkers           AvgMS\n      \
Scan               1             0.0             1.0             0.0\n   \
Relayok               1             0.0             1.0             0.0\n  \
Senderok               0             0.0             0.0             0.0\n   \
Recipok               4             0.1             2.0          1502.5\n\
\nCurrent Snapshot:\nWorkers: busy=0 idle=3 stopped=1 killed=0\nCmds:   scan=0 relayok=0 senderok=0 recipok=0\nQueue:  size=2 queued=0\n";
        let r = load1(reply, false);
        assert!(r.ok);
        assert_eq!(s(&r), want);
        let r = load1(b"error: Invalid 'back' amount (must be 10-600)\n", true);
        assert_eq!(
            s(&r),
            "Could not interpret response: error: Invalid 'back' amount (must be 10-600)\n"
        );
        assert!(!r.ok);
    }

    #[test]
    fn passthrough_rules() {
        assert_eq!(s(&passthrough(b"3.09", true, false)), "3.09\n");
        assert_eq!(
            s(&passthrough(b"ok 1 ok 250 2.1.0 0", true, false)),
            "ok 1 ok 250 2.1.0 0\n"
        );
        assert_eq!(
            s(&passthrough(b"ok 1 a%20b%25\n", true, false)),
            "ok 1 a b%\n"
        );
        assert_eq!(s(&passthrough(b"a%20b\n", false, false)), "a%20b\n");
        assert_eq!(s(&passthrough(b"", true, false)), "");
        assert_eq!(s(&passthrough(b"", true, true)), "<\n>\n");
        // C strings: a decoded %00 ends the text.
        assert_eq!(s(&passthrough(b"ab%00cd\n", true, false)), "ab\n");
        assert_eq!(s(&passthrough(b"ab\0cd", false, true)), "<\nab\n>\n");
        let r = passthrough(b"error: No free workers\n", true, false);
        assert!(r.ok);
    }
}
