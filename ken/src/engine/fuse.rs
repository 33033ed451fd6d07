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
//! same disagreement shows at two heartbeats in a row or after `LIST_AFTER_DISAGREEMENTS`
//! (states still in flight, as during creation, settle by themselves); a group missing from
//! a peer's list is failed if it is `Live` here or the peer is its creator (during creation a
//! member may not have heard of it yet), and only if the list echoes a heartbeat stamp of
//! ours from after the group's last state change here (an older list may predate the peer's
//! joining). Silence from a peer for `fuse_t_fail` fails every
//! group shared with it. A failing member also tells the other members directly (`Fail`,
//! best effort: the fast path).
//!
//! Cost: the per-peer state (`Liveness`: last heard, digest, counts) makes a tick, a
//! heartbeat and its check cost the same for one group as for ten thousand; only a list
//! exchange walks the groups. Control messages name many groups each, and what one commit
//! releases to a peer is merged into as few frames as fit (`LIST_GROUPS_PER_FRAME`
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

/// FUSE control messages (payload of `Fuse` frames). Each names many groups: what one
/// release sends a peer is merged into as few frames as fit ([`Outgoing`]), so creating or
/// failing ten thousand groups costs a handful of datagrams per peer, not ten thousand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FuseMsg {
    /// The sender, `creator`, asks the receiver to join each group: (id, every member).
    Create {
        creator: String,
        groups: Vec<(GroupId, Vec<String>)>,
    },
    /// To the creator: the sender recorded these groups durably.
    Confirm { groups: Vec<GroupId> },
    /// From the creator: every member confirmed these groups.
    Established { groups: Vec<GroupId> },
    /// The sender failed these groups (the fast path; silence and lists are the slow one).
    Fail { groups: Vec<GroupId> },
    /// The groups shared with the receiver that the sender vouches for, (id, established),
    /// among those whose id lies in `[lo, hi)` (`None`: unbounded on that side). A list too
    /// long for one datagram goes out as several, each covering its own range, so each one
    /// can be judged on its own (see [`LIST_GROUPS_PER_FRAME`]).
    ///
    /// `stamp` is the sender's clock when it built the list (microseconds) and `echo` the
    /// newest stamp it had heard from the receiver (its heartbeats and lists carry one): a
    /// list is only as fresh as its echo, and a group missing from it is failed only if the
    /// receiver vouched for the group before that echo (see [`Group::vouch_since`]). Without
    /// the echo, a list overtaken by the `Confirm` that came after it would fail a healthy
    /// group (found by `ken torture --app lock` with reordering).
    List {
        lo: Option<GroupId>,
        hi: Option<GroupId>,
        groups: Vec<(GroupId, bool)>,
        stamp: u64,
        echo: u64,
    },
}

/// Payload of `Heartbeat` frames: the digest and the count of the groups the sender vouches
/// for, little-endian, fixed width (the codec's integers are variable-length), so that a
/// heartbeat is the same size for one group as for ten thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub digest: [u8; 4],
    pub groups: [u8; 4],
    /// The sender's clock, microseconds: echoed by the receiver's lists.
    pub stamp: [u8; 8],
}

impl Heartbeat {
    fn new(digest: u32, groups: u32, stamp: Time) -> Heartbeat {
        Heartbeat {
            digest: digest.to_le_bytes(),
            groups: groups.to_le_bytes(),
            stamp: stamp.as_micros().to_le_bytes(),
        }
    }

    fn stamp(&self) -> Time {
        Time(u64::from_le_bytes(self.stamp))
    }

    fn values(&self) -> (u32, u32) {
        (
            u32::from_le_bytes(self.digest),
            u32::from_le_bytes(self.groups),
        )
    }
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
    /// Local time of this group's last state change here (recorded, joined, live, or
    /// recovered): a peer's list omitting the group counts only if it echoes a stamp of ours
    /// at least this late, so it was built after the peer heard from us in this state.
    pub vouch_since: Time,
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

/// Groups per `List`, `Confirm`, `Established` or `Fail` frame: a list entry is 17 bytes
/// encoded (id and flag), so a full frame is about 51 KB, under the datagram limit with room
/// for the header and a list's range bounds. Ten thousand groups go out as four frames.
pub(crate) const LIST_GROUPS_PER_FRAME: usize = 3_000;

/// Encoded bytes of the groups of one `Create` frame, at most (estimated from above by
/// [`create_entry_bytes`]); one group with the most members and the longest ids fits.
const CREATE_BYTES_PER_FRAME: usize = 48_000;

const _: () =
    assert!(LIST_GROUPS_PER_FRAME * 17 + 64 <= ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES);
const _: () = assert!(
    CREATE_BYTES_PER_FRAME + 2 * ken_transport::frame::MAX_ID_BYTES + 64
        <= ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES
);
const _: () = assert!(
    16 + 10 + crate::limits::GROUP_MEMBERS_MAX * (10 + ken_transport::frame::MAX_ID_BYTES)
        <= CREATE_BYTES_PER_FRAME
);

/// An upper bound of the encoded size of one `Create` entry (varint lengths as 10 bytes).
fn create_entry_bytes(members: &[String]) -> usize {
    16 + 10 + members.iter().map(|m| 10 + m.len()).sum::<usize>()
}

/// A digest disagreement is answered with our list when the same disagreement is seen at two
/// heartbeats in a row (the states are settled: one side failed a group, or a message was
/// lost), or else at this many disagreeing heartbeats in a row (states in flight, as while
/// groups are being created, settle by themselves; the lists would be obsolete on arrival).
/// So a list exchange costs at most one list per peer per this many heartbeats while groups
/// churn, and a settled disagreement is resolved one heartbeat interval later than at once.
const LIST_AFTER_DISAGREEMENTS: u32 = 4;

/// One group's share of a heartbeat digest: the digest of a set of (group, established) is
/// the XOR of its members' shares, so it is kept up to date one change at a time instead of
/// being recomputed over every group for each heartbeat.
fn digest_entry(id: GroupId, established: bool) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.0);
    h.update(&[u8::from(established)]);
    h.finalize()
}

/// The FUSE messages of one release to one peer, merged by kind.
#[derive(Debug, Default)]
struct Outgoing {
    creator: Option<String>,
    creates: Vec<(GroupId, Vec<String>)>,
    confirms: Vec<GroupId>,
    established: Vec<GroupId>,
    fails: Vec<GroupId>,
    lists: Vec<FuseMsg>,
}

impl Outgoing {
    fn add(&mut self, msg: FuseMsg) {
        match msg {
            FuseMsg::Create { creator, groups } => {
                assert!(
                    self.creator.as_ref().is_none_or(|c| *c == creator),
                    "a process sends Create only for the groups it created"
                );
                self.creator = Some(creator);
                self.creates.extend(groups);
            }
            FuseMsg::Confirm { groups } => self.confirms.extend(groups),
            FuseMsg::Established { groups } => self.established.extend(groups),
            FuseMsg::Fail { groups } => self.fails.extend(groups),
            list @ FuseMsg::List { .. } => self.lists.push(list),
        }
    }

    /// The merged messages, each fitting one frame: creations first, failures last.
    fn into_messages(self) -> Vec<FuseMsg> {
        let mut out = Vec::new();
        let mut creates: Vec<(GroupId, Vec<String>)> = Vec::new();
        let mut bytes = 0;
        let creator = self.creator.unwrap_or_default();
        for (id, members) in self.creates {
            let b = create_entry_bytes(&members);
            if bytes + b > CREATE_BYTES_PER_FRAME {
                out.push(FuseMsg::Create {
                    creator: creator.clone(),
                    groups: std::mem::take(&mut creates),
                });
                bytes = 0;
            }
            bytes += b;
            creates.push((id, members));
        }
        if !creates.is_empty() {
            out.push(FuseMsg::Create {
                creator,
                groups: creates,
            });
        }
        for c in self.confirms.chunks(LIST_GROUPS_PER_FRAME) {
            out.push(FuseMsg::Confirm { groups: c.to_vec() });
        }
        for c in self.established.chunks(LIST_GROUPS_PER_FRAME) {
            out.push(FuseMsg::Established { groups: c.to_vec() });
        }
        out.extend(self.lists);
        for c in self.fails.chunks(LIST_GROUPS_PER_FRAME) {
            out.push(FuseMsg::Fail { groups: c.to_vec() });
        }
        out
    }
}

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
    /// Groups this process is creating (state `Creating`) that the peer is a member of:
    /// while no peer has any, ticks skip the scan of the groups for creation work.
    creating: u32,
    /// Digest and count of the shared groups this process vouches for (what its heartbeats
    /// to the peer carry), kept up to date at each durable change ([`Engine::vouch_change`]).
    digest: u32,
    vouched: u32,
    /// The last heartbeat from the peer whose digest disagreed with ours: (ours, theirs),
    /// digest and count each, and how many disagreeing heartbeats since our last list.
    disagreed: Option<((u32, u32), (u32, u32))>,
    disagreements: u32,
    /// The newest stamp heard from the peer (heartbeats, lists): what our lists echo.
    heard_stamp: Time,
}

impl Liveness {
    fn new() -> Liveness {
        Liveness {
            last_heard: Time::ZERO,
            next_heartbeat: Time::ZERO,
            shared: 0,
            fresh: true,
            creating: 0,
            digest: 0,
            vouched: 0,
            disagreed: None,
            heard_stamp: Time::ZERO,
            disagreements: 0,
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
        let stamp = self.fuse_stamp(now);
        for row in rows {
            let id = GroupId(row.group);
            let rec: GroupRecord = ken_store::codec::decode(&row.record)
                .map_err(|e| EngineError::BadGroup(format!("{id}: {e}")))?;
            let parse = |s: &String| {
                ProcessId::new(s.clone())
                    .map_err(|_| EngineError::BadGroup(format!("{id}: bad member `{s}`")))
            };
            let mut members = rec
                .members
                .iter()
                .map(parse)
                .collect::<Result<Vec<_>, _>>()?;
            // Sorted (as written), for the binary searches.
            members.sort();
            members.dedup();
            let creator = parse(&rec.creator)?;
            let unconfirmed = if rec.state == GroupState::Creating {
                members.iter().filter(|m| **m != self.id).cloned().collect()
            } else {
                BTreeSet::new()
            };
            if rec.state == GroupState::Failed && !rec.notified {
                self.fuse_notify_queue.push_back(id);
            }
            if rec.state != GroupState::Failed {
                self.count_shared(&members, 1);
            }
            if rec.state == GroupState::Creating {
                self.count_creating(&members, 1);
            }
            let vouched = match rec.state {
                GroupState::Failed => None,
                s => Some(s == GroupState::Live),
            };
            self.vouch_change(id, &members, None, vouched);
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
                    vouch_since: stamp,
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
        self.count_shared(&members, 1);
        let stamp = self.fuse_stamp(now);
        if state == GroupState::Creating {
            self.count_creating(&members, 1);
        }
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
                vouch_since: stamp,
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
        let was_creating = g.state == GroupState::Creating;
        g.state = GroupState::Failed;
        g.dirty = true;
        let members = g.members.clone();
        self.count_shared(&members, -1);
        if was_creating {
            self.count_creating(&members, -1);
        }
        self.queue_to_others(id, &FuseMsg::Fail { groups: vec![id] });
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
                let old = g.vouched();
                g.durable = Some(state);
                let new = g.vouched();
                if old != new {
                    let members = g.members.clone();
                    self.vouch_change(id, &members, old, new);
                }
            }
        }
        self.send_fuse_merged(out);
    }

    /// Sends `out`, merging what goes to the same peer into as few frames as fit.
    fn send_fuse_merged(&mut self, out: Vec<(ProcessId, FuseMsg)>) {
        let mut per_peer: BTreeMap<ProcessId, Outgoing> = BTreeMap::new();
        for (to, msg) in out {
            per_peer.entry(to).or_default().add(msg);
        }
        for (to, o) in per_peer {
            for msg in o.into_messages() {
                self.send_fuse(&to, &msg);
            }
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
            .filter(|(_, g)| g.members.binary_search(peer).is_ok())
            .filter_map(|(id, g)| g.vouched().map(|est| (*id, est)))
            .collect()
    }

    /// (digest, count) of [`Self::vouched_with`] `peer`: what a heartbeat to it carries.
    fn vouched_digest(&self, peer: &ProcessId) -> (u32, u32) {
        self.liveness
            .get(peer)
            .map_or((0, 0), |l| (l.digest, l.vouched))
    }

    /// Group `id` of `members` went from vouched as `old` to vouched as `new` (`None`: not
    /// vouched for; `Some(established)`): updates the digest kept for each other member.
    fn vouch_change(
        &mut self,
        id: GroupId,
        members: &[ProcessId],
        old: Option<bool>,
        new: Option<bool>,
    ) {
        for m in members.iter().filter(|m| **m != self.id) {
            let l = self.liveness.entry(m.clone()).or_insert_with(Liveness::new);
            if let Some(est) = old {
                l.digest ^= digest_entry(id, est);
                l.vouched -= 1;
            }
            if let Some(est) = new {
                l.digest ^= digest_entry(id, est);
                l.vouched += 1;
            }
        }
    }

    /// Sends our list of the groups shared with `to`, in as many frames as it takes.
    fn send_list(&mut self, now: Time, to: &ProcessId) {
        self.stats.fuse_list_exchanges += 1;
        let mine = self.vouched_with(to);
        let stamp = self.fuse_stamp(now).as_micros();
        let echo = self
            .liveness
            .get(to)
            .map_or(0, |l| l.heard_stamp.as_micros());
        if mine.is_empty() {
            let msg = FuseMsg::List {
                lo: None,
                hi: None,
                groups: Vec::new(),
                stamp,
                echo,
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
                stamp,
                echo,
            };
            self.send_fuse(to, &msg);
        }
    }

    /// A group of `members` was recorded (`delta` 1) or failed (-1) here: the other members'
    /// count of shared groups moves, and a peer left with none is no longer monitored.
    fn count_shared(&mut self, members: &[ProcessId], delta: i32) {
        for m in members.iter().filter(|m| **m != self.id) {
            let l = self.liveness.entry(m.clone()).or_insert_with(Liveness::new);
            l.shared = l
                .shared
                .checked_add_signed(delta)
                .expect("a peer's shared-group count never goes negative");
            if l.shared == 0 {
                l.fresh = true;
            }
        }
    }

    /// A group of `members` entered (`delta` 1) or left (-1) the `Creating` state.
    fn count_creating(&mut self, members: &[ProcessId], delta: i32) {
        for m in members.iter().filter(|m| **m != self.id) {
            let l = self.liveness.entry(m.clone()).or_insert_with(Liveness::new);
            l.creating = l
                .creating
                .checked_add_signed(delta)
                .expect("a peer's creating-group count never goes negative");
        }
    }

    /// True while any group is `Creating` here.
    fn any_creating(&self) -> bool {
        self.liveness.values().any(|l| l.creating > 0)
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
            self.heard_stamp(&from, hb.stamp());
            let (ours, theirs) = (self.vouched_digest(&from), hb.values());
            let answer = match self.liveness.get_mut(&from) {
                // Not a peer of any group here: answer at once (rare; nothing churns).
                None => ours != theirs,
                Some(l) if ours == theirs => {
                    l.disagreed = None;
                    l.disagreements = 0;
                    false
                }
                Some(l) => {
                    let settled = l.disagreed == Some((ours, theirs));
                    l.disagreed = Some((ours, theirs));
                    l.disagreements += 1;
                    let answer = settled || l.disagreements >= LIST_AFTER_DISAGREEMENTS;
                    if answer {
                        l.disagreements = 0;
                    }
                    answer
                }
            };
            if answer {
                self.send_list(now, &from);
            }
            return;
        }
        let Ok(msg) = ken_store::codec::decode::<FuseMsg>(&frame.payload) else {
            self.stats.malformed_frames += 1;
            return;
        };
        match msg {
            FuseMsg::Create { creator, groups } => {
                if from.as_str() != creator {
                    self.stats.malformed_frames += 1;
                    return;
                }
                let mut answers = Vec::new();
                for (group, members) in groups {
                    self.on_create(now, &from, group, members, &mut answers);
                }
                self.send_fuse_merged(answers);
            }
            FuseMsg::Confirm { groups } => {
                for group in groups {
                    self.on_confirm(now, &from, group);
                }
            }
            FuseMsg::Established { groups } => {
                for group in groups {
                    self.establish(now, group);
                }
            }
            FuseMsg::Fail { groups } => {
                for group in groups {
                    if self
                        .groups
                        .get(&group)
                        .is_some_and(|g| g.members.contains(&from))
                    {
                        self.fuse_fail(group, "a member said it failed");
                    }
                }
            }
            FuseMsg::List {
                lo,
                hi,
                groups,
                stamp,
                echo,
            } => {
                use std::ops::Bound;
                let range = (
                    lo.map_or(Bound::Unbounded, Bound::Included),
                    hi.map_or(Bound::Unbounded, Bound::Excluded),
                );
                // Sorted and inside its range, as sent (checked: a merge walk follows).
                if lo.zip(hi).is_some_and(|(lo, hi)| lo >= hi)
                    || groups.windows(2).any(|w| w[0].0 >= w[1].0)
                    || groups
                        .iter()
                        .any(|(id, _)| !std::ops::RangeBounds::contains(&range, id))
                {
                    self.stats.malformed_frames += 1;
                    return;
                }
                self.heard_stamp(&from, Time(stamp));
                let echo = Time(echo);
                let mut theirs = groups.into_iter().peekable();
                let mut to_fail = Vec::new();
                let mut to_establish = Vec::new();
                for (id, g) in self.groups.range(range) {
                    let mut listed = None;
                    while let Some((their_id, est)) = theirs.peek() {
                        if their_id > id {
                            break;
                        }
                        if their_id == id {
                            listed = Some(*est);
                        }
                        theirs.next();
                    }
                    if g.state == GroupState::Failed || g.members.binary_search(&from).is_err() {
                        continue;
                    }
                    match listed {
                        None => {
                            let live_here = g.durable == Some(GroupState::Live);
                            // Built after the peer heard from us in this state? Else it
                            // may predate the peer's joining (a stale list that a Confirm
                            // overtook): wait for a fresher one.
                            let fresh = echo >= g.vouch_since;
                            if (live_here || g.creator == from) && fresh {
                                to_fail.push(*id);
                            } else if live_here || g.creator == from {
                                self.stats.fuse_stale_lists += 1;
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
                    self.establish(now, id);
                }
            }
        }
    }

    fn on_confirm(&mut self, now: Time, from: &ProcessId, group: GroupId) {
        let stamp = self.fuse_stamp(now);
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
            let members = g.members.clone();
            self.count_creating(&members, -1);
            self.queue_to_others(
                group,
                &FuseMsg::Established {
                    groups: vec![group],
                },
            );
            self.filling.nonempty = true;
        }
    }

    fn establish(&mut self, now: Time, group: GroupId) {
        let stamp = self.fuse_stamp(now);
        if let Some(g) = self.groups.get_mut(&group) {
            if g.state == GroupState::Joined {
                g.state = GroupState::Live;
                g.vouch_since = stamp;
                g.dirty = true;
                self.filling.nonempty = true;
            }
        }
    }

    /// `from` (the creator, checked) asks this process to join `group`. Answers for groups
    /// already known go to `answers` (sent at once, merged); a new group is recorded and
    /// confirmed once that is durable.
    fn on_create(
        &mut self,
        now: Time,
        from: &ProcessId,
        group: GroupId,
        members: Vec<String>,
        answers: &mut Vec<(ProcessId, FuseMsg)>,
    ) {
        if let Some(g) = self.groups.get(&group) {
            // Known: answer from durable state only (a pending record confirms on commit).
            let groups = vec![group];
            match g.durable {
                Some(GroupState::Failed) => answers.push((from.clone(), FuseMsg::Fail { groups })),
                Some(_) => answers.push((from.clone(), FuseMsg::Confirm { groups })),
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
        self.count_shared(&parsed, 1);
        let stamp = self.fuse_stamp(now);
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
                vouch_since: stamp,
                dirty: true,
            },
        );
        self.filling.fuse_out.push((
            from.clone(),
            FuseMsg::Confirm {
                groups: vec![group],
            },
        ));
        self.filling.nonempty = true;
    }

    /// Time passed: creation retries and timeouts, heartbeats, silence.
    pub(super) fn fuse_tick(&mut self, now: Time) {
        // Creation.
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        let creating = if self.any_creating() {
            &mut self.groups
        } else {
            &mut BTreeMap::new()
        };
        for (id, g) in creating.iter_mut() {
            if g.state != GroupState::Creating {
                continue;
            }
            if now >= g.deadline {
                expired.push(*id);
            } else if g.durable.is_some() && now >= g.next_create_send {
                g.next_create_send = now.plus(self.tuning.fuse_heartbeat);
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
            self.fuse_fail(id, "creation timed out: a member did not confirm");
        }
        self.send_fuse_merged(resend);
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
                let hb = Heartbeat::new(digest, groups, self.fuse_stamp(now));
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
                    // On a fixed schedule, so a tick that runs late does not stretch the
                    // interval (the silence bound counts on one heartbeat per interval);
                    // after a stall, the next one is an interval from now.
                    let next = l.next_heartbeat.plus(self.tuning.fuse_heartbeat);
                    l.next_heartbeat = if next > now {
                        next
                    } else {
                        now.plus(self.tuning.fuse_heartbeat)
                    };
                }
            }
        }
    }

    /// Silence that fails a peer: `T_fail` plus two heartbeat intervals (see
    /// [`crate::limits::FUSE_T_FAIL`]).
    fn silence_limit(&self) -> std::time::Duration {
        self.tuning.fuse_t_fail + 2 * self.tuning.fuse_heartbeat
    }

    /// The clock for FUSE stamps (heartbeats, lists, [`Group::vouch_since`]): `now`, but never
    /// behind an earlier stamp of this life, so that a wall-clock step backwards cannot make
    /// a stale list look fresh.
    fn fuse_stamp(&mut self, now: Time) -> Time {
        self.fuse_clock = self.fuse_clock.max(now);
        self.fuse_clock
    }

    /// `peer` stamped a heartbeat or list with `stamp`: what our lists to it echo.
    fn heard_stamp(&mut self, peer: &ProcessId, stamp: Time) {
        if let Some(l) = self.liveness.get_mut(peer) {
            l.heard_stamp = l.heard_stamp.max(stamp);
        }
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
        let none = BTreeMap::new();
        let creating = if self.any_creating() {
            &self.groups
        } else {
            &none
        };
        for g in creating.values() {
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

#[cfg(test)]
mod tests {
    //! The parts of FUSE that only show at scale: frames that must split, lists that cover
    //! ranges, digests kept change by change. Engines in memory; a commit completes at once.

    use std::time::Duration;

    use super::*;
    use crate::engine::tables::EmptyTables;
    use crate::engine::EngineConfig;
    use crate::{Tuning, Turn};

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

    fn engine(id: &str, all: &[&str], groups: usize) -> Engine<Member> {
        let peers: Vec<ProcessId> = all.iter().filter(|p| **p != id).map(|p| pid(p)).collect();
        let recovered = ken_store::Recovered {
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
            groups: Vec::new(),
        };
        let config = EngineConfig {
            id: pid(id),
            peers: peers.clone(),
            tuning: Tuning::default(),
            seed: 7,
        };
        let handler = Member {
            others: peers,
            groups,
            signal_after: Duration::from_secs(5),
        };
        Engine::recover(config, handler, recovered, Box::new(EmptyTables)).unwrap()
    }

    impl<H: Handler> Engine<H> {
        /// Recomputes every per-peer count and digest from the groups and compares.
        fn check_fuse_bookkeeping(&self) {
            for (p, l) in &self.liveness {
                let shared = self
                    .groups
                    .values()
                    .filter(|g| g.state != GroupState::Failed && g.members.contains(p))
                    .count() as u32;
                let creating = self
                    .groups
                    .values()
                    .filter(|g| g.state == GroupState::Creating && g.members.contains(p))
                    .count() as u32;
                let list = self.vouched_with(p);
                let digest = list
                    .iter()
                    .fold(0, |d, (id, est)| d ^ digest_entry(*id, *est));
                assert_eq!(
                    (l.shared, l.creating, l.digest, l.vouched),
                    (shared, creating, digest, list.len() as u32),
                    "bookkeeping of peer {p} at {}",
                    self.id
                );
            }
        }
    }

    /// Runs the engines for `ms` of virtual time (5 ms steps), delivering every frame
    /// unless `drop` says otherwise, checking the bookkeeping every 100 ms; returns the
    /// largest datagram seen.
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
                let to = engines.iter_mut().find(|e| e.id == frame.to).unwrap();
                to.handle_frame(*now, Frame::decode(&bytes).unwrap());
            }
            if step % 20 == 19 {
                for e in engines.iter() {
                    e.check_fuse_bookkeeping();
                }
            }
        }
        largest
    }

    fn durable_live(e: &Engine<Member>) -> usize {
        e.groups
            .values()
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
        let mut engines: Vec<Engine<Member>> =
            all.iter().map(|id| engine(id, &all, GROUPS)).collect();
        let mut now = Time::from_millis(T0_MS);
        for e in engines.iter_mut() {
            e.start(now);
        }
        let keep_all = |_: &Frame| false;
        let largest = run(&mut engines, &mut now, 1_000, &keep_all);
        for e in &engines {
            assert_eq!(durable_live(e), GROUPS, "{} after creation", e.id);
        }
        assert!(largest <= ken_transport::frame::MAX_FRAME_BYTES);
        let quiet_from = engines[1].stats.fuse_list_exchanges;
        run(&mut engines, &mut now, 1_000, &keep_all);
        assert_eq!(
            engines[1].stats.fuse_list_exchanges, quiet_from,
            "digests agree once every group is live: no list exchange"
        );

        // `a`'s signal timer fires at +5 s; from +4 s on its direct `Fail`s are all lost.
        let lost_fail = |f: &Frame| {
            f.kind == FrameKind::Fuse
                && f.from.as_str() == "a"
                && matches!(
                    ken_store::codec::decode::<FuseMsg>(&f.payload),
                    Ok(FuseMsg::Fail { .. })
                )
        };
        run(&mut engines, &mut now, 2_000, &lost_fail);
        for e in &engines {
            assert!(e.state().heard.is_empty(), "{} before the signal", e.id);
        }
        assert!(e_stats_quiet(&engines, quiet_from));
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
            assert_eq!(heard.len(), e.state().heard.len(), "{}: exactly once", e.id);
            assert_eq!(
                heard.len(),
                signalled.len(),
                "{}: as many as signalled",
                e.id
            );
            assert!(heard == signalled, "{}: exactly the signalled groups", e.id);
            assert_eq!(durable_live(e), GROUPS / 2, "{}: the rest stay live", e.id);
            assert!(e.stats.fuse_list_exchanges > quiet_from);
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
                e.id,
                last.since(signal_at)
            );
        }
    }

    /// No list exchange at `b` since `from` (digests agree while nothing changes).
    fn e_stats_quiet(engines: &[Engine<Member>], from: u64) -> bool {
        engines[1].stats.fuse_list_exchanges == from
    }

    /// A restart is masked only if the restarted member speaks up at once: its first tick
    /// after recovery, due immediately, sends a heartbeat to every member of its groups.
    #[test]
    fn a_recovered_member_heartbeats_every_peer_at_once() {
        let all = ["a", "b", "c"];
        let mut e = engine("b", &all, 0);
        let row = GroupRow {
            group: [7; 16],
            record: ken_store::codec::encode(&GroupRecord {
                creator: "a".into(),
                members: all.iter().map(|m| m.to_string()).collect(),
                state: GroupState::Live,
                notified: false,
                created_ms: T0_MS,
            }),
        };
        e.recover_groups(&[row], Time::ZERO).unwrap();
        let now = Time::from_millis(T0_MS);
        e.start(now);
        for c in e.take_commands() {
            // (The store is fresh: its start turn commits first.)
            if let Command::Commit { id, .. } = c {
                e.commit_done(now, id);
            }
        }
        e.take_commands();
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

    #[test]
    fn merged_messages_fit_a_datagram_with_the_longest_ids() {
        let long = |c: char| ProcessId::new(c.to_string().repeat(64)).unwrap();
        let id = |i: u32| {
            let mut g = [0u8; 16];
            g[..4].copy_from_slice(&i.to_be_bytes());
            GroupId(g)
        };
        let members: Vec<String> = (0..crate::limits::GROUP_MEMBERS_MAX)
            .map(|i| format!("{i:0>64}"))
            .collect();
        let mut o = Outgoing::default();
        for i in 0..10_000 {
            o.add(FuseMsg::Fail {
                groups: vec![id(i)],
            });
            o.add(FuseMsg::Confirm {
                groups: vec![id(i)],
            });
        }
        for i in 0..100 {
            o.add(FuseMsg::Create {
                creator: "x".repeat(64),
                groups: vec![(id(i), members.clone())],
            });
        }
        let msgs = o.into_messages();
        let count = |f: fn(&FuseMsg) -> Option<usize>| -> (usize, usize) {
            let sizes: Vec<usize> = msgs.iter().filter_map(f).collect();
            (sizes.len(), sizes.iter().sum())
        };
        assert_eq!(
            count(|m| match m {
                FuseMsg::Fail { groups } => Some(groups.len()),
                _ => None,
            }),
            (4, 10_000)
        );
        assert_eq!(
            count(|m| match m {
                FuseMsg::Confirm { groups } => Some(groups.len()),
                _ => None,
            }),
            (4, 10_000)
        );
        let (frames, groups) = count(|m| match m {
            FuseMsg::Create { groups, .. } => Some(groups.len()),
            _ => None,
        });
        assert_eq!(groups, 100);
        assert!(
            frames >= 10,
            "{frames} Create frames for 100 groups of 64 long ids"
        );
        for m in &msgs {
            let frame = Frame {
                kind: FrameKind::Fuse,
                from: long('f'),
                from_incarnation: Incarnation(u64::MAX),
                to: long('t'),
                to_incarnation: Incarnation(u64::MAX),
                seq: Seq(0),
                ack: Seq(0),
                payload: ken_store::codec::encode(m),
            };
            assert!(
                frame.encode().is_ok(),
                "a merged message does not fit: {} bytes",
                frame.encoded_len()
            );
        }
    }
}
