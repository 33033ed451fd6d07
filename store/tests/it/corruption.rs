//! A flipped byte in a stored record is reported as `Corrupted` naming the table and key,
//! listed by `verify`, and never returned as data; healthy records still read.

use std::path::Path;

use ken_store::{
    codec, Batch, ClientChange, ClientRow, GroupChange, GroupRow, OpenError, OutboxRow, PeerRow,
    Problem, ReadError, Reader, StoreOptions, TableWrite, TimerChange, TurnLogEntry,
};
use rand::Rng;

use crate::common::{raw, seeded_rng, temp_store, try_open, try_open_with};

fn healthy_store(path: &Path, marker: &[u8]) {
    healthy_store_with(path, marker, &StoreOptions::default());
}

fn healthy_store_with(path: &Path, marker: &[u8], options: &StoreOptions) {
    let (mut store, _) = try_open_with(path, "a", options).unwrap();
    store
        .commit(&Batch {
            turns: 1,
            root: Some(b"root".to_vec()),
            table_writes: vec![
                TableWrite {
                    table: "t".into(),
                    key: b"k1".to_vec(),
                    value: Some(marker.to_vec()),
                },
                TableWrite {
                    table: "t".into(),
                    key: b"k2".to_vec(),
                    value: Some(b"healthy".to_vec()),
                },
            ],
            outbox_appends: vec![OutboxRow {
                peer: "b".into(),
                seq: 1,
                payload: b"msg".to_vec(),
                created_ms: 1,
            }],
            peers: vec![PeerRow {
                peer: "b".into(),
                incarnation: 9,
                next_seq: 2,
                acked: 0,
                delivered: 0,
                forgotten: 0,
            }],
            timers: vec![TimerChange::Set {
                name: "tick".into(),
                due_ms: 5,
                payload: b"x".to_vec(),
            }],
            clients: vec![ClientChange::Put(ClientRow {
                client: [3; 16],
                request_no: 1,
                reply: b"reply".to_vec(),
                updated_ms: 1,
            })],
            groups: vec![GroupChange::Put(GroupRow {
                group: [4; 16],
                record: b"group".to_vec(),
            })],
            turn_log: vec![TurnLogEntry {
                turn: 1,
                at_ms: 1,
                input_kind: "start".into(),
                input_source: String::new(),
                input_seq: 0,
                messages_out: 1,
                outputs: 0,
                bytes_written: 4,
                note: String::new(),
            }],
            ..Batch::default()
        })
        .unwrap();
    // Reopened, so the journal is folded: the records damaged below are in the tables.
    drop(store);
    let (store, _) = try_open_with(path, "a", options).unwrap();
    assert_eq!(store.journaled(), 0);
}

/// Flips one bit of the blob in `column` of the row `where_sql` selects, through SQL.
fn flip_blob(path: &Path, table: &str, column: &str, where_sql: &str, byte: usize) {
    let conn = raw(path);
    let sql = format!("SELECT {column} FROM {table} WHERE {where_sql}");
    let mut blob: Vec<u8> = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
    let i = byte % blob.len();
    blob[i] ^= 0x04;
    let sql = format!("UPDATE {table} SET {column} = ?1 WHERE {where_sql}");
    assert_eq!(conn.execute(&sql, [blob]).unwrap(), 1);
}

fn assert_names(c: &ken_store::Corrupted, table: &str, key: &str) {
    assert_eq!((c.table.as_str(), c.key.as_str()), (table, key), "{c}");
}

fn only_problem(reader: &Reader, table: &str, key: &str) {
    let problems = reader.verify().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let Problem {
        table: t, key: k, ..
    } = &problems[0];
    assert_eq!((t.as_str(), k.as_str()), (table, key), "{problems:?}");
}

#[test]
fn a_flipped_table_value_is_corrupted_by_name_and_others_still_read() {
    let (mut rng, _) = seeded_rng("corruption::table_value");
    let t = temp_store();
    healthy_store(&t.path, b"value-one");
    flip_blob(
        &t.path,
        "kv",
        "value",
        "tbl = 't' AND key = x'6b31'",
        rng.gen_range(0..14),
    );

    // Recovery does not read table rows: the store opens; the bad row reads as Corrupted.
    let (store, _) = try_open(&t.path, "a").unwrap();
    match store.table_get("t", b"k1") {
        Err(ReadError::Corrupted(c)) => assert_names(&c, "kv:t", "k1"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert_eq!(
        store.table_get("t", b"k2").unwrap().as_deref(),
        Some(&b"healthy"[..])
    );
    let reader = Reader::open(&t.path).unwrap();
    match reader.table_get("t", b"k1") {
        Err(ReadError::Corrupted(c)) => assert_names(&c, "kv:t", "k1"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // A scan that meets the bad row fails as a whole; one that does not still works.
    assert!(matches!(
        reader.table_scan("t", b"", None, 10),
        Err(ReadError::Corrupted(_))
    ));
    assert_eq!(
        reader.table_scan("t", b"k2", None, 10).unwrap(),
        vec![(b"k2".to_vec(), b"healthy".to_vec())]
    );
    assert_eq!(reader.root().unwrap().as_deref(), Some(&b"root"[..]));
    only_problem(&reader, "kv:t", "k1");
}

#[test]
fn every_recovered_record_kind_names_its_table_and_key() {
    let (mut rng, _) = seeded_rng("corruption::recovered_kinds");
    let cases: [(&str, &str, &str, &str, &str); 6] = [
        ("root", "value", "id = 0", "root", "root"),
        (
            "outbox",
            "payload",
            "peer = 'b' AND seq = 1",
            "outbox",
            "b/1",
        ),
        ("peers", "record", "peer = 'b'", "peers", "b"),
        ("timers", "payload", "name = 'tick'", "timers", "tick"),
        (
            "clients",
            "reply",
            "client = x'03030303030303030303030303030303'",
            "clients",
            "0x03030303030303030303030303030303",
        ),
        (
            "fuse_groups",
            "record",
            "group_id = x'04040404040404040404040404040404'",
            "fuse_groups",
            "0x04040404040404040404040404040404",
        ),
    ];
    for (table, column, where_sql, name, key) in cases {
        let t = temp_store();
        healthy_store(&t.path, b"value-one");
        flip_blob(&t.path, table, column, where_sql, rng.gen_range(0..64));
        match try_open(&t.path, "a") {
            Err(OpenError::Corrupted(c)) => assert_names(&c, name, key),
            other => panic!("{table}: expected Corrupted, got {other:?}"),
        }
        let reader = Reader::open(&t.path).unwrap();
        only_problem(&reader, name, key);
        // The matching Reader view refuses the record; the others still read.
        let view: Result<(), ReadError> = match table {
            "root" => reader.root().map(drop),
            "outbox" => reader.outbox(None, 10).map(drop),
            "peers" => reader.peers().map(drop),
            "timers" => reader.timers().map(drop),
            "clients" => reader.clients().map(drop),
            _ => reader.groups().map(drop),
        };
        match view {
            Err(ReadError::Corrupted(c)) => assert_names(&c, name, key),
            other => panic!("{table}: expected Corrupted, got {other:?}"),
        }
        assert_eq!(
            reader.table_get("t", b"k2").unwrap().as_deref(),
            Some(&b"healthy"[..])
        );
        assert_eq!(reader.meta().unwrap().commits, 1);
    }
}

#[test]
fn a_turn_log_row_whose_count_disagrees_is_reported() {
    // The record's checksum covers the `turns` column: a changed count fails it.
    let t = temp_store();
    healthy_store(&t.path, b"value-one");
    let conn = raw(&t.path);
    assert_eq!(
        conn.execute("UPDATE turn_log SET turns = 2 WHERE turn = 1", [])
            .unwrap(),
        1
    );
    drop(conn);
    let reader = Reader::open(&t.path).unwrap();
    match reader.turn_log(10) {
        Err(ReadError::Corrupted(c)) => {
            assert_names(&c, "turn_log", "1");
            assert!(c.detail.contains("CRC32 mismatch"), "{c}");
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    only_problem(&reader, "turn_log", "1");
}

#[test]
fn a_flipped_turn_log_entry_is_reported_not_returned() {
    let t = temp_store();
    healthy_store(&t.path, b"value-one");
    flip_blob(&t.path, "turn_log", "entries", "turn = 1", 3);
    // The turn log is not part of recovery.
    drop(try_open(&t.path, "a").unwrap());
    let reader = Reader::open(&t.path).unwrap();
    match reader.turn_log(10) {
        Err(ReadError::Corrupted(c)) => assert_names(&c, "turn_log", "1"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    only_problem(&reader, "turn_log", "1");
}

/// Builds the healthy store with `options`, checkpoints everything into the database file
/// and flips one random bit of the marker value in the file on disk.
fn flip_marker_on_disk(test: &str, options: &StoreOptions) -> crate::common::TempStore {
    let (mut rng, _) = seeded_rng(test);
    let t = temp_store();
    let marker: Vec<u8> = format!("KEN-MARKER-{:032x}", rng.gen::<u128>()).into_bytes();
    healthy_store_with(&t.path, &marker, options);
    // The owner closed cleanly: SQLite checkpointed the WAL into the file and removed it.
    // Checkpoint again through a raw connection to be sure nothing is left in a WAL.
    {
        let conn = raw(&t.path);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let wal = t.dir.path().join("p.ken-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);

    let mut bytes = std::fs::read(&t.path).unwrap();
    let at: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == &marker[..])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the marker is stored exactly once");
    let i = at[0] + rng.gen_range(0..marker.len());
    bytes[i] ^= 1 << rng.gen_range(0..8);
    std::fs::write(&t.path, &bytes).unwrap();
    t
}

#[test]
fn a_byte_flipped_in_the_file_on_disk_fails_its_page_checksum() {
    let t = flip_marker_on_disk("corruption::page_checksum", &StoreOptions::default());
    let (store, _) = try_open(&t.path, "a").unwrap();
    match store.table_get("t", b"k1") {
        Err(ReadError::Damaged { detail }) => {
            assert!(detail.contains("fails its checksum"), "{detail}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    let reader = Reader::open(&t.path).unwrap();
    let problems = reader.verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.table == "sqlite" && p.what.contains("fails its checksum")),
        "{problems:?}"
    );
    drop(store);
}

#[test]
fn a_byte_flipped_in_the_file_on_disk_is_found_by_name() {
    // Without page checksums (a store created before them) the record check still names
    // the row, and the other rows of the page still read.
    let options = StoreOptions {
        page_checksums: false,
        ..StoreOptions::default()
    };
    let t = flip_marker_on_disk("corruption::file_on_disk", &options);
    let (store, _) = try_open(&t.path, "a").unwrap();
    match store.table_get("t", b"k1") {
        Err(ReadError::Corrupted(c)) => assert_names(&c, "kv:t", "k1"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert_eq!(
        store.table_get("t", b"k2").unwrap().as_deref(),
        Some(&b"healthy"[..])
    );
    let reader = Reader::open(&t.path).unwrap();
    only_problem(&reader, "kv:t", "k1");
    drop(store);
}

#[test]
fn a_record_too_short_for_its_envelope_is_corrupted_not_a_panic() {
    let t = temp_store();
    healthy_store(&t.path, b"v");
    raw(&t.path)
        .execute("UPDATE kv SET value = x'01' WHERE key = x'6b31'", [])
        .unwrap();
    let reader = Reader::open(&t.path).unwrap();
    match reader.table_get("t", b"k1") {
        Err(ReadError::Corrupted(c)) => {
            assert_names(&c, "kv:t", "k1");
            assert!(c.detail.contains("shorter"), "{c}");
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // A body that checks out but has the wrong length for a peers record.
    raw(&t.path)
        .execute("UPDATE peers SET record = ?1", [codec::seal(b"short")])
        .unwrap();
    match try_open(&t.path, "a") {
        Err(OpenError::Corrupted(c)) => assert_names(&c, "peers", "b"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

/// Every byte of a record is checked: a changed key column, sequence number or time fails
/// like a changed value (format 3). Each case changes one column other than the sealed one,
/// through SQL, and must be named at open or by a read, and by `verify`.
#[test]
fn a_changed_key_or_other_column_is_corrupted_like_a_changed_value() {
    // (update, table and key the damage is named by, at open (true) or on read)
    let cases: [(&str, &str, &str, bool); 12] = [
        (
            "UPDATE kv SET key = x'6a31' WHERE key = x'6b31'",
            "kv:t",
            "j1",
            false,
        ),
        (
            "UPDATE kv SET tbl = 's' WHERE key = x'6b32'",
            "kv:s",
            "k2",
            false,
        ),
        (
            "UPDATE outbox SET seq = 2 WHERE seq = 1",
            "outbox",
            "b/2",
            true,
        ),
        ("UPDATE outbox SET created_ms = 2", "outbox", "b/1", true),
        ("UPDATE peers SET peer = 'c'", "peers", "c", true),
        ("UPDATE timers SET name = 'tock'", "timers", "tock", true),
        ("UPDATE timers SET due_ms = 6", "timers", "tick", true),
        (
            "UPDATE clients SET request_no = 2",
            "clients",
            "0x03030303030303030303030303030303",
            true,
        ),
        (
            "UPDATE clients SET updated_ms = 2",
            "clients",
            "0x03030303030303030303030303030303",
            true,
        ),
        (
            "UPDATE fuse_groups SET group_id = x'05040404040404040404040404040404'",
            "fuse_groups",
            "0x05040404040404040404040404040404",
            true,
        ),
        ("UPDATE turn_log SET turn = 2", "turn_log", "2", false),
        // A meta value pasted into another row of the same length.
        (
            "UPDATE meta SET value = (SELECT value FROM meta WHERE key = 'incarnation') \
             WHERE key = 'created_ms'",
            "meta",
            "created_ms",
            true,
        ),
    ];
    for (update, table, key, at_open) in cases {
        let t = temp_store();
        healthy_store(&t.path, b"value-one");
        assert!(raw(&t.path).execute(update, []).unwrap() >= 1, "{update}");
        let opened = try_open(&t.path, "a");
        if at_open {
            match opened {
                Err(OpenError::Corrupted(c)) => assert_names(&c, table, key),
                other => panic!("{update}: expected Corrupted, got {other:?}"),
            }
        } else {
            let (store, _) = opened.unwrap_or_else(|e| panic!("{update}: {e}"));
            drop(store);
        }
        if table == "meta" {
            // A reader refuses a store whose meta rows do not check, naming the row.
            match Reader::open(&t.path) {
                Err(OpenError::Corrupted(c)) => assert_names(&c, table, key),
                other => panic!("{update}: expected Corrupted, got {other:?}"),
            }
            continue;
        }
        let reader = Reader::open(&t.path).unwrap();
        let problems = reader.verify().unwrap();
        assert!(
            problems.iter().any(|p| p.table == table && p.key == key),
            "{update}: {problems:?}"
        );
        if let Some(t_name) = table.strip_prefix("kv:") {
            match reader.table_get(t_name, key.as_bytes()) {
                Err(ReadError::Corrupted(c)) => assert_names(&c, table, key),
                other => panic!("{update}: expected Corrupted, got {other:?}"),
            }
        }
    }
}

/// A store with `ROWS` rows in table `t`, closed cleanly and checkpointed into the database
/// file; then the cell count of the leaf page holding key `k0500` is decremented: a one-bit
/// change to the B-tree's structure, not to any record, which SQLite does not notice (the
/// page still parses; its last row just is no longer there).
fn shrink_a_leaf_page(options: &StoreOptions) -> crate::common::TempStore {
    const ROWS: u32 = 2000;
    let t = temp_store();
    {
        let (mut store, _) = try_open_with(&t.path, "a", options).unwrap();
        let table_writes = (0..ROWS)
            .map(|i| TableWrite {
                table: "t".into(),
                key: format!("k{i:04}").into_bytes(),
                value: Some(vec![b'v'; 64]),
            })
            .collect();
        store
            .commit(&Batch {
                turns: 1,
                table_writes,
                ..Batch::default()
            })
            .unwrap();
    }
    {
        let conn = raw(&t.path);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let mut bytes = std::fs::read(&t.path).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let at = bytes
        .windows(5)
        .position(|w| w == b"k0500")
        .expect("the key is in the file");
    let page = at / page_size;
    let header = page * page_size + if page == 0 { 100 } else { 0 };
    assert!(
        matches!(bytes[header], 0x0a | 0x0d),
        "page {} holding the key is a leaf (type {:#x})",
        page + 1,
        bytes[header]
    );
    let cells = u16::from_be_bytes([bytes[header + 3], bytes[header + 4]]);
    assert!(cells > 1);
    bytes[header + 3..header + 5].copy_from_slice(&(cells - 1).to_be_bytes());
    std::fs::write(&t.path, &bytes).unwrap();
    t
}

/// Every key's read: `Ok(true)` present, `Ok(false)` absent, `Err` the read failed.
fn read_every_key(path: &Path) -> Vec<Result<bool, ReadError>> {
    let (store, _) = try_open(path, "a").unwrap();
    (0..2000)
        .map(|i| {
            store
                .table_get("t", format!("k{i:04}").as_bytes())
                .map(|v| v.is_some())
        })
        .collect()
}

#[test]
fn a_damaged_b_tree_page_is_an_error_never_missing_rows() {
    let t = shrink_a_leaf_page(&StoreOptions::default());
    let reads = read_every_key(&t.path);
    assert!(
        reads.iter().all(|r| !matches!(r, Ok(false))),
        "no key reads as absent"
    );
    let failed: Vec<_> = reads.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failed.is_empty(), "the damaged page's keys fail to read");
    for e in &failed {
        assert!(
            matches!(e, ReadError::Damaged { detail } if detail.contains("fails its checksum")),
            "{e}"
        );
    }
    let problems = Reader::open(&t.path).unwrap().verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.what.contains("fails its checksum")),
        "{problems:?}"
    );
}

#[test]
fn control_without_page_checksums_a_damaged_b_tree_page_loses_rows_silently() {
    let options = StoreOptions {
        page_checksums: false,
        ..StoreOptions::default()
    };
    let t = shrink_a_leaf_page(&options);
    let reads = read_every_key(&t.path);
    assert!(
        reads.iter().all(Result::is_ok),
        "no read fails: the damage is silent"
    );
    assert!(
        reads.iter().any(|r| matches!(r, Ok(false))),
        "a committed key reads as absent"
    );
}
