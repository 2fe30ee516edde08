//! Asks a running multiplexor why mail is being tempfailed, in words for
//! the admin (`mm-try`, `script/local-stack`; protocol/multiplexor.md §26).

use std::path::Path;
use std::time::Duration;

use crate::mux::startfail::{NO_FAILURE, STDERR_PENDING};
use crate::wire::mxclient;
use crate::wire::percent;

const TIMEOUT: Duration = Duration::from_secs(5);

/// One request; the percent-decoded reply without its final newline.
async fn ask(socket: &Path, command: &str) -> Result<String, mxclient::MxError> {
    let line = format!("{command}\n");
    let reply = mxclient::request(socket, line.as_bytes(), Some(TIMEOUT)).await?;
    let text = percent::decode(&reply.bytes);
    Ok(String::from_utf8_lossy(&text).trim_end().to_string())
}

/// Explains, from the multiplexor at `socket`, why no worker answered.
pub async fn why_tempfail(socket: &Path) -> String {
    let shown = socket.display();
    match settled_lasterror(socket).await {
        Err(e) => format!("the multiplexor at {shown} does not answer ({e})"),
        Ok(r) if r != NO_FAILURE && !r.starts_with("error:") => {
            format!("the filter's workers fail: {r}")
        }
        Ok(_) => match ask(socket, "free").await.map(|f| f.parse::<u64>()) {
            Ok(Ok(0)) => format!(
                "no worker available: every worker of the multiplexor at {shown} is busy \
                 (see `mm-mx-ctrl -s {shown} status`; raise MX_MAXIMUM or MX_QUEUE_SIZE)"
            ),
            _ => "the multiplexor has free workers and no start-up failure; the filter \
                  itself asked for the temporary failure, or the milter's log says why"
                .into(),
        },
    }
}

/// Sends `ping` through the multiplexor to a worker (worker protocol:
/// `PONG`); on any other answer, says why no worker answered.
pub async fn probe_workers(socket: &Path, limit: Duration) -> Result<(), String> {
    match mxclient::request(socket, b"ping\n", Some(limit)).await {
        Ok(r) if r.bytes == b"PONG\n" => Ok(()),
        _ => Err(why_tempfail(socket).await),
    }
}

/// How long to wait for the multiplexor's record of a worker that died.
const SETTLE: Duration = Duration::from_secs(3);

/// `lasterror`, once it is complete: the error that made a request fail can
/// come back before the multiplexor has reaped the worker that died and read
/// its stderr to the end (protocol/multiplexor.md §26), so a `none` or a
/// record whose stderr is still being read is asked again, boundedly.
async fn settled_lasterror(socket: &Path) -> Result<String, mxclient::MxError> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let r = ask(socket, "lasterror").await;
        let unsettled = matches!(&r, Ok(t) if t == NO_FAILURE || t.ends_with(STDERR_PENDING));
        if !unsettled || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `f` on a small runtime of its own, for callers without one.
pub fn blocking<T>(f: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

/// [`why_tempfail`] for callers without a runtime.
pub fn why_tempfail_blocking(socket: &Path) -> String {
    blocking(why_tempfail(socket)).unwrap_or_else(|e| format!("cannot ask the multiplexor: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn absent_multiplexor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = why_tempfail(&dir.path().join("none.sock")).await;
        assert!(s.starts_with("the multiplexor at "), "{s}");
        assert!(s.contains("does not answer"), "{s}");
    }
}
