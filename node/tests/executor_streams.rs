//! The vendored glommio reads TCP streams behind one multishot io_uring poll per stream
//! (third_party/glommio.patch): the poll stays armed, and reports readiness once per event,
//! instead of a one-shot poll armed after every read. Every server connection, replication
//! stream and terrace-bench connection reads this way, so a lost readiness report would hang
//! a client. These tests read data whose events were all reported before the reader looked
//! (small buffers, a busy reader), wake an idle executor with data, and drop streams while
//! their poll is armed.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests")]

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// Every test's bound: a reader that missed a readiness report hangs until it.
const LIMIT: Duration = Duration::from_secs(60);

/// The bytes the clients send: a pattern the reader can check position by position.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Runs `serve` on an executor with a listener on 127.0.0.1, and `client` in this thread with
/// the listener's address; the executor reports what `serve` returns.
fn with_server<T: Send + 'static, F>(
    serve: impl FnOnce(TcpListener) -> F + Send + 'static,
    client: impl FnOnce(SocketAddr),
) -> T
where
    F: std::future::Future<Output = T> + 'static,
{
    let (addr_tx, addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("stream-test")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            addr_tx
                .send(listener.local_addr().expect("address"))
                .unwrap();
            let _ = done_tx.send(serve(listener).await);
        })
        .expect("start an executor");
    let addr = addr_rx.recv_timeout(LIMIT).expect("the executor listens");
    client(addr);
    let result = done_rx
        .recv_timeout(LIMIT)
        .expect("the executor finished within its bound (a lost readiness report hangs it)");
    executor.join().expect("executor thread");
    result
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn small_reads_drain_one_large_write() {
    // 64 KiB arrive at once and nothing after: the poll reports them once, and a reader with a
    // 7-byte buffer must go on reading what that one report announced.
    const LEN: usize = 64 * 1024;
    let received = with_server(
        |listener| async move {
            let mut stream = listener.accept().await.expect("accept");
            let mut got = Vec::with_capacity(LEN);
            let mut buf = [0u8; 7];
            while got.len() < LEN {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "the client closed after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
            stream.write_all(b"done").await.expect("write");
            got
        },
        |addr| {
            let mut client = connect(addr);
            client.write_all(&pattern(LEN)).unwrap();
            let mut reply = [0u8; 4];
            client
                .read_exact(&mut reply)
                .expect("the server read everything and answered");
            assert_eq!(&reply, b"done");
        },
    );
    assert_eq!(received, pattern(LEN));
}

#[test]
fn a_busy_reader_and_an_idle_one_both_get_every_byte() {
    // Request and reply, 2,000 rounds: the reader is sometimes busy (several writes arrive
    // before it looks: several reports for data one read takes), and between bursts the client
    // pauses, so the executor sleeps and only the poll can wake it.
    const ROUNDS: usize = 2_000;
    let total = with_server(
        |listener| async move {
            let mut stream = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut total = 0usize;
            let mut expected = 0usize;
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    return total;
                }
                for &byte in &buf[..n] {
                    assert_eq!(byte, (expected % 251) as u8, "byte {expected} out of order");
                    expected += 1;
                }
                total += n;
                if total.is_multiple_of(7) {
                    glommio::timer::sleep(Duration::from_micros(300)).await;
                }
                stream.write_all(&buf[..1]).await.expect("write");
            }
        },
        |addr| {
            let mut client = connect(addr);
            let data = pattern(ROUNDS * 3);
            let mut ack = [0u8; 64];
            let (mut sent, mut acked) = (0usize, 0usize);
            for round in 0..ROUNDS {
                // Three writes of one byte each, then wait for at least one reply.
                for _ in 0..3 {
                    client.write_all(&data[sent..sent + 1]).unwrap();
                    sent += 1;
                }
                acked += client.read(&mut ack).expect("a reply within the bound");
                if round.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            assert!(acked > 0);
            client.shutdown(std::net::Shutdown::Write).unwrap();
            // Drain the replies until the server closes.
            while client.read(&mut ack).map(|n| n > 0).unwrap_or(false) {}
        },
    );
    assert_eq!(total, ROUNDS * 3);
}

#[test]
fn streams_dropped_while_their_poll_is_armed_leave_the_executor_working() {
    // Each connection's reader gives up after a short timer while its poll is armed (the
    // stream is dropped: its poll is cancelled in the kernel), then the next connection must
    // be served normally.
    const CONNECTIONS: usize = 300;
    let served = with_server(
        |listener| async move {
            let mut served = 0usize;
            for _ in 0..CONNECTIONS {
                let mut stream = listener.accept().await.expect("accept");
                // First message: read normally.
                let mut buf = [0u8; 16];
                let n = stream.read(&mut buf).await.expect("read");
                assert_eq!(&buf[..n], b"hello");
                stream.write_all(b"ok").await.expect("write");
                // Then wait for a second one that never comes, and give up.
                let read =
                    futures_lite::future::or(async { Some(stream.read(&mut buf).await) }, async {
                        glommio::timer::sleep(Duration::from_micros(200)).await;
                        None
                    })
                    .await;
                assert!(read.is_none(), "nothing more was sent");
                drop(stream);
                served += 1;
            }
            served
        },
        |addr| {
            for _ in 0..CONNECTIONS {
                let mut client = connect(addr);
                client.write_all(b"hello").unwrap();
                let mut reply = [0u8; 2];
                client.read_exact(&mut reply).expect("served");
                assert_eq!(&reply, b"ok");
                // Wait for the server to drop the stream.
                let mut rest = [0u8; 1];
                assert_eq!(client.read(&mut rest).expect("closed"), 0);
            }
        },
    );
    assert_eq!(served, CONNECTIONS);
}

#[test]
fn the_end_of_a_stream_reported_with_its_last_bytes_is_seen() {
    // The client sends a few bytes and closes its side while the reader is busy, so the data
    // and the FIN are both reported before the reader looks: one report. The read returns the
    // bytes; the next must return the end of the stream, which no new event announces.
    const CONNECTIONS: usize = 20;
    let ends = with_server(
        |listener| async move {
            let mut ends = 0usize;
            for _ in 0..CONNECTIONS {
                let mut stream = listener.accept().await.expect("accept");
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let mut buf = [0u8; 64];
                let n = stream.read(&mut buf).await.expect("read");
                assert_eq!(&buf[..n], b"last words");
                let end = stream.read(&mut buf).await.expect("read the end");
                assert_eq!(end, 0, "nothing follows the client's last words");
                ends += 1;
            }
            ends
        },
        |addr| {
            for _ in 0..CONNECTIONS {
                let mut client = connect(addr);
                client.write_all(b"last words").unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = [0u8; 1];
                assert_eq!(client.read(&mut rest).expect("the server closes"), 0);
            }
        },
    );
    assert_eq!(ends, CONNECTIONS);
}
