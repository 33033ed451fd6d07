//! The quick check of a store's files, before SQLite opens them: the write-ahead log read
//! by [`wal::scan`], a database file missing beside a log that still holds commits, and a
//! database file shorter than its header says.
//!
//! Why before: SQLite deletes a WAL it finds beside an empty database, and the first
//! checkpoint after an open rewrites the log, so the evidence of lost history would be gone
//! by the time a query could notice. The owner runs [`check`] before its connection opens;
//! [`crate::Reader::verify`] runs the same checks (read-only) and reports them.
//!
//! Invariant: nothing here writes; every input byte string is handled without panicking.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::OpenError;
use crate::wal::{self, WalState};

/// Bytes of the SQLite database header read here.
const DB_HEADER_BYTES: usize = 100;

/// The path of the write-ahead log of the store at `path`: `<path>-wal`.
pub fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What the files look like.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    /// 0 when the database file is missing.
    pub db_bytes: u64,
    pub db_exists: bool,
    /// The database header's page size, if the header is SQLite's.
    pub page_size: Option<u32>,
    /// Pages the header says the file holds, if that field is valid (SQLite marks it valid
    /// when its "version-valid-for" number equals the change counter).
    pub header_pages: Option<u32>,
    pub wal: WalState,
}

fn read_prefix(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(f) => {
            let mut out = Vec::new();
            f.take(max as u64).read_to_end(&mut out)?;
            Ok(Some(out))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the database header and scans the whole WAL, in chunks (the WAL file is cut back to
/// `vfs::wal_preallocate_bytes`, 1.5 MiB at 1 KiB pages, when it restarts after a large
/// batch grew it).
pub(crate) fn examine(path: &Path) -> std::io::Result<Files> {
    let header = read_prefix(path, DB_HEADER_BYTES)?;
    let db_bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let page_size = header.as_deref().and_then(wal::db_page_size);
    let header_pages = match (&header, page_size) {
        (Some(h), Some(_)) if h.len() >= DB_HEADER_BYTES => {
            let be = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
            (be(92) == be(24) && be(28) > 0).then(|| be(28))
        }
        _ => None,
    };
    let wal = wal::scan_file(&wal_path(path), page_size.unwrap_or(4096))?;
    Ok(Files {
        db_bytes,
        db_exists: header.is_some(),
        page_size,
        header_pages,
        wal,
    })
}

/// A problem of the files, as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileProblem {
    /// The WAL is damaged in the middle (see [`wal::WalDamage`]).
    Wal(wal::WalDamage),
    /// Damage below the record level, described.
    Damaged(String),
}

impl Files {
    /// Every problem, in the order the owner checks them.
    pub(crate) fn problems(&self) -> Vec<FileProblem> {
        let mut out = Vec::new();
        if self.db_bytes == 0 && self.wal.commits > 0 {
            out.push(FileProblem::Damaged(format!(
                "the database file is {} but its write-ahead log holds {} committed \
                 transactions (SQLite would delete the log and a new, empty store would be \
                 created)",
                if self.db_exists { "empty" } else { "missing" },
                self.wal.commits
            )));
        }
        if let Some(d) = &self.wal.damage {
            out.push(FileProblem::Wal(d.clone()));
        }
        if let (Some(pages), Some(page_size), false) =
            (self.header_pages, self.page_size, self.wal.page_one_logged)
        {
            let want = u64::from(pages) * u64::from(page_size);
            if self.db_bytes < want {
                out.push(FileProblem::Damaged(format!(
                    "the database file is {} bytes, but its header says {pages} pages of \
                     {page_size} bytes ({want} bytes): it was truncated",
                    self.db_bytes
                )));
            }
        }
        out
    }
}

/// The owner's check before it opens the files: the first problem as an [`OpenError`].
pub(crate) fn check(path: &Path) -> Result<Files, OpenError> {
    let files = examine(path).map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match files.problems().into_iter().next() {
        None => Ok(files),
        Some(FileProblem::Wal(d)) => Err(OpenError::WalDamaged {
            path: path.to_path_buf(),
            wal: wal_path(path),
            frame: d.frame,
            proof_frame: d.proof_frame,
            commits_lost: d.commits_lost,
            detail: d.detail,
        }),
        Some(FileProblem::Damaged(detail)) => Err(OpenError::Damaged {
            path: path.to_path_buf(),
            detail,
        }),
    }
}
