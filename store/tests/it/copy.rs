//! Consistent copies (`Reader::copy_into`), `install_copy`, `Batch::check`, and the serde
//! form of a `Batch` (what `ken::standby` ships to a standby's replica).

use ken_store::{install_copy, Batch, OpenError, OutboxRow, PeerRow, Reader, Store, TableWrite};

use crate::common::temp_store;

fn batch(n: u64) -> Batch {
    Batch {
        now_ms: 1_700_000_000_000 + n,
        turns: 1,
        root: Some(format!("root {n}").into_bytes()),
        table_writes: vec![TableWrite {
            table: "t".into(),
            key: n.to_le_bytes().to_vec(),
            value: Some(vec![n as u8; 300]),
        }],
        outbox_appends: vec![OutboxRow {
            peer: "b".into(),
            seq: n,
            payload: b"hello".to_vec(),
            created_ms: 1,
        }],
        peers: vec![PeerRow {
            peer: "b".into(),
            incarnation: 7,
            next_seq: n + 1,
            acked: 0,
            delivered: 0,
            forgotten: 0,
        }],
        ..Batch::default()
    }
}

#[test]
fn a_copy_taken_beside_the_owner_opens_verifies_and_installs_over_a_store_ahead() {
    let src = temp_store();
    let at = |name: &str| src.dir.path().join(name);
    let (mut store, _) = Store::open(&src.path, "p").unwrap();
    for n in 1..=20 {
        store.commit(&batch(n)).unwrap();
    }
    let meta = Reader::open(&src.path)
        .unwrap()
        .copy_into(&at("c20.ken"))
        .unwrap();
    assert_eq!(meta.commits, 20);
    assert_eq!(meta.incarnation, store.incarnation());
    Reader::open(&src.path)
        .unwrap()
        .copy_into(&at("c20b.ken"))
        .unwrap();
    // The owner commits on after the copy: the copy stays as of commit 20.
    store.commit(&batch(21)).unwrap();
    let reader = Reader::open(&at("c20.ken")).unwrap();
    let v = reader.verify_all().unwrap();
    assert!(v.problems.is_empty(), "the copy verifies: {:?}", v.problems);
    assert_eq!(reader.meta().unwrap().commits, 20);
    assert_eq!(
        reader.table_get("t", &7u64.to_le_bytes()).unwrap(),
        Some(vec![7u8; 300])
    );
    drop(reader);
    // Same layout as the store: its page size, and the bytes each page reserves for the
    // ken-wal checksum (which the reads above checked).
    let (a, b) = (
        std::fs::read(&src.path).unwrap(),
        std::fs::read(at("c20.ken")).unwrap(),
    );
    assert_eq!(
        b[20],
        ken_store::vfs::PAGE_CHECKSUM_BYTES,
        "the copy reserves checksum bytes"
    );
    assert_eq!(a[16..18], b[16..18], "same page size");

    // A replica AHEAD of the copy (same incarnation, 21 commits).
    let replica = at("replica.ken");
    let shipped = Reader::open(&src.path)
        .unwrap()
        .copy_into(&at("c21.ken"))
        .unwrap();
    assert_eq!(shipped.commits, 21);
    install_copy(&replica, &at("c21.ken")).unwrap();
    {
        let (r, rec) = Store::open(&replica, "p").unwrap();
        assert_eq!((rec.commits, r.incarnation()), (21, store.incarnation()));
    }
    // Negative control: the older copy renamed over it is refused at open as lost history.
    std::fs::rename(at("c20b.ken"), &replica).unwrap();
    let _ = std::fs::remove_file(ken_store::wal_path(&replica));
    match Store::open(&replica, "p") {
        Err(OpenError::HistoryLost {
            commits: 20,
            witnessed: 21,
            ..
        }) => {}
        other => panic!("expected HistoryLost, got {other:?}"),
    }
    // Installed on purpose, the same older copy opens: the lock file witnesses it.
    let meta = install_copy(&replica, &at("c20.ken")).unwrap();
    assert_eq!(meta.commits, 20);
    let (mut r, rec) = Store::open(&replica, "p").unwrap();
    assert_eq!(rec.commits, 20);
    assert_eq!(rec.root.as_deref(), Some(&b"root 20"[..]));
    // It follows on from there: the primary's batch 21 applies.
    assert_eq!(r.commit(&batch(21)).unwrap().commits, 21);
}

#[test]
fn install_is_refused_while_the_owner_runs() {
    let t = temp_store();
    let (mut store, _) = Store::open(&t.path, "p").unwrap();
    store.commit(&batch(1)).unwrap();
    let copy = t.dir.path().join("copy.ken");
    Reader::open(&t.path).unwrap().copy_into(&copy).unwrap();
    match install_copy(&t.path, &copy) {
        Err(e @ OpenError::InUse { .. }) => {
            assert!(e.to_string().contains("in use"), "{e}")
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(copy.exists(), "a refused install leaves the copy");
    drop(store);
    install_copy(&t.path, &copy).unwrap();
    assert!(!copy.exists());
}

#[test]
fn batch_check_names_the_broken_precondition_and_accepts_a_good_batch() {
    assert_eq!(batch(3).check(), Ok(()));
    let mut bad = batch(3);
    bad.outbox_appends[0].seq = 0;
    assert!(bad.check().unwrap_err().contains("seq to `b` is 0"));
    let mut bad = batch(3);
    bad.peers[0].acked = 9;
    assert!(bad.check().unwrap_err().contains("acked 9 must be below"));
    let mut bad = batch(3);
    bad.table_writes[0].table = String::new();
    assert!(bad.check().unwrap_err().contains("table name"));
}

#[test]
fn a_batch_survives_bincode_serde() {
    let b = batch(5);
    let bytes = bincode::serde::encode_to_vec(&b, bincode::config::standard()).unwrap();
    let (back, _): (Batch, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(back, b);
}

#[test]
fn a_copy_larger_than_the_page_cache_has_every_page_checksum() {
    // VACUUM INTO spills pages before page 1 once the copy outgrows SQLite's page cache
    // (about 2 MB): those pages must get their checksums too.
    let t = temp_store();
    let (mut store, _) = Store::open(&t.path, "p").unwrap();
    for n in 1..=30 {
        let mut b = batch(n);
        b.table_writes[0].value = Some(vec![n as u8; 200_000]);
        store.commit(&b).unwrap();
    }
    let copy = t.dir.path().join("copy.ken");
    let meta = Reader::open(&t.path).unwrap().copy_into(&copy).unwrap();
    assert_eq!(meta.commits, 30);
    let bytes = std::fs::read(&copy).unwrap();
    assert!(bytes.len() > 4 << 20, "a copy of {} bytes", bytes.len());
    let size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    for (i, page) in bytes.chunks(size).enumerate() {
        ken_store::vfs::check_page(i as u32 + 1, page)
            .unwrap_or_else(|f| panic!("page {} of the copy: {f}", i + 1));
    }
    let v = Reader::open(&copy).unwrap().verify_all().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}
