//! The runtime's promises, checked from the stores after quiescence (read-only handles).
//!
//! For every ordered pair (A, B) of members, with A's `peers` row for B (`next_seq`, `acked`)
//! and B's row for A (`delivered`, `incarnation`):
//! - exactly-once and FIFO: B consumed exactly the messages A committed, in order:
//!   `B.delivered == A.next_seq - 1` (delivery is by sequence number, `delivered + 1` only,
//!   so equal counts mean every sequence number consumed once, in order; the app checks
//!   catch a message whose content was consumed twice or skipped);
//! - output validity: `B.delivered > A.next_seq - 1` would mean B consumed a frame from a
//!   turn A never committed (released before commit, then rolled back);
//! - acknowledgements: `A.acked == A.next_seq - 1` and A's outbox to B is empty;
//! - incarnations: B knows A's current incarnation (it never took frames from a wiped store);
//! - every store passes `Reader::verify` (CRC of every record, SQLite integrity).
//!
//! The first two kinds are safety properties, true of any committed state, checked after
//! every run; the others hold only after quiescence and are checked only then
//! (`quiesced`), so a run that fails to quiesce still names the message that broke
//! exactly-once or output validity, if one did. Safety also includes `acked <= delivered`:
//! no sender saw an acknowledgement of a message its receiver never consumed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ken_store::{PeerRow, Reader};

/// Totals read from the stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of `meta.turns_committed`.
    pub turns: u64,
    /// Messages committed by senders: sum over pairs of `next_seq - 1`.
    pub messages: u64,
    /// Sum of outbox depths.
    pub outbox: u64,
    /// Stores with a pending task (`ken.tasks` not empty: started, result not consumed).
    pub tasks_pending: u64,
}

/// Reads the totals of every store.
pub fn totals(stores: &[PathBuf]) -> Result<Totals, String> {
    let mut t = Totals::default();
    for s in stores {
        let r = Reader::open(s).map_err(|e| format!("open {}: {e}", s.display()))?;
        t.turns += r.meta().map_err(|e| e.to_string())?.turns_committed;
        for p in r.peers().map_err(|e| e.to_string())? {
            t.messages += p.next_seq.saturating_sub(1);
        }
        for o in r.outbox_stats().map_err(|e| e.to_string())? {
            t.outbox += o.depth;
        }
        let task = r
            .table_scan(ken::task::TASKS_TABLE, b"", None, 1)
            .map_err(|e| e.to_string())?;
        t.tasks_pending += u64::from(!task.is_empty());
    }
    Ok(t)
}

/// Checks every pair (module docs). One line per violation.
pub fn check_pairs(ids: &[String], stores: &[PathBuf], quiesced: bool) -> Vec<String> {
    check_pairs_except(ids, stores, &vec![false; ids.len()], quiesced)
}

/// [`check_pairs`] where members `gone[i]` were killed for good (lock runs): pairs with
/// them get the safety checks only, since their messages are never acknowledged.
pub fn check_pairs_except(
    ids: &[String],
    stores: &[PathBuf],
    gone: &[bool],
    quiesced: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut rows: Vec<BTreeMap<String, PeerRow>> = Vec::new();
    let mut incarnations = Vec::new();
    let mut outboxes: Vec<BTreeMap<String, u64>> = Vec::new();
    for (id, s) in ids.iter().zip(stores) {
        let r = match Reader::open(s) {
            Ok(r) => r,
            Err(e) => {
                out.push(format!("{id}: cannot open store {}: {e}", s.display()));
                return out;
            }
        };
        let read = (|| -> Result<_, ken_store::ReadError> {
            let meta = r.meta()?;
            let peers = r.peers()?;
            let outbox = r.outbox_stats()?;
            let problems = r.verify()?;
            Ok((meta, peers, outbox, problems))
        })();
        match read {
            Err(e) => {
                out.push(format!("{id}: cannot read store: {e}"));
                return out;
            }
            Ok((meta, peers, outbox, problems)) => {
                if meta.process_id != *id {
                    out.push(format!("{id}: store belongs to {}", meta.process_id));
                }
                for p in problems.iter().take(10) {
                    out.push(format!(
                        "{id}: store verify: {} {}: {}",
                        p.table, p.key, p.what
                    ));
                }
                incarnations.push(meta.incarnation);
                rows.push(peers.into_iter().map(|p| (p.peer.clone(), p)).collect());
                outboxes.push(outbox.into_iter().map(|o| (o.peer, o.depth)).collect());
            }
        }
    }
    for (a, a_id) in ids.iter().enumerate() {
        for (b, b_id) in ids.iter().enumerate() {
            if a == b {
                continue;
            }
            let quiesced = quiesced && !gone[a] && !gone[b];
            let sent = rows[a]
                .get(b_id)
                .map_or(0, |p| p.next_seq.saturating_sub(1));
            let acked = rows[a].get(b_id).map_or(0, |p| p.acked);
            let back = rows[b].get(a_id);
            let delivered = back.map_or(0, |p| p.delivered);
            if delivered > sent {
                out.push(format!(
                    "{b_id} consumed {delivered} messages from {a_id}, but {a_id} committed only \
                     {sent} (output validity violated: frames of rolled-back turns were released)"
                ));
            } else if delivered < sent && quiesced {
                out.push(format!(
                    "{b_id} consumed {delivered} messages from {a_id}, but {a_id} committed {sent} \
                     (not delivered after quiescence)"
                ));
            }
            if acked > delivered {
                out.push(format!(
                    "{a_id} holds an acknowledgement of {acked} messages to {b_id}, but {b_id} \
                     consumed only {delivered} (a message was acknowledged and lost)"
                ));
            } else if acked != sent && quiesced {
                out.push(format!(
                    "{a_id}'s acked for {b_id} is {acked}, expected {sent} (next_seq - 1)"
                ));
            }
            let depth = outboxes[a].get(b_id).copied().unwrap_or(0);
            if depth != 0 && quiesced {
                out.push(format!(
                    "{a_id}'s outbox to {b_id} holds {depth} messages after quiescence"
                ));
            }
            if let Some(p) = back {
                if p.delivered > 0 && p.incarnation != incarnations[a] {
                    out.push(format!(
                        "{b_id} knows {a_id} as incarnation {:#x}, but {a_id}'s store is {:#x}",
                        p.incarnation, incarnations[a]
                    ));
                }
            }
        }
    }
    out
}
