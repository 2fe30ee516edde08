//! The notifier socket (protocol/multiplexor.md §14) served by `notify::run`,
//! driven by real clients over UNIX and TCP sockets.

use std::time::Duration;

use mailmunge::wire::notify::{self, Notifier, MAX_LISTENERS};
use mailmunge::wire::sockspec::SockSpec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    notifier: Notifier,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let listener = SockSpec::Unix(path.clone()).bind(5).unwrap();
    let notifier = Notifier::new();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(notify::run(listener, notifier.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        _dir: dir,
        path,
        notifier,
        stop: Some(tx),
        task,
    }
}

type Client = BufReader<UnixStream>;

async fn connect(s: &Server) -> Client {
    BufReader::new(UnixStream::connect(&s.path).await.unwrap())
}

async fn line(c: &mut Client) -> String {
    let mut l = String::new();
    tokio::time::timeout(WAIT, c.read_line(&mut l))
        .await
        .expect("timed out waiting for a notifier line")
        .unwrap();
    l
}

/// Waits until `cond` holds (the server applies subscriptions asynchronously).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn banner_subscription_and_message_formats() {
    let s = start().await;
    let mut c = connect(&s).await;
    assert_eq!(line(&mut c).await, "*OK\n");
    // Nothing typed arrives before a subscription; `*` messages always do.
    s.notifier.reread();
    s.notifier.send(b"*hello\n");
    assert_eq!(line(&mut c).await, "*hello\n");
    c.get_mut().write_all(b"?SFZY\n").await.unwrap();
    until("subscription", || s.notifier.subscribed(b'S') == 1).await;
    assert_eq!(s.notifier.subscribed(b'R'), 0);
    s.notifier.reread();
    s.notifier.state_change(4, "Idle", "Busy", 0);
    s.notifier.status_tag(4, b"1: sleeping 2");
    s.notifier.state_change(2, "Busy", "Idle", 1);
    s.notifier.busy_timeout();
    s.notifier.send(b"*end\n");
    let mut got = Vec::new();
    loop {
        let l = line(&mut c).await;
        if l == "*end\n" {
            break;
        }
        got.push(l);
    }
    assert_eq!(
        got,
        [
            "S 4 StateChange Idle -> Busy\n",
            "F 0\n",
            "Z\n",
            "S 4 1: sleeping 2\n",
            "S 2 StateChange Busy -> Idle\n",
            "F 1\n",
            "Y\n"
        ]
    );
    // A new `?` line replaces the set; `*` means all.
    c.get_mut().write_all(b"?*\n").await.unwrap();
    until("?*", || s.notifier.subscribed(b'B') == 1).await;
    s.notifier.busy_timeout();
    s.notifier.worker_exited_unexpectedly();
    s.notifier.reread();
    assert_eq!(
        [line(&mut c).await, line(&mut c).await, line(&mut c).await],
        ["B\n", "U\n", "R\n"]
    );
}

#[tokio::test]
async fn five_listeners_then_refusal() {
    let s = start().await;
    let mut clients = Vec::new();
    for _ in 0..MAX_LISTENERS {
        let mut c = connect(&s).await;
        assert_eq!(line(&mut c).await, "*OK\n");
        clients.push(c);
    }
    let mut sixth = connect(&s).await;
    assert_eq!(line(&mut sixth).await, "*ERR No free listening slots\n");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, sixth.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "refused connection must be closed");
    // Closing one frees its slot.
    drop(clients.pop());
    until("slot release", || {
        s.notifier.listeners() == MAX_LISTENERS - 1
    })
    .await;
    let mut again = connect(&s).await;
    assert_eq!(line(&mut again).await, "*OK\n");
}

#[tokio::test]
async fn slow_listener_never_blocks_the_sender_and_is_dropped() {
    let s = start().await;
    let mut slow = connect(&s).await;
    assert_eq!(line(&mut slow).await, "*OK\n");
    slow.get_mut().write_all(b"?S\n").await.unwrap();
    until("subscription", || s.notifier.subscribed(b'S') == 1).await;
    // The client reads nothing while a flood of messages is produced: the
    // sender keeps going and the listener is eventually disconnected.
    let tag = vec![b'x'; 190];
    for i in 0..20_000 {
        s.notifier.status_tag(i % 10, &tag);
    }
    until("overflow disconnect", || s.notifier.listeners() == 0).await;
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, slow.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with("S ") && l.len() == 194),
        "only whole messages arrive"
    );
}

#[tokio::test]
async fn shutdown_closes_listeners() {
    let mut s = start().await;
    let mut c = connect(&s).await;
    assert_eq!(line(&mut c).await, "*OK\n");
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(WAIT, &mut s.task)
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(s.notifier.listeners(), 0);
    // Events after shutdown go nowhere and do not fail.
    s.notifier.reread();
}

#[tokio::test]
async fn tcp_listener_and_eof() {
    let listener = SockSpec::Tcp("127.0.0.1:0".parse().unwrap())
        .bind(5)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let notifier = Notifier::new();
    let _task = tokio::spawn(notify::run(
        listener,
        notifier.clone(),
        std::future::pending(),
    ));
    let mut c = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut l = String::new();
    c.read_line(&mut l).await.unwrap();
    assert_eq!(l, "*OK\n");
    // A half-closed client (EOF) is dropped, as upstream does.
    c.get_mut().write_all(b"?R\n").await.unwrap();
    c.get_mut().shutdown().await.unwrap();
    until("EOF close", || notifier.listeners() == 0).await;
}
