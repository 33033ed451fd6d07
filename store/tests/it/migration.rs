//! Format-2 stores are migrated to format 4 when their owner opens them: every record is
//! checked with the old envelope and sealed again with its identity, and the journal table
//! is created, in one transaction; a damaged record refuses the migration and leaves the
//! store untouched; a crash (SIGKILL of a child migrating a large store) leaves format 2 or
//! format 4, never a mix. Format-3 stores get the empty journal table and format 4.
//!
//! A format-3 store is made from a format-4 one (whose journal was folded) by
//! [`downgrade_to_3`]: the journal table dropped, `format_version` set to 3, which is what
//! format 3 was. A format-2 store is made from that by [`downgrade`], the format-2
//! migration's inverse: every record's identity-covering envelope is checked and replaced by
//! the version-1 envelope (`0x01 | body | crc32(0x01 | body)`), and `format_version` is set
//! to 2.

use std::path::Path;
use std::time::Duration;

use ken_store::codec::{self, Record};
use ken_store::{
    Batch, ClientChange, ClientRow, GroupChange, GroupRow, OpenError, OutboxRow, PeerRow, Reader,
    Recovered, Store, TableWrite, TimerChange, TurnLogEntry,
};
use rand::Rng;

use crate::common::{child_command, raw, seeded_rng, temp_store, try_open};

fn full_batch(i: u64) -> Batch {
    Batch {
        now_ms: 1000 + i,
        turns: 1,
        root: Some(format!("root {i}").into_bytes()),
        table_writes: vec![TableWrite {
            table: "t".into(),
            key: format!("k{i:05}").into_bytes(),
            value: Some(format!("value {i}").into_bytes()),
        }],
        outbox_appends: vec![OutboxRow {
            peer: "b".into(),
            seq: i,
            payload: format!("m{i}").into_bytes(),
            created_ms: i,
        }],
        peers: vec![PeerRow {
            peer: "b".into(),
            incarnation: 7,
            next_seq: i + 1,
            acked: 0,
            delivered: i,
            forgotten: 0,
        }],
        timers: vec![TimerChange::Set {
            name: format!("timer{}", i % 3),
            due_ms: 50 + i,
            payload: b"p".to_vec(),
        }],
        clients: vec![ClientChange::Put(ClientRow {
            client: [(i % 4) as u8; 16],
            request_no: i,
            reply: b"r".to_vec(),
            updated_ms: i,
        })],
        groups: vec![GroupChange::Put(GroupRow {
            group: [(i % 5) as u8 + 1; 16],
            record: format!("g{i}").into_bytes(),
        })],
        turn_log: vec![TurnLogEntry {
            turn: i,
            at_ms: i,
            input_kind: "start".into(),
            input_source: String::new(),
            input_seq: 0,
            messages_out: 1,
            outputs: 0,
            bytes_written: 1,
            note: String::new(),
        }],
        ..Batch::default()
    }
}

/// Rewrites a format-4 store (closed, its journal folded by an open) as format 3.
pub fn downgrade_to_3(path: &Path) {
    let conn = raw(path);
    let tx = conn.unchecked_transaction().unwrap();
    let journaled: i64 = tx
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journaled, 0, "downgrade a store whose journal was folded");
    tx.execute_batch("DROP TABLE journal").unwrap();
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
        [codec::seal(&3u32.to_le_bytes())],
    )
    .unwrap();
    tx.commit().unwrap();
}

/// Rewrites a format-4 store (closed, its journal folded by an open) as format 2.
pub fn downgrade(path: &Path) {
    downgrade_to_3(path);
    let conn = raw(path);
    let tx = conn.unchecked_transaction().unwrap();
    let reseal = |table: &str,
                  sealed_col: &str,
                  key_cols: &[&str],
                  record: &dyn Fn(&rusqlite::Row<'_>) -> Vec<u8>| {
        let sql = format!("SELECT {}, {sealed_col} FROM {table}", key_cols.join(", "));
        let mut stmt = tx.prepare(&sql).unwrap();
        let rows: Vec<(Vec<rusqlite::types::Value>, Vec<u8>)> = stmt
            .query_map([], |r| {
                let keys = (0..key_cols.len())
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((keys, record(r)))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let update = format!(
            "UPDATE {table} SET {sealed_col} = ?1 WHERE {}",
            key_cols
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} = ?{}", i + 2))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        for (keys, v1) in rows {
            let mut p = vec![rusqlite::types::Value::Blob(v1)];
            p.extend(keys);
            assert_eq!(
                tx.execute(&update, rusqlite::params_from_iter(p.iter()))
                    .unwrap(),
                1
            );
        }
    };
    let v1 = |rec: Record<'_>, sealed: &[u8]| {
        codec::seal(codec::check_record(&rec, sealed).expect("a healthy format-3 record"))
    };
    reseal("root", "value", &["id"], &|r| {
        v1(Record::root(), &r.get::<_, Vec<u8>>(1).unwrap())
    });
    reseal("kv", "value", &["tbl", "key"], &|r| {
        let t: String = r.get(0).unwrap();
        let k: Vec<u8> = r.get(1).unwrap();
        v1(Record::kv(&t, &k), &r.get::<_, Vec<u8>>(2).unwrap())
    });
    reseal("outbox", "payload", &["peer", "seq", "created_ms"], &|r| {
        let p: String = r.get(0).unwrap();
        let rec = Record::outbox(
            &p,
            r.get::<_, i64>(1).unwrap() as u64,
            r.get::<_, i64>(2).unwrap() as u64,
        );
        v1(rec, &r.get::<_, Vec<u8>>(3).unwrap())
    });
    reseal("peers", "record", &["peer"], &|r| {
        let p: String = r.get(0).unwrap();
        v1(Record::peer(&p), &r.get::<_, Vec<u8>>(1).unwrap())
    });
    reseal("timers", "payload", &["name", "due_ms"], &|r| {
        let n: String = r.get(0).unwrap();
        v1(
            Record::timer(&n, r.get::<_, i64>(1).unwrap() as u64),
            &r.get::<_, Vec<u8>>(2).unwrap(),
        )
    });
    reseal(
        "clients",
        "reply",
        &["client", "request_no", "updated_ms"],
        &|r| {
            let c: Vec<u8> = r.get(0).unwrap();
            let rec = Record::client(
                &c,
                r.get::<_, i64>(1).unwrap() as u64,
                r.get::<_, i64>(2).unwrap() as u64,
            );
            v1(rec, &r.get::<_, Vec<u8>>(3).unwrap())
        },
    );
    reseal("fuse_groups", "record", &["group_id"], &|r| {
        let g: Vec<u8> = r.get(0).unwrap();
        v1(Record::group(&g), &r.get::<_, Vec<u8>>(1).unwrap())
    });
    reseal("turn_log", "entries", &["turn", "turns"], &|r| {
        let rec = Record::turn_log(
            r.get::<_, i64>(0).unwrap() as u64,
            r.get::<_, i64>(1).unwrap() as u64,
        );
        v1(rec, &r.get::<_, Vec<u8>>(2).unwrap())
    });
    reseal("meta", "value", &["key"], &|r| {
        let k: String = r.get(0).unwrap();
        let v: Vec<u8> = r.get(1).unwrap();
        match k.as_str() {
            "magic" | "format_version" => v,
            _ => v1(Record::meta(&k), &v),
        }
    });
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
        [codec::seal(&2u32.to_le_bytes())],
    )
    .unwrap();
    tx.commit().unwrap();
}

fn format_version(path: &Path) -> u32 {
    let v: Vec<u8> = raw(path)
        .query_row(
            "SELECT value FROM meta WHERE key = 'format_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    u32::from_le_bytes(
        codec::unseal("meta", "format_version", &v)
            .unwrap()
            .try_into()
            .unwrap(),
    )
}

fn make_format_3(path: &Path, batches: u64) -> Recovered {
    let (mut store, _) = try_open(path, "a").unwrap();
    for i in 1..=batches {
        store.commit(&full_batch(i)).unwrap();
    }
    assert!(store.journaled() > 0, "some commits were journaled");
    drop(store);
    let (store, before) = try_open(path, "a").unwrap();
    assert_eq!(store.journaled(), 0);
    drop(store);
    downgrade_to_3(path);
    assert_eq!(format_version(path), 3);
    before
}

#[test]
fn a_format_3_store_gets_the_empty_journal_at_open_with_everything_intact() {
    let t = temp_store();
    let before = make_format_3(&t.path, 30);
    match Reader::open(&t.path) {
        Err(OpenError::NeedsMigration {
            found: 3,
            supported: 4,
            ..
        }) => {}
        other => panic!("expected NeedsMigration, got {other:?}"),
    }
    let (mut store, after) = try_open(&t.path, "a").unwrap();
    assert_eq!(after, before);
    assert_eq!(format_version(&t.path), 4);
    // The new journal works: a small commit is journaled and read back through it.
    store.commit(&full_batch(31)).unwrap();
    assert_eq!(store.journaled(), 1);
    assert_eq!(
        store.table_get("t", b"k00031").unwrap().as_deref(),
        Some(&b"value 31"[..])
    );
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(reader.meta().unwrap().commits, 31);
    assert_eq!(reader.root().unwrap().as_deref(), Some(&b"root 31"[..]));
    assert!(reader.verify().unwrap().is_empty());
    drop(store);
    let (_store, again) = try_open(&t.path, "a").unwrap();
    assert_eq!(again.commits, 31);
}

fn make_format_2(path: &Path, batches: u64) -> Recovered {
    let (mut store, _) = try_open(path, "a").unwrap();
    for i in 1..=batches {
        store.commit(&full_batch(i)).unwrap();
    }
    drop(store);
    let (store, before) = try_open(path, "a").unwrap();
    drop(store);
    downgrade(path);
    assert_eq!(format_version(path), 2);
    before
}

#[test]
fn a_format_2_store_is_migrated_at_open_with_everything_intact() {
    let t = temp_store();
    let before = make_format_2(&t.path, 30);
    // A reader does not read format 2; it says how to migrate.
    match Reader::open(&t.path) {
        Err(
            e @ OpenError::NeedsMigration {
                found: 2,
                supported: 4,
                ..
            },
        ) => {
            assert!(e.to_string().contains("migrates the store"), "{e}")
        }
        other => panic!("expected NeedsMigration, got {other:?}"),
    }
    let (store, after) = try_open(&t.path, "a").unwrap();
    assert_eq!(after, before);
    assert_eq!(
        store.table_get("t", b"k00007").unwrap().as_deref(),
        Some(&b"value 7"[..])
    );
    drop(store);
    assert_eq!(format_version(&t.path), 4);
    let r = Reader::open(&t.path).unwrap();
    assert!(r.verify().unwrap().is_empty());
    assert_eq!(r.turn_log(100).unwrap().len(), 30);
}

#[test]
fn a_damaged_format_2_record_refuses_the_migration_and_changes_nothing() {
    let t = temp_store();
    make_format_2(&t.path, 5);
    let conn = raw(&t.path);
    let mut v: Vec<u8> = conn
        .query_row(
            "SELECT value FROM kv WHERE key = CAST('k00003' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    v[3] ^= 4;
    conn.execute(
        "UPDATE kv SET value = ?1 WHERE key = CAST('k00003' AS BLOB)",
        [v],
    )
    .unwrap();
    drop(conn);
    match Store::open(&t.path, "a") {
        Err(OpenError::Corrupted(c)) => {
            assert_eq!((c.table.as_str(), c.key.as_str()), ("kv:t", "k00003"))
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert_eq!(format_version(&t.path), 2);
    // Every other record still carries the old envelope: nothing was rewritten.
    let r: Vec<u8> = raw(&t.path)
        .query_row(
            "SELECT value FROM kv WHERE key = CAST('k00004' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(r[0], codec::RECORD_VERSION_V1);
}

const CHILD_ENV: &str = "KEN_STORE_TEST_MIGRATE_CHILD";
const KILL_TEST: &str = "migration::a_migration_killed_at_random_moments_leaves_format_2_or_4";

/// The child: opens (and so migrates) the store, prints `migrated`, and waits to be killed.
fn child(path: &Path) {
    let _opened = try_open(path, "a").unwrap();
    println!("migrated");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_migration_killed_at_random_moments_leaves_format_2_or_4() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let (mut rng, _) = seeded_rng("migration::killed");
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    // Enough rows that a migration takes a while.
    let mut b = Batch {
        turns: 1,
        ..Batch::default()
    };
    for i in 0..40_000u32 {
        b.table_writes.push(TableWrite {
            table: "big".into(),
            key: i.to_be_bytes().to_vec(),
            value: Some(vec![(i % 251) as u8; 64]),
        });
    }
    store.commit(&b).unwrap();
    drop(store);
    let (store, before) = try_open(&t.path, "a").unwrap();
    drop(store);
    downgrade(&t.path);
    let pristine = tempfile::tempdir().unwrap();
    let copy = pristine.path().join("p.ken");
    std::fs::copy(&t.path, &copy).unwrap();
    let (mut seen2, mut seen3) = (0, 0);
    for round in 0..6 {
        std::fs::copy(&copy, &t.path).unwrap();
        for f in [
            ken_store::wal_path(&t.path),
            t.path.with_extension("ken-shm"),
        ] {
            let _ = std::fs::remove_file(f);
        }
        let mut cmd = child_command(KILL_TEST, (CHILD_ENV, &t.path));
        cmd.stdout(std::process::Stdio::null());
        let mut c = cmd.spawn().unwrap();
        // Startup of the child binary is a few ms; the migration some hundreds.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
        c.kill().unwrap();
        c.wait().unwrap();
        let v = format_version(&t.path);
        assert!(v == 2 || v == 4, "round {round}: format {v}");
        if v == 2 {
            seen2 += 1;
        } else {
            seen3 += 1;
        }
        let (store, after) = try_open(&t.path, "a").unwrap();
        assert_eq!(after, before, "round {round}");
        assert_eq!(
            store.table_get("big", &7u32.to_be_bytes()).unwrap(),
            Some(vec![7u8; 64])
        );
        drop(store);
        assert!(Reader::open(&t.path).unwrap().verify().unwrap().is_empty());
    }
    eprintln!("migration killed: {seen2} rounds left format 2, {seen3} format 4");
}
