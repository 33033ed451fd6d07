//! FUSE group records (the store's `fuse_groups` table) decoded with the runtime's own type,
//! [`ken::engine::fuse::GroupRecord`], through [`ken_store::codec`], and the structural
//! invariants `verify` checks on them.
//!
//! The record body belongs to the runtime (`ken/src/engine/fuse.rs` writes it); the store
//! only seals it. So this is the one module of `inspect` that uses the `ken` crate: mirroring
//! the type here would let the two drift apart silently, while a change of the runtime's type
//! now fails to compile here, or shows up as an undecodable record in the tests.
//!
//! Invariants: decoding never panics (bad bytes become a [`Corrupted`] naming the group);
//! every check in [`problems`] holds for every record the runtime writes, so a problem is
//! damage, never a false alarm on a healthy store.

use ken::engine::fuse::{GroupRecord, GroupState};
use ken::ProcessId;
use ken_store::{codec, Corrupted, GroupRow};

use super::decode::hex;

/// The store table holding group records, as errors and `verify` name it.
pub const TABLE: &str = "fuse_groups";

/// How the store names a group in errors: `"0x"` + 32 hex digits (the JSON `group` field).
pub fn key(group: &[u8; 16]) -> String {
    format!("0x{}", hex(group))
}

/// How the runtime prints a group in its logs (`GroupId`'s `Display`): `"g-"` + 32 hex.
pub fn display(group: &[u8; 16]) -> String {
    ken::GroupId(*group).to_string()
}

/// The state's name in views: `creating`, `joined`, `live` or `failed`.
pub fn state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Creating => "creating",
        GroupState::Joined => "joined",
        GroupState::Live => "live",
        GroupState::Failed => "failed",
    }
}

/// Decodes a group record body (already unsealed by the reader).
///
/// # Errors
/// The body is not a `GroupRecord` (a [`Corrupted`] naming [`TABLE`] and the group).
pub fn decode(row: &GroupRow) -> Result<GroupRecord, Corrupted> {
    codec::decode::<GroupRecord>(&row.record).map_err(|e| Corrupted {
        table: TABLE.to_string(),
        key: key(&row.group),
        detail: format!("the record does not decode as a FUSE group record: {}", e.0),
    })
}

/// What is wrong with a decoded record stored by process `me`, one sentence each; empty for
/// every record the runtime writes:
///
/// - every member and the creator are valid process ids (else the runtime refuses to
///   recover the store);
/// - members are sorted and without duplicates, at most
///   [`GROUP_MEMBERS_MAX`](ken::limits::GROUP_MEMBERS_MAX), and include `me` and the
///   creator (a creator always includes itself, a member records only groups naming it);
/// - `creating` only at the creator, `joined` only at another member;
/// - `notified` only once `failed` (the notification turn follows the failure).
pub fn problems(me: &str, rec: &GroupRecord) -> Vec<String> {
    let mut out = Vec::new();
    for m in std::iter::once(&rec.creator).chain(&rec.members) {
        if ProcessId::new(m.clone()).is_err() {
            out.push(format!(
                "`{m}` is not a valid process id (the runtime would refuse to recover this store)"
            ));
        }
    }
    if !rec.members.windows(2).all(|w| w[0] < w[1]) {
        out.push(format!(
            "members {:?} are not sorted without duplicates",
            rec.members
        ));
    }
    if rec.members.len() > ken::limits::GROUP_MEMBERS_MAX {
        out.push(format!(
            "{} members, more than the limit of {}",
            rec.members.len(),
            ken::limits::GROUP_MEMBERS_MAX
        ));
    }
    if !rec.members.iter().any(|m| m == me) {
        out.push(format!(
            "members {:?} do not include this store's process `{me}`",
            rec.members
        ));
    }
    if !rec.members.contains(&rec.creator) {
        out.push(format!(
            "members {:?} do not include the creator `{}`",
            rec.members, rec.creator
        ));
    }
    match rec.state {
        GroupState::Creating if rec.creator != me => out.push(format!(
            "state creating at `{me}`, which is not the creator `{}`",
            rec.creator
        )),
        GroupState::Joined if rec.creator == me => {
            out.push(format!("state joined at the creator `{me}`"));
        }
        _ => {}
    }
    if rec.notified && rec.state != GroupState::Failed {
        out.push(format!(
            "notified, but the state is {}, not failed",
            state_name(rec.state)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: GroupState, notified: bool) -> GroupRecord {
        GroupRecord {
            creator: "a".to_string(),
            members: vec!["a".to_string(), "b".to_string()],
            state,
            notified,
            created_ms: 1,
        }
    }

    #[test]
    fn records_the_runtime_writes_have_no_problems() {
        for (me, state) in [
            ("a", GroupState::Creating),
            ("a", GroupState::Live),
            ("b", GroupState::Joined),
            ("b", GroupState::Live),
        ] {
            assert_eq!(problems(me, &record(state, false)), Vec::<String>::new());
        }
        for me in ["a", "b"] {
            for notified in [false, true] {
                assert!(problems(me, &record(GroupState::Failed, notified)).is_empty());
            }
        }
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let cases: Vec<(&str, GroupRecord, &str)> = vec![
            ("b", record(GroupState::Creating, false), "not the creator"),
            (
                "a",
                record(GroupState::Joined, false),
                "joined at the creator",
            ),
            (
                "a",
                record(GroupState::Live, true),
                "notified, but the state is live",
            ),
            (
                "c",
                record(GroupState::Live, false),
                "do not include this store's process `c`",
            ),
            (
                "a",
                GroupRecord {
                    members: vec!["b".into(), "a".into()],
                    ..record(GroupState::Live, false)
                },
                "not sorted",
            ),
            (
                "b",
                GroupRecord {
                    creator: "z".into(),
                    ..record(GroupState::Live, false)
                },
                "do not include the creator `z`",
            ),
            (
                "a",
                GroupRecord {
                    members: vec!["".into(), "a".into()],
                    ..record(GroupState::Live, false)
                },
                "is not a valid process id",
            ),
        ];
        for (me, rec, says) in cases {
            let p = problems(me, &rec);
            assert!(p.iter().any(|p| p.contains(says)), "{me} {rec:?}: {p:?}");
        }
    }

    #[test]
    fn undecodable_bodies_are_corrupted_naming_the_group() {
        let row = GroupRow {
            group: [0xab; 16],
            record: vec![0xff, 0xff, 0xff],
        };
        let e = decode(&row).unwrap_err();
        assert_eq!(e.table, "fuse_groups");
        assert_eq!(e.key, format!("0x{}", "ab".repeat(16)));
        let good = GroupRow {
            group: [1; 16],
            record: codec::encode(&record(GroupState::Live, false)),
        };
        assert_eq!(decode(&good).unwrap(), record(GroupState::Live, false));
        assert_eq!(display(&[1; 16]), format!("g-{}", "01".repeat(16)));
    }
}
