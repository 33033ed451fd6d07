//! `forget_peer` and a peer that comes back (issue 15): the withdrawn messages are never
//! delivered, every message sent after the forget is (this turn's included), in order and
//! once, and neither side mistakes the withdrawal for lost history, also across restarts of
//! either side. The negative control drops every `Skip` frame: the returning peer then waits
//! for ever for the first withdrawn number, the jam the issue reported.

use std::time::Duration;

use ken::engine::EngineConfig;
use ken::testing::{Cluster, Fate};
use ken::transport::FrameKind;
use ken::{ClientId, Handler, Input, ProcessId, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;

/// What the test asks `a` to do (as client requests).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Do {
    /// Send `b` these values.
    Send(Vec<u64>),
    /// In one turn: send `before`, forget `b`, send `after`.
    SendForgetSend { before: u64, after: u64 },
}

/// `a` sends on request; `b` records what it receives, in order.
struct App;

impl Handler for App {
    const APP: &'static str = "forget-test";
    type State = Vec<u64>;
    type Message = u64;
    type Request = Do;
    type Reply = ();
    fn on_turn(&self, got: &mut Vec<u64>, turn: &mut Turn<'_, u64, ()>, input: Input<u64, Do>) {
        let b = ProcessId::new("b").unwrap();
        match input {
            Input::Message { message, .. } => got.push(message),
            Input::Request { request, .. } => {
                match request {
                    Do::Send(values) => {
                        for v in values {
                            turn.send(&b, &v).unwrap();
                        }
                    }
                    Do::SendForgetSend { before, after } => {
                        turn.send(&b, &before).unwrap();
                        turn.forget_peer(&b);
                        turn.send(&b, &after).unwrap();
                    }
                }
                turn.reply(&()).unwrap();
            }
            _ => {}
        }
    }
}

fn pair(seed: u64) -> Cluster<App> {
    let mut c = Cluster::new(tempfile::tempdir().unwrap(), Time::from_millis(T0), seed);
    let ids = [ProcessId::new("a").unwrap(), ProcessId::new("b").unwrap()];
    for id in &ids {
        c.add(
            EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: Tuning::default(),
                seed: 1,
            },
            || App,
        );
    }
    c
}

/// b receives 1, 2; goes down; a sends 3, 4, 5, then in one turn 6, forget b, 7; a restarts
/// (its store now says b acknowledged 2 and 3..=5 are withdrawn); a sends 8; b comes back.
/// Returns the cluster with b up again.
fn forget_while_b_is_down(seed: u64, drop_skips: bool) -> Cluster<App> {
    let mut c = pair(seed);
    if drop_skips {
        c.set_filter(|d| {
            if d.kind == FrameKind::Skip {
                Fate::Drop
            } else {
                Fate::Pass
            }
        });
    }
    c.start_all();
    let client = ClientId([7; 16]);
    c.request(0, client, 1, &Do::Send(vec![1, 2]));
    c.run_until(Duration::from_secs(5), |c| c.state(1).len() == 2);
    c.run_for(Duration::from_millis(200)); // b's acknowledgement reaches a
    c.crash(1);
    c.request(0, client, 2, &Do::Send(vec![3, 4, 5]));
    c.run_for(Duration::from_millis(100));
    c.request(
        0,
        client,
        3,
        &Do::SendForgetSend {
            before: 6,
            after: 7,
        },
    );
    c.run_for(Duration::from_millis(100));
    let a = c.engine(0).stats();
    assert_eq!(
        a.messages_withdrawn, 3,
        "3, 4 and 5 withdrawn, not 6 or 7: {a:?}"
    );
    c.crash(0);
    c.restart(0);
    c.request(0, client, 4, &Do::Send(vec![8]));
    c.run_for(Duration::from_millis(100));
    c.restart(1);
    c
}

#[test]
fn a_forgotten_peer_that_comes_back_gets_every_later_message_and_none_withdrawn() {
    let mut c = forget_while_b_is_down(21, false);
    c.run_until(Duration::from_secs(30), |c| c.state(1).len() >= 5);
    // Quiet, and still nothing more.
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(1), [1, 2, 6, 7, 8]);
    let b = c.engine(1).stats();
    assert_eq!(b.messages_skipped, 3, "{b:?}");
    assert_eq!(b.peer_rollbacks, 0, "{b:?}");
    assert!(c.node(0).stopped().is_none() && c.node(1).stopped().is_none());
    // Both sides at rest: everything acknowledged, no Skip repeated for ever.
    let a = c.engine(0).peer_status();
    assert_eq!((a[0].outbox, a[0].acked, a[0].next_seq), (0, 8, 9), "{a:?}");
    let skips = c.engine(0).stats().skips_sent;
    assert!(skips >= 1);
    c.run_for(Duration::from_secs(60));
    assert_eq!(
        c.engine(0).stats().skips_sent,
        skips,
        "Skip repeated after its ack"
    );
    // And b restarting now changes nothing either.
    c.crash(1);
    c.restart(1);
    c.request(0, ClientId([7; 16]), 5, &Do::Send(vec![9]));
    c.run_until(Duration::from_secs(30), |c| c.state(1).len() >= 6);
    assert_eq!(*c.state(1), [1, 2, 6, 7, 8, 9]);
}

/// Negative control: without the `Skip` frames the returning peer waits for 3 for ever and
/// never sees 6, 7 or 8.
#[test]
fn without_skip_frames_the_returning_peer_is_jammed() {
    let mut c = forget_while_b_is_down(22, true);
    c.run_for(Duration::from_secs(60));
    assert_eq!(*c.state(1), [1, 2], "jammed at the first withdrawn number");
    assert!(
        c.engine(1).stats().out_of_order_buffered + c.engine(1).stats().out_of_order_dropped > 0
    );
}
