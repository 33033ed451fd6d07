//! Tally: every process sends `Add(n)` to its peers in turn, `rounds` times, and keeps two
//! tables: what it sent to each peer and what it received from each. Ken makes every
//! message arrive exactly once, whatever crashes, so for every pair of processes the
//! sender's `sent` total equals the receiver's `received` total.

use std::time::Duration;

use ken::{Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

/// Table: peer id -> total of the `Add`s sent to it (u64).
pub const SENT: &str = "sent";
/// Table: peer id -> total of the `Add`s received from it (u64).
pub const RECEIVED: &str = "received";

pub struct Tally {
    /// The other processes, in a fixed order.
    pub peers: Vec<ProcessId>,
    /// How many `Add`s to send in all.
    pub rounds: u64,
    /// Time between two sends.
    pub every: Duration,
}

#[derive(Default, Serialize, Deserialize)]
pub struct State {
    /// `Add`s sent so far.
    pub round: u64,
}

#[derive(Serialize, Deserialize)]
pub enum Msg {
    Add(u64),
}

/// What a client may ask.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Totals,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub rounds: u64,
    pub sent: u64,
    pub received: u64,
}

impl Handler for Tally {
    const APP: &'static str = "tally";
    type State = State;
    type Message = Msg;
    type Request = Request;
    type Reply = Totals;

    fn on_turn(
        &self,
        state: &mut State,
        turn: &mut Turn<'_, Msg, Totals>,
        input: Input<Msg, Request>,
    ) {
        match input {
            Input::Start => turn.set_timer("tick", self.every),
            Input::Timer { .. } if state.round < self.rounds => {
                state.round += 1;
                let peer = &self.peers[state.round as usize % self.peers.len()];
                let sent: u64 = turn.table(SENT).get(peer.as_str()).unwrap_or(0);
                turn.table(SENT).put(peer.as_str(), &(sent + state.round));
                turn.send(peer, &Msg::Add(state.round))
                    .expect("every peer is in the address book");
                turn.set_timer("tick", self.every);
            }
            Input::Message {
                from,
                message: Msg::Add(n),
                ..
            } => {
                let got: u64 = turn.table(RECEIVED).get(from.as_str()).unwrap_or(0);
                turn.table(RECEIVED).put(from.as_str(), &(got + n));
            }
            Input::Request {
                request: Request::Totals,
                ..
            } => {
                let sent: u64 = turn
                    .table(SENT)
                    .scan::<u64>("", 1000)
                    .iter()
                    .map(|r| r.1)
                    .sum();
                let received: u64 = turn
                    .table(RECEIVED)
                    .scan::<u64>("", 1000)
                    .iter()
                    .map(|r| r.1)
                    .sum();
                let totals = Totals {
                    rounds: state.round,
                    sent,
                    received,
                };
                turn.reply(&totals).expect("a small reply");
            }
            _ => {}
        }
    }
}
