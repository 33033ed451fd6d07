//! What FUSE puts on the wire: the payloads of `Fuse` frames ([`FuseMsg`]) and of
//! `Heartbeat` frames ([`Heartbeat`]), and the merging of what one release sends a peer
//! into as few frames as fit ([`Outgoing`]).
//!
//! Invariants: every merged message fits one datagram, whatever the ids and member counts
//! (the static assertions below relate the per-frame limits to the transport's payload
//! capacity); a heartbeat is the same size for one group as for ten thousand. The encodings
//! are part of the wire format: changing a field or its order changes every frame.

use ken_store::codec;
use serde::{Deserialize, Serialize};

use super::GroupId;
use crate::Time;

/// FUSE control messages (payload of `Fuse` frames). Each names many groups: what one
/// release sends a peer is merged into as few frames as fit (`Outgoing`), so creating or
/// failing ten thousand groups costs a handful of datagrams per peer, not ten thousand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FuseMsg {
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
    /// receiver vouched for the group before that echo (a group's `vouch_since`). Without
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

impl FuseMsg {
    /// The payload of the `Fuse` frame carrying this message.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a `Fuse` frame's payload; bad bytes are an error, never a panic.
    pub fn decode(payload: &[u8]) -> Result<FuseMsg, codec::DecodeError> {
        codec::decode(payload)
    }
}

/// Payload of `Heartbeat` frames: the digest and the count of the groups the sender vouches
/// for, little-endian, fixed width (the codec's integers are variable-length), so that a
/// heartbeat is the same size for one group as for ten thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    digest: [u8; 4],
    groups: [u8; 4],
    /// The sender's clock, microseconds: echoed by the receiver's lists.
    stamp: [u8; 8],
}

impl Heartbeat {
    pub fn new(digest: u32, groups: u32, stamp: Time) -> Heartbeat {
        Heartbeat {
            digest: digest.to_le_bytes(),
            groups: groups.to_le_bytes(),
            stamp: stamp.as_micros().to_le_bytes(),
        }
    }

    /// When the sender built it, by its FUSE stamp clock.
    pub fn stamp(&self) -> Time {
        Time(u64::from_le_bytes(self.stamp))
    }

    /// (digest, count) of the groups the sender vouches for to the receiver.
    pub fn values(&self) -> (u32, u32) {
        (
            u32::from_le_bytes(self.digest),
            u32::from_le_bytes(self.groups),
        )
    }

    /// The payload of the `Heartbeat` frame carrying it.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a `Heartbeat` frame's payload; bad bytes are an error, never a panic.
    pub fn decode(payload: &[u8]) -> Result<Heartbeat, codec::DecodeError> {
        codec::decode(payload)
    }
}

/// Groups per `List`, `Confirm`, `Established` or `Fail` frame: a list entry is 17 bytes
/// encoded (id and flag), so a full frame is about 51 KB, under the datagram limit with room
/// for the header and a list's range bounds. Ten thousand groups go out as four frames.
pub const LIST_GROUPS_PER_FRAME: usize = 3_000;

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

/// The FUSE messages of one release to one peer, merged by kind.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    creator: Option<String>,
    creates: Vec<(GroupId, Vec<String>)>,
    confirms: Vec<GroupId>,
    established: Vec<GroupId>,
    fails: Vec<GroupId>,
    lists: Vec<FuseMsg>,
}

impl Outgoing {
    pub(super) fn add(&mut self, msg: FuseMsg) {
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
    pub(super) fn into_messages(self) -> Vec<FuseMsg> {
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

#[cfg(test)]
mod tests {
    use ken_transport::{Frame, FrameKind, Incarnation, ProcessId, Seq};

    use super::*;

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
                auth: ken_transport::Auth::None,
                from: long('f'),
                from_incarnation: Incarnation(u64::MAX),
                to: long('t'),
                to_incarnation: Incarnation(u64::MAX),
                seq: Seq(0),
                ack: Seq(0),
                acked: Seq(0),
                payload: m.encode(),
            };
            assert!(
                frame.encode().is_ok(),
                "a merged message does not fit: {} bytes",
                frame.encoded_len()
            );
        }
    }
}
