//! The test host itself ([`ken::testing::Cluster`]): what the other suites do not exercise.

use std::time::Duration;

use ken::engine::EngineConfig;
use ken::testing::{Cluster, Commits, Faults};
use ken::transport::FrameKind;
use ken::{ClientId, Handler, Input, ProcessId, Time, Tuning, Turn};

const T0: u64 = 1_700_000_000_000;
const COUNT: u64 = 200;

/// `a` sends `b` the numbers 1..=COUNT at its start; `b` records them in arrival order and
/// answers a client's request with the request reversed.
struct Counter;

impl Handler for Counter {
    const APP: &'static str = "counter";
    type State = Vec<u64>;
    type Message = u64;
    type Request = Vec<u8>;
    type Reply = Vec<u8>;
    fn on_turn(
        &self,
        got: &mut Vec<u64>,
        turn: &mut Turn<'_, u64, Vec<u8>>,
        input: Input<u64, Vec<u8>>,
    ) {
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                let b = ProcessId::new("b").unwrap();
                for n in 1..=COUNT {
                    turn.send(&b, &n).unwrap();
                }
            }
            Input::Message { message, .. } => got.push(message),
            Input::Request { mut request, .. } => {
                request.reverse();
                turn.reply(&request).unwrap();
            }
            _ => {}
        }
    }
}

fn pair(seed: u64) -> Cluster<Counter> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir, Time::from_millis(T0), seed);
    let ids = [ProcessId::new("a").unwrap(), ProcessId::new("b").unwrap()];
    for id in &ids {
        let config = EngineConfig {
            id: id.clone(),
            peers: ids.iter().filter(|p| *p != id).cloned().collect(),
            tuning: Tuning::default(),
            seed: 1,
        };
        c.add(config, || Counter);
    }
    c
}

/// Random delays reorder datagrams (nothing else does here: no drops); the receiver's
/// handler still sees every message once, in order.
#[test]
fn delays_reorder_datagrams_and_the_handler_still_sees_fifo_exactly_once() {
    let mut c = pair(11);
    c.set_faults(Faults {
        delay_max: Duration::from_millis(40),
        ..Faults::default()
    });
    c.start_all();
    c.run_until(Duration::from_secs(60), |c| {
        c.state(1).len() as u64 == COUNT
    });
    assert_eq!(*c.state(1), (1..=COUNT).collect::<Vec<_>>());
    let b = c.engine(1).stats();
    assert!(b.out_of_order_buffered > 0, "nothing was reordered: {b:?}");
}

/// With held commits, a reply leaves only once its turn's batch is durable; a crash before
/// that loses the turn, and the client's retry is applied by the next life.
#[test]
fn a_reply_waits_for_its_commit_and_a_crash_before_it_loses_the_turn() {
    let mut c = pair(0);
    c.set_commits(Commits::Held);
    c.start_all();
    while c.complete_commit(1) {}
    let client = ClientId([7; 16]);
    c.request(1, client, 1, &b"abc".to_vec());
    assert!(c.node(1).replies().is_empty(), "replied before the commit");
    c.crash(1);
    c.start(1);
    while c.complete_commit(1) {}
    assert!(c.node(1).replies().is_empty());
    c.request(1, client, 1, &b"abc".to_vec());
    assert!(c.node(1).replies().is_empty());
    assert!(c.complete_commit(1));
    let replies = c.node(1).replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0];
    assert_eq!(reply.kind, FrameKind::ClientReply);
    assert_eq!((reply.to.clone(), reply.seq.0), (client.to_process_id(), 1));
    let body: ken::client::ReplyBody = ken::store::codec::decode(&reply.payload).unwrap();
    assert_eq!(
        body,
        ken::client::ReplyBody::Ok(ken::store::codec::encode(&b"cba".to_vec()))
    );
    assert_eq!(
        c.engine(1).stats().requests_applied,
        1,
        "this life applied it once"
    );
}
