//! `cargo run -p ken-store --example inspect -- <store> [--verify]`: prints what a
//! [`ken_store::Reader`] sees in a store, safe while its owner runs. A small stand-in for
//! `ken inspect`.

use std::path::PathBuf;

use ken_store::{codec, Reader};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: inspect <store> [--verify]");
        std::process::exit(2);
    };
    let verify = args.any(|a| a == "--verify");
    if let Err(e) = run(&path, verify) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn run(path: &std::path::Path, verify: bool) -> Result<(), Box<dyn std::error::Error>> {
    let reader = Reader::open(path)?;
    let meta = reader.meta()?;
    println!(
        "process {} incarnation {:#018x} format {} commits {} turns {} last commit {} ms",
        meta.process_id,
        meta.incarnation,
        meta.format_version,
        meta.commits,
        meta.turns_committed,
        meta.last_commit_ms
    );
    let sizes = reader.file_sizes()?;
    println!("files: db {} B, wal {} B", sizes.db_bytes, sizes.wal_bytes);
    for t in reader.tables()? {
        println!("table {}: {} rows, {} B", t.name, t.rows, t.bytes);
    }
    for p in reader.peers()? {
        println!(
            "peer {}: incarnation {:#x} next_seq {} acked {} delivered {}",
            p.peer, p.incarnation, p.next_seq, p.acked, p.delivered
        );
    }
    for o in reader.outbox_stats()? {
        println!(
            "outbox {}: {} messages, seq {}..={}, oldest {} ms, {} B",
            o.peer, o.depth, o.min_seq, o.max_seq, o.oldest_created_ms, o.bytes
        );
    }
    for t in reader.timers()? {
        println!("timer {} due {} ms", t.name, t.due_ms);
    }
    println!(
        "clients: {}, groups: {}",
        reader.clients()?.len(),
        reader.groups()?.len()
    );
    for e in reader.turn_log(5)? {
        println!(
            "turn {} at {} ms: {} from `{}` seq {}, {} messages out",
            e.turn, e.at_ms, e.input_kind, e.input_source, e.input_seq, e.messages_out
        );
    }
    if verify {
        let problems = reader.verify()?;
        for p in &problems {
            println!(
                "PROBLEM {} {}: {}",
                p.table,
                codec::printable_key(p.key.as_bytes()),
                p.what
            );
        }
        println!("verify: {} problems", problems.len());
    }
    Ok(())
}
