//! The fault relay, against an in-process echo server.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use selfrag_testkit::relay::{Relay, RelayMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// An echo server; counts the connections it accepted.
async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const SHORT: Duration = Duration::from_millis(300);

/// Writes `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn pass_forwards_both_ways_and_counts() {
    let (target, _) = echo().await;
    let relay = Relay::start(target).await.unwrap();
    assert_eq!(relay.mode(), RelayMode::Pass);
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");
    let big = vec![7u8; 300_000];
    assert_eq!(round_trip(&mut s, &big).await.unwrap(), big);
    let stats = relay.stats();
    assert_eq!((stats.accepted, stats.open), (1, 1));
    assert_eq!((stats.bytes_to_target, stats.bytes_to_client), (300_005, 300_005));
    // A client's FIN reaches the server, whose FIN comes back: EOF.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("EOF").unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn blackhole_holds_bytes_without_closing_and_pass_delivers_them() {
    let (target, server_accepts) = echo().await;
    let relay = Relay::start(target).await.unwrap();
    let mut old = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"a").await.unwrap(), b"a");

    relay.blackhole().await;
    assert_eq!(relay.mode(), RelayMode::Blackhole);
    // An open connection: the write is accepted, the read neither answers
    // nor ends (no EOF, no reset): it times out.
    old.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(timeout(SHORT, old.read(&mut buf)).await.is_err(), "a byte came out of the black hole");
    // A new connection is accepted, but the target never sees it.
    let mut new = TcpStream::connect(relay.addr()).await.unwrap();
    new.write_all(b"new!").await.unwrap();
    assert!(timeout(SHORT, new.read(&mut buf)).await.is_err());
    assert_eq!(server_accepts.load(Ordering::SeqCst), 1, "the target was reached during the partition");
    assert_eq!(relay.stats().open, 2);

    // The partition heals: the held bytes arrive, in order.
    relay.pass().await;
    timeout(Duration::from_secs(5), old.read_exact(&mut buf)).await.expect("held bytes delivered").unwrap();
    assert_eq!(&buf, b"held");
    timeout(Duration::from_secs(5), new.read_exact(&mut buf)).await.expect("held bytes delivered").unwrap();
    assert_eq!(&buf, b"new!");
    assert_eq!(server_accepts.load(Ordering::SeqCst), 2);
}

fn is_reset_or_eof(r: &std::io::Result<usize>) -> bool {
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe),
    }
}

#[tokio::test]
async fn refuse_resets_connections_and_refuses_new_ones_until_pass() {
    let (target, _) = echo().await;
    let relay = Relay::start(target).await.unwrap();
    let mut old = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"a").await.unwrap(), b"a");

    relay.refuse().await;
    let mut buf = [0u8; 8];
    let r = timeout(Duration::from_secs(5), old.read(&mut buf)).await.expect("the old connection ended");
    assert!(matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset), "expected a reset, got {r:?}");
    let err = TcpStream::connect(relay.addr()).await.expect_err("a refusing relay accepted");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(relay.stats().open, 0);

    relay.pass().await;
    let mut s = TcpStream::connect(relay.addr()).await.expect("listening again on the same port");
    assert_eq!(round_trip(&mut s, b"again").await.unwrap(), b"again");
}

#[tokio::test]
async fn cut_resets_open_connections_once() {
    let (target, _) = echo().await;
    let relay = Relay::start(target).await.unwrap();
    let mut old = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"a").await.unwrap(), b"a");
    relay.cut().await;
    let mut buf = [0u8; 8];
    let r = timeout(Duration::from_secs(5), old.read(&mut buf)).await.expect("the old connection ended");
    assert!(is_reset_or_eof(&r), "expected the connection to end, got {r:?}");
    assert_eq!(relay.mode(), RelayMode::Pass);
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"b").await.unwrap(), b"b");
}

#[tokio::test]
async fn a_dead_target_resets_the_client() {
    // A port nothing listens on.
    let target = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let relay = Relay::start(target).await.unwrap();
    let mut s = TcpStream::connect(relay.addr()).await.unwrap();
    let mut buf = [0u8; 8];
    let r = timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("the connection ended");
    assert!(is_reset_or_eof(&r), "{r:?}");
    assert_eq!(relay.stats().upstream_failures, 1);
}

#[tokio::test]
async fn dropping_the_relay_closes_its_port_and_connections() {
    let (target, _) = echo().await;
    let relay = Relay::start(target).await.unwrap();
    let addr = relay.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"a").await.unwrap(), b"a");
    drop(relay);
    let mut buf = [0u8; 8];
    let r = timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("the connection ended");
    assert!(is_reset_or_eof(&r), "{r:?}");
    let err = TcpStream::connect(addr).await.expect_err("a dropped relay accepted");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}
