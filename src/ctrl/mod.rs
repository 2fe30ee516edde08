//! `mm-mx-ctrl`, the operator's control tool (protocol/mm-mx-ctrl.md):
//! argument encoding, the command dispatcher, the client-side formats and the
//! command-line driver. The binary only calls [`cli::main`].
//!
//! Layout: [`options`] parses argv like upstream's getopt; [`Command`] maps a
//! request line to what is sent and how the reply is shown
//! (protocol/mm-mx-ctrl.md §4); [`format`] and [`json`] turn reply bytes into
//! output bytes (pure, tested with exact bytes); [`cli`] does the I/O; [`top`]
//! is the live view.

pub mod cli;
pub mod diagnose;
pub mod format;
pub mod json;
pub mod options;
pub mod top;

use crate::wire::percent;
pub use format::{LoadKind, Rendered};

/// A request line as the dispatcher understands it (protocol/mm-mx-ctrl.md §4,
/// plus our `json*` extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `status`, formatted (protocol/mm-mx-ctrl.md §5.1).
    Status,
    /// `barstatus`, formatted from `status` (protocol/mm-mx-ctrl.md §5.2).
    BarStatus,
    /// Sent as given, reply printed raw (`reread`, `msgs`, `rawstatus`,
    /// `rawload*`, `rawload1 N`, `rawhload*`).
    Raw(Vec<u8>),
    /// `load`, `load-*` (protocol/mm-mx-ctrl.md §5.3).
    Load(LoadKind),
    /// `hload`, `hload-*` (protocol/mm-mx-ctrl.md §5.5).
    HLoad(LoadKind),
    /// `load1 N`, the line as is (protocol/mm-mx-ctrl.md §5.4).
    Load1(Vec<u8>),
    /// Anything else: the line as is, reply percent-decoded
    /// (protocol/mm-mx-ctrl.md §5.6).
    PassThrough(Vec<u8>),
    /// `jsonstatus` (extension).
    JsonStatus,
    /// `jsonload`, `jsonload-*` (extension).
    JsonLoad(LoadKind),
    /// `jsonhload`, `jsonhload-*` (extension).
    JsonHLoad(LoadKind),
    /// `jsonload1 N` (extension): sends `load1 N`.
    JsonLoad1(Vec<u8>),
    /// `jsonworkers`, `jsonbusyworkers` (extension): the request sent.
    JsonWorkers(&'static str),
}

/// Matches `line` against a word followed by an optional load suffix and
/// the newline: `load\n`, `load-relayok\n`, ….
fn load_word(line: &[u8], word: &str) -> Option<LoadKind> {
    let rest = line.strip_prefix(word.as_bytes())?.strip_suffix(b"\n")?;
    LoadKind::from_suffix(rest)
}

impl Command {
    /// Dispatches a request line (including its `\n`), first match wins,
    /// in upstream's order.
    pub fn parse(line: &[u8]) -> Command {
        let raw = |s: &str| Command::Raw(s.as_bytes().to_vec());
        match line {
            b"status\n" => return Command::Status,
            b"barstatus\n" => return Command::BarStatus,
            b"reread\n" => return raw("reread\n"),
            b"rawstatus\n" => return raw("status\n"),
            b"msgs\n" => return raw("msgs\n"),
            _ => {}
        }
        if let Some(k) = load_word(line, "rawload") {
            return Command::Raw(format!("load{}\n", k.suffix()).into_bytes());
        }
        if line.starts_with(b"rawload1 ") {
            return Command::Raw(line[3..].to_vec());
        }
        if line.starts_with(b"load1 ") {
            return Command::Load1(line.to_vec());
        }
        if let Some(k) = load_word(line, "rawhload") {
            return Command::Raw(format!("hload{}\n", k.suffix()).into_bytes());
        }
        if let Some(k) = load_word(line, "load") {
            return Command::Load(k);
        }
        if let Some(k) = load_word(line, "hload") {
            return Command::HLoad(k);
        }
        if line == b"jsonstatus\n" {
            return Command::JsonStatus;
        }
        if let Some(k) = load_word(line, "jsonload") {
            return Command::JsonLoad(k);
        }
        if let Some(k) = load_word(line, "jsonhload") {
            return Command::JsonHLoad(k);
        }
        if line.starts_with(b"jsonload1 ") {
            return Command::JsonLoad1(line[4..].to_vec());
        }
        match line {
            b"jsonworkers\n" => return Command::JsonWorkers("workers\n"),
            b"jsonbusyworkers\n" => return Command::JsonWorkers("busyworkers\n"),
            _ => {}
        }
        Command::PassThrough(line.to_vec())
    }

    /// The bytes sent to the multiplexor.
    pub fn request(&self) -> Vec<u8> {
        match self {
            Command::Status | Command::BarStatus | Command::JsonStatus => b"status\n".to_vec(),
            Command::Load(k) | Command::JsonLoad(k) => format!("load{}\n", k.suffix()).into_bytes(),
            Command::HLoad(k) | Command::JsonHLoad(k) => {
                format!("hload{}\n", k.suffix()).into_bytes()
            }
            Command::Raw(l)
            | Command::Load1(l)
            | Command::PassThrough(l)
            | Command::JsonLoad1(l) => l.clone(),
            Command::JsonWorkers(req) => req.as_bytes().to_vec(),
        }
    }

    /// Turns the multiplexor's reply into what mm-mx-ctrl prints.
    pub fn render(&self, reply: &[u8], bracket: bool) -> Rendered {
        match self {
            Command::Status => format::status(reply, bracket),
            Command::BarStatus => format::barstatus(reply, bracket),
            Command::Raw(_) => format::passthrough(reply, false, bracket),
            Command::Load(k) => format::load(*k, reply, bracket),
            Command::HLoad(k) => format::hload(*k, reply, bracket),
            Command::Load1(_) => format::load1(reply, bracket),
            Command::PassThrough(_) => format::passthrough(reply, true, bracket),
            Command::JsonStatus => json::status(reply, bracket),
            Command::JsonLoad(k) => json::load(*k, reply, bracket),
            Command::JsonHLoad(k) => json::hload(*k, reply, bracket),
            Command::JsonLoad1(_) => json::load1(reply, bracket),
            Command::JsonWorkers(_) => json::workers(reply, bracket),
        }
    }
}

/// Builds the request line from command-line words (protocol/mm-mx-ctrl.md §3):
/// every word, the command word included, percent-encoded; single spaces; `\n`.
pub fn build_request(words: &[Vec<u8>]) -> Vec<u8> {
    let mut line = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        percent::encode_into(&mut line, w, percent::Variant::Command);
    }
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(words: &[&[u8]]) -> Vec<Vec<u8>> {
        words.iter().map(|x| x.to_vec()).collect()
    }

    #[test]
    fn request_encoding_observed() {
        assert_eq!(
            build_request(&w(&[b"echo", b"a b", b"c%d", b"x'y", "é".as_bytes()])),
            b"echo a%20b c%25d x%27y %C3%A9\n"
        );
        assert_eq!(
            build_request(&w(&[b"scan", b"NOQUEUE", b"/dir"])),
            b"scan NOQUEUE /dir\n"
        );
        assert_eq!(build_request(&w(&[b"load1", b"60"])), b"load1 60\n");
        assert_eq!(build_request(&w(&[b"load1 60"])), b"load1%2060\n");
        assert_eq!(build_request(&w(&[b"a\\\"b"])), b"a%5C%22b\n");
        assert_eq!(build_request(&w(&[b""])), b"\n");
    }

    #[test]
    fn dispatch_table() {
        let cases: &[(&[u8], &[u8], Command)] = &[
            (b"status\n", b"status\n", Command::Status),
            (b"barstatus\n", b"status\n", Command::BarStatus),
            (b"reread\n", b"reread\n", Command::Raw(b"reread\n".to_vec())),
            (
                b"rawstatus\n",
                b"status\n",
                Command::Raw(b"status\n".to_vec()),
            ),
            (b"msgs\n", b"msgs\n", Command::Raw(b"msgs\n".to_vec())),
            (b"rawload\n", b"load\n", Command::Raw(b"load\n".to_vec())),
            (
                b"rawload-relayok\n",
                b"load-relayok\n",
                Command::Raw(b"load-relayok\n".to_vec()),
            ),
            (
                b"rawload-senderok\n",
                b"load-senderok\n",
                Command::Raw(b"load-senderok\n".to_vec()),
            ),
            (
                b"rawload-recipok\n",
                b"load-recipok\n",
                Command::Raw(b"load-recipok\n".to_vec()),
            ),
            (
                b"rawload1 60\n",
                b"load1 60\n",
                Command::Raw(b"load1 60\n".to_vec()),
            ),
            (
                b"load1 60\n",
                b"load1 60\n",
                Command::Load1(b"load1 60\n".to_vec()),
            ),
            (b"rawhload\n", b"hload\n", Command::Raw(b"hload\n".to_vec())),
            (
                b"rawhload-recipok\n",
                b"hload-recipok\n",
                Command::Raw(b"hload-recipok\n".to_vec()),
            ),
            (b"load\n", b"load\n", Command::Load(LoadKind::Scan)),
            (
                b"load-senderok\n",
                b"load-senderok\n",
                Command::Load(LoadKind::Senderok),
            ),
            (
                b"hload-relayok\n",
                b"hload-relayok\n",
                Command::HLoad(LoadKind::Relayok),
            ),
            (b"jsonstatus\n", b"status\n", Command::JsonStatus),
            (
                b"jsonload-recipok\n",
                b"load-recipok\n",
                Command::JsonLoad(LoadKind::Recipok),
            ),
            (
                b"jsonhload\n",
                b"hload\n",
                Command::JsonHLoad(LoadKind::Scan),
            ),
            (
                b"jsonload1 30\n",
                b"load1 30\n",
                Command::JsonLoad1(b"load1 30\n".to_vec()),
            ),
            (
                b"jsonworkers\n",
                b"workers\n",
                Command::JsonWorkers("workers\n"),
            ),
            (
                b"jsonbusyworkers\n",
                b"busyworkers\n",
                Command::JsonWorkers("busyworkers\n"),
            ),
            (
                b"status now\n",
                b"status now\n",
                Command::PassThrough(b"status now\n".to_vec()),
            ),
            (
                b"load1\n",
                b"load1\n",
                Command::PassThrough(b"load1\n".to_vec()),
            ),
            (
                b"load-foo\n",
                b"load-foo\n",
                Command::PassThrough(b"load-foo\n".to_vec()),
            ),
            (
                b"status",
                b"status",
                Command::PassThrough(b"status".to_vec()),
            ),
            (
                b"free\n",
                b"free\n",
                Command::PassThrough(b"free\n".to_vec()),
            ),
        ];
        for (line, sent, cmd) in cases {
            let got = Command::parse(line);
            assert_eq!(&got, cmd, "{:?}", String::from_utf8_lossy(line));
            assert_eq!(got.request(), *sent, "{:?}", String::from_utf8_lossy(line));
        }
    }
}
