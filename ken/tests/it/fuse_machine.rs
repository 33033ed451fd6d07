//! Exact-output tests of the FUSE machine alone ([`ken::engine::fuse::Fuse`]), one per
//! protocol step: events in, the exact list of outputs out (openraft style). No engine, no
//! store, no network: a batch is "committed" by calling `seal` and then `durable`, a crash
//! by recovering from the rows made durable so far.

use std::collections::BTreeMap;
use std::time::Duration;

use ken::engine::fuse::{
    BadGroupRecord, Fuse, FuseMsg, FuseOutput, GroupRecord, Heartbeat, Malformed,
    LIST_AFTER_DISAGREEMENTS,
};
use ken::store::{GroupChange, GroupRow};
use ken::{GroupId, GroupState, ProcessId, Time, Tuning};

const T0: Time = Time(1_700_000_000_000_000);

fn at(ms: u64) -> Time {
    T0.plus(Duration::from_millis(ms))
}

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

fn pids(ids: &[&str]) -> Vec<ProcessId> {
    ids.iter().map(|s| pid(s)).collect()
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn gid(n: u8) -> GroupId {
    GroupId([n; 16])
}

fn tuning() -> Tuning {
    Tuning::default()
}

/// Silence that fails a peer.
fn silence() -> Duration {
    tuning().fuse_t_fail + 2 * tuning().fuse_heartbeat
}

fn heartbeat_ms() -> u64 {
    tuning().fuse_heartbeat.as_millis() as u64
}

/// A stored group record.
fn row(g: GroupId, creator: &str, members: &[&str], state: GroupState, notified: bool) -> GroupRow {
    GroupRow {
        group: g.0,
        record: ken::store::codec::encode(&GroupRecord {
            creator: creator.into(),
            members: strings(members),
            state,
            notified,
            created_ms: T0.as_millis(),
        }),
    }
}

fn recovered(id: &str, rows: &[GroupRow]) -> Fuse {
    Fuse::recover(pid(id), &tuning(), rows).unwrap()
}

/// The records of a seal's rows.
fn records(rows: &[GroupChange]) -> Vec<(GroupId, GroupRecord)> {
    rows.iter()
        .map(|c| match c {
            GroupChange::Put(r) => (
                GroupId(r.group),
                ken::store::codec::decode(&r.record).unwrap(),
            ),
            GroupChange::Delete { .. } => panic!("FUSE never deletes a group"),
        })
        .collect()
}

/// Seals and makes the batch durable at once; returns its records.
fn commit(f: &mut Fuse) -> Vec<(GroupId, GroupRecord)> {
    let (rows, token) = f.seal();
    f.durable(token);
    records(&rows)
}

/// (state, durable state) of group `g`.
fn state(f: &Fuse, g: GroupId) -> (GroupState, Option<GroupState>) {
    let s = f
        .groups()
        .into_iter()
        .find(|s| s.id == g)
        .expect("group known");
    (s.state, s.durable)
}

/// The digest of a set of (group, established): the XOR of the CRC32 of each id followed
/// by its flag byte (the wire format of `Heartbeat`).
fn digest(groups: &[(GroupId, bool)]) -> u32 {
    groups.iter().fold(0, |d, (g, est)| {
        let mut h = crc32fast::Hasher::new();
        h.update(&g.0);
        h.update(&[u8::from(*est)]);
        d ^ h.finalize()
    })
}

fn hb(groups: &[(GroupId, bool)], stamp: Time) -> Heartbeat {
    Heartbeat::new(digest(groups), groups.len() as u32, stamp)
}

fn heartbeat(to: &str, groups: &[(GroupId, bool)], stamp: Time) -> FuseOutput {
    FuseOutput::Heartbeat {
        to: pid(to),
        hb: hb(groups, stamp),
    }
}

fn send(to: &str, msg: FuseMsg) -> FuseOutput {
    FuseOutput::Send { to: pid(to), msg }
}

fn create(creator: &str, groups: &[(GroupId, &[&str])]) -> FuseMsg {
    FuseMsg::Create {
        creator: creator.into(),
        groups: groups.iter().map(|(g, m)| (*g, strings(m))).collect(),
    }
}

fn list(groups: &[(GroupId, bool)], stamp: Time, echo: Time) -> FuseMsg {
    FuseMsg::List {
        lo: None,
        hi: None,
        groups: groups.to_vec(),
        stamp: stamp.as_micros(),
        echo: echo.as_micros(),
    }
}

/// `a`'s group `g` of `a`, `b` and `c`, durably `Creating`, first tick done (outputs taken).
fn creating_at_a(g: GroupId) -> Fuse {
    let mut a = Fuse::new(pid("a"), &tuning());
    a.created(at(0), g, pids(&["b", "c"]));
    commit(&mut a);
    a.tick(at(0));
    a.take_outputs();
    a
}

#[test]
fn creation_sends_create_to_each_member_once_the_group_is_durable_and_resends_it() {
    let g = gid(1);
    let mut a = Fuse::new(pid("a"), &tuning());
    assert_eq!(a.deadline(), None);
    a.created(at(0), g, pids(&["c", "b", "b"]));
    assert!(a.needs_seal(), "the record must be committed");
    assert_eq!(state(&a, g), (GroupState::Creating, None));
    a.tick(at(0));
    assert_eq!(
        a.take_outputs(),
        [heartbeat("b", &[], at(0)), heartbeat("c", &[], at(0))],
        "monitoring starts at once; nothing is vouched for and no Create leaves before the \
         record is durable"
    );
    let (rows, token) = a.seal();
    assert!(!a.needs_seal());
    assert_eq!(
        records(&rows),
        [(
            g,
            GroupRecord {
                creator: "a".into(),
                members: strings(&["a", "b", "c"]),
                state: GroupState::Creating,
                notified: false,
                created_ms: at(0).as_millis(),
            }
        )]
    );
    a.tick(at(100));
    assert_eq!(a.take_outputs(), [], "sealed is not durable");
    a.durable(token);
    assert_eq!(a.take_outputs(), [], "Create leaves at the next tick");
    a.tick(at(150));
    let c = create("a", &[(g, &["a", "b", "c"])]);
    assert_eq!(
        a.take_outputs(),
        [send("b", c.clone()), send("c", c.clone())]
    );
    let h = heartbeat_ms();
    a.tick(at(h));
    assert_eq!(
        a.take_outputs(),
        [
            heartbeat("b", &[(g, false)], at(h)),
            heartbeat("c", &[(g, false)], at(h))
        ],
        "now vouched for, not established"
    );
    a.tick(at(150 + h));
    assert_eq!(
        a.take_outputs(),
        [send("b", c.clone()), send("c", c)],
        "resent every heartbeat interval until confirmed"
    );
}

#[test]
fn confirms_from_every_member_make_the_creator_live_and_establish_the_group() {
    let g = gid(1);
    let mut a = creating_at_a(g);
    assert_eq!(
        a.on_message(at(10), &pid("b"), FuseMsg::Confirm { groups: vec![g] }),
        Malformed(0)
    );
    assert_eq!(a.take_outputs(), []);
    assert_eq!(
        state(&a, g),
        (GroupState::Creating, Some(GroupState::Creating))
    );
    assert!(!a.needs_seal());
    // A confirm from someone who is not a member, or again from b, changes nothing.
    let _ = a.on_message(at(15), &pid("d"), FuseMsg::Confirm { groups: vec![g] });
    let _ = a.on_message(at(15), &pid("b"), FuseMsg::Confirm { groups: vec![g] });
    assert_eq!(
        state(&a, g),
        (GroupState::Creating, Some(GroupState::Creating))
    );
    let _ = a.on_message(at(20), &pid("c"), FuseMsg::Confirm { groups: vec![g] });
    assert_eq!(state(&a, g), (GroupState::Live, Some(GroupState::Creating)));
    assert!(a.needs_seal());
    assert_eq!(
        a.take_outputs(),
        [],
        "Established waits for the Live record"
    );
    let recs = commit(&mut a);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].1.state, GroupState::Live);
    let est = FuseMsg::Established { groups: vec![g] };
    assert_eq!(a.take_outputs(), [send("b", est.clone()), send("c", est)]);
    a.tick(at(400));
    assert_eq!(
        a.take_outputs(),
        [
            heartbeat("b", &[(g, true)], at(400)),
            heartbeat("c", &[(g, true)], at(400))
        ],
        "no more Create; heartbeats vouch for an established group"
    );
}

#[test]
fn a_member_confirms_once_its_record_is_durable_and_goes_live_when_established() {
    let g = gid(1);
    let mut b = Fuse::new(pid("b"), &tuning());
    let c = create("a", &[(g, &["a", "b", "c"])]);
    assert_eq!(b.on_message(at(0), &pid("a"), c.clone()), Malformed(0));
    assert_eq!(state(&b, g), (GroupState::Joined, None));
    assert!(b.needs_seal());
    assert_eq!(b.take_outputs(), []);
    // The Create resent before the record is durable: nothing to say yet.
    let _ = b.on_message(at(5), &pid("a"), c.clone());
    assert_eq!(b.take_outputs(), []);
    let (rows, token) = b.seal();
    assert_eq!(records(&rows)[0].1.state, GroupState::Joined);
    assert_eq!(b.take_outputs(), []);
    b.durable(token);
    let confirm = FuseMsg::Confirm { groups: vec![g] };
    assert_eq!(b.take_outputs(), [send("a", confirm.clone())]);
    // Known and durable: a resent Create is answered at once, with nothing to commit.
    let _ = b.on_message(at(10), &pid("a"), c);
    assert_eq!(b.take_outputs(), [send("a", confirm)]);
    assert!(!b.needs_seal());
    let _ = b.on_message(at(20), &pid("a"), FuseMsg::Established { groups: vec![g] });
    assert_eq!(state(&b, g), (GroupState::Live, Some(GroupState::Joined)));
    assert_eq!(commit(&mut b)[0].1.state, GroupState::Live);
    assert_eq!(b.take_outputs(), [], "Established needs no answer");
}

#[test]
fn malformed_creates_are_counted_and_ignored_part_by_part() {
    let mut b = Fuse::new(pid("b"), &tuning());
    let forged = create("a", &[(gid(1), &["a", "b"])]);
    assert_eq!(
        b.on_message(at(0), &pid("x"), forged),
        Malformed(1),
        "only the creator asks"
    );
    let too_many: Vec<String> = (0..=ken::limits::GROUP_MEMBERS_MAX)
        .map(|i| if i == 0 { "b".into() } else { format!("m{i}") })
        .collect();
    let msg = FuseMsg::Create {
        creator: "a".into(),
        groups: vec![
            (gid(1), strings(&["a", "c"])),
            (gid(2), strings(&["a", "b"])),
            (gid(3), vec!["a".into(), "b".into(), String::new()]),
            (gid(4), too_many),
        ],
    };
    assert_eq!(
        b.on_message(at(0), &pid("a"), msg),
        Malformed(3),
        "one without b, one with an invalid id, one too large"
    );
    let known: Vec<GroupId> = b.groups().iter().map(|s| s.id).collect();
    assert_eq!(known, [gid(2)], "the well-formed one is joined");
}

#[test]
fn a_creation_that_times_out_fails_notifies_once_and_tells_the_members() {
    let g = gid(1);
    let mut a = creating_at_a(g);
    let _ = a.on_message(at(10), &pid("b"), FuseMsg::Confirm { groups: vec![g] });
    let timeout = tuning().fuse_create_timeout.as_millis() as u64;
    a.tick(at(timeout - 1));
    a.take_outputs();
    assert_eq!(state(&a, g).0, GroupState::Creating);
    assert_eq!(a.next_notification(), None);
    a.tick(at(timeout));
    assert_eq!(
        a.take_outputs(),
        [],
        "the Fail waits for the failure to be durable"
    );
    assert_eq!(state(&a, g).0, GroupState::Failed);
    assert_eq!(a.next_notification(), Some(g));
    assert_eq!(a.next_notification(), None, "exactly once");
    assert_eq!(a.stats().notifications, 1);
    let recs = commit(&mut a);
    assert_eq!(
        (recs[0].1.state, recs[0].1.notified),
        (GroupState::Failed, true)
    );
    let fail = FuseMsg::Fail { groups: vec![g] };
    assert_eq!(a.take_outputs(), [send("b", fail.clone()), send("c", fail)]);
    assert_eq!(a.deadline(), None, "no group left to watch");
}

/// `a` with two durable `Live` groups shared with `b`, started and ticked at `at(0)`.
fn live_pair() -> (Fuse, GroupId, GroupId) {
    let (g1, g2) = (gid(1), gid(2));
    let rows = [
        row(g1, "a", &["a", "b"], GroupState::Live, false),
        row(g2, "b", &["a", "b"], GroupState::Live, false),
    ];
    let mut a = recovered("a", &rows);
    a.start(at(0));
    assert_eq!(
        a.deadline(),
        Some(Time::ZERO),
        "a recovered member ticks at once"
    );
    a.tick(at(0));
    assert_eq!(
        a.take_outputs(),
        [heartbeat("b", &[(g1, true), (g2, true)], at(0))]
    );
    (a, g1, g2)
}

#[test]
fn agreeing_digests_need_no_list() {
    let (mut a, g1, g2) = live_pair();
    for i in 0..10 {
        a.on_heartbeat(at(10 + i), &pid("b"), hb(&[(g1, true), (g2, true)], at(i)));
    }
    assert_eq!(a.take_outputs(), []);
    assert_eq!(a.stats().list_exchanges, 0);
}

#[test]
fn a_disagreement_is_answered_with_a_list_when_it_shows_twice_in_a_row() {
    let (mut a, g1, g2) = live_pair();
    let theirs = [(g2, true)];
    a.on_heartbeat(at(10), &pid("b"), hb(&theirs, at(5)));
    assert_eq!(
        a.take_outputs(),
        [],
        "a first disagreement may be a state in flight"
    );
    // An agreement in between starts over.
    a.on_heartbeat(at(210), &pid("b"), hb(&[(g1, true), (g2, true)], at(205)));
    a.on_heartbeat(at(410), &pid("b"), hb(&theirs, at(405)));
    assert_eq!(a.take_outputs(), []);
    a.on_heartbeat(at(610), &pid("b"), hb(&theirs, at(605)));
    assert_eq!(
        a.take_outputs(),
        [send("b", list(&[(g1, true), (g2, true)], at(610), at(605)))],
        "the same disagreement twice: settled; the list echoes b's newest stamp"
    );
    assert_eq!(a.stats().list_exchanges, 1);
    a.on_heartbeat(at(810), &pid("b"), hb(&theirs, at(805)));
    assert_eq!(
        a.take_outputs(),
        [send("b", list(&[(g1, true), (g2, true)], at(810), at(805)))],
        "a settled disagreement is answered at every heartbeat until it resolves"
    );
    assert_eq!(a.stats().list_exchanges, 2);
}

#[test]
fn a_churning_disagreement_is_answered_after_list_after_disagreements_heartbeats() {
    let (mut a, g1, g2) = live_pair();
    let n = u64::from(LIST_AFTER_DISAGREEMENTS);
    for i in 1..n {
        // Each different from the last: states in flight.
        a.on_heartbeat(
            at(200 * i),
            &pid("b"),
            hb(&[(gid(9 + i as u8), false)], at(200 * i)),
        );
        assert_eq!(a.take_outputs(), [], "disagreement {i}");
    }
    a.on_heartbeat(at(200 * n), &pid("b"), hb(&[(gid(99), false)], at(200 * n)));
    assert_eq!(
        a.take_outputs(),
        [send(
            "b",
            list(&[(g1, true), (g2, true)], at(200 * n), at(200 * n))
        )]
    );
}

#[test]
fn silence_for_t_fail_plus_two_heartbeats_fails_the_groups_shared_with_the_silent_peer() {
    let (g1, g2) = (gid(1), gid(2));
    let rows = [
        row(g1, "a", &["a", "b"], GroupState::Live, false),
        row(g2, "a", &["a", "c"], GroupState::Live, false),
    ];
    let mut a = recovered("a", &rows);
    a.start(at(0));
    let h = heartbeat_ms();
    let limit = silence().as_millis() as u64;
    // c is heard at every interval, b never.
    for t in (0..limit).step_by(h as usize) {
        a.heard(at(t), &pid("c"));
        a.tick(at(t));
        assert_eq!(
            a.take_outputs(),
            [
                heartbeat("b", &[(g1, true)], at(t)),
                heartbeat("c", &[(g2, true)], at(t))
            ]
        );
    }
    let just_before = at(limit).0 - 1;
    a.tick(Time(just_before));
    assert_eq!(a.take_outputs(), []);
    assert_eq!(state(&a, g1).0, GroupState::Live);
    a.tick(at(limit));
    assert_eq!(
        a.take_outputs(),
        [heartbeat("c", &[(g2, true)], at(limit))],
        "b is no longer monitored; c still is"
    );
    assert_eq!(state(&a, g1).0, GroupState::Failed);
    assert_eq!(state(&a, g2).0, GroupState::Live);
    assert_eq!(a.next_notification(), Some(g1));
    assert_eq!(a.next_notification(), None);
    commit(&mut a);
    assert_eq!(
        a.take_outputs(),
        [send("b", FuseMsg::Fail { groups: vec![g1] })]
    );
    let last_c = at(limit - h);
    assert_eq!(
        a.deadline(),
        Some(at(limit + h).min(last_c.plus(silence()))),
        "only c's schedule is left"
    );
}

#[test]
fn a_stale_list_does_not_fail_a_group_but_a_fresh_one_does() {
    let g = gid(1);
    let mut a = Fuse::new(pid("a"), &tuning());
    a.created(at(0), g, pids(&["b"]));
    commit(&mut a);
    a.tick(at(0));
    let _ = a.on_message(at(100), &pid("b"), FuseMsg::Confirm { groups: vec![g] });
    commit(&mut a);
    a.take_outputs();
    assert_eq!(state(&a, g), (GroupState::Live, Some(GroupState::Live)));
    // Built by b before it heard from a at or after the group went live here (at 100).
    let stale = list(&[], at(150), at(99));
    assert_eq!(a.on_message(at(200), &pid("b"), stale), Malformed(0));
    assert_eq!(state(&a, g).0, GroupState::Live);
    assert_eq!(a.stats().stale_lists, 1);
    assert!(!a.needs_seal());
    // A list showing the group changes nothing either.
    let _ = a.on_message(at(210), &pid("b"), list(&[(g, true)], at(205), at(200)));
    assert_eq!(state(&a, g).0, GroupState::Live);
    let fresh = list(&[], at(250), at(100));
    let _ = a.on_message(at(300), &pid("b"), fresh);
    assert_eq!(state(&a, g).0, GroupState::Failed);
    assert_eq!(a.next_notification(), Some(g));
    assert_eq!(a.take_outputs(), []);
    commit(&mut a);
    assert_eq!(
        a.take_outputs(),
        [send("b", FuseMsg::Fail { groups: vec![g] })]
    );
}

#[test]
fn a_list_judges_only_its_own_range_and_only_what_it_may_judge() {
    let (g1, g2, g3) = (gid(1), gid(2), gid(3));
    // At b: g1 and g3 live, g2 only joined (created by a, established not yet heard).
    let rows = [
        row(g1, "a", &["a", "b", "c"], GroupState::Live, false),
        row(g2, "a", &["a", "b", "c"], GroupState::Joined, false),
        row(g3, "a", &["a", "b", "c"], GroupState::Live, false),
    ];
    let mut b = recovered("b", &rows);
    b.start(at(0));
    // From c (not the creator): a joined group missing from it may be in flight at c.
    let from_c = FuseMsg::List {
        lo: Some(gid(2)),
        hi: None,
        groups: vec![],
        stamp: at(10).as_micros(),
        echo: at(0).as_micros(),
    };
    assert_eq!(b.on_message(at(10), &pid("c"), from_c), Malformed(0));
    let states: Vec<GroupState> = b.groups().iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [GroupState::Live, GroupState::Joined, GroupState::Failed],
        "g1 is outside the list's range; g2 is only joined and c is not its creator"
    );
    // From the creator, a list showing g2 established makes it live.
    let _ = b.on_message(
        at(20),
        &pid("a"),
        FuseMsg::List {
            lo: None,
            hi: Some(gid(3)),
            groups: vec![(g1, true), (g2, true)],
            stamp: at(20).as_micros(),
            echo: at(0).as_micros(),
        },
    );
    assert_eq!(state(&b, g2).0, GroupState::Live);
    assert_eq!(state(&b, g1).0, GroupState::Live);
}

#[test]
fn malformed_lists_are_counted_and_change_nothing() {
    let (mut a, g1, g2) = live_pair();
    let bad = [
        // Unsorted.
        FuseMsg::List {
            lo: None,
            hi: None,
            groups: vec![(g2, true), (g1, true)],
            stamp: 1,
            echo: at(0).as_micros(),
        },
        // A group outside its own range.
        FuseMsg::List {
            lo: Some(g2),
            hi: None,
            groups: vec![(g1, true)],
            stamp: 1,
            echo: at(0).as_micros(),
        },
        // Bounds out of order.
        FuseMsg::List {
            lo: Some(g2),
            hi: Some(g1),
            groups: vec![],
            stamp: 1,
            echo: at(0).as_micros(),
        },
    ];
    for msg in bad {
        assert_eq!(a.on_message(at(10), &pid("b"), msg), Malformed(1));
    }
    assert!(a.groups().iter().all(|s| s.state == GroupState::Live));
    // The malformed lists' stamps were not heard: our next list echoes nothing newer.
    for t in [200, 400] {
        a.on_heartbeat(at(t), &pid("b"), hb(&[], Time::ZERO));
    }
    assert_eq!(
        a.take_outputs(),
        [send(
            "b",
            list(&[(g1, true), (g2, true)], at(400), Time::ZERO)
        )]
    );
}

#[test]
fn a_fail_from_a_member_takes_the_fast_path_to_every_other_member() {
    let g = gid(1);
    let mut b = recovered(
        "b",
        &[row(g, "a", &["a", "b", "c"], GroupState::Live, false)],
    );
    b.start(at(0));
    let fail = FuseMsg::Fail { groups: vec![g] };
    assert_eq!(b.on_message(at(10), &pid("d"), fail.clone()), Malformed(0));
    assert_eq!(state(&b, g).0, GroupState::Live, "d is not a member");
    let _ = b.on_message(at(20), &pid("a"), fail.clone());
    assert_eq!(state(&b, g), (GroupState::Failed, Some(GroupState::Live)));
    let _ = b.on_message(at(30), &pid("c"), fail.clone());
    assert_eq!(b.next_notification(), Some(g));
    assert_eq!(b.next_notification(), None);
    assert_eq!(b.take_outputs(), []);
    commit(&mut b);
    assert_eq!(
        b.take_outputs(),
        [send("a", fail.clone()), send("c", fail)],
        "told once, to every other member"
    );
}

#[test]
fn only_durable_states_are_vouched_for_and_nothing_leaves_before_durable() {
    let (mut a, g1, g2) = live_pair();
    a.signal(g1);
    assert_eq!(state(&a, g1), (GroupState::Failed, Some(GroupState::Live)));
    assert!(a.needs_seal());
    let both = [(g1, true), (g2, true)];
    a.tick(at(200));
    assert_eq!(
        a.take_outputs(),
        [heartbeat("b", &both, at(200))],
        "still vouched for: the failure is not durable"
    );
    let (_, token) = a.seal();
    a.tick(at(400));
    // Asked twice for a list while sealed but not durable: it still lists g1.
    a.on_heartbeat(at(410), &pid("b"), hb(&[], at(405)));
    a.on_heartbeat(at(420), &pid("b"), hb(&[], at(415)));
    assert_eq!(
        a.take_outputs(),
        [
            heartbeat("b", &both, at(400)),
            send("b", list(&both, at(420), at(415)))
        ]
    );
    a.durable(token);
    assert_eq!(
        a.take_outputs(),
        [send("b", FuseMsg::Fail { groups: vec![g1] })]
    );
    a.tick(at(600));
    assert_eq!(a.take_outputs(), [heartbeat("b", &[(g2, true)], at(600))]);
}

/// Applies the durable rows of a batch to a model of the `fuse_groups` table.
fn apply(table: &mut BTreeMap<[u8; 16], GroupRow>, rows: Vec<GroupChange>) {
    for c in rows {
        match c {
            GroupChange::Put(r) => {
                table.insert(r.group, r);
            }
            GroupChange::Delete { group } => {
                table.remove(&group);
            }
        }
    }
}

#[test]
fn exactly_one_notification_per_failed_group_across_recovery() {
    let g = gid(1);
    let mut table = BTreeMap::new();
    apply(
        &mut table,
        vec![GroupChange::Put(row(
            g,
            "a",
            &["a", "b"],
            GroupState::Live,
            false,
        ))],
    );
    let mut b = recovered("b", &table.values().cloned().collect::<Vec<_>>());
    b.start(at(0));
    // The failure commits before its notification turn (here: its batch was sealed first).
    let _ = b.on_message(at(10), &pid("a"), FuseMsg::Fail { groups: vec![g] });
    let (rows, token) = b.seal();
    b.durable(token);
    apply(&mut table, rows);
    let stored = records(&[GroupChange::Put(table[&g.0].clone())]);
    assert_eq!(
        (stored[0].1.state, stored[0].1.notified),
        (GroupState::Failed, false)
    );
    // The notification turn runs but the process crashes before its batch is durable.
    assert_eq!(b.next_notification(), Some(g));
    let (_lost, _token) = b.seal();
    // Restart: the notification was never committed, so it is due again, once.
    let rows_now: Vec<GroupRow> = table.values().cloned().collect();
    let mut b = recovered("b", &rows_now);
    b.start(at(20));
    assert_eq!(b.next_notification(), Some(g));
    assert_eq!(b.next_notification(), None);
    let (rows, token) = b.seal();
    b.durable(token);
    apply(&mut table, rows);
    // Restart again: heard, durably; never again, whatever else says the group failed.
    let mut b = recovered("b", &table.values().cloned().collect::<Vec<_>>());
    b.start(at(30));
    assert_eq!(b.next_notification(), None);
    let _ = b.on_message(at(40), &pid("a"), FuseMsg::Fail { groups: vec![g] });
    b.tick(at(40));
    assert_eq!(b.next_notification(), None);
    assert_eq!(b.take_outputs(), [], "a failed group is not monitored");
    assert!(!b.needs_seal());
}

#[test]
fn a_bad_stored_record_is_a_typed_error_naming_the_group() {
    let g = gid(5);
    let garbage = GroupRow {
        group: g.0,
        record: vec![1, 2, 3],
    };
    let err = Fuse::recover(pid("a"), &tuning(), &[garbage]).unwrap_err();
    assert_eq!(err.group, g);
    let bad_member = row(g, "a", &["a", ""], GroupState::Live, false);
    let err: BadGroupRecord = Fuse::recover(pid("a"), &tuning(), &[bad_member]).unwrap_err();
    assert_eq!(err.to_string(), format!("{g}: bad member ``"));
}

#[test]
fn a_lone_creator_is_live_at_once_and_monitors_nobody() {
    let g = gid(1);
    let mut a = Fuse::new(pid("a"), &tuning());
    a.created(at(0), g, vec![]);
    assert_eq!(state(&a, g), (GroupState::Live, None));
    assert_eq!(commit(&mut a)[0].1.state, GroupState::Live);
    a.tick(at(0));
    assert_eq!(a.take_outputs(), []);
    assert_eq!(a.deadline(), None);
    a.signal(g);
    assert_eq!(a.next_notification(), Some(g));
    commit(&mut a);
    assert_eq!(a.take_outputs(), [], "no one else to tell");
}
