//! The WAL file's size. A restart reads the whole WAL file (Ken's scan for damage in the
//! middle), so its size is part of every cold start: a new WAL is preallocated to
//! `vfs::wal_preallocate_bytes` of its page size, and a WAL a large batch grew is cut back to
//! that size once it restarts.

use std::path::Path;

use ken_store::vfs::wal_preallocate_bytes;
use ken_store::{wal_path, Batch, StoreOptions, TableWrite};

use crate::common::{temp_store, try_open_with};

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("the WAL exists").len()
}

fn rows(from: usize, n: usize, value_bytes: usize) -> Batch {
    Batch {
        table_writes: (from..from + n)
            .map(|i| TableWrite {
                table: "t".into(),
                key: (i as u64).to_be_bytes().to_vec(),
                value: Some(vec![(i % 251) as u8; value_bytes]),
            })
            .collect(),
        ..Batch::default()
    }
}

#[test]
fn a_wal_is_preallocated_by_its_page_size_and_cut_back_after_a_large_batch() {
    for page in [1024u32, 4096] {
        let t = temp_store();
        let options = StoreOptions {
            page_size: Some(page),
            ..StoreOptions::default()
        };
        let (mut store, rec) = try_open_with(&t.path, "a", &options).unwrap();
        assert!(rec.created);
        let wal = wal_path(&t.path);
        let want = wal_preallocate_bytes(page as usize) as u64;
        // Room for SQLite's checkpoint point (1,000 frames) and half as much again.
        assert!(
            want >= 1500 * (u64::from(page) + 24),
            "{want} at {page} B pages"
        );
        assert_eq!(len(&wal), want, "a new WAL at {page} B pages");
        // A batch of about twice that many bytes grows the file.
        let n = want as usize / 400;
        store.commit(&rows(0, n, 900)).unwrap();
        let grown = len(&wal);
        assert!(
            grown > want,
            "{page} B pages: {grown} B after the large batch"
        );
        // Small commits: once the WAL is checkpointed and restarts, its first commit cuts the
        // file back.
        let mut commits = 0;
        while len(&wal) != want {
            commits += 1;
            assert!(
                commits < 100,
                "{page} B pages: the WAL is still {} B after {commits} small commits (want {want})",
                len(&wal)
            );
            store.commit(&rows(n + commits, 1, 10)).unwrap();
        }
        // A restart keeps it at that size (the preallocation only extends a shorter file).
        drop(store);
        let (_store, rec) = try_open_with(&t.path, "a", &options).unwrap();
        assert!(!rec.created);
        assert!(
            len(&wal) <= want,
            "{page} B pages: {} B after reopening",
            len(&wal)
        );
    }
}
