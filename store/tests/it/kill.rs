//! The crash test: a child process commits batches in a loop and is SIGKILLed at a random
//! moment, again and again (sled-style: this test binary re-runs itself as the child).
//! After every kill the store must hold exactly the batches the child reported committed,
//! plus possibly the one in flight, each batch whole: all of its rows in every table, or
//! none of them.
//!
//! Batch `i` sets the root to `i`, writes table row `rows/i` and overwrites `shared/counter`
//! with `i`, appends outbox messages `2i-1` and `2i`, acknowledges messages of batch `i-3`,
//! upserts the peer's counters, sets and cancels a timer, puts and evicts a client and a
//! group, and logs turn `i`. From the root `r` alone, the exact content of every table
//! follows; the parent checks all of it.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ken_store::{
    Batch, ClientChange, ClientRow, GroupChange, GroupRow, OutboxAck, OutboxRow, PeerRow, Reader,
    Recovered, StoreOptions, TableWrite, TimerChange, TimerRow, TurnLogEntry,
};
use rand::Rng;

use crate::common::{child_command, line_reader, seeded_rng, temp_store, try_open_with};

const CHILD_ENV: &str = "KEN_STORE_TEST_KILL_CHILD";
const TEST_NAME: &str = "kill::sigkill_at_random_moments_loses_nothing_and_tears_nothing";
/// How many times the child is killed.
const KILLS: u32 = 120;
/// The child is killed after it reported up to this many commits (0 = during startup).
const MAX_COMMITS_BEFORE_KILL: u32 = 12;
/// Extra random delay before the kill, microseconds: the kill lands inside a commit.
const MAX_KILL_DELAY_US: u64 = 3000;
/// A child that was not killed stops by itself after this long (the parent died).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// Waiting for the child's reports fails the test after this long.
const REPORT_DEADLINE: Duration = Duration::from_secs(30);
const TURN_LOG_MAX: u32 = 8;
const JOURNAL_ROWS: u32 = 4;
const PEER: &str = "p";
const PEER_INCARNATION: u64 = 42;

const OPTIONS: StoreOptions = StoreOptions {
    turn_log_max: TURN_LOG_MAX,
    max_page_count: None,
    page_checksums: true,
    page_size: None,
    // A small journal: the child's commits are journal appends and, every fifth, a direct
    // commit that folds them, so kills land in both (and the parent's Reader reads stores
    // left with journal rows).
    journal_rows: JOURNAL_ROWS,
    journal_record_max_bytes: None,
};

fn acked_after(i: u64) -> u64 {
    2 * i.saturating_sub(3)
}

fn payload(seq: u64) -> Vec<u8> {
    format!("message {seq}").into_bytes()
}

fn batch(i: u64) -> Batch {
    Batch {
        now_ms: 1_000_000 + i,
        turns: 1,
        root: Some(i.to_le_bytes().to_vec()),
        table_writes: vec![
            TableWrite {
                table: "rows".into(),
                key: i.to_be_bytes().to_vec(),
                value: Some(format!("row {i}").into_bytes()),
            },
            TableWrite {
                table: "shared".into(),
                key: b"counter".to_vec(),
                value: Some(i.to_le_bytes().to_vec()),
            },
        ],
        outbox_appends: [2 * i - 1, 2 * i]
            .into_iter()
            .map(|seq| OutboxRow {
                peer: PEER.into(),
                seq,
                payload: payload(seq),
                created_ms: i,
            })
            .collect(),
        outbox_acks: vec![OutboxAck {
            peer: PEER.into(),
            up_to: acked_after(i),
        }],
        outbox_forget: vec![],
        peers: vec![PeerRow {
            peer: PEER.into(),
            incarnation: PEER_INCARNATION,
            next_seq: 2 * i + 1,
            acked: acked_after(i),
            delivered: i,
            forgotten: 0,
        }],
        timers: vec![
            TimerChange::Set {
                name: format!("t{}", i % 3),
                due_ms: i,
                payload: i.to_le_bytes().to_vec(),
            },
            TimerChange::Cancel {
                name: format!("t{}", (i + 1) % 3),
            },
        ],
        clients: vec![
            ClientChange::Put(client_row(i)),
            ClientChange::Evict {
                client: [((i + 2) % 4) as u8; 16],
            },
        ],
        groups: vec![
            GroupChange::Put(group_row(i)),
            GroupChange::Delete {
                group: [((i + 1) % 3) as u8; 16],
            },
        ],
        turn_log: vec![turn_entry(i)],
    }
}

fn client_row(i: u64) -> ClientRow {
    ClientRow {
        client: [(i % 4) as u8; 16],
        request_no: i,
        reply: format!("reply {i}").into_bytes(),
        updated_ms: i,
    }
}

fn group_row(i: u64) -> GroupRow {
    GroupRow {
        group: [(i % 3) as u8; 16],
        record: format!("group {i}").into_bytes(),
    }
}

fn turn_entry(i: u64) -> TurnLogEntry {
    TurnLogEntry {
        turn: i,
        at_ms: i,
        input_kind: "message".into(),
        input_source: PEER.into(),
        input_seq: i,
        messages_out: 2,
        outputs: 0,
        bytes_written: 16,
        note: String::new(),
    }
}

fn root_of(rec: &Recovered) -> u64 {
    match rec.root.as_deref() {
        None => 0,
        Some(bytes) => u64::from_le_bytes(bytes.try_into().expect("root is a u64")),
    }
}

/// Everything `Recovered` must hold after exactly batches `1..=r`.
fn expected_recovered(r: u64, incarnation: u64) -> Recovered {
    let latest_two = |i: u64| {
        if i >= 2 {
            vec![i - 1, i]
        } else if i == 1 {
            vec![1]
        } else {
            vec![]
        }
    };
    let mut timers: Vec<TimerRow> = latest_two(r)
        .into_iter()
        .map(|i| TimerRow {
            name: format!("t{}", i % 3),
            due_ms: i,
            payload: i.to_le_bytes().to_vec(),
        })
        .collect();
    timers.sort_by(|a, b| a.name.cmp(&b.name));
    // Recovery checks every client row but keeps no reply (read from the store on a retry).
    let mut clients: Vec<ClientRow> = latest_two(r)
        .into_iter()
        .map(|i| ClientRow {
            reply: Vec::new(),
            ..client_row(i)
        })
        .collect();
    clients.sort_by_key(|c| c.client);
    let mut groups: Vec<GroupRow> = latest_two(r).into_iter().map(group_row).collect();
    groups.sort_by_key(|g| g.group);
    Recovered {
        process_id: "killed".into(),
        incarnation,
        created: false,
        turns_committed: r,
        commits: r,
        root: (r > 0).then(|| r.to_le_bytes().to_vec()),
        peers: if r == 0 {
            vec![]
        } else {
            vec![PeerRow {
                peer: PEER.into(),
                incarnation: PEER_INCARNATION,
                next_seq: 2 * r + 1,
                acked: acked_after(r),
                delivered: r,
                forgotten: 0,
            }]
        },
        outbox: (acked_after(r) + 1..=2 * r)
            .map(|seq| OutboxRow {
                peer: PEER.into(),
                seq,
                payload: payload(seq),
                created_ms: seq.div_ceil(2),
            })
            .collect(),
        timers,
        clients,
        groups,
    }
}

/// The child: continue from the recovered state, commit forever, report each commit.
fn child(path: &Path) {
    let (mut store, rec) = try_open_with(path, "killed", &OPTIONS).expect("child opens");
    let mut i = root_of(&rec);
    assert_eq!(
        rec,
        expected_recovered(i, rec.incarnation).with_created(rec.created)
    );
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    while start.elapsed() < CHILD_LIFETIME {
        i += 1;
        store.commit(&batch(i)).expect("child commits");
        writeln!(out, "committed {i} journaled {}", store.journaled()).expect("report");
        out.flush().expect("report");
    }
}

trait WithCreated {
    fn with_created(self, created: bool) -> Self;
}

impl WithCreated for Recovered {
    fn with_created(mut self, created: bool) -> Self {
        self.created = created;
        self
    }
}

/// The parent's check of a store holding exactly batches `1..=r`, through a Reader (on the
/// store as the killed child left it) and through recovery.
fn check_store(path: &Path, r: u64, context: &str) {
    let reader = Reader::open(path).unwrap_or_else(|e| panic!("{context}: reader: {e}"));
    let meta = reader.meta().unwrap();
    assert_eq!((meta.commits, meta.turns_committed), (r, r), "{context}");
    assert_eq!(
        reader.table_get("shared", b"counter").unwrap(),
        (r > 0).then(|| r.to_le_bytes().to_vec()),
        "{context}"
    );
    for i in [r.saturating_sub(1), r, r + 1] {
        let want = (1..=r)
            .contains(&i)
            .then(|| format!("row {i}").into_bytes());
        assert_eq!(
            reader.table_get("rows", &i.to_be_bytes()).unwrap(),
            want,
            "{context}: row {i}"
        );
    }
    let rows = reader
        .tables()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "rows")
        .map_or(0, |t| t.rows);
    assert_eq!(rows, r, "{context}: one row per committed batch");
    // The newest TURN_LOG_MAX (the journal's entries are trimmed only when folded).
    let log = reader.turn_log(TURN_LOG_MAX).unwrap();
    let want_log: Vec<TurnLogEntry> = (r.saturating_sub(u64::from(TURN_LOG_MAX)) + 1..=r)
        .map(turn_entry)
        .collect();
    assert_eq!(log, want_log, "{context}: turn log");
    for c in &(r.saturating_sub(1).max(1)..=r)
        .map(client_row)
        .collect::<Vec<_>>()
    {
        assert_eq!(
            reader.client(&c.client).unwrap().as_ref(),
            Some(c),
            "{context}: client row with its reply"
        );
    }
    drop(reader);

    let (_store, rec) = try_open_with(path, "killed", &OPTIONS)
        .unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
    assert_eq!(root_of(&rec), r, "{context}");
    assert_eq!(
        rec,
        expected_recovered(r, rec.incarnation).with_created(rec.created),
        "{context}: recovered state is exactly batches 1..={r}"
    );
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_tears_nothing() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let (mut rng, seed) = seeded_rng("kill");
    let t = temp_store();
    let started = Instant::now();
    let mut durable = 0u64;
    let mut in_flight_found = 0u32;
    let (mut journal_commits, mut folds) = (0u32, 0u32);
    for kill in 1..=KILLS {
        let context = format!("seed {seed}, kill {kill}");
        let mut child = child_command(TEST_NAME, (CHILD_ENV, &t.path))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, reader_thread) = line_reader(child.stdout.take().unwrap());
        let wait_commits = rng.gen_range(0..=MAX_COMMITS_BEFORE_KILL);
        let deadline = Instant::now() + REPORT_DEADLINE;
        let mut reported = durable;
        let mut parse = |line: String| {
            if let Some(rest) = line.strip_prefix("committed ") {
                let (n, journaled) = rest
                    .split_once(" journaled ")
                    .expect("child reports `committed N journaled J`");
                let n: u64 = n.parse().expect("child reports a number");
                let journaled: u32 = journaled.parse().expect("child reports a number");
                assert!(journaled <= JOURNAL_ROWS, "{context}: {line}");
                journal_commits += u32::from(journaled > 0);
                folds += u32::from(journaled == 0);
                assert_eq!(n, reported + 1, "{context}: child reports in order");
                reported = n;
            }
        };
        let mut seen = 0;
        while seen < wait_commits {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{context}: child stopped reporting"));
            if line.starts_with("committed ") {
                seen += 1;
            }
            parse(line);
        }
        // Not waiting for a condition: this picks the random moment of the kill.
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..MAX_KILL_DELAY_US)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{context}: the child was killed, not finished"
        );
        reader_thread.join().unwrap();
        for line in lines.try_iter() {
            parse(line);
        }
        if !t.path.exists() {
            assert_eq!(reported, 0, "{context}: commits reported but no store");
            continue;
        }
        // What is durable: every reported batch, and maybe the one in flight.
        let r = match Reader::open(&t.path) {
            Ok(reader) => reader.meta().unwrap().commits,
            // Killed during creation: no complete store yet; the next open creates it.
            Err(_) if reported == 0 && durable == 0 => {
                let (_store, rec) = try_open_with(&t.path, "killed", &OPTIONS).unwrap();
                assert!(
                    rec.created,
                    "{context}: an incomplete store is created again"
                );
                continue;
            }
            Err(e) => panic!("{context}: reader: {e}"),
        };
        assert!(
            r == reported || r == reported + 1,
            "{context}: store holds batch {r}, child reported {reported}"
        );
        if r == reported + 1 {
            in_flight_found += 1;
        }
        check_store(&t.path, r, &context);
        durable = r;
    }
    eprintln!(
        "kill test: {KILLS} SIGKILLs, {durable} batches durable, {in_flight_found} kills \
         landed after a commit was durable but before it was reported; {journal_commits} \
         journal commits and {folds} folding commits reported; {:?}",
        started.elapsed()
    );
    assert!(
        journal_commits > 0 && folds > 0,
        "seed {seed}: the child's commits took both paths ({journal_commits} journal, {folds} \
         folding)"
    );
    assert!(durable > 0, "the child never committed anything");
}
