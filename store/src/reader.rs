//! Read-only inspection of a store, safe while its owner runs (`ken inspect`).
//!
//! Invariants:
//! - A [`Reader`] opens the file with `SQLITE_OPEN_READONLY`: it never creates the store,
//!   never writes a page of it, and never takes the owner lock.
//! - Every method runs at most one SQL query per page of results, in autocommit mode, so each
//!   query is its own short read transaction and the statement is finished before the method
//!   returns: no read transaction outlives a call, so the owner's WAL checkpoints are never
//!   starved and its commits never wait for a reader. Scans are paginated by key.
//! - A record whose envelope fails its check is reported as [`ReadError::Corrupted`] (or a
//!   [`Problem`] from [`Reader::verify`]) and never returned as data.
//!
//! Opening a WAL database read-only needs its `-wal` and `-shm` files. When the owner runs
//! (or was killed) they exist and SQLite uses them. When the owner closed cleanly, SQLite
//! checkpointed and deleted both; SQLite (3.22+) then lets the read-only connection create
//! them again, empty, if the directory is writable. If they are missing and can not be
//! created (a read-only directory: SQLite answers `SQLITE_READONLY` or `SQLITE_CANTOPEN`),
//! the database file alone is complete (a clean close checkpointed everything into it), so
//! the reader reopens it with the `immutable=1` URI parameter, which reads the file without
//! WAL or locks. That fallback is only taken when no `-wal` file exists, that is when no
//! owner has opened the store since it closed; such a reader sees the store as it was when
//! opened.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::access::{
    classify, lock_holder, lock_path, query_decode, read_meta_rows, Found, SQL_CLIENTS, SQL_GROUPS,
    SQL_PEERS,
};
use crate::codec;
use crate::error::{OpenError, ReadError};
use crate::files::{self, FileProblem};
use crate::journal::{self, Overlay};
use crate::schema::{self, MetaProblem};
use crate::wal::WalState;
use crate::witness::{self, WitnessRecord};
use crate::{Batch, ClientRow, Corrupted, GroupRow, OutboxRow, PeerRow, TimerRow, TurnLogEntry};

/// How long a reader query waits on a lock held briefly by the owner or by another reader
/// running WAL recovery.
pub const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The most rows one scan ([`Reader::table_scan`], [`Reader::outbox`],
/// [`Reader::turn_log`]) returns; a larger `limit` is lowered to this.
pub const MAX_SCAN_ROWS: u32 = 10_000;

/// Rows [`Reader::verify`] checks per query.
pub const VERIFY_PAGE_ROWS: u32 = 512;

/// [`Reader::verify`] stops listing problems after this many (and says so).
pub const VERIFY_MAX_PROBLEMS: usize = 1000;

/// Rows of `PRAGMA integrity_check` output [`Reader::verify`] asks for.
pub const INTEGRITY_CHECK_MAX_ERRORS: u32 = 100;

/// One table row as returned by [`Reader::table_scan`]: (key, value).
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// (peer, outbox rows, min seq, max seq, the peer's sealed record if it has one).
type PeerOutboxSummary = (String, i64, i64, i64, Option<Vec<u8>>);

/// A read-only handle, safe to use while the owner runs. Never takes the owner lock, and
/// every method is one query (one read transaction) per page.
#[derive(Debug)]
pub struct Reader {
    pub(crate) conn: Connection,
    path: PathBuf,
    /// The journal's overlay as last read, keyed by the journal's (rows, first seq, last
    /// seq): journal rows are never changed, only appended and deleted all together, so an
    /// equal key is the same journal.
    overlay: RefCell<Option<(JournalKey, Arc<Overlay>)>>,
}

/// An outbox row keyed by (peer, seq), for merging.
type KeyedOutboxRow = ((String, u64), OutboxRow);

/// (rows, first seq, last seq) of the `journal` table.
type JournalKey = (i64, i64, i64);

/// The store's `meta` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub process_id: String,
    pub incarnation: u64,
    pub format_version: u32,
    /// When the store was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub turns_committed: u64,
    pub commits: u64,
    /// `now_ms` of the last commit (0 before the first).
    pub last_commit_ms: u64,
    /// The application identity (`None` in a store no application has adopted yet).
    pub app: Option<crate::AppIdentity>,
}

/// Size of one application table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStats {
    pub name: String,
    pub rows: u64,
    /// Stored bytes of keys and values (value envelopes included).
    pub bytes: u64,
}

/// The outbox to one peer, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStats {
    pub peer: String,
    /// Unacknowledged messages.
    pub depth: u64,
    pub min_seq: u64,
    pub max_seq: u64,
    /// `created_ms` of the oldest unacknowledged message.
    pub oldest_created_ms: u64,
    /// Stored payload bytes (envelopes included).
    pub bytes: u64,
}

/// The commits after a given one as the batch journal holds them ([`Reader::journaled_since`]),
/// and the store's counters at that commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledSince {
    /// `turns_committed` at the given commit.
    pub turns_committed: u64,
    /// `last_commit_ms` at the given commit.
    pub last_commit_ms: u64,
    /// The commits after it, oldest first, contiguous.
    pub commits: Vec<JournaledCommit>,
}

/// One commit held by the batch journal ([`Reader::journaled_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledCommit {
    /// The store's commits after this one (its commit number).
    pub commits: u64,
    /// The store's `turns_committed` after it.
    pub turns_committed: u64,
    /// The batch as committed (its `now_ms` is the commit's `last_commit_ms`).
    pub batch: Batch,
}

/// Sizes of the store's files on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSizes {
    pub db_bytes: u64,
    /// 0 when there is no `-wal` file.
    pub wal_bytes: u64,
}

/// One thing [`Reader::verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The table (`kv:<name>` for application tables, `sqlite` for the file itself).
    pub table: String,
    /// The key, printable.
    pub key: String,
    pub what: String,
}

impl From<Corrupted> for Problem {
    fn from(c: Corrupted) -> Self {
        Problem {
            table: c.table,
            key: c.key,
            what: c.detail,
        }
    }
}

/// Everything [`Reader::verify_all`] found: the problems and the state of the write-ahead
/// log and of the owner lock file's commit witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// What is wrong (empty = healthy), as [`Reader::verify`] returns it.
    pub problems: Vec<Problem>,
    /// The write-ahead log as SQLite would read it, and any proof of lost history.
    pub wal: WalState,
    /// What the owner lock file witnesses (`None`: no lock file, or one that witnesses
    /// nothing, as after a format-2 owner).
    pub witness: Option<WitnessRecord>,
    /// The store's `commits` counter as read after the witness.
    pub commits: u64,
}

/// How many times [`Reader::verify_all`] scans a WAL that looks damaged before it believes
/// it: a scan racing a running owner's commit may read a frame before it is written and a
/// later one after, which looks like damage at the write frontier; real damage stays at the
/// same frame in every scan.
pub const WAL_SCANS_MAX: u32 = 3;

/// Collects problems up to [`VERIFY_MAX_PROBLEMS`].
struct Problems {
    list: Vec<Problem>,
    dropped: u64,
}

impl Problems {
    fn push(&mut self, p: Problem) {
        if self.list.len() < VERIFY_MAX_PROBLEMS {
            self.list.push(p);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<Problem> {
        if self.dropped > 0 {
            self.list.push(Problem {
                table: "*".to_string(),
                key: String::new(),
                what: format!("{} more problems not listed", self.dropped),
            });
        }
        self.list
    }
}

use crate::files::wal_path;

fn file_len(path: &Path) -> Result<u64, ReadError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ReadError::Io {
            detail: format!("{}: {e}", path.display()),
        }),
    }
}

/// One step of [`Reader::verify_records`].
type VerifyStep = fn(&Reader, &mut Problems) -> Result<(), ReadError>;

/// A problem below the records (a page failing its checksum, a malformed page).
fn damaged(detail: String) -> Problem {
    Problem {
        table: "sqlite".to_string(),
        key: "file".to_string(),
        what: detail,
    }
}

fn meta_problem(p: MetaProblem) -> Corrupted {
    match p {
        MetaProblem::Corrupted(c) => c,
        MetaProblem::NotKen(detail) => Corrupted {
            table: "meta".to_string(),
            key: schema::META_MAGIC.to_string(),
            detail,
        },
        MetaProblem::Newer(v) => Corrupted {
            table: "meta".to_string(),
            key: schema::META_FORMAT_VERSION.to_string(),
            detail: format!("format version {v} is newer than this build's"),
        },
        MetaProblem::Migratable(v) => Corrupted {
            table: "meta".to_string(),
            key: schema::META_FORMAT_VERSION.to_string(),
            detail: format!("format version {v} is migrated when the owner next opens the store"),
        },
        MetaProblem::Older(v) => Corrupted {
            table: "meta".to_string(),
            key: schema::META_FORMAT_VERSION.to_string(),
            detail: format!("format version {v} is older than this build's"),
        },
    }
}

fn to_u64(v: i64, table: &str, key: &str, column: &str) -> Result<u64, Corrupted> {
    schema::u64_from_sql(v, table, key, column)
}

impl Reader {
    /// Opens the store at `path` read-only. Fails with [`OpenError::NotFound`] if there is no
    /// file, [`OpenError::NotAKenStore`] or [`OpenError::NewerFormat`] if it is not a store
    /// this build reads. Works while the owner runs and on a store whose owner is gone.
    pub fn open(path: &Path) -> Result<Reader, OpenError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(OpenError::NotAKenStore {
                    path: path.to_path_buf(),
                    detail: "not a regular file".to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(OpenError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let sq = |e: rusqlite::Error| OpenError::Sqlite {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // Through the `ken-wal` shim, which checks every database page read (see `vfs`).
        let conn = match crate::vfs::register() {
            Ok(()) => Connection::open_with_flags_and_vfs(path, flags, crate::vfs::VFS_NAME),
            Err(_) => Connection::open_with_flags(path, flags),
        }
        .map_err(sq)?;
        conn.busy_timeout(READER_BUSY_TIMEOUT).map_err(sq)?;
        // Reading a WAL database needs its -wal and -shm files (see the module docs).
        let probe = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        });
        let conn = match probe.as_ref().map_err(|e| e.sqlite_error_code()) {
            Err(Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen))
                if !wal_path(path).exists() =>
            {
                tracing::debug!(path = %path.display(), error = ?probe, "reading store as immutable");
                drop(conn);
                Reader::open_immutable(path).map_err(sq)?
            }
            _ => conn,
        };
        let found = classify(&conn, path);
        if matches!(found, Ok(Found::Empty) | Err(_)) {
            // A damaged WAL or database file explains an empty or unreadable store better
            // than "not a Ken store".
            files::check(path)?;
            if let (Ok(Found::Empty), Some(w)) = (&found, witness::read_path(&lock_path(path))) {
                if w.commits > 0 {
                    return Err(OpenError::HistoryLost {
                        path: path.to_path_buf(),
                        lock_path: lock_path(path),
                        incarnation: w.incarnation,
                        commits: 0,
                        witnessed: w.commits,
                    });
                }
            }
        }
        Reader::check_found(path, found?)?;
        Ok(Reader {
            conn,
            path: path.to_path_buf(),
            overlay: RefCell::new(None),
        })
    }

    fn check_found(path: &Path, found: Found) -> Result<(), OpenError> {
        match found {
            Found::Store(_) => Ok(()),
            Found::Migratable(found) => Err(OpenError::NeedsMigration {
                path: path.to_path_buf(),
                found,
                supported: crate::FORMAT_VERSION,
            }),
            Found::Empty => Err(OpenError::NotAKenStore {
                path: path.to_path_buf(),
                detail: match lock_holder(&lock_path(path)) {
                    Some(pid) => format!("an empty database, perhaps being created by pid {pid}"),
                    None => "an empty database".to_string(),
                },
            }),
        }
    }

    fn open_immutable(path: &Path) -> rusqlite::Result<Connection> {
        let mut uri = String::from("file:");
        for b in path.as_os_str().as_encoded_bytes() {
            match *b {
                b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
                _ => uri.push(char::from(*b)),
            }
        }
        uri.push_str("?immutable=1");
        if crate::vfs::register().is_ok() {
            uri.push_str("&vfs=ken-wal");
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        Connection::open_with_flags(uri, flags)
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one read transaction with the journal's overlay (see "What a Reader
    /// guarantees" in `FORMAT.md`): every query `f` makes sees the same snapshot as the
    /// journal it merges. The transaction ends before this returns.
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&Overlay) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let tx = self.conn.unchecked_transaction()?;
        let overlay = self.load_overlay()?;
        let out = f(&overlay)?;
        tx.commit()?;
        Ok(out)
    }

    /// The journal's overlay in the current transaction: one small query when the journal
    /// is empty or unchanged since the last call, else the journal's rows, decoded.
    fn load_overlay(&self) -> Result<Arc<Overlay>, ReadError> {
        let key: JournalKey = self
            .conn
            .prepare_cached(
                "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM journal",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        // Taken out of the cell so that the Arc is unique when nobody else holds it (a query
        // drops its overlay before returning): extending it then copies nothing.
        let cached = self.overlay.borrow_mut().take();
        if let Some((have, mut overlay)) = cached {
            if have == key {
                *self.overlay.borrow_mut() = Some((key, Arc::clone(&overlay)));
                return Ok(overlay);
            }
            // The same oldest row and only newer rows added (rows are only appended, and
            // deleted all together by a fold, after which every seq is higher): apply the
            // new rows to the cached overlay instead of decoding every row again.
            if let (Some((turns, commits, _)), true) = (
                overlay.counters,
                have.0 > 0 && key.1 == have.1 && key.2 > have.2 && key.0 - have.0 == key.2 - have.2,
            ) {
                let newer = journal::load_after(&self.conn, commits, turns)?;
                Arc::make_mut(&mut overlay).extend(&newer);
                *self.overlay.borrow_mut() = Some((key, Arc::clone(&overlay)));
                return Ok(overlay);
            }
        }
        let overlay = if key.0 == 0 {
            Arc::new(Overlay::default())
        } else {
            let meta = schema::decode_meta(&read_meta_rows(&self.conn)?).map_err(meta_problem)?;
            Arc::new(Overlay::build(&journal::load(
                &self.conn,
                meta.commits,
                meta.turns_committed,
            )?))
        };
        *self.overlay.borrow_mut() = Some((key, Arc::clone(&overlay)));
        Ok(overlay)
    }

    /// The `meta` rows, with the counters of the newest commit (one read transaction).
    pub fn meta(&self) -> Result<Meta, ReadError> {
        self.snapshot(|o| {
            let rows = read_meta_rows(&self.conn)?;
            let m = schema::decode_meta(&rows).map_err(meta_problem)?;
            let (turns_committed, commits, last_commit_ms) =
                o.counters
                    .unwrap_or((m.turns_committed, m.commits, m.last_commit_ms));
            Ok(Meta {
                process_id: m.process_id,
                incarnation: m.incarnation,
                format_version: m.format_version,
                created_ms: m.created_ms,
                turns_committed,
                commits,
                last_commit_ms,
                app: m.app,
            })
        })
    }

    /// The encoded root state, `None` before the first commit that set it.
    pub fn root(&self) -> Result<Option<Vec<u8>>, ReadError> {
        self.snapshot(|o| {
            if let Some(root) = &o.root {
                return Ok(Some(root.clone()));
            }
            let bytes: Option<Vec<u8>> = self
                .conn
                .prepare_cached("SELECT value FROM root WHERE id = 0")?
                .query_row([], |r| r.get(0))
                .optional()?;
            match bytes {
                None => Ok(None),
                Some(b) => Ok(Some(
                    codec::unseal_record(&codec::Record::root(), "root", schema::ROOT_KEY, &b)?
                        .to_vec(),
                )),
            }
        })
    }

    /// One row of application table `table`.
    pub fn table_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.snapshot(|o| {
            if !o.kv.is_empty() {
                if let Some(v) = o.kv.get(&(table.to_string(), key.to_vec())) {
                    return Ok(v.clone());
                }
            }
            crate::access::table_get(&self.conn, table, key)
        })
    }

    /// One row of application table `table` as the tables hold it, without the journal's
    /// newer writes (one query, which reads no journal page): for the owner process's
    /// engine, which holds every write newer than the tables itself (see
    /// [`crate::FoldWatch`] and [`crate::Store::journaled_table_writes`]). Anyone else wants
    /// [`Reader::table_get`].
    pub fn table_get_folded(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        crate::access::table_get(&self.conn, table, key)
    }

    /// [`Reader::table_scan`] of the tables alone, without the journal's newer writes (one
    /// query); see [`Reader::table_get_folded`].
    pub fn table_scan_folded(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<KeyValue>, ReadError> {
        self.table_scan_rows(table, prefix, after, i64::from(limit.min(MAX_SCAN_ROWS)))
    }

    /// Up to `limit` (at most [`MAX_SCAN_ROWS`]) rows of `table` whose key starts with
    /// `prefix` and is greater than `after`, in key order (one query). Page by passing the
    /// last key returned as `after`.
    pub fn table_scan(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<KeyValue>, ReadError> {
        let limit = limit.min(MAX_SCAN_ROWS);
        self.snapshot(|o| {
            let range = (table.to_string(), prefix.to_vec())..;
            let journaled: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
                o.kv.range(range)
                    .take_while(|((t, k), _)| t == table && k.starts_with(prefix))
                    .filter(|((_, k), _)| after.is_none_or(|a| k.as_slice() > a))
                    .map(|((_, k), v)| (k, v))
                    .collect();
            if journaled.is_empty() {
                return self.table_scan_rows(table, prefix, after, i64::from(limit));
            }
            // Each journaled key hides at most one table row: read that many more.
            let rows = self.table_scan_rows(
                table,
                prefix,
                after,
                i64::from(limit) + journaled.len() as i64,
            )?;
            let mut rows = rows.into_iter();
            journal::merge(
                || Ok(rows.next()),
                |k: &Vec<u8>| o.kv.contains_key(&(table.to_string(), k.clone())),
                journaled
                    .into_iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                    .collect(),
                limit as usize,
            )
        })
    }

    /// [`Reader::table_scan`] of the table alone, `limit` rows at most (one query).
    fn table_scan_rows(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: i64,
    ) -> Result<Vec<KeyValue>, ReadError> {
        let (exclusive, lower) = match after {
            Some(a) if a >= prefix => (true, a),
            _ => (false, prefix),
        };
        let upper = schema::prefix_successor(prefix);
        let sql = match (exclusive, upper.is_some()) {
            (false, false) => {
                "SELECT key, value FROM kv WHERE tbl = ?1 AND key >= ?2 ORDER BY key LIMIT ?3"
            }
            (true, false) => {
                "SELECT key, value FROM kv WHERE tbl = ?1 AND key > ?2 ORDER BY key LIMIT ?3"
            }
            (false, true) => {
                "SELECT key, value FROM kv WHERE tbl = ?1 AND key >= ?2 AND key < ?4
                 ORDER BY key LIMIT ?3"
            }
            (true, true) => {
                "SELECT key, value FROM kv WHERE tbl = ?1 AND key > ?2 AND key < ?4
                 ORDER BY key LIMIT ?3"
            }
        };
        let name = schema::kv_table_name(table);
        let raw = |r: &rusqlite::Row<'_>| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?));
        let decode = |(key, value): (Vec<u8>, Vec<u8>)| {
            let body = codec::check_record(&codec::Record::kv(table, &key), &value)
                .map_err(|detail| Corrupted {
                    table: name.clone(),
                    key: codec::printable_key(&key),
                    detail,
                })?
                .to_vec();
            Ok((key, body))
        };
        match upper {
            Some(upper) => query_decode(&self.conn, sql, (table, lower, limit, upper), raw, decode),
            None => query_decode(&self.conn, sql, (table, lower, limit), raw, decode),
        }
    }

    /// Every application table with its row count and size: one query, but it reads all of
    /// `kv`, so on a large store it is one long read (it delays the completion of WAL
    /// checkpoints, never a commit); plus one lookup per key the journal writes.
    pub fn tables(&self) -> Result<Vec<TableStats>, ReadError> {
        self.snapshot(|o| {
            let stats = self.tables_rows()?;
            if o.kv.is_empty() {
                return Ok(stats);
            }
            let mut by_name: BTreeMap<String, (u64, u64)> = stats
                .into_iter()
                .map(|t| (t.name, (t.rows, t.bytes)))
                .collect();
            for ((table, key), value) in &o.kv {
                let stored: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT length(key) + length(value) FROM kv WHERE tbl = ?1 AND key = ?2",
                    )?
                    .query_row((table, key), |r| r.get(0))
                    .optional()?;
                let entry = by_name.entry(table.clone()).or_insert((0, 0));
                if let Some(bytes) = stored {
                    entry.0 = entry.0.saturating_sub(1);
                    entry.1 = entry.1.saturating_sub(u64::try_from(bytes).unwrap_or(0));
                }
                if let Some(v) = value {
                    entry.0 += 1;
                    entry.1 += (key.len() + v.len() + codec::SEAL_OVERHEAD) as u64;
                }
            }
            Ok(by_name
                .into_iter()
                .filter(|(_, (rows, _))| *rows > 0)
                .map(|(name, (rows, bytes))| TableStats { name, rows, bytes })
                .collect())
        })
    }

    fn tables_rows(&self) -> Result<Vec<TableStats>, ReadError> {
        query_decode(
            &self.conn,
            "SELECT tbl, count(*), coalesce(sum(length(key) + length(value)), 0)
             FROM kv GROUP BY tbl ORDER BY tbl",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
            |(name, rows, bytes)| {
                let name_kv = schema::kv_table_name(&name);
                Ok(TableStats {
                    rows: to_u64(rows, &name_kv, "", "count")?,
                    bytes: to_u64(bytes, &name_kv, "", "bytes")?,
                    name,
                })
            },
        )
    }

    /// Every peer's counters.
    pub fn peers(&self) -> Result<Vec<PeerRow>, ReadError> {
        self.snapshot(|o| {
            let rows = query_decode(
                &self.conn,
                SQL_PEERS,
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
                |(peer, record)| schema::decode_peer(peer, &record),
            )?;
            Ok(merged(
                rows.into_iter().map(|p| (p.peer.clone(), Some(p))),
                o.peers.iter().map(|(k, p)| (k.clone(), Some(p.clone()))),
            ))
        })
    }

    /// The first `limit` (at most [`MAX_SCAN_ROWS`]) outbox rows, to `peer` or to everyone,
    /// ordered by (peer, seq).
    pub fn outbox(&self, peer: Option<&str>, limit: u32) -> Result<Vec<OutboxRow>, ReadError> {
        let limit = limit.min(MAX_SCAN_ROWS) as usize;
        self.snapshot(|o| self.outbox_merged(o, peer, limit))
    }

    /// The outbox rows of the table (streamed) merged with the journal's, up to `limit`.
    fn outbox_merged(
        &self,
        o: &Overlay,
        peer: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, ReadError> {
        let mut stmt = match peer {
            Some(_) => self.conn.prepare_cached(
                "SELECT peer, seq, created_ms, payload FROM outbox WHERE peer = ?1 ORDER BY seq",
            )?,
            None => self.conn.prepare_cached(
                "SELECT peer, seq, created_ms, payload FROM outbox ORDER BY peer, seq",
            )?,
        };
        let mut rows = match peer {
            Some(p) => stmt.query([p])?,
            None => stmt.query([])?,
        };
        let next = || -> Result<Option<KeyedOutboxRow>, ReadError> {
            match rows.next()? {
                None => Ok(None),
                Some(r) => {
                    let row = schema::decode_outbox(
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?,
                    )?;
                    Ok(Some(((row.peer.clone(), row.seq), row)))
                }
            }
        };
        let extra = o
            .outbox
            .iter()
            .filter(|((p, _), _)| peer.is_none_or(|want| p == want))
            .map(|(k, row)| (k.clone(), row.clone()))
            .collect();
        let merged = journal::merge(next, |(p, seq)| o.outbox_row_gone(p, *seq), extra, limit)?;
        Ok(merged.into_iter().map(|(_, row)| row).collect())
    }

    /// Per-peer outbox summary (one query; with a journal that changes the outbox, every
    /// outbox row is read).
    pub fn outbox_stats(&self) -> Result<Vec<OutboxStats>, ReadError> {
        self.snapshot(|o| {
            if !o.touches_outbox() {
                return self.outbox_stats_rows();
            }
            let mut stats: BTreeMap<String, OutboxStats> = BTreeMap::new();
            for row in self.outbox_merged(o, None, usize::MAX)? {
                let bytes = (row.payload.len() + codec::SEAL_OVERHEAD) as u64;
                let s = stats.entry(row.peer.clone()).or_insert(OutboxStats {
                    peer: row.peer.clone(),
                    depth: 0,
                    min_seq: row.seq,
                    max_seq: row.seq,
                    oldest_created_ms: row.created_ms,
                    bytes: 0,
                });
                s.depth += 1;
                s.min_seq = s.min_seq.min(row.seq);
                s.max_seq = s.max_seq.max(row.seq);
                s.oldest_created_ms = s.oldest_created_ms.min(row.created_ms);
                s.bytes += bytes;
            }
            Ok(stats.into_values().collect())
        })
    }

    fn outbox_stats_rows(&self) -> Result<Vec<OutboxStats>, ReadError> {
        query_decode(
            &self.conn,
            "SELECT peer, count(*), min(seq), max(seq), min(created_ms), sum(length(payload))
             FROM outbox GROUP BY peer ORDER BY peer",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    [
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ],
                ))
            },
            |(peer, [depth, min_seq, max_seq, oldest, bytes])| {
                Ok(OutboxStats {
                    depth: to_u64(depth, "outbox", &peer, "count")?,
                    min_seq: to_u64(min_seq, "outbox", &peer, "seq")?,
                    max_seq: to_u64(max_seq, "outbox", &peer, "seq")?,
                    oldest_created_ms: to_u64(oldest, "outbox", &peer, "created_ms")?,
                    bytes: to_u64(bytes, "outbox", &peer, "bytes")?,
                    peer,
                })
            },
        )
    }

    /// Every durable timer, by name.
    pub fn timers(&self) -> Result<Vec<TimerRow>, ReadError> {
        self.snapshot(|o| {
            let rows = crate::access::timers(&self.conn)?;
            Ok(merged(
                rows.into_iter().map(|t| (t.name.clone(), Some(t))),
                o.timers.iter().map(|(k, t)| (k.clone(), t.clone())),
            ))
        })
    }

    /// One client's cached row (last request number and reply), if any.
    pub fn client(&self, client: &[u8; 16]) -> Result<Option<ClientRow>, ReadError> {
        self.snapshot(|o| match o.clients.get(client) {
            Some(row) => Ok(row.clone()),
            None => crate::access::client(&self.conn, client),
        })
    }

    /// Every cached client reply, by client id.
    pub fn clients(&self) -> Result<Vec<ClientRow>, ReadError> {
        self.snapshot(|o| {
            let rows = query_decode(
                &self.conn,
                SQL_CLIENTS,
                [],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
                |(client, request_no, updated_ms, reply)| {
                    schema::decode_client(&client, request_no, updated_ms, &reply)
                },
            )?;
            Ok(merged(
                rows.into_iter().map(|c| (c.client, Some(c))),
                o.clients.iter().map(|(k, c)| (*k, c.clone())),
            ))
        })
    }

    /// Every FUSE group record, by group id.
    pub fn groups(&self) -> Result<Vec<GroupRow>, ReadError> {
        self.snapshot(|o| {
            let rows = query_decode(
                &self.conn,
                SQL_GROUPS,
                [],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
                |(group, record)| schema::decode_group(&group, &record),
            )?;
            Ok(merged(
                rows.into_iter().map(|g| (g.group, Some(g))),
                o.groups.iter().map(|(k, g)| (*k, g.clone())),
            ))
        })
    }

    /// The newest `last` (at most [`MAX_SCAN_ROWS`]) turn-log entries, oldest first.
    pub fn turn_log(&self, last: u32) -> Result<Vec<TurnLogEntry>, ReadError> {
        let want = last.min(MAX_SCAN_ROWS) as usize;
        self.snapshot(|o| {
            // The journal's entries are the newest.
            let from_journal = o.turn_log.len().min(want);
            let mut out = self.turn_log_rows(want - from_journal)?;
            out.extend_from_slice(&o.turn_log[o.turn_log.len() - from_journal..]);
            Ok(out)
        })
    }

    /// The commits after commit `after` as the batch journal holds them, oldest first, with
    /// the store's counters at `after` ([`JournaledSince`]), read in one transaction; `None`
    /// when the journal cannot give them all: commit `after` is neither in the journal nor
    /// the tables' newest (the journal was folded past it), or the journal holds nothing
    /// after it. Commits after the journal's newest row are not there either (a batch that
    /// went to the tables directly: a large one, or the one that folded the journal): the
    /// caller compares the last commit with the one it wants. What a primary ships to a
    /// standby whose replica is behind after the primary's restart (`ken::standby`); those
    /// batches otherwise exist only as their effect on the tables.
    pub fn journaled_since(&self, after: u64) -> Result<Option<JournaledSince>, ReadError> {
        let tx = self.conn.unchecked_transaction()?;
        let rows: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT seq, record FROM journal WHERE seq >= ?1 ORDER BY seq")?
            .query_map([schema::sql_u64(after, "journal seq")], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut records = Vec::with_capacity(rows.len());
        for (seq, record) in rows {
            let rec = journal::decode(seq, &record)?;
            let want = records
                .last()
                .map_or(rec.commits, |p: &journal::JournalRecord| p.commits + 1);
            if rec.commits != want {
                return Err(Corrupted {
                    table: "journal".to_string(),
                    key: seq.to_string(),
                    detail: format!("commit {} follows commit {}", rec.commits, want - 1),
                }
                .into());
            }
            records.push(rec);
        }
        let mut records = records.into_iter().peekable();
        let base = match records.peek() {
            None => None,
            Some(first) if first.commits == after => {
                let first = records.next().expect("peeked");
                Some((first.turns_committed, first.batch.now_ms))
            }
            Some(first) if first.commits == after + 1 => {
                let meta =
                    schema::decode_meta(&read_meta_rows(&self.conn)?).map_err(meta_problem)?;
                (meta.commits == after).then_some((meta.turns_committed, meta.last_commit_ms))
            }
            Some(_) => None,
        };
        let out = base.map(|(turns_committed, last_commit_ms)| JournaledSince {
            turns_committed,
            last_commit_ms,
            commits: records
                .map(|r| JournaledCommit {
                    commits: r.commits,
                    turns_committed: r.turns_committed,
                    batch: r.batch,
                })
                .collect(),
        });
        tx.commit()?;
        Ok(out)
    }

    /// The newest `want` entries of the `turn_log` table, oldest first (one query).
    fn turn_log_rows(&self, want: usize) -> Result<Vec<TurnLogEntry>, ReadError> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT turn, turns, entries FROM turn_log ORDER BY turn DESC")?;
        let mut rows = stmt.query([])?;
        // Newest row first; each row's entries oldest first.
        let mut newest_first: Vec<TurnLogEntry> = Vec::new();
        while newest_first.len() < want {
            let Some(row) = rows.next()? else { break };
            let entries =
                schema::decode_turns(row.get(0)?, row.get(1)?, &row.get::<_, Vec<u8>>(2)?)?;
            newest_first.extend(entries.into_iter().rev());
        }
        newest_first.truncate(want);
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Sizes of the database file and its WAL (no query).
    pub fn file_sizes(&self) -> Result<FileSizes, ReadError> {
        Ok(FileSizes {
            db_bytes: file_len(&self.path)?,
            wal_bytes: file_len(&wal_path(&self.path))?,
        })
    }

    /// Checks the whole store and lists what is wrong (empty = healthy):
    /// - every sealed record's envelope and CRC, one query per [`VERIFY_PAGE_ROWS`] rows;
    /// - `meta` complete and decodable, every peer's `acked < next_seq`;
    /// - per peer, in one query (one snapshot): outbox seqs contiguous, all above `acked`
    ///   and below `next_seq`, and a `peers` row exists;
    /// - SQLite's `PRAGMA integrity_check` (one query that reads the whole file: on a large
    ///   store a long read, which delays the completion of WAL checkpoints, never a commit).
    ///
    /// An `Err` means a check could not run (for example SQLite could not read the file).
    pub fn verify(&self) -> Result<Vec<Problem>, ReadError> {
        Ok(self.verify_all()?.problems)
    }

    /// The state of the write-ahead log as SQLite would read it (no query): frames,
    /// generation, the last commit SQLite recovers, frames past it, and any proof of lost
    /// history (see [`crate::wal`]). Reads the whole `-wal` file.
    pub fn wal_state(&self) -> Result<WalState, ReadError> {
        Ok(self.files()?.wal)
    }

    fn files(&self) -> Result<files::Files, ReadError> {
        files::examine(&self.path).map_err(|e| ReadError::Io {
            detail: format!("{}: {e}", self.path.display()),
        })
    }

    /// [`Reader::verify`], and the files below the records: the write-ahead log (damage in
    /// the middle, which SQLite would silently cut off; scanned up to [`WAL_SCANS_MAX`] times
    /// while it looks damaged, see there), a database file shorter than its header says, and
    /// the owner lock file's commit witness against the store's `commits` counter (read in
    /// that order, so a running owner never causes a false alarm). Problems of the files are
    /// named `wal` / `frame N`, `sqlite` / `file`, and `meta` / `counters`.
    pub fn verify_all(&self) -> Result<Verification, ReadError> {
        let witness = witness::read_path(&lock_path(&self.path));
        let mut files = self.files()?;
        for _ in 1..WAL_SCANS_MAX {
            let Some(d) = &files.wal.damage else { break };
            let again = self.files()?;
            if again
                .wal
                .damage
                .as_ref()
                .map(|a| (a.frame, &again.wal.header))
                == Some((d.frame, &files.wal.header))
            {
                break;
            }
            files = again;
        }
        let mut problems = Problems {
            list: Vec::new(),
            dropped: 0,
        };
        for p in files.problems() {
            problems.push(match p {
                FileProblem::Wal(d) => Problem {
                    table: "wal".to_string(),
                    key: format!("frame {}", d.frame),
                    what: format!(
                        "{}; frame {} proves at least {} committed transactions after it, \
                         which SQLite silently drops",
                        d.detail, d.proof_frame, d.commits_lost
                    ),
                },
                FileProblem::Damaged(what) => Problem {
                    table: "sqlite".to_string(),
                    key: "file".to_string(),
                    what,
                },
            });
        }
        let meta = self.meta().ok();
        if let (Some(w), Some(m)) = (witness, &meta) {
            if w.incarnation == m.incarnation && m.commits < w.commits {
                problems.push(Problem {
                    table: "meta".to_string(),
                    key: schema::META_COUNTERS.to_string(),
                    what: format!(
                        "the store holds {} commits, but its owner lock file witnessed {} \
                         durable commits: committed history was lost (a deleted or damaged \
                         -wal file, or an older copy of the database)",
                        m.commits, w.commits
                    ),
                });
            }
        }
        self.verify_records(&mut problems)?;
        Ok(Verification {
            problems: problems.finish(),
            wal: files.wal,
            witness,
            commits: meta.map_or(0, |m| m.commits),
        })
    }

    fn verify_records(&self, problems: &mut Problems) -> Result<(), ReadError> {
        let meta_rows = read_meta_rows(&self.conn)?;
        let missing: Vec<&str> = schema::META_KEYS
            .into_iter()
            .filter(|k| !meta_rows.iter().any(|(have, _)| have == k))
            .collect();
        for key in &missing {
            problems.push(Problem {
                table: "meta".to_string(),
                key: key.to_string(),
                what: "row missing".to_string(),
            });
        }
        if let (true, Err(p)) = (missing.is_empty(), schema::decode_meta(&meta_rows)) {
            problems.push(meta_problem(p).into());
        }
        match self.root() {
            Ok(_) => {}
            Err(ReadError::Corrupted(c)) => problems.push(c.into()),
            Err(ReadError::Damaged { detail }) => problems.push(damaged(detail)),
            Err(e) => return Err(e),
        }
        // A page that fails its checksum ends the step that read it (SQLite returns no row
        // of it): reported, and the next step goes on.
        let steps: [VerifyStep; 6] = [
            Reader::verify_journal,
            Reader::verify_kv,
            Reader::verify_outbox_rows,
            Reader::verify_peers,
            Reader::verify_simple,
            Reader::verify_outbox_structure,
        ];
        for step in steps {
            match step(self, problems) {
                Ok(()) => {}
                Err(ReadError::Damaged { detail }) => problems.push(damaged(detail)),
                Err(e) => return Err(e),
            }
        }
        let rows: Vec<String> = {
            let integrity = || -> rusqlite::Result<Vec<String>> {
                let mut stmt = self.conn.prepare(&format!(
                    "PRAGMA integrity_check({INTEGRITY_CHECK_MAX_ERRORS})"
                ))?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            };
            match integrity().map_err(ReadError::from) {
                Ok(rows) => rows,
                Err(ReadError::Damaged { detail }) => vec![detail],
                Err(e) => return Err(e),
            }
        };
        for row in rows {
            if row != "ok" {
                problems.push(Problem {
                    table: "sqlite".to_string(),
                    key: String::new(),
                    what: row,
                });
            }
        }
        Ok(())
    }

    /// Walks a table page by page: `first` takes `?1` = limit; `next` takes the cursor
    /// values, then the limit. `cursor` gives the cursor of a row (the last row of a page
    /// continues the walk).
    fn pages<R>(
        &self,
        first: &str,
        next: &str,
        raw: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
        cursor: impl Fn(&R) -> Vec<Value>,
        mut check: impl FnMut(R),
    ) -> Result<(), ReadError> {
        let mut after: Option<Vec<Value>> = None;
        loop {
            let page: Vec<R> = {
                let page_rows = Value::Integer(i64::from(VERIFY_PAGE_ROWS));
                match &after {
                    None => {
                        let mut stmt = self.conn.prepare_cached(first)?;
                        let rows = stmt.query_map([page_rows], &raw)?;
                        rows.collect::<rusqlite::Result<_>>()?
                    }
                    Some(c) => {
                        let mut params = c.clone();
                        params.push(page_rows);
                        let mut stmt = self.conn.prepare_cached(next)?;
                        let rows = stmt.query_map(rusqlite::params_from_iter(params), &raw)?;
                        rows.collect::<rusqlite::Result<_>>()?
                    }
                }
            };
            let full = page.len() == VERIFY_PAGE_ROWS as usize;
            after = page.last().map(&cursor);
            for row in page {
                check(row);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Every journal record: its envelope and encoding, its batch's preconditions, and the
    /// sequence: contiguous from the tables' `commits` + 1 (one snapshot with `meta`).
    fn verify_journal(&self, problems: &mut Problems) -> Result<(), ReadError> {
        let tx = self.conn.unchecked_transaction()?;
        // Damaged meta rows are reported by the meta check.
        let Ok(meta) = schema::decode_meta(&read_meta_rows(&self.conn)?) else {
            return Ok(());
        };
        match journal::load(&self.conn, meta.commits, meta.turns_committed) {
            Ok(_) => {}
            Err(ReadError::Corrupted(c)) => problems.push(c.into()),
            Err(e) => return Err(e),
        }
        tx.commit()?;
        Ok(())
    }

    fn verify_kv(&self, problems: &mut Problems) -> Result<(), ReadError> {
        self.pages(
            "SELECT tbl, key, value FROM kv ORDER BY tbl, key LIMIT ?1",
            "SELECT tbl, key, value FROM kv WHERE (tbl, key) > (?1, ?2) ORDER BY tbl, key LIMIT ?3",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
            |(t, k, _)| vec![Value::Text(t.clone()), Value::Blob(k.clone())],
            |(t, k, v)| {
                if let Err(detail) = codec::check_record(&codec::Record::kv(&t, &k), &v) {
                    problems.push(Problem {
                        table: schema::kv_table_name(&t),
                        key: codec::printable_key(&k),
                        what: detail,
                    });
                }
            },
        )
    }

    fn verify_outbox_rows(&self, problems: &mut Problems) -> Result<(), ReadError> {
        self.pages(
            "SELECT peer, seq, created_ms, payload FROM outbox ORDER BY peer, seq LIMIT ?1",
            "SELECT peer, seq, created_ms, payload FROM outbox WHERE (peer, seq) > (?1, ?2)
             ORDER BY peer, seq LIMIT ?3",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            },
            |(p, s, _, _)| vec![Value::Text(p.clone()), Value::Integer(*s)],
            |(peer, seq, created_ms, payload)| {
                if let Err(c) = schema::decode_outbox(peer, seq, created_ms, &payload) {
                    problems.push(c.into());
                }
            },
        )
    }

    fn verify_peers(&self, problems: &mut Problems) -> Result<(), ReadError> {
        self.pages(
            "SELECT peer, record FROM peers ORDER BY peer LIMIT ?1",
            "SELECT peer, record FROM peers WHERE peer > ?1 ORDER BY peer LIMIT ?2",
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
            |(p, _)| vec![Value::Text(p.clone())],
            |(peer, record)| match schema::decode_peer(peer, &record) {
                Err(c) => problems.push(c.into()),
                Ok(p) if p.acked >= p.next_seq => problems.push(Problem {
                    table: "peers".to_string(),
                    key: p.peer.clone(),
                    what: format!("acked {} is not below next_seq {}", p.acked, p.next_seq),
                }),
                Ok(_) => {}
            },
        )
    }

    /// Timers, clients, groups and the turn log: envelope checks only.
    fn verify_simple(&self, problems: &mut Problems) -> Result<(), ReadError> {
        self.pages(
            "SELECT name, due_ms, payload FROM timers ORDER BY name LIMIT ?1",
            "SELECT name, due_ms, payload FROM timers WHERE name > ?1 ORDER BY name LIMIT ?2",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
            |(n, _, _)| vec![Value::Text(n.clone())],
            |(name, due_ms, payload)| {
                if let Err(c) = schema::decode_timer(name, due_ms, &payload) {
                    problems.push(c.into());
                }
            },
        )?;
        self.pages(
            "SELECT client, request_no, updated_ms, reply FROM clients ORDER BY client LIMIT ?1",
            "SELECT client, request_no, updated_ms, reply FROM clients WHERE client > ?1
             ORDER BY client LIMIT ?2",
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            },
            |(c, _, _, _)| vec![Value::Blob(c.clone())],
            |(client, request_no, updated_ms, reply)| {
                if let Err(c) = schema::decode_client(&client, request_no, updated_ms, &reply) {
                    problems.push(c.into());
                }
            },
        )?;
        self.pages(
            "SELECT group_id, record FROM fuse_groups ORDER BY group_id LIMIT ?1",
            "SELECT group_id, record FROM fuse_groups WHERE group_id > ?1
             ORDER BY group_id LIMIT ?2",
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            |(g, _)| vec![Value::Blob(g.clone())],
            |(group, record)| {
                if let Err(c) = schema::decode_group(&group, &record) {
                    problems.push(c.into());
                }
            },
        )?;
        self.pages(
            "SELECT turn, turns, entries FROM turn_log ORDER BY turn LIMIT ?1",
            "SELECT turn, turns, entries FROM turn_log WHERE turn > ?1 ORDER BY turn LIMIT ?2",
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
            |(t, _, _)| vec![Value::Integer(*t)],
            |(turn, turns, entries)| {
                if let Err(c) = schema::decode_turns(turn, turns, &entries) {
                    problems.push(c.into());
                }
            },
        )
    }

    /// Outbox structure against the peers' counters, in one query (one snapshot, so a
    /// concurrent commit can not produce a false alarm).
    fn verify_outbox_structure(&self, problems: &mut Problems) -> Result<(), ReadError> {
        let rows: Vec<PeerOutboxSummary> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT o.peer, count(*), min(o.seq), max(o.seq),
                        (SELECT record FROM peers p WHERE p.peer = o.peer)
                 FROM outbox o GROUP BY o.peer ORDER BY o.peer",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (peer, count, min_seq, max_seq, record) in rows {
            let problem = |what: String| Problem {
                table: "outbox".to_string(),
                key: peer.clone(),
                what,
            };
            if max_seq - min_seq + 1 != count {
                problems.push(problem(format!(
                    "{count} rows with seqs {min_seq}..={max_seq}: not contiguous"
                )));
            }
            let Some(record) = record else {
                problems.push(problem(
                    "outbox rows for a peer with no `peers` row".to_string(),
                ));
                continue;
            };
            // A corrupt peers record is reported by the peers walk.
            let Ok(p) = schema::decode_peer(peer.clone(), &record) else {
                continue;
            };
            if u64::try_from(min_seq).map_or(true, |s| s <= p.acked) {
                problems.push(problem(format!(
                    "outbox seq {min_seq} is not above the peer's acked {}",
                    p.acked
                )));
            }
            if u64::try_from(max_seq).map_or(true, |s| s >= p.next_seq) {
                problems.push(problem(format!(
                    "outbox seq {max_seq} is not below the peer's next_seq {}",
                    p.next_seq
                )));
            }
        }
        Ok(())
    }
}

/// Table rows (in key order) with the journal's changes over them (`None`: deleted), in key
/// order.
fn merged<K: Ord, V>(
    table: impl Iterator<Item = (K, Option<V>)>,
    journal: impl Iterator<Item = (K, Option<V>)>,
) -> Vec<V> {
    let mut all: BTreeMap<K, Option<V>> = table.collect();
    all.extend(journal);
    all.into_values().flatten().collect()
}
