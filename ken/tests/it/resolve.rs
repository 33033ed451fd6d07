//! Addresses that move (issue 16), end to end: a peer named by host name whose first
//! resolution is wrong (a dead port, as after a Kubernetes pod came back with a new IP) is
//! resolved again once it stays quiet, and the messages waiting for it are delivered, with
//! no restart of anyone. The negative control keeps the wrong answer: nothing arrives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ken::{
    BlockingClient, ClientOptions, Config, Handler, Input, PeerAddress, ProcessId, Resolver,
    Tuning, Turn,
};

/// `a` sends `b` as many messages as a request asks; `b` counts what it received and
/// answers a request with the count.
struct App;

impl Handler for App {
    const APP: &'static str = "resolve-test";
    type State = u64;
    type Message = ();
    type Request = u64;
    type Reply = u64;
    fn on_turn(&self, n: &mut u64, turn: &mut Turn<'_, (), u64>, input: Input<(), u64>) {
        match input {
            Input::Message { .. } => *n += 1,
            Input::Request { request, .. } => {
                let b = ProcessId::new("b").unwrap();
                for _ in 0..request {
                    turn.send(&b, &()).unwrap();
                }
                turn.reply(&*n).unwrap();
            }
            _ => {}
        }
    }
}

fn start(config: Config) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config = config;
    config.bound = Some(tx);
    std::thread::spawn(move || ken::run(config, App));
    rx.recv_timeout(Duration::from_secs(10)).expect("binds")
}

fn quick() -> ClientOptions {
    ClientOptions {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        deadline: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// Starts `b`, then `a` with `b` known as `b.test`, resolved by `answer(call number)`;
/// asks `a` to send 3 messages. Returns `b`'s address and the resolver's call counter.
fn setup(
    dir: &std::path::Path,
    answer: impl Fn(usize, SocketAddr, SocketAddr) -> SocketAddr + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    // a's address, known to b in advance (b must know its peers).
    let a_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut b = Config::new(
        ProcessId::new("b").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("b.db"),
    );
    b.peers.insert(ProcessId::new("a").unwrap(), a_addr);
    let b = start(b);
    // A port nothing listens on: bound, then closed.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut a = Config::new(ProcessId::new("a").unwrap(), a_addr, dir.join("a.db"));
    a.tuning = Tuning {
        rto_initial: Duration::from_millis(20),
        rto_min: Duration::from_millis(10),
        rto_max: Duration::from_millis(100),
        ..Tuning::default()
    };
    a.resolver = Some(Resolver(Arc::new(move |_| {
        let k = counter.fetch_add(1, Ordering::SeqCst);
        Ok(answer(k, dead, b))
    })));
    a.add_peer(
        ProcessId::new("b").unwrap(),
        format!("b.test:{}", b.port())
            .parse::<PeerAddress>()
            .unwrap(),
    );
    let a = start(a);
    let mut client =
        BlockingClient::<u64, u64>::with_id(ken::ClientId::random(), 1, quick()).unwrap();
    client.call(a, &3).unwrap();
    (b, calls)
}

/// `b`'s count of messages received.
fn received(b: SocketAddr) -> u64 {
    let mut client =
        BlockingClient::<u64, u64>::with_id(ken::ClientId::random(), 1, quick()).unwrap();
    client.call(b, &0).unwrap()
}

#[test]
fn a_peer_resolved_to_a_dead_address_is_resolved_again_and_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (b, calls) = setup(dir.path(), |k, dead, b| if k == 0 { dead } else { b });
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(b) < 3 {
        assert!(
            Instant::now() < deadline,
            "b never reached ({} resolutions)",
            calls.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(received(b), 3, "each message once");
    assert!(calls.load(Ordering::SeqCst) >= 2, "resolved again");
}

#[test]
fn control_a_peer_that_keeps_resolving_to_a_dead_address_is_never_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (b, calls) = setup(dir.path(), |_, dead, _| dead);
    // Wait until the quiet peer was resolved again twice (the protection ran), then look.
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "never resolved again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(received(b), 0, "nothing can arrive at a dead address");
}
