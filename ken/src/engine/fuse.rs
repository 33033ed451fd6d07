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
//! shares any non-failed group, carrying a digest (CRC32) of the shared groups this process
//! vouches for. A digest mismatch makes the receiver answer with its list of shared groups;
//! a group missing from a peer's list is failed if it is `Live` here or the peer is its
//! creator (during creation a member may not have heard of it yet). Silence from a peer for
//! `fuse_t_fail` fails every group shared with it. A failing member also tells the other
//! members directly (`Fail`, best effort: the fast path).
//!
//! Output validity: what a process says about groups (confirmations, lists, digests, `Fail`)
//! reflects only its *durable* group states; messages caused by a group change leave after
//! the batch recording it commits. So a rolled-back `fuse_signal` can never fail a group.
//!
//! The bound: a member that fails a group stops vouching once that is durable; its peers
//! see the digest change at their next heartbeat from it (at most one interval later), swap
//! lists and fail the group: about `2 x fuse_heartbeat` plus a commit after the first
//! failure; a silent member is failed after `fuse_t_fail + 2 x fuse_heartbeat` of silence
//! (the slack covers the heartbeat period before a crash and one lost heartbeat, so that
//! crash-restarts of up to `0.9 x fuse_t_fail` are masked), so every live member hears
//! within `fuse_t_fail + 2 x fuse_heartbeat` of the failed member's last frame.

use std::collections::{BTreeMap, BTreeSet};

use ken_store::{GroupChange, GroupRow};
use ken_transport::{Frame, FrameKind, Incarnation, ProcessId, Seq};
use serde::{Deserialize, Serialize};

use super::{Command, Engine, EngineError};
use crate::handler::{Handler, Input};
use crate::Time;

/// A FUSE group: 128 random bits chosen by its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("g-")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Where a group stands at one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    Creating,
    Joined,
    Live,
    Failed,
}

/// A group as stored (`fuse_groups.record`, encoded with the codec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub creator: String,
    pub members: Vec<String>,
    pub state: GroupState,
    /// The handler heard the failure (committed with the notification turn).
    pub notified: bool,
    pub created_ms: u64,
}

/// FUSE control messages (payload of `Fuse` frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FuseMsg {
    Create {
        group: GroupId,
        creator: String,
        members: Vec<String>,
    },
    Confirm {
        group: GroupId,
    },
    Established {
        group: GroupId,
    },
    Fail {
        group: GroupId,
    },
    /// The groups shared with the receiver that the sender vouches for, (id, established),
    /// among those whose id lies in `[lo, hi)` (`None`: unbounded on that side). A list too
    /// long for one datagram goes out as several, each covering its own range, so each one
    /// can be judged on its own (see [`LIST_GROUPS_PER_FRAME`]).
    List {
        lo: Option<GroupId>,
        hi: Option<GroupId>,
        groups: Vec<(GroupId, bool)>,
    },
}

/// Payload of `Heartbeat` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub digest: u32,
    pub groups: u32,
}

/// One group at this member.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub creator: ProcessId,
    /// Sorted, deduplicated, this process included.
    pub members: Vec<ProcessId>,
    pub state: GroupState,
    pub notified: bool,
    /// The state as of the last durable batch (`None`: not yet durable).
    pub durable: Option<GroupState>,
    /// Creator, while creating: members that have not confirmed.
    pub unconfirmed: BTreeSet<ProcessId>,
    /// Creator: when creation fails if not complete.
    pub deadline: Time,
    pub next_create_send: Time,
    pub created: Time,
    pub dirty: bool,
}

impl Group {
    /// Vouched for to peers: durable and not failed.
    fn vouched(&self) -> Option<bool> {
        match self.durable {
            Some(GroupState::Failed) | None => None,
            Some(s) => Some(s == GroupState::Live),
        }
    }

    pub fn record(&self) -> GroupRecord {
        GroupRecord {
            creator: self.creator.to_string(),
            members: self.members.iter().map(|m| m.to_string()).collect(),
            state: self.state,
            notified: self.notified,
            created_ms: self.created.as_millis(),
        }
    }
}

/// Groups per `List` frame: an entry is 17 bytes encoded (id and flag), so a full list frame
/// is about 51 KB, under the datagram limit with room for the header and the range bounds.
/// Ten thousand groups shared with a peer go out as four frames.
pub(crate) const LIST_GROUPS_PER_FRAME: usize = 3_000;

const _: () = assert!(
    LIST_GROUPS_PER_FRAME * 17 + 64 <= ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES
);

/// Liveness of one peer that is (or was) a member of a group of this process. One entry per
/// peer, whatever the number of groups: the engine's per-peer FUSE cost does not grow with
/// the groups, except where a list is built (a digest after a change, a list exchange).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    pub last_heard: Time,
    pub next_heartbeat: Time,
    /// Groups here, not failed, that the peer is a member of: monitored while positive.
    shared: u32,
    /// Monitoring (re)starts at the next tick, which sets `last_heard` and `next_heartbeat`.
    fresh: bool,
    /// (digest, count) of the shared groups this process vouches for; `None` once a durable
    /// change to one of them makes it stale (recomputed at the next use).
    vouched: Option<(u32, u32)>,
}

impl Liveness {
    fn new() -> Liveness {
        Liveness {
            last_heard: Time::ZERO,
            next_heartbeat: Time::ZERO,
            shared: 0,
            fresh: true,
            vouched: None,
        }
    }
}

/// Why [`crate::Turn::fuse_create`] refused a group. Nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    #[error("member `{0}` is not in this process's address book")]
    UnknownMember(ProcessId),
    #[error("a group has at most {max} members, got {got}")]
    TooManyMembers { got: usize, max: usize },
}

/// A summary of one group, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub id: GroupId,
    pub creator: ProcessId,
    pub members: Vec<ProcessId>,
    pub state: GroupState,
    pub durable: Option<GroupState>,
    pub notified: bool,
}

impl<H: Handler> Engine<H> {
    /// Loads groups from the store at recovery.
    pub(super) fn recover_groups(
        &mut self,
        rows: &[GroupRow],
        now: Time,
    ) -> Result<(), EngineError> {
        for row in rows {
            let id = GroupId(row.group);
            let rec: GroupRecord = ken_store::codec::decode(&row.record)
                .map_err(|e| EngineError::BadGroup(format!("{id}: {e}")))?;
            let parse = |s: &String| {
                ProcessId::new(s.clone())
                    .map_err(|_| EngineError::BadGroup(format!("{id}: bad member `{s}`")))
            };
            let members = rec
                .members
                .iter()
                .map(parse)
                .collect::<Result<Vec<_>, _>>()?;
            let creator = parse(&rec.creator)?;
            let unconfirmed = if rec.state == GroupState::Creating {
                members.iter().filter(|m| **m != self.id).cloned().collect()
            } else {
                BTreeSet::new()
            };
            if rec.state == GroupState::Failed && !rec.notified {
                self.fuse_notify_queue.push_back(id);
            }
            self.touch_peers(&members, rec.state != GroupState::Failed, 1);
            self.groups.insert(
                id,
                Group {
                    creator,
                    members,
                    state: rec.state,
                    notified: rec.notified,
                    durable: Some(rec.state),
                    unconfirmed,
                    // A restart grants creation a fresh timeout.
                    deadline: now.plus(self.tuning.fuse_create_timeout),
                    next_create_send: now,
                    created: Time::from_millis(rec.created_ms),
                    dirty: false,
                },
            );
        }
        Ok(())
    }

    /// Every group, for tests and tools.
    pub fn groups(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(id, g)| GroupStatus {
                id: *id,
                creator: g.creator.clone(),
                members: g.members.clone(),
                state: g.state,
                durable: g.durable,
                notified: g.notified,
            })
            .collect()
    }

    /// A turn created a group (its id chosen by the turn).
    pub(super) fn fuse_created(&mut self, now: Time, id: GroupId, mut members: Vec<ProcessId>) {
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
        self.touch_peers(&members, true, 1);
        self.groups.insert(
            id,
            Group {
                creator: self.id.clone(),
                members,
                state,
                notified: false,
                durable: None,
                unconfirmed,
                deadline: now.plus(self.tuning.fuse_create_timeout),
                next_create_send: now,
                created: now,
                dirty: true,
            },
        );
        self.filling.nonempty = true;
    }

    /// Fails `id` here (idempotent): records it, queues the notification turn and the
    /// fast-path `Fail` to the other members (sent once the failure is durable).
    pub(super) fn fuse_fail(&mut self, id: GroupId, why: &str) {
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        if g.state == GroupState::Failed {
            return;
        }
        tracing::info!(group = %id, why, "FUSE group failed");
        g.state = GroupState::Failed;
        g.dirty = true;
        let members = g.members.clone();
        self.touch_peers(&members, true, -1);
        self.queue_to_others(id, &FuseMsg::Fail { group: id });
        self.fuse_notify_queue.push_back(id);
        self.filling.nonempty = true;
    }

    /// Queues `msg` to every other member of `id`, to leave when the filling batch commits.
    fn queue_to_others(&mut self, id: GroupId, msg: &FuseMsg) {
        let Some(g) = self.groups.get(&id) else {
            return;
        };
        for m in g.members.iter().filter(|m| **m != self.id) {
            self.filling.fuse_out.push((m.clone(), msg.clone()));
        }
    }

    /// Runs queued notification turns (one per failed group, exactly once).
    pub(super) fn fuse_run_notifications(&mut self, now: Time) {
        while let Some(id) = self.fuse_notify_queue.pop_front() {
            if self.failed {
                return;
            }
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.notified || g.state != GroupState::Failed {
                continue;
            }
            g.notified = true;
            g.dirty = true;
            self.stats.fuse_notifications += 1;
            self.run_turn(
                now,
                Input::FuseFailure { group: id },
                "fuse",
                id.to_string(),
                0,
            );
        }
    }

    /// Seal: dirty groups into the batch; returns their states for the durable view.
    pub(super) fn fuse_seal(&mut self, batch: &mut ken_store::Batch) -> Vec<(GroupId, GroupState)> {
        let mut snapshot = Vec::new();
        for (id, g) in self.groups.iter_mut().filter(|(_, g)| g.dirty) {
            g.dirty = false;
            batch.groups.push(GroupChange::Put(GroupRow {
                group: id.0,
                record: ken_store::codec::encode(&g.record()),
            }));
            snapshot.push((*id, g.state));
        }
        snapshot
    }

    /// Commit done: the batch's group states are durable; its FUSE messages may leave.
    pub(super) fn fuse_durable(
        &mut self,
        states: Vec<(GroupId, GroupState)>,
        out: Vec<(ProcessId, FuseMsg)>,
    ) {
        for (id, state) in states {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.durable != Some(state) {
                g.durable = Some(state);
                let members = g.members.clone();
                self.touch_peers(&members, false, 0);
            }
        }
        for (to, msg) in out {
            self.send_fuse(&to, &msg);
        }
    }

    fn peer_incarnation(&self, to: &ProcessId) -> Incarnation {
        self.peers.get(to).map_or(Incarnation(0), |p| p.incarnation)
    }

    pub(super) fn send_fuse(&mut self, to: &ProcessId, msg: &FuseMsg) {
        if !self.peers.contains_key(to) {
            return;
        }
        let frame = Frame {
            kind: FrameKind::Fuse,
            from: self.id.clone(),
            from_incarnation: self.incarnation,
            to: to.clone(),
            to_incarnation: self.peer_incarnation(to),
            seq: Seq(0),
            ack: Seq(0),
            payload: ken_store::codec::encode(msg),
        };
        let bytes = frame.encoded_len() as u64;
        self.stats.fuse_messages_sent += 1;
        self.stats.fuse_bytes_sent += bytes;
        if matches!(msg, FuseMsg::List { .. }) {
            self.stats.liveness_bytes_sent += bytes;
        }
        self.commands.push(Command::Send {
            to: to.clone(),
            frame,
            after: self.durable,
        });
    }

    /// The groups shared with `peer` that this process vouches for, sorted.
    fn vouched_with(&self, peer: &ProcessId) -> Vec<(GroupId, bool)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.members.contains(peer))
            .filter_map(|(id, g)| g.vouched().map(|est| (*id, est)))
            .collect()
    }

    /// (digest, count) of [`Self::vouched_with`] `peer`, cached per peer until a durable
    /// change to a group it shares.
    fn vouched_digest(&mut self, peer: &ProcessId) -> (u32, u32) {
        if let Some(v) = self.liveness.get(peer).and_then(|l| l.vouched) {
            return v;
        }
        let mine = self.vouched_with(peer);
        let v = (Self::digest(&mine), mine.len() as u32);
        if let Some(l) = self.liveness.get_mut(peer) {
            l.vouched = Some(v);
        }
        v
    }

    /// Sends our list of the groups shared with `to`, in as many frames as it takes.
    fn send_list(&mut self, to: &ProcessId) {
        self.stats.fuse_list_exchanges += 1;
        let mine = self.vouched_with(to);
        if mine.is_empty() {
            let msg = FuseMsg::List {
                lo: None,
                hi: None,
                groups: Vec::new(),
            };
            self.send_fuse(to, &msg);
            return;
        }
        let chunks: Vec<&[(GroupId, bool)]> = mine.chunks(LIST_GROUPS_PER_FRAME).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let msg = FuseMsg::List {
                lo: (i > 0).then(|| chunk[0].0),
                hi: chunks.get(i + 1).map(|next| next[0].0),
                groups: chunk.to_vec(),
            };
            self.send_fuse(to, &msg);
        }
    }

    /// Bookkeeping of the peers in `members` (this process skipped) when a group changes:
    /// `shared` moves by `delta` if `counts` (a group recorded, or failed), and the cached
    /// digest is dropped in any case (a durable change).
    fn touch_peers(&mut self, members: &[ProcessId], counts: bool, delta: i32) {
        for m in members.iter().filter(|m| **m != self.id) {
            let l = self
                .liveness
                .entry(m.clone())
                .or_insert_with(Liveness::new);
            l.vouched = None;
            if counts {
                l.shared = l
                    .shared
                    .checked_add_signed(delta)
                    .expect("a peer's shared-group count never goes negative");
                if l.shared == 0 {
                    l.fresh = true;
                }
            }
        }
    }

    fn digest(list: &[(GroupId, bool)]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for (id, est) in list {
            h.update(&id.0);
            h.update(&[u8::from(*est)]);
        }
        h.finalize()
    }

    /// Peers sharing any group not failed here.
    fn monitored(&self) -> Vec<ProcessId> {
        self.liveness
            .iter()
            .filter(|(_, l)| l.shared > 0)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// A heartbeat or FUSE frame from a known peer (the caller checked addressing).
    pub(super) fn on_fuse_frame(&mut self, now: Time, frame: Frame) {
        let from = frame.from.clone();
        if frame.kind == FrameKind::Heartbeat {
            let Ok(hb) = ken_store::codec::decode::<Heartbeat>(&frame.payload) else {
                self.stats.malformed_frames += 1;
                return;
            };
            if self.vouched_digest(&from) != (hb.digest, hb.groups) {
                self.send_list(&from);
            }
            return;
        }
        let Ok(msg) = ken_store::codec::decode::<FuseMsg>(&frame.payload) else {
            self.stats.malformed_frames += 1;
            return;
        };
        match msg {
            FuseMsg::Create {
                group,
                creator,
                members,
            } => self.on_create(now, &from, group, creator, members),
            FuseMsg::Confirm { group } => {
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                if g.creator != self.id || !g.unconfirmed.remove(&from) {
                    return;
                }
                if g.unconfirmed.is_empty() && g.state == GroupState::Creating {
                    g.state = GroupState::Live;
                    g.dirty = true;
                    self.queue_to_others(group, &FuseMsg::Established { group });
                    self.filling.nonempty = true;
                }
            }
            FuseMsg::Established { group } => self.establish(group),
            FuseMsg::Fail { group } => {
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| g.members.contains(&from))
                {
                    self.fuse_fail(group, "a member said it failed");
                }
            }
            FuseMsg::List { lo, hi, groups } => {
                use std::ops::Bound;
                let theirs: BTreeMap<GroupId, bool> = groups.into_iter().collect();
                let range = (
                    lo.map_or(Bound::Unbounded, Bound::Included),
                    hi.map_or(Bound::Unbounded, Bound::Excluded),
                );
                if lo.zip(hi).is_some_and(|(lo, hi)| lo >= hi)
                    || theirs
                        .keys()
                        .any(|id| !std::ops::RangeBounds::contains(&range, id))
                {
                    self.stats.malformed_frames += 1;
                    return;
                }
                let mut to_fail = Vec::new();
                let mut to_establish = Vec::new();
                for (id, g) in self.groups.range(range) {
                    if g.state == GroupState::Failed || !g.members.contains(&from) {
                        continue;
                    }
                    match theirs.get(id) {
                        None => {
                            let live_here = g.durable == Some(GroupState::Live);
                            if live_here || g.creator == from {
                                to_fail.push(*id);
                            }
                        }
                        Some(true) if g.state == GroupState::Joined => to_establish.push(*id),
                        Some(_) => {}
                    }
                }
                for id in to_fail {
                    self.fuse_fail(id, "a member no longer vouches for it");
                }
                for id in to_establish {
                    self.establish(id);
                }
            }
        }
    }

    fn establish(&mut self, group: GroupId) {
        if let Some(g) = self.groups.get_mut(&group) {
            if g.state == GroupState::Joined {
                g.state = GroupState::Live;
                g.dirty = true;
                self.filling.nonempty = true;
            }
        }
    }

    fn on_create(
        &mut self,
        now: Time,
        from: &ProcessId,
        group: GroupId,
        creator: String,
        members: Vec<String>,
    ) {
        if from.as_str() != creator {
            self.stats.malformed_frames += 1;
            return;
        }
        if let Some(g) = self.groups.get(&group) {
            // Known: answer from durable state only (a pending record confirms on commit).
            match g.durable {
                Some(GroupState::Failed) => self.send_fuse(from, &FuseMsg::Fail { group }),
                Some(_) => self.send_fuse(from, &FuseMsg::Confirm { group }),
                None => {}
            }
            return;
        }
        let mut parsed = Vec::with_capacity(members.len());
        for m in &members {
            match ProcessId::new(m.clone()) {
                Ok(p) => parsed.push(p),
                Err(_) => {
                    self.stats.malformed_frames += 1;
                    return;
                }
            }
        }
        if !parsed.contains(&self.id) || parsed.len() > crate::limits::GROUP_MEMBERS_MAX {
            self.stats.malformed_frames += 1;
            return;
        }
        parsed.sort();
        parsed.dedup();
        self.touch_peers(&parsed, true, 1);
        self.groups.insert(
            group,
            Group {
                creator: from.clone(),
                members: parsed,
                state: GroupState::Joined,
                notified: false,
                durable: None,
                unconfirmed: BTreeSet::new(),
                deadline: now.plus(self.tuning.fuse_create_timeout),
                next_create_send: now,
                created: now,
                dirty: true,
            },
        );
        self.filling
            .fuse_out
            .push((from.clone(), FuseMsg::Confirm { group }));
        self.filling.nonempty = true;
    }

    /// Time passed: creation retries and timeouts, heartbeats, silence.
    pub(super) fn fuse_tick(&mut self, now: Time) {
        // Creation.
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (id, g) in self.groups.iter_mut() {
            if g.state != GroupState::Creating {
                continue;
            }
            if now >= g.deadline {
                expired.push(*id);
            } else if g.durable.is_some() && now >= g.next_create_send {
                g.next_create_send = now.plus(self.tuning.fuse_heartbeat);
                let msg = FuseMsg::Create {
                    group: *id,
                    creator: g.creator.to_string(),
                    members: g.members.iter().map(|m| m.to_string()).collect(),
                };
                for m in &g.unconfirmed {
                    resend.push((m.clone(), msg.clone()));
                }
            }
        }
        for id in expired {
            self.fuse_fail(id, "creation timed out: a member did not confirm");
        }
        for (to, msg) in resend {
            self.send_fuse(&to, &msg);
        }
        // Liveness.
        for p in &self.monitored() {
            let Some(l) = self.liveness.get_mut(p) else {
                continue;
            };
            if l.fresh {
                l.fresh = false;
                l.last_heard = now;
                l.next_heartbeat = now;
            }
            let l = *l;
            if now.since(l.last_heard) >= self.silence_limit() {
                let shared: Vec<GroupId> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.state != GroupState::Failed && g.members.contains(p))
                    .map(|(id, _)| *id)
                    .collect();
                for id in shared {
                    self.fuse_fail(id, "a member was silent for T_fail");
                }
                continue;
            }
            if now >= l.next_heartbeat {
                let (digest, groups) = self.vouched_digest(p);
                let hb = Heartbeat { digest, groups };
                let frame = Frame {
                    kind: FrameKind::Heartbeat,
                    from: self.id.clone(),
                    from_incarnation: self.incarnation,
                    to: p.clone(),
                    to_incarnation: self.peer_incarnation(p),
                    seq: Seq(0),
                    ack: Seq(0),
                    payload: ken_store::codec::encode(&hb),
                };
                let bytes = frame.encoded_len() as u64;
                self.stats.heartbeats_sent += 1;
                self.stats.liveness_bytes_sent += bytes;
                self.stats.fuse_bytes_sent += bytes;
                self.commands.push(Command::Send {
                    to: p.clone(),
                    frame,
                    after: self.durable,
                });
                if let Some(l) = self.liveness.get_mut(p) {
                    l.next_heartbeat = now.plus(self.tuning.fuse_heartbeat);
                }
            }
        }
    }

    /// Silence that fails a peer: `T_fail` plus two heartbeat intervals (see
    /// [`crate::limits::FUSE_T_FAIL`]).
    fn silence_limit(&self) -> std::time::Duration {
        self.tuning.fuse_t_fail + 2 * self.tuning.fuse_heartbeat
    }

    /// Anything heard from `peer` proves it alive.
    pub(super) fn fuse_heard(&mut self, now: Time, peer: &ProcessId) {
        if let Some(l) = self.liveness.get_mut(peer) {
            l.last_heard = now;
        }
    }

    /// The next FUSE deadline, if any.
    pub(super) fn fuse_deadline(&self) -> Option<Time> {
        let mut next: Option<Time> = None;
        let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        for g in self.groups.values() {
            if g.state == GroupState::Creating {
                at(g.deadline);
                if g.durable.is_some() {
                    at(g.next_create_send);
                }
            }
        }
        for l in self.liveness.values().filter(|l| l.shared > 0) {
            if l.fresh {
                // Not yet tracked: tick now to start.
                at(Time::ZERO);
            } else {
                at(l.next_heartbeat);
                at(l.last_heard.plus(self.silence_limit()));
            }
        }
        next
    }

    /// A turn gave up on `peer`: drop its outbox (nothing more will be sent to it).
    pub(super) fn forget_peer(&mut self, peer: &ProcessId) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.outbox.clear();
        p.in_flight = 0;
        p.retransmit_at = None;
        p.acked = p.next_seq - 1;
        p.committed_next_seq = p.next_seq;
        p.acked_stored = p.acked;
        p.dirty = true;
        self.filling.batch.outbox_forget.push(peer.to_string());
        self.filling.nonempty = true;
    }
}
