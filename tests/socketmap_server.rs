//! The socketmap server (protocol/multiplexor.md §13) driven over real sockets
//! with a fake pool handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailmunge::wire::socketmap::{self, Config, MapOutcome, MapRequest};
use mailmunge::wire::sockspec::SockSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Starts a server whose "workers" answer by key; returns its address and
/// the worker commands it was asked to run.
async fn start(cfg: Config) -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = SockSpec::Tcp("127.0.0.1:0".parse().unwrap())
        .bind(5)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = move |req: MapRequest| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(req.worker_command());
            match req.key.as_slice() {
                b"a@b" => MapOutcome::Reply(b"OK value%20for%20a@b%2Fin%20virtuser\n".to_vec()),
                b"busy" => MapOutcome::NoFreeWorkers,
                b"dead" => MapOutcome::Reply(Vec::new()),
                b"slow" => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    MapOutcome::BusyTimeout
                }
                _ => MapOutcome::Reply(b"NOTFOUND\n".to_vec()),
            }
        }
    };
    tokio::spawn(socketmap::run(
        listener,
        handler,
        cfg,
        std::future::pending(),
    ));
    (addr, seen)
}

async fn reply(c: &mut TcpStream) -> String {
    let mut len = Vec::new();
    loop {
        let b = tokio::time::timeout(WAIT, c.read_u8())
            .await
            .expect("reply timed out")
            .expect("connection closed");
        if b == b':' {
            break;
        }
        len.push(b);
    }
    let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
    let mut body = vec![0u8; n + 1];
    c.read_exact(&mut body).await.unwrap();
    assert_eq!(body.pop(), Some(b','));
    format!("{n}:{},", String::from_utf8(body).unwrap())
}

async fn closed(c: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn lookups_on_one_persistent_connection() {
    let (addr, seen) = start(Config::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"12:virtuser a@b,").await.unwrap();
    assert_eq!(reply(&mut c).await, "28:OK value for a@b/in virtuser,");
    c.write_all(b"20:mymap key with space,").await.unwrap();
    assert_eq!(reply(&mut c).await, "8:NOTFOUND,");
    // Two requests in one packet are answered in order.
    c.write_all(b"6:m busy,6:m dead,").await.unwrap();
    assert_eq!(reply(&mut c).await, "20:TEMP No free workers,");
    assert_eq!(reply(&mut c).await, "27:TEMP Busy timeout on worker,");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            b"map virtuser a@b\n".to_vec(),
            b"map mymap key%20with%20space\n".to_vec(),
            b"map m busy\n".to_vec(),
            b"map m dead\n".to_vec()
        ]
    );
}

#[tokio::test]
async fn malformed_requests() {
    let (addr, seen) = start(Config::default()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"7:nospace,").await.unwrap();
    assert_eq!(reply(&mut c).await, "27:PERM Invalid request format,");
    c.write_all(b"3:m k;").await.unwrap();
    assert_eq!(
        reply(&mut c).await,
        "40:PERM Netstring missing terminating comma,"
    );
    // Leading blanks and trailing junk in the length are read like %d.
    c.write_all(b" 5x:m a@b,").await.unwrap();
    assert_eq!(reply(&mut c).await, "28:OK value for a@b/in virtuser,");
    assert!(
        seen.lock().unwrap().len() == 1,
        "refused requests never reach a worker"
    );
    for bad in [&b"abc:x,"[..], b"-1:,", b"65537:", b"99999999999999999999:"] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(bad).await.unwrap();
        assert!(
            closed(&mut c).await,
            "{:?} must close the connection",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn stalled_request_is_dropped_but_idle_connection_is_kept() {
    let cfg = Config {
        reply_timeout: Duration::from_secs(5),
        request_timeout: Some(Duration::from_millis(300)),
    };
    let (addr, _) = start(cfg).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"10:abc").await.unwrap();
    assert!(closed(&mut stalled).await);
    // The idle connection outlived the request timeout and still works.
    idle.write_all(b"12:virtuser a@b,").await.unwrap();
    assert_eq!(reply(&mut idle).await, "28:OK value for a@b/in virtuser,");
}

#[tokio::test]
async fn connections_are_independent_and_unix_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.sock");
    let listener = SockSpec::Unix(path.clone()).bind(5).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(socketmap::run(
        listener,
        |req: MapRequest| async move {
            if req.key == b"slow" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            MapOutcome::Reply(b"OK fast\n".to_vec())
        },
        Config::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut slow = tokio::net::UnixStream::connect(&path).await.unwrap();
    slow.write_all(b"6:m slow,").await.unwrap();
    let mut fast = tokio::net::UnixStream::connect(&path).await.unwrap();
    fast.write_all(b"6:m fast,").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(WAIT, fast.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"7:OK fast,");
    // Shutdown drops the connection with the lookup in flight.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}
