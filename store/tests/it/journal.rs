//! The batch journal (format 4): a store that journals small commits and one that writes
//! every commit to the tables (`journal_rows: 0`, the negative control) show the same state
//! to every reader after every commit of a random sequence, and recover the same; the
//! owner's reads see journaled writes; a damaged journal record is named, never applied.

use std::collections::BTreeMap;
use std::path::Path;

use ken_store::{
    Batch, ClientChange, ClientRow, GroupChange, GroupRow, OpenError, OutboxAck, OutboxRow,
    PeerRow, ReadError, Reader, Recovered, Store, StoreOptions, TableWrite, TimerChange,
    TurnLogEntry,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{raw, seeded_rng, temp_store, try_open_with};

const TURN_LOG_MAX: u32 = 10;
const PEERS: [&str; 3] = ["p1", "p2", "p3"];
const TABLES: [&str; 2] = ["t1", "t2"];

fn options(journal_rows: u32) -> StoreOptions {
    StoreOptions {
        turn_log_max: TURN_LOG_MAX,
        journal_rows,
        ..StoreOptions::default()
    }
}

/// What the generator must know to make valid batches.
#[derive(Default)]
struct Model {
    /// Per peer: next_seq, acked, forgotten.
    peers: BTreeMap<&'static str, (u64, u64, u64)>,
    turn: u64,
    now_ms: u64,
}

fn key(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let prefix = [b"a".as_slice(), b"ab", b"b"][rng.gen_range(0..3)];
    let mut k = prefix.to_vec();
    k.push(rng.gen_range(0..6u8));
    k
}

/// A random valid batch: mostly small (journaled), sometimes large in rows or bytes
/// (committed directly).
fn random_batch(rng: &mut ChaCha8Rng, m: &mut Model) -> Batch {
    m.now_ms += rng.gen_range(1..5);
    let big = rng.gen_bool(0.1);
    let rows = if big {
        rng.gen_range(17..30)
    } else {
        rng.gen_range(0..4)
    };
    let value_len = if rng.gen_bool(0.05) {
        600
    } else {
        rng.gen_range(0..24)
    };
    let mut b = Batch {
        now_ms: m.now_ms,
        ..Batch::default()
    };
    if rng.gen_bool(0.5) {
        b.root = Some(format!("root at {}", m.now_ms).into_bytes());
    }
    let mut touched: Vec<&'static str> = Vec::new();
    for _ in 0..rows {
        match rng.gen_range(0..7) {
            0 | 1 => b.table_writes.push(TableWrite {
                table: TABLES[rng.gen_range(0..2)].into(),
                key: key(rng),
                value: rng.gen_bool(0.75).then(|| vec![rng.gen::<u8>(); value_len]),
            }),
            2 => {
                let p = PEERS[rng.gen_range(0..3)];
                let e = m.peers.entry(p).or_insert((1, 0, 0));
                b.outbox_appends.push(OutboxRow {
                    peer: p.into(),
                    seq: e.0,
                    payload: vec![e.0 as u8; rng.gen_range(0..20)],
                    created_ms: m.now_ms,
                });
                e.0 += 1;
                touched.push(p);
            }
            3 => {
                let p = PEERS[rng.gen_range(0..3)];
                let e = m.peers.entry(p).or_insert((1, 0, 0));
                if rng.gen_bool(0.85) {
                    let up_to = rng.gen_range(e.1..e.0);
                    e.1 = up_to;
                    b.outbox_acks.push(OutboxAck {
                        peer: p.into(),
                        up_to,
                    });
                } else {
                    e.2 = e.0 - 1;
                    b.outbox_forget.push(p.into());
                }
                touched.push(p);
            }
            4 => {
                let name = ["a", "b", "c"][rng.gen_range(0..3)].to_string();
                b.timers.push(if rng.gen_bool(0.7) {
                    TimerChange::Set {
                        name,
                        due_ms: rng.gen_range(0..1000),
                        payload: vec![7; rng.gen_range(0..4)],
                    }
                } else {
                    TimerChange::Cancel { name }
                });
            }
            5 => {
                let client = [rng.gen_range(0..4u8); 16];
                b.clients.push(if rng.gen_bool(0.8) {
                    ClientChange::Put(ClientRow {
                        client,
                        request_no: m.now_ms,
                        reply: vec![3; rng.gen_range(0..10)],
                        updated_ms: m.now_ms,
                    })
                } else {
                    ClientChange::Evict { client }
                });
            }
            _ => {
                let group = [rng.gen_range(1..4u8); 16];
                b.groups.push(if rng.gen_bool(0.8) {
                    GroupChange::Put(GroupRow {
                        group,
                        record: vec![9; rng.gen_range(0..10)],
                    })
                } else {
                    GroupChange::Delete { group }
                });
            }
        }
    }
    touched.sort_unstable();
    touched.dedup();
    for p in touched {
        let (next_seq, acked, forgotten) = m.peers[p];
        b.peers.push(PeerRow {
            peer: p.into(),
            incarnation: 5,
            next_seq,
            acked,
            delivered: 0,
            forgotten,
        });
    }
    let turns = rng.gen_range(0..3);
    for _ in 0..turns {
        m.turn += 1;
        b.turn_log.push(TurnLogEntry {
            turn: m.turn,
            at_ms: m.now_ms,
            input_kind: "message".into(),
            input_source: "p1".into(),
            input_seq: m.turn,
            messages_out: 0,
            outputs: 0,
            bytes_written: 0,
            note: String::new(),
        });
    }
    b.turns = turns;
    b
}

/// Everything a reader can see, as one comparable string per view.
fn view(store: &Store, r: &Reader, rng: &mut ChaCha8Rng) -> Vec<String> {
    let meta = r.meta().unwrap();
    let mut out = vec![
        format!(
            "meta {} {} {} {}",
            meta.turns_committed, meta.commits, meta.last_commit_ms, meta.format_version
        ),
        format!("root {:?}", r.root().unwrap()),
        format!("tables {:?}", r.tables().unwrap()),
        format!("peers {:?}", r.peers().unwrap()),
        format!("outbox {:?}", r.outbox(None, 10_000).unwrap()),
        format!("outbox_stats {:?}", r.outbox_stats().unwrap()),
        format!("timers {:?}", r.timers().unwrap()),
        format!("clients {:?}", r.clients().unwrap()),
        format!("groups {:?}", r.groups().unwrap()),
        format!("turn_log {:?}", r.turn_log(TURN_LOG_MAX).unwrap()),
        format!("turn_log 3 {:?}", r.turn_log(3).unwrap()),
    ];
    for p in PEERS {
        out.push(format!("outbox {p} {:?}", r.outbox(Some(p), 2).unwrap()));
    }
    for c in 0..4u8 {
        out.push(format!("client {c} {:?}", r.client(&[c; 16]).unwrap()));
    }
    for t in TABLES {
        out.push(format!(
            "scan {t} {:?}",
            r.table_scan(t, b"", None, 10_000).unwrap()
        ));
        // Paged scans with a prefix and a small limit, as the engine pages them.
        let prefix = [b"".as_slice(), b"a", b"ab", b"b"][rng.gen_range(0..4)];
        let limit = rng.gen_range(1..4);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = r.table_scan(t, prefix, after.as_deref(), limit).unwrap();
            out.push(format!("page {t} {prefix:?} {limit} {after:?} {page:?}"));
            if page.len() < limit as usize {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
        }
        for _ in 0..4 {
            let k = key(rng);
            out.push(format!("get {t} {k:?} {:?}", r.table_get(t, &k).unwrap()));
            out.push(format!(
                "owner get {t} {k:?} {:?}",
                store.table_get(t, &k).unwrap()
            ));
        }
    }
    out
}

fn comparable(mut r: Recovered) -> Recovered {
    r.incarnation = 0;
    r.created = false;
    r
}

#[test]
fn a_journal_store_and_a_direct_store_look_the_same_after_every_commit() {
    let (mut rng, seed) = seeded_rng("journal::equivalence");
    let (tj, td) = (temp_store(), temp_store());
    let journal_rows = rng.gen_range(1..12);
    // The journal store moves to a copy of its files at each simulated crash.
    let (mut jpath, mut crashed_dirs) = (tj.path.clone(), Vec::new());
    let (mut sj, _) = try_open_with(&jpath, "a", &options(journal_rows)).unwrap();
    let (mut sd, _) = try_open_with(&td.path, "a", &options(0)).unwrap();
    let (mut rj, rd) = (
        Reader::open(&jpath).unwrap(),
        Reader::open(&td.path).unwrap(),
    );
    let mut reopened_with_journal = 0u32;
    let mut model = Model::default();
    let (mut journaled, mut folded, mut differs_raw) = (0u32, 0u32, 0u32);
    for i in 1..=400u32 {
        let context = format!("seed {seed}, journal_rows {journal_rows}, commit {i}");
        let b = random_batch(&mut rng, &mut model);
        let before = sj.journaled();
        let (a, d) = (sj.commit(&b).unwrap(), sd.commit(&b).unwrap());
        assert_eq!(a, d, "{context}");
        assert_eq!(sd.journaled(), 0, "{context}: the control never journals");
        if sj.journaled() > before {
            journaled += 1;
        } else if before > 0 {
            folded += 1;
        }
        // The same random choices for both views.
        let view_seed: u64 = rng.gen();
        let vj = view(&sj, &rj, &mut ChaCha8Rng::seed_from_u64(view_seed));
        let vd = view(&sd, &rd, &mut ChaCha8Rng::seed_from_u64(view_seed));
        for (x, y) in vj.iter().zip(&vd) {
            assert_eq!(x, y, "{context}");
        }
        // The control: the journal store's tables alone lag behind (so the equality above
        // is the journal's merge at work, not tables that happen to agree).
        if sj.journaled() > 0 {
            let raw_counters = |p: &Path| -> Vec<u8> {
                raw(p)
                    .query_row("SELECT value FROM meta WHERE key = 'counters'", [], |r| {
                        r.get(0)
                    })
                    .unwrap()
            };
            if raw_counters(&jpath) != raw_counters(&td.path) {
                differs_raw += 1;
            }
        }
        if i % 25 == 0 {
            assert!(rj.verify().unwrap().is_empty(), "{context}");
            // Reopen both: the same recovery. Every other time the journal store crashes
            // (its journal stays for the open to recover through), else it closes cleanly
            // (and folds).
            let crash = i % 50 == 0;
            let journaled = sj.journaled();
            drop(sd);
            if crash {
                let (dir, path) = crashed_copy(sj);
                crashed_dirs.push(dir);
                jpath = path;
                rj = Reader::open(&jpath).unwrap();
            } else {
                drop(sj);
            }
            let (sj2, recj) = try_open_with(&jpath, "a", &options(journal_rows)).unwrap();
            let (sd2, recd) = try_open_with(&td.path, "a", &options(0)).unwrap();
            let kept = if crash { journaled } else { 0 };
            assert_eq!(sj2.journaled(), kept, "{context}: journal at open");
            reopened_with_journal += u32::from(kept > 0);
            assert_eq!(comparable(recj), comparable(recd), "{context}: recovery");
            (sj, sd) = (sj2, sd2);
        }
    }
    eprintln!(
        "seed {seed}, journal_rows {journal_rows}: {journaled} journal commits, {folded} \
         folding commits, {differs_raw} views where the raw tables differed, \
         {reopened_with_journal} reopens after a crash with journal rows"
    );
    assert!(
        journaled > 100 && folded > 10,
        "seed {seed}: both paths taken"
    );
    assert!(
        differs_raw > 0,
        "seed {seed}: the control saw the tables lag"
    );
}

#[test]
fn the_owner_and_readers_see_journaled_writes_before_a_fold() {
    let t = temp_store();
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    let client = ClientRow {
        client: [1; 16],
        request_no: 3,
        reply: b"reply".to_vec(),
        updated_ms: 2,
    };
    store
        .commit(&Batch {
            turns: 1,
            table_writes: vec![TableWrite {
                table: "t".into(),
                key: b"k".to_vec(),
                value: Some(b"v1".to_vec()),
            }],
            clients: vec![ClientChange::Put(client.clone())],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.journaled(), 1);
    // Not in the tables yet.
    let in_table: i64 = raw(&t.path)
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_table, 0, "the write is only in the journal");
    assert_eq!(
        store.table_get("t", b"k").unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(
        reader.table_get("t", b"k").unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(reader.client(&[1; 16]).unwrap(), Some(client));
    // A delete, journaled, hides the row again; a fold keeps it hidden.
    store
        .commit(&Batch {
            table_writes: vec![TableWrite {
                table: "t".into(),
                key: b"k".to_vec(),
                value: None,
            }],
            clients: vec![ClientChange::Evict { client: [1; 16] }],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.journaled(), 2);
    assert_eq!(store.table_get("t", b"k").unwrap(), None);
    assert_eq!(reader.table_get("t", b"k").unwrap(), None);
    assert_eq!(reader.client(&[1; 16]).unwrap(), None);
    // A large batch is committed directly and folds the journal first.
    store
        .commit(&Batch {
            table_writes: (0..20u8)
                .map(|i| TableWrite {
                    table: "u".into(),
                    key: vec![i],
                    value: Some(vec![i]),
                })
                .collect(),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.journaled(), 0);
    assert_eq!(store.table_get("t", b"k").unwrap(), None);
    assert_eq!(reader.meta().unwrap().commits, 3);
    assert_eq!(reader.table_scan("u", b"", None, 100).unwrap().len(), 20);
}

/// The store's files as a SIGKILL leaves them (no close, so no fold), copied to a fresh
/// directory: the owner is leaked, so its lock is never released in this process.
fn crashed_copy(store: Store) -> (tempfile::TempDir, std::path::PathBuf) {
    let from = store.path().to_path_buf();
    std::mem::forget(store);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("p.ken");
    std::fs::copy(&from, &to).unwrap();
    std::fs::copy(ken_store::wal_path(&from), ken_store::wal_path(&to)).unwrap();
    (dir, to)
}

/// Commits one journaled batch, crashes, and flips a bit of the journal record.
fn damaged_journal() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = temp_store();
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    store
        .commit(&Batch {
            turns: 1,
            root: Some(b"root".to_vec()),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.journaled(), 1);
    let (dir, path) = crashed_copy(store);
    std::mem::forget(t);
    let conn = raw(&path);
    let mut record: Vec<u8> = conn
        .query_row("SELECT record FROM journal WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    record[2] ^= 0x10;
    conn.execute("UPDATE journal SET record = ?1 WHERE seq = 1", [record])
        .unwrap();
    (dir, path)
}

#[test]
fn a_damaged_journal_record_is_named_and_never_applied() {
    let (_dir, path) = damaged_journal();
    let reader = Reader::open(&path).unwrap();
    let problems = reader.verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.table == "journal" && p.key == "1"),
        "{problems:?}"
    );
    match reader.root() {
        Err(ReadError::Corrupted(c)) => {
            assert_eq!((c.table.as_str(), c.key.as_str()), ("journal", "1"))
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    drop(reader);
    match try_open_with(&path, "a", &options(8)) {
        Err(OpenError::Corrupted(c)) => {
            assert_eq!((c.table.as_str(), c.key.as_str()), ("journal", "1"), "{c}")
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // Refused and left as found: still there, still damaged.
    let rows: i64 = raw(&path)
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn a_clean_close_folds_the_journal_and_an_open_after_a_crash_keeps_it() {
    let t = temp_store();
    let journal_rows = |p: &Path| -> i64 {
        raw(p)
            .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
            .unwrap()
    };
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    let small = |n: u8| Batch {
        turns: 1,
        root: Some(vec![n]),
        ..Batch::default()
    };
    store.commit(&small(1)).unwrap();
    store.commit(&small(2)).unwrap();
    assert_eq!(journal_rows(&t.path), 2);
    drop(store);
    assert_eq!(journal_rows(&t.path), 0, "a clean close folds");
    let (mut store, rec) = try_open_with(&t.path, "a", &options(8)).unwrap();
    assert_eq!((rec.commits, rec.root.as_deref()), (2, Some(&[2u8][..])));
    store.commit(&small(3)).unwrap();
    let (_dir, path) = crashed_copy(store);
    std::mem::forget(t);
    assert_eq!(journal_rows(&path), 1, "a crash leaves the journal");
    // The open recovers through the journal and keeps it: the tables stay as they were.
    let table_counters = |p: &Path| -> Vec<u8> {
        raw(p)
            .query_row("SELECT value FROM meta WHERE key = 'counters'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let before = table_counters(&path);
    let (mut store, rec) = try_open_with(&path, "a", &options(8)).unwrap();
    assert_eq!((rec.commits, rec.root.as_deref()), (3, Some(&[3u8][..])));
    assert_eq!((store.journaled(), journal_rows(&path)), (1, 1), "kept");
    assert_eq!(table_counters(&path), before, "the open folded nothing");
    // The next journal commit goes on from it; a direct commit folds both.
    store.commit(&small(4)).unwrap();
    assert_eq!(journal_rows(&path), 2);
    store
        .commit(&Batch {
            turns: 1,
            root: Some(vec![5; 600]),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!((store.journaled(), journal_rows(&path)), (0, 0), "folded");
    let r = Reader::open(&path).unwrap().meta().unwrap();
    assert_eq!((r.commits, r.turns_committed), (5, 5));
    drop(store);
}

#[test]
fn a_journal_row_out_of_sequence_is_named() {
    let t = temp_store();
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    for _ in 0..2 {
        store
            .commit(&Batch {
                turns: 1,
                ..Batch::default()
            })
            .unwrap();
    }
    assert_eq!(store.journaled(), 2);
    let (_dir, path) = crashed_copy(store);
    std::mem::forget(t);
    // Drop the first row: the second no longer follows the tables' counters.
    raw(&path)
        .execute("DELETE FROM journal WHERE seq = 1", [])
        .unwrap();
    let problems = Reader::open(&path).unwrap().verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.table == "journal" && p.key == "2" && p.what.contains("does not follow")),
        "{problems:?}"
    );
}

/// What a reader shows of everything a commit of [`small_commit`] touches, as one string.
fn reader_view(r: &Reader) -> String {
    let m = r.meta().unwrap();
    format!(
        "{} {} {} {} {}\nroot {:?}\nrows {:?}\nclient {:?}\nturn log {:?}\noutbox {:?}\npeers {:?}",
        m.process_id,
        m.incarnation,
        m.commits,
        m.turns_committed,
        m.last_commit_ms,
        r.root().unwrap(),
        r.table_scan("t", b"", None, 10_000).unwrap(),
        r.client(&[1; 16]).unwrap(),
        r.turn_log(100).unwrap(),
        r.outbox(None, 100).unwrap(),
        r.peers().unwrap(),
    )
}

/// Commit `i` (from 1): root `i`, row `k<i>` and row `n` = `i` of table `t`, client 1's
/// request `i`, one turn-log entry, one message to `p` (the one before acknowledged).
fn small_commit(i: u64) -> Batch {
    Batch {
        now_ms: i,
        turns: 1,
        root: Some(i.to_be_bytes().to_vec()),
        table_writes: vec![
            TableWrite {
                table: "t".into(),
                key: [b"k".as_slice(), &i.to_be_bytes()].concat(),
                value: Some(i.to_be_bytes().to_vec()),
            },
            TableWrite {
                table: "t".into(),
                key: b"n".to_vec(),
                value: Some(i.to_be_bytes().to_vec()),
            },
        ],
        outbox_appends: vec![OutboxRow {
            peer: "p".into(),
            seq: i,
            payload: i.to_be_bytes().to_vec(),
            created_ms: i,
        }],
        outbox_acks: vec![OutboxAck {
            peer: "p".into(),
            up_to: i - 1,
        }],
        peers: vec![PeerRow {
            peer: "p".into(),
            incarnation: 1,
            next_seq: i + 1,
            acked: i - 1,
            delivered: 0,
            forgotten: 0,
        }],
        clients: vec![ClientChange::Put(ClientRow {
            client: [1; 16],
            request_no: i,
            reply: i.to_be_bytes().to_vec(),
            updated_ms: i,
        })],
        turn_log: vec![TurnLogEntry {
            turn: i,
            at_ms: i,
            input_kind: "message".into(),
            input_source: "p".into(),
            input_seq: i,
            messages_out: 1,
            outputs: 0,
            bytes_written: 0,
            note: String::new(),
        }],
        ..Batch::default()
    }
}

fn journal_count(path: &Path) -> i64 {
    raw(path)
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_copy_taken_with_journal_rows_carries_them_and_its_owner_folds_them() {
    let t = temp_store();
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    for i in 1..=5 {
        store.commit(&small_commit(i)).unwrap();
    }
    assert_eq!(store.journaled(), 5, "the commits are journaled");
    let copy = t.dir.path().join("copy.ken");
    let meta = Reader::open(&t.path).unwrap().copy_into(&copy).unwrap();
    assert_eq!(meta.commits, 5, "the copy is as of the newest commit");
    // The copy holds the journal rows, not folded: its tables alone lag behind.
    assert_eq!(journal_count(&copy), 5);
    let table_commits: Vec<u8> = raw(&copy)
        .query_row("SELECT value FROM meta WHERE key = 'counters'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let primary_view = reader_view(&Reader::open(&t.path).unwrap());
    {
        let r = Reader::open(&copy).unwrap();
        assert_eq!(reader_view(&r), primary_view, "the copy reads as the store");
        let v = r.verify_all().unwrap();
        assert!(v.problems.is_empty(), "the copy verifies: {:?}", v.problems);
    }
    // Installed as a replica: its owner's open recovers commit 5 through the journal, and
    // its owner reads the journaled rows.
    let replica = t.dir.path().join("replica.ken");
    ken_store::install_copy(&replica, &copy).unwrap();
    let (mut r, rec) = try_open_with(&replica, "a", &options(8)).unwrap();
    assert_eq!(rec.commits, 5);
    assert_eq!(rec.root.as_deref(), Some(&5u64.to_be_bytes()[..]));
    let outbox: Vec<u64> = rec.outbox.iter().map(|m| m.seq).collect();
    assert_eq!(outbox, [5], "acknowledged messages are gone");
    assert_eq!(rec.peers.len(), 1);
    assert_eq!((rec.peers[0].next_seq, rec.peers[0].acked), (6, 4));
    assert_eq!(rec.clients.len(), 1);
    assert_eq!(rec.clients[0].request_no, 5);
    assert_eq!(r.journaled(), 5);
    assert_eq!(
        r.table_get("t", b"n").unwrap().as_deref(),
        Some(&5u64.to_be_bytes()[..])
    );
    // It follows on from the primary; a clean close folds.
    assert_eq!(r.commit(&small_commit(6)).unwrap().commits, 6);
    assert_eq!(
        r.table_get("t", b"n").unwrap().as_deref(),
        Some(&6u64.to_be_bytes()[..])
    );
    drop(r);
    assert_eq!(journal_count(&replica), 0, "the close folded the journal");
    let folded_counters: Vec<u8> = raw(&replica)
        .query_row("SELECT value FROM meta WHERE key = 'counters'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(
        folded_counters, table_commits,
        "the fold wrote the counters"
    );
    store.commit(&small_commit(6)).unwrap();
    assert_eq!(
        reader_view(&Reader::open(&replica).unwrap()),
        reader_view(&Reader::open(&t.path).unwrap()),
        "the folded replica reads as the store"
    );
}

#[test]
fn a_reader_beside_an_owner_that_folds_sees_one_commit_per_query() {
    const FOLDS: u64 = 60;
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
    let t = temp_store();
    // A journal of 3 rows: every fourth commit folds.
    let (mut store, _) = try_open_with(&t.path, "a", &options(3)).unwrap();
    store.commit(&small_commit(1)).unwrap();
    let reader = Reader::open(&t.path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let (mut i, mut folds) = (1u64, 0u64);
            while folds < FOLDS || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(started.elapsed() < DEADLINE, "the reader never finished");
                i += 1;
                let before = store.journaled();
                store.commit(&small_commit(i)).unwrap();
                folds += u64::from(before > 0 && store.journaled() == 0);
            }
            (i, folds)
        })
    };
    let (mut reads, mut journaled_reads) = (0u64, 0u64);
    let mut last = 0u64;
    while !writer.is_finished() {
        // Each query is one commit: the rows `k1`..`k<n>` and `n` = n, nothing more.
        let rows = reader.table_scan("t", b"", None, 10_000).unwrap();
        let (n_key, n) = rows.last().expect("row n");
        assert_eq!(n_key.as_slice(), b"n");
        let n = u64::from_be_bytes(n.as_slice().try_into().unwrap());
        let want: Vec<Vec<u8>> = (1..=n)
            .map(|i| [b"k".as_slice(), &i.to_be_bytes()].concat())
            .chain([b"n".to_vec()])
            .collect();
        let keys: Vec<Vec<u8>> = rows.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, want, "a scan as of commit {n}");
        assert!(n >= last, "queries go forward: {n} after {last}");
        last = n;
        let m = reader.meta().unwrap();
        assert_eq!(
            (m.turns_committed, m.last_commit_ms),
            (m.commits, m.commits)
        );
        let outbox = reader.outbox(None, 100).unwrap();
        assert_eq!(outbox.len(), 1, "one message unacknowledged: {outbox:?}");
        let peers = reader.peers().unwrap();
        // Read after the outbox (perhaps a newer commit): the same peer row's counters.
        assert_eq!(peers[0].acked + 2, peers[0].next_seq, "{peers:?}");
        assert!(outbox[0].seq < peers[0].next_seq, "{peers:?} {outbox:?}");
        let log = reader.turn_log(1).unwrap();
        let client = reader.client(&[1; 16]).unwrap().expect("client 1");
        assert!(log[0].turn >= n && client.request_no >= n);
        journaled_reads += u64::from(!m.commits.is_multiple_of(4));
        reads += 1;
        if reads >= 200 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let (commits, folds) = writer.join().unwrap();
    eprintln!(
        "{reads} reads ({journaled_reads} with journal rows) beside {commits} commits, {folds} \
         folds"
    );
    assert!(folds >= FOLDS && reads >= 200 && journaled_reads > 0);
    assert_eq!(reader.meta().unwrap().commits, commits);
    assert!(reader.verify().unwrap().is_empty());
}

#[test]
fn adopting_an_application_identity_folds_the_journal_first() {
    let t = temp_store();
    let (mut store, _) = try_open_with(&t.path, "a", &options(8)).unwrap();
    for i in 1..=3 {
        store.commit(&small_commit(i)).unwrap();
    }
    assert_eq!(store.journaled(), 3);
    let (_dir, path) = crashed_copy(store);
    std::mem::forget(t);
    // Adoption rewrites every outbox row of the table with the version envelope: the
    // journaled message (seq 3, the others acknowledged) must be in the table by then.
    let app = ken_store::AppIdentity {
        name: "app".into(),
        schema_version: 1,
    };
    let (store, rec) = Store::open_for_app(&path, "a", &options(8), &app).unwrap();
    assert_eq!((rec.commits, store.journaled()), (3, 0));
    assert_eq!(journal_count(&path), 0, "folded before the adoption");
    let want = ken_store::wrap_payload(1, &3u64.to_be_bytes());
    let seqs: Vec<(u64, &[u8])> = rec
        .outbox
        .iter()
        .map(|m| (m.seq, m.payload.as_slice()))
        .collect();
    assert_eq!(seqs, [(3, want.as_slice())]);
    let read = Reader::open(&path).unwrap().outbox(None, 10).unwrap();
    assert_eq!(
        read, rec.outbox,
        "the table holds what recovery handed back"
    );
    assert_eq!(store.app(), Some(&app));
}
