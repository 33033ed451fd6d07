//! Consistent copies of a store, and putting a copy in a store's place: how a standby's
//! replica is seeded (`ken::standby`).
//!
//! Invariants:
//! - A copy is taken by `VACUUM INTO` on a [`Reader`]'s read-only connection: one read
//!   transaction, so the copy is the store as of one commit (whatever the owner does
//!   meanwhile), and the owner is never blocked. The copy is written through the `ken-wal`
//!   shim with the store's page size and reserved bytes, so its pages carry their checksums
//!   and it opens and verifies like the original.
//! - [`install_copy`] replaces a store only while holding its owner lock (a running owner
//!   makes it [`OpenError::InUse`], nothing changed), and leaves the lock file witnessing the
//!   copy's incarnation and commits: the replacement is deliberate, so the next open must not
//!   call it lost history.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{OpenError, ReadError};
use crate::reader::{Meta, Reader};
use crate::witness::{self, WitnessRecord};

impl Reader {
    /// Writes a consistent copy of the store to `dest` (which must not exist; put it in the
    /// same directory as its final place so that a rename can install it), fsyncs it, and
    /// returns the copy's `meta` (its `commits` is the commit the copy is as of).
    ///
    /// The copy is one `VACUUM INTO`: one read transaction, compacted, without a `-wal`.
    pub fn copy_into(&self, dest: &Path) -> Result<Meta, ReadError> {
        let sqlite = |e: rusqlite::Error| ReadError::Sqlite {
            detail: format!("VACUUM INTO {}: {e}", dest.display()),
        };
        let io = |e: std::io::Error| ReadError::Io {
            detail: format!("{}: {e}", dest.display()),
        };
        let name = dest.to_str().ok_or_else(|| ReadError::Io {
            detail: format!("{}: the path is not UTF-8", dest.display()),
        })?;
        self.conn
            .execute("VACUUM INTO ?1", [name])
            .map_err(sqlite)?;
        seal_page_checksums(dest).map_err(io)?;
        let copy = Reader::open(dest).map_err(|e| ReadError::Io {
            detail: format!("the copy does not open: {e}"),
        })?;
        copy.meta()
    }
}

/// Writes the `ken-wal` checksum into every page of the (closed) database file at `path`
/// whose header reserves the checksum bytes, then fsyncs it. `VACUUM INTO` writes its new
/// file through the shim, but pages SQLite spills before it writes page 1 (a copy larger
/// than its page cache) go out before the shim knows the file's layout, without their
/// checksum. The copy's pages were all read, checked, from the original.
fn seal_page_checksums(path: &Path) -> std::io::Result<()> {
    use crate::vfs::{header_layout, page_checksum, PAGE_CHECKSUM_BYTES};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut header = [0u8; 100];
    file.read_exact_at(&mut header, 0)?;
    if let Some((size, PAGE_CHECKSUM_BYTES)) = header_layout(&header) {
        let pages = file.metadata()?.len() / size as u64;
        // SQLite never uses the page that holds the lock bytes (at 1 GiB).
        let lock_byte_page = (1u64 << 30) / size as u64 + 1;
        let n = size - usize::from(PAGE_CHECKSUM_BYTES);
        let mut page = vec![0u8; size];
        for number in 1..=pages {
            if number == lock_byte_page {
                continue;
            }
            let offset = (number - 1) * size as u64;
            file.read_exact_at(&mut page, offset)?;
            let page_no = u32::try_from(number).map_err(std::io::Error::other)?;
            let sum = page_checksum(page_no, &page[..n]);
            if page[n..] != sum {
                file.write_all_at(&sum, offset + n as u64)?;
            }
        }
    }
    file.sync_all()
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Puts the store copy at `copy` (made by [`Reader::copy_into`], in the same directory) in
/// place of the store at `path`, which may be absent: takes the owner lock, checks the copy
/// opens, removes `path`'s `-wal` and `-shm`, renames the copy over `path`, fsyncs the
/// directory, and writes the copy's incarnation and commits into the lock file's witness.
/// Returns the copy's `meta`.
///
/// On `Err` the store at `path` is either untouched (the lock was held, the copy did not
/// open) or, after the removal of its `-wal`, missing its latest commits: the caller must
/// install a copy again before running from it.
pub fn install_copy(path: &Path, copy: &Path) -> Result<Meta, OpenError> {
    let lock = crate::store::take_owner_lock(path)?;
    let meta = Reader::open(copy)?
        .meta()
        .map_err(|e| OpenError::NotAKenStore {
            path: copy.to_path_buf(),
            detail: e.to_string(),
        })?;
    File::open(copy)
        .and_then(|f| f.sync_all())
        .map_err(io_err(copy))?;
    let shm = {
        let mut name = path.as_os_str().to_owned();
        name.push("-shm");
        std::path::PathBuf::from(name)
    };
    for f in [crate::files::wal_path(path), shm] {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&f)(e)),
        }
    }
    std::fs::rename(copy, path).map_err(io_err(path))?;
    crate::store::fsync_dir(path)?;
    let lock_file = crate::access::lock_path(path);
    lock.write_all_at(
        &witness::encode(&WitnessRecord {
            pid: std::process::id(),
            incarnation: meta.incarnation,
            commits: meta.commits,
        }),
        0,
    )
    .and_then(|()| lock.set_len(witness::LOCK_FILE_BYTES as u64))
    .and_then(|()| lock.sync_all())
    .map_err(io_err(&lock_file))?;
    Ok(meta)
}
