//! The client side of the multiplexor control socket
//! (protocol/milter.md §7.1, protocol/mm-mx-ctrl.md §2): one connection per
//! request, one request line out, the reply read until the multiplexor closes
//! the connection.
//!
//! Upstream's client has no timeouts; ours takes one so that a wedged
//! multiplexor turns into a temporary failure instead of a hung SMTP session.

use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::percent;
use crate::wire::sockspec::SockSpec;

/// Replies longer than this are truncated, as upstream's milter does.
pub const MAX_REPLY: usize = 8190;

#[derive(Debug, thiserror::Error)]
pub enum MxError {
    #[error("connect: {0}: Is multiplexor running?")]
    Connect(#[source] std::io::Error),
    #[error("write: {0}: Is multiplexor running?")]
    Write(#[source] std::io::Error),
    #[error("read: {0}: Is multiplexor running?")]
    Read(#[source] std::io::Error),
    #[error("timed out after {0:?} waiting for the multiplexor")]
    Timeout(Duration),
}

/// A reply, with a note of whether it had to be truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Builds a request line: the command word, then each argument
/// percent-encoded (command variant), separated by single spaces, ending in
/// `\n`.
pub fn request_line<A: AsRef<[u8]>>(command: &str, args: &[A]) -> Vec<u8> {
    let mut line = command.as_bytes().to_vec();
    for a in args {
        line.push(b' ');
        percent::encode_into(&mut line, a.as_ref(), percent::Variant::Command);
    }
    line.push(b'\n');
    line
}

/// Sends one request line (which must end in `\n`) and reads the whole reply.
/// `timeout` bounds the whole exchange; `None` waits forever, as upstream.
pub async fn request(
    socket: &Path,
    line: &[u8],
    timeout: Option<Duration>,
) -> Result<Reply, MxError> {
    exchange(
        crate::wire::sockspec::connect_unix(socket),
        line,
        timeout,
        MAX_REPLY,
    )
    .await
}

/// Like [`request`], for any socket specification and with the caller's
/// reply limit (mm-mx-ctrl accepts far longer replies than the milter).
pub async fn request_spec(
    spec: &SockSpec,
    line: &[u8],
    timeout: Option<Duration>,
    max_reply: usize,
) -> Result<Reply, MxError> {
    exchange(spec.connect(), line, timeout, max_reply).await
}

/// A connection that stays open after its first answer line: our
/// multiplexor's worker reservation (protocol/multiplexor.md §27), whose
/// connection later carries the scan. Upstream has no such request.
#[derive(Debug)]
pub struct Held {
    stream: tokio::net::UnixStream,
}

/// Sends `line` and reads one answer line (with its `\n`, at most
/// [`MAX_REPLY`] bytes). The connection comes back with the line unless
/// the multiplexor closed it after answering (a refusal).
pub async fn request_held(
    socket: &Path,
    line: &[u8],
    timeout: Option<Duration>,
) -> Result<(Vec<u8>, Option<Held>), MxError> {
    let work = async {
        let mut s = crate::wire::sockspec::connect_unix(socket)
            .await
            .map_err(MxError::Connect)?;
        s.write_all(line).await.map_err(MxError::Write)?;
        let mut answer = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        loop {
            // The multiplexor writes nothing after the line until it gets
            // the next request, so reading past the `\n` cannot happen.
            let n = s.read(&mut buf).await.map_err(MxError::Read)?;
            if n == 0 {
                return Ok((answer, None));
            }
            answer.extend_from_slice(&buf[..n.min(MAX_REPLY - answer.len())]);
            if buf[..n].contains(&b'\n') || answer.len() >= MAX_REPLY {
                return Ok((answer, Some(Held { stream: s })));
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| MxError::Timeout(t))?,
        None => work.await,
    }
}

impl Held {
    /// Sends the next request on the held connection and reads its answer
    /// to EOF, like [`request`].
    pub async fn request(
        mut self,
        line: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Reply, MxError> {
        let exchange = async {
            self.stream.write_all(line).await.map_err(MxError::Write)?;
            read_reply(&mut self.stream, MAX_REPLY).await
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .map_err(|_| MxError::Timeout(t))?,
            None => exchange.await,
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    connect: impl Future<Output = std::io::Result<S>>,
    line: &[u8],
    timeout: Option<Duration>,
    max_reply: usize,
) -> Result<Reply, MxError> {
    let exchange = async {
        let mut s = connect.await.map_err(MxError::Connect)?;
        s.write_all(line).await.map_err(MxError::Write)?;
        read_reply(&mut s, max_reply).await
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .map_err(|_| MxError::Timeout(t))?,
        None => exchange.await,
    }
}

async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, max_reply: usize) -> Result<Reply, MxError> {
    let mut bytes = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    let mut truncated = false;
    loop {
        let n = s.read(&mut buf).await.map_err(MxError::Read)?;
        if n == 0 {
            return Ok(Reply { bytes, truncated });
        }
        let room = max_reply - bytes.len();
        if n > room {
            truncated = true;
        }
        bytes.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn encodes_arguments() {
        assert_eq!(
            request_line("senderok", &["<a b@c>", "1.2.3.4"]),
            b"senderok <a%20b@c> 1.2.3.4\n"
        );
        assert_eq!(request_line::<&str>("free", &[]), b"free\n");
        assert_eq!(request_line("x", &["", "y"]), b"x  y\n");
    }

    #[tokio::test]
    async fn one_request_per_connection_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mx.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for reply in [b"3\n".to_vec(), vec![b'x'; 10000]] {
                let (s, _) = l.accept().await.unwrap();
                let mut r = tokio::io::BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                r.get_mut().write_all(&reply).await.unwrap();
            }
        });
        let r = request(&path, b"free\n", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            r,
            Reply {
                bytes: b"3\n".to_vec(),
                truncated: false
            }
        );
        let r = request(&path, b"big\n", None).await.unwrap();
        assert_eq!(r.bytes.len(), MAX_REPLY);
        assert!(r.truncated);
        server.await.unwrap();
    }

    /// A full listen queue makes a non-blocking connect fail with EAGAIN;
    /// the request must wait for room, as upstream's blocking connect does.
    #[tokio::test]
    async fn waits_while_the_listen_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mx.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // listen() again shrinks its queue.
        nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
        let mut fillers = Vec::new();
        loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the queue: {e}"),
            }
            assert!(fillers.len() < 100, "listen queue never filled");
        }
        let p2 = path.clone();
        let client =
            tokio::spawn(
                async move { request(&p2, b"free\n", Some(Duration::from_secs(10))).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !client.is_finished(),
            "request gave up while the queue was full"
        );
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::UnixListener::from_std(l).unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut r = tokio::io::BufReader::new(s);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_ok() && line == "free\n" {
                        let _ = r.get_mut().write_all(b"4\n").await;
                    }
                });
            }
        });
        drop(fillers);
        let r = client.await.unwrap().unwrap();
        assert_eq!(r.bytes, b"4\n");
        server.abort();
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(&dir.path().join("none"), b"free\n", None)
            .await
            .unwrap_err();
        assert!(matches!(e, MxError::Connect(_)));
        let path = dir.path().join("silent.sock");
        let _l = tokio::net::UnixListener::bind(&path).unwrap();
        let e = request(&path, b"free\n", Some(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(matches!(e, MxError::Timeout(_)));
    }
}
