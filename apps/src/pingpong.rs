//! Pingpong: two processes volley a counter up to `count`.
//!
//! The hitter (not `serve`) sends 1 at its start; whoever receives `v < count` answers
//! `v + 1`. Each process records every value it receives in the table `received` and counts
//! gaps (a value other than the one expected next) and repeats (a value seen before). With
//! exactly-once FIFO delivery both stay 0 whatever crashes happen. A process is finished
//! once it has received or sent `count` and everything it sent is acknowledged; it then
//! reports `{"id":..,"received":K,"gaps":0,"repeats":0}`.

use ken::{Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

/// The pingpong handler.
#[derive(Debug, Clone)]
pub struct PingPong {
    pub id: ProcessId,
    pub peer: ProcessId,
    pub count: u64,
    /// The server waits for the first ball; the hitter sends it.
    pub serve: bool,
}

/// Pingpong's durable root state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Distinct values received.
    pub received: u64,
    /// The last value received (0 before any).
    pub last_received: u64,
    pub gaps: u64,
    pub repeats: u64,
    /// The highest value sent.
    pub last_sent: u64,
}

/// The ball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Ball(u64),
}

/// The final report line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub received: u64,
    pub gaps: u64,
    pub repeats: u64,
}

/// Table of received values: key = value (u64 big-endian), value = turn number.
pub const RECEIVED_TABLE: &str = "received";

/// Balls a player receives in a volley to `count`: the server (`serve`) gets the odd values,
/// the hitter the even ones. A finished player's [`Report::received`] must say this.
pub fn expected_received(count: u64, serve: bool) -> u64 {
    if serve {
        count.div_ceil(2)
    } else {
        count / 2
    }
}

impl PingPong {
    fn first_expected(&self) -> u64 {
        if self.serve {
            1
        } else {
            2
        }
    }

    fn hit(&self, state: &mut State, turn: &mut Turn<'_, Msg>, v: u64) {
        turn.send(&self.peer, &Msg::Ball(v))
            .expect("the peer is in the address book and a ball is small");
        state.last_sent = v;
    }
}

impl Handler for PingPong {
    const APP: &'static str = "pingpong";
    type State = State;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut State, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        match input {
            Input::Start if !self.serve && self.count > 0 => self.hit(state, turn, 1),
            Input::Message {
                message: Msg::Ball(v),
                ..
            } => {
                let key = v.to_be_bytes();
                let turn_no = turn.turn_number();
                let mut table = turn.table(RECEIVED_TABLE);
                if table.contains(key) {
                    state.repeats += 1;
                    return;
                }
                table.put(key, &turn_no);
                let expected = if state.last_received == 0 {
                    self.first_expected()
                } else {
                    state.last_received + 2
                };
                if v != expected {
                    state.gaps += 1;
                }
                state.received += 1;
                state.last_received = state.last_received.max(v);
                if v < self.count {
                    self.hit(state, turn, v + 1);
                }
            }
            _ => {}
        }
    }

    fn finished(&self, state: &State) -> Option<String> {
        let done = state.last_received >= self.count || state.last_sent >= self.count;
        done.then(|| {
            serde_json::to_string(&Report {
                id: self.id.to_string(),
                received: state.received,
                gaps: state.gaps,
                repeats: state.repeats,
            })
            .expect("report serializes")
        })
    }
}
