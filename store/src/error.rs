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
    /// SQLite failed the query (for example the file is damaged below the record level).
    #[error("SQLite error reading the store: {detail}")]
    Sqlite { detail: String },
}

impl From<Corrupted> for ReadError {
    fn from(c: Corrupted) -> Self {
        ReadError::Corrupted(c)
    }
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        ReadError::Sqlite {
            detail: e.to_string(),
        }
    }
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => CommitError::Full { detail },
            Some(ErrorCode::SystemIoFailure) => CommitError::Io { detail },
            _ => CommitError::Sqlite { detail },
        }
    }
}
