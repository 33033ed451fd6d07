//! `SQLITE_FULL` (here from `max_page_count`) poisons the store, loses nothing committed,
//! and the store reopens and commits again once there is room.

use ken_store::{Batch, CommitError, OutboxRow, PeerRow, Reader, StoreOptions, TableWrite};

use crate::common::{temp_store, try_open, try_open_with};

/// Pages the store may use: room for the schema and a few big batches.
const SMALL_PAGE_COUNT: u32 = 60;
/// Each batch writes a value this big (several pages).
const VALUE_BYTES: usize = 24 * 1024;
/// Full must come long before this many batches.
const MAX_BATCHES: u64 = 200;

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn batch(i: u64) -> Batch {
    Batch {
        now_ms: i,
        turns: 1,
        root: Some(i.to_le_bytes().to_vec()),
        table_writes: vec![TableWrite {
            table: "big".into(),
            key: i.to_be_bytes().to_vec(),
            value: Some(value(i)),
        }],
        outbox_appends: vec![OutboxRow {
            peer: "b".into(),
            seq: i,
            payload: vec![1; 64],
            created_ms: i,
        }],
        peers: vec![PeerRow {
            peer: "b".into(),
            incarnation: 1,
            next_seq: i + 1,
            acked: 0,
            delivered: 0,
            forgotten: 0,
        }],
        ..Batch::default()
    }
}

#[test]
fn full_disk_poisons_the_store_and_loses_nothing_committed() {
    let t = temp_store();
    let small = StoreOptions {
        max_page_count: Some(SMALL_PAGE_COUNT),
        ..StoreOptions::default()
    };
    let (mut store, _) = try_open_with(&t.path, "a", &small).unwrap();
    let mut committed = 0u64;
    let full = loop {
        assert!(committed < MAX_BATCHES, "never became full");
        match store.commit(&batch(committed + 1)) {
            Ok(info) => {
                committed += 1;
                assert_eq!(info.commits, committed);
            }
            Err(e) => break e,
        }
    };
    assert!(committed > 0, "the first batch must fit");
    assert!(matches!(full, CommitError::Full { .. }), "{full:?}");
    let msg = full.to_string();
    assert!(
        msg.contains("store full: free disk space, then restart the process"),
        "{msg}"
    );
    assert!(matches!(
        store.commit(&Batch::default()),
        Err(CommitError::Poisoned)
    ));
    drop(store);

    // Still full: reopening with the same limit works and reads everything.
    let (store, rec) = try_open_with(&t.path, "a", &small).unwrap();
    assert_eq!(rec.commits, committed);
    drop(store);

    let (mut store, rec) = try_open(&t.path, "a").unwrap();
    assert_eq!(rec.root, Some(committed.to_le_bytes().to_vec()));
    assert_eq!(rec.outbox.len() as u64, committed);
    for i in 1..=committed {
        assert_eq!(
            store.table_get("big", &i.to_be_bytes()).unwrap(),
            Some(value(i)),
            "batch {i}"
        );
    }
    assert_eq!(
        store
            .table_get("big", &(committed + 1).to_be_bytes())
            .unwrap(),
        None
    );
    let info = store.commit(&batch(committed + 1)).unwrap();
    assert_eq!(info.commits, committed + 1);
    assert_eq!(Reader::open(&t.path).unwrap().verify().unwrap(), vec![]);
}
