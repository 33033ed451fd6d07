//! Exact-command tests of the sans-I/O engine: for each event, the exact list of commands.

use std::time::Duration;

use ken::engine::tables::EmptyTables;
use ken::engine::Command;
use ken::engine::{Engine, EngineConfig};
use ken::store::{Batch, OutboxRow, PeerRow, Recovered, TimerRow};
use ken::transport::{Frame, FrameKind};
use ken::{Handler, Incarnation, Input, ProcessId, Seq, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const INC_A: u64 = 0xAAAA;
const INC_B: u64 = 0xBBBB;

/// A test handler: optionally sends 1 to `b` at start; on a message `v`, records it and, if
/// `reply`, answers `v + 1`; on a timer, emits its name.
struct Echo {
    hit_first: bool,
    reply: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct EchoState {
    got: Vec<(String, u64)>,
}

impl Handler for Echo {
    const APP: &'static str = "echo";
    type State = EchoState;
    type Message = u64;
    type Request = Vec<u8>;
    type Reply = Vec<u8>;

    fn on_turn(
        &self,
        state: &mut EchoState,
        turn: &mut Turn<'_, u64, Vec<u8>>,
        input: Input<u64, Vec<u8>>,
    ) {
        match input {
            Input::Start if self.hit_first => turn.send(&pid("b"), &1).unwrap(),
            Input::Message { from, message, .. } => {
                state.got.push((from.to_string(), message));
                if self.reply {
                    turn.send(&from, &(message + 1)).unwrap();
                }
            }
            Input::Timer { name, .. } => turn.emit(format!("timer {name}")),
            Input::Request { request, .. } => {
                state.got.push(("client".into(), request.len() as u64));
                let mut r = request;
                r.reverse();
                turn.reply(&r).unwrap();
            }
            _ => {}
        }
    }
}

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

fn recovered(id: &str, inc: u64) -> Recovered {
    Recovered {
        process_id: id.to_string(),
        incarnation: inc,
        created: true,
        turns_committed: 0,
        commits: 0,
        root: None,
        peers: vec![],
        outbox: vec![],
        timers: vec![],
        clients: vec![],
        groups: vec![],
    }
}

fn engine_with(id: &str, inc: u64, handler: Echo, rec: Recovered, tuning: Tuning) -> Engine<Echo> {
    let peers = ["a", "b", "c"]
        .iter()
        .filter(|p| **p != id)
        .map(|p| pid(p))
        .collect();
    let config = EngineConfig {
        id: pid(id),
        peers,
        tuning,
        seed: 7,
    };
    let _ = inc;
    Engine::recover(config, handler, rec, Box::new(EmptyTables)).unwrap()
}

/// Engine `a` (hits first) and `b` (replies), both fresh.
fn fresh(id: &str, handler: Echo) -> Engine<Echo> {
    let inc = if id == "a" { INC_A } else { INC_B };
    engine_with(id, inc, handler, recovered(id, inc), Tuning::default())
}

fn t(ms: u64) -> Time {
    Time::from_millis(1_000_000 + ms)
}

fn data(from: &str, from_inc: u64, to: &str, to_inc: u64, seq: u64, ack: u64, v: u64) -> Frame {
    Frame {
        kind: FrameKind::Data,
        auth: ken::transport::Auth::None,
        from: pid(from),
        from_incarnation: Incarnation(from_inc),
        to: pid(to),
        to_incarnation: Incarnation(to_inc),
        seq: Seq(seq),
        ack: Seq(ack),
        acked: Seq(0),
        payload: ken::store::wrap_payload(1, &ken::store::codec::encode(&v)),
    }
}

fn ack(from: &str, from_inc: u64, to: &str, to_inc: u64, ack: u64) -> Frame {
    Frame {
        kind: FrameKind::Ack,
        auth: ken::transport::Auth::None,
        from: pid(from),
        from_incarnation: Incarnation(from_inc),
        to: pid(to),
        to_incarnation: Incarnation(to_inc),
        seq: Seq(0),
        ack: Seq(ack),
        acked: Seq(0),
        payload: vec![],
    }
}

/// The single Commit among `cmds`, asserting there is exactly one command.
fn only_commit(cmds: Vec<Command>) -> (u64, Batch) {
    assert_eq!(cmds.len(), 1, "expected exactly one command: {cmds:#?}");
    match cmds.into_iter().next().unwrap() {
        Command::Commit { id, batch } => (id, batch),
        other => panic!("expected Commit, got {other:?}"),
    }
}

fn sends(cmds: &[Command]) -> Vec<Frame> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Send { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn start_commits_before_it_sends() {
    let mut a = fresh(
        "a",
        Echo {
            hit_first: true,
            reply: false,
        },
    );
    a.start(t(0));
    let (id, batch) = only_commit(a.take_commands());
    assert_eq!(id, 1);
    assert_eq!(batch.turns, 1);
    assert_eq!(
        batch.outbox_appends,
        vec![OutboxRow {
            peer: "b".into(),
            seq: 1,
            payload: ken::store::wrap_payload(1, &ken::store::codec::encode(&1u64)),
            created_ms: t(0).as_millis(),
        }]
    );
    assert_eq!(
        batch.peers,
        vec![PeerRow {
            peer: "b".into(),
            incarnation: 0,
            next_seq: 2,
            acked: 0,
            delivered: 0,
            forgotten: 0,
        }]
    );
    assert!(batch.root.is_some(), "the first turn writes the root state");
    assert_eq!(batch.turn_log.len(), 1);
    assert_eq!(batch.turn_log[0].input_kind, "start");
    // Nothing leaves before the commit is durable, however much time passes.
    a.tick(t(5000));
    assert!(a.take_commands().is_empty());
    a.commit_done(t(10), 1);
    let cmds = a.take_commands();
    assert_eq!(cmds.len(), 1, "{cmds:#?}");
    assert_eq!(sends(&cmds), vec![data("a", INC_A, "b", 0, 1, 0, 1)]);
    a.check_invariants();
}

#[test]
fn delivery_is_acknowledged_after_commit_and_piggybacked_on_replies() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);
    assert!(b.take_commands().is_empty());

    b.handle_frame(t(2), data("a", INC_A, "b", 0, 1, 0, 1));
    let (id, batch) = only_commit(b.take_commands());
    assert_eq!(batch.turns, 1);
    assert_eq!(batch.peers[0].delivered, 1);
    assert_eq!(batch.peers[0].incarnation, INC_A);
    b.commit_done(t(3), id);
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 1)]
    );
    assert_eq!(b.state().got, vec![("a".to_string(), 1)]);

    // A replying receiver piggybacks the acknowledgement on its data frame: no bare ack.
    let mut r = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: true,
        },
    );
    r.start(t(0));
    let (id, _) = only_commit(r.take_commands());
    r.commit_done(t(1), id);
    r.handle_frame(t(2), data("a", INC_A, "b", 0, 1, 0, 1));
    let (id, _) = only_commit(r.take_commands());
    r.commit_done(t(3), id);
    assert_eq!(
        sends(&r.take_commands()),
        vec![data("b", INC_B, "a", INC_A, 1, 1, 2)]
    );
    r.check_invariants();
}

#[test]
fn duplicates_are_dropped_and_reacknowledged_only_once_committed() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);

    b.handle_frame(t(2), data("a", INC_A, "b", 0, 1, 0, 1));
    let (id, _) = only_commit(b.take_commands());
    // Duplicate while the consuming turn is not yet durable: dropped, no ack yet.
    b.handle_frame(t(3), data("a", INC_A, "b", 0, 1, 0, 1));
    assert!(b.take_commands().is_empty());
    b.commit_done(t(4), id);
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 1)]
    );
    // Duplicate after: re-acknowledged at once, nothing committed, handler not called.
    b.handle_frame(t(5), data("a", INC_A, "b", 0, 1, 0, 1));
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 1)]
    );
    assert_eq!(b.state().got.len(), 1);
    assert_eq!(b.stats().duplicates_dropped, 2);
}

#[test]
fn a_gap_is_held_and_filled_in_order() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);

    b.handle_frame(t(2), data("a", INC_A, "b", 0, 3, 0, 30));
    b.handle_frame(t(2), data("a", INC_A, "b", 0, 2, 0, 20));
    assert!(
        b.take_commands().is_empty(),
        "nothing is delivered across a gap"
    );
    b.handle_frame(t(3), data("a", INC_A, "b", 0, 1, 0, 10));
    let (id, batch) = only_commit(b.take_commands());
    assert_eq!(batch.turns, 3, "1, then the buffered 2 and 3");
    let seqs: Vec<u64> = batch.turn_log.iter().map(|e| e.input_seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    b.commit_done(t(4), id);
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 3)]
    );
    let got: Vec<u64> = b.state().got.iter().map(|(_, v)| *v).collect();
    assert_eq!(got, vec![10, 20, 30]);
}

#[test]
fn pipelined_group_commit_batches_turns_behind_the_committing_batch() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id1, _) = only_commit(b.take_commands());
    // While batch 1 commits, three messages arrive: they run, but nothing commits or leaves.
    for s in 1..=3 {
        b.handle_frame(t(1), data("a", INC_A, "b", 0, s, 0, s));
        assert!(b.take_commands().is_empty());
    }
    assert_eq!(b.state().got.len(), 3, "turns ran ahead of the commit");
    b.commit_done(t(2), id1);
    let (id2, batch) = only_commit(b.take_commands());
    assert_eq!(id2, 2);
    assert_eq!(batch.turns, 3);
    b.commit_done(t(3), id2);
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 3)]
    );
}

#[test]
fn backpressure_when_both_batches_are_full() {
    let tuning = Tuning {
        batch_turns_max: 2,
        ..Tuning::default()
    };
    let mut b = engine_with(
        "b",
        INC_B,
        Echo {
            hit_first: false,
            reply: false,
        },
        recovered("b", INC_B),
        tuning,
    );
    b.start(t(0));
    let _ = only_commit(b.take_commands());
    b.handle_frame(t(1), data("a", INC_A, "b", 0, 1, 0, 1));
    assert!(b.accepting_input());
    b.handle_frame(t(1), data("a", INC_A, "b", 0, 2, 0, 2));
    assert!(!b.accepting_input(), "committing + a full filling batch");
    b.handle_frame(t(1), data("a", INC_A, "b", 0, 3, 0, 3));
    assert_eq!(b.stats().backpressure_dropped, 1);
    assert_eq!(b.state().got.len(), 2);
    b.commit_done(t(2), 1);
    assert!(b.accepting_input());
}

#[test]
fn acknowledgement_clears_the_outbox_and_the_retransmit_timer() {
    let mut a = fresh(
        "a",
        Echo {
            hit_first: true,
            reply: false,
        },
    );
    a.start(t(0));
    let (id, _) = only_commit(a.take_commands());
    a.commit_done(t(1), id);
    let _ = a.take_commands();
    assert_eq!(a.next_deadline(), Some(t(1).plus(ken::limits::RTO_INITIAL)));

    a.handle_frame(t(5), ack("b", INC_B, "a", INC_A, 1));
    let (id, batch) = only_commit(a.take_commands());
    assert_eq!(batch.outbox_acks.len(), 1);
    assert_eq!(batch.outbox_acks[0].up_to, 1);
    assert_eq!(batch.peers[0].acked, 1);
    assert_eq!(batch.peers[0].incarnation, INC_B);
    assert_eq!(batch.turns, 0);
    assert_eq!(a.next_deadline(), None);
    a.commit_done(t(6), id);
    assert!(a.take_commands().is_empty());
    assert_eq!(a.srtt(&pid("b")), Some(Duration::from_millis(4)));
    a.check_invariants();
}

/// An acknowledgement of a message that was never committed (so never transmitted) can
/// only come from a peer that saw it in a history this store no longer has: the engine
/// tells the peer and stops (it used to count and ignore it). See `rollback.rs`.
#[test]
fn an_ack_of_a_message_never_committed_stops_the_engine() {
    let mut a = fresh(
        "a",
        Echo {
            hit_first: true,
            reply: false,
        },
    );
    a.start(t(0));
    let _ = a.take_commands();
    // Ack of seq 1 before the batch holding it is durable: it was never transmitted.
    a.handle_frame(t(1), ack("b", INC_B, "a", INC_A, 1));
    let cmds = a.take_commands();
    assert_eq!(cmds.len(), 2, "{cmds:#?}");
    assert_eq!(sends(&cmds)[0].kind, FrameKind::Reject);
    match &cmds[1] {
        Command::Fatal {
            error:
                ken::engine::EngineError::RolledBack {
                    peer,
                    evidence: ken::engine::RollbackEvidence::AckBeyondIssued { ack: 1, issued: 0 },
                },
        } => assert_eq!(peer, "b"),
        other => panic!("expected the rollback error, got {other:?}"),
    }
    // Stopped: nothing more is released, even once the batch is durable.
    a.commit_done(t(2), 1);
    assert!(a.take_commands().is_empty());
}

#[test]
fn retransmission_backs_off_exponentially_up_to_the_ceiling() {
    let mut a = fresh(
        "a",
        Echo {
            hit_first: true,
            reply: false,
        },
    );
    a.start(t(0));
    let (id, _) = only_commit(a.take_commands());
    a.commit_done(t(0), id);
    let first = sends(&a.take_commands());
    assert_eq!(first.len(), 1);

    let rto = ken::limits::RTO_INITIAL;
    let mut now = t(0);
    let mut expected_gap = rto;
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let deadline = a.next_deadline().expect("a retransmission is scheduled");
        gaps.push(deadline.since(now));
        // One microsecond early: nothing.
        a.tick(Time(deadline.0 - 1));
        assert!(a.take_commands().is_empty());
        a.tick(deadline);
        assert_eq!(sends(&a.take_commands()), first, "the same frame again");
        now = deadline;
    }
    for g in &gaps {
        assert_eq!(*g, expected_gap.min(ken::limits::RTO_MAX));
        expected_gap *= 2;
    }
    assert_eq!(*gaps.last().unwrap(), ken::limits::RTO_MAX);
    assert_eq!(a.stats().retransmits, 10);
}

#[test]
fn recovery_retransmits_the_outbox_and_keeps_counters() {
    // `a` committed message 1 and 2 to b (b acked 1), consumed 5 from b, has a timer.
    let mut rec = recovered("a", INC_A);
    rec.created = false;
    rec.turns_committed = 9;
    rec.commits = 4;
    rec.root = Some(ken::store::codec::encode(&EchoState::default()));
    rec.peers = vec![PeerRow {
        peer: "b".into(),
        incarnation: INC_B,
        next_seq: 3,
        acked: 1,
        delivered: 5,
        forgotten: 0,
    }];
    rec.outbox = vec![OutboxRow {
        peer: "b".into(),
        seq: 2,
        payload: ken::store::wrap_payload(1, &ken::store::codec::encode(&2u64)),
        created_ms: 1,
    }];
    rec.timers = vec![TimerRow {
        name: "tick".into(),
        due_ms: t(100).as_millis(),
        payload: vec![],
    }];
    let mut a = engine_with(
        "a",
        INC_A,
        Echo {
            hit_first: true,
            reply: false,
        },
        rec,
        Tuning::default(),
    );
    a.start(t(0));
    // No Start turn for a recovered process; every peer is probed for its view of the pair
    // (`rollback.rs`), the outbox goes out at once, nothing to commit. Frames carry the
    // recovered counters: ack 5 (delivered), acked 1.
    let cmds = a.take_commands();
    let with_acked = |mut f: Frame, acked: u64| {
        f.acked = Seq(acked);
        f
    };
    let probe = |to: &str, to_inc: u64, ack_: u64, acked: u64| {
        let mut f = with_acked(ack("a", INC_A, to, to_inc, ack_), acked);
        f.seq = Seq(ken::engine::PROBE_SEQ);
        f
    };
    assert_eq!(
        sends(&cmds),
        vec![
            probe("b", INC_B, 5, 1),
            probe("c", 0, 0, 0),
            with_acked(data("a", INC_A, "b", INC_B, 2, 5, 2), 1)
        ]
    );
    assert_eq!(cmds.len(), 3);
    // A duplicate of 5 is re-acknowledged at once (it is durable).
    a.handle_frame(t(1), data("b", INC_B, "a", INC_A, 5, 0, 9));
    assert_eq!(
        sends(&a.take_commands()),
        vec![with_acked(ack("a", INC_A, "b", INC_B, 5), 1)]
    );
    // The durable timer fires as a turn that emits after its commit.
    a.tick(t(100));
    let (id, batch) = only_commit(a.take_commands());
    assert_eq!(batch.turn_log[0].turn, 10, "turn numbers continue");
    a.commit_done(t(101), id);
    let cmds = a.take_commands();
    assert!(
        matches!(&cmds[..], [Command::Emit { line, .. }] if line == "timer tick"),
        "{cmds:#?}"
    );
    a.check_invariants();
}

#[test]
fn frames_for_another_incarnation_are_rejected_not_delivered() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);
    // Addressed to an old incarnation of b (its store was replaced).
    b.handle_frame(t(2), data("a", INC_A, "b", 0xDEAD, 1, 0, 1));
    let cmds = b.take_commands();
    let out = sends(&cmds);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, FrameKind::Reject);
    assert_eq!(out[0].to, pid("a"));
    assert!(b.state().got.is_empty());
    assert_eq!(b.stats().stale_incarnation_frames, 1);

    // Known peer incarnation, then a frame from a new incarnation of that peer (its store
    // was replaced): not delivered; refused with a Reject that names the reason.
    b.handle_frame(t(3), data("a", INC_A, "b", INC_B, 1, 0, 1));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(4), id);
    let _ = b.take_commands();
    b.handle_frame(t(5), data("a", 0x1234, "b", INC_B, 2, 0, 2));
    let cmds = b.take_commands();
    let out = sends(&cmds);
    assert_eq!(out.len(), 1, "{cmds:#?}");
    assert_eq!(out[0].kind, FrameKind::Reject);
    assert_eq!(out[0].seq.0, ken::engine::REJECT_NOT_ADMITTED);
    assert_eq!(out[0].to_incarnation.0, 0x1234);
    assert!(String::from_utf8_lossy(&out[0].payload).contains("ken admit"));
    assert_eq!(cmds.len(), 1, "nothing committed: {cmds:#?}");
    assert_eq!(b.stats().foreign_incarnation_frames, 1);
    assert_eq!(b.state().got.len(), 1);
}

#[test]
fn undecodable_messages_are_consumed_logged_and_acknowledged() {
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);
    let mut junk = data("a", INC_A, "b", 0, 1, 0, 0);
    junk.payload = vec![0xff, 0xff, 0xff];
    // 2 waits for the gap; the undecodable 1 fills it; both are consumed in one batch.
    b.handle_frame(t(2), data("a", INC_A, "b", 0, 2, 0, 22));
    b.handle_frame(t(2), junk);
    let (id, batch) = only_commit(b.take_commands());
    assert_eq!(batch.turn_log[0].input_kind, "dead_letter");
    assert_eq!(batch.turn_log[0].input_seq, 1);
    // Kept whole in the dead-letter table, with its error (never silently dropped).
    let letter = batch
        .table_writes
        .iter()
        .find(|w| w.table == ken::living::DEAD_LETTERS_TABLE)
        .expect("a dead letter");
    let letter: ken::living::DeadLetter =
        ken::store::codec::decode(letter.value.as_ref().unwrap()).unwrap();
    assert_eq!((letter.peer.as_str(), letter.seq), ("a", 1));
    assert_eq!(letter.version, 0, "shorter than its envelope");
    assert_eq!(batch.turn_log[1].input_kind, "message");
    b.commit_done(t(3), id);
    assert_eq!(
        sends(&b.take_commands()),
        vec![ack("b", INC_B, "a", INC_A, 2)]
    );
    assert_eq!(
        b.state().got,
        vec![("a".to_string(), 22)],
        "the pair did not stall"
    );
    assert_eq!(b.stats().undecodable_messages, 1);
    assert_eq!(b.stats().dead_letters, 1);
}

/// Compiled only with the test-only feature (on in `cargo test --workspace`, where the test
/// crates turn it on; `cargo test -p ken --features unsafe-release-before-commit` alone).
#[cfg(feature = "unsafe-release-before-commit")]
#[test]
fn release_before_commit_switch_breaks_output_commit() {
    // The negative control: with the test-only switch, the frame leaves before the commit.
    let tuning = Tuning {
        release_before_commit: true,
        ..Tuning::default()
    };
    let mut a = engine_with(
        "a",
        INC_A,
        Echo {
            hit_first: true,
            reply: false,
        },
        recovered("a", INC_A),
        tuning,
    );
    a.start(t(0));
    let cmds = a.take_commands();
    assert_eq!(sends(&cmds).len(), 1, "{cmds:#?}");
    assert!(cmds.iter().any(|c| matches!(c, Command::Commit { .. })));
    let send_pos = cmds
        .iter()
        .position(|c| matches!(c, Command::Send { .. }))
        .unwrap();
    let commit_pos = cmds
        .iter()
        .position(|c| matches!(c, Command::Commit { .. }))
        .unwrap();
    assert!(
        send_pos < commit_pos,
        "released before the commit was even requested"
    );
}

#[test]
fn finished_waits_for_commit_and_acknowledgements() {
    struct Once;
    impl Handler for Once {
        const APP: &'static str = "once";
        type State = u64;
        type Message = u64;
        type Request = ();
        type Reply = ();
        fn on_turn(&self, s: &mut u64, turn: &mut Turn<'_, u64>, input: Input<u64>) {
            if let Input::Start = input {
                *s = 1;
                turn.send(&pid("b"), &1).unwrap();
            }
        }
        fn finished(&self, s: &u64) -> Option<String> {
            (*s == 1).then(|| "done".to_string())
        }
    }
    let config = EngineConfig {
        id: pid("a"),
        peers: vec![pid("b")],
        tuning: Tuning::default(),
        seed: 1,
    };
    let mut a =
        Engine::recover(config, Once, recovered("a", INC_A), Box::new(EmptyTables)).unwrap();
    a.start(t(0));
    let (id, _) = only_commit(a.take_commands());
    a.commit_done(t(1), id);
    let cmds = a.take_commands();
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Finished { .. })),
        "outbox not empty"
    );
    a.handle_frame(t(2), ack("b", INC_B, "a", INC_A, 1));
    let (id, _) = only_commit(a.take_commands());
    a.commit_done(t(3), id);
    let cmds = a.take_commands();
    assert!(
        matches!(&cmds[..], [Command::Finished { report }] if report == "done"),
        "{cmds:#?}"
    );
}

fn request(client: ken::ClientId, n: u64, body: &[u8]) -> Frame {
    Frame {
        kind: FrameKind::ClientRequest,
        auth: ken::transport::Auth::None,
        from: client.to_process_id(),
        from_incarnation: Incarnation(0),
        to: pid("whoever"),
        to_incarnation: Incarnation(0),
        seq: Seq(n),
        ack: Seq(0),
        acked: Seq(0),
        payload: envelope(body),
    }
}

/// A request's payload: `body` as the handler's request, first sent at `t(0)`.
fn envelope(body: &[u8]) -> Vec<u8> {
    ken::store::codec::encode(&ken::client::RequestEnvelope {
        sent_ms: t(0).as_millis(),
        request: ken::store::codec::encode(&body.to_vec()),
        padding: Vec::new(),
    })
}

/// The reply body of an applied request whose reply is `bytes` (the echo's `Vec<u8>`).
fn ok(bytes: &[u8]) -> ken::client::ReplyBody {
    ken::client::ReplyBody::Ok(ken::store::codec::encode(&bytes.to_vec()))
}

fn reply_of(cmds: &[Command]) -> Vec<(u64, ken::client::ReplyBody)> {
    sends(cmds)
        .into_iter()
        .filter(|f| f.kind == FrameKind::ClientReply)
        .map(|f| (f.seq.0, ken::store::codec::decode(&f.payload).unwrap()))
        .collect()
}

#[test]
fn client_requests_apply_once_and_replies_leave_after_commit() {
    use ken::client::ReplyBody;
    let client = ken::ClientId([7; 16]);
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);

    b.handle_frame(t(2), request(client, 1, b"abc"));
    let (id, batch) = only_commit(b.take_commands());
    assert_eq!(batch.clients.len(), 1, "the reply is cached with the turn");
    // A retry before the commit: nothing (the reply follows the commit).
    b.handle_frame(t(3), request(client, 1, b"abc"));
    assert!(b.take_commands().is_empty());
    b.commit_done(t(4), id);
    let cmds = b.take_commands();
    assert_eq!(reply_of(&cmds), vec![(1, ok(b"cba"))]);
    assert_eq!(sends(&cmds)[0].to, client.to_process_id());
    // A retry after: the cached reply, no turn, no commit.
    b.handle_frame(t(5), request(client, 1, b"abc"));
    assert_eq!(reply_of(&b.take_commands()), vec![(1, ok(b"cba"))]);
    assert_eq!(b.state().got.len(), 1, "applied once");
    // The next request applies; then the old one is too old.
    b.handle_frame(t(6), request(client, 2, b"xy"));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(7), id);
    assert_eq!(reply_of(&b.take_commands()), vec![(2, ok(b"yx"))]);
    b.handle_frame(t(8), request(client, 1, b"abc"));
    assert_eq!(
        reply_of(&b.take_commands()),
        vec![(1, ReplyBody::TooOld { last: 2 })]
    );
    assert_eq!(b.state().got.len(), 2);
    assert_eq!(b.stats().requests_applied, 2);
    assert_eq!(b.stats().requests_replayed, 1);
    assert_eq!(b.stats().requests_too_old, 1);
}

#[test]
fn a_request_that_does_not_decode_is_answered_bad_request_and_not_applied() {
    use ken::client::ReplyBody;
    let client = ken::ClientId([8; 16]);
    let mut b = fresh(
        "b",
        Echo {
            hit_first: false,
            reply: false,
        },
    );
    b.start(t(0));
    let (id, _) = only_commit(b.take_commands());
    b.commit_done(t(1), id);
    // A varint length far beyond the payload: not a `Vec<u8>`.
    let mut frame = request(client, 1, b"");
    frame.payload = ken::store::codec::encode(&ken::client::RequestEnvelope {
        sent_ms: t(0).as_millis(),
        request: vec![0xfc, 0xff, 0xff, 0xff, 0x7f],
        padding: Vec::new(),
    });
    b.handle_frame(t(2), frame);
    let cmds = b.take_commands();
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Commit { .. })),
        "no turn ran: {cmds:#?}"
    );
    match reply_of(&cmds).as_slice() {
        [(1, ReplyBody::BadRequest(why))] => assert!(why.contains("decode"), "{why}"),
        other => panic!("expected one BadRequest reply, got {other:?}"),
    }
    assert!(b.state().got.is_empty());
    assert_eq!(b.stats().requests_undecodable, 1);
    assert_eq!(b.stats().requests_applied, 0);
    // Not cached: the same number with a good request is applied.
    b.handle_frame(t(3), request(client, 1, b"ok"));
    assert!(b
        .take_commands()
        .iter()
        .any(|c| matches!(c, Command::Commit { .. })));
}

#[test]
fn the_reply_cache_survives_recovery() {
    use ken::client::ReplyBody;
    let client = ken::ClientId([9; 16]);
    let mut rec = recovered("b", INC_B);
    rec.created = false;
    rec.turns_committed = 3;
    rec.root = Some(ken::store::codec::encode(&EchoState::default()));
    rec.clients = vec![ken::store::ClientRow {
        client: client.0,
        request_no: 5,
        reply: ken::store::codec::encode(&ok(b"five")),
        updated_ms: 1,
    }];
    let mut b = engine_with(
        "b",
        INC_B,
        Echo {
            hit_first: false,
            reply: false,
        },
        rec,
        Tuning::default(),
    );
    b.start(t(0));
    // Only the probes of a restarted process (`rollback.rs`), one per peer.
    let probes = sends(&b.take_commands());
    assert_eq!(probes.len(), 2);
    assert!(probes
        .iter()
        .all(|f| f.kind == FrameKind::Ack && f.seq == Seq(ken::engine::PROBE_SEQ)));
    b.handle_frame(t(1), request(client, 5, b"again"));
    assert_eq!(reply_of(&b.take_commands()), vec![(5, ok(b"five"))]);
    b.handle_frame(t(1), request(client, 4, b"older"));
    assert_eq!(
        reply_of(&b.take_commands()),
        vec![(4, ReplyBody::TooOld { last: 5 })]
    );
    assert!(b.state().got.is_empty(), "nothing applied twice");
}

/// Table operations driven by messages, for the scan test.
struct Tables;

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Put(String),
    Del(String),
    Scan(String, u32),
    ScanAfter(String, String, u32),
}

impl Handler for Tables {
    const APP: &'static str = "tables";
    type State = Vec<String>;
    type Message = Vec<Op>;
    type Request = ();
    type Reply = ();
    fn on_turn(
        &self,
        state: &mut Vec<String>,
        turn: &mut Turn<'_, Vec<Op>>,
        input: Input<Vec<Op>>,
    ) {
        let Input::Message { message, .. } = input else {
            return;
        };
        for op in message {
            match op {
                Op::Put(k) => turn.table("t").put(k.as_bytes(), &1u8),
                Op::Del(k) => turn.table("t").delete(k.as_bytes()),
                Op::ScanAfter(prefix, after, limit) => {
                    *state = turn
                        .table("t")
                        .scan_after::<u8>(prefix.as_bytes(), Some(after.as_bytes()), limit)
                        .into_iter()
                        .map(|(k, _)| String::from_utf8(k).unwrap())
                        .collect();
                }
                Op::Scan(prefix, limit) => {
                    *state = turn
                        .table("t")
                        .scan::<u8>(prefix.as_bytes(), limit)
                        .into_iter()
                        .map(|(k, _)| String::from_utf8(k).unwrap())
                        .collect();
                }
            }
        }
    }
}

/// Committed rows served from a map.
struct MapTables(std::collections::BTreeMap<Vec<u8>, Vec<u8>>);

impl ken::engine::tables::TableSource for MapTables {
    fn get(&mut self, _table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ken::store::ReadError> {
        Ok(self.0.get(key).cloned())
    }
    fn scan(
        &mut self,
        _table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ken::store::ReadError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[test]
fn scans_merge_committed_rows_uncommitted_writes_and_the_turns_own() {
    let committed = ["a1", "a2", "a3", "b1"]
        .iter()
        .map(|k| (k.as_bytes().to_vec(), ken::store::codec::encode(&1u8)))
        .collect();
    let config = EngineConfig {
        id: pid("b"),
        peers: vec![pid("a")],
        tuning: Tuning::default(),
        seed: 1,
    };
    let mut rec = recovered("b", INC_B);
    rec.turns_committed = 1;
    let mut b = Engine::recover(config, Tables, rec, Box::new(MapTables(committed))).unwrap();
    b.start(t(0));
    let msg = |seq: u64, ops: Vec<Op>| Frame {
        payload: ken::store::wrap_payload(1, &ken::store::codec::encode(&ops)),
        ..data("a", INC_A, "b", 0, seq, 0, 0)
    };
    // Turn 1 (its batch commits), turn 2 stays uncommitted behind it, turn 3 scans.
    b.handle_frame(t(1), msg(1, vec![Op::Put("zz".into())]));
    b.handle_frame(
        t(1),
        msg(2, vec![Op::Del("a2".into()), Op::Put("a4".into())]),
    );
    b.handle_frame(
        t(1),
        msg(
            3,
            vec![
                Op::Put("a0".into()),
                Op::Del("a3".into()),
                Op::Scan("a".into(), 10),
            ],
        ),
    );
    assert_eq!(b.state(), &vec!["a0", "a1", "a4"]);
    b.handle_frame(t(1), msg(4, vec![Op::Scan("a".into(), 2)]));
    assert_eq!(b.state(), &vec!["a0", "a1"]);
    b.handle_frame(t(1), msg(5, vec![Op::Scan("b".into(), 10)]));
    assert_eq!(b.state(), &vec!["b1"]);
    // Paging from a start key, over committed rows, uncommitted writes and absent keys.
    let after =
        |seq, after: &str, limit| msg(seq, vec![Op::ScanAfter("a".into(), after.into(), limit)]);
    b.handle_frame(t(1), after(6, "a0", 10));
    assert_eq!(b.state(), &vec!["a1", "a4"]);
    b.handle_frame(t(1), after(7, "a0", 1));
    assert_eq!(b.state(), &vec!["a1"]);
    b.handle_frame(t(1), after(8, "a15", 10));
    assert_eq!(b.state(), &vec!["a4"]);
    b.handle_frame(t(1), after(9, "a4", 10));
    assert!(b.state().is_empty());
    b.handle_frame(t(1), after(10, "", 2));
    assert_eq!(b.state(), &vec!["a0", "a1"]);
}
