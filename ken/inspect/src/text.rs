//! The readable form of each view, for a terminal: labelled lines and aligned columns.
//!
//! Rendering is pure (document in, `String` out), so it cannot fail and never reads the
//! store. Times are shown in UTC (`2025-01-31T12:00:00.000Z`) with their age; exact numbers
//! are in the `--json` documents.

use std::fmt::Write;

use super::output::*;

/// Columns of `rows` under `headers`, left-aligned, two spaces apart, each line indented by
/// `indent` spaces.
fn columns(indent: usize, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = " ".repeat(indent);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `ms` since the Unix epoch as an ISO 8601 UTC time with milliseconds.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A duration in milliseconds, short: `850 ms`, `3.2 s`, `4.0 min`, `2.5 h`, `3.0 d`.
pub fn duration_ms(ms: u64) -> String {
    let ms_f = ms as f64;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms_f / 1e3),
        60_000..=3_599_999 => format!("{:.1} min", ms_f / 60e3),
        3_600_000..=86_399_999 => format!("{:.1} h", ms_f / 3600e3),
        _ => format!("{:.1} d", ms_f / 86_400e3),
    }
}

/// A signed delay: `in 3.2 s` or `3.2 s ago`.
fn delay_ms(ms: i64) -> String {
    if ms >= 0 {
        format!("in {}", duration_ms(ms.unsigned_abs()))
    } else {
        format!("{} ago", duration_ms(ms.unsigned_abs()))
    }
}

/// Bytes, exact below 10 KiB, else with a binary unit.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..=10_239 => format!("{n} B"),
        10_240..=10_485_759 => format!("{:.1} KiB", f / 1024.0),
        10_485_760..=10_737_418_239 => format!("{:.1} MiB", f / 1_048_576.0),
        _ => format!("{:.1} GiB", f / 1_073_741_824.0),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A blob in one cell: its decoded JSON when there is one, else its size and escaped
/// preview.
fn blob(b: &Blob) -> String {
    if let Some(v) = &b.decoded {
        return v.to_string();
    }
    let more = if b.bytes > super::decode::PREVIEW_BYTES as u64 {
        "..."
    } else {
        ""
    };
    let mut s = format!("{} B \"{}{more}\"", b.bytes, b.text);
    if let Some(e) = &b.decode_error {
        let _ = write!(s, " (does not decode: {e})");
    }
    s
}

fn errors(out: &mut String, errors: &[SectionError]) {
    for e in errors {
        let _ = writeln!(out, "UNREADABLE {}: {}", e.section, e.error);
    }
}

fn peer_rows(peers: &[PeerInfo]) -> Vec<Vec<String>> {
    peers
        .iter()
        .map(|p| {
            vec![
                p.peer.clone(),
                opt(p.incarnation.as_ref()),
                opt(p.next_seq),
                opt(p.acked),
                opt(p.delivered),
                p.outbox_depth.to_string(),
                match (p.outbox_min_seq, p.outbox_max_seq) {
                    (Some(a), Some(b)) => format!("{a}..={b}"),
                    _ => "-".to_string(),
                },
                p.oldest_unacked_age_ms.map_or("-".to_string(), duration_ms),
                p.held.as_ref().map_or("-".to_string(), held),
            ]
        })
        .collect()
}

/// A held pair in one cell: `seq 12: v2 > v1, 3.0s` or `seq 12: panicked, 3.0s`.
fn held(h: &HeldInfo) -> String {
    match (h.version, h.known) {
        (Some(v), Some(k)) => format!("seq {}: v{v} > v{k}, {}", h.seq, duration_ms(h.age_ms)),
        _ => format!("seq {}: {}, {}", h.seq, h.reason, duration_ms(h.age_ms)),
    }
}

const PEER_HEADERS: [&str; 9] = [
    "PEER",
    "INCARNATION",
    "NEXT_SEQ",
    "ACKED",
    "DELIVERED",
    "OUTBOX",
    "SEQS",
    "OLDEST_UNACKED",
    "HELD",
];

/// The summary.
pub fn summary(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store         {}", s.store);
    let _ = writeln!(
        out,
        "process       {}  (incarnation {}, format {}, created {})",
        s.process_id,
        s.incarnation,
        s.format_version,
        utc(s.created_ms)
    );
    match s.epoch {
        Some(0) => {}
        Some(e) => {
            let _ = writeln!(
                out,
                "epoch         {e}  (promoted from a standby's replica {e} time{}; ken/STANDBY.md)",
                if e == 1 { "" } else { "s" }
            );
        }
        None => {
            let _ = writeln!(out, "epoch         unreadable (the ken.role table)");
        }
    }
    match s.role.as_deref() {
        Some("promoted") => {
            let _ = writeln!(out, "role          promoted (from a standby's replica)");
        }
        Some(role) => {
            let _ = writeln!(
                out,
                "role          {role} (epoch 0; a standby's replica is an exact copy and reads the same)"
            );
        }
        None => {}
    }
    if let Some(d) = &s.detached {
        let _ = writeln!(
            out,
            "DETACHED      since {} by {}{}: runs WITHOUT the standby its cluster file declares; \
             `ken standby attach --store STORE` (process stopped) ends it",
            utc(d.at_ms),
            d.by,
            if d.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.reason)
            }
        );
    }
    if let (Some(app), Some(v)) = (&s.app, s.schema_version) {
        let _ = writeln!(out, "app           {app} (schema version {v})");
    } else {
        let _ = writeln!(
            out,
            "app           none recorded (written before application identities)"
        );
    }
    if s.dead_letters > 0 || s.poison_inputs > 0 {
        let _ = writeln!(
            out,
            "held back     {} dead letters, {} poison inputs (see the dead-letters and poison views)",
            s.dead_letters, s.poison_inputs
        );
    }
    if s.held_pairs > 0 {
        let _ = writeln!(
            out,
            "held pairs    {} (their next message waits: see HELD in the peers view)",
            s.held_pairs
        );
    }
    if s.replays_queued > 0 || s.poison_to_dead_letter > 0 {
        let _ = writeln!(
            out,
            "next start    {} replays queued (see the replay view), {} poison messages to dead-letter",
            s.replays_queued, s.poison_to_dead_letter
        );
    }
    if s.tasks_pending > 0 {
        let _ = writeln!(
            out,
            "tasks         {} pending (see the tasks view)",
            s.tasks_pending
        );
    }
    let last = match s.last_commit_age_ms {
        None => "no commit yet".to_string(),
        Some(age) => format!(
            "last commit {} ({} ago)",
            utc(s.last_commit_ms),
            duration_ms(age)
        ),
    };
    let _ = writeln!(
        out,
        "turns         {} in {} commits, {last}",
        s.turns_committed, s.commits
    );
    let _ = writeln!(
        out,
        "root state    {}",
        s.root_bytes.map_or("none".to_string(), bytes)
    );
    let _ = writeln!(
        out,
        "files         {} database, {} WAL",
        bytes(s.file.db_bytes),
        bytes(s.file.wal_bytes)
    );
    let next = match s.next_timer_due_ms {
        Some(due) => format!(
            ", next {}",
            delay_ms(due as i64 - s.now_ms.min(i64::MAX as u64) as i64)
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "timers        {} ({} due{next})",
        s.timers, s.timers_due
    );
    let groups = match (s.groups, s.groups_by_state) {
        (Some(n), Some(c)) if n > 0 => {
            let mut line = format!(
                "{n} ({} creating, {} joined, {} live, {} failed",
                c.creating, c.joined, c.live, c.failed
            );
            if c.failed_unnotified > 0 {
                let _ = write!(line, ", {} not yet notified", c.failed_unnotified);
            }
            if c.undecodable > 0 {
                let _ = write!(line, ", {} UNDECODABLE", c.undecodable);
            }
            line.push(')');
            line
        }
        (n, _) => opt(n),
    };
    let _ = writeln!(out, "fuse groups   {groups}");
    let _ = writeln!(out, "clients       {} cached replies", opt(s.clients));
    let _ = writeln!(
        out,
        "outbox        {} unacknowledged message(s)",
        s.outbox_depth
    );
    let _ = writeln!(out, "tables        {}", s.tables.len());
    if !s.tables.is_empty() {
        let rows: Vec<Vec<String>> = s
            .tables
            .iter()
            .map(|t| vec![t.name.clone(), t.rows.to_string(), t.bytes.to_string()])
            .collect();
        out.push_str(&columns(2, &["TABLE", "ROWS", "BYTES"], &rows));
    }
    let _ = writeln!(out, "peers         {}", s.peers.len());
    if !s.peers.is_empty() {
        out.push_str(&columns(2, &PEER_HEADERS, &peer_rows(&s.peers)));
    }
    errors(&mut out, &s.errors);
    out
}

/// `peers`.
pub fn peers(v: &PeersView) -> String {
    if v.peers.is_empty() {
        return "no peers\n".to_string();
    }
    columns(0, &PEER_HEADERS, &peer_rows(&v.peers))
}

/// `outbox`.
pub fn outbox(v: &OutboxView) -> String {
    let mut out = String::new();
    if v.messages.is_empty() {
        out.push_str("outbox empty\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .messages
            .iter()
            .map(|m| {
                vec![
                    m.peer.clone(),
                    m.seq.to_string(),
                    utc(m.created_ms),
                    duration_ms(m.age_ms),
                    blob(&m.payload),
                ]
            })
            .collect();
        out.push_str(&columns(
            0,
            &["PEER", "SEQ", "CREATED", "AGE", "PAYLOAD"],
            &rows,
        ));
    }
    if v.truncated {
        let _ = writeln!(out, "... more than {} messages (--limit)", v.limit);
    }
    out
}

/// `timers`.
pub fn timers(v: &TimersView) -> String {
    if v.timers.is_empty() {
        return "no timers\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .timers
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                utc(t.due_ms),
                delay_ms(t.due_in_ms),
                blob(&t.payload),
            ]
        })
        .collect();
    columns(0, &["TIMER", "DUE", "WHEN", "PAYLOAD"], &rows)
}

/// `dead-letters`.
pub fn dead_letters(v: &DeadLettersView) -> String {
    if v.dead_letters.is_empty() {
        return "no dead letters\n".to_string();
    }
    letters(&v.dead_letters)
}

/// `replay`.
pub fn replay(v: &ReplayView) -> String {
    if v.replay.is_empty() {
        return "no replays queued\n".to_string();
    }
    letters(&v.replay)
}

/// A table of dead letters.
fn letters(letters: &[DeadLetterInfo]) -> String {
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.peer.clone(),
                l.seq.to_string(),
                l.version.to_string(),
                utc(l.at_ms),
                l.error.clone(),
                blob(&l.message),
            ]
        })
        .collect();
    columns(
        0,
        &["PEER", "SEQ", "VERSION", "AT", "ERROR", "MESSAGE"],
        &rows,
    )
}

/// `poison`.
pub fn poison(v: &PoisonView) -> String {
    if v.poison.is_empty() {
        return "no poison inputs\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .poison
        .iter()
        .map(|p| {
            vec![
                p.kind.clone(),
                p.source.clone(),
                p.seq.to_string(),
                utc(p.at_ms),
                p.message.clone(),
            ]
        })
        .collect();
    columns(0, &["KIND", "SOURCE", "SEQ", "AT", "PANIC"], &rows)
}

/// `tasks`.
pub fn tasks(v: &TasksView) -> String {
    if v.tasks.is_empty() {
        return "no pending tasks\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.payload_bytes.to_string(),
                utc(t.created_ms),
                t.failures.to_string(),
                match &t.last_error {
                    Some(e) => format!("{} at {}", e, utc(t.last_error_ms)),
                    None => "-".to_string(),
                },
            ]
        })
        .collect();
    columns(
        0,
        &["ID", "NAME", "PAYLOAD", "STARTED", "FAILURES", "LAST ERROR"],
        &rows,
    )
}

/// `tables`.
pub fn tables(v: &TablesView) -> String {
    if v.tables.is_empty() {
        return "no tables\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .tables
        .iter()
        .map(|t| vec![t.name.clone(), t.rows.to_string(), t.bytes.to_string()])
        .collect();
    columns(0, &["TABLE", "ROWS", "BYTES"], &rows)
}

fn entry_rows(entries: &[Entry]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let key = match &e.key_decoded {
                Some(k) => k.to_string(),
                None => e.key.clone(),
            };
            let value = match (&e.value, &e.error) {
                (Some(v), _) => blob(v),
                (None, Some(err)) => format!("CORRUPT: {err}"),
                (None, None) => "-".to_string(),
            };
            vec![key, value]
        })
        .collect()
}

/// `table NAME`.
pub fn table(v: &TableView) -> String {
    let mut out = String::new();
    if v.entries.is_empty() {
        let _ = writeln!(out, "no rows in table `{}` with this prefix", v.table);
    } else {
        out.push_str(&columns(0, &["KEY", "VALUE"], &entry_rows(&v.entries)));
    }
    if v.truncated {
        let _ = writeln!(out, "... more than {} rows (--limit)", v.limit);
    }
    out
}

/// `turns`.
pub fn turns(v: &TurnsView) -> String {
    if v.turns.is_empty() {
        return "no turns logged\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .turns
        .iter()
        .map(|t| {
            vec![
                t.turn.to_string(),
                utc(t.at_ms),
                t.input_kind.clone(),
                t.input_source.clone(),
                if t.input_seq == 0 {
                    "-".to_string()
                } else {
                    t.input_seq.to_string()
                },
                t.messages_out.to_string(),
                t.outputs.to_string(),
                t.bytes_written.to_string(),
                t.note.clone(),
            ]
        })
        .collect();
    columns(
        0,
        &[
            "TURN", "AT", "INPUT", "SOURCE", "SEQ", "SENT", "OUTPUTS", "BYTES", "NOTE",
        ],
        &rows,
    )
}

/// `groups`.
pub fn groups(v: &GroupsView) -> String {
    if v.groups.is_empty() {
        return "no FUSE groups\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .groups
        .iter()
        .map(|g| {
            let members = match (&g.members, &g.error) {
                (Some(m), _) => m.join(","),
                (None, Some(e)) => format!("CORRUPT: {e}; record {}", blob(&g.record)),
                (None, None) => "-".to_string(),
            };
            vec![
                g.group.clone(),
                opt(g.state.as_ref()),
                g.notified
                    .map_or("-", |n| if n { "yes" } else { "no" })
                    .to_string(),
                opt(g.creator.as_ref()),
                g.created_ms.map_or("-".to_string(), utc),
                g.created_age_ms.map_or("-".to_string(), duration_ms),
                members,
            ]
        })
        .collect();
    columns(
        0,
        &[
            "GROUP", "STATE", "NOTIFIED", "CREATOR", "CREATED", "AGE", "MEMBERS",
        ],
        &rows,
    )
}

/// `clients`.
pub fn clients(v: &ClientsView) -> String {
    if v.clients.is_empty() {
        return "no cached client replies\n".to_string();
    }
    let rows: Vec<Vec<String>> = v
        .clients
        .iter()
        .map(|c| {
            vec![
                c.client.clone(),
                c.request_no.to_string(),
                utc(c.updated_ms),
                blob(&c.reply),
            ]
        })
        .collect();
    columns(0, &["CLIENT", "REQUEST", "UPDATED", "REPLY"], &rows)
}

/// `state`.
pub fn state(v: &StateView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "root  {}",
        v.root.as_ref().map_or("none".to_string(), blob)
    );
    for t in &v.tables {
        let _ = writeln!(out, "\ntable {} ({} rows, {} B)", t.name, t.rows, t.bytes);
        out.push_str(&columns(2, &["KEY", "VALUE"], &entry_rows(&t.entries)));
        if t.truncated {
            let _ = writeln!(
                out,
                "  ... {} more (--limit)",
                t.rows.saturating_sub(t.entries.len() as u64)
            );
        }
    }
    errors(&mut out, &v.errors);
    out
}

/// `verify`.
pub fn verify(v: &VerifyView) -> String {
    let mut out = String::new();
    let w = &v.wal;
    if w.exists {
        let _ = writeln!(
            out,
            "wal: {} ({}), header {}{}, {} frames SQLite reads, {} commits, last commit at \
             frame {}, {} frames past it{}",
            bytes(w.bytes),
            w.bytes,
            w.header,
            w.generation
                .map_or(String::new(), |g| format!(", generation {g}")),
            w.frames_valid,
            w.commits,
            w.last_commit_frame,
            w.frames_past_commit,
            if w.damage.is_none() && w.frames_past_commit > 0 {
                " (a torn or unfinished last transaction: normal after a crash)"
            } else {
                ""
            },
        );
    } else {
        out.push_str("wal: none (checkpointed)\n");
    }
    match &v.witness {
        Some(wit) => {
            let _ = writeln!(
                out,
                "witness: lock file says incarnation {} made at least {} commits durable; \
                 the store holds {}",
                wit.incarnation, wit.commits, v.commits
            );
        }
        None => {
            let _ = writeln!(out, "witness: none; the store holds {} commits", v.commits);
        }
    }
    for p in &v.problems {
        let key = if p.key.is_empty() { "-" } else { &p.key };
        let _ = writeln!(out, "PROBLEM {} {}: {}", p.table, key, p.what);
    }
    if v.clean {
        out.push_str("clean: every record checks out\n");
    } else {
        let _ = writeln!(out, "{} problem(s)", v.problems.len());
    }
    out
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.1}"))
}

/// One refresh of `watch`.
pub fn watch(t: &WatchTick) -> String {
    let mut out = format!(
        "refresh {} at {}: {} turns/s, {} commits/s, outbox {}{} msgs/s\n\n",
        t.refresh,
        utc(t.summary.now_ms),
        rate(t.turns_per_sec),
        rate(t.commits_per_sec),
        if t.outbox_growth_per_sec.is_some_and(|g| g >= 0.0) {
            "+"
        } else {
            ""
        },
        rate(t.outbox_growth_per_sec),
    );
    out.push_str(&summary(&t.summary));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn columns_align() {
        let s = columns(
            0,
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(s, "A    BB\nxyz  1\nq    22\n");
    }

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!(duration_ms(999), "999 ms");
        assert_eq!(duration_ms(3_200), "3.2 s");
        assert_eq!(bytes(4096), "4096 B");
        assert_eq!(bytes(309_032), "301.8 KiB");
    }
}
