//! FUSE lifecycle inputs (`Input::FuseJoined`, `Input::FuseLive`) in the deterministic
//! cluster: heard once each, in order before the failure, and exactly once across crashes
//! that land or lose any batch (each lifecycle turn commits with the group change it reports).

use std::collections::BTreeMap;
use std::time::Duration;

use ken::testing::{self, Commits};
use ken::{GroupId, GroupState, Handler, Input, ProcessId, Turn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `a` creates a group of every member at its start and, with `every` set, a new one that
/// often (signalling the previous one). Every member logs what it hears.
struct Member {
    all: Vec<ProcessId>,
    every: Option<Duration>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    current: Option<GroupId>,
    /// (group, event), in the order heard: "joined by <creator> of <n>", "live", "failed".
    log: Vec<(GroupId, String)>,
}

impl Handler for Member {
    const APP: &'static str = "lifecycle";
    type State = State;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut State, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                self.create(s, turn);
                if let Some(every) = self.every {
                    turn.set_timer("next", every);
                }
            }
            Input::Timer { .. } => {
                if let Some(g) = s.current {
                    turn.fuse_signal(g);
                }
                self.create(s, turn);
                turn.set_timer("next", self.every.unwrap());
            }
            Input::FuseJoined {
                group,
                creator,
                members,
            } => {
                assert!(members.contains(turn.id()) && members.contains(&creator));
                s.log
                    .push((group, format!("joined by {creator} of {}", members.len())));
            }
            Input::FuseLive { group } => s.log.push((group, "live".into())),
            Input::FuseFailure { group } => s.log.push((group, "failed".into())),
            _ => {}
        }
    }
}

impl Member {
    fn create(&self, s: &mut State, turn: &mut Turn<'_, ()>) {
        let others: Vec<ProcessId> = self
            .all
            .iter()
            .filter(|p| *p != turn.id())
            .cloned()
            .collect();
        s.current = Some(turn.fuse_create(&others).unwrap());
    }
}

type Cluster = testing::Cluster<Member>;

fn cluster(n: usize, every: Option<Duration>, seed: u64) -> Cluster {
    crate::support::lettered(n, 1_700_000_000_000, seed, move |all: &[ProcessId]| {
        Member {
            all: all.to_vec(),
            every,
        }
    })
}

/// The events node `i` heard, per group, in order.
fn heard(c: &Cluster, i: usize) -> BTreeMap<GroupId, Vec<String>> {
    let mut out: BTreeMap<GroupId, Vec<String>> = BTreeMap::new();
    for (g, e) in &c.state(i).log {
        out.entry(*g).or_default().push(e.clone());
    }
    out
}

#[test]
fn members_hear_joined_then_live_and_the_creator_hears_live() {
    let mut c = cluster(3, None, 1);
    c.start_all();
    c.run_for(Duration::from_secs(1));
    let g = c.state(0).current.expect("a created its group");
    assert_eq!(heard(&c, 0)[&g], ["live"], "the creator");
    for i in 1..3 {
        assert_eq!(heard(&c, i)[&g], ["joined by a of 3", "live"], "member {i}");
        assert_eq!(c.engine(i).groups()[0].durable, Some(GroupState::Live));
    }
}

/// A member down for the whole creation never records the group and never hears of it;
/// the creator and the member that joined hear the failure without a `FuseLive` first.
#[test]
fn a_group_that_fails_during_creation_is_heard_without_live_and_not_by_the_absent_member() {
    let mut c = cluster(3, None, 2);
    c.start(0);
    c.start(1);
    c.run_for(Duration::from_secs(5)); // past the creation timeout (3 s)
    let g = c.state(0).current.unwrap();
    assert_eq!(heard(&c, 0)[&g], ["failed"], "creator");
    assert_eq!(heard(&c, 1)[&g], ["joined by a of 3", "failed"], "member b");
    c.start(2);
    c.run_for(Duration::from_secs(2));
    assert!(
        heard(&c, 2).is_empty(),
        "c never recorded it: {:?}",
        heard(&c, 2)
    );
    assert!(c.engine(2).groups().is_empty());
}

/// Groups created and signalled over and over while members crash at random, with
/// batches held committing so that a crash lands or loses any of them: at the end every
/// member heard each event of each group it recorded exactly once, in life order, and
/// nothing of a group it did not record.
#[test]
fn lifecycle_inputs_are_heard_exactly_once_across_crashes() {
    let seeds: u64 = std::env::var("KEN_LIFECYCLE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut checked = 0;
    for seed in 0..seeds {
        println!("seed {seed}");
        let n = 4;
        let mut c = cluster(n, Some(Duration::from_millis(700)), seed);
        c.set_commits(Commits::Held);
        c.start_all();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..2_000 {
            for i in 0..n {
                if rng.gen_bool(0.6) {
                    c.complete_commit(i);
                }
            }
            if rng.gen_bool(0.01) {
                let i = rng.gen_range(0..n);
                if rng.gen_bool(0.5) {
                    c.land_pending(i);
                }
                c.crash(i);
                // Down for up to 1 s: sometimes longer than a creation takes.
                let down = rng.gen_range(0..200);
                for _ in 0..down {
                    for j in (0..n).filter(|j| *j != i) {
                        c.complete_commit(j);
                    }
                    c.step();
                }
                // A new life draws new group ids (as the driver's random seed does).
                c.config_mut(i).seed = rng.gen();
                c.start(i);
            }
            c.step();
        }
        // Heal: no more groups, every batch commits at once.
        c.set_commits(Commits::AtOnce);
        for i in 0..n {
            c.complete_commit(i);
        }
        c.run_for(Duration::from_secs(10));
        for i in 0..n {
            let engine = c.engine(i);
            let recorded: BTreeMap<GroupId, GroupState> = engine
                .groups()
                .into_iter()
                .map(|g| (g.id, g.durable.expect("quiesced: durable")))
                .collect();
            let heard = heard(&c, i);
            for g in heard.keys() {
                assert!(
                    recorded.contains_key(g),
                    "seed {seed}: node {i} heard of {g}, which it never recorded"
                );
            }
            for (g, state) in &recorded {
                let events = heard.get(g).cloned().unwrap_or_default();
                let mut expect: Vec<String> = Vec::new();
                if i != 0 {
                    expect.push(format!("joined by a of {n}"));
                }
                let live = events.iter().any(|e| e == "live");
                if live || *state == GroupState::Live {
                    expect.push("live".into());
                }
                if *state == GroupState::Failed {
                    expect.push("failed".into());
                }
                assert_eq!(
                    events, expect,
                    "seed {seed}: node {i}, group {g} ({state:?})"
                );
                checked += 1;
            }
        }
    }
    println!("{checked} (member, group) histories checked");
    assert!(checked > seeds as usize * 10, "the runs created groups");
}
