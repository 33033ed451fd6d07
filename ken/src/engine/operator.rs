//! What an operator reads from, and orders of, a running engine (issue 16): the status
//! snapshot behind `ken status` and the online admission behind `ken admit --cluster`.
//!
//! Kept in a file of its own, away from the protocol: the snapshot only reads the engine's
//! fields (no event, no command, no turn, the handler untouched); the admission only writes
//! the same [`living::ADMIT_TABLE`] row that `ken admit STORE PEER` writes offline, into the
//! filling batch, so the existing replaced-peer path (`replaced_peer` in `mod.rs`) admits
//! the new incarnation at its next frame. Neither is a sub-machine with state of its own.

use std::collections::BTreeMap;

use ken_store::TableWrite;

use super::fuse::GroupState;
use super::{Engine, EngineStats};
use crate::living::{self, Admission, Held};
use crate::{Handler, Incarnation, ProcessId, Time};

/// One peer as the status view shows it ([`Engine::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub id: ProcessId,
    /// The peer's incarnation as known here (0: never heard).
    pub incarnation: Incarnation,
    /// Messages to the peer not yet acknowledged (committed or not).
    pub outbox: usize,
    /// Of those, transmitted at least once.
    pub in_flight: usize,
    /// Highest of our messages the peer acknowledged.
    pub acked: u64,
    /// Highest of its messages consumed by a durable turn here.
    pub delivered: u64,
    /// The oldest unacknowledged message: its seq, and its first transmission in this life
    /// (`None`: not transmitted yet in this life, e.g. recovered and not yet resent).
    pub oldest_unacked: Option<(u64, Option<Time>)>,
    /// Frames from a new incarnation of the peer were seen and it is not admitted.
    pub awaiting_admission: bool,
    /// The peer refused this process's incarnation (it knew an earlier one).
    pub refuses_us: bool,
    /// Smoothed round-trip time, once measured.
    pub srtt: Option<std::time::Duration>,
    /// Data frames retransmitted to it in this life.
    pub retransmits: u64,
}

/// A read-only summary of a running engine for the status view: counters, peers, FUSE
/// groups by state, held inputs, the client reply cache.
#[derive(Debug, Clone)]
pub struct EngineSnapshot {
    pub id: ProcessId,
    pub incarnation: Incarnation,
    /// Turns over the life of the store (this life's count is in `stats.turns`).
    pub turns_total: u64,
    pub stats: EngineStats,
    pub peers: Vec<PeerSnapshot>,
    /// FUSE groups by their current state ([`group_state_name`]).
    pub groups: BTreeMap<&'static str, u64>,
    /// Input sources held in this life (newer-version messages, poison inputs).
    pub held: Vec<Held>,
    /// Clients in the reply cache.
    pub clients_cached: usize,
    /// Bytes of replies the cache holds in memory.
    pub reply_cache_inline_bytes: usize,
}

/// Why an online admission was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitOnlineError {
    #[error("`{peer}` is not a peer of {process} (its peers: {known})")]
    UnknownPeer {
        process: ProcessId,
        peer: ProcessId,
        known: String,
    },
}

/// The lower-case name of a group state, as the status view prints it.
pub fn group_state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Creating => "creating",
        GroupState::Joined => "joined",
        GroupState::Live => "live",
        GroupState::Failed => "failed",
    }
}

impl<H: Handler> Engine<H> {
    /// The status view's summary of this engine, from its own counters: no event, no turn.
    pub fn snapshot(&self) -> EngineSnapshot {
        let peers = self
            .peers
            .values()
            .map(|p| PeerSnapshot {
                id: p.id.clone(),
                incarnation: p.incarnation,
                outbox: p.outbox.len(),
                in_flight: p.in_flight,
                acked: p.acked,
                delivered: p.delivered_committed,
                oldest_unacked: p.outbox.front().map(|e| (e.seq, e.first_sent)),
                awaiting_admission: p.foreign_incarnation_seen,
                refuses_us: self.refused_by.contains(&p.id),
                srtt: p.rto.srtt(),
                retransmits: p.retransmits,
            })
            .collect();
        let mut groups = BTreeMap::new();
        for g in self.fuse.groups() {
            *groups.entry(group_state_name(g.state)).or_insert(0) += 1;
        }
        EngineSnapshot {
            id: self.id.clone(),
            incarnation: self.incarnation,
            turns_total: self.turns_total,
            stats: self.stats.clone(),
            peers,
            groups,
            held: self.held(),
            clients_cached: self.clients.len(),
            reply_cache_inline_bytes: self.reply_cache_inline_bytes(),
        }
    }

    /// An operator admits the next new incarnation of `peer` (`ken admit --cluster`): the
    /// [`living::ADMIT_TABLE`] row that `ken admit STORE PEER` writes offline, written in the
    /// filling batch. The next frame from a new incarnation of the peer (a refused peer keeps
    /// retransmitting) is admitted as a fresh peer, and the row deleted, as at a restart.
    /// Returns the incarnation known now.
    pub fn admit_online(
        &mut self,
        now: Time,
        peer: &ProcessId,
        by: &str,
    ) -> Result<Incarnation, AdmitOnlineError> {
        let Some(known) = self.peers.get(peer).map(|p| p.incarnation) else {
            return Err(AdmitOnlineError::UnknownPeer {
                process: self.id.clone(),
                peer: peer.clone(),
                known: self
                    .peers
                    .keys()
                    .map(ProcessId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let key = peer.as_str().as_bytes().to_vec();
        let value = ken_store::codec::encode(&Admission {
            by: by.to_string(),
            at_ms: now.as_millis(),
        });
        self.tables.write(
            self.next_batch,
            living::ADMIT_TABLE,
            key.clone(),
            Some(value.clone()),
        );
        self.filling.batch.table_writes.push(TableWrite {
            table: living::ADMIT_TABLE.to_string(),
            key,
            value: Some(value),
        });
        self.filling.nonempty = true;
        self.after_event(now);
        Ok(known)
    }
}
