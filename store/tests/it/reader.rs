//! A reader next to a committing owner never blocks it and sees consistent snapshots; a
//! reader also works on a store whose owner is gone, and an owner can start under a reader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ken_store::{Batch, OutboxAck, OutboxRow, PeerRow, Reader};

use crate::common::{temp_store, try_open};

/// Messages kept unacknowledged behind the newest.
const WINDOW: u64 = 5;
/// The writer stops after the reader saw this many distinct commit counts.
const DISTINCT_SNAPSHOTS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn batch(i: u64) -> Batch {
    let acked = i.saturating_sub(WINDOW);
    Batch {
        now_ms: i,
        turns: 1,
        root: Some(i.to_le_bytes().to_vec()),
        outbox_appends: vec![OutboxRow {
            peer: "b".into(),
            seq: i,
            payload: i.to_le_bytes().to_vec(),
            created_ms: i,
        }],
        outbox_acks: vec![OutboxAck {
            peer: "b".into(),
            up_to: acked,
        }],
        peers: vec![PeerRow {
            peer: "b".into(),
            incarnation: 1,
            next_seq: i + 1,
            acked,
            delivered: 0,
            forgotten: 0,
        }],
        ..Batch::default()
    }
}

#[test]
fn reader_sees_snapshots_while_the_owner_commits_unblocked() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    store.commit(&batch(1)).unwrap();
    let reader = Reader::open(&t.path).unwrap();
    let enough = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(1));
    let writer = {
        let (enough, committed) = (enough.clone(), committed.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 1;
            let mut slowest = Duration::ZERO;
            while !enough.load(Ordering::SeqCst) {
                assert!(
                    start.elapsed() < DEADLINE,
                    "reader never saw enough snapshots"
                );
                i += 1;
                let t = Instant::now();
                let info = store.commit(&batch(i)).expect("the owner is never refused");
                slowest = slowest.max(t.elapsed());
                assert_eq!(info.commits, i);
                committed.store(i, Ordering::SeqCst);
            }
            (i, slowest)
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut last_commits = 0;
    while !writer.is_finished() {
        let meta = reader.meta().unwrap();
        // Each call is one snapshot: the counters in it agree with each other.
        assert_eq!(meta.commits, meta.turns_committed);
        assert_eq!(meta.last_commit_ms, meta.commits);
        assert!(meta.commits >= last_commits, "snapshots go forward");
        assert!(meta.commits <= committed.load(Ordering::SeqCst) + 1);
        last_commits = meta.commits;
        seen.insert(meta.commits);

        let outbox = reader.outbox(Some("b"), 100).unwrap();
        let seqs: Vec<u64> = outbox.iter().map(|m| m.seq).collect();
        let newest = *seqs.last().expect("never empty after batch 1");
        let expected: Vec<u64> = (newest.saturating_sub(WINDOW) + 1..=newest).collect();
        assert_eq!(
            seqs, expected,
            "a snapshot holds exactly one batch's window"
        );
        for m in &outbox {
            assert_eq!(m.payload, m.seq.to_le_bytes());
        }
        let peers = reader.peers().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers[0].acked,
            peers[0].next_seq - 1 - (peers[0].next_seq - 1).min(WINDOW)
        );
        if seen.len() >= DISTINCT_SNAPSHOTS {
            enough.store(true, Ordering::SeqCst);
        }
    }
    let (last, slowest) = writer.join().unwrap();
    assert!(
        seen.len() >= DISTINCT_SNAPSHOTS,
        "saw {} snapshots",
        seen.len()
    );
    eprintln!(
        "reader: {} distinct snapshots over {last} commits; slowest commit {slowest:?}",
        seen.len()
    );
    assert_eq!(reader.meta().unwrap().commits, last);
    assert_eq!(reader.verify().unwrap(), vec![]);
}

#[test]
fn reader_works_on_a_closed_store_and_an_owner_can_start_under_it() {
    let t = temp_store();
    {
        let (mut store, _) = try_open(&t.path, "a").unwrap();
        store.commit(&batch(1)).unwrap();
    }
    // A clean close removed the WAL and shared-memory files.
    let wal = t.dir.path().join("p.ken-wal");
    let shm = t.dir.path().join("p.ken-shm");
    assert!(!wal.exists() && !shm.exists());
    let reader = Reader::open(&t.path).unwrap();
    assert_eq!(reader.meta().unwrap().commits, 1);
    assert_eq!(reader.root().unwrap(), Some(1u64.to_le_bytes().to_vec()));

    // An owner starts while the reader is open, commits, and the reader sees it.
    let (mut store, rec) = try_open(&t.path, "a").unwrap();
    assert_eq!(rec.commits, 1);
    store.commit(&batch(2)).unwrap();
    assert_eq!(reader.meta().unwrap().commits, 2);
    drop(store);
    assert_eq!(reader.meta().unwrap().commits, 2);
    assert_eq!(reader.outbox(None, 10).unwrap().len(), 2);
    drop(reader);
    // And the store still opens after the reader went away.
    let (_store, rec) = try_open(&t.path, "a").unwrap();
    assert_eq!(rec.commits, 2);
}

const READ_ONLY_CHILD_ENV: &str = "KEN_STORE_TEST_READ_ONLY_DIR_CHILD";
/// An unprivileged uid and gid (`nobody`) for the child when the tests run as root.
const UNPRIVILEGED_ID: u32 = 65534;

/// Reads the closed store at `path` and checks what it sees.
fn read_closed_store(path: &std::path::Path) {
    let reader = Reader::open(path).expect("reader opens a closed store in a read-only dir");
    assert_eq!(reader.meta().unwrap().commits, 1);
    assert_eq!(reader.root().unwrap(), Some(1u64.to_le_bytes().to_vec()));
    assert_eq!(reader.outbox(None, 10).unwrap().len(), 1);
    assert_eq!(reader.verify().unwrap(), vec![]);
}

/// A closed store has no `-wal`/`-shm`; in a directory the reader can not write, SQLite
/// can not create them, and the reader falls back to reading the complete file as
/// immutable. Root ignores directory permissions, so as root the check runs in a child
/// re-run as an unprivileged user.
#[test]
fn reader_reads_a_closed_store_in_a_read_only_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    if let Some(path) = std::env::var_os(READ_ONLY_CHILD_ENV) {
        read_closed_store(std::path::Path::new(&path));
        return;
    }
    let t = temp_store();
    {
        let (mut store, _) = try_open(&t.path, "a").unwrap();
        store.commit(&batch(1)).unwrap();
    }
    let wal = t.dir.path().join("p.ken-wal");
    let shm = t.dir.path().join("p.ken-shm");
    assert!(!wal.exists() && !shm.exists());
    let set_mode = |mode| {
        std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(0o555);
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        let out = crate::common::child_command(
            "reader::reader_reads_a_closed_store_in_a_read_only_directory",
            (READ_ONLY_CHILD_ENV, &t.path),
        )
        .uid(UNPRIVILEGED_ID)
        .gid(UNPRIVILEGED_ID)
        .output()
        .expect("re-run this test binary as an unprivileged user");
        assert!(
            out.status.success(),
            "the unprivileged reader failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        read_closed_store(&t.path);
    }
    set_mode(0o755);
    assert!(!wal.exists() && !shm.exists(), "the reader wrote nothing");
    // The owner opens it afterwards as usual.
    assert_eq!(try_open(&t.path, "a").unwrap().1.commits, 1);
}
