//! The control sockets `-s` (privileged) and `-a` (unprivileged): request
//! framing (protocol/multiplexor.md §4.1), the dispatch table (§4.3) and
//! forwarding to workers (protocol/multiplexor.md §6).
//!
//! Differences from upstream that no client can observe
//! (protocol/multiplexor.md §20.3): a request must end in `\n`; a connection
//! that closes before sending one is dropped without being dispatched.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::job::{replies, Job, JobKind, Outcome};
use super::pool::{epoch_now, Mux, Pool, Reservation, Reserve};
use super::{report, Class};
use crate::wire::reservation;
use crate::wire::sockspec::{Listener, Stream};

/// Request buffer size; a line of 4095 bytes or more is "too long".
pub const MAX_CMD_LEN: usize = 4096;
/// Unprivileged connections that may wait for their request line at once.
pub const MAX_UNPRIV_CONNS: usize = 20;

/// Which socket a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Privileged,
    Unprivileged,
}

/// Accepts connections forever, one task per connection.
pub async fn serve(mux: Arc<Mux>, listener: Listener, access: Access) {
    let pending = Arc::new(AtomicUsize::new(0));
    let name = match access {
        Access::Privileged => "control socket",
        Access::Unprivileged => "unprivileged control socket",
    };
    let serve_one = |stream: Stream| {
        // Over the limit (protocol/multiplexor.md §4.3) the connection is
        // closed here, before any task runs, with no reply.
        let stream = if access == Access::Unprivileged {
            if pending.load(Ordering::SeqCst) >= MAX_UNPRIV_CONNS {
                drop(stream);
                None
            } else {
                pending.fetch_add(1, Ordering::SeqCst);
                Some(stream)
            }
        } else {
            Some(stream)
        };
        let (mux, pending) = (mux.clone(), pending.clone());
        async move {
            if let Some(stream) = stream {
                handle(mux, stream, access, &pending).await
            }
        }
    };
    listener
        .serve_each(name, std::future::pending(), serve_one)
        .await;
}

/// Reads the request line: up to the first `\n`, keeping at most
/// `MAX_CMD_LEN - 1` bytes (the rest of an overlong line is discarded);
/// `None` on timeout, error or EOF before `\n`.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let work = async {
        let mut line = Vec::with_capacity(128);
        let mut buf = [0u8; 4096];
        loop {
            let n = r.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let chunk = &buf[..n];
            let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(p) => (&chunk[..p], true),
                None => (chunk, false),
            };
            let room = (MAX_CMD_LEN - 1).saturating_sub(line.len());
            line.extend_from_slice(&part[..part.len().min(room)]);
            if done {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(line);
            }
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

async fn handle(mux: Arc<Mux>, mut stream: Stream, access: Access, pending: &AtomicUsize) {
    let req = read_request(&mut stream, mux.opts.cmd_timeout()).await;
    if access == Access::Unprivileged {
        pending.fetch_sub(1, Ordering::SeqCst);
    }
    let Some(line) = req else { return };
    if access == Access::Privileged {
        if let Some(args) = reserve_arguments(&line) {
            return reserve(mux, stream, args).await;
        }
    }
    let reply = dispatch(&mux, &line, access).await;
    if !reply.is_empty() {
        let _ = tokio::time::timeout(mux.opts.cmd_timeout(), stream.write_all(&reply)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// Answers one request line (already trimmed of `\n` and one `\r`).
pub async fn dispatch(mux: &Arc<Mux>, line: &[u8], access: Access) -> Vec<u8> {
    if let Some(r) = builtin(mux, line, access) {
        return r;
    }
    if access == Access::Unprivileged {
        return b"error: Attempt to use privileged command on unprivileged socket\n".to_vec();
    }
    if line == b"reread" {
        return super::reload::reread(mux).await;
    }
    forward(mux, line).await
}

/// The built-in commands of both sockets
/// (protocol/multiplexor.md §4.3 rows 1–15). Matched on the bytes, as
/// upstream compares its C buffer: a line that is not UTF-8 or holds a NUL
/// is still a built-in command when upstream's would be
/// (protocol/multiplexor.md §4.4).
fn builtin(mux: &Arc<Mux>, line: &[u8], access: Access) -> Option<Vec<u8>> {
    let prefix = |w: &[u8]| {
        line.strip_prefix(w)
            .filter(|rest| !rest.is_empty())
            .map(c_argument)
    };
    let p = mux.lock();
    let now = epoch_now();
    let s = match line {
        b"help" => report::help(access == Access::Privileged),
        b"free" => format!("{}\n", p.free()),
        b"version" => crate::VERSION.to_string(),
        b"tick" => "error: External agents may not invoke 'tick'\n".into(),
        _ if line.starts_with(b"tick ") => "error: External agents may not invoke 'tick'\n".into(),
        b"status" => report::status(&p),
        b"workers" => report::workers(&p, false),
        b"busyworkers" => report::workers(&p, true),
        b"load" => report::load(&p, Class::Scan, now),
        b"load-relayok" => report::load(&p, Class::RelayOk, now),
        b"load-senderok" => report::load(&p, Class::SenderOk, now),
        b"load-recipok" => report::load(&p, Class::RecipOk, now),
        b"hload" => report::hload(&p, Class::Scan, now),
        b"hload-relayok" => report::hload(&p, Class::RelayOk, now),
        b"hload-senderok" => report::hload(&p, Class::SenderOk, now),
        b"hload-recipok" => report::hload(&p, Class::RecipOk, now),
        b"histo" => report::histo(&p),
        b"msgs" => format!("{}\n", p.msgs),
        // Our extension (protocol/multiplexor.md §26).
        b"lasterror" => {
            let text = p.start_failures.report(now);
            let mut s = String::from_utf8_lossy(&crate::wire::percent::encode(text.as_bytes()))
                .into_owned();
            s.push('\n');
            s
        }
        b"foo_no_such_command" => "error: Unknown command\n".into(),
        _ => {
            if let Some(rest) = prefix(b"load1 ") {
                report::load1(&p, &rest, now)
            } else if let Some(rest) = prefix(b"workerinfo ") {
                report::workerinfo(&p, &rest)
            } else {
                return None;
            }
        }
    };
    Some(s.into_bytes())
}

/// An argument as upstream's `sscanf` reads it from the C buffer: up to
/// the first NUL; other bytes that are not UTF-8 cannot be digits and read
/// as U+FFFD (protocol/multiplexor.md §4.4).
fn c_argument(rest: &[u8]) -> String {
    String::from_utf8_lossy(until_nul(rest)).into_owned()
}

/// The bytes before the first NUL: what upstream's `strlen` sees of a
/// request when it forwards it (protocol/multiplexor.md §4.4).
pub fn until_nul(line: &[u8]) -> &[u8] {
    match line.iter().position(|&b| b == 0) {
        Some(n) => &line[..n],
        None => line,
    }
}

/// Sends a client line to a worker (queueing if allowed) and waits for the
/// reply. A worker reads lines of text: a NUL ends the line there, as it
/// does upstream (protocol/multiplexor.md §4.4).
pub async fn forward(mux: &Arc<Mux>, line: &[u8]) -> Vec<u8> {
    run_client_job(mux, line, |p, job| p.submit(job, true)).await
}

/// Like [`forward`], on the worker `r` holds when it still holds one.
async fn forward_reserved(mux: &Arc<Mux>, r: &Reservation, line: &[u8]) -> Vec<u8> {
    run_client_job(mux, line, |p, job| p.submit_reserved(r, job)).await
}

/// A client's line as a job, handed to the pool by `submit` (which returns
/// the queue id when the job waits in the queue); the reply bytes.
async fn run_client_job(
    mux: &Arc<Mux>,
    line: &[u8],
    submit: impl FnOnce(&mut Pool, Job) -> Option<u64>,
) -> Vec<u8> {
    let line = until_nul(line);
    if line.len() >= MAX_CMD_LEN - 1 {
        mux.lock().metrics.refused(line, "too_long");
        return replies::TOO_LONG.to_vec();
    }
    let started = std::time::Instant::now();
    let mut l = line.to_vec();
    l.push(b'\n');
    let (job, mut rx) = Job::new(l, JobKind::Client);
    let queued = submit(&mut mux.lock(), job);
    let outcome = match queued {
        None => rx.await.unwrap_or(Outcome::NoResponse),
        Some(id) => {
            let limit = Duration::from_secs(mux.opts.queue_timeout);
            match tokio::time::timeout(limit, &mut rx).await {
                Ok(r) => r.unwrap_or(Outcome::NoResponse),
                Err(_) => {
                    if mux.lock().unqueue(id) {
                        Outcome::QueueTimeout
                    } else {
                        rx.await.unwrap_or(Outcome::NoResponse)
                    }
                }
            }
        }
    };
    mux.lock()
        .metrics
        .request(line, &outcome, started.elapsed());
    outcome.client_bytes()
}

/// The arguments of a reservation request (`mmrs-reserve [QID [KEEP]]`), or
/// `None` when the line is something else.
fn reserve_arguments(line: &[u8]) -> Option<&[u8]> {
    match line.strip_prefix(reservation::COMMAND.as_bytes())? {
        [] => Some(&[]),
        [b' ', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// Releases a reservation whatever way its connection ends.
struct Held {
    mux: Arc<Mux>,
    r: Reservation,
    why: Option<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.mux.lock().release(&self.r, self.why.as_deref());
    }
}

/// `mmrs-reserve QID KEEP` (protocol/multiplexor.md §27.2): holds a worker
/// for the scan this connection sends next, at most `-b` seconds, and runs
/// that scan on it. Refusals are the fixed answers of
/// protocol/multiplexor.md §6.4.
async fn reserve(mux: Arc<Mux>, mut stream: Stream, args: &[u8]) {
    let mut words = args.split(|&b| b == b' ');
    let qid = crate::mux::pool::printable_tag(
        words.next().filter(|w| !w.is_empty()).unwrap_or(b"NOQUEUE"),
    );
    let keep = words
        .next()
        .and_then(|w| crate::cformat::number::scan_int(&c_argument(w)))
        .map_or(0, |n| n.max(0) as usize);
    let outcome = reserve_within(&mux, &qid, keep, RESERVE_WAIT).await;
    let first: Vec<u8> = match outcome {
        Reserve::Held(r) => reservation::reserved(r.slot),
        Reserve::Declined => reservation::NOT_RESERVED.to_vec(),
        Reserve::NoFree => replies::NO_FREE.to_vec(),
        Reserve::ActivateFailed => replies::ACTIVATE_FAILED.to_vec(),
        Reserve::ShuttingDown => replies::SHUTTING_DOWN.to_vec(),
    };
    let mut held = match outcome {
        Reserve::Held(r) => Some(Held {
            mux: mux.clone(),
            r,
            why: None,
        }),
        _ => None,
    };
    let limit = mux.opts.cmd_timeout();
    let wrote = tokio::time::timeout(limit, stream.write_all(&first)).await;
    if let (Some(h), Ok(Ok(()))) = (held.as_mut(), wrote) {
        let bound = mux.opts.busy_timeout();
        let waited = std::time::Instant::now();
        match read_request(&mut stream, bound).await {
            Some(line) if super::Class::of(&line) == super::Class::Scan => {
                let reply = forward_reserved(&mux, &h.r, &line).await;
                let _ = tokio::time::timeout(limit, stream.write_all(&reply)).await;
            }
            Some(_) => {
                h.why = Some("the client sent something other than a scan".into());
                let _ = tokio::time::timeout(limit, stream.write_all(RESERVED_FOR_SCAN)).await;
            }
            None if waited.elapsed() >= bound => {
                h.why = Some(format!("no scan within {} s", bound.as_secs()));
            }
            None => {}
        }
    }
    drop(held);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// How long a reservation request waits for a worker to come free before
/// it is refused: well inside the MTAs' own bounds on a milter's answer
/// (Sendmail's default is 10 s; protocol/multiplexor.md §27.2).
pub const RESERVE_WAIT: Duration = Duration::from_secs(5);

/// A reservation, waiting up to `wait` for a worker to come free: a
/// session then queues at its DATA command instead of being refused at
/// once and coming back.
async fn reserve_within(mux: &Arc<Mux>, qid: &str, keep: usize, wait: Duration) -> Reserve {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let last = tokio::time::Instant::now() >= deadline;
        // Listening before the try: a worker freed in between is not missed.
        let freed = mux.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let outcome = mux.lock().reserve(qid, keep, last);
        if outcome != Reserve::NoFree || last {
            return outcome;
        }
        let _ = tokio::time::timeout_at(deadline, freed).await;
    }
}

/// The answer to anything but a scan on a reservation's connection.
pub const RESERVED_FOR_SCAN: &[u8] = b"error: A reserved worker only runs a scan\n";

/// Runs a socketmap lookup (`-N`, protocol/multiplexor.md §13) on a worker:
/// never queued, class "other".
pub async fn map_lookup(mux: &Arc<Mux>, line: Vec<u8>) -> crate::wire::socketmap::MapOutcome {
    use crate::wire::socketmap::MapOutcome;
    let started = std::time::Instant::now();
    let (job, rx) = Job::new(line.clone(), JobKind::Map);
    mux.lock().submit(job, false);
    let outcome = rx.await.unwrap_or(Outcome::NoResponse);
    mux.lock()
        .metrics
        .request(&line, &outcome, started.elapsed());
    match outcome {
        Outcome::Reply(b) => MapOutcome::Reply(b),
        // An empty reply reads as a busy timeout upstream.
        Outcome::NoResponse => MapOutcome::Reply(Vec::new()),
        Outcome::Timeout { .. } => MapOutcome::BusyTimeout,
        Outcome::WriteFailed => MapOutcome::WriteFailed,
        Outcome::ActivateFailed => MapOutcome::ActivationFailed,
        Outcome::NoFree | Outcome::RecipokLimit | Outcome::QueueTimeout | Outcome::ShuttingDown => {
            MapOutcome::NoFreeWorkers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn req(input: &[u8]) -> Option<Vec<u8>> {
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        w.write_all(input).await.unwrap();
        drop(w);
        read_request(&mut r, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn framing() {
        assert_eq!(req(b"free\n").await.unwrap(), b"free");
        assert_eq!(req(b"free\r\n").await.unwrap(), b"free");
        assert_eq!(req(b"a\rb\r\r\n").await.unwrap(), b"a\rb\r");
        assert_eq!(req(b"one\ntwo\n").await.unwrap(), b"one");
        assert_eq!(req(b"\n").await.unwrap(), b"");
        // No newline: never dispatched.
        assert_eq!(req(b"free").await, None);
        assert_eq!(req(b"").await, None);
        let mut long = vec![b'x'; 5000];
        long.push(b'\n');
        assert_eq!(req(&long).await.unwrap().len(), MAX_CMD_LEN - 1);
    }

    #[test]
    fn nul_ends_what_upstream_reads() {
        assert_eq!(until_nul(b"status\0junk"), b"status");
        assert_eq!(until_nul(b"\0"), b"");
        assert_eq!(until_nul(b"plain"), b"plain");
        assert_eq!(c_argument(b" 12\0 99"), " 12");
        assert_eq!(c_argument(b"3\xff"), "3\u{fffd}");
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_w, mut r) = tokio::io::duplex(64);
        assert_eq!(read_request(&mut r, Duration::from_millis(50)).await, None);
    }
}
