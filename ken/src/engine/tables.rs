//! Table reads during turns: the writes the source does not show yet (uncommitted batches;
//! for the store, also committed ones still in its journal) layered over the source.
//!
//! Invariant: an overlay entry is dropped only when the source shows the batch that wrote
//! it (and not a later one) in every read from then on ([`TableSource::shows_through`]: the
//! batch is durable, and for [`StoreTables`] folded into the tables), so a read never falls
//! through to the source while a newer value exists that it does not show, and never misses
//! a committed one.

use std::collections::HashMap;

use ken_store::ReadError;

use super::BatchId;

/// Table rows: (key, value) pairs in key order, values unsealed codec bodies.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Where committed table rows are read from: the store's read-only handle in production,
/// any map in tests.
pub trait TableSource: Send {
    /// The committed value (a codec body, unsealed) of `key` in `table`, if any. An error
    /// (I/O, a corrupt record) stops the process.
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError>;

    /// Up to `limit` committed rows of `table` whose key starts with `prefix` and is greater
    /// than `after` (if given), in key order.
    fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, ReadError>;

    /// The committed reply cache row of `client`: its last request number and encoded
    /// reply (replies are read from the store when a retry needs them, not kept in memory).
    /// A source without a store has none.
    fn client(&mut self, _client: &[u8; 16]) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        Ok(None)
    }

    /// Durable writes that `get` and `scan` do not show yet, oldest first, taken once when
    /// the engine starts: the overlay holds them (as if written before this life's first
    /// batch) until [`TableSource::shows_through`] says the source shows them.
    fn unshown_at_start(&mut self) -> Vec<ken_store::TableWrite> {
        Vec::new()
    }

    /// Batch `durable` of this life is durable: the newest batch whose writes `get` and
    /// `scan` now show (at most `durable`; 0 when none of this life's but every write of
    /// [`TableSource::unshown_at_start`]), or `None` when not even those. The overlay keeps
    /// every write of a newer batch. A source that shows every durable write (the default)
    /// answers `Some(durable)`.
    fn shows_through(&mut self, durable: BatchId) -> Option<BatchId> {
        Some(durable)
    }
}

/// The owner process's source: the store's tables as folded, read without the journal
/// ([`ken_store::Reader::table_get_folded`]), so a read after a commit touches no journal
/// page. The engine saw every batch it committed, so its overlay holds each write until the
/// store folds the batch into the tables ([`ken_store::FoldWatch`]); the journal found at
/// start is handed to the overlay once ([`TableSource::unshown_at_start`]). Reply-cache
/// rows (read only for a retry) come through the full reader, journal included.
pub struct StoreTables {
    reader: ken_store::Reader,
    folded: ken_store::FoldWatch,
    /// The store's commits when this life began: batch `id` is commit `commits_at_start + id`.
    commits_at_start: u64,
    unshown: Vec<ken_store::TableWrite>,
}

impl std::fmt::Debug for StoreTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTables")
            .field("path", &self.reader.path())
            .field("commits_at_start", &self.commits_at_start)
            .field("folded", &self.folded.commits())
            .finish()
    }
}

impl StoreTables {
    /// The source for an engine that starts now on `store` (before its first commit of this
    /// life), reading through `reader`, opened on the same store.
    pub fn new(store: &ken_store::Store, reader: ken_store::Reader) -> StoreTables {
        StoreTables {
            reader,
            folded: store.fold_watch(),
            commits_at_start: store.commits(),
            unshown: store.journaled_table_writes(),
        }
    }
}

impl TableSource for StoreTables {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.reader.table_get_folded(table, key)
    }

    fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, ReadError> {
        let reader = &self.reader;
        scan_pages(limit, after, |after, want| {
            reader.table_scan_folded(table, prefix, after, want)
        })
    }

    fn client(&mut self, client: &[u8; 16]) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        Ok(self
            .reader
            .client(client)?
            .map(|row| (row.request_no, row.reply)))
    }

    fn unshown_at_start(&mut self) -> Vec<ken_store::TableWrite> {
        std::mem::take(&mut self.unshown)
    }

    fn shows_through(&mut self, durable: BatchId) -> Option<BatchId> {
        // The tables hold every commit up to `folded`: none of this life's batches while it
        // is below `commits_at_start`, and not the journal found at start either (that is
        // the only way it can be below).
        let folded = self.folded.commits();
        let through = folded.checked_sub(self.commits_at_start)?;
        Some(through.min(durable))
    }
}

/// Pages of at most [`ken_store::MAX_SCAN_ROWS`] rows from `page(after, want)` until `limit`
/// rows or the end.
fn scan_pages(
    limit: u32,
    after: Option<&[u8]>,
    mut page: impl FnMut(Option<&[u8]>, u32) -> Result<Rows, ReadError>,
) -> Result<Rows, ReadError> {
    let mut rows = Vec::new();
    let mut after: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
    while (rows.len() as u32) < limit {
        let want = (limit - rows.len() as u32).min(ken_store::MAX_SCAN_ROWS);
        let got = page(after.as_deref(), want)?;
        let done = (got.len() as u32) < want;
        after = got.last().map(|(k, _)| k.clone());
        rows.extend(got);
        if done {
            break;
        }
    }
    Ok(rows)
}

impl TableSource for ken_store::Reader {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.table_get(table, key)
    }

    fn client(&mut self, client: &[u8; 16]) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        Ok(ken_store::Reader::client(self, client)?.map(|row| (row.request_no, row.reply)))
    }

    fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, ReadError> {
        scan_pages(limit, after, |after, want| {
            self.table_scan(table, prefix, after, want)
        })
    }
}

/// A table source with no rows (a fresh process in a test).
#[derive(Debug, Default)]
pub struct EmptyTables;

impl TableSource for EmptyTables {
    fn get(&mut self, _table: &str, _key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(None)
    }

    fn scan(
        &mut self,
        _table: &str,
        _prefix: &[u8],
        _after: Option<&[u8]>,
        _limit: u32,
    ) -> Result<Rows, ReadError> {
        Ok(Vec::new())
    }
}

/// An in-memory table source for hosts without a store (tests of the bare engine): the host
/// applies each batch it "commits" with [`MemoryTables::apply`]; clones share the rows.
#[derive(Debug, Clone, Default)]
pub struct MemoryTables(std::sync::Arc<std::sync::Mutex<MemoryRows>>);

#[derive(Debug, Default)]
struct MemoryRows {
    tables: std::collections::BTreeMap<(String, Vec<u8>), Vec<u8>>,
    clients: std::collections::BTreeMap<[u8; 16], (u64, Vec<u8>)>,
}

impl MemoryTables {
    /// Applies a committed batch's table writes and reply cache changes.
    pub fn apply(&self, batch: &ken_store::Batch) {
        let mut rows = self.0.lock().expect("not poisoned");
        for w in &batch.table_writes {
            let key = (w.table.clone(), w.key.clone());
            match &w.value {
                Some(v) => rows.tables.insert(key, v.clone()),
                None => rows.tables.remove(&key),
            };
        }
        for c in &batch.clients {
            match c {
                ken_store::ClientChange::Put(row) => {
                    rows.clients
                        .insert(row.client, (row.request_no, row.reply.clone()));
                }
                ken_store::ClientChange::Evict { client } => {
                    rows.clients.remove(client);
                }
            }
        }
    }
}

impl TableSource for MemoryTables {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let rows = self.0.lock().expect("not poisoned");
        Ok(rows.tables.get(&(table.to_string(), key.to_vec())).cloned())
    }

    fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, ReadError> {
        let rows = self.0.lock().expect("not poisoned");
        Ok(rows
            .tables
            .range((table.to_string(), prefix.to_vec())..)
            .take_while(|((t, k), _)| t == table && k.starts_with(prefix))
            .filter(|((_, k), _)| after.is_none_or(|a| k.as_slice() > a))
            .take(limit as usize)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn client(&mut self, client: &[u8; 16]) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        Ok(self
            .0
            .lock()
            .expect("not poisoned")
            .clients
            .get(client)
            .cloned())
    }
}

type Layer = HashMap<Vec<u8>, (BatchId, Option<Vec<u8>>)>;

/// Uncommitted table writes over a [`TableSource`].
pub struct TableOverlay {
    layers: HashMap<String, Layer>,
    source: Box<dyn TableSource>,
}

impl std::fmt::Debug for TableOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableOverlay")
            .field("tables", &self.layers.len())
            .field("keys", &self.len())
            .finish()
    }
}

impl TableOverlay {
    /// The overlay over `source`, holding what the source does not show yet
    /// ([`TableSource::unshown_at_start`]) as batch 0's writes.
    pub fn new(mut source: Box<dyn TableSource>) -> TableOverlay {
        let unshown = source.unshown_at_start();
        let mut overlay = TableOverlay {
            layers: HashMap::new(),
            source,
        };
        for w in unshown {
            overlay.write(0, &w.table, w.key, w.value);
        }
        overlay
    }

    /// The committed reply cache row of `client` (see [`TableSource::client`]).
    pub fn client(&mut self, client: &[u8; 16]) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        self.source.client(client)
    }

    /// The newest value of `key`: uncommitted writes first, then the store.
    pub fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        if let Some((_, v)) = self.layers.get(table).and_then(|l| l.get(key)) {
            return Ok(v.clone());
        }
        self.source.get(table, key)
    }

    /// Up to `limit` rows of `table` with keys starting with `prefix` and greater than
    /// `after` (if given), newest values, in key order: the store's rows merged with
    /// uncommitted writes (deletes hide rows).
    pub fn scan(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Rows, ReadError> {
        let layer: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .layers
            .get(table)
            .map(|l| {
                l.iter()
                    .filter(|(k, _)| {
                        k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a)
                    })
                    .map(|(k, (_, v))| (k, v))
                    .collect()
            })
            .unwrap_or_default();
        // Deletes can hide at most this many of the store's rows: fetch that many more.
        let hidden = layer.iter().filter(|(_, v)| v.is_none()).count() as u32;
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .source
            .scan(table, prefix, after, limit.saturating_add(hidden))?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in layer {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit as usize)
            .collect())
    }

    /// Records a write made by a turn of `batch`.
    pub fn write(&mut self, batch: BatchId, table: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        match self.layers.get_mut(table) {
            Some(layer) => {
                layer.insert(key, (batch, value));
            }
            None => {
                let mut layer = Layer::new();
                layer.insert(key, (batch, value));
                self.layers.insert(table.to_string(), layer);
            }
        }
    }

    /// `batch` is durable. The writes of every batch the source now shows
    /// ([`TableSource::shows_through`]) are dropped, unless a later batch overwrote them
    /// (those stay); a source that shows every durable write drops up to `batch`.
    pub fn batch_durable(&mut self, batch: BatchId) {
        let Some(shown) = self.source.shows_through(batch) else {
            return;
        };
        debug_assert!(shown <= batch, "a source shows no batch not yet durable");
        for layer in self.layers.values_mut() {
            layer.retain(|_, (b, _)| *b > shown);
        }
        self.layers.retain(|_, l| !l.is_empty());
    }

    /// Uncommitted keys held.
    pub fn len(&self) -> usize {
        self.layers.values().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
