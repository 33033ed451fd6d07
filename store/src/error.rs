//! The store's error types: one `#[non_exhaustive]` enum per operation.
//!
//! Every variant's doc says whether any state changed. Messages say what is wrong and what
//! to do. SQLite's own error types never cross this boundary: they are rendered to text.
//!
//! Invariant: a commit error never leaves half a batch durable. The batch is wholly durable
//! or wholly absent, and after any commit error the store is poisoned
//! ([`CommitError::Poisoned`]) until reopened, which tells which of the two happened.

use std::path::PathBuf;

use crate::Corrupted;

/// Why [`Store::open`](crate::Store::open) or [`Reader::open`](crate::Reader::open) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another owner (another process, or another `Store` in this process) holds the owner
    /// lock. Nothing was read or changed.
    #[error(
        "store {path} is in use: {holder} holds the owner lock {lock_path}; stop that \
         process first (only one owner at a time), or read the store with a Reader (`ken inspect`)",
        holder = match holder_pid {
            Some(pid) => format!("process {pid}"),
            None => "another process".to_string(),
        }
    )]
    InUse {
        path: PathBuf,
        lock_path: PathBuf,
        /// The pid the holder wrote into the lock file, if readable (informational: the
        /// holder may be another handle in this very process).
        holder_pid: Option<u32>,
    },
    /// The file exists but is not a Ken store (not SQLite at all, or SQLite without Ken's
    /// `meta`). Nothing was changed.
    #[error(
        "{path} is not a Ken store ({detail}); check the path, or move that file away to \
         create a fresh store there"
    )]
    NotAKenStore { path: PathBuf, detail: String },
    /// The store belongs to another process id. Nothing was changed.
    #[error(
        "this store belongs to process `{found}`, not `{expected}`; give each process its own \
         store file"
    )]
    WrongProcess { expected: String, found: String },
    /// The store belongs to another application. Nothing was changed.
    #[error(
        "store {path} belongs to application `{found}`, not `{expected}`; point this binary at \
         a store of its own application (or a fresh path)"
    )]
    WrongApp {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The store's data was written by a newer schema version of this application than this
    /// binary knows (a downgrade). Nothing was changed.
    #[error(
        "store {path} holds `{app}` data of schema version {found}, newer than this binary's \
         version {supported}; run a binary of schema version {found} or newer (a downgrade \
         cannot read it)"
    )]
    NewerSchema {
        path: PathBuf,
        app: String,
        found: u32,
        supported: u32,
    },
    /// The store was written by a newer build (format version `found`). Nothing was changed.
    #[error(
        "store format version {found} is newer than this build supports ({supported}); run a \
         newer build of Ken"
    )]
    NewerFormat { found: u32, supported: u32 },
    /// The store was written by an older build (format version `found`) that this build has
    /// no migration from. Nothing was changed.
    #[error(
        "store format version {found} was written by an older build of Ken; this build reads \
         version {supported} and has no migration: finish the work with the build that wrote \
         it, or start from a fresh store"
    )]
    OlderFormat { found: u32, supported: u32 },
    /// The store is of format `found`, which the owner migrates to `supported` when it next
    /// opens the store ([`Store::open`](crate::Store::open)); a
    /// [`Reader`](crate::Reader) does not read it before. Nothing was changed.
    #[error(
        "store {path} is of format version {found}; this build reads version {supported} and \
         migrates the store when its process next starts (the owner opens it): start the \
         process once, or inspect the store with the build that wrote it"
    )]
    NeedsMigration {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// There is no store at the path ([`Reader::open`](crate::Reader::open) never creates
    /// one). Nothing was changed.
    #[error("no store at {path}; check the path (a Reader never creates a store)")]
    NotFound { path: PathBuf },
    /// A record needed for recovery (or the `meta` rows) failed its check. Nothing was
    /// changed; the process must not run from this store.
    #[error(
        "{0}; the store cannot be used as is: investigate with `ken inspect STORE verify`, then \
         restore the file from a backup"
    )]
    Corrupted(Corrupted),
    /// The store's write-ahead log is damaged in the middle: SQLite would silently drop the
    /// committed transactions after frame `frame` (`wal` is the `-wal` file; frame 0 is its
    /// header). Nothing was changed: the store was not opened by SQLite, so the evidence is
    /// intact. The process must not run from this store.
    #[error(
        "the write-ahead log {wal} of store {path} is damaged: {detail}, and frame \
         {proof_frame} proves that at least {commits_lost} committed transactions after it \
         would be silently lost; do not run from this store: restore it (with its -wal and \
         .lock files) from a standby or backup, or compare it with its peers' stores (`ken \
         audit`); keep the files as they are for investigation"
    )]
    WalDamaged {
        path: PathBuf,
        wal: PathBuf,
        /// 1-based index of the first frame SQLite rejects (0: the header).
        frame: u64,
        /// A later frame that proves the rejected one belonged to a durable transaction.
        proof_frame: u64,
        /// Committed transactions after the damage, at least.
        commits_lost: u64,
        detail: String,
    },
    /// The store holds fewer commits than its owner lock file witnessed durable: committed
    /// history was lost (a deleted or damaged `-wal` file, an older copy of the database put
    /// in its place, a deleted database: then `commits` is 0). Nothing was changed (a
    /// database file SQLite created empty where there was none is removed again). The
    /// process must not run from this store.
    #[error(
        "store {path} lost committed history: it holds {commits} commits, but its owner lock \
         file {lock_path} witnessed {witnessed} durable commits of this store (incarnation \
         {incarnation:016x}); its -wal file or the database was deleted or damaged, or an \
         older copy was put in its place; do not run from it: restore the store from a \
         standby or backup with its -wal file; to run from it anyway, accepting the loss, \
         delete {lock_path} (its peers will then detect the rollback and name it; a deleted \
         database then starts over as a new incarnation)"
    )]
    HistoryLost {
        path: PathBuf,
        lock_path: PathBuf,
        incarnation: u64,
        commits: u64,
        witnessed: u64,
    },
    /// The store's files are damaged below the record level (described in `detail`: a
    /// missing or truncated database file beside a write-ahead log that still holds commits,
    /// a database shorter than its header says). Nothing was changed.
    #[error(
        "store {path} is damaged: {detail}; do not run from it: restore it from a standby or \
         backup, and keep the files as they are for investigation"
    )]
    Damaged { path: PathBuf, detail: String },
    /// An I/O error on the store, its directory or its lock file. When creating, a partly
    /// created file may remain; the next open completes the creation.
    #[error("I/O error on {path}: {source}; check the path, permissions and free space")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused the file. When creating, a partly created file may remain; the next
    /// open completes the creation.
    #[error("SQLite error opening {path}: {detail}")]
    Sqlite { path: PathBuf, detail: String },
    /// The disk is full: SQLite could not write what an open needs (its shared-memory index
    /// `-shm` grows with the `-wal`, and recovery writes). Nothing committed was changed.
    #[error(
        "store full opening {path}: free disk space, then restart the process; committed data \
         is intact ({detail})"
    )]
    Full { path: PathBuf, detail: String },
}

/// Why [`Store::commit`](crate::Store::commit) failed.
///
/// After any of these the store is poisoned: every later call returns `Poisoned`. Never
/// retry; restart the process and recover from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The disk, or the `max_page_count` limit, is full. The batch was not applied; every
    /// earlier commit is intact. The store is now poisoned.
    #[error(
        "store full: free disk space, then restart the process; committed data is intact \
         ({detail})"
    )]
    Full { detail: String },
    /// An earlier commit failed and this handle refuses all work. Nothing was changed.
    #[error(
        "store unusable after an earlier failed commit; restart the process (reopen the \
         store): committed data is intact"
    )]
    Poisoned,
    /// An I/O error (a failed write or fsync). The batch is wholly durable or wholly absent;
    /// reopening tells which. The store is now poisoned.
    #[error(
        "I/O error committing to the store: {detail}; restart the process (a failed fsync is \
         never retried): recovery finds the last durable commit"
    )]
    Io { detail: String },
    /// Any other SQLite failure. The batch was not applied (or, if `COMMIT` itself failed,
    /// is wholly durable or wholly absent; reopening tells which). The store is now poisoned.
    #[error("SQLite error committing to the store: {detail}; restart the process")]
    Sqlite { detail: String },
}

/// Why a read ([`Reader`](crate::Reader) method or [`Store::table_get`](crate::Store::table_get))
/// failed. Reads never change the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A record failed its check; it names the table and key. Its bytes are not returned.
    #[error("{0}; run `ken inspect STORE verify` to list every damaged record")]
    Corrupted(Corrupted),
    /// The owning [`Store`](crate::Store) is poisoned by an earlier failed commit; reopen it.
    #[error(
        "store unusable after an earlier failed commit; restart the process (reopen the store)"
    )]
    Poisoned,
    /// An I/O error outside SQLite (file sizes).
    #[error("I/O error reading the store: {detail}")]
    Io { detail: String },
    /// The file is damaged below the record level: a page fails its checksum, or SQLite
    /// finds a damaged page (`SQLITE_CORRUPT`).
    #[error(
        "the store file is damaged below its records ({detail}); do not run from it: \
         run `ken inspect STORE verify`, then restore it from a standby or backup"
    )]
    Damaged { detail: String },
    /// SQLite failed the query.
    #[error("SQLite error reading the store: {detail}")]
    Sqlite { detail: String },
}

impl From<Corrupted> for ReadError {
    fn from(c: Corrupted) -> Self {
        ReadError::Corrupted(c)
    }
}

/// True for a value read back with a type the (STRICT) schema does not allow: only a damaged
/// page produces one.
pub(crate) fn is_type_mismatch(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..)
    )
}

/// For a read that failed because a page failed its checksum (`SQLITE_IOERR_DATA` from the
/// `ken-wal` shim): the page, named.
pub(crate) fn checksum_failure(e: &rusqlite::Error) -> Option<String> {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return None;
    };
    if f.extended_code != rusqlite::ffi::SQLITE_IOERR_DATA {
        return None;
    }
    Some(match crate::vfs::take_checksum_failure() {
        Some(failure) => failure.to_string(),
        None => "a page of the database file fails its checksum".to_string(),
    })
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        if let Some(detail) = checksum_failure(&e) {
            return ReadError::Damaged { detail };
        }
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => ReadError::Damaged {
                detail: format!("SQLite: {e}"),
            },
            _ if is_type_mismatch(&e) => ReadError::Damaged {
                detail: format!("a row does not match the schema: {e}"),
            },
            _ => ReadError::Sqlite {
                detail: e.to_string(),
            },
        }
    }
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let Some(page) = checksum_failure(&e) {
            return CommitError::Io {
                detail: format!(
                    "{page}: the store file is damaged; do not run from it: run `ken inspect \
                     STORE verify`, then restore it from a standby or backup"
                ),
            };
        }
        let detail = e.to_string();
        let shm_full = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
        );
        if shm_full {
            // The `-shm` index could not grow with the `-wal`: no space, as SQLITE_FULL.
            return CommitError::Full {
                detail: format!("{detail}: the -shm index cannot grow"),
            };
        }
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => CommitError::Full { detail },
            Some(ErrorCode::SystemIoFailure) => CommitError::Io { detail },
            _ => CommitError::Sqlite { detail },
        }
    }
}
