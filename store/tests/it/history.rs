//! Lost history is detected locally: a damaged or deleted `-wal`, a deleted or truncated
//! database, an older copy of the store put in its place. Each case starts from a store whose
//! owner "crashed" (its handle is leaked, so SQLite never checkpoints or deletes the WAL),
//! copied with its `-wal` and lock file to a directory of its own, then damaged.
//!
//! The rules (FORMAT.md, "Lost history"): damage in the middle of the WAL is refused naming
//! the frame; a torn last transaction is accepted as SQLite does; a store holding fewer
//! commits than its lock file witnessed is refused; refused files are left as they were.

use std::path::{Path, PathBuf};

use ken_store::wal::{WalHeader, FRAME_HEADER_BYTES, WAL_HEADER_BYTES};
use ken_store::witness::{self, WitnessRecord};
use ken_store::{lock_path, wal_path, Batch, OpenError, Reader, Store, TableWrite};

use crate::common::{temp_store, try_open};

/// The page size of the stores these tests create (the default).
const PAGE: usize = ken_store::DEFAULT_PAGE_SIZE as usize;

fn frame_offset(i: usize) -> usize {
    WAL_HEADER_BYTES + i * (FRAME_HEADER_BYTES + PAGE)
}

fn batch(n: u64) -> Batch {
    Batch {
        now_ms: n,
        turns: 1,
        root: Some(format!("root {n}").into_bytes()),
        table_writes: vec![TableWrite {
            table: "t".into(),
            key: format!("k{n}").into_bytes(),
            value: Some(vec![n as u8; 100]),
        }],
        ..Batch::default()
    }
}

/// The three files of a store.
fn files(path: &Path) -> [PathBuf; 3] {
    [path.to_path_buf(), wal_path(path), lock_path(path)]
}

/// Copies the store's files that exist to `to` (a store path in another directory).
fn copy_store(from: &Path, to: &Path) {
    for (f, t) in files(from).iter().zip(files(to).iter()) {
        if f.exists() {
            std::fs::copy(f, t).unwrap();
        } else {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// A store with `commits` commits whose owner died without closing (the WAL holds them
/// all), copied to a fresh directory. Returns the directory and the copy's path.
fn crashed(commits: u64) -> (tempfile::TempDir, PathBuf) {
    let src = temp_store();
    let (mut store, _) = try_open(&src.path, "a").unwrap();
    for n in 1..=commits {
        store.commit(&batch(n)).unwrap();
    }
    // No close: no checkpoint, the WAL stays as a killed process leaves it.
    std::mem::forget(store);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ken");
    copy_store(&src.path, &path);
    std::mem::forget(src);
    (dir, path)
}

/// The database and the WAL (the lock file holds the owner's pid and may be created).
fn read_all(path: &Path) -> Vec<Vec<u8>> {
    files(path)[..2]
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

fn set_witness(path: &Path, commits: u64) {
    let lock = lock_path(path);
    let mut w = witness::read_path(&lock).expect("a witness");
    w.commits = commits;
    std::fs::write(&lock, witness::encode(&w)).unwrap();
}

#[test]
fn a_crashed_store_with_its_wal_opens_with_every_commit() {
    let (_d, path) = crashed(5);
    let r = Reader::open(&path).unwrap();
    let v = r.verify_all().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.wal.commits >= 5 && v.wal.damage.is_none(), "{:?}", v.wal);
    assert!(matches!(v.wal.header, WalHeader::Valid { .. }));
    assert_eq!(v.wal.frames_past_commit, 0);
    assert_eq!(
        v.witness.map(|w| w.commits),
        Some(5),
        "the lock file witnesses every commit"
    );
    drop(r);
    let (_store, rec) = try_open(&path, "a").unwrap();
    assert_eq!(rec.commits, 5);
}

#[test]
fn a_deleted_wal_is_refused_by_the_commit_witness() {
    let (_d, path) = crashed(5);
    std::fs::remove_file(wal_path(&path)).unwrap();
    let before = read_all(&path);
    match Store::open(&path, "a") {
        Err(
            e @ OpenError::HistoryLost {
                commits: 0,
                witnessed: 5,
                ..
            },
        ) => {
            let text = e.to_string();
            assert!(text.contains("lost committed history"), "{text}");
            assert!(
                text.contains(&lock_path(&path).display().to_string()),
                "{text}"
            );
        }
        other => panic!("expected HistoryLost, got {other:?}"),
    }
    // Refused as found: no new store was created in its place.
    assert!(
        read_all(&path) == before,
        "a refused store is left as found"
    );
    // Accepting the loss deliberately: without the lock file the store starts over.
    std::fs::remove_file(lock_path(&path)).unwrap();
    let (_store, rec) = try_open(&path, "a").unwrap();
    assert!(rec.created);
}

#[test]
fn a_deleted_wal_after_a_checkpoint_loses_the_later_commits_and_is_refused() {
    // Commits 1..=3 checkpointed into the database by a clean close; 4..=6 only in the WAL.
    let src = temp_store();
    let (mut store, _) = try_open(&src.path, "a").unwrap();
    for n in 1..=3 {
        store.commit(&batch(n)).unwrap();
    }
    drop(store);
    let (mut store, _) = try_open(&src.path, "a").unwrap();
    for n in 4..=6 {
        store.commit(&batch(n)).unwrap();
    }
    std::mem::forget(store);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ken");
    copy_store(&src.path, &path);
    std::fs::remove_file(wal_path(&path)).unwrap();
    let r = Reader::open(&path).unwrap();
    let v = r.verify_all().unwrap();
    assert_eq!(v.commits, 3);
    assert_eq!(v.wal.commits, 0, "{:?}", v.wal);
    assert!(
        v.problems
            .iter()
            .any(|p| p.table == "meta" && p.key == "counters" && p.what.contains("witnessed 6")),
        "{:?}",
        v.problems
    );
    drop(r);
    match Store::open(&path, "a") {
        Err(OpenError::HistoryLost {
            commits: 3,
            witnessed: 6,
            ..
        }) => {}
        other => panic!("expected HistoryLost, got {other:?}"),
    }
    std::mem::forget(src);
}

#[test]
fn a_store_replaced_by_an_older_copy_of_itself_is_refused() {
    let (_d, path) = crashed(3);
    let old = tempfile::tempdir().unwrap();
    let old_path = old.path().join("p.ken");
    copy_store(&path, &old_path);
    // The store runs on: 3 more commits, then dies.
    let (mut store, _) = try_open(&path, "a").unwrap();
    for n in 4..=6 {
        store.commit(&batch(n)).unwrap();
    }
    std::mem::forget(store);
    // Its database and WAL are replaced by the older copy (the lock file stays).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("p.ken");
    copy_store(&path, &copy);
    std::fs::copy(&old_path, &copy).unwrap();
    std::fs::copy(wal_path(&old_path), wal_path(&copy)).unwrap();
    match Store::open(&copy, "a") {
        Err(OpenError::HistoryLost {
            commits: 3,
            witnessed: 6,
            ..
        }) => {}
        other => panic!("expected HistoryLost, got {other:?}"),
    }
    // The whole old copy, lock file included, is a consistent older store: locally it can
    // not be told from the real one (its peers tell: see ken's rollback tests).
    copy_store(&old_path, &copy);
    let (_store, rec) = try_open(&copy, "a").unwrap();
    assert_eq!(rec.commits, 3);
}

#[test]
fn damage_in_the_middle_of_the_wal_is_refused_naming_the_frame() {
    let (_d, path) = crashed(6);
    let mut wal = std::fs::read(wal_path(&path)).unwrap();
    // A byte of the first frame's page (the creation's transaction).
    wal[frame_offset(0) + FRAME_HEADER_BYTES + 100] ^= 0x10;
    std::fs::write(wal_path(&path), &wal).unwrap();
    // Without the lock file too: the scan alone proves it.
    for keep_lock in [true, false] {
        if !keep_lock {
            std::fs::remove_file(lock_path(&path)).unwrap();
        }
        let before = read_all(&path);
        match Store::open(&path, "a") {
            Err(e @ OpenError::WalDamaged { frame: 1, .. }) => {
                let text = e.to_string();
                assert!(text.contains("frame 1 is damaged"), "{text}");
                assert!(text.contains("-wal"), "{text}");
            }
            other => panic!("expected WalDamaged, got {other:?}"),
        }
        assert!(
            read_all(&path) == before,
            "a refused store is left as found"
        );
        // SQLite reads an empty log, so the database has no tables: a reader says why.
        match Reader::open(&path) {
            Err(OpenError::WalDamaged {
                frame: 1,
                commits_lost,
                ..
            }) => {
                assert!(commits_lost >= 5, "{commits_lost}")
            }
            other => panic!("expected WalDamaged, got {other:?}"),
        }
    }
}

#[test]
fn a_zeroed_page_of_the_wal_is_refused() {
    let (_d, path) = crashed(8);
    let mut wal = std::fs::read(wal_path(&path)).unwrap();
    let at = 2 * PAGE;
    wal[at..at + PAGE].fill(0);
    std::fs::write(wal_path(&path), &wal).unwrap();
    match Store::open(&path, "a") {
        Err(OpenError::WalDamaged { frame, .. }) => assert!(frame >= 1, "{frame}"),
        other => panic!("expected WalDamaged, got {other:?}"),
    }
}

#[test]
fn a_torn_last_transaction_is_accepted_as_sqlite_does() {
    let (_d, path) = crashed(4);
    let state = Reader::open(&path).unwrap().wal_state().unwrap();
    let last = state.last_commit_frame as usize;
    let mut wal = std::fs::read(wal_path(&path)).unwrap();
    // The last frame of the last transaction: torn, as by a power cut during its write.
    wal[frame_offset(last - 1) + FRAME_HEADER_BYTES + 7] ^= 1;
    std::fs::write(wal_path(&path), &wal).unwrap();
    // Its commit never returned, so it was never witnessed.
    set_witness(&path, 3);
    let v = Reader::open(&path).unwrap().verify_all().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.wal.damage.is_none());
    // The torn transaction is cut off (a journal commit is one frame, so none of its frames
    // may remain past the new last commit).
    assert!((v.wal.last_commit_frame as usize) < last, "{:?}", v.wal);
    assert_eq!(v.wal.commits + 1, state.commits, "{:?}", v.wal);
    let (_store, rec) = try_open(&path, "a").unwrap();
    assert_eq!(rec.commits, 3);
    assert_eq!(rec.root.as_deref(), Some(&b"root 3"[..]));
}

#[test]
fn damage_to_the_last_acknowledged_commit_is_caught_by_the_witness() {
    let (_d, path) = crashed(4);
    let state = Reader::open(&path).unwrap().wal_state().unwrap();
    let last = state.last_commit_frame as usize;
    let mut wal = std::fs::read(wal_path(&path)).unwrap();
    wal[frame_offset(last - 1) + FRAME_HEADER_BYTES + 7] ^= 1;
    std::fs::write(wal_path(&path), &wal).unwrap();
    match Store::open(&path, "a") {
        Err(OpenError::HistoryLost {
            commits: 3,
            witnessed: 4,
            ..
        }) => {}
        other => panic!("expected HistoryLost, got {other:?}"),
    }
}

#[test]
fn a_deleted_database_beside_its_wal_is_refused() {
    let (_d, path) = crashed(3);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(lock_path(&path)).unwrap();
    match Store::open(&path, "a") {
        Err(e @ OpenError::Damaged { .. }) => {
            assert!(e.to_string().contains("database file is missing"), "{e}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    assert!(!path.exists(), "no database was created");
    assert!(wal_path(&path).exists(), "the WAL is left as found");
}

#[test]
fn a_truncated_database_is_refused() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    for n in 1..=40 {
        let mut b = batch(n);
        b.table_writes[0].value = Some(vec![n as u8; 3000]);
        store.commit(&b).unwrap();
    }
    // A clean close checkpoints everything into the database and removes the WAL.
    drop(store);
    assert!(!wal_path(&t.path).exists());
    let len = std::fs::metadata(&t.path).unwrap().len();
    assert!(len > 20 * PAGE as u64, "{len}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.path)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    match Store::open(&t.path, "a") {
        Err(e @ OpenError::Damaged { .. }) => {
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    match Reader::open(&t.path) {
        Err(e @ OpenError::Damaged { .. }) => assert!(e.to_string().contains("truncated")),
        Ok(r) => {
            let problems = r.verify().unwrap();
            assert!(
                problems
                    .iter()
                    .any(|p| p.table == "sqlite" && p.what.contains("truncated")),
                "{problems:?}"
            );
        }
        Err(e) => panic!("expected Damaged, got {e}"),
    }
}

#[test]
fn a_lock_file_of_another_store_witnesses_nothing_here() {
    let (_d, path) = crashed(3);
    let lock = lock_path(&path);
    let w = witness::read_path(&lock).unwrap();
    std::fs::write(
        &lock,
        witness::encode(&WitnessRecord {
            incarnation: w.incarnation ^ 1,
            commits: 1000,
            ..w
        }),
    )
    .unwrap();
    let (store, rec) = try_open(&path, "a").unwrap();
    assert_eq!(rec.commits, 3);
    drop(store);
    // It now witnesses this store.
    let w2 = witness::read_path(&lock).unwrap();
    assert_eq!((w2.incarnation, w2.commits), (w.incarnation, 3));
}
