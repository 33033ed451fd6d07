//! Restart time on a large store: how long `Store::open` (recovery plus the quick check of
//! the files) and `Reader::open` take after a crash, whatever the table size.
//!
//! ```text
//! cargo run --release -p ken-store --example restart -- build STORE MIB
//! cargo run --release -p ken-store --example restart -- open STORE     # one process per run
//! ```
//!
//! `build` writes MIB mebibytes of table rows (900-byte values, so that a row fits its
//! B-tree page without an overflow page; 1000 rows per commit), a
//! realistic rest of the store (peers, an outbox, timers, clients, groups) and then 300
//! small commits, and exits without closing the store, so the WAL holds those commits as a
//! SIGKILL would leave them. `open` opens the store as its owner, prints the time in
//! microseconds, and exits without closing it (the crash image stays as it was for the next
//! run).

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
        _ => {
            eprintln!("usage: restart build STORE MIB | restart open STORE");
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
    // No close: the WAL stays as a killed owner leaves it.
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
