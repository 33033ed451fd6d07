//! `Config::observe`: a sender runs in-process (`ken::run` on a thread) against a fake peer
//! (a socket this test holds, acknowledging every data frame as a receiver would); the
//! sender's observer must report every message it sent exactly once, in order, with
//! `sent <= transmitted <= acknowledged`.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ken::observe::{MessageTimes, Observer};
use ken::transport::{Frame, FrameKind, Incarnation, Seq};
use ken::{Config, Exit, Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

const MESSAGES: u64 = 50;

/// Sends `MESSAGES` numbers to `to` at its start; finished once they are acknowledged.
struct Sender {
    to: ProcessId,
}

#[derive(Default, Serialize, Deserialize)]
struct Count(u64);

impl Handler for Sender {
    const APP: &'static str = "sender";
    type State = Count;
    type Message = u64;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, sent: &mut Count, turn: &mut Turn<'_, u64>, input: Input<u64>) {
        if let Input::Start = input {
            for n in 1..=MESSAGES {
                turn.send(&self.to, &n).expect("the receiver is a peer");
                sent.0 += 1;
            }
        }
    }
    fn finished(&self, sent: &Count) -> Option<String> {
        (sent.0 == MESSAGES).then(|| "sent".to_string())
    }
}

/// Acknowledges, cumulatively, the data frames `socket` receives, until `stop`.
fn fake_receiver(socket: UdpSocket, me: ProcessId, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut delivered = 0u64;
    let mut buf = vec![0u8; 70_000];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(data) = Frame::decode(&buf[..n]) else {
            continue;
        };
        if data.kind != FrameKind::Data {
            continue;
        }
        if data.seq.0 == delivered + 1 {
            delivered += 1;
        }
        let ack = Frame {
            kind: FrameKind::Ack,
            auth: ken::transport::Auth::None,
            from: me.clone(),
            from_incarnation: Incarnation(7),
            to: data.from,
            to_incarnation: data.from_incarnation,
            seq: Seq(0),
            ack: Seq(delivered),
            acked: Seq(0),
            payload: Vec::new(),
        };
        let _ = socket.send_to(&ack.encode().unwrap(), from);
    }
}

#[test]
fn every_message_is_reported_once_with_ordered_times() {
    let (s, r) = (ProcessId::new("s").unwrap(), ProcessId::new("r").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = Config::new(s, "127.0.0.1:0".parse().unwrap(), dir.path().join("s.db"));
    config.peers.insert(r.clone(), socket.local_addr().unwrap());
    config.faults = Some(ken::transport::FaultConfig::default());
    config.finish_linger = Duration::from_millis(100);
    let seen: Arc<Mutex<Vec<MessageTimes>>> = Arc::default();
    let sink = Arc::clone(&seen);
    config.observe = Some(Observer(Arc::new(move |m: &MessageTimes| {
        sink.lock().unwrap().push(m.clone());
    })));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (r, stop) = (r.clone(), Arc::clone(&stop));
        std::thread::spawn(move || fake_receiver(socket, r, stop))
    };
    let exit = ken::run(config, Sender { to: r.clone() });
    stop.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    assert!(matches!(exit, Ok(Exit::Finished { .. })), "{exit:?}");

    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "each once, in order"
    );
    for m in seen.iter() {
        assert_eq!(m.to, r);
        let t = m.transmitted.expect("every message was transmitted");
        assert!(m.sent <= t && t <= m.acknowledged, "{m:?}");
    }
    // One turn sent them all.
    assert!(seen.iter().all(|m| m.sent == seen[0].sent), "{seen:?}");
}
