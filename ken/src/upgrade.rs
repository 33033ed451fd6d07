//! Living code: migrations of a store's data from one schema version of its application to
//! the next, and the dry run that shows what a migration would change.
//!
//! A store records its application and schema version (`ken_store::AppIdentity`, written at
//! creation). When a handler of a newer [`Handler::SCHEMA_VERSION`] opens a store of an
//! older one, recovery runs [`Handler::migrate`] once per version step (`v` to `v + 1`) over
//! a [`Migration`]: the root state, read as the old type and written as the new one, and
//! table rows. All the steps' writes and the new version commit in **one** transaction
//! ([`ken_store::Store::commit_schema`]) before the first turn: a crash anywhere before or
//! inside it leaves the store at its old version, migrated again at the next start (the
//! crash points `migrate_step` and `migrate_commit` prove it).
//!
//! [`dry_run`] runs the same steps over a read-only view of a store (live or not) and
//! reports what would change without writing anything.
//!
//! Invariants: a migration step sees the writes of the steps before it; nothing is written
//! unless every step succeeded; the migrated root must decode as the handler's `State`.

use std::collections::BTreeMap;
use std::path::Path;

use ken_store::{AppIdentity, Batch, OpenError, Reader, Recovered, Store, TableWrite};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crash::CrashPoints;
use crate::engine::tables::TableSource;
use crate::handler::Handler;

/// Rows of changed table data shown by a dry run, at most.
pub const DRY_RUN_SAMPLE_ROWS: usize = 10;

/// Why a migration (or its dry run) failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// A migration step returned an error. Nothing was written; the store is at its old
    /// version.
    #[error(
        "migration of `{app}` from schema version {from} to {to} failed: {error}; nothing was \
         written (the store is still at version {from}): fix the handler's migrate step"
    )]
    Step {
        app: String,
        from: u32,
        to: u32,
        error: String,
    },
    /// After every step, the root no longer decodes as the handler's state type.
    #[error(
        "after migrating `{app}` to schema version {to}, the root does not decode as the \
         handler's state type: {error}; nothing was written: the last migrate step must \
         write the root as the new type (Migration::set_root)"
    )]
    RootAfter { app: String, to: u32, error: String },
    /// Reading the store failed.
    #[error("{0}")]
    Open(#[from] OpenError),
    /// Reading the store failed.
    #[error("{0}")]
    Read(#[from] ken_store::ReadError),
    /// Writing the migration failed (the store is poisoned; the process must restart).
    #[error("{0}")]
    Commit(#[from] ken_store::CommitError),
    /// The store is of another application or of a newer schema (dry run only; the owner's
    /// open refuses these itself).
    #[error("{0}")]
    Refused(String),
}

/// The data of a store as one migration step sees it: the root state and the table rows,
/// with the writes of this step and the steps before it applied.
pub struct Migration<'a> {
    from_version: u32,
    root: Option<Vec<u8>>,
    root_changed: bool,
    source: &'a mut dyn TableSource,
    writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl std::fmt::Debug for Migration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("from_version", &self.from_version)
            .field("root_changed", &self.root_changed)
            .finish_non_exhaustive()
    }
}

impl Migration<'_> {
    /// The version this step migrates from (it migrates to this plus one).
    pub fn from_version(&self) -> u32 {
        self.from_version
    }

    /// The root state decoded as `T` (the old version's type), or `T::default()` if the
    /// store has none yet.
    pub fn root<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        match &self.root {
            Some(bytes) => ken_store::codec::decode(bytes)
                .map_err(|e| format!("the root does not decode as the old state type: {e}")),
            None => Ok(T::default()),
        }
    }

    /// Replaces the root state with `value` (the new version's type).
    pub fn set_root<T: Serialize>(&mut self, value: &T) {
        self.root = Some(ken_store::codec::encode(value));
        self.root_changed = true;
    }

    /// The value at `key` in `table`, decoded as `V`.
    pub fn get<V: DeserializeOwned>(
        &mut self,
        table: &str,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<V>, String> {
        let key = key.as_ref();
        let raw = match self.writes.get(table).and_then(|t| t.get(key)) {
            Some(v) => v.clone(),
            None => self
                .source
                .get(table, key)
                .map_err(|e| format!("reading table `{table}`: {e}"))?,
        };
        raw.map(|b| decode_row(table, key, &b)).transpose()
    }

    /// Every row of `table` (in key order), decoded as `V`, with the writes so far applied.
    pub fn rows<V: DeserializeOwned>(&mut self, table: &str) -> Result<Vec<(Vec<u8>, V)>, String> {
        let base = self
            .source
            .scan(table, b"", None, u32::MAX)
            .map_err(|e| format!("scanning table `{table}`: {e}"))?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        if let Some(own) = self.writes.get(table) {
            merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .map(|(k, v)| decode_row(table, &k, &v).map(|v| (k, v)))
            .collect()
    }

    /// Writes `value` at `key` in `table`.
    pub fn put<V: Serialize + ?Sized>(&mut self, table: &str, key: impl AsRef<[u8]>, value: &V) {
        self.writes
            .entry(table.to_string())
            .or_default()
            .insert(key.as_ref().to_vec(), Some(ken_store::codec::encode(value)));
    }

    /// Deletes `key` from `table` (a no-op if absent).
    pub fn delete(&mut self, table: &str, key: impl AsRef<[u8]>) {
        self.writes
            .entry(table.to_string())
            .or_default()
            .insert(key.as_ref().to_vec(), None);
    }
}

fn decode_row<V: DeserializeOwned>(table: &str, key: &[u8], bytes: &[u8]) -> Result<V, String> {
    ken_store::codec::decode(bytes).map_err(|e| {
        format!(
            "table `{table}` key {}: does not decode as the requested type: {e}",
            ken_store::codec::printable_key(key)
        )
    })
}

/// What the migration steps produced, before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: String,
    pub from: u32,
    pub to: u32,
    pub root_before: Option<Vec<u8>>,
    /// The new root, if a step set it.
    pub root_after: Option<Vec<u8>>,
    /// Table writes (`None` = delete), by table and key.
    pub writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

/// Runs the handler's steps from `from` to `H::SCHEMA_VERSION` over `root` and `source`.
/// `after_step` is called after each step (the crash point `migrate_step`).
pub fn plan<H: Handler>(
    handler: &H,
    from: u32,
    root: Option<Vec<u8>>,
    source: &mut dyn TableSource,
    after_step: &mut dyn FnMut(u32),
) -> Result<Plan, UpgradeError> {
    let to = H::SCHEMA_VERSION;
    let mut m = Migration {
        from_version: from,
        root: root.clone(),
        root_changed: false,
        source,
        writes: BTreeMap::new(),
    };
    for v in from..to {
        m.from_version = v;
        handler
            .migrate(v, &mut m)
            .map_err(|error| UpgradeError::Step {
                app: H::APP.to_string(),
                from: v,
                to: v + 1,
                error,
            })?;
        after_step(v);
    }
    if let Some(bytes) = &m.root {
        ken_store::codec::decode::<H::State>(bytes).map_err(|e| UpgradeError::RootAfter {
            app: H::APP.to_string(),
            to,
            error: e.to_string(),
        })?;
    }
    Ok(Plan {
        app: H::APP.to_string(),
        from,
        to,
        root_before: root,
        root_after: m.root_changed.then(|| m.root.clone().unwrap_or_default()),
        writes: m.writes,
    })
}

impl Plan {
    /// The batch that commits this plan (no turns).
    pub fn batch(&self, now_ms: u64) -> Batch {
        let mut batch = Batch {
            now_ms,
            root: self.root_after.clone(),
            ..Batch::default()
        };
        for (table, rows) in &self.writes {
            for (key, value) in rows {
                batch.table_writes.push(TableWrite {
                    table: table.clone(),
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        batch
    }

    /// The report of this plan against the committed rows in `source`.
    pub fn report(&self, source: &mut dyn TableSource) -> Result<DryRun, UpgradeError> {
        let mut tables = Vec::new();
        let mut sample = Vec::new();
        for (table, rows) in &self.writes {
            let mut t = TableChange {
                table: table.clone(),
                ..TableChange::default()
            };
            for (key, value) in rows {
                let before = source.get(table, key)?;
                match (&before, value) {
                    (None, Some(_)) => t.added += 1,
                    (Some(b), Some(a)) if b == a => continue,
                    (Some(_), Some(_)) => t.changed += 1,
                    (Some(_), None) => t.deleted += 1,
                    (None, None) => continue,
                }
                if sample.len() < DRY_RUN_SAMPLE_ROWS {
                    sample.push(RowChange {
                        table: table.clone(),
                        key: ken_store::codec::printable_key(key),
                        bytes_before: before.as_ref().map(Vec::len),
                        bytes_after: value.as_ref().map(Vec::len),
                    });
                }
            }
            tables.push(t);
        }
        Ok(DryRun {
            app: self.app.clone(),
            from: self.from,
            to: self.to,
            root_bytes_before: self.root_before.as_ref().map(Vec::len),
            root_bytes_after: self.root_after.as_ref().map(Vec::len),
            tables,
            sample,
        })
    }
}

/// Rows of one table a migration adds, changes and deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    pub table: String,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
}

/// One changed row, for a dry run's sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub table: String,
    /// The key, printable.
    pub key: String,
    pub bytes_before: Option<usize>,
    pub bytes_after: Option<usize>,
}

/// What a migration would change (or changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub app: String,
    pub from: u32,
    /// Equal to `from` when there is nothing to migrate.
    pub to: u32,
    /// Length of the encoded root before, `None` if the store has none.
    pub root_bytes_before: Option<usize>,
    /// Length of the encoded root after, `None` if no step changed it.
    pub root_bytes_after: Option<usize>,
    pub tables: Vec<TableChange>,
    /// Up to [`DRY_RUN_SAMPLE_ROWS`] changed rows.
    pub sample: Vec<RowChange>,
}

impl std::fmt::Display for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            return writeln!(
                f,
                "`{}` store at schema version {}: nothing to migrate",
                self.app, self.from
            );
        }
        writeln!(
            f,
            "`{}` store: migrate schema version {} -> {} (dry run, nothing written)",
            self.app, self.from, self.to
        )?;
        let bytes = |b: Option<usize>| b.map_or("none".to_string(), |b| format!("{b} bytes"));
        match self.root_bytes_after {
            Some(_) => writeln!(
                f,
                "root: {} -> {}",
                bytes(self.root_bytes_before),
                bytes(self.root_bytes_after)
            )?,
            None => writeln!(f, "root: unchanged ({})", bytes(self.root_bytes_before))?,
        }
        if self.tables.is_empty() {
            writeln!(f, "tables: unchanged")?;
        }
        for t in &self.tables {
            writeln!(
                f,
                "table {}: {} added, {} changed, {} deleted",
                t.table, t.added, t.changed, t.deleted
            )?;
        }
        for r in &self.sample {
            writeln!(
                f,
                "  {} {}: {} -> {}",
                r.table,
                r.key,
                bytes(r.bytes_before),
                bytes(r.bytes_after)
            )?;
        }
        Ok(())
    }
}

/// The identity a handler writes.
pub fn identity<H: Handler>() -> AppIdentity {
    AppIdentity {
        name: H::APP.to_string(),
        schema_version: H::SCHEMA_VERSION,
    }
}

/// Opens the store for `H` (created with `H`'s identity, refused if another application's
/// or newer) and migrates it to `H::SCHEMA_VERSION` in one transaction if it is older.
/// Returns what the migration changed, if it ran. `recovered.root` is updated.
pub fn apply<H: Handler>(
    store: &mut Store,
    recovered: &mut Recovered,
    handler: &H,
    crash: &CrashPoints,
) -> Result<Option<DryRun>, UpgradeError> {
    let stored = store.app().map_or(1, |a| a.schema_version);
    if stored >= H::SCHEMA_VERSION {
        return Ok(None);
    }
    let mut reader = Reader::open(store.path())?;
    let plan = plan(
        handler,
        stored,
        recovered.root.clone(),
        &mut reader,
        &mut |_| crash.pass("migrate_step"),
    )?;
    let report = plan.report(&mut reader)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    crash.pass("migrate_commit");
    store.commit_schema(&plan.batch(now_ms), H::SCHEMA_VERSION)?;
    if let Some(root) = plan.root_after {
        recovered.root = Some(root);
    }
    tracing::info!(
        app = H::APP,
        from = report.from,
        to = report.to,
        tables = report.tables.len(),
        "migrated the store's schema"
    );
    Ok(Some(report))
}

/// Reports what opening the store at `path` with `handler` would migrate, without writing
/// (the store may be live: this reads through a [`Reader`]).
pub fn dry_run<H: Handler>(path: &Path, handler: &H) -> Result<DryRun, UpgradeError> {
    let mut reader = Reader::open(path)?;
    let meta = reader.meta()?;
    let stored = match &meta.app {
        Some(app) if app.name != H::APP => {
            return Err(UpgradeError::Refused(format!(
                "store {} belongs to application `{}`, not `{}`",
                path.display(),
                app.name,
                H::APP
            )))
        }
        Some(app) if app.schema_version > H::SCHEMA_VERSION => {
            return Err(UpgradeError::Refused(format!(
                "store {} holds `{}` data of schema version {}, newer than this binary's {}",
                path.display(),
                app.name,
                app.schema_version,
                H::SCHEMA_VERSION
            )))
        }
        Some(app) => app.schema_version,
        None => 1,
    };
    let root = reader.root()?;
    let plan = plan(handler, stored, root, &mut reader, &mut |_| {})?;
    plan.report(&mut reader)
}
