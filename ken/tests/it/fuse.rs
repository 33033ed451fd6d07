//! FUSE groups in a small deterministic cluster: real stores, virtual time, a network that
//! can drop or partition, crashes that lose everything uncommitted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ken::engine::Command;
use ken::engine::{Engine, EngineConfig};
use ken::store::{Batch, Store};
use ken::transport::Frame;
use ken::{GroupId, Handler, Input, ProcessId, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

/// `a` creates one group of every member at its start; everyone records notifications.
struct Member {
    all: Vec<ProcessId>,
    /// `a` signals its group this long after its start.
    signal_after: Option<Duration>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MemberState {
    group: Option<GroupId>,
    notified: Vec<GroupId>,
    signal: bool,
}

impl Handler for Member {
    type State = MemberState;
    type Message = bool;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut MemberState, turn: &mut Turn<'_, bool>, input: Input<bool>) {
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                let others: Vec<ProcessId> = self
                    .all
                    .iter()
                    .filter(|p| *p != turn.id())
                    .cloned()
                    .collect();
                s.group = Some(turn.fuse_create(&others).unwrap());
                if let Some(after) = self.signal_after {
                    turn.set_timer("signal", after);
                }
            }
            Input::Timer { .. } => turn.fuse_signal(s.group.unwrap()),
            Input::FuseFailure { group } => s.notified.push(group),
            _ => {}
        }
    }
}

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

struct Node {
    id: ProcessId,
    path: std::path::PathBuf,
    engine: Option<Engine<Member>>,
    store: Option<Store>,
    /// Notifications heard, from committed state (root), over all lives.
    notified_at: BTreeMap<GroupId, Time>,
}

struct Cluster {
    now: Time,
    nodes: Vec<Node>,
    net: Vec<(usize, Frame)>,
    /// Frames from these nodes are dropped.
    mute: BTreeSet<usize>,
    /// Frames between these two sides are dropped.
    partition: Option<(BTreeSet<usize>, BTreeSet<usize>)>,
    /// Random loss: (generator, probability).
    loss: Option<(rand_chacha::ChaCha8Rng, f64)>,
    tuning: Tuning,
    signal_after: Option<Duration>,
    _dir: tempfile::TempDir,
}

const T0: u64 = 1_700_000_000_000;

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with(n, None)
    }

    fn with(n: usize, signal_after: Option<Duration>) -> Cluster {
        // tmpfs when there is one: these runs commit a lot and model crashes themselves.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let ids: Vec<ProcessId> = (0..n)
            .map(|i| pid(&((b'a' + i as u8) as char).to_string()))
            .collect();
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: id.clone(),
                path: dir.path().join(format!("{id}.db")),
                engine: None,
                store: None,
                notified_at: BTreeMap::new(),
            })
            .collect();
        let mut c = Cluster {
            now: Time::from_millis(T0),
            nodes,
            net: Vec::new(),
            mute: BTreeSet::new(),
            partition: None,
            loss: None,
            tuning: Tuning::default(),
            signal_after,
            _dir: dir,
        };
        for i in 0..n {
            c.boot(i);
        }
        c
    }

    fn ids(&self) -> Vec<ProcessId> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    fn boot(&mut self, i: usize) {
        let ids = self.ids();
        let node = &mut self.nodes[i];
        let (store, rec) = Store::open(&node.path, node.id.as_str()).unwrap();
        let reader = ken::store::Reader::open(&node.path).unwrap();
        let config = EngineConfig {
            id: node.id.clone(),
            peers: ids.iter().filter(|p| **p != node.id).cloned().collect(),
            tuning: self.tuning.clone(),
            seed: i as u64,
        };
        let handler = Member {
            all: ids,
            signal_after: self.signal_after,
        };
        let mut engine = Engine::recover(config, handler, rec, Box::new(reader)).unwrap();
        engine.start(self.now);
        node.engine = Some(engine);
        node.store = Some(store);
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].engine = None;
        self.nodes[i].store = None;
    }

    /// Executes node `i`'s commands; commits complete at once.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(engine) = self.nodes[i].engine.as_mut() else {
                return;
            };
            let cmds = engine.take_commands();
            if cmds.is_empty() {
                return;
            }
            engine.check_invariants();
            for cmd in cmds {
                match cmd {
                    Command::Commit { id, batch } => self.commit(i, id, &batch),
                    Command::Send { to, frame, .. } => {
                        let to = self.nodes.iter().position(|n| n.id == to).unwrap();
                        let cut = self.mute.contains(&i)
                            || self.partition.as_ref().is_some_and(|(l, r)| {
                                (l.contains(&i) && r.contains(&to))
                                    || (r.contains(&i) && l.contains(&to))
                            });
                        let lost = self.loss.as_mut().is_some_and(|(rng, p)| {
                            use rand::Rng;
                            rng.gen_bool(*p)
                        });
                        if !cut && !lost {
                            self.net.push((to, frame));
                        }
                    }
                    Command::Fatal { error } => panic!("{} stopped: {error}", self.nodes[i].id),
                    _ => {}
                }
            }
        }
    }

    fn commit(&mut self, i: usize, id: u64, batch: &Batch) {
        let node = &mut self.nodes[i];
        node.store.as_mut().unwrap().commit(batch).unwrap();
        if let Some(root) = &batch.root {
            let s: MemberState = ken::store::codec::decode(root).unwrap();
            for g in s.notified {
                node.notified_at.entry(g).or_insert(self.now);
            }
        }
        node.engine.as_mut().unwrap().commit_done(self.now, id);
    }

    /// Advances virtual time by `ms`, 5 ms at a time, delivering everything.
    fn run(&mut self, ms: u64) {
        let end = self.now.plus(Duration::from_millis(ms));
        while self.now < end {
            while !self.net.is_empty() {
                let (to, frame) = self.net.remove(0);
                if let Some(e) = self.nodes[to].engine.as_mut() {
                    e.handle_frame(self.now, frame);
                    self.drain(to);
                }
            }
            self.now = self.now.plus(Duration::from_millis(5));
            for i in 0..self.nodes.len() {
                if let Some(e) = self.nodes[i].engine.as_mut() {
                    e.tick(self.now);
                    self.drain(i);
                }
            }
        }
    }

    fn group(&self) -> GroupId {
        let e = self.nodes[0].engine.as_ref().unwrap();
        e.state().group.unwrap()
    }

    /// Notifications heard by the handler of node `i` (committed, current life's view).
    fn heard(&self, i: usize) -> Vec<GroupId> {
        self.nodes[i]
            .engine
            .as_ref()
            .map(|e| e.state().notified.clone())
            .unwrap_or_default()
    }

    fn all_live(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.engine.as_ref().is_some_and(|e| {
                e.groups()
                    .iter()
                    .any(|g| g.durable == Some(ken::GroupState::Live))
            })
        })
    }
}

fn t_fail() -> Duration {
    Tuning::default().fuse_t_fail
}

fn heartbeat() -> Duration {
    Tuning::default().fuse_heartbeat
}

fn established(n: usize) -> Cluster {
    let mut c = Cluster::new(n);
    c.run(100);
    assert!(c.all_live(), "the group is established everywhere");
    c
}

#[test]
fn a_group_lives_quietly_without_failures() {
    let mut c = established(4);
    c.run(20_000);
    for i in 0..4 {
        assert!(c.heard(i).is_empty(), "{i} heard a failure");
    }
}

#[test]
fn a_permanent_kill_notifies_every_other_member_within_the_bound_exactly_once() {
    let mut c = established(4);
    let g = c.group();
    c.crash(3);
    let killed_at = c.now;
    c.run(10_000);
    let bound = t_fail() + 2 * heartbeat();
    for i in 0..3 {
        assert_eq!(c.heard(i), vec![g], "node {i} hears it exactly once");
        let at = c.nodes[i].notified_at[&g];
        let took = at.since(killed_at);
        assert!(
            took <= bound,
            "node {i} notified after {took:?}, bound {bound:?}"
        );
    }
}

#[test]
fn crash_restarts_shorter_than_t_fail_are_masked_and_longer_ones_are_not() {
    for (factor, expect_failure) in [(0.2, false), (0.5, false), (0.9, false), (1.5, true)] {
        let mut c = established(3);
        let g = c.group();
        c.crash(2);
        let down = (t_fail().as_millis() as f64 * factor) as u64;
        c.run(down);
        c.boot(2);
        c.run(10_000);
        for i in 0..3 {
            let heard = c.heard(i);
            if expect_failure {
                assert_eq!(heard, vec![g], "x{factor}: node {i}");
            } else {
                assert!(heard.is_empty(), "x{factor}: node {i} heard {heard:?}");
            }
        }
    }
}

#[test]
fn a_signal_reaches_everyone_even_if_all_the_signallers_datagrams_are_lost() {
    let mut c = Cluster::with(3, Some(Duration::from_secs(3)));
    c.run(100);
    assert!(c.all_live());
    let g = c.group();
    // a's timer signals the group at +3 s; just before, everything `a` sends starts being lost.
    c.run(2_850);
    assert!(c.heard(1).is_empty());
    c.mute.insert(0);
    c.run(50);
    let signalled_at = c.now;
    c.run(10_000);
    let bound = t_fail() + 2 * heartbeat() + Duration::from_millis(100);
    for i in 0..3 {
        assert_eq!(c.heard(i), vec![g], "node {i}");
        let took = c.nodes[i].notified_at[&g].since(signalled_at);
        assert!(took <= bound, "node {i} after {took:?}");
    }
}

#[test]
fn a_partition_longer_than_t_fail_fires_on_both_sides_a_shorter_one_does_not() {
    for (ms, fires) in [
        (t_fail().as_millis() as u64 / 2, false),
        (t_fail().as_millis() as u64 * 2, true),
    ] {
        let mut c = established(4);
        let g = c.group();
        c.partition = Some(([0, 1].into(), [2, 3].into()));
        c.run(ms);
        c.partition = None;
        c.run(10_000);
        for i in 0..4 {
            if fires {
                assert_eq!(c.heard(i), vec![g], "{ms} ms: node {i}");
            } else {
                assert!(c.heard(i).is_empty(), "{ms} ms: node {i}");
            }
        }
    }
}

#[test]
fn a_member_down_when_the_group_failed_hears_it_once_after_restart() {
    let mut c = established(4);
    let g = c.group();
    c.crash(3);
    // The others fail the group (3 is silent), then 3 comes back much later.
    c.run(10_000);
    for i in 0..3 {
        assert_eq!(c.heard(i), vec![g]);
    }
    c.boot(3);
    c.run(5_000);
    assert_eq!(
        c.heard(3),
        vec![g],
        "the restarted member is notified, once"
    );
    c.crash(3);
    c.boot(3);
    c.run(5_000);
    assert_eq!(c.heard(3), vec![g], "and not again after another restart");
}

#[test]
fn a_member_dead_during_creation_fails_the_group_for_those_who_heard() {
    let mut c = Cluster::new(3);
    // c died before it could confirm: it never runs again.
    c.crash(2);
    c.net.retain(|(to, _)| *to != 2);
    let g = c.group();
    c.run(Tuning::default().fuse_create_timeout.as_millis() as u64 + 3_000);
    assert_eq!(c.heard(0), vec![g], "the creator");
    assert_eq!(c.heard(1), vec![g], "a member that joined");
    for i in 0..2 {
        let groups = c.nodes[i].engine.as_ref().unwrap().groups();
        assert!(
            groups.iter().all(|s| s.state == ken::GroupState::Failed),
            "{groups:?}"
        );
    }
}

#[test]
fn a_signal_takes_the_fast_path_when_the_network_is_fine() {
    let mut c = Cluster::with(4, Some(Duration::from_secs(1)));
    c.run(100);
    let g = c.group();
    c.run(850);
    assert!(c.heard(2).is_empty());
    let before = c.now;
    c.run(5_000);
    for i in 0..4 {
        assert_eq!(c.heard(i), vec![g], "node {i}");
        let took = c.nodes[i].notified_at[&g].since(before);
        assert!(
            took <= Duration::from_millis(100),
            "node {i} after {took:?}: the direct Fail"
        );
    }
}

/// 100 seeded runs per factor: a member crashes at a random moment for 0.2, 0.5 or 0.9 of
/// T_fail while 5% of datagrams are lost; nobody may hear a failure.
#[test]
fn short_crash_restarts_are_masked_in_100_seeded_runs_each() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("KEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut runs = 0;
    for factor in [0.2, 0.5, 0.9] {
        for _ in 0..100 {
            let mut c = established(3);
            c.loss = Some((rand_chacha::ChaCha8Rng::seed_from_u64(rng.gen()), 0.05));
            let victim = rng.gen_range(0..3);
            c.run(rng.gen_range(0..600));
            c.crash(victim);
            c.run((t_fail().as_millis() as f64 * factor) as u64);
            c.boot(victim);
            c.run(2_000);
            for i in 0..3 {
                assert!(
                    c.heard(i).is_empty(),
                    "seed {seed}, x{factor}, run {runs}: node {i} heard a failure"
                );
            }
            runs += 1;
        }
    }
    assert_eq!(runs, 300);
}

/// `a` creates a group with `b` while `a`'s FUSE frames to `b` are held 260 ms and `b`'s to
/// `a` are held and then delivered in reverse order, so that a list `b` built before it
/// joined (omitting the group) reaches `a` after `b`'s `Confirm`. Nobody was down or cut
/// off: the group must stay live at both. (Found by `ken torture --app lock` with
/// reordering; the list's echo of `a`'s stamps is what tells `a` the list is stale.)
#[test]
fn a_stale_list_overtaken_by_the_confirm_does_not_fail_a_healthy_group() {
    struct Creator;
    #[derive(Default, Serialize, Deserialize)]
    struct St {
        heard: Vec<GroupId>,
    }
    impl Handler for Creator {
        type State = St;
        type Message = ();
        type Request = ();
        type Reply = ();
        fn on_turn(&self, s: &mut St, turn: &mut Turn<'_, ()>, input: Input<()>) {
            match input {
                Input::Start if turn.id().as_str() == "a" => {
                    turn.set_timer("first", Duration::from_millis(0));
                    turn.set_timer("second", Duration::from_millis(1000));
                }
                Input::Timer { .. } => {
                    turn.fuse_create(&[pid("b")]).unwrap();
                }
                Input::FuseFailure { group } => s.heard.push(group),
                _ => {}
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let ids = [pid("a"), pid("b")];
    let mut now = Time::from_millis(T0);
    let mut engines = Vec::new();
    let mut stores = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let path = dir.path().join(format!("{id}.db"));
        let (store, rec) = Store::open(&path, id.as_str()).unwrap();
        let reader = ken::store::Reader::open(&path).unwrap();
        let config = EngineConfig {
            id: id.clone(),
            peers: ids.iter().filter(|p| *p != id).cloned().collect(),
            tuning: Tuning::default(),
            seed: i as u64,
        };
        let mut e = Engine::recover(config, Creator, rec, Box::new(reader)).unwrap();
        e.start(now);
        engines.push(e);
        stores.push(store);
    }
    let mut net: Vec<(usize, Frame)> = Vec::new();
    // FUSE frames held: b -> a and a -> b.
    let mut held_ba: Vec<Frame> = Vec::new();
    let mut held_ab: Vec<Frame> = Vec::new();
    // Executes both engines' commands; commits complete at once.
    let step = |engines: &mut Vec<Engine<Creator>>,
                stores: &mut Vec<Store>,
                net: &mut Vec<(usize, Frame)>,
                held_ba: &mut Vec<Frame>,
                held_ab: &mut Vec<Frame>,
                hold: (bool, bool),
                now: Time| {
        for i in 0..2 {
            loop {
                let cmds = engines[i].take_commands();
                if cmds.is_empty() {
                    break;
                }
                for cmd in cmds {
                    match cmd {
                        Command::Commit { id, batch } => {
                            stores[i].commit(&batch).unwrap();
                            engines[i].commit_done(now, id);
                        }
                        Command::Send { to, frame, .. } => {
                            let to = usize::from(to.as_str() == "b");
                            let fuse = frame.kind == ken::transport::FrameKind::Fuse;
                            if fuse && i == 1 && hold.0 {
                                held_ba.push(frame);
                            } else if fuse && i == 0 && hold.1 {
                                held_ab.push(frame);
                            } else {
                                net.push((to, frame));
                            }
                        }
                        Command::Fatal { error } => panic!("{error}"),
                        _ => {}
                    }
                }
            }
        }
    };
    for t in 0..3000u64 {
        let hold = ((990..1400).contains(&t), (990..1250).contains(&t));
        if t == 1250 {
            net.extend(held_ab.drain(..).map(|f| (1, f)));
        }
        if t == 1400 {
            // Reversed: b's stale list arrives after its Confirm.
            while let Some(f) = held_ba.pop() {
                net.push((0, f));
            }
        }
        while !net.is_empty() {
            let (to, f) = net.remove(0);
            engines[to].handle_frame(now, f);
            step(
                &mut engines,
                &mut stores,
                &mut net,
                &mut held_ba,
                &mut held_ab,
                hold,
                now,
            );
        }
        now = now.plus(Duration::from_millis(1));
        for e in &mut engines {
            e.tick(now);
        }
        step(
            &mut engines,
            &mut stores,
            &mut net,
            &mut held_ba,
            &mut held_ab,
            hold,
            now,
        );
    }
    for (i, e) in engines.iter().enumerate() {
        let groups = e.groups();
        assert_eq!(groups.len(), 2, "{}: {groups:?}", ids[i]);
        assert!(
            groups.iter().all(|g| g.state == ken::GroupState::Live),
            "{}: a healthy group failed: {groups:?}",
            ids[i]
        );
        assert!(e.state().heard.is_empty(), "{}", ids[i]);
    }
    assert!(
        engines[0].stats().fuse_stale_lists > 0,
        "the scenario must produce a stale list, or it tests nothing"
    );
}
