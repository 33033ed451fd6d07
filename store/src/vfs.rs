//! `ken-wal`: a SQLite VFS shim over the default VFS that gathers a commit's WAL writes into
//! one system call.
//!
//! SQLite writes each WAL frame with two `pwrite`s (its 24-byte header, then the page), so a
//! commit that touches 6 pages makes 12 system calls before its `fdatasync`. On the virtual
//! machines Ken was measured on a `pwrite` costs about 7 us, which made a one-turn commit
//! cost 1.7 raw fsyncs (measured with a small probe on the same ext4 disk: 12 small writes +
//! fdatasync 236 us p50 against one 24 KiB write + fdatasync 155 us, interleaved in one
//! run). One turn per commit on tmpfs: 26 us p50 without the shim, 15 us with it.
//!
//! The shim buffers contiguous writes to files SQLite opens as WALs and writes the buffer
//! with one call before anything that needs the bytes in the file: `xSync` (so a commit is
//! durable exactly as before: buffer written, then the real sync), `xRead`, `xTruncate`,
//! `xFileSize`, `xFileControl`, `xClose`, a write that is not contiguous, or the buffer
//! reaching [`BUFFER_BYTES_MAX`]. Every other file, and every other method, goes straight to
//! the default VFS.
//!
//! **Page checksums.** The shim also keeps a checksum in the last [`PAGE_CHECKSUM_BYTES`]
//! bytes of every page of a database file whose header reserves exactly that many bytes per
//! page (byte 20; Ken's stores set it at creation, see [`reserve_checksum_bytes`]). Every
//! whole page written to such a file (by a checkpoint, from the WAL) gets the checksum of its
//! page number and its other bytes; every whole page read from it is checked, and a page
//! that fails is `SQLITE_IOERR_DATA` (the error SQLite defines for such shims) instead of
//! data: a bit flip in a B-tree page (a child pointer, a cell count) would otherwise make
//! rows vanish with no error at all, since SQLite trusts its pages. The page number in the
//! checksum also catches a page written to the wrong place. Pages in the WAL carry a stale
//! checksum in those bytes: the WAL's own cumulative checksums cover them, and Ken's WAL
//! scan (`wal`) checks them at open. Memory-mapped reads are turned off for checked files so
//! every page goes through `xRead`. The failure is also remembered per thread
//! ([`take_checksum_failure`]) so errors can name the page.
//!
//! The shim also preallocates a new WAL ([`wal_preallocate_bytes`] of written zeros, sized
//! by the page size) so that commits overwrite rather than grow the file.
//!
//! Why this is safe: other connections (the engine's `Reader`, `ken inspect`) read WAL
//! frames only up to the last commit recorded in the shared-memory index, which SQLite
//! updates after the commit's `xSync`, by which point the buffer is in the file. A crash
//! loses unsynced buffered bytes, which SQLite already assumes of any write not yet synced.
//! A failed buffer write is returned by the call that triggered it (for a commit, its
//! `xSync`), so the commit fails and the store poisons itself as on any I/O error.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the shim is registered under.
pub const VFS_NAME: &CStr = c"ken-wal";

/// A buffer is written out once it holds this much.
pub const BUFFER_BYTES_MAX: usize = 4 << 20;

/// SQLite's automatic checkpoint point, in WAL frames (its default, which Ken keeps): after
/// the commit that takes the WAL past it, the WAL is checkpointed and, once no reader needs
/// its frames, restarts from its beginning.
pub const WAL_CHECKPOINT_FRAMES: usize = 1000;

/// The size a WAL is extended to with zeros when opened (see `preallocate`), and cut back
/// to after a large batch grew it (`journal_size_limit`): the automatic checkpoint point
/// ([`WAL_CHECKPOINT_FRAMES`] frames of `page_size` bytes plus their headers) and half as
/// much again (the commit that passes the point, frames kept while a reader holds them),
/// rounded up to 64 KiB: 1.5 MiB for the default 1 KiB pages, 5.9 MiB for 4 KiB.
///
/// Sized by the page size because a restart reads the whole WAL file (Ken's own scan,
/// `files::examine`): a cold start on a 1 GiB store read a 4.5 MiB WAL (sized for 4 KiB
/// pages) in about 10 of its 25 ms before the first request (apps/examples/cold_restart.rs).
pub const fn wal_preallocate_bytes(page_size: usize) -> usize {
    let checkpoint =
        WAL_HEADER_BYTES + WAL_CHECKPOINT_FRAMES * (page_size + WAL_FRAME_HEADER_BYTES);
    (checkpoint * 3 / 2).next_multiple_of(64 << 10)
}

/// The WAL preallocation for a store whose page size could not be read: that of SQLite's
/// default page size, 4096.
pub const WAL_PREALLOCATE_BYTES_UNKNOWN_PAGE: usize = wal_preallocate_bytes(4096);

/// Bytes of the WAL header, and of each frame's header.
const WAL_HEADER_BYTES: usize = 32;
const WAL_FRAME_HEADER_BYTES: usize = 24;

/// Bytes per write call: the unix VFS takes at most `0x1ffff` bytes per `xWrite` (its
/// `seekAndWriteFd` masks the length), so a buffer goes out in chunks of 120 KiB.
const WRITE_BYTES_MAX: usize = 120 << 10;

/// Bytes reserved at the end of each page for the shim's checksum: the CRC-32 of the page
/// number (u32 LE) followed by the page's other bytes, then the page number, both LE.
pub const PAGE_CHECKSUM_BYTES: u8 = 8;

/// A page of a checked database file that failed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumFailure {
    /// The page number (from 1) SQLite asked for.
    pub page: u32,
    /// The page number recorded in the page's checksum bytes (differs when the page holds
    /// another page's bytes).
    pub recorded_page: u32,
}

impl std::fmt::Display for ChecksumFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "page {} of the database file fails its checksum",
            self.page
        )?;
        if self.recorded_page != self.page {
            write!(f, " (it records page {})", self.recorded_page)?;
        }
        Ok(())
    }
}

thread_local! {
    static LAST_FAILURE: std::cell::Cell<Option<ChecksumFailure>> =
        const { std::cell::Cell::new(None) };
}

/// The last page that failed its checksum on this thread, if any (and forgets it). SQLite
/// reports only `SQLITE_IOERR_DATA`; this names the page.
pub fn take_checksum_failure() -> Option<ChecksumFailure> {
    LAST_FAILURE.with(std::cell::Cell::take)
}

/// The checksum bytes of page `page` (from 1) whose bytes but the last
/// [`PAGE_CHECKSUM_BYTES`] are `body`.
pub fn page_checksum(page: u32, body: &[u8]) -> [u8; PAGE_CHECKSUM_BYTES as usize] {
    let mut h = crc32fast::Hasher::new();
    h.update(&page.to_le_bytes());
    h.update(body);
    let mut out = [0u8; PAGE_CHECKSUM_BYTES as usize];
    out[..4].copy_from_slice(&h.finalize().to_le_bytes());
    out[4..].copy_from_slice(&page.to_le_bytes());
    out
}

/// Checks one whole page (`bytes.len()` is the page size) read from offset
/// `(page - 1) * bytes.len()`.
pub fn check_page(page: u32, bytes: &[u8]) -> Result<(), ChecksumFailure> {
    let n = bytes.len() - usize::from(PAGE_CHECKSUM_BYTES);
    if page_checksum(page, &bytes[..n])[..] == bytes[n..] {
        return Ok(());
    }
    let recorded = u32::from_le_bytes(bytes[n + 4..].try_into().expect("4 bytes"));
    Err(ChecksumFailure {
        page,
        recorded_page: recorded,
    })
}

/// The page size and reserved bytes per page a database header (the first 100 bytes of
/// the file) declares, if it is one.
pub fn header_layout(header: &[u8]) -> Option<(usize, u8)> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n if n >= 512 && n.is_power_of_two() => usize::from(n),
        _ => return None,
    };
    Some((size, header[20]))
}

/// Asks SQLite to reserve [`PAGE_CHECKSUM_BYTES`] per page in the (still empty) database of
/// `conn`, so the shim keeps page checksums in it. Takes effect when the first page is
/// written; on a database that has pages already it changes nothing.
pub(crate) fn reserve_checksum_bytes(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let mut n: c_int = c_int::from(PAGE_CHECKSUM_BYTES);
    // SAFETY: a valid connection handle and a pointer to a live int, as the file control
    // SQLITE_FCNTL_RESERVE_BYTES takes.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_RESERVE_BYTES,
            ptr::addr_of_mut!(n).cast(),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

/// Page checks of one database file.
#[derive(Default)]
struct Checked {
    /// The page size, once the header was seen with checksums reserved; `None`: unchecked.
    page_size: Option<usize>,
    /// Scratch page for writes (SQLite's buffer is const).
    scratch: Vec<u8>,
}

impl Checked {
    /// Learns the layout from a read or write at offset 0.
    fn learn(&mut self, offset: i64, bytes: &[u8]) {
        if offset != 0 {
            return;
        }
        if let Some((size, reserved)) = header_layout(bytes) {
            self.page_size = (reserved == PAGE_CHECKSUM_BYTES).then_some(size);
        }
    }

    /// The page number of a whole, aligned page access, if this file is checked.
    fn page_of(&self, offset: i64, len: usize) -> Option<u32> {
        let size = self.page_size?;
        let offset = u64::try_from(offset).ok()?;
        if len != size || offset % size as u64 != 0 {
            return None;
        }
        u32::try_from(offset / size as u64 + 1).ok()
    }
}

/// One open file: SQLite allocates `szOsFile` bytes and hands them to `xOpen`; the shim's
/// header comes first and the default VFS's file follows at [`REAL_OFFSET`].
#[repr(C)]
struct ShimFile {
    base: ffi::sqlite3_file,
    /// Buffered writes (WAL files only); `None` for other files.
    buffer: Option<Box<Buffer>>,
    /// Page checks (main database files only); `None` for other files.
    checked: Option<Box<Checked>>,
}

#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
    /// File offset of `data[0]`.
    start: i64,
}

/// Where the default VFS's file lives inside a [`ShimFile`] allocation (8-aligned).
const REAL_OFFSET: usize = std::mem::size_of::<ShimFile>().next_multiple_of(8);

struct Registered {
    /// The default VFS, to which everything is forwarded.
    real: *mut ffi::sqlite3_vfs,
}

// SAFETY: the pointer is to SQLite's static default VFS, which lives for the process and is
// safe to use from any thread (SQLite is built threadsafe).
unsafe impl Send for Registered {}
// SAFETY: as above.
unsafe impl Sync for Registered {}

/// What the shim wrote, process-wide (every store this process opened through it): bytes
/// SQLite handed to the shim for the WAL and for the database file (checkpoints), the zeros
/// of WAL preallocation, and syncs. A benchmark reads them before and after a run to say
/// what one commit writes, counted by Ken itself rather than guessed from the kernel
/// (`/proc/PID/io` is wrong on some kernels). Relaxed atomics: a few nanoseconds a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounters {
    /// Bytes written to `-wal` files (frame headers and pages).
    pub wal_bytes: u64,
    /// Bytes written to database files (checkpoints, and the first pages of a new store).
    pub db_bytes: u64,
    /// Zeros written once per WAL to preallocate it.
    pub wal_prealloc_bytes: u64,
    /// `xSync` calls (each an `fdatasync` or `fsync`).
    pub syncs: u64,
}

impl WriteCounters {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &WriteCounters) -> WriteCounters {
        WriteCounters {
            wal_bytes: self.wal_bytes - earlier.wal_bytes,
            db_bytes: self.db_bytes - earlier.db_bytes,
            wal_prealloc_bytes: self.wal_prealloc_bytes - earlier.wal_prealloc_bytes,
            syncs: self.syncs - earlier.syncs,
        }
    }
}

static WAL_BYTES: AtomicU64 = AtomicU64::new(0);
static DB_BYTES: AtomicU64 = AtomicU64::new(0);
static WAL_PREALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// The process-wide [`WriteCounters`] now.
pub fn write_counters() -> WriteCounters {
    WriteCounters {
        wal_bytes: WAL_BYTES.load(Ordering::Relaxed),
        db_bytes: DB_BYTES.load(Ordering::Relaxed),
        wal_prealloc_bytes: WAL_PREALLOC_BYTES.load(Ordering::Relaxed),
        syncs: SYNCS.load(Ordering::Relaxed),
    }
}

static REGISTERED: OnceLock<Result<Registered, c_int>> = OnceLock::new();

/// Registers the shim (once per process; not as the default VFS).
///
/// # Errors
/// The SQLite result code if the default VFS is missing or registration failed.
pub fn register() -> Result<(), c_int> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: plain SQLite API calls; the VFS struct is leaked, so it outlives every
            // connection that uses it, as SQLite requires.
            unsafe {
                let rc = ffi::sqlite3_initialize();
                if rc != ffi::SQLITE_OK {
                    return Err(rc);
                }
                let real = ffi::sqlite3_vfs_find(ptr::null());
                if real.is_null() {
                    return Err(ffi::SQLITE_ERROR);
                }
                let mut vfs: ffi::sqlite3_vfs = *real;
                vfs.iVersion = vfs.iVersion.min(2);
                vfs.szOsFile = c_int::try_from(REAL_OFFSET).expect("small") + (*real).szOsFile;
                vfs.pNext = ptr::null_mut();
                vfs.zName = VFS_NAME.as_ptr();
                vfs.pAppData = real.cast();
                vfs.xOpen = Some(shim_open);
                vfs.xDelete = Some(shim_delete);
                vfs.xAccess = Some(shim_access);
                vfs.xFullPathname = Some(shim_full_pathname);
                vfs.xSetSystemCall = None;
                vfs.xGetSystemCall = None;
                vfs.xNextSystemCall = None;
                let vfs = Box::leak(Box::new(vfs));
                let rc = ffi::sqlite3_vfs_register(vfs, 0);
                if rc != ffi::SQLITE_OK {
                    return Err(rc);
                }
                Ok(Registered { real })
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(|rc| *rc)
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(r)) => r.real,
        _ => unreachable!("the shim is used only after it registered"),
    }
}

/// The default VFS's file inside `file`.
///
/// # Safety
/// `file` points to a `szOsFile`-byte allocation handed to [`shim_open`].
unsafe fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().add(REAL_OFFSET).cast()
}

/// # Safety
/// As [`real`], and the real file was opened (its `pMethods` is set).
unsafe fn methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*real(file)).pMethods
}

/// Writes out the buffer of `file` (if any) with one call.
///
/// # Safety
/// `file` is an open shim file.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let shim = &mut *file.cast::<ShimFile>();
    let Some(buffer) = shim.buffer.as_mut() else {
        return ffi::SQLITE_OK;
    };
    if buffer.data.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods(file).xWrite.expect("xWrite");
    let mut rc = ffi::SQLITE_OK;
    let mut offset = buffer.start;
    for chunk in buffer.data.chunks(WRITE_BYTES_MAX) {
        let len = c_int::try_from(chunk.len()).expect("a chunk fits a c_int");
        rc = write(real(file), chunk.as_ptr().cast(), len, offset);
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += i64::from(len);
    }
    // Written or failed, the bytes leave the buffer: a failure is reported now, and SQLite
    // treats the file as suspect from here on (the store poisons itself).
    buffer.data.clear();
    rc
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(shim_close),
    xRead: Some(shim_read),
    xWrite: Some(shim_write),
    xTruncate: Some(shim_truncate),
    xSync: Some(shim_sync),
    xFileSize: Some(shim_file_size),
    xLock: Some(shim_lock),
    xUnlock: Some(shim_unlock),
    xCheckReservedLock: Some(shim_check_reserved_lock),
    xFileControl: Some(shim_file_control),
    xSectorSize: Some(shim_sector_size),
    xDeviceCharacteristics: Some(shim_device_characteristics),
    xShmMap: Some(shim_shm_map),
    xShmLock: Some(shim_shm_lock),
    xShmBarrier: Some(shim_shm_barrier),
    xShmUnmap: Some(shim_shm_unmap),
    xFetch: Some(shim_fetch),
    xUnfetch: Some(shim_unfetch),
};

unsafe extern "C" fn shim_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs();
    ptr::write(
        file.cast::<ShimFile>(),
        ShimFile {
            base: ffi::sqlite3_file {
                pMethods: ptr::null(),
            },
            buffer: None,
            checked: None,
        },
    );
    let inner = real(file);
    (*inner).pMethods = ptr::null();
    let rc = (*real_vfs).xOpen.expect("xOpen")(real_vfs, name, inner, flags, out_flags);
    if (*inner).pMethods.is_null() {
        return rc;
    }
    let shim = &mut *file.cast::<ShimFile>();
    // The shim forwards every version-3 method (WAL needs the shared-memory ones); the
    // default unix VFS offers version 3, so an older one means a build without it: refuse.
    if (*(*inner).pMethods).iVersion < IO_METHODS.iVersion {
        (*(*inner).pMethods).xClose.expect("xClose")(inner);
        (*inner).pMethods = ptr::null();
        return ffi::SQLITE_CANTOPEN;
    }
    if flags & ffi::SQLITE_OPEN_WAL != 0 {
        shim.buffer = Some(Box::default());
        preallocate(inner, wal_preallocate_bytes_for(name));
    }
    if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        shim.checked = Some(Box::default());
        // Learn the layout now: SQLite may read whole pages before it reads the header.
        let mut header = [0u8; 100];
        let m = &*(*inner).pMethods;
        if m.xRead.expect("xRead")(inner, header.as_mut_ptr().cast(), 100, 0) == ffi::SQLITE_OK {
            shim.checked.as_mut().expect("set").learn(0, &header);
        }
    }
    shim.base.pMethods = &IO_METHODS;
    rc
}

/// [`wal_preallocate_bytes`] for the WAL `wal` (a name SQLite handed to `xOpen`), from the
/// page size in its database's header; [`WAL_PREALLOCATE_BYTES_UNKNOWN_PAGE`] if the header
/// cannot be read (SQLite writes page 1 before it opens a WAL, so that is not expected).
///
/// # Safety
/// `wal` is a WAL file name SQLite passed to `xOpen`.
unsafe fn wal_preallocate_bytes_for(wal: ffi::sqlite3_filename) -> usize {
    use std::os::unix::fs::FileExt;
    let db = ffi::sqlite3_filename_database(wal);
    if db.is_null() {
        return WAL_PREALLOCATE_BYTES_UNKNOWN_PAGE;
    }
    let Ok(db) = CStr::from_ptr(db).to_str() else {
        return WAL_PREALLOCATE_BYTES_UNKNOWN_PAGE;
    };
    let mut header = [0u8; 18];
    let read = std::fs::File::open(db).and_then(|f| f.read_exact_at(&mut header, 0));
    // Bytes 16-17: the page size, big-endian; 1 means 65536.
    match (read, u16::from_be_bytes([header[16], header[17]])) {
        (Ok(()), 1) => wal_preallocate_bytes(65536),
        (Ok(()), n) if n >= 512 && n.is_power_of_two() => wal_preallocate_bytes(usize::from(n)),
        _ => WAL_PREALLOCATE_BYTES_UNKNOWN_PAGE,
    }
}

/// Extends a WAL shorter than `bytes` with written zeros (and syncs it), so
/// that commits overwrite allocated blocks from the start instead of growing the file: on
/// ext4 a growing write's `fdatasync` also commits the journal (measured: 24 KiB appended +
/// fdatasync 261 us p50 against 150 us overwritten, interleaved). Zeros are not a valid WAL
/// header or frame, so SQLite reads them as an empty WAL / the end of the log. Best effort:
/// on any error the file is cut back to its old size and used as it was.
///
/// # Safety
/// `file` is an open file of the default VFS.
unsafe fn preallocate(file: *mut ffi::sqlite3_file, bytes: usize) {
    let m = &*(*file).pMethods;
    let mut size: i64 = 0;
    if m.xFileSize.expect("xFileSize")(file, &mut size) != ffi::SQLITE_OK {
        return;
    }
    let Ok(old) = usize::try_from(size) else {
        return;
    };
    if old >= bytes {
        return;
    }
    let zeros = vec![0u8; WRITE_BYTES_MAX];
    let mut at = old;
    while at < bytes {
        let n = (bytes - at).min(WRITE_BYTES_MAX);
        let rc = m.xWrite.expect("xWrite")(
            file,
            zeros.as_ptr().cast(),
            c_int::try_from(n).expect("a chunk fits a c_int"),
            i64::try_from(at).expect("small"),
        );
        if rc != ffi::SQLITE_OK {
            m.xTruncate.expect("xTruncate")(file, size);
            return;
        }
        WAL_PREALLOC_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        at += n;
    }
    if m.xSync.expect("xSync")(file, ffi::SQLITE_SYNC_NORMAL) != ffi::SQLITE_OK {
        m.xTruncate.expect("xTruncate")(file, size);
    }
}

unsafe extern "C" fn shim_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let v = real_vfs();
    (*v).xDelete.expect("xDelete")(v, name, sync_dir)
}

unsafe extern "C" fn shim_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let v = real_vfs();
    (*v).xAccess.expect("xAccess")(v, name, flags, out)
}

unsafe extern "C" fn shim_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let v = real_vfs();
    (*v).xFullPathname.expect("xFullPathname")(v, name, n, out)
}

unsafe extern "C" fn shim_close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let rc = methods(file).xClose.expect("xClose")(real(file));
    ptr::drop_in_place(file.cast::<ShimFile>());
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

unsafe extern "C" fn shim_read(
    file: *mut ffi::sqlite3_file,
    out: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let rc = methods(file).xRead.expect("xRead")(real(file), out, amount, offset);
    let shim = &mut *file.cast::<ShimFile>();
    let (Some(checked), ffi::SQLITE_OK, Ok(len)) =
        (shim.checked.as_mut(), rc, usize::try_from(amount))
    else {
        return rc;
    };
    let bytes = std::slice::from_raw_parts(out.cast::<u8>(), len);
    checked.learn(offset, bytes);
    if let Some(page) = checked.page_of(offset, len) {
        if let Err(failure) = check_page(page, bytes) {
            LAST_FAILURE.with(|f| f.set(Some(failure)));
            return ffi::SQLITE_IOERR_DATA;
        }
    }
    rc
}

unsafe extern "C" fn shim_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let shim = &mut *file.cast::<ShimFile>();
    let counter = if shim.buffer.is_some() {
        Some(&WAL_BYTES)
    } else if shim.checked.is_some() {
        Some(&DB_BYTES)
    } else {
        None // a temporary file
    };
    if let Some(counter) = counter {
        counter.fetch_add(u64::try_from(amount).unwrap_or(0), Ordering::Relaxed);
    }
    if let (Some(checked), Ok(len)) = (shim.checked.as_mut(), usize::try_from(amount)) {
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        checked.learn(offset, bytes);
        if let Some(page) = checked.page_of(offset, len) {
            let Checked { scratch, .. } = &mut **checked;
            scratch.clear();
            scratch.extend_from_slice(bytes);
            let n = len - usize::from(PAGE_CHECKSUM_BYTES);
            let sum = page_checksum(page, &scratch[..n]);
            scratch[n..].copy_from_slice(&sum);
            return methods(file).xWrite.expect("xWrite")(
                real(file),
                scratch.as_ptr().cast(),
                amount,
                offset,
            );
        }
    }
    let Some(buffer) = shim.buffer.as_mut() else {
        return methods(file).xWrite.expect("xWrite")(real(file), data, amount, offset);
    };
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let contiguous = !buffer.data.is_empty()
        && buffer.start + i64::try_from(buffer.data.len()).unwrap_or(i64::MAX) == offset;
    if !buffer.data.is_empty() && (!contiguous || buffer.data.len() + len > BUFFER_BYTES_MAX) {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let shim = &mut *file.cast::<ShimFile>();
    let buffer = shim.buffer.as_mut().expect("a WAL file has a buffer");
    if buffer.data.is_empty() {
        buffer.start = offset;
    }
    buffer
        .data
        .extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), len));
    ffi::SQLITE_OK
}

unsafe extern "C" fn shim_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    methods(file).xTruncate.expect("xTruncate")(real(file), size)
}

unsafe extern "C" fn shim_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    SYNCS.fetch_add(1, Ordering::Relaxed);
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    methods(file).xSync.expect("xSync")(real(file), flags)
}

unsafe extern "C" fn shim_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    methods(file).xFileSize.expect("xFileSize")(real(file), size)
}

unsafe extern "C" fn shim_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(file).xLock.expect("xLock")(real(file), level)
}

unsafe extern "C" fn shim_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(file).xUnlock.expect("xUnlock")(real(file), level)
}

unsafe extern "C" fn shim_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    methods(file)
        .xCheckReservedLock
        .expect("xCheckReservedLock")(real(file), out)
}

unsafe extern "C" fn shim_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    methods(file).xFileControl.expect("xFileControl")(real(file), op, arg)
}

unsafe extern "C" fn shim_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    methods(file).xSectorSize.expect("xSectorSize")(real(file))
}

unsafe extern "C" fn shim_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    methods(file)
        .xDeviceCharacteristics
        .expect("xDeviceCharacteristics")(real(file))
}

unsafe extern "C" fn shim_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    methods(file).xShmMap.expect("xShmMap")(real(file), region, size, extend, out)
}

unsafe extern "C" fn shim_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    methods(file).xShmLock.expect("xShmLock")(real(file), offset, n, flags)
}

unsafe extern "C" fn shim_shm_barrier(file: *mut ffi::sqlite3_file) {
    methods(file).xShmBarrier.expect("xShmBarrier")(real(file));
}

unsafe extern "C" fn shim_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    methods(file).xShmUnmap.expect("xShmUnmap")(real(file), delete)
}

unsafe extern "C" fn shim_fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let shim = &*file.cast::<ShimFile>();
    if shim.checked.as_ref().is_some_and(|c| c.page_size.is_some()) {
        // No mapping: every page of a checked file is read (and checked) through xRead.
        *out = ptr::null_mut();
        return ffi::SQLITE_OK;
    }
    methods(file).xFetch.expect("xFetch")(real(file), offset, amount, out)
}

unsafe extern "C" fn shim_unfetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    p: *mut c_void,
) -> c_int {
    methods(file).xUnfetch.expect("xUnfetch")(real(file), offset, p)
}
