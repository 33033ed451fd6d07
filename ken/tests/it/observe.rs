//! `Config::observe`: a sender and a receiver run in-process (`ken::run` on threads); the
//! sender's observer must report every message it sent exactly once, in order, with
//! `sent <= transmitted <= acknowledged`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ken::driver::{MessageTimes, Observer};
use ken::{Config, Exit, Handler, Input, ProcessId, RunError, Turn};
use serde::{Deserialize, Serialize};

const MESSAGES: u64 = 50;

/// Sends `MESSAGES` numbers to `to` at its start; finished once they are acknowledged.
struct Sender {
    to: ProcessId,
}

/// Counts what it consumed; finished at `MESSAGES`.
struct Receiver;

#[derive(Default, Serialize, Deserialize)]
struct Count(u64);

impl Handler for Sender {
    type State = Count;
    type Message = u64;
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

impl Handler for Receiver {
    type State = Count;
    type Message = u64;
    fn on_turn(&self, got: &mut Count, _turn: &mut Turn<'_, u64>, input: Input<u64>) {
        if let Input::Message { .. } = input {
            got.0 += 1;
        }
    }
    fn finished(&self, got: &Count) -> Option<String> {
        (got.0 == MESSAGES).then(|| "received".to_string())
    }
}

/// Two loopback addresses that were free a moment ago.
fn two_addrs() -> [SocketAddr; 2] {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    [a.local_addr().unwrap(), b.local_addr().unwrap()]
}

fn config(id: &ProcessId, listen: SocketAddr, store: std::path::PathBuf) -> Config {
    let mut c = Config::new(id.clone(), listen, store);
    c.faults = Some(ken::transport::FaultConfig::default());
    c.finish_linger = Duration::from_millis(200);
    c
}

#[test]
fn every_message_is_reported_once_with_ordered_times() {
    let (s, r) = (ProcessId::new("s").unwrap(), ProcessId::new("r").unwrap());
    // A port taken between the pick and the bind fails a run: pick again.
    for attempt in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let [s_addr, r_addr] = two_addrs();
        let seen: Arc<Mutex<Vec<MessageTimes>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let mut sc = config(&s, s_addr, dir.path().join("s.db"));
        sc.peers.insert(r.clone(), r_addr);
        sc.observe = Some(Observer(Arc::new(move |m: &MessageTimes| {
            sink.lock().unwrap().push(m.clone());
        })));
        let mut rc = config(&r, r_addr, dir.path().join("r.db"));
        rc.peers.insert(s.clone(), s_addr);
        let receiver = std::thread::spawn(move || ken::run(rc, Receiver));
        let sent = ken::run(sc, Sender { to: r.clone() });
        let received = receiver.join().unwrap();
        if matches!(sent, Err(RunError::Bind { .. })) || matches!(received, Err(RunError::Bind { .. }))
        {
            assert!(attempt < 3, "ports taken three times");
            continue;
        }
        assert!(matches!(sent, Ok(Exit::Finished { .. })), "{sent:?}");
        assert!(matches!(received, Ok(Exit::Finished { .. })), "{received:?}");
        let seen = seen.lock().unwrap();
        let seqs: Vec<u64> = seen.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>(), "each once, in order");
        for m in seen.iter() {
            assert_eq!(m.to, r);
            let t = m.transmitted.expect("every message was transmitted");
            assert!(m.sent <= t && t <= m.acknowledged, "{m:?}");
        }
        // One turn sent them all.
        assert!(seen.iter().all(|m| m.sent == seen[0].sent), "{seen:?}");
        return;
    }
}
