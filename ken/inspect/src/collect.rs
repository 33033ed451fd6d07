//! Reading each view's document from a [`Reader`].
//!
//! Every function here calls [`Reader`] methods only, so every read is one short query in
//! its own read transaction: nothing here can hold the owner's WAL checkpoints back or delay
//! its commits, and scans are bounded ([`ken_store::MAX_SCAN_ROWS`] per query, `--limit` per
//! view).
//!
//! Damage handling: a view whose data is needed as a whole (the outbox, the turn log) fails
//! with the reader's error, which names the corrupt record. Views made of independent parts
//! (the summary, the state) read every part they can and list the others in `errors`.
//! Table scans go around a corrupt row: it is listed with its error and the scan continues
//! after it (`scan_table`).

use ken::engine::fuse::GroupState;
use ken_store::wal::WalHeader;
use ken_store::{codec, GroupRow, OutboxStats, PeerRow, ReadError, Reader, MAX_SCAN_ROWS};

use super::decode::{hex, unhex, AppDecoder};
use super::fuse;
use super::output::*;

/// Rows one table scan query asks for.
const SCAN_PAGE_ROWS: u32 = 1000;

/// The largest `--limit` of a view: one row below a scan's cap, so that asking for one row
/// more tells whether the view is truncated.
pub const VIEW_ROWS_MAX: u32 = MAX_SCAN_ROWS - 1;

/// A part of a view that could not be read, and why.
#[derive(Debug)]
pub struct Damage {
    pub section: String,
    pub error: ReadError,
}

impl Damage {
    fn new(section: &str, error: ReadError) -> Damage {
        Damage {
            section: section.to_string(),
            error,
        }
    }

    fn to_output(&self) -> SectionError {
        SectionError {
            section: self.section.clone(),
            error: self.error.to_string(),
        }
    }
}

/// `"0x"` + 16 hex digits.
pub fn incarnation_hex(incarnation: u64) -> String {
    format!("{incarnation:#018x}")
}

fn age(now_ms: u64, then_ms: u64) -> u64 {
    now_ms.saturating_sub(then_ms)
}

fn signed_delta_ms(later_ms: u64, earlier_ms: u64) -> i64 {
    let d = i128::from(later_ms) - i128::from(earlier_ms);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// The held pairs of a store, by peer: `ken.held` rows whose message is not delivered yet,
/// then poison messages not delivered yet (a pair holds at one message at a time; the lowest
/// undelivered one wins).
fn holds(
    reader: &Reader,
    peers: &[PeerRow],
    now_ms: u64,
) -> Result<Vec<(String, HeldInfo)>, ReadError> {
    let delivered = |peer: &str| peers.iter().find(|p| p.peer == peer).map(|p| p.delivered);
    let mut out: Vec<(String, HeldInfo)> = Vec::new();
    let mut keep = |peer: String, info: HeldInfo| {
        if delivered(&peer).is_some_and(|d| d >= info.seq) {
            return;
        }
        match out.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, old)) if old.seq <= info.seq => {}
            Some((_, old)) => *old = info,
            None => out.push((peer, info)),
        }
    };
    let corrupt = |table: &str, key: &[u8], what: String| {
        ReadError::Corrupted(ken_store::Corrupted {
            table: table.into(),
            key: codec::printable_key(key),
            detail: what,
        })
    };
    for (key, value) in reader.table_scan(ken::living::HELD_TABLE, b"", None, MAX_SCAN_ROWS)? {
        let row: ken::living::HeldPair = codec::decode(&value).map_err(|e| {
            corrupt(
                ken::living::HELD_TABLE,
                &key,
                format!("not a hold record: {e}"),
            )
        })?;
        keep(
            String::from_utf8_lossy(&key).into_owned(),
            HeldInfo {
                seq: row.seq,
                reason: "newer_version".into(),
                version: Some(row.version),
                known: Some(row.known),
                panic: None,
                since_ms: row.since_ms,
                age_ms: age(now_ms, row.since_ms),
            },
        );
    }
    for (key, value) in
        reader.table_scan(ken::living::POISON_TABLE, b"message\0", None, MAX_SCAN_ROWS)?
    {
        let p: ken::living::Poison = codec::decode(&value).map_err(|e| {
            corrupt(
                ken::living::POISON_TABLE,
                &key,
                format!("not a poison record: {e}"),
            )
        })?;
        keep(
            p.source,
            HeldInfo {
                seq: p.seq,
                reason: "panicked".into(),
                version: None,
                known: None,
                panic: Some(p.message),
                since_ms: p.at_ms,
                age_ms: age(now_ms, p.at_ms),
            },
        );
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Merges counters, outbox statistics and holds into one row per peer, ordered by peer.
fn peer_infos(
    now_ms: u64,
    peers: &[PeerRow],
    outbox: &[OutboxStats],
    held: &[(String, HeldInfo)],
) -> Vec<PeerInfo> {
    let mut names: Vec<&str> = peers
        .iter()
        .map(|p| p.peer.as_str())
        .chain(outbox.iter().map(|o| o.peer.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let p = peers.iter().find(|p| p.peer == name);
            let o = outbox.iter().find(|o| o.peer == name);
            PeerInfo {
                peer: name.to_string(),
                incarnation: p.map(|p| incarnation_hex(p.incarnation)),
                next_seq: p.map(|p| p.next_seq),
                acked: p.map(|p| p.acked),
                delivered: p.map(|p| p.delivered),
                outbox_depth: o.map_or(0, |o| o.depth),
                outbox_bytes: o.map_or(0, |o| o.bytes),
                outbox_min_seq: o.map(|o| o.min_seq),
                outbox_max_seq: o.map(|o| o.max_seq),
                oldest_unacked_ms: o.map(|o| o.oldest_created_ms),
                oldest_unacked_age_ms: o.map(|o| age(now_ms, o.oldest_created_ms)),
                held: held.iter().find(|(p, _)| p == name).map(|(_, h)| h.clone()),
            }
        })
        .collect()
}

/// `r`'s value, or `None` with the error recorded as damage to `section`.
fn part<T>(damage: &mut Vec<Damage>, section: &str, r: Result<T, ReadError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            damage.push(Damage::new(section, e));
            None
        }
    }
}

/// The summary. Fails only if `meta` cannot be read; any other part that cannot be read is
/// left empty and listed in `errors` (and returned as [`Damage`]).
pub fn summary(reader: &Reader, now_ms: u64) -> Result<(Summary, Vec<Damage>), ReadError> {
    let meta = reader.meta()?;
    let mut damage = Vec::new();
    let d = &mut damage;
    let root_bytes = part(d, "root", reader.root())
        .flatten()
        .map(|r| r.len() as u64);
    let tables = part(d, "tables", reader.tables()).unwrap_or_default();
    let peers = part(d, "peers", reader.peers()).unwrap_or_default();
    let outbox = part(d, "outbox", reader.outbox_stats()).unwrap_or_default();
    let timers = part(d, "timers", reader.timers()).unwrap_or_default();
    let group_rows = part(d, "groups", reader.groups());
    let groups = group_rows.as_ref().map(|g| g.len() as u64);
    let groups_by_state = group_rows.map(|rows| {
        let mut counts = GroupCounts::default();
        for row in &rows {
            match fuse::decode(row) {
                Ok(rec) => {
                    let n = match rec.state {
                        GroupState::Creating => &mut counts.creating,
                        GroupState::Joined => &mut counts.joined,
                        GroupState::Live => &mut counts.live,
                        GroupState::Failed => &mut counts.failed,
                    };
                    *n += 1;
                    if rec.state == GroupState::Failed && !rec.notified {
                        counts.failed_unnotified += 1;
                    }
                }
                Err(c) => {
                    counts.undecodable += 1;
                    d.push(Damage::new("groups", ReadError::Corrupted(c)));
                }
            }
        }
        counts
    });
    let clients = part(d, "clients", reader.clients()).map(|c| c.len() as u64);
    let file = part(d, "files", reader.file_sizes())
        .map(|f| FileInfo {
            db_bytes: f.db_bytes,
            wal_bytes: f.wal_bytes,
        })
        .unwrap_or(FileInfo {
            db_bytes: 0,
            wal_bytes: 0,
        });
    let held = part(d, "held", holds(reader, &peers, now_ms)).unwrap_or_default();
    let rows_of = |name: &str| tables.iter().find(|t| t.name == name).map_or(0, |t| t.rows);
    let dead_letters = rows_of(ken::living::DEAD_LETTERS_TABLE);
    let poison_inputs = rows_of(ken::living::POISON_TABLE);
    let replays_queued = rows_of(ken::living::REPLAY_TABLE);
    let poison_to_dead_letter = rows_of(ken::living::SKIP_POISON_TABLE);
    let tasks_pending = rows_of(ken::task::TASKS_TABLE);
    let role = part(d, "role", ken::standby::role(reader));
    let summary = Summary {
        store: reader.path().display().to_string(),
        process_id: meta.process_id,
        app: meta.app.as_ref().map(|a| a.name.clone()),
        schema_version: meta.app.as_ref().map(|a| a.schema_version),
        dead_letters,
        poison_inputs,
        replays_queued,
        poison_to_dead_letter,
        tasks_pending,
        incarnation: incarnation_hex(meta.incarnation),
        epoch: role.as_ref().map(|r| r.epoch),
        role: role.as_ref().map(|r| r.name().to_string()),
        detached: role.and_then(|r| r.detached).map(|d| DetachedInfo {
            by: d.by,
            at_ms: d.at_ms,
            reason: d.reason,
        }),
        format_version: meta.format_version,
        created_ms: meta.created_ms,
        turns_committed: meta.turns_committed,
        commits: meta.commits,
        last_commit_ms: meta.last_commit_ms,
        last_commit_age_ms: (meta.commits > 0).then(|| age(now_ms, meta.last_commit_ms)),
        now_ms,
        root_bytes,
        tables: tables.into_iter().map(table_info).collect(),
        held_pairs: held.len() as u64,
        peers: peer_infos(now_ms, &peers, &outbox, &held),
        outbox_depth: outbox.iter().map(|o| o.depth).sum(),
        timers: timers.len() as u64,
        timers_due: timers.iter().filter(|t| t.due_ms <= now_ms).count() as u64,
        next_timer_due_ms: timers.iter().map(|t| t.due_ms).min(),
        groups,
        groups_by_state,
        clients,
        file,
        errors: damage.iter().map(Damage::to_output).collect(),
    };
    Ok((summary, damage))
}

fn table_info(t: ken_store::TableStats) -> TableInfo {
    TableInfo {
        name: t.name,
        rows: t.rows,
        bytes: t.bytes,
    }
}

/// `peers`.
pub fn peers(reader: &Reader, now_ms: u64) -> Result<PeersView, ReadError> {
    let peers = reader.peers()?;
    let outbox = reader.outbox_stats()?;
    let held = holds(reader, &peers, now_ms)?;
    Ok(PeersView {
        now_ms,
        peers: peer_infos(now_ms, &peers, &outbox, &held),
    })
}

/// `outbox`.
pub fn outbox(
    reader: &Reader,
    app: &AppDecoder,
    now_ms: u64,
    peer: Option<&str>,
    limit: u32,
) -> Result<OutboxView, ReadError> {
    let limit = limit.min(VIEW_ROWS_MAX);
    // A store with an application identity envelopes every payload with its schema version.
    let enveloped = reader.meta()?.app.is_some();
    let mut rows = reader.outbox(peer, limit + 1)?;
    let truncated = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(OutboxView {
        peer: peer.map(str::to_string),
        limit,
        truncated,
        now_ms,
        messages: rows
            .into_iter()
            .map(|r| {
                let (version, message) = match ken_store::unwrap_payload(&r.payload) {
                    Some((v, m)) if enveloped => (Some(v), m),
                    _ => (None, &r.payload[..]),
                };
                OutboxMessage {
                    age_ms: age(now_ms, r.created_ms),
                    version,
                    payload: app.message_blob(message),
                    peer: r.peer,
                    seq: r.seq,
                    created_ms: r.created_ms,
                }
            })
            .collect(),
    })
}

/// `timers`.
pub fn timers(reader: &Reader, now_ms: u64) -> Result<TimersView, ReadError> {
    Ok(TimersView {
        now_ms,
        timers: reader
            .timers()?
            .into_iter()
            .map(|t| TimerInfo {
                due_in_ms: signed_delta_ms(t.due_ms, now_ms),
                due: t.due_ms <= now_ms,
                payload: Blob::plain(&t.payload),
                name: t.name,
                due_ms: t.due_ms,
            })
            .collect(),
    })
}

/// `dead-letters`: up to `limit` rows of the runtime's dead-letter table.
pub fn dead_letters(reader: &Reader, limit: u32) -> Result<DeadLettersView, ReadError> {
    Ok(DeadLettersView {
        dead_letters: letters(reader, ken::living::DEAD_LETTERS_TABLE, limit)?,
    })
}

/// `replay`: up to `limit` dead letters an operator queued for replay at the next start.
pub fn replay(reader: &Reader, limit: u32) -> Result<ReplayView, ReadError> {
    Ok(ReplayView {
        replay: letters(reader, ken::living::REPLAY_TABLE, limit)?,
    })
}

/// Up to `limit` rows of `table`, a table of [`ken::living::DeadLetter`] values.
fn letters(reader: &Reader, table: &str, limit: u32) -> Result<Vec<DeadLetterInfo>, ReadError> {
    let mut out = Vec::new();
    for (key, value) in reader.table_scan(table, b"", None, limit.min(MAX_SCAN_ROWS))? {
        let l: ken::living::DeadLetter = codec::decode(&value).map_err(|e| {
            ReadError::Corrupted(ken_store::Corrupted {
                table: table.into(),
                key: codec::printable_key(&key),
                detail: format!("not a dead letter: {e}"),
            })
        })?;
        out.push(DeadLetterInfo {
            message: Blob::plain(&l.bytes),
            peer: l.peer,
            seq: l.seq,
            version: l.version,
            error: l.error,
            at_ms: l.at_ms,
        });
    }
    Ok(out)
}

/// `poison`: up to `limit` rows of the runtime's poison table.
pub fn poison(reader: &Reader, limit: u32) -> Result<PoisonView, ReadError> {
    let mut out = Vec::new();
    for (key, value) in reader.table_scan(
        ken::living::POISON_TABLE,
        b"",
        None,
        limit.min(MAX_SCAN_ROWS),
    )? {
        let p: ken::living::Poison = codec::decode(&value).map_err(|e| {
            ReadError::Corrupted(ken_store::Corrupted {
                table: ken::living::POISON_TABLE.into(),
                key: codec::printable_key(&key),
                detail: format!("not a poison record: {e}"),
            })
        })?;
        out.push(PoisonInfo {
            kind: p.kind,
            source: p.source,
            seq: p.seq,
            message: p.message,
            at_ms: p.at_ms,
        });
    }
    Ok(PoisonView { poison: out })
}

/// `tasks`: up to `limit` pending tasks, in id order.
pub fn tasks(reader: &Reader, limit: u32) -> Result<TasksView, ReadError> {
    let mut out = Vec::new();
    for (key, value) in
        reader.table_scan(ken::task::TASKS_TABLE, b"", None, limit.min(MAX_SCAN_ROWS))?
    {
        let corrupted = |detail: String| {
            ReadError::Corrupted(ken_store::Corrupted {
                table: ken::task::TASKS_TABLE.into(),
                key: codec::printable_key(&key),
                detail,
            })
        };
        let id = ken::TaskId::from_key(&key)
            .ok_or_else(|| corrupted("the key is not a task id (8 bytes)".into()))?;
        let t: ken::task::TaskRecord =
            codec::decode(&value).map_err(|e| corrupted(format!("not a task record: {e}")))?;
        out.push(TaskInfo {
            id: id.to_string(),
            name: t.name,
            payload_bytes: t.payload.len() as u64,
            created_ms: t.created_ms,
            failures: t.failures,
            last_error: t.last_error,
            last_error_ms: t.last_error_ms,
        });
    }
    Ok(TasksView { tasks: out })
}

/// `tables`.
pub fn tables(reader: &Reader) -> Result<TablesView, ReadError> {
    Ok(TablesView {
        tables: reader.tables()?.into_iter().map(table_info).collect(),
    })
}

/// `turns`.
pub fn turns(reader: &Reader, last: u32) -> Result<TurnsView, ReadError> {
    Ok(TurnsView {
        turns: reader
            .turn_log(last)?
            .into_iter()
            .map(|e| TurnInfo {
                turn: e.turn,
                at_ms: e.at_ms,
                input_kind: e.input_kind,
                input_source: e.input_source,
                input_seq: e.input_seq,
                messages_out: e.messages_out,
                outputs: e.outputs,
                bytes_written: e.bytes_written,
                note: e.note,
            })
            .collect(),
    })
}

/// One group row for the `groups` view: decoded, or listed with its error (returned as
/// the second value, to be reported as damage).
pub fn group_info(row: &GroupRow, now_ms: u64) -> (GroupInfo, Option<ken_store::Corrupted>) {
    let mut info = GroupInfo {
        group: fuse::key(&row.group),
        display: fuse::display(&row.group),
        state: None,
        creator: None,
        members: None,
        notified: None,
        created_ms: None,
        created_age_ms: None,
        record: Blob::plain(&row.record),
        error: None,
    };
    match fuse::decode(row) {
        Ok(rec) => {
            info.state = Some(fuse::state_name(rec.state).to_string());
            info.created_age_ms = Some(age(now_ms, rec.created_ms));
            info.created_ms = Some(rec.created_ms);
            info.notified = Some(rec.notified);
            info.creator = Some(rec.creator);
            info.members = Some(rec.members);
            (info, None)
        }
        Err(c) => {
            info.error = Some(c.to_string());
            (info, Some(c))
        }
    }
}

/// `groups`: every group record decoded. Fails only if the records cannot be read (a bad
/// envelope names its group); a record that reads but does not decode is listed with its
/// `error` and returned as [`Damage`].
pub fn groups(reader: &Reader, now_ms: u64) -> Result<(GroupsView, Vec<Damage>), ReadError> {
    let mut damage = Vec::new();
    let groups = reader
        .groups()?
        .iter()
        .map(|row| {
            let (info, bad) = group_info(row, now_ms);
            if let Some(c) = bad {
                damage.push(Damage::new("groups", ReadError::Corrupted(c)));
            }
            info
        })
        .collect();
    Ok((GroupsView { now_ms, groups }, damage))
}

/// `clients`.
pub fn clients(reader: &Reader, app: &AppDecoder, now_ms: u64) -> Result<ClientsView, ReadError> {
    Ok(ClientsView {
        now_ms,
        clients: reader
            .clients()?
            .into_iter()
            .map(|c| ClientInfo {
                client: format!("0x{}", hex(&c.client)),
                request_no: c.request_no,
                updated_ms: c.updated_ms,
                reply: app.reply_blob(&c.reply),
            })
            .collect(),
    })
}

/// `verify`: the reader's checks (every envelope, the counters and the outbox structure,
/// SQLite's own), then every group record's body decoded and checked ([`fuse::problems`]).
///
/// The group records are read in one query that fails on a bad envelope; the reader's walk
/// has named that record already, so then the bodies are not checked (fix or remove the
/// named record and verify again).
pub fn verify(reader: &Reader) -> Result<VerifyView, ReadError> {
    let all = reader.verify_all()?;
    let mut problems: Vec<ProblemInfo> = all
        .problems
        .into_iter()
        .map(|p| ProblemInfo {
            table: p.table,
            key: p.key,
            what: p.what,
        })
        .collect();
    let rows = match reader.groups() {
        Ok(rows) => rows,
        Err(ReadError::Corrupted(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    if !rows.is_empty() {
        let me = reader.meta()?.process_id;
        for row in &rows {
            let whats = match fuse::decode(row) {
                Ok(rec) => fuse::problems(&me, &rec),
                Err(c) => vec![c.detail],
            };
            problems.extend(whats.into_iter().map(|what| ProblemInfo {
                table: fuse::TABLE.to_string(),
                key: fuse::key(&row.group),
                what,
            }));
        }
    }
    let w = &all.wal;
    let (header, generation) = match &w.header {
        WalHeader::Empty => ("empty".to_string(), None),
        WalHeader::Valid { checkpoint_seq, .. } => ("valid".to_string(), Some(*checkpoint_seq)),
        WalHeader::Invalid(why) => (format!("invalid: {why}"), None),
    };
    Ok(VerifyView {
        clean: problems.is_empty(),
        problems,
        wal: WalInfo {
            exists: w.exists,
            bytes: w.bytes,
            header,
            generation,
            frames_valid: w.frames_valid,
            commits: w.commits,
            last_commit_frame: w.last_commit_frame,
            frames_past_commit: w.frames_past_commit,
            damage: w.damage.as_ref().map(|d| WalDamageInfo {
                frame: d.frame,
                offset: d.offset,
                proof_frame: d.proof_frame,
                commits_lost: d.commits_lost,
                detail: d.detail.clone(),
            }),
        },
        witness: all.witness.map(|r| WitnessInfo {
            pid: r.pid,
            incarnation: format!("0x{:016x}", r.incarnation),
            commits: r.commits,
        }),
        commits: all.commits,
    })
}

/// `table NAME`: up to `limit` rows whose key starts with `prefix`.
pub fn table(
    reader: &Reader,
    app: &AppDecoder,
    name: &str,
    prefix: &[u8],
    limit: u32,
) -> Result<(TableView, Vec<Damage>), ReadError> {
    let limit = limit.min(VIEW_ROWS_MAX);
    let scan = scan_table(reader, app, name, prefix, limit)?;
    let view = TableView {
        table: name.to_string(),
        prefix_hex: hex(prefix),
        limit,
        truncated: scan.truncated,
        entries: scan.entries,
    };
    Ok((view, scan.damage))
}

/// `state`: the root and the first `limit` rows of every table.
pub fn state(
    reader: &Reader,
    app: &AppDecoder,
    limit: u32,
) -> Result<(StateView, Vec<Damage>), ReadError> {
    let limit = limit.min(VIEW_ROWS_MAX);
    let mut damage = Vec::new();
    let root = match reader.root() {
        Ok(root) => root.map(|r| app.root_blob(&r)),
        Err(e) => {
            damage.push(Damage::new("root", e));
            None
        }
    };
    let stats = reader.tables()?;
    let mut tables = Vec::with_capacity(stats.len());
    for t in stats {
        match scan_table(reader, app, &t.name, &[], limit) {
            Ok(scan) => {
                damage.extend(scan.damage);
                tables.push(TableState {
                    name: t.name,
                    rows: t.rows,
                    bytes: t.bytes,
                    truncated: scan.truncated,
                    entries: scan.entries,
                });
            }
            Err(e) => damage.push(Damage::new(&format!("table:{}", t.name), e)),
        }
    }
    let view = StateView {
        root,
        limit,
        tables,
        errors: damage.iter().map(Damage::to_output).collect(),
    };
    Ok((view, damage))
}

/// The rows a scan found, and the corrupt ones it went around.
struct Scan {
    entries: Vec<Entry>,
    truncated: bool,
    damage: Vec<Damage>,
}

fn entry(app: &AppDecoder, table: &str, key: &[u8], value: Result<&[u8], String>) -> Entry {
    let (value, error) = match value {
        Ok(v) => (Some(app.value_blob(table, v)), None),
        Err(e) => (None, Some(e)),
    };
    Entry {
        key: codec::printable_key(key),
        key_hex: hex(key),
        key_decoded: app.key_json(table, key),
        value,
        error,
    }
}

/// Up to `limit` rows of `table` under `prefix`, in key order, one query per page, going
/// around corrupt rows.
///
/// A page with a corrupt row fails as a whole, so after such a failure the scan reads one
/// row per query until it meets the corrupt row again. Its key comes back only in printable
/// form (text, or `0x` + hex, which a text key can look like too), so each reading is
/// confirmed with [`Reader::table_get`] (which fails on exactly that row) before the scan
/// steps over it. A corrupt row whose key cannot be confirmed ends the scan (reported as
/// damage and as truncated).
fn scan_table(
    reader: &Reader,
    app: &AppDecoder,
    table: &str,
    prefix: &[u8],
    limit: u32,
) -> Result<Scan, ReadError> {
    let mut scan = Scan {
        entries: Vec::new(),
        truncated: false,
        damage: Vec::new(),
    };
    let mut after: Option<Vec<u8>> = None;
    // True after a page failed: read one row at a time until the corrupt row.
    let mut single = false;
    loop {
        let wanted = limit as usize - scan.entries.len();
        // One row more than wanted tells whether the view is truncated.
        let ask = if single {
            1
        } else {
            (wanted + 1).min(SCAN_PAGE_ROWS as usize) as u32
        };
        match reader.table_scan(table, prefix, after.as_deref(), ask) {
            Ok(rows) => {
                let done = rows.len() < ask as usize;
                for (k, v) in rows {
                    if scan.entries.len() == limit as usize {
                        scan.truncated = true;
                        return Ok(scan);
                    }
                    scan.entries.push(entry(app, table, &k, Ok(&v)));
                    after = Some(k);
                }
                if done {
                    return Ok(scan);
                }
            }
            Err(ReadError::Corrupted(c)) if single => {
                if scan.entries.len() == limit as usize {
                    // The row past the limit exists (corrupt): there is more.
                    scan.truncated = true;
                    return Ok(scan);
                }
                let Some(key) = confirm_corrupt_key(reader, table, prefix, after.as_deref(), &c)
                else {
                    scan.damage.push(Damage::new(
                        &format!("table:{table}"),
                        ReadError::Corrupted(c),
                    ));
                    scan.truncated = true;
                    return Ok(scan);
                };
                scan.entries
                    .push(entry(app, table, &key, Err(c.to_string())));
                scan.damage.push(Damage::new(
                    &format!("table:{table}"),
                    ReadError::Corrupted(c),
                ));
                after = Some(key);
                single = false;
            }
            Err(ReadError::Corrupted(_)) => single = true,
            Err(e) => return Err(e),
        }
    }
}

/// The raw key of the corrupt row `c` that follows `after` under `prefix`, confirmed by
/// reading it back, or `None`.
fn confirm_corrupt_key(
    reader: &Reader,
    table: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
    c: &ken_store::Corrupted,
) -> Option<Vec<u8>> {
    let mut candidates = Vec::with_capacity(2);
    if let Some(bytes) = c.key.strip_prefix("0x").and_then(unhex) {
        candidates.push(bytes);
    }
    candidates.push(c.key.as_bytes().to_vec());
    candidates.into_iter().find(|k| {
        k.starts_with(prefix)
            && after.is_none_or(|a| k.as_slice() > a)
            && matches!(
                reader.table_get(table, k),
                Err(ReadError::Corrupted(ref again)) if again.key == c.key
            )
    })
}
