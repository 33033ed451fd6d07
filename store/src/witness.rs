//! The commit witness: the owner lock file remembers how many commits its store made durable.
//!
//! A store that lost committed history (a deleted or damaged `-wal`, an older copy of the
//! database put in its place) opens as a perfectly valid, older store: nothing inside it says
//! that later commits existed. The owner lock file `<store>.lock` lives beside it for the
//! life of the store and is never deleted, so the owner records there, after every commit
//! returned durable and before any of its outputs leave, the store's incarnation and commit
//! count. At the next open, a store holding fewer commits than its lock file witnessed has
//! lost history, and [`crate::Store::open`] refuses it (`OpenError::HistoryLost`).
//!
//! Cost: the count is an aligned 8-byte store into a shared mapping of the lock file (no
//! system call per commit); if the file cannot be mapped, one `pwrite` per commit. It is not
//! fsynced: a SIGKILL loses nothing (the page cache keeps the mapping's writes), a power cut
//! may leave an older count on disk. So the witness never exceeds the durable commits
//! (it is written after the commit's fsync), and a stale witness only weakens the check,
//! never raises a false alarm.
//!
//! Layout (32 bytes, little-endian; also in `FORMAT.md`): magic `ken-lock` (8), owner pid u32,
//! layout version u32 (1), incarnation u64, commits u64. A lock file without the magic (a
//! format-2 store's, which held the pid as text, or a new one) witnesses nothing.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The lock file's first 8 bytes.
pub const LOCK_MAGIC: [u8; 8] = *b"ken-lock";
/// Layout version of the lock file.
pub const LOCK_LAYOUT_VERSION: u32 = 1;
/// Bytes of the lock file.
pub const LOCK_FILE_BYTES: usize = 32;
/// Offset of the commit count.
const COMMITS_OFFSET: usize = 24;

/// What a lock file witnesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessRecord {
    /// The pid of the owner that wrote it last (informational).
    pub pid: u32,
    /// The incarnation of the store the count belongs to.
    pub incarnation: u64,
    /// Commits the store had made durable, at least.
    pub commits: u64,
}

/// Decodes a lock file's bytes.
pub fn decode(bytes: &[u8]) -> Option<WitnessRecord> {
    if bytes.len() < LOCK_FILE_BYTES || bytes[..8] != LOCK_MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(12) != LOCK_LAYOUT_VERSION {
        return None;
    }
    Some(WitnessRecord {
        pid: u32_at(8),
        incarnation: u64_at(16),
        commits: u64_at(COMMITS_OFFSET),
    })
}

/// Encodes a lock file.
pub fn encode(w: &WitnessRecord) -> [u8; LOCK_FILE_BYTES] {
    let mut out = [0u8; LOCK_FILE_BYTES];
    out[..8].copy_from_slice(&LOCK_MAGIC);
    out[8..12].copy_from_slice(&w.pid.to_le_bytes());
    out[12..16].copy_from_slice(&LOCK_LAYOUT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&w.incarnation.to_le_bytes());
    out[COMMITS_OFFSET..].copy_from_slice(&w.commits.to_le_bytes());
    out
}

/// Reads the witness of the lock file at `path` (`None`: no file, or none witnessed).
pub fn read_path(path: &Path) -> Option<WitnessRecord> {
    let mut bytes = Vec::with_capacity(LOCK_FILE_BYTES);
    File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut bytes)
        .ok()?;
    decode(&bytes)
}

/// Reads the witness of an open lock file.
pub(crate) fn read_file(file: &File) -> Option<WitnessRecord> {
    let mut bytes = [0u8; LOCK_FILE_BYTES];
    file.read_exact_at(&mut bytes, 0).ok()?;
    decode(&bytes)
}

/// The owner's handle on the witness of its lock file.
#[derive(Debug)]
pub(crate) struct Witness {
    file: File,
    /// The shared mapping of the lock file's first page, if mapping worked.
    map: Option<Mapping>,
}

#[derive(Debug)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned by one `Witness` and only written through an atomic.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are a mapping this value created and nobody else unmaps.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

impl Witness {
    /// Writes `record` into the lock file (whole) and maps it for [`Witness::set`].
    pub(crate) fn install(file: File, record: &WitnessRecord) -> std::io::Result<Witness> {
        file.write_all_at(&encode(record), 0)?;
        file.set_len(LOCK_FILE_BYTES as u64)?;
        let len = LOCK_FILE_BYTES;
        // SAFETY: a shared read-write mapping of an open file of at least `len` bytes; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        let map = if ptr == libc::MAP_FAILED {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot map the lock file; the commit witness uses pwrite"
            );
            None
        } else {
            Some(Mapping { ptr, len })
        };
        Ok(Witness { file, map })
    }

    /// Records that `commits` commits are durable.
    pub(crate) fn set(&self, commits: u64) {
        match &self.map {
            Some(m) => {
                // SAFETY: the mapping is page aligned and at least 32 bytes long, so offset 24
                // is an aligned, valid u64 for the mapping's lifetime (`self`).
                let cell =
                    unsafe { &*(m.ptr.cast::<u8>().add(COMMITS_OFFSET).cast::<AtomicU64>()) };
                cell.store(commits.to_le(), Ordering::Release);
            }
            None => {
                // Best effort: a failed write only weakens the check.
                let _ = self
                    .file
                    .write_all_at(&commits.to_le_bytes(), COMMITS_OFFSET as u64);
            }
        }
    }

    /// The lock file (held locked for the life of the owner).
    #[cfg(test)]
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_rejects_other_bytes() {
        let w = WitnessRecord {
            pid: 77,
            incarnation: u64::MAX - 3,
            commits: 12345,
        };
        let bytes = encode(&w);
        assert_eq!(&bytes[..8], b"ken-lock");
        assert_eq!(decode(&bytes), Some(w));
        assert_eq!(decode(b"1234\n"), None);
        assert_eq!(decode(&bytes[..31]), None);
        let mut other = bytes;
        other[12] = 2;
        assert_eq!(decode(&other), None);
    }

    #[test]
    fn set_is_visible_to_readers_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let w = Witness::install(
            file,
            &WitnessRecord {
                pid: 1,
                incarnation: 9,
                commits: 0,
            },
        )
        .unwrap();
        assert!(w.map.is_some());
        w.set(41);
        w.set(42);
        assert_eq!(
            read_path(&path).map(|r| (r.incarnation, r.commits)),
            Some((9, 42))
        );
        assert_eq!(read_file(w.file()).map(|r| r.commits), Some(42));
    }
}
