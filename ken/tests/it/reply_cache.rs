//! The reply cache keeps replies in the store, not in memory (issue 17): a retry of the last
//! request of a client whose reply is large is answered from the store, in the same life and
//! after a restart, and the memory the cache holds does not grow with reply sizes.

use std::time::Duration;

use ken::client::ReplyBody;
use ken::engine::{EngineConfig, REPLY_INLINE_MAX};
use ken::testing::Cluster;
use ken::transport::FrameKind;
use ken::{ClientId, Handler, Input, ProcessId, Time, Tuning, Turn};

const T0: u64 = 1_700_000_000_000;

/// Replies with the request's bytes.
struct Echo;

impl Handler for Echo {
    const APP: &'static str = "echo-test";
    type State = u64;
    type Message = ();
    type Request = Vec<u8>;
    type Reply = Vec<u8>;
    fn on_turn(&self, n: &mut u64, turn: &mut Turn<'_, (), Vec<u8>>, input: Input<(), Vec<u8>>) {
        if let Input::Request { request, .. } = input {
            *n += 1;
            turn.reply(&request).unwrap();
        }
    }
}

fn one() -> Cluster<Echo> {
    let mut c = Cluster::new(tempfile::tempdir().unwrap(), Time::from_millis(T0), 5);
    c.add(
        EngineConfig {
            id: ProcessId::new("a").unwrap(),
            peers: vec![],
            tuning: Tuning::default(),
            seed: 1,
        },
        || Echo,
    );
    c.start_all();
    c
}

/// The decoded replies to request 1 of `client`, in the order released.
fn replies_to(c: &Cluster<Echo>, client: ClientId) -> Vec<ReplyBody> {
    c.node(0)
        .replies()
        .iter()
        .filter(|f| f.kind == FrameKind::ClientReply && f.to == client.to_process_id())
        .map(|f| ken::store::codec::decode(&f.payload).unwrap())
        .collect()
}

fn body(i: u8, len: usize) -> Vec<u8> {
    (0..len).map(|k| i.wrapping_add(k as u8)).collect()
}

#[test]
fn large_replies_are_read_back_from_the_store_and_never_held_in_memory() {
    const CLIENTS: u8 = 200;
    const REPLY: usize = 4096;
    let mut c = one();
    for i in 0..CLIENTS {
        c.request(0, ClientId([i; 16]), 1, &body(i, REPLY));
    }
    c.run_until(Duration::from_secs(10), |c| {
        c.node(0)
            .replies()
            .iter()
            .filter(|f| f.kind == FrameKind::ClientReply)
            .count()
            == usize::from(CLIENTS)
    });
    assert_eq!(
        c.engine(0).reply_cache_inline_bytes(),
        0,
        "{CLIENTS} cached replies of {REPLY} bytes, none in memory"
    );
    let want = ReplyBody::Ok(ken::store::codec::encode(&body(7, REPLY)));
    let seven = ClientId([7; 16]);
    // A retry in the same life: answered from the store, not run again.
    c.request(0, seven, 1, &body(7, REPLY));
    c.run_for(Duration::from_millis(50));
    assert_eq!(replies_to(&c, seven), [want.clone(), want.clone()]);
    assert_eq!(c.engine(0).stats().requests_replayed, 1);
    // After a restart too.
    c.crash(0);
    c.restart(0);
    c.request(0, seven, 1, &body(7, REPLY));
    c.run_for(Duration::from_millis(50));
    assert_eq!(replies_to(&c, seven), [want.clone(), want.clone(), want]);
    assert_eq!(*c.state(0), u64::from(CLIENTS), "applied once each");
    assert_eq!(c.engine(0).reply_cache_inline_bytes(), 0);
}

#[test]
fn small_replies_stay_in_memory_within_the_bound() {
    let mut c = one();
    for i in 0..10u8 {
        c.request(0, ClientId([i; 16]), 1, &body(i, 8));
    }
    c.run_until(Duration::from_secs(10), |c| {
        c.node(0)
            .replies()
            .iter()
            .filter(|f| f.kind == FrameKind::ClientReply)
            .count()
            == 10
    });
    let inline = c.engine(0).reply_cache_inline_bytes();
    assert!(inline > 0 && inline <= 10 * REPLY_INLINE_MAX, "{inline}");
    let three = ClientId([3; 16]);
    c.request(0, three, 1, &body(3, 8));
    c.run_for(Duration::from_millis(50));
    let got = replies_to(&c, three);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], got[1]);
}
