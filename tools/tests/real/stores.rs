//! Invariants that hold across the stores of communicating processes, checked through the
//! store's read-only inspection API ([`ken_store::Reader`], safe while the owners run).
//!
//! - **No acknowledgement beyond delivery** (output validity, exactly-once): for every pair,
//!   the sender's durable `acked` never exceeds the receiver's durable `delivered`. The
//!   receiver acknowledges only what committed turns consumed, and its durable `delivered`
//!   only grows, so reading every sender's `acked` *before* any receiver's `delivered` can
//!   never report a false violation while processes run, crash and restart. A violation is
//!   a lost message: the sender deleted it from its outbox, the receiver never consumed it.
//! - **Quiescence** (after every process finished): every outbox is empty and each
//!   receiver consumed exactly what its sender sent.

use std::fmt;
use std::path::PathBuf;

use ken_store::{PeerRow, Reader};

/// A process's id and the path of its store.
#[derive(Debug, Clone)]
pub struct StoreRef {
    pub id: String,
    pub path: PathBuf,
}

/// A broken cross-store invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreViolation {
    /// `sender` holds `receiver`'s acknowledgement up to `acked`, but `receiver` consumed
    /// only up to `delivered`: messages `delivered+1..=acked` are lost.
    AckedNotDelivered {
        sender: String,
        receiver: String,
        acked: u64,
        delivered: u64,
    },
    /// After the run, `sender` still has unacknowledged messages to `receiver`.
    OutboxNotEmpty {
        sender: String,
        receiver: String,
        next_seq: u64,
        acked: u64,
        rows: usize,
    },
    /// After the run, `receiver` consumed a different number of messages than `sender`
    /// sent.
    DeliveredMismatch {
        sender: String,
        receiver: String,
        sent: u64,
        delivered: u64,
    },
}

impl fmt::Display for StoreViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreViolation::AckedNotDelivered {
                sender,
                receiver,
                acked,
                delivered,
            } => write!(
                f,
                "lost messages {sender}->{receiver}: {sender}'s store says {receiver} acknowledged up to seq {acked}, \
                 {receiver}'s store says it consumed only up to seq {delivered}"
            ),
            StoreViolation::OutboxNotEmpty {
                sender,
                receiver,
                next_seq,
                acked,
                rows,
            } => write!(
                f,
                "{sender} still has {rows} outbox rows to {receiver} (next_seq {next_seq}, acked {acked})"
            ),
            StoreViolation::DeliveredMismatch {
                sender,
                receiver,
                sent,
                delivered,
            } => write!(
                f,
                "{sender} sent {sent} messages to {receiver}, which consumed {delivered}"
            ),
        }
    }
}

fn peer_rows(store: &StoreRef) -> Result<Vec<PeerRow>, String> {
    let reader = Reader::open(&store.path).map_err(|e| format!("open {}: {e}", store.id))?;
    reader
        .peers()
        .map_err(|e| format!("read peers of {}: {e}", store.id))
}

fn row<'a>(rows: &'a [PeerRow], peer: &str) -> Option<&'a PeerRow> {
    rows.iter().find(|r| r.peer == peer)
}

/// The counters of one ordered pair, as read by [`read_counters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCounters {
    pub sender: String,
    pub receiver: String,
    /// The sender's durable `acked` for the receiver (read first).
    pub acked: u64,
    /// The receiver's durable `delivered` from the sender (read after every `acked`).
    pub delivered: u64,
}

/// Reads the counters of every ordered pair of `stores`: every sender's `acked` first, then
/// every receiver's `delivered` (the order that makes [`acked_not_delivered`] sound while the
/// owners run). `Err` if a store cannot be read (for example not created yet).
pub fn read_counters(stores: &[StoreRef]) -> Result<Vec<PairCounters>, String> {
    let acked: Vec<Vec<PeerRow>> = stores.iter().map(peer_rows).collect::<Result<_, _>>()?;
    let delivered: Vec<Vec<PeerRow>> = stores.iter().map(peer_rows).collect::<Result<_, _>>()?;
    let mut pairs = Vec::new();
    for (s, sender) in stores.iter().enumerate() {
        for (r, receiver) in stores.iter().enumerate() {
            if s != r {
                pairs.push(PairCounters {
                    sender: sender.id.clone(),
                    receiver: receiver.id.clone(),
                    acked: row(&acked[s], &receiver.id).map_or(0, |p| p.acked),
                    delivered: row(&delivered[r], &sender.id).map_or(0, |p| p.delivered),
                });
            }
        }
    }
    Ok(pairs)
}

/// The "no acknowledgement beyond delivery" violations among `pairs`.
pub fn acked_not_delivered(pairs: &[PairCounters]) -> Vec<StoreViolation> {
    pairs
        .iter()
        .filter(|p| p.acked > p.delivered)
        .map(|p| StoreViolation::AckedNotDelivered {
            sender: p.sender.clone(),
            receiver: p.receiver.clone(),
            acked: p.acked,
            delivered: p.delivered,
        })
        .collect()
}

/// Checks "no acknowledgement beyond delivery" for every ordered pair of `stores`. Sound
/// while the owners run (see the module docs). `Err` if a store cannot be read.
pub fn check_acked_within_delivered(stores: &[StoreRef]) -> Result<Vec<StoreViolation>, String> {
    Ok(acked_not_delivered(&read_counters(stores)?))
}

/// Checks the end state once every owner has stopped: empty outboxes, and each receiver
/// consumed exactly what its sender sent.
pub fn check_quiescent(stores: &[StoreRef]) -> Result<Vec<StoreViolation>, String> {
    let mut violations = check_acked_within_delivered(stores)?;
    let rows: Vec<Vec<PeerRow>> = stores.iter().map(peer_rows).collect::<Result<_, _>>()?;
    for (s, sender) in stores.iter().enumerate() {
        let reader = Reader::open(&sender.path).map_err(|e| format!("open {}: {e}", sender.id))?;
        for (r, receiver) in stores.iter().enumerate() {
            if s == r {
                continue;
            }
            let out = row(&rows[s], &receiver.id);
            let next_seq = out.map_or(1, |p| p.next_seq.max(1));
            let acked = out.map_or(0, |p| p.acked);
            let outbox = reader
                .outbox(Some(&receiver.id), 16)
                .map_err(|e| format!("read outbox of {}: {e}", sender.id))?;
            if acked + 1 != next_seq || !outbox.is_empty() {
                violations.push(StoreViolation::OutboxNotEmpty {
                    sender: sender.id.clone(),
                    receiver: receiver.id.clone(),
                    next_seq,
                    acked,
                    rows: outbox.len(),
                });
            }
            let delivered = row(&rows[r], &sender.id).map_or(0, |p| p.delivered);
            if delivered != next_seq - 1 {
                violations.push(StoreViolation::DeliveredMismatch {
                    sender: sender.id.clone(),
                    receiver: receiver.id.clone(),
                    sent: next_seq - 1,
                    delivered,
                });
            }
        }
    }
    Ok(violations)
}
