//! The batch journal (format 4): a small commit is one `journal` row holding its whole
//! batch, folded into the tables later, many batches at once (see `FORMAT.md`, "The batch
//! journal").
//!
//! Invariants:
//! - A journal row's `seq` is the store's commit count after the commit it holds; the rows
//!   present are contiguous and newer than the tables' `counters` (checked by [`load`]).
//! - A record is the record envelope (identity `journal` / `seq`) around the bincode encoding
//!   of [`JournalRecord`]; a record that fails its envelope, does not decode, names another
//!   `seq` or holds a batch that breaks [`crate::Batch::check`] is [`Corrupted`].
//! - [`Overlay`] is what the journal changes over the tables, built in batch order with the
//!   same rules as the owner's `write`, so that tables + overlay = the state a direct commit
//!   of every batch would have left.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::Connection;

use crate::codec::{self, Record};
use crate::error::ReadError;
use crate::schema;
use crate::{
    Batch, ClientChange, ClientRow, Corrupted, GroupChange, GroupRow, OutboxRow, PeerRow,
    Recovered, TimerChange, TimerRow, TurnLogEntry,
};

/// One journal row's body: the batch and the counters it brought the store to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct JournalRecord {
    /// `turns_committed` after this commit.
    pub turns_committed: u64,
    /// `commits` after this commit (equal to the row's `seq`).
    pub commits: u64,
    /// The batch, as committed (its `now_ms` is the commit's `last_commit_ms`).
    pub batch: Batch,
}

/// [`JournalRecord`] borrowing its batch: encodes to the same bytes.
#[derive(serde::Serialize)]
struct JournalRecordRef<'a> {
    turns_committed: u64,
    commits: u64,
    batch: &'a Batch,
}

/// The sealed record of a journal row `seq` (= `commits`).
pub(crate) fn seal(turns_committed: u64, commits: u64, batch: &Batch) -> Vec<u8> {
    let body = codec::encode(&JournalRecordRef {
        turns_committed,
        commits,
        batch,
    });
    codec::seal_record(&Record::journal(commits), &body)
}

/// Checks and decodes one journal row.
pub(crate) fn decode(seq: i64, record: &[u8]) -> Result<JournalRecord, Corrupted> {
    let key = seq.to_string();
    let seq = schema::u64_from_sql(seq, "journal", &key, "seq")?;
    let corrupted = |detail: String| Corrupted {
        table: "journal".to_string(),
        key: key.clone(),
        detail,
    };
    let body = codec::unseal_record(&Record::journal(seq), "journal", &key, record)?;
    let rec: JournalRecord = codec::decode(body).map_err(|e| corrupted(e.to_string()))?;
    if rec.commits != seq {
        return Err(corrupted(format!(
            "the record holds commit {} in row {seq}",
            rec.commits
        )));
    }
    rec.batch
        .check()
        .map_err(|p| corrupted(format!("the batch breaks a precondition: {p}")))?;
    Ok(rec)
}

/// Every journal row, oldest first, checked: each decodes ([`decode`]), the sequence numbers
/// are contiguous and above `table_commits` (the `counters` of the tables), and
/// `turns_committed` never decreases. One query (run it inside the caller's transaction to
/// read it with the tables as one snapshot).
pub(crate) fn load(
    conn: &Connection,
    table_commits: u64,
    table_turns: u64,
) -> Result<Vec<JournalRecord>, ReadError> {
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = conn.prepare_cached("SELECT seq, record FROM journal ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    check_sequence(rows, table_commits, table_turns)
}

/// The journal rows above `after` (the newest row a reader already applied, with its
/// `turns_committed`), checked as [`load`] checks them: contiguous from `after` + 1. One
/// query (run it inside the caller's transaction).
pub(crate) fn load_after(
    conn: &Connection,
    after: u64,
    after_turns: u64,
) -> Result<Vec<JournalRecord>, ReadError> {
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt =
            conn.prepare_cached("SELECT seq, record FROM journal WHERE seq > ?1 ORDER BY seq")?;
        let rows = stmt.query_map([schema::sql_u64(after, "journal seq")], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    check_sequence(rows, after, after_turns)
}

/// Decodes `rows` (seq order) and checks they follow commit `commits` (turns `turns`).
fn check_sequence(
    rows: Vec<(i64, Vec<u8>)>,
    commits: u64,
    turns: u64,
) -> Result<Vec<JournalRecord>, ReadError> {
    let mut out: Vec<JournalRecord> = Vec::with_capacity(rows.len());
    let (mut commits, mut turns) = (commits, turns);
    for (seq, record) in rows {
        let rec = decode(seq, &record)?;
        if rec.commits != commits + 1 || rec.turns_committed < turns {
            return Err(Corrupted {
                table: "journal".to_string(),
                key: seq.to_string(),
                detail: format!(
                    "commit {} (turns {}) does not follow commit {commits} (turns {turns})",
                    rec.commits, rec.turns_committed
                ),
            }
            .into());
        }
        (commits, turns) = (rec.commits, rec.turns_committed);
        out.push(rec);
    }
    Ok(out)
}

/// What the journal changes over the tables: for each kind of row, the net effect of every
/// journaled batch applied in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overlay {
    /// (turns_committed, commits, last_commit_ms) of the newest journal row.
    pub counters: Option<(u64, u64, u64)>,
    /// The newest root a journaled batch set.
    pub root: Option<Vec<u8>>,
    /// Table writes: `None` deleted.
    pub kv: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// Journaled outbox rows still present.
    pub outbox: BTreeMap<(String, u64), OutboxRow>,
    /// Per peer: the table's outbox rows up to this seq are acknowledged (deleted).
    pub outbox_acked: HashMap<String, u64>,
    /// Peers whose table outbox rows were all withdrawn (`outbox_forget`).
    pub outbox_forgotten: HashSet<String>,
    pub peers: BTreeMap<String, PeerRow>,
    /// Timers: `None` cancelled.
    pub timers: BTreeMap<String, Option<TimerRow>>,
    /// Clients: `None` evicted.
    pub clients: BTreeMap<[u8; 16], Option<ClientRow>>,
    /// Groups: `None` deleted.
    pub groups: BTreeMap<[u8; 16], Option<GroupRow>>,
    /// Every journaled turn-log entry, oldest first (all newer than the table's).
    pub turn_log: Vec<TurnLogEntry>,
}

impl Overlay {
    /// Applies `records` in order, as the owner's `write` would.
    pub(crate) fn build(records: &[JournalRecord]) -> Overlay {
        let mut o = Overlay::default();
        o.extend(records);
        o
    }

    /// Applies `records`, the journal rows that follow the ones applied so far, in order.
    pub(crate) fn extend(&mut self, records: &[JournalRecord]) {
        let o = self;
        for rec in records {
            let b = &rec.batch;
            o.counters = Some((rec.turns_committed, rec.commits, b.now_ms));
            if let Some(root) = &b.root {
                o.root = Some(root.clone());
            }
            for w in &b.table_writes {
                o.kv.insert((w.table.clone(), w.key.clone()), w.value.clone());
            }
            for m in &b.outbox_appends {
                o.outbox.insert((m.peer.clone(), m.seq), m.clone());
            }
            for a in &b.outbox_acks {
                o.outbox
                    .retain(|(peer, seq), _| !(*peer == a.peer && *seq <= a.up_to));
                let acked = o.outbox_acked.entry(a.peer.clone()).or_insert(0);
                *acked = (*acked).max(a.up_to);
            }
            for p in &b.outbox_forget {
                o.outbox.retain(|(peer, _), _| peer != p);
                o.outbox_forgotten.insert(p.clone());
            }
            for p in &b.peers {
                o.peers.insert(p.peer.clone(), p.clone());
            }
            for t in &b.timers {
                match t {
                    TimerChange::Set {
                        name,
                        due_ms,
                        payload,
                    } => o.timers.insert(
                        name.clone(),
                        Some(TimerRow {
                            name: name.clone(),
                            due_ms: *due_ms,
                            payload: payload.clone(),
                        }),
                    ),
                    TimerChange::Cancel { name } => o.timers.insert(name.clone(), None),
                };
            }
            for c in &b.clients {
                match c {
                    ClientChange::Put(row) => o.clients.insert(row.client, Some(row.clone())),
                    ClientChange::Evict { client } => o.clients.insert(*client, None),
                };
            }
            for g in &b.groups {
                match g {
                    GroupChange::Put(row) => o.groups.insert(row.group, Some(row.clone())),
                    GroupChange::Delete { group } => o.groups.insert(*group, None),
                };
            }
            o.turn_log.extend(b.turn_log.iter().cloned());
        }
    }

    /// Brings `r`, recovered from the tables alone, up to the newest journal row: what an
    /// open that folded the journal would recover (clients without their replies, as
    /// recovery keeps them). The counters are not touched.
    pub(crate) fn apply_to(&self, r: &mut Recovered) {
        if let Some(root) = &self.root {
            r.root = Some(root.clone());
        }
        let mut peers: BTreeMap<String, PeerRow> = std::mem::take(&mut r.peers)
            .into_iter()
            .map(|p| (p.peer.clone(), p))
            .collect();
        peers.extend(self.peers.iter().map(|(k, p)| (k.clone(), p.clone())));
        r.peers = peers.into_values().collect();
        let mut outbox: BTreeMap<(String, u64), OutboxRow> = std::mem::take(&mut r.outbox)
            .into_iter()
            .filter(|m| !self.outbox_row_gone(&m.peer, m.seq))
            .map(|m| ((m.peer.clone(), m.seq), m))
            .collect();
        outbox.extend(self.outbox.iter().map(|(k, m)| (k.clone(), m.clone())));
        r.outbox = outbox.into_values().collect();
        r.timers = over(
            std::mem::take(&mut r.timers)
                .into_iter()
                .map(|t| (t.name.clone(), t)),
            &self.timers,
        );
        let clients: BTreeMap<[u8; 16], Option<ClientRow>> = self
            .clients
            .iter()
            .map(|(k, c)| {
                let without_reply = c.as_ref().map(|c| ClientRow {
                    reply: Vec::new(),
                    ..c.clone()
                });
                (*k, without_reply)
            })
            .collect();
        r.clients = over(
            std::mem::take(&mut r.clients)
                .into_iter()
                .map(|c| (c.client, c)),
            &clients,
        );
        r.groups = over(
            std::mem::take(&mut r.groups)
                .into_iter()
                .map(|g| (g.group, g)),
            &self.groups,
        );
    }

    /// Whether the table's outbox row (`peer`, `seq`) is gone in the journal's view.
    pub(crate) fn outbox_row_gone(&self, peer: &str, seq: u64) -> bool {
        self.outbox_forgotten.contains(peer)
            || self.outbox_acked.get(peer).is_some_and(|a| seq <= *a)
    }

    /// Whether the journal touches the outbox at all.
    pub(crate) fn touches_outbox(&self) -> bool {
        !self.outbox.is_empty()
            || !self.outbox_acked.is_empty()
            || !self.outbox_forgotten.is_empty()
    }
}

/// Table rows with the journal's changes over them (`None`: deleted), in key order.
fn over<K: Ord + Clone, V: Clone>(
    table: impl Iterator<Item = (K, V)>,
    journal: &BTreeMap<K, Option<V>>,
) -> Vec<V> {
    let mut all: BTreeMap<K, Option<V>> = table.map(|(k, v)| (k, Some(v))).collect();
    all.extend(journal.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.into_values().flatten().collect()
}

/// Merges rows read from a table in key order (`next`, one at a time) with the journal's:
/// table rows for which `gone` holds are skipped, `extra` (the journal's rows in range, in
/// any order) are added. Returns the first `limit` rows in key order: the table is read only
/// until `limit` of its rows survive, and an extra row beyond the last table row read then
/// is left out (a table row before it may not have been read).
pub(crate) fn merge<K: Ord + Clone, V>(
    mut next: impl FnMut() -> Result<Option<(K, V)>, ReadError>,
    gone: impl Fn(&K) -> bool,
    extra: Vec<(K, V)>,
    limit: usize,
) -> Result<Vec<(K, V)>, ReadError> {
    let mut rows: Vec<(K, V)> = Vec::new();
    while rows.len() < limit {
        match next()? {
            None => break,
            Some((k, _)) if gone(&k) => {}
            Some(row) => rows.push(row),
        }
    }
    // A full page of surviving table rows: the table was not read past its last key.
    let boundary = if rows.len() == limit {
        rows.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    rows.extend(
        extra
            .into_iter()
            .filter(|(k, _)| boundary.as_ref().is_none_or(|b| k <= b)),
    );
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.truncate(limit);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_matches_the_example_in_format_md() {
        let batch = Batch {
            now_ms: 5,
            turns: 1,
            root: Some(b"r".to_vec()),
            ..Batch::default()
        };
        let sealed = seal(1, 1, &batch);
        assert_eq!(
            sealed,
            [
                0x02, 0x01, 0x01, 0x05, 0x01, 0x01, 0x01, 0x72, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x47,
                0x0d, 0x03, 0x9f
            ]
        );
        let rec = decode(1, &sealed).unwrap();
        assert_eq!((rec.turns_committed, rec.commits, rec.batch), (1, 1, batch));
        // The identity covers the row's seq: the same bytes in row 2 are corrupt.
        let c = decode(2, &sealed).unwrap_err();
        assert_eq!((c.table.as_str(), c.key.as_str()), ("journal", "2"), "{c}");
    }
}
