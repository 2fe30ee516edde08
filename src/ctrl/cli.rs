//! The I/O side of mm-mx-ctrl: talking to the multiplexor, printing, exit
//! statuses (protocol/mm-mx-ctrl.md §1, §2, §4, §6, §7).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::options::{self, Invocation, Options};
use super::{build_request, top, Command, Rendered};
use crate::cformat::strerror;
use crate::wire::mxclient::{self, MxError};
use crate::wire::sockspec::SockSpec;

/// The most reply bytes we keep. Upstream cut replies at 4 KiB or 256 KiB
/// (protocol/mm-mx-ctrl.md §9.3); this only guards memory against a runaway
/// peer.
pub const MAX_REPLY: usize = 64 << 20;

/// Turns a `-s` value into a socket. Upstream only knew plain paths; the
/// multiplexor's `unix:`, `local:` and `inet*:` forms are our extension
/// (protocol/mm-mx-ctrl.md §9.6). Anything that does not parse is taken as a
/// path.
pub fn socket_spec(s: &OsStr) -> SockSpec {
    s.to_str()
        .and_then(|t| SockSpec::parse_mux(t).ok())
        .unwrap_or_else(|| SockSpec::Unix(PathBuf::from(s)))
}

/// The message upstream prints for a failed exchange
/// (protocol/mm-mx-ctrl.md §2), plus ours for a timeout
/// (protocol/mm-mx-ctrl.md §9.1).
pub fn error_message(e: &MxError) -> String {
    match e {
        MxError::Connect(io) if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            format!("ERROR MXCommand: connect: {}\n", strerror(io))
        }
        MxError::Connect(io) => format!(
            "ERROR MXCommand: connect: {}: Is multiplexor running?\n",
            strerror(io)
        ),
        MxError::Write(io) => format!(
            "ERROR MXCommand: write: {}: Is multiplexor running?\n",
            strerror(io)
        ),
        MxError::Read(io) => format!(
            "ERROR MXCommand: read: {}: Is multiplexor running?\n",
            strerror(io)
        ),
        MxError::Timeout(d) => {
            format!(
                "ERROR MXCommand: no complete reply within {} seconds: Is multiplexor running?\n",
                d.as_secs()
            )
        }
    }
}

/// Sends one request line and returns the whole reply.
pub async fn exchange(
    socket: &OsStr,
    line: &[u8],
    timeout: Option<std::time::Duration>,
) -> Result<Vec<u8>, MxError> {
    mxclient::request_spec(&socket_spec(socket), line, timeout, MAX_REPLY)
        .await
        .map(|r| r.bytes)
}

/// Where output goes: errors to stderr, or to stdout in `-i` mode.
struct Sink {
    interactive: bool,
}

impl Sink {
    fn out(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut o = std::io::stdout().lock();
        o.write_all(bytes)?;
        o.flush()
    }
    fn err(&self, bytes: &[u8]) -> std::io::Result<()> {
        if self.interactive {
            self.out(bytes)
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(bytes)?;
            e.flush()
        }
    }
    fn rendered(&self, r: &Rendered) -> std::io::Result<()> {
        if !r.err.is_empty() {
            self.err(&r.err)?;
        }
        if !r.out.is_empty() {
            self.out(&r.out)?;
        }
        Ok(())
    }
}

/// Runs one dispatched request line; true on success.
async fn process(o: &Options, sink: &Sink, line: &[u8]) -> std::io::Result<bool> {
    let cmd = Command::parse(line);
    match exchange(&o.socket(), &cmd.request(), o.timeout).await {
        Ok(reply) => {
            let r = cmd.render(&reply, o.bracket);
            sink.rendered(&r)?;
            Ok(r.ok)
        }
        Err(e) => {
            sink.err(error_message(&e).as_bytes())?;
            Ok(false)
        }
    }
}

async fn usage(options: &Options, diagnostic: Option<String>) -> std::io::Result<()> {
    let mut text = diagnostic.unwrap_or_default();
    text.push_str(&options::usage_text());
    std::io::stderr().lock().write_all(text.as_bytes())?;
    let sink = Sink {
        interactive: options.interactive,
    };
    match exchange(&options.socket(), b"help\n", options.timeout).await {
        Ok(reply) => {
            let mut text = b"\nPossible commands:\n".to_vec();
            text.extend_from_slice(crate::cformat::string::until_nul(&reply));
            std::io::stderr().lock().write_all(&text)
        }
        Err(e) => sink.err(error_message(&e).as_bytes()),
    }
}

async fn run(inv: Invocation) -> i32 {
    let o = match inv {
        Invocation::Usage {
            options,
            diagnostic,
            exit_ok,
        } => {
            let _ = usage(&options, diagnostic).await;
            return if exit_ok { 0 } else { 1 };
        }
        Invocation::Run(o) => o,
    };
    let sink = Sink {
        interactive: o.interactive,
    };
    if o.interactive {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return 0,
                Ok(_) => {}
                Err(e) => {
                    let _ = sink.err(format!("ERROR reading standard input: {e}\n").as_bytes());
                    return 1;
                }
            }
            // Upstream sent a last unterminated line without its newline,
            // so the multiplexor timed it out (protocol/mm-mx-ctrl.md §9.5).
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            if process(&o, &sink, &line).await.is_err() {
                return 1;
            }
        }
    }
    if o.words[0] == b"top" {
        return top::run(&o).await;
    }
    match process(&o, &sink, &build_request(&o.words)).await {
        Ok(true) => 0,
        _ => 1,
    }
}

/// Entry point of the `mm-mx-ctrl` binary; returns the exit status.
pub fn main(argv: Vec<OsString>) -> i32 {
    let prog = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mm-mx-ctrl".into());
    let args = argv.get(1..).unwrap_or(&[]);
    let inv = options::parse(&prog, args, crate::cformat::getopt::Order::from_env());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start: {e}");
            return 1;
        }
    };
    rt.block_on(run(inv))
}
