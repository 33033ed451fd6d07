//! Helpers shared by the integration tests: seeds, frames, endpoints, deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use ken_transport::{
    Endpoint, EndpointOptions, FaultConfig, FaultsFile, Frame, FrameKind, Incarnation, ProcessId,
    Seq,
};

/// Longest any test waits for a condition that should hold within milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Poll period while awaiting a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The seed of a randomized test: `KEN_SEED` if set, else random. Printed so a failing run
/// can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("KEN_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .expect("KEN_SEED must be an unsigned 64-bit integer"),
        Err(_) => rand::random(),
    };
    eprintln!("{test}: seed = {seed} (replay with KEN_SEED={seed})");
    seed
}

pub fn id(text: &str) -> ProcessId {
    ProcessId::new(text).expect("valid test id")
}

/// A data frame whose payload names its sequence number.
pub fn data(seq: u64) -> Frame {
    Frame {
        kind: FrameKind::Data,
        auth: ken_transport::Auth::None,
        from: id("alice"),
        from_incarnation: Incarnation(0xa11ce),
        to: id("bob"),
        to_incarnation: Incarnation(0xb0b),
        seq: Seq(seq),
        ack: Seq(seq.saturating_sub(1)),
        acked: Seq(0),
        payload: format!("message {seq}").into_bytes(),
    }
}

/// Sequence number used for the marker frame that proves nothing else is in flight.
pub const MARKER_SEQ: u64 = u64::MAX;

/// An endpoint on 127.0.0.1, any port, ignoring `KEN_FAULTS_FILE`.
pub fn endpoint(faults: FaultConfig) -> Endpoint {
    let options = EndpointOptions {
        faults,
        faults_file: FaultsFile::Disabled,
        keys: None,
    };
    Endpoint::bind_with_options(localhost(), options).expect("bind 127.0.0.1:0")
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The next frame, within [`DEADLINE`].
pub async fn recv(endpoint: &Endpoint) -> (Frame, SocketAddr) {
    tokio::time::timeout(DEADLINE, endpoint.recv())
        .await
        .expect("a frame arrives within the deadline")
        .expect("recv succeeds")
}

/// Waits until `condition` holds, failing after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Turns faults off at `sender`, sends a marker to `receiver`, and asserts that the marker
/// is the next frame `receiver` gets: proves that nothing sent before it is still to come
/// (loopback delivers one sender's datagrams in order, and nothing is held back).
pub async fn assert_marker_is_next(sender: &Endpoint, receiver: &Endpoint) {
    assert_eq!(
        sender.held_datagrams(),
        0,
        "marker check needs an empty held queue"
    );
    sender.set_faults(FaultConfig::default());
    sender
        .send(receiver.local_addr(), &data(MARKER_SEQ))
        .await
        .expect("send marker");
    let (frame, from) = recv(receiver).await;
    assert_eq!(from, sender.local_addr());
    assert_eq!(
        frame.seq,
        Seq(MARKER_SEQ),
        "expected the marker, got {frame:?}"
    );
}
