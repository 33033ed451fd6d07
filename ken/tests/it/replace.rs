//! Replacing a lost node (issue 16): a process that comes back with an empty store is a new
//! incarnation. Its peers fail every FUSE group shared with the old one at once, refuse the
//! new one (telling it who refuses and what to run) until an operator admits it (`ken
//! admit`, offline) or the tuning admits replaced peers, and then exchange messages with it
//! as with a fresh peer: none lost from then on, none twice, none of the old incarnation's
//! unacknowledged ones.

use std::time::Duration;

use ken::engine::EngineConfig;
use ken::testing::Cluster;
use ken::{ClientId, GroupId, Handler, Input, ProcessId, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Do {
    /// Send the other process these values.
    Send(Vec<u64>),
    /// Create a FUSE group with the other process.
    Group,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    got: Vec<u64>,
    failed: Vec<GroupId>,
}

struct App;

fn other(me: &ProcessId) -> ProcessId {
    ProcessId::new(if me.as_str() == "a" { "b" } else { "a" }).unwrap()
}

impl Handler for App {
    const APP: &'static str = "replace-test";
    type State = Seen;
    type Message = u64;
    type Request = Do;
    type Reply = ();
    fn on_turn(&self, s: &mut Seen, turn: &mut Turn<'_, u64, ()>, input: Input<u64, Do>) {
        let peer = other(turn.id());
        match input {
            Input::Message { message, .. } => s.got.push(message),
            Input::FuseFailure { group } => s.failed.push(group),
            Input::Request { request, .. } => {
                match request {
                    Do::Send(values) => {
                        for v in values {
                            turn.send(&peer, &v).unwrap();
                        }
                    }
                    Do::Group => {
                        let me = turn.id().clone();
                        turn.fuse_create(&[me, peer]).unwrap();
                    }
                }
                turn.reply(&()).unwrap();
            }
            _ => {}
        }
    }
}

fn pair(seed: u64, admit: bool) -> Cluster<App> {
    let mut c = Cluster::new(tempfile::tempdir().unwrap(), Time::from_millis(T0), seed);
    let ids = [ProcessId::new("a").unwrap(), ProcessId::new("b").unwrap()];
    for id in &ids {
        c.add(
            EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: Tuning {
                    admit_replaced_peers: admit,
                    ..Tuning::default()
                },
                seed: 1,
            },
            || App,
        );
    }
    c
}

/// Deletes every file of node `i`'s store (a destroyed disk), the lock file included: the
/// restart creates a new incarnation.
fn wipe(c: &Cluster<App>, i: usize) {
    let path = c.node(i).path().to_path_buf();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// a and b share a group and exchange 1, 2 (b to a) and 10 (a to b); b goes down; a sends
/// 11, 12 (never acknowledged by the old b); b's disk is destroyed and b restarts with an
/// empty store. Returns the cluster with the new b up.
fn replace_b(seed: u64, admit: bool) -> (Cluster<App>, ClientId) {
    let mut c = pair(seed, admit);
    c.start_all();
    let client = ClientId([7; 16]);
    c.request(0, client, 1, &Do::Group);
    c.request(1, client, 1, &Do::Send(vec![1, 2]));
    c.request(0, client, 2, &Do::Send(vec![10]));
    c.run_until(Duration::from_secs(5), |c| {
        c.state(0).got.len() == 2 && c.state(1).got.len() == 1
    });
    c.run_for(Duration::from_millis(300));
    let old_b = c.engine(1).incarnation();
    c.crash(1);
    c.request(0, client, 3, &Do::Send(vec![11, 12]));
    c.run_for(Duration::from_millis(200));
    wipe(&c, 1);
    c.restart(1);
    assert_ne!(c.engine(1).incarnation(), old_b, "b is a new incarnation");
    (c, client)
}

#[test]
fn a_replaced_peer_fails_the_shared_groups_and_is_refused_until_admitted() {
    let (mut c, client) = replace_b(31, false);
    // The new b speaks first (it sends 3); a refuses it and says so.
    c.request(1, client, 1, &Do::Send(vec![3]));
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(1).stats().admission_refusals > 0
    });
    c.run_for(Duration::from_secs(2));
    assert_eq!(c.state(0).got, [1, 2], "nothing of the new b delivered");
    assert_eq!(
        c.state(0).failed.len(),
        1,
        "a heard its group with the old b fail"
    );
    assert!(c.engine(0).stats().admission_refusals_sent > 0);
    assert_eq!(c.engine(0).stats().peers_admitted, 0);
    assert!(c.node(0).stopped().is_none() && c.node(1).stopped().is_none());

    // The operator admits the new b on a (a stopped), then a runs again.
    c.crash(0);
    let peer = ProcessId::new("b").unwrap();
    ken::living::admit_offline(c.node(0).path(), &peer, "test").unwrap();
    c.restart(0);
    // b retransmits 3; a admits the new b on hearing it and delivers it.
    c.run_until(Duration::from_secs(20), |c| c.state(0).got.len() == 3);
    c.request(0, client, 4, &Do::Send(vec![13]));
    c.run_until(Duration::from_secs(20), |c| !c.state(1).got.is_empty());
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.state(0).got, [1, 2, 3], "the new b's message, once");
    assert_eq!(
        c.state(1).got,
        [13],
        "only what a sent after the admission; 11 and 12 were for the old b"
    );
    let a = c.engine(0).stats();
    assert_eq!(a.peers_admitted, 1, "{a:?}");
    assert_eq!(a.messages_withdrawn, 2, "11 and 12: {a:?}");
    assert_eq!(
        c.engine(1).stats().messages_skipped,
        3,
        "the numbers of 10, 11, 12 skipped by the new b"
    );
    // The admission is consumed: a later restart of a admits nothing again.
    c.crash(0);
    c.restart(0);
    c.request(0, client, 5, &Do::Send(vec![14]));
    c.run_until(Duration::from_secs(20), |c| c.state(1).got.len() == 2);
    assert_eq!(c.state(1).got, [13, 14]);
    assert_eq!(
        c.engine(0).stats().peers_admitted,
        0,
        "nothing admitted in this life"
    );
    assert!(c.node(0).stopped().is_none() && c.node(1).stopped().is_none());
}

#[test]
fn with_admit_replaced_peers_the_new_incarnation_is_admitted_at_once() {
    let (mut c, client) = replace_b(32, true);
    c.request(1, client, 1, &Do::Send(vec![3]));
    c.run_until(Duration::from_secs(20), |c| c.state(0).got.len() == 3);
    c.request(0, client, 4, &Do::Send(vec![13]));
    c.run_until(Duration::from_secs(20), |c| !c.state(1).got.is_empty());
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.state(0).got, [1, 2, 3]);
    assert_eq!(c.state(1).got, [13]);
    assert_eq!(c.state(0).failed.len(), 1, "the old b's group failed");
    assert_eq!(c.engine(0).stats().peers_admitted, 1);
    assert_eq!(c.engine(1).stats().admission_refusals, 0);
}

#[test]
fn admit_offline_refuses_an_unknown_peer_and_a_running_owner() {
    let (mut c, _) = replace_b(33, false);
    let path = c.node(0).path().to_path_buf();
    let err = ken::living::admit_offline(&path, &ProcessId::new("b").unwrap(), "test").unwrap_err();
    assert!(
        matches!(
            err,
            ken::living::AdmitError::Open(ken_store::OpenError::InUse { .. })
        ),
        "{err}"
    );
    c.crash(0);
    let err =
        ken::living::admit_offline(&path, &ProcessId::new("zz").unwrap(), "test").unwrap_err();
    assert!(err.to_string().contains("has no peer `zz`"), "{err}");
}
