//! Table reads during turns: the writes of uncommitted batches layered over the store.
//!
//! Invariant: an overlay entry is dropped only when the batch that wrote it (and not a later
//! one) is durable, so a read never falls through to the store while a newer uncommitted
//! value exists, and never misses a committed one (the store has it once the batch is
//! durable).

use std::collections::HashMap;

use super::BatchId;

/// Where committed table rows are read from: the store's read-only handle in production,
/// any map in tests.
pub trait TableSource: Send {
    /// The committed value (a codec body, unsealed) of `key` in `table`, if any. An error
    /// (I/O, a corrupt record) stops the process.
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

impl TableSource for ken_store::Reader {
    fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.table_get(table, key).map_err(|e| e.to_string())
    }
}

/// A table source with no rows (a fresh process in a test).
#[derive(Debug, Default)]
pub struct EmptyTables;

impl TableSource for EmptyTables {
    fn get(&mut self, _table: &str, _key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
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
    pub fn new(source: Box<dyn TableSource>) -> TableOverlay {
        TableOverlay {
            layers: HashMap::new(),
            source,
        }
    }

    /// The newest value of `key`: uncommitted writes first, then the store.
    pub fn get(&mut self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if let Some((_, v)) = self.layers.get(table).and_then(|l| l.get(key)) {
            return Ok(v.clone());
        }
        self.source.get(table, key)
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

    /// `batch` is durable: its writes are in the store now, unless a later batch overwrote
    /// them (those stay).
    pub fn batch_durable(&mut self, batch: BatchId) {
        for layer in self.layers.values_mut() {
            layer.retain(|_, (b, _)| *b > batch);
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
