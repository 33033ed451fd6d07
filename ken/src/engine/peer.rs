//! Per-pair protocol state: the outbox, sequence numbers, acknowledgements, the reorder
//! buffer and the retransmission timer of one peer.
//!
//! Invariants (checked by [`Peer::check`] in debug builds and by the simulation):
//! - `acked < committed_next_seq <= next_seq`, `delivered_committed <= delivered`.
//! - The outbox holds exactly the messages `acked + 1 .. next_seq`, in order.
//! - Only messages with `seq < committed_next_seq` are ever transmitted (output commit).
//! - Acknowledgements sent never exceed `delivered_committed`.
//! - Reorder buffer keys are all `> delivered + 1` and `<= delivered + reorder_max`.
//! - `acked = max(peer_acked, forgotten)`: `acked` is the outbox floor; `forget_peer` moves
//!   it up to `next_seq - 1` (the withdrawn messages, `forgotten`) without the peer having
//!   acknowledged anything. `peer_acked` is what frames carry as `acked`, the peer's real
//!   acknowledgement, and what the peer row stores as `acked` (with `forgotten` beside it), so
//!   a peer never reads a withdrawn outbox as acknowledged, not even after a restart.
//! - Withdrawn sequence numbers stay used: the peer is told with a `Skip` frame (repeated
//!   with backoff from the moment the forget is durable until it acknowledges
//!   `forgotten_durable`), and treats the ones it has not consumed as consumed.
//!
//! The pair check (issue 13): every data and ack frame from the peer carries its view of the
//! pair (`ack`, `acked`). Those values only grow and are sent only once durable, so a frame
//! with `ack >= committed_next_seq` (it acknowledges a message this store never committed)
//! or `acked > delivered_committed` (it holds an acknowledgement of more than this store has
//! consumed) proves that this store lost history: [`Peer::rollback_evidence`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::{Incarnation, ProcessId, Time, Tuning};

/// An outbound message kept until acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct OutEntry {
    pub seq: u64,
    pub payload: Vec<u8>,
    /// First transmission, if any (for round-trip samples).
    pub first_sent: Option<Time>,
    pub last_sent: Time,
    pub transmissions: u32,
}

/// Adaptive retransmission timeout (Jacobson/Karels, RFC 6298) with exponential backoff.
#[derive(Debug, Clone)]
pub(crate) struct Rto {
    srtt_us: Option<u64>,
    rttvar_us: u64,
    backoff_shift: u32,
    min: Duration,
    max: Duration,
    initial: Duration,
}

impl Rto {
    pub fn new(tuning: &Tuning) -> Rto {
        Rto {
            srtt_us: None,
            rttvar_us: 0,
            backoff_shift: 0,
            min: tuning.rto_min,
            max: tuning.rto_max,
            initial: tuning.rto_initial,
        }
    }

    /// A round-trip sample from a message transmitted once (Karn's rule).
    pub fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_micros() as u64;
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(r);
                self.rttvar_us = (3 * self.rttvar_us + delta) / 4;
                self.srtt_us = Some((7 * srtt + r) / 8);
            }
        }
    }

    /// The timeout without backoff.
    pub fn base(&self) -> Duration {
        let base = match self.srtt_us {
            None => self.initial,
            Some(srtt) => Duration::from_micros(srtt + (4 * self.rttvar_us).max(1000)),
        };
        base.clamp(self.min, self.max)
    }

    /// The timeout with backoff, at most the ceiling.
    pub fn current(&self) -> Duration {
        let b = self.base();
        b.checked_mul(1u32 << self.backoff_shift.min(16))
            .unwrap_or(self.max)
            .min(self.max)
    }

    pub fn back_off(&mut self) {
        if self.current() < self.max {
            self.backoff_shift += 1;
        }
    }

    pub fn reset_backoff(&mut self) {
        self.backoff_shift = 0;
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt_us.map(Duration::from_micros)
    }
}

/// Everything this process knows about one peer.
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: ProcessId,
    /// The peer's incarnation; 0 until a frame from it is seen.
    pub incarnation: Incarnation,
    /// Sequence number the next message gets (includes uncommitted turns).
    pub next_seq: u64,
    /// `next_seq` as of the last durable batch: messages below it may be transmitted.
    pub committed_next_seq: u64,
    /// Highest cumulative acknowledgement received from the peer.
    pub acked: u64,
    /// `acked` as last written to the store.
    pub acked_stored: u64,
    /// Unacknowledged messages, `acked + 1 .. next_seq`.
    pub outbox: VecDeque<OutEntry>,
    /// Messages in the outbox transmitted at least once (a prefix of it).
    pub in_flight: usize,
    /// Highest sequence number consumed by a turn (includes uncommitted turns).
    pub delivered: u64,
    /// Highest sequence number consumed by a durable turn: what we acknowledge.
    pub delivered_committed: u64,
    /// Highest acknowledgement transmitted to the peer.
    pub ack_sent: u64,
    /// Out-of-order arrivals waiting for the gap to fill.
    pub reorder: BTreeMap<u64, Vec<u8>>,
    pub rto: Rto,
    /// When to retransmit, if anything is in flight.
    pub retransmit_at: Option<Time>,
    /// The peer row must be written with the filling batch.
    pub dirty: bool,
    /// Logged once: frames from this peer carry an incarnation other than the known one.
    pub foreign_incarnation_seen: bool,
    /// The highest acknowledgement the peer really sent (see the module docs); carried as
    /// `acked` in data and ack frames.
    pub peer_acked: u64,
    /// After a restart: when to probe the peer for its view of the pair again, until a data
    /// or ack frame from it has been checked (`None`: no probe due).
    pub probe_at: Option<Time>,
    /// The probe interval, doubled after each probe up to the retransmission ceiling.
    pub probe_interval: Duration,
    /// The highest sequence number to the peer withdrawn by `forget_peer` (0: none); stored
    /// in the peer row. `acked` (the outbox floor) is at least this.
    pub forgotten: u64,
    /// `forgotten` as durable: only a durable withdrawal may be announced (a `Skip`).
    pub forgotten_durable: u64,
    /// When to send the next `Skip`, while the peer has not acknowledged `forgotten_durable`.
    pub skip_at: Option<Time>,
    /// The `Skip` interval, doubled after each up to the retransmission ceiling.
    pub skip_interval: Duration,
    /// Bumped when a new incarnation of the peer is admitted (in memory only): a batch
    /// sealed before it speaks of the old incarnation's pair, whose counters are gone.
    pub epoch: u32,
    /// Data frames retransmitted to the peer in this life (the status view, metrics).
    pub retransmits: u64,
}

/// Why a frame from a peer proves that this process's store lost history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackEvidence {
    /// The peer acknowledged our message `ack`, but this store committed messages to it only
    /// up to `issued` (`committed_next_seq - 1`).
    AckBeyondIssued { ack: u64, issued: u64 },
    /// The peer holds our acknowledgement of its messages up to `acked`, but this store
    /// consumed (durably) only up to `delivered`.
    AckedBeyondDelivered { acked: u64, delivered: u64 },
}

impl std::fmt::Display for RollbackEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollbackEvidence::AckBeyondIssued { ack, issued } => write!(
                f,
                "acknowledges our message {ack}, but this store issued messages to it only up \
                 to {issued}"
            ),
            RollbackEvidence::AckedBeyondDelivered { acked, delivered } => write!(
                f,
                "holds our acknowledgement of its messages up to {acked}, but this store \
                 consumed them only up to {delivered}"
            ),
        }
    }
}

impl Peer {
    pub fn new(id: ProcessId, tuning: &Tuning) -> Peer {
        Peer {
            id,
            incarnation: Incarnation(0),
            next_seq: 1,
            committed_next_seq: 1,
            acked: 0,
            acked_stored: 0,
            outbox: VecDeque::new(),
            in_flight: 0,
            delivered: 0,
            delivered_committed: 0,
            ack_sent: 0,
            reorder: BTreeMap::new(),
            rto: Rto::new(tuning),
            retransmit_at: None,
            dirty: false,
            foreign_incarnation_seen: false,
            peer_acked: 0,
            probe_at: None,
            probe_interval: tuning.rto_initial,
            forgotten: 0,
            forgotten_durable: 0,
            skip_at: None,
            skip_interval: tuning.rto_initial,
            epoch: 0,
            retransmits: 0,
        }
    }

    /// The pair check of a frame from the peer carrying its view (`ack`, `acked`): `Some` if
    /// it proves that this store lost history (see the module docs).
    pub fn rollback_evidence(&self, ack: u64, acked: u64) -> Option<RollbackEvidence> {
        if ack >= self.committed_next_seq {
            return Some(RollbackEvidence::AckBeyondIssued {
                ack,
                issued: self.committed_next_seq - 1,
            });
        }
        if acked > self.delivered_committed {
            return Some(RollbackEvidence::AckedBeyondDelivered {
                acked,
                delivered: self.delivered_committed,
            });
        }
        None
    }

    /// Checks the invariants in the module doc. Cheap enough for every event in tests.
    pub fn check(&self, reorder_max: u64) {
        assert!(
            self.acked < self.committed_next_seq,
            "{}: acked {} >= committed_next_seq {}",
            self.id,
            self.acked,
            self.committed_next_seq
        );
        assert!(self.committed_next_seq <= self.next_seq);
        assert!(self.delivered_committed <= self.delivered);
        assert!(self.ack_sent <= self.delivered_committed);
        assert_eq!(
            self.acked,
            self.peer_acked.max(self.forgotten),
            "{}",
            self.id
        );
        assert!(self.forgotten_durable <= self.forgotten);
        assert_eq!(self.outbox.len() as u64, self.next_seq - 1 - self.acked);
        if let Some(first) = self.outbox.front() {
            assert_eq!(first.seq, self.acked + 1);
        }
        assert!(self.in_flight <= self.outbox.len());
        for (i, e) in self.outbox.iter().enumerate() {
            assert_eq!(
                e.seq,
                self.acked + 1 + i as u64,
                "{}: outbox not contiguous",
                self.id
            );
            assert_eq!(e.transmissions > 0, i < self.in_flight);
            if e.transmissions > 0 {
                assert!(e.seq < self.committed_next_seq, "transmitted before commit");
            }
        }
        for &s in self.reorder.keys() {
            assert!(s > self.delivered + 1 && s <= self.delivered + reorder_max);
        }
        assert_eq!(self.retransmit_at.is_some(), self.in_flight > 0);
    }
}
