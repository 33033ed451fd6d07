//! Shared liveness (Horus light-weight groups): one entry per peer this process shares (or
//! shared) a group with, whatever the number of groups, holding when it was last heard,
//! when it is next due a heartbeat, and the digest of the groups vouched for to it.
//!
//! Invariants (recomputed from the groups by [`super::Fuse::check_invariants`]): for every
//! peer, `shared` counts the groups here, not failed, that it is a member of; `creating`
//! those of them still `Creating`; `digest` and `vouched` are the XOR of
//! [`digest_entry`]s and the count of the groups shared with it that this process vouches
//! for. They are kept change by change, so a tick, a heartbeat and its check cost the same
//! for one group as for ten thousand.

use std::collections::BTreeMap;
use std::time::Duration;

use ken_transport::ProcessId;

use super::GroupId;
use crate::Time;

/// A digest disagreement is answered with our list when the same disagreement is seen at two
/// heartbeats in a row (the states are settled: one side failed a group, or a message was
/// lost), or else at this many disagreeing heartbeats in a row (states in flight, as while
/// groups are being created, settle by themselves; the lists would be obsolete on arrival).
/// So a list exchange costs at most one list per peer per this many heartbeats while groups
/// churn, and a settled disagreement is resolved one heartbeat interval later than at once.
pub const LIST_AFTER_DISAGREEMENTS: u32 = 4;

/// One group's share of a heartbeat digest: the digest of a set of (group, established) is
/// the XOR of its members' shares, so it is kept up to date one change at a time instead of
/// being recomputed over every group for each heartbeat.
pub(super) fn digest_entry(id: GroupId, established: bool) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.0);
    h.update(&[u8::from(established)]);
    h.finalize()
}

/// Liveness of one peer that is (or was) a member of a group of this process.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    last_heard: Time,
    next_heartbeat: Time,
    /// Groups here, not failed, that the peer is a member of: monitored while positive.
    shared: u32,
    /// Monitoring (re)starts at the next tick, which sets `last_heard` and `next_heartbeat`.
    fresh: bool,
    /// Groups this process is creating (state `Creating`) that the peer is a member of:
    /// while no peer has any, ticks skip the scan of the groups for creation work.
    creating: u32,
    /// Digest and count of the shared groups this process vouches for (what its heartbeats
    /// to the peer carry), kept up to date at each durable change ([`Pairs::vouch_change`]).
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

/// What a tick finds for one monitored peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Silent for the silence limit: fail every group shared with it.
    Silent,
    /// A heartbeat is due (its schedule already moved on).
    Heartbeat,
    Nothing,
}

/// The liveness of every peer this process shares or shared a group with.
#[derive(Debug)]
pub(super) struct Pairs {
    /// This process (never an entry).
    me: ProcessId,
    peers: BTreeMap<ProcessId, Liveness>,
}

impl Pairs {
    pub fn new(me: ProcessId) -> Pairs {
        Pairs {
            me,
            peers: BTreeMap::new(),
        }
    }

    /// Applies `f` to the entry of every member of `members` but this process (created if
    /// missing).
    fn for_others(&mut self, members: &[ProcessId], mut f: impl FnMut(&mut Liveness)) {
        for m in members.iter().filter(|m| **m != self.me) {
            f(self.peers.entry(m.clone()).or_insert_with(Liveness::new));
        }
    }

    /// A group of `members` was recorded (`delta` 1) or failed (-1) here: the other members'
    /// count of shared groups moves, and a peer left with none is no longer monitored.
    pub fn count_shared(&mut self, members: &[ProcessId], delta: i32) {
        self.for_others(members, |l| {
            l.shared = l
                .shared
                .checked_add_signed(delta)
                .expect("a peer's shared-group count never goes negative");
            if l.shared == 0 {
                l.fresh = true;
            }
        });
    }

    /// A group of `members` entered (`delta` 1) or left (-1) the `Creating` state.
    pub fn count_creating(&mut self, members: &[ProcessId], delta: i32) {
        self.for_others(members, |l| {
            l.creating = l
                .creating
                .checked_add_signed(delta)
                .expect("a peer's creating-group count never goes negative");
        });
    }

    /// Group `id` of `members` went from vouched as `old` to vouched as `new` (`None`: not
    /// vouched for; `Some(established)`): updates the digest kept for each other member.
    pub fn vouch_change(
        &mut self,
        id: GroupId,
        members: &[ProcessId],
        old: Option<bool>,
        new: Option<bool>,
    ) {
        self.for_others(members, |l| {
            if let Some(est) = old {
                l.digest ^= digest_entry(id, est);
                l.vouched -= 1;
            }
            if let Some(est) = new {
                l.digest ^= digest_entry(id, est);
                l.vouched += 1;
            }
        });
    }

    /// True while any group is `Creating` here.
    pub fn any_creating(&self) -> bool {
        self.peers.values().any(|l| l.creating > 0)
    }

    /// Peers sharing any group not failed here.
    pub fn monitored(&self) -> Vec<ProcessId> {
        self.peers
            .iter()
            .filter(|(_, l)| l.shared > 0)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// (digest, count) of the groups vouched for to `peer`: what a heartbeat to it carries.
    pub fn digest(&self, peer: &ProcessId) -> (u32, u32) {
        self.peers
            .get(peer)
            .map_or((0, 0), |l| (l.digest, l.vouched))
    }

    /// The newest stamp heard from `peer`: what a list to it echoes.
    pub fn echo(&self, peer: &ProcessId) -> Time {
        self.peers.get(peer).map_or(Time::ZERO, |l| l.heard_stamp)
    }

    /// Anything heard from `peer` proves it alive.
    pub fn heard(&mut self, now: Time, peer: &ProcessId) {
        if let Some(l) = self.peers.get_mut(peer) {
            l.last_heard = now;
        }
    }

    /// `peer` stamped a heartbeat or list with `stamp`: what our lists to it echo.
    pub fn heard_stamp(&mut self, peer: &ProcessId, stamp: Time) {
        if let Some(l) = self.peers.get_mut(peer) {
            l.heard_stamp = l.heard_stamp.max(stamp);
        }
    }

    /// A heartbeat from `peer` carried `theirs` (digest, count) where ours is `ours`: true
    /// if it is time to answer with our list. Agreement resets the count; a disagreement is
    /// answered when it repeats exactly (settled) or after [`LIST_AFTER_DISAGREEMENTS`] in a
    /// row; a peer with no entry here (no group shared, ever) is answered at once.
    pub fn disagreement_answered(
        &mut self,
        peer: &ProcessId,
        ours: (u32, u32),
        theirs: (u32, u32),
    ) -> bool {
        match self.peers.get_mut(peer) {
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
        }
    }

    /// A tick at `now` for monitored `peer`: starts monitoring a fresh one (heard now, a
    /// heartbeat due now), then says whether it has been silent for `silence` or is due a
    /// heartbeat. Heartbeats are on a fixed schedule of `interval`, so a tick that runs late
    /// does not stretch the interval (the silence bound counts on one heartbeat per
    /// interval); after a stall, the next one is an interval from now.
    pub fn tick(
        &mut self,
        now: Time,
        peer: &ProcessId,
        silence: Duration,
        interval: Duration,
    ) -> Due {
        let Some(l) = self.peers.get_mut(peer) else {
            return Due::Nothing;
        };
        if l.fresh {
            l.fresh = false;
            l.last_heard = now;
            l.next_heartbeat = now;
        }
        if now.since(l.last_heard) >= silence {
            return Due::Silent;
        }
        if now < l.next_heartbeat {
            return Due::Nothing;
        }
        let next = l.next_heartbeat.plus(interval);
        l.next_heartbeat = if next > now { next } else { now.plus(interval) };
        Due::Heartbeat
    }

    /// Calls `at` with every liveness deadline: a fresh peer's first tick (at once), the
    /// next heartbeat and the moment silence would fail each monitored peer.
    pub fn deadlines(&self, silence: Duration, mut at: impl FnMut(Time)) {
        for l in self.peers.values().filter(|l| l.shared > 0) {
            if l.fresh {
                // Not yet tracked: tick now to start.
                at(Time::ZERO);
            } else {
                at(l.next_heartbeat);
                at(l.last_heard.plus(silence));
            }
        }
    }

    /// Every peer's bookkeeping: (peer, shared, creating, digest, vouched).
    pub fn counts(&self) -> impl Iterator<Item = (&ProcessId, u32, u32, u32, u32)> {
        self.peers
            .iter()
            .map(|(p, l)| (p, l.shared, l.creating, l.digest, l.vouched))
    }
}
