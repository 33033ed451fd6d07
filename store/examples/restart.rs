//! Restart time on a large store: how long `Store::open` (recovery plus the quick check of
//! the files) and `Reader::open` take after a crash, whatever the table size.
//!
//! ```text
//! cargo run --release -p ken-store --example restart -- build STORE MIB
//! cargo run --release -p ken-store --example restart -- open STORE     # one process per run
//! cargo run --release -p ken-store --example restart -- fold STORE     # empty the journal
//! ```
//!
//! `build` writes MIB mebibytes of table rows (900-byte values, so that a row fits its
//! B-tree page without an overflow page; 1000 rows per commit), a
//! realistic rest of the store (peers, an outbox, timers, clients, groups) and then 300
//! small commits, then runtime-like one-turn commits until the batch journal is full
//! (`DEFAULT_JOURNAL_ROWS` rows), and exits without closing the store, so the WAL and the
//! journal hold those commits as a SIGKILL would leave them. `open` opens the store as its
//! owner, prints the time in microseconds, and exits without closing it (an open writes
//! nothing for the journal: it recovers through it, so every run finds it full). `fold`
//! folds the journal with one direct commit and exits the same way, for a comparison
//! without journal rows.

use std::path::PathBuf;
use std::time::Instant;

use ken_store::{
    Batch, ClientChange, ClientRow, GroupChange, GroupRow, OutboxRow, PeerRow, Reader, Store,
    TableWrite, TimerChange,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, path, mib] if cmd == "build" => build(PathBuf::from(path), mib.parse().unwrap()),
        [cmd, path] if cmd == "open" => open(PathBuf::from(path)),
        [cmd, path] if cmd == "fold" => fold(PathBuf::from(path)),
        _ => {
            eprintln!("usage: restart build STORE MIB | restart open STORE | restart fold STORE");
            std::process::exit(2);
        }
    }
}

fn build(path: PathBuf, mib: u64) {
    let (mut store, _) = Store::open(&path, "big").unwrap();
    let value = vec![0x5a_u8; 900];
    let rows = mib * 1024 * 1024 / value.len() as u64;
    let mut n = 0u64;
    let started = Instant::now();
    while n < rows {
        let mut b = Batch {
            now_ms: n,
            turns: 1,
            ..Batch::default()
        };
        for _ in 0..1000 {
            b.table_writes.push(TableWrite {
                table: "data".into(),
                key: n.to_be_bytes().to_vec(),
                value: Some(value.clone()),
            });
            n += 1;
        }
        store.commit(&b).unwrap();
    }
    eprintln!("{rows} rows in {:?}", started.elapsed());
    for i in 1..=300u64 {
        let peer = format!("p{}", i % 8);
        store
            .commit(&Batch {
                now_ms: 1_000_000 + i,
                turns: 1,
                root: Some(i.to_le_bytes().to_vec()),
                outbox_appends: vec![OutboxRow {
                    peer: peer.clone(),
                    seq: i / 8 + 1,
                    payload: vec![7; 100],
                    created_ms: i,
                }],
                peers: vec![PeerRow {
                    peer,
                    incarnation: 9,
                    next_seq: i / 8 + 2,
                    acked: 0,
                    delivered: i,
                    forgotten: 0,
                }],
                timers: vec![TimerChange::Set {
                    name: format!("t{}", i % 20),
                    due_ms: i,
                    payload: vec![],
                }],
                clients: vec![ClientChange::Put(ClientRow {
                    client: [(i % 200) as u8; 16],
                    request_no: i,
                    reply: vec![1; 64],
                    updated_ms: i,
                })],
                groups: vec![GroupChange::Put(GroupRow {
                    group: [(i % 50) as u8; 16],
                    record: vec![2; 80],
                })],
                ..Batch::default()
            })
            .unwrap();
    }
    // Then runtime-like one-turn commits (a root, a row, a message, an ack, a peer row, a
    // turn-log entry) until the journal is full: the next open folds all of them.
    let mut i = 0u64;
    while store.journaled() < ken_store::DEFAULT_JOURNAL_ROWS as usize {
        i += 1;
        store
            .commit(&Batch {
                now_ms: 2_000_000 + i,
                turns: 1,
                root: Some(i.to_le_bytes().to_vec()),
                table_writes: vec![TableWrite {
                    table: "small".into(),
                    key: i.to_be_bytes().to_vec(),
                    value: Some(vec![3; 16]),
                }],
                outbox_appends: vec![OutboxRow {
                    peer: "j".into(),
                    seq: i,
                    payload: vec![4; 16],
                    created_ms: i,
                }],
                outbox_acks: vec![ken_store::OutboxAck {
                    peer: "j".into(),
                    up_to: i - 1,
                }],
                peers: vec![PeerRow {
                    peer: "j".into(),
                    incarnation: 9,
                    next_seq: i + 1,
                    acked: i - 1,
                    delivered: i,
                    forgotten: 0,
                }],
                turn_log: vec![ken_store::TurnLogEntry {
                    turn: 1_000_000 + i,
                    at_ms: i,
                    input_kind: "message".into(),
                    input_source: "j".into(),
                    input_seq: i,
                    messages_out: 1,
                    outputs: 0,
                    bytes_written: 16,
                    note: String::new(),
                }],
                ..Batch::default()
            })
            .unwrap();
        assert!(
            i <= 2 * u64::from(ken_store::DEFAULT_JOURNAL_ROWS),
            "the commits journal"
        );
    }
    eprintln!(
        "{} commits, {} of them in the journal",
        store.commits(),
        store.journaled()
    );
    // No close: the WAL (and the journal) stay as a killed owner leaves them.
    std::process::exit(0);
}

/// Folds the journal (one empty commit, made direct) and exits without closing: the same
/// crash image without journal rows, to compare `open` times with.
fn fold(path: PathBuf) {
    let options = ken_store::StoreOptions {
        journal_rows: 0,
        ..ken_store::StoreOptions::default()
    };
    let (mut store, _) = Store::open_with(&path, "big", &options).unwrap();
    let folded = store.journaled();
    store.commit(&Batch::default()).unwrap();
    eprintln!("folded {folded} journal rows");
    std::process::exit(0);
}

fn open(path: PathBuf) {
    let started = Instant::now();
    let (store, recovered) = Store::open(&path, "big").unwrap();
    let opened = started.elapsed();
    let reader = Reader::open(&path).unwrap();
    let both = started.elapsed();
    println!(
        "store_open_us {} reader_open_us {} commits {} outbox {}",
        opened.as_micros(),
        (both - opened).as_micros(),
        recovered.commits,
        recovered.outbox.len()
    );
    std::mem::forget((store, reader));
    std::process::exit(0);
}
