//! The owner's table reads skip the store's journal (issue 17): the engine's overlay holds
//! each write until the store folds its batch into the tables, and the journal found at a
//! start is handed to the overlay. Checked against a model of the newest value of every key,
//! after every write and every commit, across folds (a full journal, a large batch) and
//! restarts from a crash image with journal rows in it. The negative control runs the same
//! steps with a source that claims to show every durable write (the rule before the
//! journal), and with one that drops the journal found at start: each reads a stale value.

use std::collections::BTreeMap;

use ken::engine::tables::{StoreTables, TableOverlay, TableSource};
use ken::engine::BatchId;
use ken::store::{Batch, Reader, Store, StoreOptions, TableWrite};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TABLE: &str = "t";
const KEYS: u8 = 12;

/// A protection switched off, for the negative controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Off {
    Nothing,
    /// The source says it shows every durable batch (the rule before the journal).
    FoldRule,
    /// The journal found at a start is not handed to the overlay.
    StartJournal,
}

/// [`StoreTables`] with one protection switched off.
struct Broken(StoreTables, Off);

impl TableSource for Broken {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ken::store::ReadError> {
        self.0.get(table, key)
    }
    fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ken::store::ReadError> {
        self.0.scan(table, prefix, after, limit)
    }
    fn unshown_at_start(&mut self) -> Vec<TableWrite> {
        let unshown = self.0.unshown_at_start();
        match self.1 {
            Off::StartJournal => Vec::new(),
            _ => unshown,
        }
    }
    fn shows_through(&mut self, durable: BatchId) -> Option<BatchId> {
        match self.1 {
            Off::FoldRule => Some(durable),
            _ => self.0.shows_through(durable),
        }
    }
}

/// The store's files as a SIGKILL leaves them (no close, so no fold), copied to a fresh
/// directory; the owner is leaked, so its lock is never released in this process.
fn crashed_copy(store: Store) -> (tempfile::TempDir, std::path::PathBuf) {
    let from = store.path().to_path_buf();
    std::mem::forget(store);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("p.ken");
    std::fs::copy(&from, &to).unwrap();
    std::fs::copy(ken::store::wal_path(&from), ken::store::wal_path(&to)).unwrap();
    (dir, to)
}

/// Every key read through the overlay, and a full scan, against the model. `Err` names the
/// first difference.
fn check(
    tables: &mut TableOverlay,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    at: &str,
) -> Result<(), String> {
    for k in 0..KEYS {
        let key = vec![k];
        let got = tables.get(TABLE, &key).map_err(|e| e.to_string())?;
        if got.as_ref() != model.get(&key) {
            return Err(format!(
                "{at}: key {k} reads {got:?}, newest is {:?}",
                model.get(&key)
            ));
        }
    }
    let scanned: BTreeMap<Vec<u8>, Vec<u8>> = tables
        .scan(TABLE, b"", None, u32::MAX)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    if &scanned != model {
        return Err(format!(
            "{at}: the scan reads {scanned:?}, newest is {model:?}"
        ));
    }
    Ok(())
}

/// Four lives of 60 batches on one store (journal of 6 rows), each life after a crash;
/// `off` names a protection switched off.
fn run(seed: u64, off: Off) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let options = StoreOptions {
        journal_rows: 6,
        ..StoreOptions::default()
    };
    let first = tempfile::tempdir().unwrap();
    let mut path = first.path().join("p.ken");
    let mut dirs = vec![first];
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut journaled_at_start = 0;
    for life in 0..4 {
        let (mut store, _) = Store::open_with(&path, "p", &options).unwrap();
        if life > 0 {
            journaled_at_start += store.journaled();
        }
        let reader = Reader::open(&path).unwrap();
        let source = StoreTables::new(&store, reader);
        let source: Box<dyn TableSource> = match off {
            Off::Nothing => Box::new(source),
            off => Box::new(Broken(source, off)),
        };
        let mut tables = TableOverlay::new(source);
        check(&mut tables, &model, &format!("life {life} start"))?;
        for id in 1..=60u64 {
            // Mostly small batches (journaled), now and then one too large to journal.
            let writes = if rng.gen_ratio(1, 10) {
                20
            } else {
                rng.gen_range(1..=3)
            };
            let mut batch = Batch {
                now_ms: 1_700_000_000_000 + id,
                turns: 1,
                ..Batch::default()
            };
            for _ in 0..writes {
                let key = vec![rng.gen_range(0..KEYS)];
                let value = (!rng.gen_ratio(1, 5)).then(|| {
                    let v: u32 = rng.gen();
                    v.to_be_bytes().to_vec()
                });
                tables.write(id, TABLE, key.clone(), value.clone());
                match &value {
                    Some(v) => model.insert(key.clone(), v.clone()),
                    None => model.remove(&key),
                };
                batch.table_writes.push(TableWrite {
                    table: TABLE.to_string(),
                    key,
                    value,
                });
            }
            check(
                &mut tables,
                &model,
                &format!("life {life} batch {id} written"),
            )?;
            store.commit(&batch).unwrap();
            tables.batch_durable(id);
            check(
                &mut tables,
                &model,
                &format!("life {life} batch {id} durable"),
            )?;
        }
        let (dir, copy) = crashed_copy(store);
        path = copy;
        dirs.push(dir);
    }
    assert!(
        journaled_at_start > 0,
        "some life started with journal rows (seed {seed})"
    );
    Ok(())
}

#[test]
fn the_owner_reads_the_newest_write_across_folds_and_restarts() {
    for seed in 0..4 {
        println!("seed {seed}");
        run(seed, Off::Nothing).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn without_the_fold_rule_or_the_start_journal_the_owner_reads_a_stale_value() {
    for off in [Off::FoldRule, Off::StartJournal] {
        for seed in 0..4 {
            let e = run(seed, off).expect_err(&format!("{off:?} off, seed {seed}: no stale read"));
            println!("{off:?} off, seed {seed}: {e}");
            assert!(e.contains("reads"), "{e}");
        }
    }
}
