//! One FUSE group at one member: its durable record ([`GroupRecord`], the `fuse_groups`
//! row), the state machine it steps through ([`GroupState`]) and what this process keeps
//! beside it in memory ([`Group`]: the durable view, creation bookkeeping, the moment it
//! last changed).
//!
//! Invariants: a group's state only moves forward (`Creating`/`Joined` -> `Live` ->
//! `Failed`, or straight to `Failed`), and `Failed` is forever; `durable` is the state as of
//! the last commit and is what this process vouches for to its peers.

use std::collections::BTreeSet;

use ken_store::GroupRow;
use ken_transport::ProcessId;
use serde::{Deserialize, Serialize};

use super::GroupId;
use crate::Time;

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

/// A stored group record that does not decode or names an invalid member. Nothing was
/// recovered: the store needs `ken inspect STORE verify`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{group}: {what}")]
pub struct BadGroupRecord {
    pub group: GroupId,
    pub what: String,
}

/// One group at this member.
#[derive(Debug, Clone)]
pub(super) struct Group {
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
    /// Changed since the last seal: its record goes into the next batch.
    pub dirty: bool,
}

impl Group {
    /// A group this process just recorded (created it, or was asked to join it), not yet
    /// durable. `members` sorted and deduplicated.
    pub fn recorded(
        creator: ProcessId,
        members: Vec<ProcessId>,
        state: GroupState,
        unconfirmed: BTreeSet<ProcessId>,
        now: Time,
        deadline: Time,
        stamp: Time,
    ) -> Group {
        Group {
            creator,
            members,
            state,
            notified: false,
            durable: None,
            unconfirmed,
            deadline,
            next_create_send: now,
            created: now,
            vouch_since: stamp,
            dirty: true,
        }
    }

    /// A group read back from the store at recovery (durable as read). `me` is this
    /// process; `deadline` and `stamp` as for [`Group::recorded`].
    pub fn recovered(
        row: &GroupRow,
        me: &ProcessId,
        now: Time,
        deadline: Time,
        stamp: Time,
    ) -> Result<(GroupId, Group), BadGroupRecord> {
        let id = GroupId(row.group);
        let bad = |what: String| BadGroupRecord { group: id, what };
        let rec: GroupRecord =
            ken_store::codec::decode(&row.record).map_err(|e| bad(e.to_string()))?;
        let parse =
            |s: &String| ProcessId::new(s.clone()).map_err(|_| bad(format!("bad member `{s}`")));
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
            members.iter().filter(|m| *m != me).cloned().collect()
        } else {
            BTreeSet::new()
        };
        let group = Group {
            creator,
            members,
            state: rec.state,
            notified: rec.notified,
            durable: Some(rec.state),
            unconfirmed,
            deadline,
            next_create_send: now,
            created: Time::from_millis(rec.created_ms),
            vouch_since: stamp,
            dirty: false,
        };
        Ok((id, group))
    }

    /// Vouched for to peers: durable and not failed; `Some(established)`.
    pub fn vouched(&self) -> Option<bool> {
        vouched(self.durable)
    }

    /// Monitored: recorded here and not failed (durable or not).
    pub fn shared(&self) -> bool {
        self.state != GroupState::Failed
    }

    pub fn has_member(&self, p: &ProcessId) -> bool {
        self.members.binary_search(p).is_ok()
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

    pub fn status(&self, id: GroupId) -> GroupStatus {
        GroupStatus {
            id,
            creator: self.creator.clone(),
            members: self.members.clone(),
            state: self.state,
            durable: self.durable,
            notified: self.notified,
        }
    }
}

/// What a group in durable state `durable` is vouched for as: `None` if not at all (not
/// durable yet, or failed), else `Some(established)`.
pub(super) fn vouched(durable: Option<GroupState>) -> Option<bool> {
    match durable {
        Some(GroupState::Failed) | None => None,
        Some(s) => Some(s == GroupState::Live),
    }
}
