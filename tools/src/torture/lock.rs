//! `--app lock`: the lock service (`ken-lock`) under torture, and the checks of what FUSE
//! promises (DESIGN.md, "FUSE groups"): a permanent failure is heard within a bound, a
//! crash-restart, pause or cut shorter than half of `T_fail` is never heard at all, and each
//! member hears each failure exactly once.
//!
//! The cluster: the server `s`; a *sticky* holder `z` that holds lock `sticky` until its
//! group fails (`--hold-ms 0`, rounds without end), so any failure of its group is either
//! excused by an outage or a false positive; and `--holders` holders `h1..` that contend for
//! `--locks` locks `L0..`, hold each grant `--hold-ms` and release it by signalling the group,
//! `--rounds` times, then exit 0 with a `done` report.
//!
//! The harness (in `mod.rs`) adds to the usual faults: permanent SIGKILLs of holders (never
//! restarted), long partitions between `s` and `z` (longer than 1.5 `T_fail`, made while `z`
//! holds, healed later), and keeps every kill's downtime, pause and short partition below
//! half of `T_fail` so that FUSE must mask them. It records every outage in wall-clock
//! milliseconds (the clock the runtime stamps `at_ms` with) and hands them here with every
//! life's stdout lines.
//!
//! What is read: the emitted lines of every life (server: `granted`, `freed`, `queued`,
//! `refused`; holders: `holding`, `released`, `lost`, `refused`, `done`; see
//! `ken_apps::lock`; the server's are audited by the app's own
//! [`ken_apps::lock::audit_server`]), and the stores, through generic records: FUSE group
//! records (decoded by `ken_inspect::fuse`), the turn log (a notification is a turn of
//! input kind `fuse` whose source is the group), outbox statistics, and the row count of
//! the server's `grants` table ([`ken_apps::lock::GRANTS_TABLE`]).
//!
//! Lines are at most once: a line is printed after its turn commits, so a SIGKILL between
//! the commit and the print loses it (never the reverse). Every check that needs a line
//! says what it does when the line may have died with a killed life (`lines_unconfirmed`,
//! `notify_unmeasured`); the stores are authoritative.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ken::engine::fuse::{GroupRecord, GroupState};
use ken_inspect::fuse as group_records;
use ken_store::Reader;
use serde::Deserialize;

use super::apps::TortureApp;
use ken_apps::cli::App;
use ken_apps::lock;
use ken_tools::harness::End;

/// Member index of the server.
pub const SERVER: usize = 0;
/// Member index of the sticky holder.
pub const STICKY: usize = 1;
/// The sticky holder's lock.
pub const STICKY_LOCK: &str = "sticky";

/// A partition takes effect, and heals, when the endpoint next polls its faults file (every
/// 100 ms, `transport/FAULTS.md`), plus scheduling: a cut may last this much longer than
/// the harness's file writes say.
pub const RELOAD_SLACK_MS: u64 = 150;

/// Turn-log entries read per store (the store keeps the last 1000 turns).
const TURN_LOG_READ: u32 = 2000;

/// Violations listed at most per kind of check (the rest are counted in one line).
const LISTED_MAX: usize = 20;

/// The lock application.
#[derive(Debug, Clone)]
pub struct Lock {
    /// Contending holders (`h1..`), besides the sticky holder.
    pub holders: usize,
    pub locks: usize,
    pub hold_ms: u64,
    /// Rounds of each contending holder.
    pub rounds: u64,
}

impl Lock {
    /// The lock member `index` acquires (`None` for the server).
    pub fn lock_of(&self, index: usize) -> Option<String> {
        match index {
            SERVER => None,
            STICKY => Some(STICKY_LOCK.to_string()),
            i => Some(format!("L{}", (i - 2) % self.locks.max(1))),
        }
    }
}

impl TortureApp for Lock {
    fn name(&self) -> &'static str {
        "lock"
    }

    fn app(&self) -> Option<App> {
        Some(App::Lock)
    }

    fn members(&self) -> Vec<String> {
        let mut ids = vec!["s".to_string(), "z".to_string()];
        ids.extend((1..=self.holders).map(|i| format!("h{i}")));
        ids
    }

    fn args(
        &self,
        index: usize,
        listen: SocketAddr,
        store: &Path,
        peers: &[(String, SocketAddr)],
    ) -> Vec<String> {
        let id = self.members()[index].clone();
        let mut a = vec![
            if index == SERVER { "serve" } else { "hold" }.to_string(),
            "--id".into(),
            id,
            "--listen".into(),
            listen.to_string(),
            "--store".into(),
            store.display().to_string(),
        ];
        for (id, addr) in peers {
            a.push("--peer".into());
            a.push(format!("{id}={addr}"));
        }
        if let Some(lock) = self.lock_of(index) {
            a.extend(["--server".into(), "s".into(), "--lock".into(), lock]);
            if index == STICKY {
                a.extend(["--hold-ms".into(), "0".into()]);
            } else {
                a.extend([
                    "--hold-ms".into(),
                    self.hold_ms.to_string(),
                    "--rounds".into(),
                    self.rounds.to_string(),
                ]);
            }
        }
        a
    }

    /// The server never finishes; the contending holders do (handled by the lock rules in
    /// `mod.rs`).
    fn finishes(&self) -> bool {
        false
    }

    /// Every line is one JSON event of the lock service. (The cross-member checks, and
    /// the `done` reports, are in [`check`], which knows who was killed for good.)
    fn check_output(&self, index: usize, lines: &[String], _quiesced: bool) -> Vec<String> {
        let id = &self.members()[index];
        lines
            .iter()
            .filter_map(|l| match serde_json::from_str::<Line>(l) {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "lock {id}: stdout line is not a lock event ({e}): {l:?}"
                )),
            })
            .take(3)
            .collect()
    }

    /// Store checks need the run's record; see [`check`].
    fn check(&self, _stores: &[PathBuf], _quiesced: bool) -> Vec<String> {
        Vec::new()
    }
}

/// FUSE timing of the run, as the checks assume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub t_fail_ms: u64,
    pub heartbeat_ms: u64,
    pub create_timeout_ms: u64,
    /// The bound checked: `max(T_fail + 2 x heartbeat, creation timeout)`, unless overridden
    /// (negative control).
    pub bound_ms: u64,
    /// Added to the bound before a measured time is a violation (scheduling on a loaded
    /// machine, the faults file's poll period, a commit).
    pub slack_ms: u64,
}

impl Timing {
    /// The bound FUSE states: a silent member is failed after `T_fail + 2 x heartbeat`; a
    /// member that never confirms fails the group at the creation timeout.
    pub fn stated_bound_ms(t_fail_ms: u64, heartbeat_ms: u64, create_timeout_ms: u64) -> u64 {
        (t_fail_ms + 2 * heartbeat_ms).max(create_timeout_ms)
    }

    /// Outages up to this long must be masked.
    pub fn masked_ms(&self) -> u64 {
        self.t_fail_ms / 2
    }
}

/// One life of a member, in wall-clock milliseconds.
#[derive(Debug, Clone)]
pub struct LifeRecord {
    pub lines: Vec<String>,
    /// When it printed `listening` (store recovered, socket bound).
    pub listening_ms: Option<u64>,
    /// When it ended, `None` if it ran until the end of the run.
    pub ended_ms: Option<u64>,
    pub end: Option<End>,
    /// Gaps in its event lines (it printed nothing, not even its stats line): stalls.
    pub stalls: Vec<(u64, u64)>,
}

/// One member of the run.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    pub id: String,
    pub store: PathBuf,
    pub lives: Vec<LifeRecord>,
    /// When the harness SIGKILLed it for good.
    pub permanent_kill_ms: Option<u64>,
}

/// A pause or a partition made by the harness (kills come from the lives).
#[derive(Debug, Clone)]
pub struct Window {
    pub member: usize,
    /// `None`: a SIGSTOP pause; else a partition cutting `member` from these members.
    pub cut_from: Option<Vec<usize>>,
    /// A long partition (between the server and the sticky holder, meant to fire).
    pub long: bool,
    pub start_ms: u64,
    /// `None`: still on when the run ended.
    pub end_ms: Option<u64>,
}

/// Everything the checks need from a run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub members: Vec<MemberRecord>,
    /// Rounds each contending holder must report in its `done` line.
    pub rounds: u64,
    pub windows: Vec<Window>,
    pub timing: Timing,
    pub quiesced: bool,
    /// When the stores were read (every process dead).
    pub end_ms: u64,
}

/// The FUSE part of the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub permanent_kills: u64,
    pub long_partitions: u64,
    pub groups_created: u64,
    pub groups_failed: u64,
    pub groups_live: u64,
    pub grants: u64,
    pub freed: u64,
    /// Notification delays measured for permanent kills and long partitions (ms, from the
    /// kill or the partition, or from the member's own return if it was down then).
    pub notify_ms: Vec<u64>,
    /// Notifications of those whose time could not be read (line lost with a killed life
    /// and the turn out of the bounded turn log).
    pub notify_unmeasured: u64,
    pub false_positives: u64,
    /// Failures explained by an outage longer than half of `T_fail`.
    pub failures_excused: u64,
    /// Failures by the holder's own signal (a `released` line).
    pub failures_signalled: u64,
    /// Failures of a contending holder's group with no `released`/`lost` line (the line
    /// died with a killed life); covered by the holder's `done` counts.
    pub failures_unclassified: u64,
    /// Outages (downtime, pauses, cuts) of at most half of `T_fail`, which FUSE must mask.
    pub outages_masked: u64,
    pub outage_masked_ms_max: u64,
    /// Outages longer than half of `T_fail` besides permanent kills and long partitions
    /// (slow restarts on a loaded machine, crash-point chains).
    pub outages_long_other: u64,
    /// Places where a line a check needs is missing and a killed life explains it.
    pub lines_unconfirmed: u64,
    pub token_max: u64,
    /// One line per group failure not signalled by its holder, and per measured
    /// notification: what explains it (for `timeline.txt`, not the summary).
    pub notes: Vec<String>,
}

/// One emitted line of the lock service.
#[derive(Debug, Clone, Default, Deserialize)]
struct Line {
    event: String,
    #[serde(default)]
    lock: String,
    #[serde(default)]
    holder: String,
    #[serde(default)]
    token: u64,
    #[serde(default)]
    group: String,
    #[serde(default)]
    at_ms: u64,
    #[serde(default)]
    rounds: u64,
    #[serde(default)]
    lost: u64,
}

/// Where a line was printed: (life index, line index) of one member.
type Pos = (usize, usize);

/// What one store says about FUSE groups.
#[derive(Debug, Default)]
struct StoreView {
    /// By display id (`g-` + hex).
    groups: BTreeMap<String, GroupRecord>,
    /// Notification turns per group (their `at_ms`), within the turn log's window.
    fuse_turns: BTreeMap<String, Vec<u64>>,
    /// Unacknowledged messages per peer.
    outbox: BTreeMap<String, u64>,
    /// Server: rows in the `grants` table.
    grants_rows: u64,
}

/// Unacknowledged messages per peer in the store at `path`.
pub fn outbox_depths(path: &Path) -> Result<BTreeMap<String, u64>, String> {
    let r = Reader::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    Ok(r.outbox_stats()
        .map_err(|e| format!("outbox: {e}"))?
        .into_iter()
        .map(|o| (o.peer, o.depth))
        .collect())
}

/// What still keeps a lock run from being quiescent, read from the stores of the members
/// not `gone` (killed for good): a group not yet failed and notified (but the one the sticky
/// holder holds: exactly one, live at both), a message not yet acknowledged between living
/// members.
pub fn unsettled(ids: &[String], stores: &[PathBuf], gone: &[bool]) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for (m, path) in stores.iter().enumerate() {
        if gone[m] {
            continue;
        }
        let r = Reader::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut live = 0;
        for row in r.groups().map_err(|e| format!("groups: {e}"))? {
            let rec = group_records::decode(&row).map_err(|e| e.to_string())?;
            let sticky_pair = (m == SERVER || m == STICKY)
                && rec.members.contains(&ids[SERVER])
                && rec.members.contains(&ids[STICKY]);
            match rec.state {
                GroupState::Failed if rec.notified => {}
                GroupState::Live if sticky_pair => live += 1,
                state => missing.push(format!(
                    "{}: group {} is {state:?} (notified {})",
                    ids[m],
                    group_records::display(&row.group),
                    rec.notified
                )),
            }
        }
        if (m == SERVER || m == STICKY) && live != 1 {
            missing.push(format!(
                "{}: {live} live groups of s and z, expected the one z holds",
                ids[m]
            ));
        }
        for o in r.outbox_stats().map_err(|e| format!("outbox: {e}"))? {
            let to_gone = ids
                .iter()
                .position(|id| *id == o.peer)
                .is_some_and(|j| gone[j]);
            if o.depth > 0 && !to_gone {
                missing.push(format!(
                    "{} -> {}: {} unacknowledged",
                    ids[m], o.peer, o.depth
                ));
            }
        }
    }
    Ok(missing)
}

fn read_store(path: &Path) -> Result<StoreView, String> {
    let r = Reader::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut v = StoreView::default();
    for row in r.groups().map_err(|e| format!("groups: {e}"))? {
        let rec = group_records::decode(&row).map_err(|e| e.to_string())?;
        v.groups.insert(group_records::display(&row.group), rec);
    }
    for e in r
        .turn_log(TURN_LOG_READ)
        .map_err(|e| format!("turn log: {e}"))?
    {
        if e.input_kind == "fuse" {
            v.fuse_turns
                .entry(e.input_source)
                .or_default()
                .push(e.at_ms);
        }
    }
    for o in r.outbox_stats().map_err(|e| format!("outbox: {e}"))? {
        v.outbox.insert(o.peer, o.depth);
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = r
            .table_scan(lock::GRANTS_TABLE, &[], after.as_deref(), 1000)
            .map_err(|e| format!("grants: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        v.grants_rows += page.len() as u64;
    }
    Ok(v)
}

/// An interval during which members could not hear each other.
#[derive(Debug, Clone)]
struct Outage {
    what: String,
    start_ms: u64,
    /// `None`: it lasted until the end of the run.
    end_ms: Option<u64>,
    /// It contains a permanent kill or a long partition (planned to fire).
    planned: bool,
}

impl Outage {
    fn end_or(&self, run_end_ms: u64) -> u64 {
        self.end_ms.unwrap_or(run_end_ms)
    }

    fn len_ms(&self, run_end_ms: u64) -> u64 {
        self.end_or(run_end_ms).saturating_sub(self.start_ms)
    }

    fn overlaps(&self, from_ms: u64, to_ms: u64) -> bool {
        self.start_ms <= to_ms && self.end_ms.is_none_or(|e| e >= from_ms)
    }
}

/// Member `m`'s downtime from its lives: from a life's death to the next `listening`.
/// Finished lives (exit 0) are not downtime; deaths at or after `end_ms` (the harness's
/// final SIGKILLs) are not either.
fn downtime(m: &MemberRecord, end_ms: u64) -> Vec<(u64, Option<u64>)> {
    let mut out = Vec::new();
    let mut down: Option<u64> = None;
    for l in &m.lives {
        if let (Some(d), Some(up)) = (down, l.listening_ms) {
            out.push((d, Some(up)));
            down = None;
        }
        if let Some(e) = l.ended_ms.filter(|e| *e < end_ms) {
            if down.is_none() && l.end != Some(End::Finished) {
                down = Some(e);
            }
        }
    }
    if let Some(d) = down {
        out.push((d, None));
    }
    out
}

/// Member `m`'s own outages: downtime, pauses, stalls (gaps in its event lines).
fn member_outages(run: &RecordIndex<'_>, m: usize) -> Vec<Outage> {
    let mem = &run.rec.members[m];
    let id = &mem.id;
    let mut out: Vec<Outage> = run.down[m]
        .iter()
        .map(|(s, e)| Outage {
            what: format!("{id} down"),
            start_ms: *s,
            end_ms: *e,
            planned: e.is_none() && mem.permanent_kill_ms.is_some(),
        })
        .collect();
    out.extend(
        run.rec
            .windows
            .iter()
            .filter(|w| w.member == m && w.cut_from.is_none())
            .map(|w| Outage {
                what: format!("{id} paused"),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                planned: false,
            }),
    );
    out.extend(
        mem.lives
            .iter()
            .flat_map(|l| &l.stalls)
            .map(|(s, e)| Outage {
                what: format!("{id} stalled"),
                start_ms: *s,
                end_ms: Some(*e),
                planned: false,
            }),
    );
    out
}

/// Partitions cutting `a` from `b` (`b` = `None`: the partitions made at `a`'s endpoint), in
/// force from the harness's file write to the heal plus [`RELOAD_SLACK_MS`].
fn cut_outages(run: &RecordIndex<'_>, a: usize, b: Option<usize>) -> Vec<Outage> {
    run.rec
        .windows
        .iter()
        .filter_map(|w| {
            let from = w.cut_from.as_ref()?;
            let hits = match b {
                None => w.member == a,
                Some(b) => {
                    (w.member == a && from.contains(&b)) || (w.member == b && from.contains(&a))
                }
            };
            hits.then(|| Outage {
                what: format!(
                    "{} {}",
                    run.rec.members[w.member].id,
                    if w.long {
                        "in a long partition"
                    } else {
                        "cut off"
                    }
                ),
                start_ms: w.start_ms,
                end_ms: w.end_ms.map(|e| e + RELOAD_SLACK_MS),
                planned: w.long,
            })
        })
        .collect()
}

/// Merges outages that overlap or lie at most `gap_ms` apart (one heartbeat interval: too
/// close for a heartbeat to be sure to reset the silence in between) into one, naming every
/// part.
fn merged(mut v: Vec<Outage>, gap_ms: u64, run_end_ms: u64) -> Vec<Outage> {
    v.sort_by_key(|o| o.start_ms);
    let mut out: Vec<Outage> = Vec::new();
    for o in v {
        match out.last_mut() {
            Some(last) if o.start_ms <= last.end_or(run_end_ms) + gap_ms => {
                if last.end_ms.is_some() {
                    let until = last.end_or(run_end_ms);
                    last.end_ms = o.end_ms.map(|e| e.max(until));
                }
                if !last.what.contains(&o.what) {
                    last.what = format!("{} + {}", last.what, o.what);
                }
                last.planned |= o.planned;
            }
            _ => out.push(o),
        }
    }
    out
}

/// Every stretch of time during which `a` and `b` could not hear each other: either one
/// down, paused or stalled, or a partition between them (or cutting either off from
/// everyone), merged.
fn pair_outages(run: &RecordIndex<'_>, a: usize, b: usize) -> Vec<Outage> {
    let mut all = member_outages(run, a);
    all.extend(member_outages(run, b));
    all.extend(cut_outages(run, a, Some(b)));
    merged(all, run.rec.timing.heartbeat_ms, run.rec.end_ms)
}

/// The last time member `m` came back (from downtime, a pause or a stall) at or before
/// `t_ms`: its silence counters restart then, so a bound on its notifications runs from
/// there.
fn back_at(run: &RecordIndex<'_>, m: usize, t_ms: u64) -> u64 {
    member_outages(run, m)
        .iter()
        .filter_map(|o| o.end_ms)
        .filter(|e| *e <= t_ms)
        .max()
        .unwrap_or(0)
}

/// The run with its lines parsed and its stores read.
struct RecordIndex<'a> {
    rec: &'a RunRecord,
    /// Per member, per life, the parsed lines (unparsable ones left out).
    lines: Vec<Vec<Vec<Line>>>,
    stores: Vec<Option<StoreView>>,
    down: Vec<Vec<(u64, Option<u64>)>>,
}

impl RecordIndex<'_> {
    /// Member `m`'s lines of `event`, with where they were printed.
    fn events<'b>(&'b self, m: usize, event: &'b str) -> impl Iterator<Item = (Pos, &'b Line)> {
        self.lines[m]
            .iter()
            .enumerate()
            .flat_map(move |(li, life)| {
                life.iter()
                    .enumerate()
                    .filter(move |(_, l)| l.event == event)
                    .map(move |(i, l)| ((li, i), l))
            })
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.rec.members.iter().position(|m| m.id == id)
    }

    /// When member `m` heard group `g` fail: its line (server `freed`, holder `released` or
    /// `lost`), else its notification turn in the store's turn log.
    fn heard_ms(&self, m: usize, g: &str) -> Option<u64> {
        let events: &[&str] = if m == SERVER {
            &["freed"]
        } else {
            &["released", "lost"]
        };
        events
            .iter()
            .flat_map(|e| self.events(m, e))
            .find(|(_, l)| l.group == g)
            .map(|(_, l)| l.at_ms)
            .or_else(|| {
                self.stores[m]
                    .as_ref()
                    .and_then(|s| s.fuse_turns.get(g))
                    .and_then(|t| t.first().copied())
            })
    }
}

/// Pushes `line` unless `LISTED_MAX` lines of this `kind` were listed; counts the rest.
struct Listed {
    out: Vec<String>,
    per_kind: BTreeMap<&'static str, usize>,
}

impl Listed {
    fn push(&mut self, kind: &'static str, line: String) {
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        if *n <= LISTED_MAX {
            self.out.push(line);
        }
    }

    fn finish(mut self) -> Vec<String> {
        for (kind, n) in &self.per_kind {
            if *n > LISTED_MAX {
                self.out.push(format!(
                    "lock: {} more `{kind}` violations not listed",
                    n - LISTED_MAX
                ));
            }
        }
        self.out
    }
}

/// The run's outages as text, one line each, times in ms after `base_ms` (written beside the
/// logs as `timeline.txt`, for reading a violation against what the harness did).
pub fn timeline(rec: &RunRecord, base_ms: u64) -> String {
    let t = |ms: u64| format!("+{}", ms.saturating_sub(base_ms));
    let opt = |ms: Option<u64>| ms.map_or("-".to_string(), t);
    let mut out = format!(
        "# ms after {base_ms} (Unix ms); the stores' and lines' at_ms minus that give the same scale\n"
    );
    for m in &rec.members {
        for (i, l) in m.lives.iter().enumerate() {
            out.push_str(&format!(
                "{} life {}: listening {}, ended {} {:?}\n",
                m.id,
                i + 1,
                opt(l.listening_ms),
                opt(l.ended_ms),
                l.end
            ));
        }
        for (a, b) in m.lives.iter().flat_map(|l| &l.stalls) {
            out.push_str(&format!(
                "{} stalled (no event line): {}..{}\n",
                m.id,
                t(*a),
                t(*b)
            ));
        }
        if let Some(k) = m.permanent_kill_ms {
            out.push_str(&format!("{} killed for good at {}\n", m.id, t(k)));
        }
    }
    for w in &rec.windows {
        let who = &rec.members[w.member].id;
        let what = match &w.cut_from {
            None => "paused".to_string(),
            Some(from) => {
                let ids: Vec<&str> = from.iter().map(|j| rec.members[*j].id.as_str()).collect();
                format!(
                    "cut from {}{}",
                    ids.join(","),
                    if w.long { " (long partition)" } else { "" }
                )
            }
        };
        out.push_str(&format!(
            "{who} {what}: {}..{}\n",
            t(w.start_ms),
            opt(w.end_ms)
        ));
    }
    out
}

/// Runs every lock and FUSE check of the module docs over `rec`. Returns the violations
/// (one line each) and the summary's FUSE fields.
pub fn check(rec: &RunRecord) -> (Vec<String>, Report) {
    let mut v = Listed {
        out: Vec::new(),
        per_kind: BTreeMap::new(),
    };
    let mut report = Report::default();
    let lines: Vec<Vec<Vec<Line>>> = rec
        .members
        .iter()
        .map(|m| {
            m.lives
                .iter()
                .map(|l| {
                    l.lines
                        .iter()
                        .filter_map(|s| serde_json::from_str(s).ok())
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut stores = Vec::new();
    for m in &rec.members {
        match read_store(&m.store) {
            Ok(s) => stores.push(Some(s)),
            Err(e) => {
                v.push(
                    "store",
                    format!("lock {}: cannot read the store: {e}", m.id),
                );
                stores.push(None);
            }
        }
    }
    let down = rec
        .members
        .iter()
        .map(|m| downtime(m, rec.end_ms))
        .collect();
    let run = RecordIndex {
        rec,
        lines,
        stores,
        down,
    };
    report.permanent_kills = rec
        .members
        .iter()
        .filter(|m| m.permanent_kill_ms.is_some())
        .count() as u64;
    report.long_partitions = rec.windows.iter().filter(|w| w.long).count() as u64;

    check_server_lines(&run, &mut v, &mut report);
    check_holder_lines(&run, &mut v);
    check_exactly_once(&run, &mut v);
    classify_failures(&run, &mut v, &mut report);
    check_permanent_kills(&run, &mut v, &mut report);
    check_long_partitions(&run, &mut v, &mut report);
    count_outages(&run, &mut report);
    if rec.quiesced {
        check_quiesced(&run, &mut v);
    }
    (v.finish(), report)
}

/// The server's lines: the lock service's own audit of them ([`lock::audit_server`]: per
/// lock, tokens strictly increase, each granted once, one grant live at a time), and output
/// validity against the server's store: every `granted` and `freed` line names a group the
/// server committed, and a `freed` one the store holds failed and notified.
fn check_server_lines(run: &RecordIndex<'_>, v: &mut Listed, report: &mut Report) {
    let lines: Vec<(u32, String)> = run.rec.members[SERVER]
        .lives
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.lines.iter().map(move |line| (i as u32 + 1, line.clone())))
        .collect();
    let audit = lock::audit_server(&lines);
    report.grants += audit.granted;
    report.freed += audit.freed;
    report.lines_unconfirmed += audit.unconfirmed;
    report.token_max = report
        .token_max
        .max(audit.last_token.values().copied().max().unwrap_or(0));
    for a in &audit.violations {
        let kind = match a.kind {
            // `check_output` names lines that are not events.
            lock::AuditKind::NotJson => continue,
            lock::AuditKind::Tokens => "tokens",
            lock::AuditKind::OneGrant => "one grant",
        };
        v.push(kind, format!("lock: s {a}"));
    }
    let Some(store) = run.stores[SERVER].as_ref() else {
        return;
    };
    let mut events: Vec<(Pos, &Line)> = run
        .events(SERVER, "granted")
        .chain(run.events(SERVER, "freed"))
        .collect();
    events.sort_by_key(|(p, _)| *p);
    for (pos, l) in events {
        let where_ = format!(
            "s life {} line {}: {} {} token {} {}",
            pos.0 + 1,
            pos.1 + 1,
            l.event,
            l.lock,
            l.token,
            l.group
        );
        match store.groups.get(&l.group) {
            None => v.push(
                "output validity",
                format!(
                    "lock: {where_}: the server's store has no such group (a line of a \
                     rolled-back turn: output validity violated)"
                ),
            ),
            Some(g) if l.event == "freed" && !(g.state == GroupState::Failed && g.notified) => {
                v.push(
                    "output validity",
                    format!(
                        "lock: {where_}: the group is {:?} (notified {}) in the server's \
                         store, not failed and notified",
                        g.state, g.notified
                    ),
                );
            }
            Some(_) => {}
        }
    }
}

/// Each holder's grants: strictly increasing tokens, and each one a grant the server
/// committed (its group is in the server's store and, when the server's `granted` line
/// survived, with the same lock, token and holder).
fn check_holder_lines(run: &RecordIndex<'_>, v: &mut Listed) {
    let granted: BTreeMap<&str, &Line> = run
        .events(SERVER, "granted")
        .map(|(_, l)| (l.group.as_str(), l))
        .collect();
    let server = run.stores[SERVER].as_ref();
    for m in 1..run.rec.members.len() {
        let id = &run.rec.members[m].id;
        let mut last = 0;
        for (pos, l) in run.events(m, "holding") {
            let where_ = format!(
                "{id} life {} line {}: holding {} token {} {}",
                pos.0 + 1,
                pos.1 + 1,
                l.lock,
                l.token,
                l.group
            );
            if l.token <= last {
                v.push(
                    "tokens",
                    format!("lock: {where_}: not above its previous token {last}"),
                );
            }
            last = last.max(l.token);
            if server.is_some_and(|s| !s.groups.contains_key(&l.group)) {
                v.push(
                    "output validity",
                    format!(
                        "lock: {where_}: the server's store has no such group (the holder was \
                         granted by a rolled-back turn: output validity violated)"
                    ),
                );
            }
            if let Some(g) = granted.get(l.group.as_str()) {
                if g.token != l.token || g.lock != l.lock || g.holder != *id {
                    v.push(
                        "output validity",
                        format!(
                            "lock: {where_}: the server granted that group as {} token {} to {}",
                            g.lock, g.token, g.holder
                        ),
                    );
                }
            }
        }
    }
}

/// Exactly once: per group, at most one `granted` and one `freed` at the server, at most one
/// `holding` and one end (`released` or `lost`) at a holder, over every life; at most one
/// notification turn per group in each store's turn log.
fn check_exactly_once(run: &RecordIndex<'_>, v: &mut Listed) {
    for m in 0..run.rec.members.len() {
        let id = &run.rec.members[m].id;
        let kinds: &[&[&str]] = if m == SERVER {
            &[&["granted"], &["freed"]]
        } else {
            &[&["holding"], &["released", "lost"]]
        };
        for kind in kinds {
            let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
            for e in kind.iter() {
                for (_, l) in run.events(m, e) {
                    *seen.entry(l.group.as_str()).or_default() += 1;
                }
            }
            for (g, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
                v.push(
                    "exactly once",
                    format!(
                        "lock: {id} printed `{}` {n} times for {g} (at most once per group)",
                        kind.join("`/`")
                    ),
                );
            }
        }
        if let Some(s) = &run.stores[m] {
            for (g, turns) in s.fuse_turns.iter().filter(|(_, t)| t.len() > 1) {
                v.push(
                    "exactly once",
                    format!(
                        "lock: {id}'s turn log holds {} notification turns for {g}: a member hears \
                         a failure exactly once",
                        turns.len()
                    ),
                );
            }
        }
    }
}

/// The other member of a server group (every lock group is {server, holder}).
fn holder_of(run: &RecordIndex<'_>, rec: &GroupRecord) -> Option<usize> {
    let server = &run.rec.members[SERVER].id;
    rec.members
        .iter()
        .find(|m| *m != server)
        .and_then(|m| run.index_of(m))
}

/// No false positives. A group failed at the server must be explained: by its holder's
/// signal (a `released` line; the sticky holder never signals), or by an outage of the
/// server or the holder, or a partition between them, longer than half of `T_fail`, that
/// overlaps the group's life at the server (creation to failure). A `lost` line for a group
/// with no such outage is a false positive; so is a contending holder whose `done` report
/// counts more lost grants than it has excused failures (lines may die with a life; the
/// report is computed from its committed state).
fn classify_failures(run: &RecordIndex<'_>, v: &mut Listed, report: &mut Report) {
    let Some(server) = run.stores[SERVER].as_ref() else {
        return;
    };
    let masked = run.rec.timing.masked_ms();
    let mut excused_per_holder: BTreeMap<usize, u64> = BTreeMap::new();
    for (g, rec) in &server.groups {
        report.groups_created += 1;
        if rec.state != GroupState::Failed {
            report.groups_live += 1;
            continue;
        }
        report.groups_failed += 1;
        let Some(h) = holder_of(run, rec) else {
            v.push(
                "groups",
                format!(
                    "lock: server group {g} has members {:?}: not a lock group",
                    rec.members
                ),
            );
            continue;
        };
        let hid = &run.rec.members[h].id;
        let failed_ms = run.heard_ms(SERVER, g).unwrap_or(run.rec.end_ms);
        let outages: Vec<Outage> = pair_outages(run, SERVER, h)
            .into_iter()
            .filter(|o| o.overlaps(rec.created_ms, failed_ms))
            .collect();
        let excuse = outages.iter().find(|o| o.len_ms(run.rec.end_ms) > masked);
        let released = run.events(h, "released").any(|(_, l)| l.group == *g);
        let lost = run.events(h, "lost").find(|(_, l)| l.group == *g);
        if let Some(o) = excuse {
            report.notes.push(format!(
                "group {g} of s and {hid}: created {}, failed at s {}, excused by {} ({} ms, {}..{})",
                rec.created_ms,
                failed_ms,
                o.what,
                o.len_ms(run.rec.end_ms),
                o.start_ms,
                o.end_ms.map_or("end".to_string(), |e| e.to_string())
            ));
            report.failures_excused += 1;
            *excused_per_holder.entry(h).or_default() += 1;
            continue;
        }
        if released {
            report.failures_signalled += 1;
            continue;
        }
        let shown: Vec<String> = outages
            .iter()
            .map(|o| format!("{} {} ms", o.what, o.len_ms(run.rec.end_ms)))
            .collect();
        let why = format!(
            "created {} ms, failed at the server {} ms; outages overlapping it: [{}] (all at \
             most {masked} ms, which FUSE must mask)",
            rec.created_ms,
            failed_ms,
            shown.join(", ")
        );
        if h == STICKY || lost.is_some() {
            report.false_positives += 1;
            v.push(
                "false positive",
                format!(
                    "lock: false positive: group {g} of s and {hid} failed although no member \
                     was down or cut off for longer than half of T_fail and {hid} did not \
                     signal it; {why}"
                ),
            );
        } else {
            report.failures_unclassified += 1;
        }
    }
    // The contending holders' own count of lost grants (committed state).
    for h in 2..run.rec.members.len() {
        let done = run.events(h, "done").last().map(|(_, l)| l.lost);
        let excused = excused_per_holder.get(&h).copied().unwrap_or(0);
        if let Some(lost) = done.filter(|lost| *lost > excused) {
            let extra = lost - excused;
            report.false_positives += extra;
            v.push(
                "false positive",
                format!(
                    "lock: false positive: {} reports {lost} lost grants, but only {excused} of \
                     its groups failed during an outage longer than half of T_fail",
                    run.rec.members[h].id
                ),
            );
        }
    }
}

/// The FUSE bound for permanent kills: every group the victim shared with the server and
/// that had not failed before the kill is failed and notified at the server, within the
/// bound (plus slack) of the kill, of the group's creation if later, or of the server's own
/// return if it was down.
fn check_permanent_kills(run: &RecordIndex<'_>, v: &mut Listed, report: &mut Report) {
    let Some(server) = run.stores[SERVER].as_ref() else {
        return;
    };
    let t = run.rec.timing;
    for (h, m) in run.rec.members.iter().enumerate() {
        let Some(killed_ms) = m.permanent_kill_ms else {
            continue;
        };
        for (g, rec) in server
            .groups
            .iter()
            .filter(|(_, r)| holder_of(run, r) == Some(h))
        {
            let heard = run.heard_ms(SERVER, g);
            if heard.is_some_and(|n| n < killed_ms) {
                continue;
            }
            if !(rec.state == GroupState::Failed && rec.notified) {
                if run.rec.quiesced {
                    v.push(
                        "fuse bound",
                        format!(
                            "lock: {} was killed for good at {killed_ms} ms, but its group {g} is \
                             {:?} (notified {}) at the server after quiescence",
                            m.id, rec.state, rec.notified
                        ),
                    );
                }
                continue;
            }
            let Some(n) = heard else {
                report.notify_unmeasured += 1;
                continue;
            };
            let from = killed_ms.max(rec.created_ms).max(back_at(run, SERVER, n));
            let took = n.saturating_sub(from);
            report.notify_ms.push(took);
            report.notes.push(format!(
                "permanent kill of {} at {killed_ms}: s heard {g} fail at {n}, {took} ms after {from}",
                m.id
            ));
            if took > t.bound_ms + t.slack_ms {
                v.push(
                    "fuse bound",
                    format!(
                        "lock: {} was killed for good at {killed_ms} ms; the server heard its \
                         group {g} fail {took} ms later (from {from} ms), above the bound {} ms \
                         + slack {} ms",
                        m.id, t.bound_ms, t.slack_ms
                    ),
                );
            }
        }
    }
}

/// The FUSE bound for long partitions between the server and the sticky holder: every group
/// they shared, live on both sides when the cut started, fires on both sides (the server
/// frees it, the holder loses it) within the bound (plus slack) of the cut, or of that
/// side's own return if it was down.
fn check_long_partitions(run: &RecordIndex<'_>, v: &mut Listed, report: &mut Report) {
    let t = run.rec.timing;
    let (Some(server), Some(sticky)) = (run.stores[SERVER].as_ref(), run.stores[STICKY].as_ref())
    else {
        return;
    };
    for w in run.rec.windows.iter().filter(|w| w.long) {
        let p0 = w.start_ms;
        for (g, rec) in server
            .groups
            .iter()
            .filter(|(_, r)| holder_of(run, r) == Some(STICKY) && r.created_ms < p0)
        {
            if run.heard_ms(SERVER, g).is_some_and(|n| n < p0) {
                continue;
            }
            let Some(zrec) = sticky.groups.get(g).filter(|z| z.created_ms < p0) else {
                continue;
            };
            if run.heard_ms(STICKY, g).is_some_and(|n| n < p0) {
                continue;
            }
            for (side, r) in [(SERVER, rec), (STICKY, zrec)] {
                let id = &run.rec.members[side].id;
                if r.state != GroupState::Failed {
                    v.push(
                        "fuse bound",
                        format!(
                            "lock: long partition of s and z from {p0} ms: group {g} never \
                             failed at {id} (it is {:?})",
                            r.state
                        ),
                    );
                    continue;
                }
                let Some(n) = run.heard_ms(side, g) else {
                    report.notify_unmeasured += 1;
                    continue;
                };
                let from = p0.max(back_at(run, side, n));
                let took = n.saturating_sub(from);
                report.notify_ms.push(took);
                report.notes.push(format!(
                    "long partition of s and z from {p0}: {id} heard {g} fail at {n}, {took} ms after {from}"
                ));
                if took > t.bound_ms + t.slack_ms {
                    v.push(
                        "fuse bound",
                        format!(
                            "lock: long partition of s and z from {p0} ms: {id} heard group {g} \
                             fail {took} ms later (from {from} ms), above the bound {} ms + \
                             slack {} ms",
                            t.bound_ms, t.slack_ms
                        ),
                    );
                }
            }
        }
    }
}

/// Counts the outages FUSE had to mask (per member, merged with its cuts), and the long ones
/// that were not planned.
fn count_outages(run: &RecordIndex<'_>, report: &mut Report) {
    let masked = run.rec.timing.masked_ms();
    let end = run.rec.end_ms;
    for m in 0..run.rec.members.len() {
        let mut all = member_outages(run, m);
        all.extend(cut_outages(run, m, None));
        for o in merged(all, run.rec.timing.heartbeat_ms, end) {
            let len = o.len_ms(end);
            if len <= masked {
                report.outages_masked += 1;
                report.outage_masked_ms_max = report.outage_masked_ms_max.max(len);
            } else if !o.planned {
                report.outages_long_other += 1;
                report.notes.push(format!(
                    "outage longer than T_fail/2, not planned: {} ({len} ms, {}..{})",
                    o.what,
                    o.start_ms,
                    o.end_ms.map_or("end".to_string(), |e| e.to_string())
                ));
            }
        }
    }
}

/// After quiescence: every living contending holder reported all its rounds done; every
/// failed group at a living member is notified; the server's live
/// grants are exactly its live groups (the sticky holder's current one); the sticky holder
/// holds its lock; outboxes between living members are empty.
fn check_quiesced(run: &RecordIndex<'_>, v: &mut Listed) {
    for (m, mem) in run.rec.members.iter().enumerate() {
        if mem.permanent_kill_ms.is_some() {
            continue;
        }
        if m >= 2 {
            // Liveness: every living contending holder did all its rounds.
            match run.events(m, "done").last() {
                Some((_, d)) if d.rounds == run.rec.rounds => {}
                Some((_, d)) => v.push(
                    "liveness",
                    format!(
                        "lock: {} done after {} rounds, expected {}",
                        mem.id, d.rounds, run.rec.rounds
                    ),
                ),
                None => v.push(
                    "liveness",
                    format!("lock: {} printed no done report after quiescence", mem.id),
                ),
            }
        }
        let Some(s) = &run.stores[m] else { continue };
        for (g, r) in &s.groups {
            if r.state == GroupState::Failed && !r.notified {
                v.push(
                    "exactly once",
                    format!(
                        "lock: {}: group {g} failed but its handler was never notified (after \
                         quiescence)",
                        mem.id
                    ),
                );
            }
            if m != SERVER && m != STICKY && r.state != GroupState::Failed {
                v.push(
                    "liveness",
                    format!(
                        "lock: {} finished its rounds, but its group {g} is {:?}",
                        mem.id, r.state
                    ),
                );
            }
        }
    }
    if let Some(s) = &run.stores[SERVER] {
        let live: Vec<&String> = s
            .groups
            .iter()
            .filter(|(_, r)| r.state != GroupState::Failed)
            .map(|(g, _)| g)
            .collect();
        if s.grants_rows != live.len() as u64 {
            v.push(
                "liveness",
                format!(
                    "lock: the server's grants table holds {} rows but it has {} live groups \
                     ({live:?}) after quiescence",
                    s.grants_rows,
                    live.len()
                ),
            );
        }
        // Its last line over every life (a life that restarted holding prints nothing).
        let sticky_holds = run.lines[STICKY]
            .iter()
            .rev()
            .flat_map(|life| life.iter().rev())
            .find(|l| l.event != "refused")
            .filter(|l| l.event == "holding")
            .map(|l| l.group.clone());
        match sticky_holds {
            Some(g) if live.iter().any(|x| **x == g) => {}
            other => v.push(
                "liveness",
                format!(
                    "lock: after quiescence the sticky holder z should hold its lock under the \
                     server's one live group {live:?}; its last line says {other:?}"
                ),
            ),
        }
        let gone: BTreeSet<&str> = run
            .rec
            .members
            .iter()
            .filter(|m| m.permanent_kill_ms.is_some())
            .map(|m| m.id.as_str())
            .collect();
        for (peer, depth) in s
            .outbox
            .iter()
            .filter(|(p, d)| **d > 0 && !gone.contains(p.as_str()))
        {
            v.push(
                "liveness",
                format!(
                    "lock: the server's outbox to {peer} holds {depth} messages after quiescence"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(
        _started_ms: u64,
        listening: Option<u64>,
        ended: Option<u64>,
        end: Option<End>,
    ) -> LifeRecord {
        LifeRecord {
            lines: Vec::new(),
            listening_ms: listening,
            ended_ms: ended,
            end,
            stalls: Vec::new(),
        }
    }

    #[test]
    fn downtime_runs_from_a_death_to_the_next_listening_life() {
        let m = MemberRecord {
            id: "h1".into(),
            store: PathBuf::new(),
            lives: vec![
                life(0, Some(10), Some(100), Some(End::KilledByUs)),
                // Died at a crash point during recovery: still down.
                life(
                    150,
                    None,
                    Some(160),
                    Some(End::CrashPoint("recovery".into())),
                ),
                life(200, Some(230), Some(500), Some(End::KilledByUs)),
                // The harness's final SIGKILL (at the end of the run) is not downtime.
                life(600, Some(610), Some(1000), Some(End::KilledByUs)),
            ],
            permanent_kill_ms: None,
        };
        assert_eq!(downtime(&m, 1000), vec![(100, Some(230)), (500, Some(610))]);
        let gone = MemberRecord {
            lives: vec![life(0, Some(5), Some(50), Some(End::KilledByUs))],
            permanent_kill_ms: Some(50),
            ..m.clone()
        };
        assert_eq!(downtime(&gone, 1000), vec![(50, None)]);
        let finished = MemberRecord {
            lives: vec![life(0, Some(5), Some(50), Some(End::Finished))],
            ..m
        };
        assert_eq!(downtime(&finished, 1000), vec![]);
    }

    fn outage(what: &str, start_ms: u64, end_ms: Option<u64>) -> Outage {
        Outage {
            what: what.to_string(),
            start_ms,
            end_ms,
            planned: false,
        }
    }

    #[test]
    fn outages_closer_than_a_heartbeat_merge_into_one_silence() {
        let v = vec![
            outage("b down", 450, Some(700)),
            outage("a paused", 100, Some(400)),
            // 100 ms after the merged end: too close for a heartbeat, merged.
            outage("a stalled", 800, Some(900)),
            // 101 ms after: a heartbeat gets through, a new silence.
            outage("b cut off", 1001, Some(1100)),
            outage("a down", 2000, None),
            outage("a paused", 2100, Some(2200)),
        ];
        let m = merged(v, 100, 5000);
        let got: Vec<(u64, Option<u64>, u64)> = m
            .iter()
            .map(|o| (o.start_ms, o.end_ms, o.len_ms(5000)))
            .collect();
        assert_eq!(
            got,
            vec![
                (100, Some(900), 800),
                (1001, Some(1100), 99),
                (2000, None, 3000)
            ]
        );
        assert_eq!(m[0].what, "a paused + b down + a stalled");
        assert!(m[0].overlaps(880, 2000) && !m[0].overlaps(901, 2000));
        assert!(m[2].overlaps(4000, 4500), "an open outage lasts to the end");
    }

    #[test]
    fn the_stated_bound_is_the_silence_limit_or_the_creation_timeout() {
        assert_eq!(Timing::stated_bound_ms(1000, 100, 1000), 1200);
        assert_eq!(Timing::stated_bound_ms(1000, 100, 3000), 3000);
    }
}
