//! The owning handle: open (create or recover) and commit.
//!
//! Invariants:
//! - The owner lock (`<store>.lock`, an exclusive advisory lock) is taken before the database
//!   is touched and held for the life of the [`Store`]; the connection is closed before the
//!   lock is released.
//! - A foreign or newer file is never modified: it is classified with read-only queries
//!   before any pragma that writes (`journal_mode=WAL`) runs.
//! - Creation (schema and `meta`) is one transaction followed by an fsync of the directory;
//!   a file left empty by an interrupted creation is created again by the next open.
//! - One batch is one `BEGIN IMMEDIATE` transaction; [`Store::commit`] returns `Ok` only
//!   after `COMMIT` returned with `synchronous=FULL`, so the batch is on disk.
//! - After any failed commit the handle is poisoned and refuses all work; nothing is retried.
//! - In-memory counters (`turns_committed`, `commits`, turn-log rows) change only after a
//!   successful `COMMIT`, so they always equal what is durable.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::os::unix::fs::FileExt;

use crate::access::{
    classify, lock_holder, lock_path, meta_or_open_error, query_decode, read_meta_rows,
    sqlite_open_err, table_get, Found,
};
use crate::codec::{self, seal_record, Record};
use crate::error::{CommitError, OpenError, ReadError};
use crate::journal::JournalRecord;
use crate::schema::{self, sql_u64};
use crate::witness::{self, Witness, WitnessRecord};
use crate::{
    AppIdentity, Batch, ClientChange, CommitInfo, Corrupted, GroupChange, Recovered, StoreOptions,
    TableWrite, TimerChange, TurnLogEntry, FORMAT_VERSION,
};

/// How long the owner waits on a lock held briefly by a reader (for example while a reader
/// runs WAL recovery on a store whose owner was killed).
pub const OWNER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest body (root, table value, payload, reply, group record) the store accepts.
pub const MAX_BODY_BYTES: usize = codec::DECODE_LIMIT_BYTES;

/// Largest table key.
pub const MAX_KEY_BYTES: usize = 4096;

/// Largest name (process id, table name, peer id, timer name), in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Most rows (writes, appends, changes, turn-log entries) one batch may carry.
pub const MAX_BATCH_ROWS: usize = 1_000_000;

/// Prepared-statement cache size: every statement commit and recovery use, with room.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// The owning handle of a store. Not `Sync`: the runtime drives it from one thread.
///
/// Dropping it closes the connection (SQLite checkpoints the WAL if no reader is attached)
/// and then releases the owner lock.
#[derive(Debug)]
pub struct Store {
    // Field order is drop order: the connection closes before the lock is released.
    conn: Connection,
    /// The owner lock file and its commit witness (see `witness`).
    witness: Witness,
    path: PathBuf,
    process_id: String,
    incarnation: u64,
    options: StoreOptions,
    turns_committed: u64,
    commits: u64,
    /// The `turn_log` table's rows (the journal's entries are not in it until folded).
    turn_log: TurnLog,
    /// The journal's rows, oldest first, as committed (the next direct commit folds them).
    journal: Vec<JournalRecord>,
    /// Journal rows at most before a commit folds them (0: never journal).
    journal_rows: usize,
    /// Largest sealed journal record, in bytes.
    journal_record_max: usize,
    /// Commits whose writes the tables hold (all but the journal's), shared with
    /// [`FoldWatch`]es.
    folded: Arc<AtomicU64>,
    poisoned: bool,
    /// The application identity in `meta` (`None` for a store opened without one).
    app: Option<AppIdentity>,
}

/// How many of a store's commits its tables hold, that is all but the journal's: the
/// owner's count, readable from any thread. It grows when a commit folds the journal (the
/// value is stored before [`Store::commit`] returns), and never shrinks while the store is
/// open. A reader of the tables alone ([`Reader::table_get_folded`]) sees at least these
/// commits' writes in any read that starts after this value was loaded.
///
/// [`Reader::table_get_folded`]: crate::Reader::table_get_folded
#[derive(Debug, Clone)]
pub struct FoldWatch(Arc<AtomicU64>);

impl FoldWatch {
    /// Commits (counted over the life of the store) whose writes are in the tables.
    pub fn commits(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Turn-log entries per `turn_log` row at most: a batch's entries are stored as one row per
/// this many (so a busy commit inserts a few rows, not one per turn), and trimming drops whole
/// rows.
pub const TURN_LOG_ROW_ENTRIES_MAX: usize = 64;

/// A batch of more rows than this is committed directly without encoding it for the journal
/// (it would not fit a journal record of about a quarter page anyway).
const JOURNAL_BATCH_ROWS_MAX: usize = 16;

/// The `turn_log` table's rows, oldest first: (first turn, entries), and their entry count.
#[derive(Debug, Clone, Default)]
struct TurnLog {
    rows: std::collections::VecDeque<(u64, u64)>,
    entries: u64,
}

impl TurnLog {
    /// The turn-log rows a commit of `entries` adds, and how many of the oldest rows it
    /// drops: whole rows, oldest first, while at least `max` entries remain (so the log holds
    /// the newest `max` entries and at most one row's worth more).
    fn plan(&self, max: u32, entries: &[TurnLogEntry]) -> TurnLogPlan {
        let max = u64::from(max);
        let added: Vec<(u64, u64)> = if max == 0 {
            Vec::new()
        } else {
            entries
                .chunks(TURN_LOG_ROW_ENTRIES_MAX)
                .map(|c| (c[0].turn, c.len() as u64))
                .collect()
        };
        let mut total = self.entries + added.iter().map(|(_, n)| n).sum::<u64>();
        let mut dropped: usize = 0;
        for &(_, n) in &self.rows {
            if total - n < max {
                break;
            }
            total -= n;
            dropped += 1;
        }
        TurnLogPlan {
            newest_dropped: dropped.checked_sub(1).map(|i| self.rows[i].0),
            dropped,
            added,
            entries: total,
        }
    }

    fn apply(&mut self, plan: TurnLogPlan) {
        self.rows.drain(..plan.dropped);
        self.rows.extend(plan.added);
        self.entries = plan.entries;
    }
}

/// What a commit does to the turn log, applied to [`Store`]'s bookkeeping once it is durable.
struct TurnLogPlan {
    /// The first turn of the newest row dropped.
    newest_dropped: Option<u64>,
    /// Rows dropped from the front.
    dropped: usize,
    /// Rows appended: (first turn, entries).
    added: Vec<(u64, u64)>,
    entries: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Takes the exclusive advisory owner lock, or reports who holds it.
pub(crate) fn take_owner_lock(path: &Path) -> Result<File, OpenError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(OpenError::InUse {
                path: path.to_path_buf(),
                holder_pid: lock_holder(&lock_path),
                lock_path,
            })
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(OpenError::Io {
                path: lock_path,
                source,
            })
        }
    }
    Ok(file)
}

pub(crate) fn fsync_dir(path: &Path) -> Result<(), OpenError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Store {
    /// Opens the store at `path` for process `process_id`, creating it if the file does not
    /// exist (or is empty), with default [`StoreOptions`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.ken");
    /// let (mut store, recovered) = ken_store::Store::open(&path, "a")?;
    /// assert!(recovered.created);
    /// store.commit(&ken_store::Batch { turns: 1, root: Some(b"state".to_vec()), ..Default::default() })?;
    /// drop(store);
    /// let (_store, recovered) = ken_store::Store::open(&path, "a")?;
    /// assert_eq!(recovered.root.as_deref(), Some(&b"state"[..]));
    /// assert_eq!(recovered.turns_committed, 1);
    /// # Ok(()) }
    /// ```
    pub fn open(path: &Path, process_id: &str) -> Result<(Store, Recovered), OpenError> {
        Store::open_with(path, process_id, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    ///
    /// # Panics
    /// If `process_id` is empty or longer than [`MAX_NAME_BYTES`].
    pub fn open_with(
        path: &Path,
        process_id: &str,
        options: &StoreOptions,
    ) -> Result<(Store, Recovered), OpenError> {
        Store::open_inner(path, process_id, options, None)
    }

    /// [`Store::open_with`] for application `app`: a new store records `app` in its `meta`;
    /// an existing one must be of the same application ([`OpenError::WrongApp`]) and of a
    /// schema version not newer than `app`'s ([`OpenError::NewerSchema`]), else nothing is
    /// changed. A store written before application identities existed (no `app` row) is
    /// adopted: it gets `app`'s name with schema version 1, and its outbox payloads get the
    /// version envelope ([`crate::wrap_payload`]), in one transaction, logged. The store's
    /// version ([`Store::app`]) may be older than `app`'s: the caller migrates it
    /// ([`Store::commit_schema`]).
    ///
    /// # Panics
    /// As [`Store::open_with`], or if `app`'s name is empty or its version 0.
    pub fn open_for_app(
        path: &Path,
        process_id: &str,
        options: &StoreOptions,
        app: &AppIdentity,
    ) -> Result<(Store, Recovered), OpenError> {
        assert!(
            !app.name.is_empty() && app.name.len() <= MAX_NAME_BYTES && app.schema_version > 0,
            "application name must be 1..={MAX_NAME_BYTES} bytes and the schema version > 0"
        );
        Store::open_inner(path, process_id, options, Some(app))
    }

    fn open_inner(
        path: &Path,
        process_id: &str,
        options: &StoreOptions,
        app: Option<&AppIdentity>,
    ) -> Result<(Store, Recovered), OpenError> {
        assert!(
            !process_id.is_empty() && process_id.len() <= MAX_NAME_BYTES,
            "process id must be 1..={MAX_NAME_BYTES} bytes"
        );
        let lock_file = lock_path(path);
        let lock_existed = lock_file.exists();
        let lock = take_owner_lock(path)?;
        // A refused open leaves no lock file it created (removed while the lock is held, so
        // no other opener can be holding that file).
        let refused = |e: OpenError| {
            if !lock_existed {
                let _ = std::fs::remove_file(&lock_file);
            }
            e
        };
        let witnessed = witness::read_file(&lock);
        // Record this owner's pid now (for `InUse` messages), keeping what the file
        // witnesses until recovery has checked it.
        let mut record = witnessed.unwrap_or(WitnessRecord {
            pid: 0,
            incarnation: 0,
            commits: 0,
        });
        record.pid = std::process::id();
        lock.write_all_at(&witness::encode(&record), 0)
            .and_then(|()| lock.set_len(witness::LOCK_FILE_BYTES as u64))
            .map_err(io_err(&lock_file))
            .map_err(refused)?;
        // Before SQLite touches the files (it deletes a WAL beside an empty database, and a
        // checkpoint would overwrite the evidence): the files' own checks.
        crate::files::check(path).map_err(refused)?;
        let shm = {
            let mut name = path.as_os_str().to_owned();
            name.push("-shm");
            PathBuf::from(name)
        };
        let before: Vec<(PathBuf, Option<u64>)> =
            [path.to_path_buf(), crate::files::wal_path(path), shm]
                .into_iter()
                .map(|f| {
                    let len = std::fs::metadata(&f).ok().map(|m| m.len());
                    (f, len)
                })
                .collect();
        let (conn, recovered, turn_log, stored_app, journal) =
            match open_checked(path, process_id, options, witnessed, &lock_file, app) {
                Ok(opened) => opened,
                Err(e) => {
                    // Refused: remove what SQLite created here (an empty database, a
                    // preallocated WAL), so the files are left as they were found; an
                    // empty WAL the open only preallocated (zeros) is emptied again.
                    for (f, len) in &before {
                        match len {
                            None => {
                                let _ = std::fs::remove_file(f);
                            }
                            Some(0) if *f == crate::files::wal_path(path) => {
                                if std::fs::read(f).is_ok_and(|b| b.iter().all(|x| *x == 0)) {
                                    let _ = OpenOptions::new()
                                        .write(true)
                                        .open(f)
                                        .and_then(|w| w.set_len(0));
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    return Err(refused(e));
                }
            };
        let witness = Witness::install(
            lock,
            &WitnessRecord {
                pid: std::process::id(),
                incarnation: recovered.incarnation,
                commits: recovered.commits,
            },
        )
        .map_err(io_err(&lock_file))?;
        // A quarter page by default: a journal commit then writes about one page.
        let journal_record_max = match options.journal_record_max_bytes {
            Some(bytes) => bytes as usize,
            None => conn
                .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
                .map_or(256, |size| usize::try_from(size / 4).unwrap_or(256)),
        };
        let store = Store {
            conn,
            witness,
            path: path.to_path_buf(),
            process_id: process_id.to_string(),
            incarnation: recovered.incarnation,
            options: options.clone(),
            turns_committed: recovered.turns_committed,
            commits: recovered.commits,
            turn_log: TurnLog {
                entries: turn_log.iter().map(|(_, n)| n).sum(),
                rows: turn_log,
            },
            folded: Arc::new(AtomicU64::new(recovered.commits - journal.len() as u64)),
            journal,
            journal_rows: options.journal_rows as usize,
            journal_record_max,
            poisoned: false,
            app: stored_app,
        };
        Ok((store, recovered))
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The process id the store belongs to.
    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// The incarnation chosen when the store was created (never 0).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Turns committed over the life of the store.
    pub fn turns_committed(&self) -> u64 {
        self.turns_committed
    }

    /// Commits over the life of the store.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The application identity recorded in the store (after adoption), `None` if it was
    /// opened without one and has none.
    pub fn app(&self) -> Option<&AppIdentity> {
        self.app.as_ref()
    }

    /// [`Store::commit`], and in the same transaction sets the store's schema version to
    /// `schema_version`: a migration's one commit. A crash leaves either the old version and
    /// none of the batch, or both.
    ///
    /// # Panics
    /// If the store has no application identity, or `schema_version` is not newer than it.
    pub fn commit_schema(
        &mut self,
        batch: &Batch,
        schema_version: u32,
    ) -> Result<CommitInfo, CommitError> {
        let app = self
            .app
            .clone()
            .expect("commit_schema on a store without an application identity");
        assert!(
            schema_version > app.schema_version,
            "a migration moves to a newer schema version"
        );
        let new = AppIdentity {
            schema_version,
            ..app
        };
        let info = self.commit_inner(batch, Some(&new))?;
        self.app = Some(new);
        Ok(info)
    }

    /// True after a failed commit: every call fails until the store is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Reads one committed row of application table `table`.
    pub fn table_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        if self.poisoned {
            return Err(ReadError::Poisoned);
        }
        // The journal's writes are newer than the table's rows: the newest one wins.
        for rec in self.journal.iter().rev() {
            if let Some(w) = rec
                .batch
                .table_writes
                .iter()
                .rev()
                .find(|w| w.table == table && w.key == key)
            {
                return Ok(w.value.clone());
            }
        }
        table_get(&self.conn, table, key)
    }

    /// Commits held in the journal, not yet folded into the tables (the next direct commit,
    /// or a clean close, folds them; an open keeps what it finds).
    pub fn journaled(&self) -> usize {
        self.journal.len()
    }

    /// The table writes of the journal's commits, oldest first: what [`Reader::table_get_folded`]
    /// does not see yet.
    ///
    /// [`Reader::table_get_folded`]: crate::Reader::table_get_folded
    pub fn journaled_table_writes(&self) -> Vec<TableWrite> {
        self.journal
            .iter()
            .flat_map(|r| r.batch.table_writes.iter().cloned())
            .collect()
    }

    /// A handle that tells, from any thread, how many commits the tables hold (see
    /// [`FoldWatch`]).
    pub fn fold_watch(&self) -> FoldWatch {
        FoldWatch(Arc::clone(&self.folded))
    }

    /// Writes `batch` in one transaction and returns once it is durable.
    ///
    /// Applied in this order: root, table writes, outbox appends, outbox acks, outbox
    /// forgets, peers, timers, clients, groups, turn-log trimming and inserts, counters.
    ///
    /// # Panics
    /// If the batch breaks a precondition (a bug in the caller): an outbox `seq` of 0 or not
    /// contiguous per peer within the batch, a peer with `acked >= next_seq`, turn-log entries
    /// not increasing, an integer above `i64::MAX`, an empty or oversized name, key or body.
    pub fn commit(&mut self, batch: &Batch) -> Result<CommitInfo, CommitError> {
        self.commit_inner(batch, None)
    }

    fn commit_inner(
        &mut self,
        batch: &Batch,
        app: Option<&AppIdentity>,
    ) -> Result<CommitInfo, CommitError> {
        if self.poisoned {
            return Err(CommitError::Poisoned);
        }
        check_batch(batch);
        let turns_committed = self
            .turns_committed
            .checked_add(batch.turns)
            .expect("turns_committed overflows u64");
        let commits = self.commits + 1;
        match self.write(batch, turns_committed, commits, app) {
            Ok(written) => {
                // Durable: witness it before any output of the batch can leave.
                self.witness.set(commits);
                self.turns_committed = turns_committed;
                self.commits = commits;
                match written {
                    Written::Journal(batch) => self.journal.push(JournalRecord {
                        turns_committed,
                        commits,
                        batch: *batch,
                    }),
                    Written::Direct(log) => {
                        self.journal.clear();
                        self.turn_log = log;
                        self.folded.store(commits, Ordering::Release);
                    }
                }
                Ok(CommitInfo {
                    commits,
                    turns_committed,
                })
            }
            Err(e) => {
                self.poisoned = true;
                tracing::error!(path = %self.path.display(), error = %e, "commit failed; store poisoned");
                Err(e)
            }
        }
    }

    /// The transaction of [`Store::commit`]: one journal row, or (a large batch, a full
    /// journal, a schema change) the fold of the journal and the batch into the tables.
    fn write(
        &mut self,
        batch: &Batch,
        turns_committed: u64,
        commits: u64,
        app: Option<&AppIdentity>,
    ) -> Result<Written, CommitError> {
        let max = self.options.turn_log_max;
        let journal = (app.is_none()
            && self.journal.len() < self.journal_rows
            && batch.rows() <= JOURNAL_BATCH_ROWS_MAX)
            .then(|| {
                // A store that keeps no turn log journals none either (a reader would show it).
                let batch = if max == 0 && !batch.turn_log.is_empty() {
                    Batch {
                        turn_log: Vec::new(),
                        ..batch.clone()
                    }
                } else {
                    batch.clone()
                };
                let record = crate::journal::seal(turns_committed, commits, &batch);
                (batch, record)
            })
            .filter(|(_, record)| record.len() <= self.journal_record_max);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some((batch, record)) = journal {
            // What the fold would refuse is refused now, while nothing is durable.
            if let Some(conflict) = journal_conflict(&tx, &self.journal, &self.turn_log, &batch)? {
                return Err(CommitError::Sqlite { detail: conflict });
            }
            tx.prepare_cached("INSERT INTO journal (seq, record) VALUES (?1, ?2)")?
                .execute((sql_u64(commits, "commit count"), record))?;
            tx.commit()?;
            return Ok(Written::Journal(Box::new(batch)));
        }
        let mut log = self.turn_log.clone();
        fold(&tx, &self.journal, &mut log, max)?;
        apply(&tx, batch, &mut log, max)?;
        let changed = tx
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")?
            .execute((
                schema::seal_meta(
                    schema::META_COUNTERS,
                    &schema::counters_body(turns_committed, commits, batch.now_ms),
                ),
                schema::META_COUNTERS,
            ))?;
        assert_eq!(changed, 1, "meta has exactly one `counters` row");
        if let Some(app) = app {
            let changed = tx
                .prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")?
                .execute((
                    schema::seal_meta(schema::META_APP, &schema::app_body(app)),
                    schema::META_APP,
                ))?;
            assert_eq!(changed, 1, "meta has exactly one `app` row");
        }
        tx.commit()?;
        Ok(Written::Direct(log))
    }
}

/// Why the tables would refuse `batch` when the journal is folded, if they would: the
/// two keys a batch inserts rather than upserts. A turn-log entry must be newer than
/// every turn logged (the table's newest row and the journal), an outbox row must not
/// exist (in the table or the journal). Checked before a journal commit, so that an
/// acknowledged journal row always folds; a direct commit's SQL checks the same keys.
fn journal_conflict(
    tx: &rusqlite::Transaction<'_>,
    journal: &[JournalRecord],
    turn_log: &TurnLog,
    batch: &Batch,
) -> rusqlite::Result<Option<String>> {
    if let Some(first) = batch.turn_log.first() {
        let newest = journal
            .iter()
            .rev()
            .find_map(|r| r.batch.turn_log.last().map(|e| e.turn))
            .or_else(|| turn_log.rows.back().map(|(t, _)| *t));
        if let Some(newest) = newest.filter(|n| first.turn <= *n) {
            return Ok(Some(format!(
                "turn-log entry {} is not newer than turn {newest}, already logged \
                 (the turn_log table's key)",
                first.turn
            )));
        }
    }
    for m in &batch.outbox_appends {
        let in_journal = journal.iter().any(|r| {
            r.batch
                .outbox_appends
                .iter()
                .any(|o| o.peer == m.peer && o.seq == m.seq)
        });
        let in_table = in_journal
            || tx
                .prepare_cached("SELECT 1 FROM outbox WHERE peer = ?1 AND seq = ?2")?
                .query_row((&m.peer, sql_u64(m.seq, "outbox seq")), |_| Ok(()))
                .optional()?
                .is_some();
        if in_table {
            return Ok(Some(format!(
                "outbox row {}/{} exists already (the outbox table's key)",
                m.peer, m.seq
            )));
        }
    }
    Ok(None)
}

impl Drop for Store {
    /// A clean close folds the journal (one transaction, not a commit), so a store closed
    /// cleanly has every commit in its tables, as before format 4. A failure is logged and
    /// changes nothing: the next open recovers through the journal.
    fn drop(&mut self) {
        if self.poisoned || self.journal.is_empty() {
            return;
        }
        let newest = self.journal.last().expect("a journal to fold");
        let counters =
            schema::counters_body(newest.turns_committed, newest.commits, newest.batch.now_ms);
        let mut log = self.turn_log.clone();
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                fold(&tx, &self.journal, &mut log, self.options.turn_log_max)?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = ?2",
                    (
                        schema::seal_meta(schema::META_COUNTERS, &counters),
                        schema::META_COUNTERS,
                    ),
                )?;
                tx.commit()
            });
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "folding the journal at close failed; it stays for the next open");
        }
    }
}

/// What a commit wrote, for [`Store`]'s bookkeeping once it is durable.
enum Written {
    /// One journal row holding this batch.
    Journal(Box<Batch>),
    /// The tables (the journal folded and emptied); the turn log's rows now.
    Direct(TurnLog),
}

/// Applies every journaled batch to the tables, in order, and empties the journal (inside
/// the caller's transaction). `log` follows the turn-log rows.
fn fold(
    tx: &rusqlite::Transaction<'_>,
    journal: &[JournalRecord],
    log: &mut TurnLog,
    turn_log_max: u32,
) -> rusqlite::Result<()> {
    if journal.is_empty() {
        return Ok(());
    }
    for rec in journal {
        apply(tx, &rec.batch, log, turn_log_max)?;
    }
    tx.prepare_cached("DELETE FROM journal")?.execute([])?;
    Ok(())
}

/// Applies one batch to the tables (inside the caller's transaction), in this order: the
/// root (upsert), table writes (upsert) and deletes, outbox appends, acks and forgets, peer
/// counters, timers, clients, groups, turn-log trimming and inserts. Not the counters.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    batch: &Batch,
    log: &mut TurnLog,
    turn_log_max: u32,
) -> rusqlite::Result<()> {
    let plan = log.plan(turn_log_max, &batch.turn_log);
    if let Some(root) = &batch.root {
        tx.prepare_cached(
            "INSERT INTO root (id, value) VALUES (0, ?1)
             ON CONFLICT (id) DO UPDATE SET value = excluded.value",
        )?
        .execute([seal_record(&Record::root(), root)])?;
    }
    if !batch.table_writes.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT INTO kv (tbl, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM kv WHERE tbl = ?1 AND key = ?2")?;
        for w in &batch.table_writes {
            match &w.value {
                Some(v) => put.execute((
                    &w.table,
                    &w.key,
                    seal_record(&Record::kv(&w.table, &w.key), v),
                ))?,
                None => del.execute((&w.table, &w.key))?,
            };
        }
    }
    if !batch.outbox_appends.is_empty() {
        let mut append = tx.prepare_cached(
            "INSERT INTO outbox (peer, seq, created_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for m in &batch.outbox_appends {
            append.execute((
                &m.peer,
                sql_u64(m.seq, "outbox seq"),
                sql_u64(m.created_ms, "outbox created_ms"),
                seal_record(&Record::outbox(&m.peer, m.seq, m.created_ms), &m.payload),
            ))?;
        }
    }
    if !batch.outbox_acks.is_empty() {
        let mut ack = tx.prepare_cached("DELETE FROM outbox WHERE peer = ?1 AND seq <= ?2")?;
        for a in &batch.outbox_acks {
            ack.execute((&a.peer, sql_u64(a.up_to, "outbox ack up_to")))?;
        }
    }
    if !batch.outbox_forget.is_empty() {
        let mut forget = tx.prepare_cached("DELETE FROM outbox WHERE peer = ?1")?;
        for peer in &batch.outbox_forget {
            forget.execute([peer])?;
        }
    }
    if !batch.peers.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT INTO peers (peer, record) VALUES (?1, ?2)
             ON CONFLICT (peer) DO UPDATE SET record = excluded.record",
        )?;
        for p in &batch.peers {
            put.execute((
                &p.peer,
                seal_record(&Record::peer(&p.peer), &schema::peer_body(p)),
            ))?;
        }
    }
    if !batch.timers.is_empty() {
        let mut set = tx.prepare_cached(
            "INSERT INTO timers (name, due_ms, payload) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET due_ms = excluded.due_ms, payload = excluded.payload",
        )?;
        let mut cancel = tx.prepare_cached("DELETE FROM timers WHERE name = ?1")?;
        for t in &batch.timers {
            match t {
                TimerChange::Set {
                    name,
                    due_ms,
                    payload,
                } => set.execute((
                    name,
                    sql_u64(*due_ms, "timer due_ms"),
                    seal_record(&Record::timer(name, *due_ms), payload),
                ))?,
                TimerChange::Cancel { name } => cancel.execute([name])?,
            };
        }
    }
    if !batch.clients.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT INTO clients (client, request_no, updated_ms, reply) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (client) DO UPDATE SET request_no = excluded.request_no,
                 updated_ms = excluded.updated_ms, reply = excluded.reply",
        )?;
        let mut evict = tx.prepare_cached("DELETE FROM clients WHERE client = ?1")?;
        for c in &batch.clients {
            match c {
                ClientChange::Put(row) => put.execute((
                    &row.client[..],
                    sql_u64(row.request_no, "client request_no"),
                    sql_u64(row.updated_ms, "client updated_ms"),
                    seal_record(
                        &Record::client(&row.client, row.request_no, row.updated_ms),
                        &row.reply,
                    ),
                ))?,
                ClientChange::Evict { client } => evict.execute([&client[..]])?,
            };
        }
    }
    if !batch.groups.is_empty() {
        let mut put = tx.prepare_cached(
            "INSERT INTO fuse_groups (group_id, record) VALUES (?1, ?2)
             ON CONFLICT (group_id) DO UPDATE SET record = excluded.record",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM fuse_groups WHERE group_id = ?1")?;
        for g in &batch.groups {
            match g {
                GroupChange::Put(row) => put.execute((
                    &row.group[..],
                    seal_record(&Record::group(&row.group), &row.record),
                ))?,
                GroupChange::Delete { group } => del.execute([&group[..]])?,
            };
        }
    }
    if let Some(newest_dropped) = plan.newest_dropped {
        tx.prepare_cached("DELETE FROM turn_log WHERE turn <= ?1")?
            .execute([sql_u64(newest_dropped, "turn number")])?;
    }
    if !plan.added.is_empty() {
        let mut insert =
            tx.prepare_cached("INSERT INTO turn_log (turn, turns, entries) VALUES (?1, ?2, ?3)")?;
        for chunk in batch.turn_log.chunks(TURN_LOG_ROW_ENTRIES_MAX) {
            insert.execute((
                sql_u64(chunk[0].turn, "turn number"),
                chunk.len() as i64,
                seal_record(
                    &Record::turn_log(chunk[0].turn, chunk.len() as u64),
                    &codec::encode(chunk),
                ),
            ))?;
        }
    }
    log.apply(plan);
    Ok(())
}

/// What [`open_checked`] hands back: the connection, what it recovered (journal included),
/// the turn-log rows, the application identity, and the journal (not folded).
type Opened = (
    Connection,
    Recovered,
    std::collections::VecDeque<(u64, u64)>,
    Option<AppIdentity>,
    Vec<JournalRecord>,
);

/// The part of [`Store::open_with`] that opens the connection: classify, create or migrate,
/// recover, and check the recovered commits against the lock file's witness. Any error
/// leaves the files as they were (the connection closes without a checkpoint).
fn open_checked(
    path: &Path,
    process_id: &str,
    options: &StoreOptions,
    witnessed: Option<WitnessRecord>,
    lock_file: &Path,
    app: Option<&AppIdentity>,
) -> Result<Opened, OpenError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // The owner writes through the `ken-wal` shim (one write system call per commit
    // instead of two per page: see `vfs`); if it cannot register, the default VFS.
    let shim = crate::vfs::register().is_ok();
    let mut conn = match crate::vfs::register() {
        Ok(()) => Connection::open_with_flags_and_vfs(path, flags, crate::vfs::VFS_NAME),
        Err(rc) => {
            tracing::warn!(
                rc,
                "the ken-wal VFS did not register; using SQLite's default"
            );
            Connection::open_with_flags(path, flags)
        }
    }
    .map_err(sqlite_open_err(path))?;
    // Until the store is accepted, closing the connection must not checkpoint (and so
    // rewrite or delete the WAL): a refused store stays exactly as it was found.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sqlite_open_err(path))?;
    conn.busy_timeout(OWNER_BUSY_TIMEOUT)
        .map_err(sqlite_open_err(path))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);

    let found = classify(&conn, path)?;
    if let Found::Store(meta) = &found {
        if meta.process_id != process_id {
            return Err(OpenError::WrongProcess {
                expected: process_id.to_string(),
                found: meta.process_id.clone(),
            });
        }
        if let (Some(want), Some(have)) = (app, &meta.app) {
            check_app(path, want, have)?;
        }
    }
    if let (Found::Empty, Some(w)) = (&found, witnessed) {
        if w.commits > 0 {
            // A database with no tables where the lock file witnessed commits: the
            // database (or its only copy of the data, the -wal) was deleted. Creating a
            // new store here would silently start over.
            return Err(OpenError::HistoryLost {
                path: path.to_path_buf(),
                lock_path: lock_file.to_path_buf(),
                incarnation: w.incarnation,
                commits: 0,
                witnessed: w.commits,
            });
        }
    }
    let created = matches!(found, Found::Empty);
    if let (true, Some(size)) = (created, options.page_size) {
        if !(512..=65536).contains(&size) || !size.is_power_of_two() {
            return Err(OpenError::Sqlite {
                path: path.to_path_buf(),
                detail: format!(
                    "page size {size} is not a power of two from 512 to 65536: choose one of \
                     512, 1024, 2048, 4096 (the default), ..., 65536"
                ),
            });
        }
        // Before the first page is written: afterwards the size is fixed (in WAL mode).
        conn.pragma_update(None, "page_size", size)
            .map_err(sqlite_open_err(path))?;
    }
    if created && shim && options.page_checksums {
        // Before the first page is written: afterwards the layout is fixed.
        crate::vfs::reserve_checksum_bytes(&conn).map_err(sqlite_open_err(path))?;
    }
    configure_owner(&conn, path, options)?;
    if created {
        create(&mut conn, process_id, app).map_err(sqlite_open_err(path))?;
        fsync_dir(path)?;
        tracing::info!(path = %path.display(), process_id, "created store");
    }
    if let Found::Migratable(from) = found {
        migrate(&mut conn, path, process_id, from)?;
    }
    let (recovered, turn_log, journal) = recover(&mut conn, path, created)?;
    if recovered.process_id != process_id {
        return Err(OpenError::WrongProcess {
            expected: process_id.to_string(),
            found: recovered.process_id,
        });
    }
    if let Some(w) = witnessed {
        if w.incarnation == recovered.incarnation && recovered.commits < w.commits {
            return Err(OpenError::HistoryLost {
                path: path.to_path_buf(),
                lock_path: lock_file.to_path_buf(),
                incarnation: w.incarnation,
                commits: recovered.commits,
                witnessed: w.commits,
            });
        }
        if w.incarnation != 0 && w.incarnation != recovered.incarnation && !created {
            tracing::warn!(
                path = %path.display(),
                lock_incarnation = w.incarnation,
                store_incarnation = recovered.incarnation,
                "the lock file witnessed another store (another incarnation); it now \
                 witnesses this one"
            );
        }
    }
    // Accepted. The journal stays as found (what recovery hands back includes it; the next
    // direct commit folds it), unless the store adopts an application identity now: that
    // rewrites every outbox row of the table, so the journal is folded first.
    let have_app = meta_app(&conn, path)?;
    let (mut recovered, turn_log, journal) =
        if journal.is_empty() || app.is_none() || have_app.is_some() {
            (recovered, turn_log, journal)
        } else {
            let (mut again, turn_log, rest) =
                fold_at_open(&mut conn, path, options, &journal, turn_log)?;
            assert!(rest.is_empty(), "the fold emptied the journal");
            again.created = created;
            (again, turn_log, rest)
        };
    let stored_app = match (app, have_app) {
        (_, Some(have)) => {
            if let Some(want) = app {
                check_app(path, want, &have)?;
            }
            Some(have)
        }
        (Some(want), None) => {
            let adopted = AppIdentity {
                name: want.name.clone(),
                schema_version: 1,
            };
            adopt(&mut conn, path, &adopted, &mut recovered)?;
            Some(adopted)
        }
        (None, None) => None,
    };
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
        .map_err(sqlite_open_err(path))?;
    Ok((conn, recovered, turn_log, stored_app, journal))
}

/// Refuses a store of another application or of a newer schema version.
fn check_app(path: &Path, want: &AppIdentity, have: &AppIdentity) -> Result<(), OpenError> {
    if have.name != want.name {
        return Err(OpenError::WrongApp {
            path: path.to_path_buf(),
            expected: want.name.clone(),
            found: have.name.clone(),
        });
    }
    if have.schema_version > want.schema_version {
        return Err(OpenError::NewerSchema {
            path: path.to_path_buf(),
            app: have.name.clone(),
            found: have.schema_version,
            supported: want.schema_version,
        });
    }
    Ok(())
}

/// The `app` meta row, if any.
fn meta_app(conn: &Connection, path: &Path) -> Result<Option<AppIdentity>, OpenError> {
    let rows = read_meta_rows(conn).map_err(sqlite_open_err(path))?;
    Ok(meta_or_open_error(path, &rows)?.app)
}

/// Adopts a store written before application identities: the `app` row, and the version
/// envelope around every outbox payload (they were all written by schema version 1), in one
/// transaction. `recovered`'s outbox is updated to match.
fn adopt(
    conn: &mut Connection,
    path: &Path,
    app: &AppIdentity,
    recovered: &mut Recovered,
) -> Result<(), OpenError> {
    let sq = sqlite_open_err(path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&sq)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        (
            schema::META_APP,
            schema::seal_meta(schema::META_APP, &schema::app_body(app)),
        ),
    )
    .map_err(&sq)?;
    for row in &mut recovered.outbox {
        row.payload = crate::wrap_payload(app.schema_version, &row.payload);
        let changed = tx
            .prepare_cached("UPDATE outbox SET payload = ?1 WHERE peer = ?2 AND seq = ?3")
            .and_then(|mut s| {
                s.execute((
                    seal_record(
                        &Record::outbox(&row.peer, row.seq, row.created_ms),
                        &row.payload,
                    ),
                    &row.peer,
                    sql_u64(row.seq, "outbox seq"),
                ))
            })
            .map_err(&sq)?;
        assert_eq!(changed, 1, "the recovered outbox row exists");
    }
    tx.commit().map_err(&sq)?;
    tracing::info!(
        path = %path.display(),
        app = %app.name,
        schema_version = app.schema_version,
        outbox_rows = recovered.outbox.len(),
        "adopted a store written before application identities: recorded its application \
         (schema version 1) and the version envelope of its outbox"
    );
    Ok(())
}

/// Owner pragmas. `journal_mode=WAL` is persistent (written in the file header); the others
/// hold for this connection only.
fn configure_owner(
    conn: &Connection,
    path: &Path,
    options: &StoreOptions,
) -> Result<(), OpenError> {
    let sq = sqlite_open_err(path);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(&sq)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Sqlite {
            path: path.to_path_buf(),
            detail: format!("SQLite refused journal_mode=WAL (the mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&sq)?;
    conn.pragma_update(None, "locking_mode", "NORMAL")
        .map_err(&sq)?;
    // A WAL a large batch grew is cut back to its preallocated size when it restarts: a
    // restart reads the whole file (`files::examine`).
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .map_err(&sq)?;
    let limit = crate::vfs::wal_preallocate_bytes(usize::try_from(page_size).unwrap_or(4096));
    conn.pragma_update(None, "journal_size_limit", limit as i64)
        .map_err(&sq)?;
    // A folded journal row's bytes are zeroed where that costs no extra write (its page is
    // written anyway), so the file does not keep stale copies of batches.
    conn.pragma_update(None, "secure_delete", "FAST")
        .map_err(&sq)?;
    if let Some(pages) = options.max_page_count {
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(&sq)?;
    }
    Ok(())
}

/// Creates the schema and `meta` rows in one transaction.
fn create(
    conn: &mut Connection,
    process_id: &str,
    app: Option<&AppIdentity>,
) -> rusqlite::Result<()> {
    let incarnation: u64 = rand::thread_rng().gen_range(1..=u64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(schema::SCHEMA_SQL)?;
    {
        let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
        let rows: [(&str, Vec<u8>); 6] = [
            (schema::META_MAGIC, schema::MAGIC.to_vec()),
            (
                schema::META_FORMAT_VERSION,
                FORMAT_VERSION.to_le_bytes().to_vec(),
            ),
            (schema::META_PROCESS_ID, process_id.as_bytes().to_vec()),
            (schema::META_INCARNATION, incarnation.to_le_bytes().to_vec()),
            (schema::META_CREATED_MS, now_ms().to_le_bytes().to_vec()),
            (
                schema::META_COUNTERS,
                schema::counters_body(0, 0, 0).to_vec(),
            ),
        ];
        for (key, body) in rows {
            put.execute((key, schema::seal_meta(key, &body)))?;
        }
        if let Some(app) = app {
            put.execute((
                schema::META_APP,
                schema::seal_meta(schema::META_APP, &schema::app_body(app)),
            ))?;
        }
    }
    tx.commit()
}

/// One table of the format-2 migration: its key columns (the order of the walk), the other
/// columns its record covers, and the sealed column.
struct MigrateTable {
    table: &'static str,
    keys: &'static [&'static str],
    extra: &'static [&'static str],
    sealed: &'static str,
}

const MIGRATE_TABLES: [MigrateTable; 8] = [
    MigrateTable {
        table: "root",
        keys: &["id"],
        extra: &[],
        sealed: "value",
    },
    MigrateTable {
        table: "kv",
        keys: &["tbl", "key"],
        extra: &[],
        sealed: "value",
    },
    MigrateTable {
        table: "outbox",
        keys: &["peer", "seq"],
        extra: &["created_ms"],
        sealed: "payload",
    },
    MigrateTable {
        table: "peers",
        keys: &["peer"],
        extra: &[],
        sealed: "record",
    },
    MigrateTable {
        table: "timers",
        keys: &["name"],
        extra: &["due_ms"],
        sealed: "payload",
    },
    MigrateTable {
        table: "clients",
        keys: &["client"],
        extra: &["request_no", "updated_ms"],
        sealed: "reply",
    },
    MigrateTable {
        table: "fuse_groups",
        keys: &["group_id"],
        extra: &[],
        sealed: "record",
    },
    MigrateTable {
        table: "turn_log",
        keys: &["turn"],
        extra: &["turns"],
        sealed: "entries",
    },
];

/// Rows the migration reads per query.
const MIGRATE_PAGE_ROWS: i64 = 512;

/// Migrates a format-2 store to this build's format in one transaction: every record is
/// checked with the version-1 envelope and sealed again with its identity
/// ([`codec::seal_record`]), and `format_version` is set. A damaged record aborts it with
/// `Corrupted` (nothing written); a crash leaves format 2, migrated again at the next open.
fn migrate(
    conn: &mut Connection,
    path: &Path,
    process_id: &str,
    from: u32,
) -> Result<(), OpenError> {
    use rusqlite::types::Value;
    let sq = sqlite_open_err(path);
    let started = std::time::Instant::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&sq)?;
    let meta = read_meta_rows(&tx).map_err(&sq)?;
    schema::decode_meta_as(&meta, from).map_err(|p| match p {
        schema::MetaProblem::Corrupted(c) => OpenError::Corrupted(c),
        other => OpenError::Sqlite {
            path: path.to_path_buf(),
            detail: format!("format-{from} meta rows changed while migrating: {other:?}"),
        },
    })?;
    let mut rows = 0u64;
    if from == schema::MIGRATES_FROM {
        for (key, value) in &meta {
            if key == schema::META_MAGIC || key == schema::META_FORMAT_VERSION {
                continue;
            }
            let body = codec::unseal("meta", key, value).map_err(OpenError::Corrupted)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = ?2",
                (schema::seal_meta(key, body), key),
            )
            .map_err(&sq)?;
            rows += 1;
        }
        let int = |v: &Value, t: &str, k: &str, c: &str| match v {
            Value::Integer(i) => schema::u64_from_sql(*i, t, k, c).map_err(OpenError::Corrupted),
            _ => Err(OpenError::Corrupted(Corrupted {
                table: t.to_string(),
                key: k.to_string(),
                detail: format!("column `{c}` is not an integer"),
            })),
        };
        for m in &MIGRATE_TABLES {
            let cols: Vec<&str> = m.keys.iter().chain(m.extra).copied().collect();
            let key_list = m.keys.join(", ");
            let params: Vec<String> = (1..=m.keys.len()).map(|i| format!("?{i}")).collect();
            let first = format!(
                "SELECT {}, {} FROM {} ORDER BY {key_list} LIMIT {MIGRATE_PAGE_ROWS}",
                cols.join(", "),
                m.sealed,
                m.table
            );
            let next = format!(
            "SELECT {}, {} FROM {} WHERE ({key_list}) > ({}) ORDER BY {key_list} LIMIT {MIGRATE_PAGE_ROWS}",
            cols.join(", "),
            m.sealed,
            m.table,
            params.join(", ")
        );
            let update = format!(
                "UPDATE {} SET {} = ?1 WHERE {}",
                m.table,
                m.sealed,
                m.keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{k} = ?{}", i + 2))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            let mut after: Option<Vec<Value>> = None;
            loop {
                let page: Vec<Vec<Value>> = {
                    let mut stmt = tx
                        .prepare_cached(if after.is_some() { &next } else { &first })
                        .map_err(&sq)?;
                    let n = cols.len() + 1;
                    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Vec<Value>> {
                        (0..n).map(|i| r.get::<_, Value>(i)).collect()
                    };
                    let got = match &after {
                        None => stmt.query_map([], map),
                        Some(a) => stmt.query_map(rusqlite::params_from_iter(a.iter()), map),
                    }
                    .map_err(&sq)?;
                    got.collect::<rusqlite::Result<_>>().map_err(&sq)?
                };
                for row in &page {
                    let text = |i: usize| match &row[i] {
                        Value::Text(t) => t.clone(),
                        other => format!("{other:?}"),
                    };
                    let blob = |i: usize| match &row[i] {
                        Value::Blob(b) => b.clone(),
                        Value::Text(t) => t.as_bytes().to_vec(),
                        _ => Vec::new(),
                    };
                    let sealed = match &row[cols.len()] {
                        Value::Blob(b) => b.as_slice(),
                        _ => &[][..],
                    };
                    let (name, key): (String, String) = match m.table {
                        "kv" => (
                            schema::kv_table_name(&text(0)),
                            codec::printable_key(&blob(1)),
                        ),
                        "outbox" => ("outbox".into(), format!("{}/{:?}", text(0), row[1])),
                        "clients" | "fuse_groups" => (m.table.into(), schema::hex_key(&blob(0))),
                        "root" => ("root".into(), schema::ROOT_KEY.into()),
                        "turn_log" => ("turn_log".into(), format!("{:?}", row[0])),
                        _ => (m.table.into(), text(0)),
                    };
                    let body = codec::unseal(&name, &key, sealed).map_err(OpenError::Corrupted)?;
                    let (t0, b0, b1) = (text(0), blob(0), blob(1));
                    let resealed = match m.table {
                        "root" => codec::seal_record(&Record::root(), body),
                        "kv" => codec::seal_record(&Record::kv(&t0, &b1), body),
                        "outbox" => codec::seal_record(
                            &Record::outbox(
                                &t0,
                                int(&row[1], &name, &key, "seq")?,
                                int(&row[2], &name, &key, "created_ms")?,
                            ),
                            body,
                        ),
                        "peers" => codec::seal_record(&Record::peer(&t0), body),
                        "timers" => codec::seal_record(
                            &Record::timer(&t0, int(&row[1], &name, &key, "due_ms")?),
                            body,
                        ),
                        "clients" => codec::seal_record(
                            &Record::client(
                                &b0,
                                int(&row[1], &name, &key, "request_no")?,
                                int(&row[2], &name, &key, "updated_ms")?,
                            ),
                            body,
                        ),
                        "fuse_groups" => codec::seal_record(&Record::group(&b0), body),
                        "turn_log" => codec::seal_record(
                            &Record::turn_log(
                                int(&row[0], &name, &key, "turn")?,
                                int(&row[1], &name, &key, "turns")?,
                            ),
                            body,
                        ),
                        other => unreachable!("no migration for table {other}"),
                    };
                    let mut p: Vec<Value> = vec![Value::Blob(resealed)];
                    p.extend(row[..m.keys.len()].iter().cloned());
                    let changed = tx
                        .prepare_cached(&update)
                        .and_then(|mut s| s.execute(rusqlite::params_from_iter(p.iter())))
                        .map_err(&sq)?;
                    assert_eq!(changed, 1, "the migrated row exists");
                    rows += 1;
                }
                let full = page.len() as i64 == MIGRATE_PAGE_ROWS;
                after = page.last().map(|r| r[..m.keys.len()].to_vec());
                if !full {
                    break;
                }
            }
        }
    }
    // Format 3 to 4: the empty journal.
    tx.execute_batch(schema::JOURNAL_SQL).map_err(&sq)?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = ?2",
        (
            codec::seal(&FORMAT_VERSION.to_le_bytes()),
            schema::META_FORMAT_VERSION,
        ),
    )
    .map_err(&sq)?;
    tx.commit().map_err(&sq)?;
    tracing::info!(
        path = %path.display(),
        process_id,
        rows,
        ms = started.elapsed().as_millis() as u64,
        from,
        to = FORMAT_VERSION,
        "migrated store format"
    );
    Ok(())
}

/// What [`recover`] hands back: what it recovered from the tables with the journal applied
/// over them (the state as of the newest commit), the `turn_log` table's rows, and the
/// journal.
type RecoveredTables = (
    Recovered,
    std::collections::VecDeque<(u64, u64)>,
    Vec<JournalRecord>,
);

/// Loads everything but table rows, and the journal, in one read transaction, and applies
/// the journal over what the tables hold (as a `Reader` merges it).
fn recover(
    conn: &mut Connection,
    path: &Path,
    created: bool,
) -> Result<RecoveredTables, OpenError> {
    let sq = sqlite_open_err(path);
    let tx = conn.transaction().map_err(&sq)?;
    let meta = meta_or_open_error(path, &read_meta_rows(&tx).map_err(&sq)?)?;
    let journal = crate::journal::load(&tx, meta.commits, meta.turns_committed)
        .map_err(|e| read_to_open(path, e))?;
    let root: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM root WHERE id = 0", [], |r| r.get(0))
        .optional()
        .map_err(&sq)?;
    let root = match root {
        Some(bytes) => Some(
            codec::unseal_record(&Record::root(), "root", schema::ROOT_KEY, &bytes)
                .map_err(OpenError::Corrupted)?
                .to_vec(),
        ),
        None => None,
    };
    let peers = query_decode(
        &tx,
        crate::access::SQL_PEERS,
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
        |(peer, record)| schema::decode_peer(peer, &record),
    )
    .map_err(|e| read_to_open(path, e))?;
    let outbox = query_decode(
        &tx,
        "SELECT peer, seq, created_ms, payload FROM outbox ORDER BY peer, seq",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        },
        |(peer, seq, created_ms, payload)| schema::decode_outbox(peer, seq, created_ms, &payload),
    )
    .map_err(|e| read_to_open(path, e))?;
    let timers = crate::access::timers(&tx).map_err(|e| read_to_open(path, e))?;
    // Every reply is checked, one row at a time, but none is kept: the reply cache reads a
    // reply from the store when a retry needs it (`Reader::client`), so memory does not
    // grow with reply sizes.
    let clients = crate::access::clients_without_replies(&tx).map_err(|e| read_to_open(path, e))?;
    let groups = query_decode(
        &tx,
        crate::access::SQL_GROUPS,
        [],
        |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
        |(group, record)| schema::decode_group(&group, &record),
    )
    .map_err(|e| read_to_open(path, e))?;
    let turn_log = {
        let mut stmt = tx
            .prepare("SELECT turn, turns FROM turn_log ORDER BY turn")
            .map_err(&sq)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&sq)?;
        let mut log = std::collections::VecDeque::new();
        for row in rows {
            let (turn, turns) = row.map_err(&sq)?;
            let key = turn.to_string();
            let first = schema::u64_from_sql(turn, "turn_log", &key, "turn")
                .map_err(OpenError::Corrupted)?;
            let count = schema::u64_from_sql(turns, "turn_log", &key, "turns")
                .map_err(OpenError::Corrupted)?;
            log.push_back((first, count));
        }
        log
    };
    tx.finish().map_err(&sq)?;
    let (turns_committed, commits) = journal
        .last()
        .map_or((meta.turns_committed, meta.commits), |r| {
            (r.turns_committed, r.commits)
        });
    let mut recovered = Recovered {
        process_id: meta.process_id,
        incarnation: meta.incarnation,
        created,
        turns_committed,
        commits,
        root,
        peers,
        outbox,
        timers,
        clients,
        groups,
    };
    if !journal.is_empty() {
        crate::journal::Overlay::build(&journal).apply_to(&mut recovered);
    }
    Ok((recovered, turn_log, journal))
}

/// Folds the journal found at an open that adopts an application identity (which rewrites
/// the table's outbox rows) into the tables, in one transaction that is not a
/// commit (the counters become the newest journal row's, as they already were), then
/// recovers again from the tables.
fn fold_at_open(
    conn: &mut Connection,
    path: &Path,
    options: &StoreOptions,
    journal: &[JournalRecord],
    turn_log: std::collections::VecDeque<(u64, u64)>,
) -> Result<RecoveredTables, OpenError> {
    let sq = sqlite_open_err(path);
    let newest = journal.last().expect("a journal to fold");
    let mut log = TurnLog {
        entries: turn_log.iter().map(|(_, n)| n).sum(),
        rows: turn_log,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&sq)?;
    fold(&tx, journal, &mut log, options.turn_log_max).map_err(&sq)?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = ?2",
        (
            schema::seal_meta(
                schema::META_COUNTERS,
                &schema::counters_body(newest.turns_committed, newest.commits, newest.batch.now_ms),
            ),
            schema::META_COUNTERS,
        ),
    )
    .map_err(&sq)?;
    tx.commit().map_err(&sq)?;
    tracing::info!(path = %path.display(), commits = journal.len(), "folded the journal at open");
    recover(conn, path, false)
}

fn read_to_open(path: &Path, e: ReadError) -> OpenError {
    match e {
        ReadError::Corrupted(c) => OpenError::Corrupted(c),
        ReadError::Damaged { detail } => OpenError::Damaged {
            path: path.to_path_buf(),
            detail: format!("SQLite finds the database file malformed ({detail})"),
        },
        other => OpenError::Sqlite {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} `{name}` must be 1..={MAX_NAME_BYTES} bytes"
        ));
    }
    Ok(())
}

fn check_body(body: &[u8], what: &str) -> Result<(), String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "{what} is {} bytes, over the {MAX_BODY_BYTES}-byte limit",
            body.len()
        ));
    }
    Ok(())
}

fn check_u64(value: u64, what: &str) -> Result<(), String> {
    if value > i64::MAX as u64 {
        return Err(format!(
            "{what} = {value} does not fit the store's INTEGER columns (max i64::MAX)"
        ));
    }
    Ok(())
}

/// Asserts the batch's preconditions before anything is written.
fn check_batch(batch: &Batch) {
    if let Err(problem) = batch.check() {
        panic!("{problem}");
    }
}

impl Batch {
    /// The rows the batch carries: writes, appends, changes and turn-log entries.
    pub fn rows(&self) -> usize {
        self.table_writes.len()
            + self.outbox_appends.len()
            + self.outbox_acks.len()
            + self.outbox_forget.len()
            + self.peers.len()
            + self.timers.len()
            + self.clients.len()
            + self.groups.len()
            + self.turn_log.len()
    }

    /// Checks the preconditions [`Store::commit`] asserts (row count, names, key and body
    /// sizes, outbox sequence numbers contiguous per peer, peer counters, turn-log order,
    /// integers that fit the store's columns) and returns the first one broken, as one line.
    /// For a batch that did not come from this process's own engine (a standby's replica
    /// applies batches received over the network): check it, and refuse it on `Err`, rather
    /// than let [`Store::commit`] panic.
    pub fn check(&self) -> Result<(), String> {
        let batch = self;
        let rows = batch.rows();
        if rows > MAX_BATCH_ROWS {
            return Err(format!("batch of {rows} rows, over {MAX_BATCH_ROWS}"));
        }
        if let Some(root) = &batch.root {
            check_body(root, "root state")?;
        }
        for w in &batch.table_writes {
            check_name(&w.table, "table name")?;
            if w.key.len() > MAX_KEY_BYTES {
                return Err(format!("table key over {MAX_KEY_BYTES} bytes"));
            }
            if let Some(v) = &w.value {
                check_body(v, "table value")?;
            }
        }
        let mut last_seq: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for m in &batch.outbox_appends {
            check_name(&m.peer, "peer id")?;
            check_body(&m.payload, "outbox payload")?;
            if m.seq == 0 {
                return Err(format!(
                    "outbox seq to `{}` is 0 (the first message is 1)",
                    m.peer
                ));
            }
            check_u64(m.seq, "outbox seq")?;
            check_u64(m.created_ms, "outbox created_ms")?;
            match last_seq.get_mut(m.peer.as_str()) {
                Some(last) => {
                    if m.seq != *last + 1 {
                        return Err(format!(
                            "outbox appends to `{}` are not contiguous within the batch",
                            m.peer
                        ));
                    }
                    *last = m.seq;
                }
                None => {
                    last_seq.insert(&m.peer, m.seq);
                }
            }
        }
        for a in &batch.outbox_acks {
            check_name(&a.peer, "peer id")?;
            check_u64(a.up_to, "outbox ack up_to")?;
        }
        for p in &batch.outbox_forget {
            check_name(p, "peer id")?;
        }
        for p in &batch.peers {
            check_name(&p.peer, "peer id")?;
            if p.acked >= p.next_seq {
                return Err(format!(
                    "peer `{}`: acked {} must be below next_seq {}",
                    p.peer, p.acked, p.next_seq
                ));
            }
            if p.forgotten >= p.next_seq {
                return Err(format!(
                    "peer `{}`: forgotten {} must be below next_seq {}",
                    p.peer, p.forgotten, p.next_seq
                ));
            }
            check_u64(p.next_seq, "peer next_seq")?;
        }
        for t in &batch.timers {
            match t {
                TimerChange::Set {
                    name,
                    due_ms,
                    payload,
                } => {
                    check_name(name, "timer name")?;
                    check_body(payload, "timer payload")?;
                    check_u64(*due_ms, "timer due_ms")?;
                }
                TimerChange::Cancel { name } => check_name(name, "timer name")?,
            }
        }
        for c in &batch.clients {
            if let ClientChange::Put(row) = c {
                check_body(&row.reply, "client reply")?;
                check_u64(row.request_no, "client request_no")?;
                check_u64(row.updated_ms, "client updated_ms")?;
            }
        }
        for g in &batch.groups {
            if let GroupChange::Put(row) = g {
                check_body(&row.record, "group record")?;
            }
        }
        for pair in batch.turn_log.windows(2) {
            if pair[0].turn >= pair[1].turn {
                return Err("turn-log entries must increase by turn".to_string());
            }
        }
        for e in &batch.turn_log {
            check_u64(e.turn, "turn number")?;
        }
        Ok(())
    }
}
