//! The endpoint over real UDP on 127.0.0.1: round trips, junk, limits, concurrency.

use std::collections::BTreeSet;
use std::sync::Arc;

use ken_transport::frame::{AUTH_TRAILER_BYTES, MAX_FRAME_BYTES, MIN_FRAME_BYTES};
use ken_transport::{EncodeError, Endpoint, FaultConfig, Frame, SendError, Seq};
use tokio::net::UdpSocket;

use crate::support::{data, endpoint, eventually, localhost, recv, MARKER_SEQ};

#[tokio::test]
async fn send_and_receive_a_frame() {
    let a = Endpoint::bind(localhost()).expect("bind");
    let b = Endpoint::bind(localhost()).expect("bind");
    assert_ne!(
        a.local_addr().port(),
        0,
        "port 0 is replaced by the bound port"
    );
    let frame = data(1);
    a.send(b.local_addr(), &frame).await.expect("send");
    let (received, from) = recv(&b).await;
    assert_eq!(received, frame);
    assert_eq!(from, a.local_addr());
    let size = frame.encoded_len() as u64;
    let sent = a.stats();
    assert_eq!(
        (sent.frames_sent, sent.bytes_sent, sent.send_errors),
        (1, size, 0)
    );
    let got = b.stats();
    assert_eq!(
        (got.frames_received, got.bytes_received, got.junk_dropped),
        (1, size, 0)
    );
}

#[tokio::test]
async fn largest_frame_crosses_loopback() {
    let a = endpoint(FaultConfig::default());
    let b = endpoint(FaultConfig::default());
    let mut frame = data(1);
    // Untagged, the tag's bytes are free for payload.
    frame.payload = vec![0x5a; Frame::max_payload(&frame.from, &frame.to) + AUTH_TRAILER_BYTES];
    assert_eq!(frame.encoded_len(), MAX_FRAME_BYTES);
    a.send(b.local_addr(), &frame)
        .await
        .expect("send the largest frame");
    assert_eq!(recv(&b).await.0, frame);
}

#[tokio::test]
async fn oversize_frame_is_an_encode_error_and_nothing_is_sent() {
    let a = endpoint(FaultConfig::default());
    let b = endpoint(FaultConfig::default());
    let mut frame = data(1);
    frame.payload = vec![0; Frame::max_payload(&frame.from, &frame.to) + AUTH_TRAILER_BYTES + 1];
    let error = a.send(b.local_addr(), &frame).await.expect_err("too large");
    assert!(
        matches!(error, SendError::Encode(EncodeError::TooLarge { size }) if size == MAX_FRAME_BYTES + 1),
        "{error:?}"
    );
    assert_eq!(a.stats().frames_sent, 0);
    a.send(b.local_addr(), &data(MARKER_SEQ))
        .await
        .expect("send marker");
    assert_eq!(recv(&b).await.0.seq, Seq(MARKER_SEQ));
}

/// A raw socket that sends arbitrary datagrams to an endpoint.
async fn raw_socket() -> UdpSocket {
    UdpSocket::bind(localhost()).await.expect("bind raw socket")
}

#[tokio::test]
async fn junk_is_dropped_and_counted_and_the_next_frame_arrives() {
    let b = endpoint(FaultConfig::default());
    let raw = raw_socket().await;
    let valid = data(7).encode().expect("encode");
    let junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; 1],
        b"hello, not a frame".to_vec(),
        vec![0xff; MIN_FRAME_BYTES - 1],
        vec![0x00; 1000],
        // Right magic, wrong everything else.
        [b"KN".as_slice(), &[1, 1], &[0xee; 60]].concat(),
        // A valid frame followed by a trailing byte.
        [valid.as_slice(), &[0]].concat(),
    ];
    for datagram in &junk {
        raw.send_to(datagram, b.local_addr())
            .await
            .expect("send junk");
    }
    raw.send_to(&valid, b.local_addr())
        .await
        .expect("send frame");
    let (frame, from) = recv(&b).await;
    assert_eq!(frame, data(7));
    assert_eq!(from, raw.local_addr().expect("raw addr"));
    let stats = b.stats();
    assert_eq!(stats.junk_dropped, junk.len() as u64, "{stats:?}");
    assert_eq!(stats.frames_received, 1);
    assert_eq!(stats.bytes_received, valid.len() as u64);
}

#[tokio::test]
async fn truncated_and_corrupted_frames_are_junk() {
    let b = endpoint(FaultConfig::default());
    let raw = raw_socket().await;
    let valid = data(9).encode().expect("encode");
    let mut damaged = Vec::new();
    for cut in [1, 4, valid.len() / 2, valid.len() - 1] {
        damaged.push(valid[..cut].to_vec());
    }
    for byte in [0, 3, 20, valid.len() - 10, valid.len() - 1] {
        let mut bytes = valid.clone();
        bytes[byte] ^= 0x01;
        damaged.push(bytes);
    }
    for datagram in &damaged {
        raw.send_to(datagram, b.local_addr())
            .await
            .expect("send damaged");
    }
    raw.send_to(&valid, b.local_addr())
        .await
        .expect("send frame");
    assert_eq!(recv(&b).await.0, data(9));
    assert_eq!(b.stats().junk_dropped, damaged.len() as u64);
    assert_eq!(b.stats().frames_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_endpoint_serves_concurrent_senders_and_receivers() {
    const SENDERS: u64 = 4;
    const FRAMES_PER_SENDER: u64 = 250;
    let a = Arc::new(endpoint(FaultConfig::default()));
    let b = Arc::new(endpoint(FaultConfig::default()));
    let total = SENDERS * FRAMES_PER_SENDER;
    // Two receivers share `b` and collect until all frames are in.
    // Flow control: at most WINDOW frames in flight, so no burst can overrun the socket
    // buffer (UDP would be right to drop then, and the test would be flaky).
    const WINDOW: usize = 64;
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let (tx, mut rx) = tokio::sync::mpsc::channel(total as usize);
    let receivers: Vec<_> = (0..2)
        .map(|_| {
            let b = Arc::clone(&b);
            let tx = tx.clone();
            let window = Arc::clone(&window);
            tokio::spawn(async move {
                while let Ok((frame, _)) = b.recv().await {
                    window.add_permits(1);
                    if tx.send(frame.seq.0).await.is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let a = Arc::clone(&a);
            let to = b.local_addr();
            let window = Arc::clone(&window);
            tokio::spawn(async move {
                for n in 0..FRAMES_PER_SENDER {
                    window.acquire().await.expect("semaphore open").forget();
                    a.send(to, &data(sender * FRAMES_PER_SENDER + n + 1))
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < total {
        let seq = tokio::time::timeout(crate::support::DEADLINE, rx.recv())
            .await
            .expect("all frames arrive within the deadline")
            .expect("receivers alive");
        assert!(seen.insert(seq), "frame {seq} received twice");
    }
    assert_eq!(seen, (1..=total).collect());
    assert_eq!(a.stats().frames_sent, total);
    eventually("receive counter", || b.stats().frames_received == total).await;
    for receiver in receivers {
        receiver.abort();
    }
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let error = Endpoint::bind(localhost()).expect_err("no tokio runtime");
    assert_eq!(error.kind(), std::io::ErrorKind::Other);
}

#[tokio::test]
async fn bind_to_a_taken_port_fails() {
    let a = endpoint(FaultConfig::default());
    assert!(Endpoint::bind(a.local_addr()).is_err());
}

/// `recv_many` takes a burst in arrival order, across several batched receives, skipping
/// junk between frames (a largest-size one too) and taking the largest frame in its stride.
#[tokio::test]
async fn recv_many_takes_bursts_in_order_and_drops_junk_between_frames() {
    let b = endpoint(FaultConfig::default());
    let raw = raw_socket().await;
    let n = 3 * ken_transport::RECV_BATCH_MAX as u64 + 5;
    let mut big = data(n + 1);
    big.payload = vec![0x5a; Frame::max_payload(&big.from, &big.to)];
    let mut junk = 0u64;
    for seq in 1..=n {
        raw.send_to(&data(seq).encode().unwrap(), b.local_addr())
            .await
            .unwrap();
        if seq % 7 == 0 {
            raw.send_to(b"not a frame", b.local_addr()).await.unwrap();
            junk += 1;
        }
    }
    raw.send_to(&vec![0x11; MAX_FRAME_BYTES], b.local_addr())
        .await
        .unwrap();
    junk += 1;
    raw.send_to(&big.encode().unwrap(), b.local_addr())
        .await
        .unwrap();
    let mut buffers = b.recv_buffers();
    let mut got = Vec::new();
    let mut calls = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while (got.len() as u64) < n + 1 {
        let wait = b.recv_many(&mut buffers, &mut got);
        tokio::time::timeout_at(deadline, wait)
            .await
            .expect("every frame within 10 s")
            .expect("receive");
        calls += 1;
    }
    let seqs: Vec<u64> = got.iter().map(|(f, _)| f.seq.0).collect();
    assert_eq!(seqs, (1..=n + 1).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap().0, big);
    assert!(got
        .iter()
        .all(|(_, from)| *from == raw.local_addr().unwrap()));
    assert!(
        calls < n,
        "{calls} calls for {n} frames: the receives were not batched"
    );
    let stats = b.stats();
    assert_eq!((stats.frames_received, stats.junk_dropped), (n + 1, junk));
}
