//! A failed commit poisons the handle: every later call fails with `Poisoned`, nothing of
//! the failed batch is durable, and reopening recovers the last good commit.

use ken_store::{Batch, CommitError, ReadError, TableWrite, TurnLogEntry};

use crate::common::{temp_store, try_open};

fn entry(turn: u64) -> TurnLogEntry {
    TurnLogEntry {
        turn,
        at_ms: 0,
        input_kind: "start".into(),
        input_source: String::new(),
        input_seq: 0,
        messages_out: 0,
        outputs: 0,
        bytes_written: 0,
        note: String::new(),
    }
}

fn write(key: &[u8], value: &[u8]) -> TableWrite {
    TableWrite {
        table: "t".into(),
        key: key.to_vec(),
        value: Some(value.to_vec()),
    }
}

#[test]
fn after_a_failed_commit_every_call_is_poisoned_until_reopen() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    store
        .commit(&Batch {
            turns: 1,
            root: Some(b"good".to_vec()),
            table_writes: vec![write(b"k", b"v1")],
            turn_log: vec![entry(1)],
            ..Batch::default()
        })
        .unwrap();
    // Turn 1 is logged already: the insert violates the key and fails the commit after the
    // root and the table row were written inside the transaction.
    let bad = Batch {
        turns: 1,
        root: Some(b"bad".to_vec()),
        table_writes: vec![write(b"k", b"v2"), write(b"new", b"x")],
        turn_log: vec![entry(1)],
        ..Batch::default()
    };
    let err = store.commit(&bad).unwrap_err();
    assert!(matches!(err, CommitError::Sqlite { .. }), "{err:?}");
    assert!(store.is_poisoned());
    for _ in 0..2 {
        assert!(matches!(
            store.commit(&Batch::default()),
            Err(CommitError::Poisoned)
        ));
        assert!(matches!(
            store.table_get("t", b"k"),
            Err(ReadError::Poisoned)
        ));
    }
    let msg = store.commit(&Batch::default()).unwrap_err().to_string();
    assert!(msg.contains("restart the process"), "{msg}");
    drop(store);

    let (mut store, rec) = try_open(&t.path, "a").unwrap();
    assert_eq!(rec.root.as_deref(), Some(&b"good"[..]));
    assert_eq!((rec.commits, rec.turns_committed), (1, 1));
    assert_eq!(
        store.table_get("t", b"k").unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(store.table_get("t", b"new").unwrap(), None);
    let info = store
        .commit(&Batch {
            turns: 1,
            turn_log: vec![entry(2)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!((info.commits, info.turns_committed), (2, 2));
}
