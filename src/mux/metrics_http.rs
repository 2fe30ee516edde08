//! The `--metrics` listener: a deliberately small HTTP/1.0 responder that
//! serves [`super::metrics::render`] on `GET /metrics` (`protocol/metrics.md`).
//!
//! One request per connection, answered and closed. Requests are bounded in
//! size and time and the number of connections served at once is capped, so
//! a misbehaving scraper cannot starve the multiplexor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::metrics;
use super::pool::Mux;
use crate::wire::sockspec::{Listener, Stream};

/// Longest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// Time a client has to send its request and to take the reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further ones are closed at once.
pub const MAX_CONNS: usize = 16;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (`head`: `HEAD /metrics`), query string ignored.
    Metrics {
        head: bool,
    },
    NotFound {
        head: bool,
    },
    MethodNotAllowed,
    BadRequest,
}

/// Parses the request line of a request head.
pub fn parse_request(head: &[u8]) -> Request {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(b"");
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::BadRequest;
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Request::BadRequest;
    };
    if target.is_empty()
        || words.next().is_some_and(|v| !v.starts_with("HTTP/"))
        || words.next().is_some()
    {
        return Request::BadRequest;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or("");
    if path == "/metrics" {
        Request::Metrics { head }
    } else {
        Request::NotFound { head }
    }
}

/// A complete response.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut r = format!("HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if status.starts_with("405") {
        r.push_str("Allow: GET, HEAD\r\n");
    }
    r.push_str("\r\n");
    if !head_only {
        r.push_str(body);
    }
    r.into_bytes()
}

/// Reads a request head: up to an empty line, at most [`MAX_REQUEST`]
/// bytes. An HTTP/0.9-style bare request line ending in EOF is accepted.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return None;
        }
        let n = r.read(&mut chunk).await.ok()?;
        if n == 0 {
            return if buf.contains(&b'\n') {
                Some(buf)
            } else {
                None
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The current scrape: a snapshot under the lock; the `/proc` reads and
/// the rendering outside it.
pub fn scrape(mux: &Mux) -> String {
    let (gauges, counters) = {
        let p = mux.lock();
        (p.gauges(), p.metrics.clone())
    };
    let mem = metrics::read_mem(&gauges.pids);
    metrics::render(&gauges, &counters, &mem)
}

/// Connections still sending their request, oldest first: the ones a new
/// scrape may push out when all slots are taken (protocol/metrics.md).
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: std::collections::VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Waiting {
    /// Registers a connection; the receiver fires if it is pushed out.
    fn enter(&mut self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        self.queue.push_back((self.next_id, tx));
        (self.next_id, rx)
    }

    /// The connection has its request (or is gone): no longer evictable.
    fn leave(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }

    /// Pushes out the oldest idle connection; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        match self.queue.pop_front() {
            Some((_, tx)) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }
}

/// Serves the metrics endpoint forever.
pub async fn serve(mux: Arc<Mux>, listener: Listener) {
    let active = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let serve_one = |stream: Stream| {
        // Over the cap, the oldest connection that has not sent its request
        // makes room; only when every slot is busy answering is the new one
        // closed here, before any task runs.
        let admitted =
            active.load(Ordering::SeqCst) < MAX_CONNS || waiting.lock().unwrap().evict_oldest();
        let stream = if admitted {
            active.fetch_add(1, Ordering::SeqCst);
            let ticket = waiting.lock().unwrap().enter();
            Some((stream, ticket))
        } else {
            crate::sys::daemon::log(
                crate::sys::daemon::LOG_WARNING,
                &format!("metrics: {MAX_CONNS} scrapes are being answered; connection closed"),
            );
            drop(stream);
            None
        };
        let (mux, active, waiting) = (mux.clone(), active.clone(), waiting.clone());
        async move {
            if let Some((stream, (id, evicted))) = stream {
                answer(mux, stream, evicted, || waiting.lock().unwrap().leave(id)).await;
                waiting.lock().unwrap().leave(id);
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    };
    listener
        .serve_each("metrics", std::future::pending(), serve_one)
        .await;
}

/// Reads one request and writes its reply; gives up when `evicted` fires
/// before the request is complete. `got_request` is called once it is.
async fn answer(
    mux: Arc<Mux>,
    mut stream: Stream,
    evicted: oneshot::Receiver<()>,
    got_request: impl FnOnce(),
) {
    let head = tokio::select! {
        h = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)) => h,
        _ = evicted => return,
    };
    got_request();
    let reply = match head {
        Ok(Some(head)) => match parse_request(&head) {
            Request::Metrics { head } => {
                let body = tokio::task::spawn_blocking({
                    let mux = mux.clone();
                    move || scrape(&mux)
                })
                .await
                .unwrap_or_default();
                response("200 OK", CONTENT_TYPE, &body, head)
            }
            Request::NotFound { head } => response(
                "404 Not Found",
                "text/plain",
                "Not found; try /metrics\n",
                head,
            ),
            Request::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "text/plain",
                "Only GET and HEAD\n",
                false,
            ),
            Request::BadRequest => {
                response("400 Bad Request", "text/plain", "Bad request\n", false)
            }
        },
        _ => response("400 Bad Request", "text/plain", "Bad request\n", false),
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(&reply)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.0\n\n"),
            Request::Metrics { head: true }
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\r\n\r\n"),
            Request::NotFound { head: false }
        );
        assert_eq!(
            parse_request(b"GET /metricsx HTTP/1.0\r\n\r\n"),
            Request::NotFound { head: false }
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.0\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(
            parse_request(b"GET /metrics\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(parse_request(b"garbage\r\n\r\n"), Request::BadRequest);
        assert_eq!(
            parse_request(b"GET /metrics SMTP/1 x\r\n\r\n"),
            Request::BadRequest
        );
        assert_eq!(
            parse_request(b"\xff\xfe /metrics HTTP/1.0\r\n\r\n"),
            Request::BadRequest
        );
    }

    #[test]
    fn responses_carry_length() {
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "a 1\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(r.contains("Content-Length: 4\r\n"));
        assert!(r.ends_with("\r\n\r\na 1\n"));
        let h = String::from_utf8(response("200 OK", CONTENT_TYPE, "a 1\n", true)).unwrap();
        assert!(h.ends_with("\r\n\r\n") && h.contains("Content-Length: 4\r\n"));
        assert!(
            String::from_utf8(response("405 Method Not Allowed", "text/plain", "", false))
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
    }

    #[tokio::test]
    async fn heads_are_bounded() {
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        w.write_all(&vec![b'x'; MAX_REQUEST + 10]).await.unwrap();
        assert_eq!(read_head(&mut r).await, None);
        let (mut w, mut r) = tokio::io::duplex(1 << 16);
        w.write_all(b"GET /metrics HTTP/1.0\r\n\r\nextra")
            .await
            .unwrap();
        assert!(read_head(&mut r).await.is_some());
    }
}
