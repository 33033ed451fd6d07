//! FUSE through the engine, engines in memory (a commit completes at once): the parts that
//! only show at scale (frames that must split, lists that cover ranges, digests kept change
//! by change, checked by [`Engine::check_invariants`]), a recovered member's first tick, and
//! the handler giving up on a peer after a notification. The machine alone is tested in
//! `fuse_machine.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use ken::engine::fuse::{FuseMsg, GroupRecord, LIST_GROUPS_PER_FRAME};
use ken::engine::tables::EmptyTables;
use ken::engine::{Command, Engine, EngineConfig};
use ken::store::{GroupRow, Recovered};
use ken::transport::{Frame, FrameKind};
use ken::{GroupId, GroupState, Handler, Input, ProcessId, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const T0_MS: u64 = 1_700_000_000_000;

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

/// `a` creates `groups` groups of every member at start and signals every other one of
/// them at its `signal` timer; everyone records what it hears.
struct Member {
    others: Vec<ProcessId>,
    groups: usize,
    signal_after: Duration,
}

#[derive(Default, Serialize, Deserialize)]
struct MemberState {
    created: Vec<GroupId>,
    /// (group, when in µs), in the order heard.
    heard: Vec<(GroupId, u64)>,
}

impl Handler for Member {
    const APP: &'static str = "member";
    type State = MemberState;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut MemberState, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                for _ in 0..self.groups {
                    s.created.push(turn.fuse_create(&self.others).unwrap());
                }
                turn.set_timer("signal", self.signal_after);
            }
            Input::Timer { .. } => {
                for g in s.created.iter().step_by(2) {
                    turn.fuse_signal(*g);
                }
            }
            Input::FuseFailure { group } => s.heard.push((group, turn.now().as_micros())),
            _ => {}
        }
    }
}

fn recovered(id: &str, all: &[&str], groups: Vec<GroupRow>) -> Recovered {
    Recovered {
        process_id: id.to_string(),
        incarnation: 1 + all.iter().position(|p| *p == id).unwrap() as u64,
        created: true,
        turns_committed: 0,
        commits: 0,
        root: None,
        peers: Vec::new(),
        outbox: Vec::new(),
        timers: Vec::new(),
        clients: Vec::new(),
        groups,
    }
}

fn config(id: &str, all: &[&str]) -> EngineConfig {
    EngineConfig {
        id: pid(id),
        peers: all.iter().filter(|p| **p != id).map(|p| pid(p)).collect(),
        tuning: Tuning::default(),
        seed: 7,
    }
}

fn engine(id: &str, all: &[&str], groups: usize) -> Engine<Member> {
    let config = config(id, all);
    let handler = Member {
        others: config.peers.clone(),
        groups,
        signal_after: Duration::from_secs(5),
    };
    let rec = recovered(id, all, Vec::new());
    Engine::recover(config, handler, rec, Box::new(EmptyTables)).unwrap()
}

/// Runs the engines for `ms` of virtual time (5 ms steps), delivering every frame unless
/// `drop` says otherwise, checking every engine's invariants (FUSE's per-peer counts and
/// digests recomputed from the groups among them) every 100 ms; returns the largest
/// datagram seen.
fn run(
    engines: &mut [Engine<Member>],
    now: &mut Time,
    ms: u64,
    drop: &dyn Fn(&Frame) -> bool,
) -> usize {
    let mut largest = 0;
    for step in 0..ms / 5 {
        *now = now.plus(Duration::from_millis(5));
        let mut net = Vec::new();
        for e in engines.iter_mut() {
            e.tick(*now);
            loop {
                let cmds = e.take_commands();
                if cmds.is_empty() {
                    break;
                }
                for cmd in cmds {
                    match cmd {
                        Command::Commit { id, .. } => e.commit_done(*now, id),
                        Command::Send { frame, .. } => net.push(frame),
                        Command::Fatal { error } => panic!("{error}"),
                        _ => {}
                    }
                }
            }
        }
        for frame in net {
            let bytes = frame.encode().expect("every FUSE frame fits a datagram");
            largest = largest.max(bytes.len());
            if drop(&frame) {
                continue;
            }
            let to = engines.iter_mut().find(|e| *e.id() == frame.to).unwrap();
            to.handle_frame(*now, Frame::decode(&bytes).unwrap());
        }
        if step % 20 == 19 {
            for e in engines.iter() {
                e.check_invariants();
            }
        }
    }
    largest
}

fn durable_live(e: &Engine<Member>) -> usize {
    e.groups()
        .iter()
        .filter(|g| g.durable == Some(GroupState::Live))
        .count()
}

/// 7,000 groups: creation, then `a` fails half of them with every `Fail` it sends lost.
/// The others learn it from `a`'s list, which takes three frames each covering its own
/// range of ids: exactly the signalled half fails, within a few heartbeats (not by
/// silence: `a` keeps heartbeating for the other half).
#[test]
fn lists_longer_than_a_datagram_fail_exactly_the_groups_missing_from_them() {
    const GROUPS: usize = 7_000;
    const { assert!(GROUPS > 2 * LIST_GROUPS_PER_FRAME) };
    let all = ["a", "b", "c"];
    let mut engines: Vec<Engine<Member>> = all.iter().map(|id| engine(id, &all, GROUPS)).collect();
    let mut now = Time::from_millis(T0_MS);
    for e in engines.iter_mut() {
        e.start(now);
    }
    let keep_all = |_: &Frame| false;
    let largest = run(&mut engines, &mut now, 1_000, &keep_all);
    for e in &engines {
        assert_eq!(durable_live(e), GROUPS, "{} after creation", e.id());
    }
    assert!(largest <= ken::transport::frame::MAX_FRAME_BYTES);
    let quiet_from = engines[1].stats().fuse_list_exchanges;
    run(&mut engines, &mut now, 1_000, &keep_all);
    assert_eq!(
        engines[1].stats().fuse_list_exchanges,
        quiet_from,
        "digests agree once every group is live: no list exchange"
    );

    // `a`'s signal timer fires at +5 s; from +4 s on its direct `Fail`s are all lost.
    let lost_fail = |f: &Frame| {
        f.kind == FrameKind::Fuse
            && f.from.as_str() == "a"
            && matches!(FuseMsg::decode(&f.payload), Ok(FuseMsg::Fail { .. }))
    };
    run(&mut engines, &mut now, 2_000, &lost_fail);
    for e in &engines {
        assert!(e.state().heard.is_empty(), "{} before the signal", e.id());
    }
    assert_eq!(
        engines[1].stats().fuse_list_exchanges,
        quiet_from,
        "no list exchange at b before the signal"
    );
    // The signal turn runs at the first tick at or after its due time.
    let signal_at = Time::from_millis(T0_MS).plus(Duration::from_secs(5));
    assert!(now < signal_at);
    run(&mut engines, &mut now, 2_000, &lost_fail);
    let signalled: BTreeSet<GroupId> = engines[0]
        .state()
        .created
        .iter()
        .step_by(2)
        .copied()
        .collect();
    assert_eq!(signalled.len(), GROUPS / 2);
    let heard_ids = |e: &Engine<Member>| -> BTreeSet<GroupId> {
        e.state().heard.iter().map(|(g, _)| *g).collect()
    };
    assert!(
        heard_ids(&engines[0]) == signalled,
        "a hears its own signal"
    );
    let t = Tuning::default();
    for e in &engines[1..] {
        let heard = heard_ids(e);
        assert_eq!(
            heard.len(),
            e.state().heard.len(),
            "{}: exactly once",
            e.id()
        );
        assert_eq!(
            heard.len(),
            signalled.len(),
            "{}: as many as signalled",
            e.id()
        );
        assert!(
            heard == signalled,
            "{}: exactly the signalled groups",
            e.id()
        );
        assert_eq!(
            durable_live(e),
            GROUPS / 2,
            "{}: the rest stay live",
            e.id()
        );
        assert!(e.stats().fuse_list_exchanges > quiet_from);
    }
    // By lists, within a few heartbeats: long before silence (T_fail) could act, and `a`
    // never went silent anyway.
    let lists_by = signal_at.plus(4 * t.fuse_heartbeat);
    assert!(lists_by < signal_at.plus(t.fuse_t_fail));
    for e in &engines[1..] {
        let last = Time(e.state().heard.iter().map(|(_, at)| *at).max().unwrap());
        assert!(
            last <= lists_by,
            "{}: last notification {:?} after the signal",
            e.id(),
            last.since(signal_at)
        );
    }
}

/// Commits `e`'s batches at once until it has nothing more to say; returns the rest.
fn settle<H: Handler>(e: &mut Engine<H>, now: Time) -> Vec<Command> {
    let mut rest = Vec::new();
    loop {
        let cmds = e.take_commands();
        if cmds.is_empty() {
            return rest;
        }
        for c in cmds {
            match c {
                Command::Commit { id, .. } => e.commit_done(now, id),
                Command::Fatal { error } => panic!("{error}"),
                other => rest.push(other),
            }
        }
    }
}

/// A restart is masked only if the restarted member speaks up at once: its first tick
/// after recovery, due immediately, sends a heartbeat to every member of its groups.
#[test]
fn a_recovered_member_heartbeats_every_peer_at_once() {
    let all = ["a", "b", "c"];
    let row = GroupRow {
        group: [7; 16],
        record: ken::store::codec::encode(&GroupRecord {
            creator: "a".into(),
            members: all.iter().map(|m| m.to_string()).collect(),
            state: GroupState::Live,
            notified: false,
            created_ms: T0_MS,
        }),
    };
    let config = config("b", &all);
    let handler = Member {
        others: config.peers.clone(),
        groups: 0,
        signal_after: Duration::from_secs(5),
    };
    let rec = recovered("b", &all, vec![row]);
    let mut e = Engine::recover(config, handler, rec, Box::new(EmptyTables)).unwrap();
    let now = Time::from_millis(T0_MS);
    e.start(now);
    // (The store is fresh: its start turn commits first.)
    settle(&mut e, now);
    assert!(
        e.next_deadline().is_some_and(|d| d <= now),
        "a tick is due at once"
    );
    e.tick(now);
    let to: Vec<String> = e
        .take_commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Send { to, frame, .. } if frame.kind == FrameKind::Heartbeat => {
                Some(to.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(to, ["a", "c"]);
}

/// `a` sends `b` a message per tick that `b` never acknowledges; when `a` hears that their
/// group failed, it gives up on `b` (`forget_peer`).
struct GivesUp;

#[derive(Default, Serialize, Deserialize)]
struct GivesUpState {
    group: Option<GroupId>,
    gave_up: bool,
}

impl Handler for GivesUp {
    const APP: &'static str = "gives-up";
    type State = GivesUpState;
    type Message = u32;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut GivesUpState, turn: &mut Turn<'_, u32>, input: Input<u32>) {
        match input {
            Input::Start => {
                s.group = Some(turn.fuse_create(&[pid("b")]).unwrap());
                turn.send(&pid("b"), &1).unwrap();
                turn.send(&pid("b"), &2).unwrap();
            }
            Input::FuseFailure { group } => {
                assert_eq!(Some(group), s.group);
                s.gave_up = true;
                turn.forget_peer(&pid("b"));
            }
            _ => {}
        }
    }
}

/// The notification turn's `forget_peer` commits with it: the batch deletes `b`'s outbox,
/// the outbox is empty and nothing is retransmitted to `b` afterwards; `b` is told to skip
/// the withdrawn messages with a `Skip`, repeated with backoff (b never answers).
#[test]
fn a_notified_handler_forgets_the_peer_with_its_notification_turn() {
    let all = ["a", "b"];
    let rec = recovered("a", &all, Vec::new());
    let mut e = Engine::recover(config("a", &all), GivesUp, rec, Box::new(EmptyTables)).unwrap();
    let mut now = Time::from_millis(T0_MS);
    e.start(now);
    settle(&mut e, now);
    let outbox = |e: &Engine<GivesUp>| e.peer_status()[0].outbox;
    assert_eq!(outbox(&e), 2, "b never acknowledges");
    // `b` never confirms: creation times out.
    let timeout = Tuning::default().fuse_create_timeout;
    let mut forget_batch = None;
    while !e.state().gave_up {
        now = now.plus(Duration::from_millis(50));
        assert!(
            now.since(Time::from_millis(T0_MS)) <= 2 * timeout,
            "no notification"
        );
        e.tick(now);
        for c in e.take_commands() {
            if let Command::Commit { id, batch } = c {
                if batch.peers.iter().any(|p| p.forgotten > 0) {
                    forget_batch = Some(batch.clone());
                }
                e.commit_done(now, id);
            }
        }
        settle(&mut e, now);
    }
    let batch = forget_batch.expect("the notification turn's batch");
    // b's messages 1 and 2 withdrawn: deleted from the outbox, the mark in b's row, and b's
    // real acknowledgement (none) kept.
    assert_eq!(batch.outbox_acks.len(), 1);
    assert_eq!(
        (
            batch.outbox_acks[0].peer.as_str(),
            batch.outbox_acks[0].up_to
        ),
        ("b", 2)
    );
    let row = batch.peers.iter().find(|p| p.peer == "b").unwrap();
    assert_eq!((row.acked, row.forgotten, row.next_seq), (0, 2, 3));
    assert_eq!(
        batch.turn_log.last().map(|t| t.input_kind.as_str()),
        Some("fuse")
    );
    assert_eq!(outbox(&e), 0);
    assert_eq!(e.groups()[0].durable, Some(GroupState::Failed));
    let rexmits = e.stats().retransmits;
    let mut skips = Vec::new();
    for _ in 0..100 {
        now = now.plus(Duration::from_millis(100));
        e.tick(now);
        let sent = settle(&mut e, now);
        skips.extend(sent.iter().filter_map(|c| match c {
            Command::Send { frame, .. } if frame.kind == FrameKind::Skip => Some(frame.seq.0),
            _ => None,
        }));
        let data: Vec<Command> = sent
            .into_iter()
            .filter(|c| matches!(c, Command::Send { frame, .. } if frame.kind == FrameKind::Data))
            .collect();
        assert!(data.is_empty(), "sent to a forgotten peer: {data:?}");
    }
    assert_eq!(e.stats().retransmits, rexmits);
    assert!(
        skips.len() >= 3 && skips.iter().all(|&s| s == 2),
        "{skips:?}"
    );
    assert!(skips.len() < 40, "Skip backs off: {}", skips.len());
}
