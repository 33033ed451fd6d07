//! Ken's local checkpoint store: one SQLite file per process.
//!
//! The store is the recovery line of a Ken process. The runtime hands it one [`Batch`] per
//! group commit (many turns); [`Store::commit`] writes the batch in one `IMMEDIATE`
//! transaction (WAL, `synchronous=FULL`) and returns only when it is durable. Recovery
//! ([`Store::open`]) returns everything the runtime needs to continue ([`Recovered`]); table
//! rows are read on demand through a [`Reader`], so restart time does not grow with table size.
//!
//! Invariants:
//! - After any failed commit the store refuses all further work ([`CommitError::Poisoned`])
//!   until it is reopened: an fsync is never retried.
//! - Every record (root state, table value, outbox payload, peer counters, timer payload,
//!   cached reply, group record, turn-log entry, meta value) is sealed by [`codec`] with an
//!   envelope version byte and a CRC32 over the body *and* the row's other columns (its
//!   table, key, sequence numbers, times). A record whose CRC does not match is a
//!   [`Corrupted`] error naming the table and key; it never reaches the caller as data.
//! - Lost history is refused, not run on: [`Store::open`] scans the WAL before SQLite opens
//!   it ([`wal`]: damage in the middle is [`OpenError::WalDamaged`], a torn tail is accepted
//!   as SQLite does) and compares the recovered commits with the owner lock file's commit
//!   witness ([`witness`]: fewer is [`OpenError::HistoryLost`]). A refused store is left
//!   as found.
//! - One owner at a time: the owner holds an exclusive advisory lock on `<store>.lock`.
//!   Readers never take it and never hold a read transaction longer than one query.
//!
//! The file format, the pragmas, the lock file and what a [`Reader`] guarantees are
//! described byte by byte in [`mod@format`] (the text of `store/FORMAT.md`).
//!
//! ```
//! use ken_store::{Batch, OutboxRow, PeerRow, Reader, Store, TableWrite};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("a.ken");
//!
//! // The owner: create (or recover), then commit batches of turns.
//! let (mut store, recovered) = Store::open(&path, "a")?;
//! assert!(recovered.created && recovered.outbox.is_empty());
//! let info = store.commit(&Batch {
//!     now_ms: 1_700_000_000_000,
//!     turns: 1,
//!     root: Some(b"state v1".to_vec()),
//!     table_writes: vec![TableWrite {
//!         table: "accounts".into(),
//!         key: b"alice".to_vec(),
//!         value: Some(b"100".to_vec()),
//!     }],
//!     outbox_appends: vec![OutboxRow {
//!         peer: "b".into(),
//!         seq: 1,
//!         payload: b"hello".to_vec(),
//!         created_ms: 1_700_000_000_000,
//!     }],
//!     peers: vec![PeerRow {
//!         peer: "b".into(),
//!         incarnation: 0,
//!         next_seq: 2,
//!         acked: 0,
//!         delivered: 0,
//!         forgotten: 0,
//!     }],
//!     ..Batch::default()
//! })?;
//! // Durable now: only from here on may the runtime send the message.
//! assert_eq!(info.commits, 1);
//!
//! // An inspector, next to the running owner.
//! let reader = Reader::open(&path)?;
//! assert_eq!(reader.meta()?.turns_committed, 1);
//! assert_eq!(reader.table_get("accounts", b"alice")?.as_deref(), Some(&b"100"[..]));
//! assert!(reader.verify()?.is_empty());
//!
//! // A restart recovers everything but table rows, which are read on demand.
//! drop(store);
//! let (store, recovered) = Store::open(&path, "a")?;
//! assert_eq!(recovered.root.as_deref(), Some(&b"state v1"[..]));
//! assert_eq!(recovered.outbox.len(), 1);
//! assert_eq!(store.table_get("accounts", b"alice")?.as_deref(), Some(&b"100"[..]));
//! # Ok(()) }
//! ```

pub mod audit;
pub mod bench;
pub mod codec;
#[doc = include_str!("../FORMAT.md")]
pub mod format {}
mod access;
mod copy;
mod error;
mod files;
mod journal;
mod reader;
mod schema;
mod store;
pub mod vfs;
pub mod wal;
pub mod witness;

pub use access::lock_path;
pub use copy::install_copy;
pub use error::{CommitError, OpenError, ReadError};
pub use files::wal_path;
pub use reader::{
    FileSizes, JournaledCommit, JournaledSince, KeyValue, Meta, OutboxStats, Problem, Reader,
    TableStats, Verification, INTEGRITY_CHECK_MAX_ERRORS, MAX_SCAN_ROWS, READER_BUSY_TIMEOUT,
    VERIFY_MAX_PROBLEMS, VERIFY_PAGE_ROWS, WAL_SCANS_MAX,
};
pub use store::{
    FoldWatch, Store, MAX_BATCH_ROWS, MAX_BODY_BYTES, MAX_KEY_BYTES, MAX_NAME_BYTES,
    OWNER_BUSY_TIMEOUT,
};

/// The store file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 4;

/// A batch of turns to commit atomically: everything a group of turns changed.
///
/// All vectors are applied in order inside one transaction. Bodies (`root`, table values,
/// payloads, replies, group records) are raw bytes; the store seals each with [`codec::seal`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    /// Wall-clock time of the commit, milliseconds since the Unix epoch (recorded in `meta`).
    pub now_ms: u64,
    /// Number of turns in this batch; added to the store's `turns_committed` counter.
    pub turns: u64,
    /// The encoded root state, if it changed in this batch.
    pub root: Option<Vec<u8>>,
    /// Table row writes (`Some`) and deletes (`None`), in order.
    pub table_writes: Vec<TableWrite>,
    /// New outbox rows.
    pub outbox_appends: Vec<OutboxRow>,
    /// Outbox deletions: for each entry, every row to `peer` with `seq <= up_to`.
    pub outbox_acks: Vec<OutboxAck>,
    /// Whole outbox deletions for peers the application gave up on (`forget_peer`).
    pub outbox_forget: Vec<String>,
    /// Per-peer counters, upserted.
    pub peers: Vec<PeerRow>,
    /// Timer sets and cancels, in order.
    pub timers: Vec<TimerChange>,
    /// Client reply cache puts and evictions, in order.
    pub clients: Vec<ClientChange>,
    /// FUSE group record puts and deletes, in order.
    pub groups: Vec<GroupChange>,
    /// Turn-log entries; the store keeps only the newest `StoreOptions::turn_log_max`.
    pub turn_log: Vec<TurnLogEntry>,
}

/// One table row write (`value: Some`) or delete (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableWrite {
    pub table: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One unacknowledged outbound message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxRow {
    pub peer: String,
    pub seq: u64,
    pub payload: Vec<u8>,
    /// When the turn that produced it ran, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Delete every outbox row to `peer` with `seq <= up_to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxAck {
    pub peer: String,
    pub up_to: u64,
}

/// Per ordered pair counters (this process and `peer`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerRow {
    pub peer: String,
    /// The peer's incarnation as last seen in a frame from it; 0 = not yet known.
    pub incarnation: u64,
    /// Sequence number the next message to `peer` gets (first message is 1).
    pub next_seq: u64,
    /// Highest sequence number `peer` has acknowledged (cumulative).
    pub acked: u64,
    /// Highest sequence number from `peer` consumed by a committed turn.
    pub delivered: u64,
    /// Highest sequence number to `peer` that this process withdrew with `forget_peer`
    /// (0: none). Messages up to it are gone from the outbox; the peer is told to skip what
    /// it has not consumed of them. Stored only when not 0 (a 40-byte record instead of 32).
    pub forgotten: u64,
}

/// A durable timer change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimerChange {
    Set {
        name: String,
        due_ms: u64,
        payload: Vec<u8>,
    },
    Cancel {
        name: String,
    },
}

/// A durable timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRow {
    pub name: String,
    pub due_ms: u64,
    pub payload: Vec<u8>,
}

/// A client reply cache change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientChange {
    Put(ClientRow),
    Evict { client: [u8; 16] },
}

/// The last request applied for a client and its cached reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientRow {
    pub client: [u8; 16],
    pub request_no: u64,
    pub reply: Vec<u8>,
    pub updated_ms: u64,
}

/// A FUSE group record change. The record body is opaque to the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupChange {
    Put(GroupRow),
    Delete { group: [u8; 16] },
}

/// A FUSE group as stored: its id and an opaque record (members, state) owned by `ken`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupRow {
    pub group: [u8; 16],
    pub record: Vec<u8>,
}

/// One turn, as remembered for inspection. Encoded with [`codec::encode`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TurnLogEntry {
    /// Turn number (1-based, over the life of the store).
    pub turn: u64,
    /// When the turn ran, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Input kind: `start`, `message`, `timer`, `request`, `fuse`, `undecodable`.
    pub input_kind: String,
    /// Where the input came from (peer id, timer name, client id in hex), may be empty.
    pub input_source: String,
    /// Sequence number of the consumed message, 0 when the input is not a message.
    pub input_seq: u64,
    /// Messages sent by the turn.
    pub messages_out: u32,
    /// Replies and other outputs released by the turn.
    pub outputs: u32,
    /// Bytes of state written by the turn (root + table values).
    pub bytes_written: u64,
    /// Free text (for example why a message was undecodable).
    pub note: String,
}

/// The page size of a store created with [`StoreOptions::default`]: 1 KiB rather than
/// SQLite's 4 KiB, because every commit writes each page it touches whole to the WAL and a
/// small turn touches five or six (root, a table, outbox, peers, turn log, meta). Measured
/// (`cargo bench -p ken-store`, write-volume phase, and the `wal_bytes` of the stats line of
/// `ken-pingpong`): a pingpong turn wrote 27.7 KB to the WAL at 4 KiB pages and 7.6 KB at
/// 1 KiB, at the same round trip; 30-turn commits 1,119 B/turn and 487 B/turn. The price:
/// rows over about 220 bytes spill into overflow pages, and bulk commits of 1,000 turns of
/// 100-byte rows ran about 25% slower. 512-byte pages write less again (4.1 KB a pingpong
/// turn) but halved bulk throughput.
pub const DEFAULT_PAGE_SIZE: u32 = 1024;

/// Tuning for [`Store::open_with`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many turn-log entries to keep (older ones are deleted in the same commit).
    pub turn_log_max: u32,
    /// If set, `PRAGMA max_page_count` for the file (tests use it to simulate a full disk).
    pub max_page_count: Option<u32>,
    /// Whether a store created by this open keeps a checksum in every page (default true;
    /// see `vfs`). Existing stores keep what they were created with. Off only for tests
    /// that show what the checksums catch.
    pub page_checksums: bool,
    /// The page size of a store created by this open, in bytes (a power of two from 512 to
    /// 65536; default [`DEFAULT_PAGE_SIZE`]; `None`: SQLite's default, 4096). Existing stores keep theirs. Every commit
    /// writes each page it touches whole to the WAL, so smaller pages write less per small
    /// commit and more per large value (`cargo bench -p ken-store` measures both).
    pub page_size: Option<u32>,
    /// Journal commits the store keeps before the next commit folds them into the tables
    /// (default [`DEFAULT_JOURNAL_ROWS`]). A small batch (its journal record at most
    /// [`StoreOptions::journal_record_max_bytes`]) is committed as one `journal` row; the
    /// commit that finds the journal holding this many rows (or a larger batch) folds every
    /// journaled batch into the tables and applies its own there (`FORMAT.md`, "The batch
    /// journal"). 0: every commit writes the tables directly (format 3's behaviour).
    pub journal_rows: u32,
    /// The largest sealed journal record a commit may append, in bytes; a larger batch is
    /// committed directly. `None` (default): a quarter of the store's page size, so a
    /// journal commit writes about one page.
    pub journal_record_max_bytes: Option<u32>,
}

/// Journal rows a store keeps before folding them, by default ([`StoreOptions::journal_rows`]).
pub const DEFAULT_JOURNAL_ROWS: u32 = 32;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            turn_log_max: 1000,
            max_page_count: None,
            page_checksums: true,
            page_size: Some(DEFAULT_PAGE_SIZE),
            journal_rows: DEFAULT_JOURNAL_ROWS,
            journal_record_max_bytes: None,
        }
    }
}

/// Which application wrote a store, and the version of its data's schema (the `app` meta
/// row). Ken's runtime writes it at creation, refuses to open another application's store or
/// a newer schema, and migrates an older one (see `Store::open_for_app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIdentity {
    /// The application's name (`Handler::APP`).
    pub name: String,
    /// The version of its state and message schema (`Handler::SCHEMA_VERSION`, from 1).
    pub schema_version: u32,
}

impl std::fmt::Display for AppIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` schema version {}", self.name, self.schema_version)
    }
}

/// Prefixes an outbox payload with its sender's schema version (u32 LE): the envelope every
/// peer message of a store with an application identity carries (`FORMAT.md`, outbox).
pub fn wrap_payload(schema_version: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&schema_version.to_le_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits an enveloped payload into (schema version, message bytes); `None` if it is shorter
/// than the envelope.
pub fn unwrap_payload(payload: &[u8]) -> Option<(u32, &[u8])> {
    let head: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some((u32::from_le_bytes(head), &payload[4..]))
}

/// What recovery hands the runtime: everything but table rows (those are read on demand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub process_id: String,
    pub incarnation: u64,
    /// True when `open` created the file just now.
    pub created: bool,
    pub turns_committed: u64,
    pub commits: u64,
    pub root: Option<Vec<u8>>,
    pub peers: Vec<PeerRow>,
    /// Every outbox row, ordered by (peer, seq).
    pub outbox: Vec<OutboxRow>,
    pub timers: Vec<TimerRow>,
    /// Every cached client, checked whole at open but with an empty `reply`: replies stay
    /// in the store ([`crate::Reader::client`] reads one when a retry needs it).
    pub clients: Vec<ClientRow>,
    pub groups: Vec<GroupRow>,
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Commits over the life of the store, this one included.
    pub commits: u64,
    pub turns_committed: u64,
}

/// A record whose bytes do not check out. Names the table and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupted record in table `{table}` at key {key}: {detail}")]
pub struct Corrupted {
    pub table: String,
    /// The key, printable (text as is, bytes escaped).
    pub key: String,
    pub detail: String,
}
