//! Socket specifications (protocol/multiplexor.md §3, protocol/milter.md §1.6)
//! and the listeners and streams they open.
//!
//! Two syntaxes exist upstream. The multiplexor takes `/path`, `unix:/path`,
//! `local:/path`, `inet:PORT` (127.0.0.1), `inet_any:PORT`, `inet6:PORT` (::1)
//! and `inet6_any:PORT`. The milter takes libmilter's forms: `/path`,
//! `unix:/path`, `local:/path`, `inet:PORT[@HOST]` and `inet6:PORT[@HOST]`,
//! where a missing host means every interface.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connects to a UNIX-domain socket, waiting while its listen queue is
/// full. Upstream's clients use a blocking connect(2), which sleeps until
/// the server accepts; a non-blocking connect fails at once with EAGAIN
/// instead, which under a burst of requests (the multiplexor's default
/// backlog is 5) turned into tempfailed mail. Callers bound the wait with
/// their own timeouts.
pub async fn connect_unix(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// A parsed socket specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockSpec {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum SockSpecError {
    #[error("Invalid port {0}")]
    InvalidPort(String),
    #[error("cannot resolve host {0}")]
    BadHost(String),
    #[error("unrecognised socket specification {0:?}")]
    Unrecognised(String),
}

/// Parses a port the way C's `sscanf("%d")` would, then checks 1..=65535.
fn parse_port(s: &str) -> Result<u16, SockSpecError> {
    match crate::cformat::number::scan_int(s) {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(SockSpecError::InvalidPort(s.to_string())),
    }
}

fn unix_path(spec: &str) -> Option<&str> {
    spec.strip_prefix("unix:")
        .or_else(|| spec.strip_prefix("local:"))
        .or_else(|| {
            if spec.starts_with("inet") {
                None
            } else {
                Some(spec)
            }
        })
}

impl SockSpec {
    /// Parses a multiplexor-style specification (`-s`, `-a`, `-N`, `-O`).
    pub fn parse_mux(spec: &str) -> Result<SockSpec, SockSpecError> {
        let tcp = |prefix: &str, ip: IpAddr| -> Option<Result<SockSpec, SockSpecError>> {
            spec.strip_prefix(prefix)
                .map(|p| parse_port(p).map(|port| SockSpec::Tcp(SocketAddr::new(ip, port))))
        };
        if let Some(r) = tcp("inet:", Ipv4Addr::LOCALHOST.into())
            .or_else(|| tcp("inet_any:", Ipv4Addr::UNSPECIFIED.into()))
            .or_else(|| tcp("inet6:", Ipv6Addr::LOCALHOST.into()))
            .or_else(|| tcp("inet6_any:", Ipv6Addr::UNSPECIFIED.into()))
        {
            return r;
        }
        match unix_path(spec) {
            Some(p) if !p.is_empty() => Ok(SockSpec::Unix(PathBuf::from(p))),
            _ => Err(SockSpecError::Unrecognised(spec.to_string())),
        }
    }

    /// Parses a libmilter-style specification (the milter's `-p`).
    pub fn parse_milter(spec: &str) -> Result<SockSpec, SockSpecError> {
        let inet = |rest: &str, any: IpAddr, v6: bool| -> Result<SockSpec, SockSpecError> {
            let (port, host) = match rest.split_once('@') {
                Some((p, h)) => (p, Some(h)),
                None => (rest, None),
            };
            let port = parse_port(port)?;
            let ip = match host {
                None | Some("") => any,
                Some(h) => {
                    let h = h.trim_start_matches('[').trim_end_matches(']');
                    match h.parse::<IpAddr>() {
                        Ok(ip) => ip,
                        Err(_) => (h, port)
                            .to_socket_addrs()
                            .ok()
                            .and_then(|mut it| it.find(|a| a.is_ipv6() == v6))
                            .map(|a| a.ip())
                            .ok_or_else(|| SockSpecError::BadHost(h.to_string()))?,
                    }
                }
            };
            Ok(SockSpec::Tcp(SocketAddr::new(ip, port)))
        };
        if let Some(rest) = spec.strip_prefix("inet:") {
            return inet(rest, Ipv4Addr::UNSPECIFIED.into(), false);
        }
        if let Some(rest) = spec.strip_prefix("inet6:") {
            return inet(rest, Ipv6Addr::UNSPECIFIED.into(), true);
        }
        match unix_path(spec) {
            Some(p) if p.starts_with('/') || spec != p => Ok(SockSpec::Unix(PathBuf::from(p))),
            _ => Err(SockSpecError::Unrecognised(spec.to_string())),
        }
    }

    /// Connects to the socket as a client (mm-mx-ctrl, tests).
    pub async fn connect(&self) -> std::io::Result<Stream> {
        match self {
            SockSpec::Unix(path) => Ok(Stream::Unix(connect_unix(path).await?)),
            SockSpec::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, SockSpec::Tcp(_))
    }

    /// The warning the daemons log for a TCP socket bound to every address
    /// (protocol/SECURITY.md §3); `spec` is the option's text.
    pub fn all_addresses_warning(&self, spec: &str) -> Option<String> {
        match self {
            SockSpec::Tcp(a) if a.ip().is_unspecified() => Some(format!(
                "WARNING: socket {spec} listens on all addresses ({a}): every host that can reach port {} can connect; name a local address to restrict it",
                a.port()
            )),
            _ => None,
        }
    }

    /// Binds a listening socket. A UNIX path is removed first, as upstream
    /// does; the caller sets the umask that gives the socket its mode.
    pub fn bind(&self, backlog: i32) -> std::io::Result<Listener> {
        let backlog = if backlog <= 0 { 5 } else { backlog };
        match self {
            SockSpec::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)?;
                listen_again(&l, backlog)?;
                l.set_nonblocking(true)?;
                Ok(Listener::Unix(
                    tokio::net::UnixListener::from_std(l)?,
                    path.clone(),
                ))
            }
            SockSpec::Tcp(addr) => {
                let sock = if addr.is_ipv6() {
                    tokio::net::TcpSocket::new_v6()?
                } else {
                    tokio::net::TcpSocket::new_v4()?
                };
                sock.set_reuseaddr(true)?;
                sock.bind(*addr)?;
                Ok(Listener::Tcp(sock.listen(backlog as u32)?))
            }
        }
    }
}

/// std binds UNIX listeners with its own backlog; listen(2) again sets ours.
fn listen_again(l: &impl std::os::fd::AsRawFd, backlog: i32) -> std::io::Result<()> {
    // SAFETY: listen(2) on a descriptor that `l` keeps open for the call.
    // nix's Backlog refuses values from SOMAXCONN up, which the kernel
    // caps instead (as upstream's daemons rely on).
    if unsafe { libc::listen(l.as_raw_fd(), backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A listening socket of either family.
#[derive(Debug)]
pub enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Accepts one connection. TCP connections get TCP_NODELAY: request/reply
    /// protocols otherwise stall on delayed ACKs.
    pub async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Fails only when the peer is already gone; the first read
                // or write reports that, and the accept loop must not
                // treat it as its own failure (it pauses on errors).
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
        }
    }

    /// Runs `serve` in a task of its own for every connection accepted
    /// until `shutdown` completes, then ends the tasks still running.
    /// Accept errors (typically EMFILE) are logged as `<name>: accept: ...`
    /// and retried after a pause, so that running out of descriptors does
    /// not spin the loop.
    pub async fn serve_each<S, F>(
        &self,
        name: &str,
        shutdown: impl std::future::Future<Output = ()>,
        mut serve: S,
    ) where
        S: FnMut(Stream) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.accept() => match r {
                    Ok(stream) => {
                        tasks.spawn(serve(stream));
                    }
                    Err(e) => {
                        crate::sys::daemon::log(crate::sys::daemon::LOG_ERR, &format!("{name}: accept: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                // Reap finished connections so the set does not grow.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.shutdown().await;
    }

    /// The filesystem path of a UNIX listener.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, p) => Some(p),
            Listener::Tcp(_) => None,
        }
    }

    /// The bound TCP address (useful when port 0 was asked for in tests).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

/// A connected stream of either family.
#[derive(Debug)]
pub enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mux_forms() {
        let u = |p: &str| SockSpec::Unix(PathBuf::from(p));
        assert_eq!(SockSpec::parse_mux("/a/b.sock").unwrap(), u("/a/b.sock"));
        assert_eq!(SockSpec::parse_mux("unix:/a").unwrap(), u("/a"));
        assert_eq!(SockSpec::parse_mux("local:/a").unwrap(), u("/a"));
        assert_eq!(SockSpec::parse_mux("rel.sock").unwrap(), u("rel.sock"));
        assert_eq!(
            SockSpec::parse_mux("inet:4000").unwrap(),
            SockSpec::Tcp("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_mux("inet_any:4000").unwrap(),
            SockSpec::Tcp("0.0.0.0:4000".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_mux("inet6:4000").unwrap(),
            SockSpec::Tcp("[::1]:4000".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_mux("inet6_any:4000").unwrap(),
            SockSpec::Tcp("[::]:4000".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_mux("inet: 25x").unwrap(),
            SockSpec::Tcp("127.0.0.1:25".parse().unwrap())
        );
        assert!(SockSpec::parse_mux("inet:0").is_err());
        assert!(SockSpec::parse_mux("inet:70000").is_err());
        assert!(SockSpec::parse_mux("inet:abc").is_err());
    }

    #[test]
    fn milter_forms() {
        assert_eq!(
            SockSpec::parse_milter("inet:2525@127.0.0.1").unwrap(),
            SockSpec::Tcp("127.0.0.1:2525".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_milter("inet:2525").unwrap(),
            SockSpec::Tcp("0.0.0.0:2525".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_milter("inet6:2525@::1").unwrap(),
            SockSpec::Tcp("[::1]:2525".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_milter("inet:2525@localhost").unwrap(),
            SockSpec::Tcp("127.0.0.1:2525".parse().unwrap())
        );
        assert_eq!(
            SockSpec::parse_milter("unix:/x.sock").unwrap(),
            SockSpec::Unix("/x.sock".into())
        );
        assert_eq!(
            SockSpec::parse_milter("local:/x.sock").unwrap(),
            SockSpec::Unix("/x.sock".into())
        );
        assert_eq!(
            SockSpec::parse_milter("/x.sock").unwrap(),
            SockSpec::Unix("/x.sock".into())
        );
        assert!(SockSpec::parse_milter("relative.sock").is_err());
        let w = |s: &str| SockSpec::parse_milter(s).unwrap().all_addresses_warning(s);
        assert_eq!(
            w("inet:2525").unwrap(),
            "WARNING: socket inet:2525 listens on all addresses (0.0.0.0:2525): every host that can reach port 2525 can connect; name a local address to restrict it"
        );
        assert!(w("inet6:2525@").unwrap().contains("([::]:2525)"));
        assert_eq!(w("inet:2525@127.0.0.1"), None);
        assert_eq!(w("unix:/x.sock"), None);
        let m = |s: &str| SockSpec::parse_mux(s).unwrap().all_addresses_warning(s);
        assert!(m("inet_any:4000").is_some());
        assert!(m("inet6_any:4000").is_some());
        assert_eq!(m("inet:4000"), None);
        assert!(SockSpec::parse_milter("inet:0@127.0.0.1").is_err());
    }

    #[tokio::test]
    async fn bind_unix_replaces_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"stale").unwrap();
        let l = SockSpec::Unix(p.clone()).bind(5).unwrap();
        assert_eq!(l.path(), Some(p.as_path()));
        let c = tokio::net::UnixStream::connect(&p).await.unwrap();
        drop(c);
        l.accept().await.unwrap();
    }
}
