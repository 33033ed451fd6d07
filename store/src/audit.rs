//! The cross-store audit: the stores of communicating processes checked against each other,
//! pair by pair. The core of `ken audit STORE...` (the command, with FUSE group and client checks, is
//! `ken_inspect::audit`).
//!
//! For an ordered pair (sender A, receiver B), with A's `peers` row for B and B's for A:
//!
//! - **A's `acked` <= B's `delivered`**: B acknowledges only what its committed turns
//!   consumed, and its durable `delivered` never goes back. If A holds an acknowledgement of
//!   more than B's store consumed, B's store lost history (or A's messages are lost).
//! - **B's `delivered` <= A's `next_seq - 1`**: B consumed only messages A committed. If B
//!   consumed more than A's store ever issued, A's store lost history.
//! - **B knows A's incarnation**: B's record of A's incarnation (if any) is A's. Otherwise
//!   A's store was replaced by a new one (its messages to B are rejected).
//!
//! Invariant (soundness while the owners run): every store is read twice, all of them once
//! and then all again; an upper bound is always taken from the second pass and a lower bound
//! from the first. The counters only grow, so a running pair is never reported broken: only
//! a store that went back in time (or a bug) is.

use crate::{PeerRow, ReadError, Reader};

/// What is broken in one ordered pair.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairProblem {
    /// The sender holds the receiver's acknowledgement up to `acked`, but the receiver's
    /// store consumed only up to `delivered`: the receiver's store lost history.
    AckedBeyondDelivered { acked: u64, delivered: u64 },
    /// The receiver consumed up to `delivered`, but the sender's store issued only up to
    /// `issued`: the sender's store lost history.
    DeliveredBeyondIssued { delivered: u64, issued: u64 },
    /// The receiver knows the sender as incarnation `known`, but the sender's store is
    /// incarnation `actual`: the sender's store was replaced.
    IncarnationMismatch { known: u64, actual: u64 },
}

/// A broken ordered pair, named by its stores' process ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenPair {
    pub sender: String,
    pub receiver: String,
    /// The process whose store is behind (lost history, or was replaced).
    pub suspect: String,
    pub problem: PairProblem,
}

impl std::fmt::Display for BrokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, r) = (&self.sender, &self.receiver);
        match &self.problem {
            PairProblem::AckedBeyondDelivered { acked, delivered } => write!(
                f,
                "{s}->{r}: {s} holds {r}'s acknowledgement up to {acked}, but {r}'s store \
                 consumed only up to {delivered}: {r}'s store lost history"
            ),
            PairProblem::DeliveredBeyondIssued { delivered, issued } => write!(
                f,
                "{s}->{r}: {r} consumed up to {delivered}, but {s}'s store issued only up to \
                 {issued}: {s}'s store lost history"
            ),
            PairProblem::IncarnationMismatch { known, actual } => write!(
                f,
                "{s}->{r}: {r} knows {s} as incarnation {known:016x}, but {s}'s store is \
                 {actual:016x}: {s}'s store was replaced"
            ),
        }
    }
}

/// Why the audit could not run: a store that could not be read, named.
#[derive(Debug, thiserror::Error)]
#[error("cannot read store {path}: {source}")]
pub struct AuditError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: ReadError,
}

struct Snapshot {
    id: String,
    incarnation: u64,
    peers: Vec<PeerRow>,
}

fn snapshot(r: &Reader) -> Result<Snapshot, AuditError> {
    let err = |source| AuditError {
        path: r.path().to_path_buf(),
        source,
    };
    let meta = r.meta().map_err(err)?;
    let peers = r.peers().map_err(err)?;
    Ok(Snapshot {
        id: meta.process_id,
        incarnation: meta.incarnation,
        peers,
    })
}

fn row<'a>(s: &'a Snapshot, peer: &str) -> Option<&'a PeerRow> {
    s.peers.iter().find(|p| p.peer == peer)
}

/// Checks every ordered pair among the stores (see the module docs) and returns the broken
/// ones. Stores that never exchanged a message have nothing to check.
pub fn audit<R: std::borrow::Borrow<Reader>>(readers: &[R]) -> Result<Vec<BrokenPair>, AuditError> {
    let first: Vec<Snapshot> = readers
        .iter()
        .map(|r| snapshot(r.borrow()))
        .collect::<Result<_, _>>()?;
    let second: Vec<Snapshot> = readers
        .iter()
        .map(|r| snapshot(r.borrow()))
        .collect::<Result<_, _>>()?;
    let mut broken = Vec::new();
    for (a, a_now) in first.iter().zip(&second) {
        for (b, b_now) in first.iter().zip(&second) {
            if a.id == b.id {
                continue;
            }
            let pair = |suspect: &str, problem| BrokenPair {
                sender: a.id.clone(),
                receiver: b.id.clone(),
                suspect: suspect.to_string(),
                problem,
            };
            // Lower bounds from the first pass, upper bounds from the second.
            let acked = row(a, &b.id).map_or(0, |p| p.acked);
            let delivered_now = row(b_now, &a.id).map_or(0, |p| p.delivered);
            if acked > delivered_now {
                broken.push(pair(
                    &b.id,
                    PairProblem::AckedBeyondDelivered {
                        acked,
                        delivered: delivered_now,
                    },
                ));
            }
            let delivered = row(b, &a.id).map_or(0, |p| p.delivered);
            let issued_now = row(a_now, &b.id).map_or(0, |p| p.next_seq.saturating_sub(1));
            if delivered > issued_now {
                broken.push(pair(
                    &a.id,
                    PairProblem::DeliveredBeyondIssued {
                        delivered,
                        issued: issued_now,
                    },
                ));
            }
            let known = row(b_now, &a.id).map_or(0, |p| p.incarnation);
            if known != 0 && known != a_now.incarnation {
                broken.push(pair(
                    &a.id,
                    PairProblem::IncarnationMismatch {
                        known,
                        actual: a_now.incarnation,
                    },
                ));
            }
        }
    }
    Ok(broken)
}
