//! Every `Batch` field survives commit and reopen, and `Recovered` and `Reader` agree.

use ken_store::{
    Batch, ClientChange, ClientRow, GroupChange, GroupRow, OutboxAck, OutboxRow, OutboxStats,
    PeerRow, Reader, StoreOptions, TableStats, TableWrite, TimerChange, TimerRow, TurnLogEntry,
};

use crate::common::{raw, temp_store, try_open, try_open_with};

fn put(table: &str, key: &[u8], value: &[u8]) -> TableWrite {
    TableWrite {
        table: table.into(),
        key: key.to_vec(),
        value: Some(value.to_vec()),
    }
}

fn msg(peer: &str, seq: u64) -> OutboxRow {
    OutboxRow {
        peer: peer.into(),
        seq,
        payload: format!("{peer}-{seq}").into_bytes(),
        created_ms: 1000 + seq,
    }
}

fn peer(peer: &str, incarnation: u64, next_seq: u64, acked: u64, delivered: u64) -> PeerRow {
    PeerRow {
        peer: peer.into(),
        incarnation,
        next_seq,
        acked,
        delivered,
        forgotten: 0,
    }
}

fn client(id: u8, request_no: u64, reply: &[u8]) -> ClientRow {
    ClientRow {
        client: [id; 16],
        request_no,
        reply: reply.to_vec(),
        updated_ms: 10 * request_no,
    }
}

fn turn(n: u64) -> TurnLogEntry {
    TurnLogEntry {
        turn: n,
        at_ms: 5000 + n,
        input_kind: "message".into(),
        input_source: "b".into(),
        input_seq: n,
        messages_out: 1,
        outputs: 2,
        bytes_written: 3,
        note: format!("turn {n}"),
    }
}

fn batches() -> Vec<Batch> {
    vec![
        Batch {
            now_ms: 111,
            turns: 3,
            root: Some(b"root-1".to_vec()),
            table_writes: vec![
                put("t1", b"a", b"1"),
                put("t1", b"b", b"2"),
                put("t2", b"x", b"3"),
            ],
            outbox_appends: vec![
                msg("b", 1),
                msg("b", 2),
                msg("c", 1),
                msg("b", 3),
                msg("c", 2),
            ],
            peers: vec![peer("b", 7, 4, 0, 5), peer("c", u64::MAX, 3, 0, 0)],
            timers: vec![
                TimerChange::Set {
                    name: "tick".into(),
                    due_ms: 100,
                    payload: b"p1".to_vec(),
                },
                TimerChange::Set {
                    name: "gone".into(),
                    due_ms: 50,
                    payload: vec![],
                },
            ],
            clients: vec![
                ClientChange::Put(client(1, 1, b"r1")),
                ClientChange::Put(client(2, 1, b"r2")),
            ],
            groups: vec![
                GroupChange::Put(GroupRow {
                    group: [1; 16],
                    record: b"g1".to_vec(),
                }),
                GroupChange::Put(GroupRow {
                    group: [2; 16],
                    record: b"g2".to_vec(),
                }),
            ],
            turn_log: vec![turn(1), turn(2), turn(3)],
            ..Batch::default()
        },
        Batch {
            now_ms: 222,
            turns: 3,
            root: None,
            table_writes: vec![
                TableWrite {
                    table: "t1".into(),
                    key: b"a".to_vec(),
                    value: None,
                },
                put("t1", b"b", b"22"),
            ],
            outbox_appends: vec![msg("b", 4)],
            outbox_acks: vec![OutboxAck {
                peer: "b".into(),
                up_to: 2,
            }],
            outbox_forget: vec!["c".into()],
            peers: vec![peer("b", 7, 5, 2, 6), peer("c", u64::MAX, 3, 2, 0)],
            timers: vec![
                TimerChange::Cancel {
                    name: "gone".into(),
                },
                TimerChange::Set {
                    name: "tick".into(),
                    due_ms: 200,
                    payload: b"p2".to_vec(),
                },
            ],
            clients: vec![
                ClientChange::Evict { client: [2; 16] },
                ClientChange::Put(client(1, 2, b"r1b")),
            ],
            groups: vec![GroupChange::Delete { group: [2; 16] }],
            turn_log: vec![turn(4), turn(5), turn(6)],
        },
        Batch {
            now_ms: 333,
            turns: 2,
            root: Some(b"root-3".to_vec()),
            ..Batch::default()
        },
    ]
}

const OPTIONS: StoreOptions = StoreOptions {
    turn_log_max: 4,
    max_page_count: None,
    page_checksums: true,
    page_size: None,
    journal_rows: ken_store::DEFAULT_JOURNAL_ROWS,
    journal_record_max_bytes: None,
};

#[test]
fn every_batch_field_survives_reopen_and_reads_back_exactly() {
    let t = temp_store();
    let (mut store, rec) = try_open_with(&t.path, "a", &OPTIONS).unwrap();
    assert!(rec.created);
    assert_ne!(rec.incarnation, 0);
    assert_eq!(
        (rec.turns_committed, rec.commits, rec.root.clone()),
        (0, 0, None)
    );
    assert!(rec.peers.is_empty() && rec.outbox.is_empty() && rec.timers.is_empty());
    assert!(rec.clients.is_empty() && rec.groups.is_empty());
    let incarnation = rec.incarnation;
    assert_eq!(store.incarnation(), incarnation);
    assert_eq!(store.process_id(), "a");
    assert_eq!(store.path(), t.path.as_path());

    let infos: Vec<_> = batches().iter().map(|b| store.commit(b).unwrap()).collect();
    assert_eq!(
        infos
            .iter()
            .map(|i| (i.commits, i.turns_committed))
            .collect::<Vec<_>>(),
        vec![(1, 3), (2, 6), (3, 8)]
    );
    assert_eq!(
        store.table_get("t1", b"b").unwrap().as_deref(),
        Some(&b"22"[..])
    );
    assert_eq!(store.table_get("t1", b"a").unwrap(), None);
    drop(store);

    let (store, rec) = try_open_with(&t.path, "a", &OPTIONS).unwrap();
    let expected_peers = vec![peer("b", 7, 5, 2, 6), peer("c", u64::MAX, 3, 2, 0)];
    let expected_outbox = vec![msg("b", 3), msg("b", 4)];
    let expected_timers = vec![TimerRow {
        name: "tick".into(),
        due_ms: 200,
        payload: b"p2".to_vec(),
    }];
    let expected_clients = vec![client(1, 2, b"r1b")];
    let expected_groups = vec![GroupRow {
        group: [1; 16],
        record: b"g1".to_vec(),
    }];
    assert_eq!(
        rec,
        ken_store::Recovered {
            process_id: "a".into(),
            incarnation,
            created: false,
            turns_committed: 8,
            commits: 3,
            root: Some(b"root-3".to_vec()),
            peers: expected_peers.clone(),
            outbox: expected_outbox.clone(),
            timers: expected_timers.clone(),
            // Checked at open, but replies stay in the store.
            clients: vec![client(1, 2, b"")],
            groups: expected_groups.clone(),
        }
    );
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(
        reader.client(&[1; 16]).unwrap(),
        Some(client(1, 2, b"r1b")),
        "the reply, read back from the store"
    );
    assert_eq!(reader.client(&[9; 16]).unwrap(), None);
    drop(reader);

    // The Reader, next to the live owner, sees the same.
    let reader = Reader::open(&t.path).unwrap();
    let meta = reader.meta().unwrap();
    assert_eq!(
        (
            meta.process_id.as_str(),
            meta.incarnation,
            meta.format_version,
            meta.turns_committed,
            meta.commits,
            meta.last_commit_ms
        ),
        ("a", incarnation, ken_store::FORMAT_VERSION, 8, 3, 333)
    );
    assert!(meta.created_ms > 0);
    assert_eq!(reader.root().unwrap().as_deref(), Some(&b"root-3"[..]));
    assert_eq!(reader.table_get("t1", b"a").unwrap(), None);
    assert_eq!(
        reader.table_get("t1", b"b").unwrap().as_deref(),
        Some(&b"22"[..])
    );
    assert_eq!(
        reader.table_get("t2", b"x").unwrap().as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(
        reader.tables().unwrap(),
        vec![
            TableStats {
                name: "t1".into(),
                rows: 1,
                bytes: 1 + 2 + 5,
            },
            TableStats {
                name: "t2".into(),
                rows: 1,
                bytes: 1 + 1 + 5,
            },
        ]
    );
    assert_eq!(reader.peers().unwrap(), expected_peers);
    assert_eq!(reader.outbox(None, 100).unwrap(), expected_outbox);
    assert_eq!(reader.outbox(Some("b"), 1).unwrap(), vec![msg("b", 3)]);
    assert_eq!(reader.outbox(Some("c"), 100).unwrap(), vec![]);
    assert_eq!(
        reader.outbox_stats().unwrap(),
        vec![OutboxStats {
            peer: "b".into(),
            depth: 2,
            min_seq: 3,
            max_seq: 4,
            oldest_created_ms: 1003,
            bytes: 2 * (3 + 5),
        }]
    );
    assert_eq!(reader.timers().unwrap(), expected_timers);
    assert_eq!(reader.clients().unwrap(), expected_clients);
    assert_eq!(reader.groups().unwrap(), expected_groups);
    // Turn log trimmed by whole rows (one per commit here) while the newest 4 remain:
    // dropping the first commit's row would leave 3, so both rows stay.
    let log = reader.turn_log(100).unwrap();
    assert_eq!(log, (1..=6).map(turn).collect::<Vec<_>>());
    assert_eq!(reader.turn_log(2).unwrap(), vec![turn(5), turn(6)]);
    assert_eq!(reader.verify().unwrap(), vec![]);
    let sizes = reader.file_sizes().unwrap();
    assert!(sizes.db_bytes > 0, "{sizes:?}");
    drop(store);
}

#[test]
fn turn_log_trims_across_reopens_with_a_smaller_limit() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    for i in 1..=10 {
        store
            .commit(&Batch {
                turns: 1,
                turn_log: vec![turn(i)],
                ..Batch::default()
            })
            .unwrap();
    }
    drop(store);
    let small = StoreOptions {
        turn_log_max: 3,
        max_page_count: None,
        page_checksums: true,
        page_size: None,
        // Trimming happens where the tables are written: with a journal, at the fold.
        journal_rows: 0,
        journal_record_max_bytes: None,
    };
    let (mut store, _) = try_open_with(&t.path, "a", &small).unwrap();
    // The smaller limit applies from the next commit on, even one without entries.
    store.commit(&Batch::default()).unwrap();
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(
        reader.turn_log(100).unwrap(),
        vec![turn(8), turn(9), turn(10)]
    );
    store
        .commit(&Batch {
            turns: 1,
            turn_log: vec![turn(11)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(
        reader.turn_log(100).unwrap(),
        vec![turn(9), turn(10), turn(11)]
    );
}

#[test]
fn table_scan_pages_by_key_within_the_prefix() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    let mut writes = Vec::new();
    for k in 0..50u8 {
        writes.push(put("s", &[b'p', k], &[k]));
        writes.push(put("s", &[b'q', k], &[k]));
    }
    writes.push(put("s", b"p", b"bare"));
    writes.push(put("s", &[0xff, 0xff], b"top"));
    writes.push(put("s", &[0xff, 0xff, 0], b"top2"));
    writes.push(put("other", &[b'p', 1], b"elsewhere"));
    store
        .commit(&Batch {
            table_writes: writes,
            ..Batch::default()
        })
        .unwrap();
    let reader = Reader::open(&t.path).unwrap();

    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = reader.table_scan("s", b"p", after.as_deref(), 7).unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().0.clone());
        seen.extend(page);
    }
    let mut expected = vec![(vec![b'p'], b"bare".to_vec())];
    expected.extend((0..50u8).map(|k| (vec![b'p', k], vec![k])));
    assert_eq!(seen, expected);

    // `after` below the prefix starts at the prefix; an empty prefix scans the whole table.
    let first = reader.table_scan("s", b"q", Some(b"a"), 1).unwrap();
    assert_eq!(first, vec![(vec![b'q', 0], vec![0])]);
    assert_eq!(reader.table_scan("s", b"", None, 1000).unwrap().len(), 103);
    // A prefix of all 0xff has no upper bound.
    let top = reader.table_scan("s", &[0xff, 0xff], None, 10).unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(
        reader
            .table_scan("s", &[0xff, 0xff], Some(&[0xff, 0xff]), 10)
            .unwrap(),
        vec![(vec![0xff, 0xff, 0], b"top2".to_vec())]
    );
    assert_eq!(reader.table_scan("none", b"", None, 10).unwrap(), vec![]);
}

#[test]
#[should_panic(expected = "outbox seq")]
fn an_outbox_seq_of_zero_is_refused_before_writing() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    let _ = store.commit(&Batch {
        outbox_appends: vec![msg("b", 0)],
        ..Batch::default()
    });
}

#[test]
#[should_panic(expected = "acked")]
fn a_peer_with_acked_not_below_next_seq_is_refused() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    let _ = store.commit(&Batch {
        peers: vec![peer("b", 1, 3, 3, 0)],
        ..Batch::default()
    });
}

#[test]
fn a_busy_commit_stores_its_turn_log_in_a_few_rows_and_trims_whole_rows() {
    let t = temp_store();
    let opts = StoreOptions {
        turn_log_max: 100,
        max_page_count: None,
        page_checksums: true,
        page_size: None,
        journal_rows: ken_store::DEFAULT_JOURNAL_ROWS,
        journal_record_max_bytes: None,
    };
    let (mut store, _) = try_open_with(&t.path, "a", &opts).unwrap();
    let mut next = 1;
    for size in [150u64, 30, 100] {
        store
            .commit(&Batch {
                turns: size,
                turn_log: (next..next + size).map(turn).collect(),
                ..Batch::default()
            })
            .unwrap();
        next += size;
    }
    // Rows of at most 64 entries: 150 -> 64+64+22, 30, 100 -> 64+36.
    let conn = raw(&t.path);
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT turn, turns FROM turn_log ORDER BY turn")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // 280 entries; whole rows are dropped while 100 remain: 64+36 (the last commit) plus
    // 30 = 130; dropping the 30 would leave 100, so it goes too.
    assert_eq!(rows, vec![(181, 64), (245, 36)]);
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(
        reader.turn_log(1000).unwrap(),
        (181..=280).map(turn).collect::<Vec<_>>()
    );
    assert_eq!(
        reader.turn_log(3).unwrap(),
        (278..=280).map(turn).collect::<Vec<_>>()
    );
    assert_eq!(reader.verify().unwrap(), vec![]);
    // Reopening recovers the row bookkeeping: the next commit trims from the same rows.
    drop(store);
    let (mut store, _) = try_open_with(&t.path, "a", &opts).unwrap();
    store
        .commit(&Batch {
            turns: 64,
            turn_log: (281..=344).map(turn).collect(),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(
        reader.turn_log(1000).unwrap(),
        (245..=344).map(turn).collect::<Vec<_>>()
    );
}

/// `StoreOptions::page_size` sets the page size of a new store (SQLite header bytes 16-17)
/// and nothing else; an existing store keeps its own; a size SQLite cannot use is refused
/// with one line naming the choices.
#[test]
fn page_size_applies_to_new_stores_only_and_bad_sizes_are_refused() {
    let header_page_size = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        u16::from_be_bytes([bytes[16], bytes[17]])
    };
    let t = temp_store();
    let small = StoreOptions {
        page_size: Some(1024),
        ..StoreOptions::default()
    };
    let (mut store, _) = try_open_with(&t.path, "a", &small).unwrap();
    for b in batches() {
        store.commit(&b).unwrap();
    }
    drop(store);
    assert_eq!(header_page_size(&t.path), 1024);
    let big = StoreOptions {
        page_size: Some(8192),
        ..StoreOptions::default()
    };
    let (store, recovered) = try_open_with(&t.path, "a", &big).unwrap();
    drop(store);
    assert_eq!(recovered.turns_committed, 8);
    assert_eq!(
        header_page_size(&t.path),
        1024,
        "an existing store keeps its size"
    );
    let t2 = temp_store();
    let bad = StoreOptions {
        page_size: Some(1000),
        ..StoreOptions::default()
    };
    let err = try_open_with(&t2.path, "a", &bad).unwrap_err().to_string();
    assert!(
        err.contains("page size 1000") && !err.contains('\n'),
        "{err}"
    );
}
