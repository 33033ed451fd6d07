//! Measures the disk and the store: the raw fsync rate, and commit throughput at several
//! batch sizes. Used by `cargo bench -p ken-store` (`benches/commit.rs`) and `ken bench`.
//!
//! One bench turn is what DESIGN.md calls a small turn: two row writes (one table row of
//! [`BenchOptions::value_bytes`] and one outbox append of the same size). Each commit also
//! upserts the peer's counters and acknowledges the previous commit's messages, as the
//! runtime does, so the outbox and the table stay bounded however long the run.
//!
//! Invariant: every phase is bounded in time and in count, and the files the run creates are
//! removed when it ends (also when it fails).

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::vfs::{write_counters, WriteCounters};
use crate::{
    Batch, CommitError, OpenError, OutboxAck, OutboxRow, PeerRow, Store, StoreOptions, TableWrite,
    TurnLogEntry,
};

/// Block written before each fsync of the raw fsync measurement.
pub const FSYNC_BLOCK_BYTES: usize = 4096;

/// The raw fsync measurement writes blocks round-robin over a file of this size.
pub const FSYNC_FILE_BYTES: u64 = 1 << 20;

/// Distinct table keys the bench writes (older keys are overwritten).
pub const BENCH_KEYSPACE: u64 = 10_000;

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// How long to measure the raw fsync rate.
    pub fsync_time: Duration,
    /// How long to commit at each batch size.
    pub batch_time: Duration,
    /// Turns per commit to measure.
    pub batch_sizes: Vec<u32>,
    /// Upper bound on fsyncs and on commits per batch size, whatever the time.
    pub max_ops: u64,
    /// Size of each table value and each outbox payload.
    pub value_bytes: usize,
    /// Page size of the throughput phases' store (`None`: the store's default).
    pub page_size: Option<u32>,
    /// Page sizes the write-volume phase compares (a fresh store each).
    pub volume_page_sizes: Vec<u32>,
    /// Turns per commit of the write-volume phase.
    pub volume_batch_sizes: Vec<u32>,
    /// Commits per (page size, batch size) of the write-volume phase.
    pub volume_commits: u64,
}

impl BenchOptions {
    /// A full run: about 1.5 s of fsyncs and 2 s per batch size.
    pub fn full() -> Self {
        BenchOptions {
            fsync_time: Duration::from_millis(1500),
            batch_time: Duration::from_secs(2),
            batch_sizes: vec![1, 10, 100, 1000],
            max_ops: 1_000_000,
            value_bytes: 100,
            page_size: None,
            volume_page_sizes: vec![4096, 1024, 512],
            volume_batch_sizes: vec![1, 30],
            volume_commits: 1000,
        }
    }

    /// A smoke run for CI and tests: a fraction of a second per phase.
    pub fn quick() -> Self {
        BenchOptions {
            fsync_time: Duration::from_millis(150),
            batch_time: Duration::from_millis(150),
            max_ops: 2_000,
            volume_commits: 60,
            ..BenchOptions::full()
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions::full()
    }
}

/// The raw fsync measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncReport {
    pub fsyncs: u64,
    pub elapsed: Duration,
    pub fsync_per_sec: f64,
    pub fsync_us_p50: u64,
    pub fsync_us_p99: u64,
}

/// Commit throughput at one batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    pub turns_per_commit: u32,
    pub commits: u64,
    pub turns: u64,
    /// Row writes (two per turn).
    pub rows: u64,
    pub elapsed: Duration,
    pub commits_per_sec: f64,
    pub turns_per_sec: f64,
    pub rows_per_sec: f64,
    pub commit_us_p50: u64,
    pub commit_us_p99: u64,
}

/// What a runtime-like commit writes at one page size and batch size, counted by the
/// store's VFS shim ([`WriteCounters`]; bytes handed to the kernel, before the file
/// system's own journal and block rounding). Each turn consumes one message (its peer's
/// counters), writes a 16-byte root and one 16-byte table row, sends one 16-byte message
/// and appends a turn-log entry; each commit acknowledges the previous commit's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeReport {
    pub page_size: u32,
    /// Whether the store journaled small commits ([`StoreOptions::journal_rows`] at its
    /// default) or wrote every commit to the tables (0, format 3's behaviour).
    pub journal: bool,
    pub turns_per_commit: u32,
    pub commits: u64,
    /// WAL bytes per commit (frame headers and whole pages).
    pub wal_bytes_per_commit: f64,
    /// WAL plus database-file (checkpoint) bytes per turn.
    pub bytes_per_turn: f64,
    /// Database-file bytes per turn (checkpoints copying pages back from the WAL).
    pub checkpoint_bytes_per_turn: f64,
    pub syncs_per_commit: f64,
    pub commits_per_sec: f64,
}

/// Everything one [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub fsync: FsyncReport,
    pub batches: Vec<BatchReport>,
    pub volume: Vec<VolumeReport>,
}

impl BenchReport {
    /// The measurement at `turns_per_commit`, if it was run.
    pub fn batch(&self, turns_per_commit: u32) -> Option<&BatchReport> {
        self.batches
            .iter()
            .find(|b| b.turns_per_commit == turns_per_commit)
    }

    /// Commits per second at one turn per commit, divided by raw fsyncs per second: how close
    /// a single-turn commit gets to the disk's limit.
    pub fn commit_to_fsync_ratio(&self) -> Option<f64> {
        Some(self.batch(1)?.commits_per_sec / self.fsync.fsync_per_sec)
    }

    /// Turns per second at 100 turns per commit, divided by raw fsyncs per second: what group
    /// commit buys.
    pub fn turns_at_100_to_fsync_ratio(&self) -> Option<f64> {
        Some(self.batch(100)?.turns_per_sec / self.fsync.fsync_per_sec)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.fsync;
        writeln!(
            f,
            "raw fsync ({FSYNC_BLOCK_BYTES} B write + fdatasync): {:.0}/s  p50 {} us  p99 {} us  ({} in {:.2} s)",
            s.fsync_per_sec,
            s.fsync_us_p50,
            s.fsync_us_p99,
            s.fsyncs,
            s.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "{:>12} {:>10} {:>12} {:>12} {:>12} {:>10} {:>10}",
            "turns/commit", "commits", "commits/s", "turns/s", "rows/s", "p50 us", "p99 us"
        )?;
        for b in &self.batches {
            writeln!(
                f,
                "{:>12} {:>10} {:>12.0} {:>12.0} {:>12.0} {:>10} {:>10}",
                b.turns_per_commit,
                b.commits,
                b.commits_per_sec,
                b.turns_per_sec,
                b.rows_per_sec,
                b.commit_us_p50,
                b.commit_us_p99
            )?;
        }
        if let Some(r) = self.commit_to_fsync_ratio() {
            writeln!(f, "commits/s at 1 turn/commit vs fsync/s: {r:.2}")?;
        }
        if let Some(r) = self.turns_at_100_to_fsync_ratio() {
            writeln!(f, "turns/s at 100 turns/commit vs fsync/s: {r:.1}")?;
        }
        if !self.volume.is_empty() {
            writeln!(
                f,
                "write volume (runtime-like turns, counted by the VFS shim):\n{:>9} {:>8} {:>12} {:>8} {:>14} {:>14} {:>16} {:>12} {:>10}",
                "page B",
                "journal",
                "turns/commit",
                "commits",
                "WAL B/commit",
                "total B/turn",
                "checkpoint B/turn",
                "syncs/commit",
                "commits/s"
            )?;
            for v in &self.volume {
                writeln!(
                    f,
                    "{:>9} {:>8} {:>12} {:>8} {:>14.0} {:>14.0} {:>16.0} {:>12.2} {:>10.0}",
                    v.page_size,
                    if v.journal { "on" } else { "off" },
                    v.turns_per_commit,
                    v.commits,
                    v.wal_bytes_per_commit,
                    v.bytes_per_turn,
                    v.checkpoint_bytes_per_turn,
                    v.syncs_per_commit,
                    v.commits_per_sec
                )?;
            }
        }
        Ok(())
    }
}

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The raw fsync measurement failed; check that `dir` exists and is writable.
    #[error("bench I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bench store did not open.
    #[error("bench store: {0}")]
    Open(#[from] OpenError),
    /// A commit failed (for example the disk is full).
    #[error("bench commit: {0}")]
    Commit(#[from] CommitError),
}

/// Removes the files a run created, also on failure.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn percentile_us(sorted: &[u64], pct: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * pct / 100]
}

fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Runs the whole bench in `dir` (which must exist, on the disk to measure).
pub fn run(dir: &Path, opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let tag = format!("ken-bench-{}", std::process::id());
    let fsync_path = dir.join(format!("{tag}.fsync"));
    let store_path = dir.join(format!("{tag}.ken"));
    let mut files = vec![fsync_path.clone(), crate::lock_path(&store_path)];
    for suffix in ["", "-wal", "-shm"] {
        let mut p = store_path.clone().into_os_string();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    let _cleanup = Cleanup(files);
    let fsync = measure_fsync(&fsync_path, opts)?;
    let options = StoreOptions {
        turn_log_max: 1,
        max_page_count: None,
        page_checksums: true,
        page_size: opts.page_size,
        ..StoreOptions::default()
    };
    let (mut store, _) = Store::open_with(&store_path, "bench", &options)?;
    let mut batches = Vec::with_capacity(opts.batch_sizes.len());
    let mut next_seq = 1u64;
    let mut turn = 0u64;
    for &size in &opts.batch_sizes {
        batches.push(measure_batches(
            &mut store,
            opts,
            size,
            &mut next_seq,
            &mut turn,
        )?);
    }
    drop(store);
    let mut volume = Vec::new();
    for &page_size in &opts.volume_page_sizes {
        for &size in &opts.volume_batch_sizes {
            for journal in [false, true] {
                volume.push(measure_volume(dir, &tag, opts, page_size, size, journal)?);
            }
        }
    }
    Ok(BenchReport {
        fsync,
        batches,
        volume,
    })
}

/// One write-volume measurement on a fresh store of `page_size` (see [`VolumeReport`]).
fn measure_volume(
    dir: &Path,
    tag: &str,
    opts: &BenchOptions,
    page_size: u32,
    turns_per_commit: u32,
    journal: bool,
) -> Result<VolumeReport, BenchError> {
    let path = dir.join(format!(
        "{tag}-volume-{page_size}-{turns_per_commit}-{journal}.ken"
    ));
    let mut files = vec![crate::lock_path(&path)];
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    let _cleanup = Cleanup(files);
    let options = StoreOptions {
        page_size: Some(page_size),
        journal_rows: if journal {
            crate::DEFAULT_JOURNAL_ROWS
        } else {
            0
        },
        ..StoreOptions::default()
    };
    let (mut store, _) = Store::open_with(&path, "bench", &options)?;
    const PEER: &str = "bench-peer";
    let small = vec![0x5au8; 16];
    let (mut next_seq, mut delivered, mut turn) = (1u64, 0u64, 0u64);
    let mut commit = |store: &mut Store| -> Result<(), BenchError> {
        let acked = next_seq - 1;
        let mut batch = Batch {
            now_ms: 1,
            turns: u64::from(turns_per_commit),
            root: Some(small.clone()),
            outbox_acks: vec![OutboxAck {
                peer: PEER.to_string(),
                up_to: acked,
            }],
            ..Batch::default()
        };
        for _ in 0..turns_per_commit {
            turn += 1;
            delivered += 1;
            batch.table_writes.push(TableWrite {
                table: "bench".to_string(),
                key: (turn % BENCH_KEYSPACE).to_be_bytes().to_vec(),
                value: Some(small.clone()),
            });
            batch.outbox_appends.push(OutboxRow {
                peer: PEER.to_string(),
                seq: next_seq,
                payload: small.clone(),
                created_ms: 1,
            });
            next_seq += 1;
            batch.turn_log.push(TurnLogEntry {
                turn,
                at_ms: 1,
                input_kind: "message".to_string(),
                input_source: PEER.to_string(),
                input_seq: delivered,
                messages_out: 1,
                outputs: 0,
                bytes_written: 32,
                note: String::new(),
            });
        }
        batch.peers.push(PeerRow {
            peer: PEER.to_string(),
            incarnation: 1,
            next_seq,
            acked,
            delivered,
            forgotten: 0,
        });
        store.commit(&batch)?;
        Ok(())
    };
    // Warm up: the tables' first pages, the WAL's first frames.
    for _ in 0..20 {
        commit(&mut store)?;
    }
    let before = write_counters();
    let start = Instant::now();
    for _ in 0..opts.volume_commits {
        commit(&mut store)?;
    }
    let elapsed = start.elapsed();
    let d: WriteCounters = write_counters().since(&before);
    let commits = opts.volume_commits.max(1);
    let turns = (commits * u64::from(turns_per_commit)) as f64;
    Ok(VolumeReport {
        page_size,
        journal,
        turns_per_commit,
        commits,
        wal_bytes_per_commit: d.wal_bytes as f64 / commits as f64,
        bytes_per_turn: (d.wal_bytes + d.db_bytes) as f64 / turns,
        checkpoint_bytes_per_turn: d.db_bytes as f64 / turns,
        syncs_per_commit: d.syncs as f64 / commits as f64,
        commits_per_sec: commits as f64 / elapsed.as_secs_f64(),
    })
}

fn measure_fsync(path: &Path, opts: &BenchOptions) -> Result<FsyncReport, BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    // Allocate the whole file first so the timed loop measures data syncs, not growth.
    let block = vec![0x5au8; FSYNC_BLOCK_BYTES];
    for _ in 0..FSYNC_FILE_BYTES / FSYNC_BLOCK_BYTES as u64 {
        file.write_all(&block).map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    let mut samples_us = Vec::new();
    let start = Instant::now();
    let mut offset = 0u64;
    while start.elapsed() < opts.fsync_time && (samples_us.len() as u64) < opts.max_ops {
        let t = Instant::now();
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.write_all(&block).map_err(io)?;
        file.sync_data().map_err(io)?;
        samples_us.push(elapsed_us(t));
        offset = (offset + FSYNC_BLOCK_BYTES as u64) % FSYNC_FILE_BYTES;
    }
    let elapsed = start.elapsed();
    samples_us.sort_unstable();
    Ok(FsyncReport {
        fsyncs: samples_us.len() as u64,
        elapsed,
        fsync_per_sec: samples_us.len() as f64 / elapsed.as_secs_f64(),
        fsync_us_p50: percentile_us(&samples_us, 50),
        fsync_us_p99: percentile_us(&samples_us, 99),
    })
}

fn measure_batches(
    store: &mut Store,
    opts: &BenchOptions,
    turns_per_commit: u32,
    next_seq: &mut u64,
    turn: &mut u64,
) -> Result<BatchReport, BenchError> {
    assert!(turns_per_commit > 0, "a bench batch has at least one turn");
    const PEER: &str = "bench-peer";
    let value = vec![0xa5u8; opts.value_bytes];
    let mut samples_us = Vec::new();
    let start = Instant::now();
    while start.elapsed() < opts.batch_time && (samples_us.len() as u64) < opts.max_ops {
        let acked = *next_seq - 1;
        let mut batch = Batch {
            now_ms: 0,
            turns: u64::from(turns_per_commit),
            outbox_acks: vec![OutboxAck {
                peer: PEER.to_string(),
                up_to: acked,
            }],
            ..Batch::default()
        };
        for _ in 0..turns_per_commit {
            *turn += 1;
            batch.table_writes.push(TableWrite {
                table: "bench".to_string(),
                key: (*turn % BENCH_KEYSPACE).to_be_bytes().to_vec(),
                value: Some(value.clone()),
            });
            batch.outbox_appends.push(OutboxRow {
                peer: PEER.to_string(),
                seq: *next_seq,
                payload: value.clone(),
                created_ms: 0,
            });
            *next_seq += 1;
        }
        batch.peers.push(PeerRow {
            peer: PEER.to_string(),
            incarnation: 1,
            next_seq: *next_seq,
            acked,
            delivered: 0,
            forgotten: 0,
        });
        let t = Instant::now();
        store.commit(&batch)?;
        samples_us.push(elapsed_us(t));
    }
    let elapsed = start.elapsed();
    samples_us.sort_unstable();
    let commits = samples_us.len() as u64;
    let turns = commits * u64::from(turns_per_commit);
    let secs = elapsed.as_secs_f64();
    Ok(BatchReport {
        turns_per_commit,
        commits,
        turns,
        rows: 2 * turns,
        elapsed,
        commits_per_sec: commits as f64 / secs,
        turns_per_sec: turns as f64 / secs,
        rows_per_sec: (2 * turns) as f64 / secs,
        commit_us_p50: percentile_us(&samples_us, 50),
        commit_us_p99: percentile_us(&samples_us, 99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_run_measures_every_batch_size_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            fsync_time: Duration::from_millis(20),
            batch_time: Duration::from_millis(20),
            max_ops: 50,
            ..BenchOptions::quick()
        };
        let report = run(dir.path(), &opts).unwrap();
        assert!(report.fsync.fsyncs > 0 && report.fsync.fsync_per_sec > 0.0);
        let sizes: Vec<u32> = report.batches.iter().map(|b| b.turns_per_commit).collect();
        assert_eq!(sizes, vec![1, 10, 100, 1000]);
        for b in &report.batches {
            assert!(b.commits > 0, "{b:?}");
            assert_eq!(b.rows, 2 * b.turns);
            assert_eq!(b.turns, b.commits * u64::from(b.turns_per_commit));
            assert!(b.commit_us_p50 <= b.commit_us_p99);
        }
        assert!(report.commit_to_fsync_ratio().is_some());
        // The write-volume phase: every (page size, batch size), and smaller pages write
        // less per single-turn commit, about one page per table touched.
        assert_eq!(report.volume.len(), 12);
        let wal_of = |page: u32, turns: u32, journal: bool| {
            report
                .volume
                .iter()
                .find(|v| {
                    v.page_size == page && v.turns_per_commit == turns && v.journal == journal
                })
                .map(|v| v.wal_bytes_per_commit)
                .unwrap()
        };
        let wal = |page: u32, turns: u32| wal_of(page, turns, false);
        // The journal: a one-turn commit at the default page size writes at most 4.5 KiB
        // (folds included), well under half of what it writes without; a 30-turn commit is
        // too large to journal and writes the same.
        assert!(
            wal_of(1024, 1, true) <= 4608.0 && wal_of(1024, 1, true) < wal(1024, 1) / 2.0,
            "{report}"
        );
        assert!(
            (wal_of(1024, 30, true) - wal(1024, 30)).abs() < 0.1 * wal(1024, 30),
            "{report}"
        );
        assert!(
            wal(512, 1) < wal(1024, 1) && wal(1024, 1) < wal(4096, 1),
            "{report}"
        );
        assert!(
            wal(4096, 1) >= 4096.0 && wal(4096, 1) < 10.0 * 4120.0,
            "{report}"
        );
        for v in &report.volume {
            assert!(v.syncs_per_commit >= 1.0, "{v:?}");
        }
        assert!(report.to_string().contains("turns/s at 100 turns/commit"));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "bench left files behind: {left:?}");
    }
}
