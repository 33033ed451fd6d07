//! FUSE groups (Dunagan et al., OSDI 2004) over shared liveness (Horus light-weight groups):
//! permanent failures become a notification every live member hears, exactly once, within a
//! bound, even if every notification message is lost.
//!
//! A group is created by one process ([`crate::Turn::fuse_create`]) for a set of members.
//! States, per member:
//!
//! - `Creating` (creator): recorded; `Create` is sent to every member (and resent every
//!   heartbeat interval) until each `Confirm`s, or the creation timeout fails the group.
//! - `Joined` (member): recorded durably, then `Confirm`ed to the creator.
//! - `Live`: creator, once every member confirmed; members, on `Established` (or a list from a
//!   peer showing the group established).
//! - `Failed`: one-shot, forever. The handler hears `Input::FuseFailure` exactly once: the
//!   notification turn and the `notified` flag commit together.
//!
//! Liveness is per pair, not per group: one heartbeat every `fuse_heartbeat` to each peer that
//! shares any non-failed group, carrying a digest of the shared groups this process vouches
//! for (the XOR of one CRC32 per group, kept up to date change by change, and their count).
//! A digest that disagrees makes the receiver answer with its list of shared groups, when the
//! same disagreement shows at two heartbeats in a row or after [`LIST_AFTER_DISAGREEMENTS`]
//! (states still in flight, as during creation, settle by themselves); a group missing from
//! a peer's list is failed if it is `Live` here or the peer is its creator (during creation a
//! member may not have heard of it yet), and only if the list echoes a heartbeat stamp of
//! ours from after the group's last state change here (an older list may predate the peer's
//! joining). Silence from a peer for `fuse_t_fail + 2 x fuse_heartbeat` fails every group
//! shared with it. A failing member also tells the other members directly (`Fail`,
//! best effort: the fast path).
//!
//! Cost: the per-peer state (`liveness.rs`: last heard, digest, counts) makes a tick, a
//! heartbeat and its check cost the same for one group as for ten thousand; only a list
//! exchange walks the groups. Control messages name many groups each, and what one commit
//! releases to a peer is merged into as few frames as fit ([`LIST_GROUPS_PER_FRAME`]
//! groups per frame), so creating or failing ten thousand groups costs a few datagrams per
//! peer rather than ten thousand.
//!
//! Output validity: what a process says about groups (confirmations, lists, digests, `Fail`)
//! reflects only its *durable* group states; messages caused by a group change leave after
//! the batch recording it commits. So a rolled-back `fuse_signal` can never fail a group.
//!
//! The bound: a member that fails a group stops vouching once that is durable; from then on
//! each peer's heartbeat disagrees with its digest, at the second such heartbeat (at most two
//! intervals later) it answers with its list, and the peer fails the group: about
//! `2 x fuse_heartbeat` plus a commit after the first failure even if every direct `Fail` was
//! lost; a silent member is failed after `fuse_t_fail + 2 x fuse_heartbeat` of silence
//! (the slack covers the heartbeat period before a crash and one lost heartbeat, so that
//! crash-restarts of up to `0.9 x fuse_t_fail` are masked), so every live member hears
//! within `fuse_t_fail + 2 x fuse_heartbeat` of the failed member's last frame.
//!
//! # The machine
//!
//! [`Fuse`] holds every piece of FUSE state of one process (groups, per-peer liveness, its
//! stamp clock, the notification queue, messages waiting for a batch to become durable) and
//! knows nothing of the engine, the handler, frames or the store beyond the rows it hands
//! out. Time comes with every event; it reads no clock and does no I/O. The engine
//! (`engine/mod.rs`) composes it:
//!
//! - Events in: [`Fuse::created`] and [`Fuse::signal`] (a turn's effects),
//!   [`Fuse::heard`] (any frame from a peer), [`Fuse::on_heartbeat`] and
//!   [`Fuse::on_message`] (FUSE frames), [`Fuse::tick`] (time passed), [`Fuse::seal`] and
//!   [`Fuse::durable`] (the filling batch was sealed, then became durable),
//!   [`Fuse::start`] after [`Fuse::recover`].
//! - Outputs out: [`Fuse::take_outputs`] ([`FuseOutput::Send`] a control message,
//!   [`FuseOutput::Heartbeat`]), which the engine turns into frames;
//!   [`Fuse::next_notification`], a failed group whose notification turn the engine runs
//!   next; [`Fuse::needs_seal`], true when group changes must be committed even if no turn
//!   ran; [`Fuse::deadline`], when to tick next.
//!
//! Submodules, one per protocol step: `wire` (the messages and their merging into frames),
//! `group` (one group's record and states), `liveness` (per-peer heartbeats, silence and
//! digests), `list` (building and judging list exchanges). The machine is tested alone,
//! event by event with exact outputs, in `ken/tests/it/fuse_machine.rs`.

mod group;
mod list;
mod liveness;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ken_store::{GroupChange, GroupRow};
use ken_transport::ProcessId;

pub use crate::fuse_types::{FuseError, GroupId};
pub use group::{BadGroupRecord, GroupRecord, GroupState, GroupStatus};
pub use liveness::LIST_AFTER_DISAGREEMENTS;
pub use wire::{FuseMsg, Heartbeat, LIST_GROUPS_PER_FRAME};

use group::Group;
use liveness::{Due, Pairs};
use wire::Outgoing;

use crate::{Time, Tuning};

/// A change in a group's life that the handler hears as a turn
/// ([`crate::Input::FuseJoined`], [`crate::Input::FuseLive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// This process recorded itself as a member of a group another process created.
    Joined,
    /// The group became live here: every member recorded it.
    Live,
}

/// What the machine asks its host to transmit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FuseOutput {
    /// A control message for `to`, as a `Fuse` frame (the engine sends it only if `to` is in
    /// its address book).
    Send { to: ProcessId, msg: FuseMsg },
    /// A heartbeat for `to`, as a `Heartbeat` frame.
    Heartbeat { to: ProcessId, hb: Heartbeat },
}

/// Counters over the life of the machine (not durable). The engine copies them into its
/// [`crate::engine::EngineStats`]; what depends on frames (messages, heartbeats, bytes) the engine
/// counts itself, where it builds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuseStats {
    /// Failure notifications handed out by [`Fuse::next_notification`].
    pub notifications: u64,
    /// Lists sent in answer to disagreeing digests (one per answer, however many frames).
    pub list_exchanges: u64,
    /// Groups missing from a peer's list that was older than the group's state here (see
    /// [`FuseMsg::List`]): not counted against the group.
    pub stale_lists: u64,
    /// Heartbeats and lists not credited as proof of life because their stamp was not newer
    /// than the last one heard from the peer (with [`Fuse::require_fresh_stamps`]).
    pub stale_stamps: u64,
}

/// Parts of a received FUSE message that were malformed and ignored (the rest was applied);
/// the engine counts each one as a malformed frame.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Malformed(pub u32);

/// Names the batch a [`Fuse::seal`] went into; handed back to [`Fuse::durable`].
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub struct SealToken(u64);

/// The group changes and messages of the batch committing.
#[derive(Debug)]
struct Sealed {
    token: u64,
    /// The states the batch records.
    states: Vec<(GroupId, GroupState)>,
    /// Messages to send once it is durable.
    out: Vec<(ProcessId, FuseMsg)>,
}

/// The FUSE machine of one process.
#[derive(Debug)]
pub struct Fuse {
    /// This process.
    id: ProcessId,
    heartbeat: Duration,
    t_fail: Duration,
    create_timeout: Duration,
    groups: BTreeMap<GroupId, Group>,
    pairs: Pairs,
    /// The stamps' clock: the newest `now` stamped in this life (see [`Fuse::stamp`]).
    clock: Time,
    /// Failed groups whose notification turn has not run (checked again when taken).
    notify_queue: VecDeque<GroupId>,
    /// Joins and groups become live since the last seal, in order: their lifecycle turns
    /// run into the filling batch that records the change (see [`Fuse::next_lifecycle`]).
    lifecycle: VecDeque<(GroupId, Lifecycle)>,
    /// Some group changed since the last seal.
    unsealed: bool,
    /// Messages caused by the changes of the filling batch: they leave once it is durable.
    filling_out: Vec<(ProcessId, FuseMsg)>,
    committing: Option<Sealed>,
    seals: u64,
    outputs: Vec<FuseOutput>,
    stats: FuseStats,
    /// Liveness only from stamps newer than the last heard (a cluster with a key).
    fresh_stamps: bool,
}

impl Fuse {
    /// The machine of a process with no groups.
    pub fn new(id: ProcessId, tuning: &Tuning) -> Fuse {
        Fuse {
            pairs: Pairs::new(id.clone()),
            id,
            heartbeat: tuning.fuse_heartbeat,
            t_fail: tuning.fuse_t_fail,
            create_timeout: tuning.fuse_create_timeout,
            groups: BTreeMap::new(),
            clock: Time::ZERO,
            notify_queue: VecDeque::new(),
            lifecycle: VecDeque::new(),
            unsealed: false,
            filling_out: Vec::new(),
            committing: None,
            seals: 0,
            outputs: Vec::new(),
            stats: FuseStats::default(),
            fresh_stamps: false,
        }
    }

    /// With `on`, only a heartbeat or list whose stamp is newer than the last heard from its
    /// sender proves the sender alive, and [`Fuse::heard`] (any other frame) proves nothing:
    /// a replayed frame cannot keep a dead peer alive. For clusters with a key, where stamps
    /// cannot be forged; the engine sets it.
    pub fn require_fresh_stamps(&mut self, on: bool) {
        self.fresh_stamps = on;
    }

    /// Credits `stamp` from `peer`: its liveness (unless [`Fuse::require_fresh_stamps`]
    /// finds it stale) and what our lists echo.
    fn heard_stamped(&mut self, now: Time, peer: &ProcessId, stamp: Time) {
        if self.fresh_stamps {
            if self.pairs.echo(peer) < stamp {
                self.pairs.heard(now, peer);
            } else {
                self.stats.stale_stamps += 1;
            }
        }
        self.pairs.heard_stamp(peer, stamp);
    }

    /// The machine of a restarted process, from its stored groups (all durable). A failed
    /// group whose notification did not commit is queued again. Call [`Fuse::start`] next.
    pub fn recover(
        id: ProcessId,
        tuning: &Tuning,
        rows: &[GroupRow],
    ) -> Result<Fuse, BadGroupRecord> {
        let mut fuse = Fuse::new(id, tuning);
        let now = Time::ZERO;
        let stamp = fuse.stamp(now);
        for row in rows {
            let (id, g) =
                Group::recovered(row, &fuse.id, now, now.plus(fuse.create_timeout), stamp)?;
            if g.state == GroupState::Failed && !g.notified {
                fuse.notify_queue.push_back(id);
            }
            if g.shared() {
                fuse.pairs.count_shared(&g.members, 1);
            }
            if g.state == GroupState::Creating {
                fuse.pairs.count_creating(&g.members, 1);
            }
            fuse.pairs.vouch_change(id, &g.members, None, g.vouched());
            fuse.groups.insert(id, g);
        }
        Ok(fuse)
    }

    /// The process starts at `now`: recovered groups still being created get their creation
    /// timeout from now (a restart grants a fresh one).
    pub fn start(&mut self, now: Time) {
        for g in self.groups.values_mut() {
            g.deadline = now.plus(self.create_timeout);
        }
    }

    // ---- events: this process's turns ----

    /// A turn created group `id` of `members` (this process is added). Its `Create`s leave
    /// once the group is durable (at the first tick after [`Fuse::durable`]).
    pub fn created(&mut self, now: Time, id: GroupId, mut members: Vec<ProcessId>) {
        members.push(self.id.clone());
        members.sort();
        members.dedup();
        let unconfirmed: BTreeSet<ProcessId> =
            members.iter().filter(|m| **m != self.id).cloned().collect();
        let state = if unconfirmed.is_empty() {
            GroupState::Live
        } else {
            GroupState::Creating
        };
        self.pairs.count_shared(&members, 1);
        let stamp = self.stamp(now);
        if state == GroupState::Creating {
            self.pairs.count_creating(&members, 1);
        }
        let deadline = now.plus(self.create_timeout);
        let g = Group::recorded(
            self.id.clone(),
            members,
            state,
            unconfirmed,
            now,
            deadline,
            stamp,
        );
        self.groups.insert(id, g);
        if state == GroupState::Live {
            self.lifecycle.push_back((id, Lifecycle::Live));
        }
        self.unsealed = true;
    }

    /// A turn signalled group `id`: it fails here and at every member.
    pub fn signal(&mut self, id: GroupId) {
        self.fail(id, "signalled by this process");
    }

    // ---- events: the network ----

    /// `peer` came back as a new incarnation: its old incarnation, a member of our shared
    /// groups, is gone for good (its store was replaced). Fails every group shared with it
    /// at once, as a silence of `T_fail` would.
    pub fn peer_replaced(&mut self, peer: &ProcessId) {
        self.fail_shared_with(peer, "a member's store was replaced (a new incarnation)");
    }

    /// Anything heard from `peer` (any frame) proves it alive, unless
    /// [`Fuse::require_fresh_stamps`] is on (then only fresh stamps do).
    pub fn heard(&mut self, now: Time, peer: &ProcessId) {
        if !self.fresh_stamps {
            self.pairs.heard(now, peer);
        }
    }

    /// A heartbeat from `from`: compares its digest with ours and answers a disagreement
    /// with our list (see [`LIST_AFTER_DISAGREEMENTS`]).
    pub fn on_heartbeat(&mut self, now: Time, from: &ProcessId, hb: Heartbeat) {
        self.heard_stamped(now, from, hb.stamp());
        let ours = self.pairs.digest(from);
        if self.pairs.disagreement_answered(from, ours, hb.values()) {
            self.send_list(now, from);
        }
    }

    /// A control message from `from` (a known peer: the engine checked addressing).
    pub fn on_message(&mut self, now: Time, from: &ProcessId, msg: FuseMsg) -> Malformed {
        match msg {
            FuseMsg::Create { creator, groups } => {
                if from.as_str() != creator {
                    return Malformed(1);
                }
                self.on_create(now, from, groups)
            }
            FuseMsg::Confirm { groups } => {
                for group in groups {
                    self.on_confirm(now, from, group);
                }
                Malformed(0)
            }
            FuseMsg::Established { groups } => {
                for group in groups {
                    self.establish(now, group);
                }
                Malformed(0)
            }
            FuseMsg::Fail { groups } => {
                for group in groups {
                    if self
                        .groups
                        .get(&group)
                        .is_some_and(|g| g.members.contains(from))
                    {
                        self.fail(group, "a member said it failed");
                    }
                }
                Malformed(0)
            }
            FuseMsg::List {
                lo,
                hi,
                groups,
                stamp,
                echo,
            } => {
                let Some(range) = list::range(lo, hi, &groups) else {
                    return Malformed(1);
                };
                self.heard_stamped(now, from, Time(stamp));
                self.on_list(now, from, range, groups, Time(echo));
                Malformed(0)
            }
        }
    }

    // ---- events: time and durability ----

    /// Time passed: creation retries and timeouts, heartbeats, silence.
    pub fn tick(&mut self, now: Time) {
        self.tick_creations(now);
        self.tick_liveness(now);
    }

    /// True when group changes wait for the next seal: the filling batch must be committed
    /// even if no turn ran.
    pub fn needs_seal(&self) -> bool {
        self.unsealed
    }

    /// The filling batch is sealed: the records of the groups changed since the last seal
    /// go into it, and the messages those changes caused wait for [`Fuse::durable`]. At most
    /// one sealed batch is outstanding.
    pub fn seal(&mut self) -> (Vec<GroupChange>, SealToken) {
        assert!(
            self.committing.is_none(),
            "a batch is sealed only when the previous one is durable"
        );
        let mut rows = Vec::new();
        let mut states = Vec::new();
        for (id, g) in self.groups.iter_mut().filter(|(_, g)| g.dirty) {
            g.dirty = false;
            rows.push(GroupChange::Put(GroupRow {
                group: id.0,
                record: ken_store::codec::encode(&g.record()),
            }));
            states.push((*id, g.state));
        }
        self.unsealed = false;
        self.seals += 1;
        self.committing = Some(Sealed {
            token: self.seals,
            states,
            out: std::mem::take(&mut self.filling_out),
        });
        (rows, SealToken(self.seals))
    }

    /// The batch sealed as `token` is durable: its group states are what this process now
    /// vouches for, and its messages leave (merged per peer).
    ///
    /// # Panics
    /// If `token` is not the outstanding seal (a host bug).
    pub fn durable(&mut self, token: SealToken) {
        let sealed = self.committing.take().expect("durable without a seal");
        assert_eq!(sealed.token, token.0, "durable for another seal");
        for (id, state) in sealed.states {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.durable != Some(state) {
                let old = g.vouched();
                g.durable = Some(state);
                let new = g.vouched();
                if old != new {
                    self.pairs.vouch_change(id, &g.members, old, new);
                }
            }
        }
        self.send_merged(sealed.out);
    }

    // ---- outputs ----

    /// What to transmit, in order.
    pub fn take_outputs(&mut self) -> Vec<FuseOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// The next failed group whose handler has not heard it, marked notified: the caller
    /// runs its notification turn into the filling batch, so that the turn and the flag
    /// commit together (exactly once per member per group).
    pub fn next_notification(&mut self) -> Option<GroupId> {
        while let Some(id) = self.notify_queue.pop_front() {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.notified || g.state != GroupState::Failed {
                continue;
            }
            g.notified = true;
            g.dirty = true;
            self.unsealed = true;
            self.stats.notifications += 1;
            return Some(id);
        }
        None
    }

    /// The next lifecycle change (this process joined a group, or a group became live here)
    /// whose turn has not run. The caller runs its turn into the filling batch before the
    /// batch is sealed: the change is recorded in that batch too, so the turn and the
    /// change commit together, exactly once, and a recovered group needs no flag (every
    /// durable change's turn committed with it). Taken in order.
    pub fn next_lifecycle(&mut self) -> Option<(GroupId, Lifecycle)> {
        self.lifecycle.pop_front()
    }

    /// True while a lifecycle turn waits to run (a host must not seal then).
    pub fn lifecycle_pending(&self) -> bool {
        !self.lifecycle.is_empty()
    }

    /// When [`Fuse::tick`] should next be called, if anything is scheduled.
    pub fn deadline(&self) -> Option<Time> {
        let mut next: Option<Time> = None;
        let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        if self.pairs.any_creating() {
            for g in self.groups.values() {
                if g.state == GroupState::Creating {
                    at(g.deadline);
                    if g.durable.is_some() {
                        at(g.next_create_send);
                    }
                }
            }
        }
        self.pairs.deadlines(self.silence_limit(), at);
        next
    }

    /// One group's summary.
    pub fn group(&self, id: GroupId) -> Option<GroupStatus> {
        self.groups.get(&id).map(|g| g.status(id))
    }

    /// Every group, for tests and tools.
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(|(id, g)| g.status(*id)).collect()
    }

    pub fn stats(&self) -> &FuseStats {
        &self.stats
    }

    /// Recomputes every per-peer count and digest from the groups and compares (cost:
    /// peers x groups; for tests and the simulation).
    pub fn check_invariants(&self) {
        for (p, shared, creating, digest, vouched) in self.pairs.counts() {
            let expect_shared = self
                .groups
                .values()
                .filter(|g| g.shared() && g.has_member(p))
                .count() as u32;
            let expect_creating = self
                .groups
                .values()
                .filter(|g| g.state == GroupState::Creating && g.has_member(p))
                .count() as u32;
            let list = self.vouched_with(p);
            let expect_digest = list
                .iter()
                .fold(0, |d, (id, est)| d ^ liveness::digest_entry(*id, *est));
            assert_eq!(
                (shared, creating, digest, vouched),
                (
                    expect_shared,
                    expect_creating,
                    expect_digest,
                    list.len() as u32
                ),
                "FUSE bookkeeping of peer {p} at {}",
                self.id
            );
        }
        assert_eq!(
            self.unsealed,
            self.groups.values().any(|g| g.dirty),
            "FUSE: `unsealed` says whether a group changed since the last seal"
        );
    }

    // ---- steps ----

    /// Fails `id` here (idempotent): records it, queues the notification and the fast-path
    /// `Fail` to the other members (sent once the failure is durable).
    fn fail(&mut self, id: GroupId, why: &str) {
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        if g.state == GroupState::Failed {
            return;
        }
        tracing::info!(group = %id, why, "FUSE group failed");
        let was_creating = g.state == GroupState::Creating;
        g.state = GroupState::Failed;
        g.dirty = true;
        self.pairs.count_shared(&g.members, -1);
        if was_creating {
            self.pairs.count_creating(&g.members, -1);
        }
        self.queue_to_others(id, &FuseMsg::Fail { groups: vec![id] });
        self.notify_queue.push_back(id);
        self.unsealed = true;
    }

    /// Queues `msg` to every other member of `id`, to leave when the filling batch commits.
    fn queue_to_others(&mut self, id: GroupId, msg: &FuseMsg) {
        let Some(g) = self.groups.get(&id) else {
            return;
        };
        for m in g.members.iter().filter(|m| **m != self.id) {
            self.filling_out.push((m.clone(), msg.clone()));
        }
    }

    /// `from` (the creator, checked) asks this process to join `groups`. A group already
    /// known is answered at once from its durable state (merged); a new one is recorded and
    /// confirmed once that is durable.
    fn on_create(
        &mut self,
        now: Time,
        from: &ProcessId,
        groups: Vec<(GroupId, Vec<String>)>,
    ) -> Malformed {
        let mut malformed = 0;
        let mut answers = Vec::new();
        for (group, members) in groups {
            if let Some(g) = self.groups.get(&group) {
                // Known: answer from durable state only (a pending record confirms on commit).
                let groups = vec![group];
                match g.durable {
                    Some(GroupState::Failed) => {
                        answers.push((from.clone(), FuseMsg::Fail { groups }))
                    }
                    Some(_) => answers.push((from.clone(), FuseMsg::Confirm { groups })),
                    None => {}
                }
                continue;
            }
            match self.join_members(members) {
                Some(members) => self.join(now, from, group, members),
                None => malformed += 1,
            }
        }
        self.send_merged(answers);
        Malformed(malformed)
    }

    /// The members of a group this process is asked to join, sorted and deduplicated, if
    /// they are valid ids, include this process and are not too many.
    fn join_members(&self, members: Vec<String>) -> Option<Vec<ProcessId>> {
        let mut parsed = Vec::with_capacity(members.len());
        for m in members {
            parsed.push(ProcessId::new(m).ok()?);
        }
        if !parsed.contains(&self.id) || parsed.len() > crate::limits::GROUP_MEMBERS_MAX {
            return None;
        }
        parsed.sort();
        parsed.dedup();
        Some(parsed)
    }

    /// Records `group` of `members`, created by `from`, as `Joined`; its `Confirm` leaves
    /// once that is durable.
    fn join(&mut self, now: Time, from: &ProcessId, group: GroupId, members: Vec<ProcessId>) {
        self.pairs.count_shared(&members, 1);
        let stamp = self.stamp(now);
        let deadline = now.plus(self.create_timeout);
        let g = Group::recorded(
            from.clone(),
            members,
            GroupState::Joined,
            BTreeSet::new(),
            now,
            deadline,
            stamp,
        );
        self.groups.insert(group, g);
        self.lifecycle.push_back((group, Lifecycle::Joined));
        self.filling_out.push((
            from.clone(),
            FuseMsg::Confirm {
                groups: vec![group],
            },
        ));
        self.unsealed = true;
    }

    /// `from` confirmed `group`: once every member has, the creator's group is `Live` and
    /// `Established` goes to the members (after the commit).
    fn on_confirm(&mut self, now: Time, from: &ProcessId, group: GroupId) {
        let stamp = self.stamp(now);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if g.creator != self.id || !g.unconfirmed.remove(from) {
            return;
        }
        if g.unconfirmed.is_empty() && g.state == GroupState::Creating {
            g.state = GroupState::Live;
            g.vouch_since = stamp;
            g.dirty = true;
            self.pairs.count_creating(&g.members, -1);
            self.queue_to_others(
                group,
                &FuseMsg::Established {
                    groups: vec![group],
                },
            );
            self.lifecycle.push_back((group, Lifecycle::Live));
            self.unsealed = true;
        }
    }

    /// A member learns that `group` is established: `Joined` becomes `Live`.
    fn establish(&mut self, now: Time, group: GroupId) {
        let stamp = self.stamp(now);
        if let Some(g) = self.groups.get_mut(&group) {
            if g.state == GroupState::Joined {
                g.state = GroupState::Live;
                g.vouch_since = stamp;
                g.dirty = true;
                self.lifecycle.push_back((group, Lifecycle::Live));
                self.unsealed = true;
            }
        }
    }

    /// A well-formed list from `from` (see the `list` module): fails what is missing from a
    /// fresh list, establishes what it shows established.
    fn on_list(
        &mut self,
        now: Time,
        from: &ProcessId,
        range: list::Range,
        listed: Vec<(GroupId, bool)>,
        echo: Time,
    ) {
        let verdict = list::judge(&self.groups, range, from, listed, echo);
        self.stats.stale_lists += verdict.stale;
        for id in verdict.fail {
            self.fail(id, "a member no longer vouches for it");
        }
        for id in verdict.establish {
            self.establish(now, id);
        }
    }

    /// Sends our list of the groups shared with `to`, in as many frames as it takes.
    fn send_list(&mut self, now: Time, to: &ProcessId) {
        self.stats.list_exchanges += 1;
        let mine = self.vouched_with(to);
        let stamp = self.stamp(now).as_micros();
        let echo = self.pairs.echo(to).as_micros();
        for msg in list::build(&mine, stamp, echo) {
            self.send(to, msg);
        }
    }

    /// Creation: groups whose creation timed out fail; `Create` is resent (every heartbeat
    /// interval, once the group is durable) to the members that have not confirmed.
    fn tick_creations(&mut self, now: Time) {
        if !self.pairs.any_creating() {
            return;
        }
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            if g.state != GroupState::Creating {
                continue;
            }
            if now >= g.deadline {
                expired.push(*id);
            } else if g.durable.is_some() && now >= g.next_create_send {
                g.next_create_send = now.plus(self.heartbeat);
                let msg = FuseMsg::Create {
                    creator: g.creator.to_string(),
                    groups: vec![(*id, g.members.iter().map(|m| m.to_string()).collect())],
                };
                for m in &g.unconfirmed {
                    resend.push((m.clone(), msg.clone()));
                }
            }
        }
        for id in expired {
            self.fail(id, "creation timed out: a member did not confirm");
        }
        self.send_merged(resend);
    }

    /// Liveness: each monitored peer silent for the silence limit fails the groups shared
    /// with it; each one due a heartbeat gets one.
    fn tick_liveness(&mut self, now: Time) {
        let silence = self.silence_limit();
        for p in &self.pairs.monitored() {
            match self.pairs.tick(now, p, silence, self.heartbeat) {
                Due::Silent => self.fail_shared_with(p, "a member was silent for T_fail"),
                Due::Heartbeat => {
                    let (digest, groups) = self.pairs.digest(p);
                    let hb = Heartbeat::new(digest, groups, self.stamp(now));
                    self.outputs
                        .push(FuseOutput::Heartbeat { to: p.clone(), hb });
                }
                Due::Nothing => {}
            }
        }
    }

    /// `peer` was silent too long: every group shared with it fails.
    fn fail_shared_with(&mut self, peer: &ProcessId, why: &'static str) {
        let shared: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.shared() && g.members.contains(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in shared {
            self.fail(id, why);
        }
    }

    /// Sends `out`, merging what goes to the same peer into as few frames as fit.
    fn send_merged(&mut self, out: Vec<(ProcessId, FuseMsg)>) {
        let mut per_peer: BTreeMap<ProcessId, Outgoing> = BTreeMap::new();
        for (to, msg) in out {
            per_peer.entry(to).or_default().add(msg);
        }
        for (to, o) in per_peer {
            for msg in o.into_messages() {
                self.send(&to, msg);
            }
        }
    }

    fn send(&mut self, to: &ProcessId, msg: FuseMsg) {
        self.outputs.push(FuseOutput::Send {
            to: to.clone(),
            msg,
        });
    }

    /// The groups shared with `peer` that this process vouches for, sorted.
    fn vouched_with(&self, peer: &ProcessId) -> Vec<(GroupId, bool)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.has_member(peer))
            .filter_map(|(id, g)| g.vouched().map(|est| (*id, est)))
            .collect()
    }

    /// Silence that fails a peer: `T_fail` plus two heartbeat intervals (see
    /// [`crate::limits::FUSE_T_FAIL`]).
    fn silence_limit(&self) -> Duration {
        self.t_fail + 2 * self.heartbeat
    }

    /// The clock for FUSE stamps (heartbeats, lists, a group's `vouch_since`): `now`, but
    /// never behind an earlier stamp of this life, so that a wall-clock step backwards
    /// cannot make a stale list look fresh.
    fn stamp(&mut self, now: Time) -> Time {
        self.clock = self.clock.max(now);
        self.clock
    }
}
