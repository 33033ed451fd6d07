//! The client against a real process (in-process `ken::run` on a thread), and each client
//! error path.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ken::client::{ClientError, ClientOptions};
use ken::transport::{Frame, FrameKind, Incarnation, Seq};
use ken::{BlockingClient, ClientId, Config, Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

/// Adds each request's number (u64) to a durable total and replies the new total.
struct Adder;

#[derive(Default, Serialize, Deserialize)]
struct Total(u64);

impl Handler for Adder {
    const APP: &'static str = "adder";
    type State = Total;
    type Message = ();
    type Request = u64;
    type Reply = u64;
    fn on_turn(&self, total: &mut Total, turn: &mut Turn<'_, (), u64>, input: Input<(), u64>) {
        if let Input::Request { request, .. } = input {
            total.0 += request;
            turn.reply(&total.0).unwrap();
        }
    }
}

fn start_adder(dir: &std::path::Path) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config = Config::new(
        ProcessId::new("adder").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("adder.db"),
    );
    config.bound = Some(tx);
    std::thread::spawn(move || ken::run(config, Adder));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the server binds")
}

fn quick() -> ClientOptions {
    ClientOptions {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        deadline: Duration::from_millis(400),
        ..ClientOptions::default()
    }
}

#[test]
fn requests_apply_exactly_once_even_when_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_adder(dir.path());
    let mut c = BlockingClient::<u64, u64>::new().unwrap();
    assert!(matches!(
        c.retry_last(server),
        Err(ClientError::NothingToRetry)
    ));
    let mut expected = 0;
    for add in 1..=20u64 {
        expected += add;
        let reply = c.call(server, &add).unwrap();
        assert_eq!(reply, expected);
        // A retry of the same request number: the cached reply, not a second addition.
        let again = c.retry_last(server).unwrap();
        assert_eq!(again, reply);
    }
    // An old request number is refused as too old, never applied again.
    let mut old = BlockingClient::<u64, u64>::with_id(c.client().id(), 3, quick()).unwrap();
    match old.call(server, &1000) {
        Err(ClientError::TooOld {
            request_no: 3,
            last: 20,
        }) => {}
        other => panic!("expected TooOld, got {other:?}"),
    }
    let reply = c.call(server, &0).unwrap();
    assert_eq!(reply, expected);
}

#[test]
fn a_request_of_another_type_is_refused_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_adder(dir.path());
    // A client of some other service: its request does not decode as the adder's u64.
    let mut stranger =
        BlockingClient::<String, u64>::with_id(ClientId::random(), 1, quick()).unwrap();
    match stranger.call(server, &"add forty-two, please".to_string()) {
        Err(ClientError::BadRequest(why)) => assert!(why.contains("decode"), "{why}"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    let mut c = BlockingClient::<u64, u64>::new().unwrap();
    assert_eq!(c.call(server, &0).unwrap(), 0, "nothing was applied");
}

#[test]
fn an_unreachable_server_times_out() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = BlockingClient::<String, String>::with_id(ClientId::random(), 1, quick()).unwrap();
    let started = std::time::Instant::now();
    match c.call(silent.local_addr().unwrap(), &"hello".to_string()) {
        Err(ClientError::Timeout { after, .. }) => assert_eq!(after, quick().deadline),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= quick().deadline);
}

/// An address where nothing is bound: the host answers "port unreachable" to every copy,
/// and the client says so after `refused_grace`, long before its deadline. Negative control:
/// with the grace beyond the deadline, the same call waits out the whole deadline.
#[test]
fn a_server_that_is_not_running_is_reported_after_the_grace_not_the_deadline() {
    let nothing = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    }; // closed again: nothing listens there
    let options = ClientOptions {
        deadline: Duration::from_secs(10),
        refused_grace: Duration::from_millis(300),
        ..quick()
    };
    let mut c = BlockingClient::<String, String>::with_id(ClientId::random(), 1, options).unwrap();
    let started = std::time::Instant::now();
    match c.call(nothing, &"hello".to_string()) {
        Err(e @ ClientError::NotListening { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&nothing.to_string()) && text.contains("is the server running"),
                "{text}"
            );
        }
        other => panic!("expected NotListening, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "reported after {took:?}, not soon after the grace"
    );
    // Negative control: refusals ignored (grace past the deadline) = the old behaviour.
    let patient = ClientOptions {
        deadline: Duration::from_millis(600),
        refused_grace: Duration::from_secs(60),
        ..quick()
    };
    let mut c = BlockingClient::<String, String>::with_id(ClientId::random(), 1, patient).unwrap();
    match c.call(nothing, &"hello".to_string()) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
}

/// A server that starts within the grace (a crash-restart) is waited for: the call is
/// answered, not reported as not listening.
#[test]
fn a_server_that_comes_up_within_the_grace_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    // Find a free port, then start the server on it a little later.
    let addr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let path = dir.path().join("adder.db");
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300)); // the deliberate outage
        let mut config = Config::new(ProcessId::new("adder").unwrap(), addr, path);
        let (tx, rx) = std::sync::mpsc::channel();
        config.bound = Some(tx);
        std::thread::spawn(move || ken::run(config, Adder));
        rx.recv_timeout(Duration::from_secs(10)).is_ok()
    });
    let options = ClientOptions {
        deadline: Duration::from_secs(10),
        refused_grace: Duration::from_secs(3),
        ..quick()
    };
    let mut c = BlockingClient::<u64, u64>::with_id(ClientId::random(), 1, options).unwrap();
    let reply = c.call(addr, &5);
    if !starter.join().unwrap() {
        eprintln!("skipped: another program took the port before the server bound it");
        return;
    }
    assert_eq!(reply.unwrap(), 5);
}

#[test]
fn an_oversized_request_is_refused_before_sending() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let mut c = BlockingClient::<Vec<u8>, ()>::with_id(ClientId::random(), 1, quick()).unwrap();
    let big = vec![0u8; ken::limits::REQUEST_BYTES_MAX + 1];
    match c.call(silent.local_addr().unwrap(), &big) {
        Err(ClientError::TooLarge { bytes, max_bytes }) => {
            assert!(bytes > big.len(), "the encoded size: {bytes}");
            assert_eq!(max_bytes, ken::limits::REQUEST_BYTES_MAX);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut buf = [0u8; 16];
    assert!(silent.recv_from(&mut buf).is_err(), "nothing was sent");
    assert_eq!(c.client().next_request(), 1, "the number was not used");
}

#[test]
fn an_undecodable_reply_is_a_decode_error() {
    // A fake server that answers every request with a reply frame whose body is junk.
    let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = fake.recv_from(&mut buf) {
            let Ok(req) = Frame::decode(&buf[..n]) else {
                continue;
            };
            let reply = Frame {
                kind: FrameKind::ClientReply,
                auth: ken::transport::Auth::None,
                from: ProcessId::new("fake").unwrap(),
                from_incarnation: Incarnation(1),
                to: req.from,
                to_incarnation: Incarnation(0),
                seq: req.seq,
                ack: Seq(0),
                acked: Seq(0),
                payload: vec![0xff, 0xfe, 0xfd],
            };
            let _ = fake.send_to(&reply.encode().unwrap(), from);
        }
    });
    let mut c = BlockingClient::<String, String>::with_id(ClientId::random(), 1, quick()).unwrap();
    match c.call(addr, &"hi".to_string()) {
        Err(ClientError::Decode(_)) => {}
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[test]
fn an_oversized_reply_is_refused_to_the_handler() {
    struct Big;
    impl Handler for Big {
        const APP: &'static str = "big";
        type State = ();
        type Message = ();
        type Request = ();
        type Reply = String;
        fn on_turn(&self, _: &mut (), turn: &mut Turn<'_, (), String>, input: Input<()>) {
            if let Input::Request { .. } = input {
                let too_big = "x".repeat(ken::limits::REPLY_BYTES_MAX);
                assert!(matches!(
                    turn.reply(&too_big),
                    Err(ken::SendError::TooLarge { .. })
                ));
                turn.reply(&"too big, sorry".to_string()).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config = Config::new(
        ProcessId::new("big").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("big.db"),
    );
    config.bound = Some(tx);
    std::thread::spawn(move || ken::run(config, Big));
    let server = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut c = BlockingClient::<(), String>::new().unwrap();
    assert_eq!(c.call(server, &()).unwrap(), "too big, sorry");
}

/// A UDP relay in front of a server that forwards every request and, while `replies` is
/// false, drops every reply: a request applied whose answer is lost.
struct Relay {
    addr: SocketAddr,
    replies: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn new(server: SocketAddr) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let replies = std::sync::Arc::new(AtomicBool::new(true));
        let pass = replies.clone();
        std::thread::spawn(move || {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 70_000];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                if from == server {
                    if let (Some(c), true) = (client, pass.load(Ordering::SeqCst)) {
                        let _ = socket.send_to(&buf[..n], c);
                    }
                } else {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..n], server);
                }
            }
        });
        Relay { addr, replies }
    }

    fn set_replies(&self, on: bool) {
        self.replies.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client that dies after its request was applied and before it heard the answer: a
/// `DurableClient` started again from its file resumes that request with its number and
/// gets the answer of its one application; a plain client that starts again as a new
/// client and sends it again applies it twice (the negative control).
#[test]
fn a_durable_client_resumes_its_unanswered_request_after_a_crash_and_it_applies_once() {
    use ken::app::{DurableClient, DurableClientError};
    let dir = tempfile::tempdir().unwrap();
    let server = start_adder(dir.path());
    let relay = Relay::new(server);
    let file = dir.path().join("client.ken");
    let mut c = DurableClient::<u64, u64>::open_with(&file, None, quick()).unwrap();
    assert_eq!(c.call(relay.addr, &5).unwrap(), 5);
    relay.set_replies(false);
    match c.call(relay.addr, &7) {
        Err(DurableClientError::Client(ClientError::Timeout { .. })) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(c.pending(), Some(2));
    let id = c.id();
    drop(c); // the crash: only the file is left
    relay.set_replies(true);
    let mut c = DurableClient::<u64, u64>::open_with(&file, None, quick()).unwrap();
    assert_eq!(
        (c.id(), c.pending()),
        (id, Some(2)),
        "same client, same request"
    );
    match c.call(relay.addr, &1) {
        Err(DurableClientError::Pending { request_no: 2 }) => {}
        other => panic!("a new request before the pending one is refused, got {other:?}"),
    }
    assert_eq!(
        c.resume(relay.addr).unwrap().unwrap(),
        12,
        "the answer of its one application (5 + 7)"
    );
    assert_eq!(c.pending(), None);
    assert!(c.resume(relay.addr).is_none());
    assert_eq!(c.call(relay.addr, &1).unwrap(), 13, "numbering goes on");
    // Negative control: the same request from a client that did not keep its identity.
    let mut fresh = BlockingClient::<u64, u64>::with_id(ClientId::random(), 1, quick()).unwrap();
    assert_eq!(
        fresh.call(server, &7).unwrap(),
        20,
        "7 applied a second time"
    );
    // A damaged or foreign file is refused with what to do.
    std::fs::write(&file, b"ken-client\x01garbage").unwrap();
    let e = DurableClient::<u64, u64>::open(&file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum mismatch") && e.contains("remove it"),
        "{e}"
    );
    std::fs::write(&file, b"hello").unwrap();
    let e = DurableClient::<u64, u64>::open(&file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Ken client file"), "{e}");
}
