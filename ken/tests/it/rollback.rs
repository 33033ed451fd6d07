//! Lost history detected by peers (issue 13), event by event with exact commands.
//!
//! Every data and ack frame carries its sender's view of the pair: `ack` (what it consumed of
//! ours) and `acked` (what we acknowledged of its messages). A store that rolled back (a
//! deleted `-wal`, an older copy) holds less than its peer knows of it: the frame that shows
//! it makes the engine send the peer a `Reject` (from its unchanged incarnation) and stop
//! with `EngineError::RolledBack` naming the peer and both numbers. A restarted engine probes
//! every peer (an `Ack` with `seq` 1) until it has checked a frame from it, so a quiet pair
//! is checked too. The intact side answers probes, and counts and logs the `Reject`.

use ken::engine::tables::EmptyTables;
use ken::engine::{Command, Engine, EngineConfig, EngineError, RollbackEvidence, PROBE_SEQ};
use ken::store::{OutboxRow, PeerRow, Recovered};
use ken::transport::{Frame, FrameKind};
use ken::{Handler, Incarnation, Input, ProcessId, Seq, Time, Tuning, Turn};

const INC_A: u64 = 0xAAAA;
const INC_B: u64 = 0xBBBB;

/// Consumes messages and does nothing else.
struct Quiet;

impl Handler for Quiet {
    const APP: &'static str = "quiet";
    type State = ();
    type Message = u64;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, _: &mut (), _: &mut Turn<'_, u64, ()>, _: Input<u64, ()>) {}
}

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

fn t(ms: u64) -> Time {
    Time::from_millis(1_000_000 + ms)
}

/// The pair counters of one side's store, towards `peer`.
struct Pair {
    peer: &'static str,
    peer_inc: u64,
    next_seq: u64,
    acked: u64,
    delivered: u64,
}

/// An engine recovered from an existing store (not created now) with the given pairs; its
/// outbox holds the unacknowledged messages `acked + 1 .. next_seq` of each pair.
fn restarted(id: &str, inc: u64, pairs: &[Pair]) -> Engine<Quiet> {
    let rec = Recovered {
        process_id: id.to_string(),
        incarnation: inc,
        created: false,
        turns_committed: 100,
        commits: 50,
        root: Some(ken::store::codec::encode(&())),
        peers: pairs
            .iter()
            .map(|p| PeerRow {
                peer: p.peer.into(),
                incarnation: p.peer_inc,
                next_seq: p.next_seq,
                acked: p.acked,
                delivered: p.delivered,
                forgotten: 0,
            })
            .collect(),
        outbox: pairs
            .iter()
            .flat_map(|p| {
                (p.acked + 1..p.next_seq).map(|seq| OutboxRow {
                    peer: p.peer.into(),
                    seq,
                    payload: ken::store::codec::encode(&seq),
                    created_ms: 1,
                })
            })
            .collect(),
        timers: vec![],
        clients: vec![],
        groups: vec![],
    };
    let peers = ["a", "b", "c"]
        .iter()
        .filter(|p| **p != id)
        .map(|p| pid(p))
        .collect();
    let config = EngineConfig {
        id: pid(id),
        peers,
        tuning: Tuning::default(),
        seed: 1,
    };
    Engine::recover(config, Quiet, rec, Box::new(EmptyTables)).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn frame(
    kind: FrameKind,
    from: &str,
    from_inc: u64,
    to: &str,
    to_inc: u64,
    seq: u64,
    ack: u64,
    acked: u64,
) -> Frame {
    Frame {
        kind,
        auth: ken::transport::Auth::None,
        from: pid(from),
        from_incarnation: Incarnation(from_inc),
        to: pid(to),
        to_incarnation: Incarnation(to_inc),
        seq: Seq(seq),
        ack: Seq(ack),
        acked: Seq(acked),
        payload: if kind == FrameKind::Data {
            ken::store::codec::encode(&seq)
        } else {
            vec![]
        },
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

/// Asserts `cmds` are exactly a `Reject` to `peer` then the fatal rollback error, and
/// returns the reject and the evidence.
fn stopped(cmds: Vec<Command>, peer: &str) -> (Frame, RollbackEvidence) {
    assert_eq!(cmds.len(), 2, "{cmds:#?}");
    let reject = sends(&cmds[..1]).pop().expect("a Reject first");
    assert_eq!(reject.kind, FrameKind::Reject);
    assert_eq!(reject.to, pid(peer));
    match &cmds[1] {
        Command::Fatal {
            error: EngineError::RolledBack { peer: p, evidence },
        } => {
            assert_eq!(p, peer);
            (reject, *evidence)
        }
        other => panic!("expected the rollback error, got {other:?}"),
    }
}

#[test]
fn a_restarted_engine_probes_every_peer_until_it_has_checked_a_frame_from_it() {
    let mut a = restarted(
        "a",
        INC_A,
        &[Pair {
            peer: "b",
            peer_inc: INC_B,
            next_seq: 5,
            acked: 4,
            delivered: 3,
        }],
    );
    a.start(t(0));
    // One probe per peer: b (known: its incarnation, our views) and c (never heard of).
    assert_eq!(
        sends(&a.take_commands()),
        vec![
            frame(FrameKind::Ack, "a", INC_A, "b", INC_B, PROBE_SEQ, 3, 4),
            frame(FrameKind::Ack, "a", INC_A, "c", 0, PROBE_SEQ, 0, 0),
        ]
    );
    let rto = ken::limits::RTO_INITIAL;
    assert_eq!(a.next_deadline(), Some(t(0).plus(rto)));
    a.tick(t(0).plus(rto));
    assert_eq!(sends(&a.take_commands()).len(), 2, "probes repeat");
    // Backoff: the next probe after twice the interval.
    assert_eq!(a.next_deadline(), Some(t(0).plus(rto * 3)));
    // b's answer checks out: b is no longer probed; c still is.
    a.handle_frame(t(1), frame(FrameKind::Ack, "b", INC_B, "a", INC_A, 0, 4, 3));
    assert!(a.take_commands().is_empty());
    a.tick(t(0).plus(rto * 3));
    assert_eq!(
        sends(&a.take_commands()),
        vec![frame(FrameKind::Ack, "a", INC_A, "c", 0, PROBE_SEQ, 0, 0)]
    );
    assert_eq!(a.stats().probes_sent, 5);
    a.check_invariants();
}

#[test]
fn a_fresh_engine_does_not_probe() {
    let mut a = restarted("a", INC_A, &[]);
    // (created: false) -> probes; a created store has nobody to check against.
    a.start(t(0));
    assert_eq!(a.stats().probes_sent, 2);
    let mut rec = Recovered {
        process_id: "b".into(),
        incarnation: INC_B,
        created: true,
        turns_committed: 0,
        commits: 0,
        root: None,
        peers: vec![],
        outbox: vec![],
        timers: vec![],
        clients: vec![],
        groups: vec![],
    };
    rec.created = true;
    let config = EngineConfig {
        id: pid("b"),
        peers: vec![pid("a")],
        tuning: Tuning::default(),
        seed: 1,
    };
    let mut b = Engine::recover(config, Quiet, rec, Box::new(EmptyTables)).unwrap();
    b.start(t(0));
    assert_eq!(b.stats().probes_sent, 0);
    assert!(sends(&b.take_commands()).is_empty());
}

#[test]
fn a_probe_is_answered_with_the_receivers_view_of_the_pair() {
    let mut b = restarted(
        "b",
        INC_B,
        &[Pair {
            peer: "a",
            peer_inc: INC_A,
            next_seq: 10,
            acked: 9,
            delivered: 7,
        }],
    );
    b.start(t(0));
    let _ = b.take_commands();
    b.handle_frame(
        t(1),
        frame(FrameKind::Ack, "a", INC_A, "b", INC_B, PROBE_SEQ, 9, 7),
    );
    assert_eq!(
        sends(&b.take_commands()),
        vec![frame(FrameKind::Ack, "b", INC_B, "a", INC_A, 0, 7, 9)]
    );
    assert_eq!(b.stats().probes_answered, 1);
}

#[test]
fn a_store_that_lost_history_stops_naming_the_peer_and_both_numbers() {
    // The deleted-WAL case: the store went back to next_seq 5 and delivered 3; peer b had
    // consumed our messages up to 8 and holds our acknowledgement of its up to 6.
    let pairs = [Pair {
        peer: "b",
        peer_inc: INC_B,
        next_seq: 5,
        acked: 4,
        delivered: 3,
    }];
    let mut a = restarted("a", INC_A, &pairs);
    a.start(t(0));
    let _ = a.take_commands();
    a.handle_frame(t(1), frame(FrameKind::Ack, "b", INC_B, "a", INC_A, 0, 8, 6));
    let (reject, evidence) = stopped(a.take_commands(), "b");
    assert_eq!(
        evidence,
        RollbackEvidence::AckBeyondIssued { ack: 8, issued: 4 }
    );
    assert_eq!(
        (
            reject.from_incarnation,
            reject.to_incarnation,
            reject.seq,
            reject.ack,
            reject.acked
        ),
        (
            Incarnation(INC_A),
            Incarnation(INC_B),
            Seq(0),
            Seq(3),
            Seq(4)
        )
    );
    let said = String::from_utf8(reject.payload).unwrap();
    assert!(said.contains("acknowledges our message 8"), "{said}");
    let error = EngineError::RolledBack {
        peer: "b".into(),
        evidence,
    }
    .to_string();
    for needle in [
        "peer `b`",
        "message 8",
        "only up to 4",
        "lost committed history",
    ] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    // Stopped for good: no more frames, ticks or sends.
    a.tick(t(100_000));
    a.handle_frame(
        t(2),
        frame(FrameKind::Data, "b", INC_B, "a", INC_A, 4, 4, 3),
    );
    assert!(a.take_commands().is_empty());

    // The other number: b holds our acknowledgement of more than we consumed.
    let mut a = restarted("a", INC_A, &pairs);
    a.start(t(0));
    let _ = a.take_commands();
    a.handle_frame(
        t(1),
        frame(FrameKind::Data, "b", INC_B, "a", INC_A, 7, 4, 6),
    );
    let (_, evidence) = stopped(a.take_commands(), "b");
    assert_eq!(
        evidence,
        RollbackEvidence::AckedBeyondDelivered {
            acked: 6,
            delivered: 3
        }
    );
}

#[test]
fn old_and_reordered_frames_never_look_like_a_rollback() {
    let mut a = restarted(
        "a",
        INC_A,
        &[Pair {
            peer: "b",
            peer_inc: INC_B,
            next_seq: 5,
            acked: 2,
            delivered: 3,
        }],
    );
    a.start(t(0));
    let _ = a.take_commands();
    // Every view at or below ours, in any order: an ack of 4 (our last committed message),
    // then older frames carrying less.
    for (ack, acked) in [(4, 3), (1, 0), (0, 0), (3, 2), (4, 3)] {
        a.handle_frame(
            t(1),
            frame(FrameKind::Ack, "b", INC_B, "a", INC_A, 0, ack, acked),
        );
        for c in a.take_commands() {
            assert!(!matches!(c, Command::Fatal { .. }), "{c:?}");
        }
    }
    assert_eq!(a.peer_status()[0].acked, 4);
    a.check_invariants();
}

/// Runs two engines against each other: delivers every frame each sends to the other and
/// completes every commit, until nothing moves or `steps` rounds passed. Returns the fatal
/// errors seen, per side.
fn exchange(
    a: &mut Engine<Quiet>,
    b: &mut Engine<Quiet>,
    now: Time,
    steps: usize,
) -> (Vec<EngineError>, Vec<EngineError>) {
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    let mut to_a: Vec<Frame> = Vec::new();
    let mut to_b: Vec<Frame> = Vec::new();
    for _ in 0..steps {
        for (engine, out, fatal) in [(&mut *a, &mut to_b, &mut fa), (&mut *b, &mut to_a, &mut fb)] {
            for c in engine.take_commands() {
                match c {
                    Command::Send { frame, .. } => out.push(frame),
                    Command::Commit { id, .. } => engine.commit_done(now, id),
                    Command::Fatal { error } => fatal.push(error),
                    _ => {}
                }
            }
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for f in std::mem::take(&mut to_a) {
            a.handle_frame(now, f);
        }
        for f in std::mem::take(&mut to_b) {
            b.handle_frame(now, f);
        }
    }
    (fa, fb)
}

/// The pingpong case of issue 13: the rolled-back side sat at seq 330 while its peer had
/// delivered 390, more than its outbox ever held. Before, the peer's acknowledgements were
/// dropped as bogus and the pair deadlocked without a word; now the rolled-back side stops
/// naming the peer and both numbers, and the peer counts and logs it.
#[test]
fn pingpong_rollback_where_the_peer_delivered_more_than_the_outbox_ever_held_stops_both_sides_know()
{
    // a's store was replaced by an older copy: next_seq 331 (message 330 unacknowledged),
    // delivered 329 of b's.
    let mut a = restarted(
        "a",
        INC_A,
        &[Pair {
            peer: "b",
            peer_inc: INC_B,
            next_seq: 331,
            acked: 329,
            delivered: 329,
        }],
    );
    // b is intact: it consumed a's messages up to 390 and a acknowledged b's up to 389; b's
    // 390th message waits for its acknowledgement.
    let mut b = restarted(
        "b",
        INC_B,
        &[Pair {
            peer: "a",
            peer_inc: INC_A,
            next_seq: 391,
            acked: 389,
            delivered: 390,
        }],
    );
    b.start(t(0));
    a.start(t(0));
    let (fa, fb) = exchange(&mut a, &mut b, t(1), 20);
    assert!(fb.is_empty(), "the intact side runs on: {fb:?}");
    assert_eq!(fa.len(), 1, "{fa:?}");
    let EngineError::RolledBack { peer, evidence } = &fa[0] else {
        panic!("{:?}", fa[0]);
    };
    assert_eq!(peer, "b");
    assert_eq!(
        *evidence,
        RollbackEvidence::AckBeyondIssued {
            ack: 390,
            issued: 330
        }
    );
    assert_eq!(b.stats().peer_rollbacks, 1);
    assert!(b.stats().probes_answered >= 1);
}

#[test]
fn the_intact_side_tells_a_rollback_reject_from_an_incarnation_reject() {
    let mut b = restarted(
        "b",
        INC_B,
        &[Pair {
            peer: "a",
            peer_inc: INC_A,
            next_seq: 3,
            acked: 2,
            delivered: 5,
        }],
    );
    b.start(t(0));
    let _ = b.take_commands();
    // From a's known incarnation: a rolled back and stopped.
    let mut r = frame(FrameKind::Reject, "a", INC_A, "b", INC_B, 0, 2, 2);
    r.payload = b"a stopped".to_vec();
    b.handle_frame(t(1), r);
    assert!(b.take_commands().is_empty());
    assert_eq!(
        (b.stats().peer_rollbacks, b.stats().rejects_received),
        (1, 1)
    );
    // From a new incarnation of a (its store was wiped): the old meaning.
    b.handle_frame(
        t(2),
        frame(FrameKind::Reject, "a", INC_A + 1, "b", INC_B, 4, 0, 0),
    );
    assert_eq!(
        (b.stats().peer_rollbacks, b.stats().rejects_received),
        (1, 2)
    );
}

// ---- Two real processes (`ken::run` on threads, real stores) ----

mod run {
    use std::net::{SocketAddr, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::time::Duration;

    use ken::engine::{EngineError, RollbackEvidence};
    use ken::store::{lock_path, wal_path, OpenError, Reader};
    use ken::{Config, Exit, Handler, Input, ProcessId, RunError, Turn};
    use serde::{Deserialize, Serialize};

    /// A pingpong pair: `a` sends `Ping(1)` at start and `Ping(n + 1)` on `Pong(n)` until
    /// `goal`; `b` answers every `Ping(n)` with `Pong(n)`. Each finishes once it has seen
    /// `goal` rounds (and every outbox is empty).
    struct Player {
        goal: u64,
    }

    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Pong(u64),
    }

    impl Handler for Player {
        const APP: &'static str = "player";
        type State = u64;
        type Message = Msg;
        type Request = ();
        type Reply = ();
        fn on_turn(&self, rounds: &mut u64, turn: &mut Turn<'_, Msg, ()>, input: Input<Msg, ()>) {
            let b = ProcessId::new("b").unwrap();
            match input {
                Input::Start if turn.id().as_str() == "a" => turn.send(&b, &Msg::Ping(1)).unwrap(),
                Input::Message {
                    from,
                    message: Msg::Ping(n),
                    ..
                } => {
                    *rounds = n;
                    turn.send(&from, &Msg::Pong(n)).unwrap();
                }
                Input::Message {
                    from,
                    message: Msg::Pong(n),
                    ..
                } => {
                    *rounds = n;
                    if n < self.goal {
                        turn.send(&from, &Msg::Ping(n + 1)).unwrap();
                    }
                }
                _ => {}
            }
        }
        fn finished(&self, rounds: &u64) -> Option<String> {
            (*rounds >= self.goal).then(|| format!("{rounds}"))
        }
    }

    fn free_addr() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    struct Pair {
        dir: tempfile::TempDir,
        addrs: [SocketAddr; 2],
    }

    impl Pair {
        fn store(&self, id: &str) -> PathBuf {
            self.dir.path().join(format!("{id}.ken"))
        }

        /// Runs `id` with `goal` on a thread; its result arrives on the channel.
        fn spawn(&self, id: &str, goal: u64) -> mpsc::Receiver<Result<Exit, RunError>> {
            let (me, other, other_id) = if id == "a" {
                (self.addrs[0], self.addrs[1], "b")
            } else {
                (self.addrs[1], self.addrs[0], "a")
            };
            let mut config = Config::new(ProcessId::new(id).unwrap(), me, self.store(id));
            config
                .peers
                .insert(ProcessId::new(other_id).unwrap(), other);
            config.finish_linger = Duration::from_millis(3000);
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(ken::run(config, Player { goal }));
            });
            rx
        }
    }

    /// Waits for a process's end, failing (a hang) after `within`.
    fn result(
        rx: &mpsc::Receiver<Result<Exit, RunError>>,
        within: Duration,
    ) -> Result<Exit, RunError> {
        rx.recv_timeout(within)
            .expect("the process neither finished nor stopped: it hangs")
    }

    /// Plays `rounds` rounds to the end (both finish); on the way, once `a` has played
    /// `copy_at` rounds, copies a's three files while it runs (a snapshot, as a backup tool
    /// or a file system snapshot would take one). Returns the pair and the copy.
    fn played(rounds: u64, copy_at: u64) -> (Pair, tempfile::TempDir) {
        let pair = Pair {
            dir: tempfile::tempdir().unwrap(),
            addrs: [free_addr(), free_addr()],
        };
        let (b, a) = (pair.spawn("b", rounds), pair.spawn("a", rounds));
        let old = tempfile::tempdir().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let root = Reader::open(&pair.store("a"))
                .ok()
                .and_then(|r| r.root().ok().flatten());
            let played: u64 = root.map_or(0, |r| ken::store::codec::decode(&r).unwrap());
            if played >= copy_at {
                // The lock file first: it never witnesses more than the WAL copied after it.
                let a = pair.store("a");
                for f in [lock_path(&a), a.clone(), wal_path(&a)] {
                    std::fs::copy(&f, old.path().join(f.file_name().unwrap())).unwrap();
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a never reached round {copy_at}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for (rx, who) in [(&a, "a"), (&b, "b")] {
            match result(rx, Duration::from_secs(30)) {
                Ok(Exit::Finished { report }) => assert_eq!(report, rounds.to_string(), "{who}"),
                other => panic!("{who}: {other:?}"),
            }
        }
        (pair, old)
    }

    /// Puts the old copy of a's store in place, its WAL deleted (`with_lock`: the old lock
    /// file too, as a restored backup of every file would be). The copy's commits are first
    /// checkpointed into its database (a Reader-only open would not; a raw connection does),
    /// so that deleting its WAL loses nothing of the copy itself.
    fn roll_back(pair: &Pair, old: &Path, with_lock: bool) -> (u64, u64, u64) {
        // The first run's store may still be closing on its own thread after its result
        // came back; its close would checkpoint the newer WAL over the copy put in place
        // below (seen once in CI: the "rolled back" store opened at its final state). Wait
        // until it is closed: the owner lock is free again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match ken::store::Store::open(&pair.store("a"), "a") {
                Ok(store) => {
                    drop(store);
                    break;
                }
                Err(OpenError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("a's store did not become free: {e}"),
            }
        }
        let old_db = old.join("a.ken");
        drop(rusqlite_free_checkpoint(&old_db));
        let meta = Reader::open(&old_db).unwrap();
        let issued = meta
            .peers()
            .unwrap()
            .iter()
            .find(|p| p.peer == "b")
            .map_or(0, |p| p.next_seq - 1);
        let turns = meta.meta().unwrap().turns_committed;
        let copy_round: u64 = meta
            .root()
            .unwrap()
            .map_or(0, |r| ken::store::codec::decode(&r).unwrap());
        drop(meta);
        let a = pair.store("a");
        std::fs::copy(&old_db, &a).unwrap();
        let _ = std::fs::remove_file(wal_path(&a));
        let _ = std::fs::remove_file(a.with_extension("ken-shm"));
        if with_lock {
            std::fs::copy(old.join("a.ken.lock"), lock_path(&a)).unwrap();
        }
        (issued, turns, copy_round)
    }

    /// `played` then `roll_back`, again while the copy is not older than the end. Copying
    /// a live store's files one after the other is not a point-in-time snapshot: a WAL
    /// reset between the database copy and the WAL copy can put later commits (even the
    /// final ones) in the "old" copy (seen in CI: the rolled-back store opened at round 30
    /// of 30). A backup tool has the same problem; this test needs an older copy, so it
    /// checks that it got one. Returns the pair, the copy's issued count to `b` and turns.
    fn older_copy(rounds: u64, copy_at: u64, with_lock: bool) -> (Pair, u64, u64) {
        for attempt in 1..=5 {
            let (pair, old) = played(rounds, copy_at);
            let (issued, turns, copy_round) = roll_back(&pair, old.path(), with_lock);
            if copy_round < rounds {
                return (pair, issued, turns);
            }
            eprintln!("attempt {attempt}: the copy holds round {copy_round} of {rounds}; again");
        }
        panic!("five copies of a live store were all at its final state");
    }

    /// Opens the copy as its owner once (recovering its WAL) and closes it cleanly, which
    /// checkpoints every commit into the database file.
    fn rusqlite_free_checkpoint(path: &Path) -> ken::store::Store {
        let (store, _) = ken::store::Store::open(path, "a").unwrap();
        store
    }

    /// The store of `a` replaced by an older copy of itself, its WAL deleted and its old lock
    /// file restored with it (so nothing local can tell): `a` restarts at about round 15
    /// while `b` has played 40. `a` stops with the rollback error naming `b` and both
    /// numbers, and never runs a turn; `b` runs on.
    #[test]
    fn a_store_replaced_by_an_older_copy_stops_with_the_error_never_hangs() {
        let (pair, issued, turns_old) = older_copy(40, 15, true);
        assert!((15..40).contains(&issued), "{issued}");
        // b (intact, finished) lingers and answers; a restarts from its old copy.
        let b = pair.spawn("b", 40);
        let a = pair.spawn("a", 40);
        match result(&a, Duration::from_secs(10)) {
            Err(RunError::Engine(EngineError::RolledBack { peer, evidence })) => {
                assert_eq!(peer, "b");
                assert_eq!(
                    evidence,
                    RollbackEvidence::AckBeyondIssued { ack: 40, issued }
                );
            }
            other => panic!("expected the rollback error, got {other:?}"),
        }
        let after = Reader::open(&pair.store("a")).unwrap().meta().unwrap();
        assert_eq!(after.turns_committed, turns_old, "a never ran a turn");
        assert!(matches!(
            result(&b, Duration::from_secs(10)),
            Ok(Exit::Finished { .. })
        ));
    }

    /// The same with the lock file kept (only the database replaced and the WAL deleted):
    /// the lock file's commit witness refuses the store at open, before any peer is asked.
    #[test]
    fn a_deleted_wal_with_the_lock_file_kept_is_refused_at_open() {
        let (pair, _, _) = older_copy(30, 10, false);
        match result(&pair.spawn("a", 30), Duration::from_secs(10)) {
            Err(RunError::Open(OpenError::HistoryLost {
                commits, witnessed, ..
            })) => assert!(commits < witnessed, "{commits} < {witnessed}"),
            other => panic!("expected HistoryLost, got {other:?}"),
        }
    }
}
