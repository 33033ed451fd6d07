//! The slow path of failure detection: list exchanges. When heartbeat digests disagree, a
//! side sends the list of the groups it shares with the other and vouches for
//! ([`build`]); the receiver checks its shape ([`range`]) and walks it beside its own groups
//! in the same range ([`judge`]).
//!
//! The rule (see [`FuseMsg::List`]): a group missing from a peer's list is failed if it is
//! durably `Live` here or the peer is its creator (during creation a member may not have
//! heard of it yet), and only if the list echoes a stamp of ours at least as late as the
//! group's last change here; an older list may predate the peer's joining and only waits.
//! A group `Joined` here that the list shows established becomes `Live`.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use ken_transport::ProcessId;

use super::group::{Group, GroupState};
use super::wire::{FuseMsg, LIST_GROUPS_PER_FRAME};
use super::GroupId;
use crate::Time;

/// The range of group ids a list covers.
pub(super) type Range = (Bound<GroupId>, Bound<GroupId>);

/// The list of `vouched` (sorted: (id, established)) for one peer, in as many messages as
/// it takes, each covering its own range of ids so that each can be judged alone.
pub(super) fn build(vouched: &[(GroupId, bool)], stamp: u64, echo: u64) -> Vec<FuseMsg> {
    if vouched.is_empty() {
        return vec![FuseMsg::List {
            lo: None,
            hi: None,
            groups: Vec::new(),
            stamp,
            echo,
        }];
    }
    let chunks: Vec<&[(GroupId, bool)]> = vouched.chunks(LIST_GROUPS_PER_FRAME).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| FuseMsg::List {
            lo: (i > 0).then(|| chunk[0].0),
            hi: chunks.get(i + 1).map(|next| next[0].0),
            groups: chunk.to_vec(),
            stamp,
            echo,
        })
        .collect()
}

/// The range a received list covers, if it is well formed: its bounds in order, its groups
/// sorted and inside them (the merge walk of [`judge`] depends on it).
pub(super) fn range(
    lo: Option<GroupId>,
    hi: Option<GroupId>,
    groups: &[(GroupId, bool)],
) -> Option<Range> {
    let range = (
        lo.map_or(Bound::Unbounded, Bound::Included),
        hi.map_or(Bound::Unbounded, Bound::Excluded),
    );
    let well_formed = lo.zip(hi).is_none_or(|(lo, hi)| lo < hi)
        && groups.windows(2).all(|w| w[0].0 < w[1].0)
        && groups.iter().all(|(id, _)| range.contains(id));
    well_formed.then_some(range)
}

/// What a list from a peer means for the groups here.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Missing from a fresh list: fail them.
    pub fail: Vec<GroupId>,
    /// Shown established while only `Joined` here: they are `Live`.
    pub establish: Vec<GroupId>,
    /// Missing from a list too old to count (it echoes a stamp from before the group's last
    /// change here): not counted against the group.
    pub stale: u64,
}

/// Walks `listed` (sorted, inside `range`: see [`range`]), a list from `from` echoing our
/// stamp `echo`, beside our groups in `range`.
pub(super) fn judge(
    groups: &BTreeMap<GroupId, Group>,
    range: Range,
    from: &ProcessId,
    listed: Vec<(GroupId, bool)>,
    echo: Time,
) -> Verdict {
    let mut verdict = Verdict::default();
    let mut theirs = listed.into_iter().peekable();
    for (id, g) in groups.range(range) {
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
        if g.state == GroupState::Failed || !g.has_member(from) {
            continue;
        }
        match listed {
            None => {
                let counts = g.durable == Some(GroupState::Live) || g.creator == *from;
                // Built after the peer heard from us in this state? Else it may predate the
                // peer's joining (a stale list that a Confirm overtook): wait for a fresher
                // one.
                let fresh = echo >= g.vouch_since;
                if counts && fresh {
                    verdict.fail.push(*id);
                } else if counts {
                    verdict.stale += 1;
                }
            }
            Some(true) if g.state == GroupState::Joined => verdict.establish.push(*id),
            Some(_) => {}
        }
    }
    verdict
}
