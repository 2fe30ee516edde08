//! The Sendmail socketmap server, `mailmunge-multiplexor -N`
//! (protocol/multiplexor.md §13): netstring requests `<len>:<map> <key>,` on a
//! persistent connection, each answered by one netstring built from a
//! worker's reply to `map <pct(map)> <pct(key)>`.
//!
//! This module owns the netstring codec, the request parsing and the mapping
//! of the pool's answer (a [`MapOutcome`]) to the reply text. The pool
//! supplies the handler that runs the lookup on a worker:
//!
//! ```ignore
//! let pool = pool.clone();
//! tokio::spawn(socketmap::run(spec.bind(5)?, move |req: socketmap::MapRequest| {
//!     let pool = pool.clone();
//!     // req.worker_command() is the line for the worker: "map <map> <key>\n"
//!     async move { pool.map_lookup(req.worker_command()).await }
//! }, socketmap::Config { reply_timeout: client_timeout, ..Default::default() }, shutdown));
//! ```
//!
//! One request is handled at a time per connection (Sendmail does not
//! pipeline); connections are independent of each other.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::cformat::string::until_nul;
use crate::wire::percent;
use crate::wire::sockspec::{Listener, Stream};

/// Longest netstring payload read or written (upstream `NETSTRING_MAX`).
pub const NETSTRING_MAX: usize = 65536;
/// Bytes of the length prefix that are looked at (the rest up to `:` is
/// skipped, as upstream does).
const LENGTH_MAX: usize = 16;

/// Timeouts of a map connection.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Writing a reply (upstream: `-c`, default 10 s).
    pub reply_timeout: Duration,
    /// Receiving the rest of a request once its first byte arrived. Upstream
    /// has none; an idle connection between requests is never timed out,
    /// since Sendmail keeps its map connections open.
    pub request_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reply_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// One lookup: the map name and key, raw (Sendmail sends them unencoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRequest {
    pub map: Vec<u8>,
    pub key: Vec<u8>,
}

impl MapRequest {
    /// The line to send to a worker: `map <pct(map)> <pct(key)>\n`.
    pub fn worker_command(&self) -> Vec<u8> {
        let mut line = b"map ".to_vec();
        percent::encode_into(&mut line, &self.map, percent::Variant::Command);
        line.push(b' ');
        percent::encode_into(&mut line, &self.key, percent::Variant::Command);
        line.push(b'\n');
        line
    }
}

/// What the pool made of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOutcome {
    /// The worker's reply exactly as read, including its `\n` if any. An
    /// empty reply (EOF) counts as a busy timeout, as upstream.
    Reply(Vec<u8>),
    /// No idle or stopped worker.
    NoFreeWorkers,
    /// Starting a worker failed.
    ActivationFailed,
    /// The command could not even be handed to the worker.
    CouldNotSend,
    /// Writing the command to the worker failed or timed out.
    WriteFailed,
    /// The worker did not answer within the busy timeout (it is killed).
    BusyTimeout,
    /// Any other temporary failure (e.g. the multiplexor is stopping):
    /// answered `TEMP <text>`.
    TempFail(String),
}

impl MapOutcome {
    /// The socketmap reply payload (protocol/multiplexor.md §13).
    pub fn payload(&self) -> Vec<u8> {
        let fixed: &[u8] = match self {
            MapOutcome::Reply(r) if r.is_empty() => b"TEMP Busy timeout on worker",
            MapOutcome::Reply(r) => {
                let line = r.strip_suffix(b"\n").unwrap_or(r);
                return percent::decode_c(until_nul(line));
            }
            MapOutcome::NoFreeWorkers => b"TEMP No free workers",
            MapOutcome::ActivationFailed => b"TEMP Unable to activate worker",
            MapOutcome::CouldNotSend => b"TEMP Could not send command to worker",
            MapOutcome::WriteFailed => b"TEMP Error talking to worker process",
            MapOutcome::BusyTimeout => b"TEMP Busy timeout on worker",
            MapOutcome::TempFail(text) => return format!("TEMP {text}").into_bytes(),
        };
        fixed.to_vec()
    }
}

/// Encodes a netstring; `None` if the payload is too long to send.
pub fn encode_netstring(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > NETSTRING_MAX {
        return None;
    }
    let mut out = format!("{}:", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.push(b',');
    Some(out)
}

/// A request as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Lookup(MapRequest),
    /// Answered with this payload without asking a worker.
    Refused(&'static [u8]),
}

/// Parses a netstring body (payload plus its terminating byte) into a request.
pub fn parse_request(body: &[u8]) -> Request {
    let Some(payload) = body.strip_suffix(b",") else {
        return Request::Refused(b"PERM Netstring missing terminating comma");
    };
    let payload = until_nul(payload);
    match payload.iter().position(|&b| b == b' ') {
        Some(n) => Request::Lookup(MapRequest {
            map: payload[..n].to_vec(),
            key: payload[n + 1..].to_vec(),
        }),
        None => Request::Refused(b"PERM Invalid request format"),
    }
}

/// Reads the `len:` prefix; `None` at EOF, on errors, and for lengths that
/// are not a number, negative or above [`NETSTRING_MAX`] (the connection is
/// then closed, as upstream does).
async fn read_length<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<usize> {
    let mut prefix = Vec::with_capacity(LENGTH_MAX);
    loop {
        let buf = r.fill_buf().await.ok()?;
        if buf.is_empty() {
            return None;
        }
        let (used, done) = match buf.iter().position(|&b| b == b':') {
            Some(n) => (n + 1, true),
            None => (buf.len(), false),
        };
        let room = LENGTH_MAX.saturating_sub(prefix.len());
        let take = (used - usize::from(done)).min(room);
        prefix.extend_from_slice(&buf[..take]);
        r.consume(used);
        if done {
            break;
        }
    }
    let text = String::from_utf8_lossy(until_nul(&prefix)).into_owned();
    match crate::cformat::number::scan_int(&text) {
        Some(n) if (0..=NETSTRING_MAX as i64).contains(&n) => Some(n as usize),
        _ => None,
    }
}

/// Reads one request; `None` means close the connection.
async fn read_request<R: AsyncBufReadExt + Unpin>(r: &mut R, cfg: &Config) -> Option<Request> {
    // Wait (forever) for the first byte, then bound the rest.
    if r.fill_buf().await.ok()?.is_empty() {
        return None;
    }
    let rest = async {
        let len = read_length(r).await?;
        let mut body = vec![0u8; len + 1];
        r.read_exact(&mut body).await.ok()?;
        Some(parse_request(&body))
    };
    match cfg.request_timeout {
        Some(t) => tokio::time::timeout(t, rest).await.ok()?,
        None => rest.await,
    }
}

async fn serve<H, F>(stream: Stream, handler: H, cfg: Config)
where
    H: Fn(MapRequest) -> F,
    F: Future<Output = MapOutcome>,
{
    let mut conn = BufReader::new(stream);
    while let Some(req) = read_request(&mut conn, &cfg).await {
        let payload = match req {
            Request::Refused(p) => p.to_vec(),
            Request::Lookup(m) => handler(m).await.payload(),
        };
        let Some(reply) = encode_netstring(&payload) else {
            crate::sys::daemon::log(
                crate::sys::daemon::LOG_WARNING,
                &format!(
                    "socketmap: reply of {} bytes is too long; closing",
                    payload.len()
                ),
            );
            return;
        };
        match tokio::time::timeout(cfg.reply_timeout, conn.get_mut().write_all(&reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Serves socketmap connections on `listener` until `shutdown` completes,
/// then drops every connection (lookups in flight are abandoned).
pub async fn run<H, F>(
    listener: Listener,
    handler: H,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(MapRequest) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = MapOutcome> + Send + 'static,
{
    listener
        .serve_each("socketmap socket", shutdown, |stream| {
            serve(stream, handler.clone(), cfg)
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_command_observed() {
        let m = |map: &str, key: &str| {
            MapRequest {
                map: map.into(),
                key: key.into(),
            }
            .worker_command()
        };
        assert_eq!(m("virtuser", "a@b"), b"map virtuser a@b\n");
        assert_eq!(
            m("mymap", "key with space"),
            b"map mymap key%20with%20space\n"
        );
        assert_eq!(m("m", "100%'\""), b"map m 100%25%27%22\n");
    }

    #[test]
    fn payloads() {
        let r = |b: &[u8]| MapOutcome::Reply(b.to_vec()).payload();
        assert_eq!(
            r(b"OK value%20for%20a@b%2Fin%20virtuser\n"),
            b"OK value for a@b/in virtuser"
        );
        assert_eq!(r(b"NOTFOUND\n"), b"NOTFOUND");
        assert_eq!(r(b"OK partial"), b"OK partial");
        assert_eq!(r(b"\n"), b"");
        assert_eq!(r(b""), b"TEMP Busy timeout on worker");
        assert_eq!(r(b"OK a%00b\n"), b"OK a");
        assert_eq!(r(b"OK x\n\n"), b"OK x\n");
        assert_eq!(MapOutcome::NoFreeWorkers.payload(), b"TEMP No free workers");
        assert_eq!(
            MapOutcome::ActivationFailed.payload(),
            b"TEMP Unable to activate worker"
        );
        assert_eq!(
            MapOutcome::CouldNotSend.payload(),
            b"TEMP Could not send command to worker"
        );
        assert_eq!(
            MapOutcome::WriteFailed.payload(),
            b"TEMP Error talking to worker process"
        );
        assert_eq!(
            MapOutcome::BusyTimeout.payload(),
            b"TEMP Busy timeout on worker"
        );
        assert_eq!(
            MapOutcome::TempFail("Multiplexor is shutting down".into()).payload(),
            b"TEMP Multiplexor is shutting down"
        );
    }

    #[test]
    fn netstrings_and_requests() {
        assert_eq!(
            encode_netstring(b"OK value for a@b/in virtuser").unwrap(),
            b"28:OK value for a@b/in virtuser,"
        );
        assert_eq!(encode_netstring(b"").unwrap(), b"0:,");
        assert!(encode_netstring(&vec![b'x'; NETSTRING_MAX + 1]).is_none());
        assert_eq!(
            parse_request(b"virtuser a@b,"),
            Request::Lookup(MapRequest {
                map: b"virtuser".to_vec(),
                key: b"a@b".to_vec()
            })
        );
        assert_eq!(
            parse_request(b"m  two  spaces,"),
            Request::Lookup(MapRequest {
                map: b"m".to_vec(),
                key: b" two  spaces".to_vec()
            })
        );
        assert_eq!(
            parse_request(b"nospace,"),
            Request::Refused(b"PERM Invalid request format")
        );
        assert_eq!(
            parse_request(b","),
            Request::Refused(b"PERM Invalid request format")
        );
        assert_eq!(
            parse_request(b"m k;"),
            Request::Refused(b"PERM Netstring missing terminating comma")
        );
        assert_eq!(
            parse_request(b"m\0 k,"),
            Request::Refused(b"PERM Invalid request format")
        );
    }
}
