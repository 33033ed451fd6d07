//! Standby replicas, the store and wire half (issue 18): a primary ships every committed
//! batch to a standby process, which commits it to a replica of the primary's store and
//! acknowledges it; the driver releases a batch's outputs only when its own commit and the
//! standby's acknowledgement are both done, so the standby holds everything anyone outside
//! has seen.
//!
//! - [`start`] (the primary's side) spawns the *shipper*: it connects to the standby over TCP
//!   (retrying with backoff forever: a primary never drops its standby by itself), hands
//!   shake, catches a replica up by shipping the batches it has not acknowledged when it is
//!   exactly that far behind (a standby restarted, a link cut), reseeds it with a
//!   consistent copy of the store when it is otherwise not exactly the primary's, ships the
//!   batches handed to [`ShipperHandle::ship`] in commit order, and reports [`ShipEvent`]s.
//! - [`serve`] (the standby's side) owns the replica store, serves one primary connection at
//!   a time, forever, and applies each shipped batch with `Store::commit` (fsynced) before it
//!   acknowledges it.
//! - [`promote`] (offline, the operator's `ken standby promote`) raises the store's epoch by
//!   one and records the store detached (no standby until one is attached).
//! - [`detach`] and [`attach`] (offline, `ken standby detach` / `attach`) write and remove the
//!   [`Detached`] record: a primary that runs alone does so on the record, never by itself.
//! - [`serve`] also answers `ken status` (an admin request on UDP, the port of its TCP
//!   listener, under the cluster key: [`StandbyConfig::admin`], [`StandbyStatus`]).
//!
//! **Epochs and fencing.** A store's epoch is a runtime table row (`ken.role`, key `epoch`,
//! value u64 LE; absent = 0), so it travels inside the store (snapshots carry it) with no
//! schema change. A standby refuses a primary whose epoch is below the highest epoch its
//! replica holds, it was started with ([`StandbyConfig::min_epoch`]), or it accepted before:
//! once a standby is promoted (epoch + 1) and a new standby is seeded from it, the old primary
//! gets no acknowledgement from anyone and can release nothing ([`ShipEvent::Fenced`]).
//!
//! **Wire** (TCP, the primary connects). Each message: its length (u32 LE, at most
//! [`STANDBY_MESSAGE_BYTES_MAX`]), then a version byte ([`WIRE_VERSION`]), the bincode (serde,
//! standard configuration) encoding of a [`Message`], and, when the cluster has a key, a
//! 32-byte keyed BLAKE3 tag over the direction (`P` primary to standby, `S` back), the
//! message's number in its direction on this connection (u64 LE, from 0), and the version
//! byte and body; without a key, a CRC32 (4 bytes, LE) over the same bytes instead, which
//! catches an altered byte but not an attacker. `Hello` and the reply to it are tagged under the cluster key's standby key
//! (`ClusterKey::standby_key`); every later message under the connection's key derived from
//! it and both ends' nonces (`StandbyKey::session`), so nothing recorded from another
//! connection (an old snapshot, old batches) can be replayed into this one. Without a key
//! nothing is tagged (only checksummed), and both ends warn loudly. With the cluster's
//! `encrypt` ([`ShipperConfig::encrypt`], [`StandbyConfig::encrypt`]) every message after the
//! handshake has its version-less body XChaCha20-encrypted under a key derived from the
//! connection's key once per connection, nonce = direction and message number
//! (`StreamKey::apply`), before it is tagged; `Hello` says whether the primary encrypts, and a standby that
//! requires it refuses one that does not.
//!
//! **Handshake and reseeding.** The primary sends `Hello` (its process id, epoch and
//! [`Position`]); the standby answers `Refused` (another process, an old epoch, a store of
//! another incarnation than its non-empty replica's: [`Refusal::OtherIncarnation`], so that a
//! primary restarted on a new disk never erases the last copy) or `State` (its replica's
//! position). Equal positions: the replica is the primary's store, shipping follows on.
//! Otherwise (no replica, behind, another history, or ahead: a batch shipped
//! whose local commit the primary lost in a crash; none of its outputs left, so the primary's
//! copy wins) the primary sends a copy of its store as of some commit C (`Reader::copy_into`,
//! in [`STANDBY_SNAPSHOT_CHUNK_BYTES`] chunks); the standby writes it to a temporary file,
//! checks it, puts it in place of its replica (`ken_store::install_copy`, which leaves the
//! lock file witnessing the copy) and answers `State` again. Batches up to C count as
//! acknowledged. A `Ship` whose commit number is not the replica's commits + 1 is refused and
//! the connection closed: the primary reconnects and reseeds.
//!
//! **What the driver must do** (the other half, `driver.rs`): call [`start`] after opening
//! the store; before starting the engine, wait for [`ShipEvent::Acked`] of at least the
//! store's commits (so that after a restart nothing is retransmitted before the standby holds
//! it); ship every batch with the commit number it will have (`Store::commits() + 1`) when it
//! hands it to the store; release it once both are done. Commits the driver does not ship
//! (a schema migration's `commit_schema`, offline operator commits) are harmless: the next
//! shipped batch leaves a gap, and the shipper reconnects and reseeds.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ken_store::{Batch, OpenError, Reader, Store, StoreOptions};
use ken_transport::{ClusterKey, ProcessId, StandbyKey, StreamKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::limits::{
    STANDBY_KEPT_BATCHES, STANDBY_KEPT_BYTES_MAX, STANDBY_MESSAGE_BYTES_MAX, STANDBY_REPLY_TIMEOUT,
    STANDBY_RETRY_MAX, STANDBY_RETRY_MIN, STANDBY_SNAPSHOT_CHUNK_BYTES, STANDBY_TAKE_BACK_TIMEOUT,
};
use crate::time::Time;

/// The runtime table that holds the store's role data (its epoch).
pub const ROLE_TABLE: &str = "ken.role";

/// The key of the epoch row in [`ROLE_TABLE`] (value: u64 LE).
pub const EPOCH_KEY: &[u8] = b"epoch";

/// The version byte that starts every message of the standby stream (2: a message without a
/// key carries a CRC32).
pub const WIRE_VERSION: u8 = 2;

/// Bytes of a tag.
const TAG_BYTES: usize = StandbyKey::TAG_BYTES;

/// Bytes of the CRC32 that ends a message when there is no key.
const CRC_BYTES: usize = 4;

/// Where a store is: what the handshake compares. Two stores at the same position hold the
/// same history (the same incarnation and commits, and the same turns and time of the last
/// commit, which tells apart two different commits of the same number: a replica's batch
/// whose local commit the primary lost, and a later different commit of that number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The store's incarnation (0: no store).
    pub incarnation: u64,
    pub commits: u64,
    pub turns_committed: u64,
    /// `now_ms` of the last commit.
    pub last_commit_ms: u64,
}

impl Position {
    /// The position of a store of `incarnation` at commit `commits`, from the counters a
    /// [`Reader::journaled_since`] of that commit read.
    fn journaled_at(incarnation: u64, commits: u64, since: &ken_store::JournaledSince) -> Position {
        Position {
            incarnation,
            commits,
            turns_committed: since.turns_committed,
            last_commit_ms: since.last_commit_ms,
        }
    }

    fn of(meta: &ken_store::Meta) -> Position {
        Position {
            incarnation: meta.incarnation,
            commits: meta.commits,
            turns_committed: meta.turns_committed,
            last_commit_ms: meta.last_commit_ms,
        }
    }

    /// The position of a store at `self` once it has committed `batch`.
    fn after(self, batch: &Batch) -> Position {
        Position {
            incarnation: self.incarnation,
            commits: self.commits + 1,
            turns_committed: self.turns_committed + batch.turns,
            last_commit_ms: batch.now_ms,
        }
    }
}

/// Why a standby refused a primary (then it closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The standby replicates another process.
    #[error("the standby replicates process `{standby}`, not `{primary}`: check the standby's address and --id")]
    WrongProcess { standby: String, primary: String },
    /// The primary's epoch is below the standby's: it has been superseded (fenced).
    #[error("fenced: the standby is at epoch {standby_epoch}, this primary at {primary_epoch}; a newer primary was promoted, so this one may release nothing more")]
    Fenced {
        standby_epoch: u64,
        primary_epoch: u64,
    },
    /// A shipped batch is not the next commit of the replica.
    #[error("shipped commit {got}, but the replica's next commit is {expected}: reseeding")]
    OutOfOrder { expected: u64, got: u64 },
    /// A shipped batch breaks a store precondition.
    #[error("shipped commit {commit_no} is malformed ({problem})")]
    BadBatch { commit_no: u64, problem: String },
    /// A snapshot did not arrive whole or does not open as the primary's store.
    #[error("snapshot refused: {0}")]
    BadSnapshot(String),
    /// A message that does not belong at this point of the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The replica holds another incarnation of the process (another store, with commits)
    /// than the primary's: a primary restarted on a new, empty store (a replaced disk)
    /// would otherwise overwrite what may be the last copy of the process's state. The
    /// standby never replaces a replica of one incarnation by another by itself.
    #[error(
        "the standby's replica holds incarnation {replica_incarnation:016x} of the process at \
         commit {replica_commits}, the primary's store incarnation {primary_incarnation:016x} \
         at commit {primary_commits}: another store (a replaced disk?). The standby will not \
         overwrite its replica with it. If the primary's disk was lost, stop the primary and \
         promote the standby (`ken standby promote`); to discard the replica instead, stop the \
         standby, move its store file away and start it again (it is then seeded from the \
         primary)"
    )]
    OtherIncarnation {
        replica_incarnation: u64,
        replica_commits: u64,
        primary_incarnation: u64,
        primary_commits: u64,
    },
}

/// A message of the standby stream (see the module docs for the framing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Primary to standby, first: who it is and where its store is.
    Hello {
        process: String,
        epoch: u64,
        at: Position,
        nonce: [u8; 16],
        /// Every later message of the connection is encrypted (the cluster's `encrypt`).
        encrypt: bool,
    },
    /// Standby to primary: the handshake accepted, and where the replica is (all zeros: no
    /// replica yet). Also the answer to a complete snapshot.
    State {
        epoch: u64,
        at: Position,
        nonce: [u8; 16],
    },
    /// Standby to primary, then the standby closes the connection.
    Refused { reason: Refusal },
    /// Primary to standby: part of a copy of the whole store as of commit `commits`
    /// (`total_bytes` long; chunks in order, from offset 0).
    Snapshot {
        commits: u64,
        total_bytes: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Primary to standby: the batch that is (or will be) the primary's commit `commit_no`.
    Ship { commit_no: u64, batch: Arc<Batch> },
    /// Standby to primary: the replica holds every commit up to `commit_no` (cumulative).
    Acked { commit_no: u64 },
    /// Primary to standby, from a restarted primary before it runs anything ([`take_back`]):
    /// the batch the replica holds as commit `commit_no`, please.
    Fetch { commit_no: u64 },
    /// Standby to primary, the answer to `Fetch`: the batch and the replica's position
    /// before it, if the standby still keeps it (the last few it applied in this life, in
    /// memory); both `None` otherwise.
    Fetched {
        before: Option<Position>,
        batch: Option<Arc<Batch>>,
    },
}

impl Message {
    fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::State { .. } => "State",
            Message::Refused { .. } => "Refused",
            Message::Snapshot { .. } => "Snapshot",
            Message::Ship { .. } => "Ship",
            Message::Acked { .. } => "Acked",
            Message::Fetch { .. } => "Fetch",
            Message::Fetched { .. } => "Fetched",
        }
    }
}

/// What went wrong on the standby stream's connection (it is closed after any of these).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes, over the {STANDBY_MESSAGE_BYTES_MAX}-byte limit")]
    TooLarge(u64),
    #[error("message of {0} bytes is too short")]
    TooShort(u32),
    #[error("message does not authenticate: altered on the way, or the other end has another cluster key (or none)")]
    BadTag,
    /// Without a key: the message's CRC32 does not match (bytes altered on the way, or the
    /// other end has a key where this one has none).
    #[error("message fails its checksum: altered on the way, or the other end has a cluster key where this one has none")]
    BadChecksum,
    #[error("message of wire version {0}; this build speaks version {WIRE_VERSION}")]
    Version(u8),
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("no message for {} s", .0.as_secs())]
    Timeout(Duration),
}

/// One end of a connection's framing: its key and its message counters.
struct Framing {
    key: Option<StandbyKey>,
    /// Encrypts (and decrypts) the body: set once `key` is the connection's key and both
    /// ends agreed in the handshake ([`Framing::start_session`]).
    cipher: Option<StreamKey>,
    /// Our direction byte, and the other end's.
    out_dir: u8,
    in_dir: u8,
    sent: u64,
    received: u64,
}

impl Framing {
    fn new(key: Option<StandbyKey>, primary: bool) -> Framing {
        let (out_dir, in_dir) = if primary { (b'P', b'S') } else { (b'S', b'P') };
        Framing {
            key,
            cipher: None,
            out_dir,
            in_dir,
            sent: 0,
            received: 0,
        }
    }

    /// From the next message on, the connection's key (tags), and encryption if `encrypt`.
    fn start_session(&mut self, session: StandbyKey, encrypt: bool) {
        self.cipher = encrypt.then(|| session.stream_key());
        self.key = Some(session);
    }

    /// Bytes after the version byte and body: the tag, or the CRC32 without a key.
    fn trailer_len(&self) -> usize {
        if self.key.is_some() {
            TAG_BYTES
        } else {
            CRC_BYTES
        }
    }

    /// The CRC32 of a message without a key: over the same bytes a tag covers.
    fn crc(dir: u8, number: u64, message: &[u8]) -> [u8; CRC_BYTES] {
        let mut h = crc32fast::Hasher::new();
        h.update(&[dir]);
        h.update(&number.to_le_bytes());
        h.update(message);
        h.finalize().to_le_bytes()
    }

    fn encode(&mut self, msg: &Message) -> Result<Vec<u8>, WireError> {
        let body = bincode::serde::encode_to_vec(msg, bincode::config::standard())
            .map_err(|e| WireError::Decode(e.to_string()))?;
        let tag_len = self.trailer_len();
        let len = 1 + body.len() as u64 + tag_len as u64;
        if len > u64::from(STANDBY_MESSAGE_BYTES_MAX) {
            return Err(WireError::TooLarge(len));
        }
        let mut frame = Vec::with_capacity(4 + len as usize);
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.push(WIRE_VERSION);
        frame.extend_from_slice(&body);
        match &self.key {
            Some(key) => {
                if let Some(cipher) = &self.cipher {
                    cipher.apply(self.out_dir, self.sent, &mut frame[5..]);
                }
                let tag = key.tag(&[&[self.out_dir], &self.sent.to_le_bytes(), &frame[4..]]);
                frame.extend_from_slice(&tag);
            }
            None => {
                let crc = Framing::crc(self.out_dir, self.sent, &frame[4..]);
                frame.extend_from_slice(&crc);
            }
        }
        self.sent += 1;
        Ok(frame)
    }

    fn decode(&mut self, mut frame: Vec<u8>) -> Result<Message, WireError> {
        if let Some(key) = &self.key {
            let body_len = frame.len() - TAG_BYTES;
            if !key.verify(
                &[
                    &[self.in_dir],
                    &self.received.to_le_bytes(),
                    &frame[..body_len],
                ],
                &frame[body_len..],
            ) {
                return Err(WireError::BadTag);
            }
            frame.truncate(body_len);
            if let Some(cipher) = &self.cipher {
                cipher.apply(self.in_dir, self.received, &mut frame[1..]);
            }
        } else {
            // The version first: an older peer's message (no CRC) is named as such.
            if frame[0] != WIRE_VERSION {
                return Err(WireError::Version(frame[0]));
            }
            let body_len = frame.len() - CRC_BYTES;
            if frame[body_len..] != Framing::crc(self.in_dir, self.received, &frame[..body_len]) {
                return Err(WireError::BadChecksum);
            }
            frame.truncate(body_len);
        }
        if frame[0] != WIRE_VERSION {
            return Err(WireError::Version(frame[0]));
        }
        let config =
            bincode::config::standard().with_limit::<{ STANDBY_MESSAGE_BYTES_MAX as usize }>();
        let (msg, used): (Message, usize) = bincode::serde::decode_from_slice(&frame[1..], config)
            .map_err(|e| WireError::Decode(e.to_string()))?;
        if used != frame.len() - 1 {
            return Err(WireError::Decode(format!(
                "{} bytes left over after the message",
                frame.len() - 1 - used
            )));
        }
        self.received += 1;
        Ok(msg)
    }

    async fn write(
        &mut self,
        w: &mut (impl AsyncWrite + Unpin),
        msg: &Message,
    ) -> Result<(), WireError> {
        let frame = self.encode(msg)?;
        w.write_all(&frame).await?;
        Ok(())
    }

    async fn read(&mut self, r: &mut (impl AsyncRead + Unpin)) -> Result<Message, WireError> {
        let frame = self.read_frame(r).await?;
        self.decode(frame)
    }

    /// The next message's bytes (after its length), not yet checked.
    async fn read_frame(&mut self, r: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, WireError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len);
        if len > STANDBY_MESSAGE_BYTES_MAX {
            return Err(WireError::TooLarge(len.into()));
        }
        let min = 1 + self.trailer_len();
        if (len as usize) < min {
            return Err(WireError::TooShort(len));
        }
        let mut frame = vec![0u8; len as usize];
        r.read_exact(&mut frame).await?;
        Ok(frame)
    }

    async fn read_within(
        &mut self,
        r: &mut (impl AsyncRead + Unpin),
        timeout: Duration,
    ) -> Result<Message, WireError> {
        match tokio::time::timeout(timeout, self.read(r)).await {
            Ok(m) => m,
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }
}

fn nonce() -> [u8; 16] {
    use rand::RngCore;
    let mut n = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn no_key_warning(side: &str) {
    tracing::warn!(
        "NO CLUSTER KEY: the standby stream ({side}) is not authenticated. Anyone who can \
         reach the standby's port can overwrite its replica, and anyone on the path can \
         acknowledge batches the standby never stored. Run with a key (ken keygen FILE); see \
         SECURITY.md"
    );
}

// ---------------------------------------------------------------------------------------
// Epochs and promotion.

/// The epoch recorded in a store (0 when it has none), read through `reader`.
pub fn epoch(reader: &Reader) -> Result<u64, ken_store::ReadError> {
    decode_epoch(reader.table_get(ROLE_TABLE, EPOCH_KEY)?)
}

/// The epoch recorded in the store at `path` (0 when it has none).
pub fn read_epoch(path: &Path) -> Result<u64, PromoteError> {
    Ok(epoch(&Reader::open(path)?)?)
}

fn store_epoch(store: &Store) -> Result<u64, ken_store::ReadError> {
    decode_epoch(store.table_get(ROLE_TABLE, EPOCH_KEY)?)
}

fn decode_epoch(value: Option<Vec<u8>>) -> Result<u64, ken_store::ReadError> {
    match value {
        None => Ok(0),
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => Ok(u64::from_le_bytes(b)),
            Err(_) => Err(ken_store::ReadError::Corrupted(ken_store::Corrupted {
                table: ROLE_TABLE.to_string(),
                key: "epoch".to_string(),
                detail: format!("the epoch is {} bytes, not 8", v.len()),
            })),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Detach and attach: a primary alone, on the record.

/// The key of the detach record in [`ROLE_TABLE`] (value: a [`Detached`] in
/// `ken_store::codec`; absent: the process ships to the standby its cluster file declares).
pub const DETACHED_KEY: &[u8] = b"detached";

/// Bytes of a [`Detached`] record's `reason` and `by` kept (longer ones are cut at a
/// character boundary), so that a status reply carrying it fits in one datagram.
pub const DETACH_REASON_BYTES_MAX: usize = 200;

fn cut(text: &str) -> String {
    let mut end = text.len().min(DETACH_REASON_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// An operator's record that a primary runs alone (`ken standby detach`; also written by
/// [`promote`]: a promoted store has no standby until one is attached). While a store holds
/// it, the process runs without the standby its cluster file declares and says so at start,
/// in `ken status` and in `ken inspect`; [`attach`] removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// Who detached it: the command and the operator (`user@host`) as the tool saw them (at
    /// most [`DETACH_REASON_BYTES_MAX`] bytes).
    pub by: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The operator's reason (free text, at most [`DETACH_REASON_BYTES_MAX`] bytes; may be
    /// empty).
    pub reason: String,
}

/// A store's role data ([`ROLE_TABLE`]): its epoch and its detach record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// 0 until a standby's replica of the store was promoted, one more at each promotion.
    pub epoch: u64,
    /// Present: the process runs alone, on the record.
    pub detached: Option<Detached>,
}

impl Role {
    /// What the store can tell of the role of whoever runs on it: `promoted` (epoch above
    /// 0), else `primary` (a standby's replica is an exact copy of its primary's store: the
    /// store alone cannot tell the two apart).
    pub fn name(&self) -> &'static str {
        if self.epoch > 0 {
            "promoted"
        } else {
            "primary"
        }
    }
}

/// The role data of a store, read through `reader`.
pub fn role(reader: &Reader) -> Result<Role, ken_store::ReadError> {
    Ok(Role {
        epoch: epoch(reader)?,
        detached: decode_detached(reader.table_get(ROLE_TABLE, DETACHED_KEY)?)?,
    })
}

/// The role data of the store at `path` (read-only; fine while a process runs on it).
pub fn read_role(path: &Path) -> Result<Role, PromoteError> {
    Ok(role(&Reader::open(path)?)?)
}

/// The role data of an open store (the driver, at start). A record that does not decode is
/// the store's damage, reported as [`OpenError::Corrupted`].
pub(crate) fn store_role(store: &Store) -> Result<Role, OpenError> {
    let read = || -> Result<Role, ken_store::ReadError> {
        Ok(Role {
            epoch: store_epoch(store)?,
            detached: decode_detached(store.table_get(ROLE_TABLE, DETACHED_KEY)?)?,
        })
    };
    read().map_err(|e| match e {
        ken_store::ReadError::Corrupted(c) => OpenError::Corrupted(c),
        other => OpenError::Corrupted(ken_store::Corrupted {
            table: ROLE_TABLE.to_string(),
            key: String::new(),
            detail: other.to_string(),
        }),
    })
}

fn decode_detached(value: Option<Vec<u8>>) -> Result<Option<Detached>, ken_store::ReadError> {
    value
        .map(|v| {
            ken_store::codec::decode::<Detached>(&v).map_err(|e| {
                ken_store::ReadError::Corrupted(ken_store::Corrupted {
                    table: ROLE_TABLE.to_string(),
                    key: "detached".to_string(),
                    detail: format!("the detach record does not decode: {e}"),
                })
            })
        })
        .transpose()
}

fn detached_write(record: Option<&Detached>) -> ken_store::TableWrite {
    ken_store::TableWrite {
        table: ROLE_TABLE.to_string(),
        key: DETACHED_KEY.to_vec(),
        value: record.map(ken_store::codec::encode),
    }
}

/// Opens a stopped process's store as its owner, for an operator's one-row commit. Reads
/// its process id first, so that a missing path or a file that is not a Ken store is an
/// error and nothing is created.
fn open_offline(path: &Path) -> Result<Store, PromoteError> {
    let process = Reader::open(path)?.meta()?.process_id;
    Ok(Store::open(path, &process)?.0)
}

/// How long ago `at_ms` was, for a human (`12 s ago`, `3 h ago`).
pub fn ago(at_ms: u64) -> String {
    let s = Time::now_wall().as_millis().saturating_sub(at_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

impl std::fmt::Display for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "detached {} by {}", ago(self.at_ms), self.by)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// The driver's start, given the store's role: a detached store runs alone even though
/// `config` names a standby (the cluster file declares one), and says so loudly. Returns
/// why the process runs without the standby it declares (`detached` on the record, or
/// `--no-standby` for this run: [`crate::Config::standby_skipped`]) and that standby's
/// address; `None`: it uses its standby, or declares none.
pub(crate) fn apply_role(
    role: &Role,
    config: &mut crate::Config,
) -> Option<(&'static str, String)> {
    if let Some(d) = &role.detached {
        let store = config.store.display();
        match config.standby.take() {
            Some(target) => {
                tracing::warn!(
                    "DETACHED ({d}): running WITHOUT the standby at {target} that the cluster \
                     file declares, on the record; a destroyed disk here loses what this process \
                     commits. To ship to the standby again: stop this process, run `ken standby \
                     attach --store {store}`, start it (the standby is reseeded)"
                );
                return Some(("detached", target));
            }
            None => tracing::warn!(
                "DETACHED ({d}): this process runs alone (it declares no standby either); \
                 `ken standby attach --store {store}` removes the record"
            ),
        }
    }
    config
        .standby_skipped
        .clone()
        .map(|target| ("--no-standby", target))
}

/// What [`detach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachOutcome {
    /// The record is written.
    Detached(Detached),
    /// The store was detached already (this record, kept as it was): nothing written.
    Already(Detached),
}

/// Records in the store at `path` that its process runs alone, without the standby its
/// cluster file declares (`ken standby detach`): the [`DETACHED_KEY`] row, one commit of no
/// turn. Offline: refused while a process or standby runs on the store
/// ([`OpenError::InUse`], nothing written). The process reads it at its next start.
///
/// Detach only a primary whose standby was **not** promoted: a detached primary has no
/// standby to fence it, so if a promoted copy runs elsewhere there are two.
pub fn detach(path: &Path, by: &str, reason: &str) -> Result<DetachOutcome, PromoteError> {
    let mut store = open_offline(path)?;
    if let Some(d) = decode_detached(store.table_get(ROLE_TABLE, DETACHED_KEY)?)? {
        return Ok(DetachOutcome::Already(d));
    }
    let record = Detached {
        by: cut(by),
        at_ms: Time::now_wall().as_millis(),
        reason: cut(reason),
    };
    store.commit(&Batch {
        now_ms: record.at_ms,
        table_writes: vec![detached_write(Some(&record))],
        ..Batch::default()
    })?;
    tracing::warn!(path = %path.display(), by, reason, "DETACHED: the process runs alone from its next start");
    Ok(DetachOutcome::Detached(record))
}

/// Removes the detach record of the store at `path` (`ken standby attach`): at its next
/// start the process ships to its standby again (reseeding it: the replica is behind) and
/// waits for it. Offline, like [`detach`]. Returns the record removed; `None`: the store was
/// not detached (nothing written).
pub fn attach(path: &Path) -> Result<Option<Detached>, PromoteError> {
    let mut store = open_offline(path)?;
    let Some(d) = decode_detached(store.table_get(ROLE_TABLE, DETACHED_KEY)?)? else {
        return Ok(None);
    };
    store.commit(&Batch {
        now_ms: Time::now_wall().as_millis(),
        table_writes: vec![detached_write(None)],
        ..Batch::default()
    })?;
    tracing::info!(path = %path.display(), "attached: the process ships to its standby from its next start");
    Ok(Some(d))
}

/// Why [`promote`], [`detach`], [`attach`], [`read_epoch`] or [`read_role`] did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromoteError {
    /// The store could not be opened: absent, damaged, or in use (a running standby or
    /// process holds its owner lock: stop it first). Nothing was written.
    #[error("{0}")]
    Open(#[from] OpenError),
    /// The store could not be read. Nothing was written.
    #[error("{0}")]
    Read(#[from] ken_store::ReadError),
    /// The commit failed (nothing was written).
    #[error("{0}")]
    Commit(#[from] ken_store::CommitError),
}

/// Turns the store at `path` (a standby's replica) into a primary's: its epoch + 1, and a
/// [`Detached`] record (the promoted process has no standby until an operator attaches one:
/// it runs alone, on the record, whatever its cluster file declares), written by one commit
/// (no turn, two [`ROLE_TABLE`] rows). Offline: the store's owner must be
/// stopped (a running standby or process makes it `OpenError::InUse`, nothing written).
/// Returns the new epoch. From then on, a standby seeded from this store refuses the old
/// primary, which is therefore fenced.
pub fn promote(path: &Path) -> Result<u64, PromoteError> {
    let mut store = open_offline(path)?;
    let epoch = store_epoch(&store)? + 1;
    let now_ms = Time::now_wall().as_millis();
    let detached = Detached {
        by: "ken standby promote".to_string(),
        at_ms: now_ms,
        reason: format!("promoted to epoch {epoch}: no standby attached yet"),
    };
    store.commit(&Batch {
        now_ms,
        table_writes: vec![
            ken_store::TableWrite {
                table: ROLE_TABLE.to_string(),
                key: EPOCH_KEY.to_vec(),
                value: Some(epoch.to_le_bytes().to_vec()),
            },
            detached_write(Some(&detached)),
        ],
        ..Batch::default()
    })?;
    tracing::info!(path = %path.display(), epoch, "promoted (and detached: no standby yet): the store is a primary's at epoch {epoch}");
    Ok(epoch)
}

// ---------------------------------------------------------------------------------------
// The primary's side: the shipper.

/// What [`start`] needs.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// The primary's process id (the standby checks it).
    pub process: ProcessId,
    /// The primary's store (read through `Reader`s: its position, epoch and copies).
    pub store: PathBuf,
    /// The standby's address, `host:port`.
    pub standby: String,
    /// The cluster key; `None`: unauthenticated, with a loud warning.
    pub key: Option<ClusterKey>,
    /// Encrypt every message after the handshake (the cluster's `encrypt`; needs `key`).
    pub encrypt: bool,
}

/// What the shipper reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShipEvent {
    /// Cumulative: the standby's replica holds every commit up to this one.
    Acked(u64),
    /// The standby refused this primary's epoch: a newer primary exists. Nothing more will be
    /// acknowledged; the shipper keeps trying (an operator decides).
    Fenced { standby_epoch: u64, ours: u64 },
    /// The connection to the standby failed or closed (why); the shipper reconnects.
    Disconnected(String),
}

/// The driver's handle on the shipper. Dropping it stops the shipper.
#[derive(Debug)]
pub struct ShipperHandle {
    batches: mpsc::UnboundedSender<(u64, Arc<Batch>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ShipperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ShipperHandle {
    /// Hands the shipper the batch that is (or will be) commit `commit_no` of the store:
    /// shipped as soon as the connection allows; its acknowledgement comes as
    /// [`ShipEvent::Acked`]. Never blocks. The driver ships every batch, in commit order,
    /// and keeps at most a few unacknowledged (the engine's one committing batch), which
    /// bounds what waits here.
    pub fn ship(&self, commit_no: u64, batch: Arc<Batch>) {
        // The task ends only when this handle drops.
        let _ = self.batches.send((commit_no, batch));
    }
}

/// Where the store at `path` is, and its epoch.
fn local_position(path: &Path) -> Result<(Position, u64), String> {
    let reader = Reader::open(path).map_err(|e| e.to_string())?;
    let meta = reader.meta().map_err(|e| e.to_string())?;
    let epoch = epoch(&reader).map_err(|e| e.to_string())?;
    Ok((Position::of(&meta), epoch))
}

/// What a restarted primary with a standby does before it recovers anything: takes back the
/// batches its standby's replica holds beyond the local store, and commits them to `store`
/// (the store of `cfg.store`, open). Returns how many it committed; when any, the caller
/// reopens the store (what it recovered is stale).
///
/// Why a replica can be ahead: the driver ships a batch while its own commit runs, so a
/// primary killed after the standby's commit and before its own finished comes back one or
/// two commits behind its replica. None of those batches' outputs left (the primary releases
/// a batch only once its own commit is done), so either copy may win; the shipper alone
/// would replace the replica by a copy of the whole store (a 1 GiB store: 1 GiB on the wire
/// while the process waits), where these few batches make the two equal. They are this
/// process's own history: the standby sends each with the replica's position before it, and
/// the first must be exactly this store's position (incarnation, commits, turns, last commit
/// time), each next one the position after the batch before; committing them is what the
/// crashed life's unfinished commits would have done.
///
/// Anything but a failed local commit is logged and left to the shipper (which reseeds a
/// replica ahead, as before): a standby that does not answer within
/// [`STANDBY_TAKE_BACK_TIMEOUT`], restarted since (it keeps the last
/// [`STANDBY_KEPT_BATCHES`] batches in memory; after a restart only those its replica's batch
/// journal holds, small ones), refusing this primary (fenced, another key), or holding
/// another history.
pub async fn take_back(
    cfg: &ShipperConfig,
    store: &mut Store,
) -> Result<u64, ken_store::CommitError> {
    let batches = match fetch_back(cfg).await {
        Ok(b) => b,
        Err(why) => {
            tracing::warn!(
                standby = %cfg.standby,
                "could not ask the standby for batches this store lacks: {why}; going on \
                 (the shipper reseeds the standby if its replica is ahead)"
            );
            return Ok(0);
        }
    };
    let Some(first) = batches.first().map(|_| store.commits() + 1) else {
        return Ok(0);
    };
    for batch in &batches {
        store.commit(batch)?;
    }
    tracing::info!(
        standby = %cfg.standby,
        from = first,
        to = store.commits(),
        "took back {} batch(es) the standby committed and this process lost in a crash \
         (never released); no reseed",
        batches.len()
    );
    Ok(batches.len() as u64)
}

/// A primary's connection to its standby once the handshake is done: the stream's halves,
/// their framing (with the session's keys when there is a cluster key), and the replica's
/// position from the standby's `State`.
struct Opened {
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: Framing,
    inn: Framing,
    theirs: Position,
}

/// Connects to the standby within `timeout`.
async fn connect(cfg: &ShipperConfig, timeout: Duration) -> Result<TcpStream, SessionEnd> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(&cfg.standby))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })
        .map_err(|source| SessionEnd::Connect {
            at: cfg.standby.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The primary's side of the handshake, for the shipper and the take-back alike: `Hello`
/// with the store's position `at` and `epoch`, the standby's `State` (or its refusal) within
/// `timeout`, and the session keys from both nonces.
async fn hello(
    cfg: &ShipperConfig,
    stream: TcpStream,
    at: Position,
    epoch: u64,
    timeout: Duration,
) -> Result<Opened, SessionEnd> {
    let (mut rd, mut wr) = stream.into_split();
    let base = cfg.key.as_ref().map(ClusterKey::standby_key);
    let mut out = Framing::new(base.clone(), true);
    let mut inn = Framing::new(base.clone(), true);
    let our_nonce = nonce();
    out.write(
        &mut wr,
        &Message::Hello {
            process: cfg.process.as_str().to_string(),
            epoch,
            at,
            nonce: our_nonce,
            encrypt: cfg.encrypt,
        },
    )
    .await?;
    let reply = match inn.read_within(&mut rd, timeout).await {
        Err(
            WireError::BadTag
            | WireError::BadChecksum
            | WireError::Decode(_)
            | WireError::TooShort(_),
        ) => {
            return Err(SessionEnd::Protocol(
                "the standby's answer to Hello does not authenticate: the standby has \
                 another cluster key, or one where this primary has none (or the reverse); \
                 give both the same key file"
                    .into(),
            ))
        }
        other => other?,
    };
    let (theirs, their_nonce) = match reply {
        Message::State { at, nonce, .. } => (at, nonce),
        Message::Refused { reason } => return Err(SessionEnd::Refused(reason)),
        other => {
            return Err(SessionEnd::Protocol(format!(
                "the standby answered Hello with {}",
                other.name()
            )))
        }
    };
    if let Some(base) = &base {
        let session = base.session(&our_nonce, &their_nonce);
        out.start_session(session.clone(), cfg.encrypt);
        inn.start_session(session, cfg.encrypt);
    }
    Ok(Opened {
        rd,
        wr,
        out,
        inn,
        theirs,
    })
}

/// The batches the standby's replica holds beyond the local store, checked to follow it
/// ([`take_back`]); empty when the replica is not ahead.
async fn fetch_back(cfg: &ShipperConfig) -> Result<Vec<Arc<Batch>>, String> {
    let t = STANDBY_TAKE_BACK_TIMEOUT;
    let (at, our_epoch) = local_position(&cfg.store)?;
    let stream = connect(cfg, t).await.map_err(|e| e.to_string())?;
    let Opened {
        mut rd,
        mut wr,
        mut out,
        mut inn,
        theirs,
    } = hello(cfg, stream, at, our_epoch, t)
        .await
        .map_err(|e| e.to_string())?;
    if theirs.incarnation != at.incarnation || theirs.commits <= at.commits {
        // Nothing to take back. One `Fetch` all the same (of the commit after the replica's
        // newest: it has none), so that the standby logs the close that follows as a
        // take-back's, not as a primary lost; its answer does not matter.
        let probe = Message::Fetch {
            commit_no: theirs.commits + 1,
        };
        if out.write(&mut wr, &probe).await.is_ok() {
            let _ = inn.read_within(&mut rd, t).await;
        }
        return Ok(Vec::new());
    }
    let mut want = at;
    let mut batches = Vec::new();
    while want.commits < theirs.commits {
        let commit_no = want.commits + 1;
        out.write(&mut wr, &Message::Fetch { commit_no })
            .await
            .map_err(|e| e.to_string())?;
        match inn
            .read_within(&mut rd, t)
            .await
            .map_err(|e| e.to_string())?
        {
            Message::Fetched {
                before: Some(before),
                batch: Some(batch),
            } if before == want => {
                batch
                    .check()
                    .map_err(|p| format!("its commit {commit_no} is malformed: {p}"))?;
                want = want.after(&batch);
                batches.push(batch);
            }
            Message::Fetched {
                before: Some(before),
                ..
            } => {
                return Err(format!(
                    "its replica's commit {commit_no} follows another history than this \
                     store's (before it: {before:?}; this store: {want:?})"
                ))
            }
            Message::Fetched { .. } => {
                return Err(format!(
                    "it no longer holds commit {commit_no} (restarted since and its replica's \
                     journal does not hold it, or more than {STANDBY_KEPT_BATCHES} commits \
                     ahead)"
                ))
            }
            Message::Refused { reason } => return Err(format!("it refused: {reason}")),
            other => return Err(format!("it answered Fetch with {}", other.name())),
        }
    }
    if want != theirs {
        return Err(format!(
            "after the batches it kept the replica would be at {want:?}, but it is at {theirs:?}"
        ));
    }
    Ok(batches)
}

/// Spawns the shipping task on the current tokio runtime (the engine loop's: a batch handed
/// over is encoded and written to the socket as soon as the loop yields, which the driver
/// does before it commits the batch itself, so the standby's copy and the local commit run at
/// once without a thread hand-off either way). It connects (retrying with backoff, logging
/// loudly, never giving up: a primary never drops its standby by itself), hands shake,
/// catches up or reseeds by snapshot when needed, ships, and reports.
///
/// # Panics
/// Outside a tokio runtime.
pub fn start(cfg: ShipperConfig) -> (ShipperHandle, mpsc::UnboundedReceiver<ShipEvent>) {
    if cfg.key.is_none() {
        no_key_warning("primary");
    }
    let (batches, rx) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(ship_forever(cfg, rx, events));
    (ShipperHandle { batches, task }, events_rx)
}

/// The shipper's state across connections.
struct Shipper {
    cfg: ShipperConfig,
    batches: mpsc::UnboundedReceiver<(u64, Arc<Batch>)>,
    events: mpsc::UnboundedSender<ShipEvent>,
    /// Batches handed over and not known to be held by the standby, in commit order.
    pending: VecDeque<(u64, Arc<Batch>)>,
    /// The highest commit the standby is known to hold (0: none yet).
    acked: u64,
    /// `now_ms` of batch `acked`, once a standby acknowledged it in this life of the shipper:
    /// with the batches after it (`pending`) it gives the position a replica at `acked` has
    /// if it holds this history ([`Shipper::position_at`]).
    acked_now_ms: Option<u64>,
}

/// How a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot reach the standby at {at}: {source}")]
    Connect { at: String, source: std::io::Error },
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("the standby refused: {0}")]
    Refused(Refusal),
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Protocol(String),
    /// The handle was dropped.
    #[error("stopped")]
    Stopped,
}

async fn ship_forever(
    cfg: ShipperConfig,
    batches: mpsc::UnboundedReceiver<(u64, Arc<Batch>)>,
    events: mpsc::UnboundedSender<ShipEvent>,
) {
    let mut s = Shipper {
        cfg,
        batches,
        events,
        pending: VecDeque::new(),
        acked: 0,
        acked_now_ms: None,
    };
    let mut backoff = STANDBY_RETRY_MIN;
    loop {
        let mut synced = false;
        let end = s.session(&mut synced).await;
        if synced {
            backoff = STANDBY_RETRY_MIN;
        }
        match end {
            SessionEnd::Stopped => return,
            SessionEnd::Refused(Refusal::Fenced {
                standby_epoch,
                primary_epoch,
            }) => {
                tracing::error!(
                    standby = %s.cfg.standby,
                    standby_epoch,
                    epoch = primary_epoch,
                    "FENCED: the standby is at epoch {standby_epoch}, this primary at \
                     {primary_epoch}: a newer primary was promoted; this process can release \
                     nothing more (retrying in case an operator changes that)"
                );
                let _ = s.events.send(ShipEvent::Fenced {
                    standby_epoch,
                    ours: primary_epoch,
                });
            }
            SessionEnd::Refused(reason @ Refusal::OtherIncarnation { .. }) => {
                tracing::error!(
                    standby = %s.cfg.standby,
                    retry_in_ms = backoff.as_millis() as u64,
                    "REFUSED by the standby: {reason}; this process releases nothing until \
                     that is resolved (retrying)"
                );
                let _ = s.events.send(ShipEvent::Disconnected(reason.to_string()));
            }
            other => {
                tracing::warn!(
                    standby = %s.cfg.standby,
                    retry_in_ms = backoff.as_millis() as u64,
                    "standby connection lost: {other}; retrying (outputs wait for the standby)"
                );
                let _ = s.events.send(ShipEvent::Disconnected(other.to_string()));
            }
        }
        // Wait, taking batches meanwhile (they wait for the next connection).
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                got = s.batches.recv() => match got {
                    Some(b) => s.take(b),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(STANDBY_RETRY_MAX);
    }
}

impl Shipper {
    /// Takes a batch handed over by the driver.
    fn take(&mut self, (commit_no, batch): (u64, Arc<Batch>)) {
        if commit_no <= self.acked {
            // Already in the replica (a snapshot taken after its local commit): say so again.
            let _ = self.events.send(ShipEvent::Acked(self.acked));
            return;
        }
        if let Some((last, _)) = self.pending.back() {
            assert!(
                commit_no > *last,
                "batches are shipped in commit order ({commit_no} after {last})"
            );
        }
        self.pending.push_back((commit_no, batch));
    }

    fn acked(&mut self, n: u64) {
        if n > self.acked {
            self.acked = n;
        }
        while self.pending.front().is_some_and(|(c, _)| *c <= self.acked) {
            if let Some((c, batch)) = self.pending.pop_front() {
                if c == self.acked {
                    self.acked_now_ms = Some(batch.now_ms);
                }
            }
        }
        let _ = self.events.send(ShipEvent::Acked(self.acked));
    }

    /// The position of a replica that holds this store's history up to commit `r`, given
    /// the local store at `at`, for `r` from the last acknowledged commit (`acked`, when a
    /// standby acknowledged it in this life of the shipper) to `at`, every batch after
    /// `acked` up to `at` waiting in `pending`; `None` otherwise. A replica at such a
    /// position (a standby restarted, a link cut, acknowledgements lost on the way) is
    /// caught up by shipping the batches after `r`; any other replica is reseeded by a
    /// snapshot. The position's turns and last commit time tell this history's commit `r`
    /// from another commit of that number (one the primary lost in a crash), as the
    /// handshake's equality does.
    fn position_at(&self, r: u64, at: &Position) -> Option<Position> {
        let after: Vec<&(u64, Arc<Batch>)> = self
            .pending
            .iter()
            .take_while(|(c, _)| *c <= at.commits)
            .collect();
        let contiguous = after
            .iter()
            .zip(self.acked + 1..)
            .all(|((c, _), want)| *c == want);
        if !contiguous
            || after.len() as u64 != at.commits.checked_sub(self.acked)?
            || r < self.acked
            || r > at.commits
        {
            return None;
        }
        let last_commit_ms = if r == self.acked {
            self.acked_now_ms?
        } else {
            after.iter().find(|(c, _)| *c == r)?.1.now_ms
        };
        let turns_after: u64 = after
            .iter()
            .filter(|(c, _)| *c > r)
            .map(|(_, b)| b.turns)
            .sum();
        Some(Position {
            incarnation: at.incarnation,
            commits: r,
            turns_committed: at.turns_committed.checked_sub(turns_after)?,
            last_commit_ms,
        })
    }

    /// The batches of commits `theirs.commits + 1 ..= at.commits`, read from the store's
    /// journal, when the replica is at `theirs` on this store's history and behind by
    /// commits that only the journal holds (an earlier life's: after a restart nothing waits
    /// in `pending`): the store's counters at commit `theirs.commits` (from the journal, or
    /// the tables' when the journal starts right after it) are `theirs`, and the journal
    /// holds every commit after it up to `at`. `None` otherwise (then the replica is
    /// reseeded).
    async fn journaled_batches(
        &self,
        theirs: Position,
        at: Position,
    ) -> Option<Vec<(u64, Arc<Batch>)>> {
        if theirs.incarnation != at.incarnation
            || theirs.commits == 0
            || theirs.commits >= at.commits
            || theirs.commits < self.acked
            || self.pending.iter().any(|(c, _)| *c <= at.commits)
        {
            return None;
        }
        let path = self.cfg.store.clone();
        let since = blocking(move || {
            Reader::open(&path)
                .map_err(|e| e.to_string())?
                .journaled_since(theirs.commits)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| tracing::warn!("reading the store's journal for the standby: {e}"))
        .ok()??;
        let ours_there = Position::journaled_at(at.incarnation, theirs.commits, &since);
        let commits: Vec<_> = since
            .commits
            .into_iter()
            .take_while(|r| r.commits <= at.commits)
            .collect();
        if ours_there != theirs || commits.last()?.commits != at.commits {
            return None;
        }
        Some(
            commits
                .into_iter()
                .map(|r| (r.commits, Arc::new(r.batch)))
                .collect(),
        )
    }

    /// Where the local store is, and its epoch.
    async fn local(&self) -> Result<(Position, u64), SessionEnd> {
        let path = self.cfg.store.clone();
        blocking(move || local_position(&path))
            .await
            .map_err(SessionEnd::Local)
    }

    /// One connection: handshake, reseed if needed, ship until it fails.
    async fn session(&mut self, synced: &mut bool) -> SessionEnd {
        match self.session_inner(synced).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(
        &mut self,
        synced: &mut bool,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        let stream = connect(&self.cfg, STANDBY_REPLY_TIMEOUT).await?;
        // A batch the standby acknowledged on an earlier connection may still be committing
        // here: wait for it, or the handshake would see the replica ahead and the snapshot
        // would take from it a commit whose outputs may already be released.
        let waited_since = tokio::time::Instant::now();
        let (at, our_epoch) = loop {
            let (at, epoch) = self.local().await?;
            if at.commits >= self.acked {
                break (at, epoch);
            }
            if waited_since.elapsed() > STANDBY_REPLY_TIMEOUT {
                return Err(SessionEnd::Local(format!(
                    "the store is at commit {}, below commit {} which the standby holds; the \
                     local commit did not finish",
                    at.commits, self.acked
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Every batch of a commit up to `at` was handed over before that commit began: take
        // those still in the channel, so that a replica behind can be caught up from them.
        while let Ok(b) = self.batches.try_recv() {
            self.take(b);
        }
        let Opened {
            mut rd,
            mut wr,
            mut out,
            mut inn,
            theirs: their_at,
        } = hello(&self.cfg, stream, at, our_epoch, STANDBY_REPLY_TIMEOUT).await?;
        let start = if their_at == at {
            tracing::info!(standby = %self.cfg.standby, commits = at.commits, "standby in sync");
            at
        } else if their_at.commits < at.commits
            && self.position_at(their_at.commits, &at) == Some(their_at)
        {
            // Behind by batches that wait here: shipped below, no snapshot.
            tracing::info!(
                standby = %self.cfg.standby,
                replica_commits = their_at.commits,
                commits = at.commits,
                "standby behind: catching up by shipping the {} batches it lacks",
                at.commits - their_at.commits
            );
            their_at
        } else if let Some(journaled) = self.journaled_batches(their_at, at).await {
            // Behind by commits of an earlier life that the store's journal still holds.
            tracing::info!(
                standby = %self.cfg.standby,
                replica_commits = their_at.commits,
                commits = at.commits,
                "standby behind: catching up by shipping the {} batches it lacks, from the \
                 store's journal",
                journaled.len()
            );
            let later = std::mem::take(&mut self.pending);
            self.pending = journaled.into_iter().chain(later).collect();
            their_at
        } else {
            let copied = self.reseed(&mut out, &mut wr, their_at).await?;
            match inn.read_within(&mut rd, STANDBY_REPLY_TIMEOUT).await? {
                Message::State { at: now, .. }
                    if now.commits == copied.commits && now.incarnation == copied.incarnation => {}
                Message::State { at: now, .. } => {
                    return Err(SessionEnd::Protocol(format!(
                        "after a snapshot of commit {} the standby is at commit {} of \
                         incarnation {:x}",
                        copied.commits, now.commits, now.incarnation
                    )))
                }
                Message::Refused { reason } => return Err(SessionEnd::Refused(reason)),
                other => {
                    return Err(SessionEnd::Protocol(format!(
                        "the standby answered a snapshot with {}",
                        other.name()
                    )))
                }
            }
            copied
        };
        *synced = true;
        // The replica is at `start`, this history: its last commit's time is what a later
        // catch-up compares (`position_at`).
        self.acked_now_ms = Some(start.last_commit_ms);
        let start = start.commits;
        self.acked(start);
        let mut next = start + 1;
        // Ship what waits, then whatever comes; read acknowledgements meanwhile. Reads go
        // through a task of their own (a read cut by `select!` would lose bytes).
        let (in_tx, mut in_rx) = mpsc::channel::<Result<Message, WireError>>(16);
        let reader = tokio::spawn(async move {
            loop {
                let got = inn.read(&mut rd).await;
                let failed = got.is_err();
                if in_tx.send(got).await.is_err() || failed {
                    return;
                }
            }
        });
        let _abort_reader = AbortOnDrop(reader);
        let mut waiting_since: Option<tokio::time::Instant> = None;
        loop {
            while let Some((commit_no, batch)) = self
                .pending
                .iter()
                .find(|(c, _)| *c >= next)
                .map(|(c, b)| (*c, Arc::clone(b)))
            {
                if commit_no != next {
                    return Err(SessionEnd::Protocol(format!(
                        "commit {next} was never handed to the shipper (the next is \
                         {commit_no}): reseeding"
                    )));
                }
                out.write(&mut wr, &Message::Ship { commit_no, batch })
                    .await?;
                next += 1;
            }
            if self.pending.is_empty() {
                waiting_since = None;
            } else if waiting_since.is_none() {
                waiting_since = Some(tokio::time::Instant::now());
            }
            let deadline = waiting_since.map(|t| t + STANDBY_REPLY_TIMEOUT);
            tokio::select! {
                got = self.batches.recv() => match got {
                    Some(b) => self.take(b),
                    None => return Err(SessionEnd::Stopped),
                },
                got = in_rx.recv() => match got {
                    Some(Ok(Message::Acked { commit_no })) => {
                        if commit_no >= next || commit_no < self.acked {
                            return Err(SessionEnd::Protocol(format!(
                                "the standby acknowledged commit {commit_no}; shipped up to {}, \
                                 acknowledged up to {}", next - 1, self.acked
                            )));
                        }
                        self.acked(commit_no);
                        waiting_since = None;
                    }
                    Some(Ok(Message::Refused { reason })) => return Err(SessionEnd::Refused(reason)),
                    Some(Ok(other)) => return Err(SessionEnd::Protocol(format!(
                        "the standby sent {} while following", other.name()
                    ))),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(SessionEnd::Protocol("the reader stopped".into())),
                },
                _ = sleep_until_opt(deadline) => {
                    return Err(WireError::Timeout(STANDBY_REPLY_TIMEOUT).into());
                }
            }
        }
    }

    /// Sends a copy of the local store; returns its position.
    async fn reseed(
        &mut self,
        out: &mut Framing,
        wr: &mut (impl AsyncWrite + Unpin),
        theirs: Position,
    ) -> Result<Position, SessionEnd> {
        let src = self.cfg.store.clone();
        let mut name = src.as_os_str().to_owned();
        name.push(format!(".standby-copy-{:016x}", rand::random::<u64>()));
        let tmp = PathBuf::from(name);
        let started = std::time::Instant::now();
        let _remove = RemoveOnDrop(tmp.clone());
        let copied = {
            let tmp = tmp.clone();
            blocking(move || {
                let meta = Reader::open(&src)
                    .map_err(|e| e.to_string())?
                    .copy_into(&tmp)
                    .map_err(|e| e.to_string())?;
                Ok(Position::of(&meta))
            })
            .await
            .map_err(|e| SessionEnd::Local(format!("copying the store for the standby: {e}")))?
        };
        let total = std::fs::metadata(&tmp)
            .map_err(|e| SessionEnd::Local(format!("{}: {e}", tmp.display())))?
            .len();
        tracing::warn!(
            standby = %self.cfg.standby,
            replica_incarnation = format!("{:x}", theirs.incarnation),
            replica_commits = theirs.commits,
            commits = copied.commits,
            bytes = total,
            "reseeding the standby with a copy of the store (its replica is neither at this \
             store's commit nor behind it by only the batches waiting here)"
        );
        let mut offset = 0u64;
        loop {
            let len = (total - offset).min(u64::from(STANDBY_SNAPSHOT_CHUNK_BYTES));
            let bytes = {
                let tmp = tmp.clone();
                blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; len as usize];
                    std::fs::File::open(&tmp)
                        .and_then(|f| f.read_exact_at(&mut buf, offset))
                        .map_err(|e| format!("{}: {e}", tmp.display()))?;
                    Ok(buf)
                })
                .await
                .map_err(SessionEnd::Local)?
            };
            out.write(
                wr,
                &Message::Snapshot {
                    commits: copied.commits,
                    total_bytes: total,
                    offset,
                    bytes,
                },
            )
            .await?;
            offset += len;
            if offset == total {
                break;
            }
        }
        tracing::info!(
            commits = copied.commits,
            bytes = total,
            copy_and_send_ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        );
        Ok(copied)
    }
}

/// Removes a temporary file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs blocking store work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task failed: {e}"))?
}

// ---------------------------------------------------------------------------------------
// The standby's side.

/// What [`serve`] needs.
#[derive(Debug)]
pub struct StandbyConfig {
    /// The process whose store this standby replicates.
    pub process: ProcessId,
    /// The replica store (absent until the first snapshot: nothing is created before).
    pub store: PathBuf,
    /// Where primaries connect.
    pub listener: TcpListener,
    /// The cluster key; `None`: unauthenticated, with a loud warning.
    pub key: Option<ClusterKey>,
    /// Other cluster keys accepted during a key rotation (older or newer; SECURITY.md): a
    /// primary's `Hello` under any of them is answered, and the connection goes on under
    /// the key it came with. Ignored without `key`.
    pub accepted_keys: Vec<ClusterKey>,
    /// The lowest epoch accepted, besides the replica's own (an operator's fence).
    pub min_epoch: u64,
    /// Refuse a primary that does not encrypt (the cluster's `encrypt`; needs `key`). A
    /// primary that encrypts is served either way.
    pub encrypt: bool,
    /// Where `ken status` asks the standby (UDP; `ken standby serve` binds the port of
    /// `listener`): admin requests under the cluster key, answered with a
    /// [`crate::admin::StandbyStatus`] by [`crate::admin::answer_standby`]. `None`: the
    /// standby answers no status.
    pub admin: Option<tokio::net::UdpSocket>,
}

/// Why [`serve`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandbyError {
    /// The replica store does not open (in use, damaged, another process's...).
    #[error("the replica store does not open: {0}")]
    Open(#[from] OpenError),
    /// The replica could not be read.
    #[error("the replica store cannot be read: {0}")]
    Read(#[from] ken_store::ReadError),
    /// A commit to the replica failed: the store is poisoned; restart the standby (the
    /// primary reconnects and reseeds or follows).
    #[error("a commit to the replica failed: {0}; restart the standby")]
    Commit(#[from] ken_store::CommitError),
    /// Installing a snapshot failed after the replica was closed.
    #[error("installing a snapshot failed: {0}; restart the standby (the primary reseeds it)")]
    Install(String),
    /// Accepting connections failed.
    #[error("accepting connections: {0}")]
    Accept(std::io::Error),
}

/// The standby's state.
struct Replica {
    process: ProcessId,
    path: PathBuf,
    store: Option<Store>,
    /// The highest epoch seen: the replica's, the configured floor, every accepted Hello's.
    epoch: u64,
    /// The snapshot being received: its file, commits, total and bytes so far.
    incoming: Option<(std::fs::File, u64, u64, u64)>,
    /// The replica's position, when known without reading the store: set by the handshake
    /// and a snapshot's install, moved on by each batch applied.
    tip: Option<Position>,
    /// The last batches applied, for a restarted primary that lost them ([`take_back`]).
    kept: Kept,
    /// What the status answer counts.
    stats: ReplicaStats,
}

/// The last batches a standby applied in this life, with the replica's position before
/// each, newest last, contiguous: at most [`STANDBY_KEPT_BATCHES`] and about
/// [`STANDBY_KEPT_BYTES_MAX`] bytes. A replica can be ahead of its primary after the
/// primary's crash (a batch shipped, committed here, and lost with the primary's unfinished
/// local commit); the restarted primary takes these back instead of having the replica
/// replaced by a copy of its whole store.
#[derive(Default)]
struct Kept {
    batches: VecDeque<(Position, Arc<Batch>)>,
    bytes: usize,
}

impl Kept {
    fn push(&mut self, before: Position, batch: Arc<Batch>) {
        if self
            .batches
            .back()
            .is_some_and(|(p, b)| p.after(b) != before)
        {
            self.clear();
        }
        self.bytes += approx_bytes(&batch);
        self.batches.push_back((before, batch));
        while self.batches.len() > STANDBY_KEPT_BATCHES
            || (self.bytes > STANDBY_KEPT_BYTES_MAX && self.batches.len() > 1)
        {
            if let Some((_, b)) = self.batches.pop_front() {
                self.bytes -= approx_bytes(&b);
            }
        }
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// The batch that made commit `commit_no`, and the position before it.
    fn get(&self, commit_no: u64) -> Option<(Position, Arc<Batch>)> {
        self.batches
            .iter()
            .find(|(p, _)| p.commits + 1 == commit_no)
            .map(|(p, b)| (*p, Arc::clone(b)))
    }
}

/// About the bytes a batch holds in memory (its variable-length fields, and a fixed guess per
/// row): what bounds [`Kept`].
fn approx_bytes(b: &Batch) -> usize {
    b.root.as_ref().map_or(0, Vec::len)
        + b.table_writes
            .iter()
            .map(|w| w.table.len() + w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
        + b.outbox_appends
            .iter()
            .map(|o| o.peer.len() + o.payload.len())
            .sum::<usize>()
        + 64 * b.rows()
}

/// A standby's counters since it started, for its status answer.
struct ReplicaStats {
    started: std::time::Instant,
    batches_applied: u64,
    last_batch: Option<std::time::Instant>,
    snapshots_installed: u64,
    refused: u64,
    /// The primary connection served now or last.
    primary: Option<std::net::SocketAddr>,
}

impl Replica {
    fn incoming_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".standby-incoming");
        PathBuf::from(name)
    }

    /// The batch that made the replica's commit `commit_no` and the replica's position
    /// before it, from the replica store's batch journal (small batches only): what a
    /// standby restarted since it committed them can still give back ([`take_back`]). `None`
    /// if the journal does not hold it, or on any read error (the primary then reseeds).
    fn journaled(&self, commit_no: u64) -> Option<(Position, Arc<Batch>)> {
        self.store.as_ref()?;
        let after = commit_no.checked_sub(1)?;
        let reader = Reader::open(&self.path).ok()?;
        let meta = reader.meta().ok()?;
        if meta.commits < commit_no {
            return None;
        }
        let since = reader.journaled_since(after).ok()??;
        let before = Position::journaled_at(Position::of(&meta).incarnation, after, &since);
        let first = since.commits.into_iter().next()?;
        (first.commits == commit_no).then(|| (before, Arc::new(first.batch)))
    }

    fn position(&self) -> Result<Position, ken_store::ReadError> {
        match &self.store {
            None => Ok(Position::default()),
            Some(_) => Ok(Position::of(
                &Reader::open(&self.path)
                    .map_err(|e| ken_store::ReadError::Io {
                        detail: e.to_string(),
                    })?
                    .meta()?,
            )),
        }
    }

    /// The status answer (`ken status`); `connected`: a primary's session is being served.
    fn status(&self, connected: bool, authenticated: bool) -> crate::admin::StandbyStatus {
        let at = self.position().unwrap_or_default();
        crate::admin::StandbyStatus {
            id: self.process.to_string(),
            role: "standby".to_string(),
            epoch: self.epoch,
            incarnation: format!("{:016x}", at.incarnation),
            commits: at.commits,
            turns_committed: at.turns_committed,
            primary: self.stats.primary.map(|a| a.to_string()),
            connected,
            batches_applied: self.stats.batches_applied,
            last_batch_age_ms: self
                .stats
                .last_batch
                .map(|t| t.elapsed().as_millis() as u64),
            snapshots_installed: self.stats.snapshots_installed,
            refused: self.stats.refused,
            uptime_ms: self.stats.started.elapsed().as_millis() as u64,
            authenticated,
        }
    }

    fn open(&mut self) -> Result<(), StandbyError> {
        self.tip = None;
        self.kept.clear();
        let (store, _) =
            Store::open_with(&self.path, self.process.as_str(), &StoreOptions::default())?;
        self.epoch = self.epoch.max(store_epoch(&store)?);
        self.store = Some(store);
        Ok(())
    }
}

/// A primary's connection being served.
struct Session {
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: Framing,
    from: std::net::SocketAddr,
    incoming: mpsc::Receiver<Result<Message, WireError>>,
    /// The primary asked for batches back ([`take_back`]): it closes the connection next.
    fetched: bool,
    _reader: AbortOnDrop,
}

/// The standby process: owns the replica store at `cfg.store` (creates nothing until the
/// first snapshot: an absent store is fine), listens, serves one primary connection at a
/// time (a new connection whose `Hello` is accepted replaces the current one), forever.
/// Returns only on an error of the replica store (a failed commit is never retried).
pub async fn serve(cfg: StandbyConfig) -> Result<(), StandbyError> {
    if cfg.key.is_none() {
        no_key_warning("standby");
    }
    let mut replica = Replica {
        process: cfg.process.clone(),
        path: cfg.store.clone(),
        store: None,
        epoch: cfg.min_epoch,
        incoming: None,
        tip: None,
        kept: Kept::default(),
        stats: ReplicaStats {
            started: std::time::Instant::now(),
            batches_applied: 0,
            last_batch: None,
            snapshots_installed: 0,
            refused: 0,
            primary: None,
        },
    };
    // A snapshot cut short by a crash is never resumed: its file goes.
    let _ = std::fs::remove_file(replica.incoming_path());
    if replica.path.exists() {
        replica.open()?;
    }
    let at = replica.position()?;
    tracing::info!(
        process = %cfg.process,
        store = %cfg.store.display(),
        listen = ?cfg.listener.local_addr().ok(),
        commits = at.commits,
        epoch = replica.epoch,
        "standby serving"
    );
    // The keys a primary's `Hello` may come under: the cluster key first, then those accepted
    // during a rotation (none without a cluster key).
    let bases: Vec<StandbyKey> = match &cfg.key {
        Some(k) => std::iter::once(k)
            .chain(&cfg.accepted_keys)
            .map(ClusterKey::standby_key)
            .collect(),
        None => Vec::new(),
    };
    let admin_keys = match &cfg.key {
        Some(k) => match ken_transport::Keyring::new(k, &cfg.accepted_keys, false) {
            Ok(keys) => Some(keys),
            Err(e) => {
                tracing::warn!("the standby answers no status: its key: {e}");
                None
            }
        },
        None => None,
    };
    let admin = match (&cfg.key, admin_keys) {
        (Some(_), None) => None,
        (_, keys) => cfg.admin.as_ref().map(|socket| (socket, keys)),
    };
    let mut admin_buf = vec![0u8; ken_transport::frame::MAX_FRAME_BYTES + 1];
    let mut current: Option<Session> = None;
    loop {
        tokio::select! {
            got = recv_admin(admin.as_ref().map(|(s, _)| *s), &mut admin_buf) => {
                let Some((socket, keys)) = &admin else { continue };
                let Ok((n, from)) = got else { continue };
                let connected = current.is_some();
                let authenticated = keys.is_some();
                let reply = crate::admin::answer_standby(
                    &admin_buf[..n],
                    keys.as_ref(),
                    &replica.process,
                    || replica.status(connected, authenticated),
                );
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
            accepted = cfg.listener.accept() => {
                let (stream, from) = accepted.map_err(StandbyError::Accept)?;
                if let Some(s) = handshake(&mut replica, &bases, cfg.encrypt, stream, from).await? {
                    replica.stats.primary = Some(from);
                    if let Some(old) = current.replace(s) {
                        tracing::warn!(old = %old.from, new = %from, "a new primary connection replaces the current one");
                    }
                    replica.incoming = None;
                }
            }
            got = next_message(&mut current) => {
                let s = current.as_mut().expect("a message comes from a session");
                let result = match got {
                    Some(Ok(msg)) => handle(&mut replica, s, msg).await,
                    Some(Err(WireError::Io(_))) | None if s.fetched => {
                        tracing::info!(primary = %s.from, "the restarted primary asked for its batches back and closed");
                        current = None;
                        continue;
                    }
                    Some(Err(e)) => Err(Refusal::Protocol(e.to_string())),
                    None => Err(Refusal::Protocol("connection closed".into())),
                };
                match result {
                    Ok(()) => {}
                    Err(reason) => {
                        tracing::warn!(primary = %s.from, "closing the primary's connection: {reason}");
                        let _ = s.out.write(&mut s.wr, &Message::Refused { reason }).await;
                        current = None;
                        replica.incoming = None;
                    }
                }
                // A failed commit or install leaves the replica unusable: stop.
                if let Some(e) = replica_failure(&mut replica) {
                    return Err(e);
                }
            }
        }
    }
}

/// Set by `handle` when the replica store failed (the error is returned by `serve`).
fn replica_failure(replica: &mut Replica) -> Option<StandbyError> {
    if replica.store.as_ref().is_some_and(Store::is_poisoned) {
        return Some(StandbyError::Commit(ken_store::CommitError::Poisoned));
    }
    None
}

/// The next datagram on the admin socket (never, without one).
async fn recv_admin(
    socket: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_message(current: &mut Option<Session>) -> Option<Result<Message, WireError>> {
    match current {
        Some(s) => s.incoming.recv().await,
        None => std::future::pending().await,
    }
}

/// The first message of a connection, read within `timeout` and checked under the first of
/// `bases` it authenticates with (any key accepted during a rotation; without a key, `bases`
/// is empty and the message is only checksummed). Returns it with the framing that read it
/// (under that key, past the message), which carries the connection on; a message under
/// none of them is [`WireError::BadTag`].
async fn read_hello(
    rd: &mut (impl AsyncRead + Unpin),
    bases: &[StandbyKey],
    timeout: Duration,
) -> Result<(Message, Framing), WireError> {
    let mut framing = Framing::new(bases.first().cloned(), false);
    let frame = match tokio::time::timeout(timeout, framing.read_frame(rd)).await {
        Ok(frame) => frame?,
        Err(_) => return Err(WireError::Timeout(timeout)),
    };
    let mut got = framing.decode(frame.clone());
    for base in bases.iter().skip(1) {
        if !matches!(got, Err(WireError::BadTag)) {
            break;
        }
        framing = Framing::new(Some(base.clone()), false);
        got = framing.decode(frame.clone());
    }
    got.map(|m| (m, framing))
}

/// Reads and judges a new connection's `Hello`; answers `State` (and returns the session)
/// or `Refused`. Connection errors only drop the connection.
async fn handshake(
    replica: &mut Replica,
    bases: &[StandbyKey],
    require_encryption: bool,
    stream: TcpStream,
    from: std::net::SocketAddr,
) -> Result<Option<Session>, StandbyError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let hello = read_hello(&mut rd, bases, STANDBY_REPLY_TIMEOUT).await;
    // The answer goes under the key the Hello came with (a refused one: the cluster key).
    let base = match &hello {
        Ok((_, inn)) => inn.key.clone(),
        Err(_) => bases.first().cloned(),
    };
    let mut out = Framing::new(base.clone(), false);
    let base = base.as_ref();
    let (hello, mut inn) = match hello {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(%from, "refused a connection: its Hello: {e}");
            if matches!(
                e,
                WireError::BadTag
                    | WireError::BadChecksum
                    | WireError::Decode(_)
                    | WireError::TooShort(_)
                    | WireError::Version(_)
            ) {
                let reason =
                    Refusal::Protocol(format!("the standby could not accept your Hello: {e}"));
                let _ = out.write(&mut wr, &Message::Refused { reason }).await;
            }
            return Ok(None);
        }
    };
    let at = replica.position()?;
    let refusal = match &hello {
        Message::Hello { process, .. } if process != replica.process.as_str() => {
            Some(Refusal::WrongProcess {
                standby: replica.process.to_string(),
                primary: process.clone(),
            })
        }
        Message::Hello { epoch, .. } if *epoch < replica.epoch => Some(Refusal::Fenced {
            standby_epoch: replica.epoch,
            primary_epoch: *epoch,
        }),
        Message::Hello { encrypt: false, .. } if require_encryption => Some(Refusal::Protocol(
            "this standby requires encryption (the cluster's `encrypt` setting) and the \
                 primary ships in clear: give both the same cluster settings"
                .into(),
        )),
        Message::Hello { encrypt: true, .. } if base.is_none() => Some(Refusal::Protocol(
            "the primary encrypts but this standby has no cluster key: give both the same key \
             file"
                .into(),
        )),
        Message::Hello { at: theirs, .. }
            if at.incarnation != 0 && theirs.incarnation != at.incarnation =>
        {
            Some(Refusal::OtherIncarnation {
                replica_incarnation: at.incarnation,
                replica_commits: at.commits,
                primary_incarnation: theirs.incarnation,
                primary_commits: theirs.commits,
            })
        }
        Message::Hello { .. } => None,
        other => Some(Refusal::Protocol(format!(
            "the first message was {}, not Hello",
            other.name()
        ))),
    };
    if let Some(reason) = refusal {
        replica.stats.refused += 1;
        if matches!(reason, Refusal::OtherIncarnation { .. }) {
            tracing::error!(%from, "REFUSED a primary: {reason}");
        } else {
            tracing::warn!(%from, "refused a primary: {reason}");
        }
        let _ = out.write(&mut wr, &Message::Refused { reason }).await;
        return Ok(None);
    }
    let Message::Hello {
        epoch,
        nonce: their_nonce,
        at: theirs,
        encrypt,
        ..
    } = hello
    else {
        unreachable!("judged above")
    };
    replica.epoch = replica.epoch.max(epoch);
    let our_nonce = nonce();
    replica.tip = Some(at);
    if let Err(e) = out
        .write(
            &mut wr,
            &Message::State {
                epoch: replica.epoch,
                at,
                nonce: our_nonce,
            },
        )
        .await
    {
        tracing::warn!(%from, "connection dropped during the handshake: {e}");
        return Ok(None);
    }
    tracing::info!(
        %from,
        epoch,
        primary_commits = theirs.commits,
        replica_commits = at.commits,
        in_sync = theirs == at,
        "primary connected"
    );
    if let Some(base) = base {
        let session = base.session(&their_nonce, &our_nonce);
        out.start_session(session.clone(), encrypt);
        inn.start_session(session, encrypt);
    }
    let (tx, rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        loop {
            let got = inn.read(&mut rd).await;
            let failed = got.is_err();
            if tx.send(got).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Some(Session {
        wr,
        out,
        from,
        incoming: rx,
        fetched: false,
        _reader: AbortOnDrop(reader),
    }))
}

/// Applies one message of the current session. `Err`: refuse and close.
async fn handle(replica: &mut Replica, s: &mut Session, msg: Message) -> Result<(), Refusal> {
    match msg {
        Message::Ship { commit_no, batch } => {
            let Some(store) = replica.store.as_mut() else {
                return Err(Refusal::OutOfOrder {
                    expected: 1,
                    got: commit_no,
                });
            };
            let expected = store.commits() + 1;
            if commit_no != expected {
                return Err(Refusal::OutOfOrder {
                    expected,
                    got: commit_no,
                });
            }
            if let Err(problem) = batch.check() {
                return Err(Refusal::BadBatch { commit_no, problem });
            }
            let before = replica.tip.take().filter(|t| t.commits + 1 == commit_no);
            // Committed here, on the serving loop's thread: the loop handles one message
            // at a time anyway (the next waits in the socket), and a hand-off to a blocking
            // thread and back costs two wake-ups on every commit the primary waits for.
            match store.commit(&batch) {
                Ok(info) => {
                    debug_assert_eq!(info.commits, commit_no);
                    match before.map(|b| (b, b.after(&batch))) {
                        Some((before, after)) if after.turns_committed == info.turns_committed => {
                            replica.tip = Some(after);
                            replica.kept.push(before, Arc::clone(&batch));
                        }
                        _ => replica.kept.clear(),
                    }
                    replica.stats.batches_applied += 1;
                    replica.stats.last_batch = Some(std::time::Instant::now());
                    s.out
                        .write(&mut s.wr, &Message::Acked { commit_no })
                        .await
                        .map_err(|e| Refusal::Protocol(e.to_string()))
                }
                Err(e) => {
                    tracing::error!("commit {commit_no} to the replica failed: {e}");
                    Err(Refusal::Protocol(format!(
                        "the standby's commit failed: {e}"
                    )))
                }
            }
        }
        Message::Snapshot {
            commits,
            total_bytes,
            offset,
            bytes,
        } => {
            let path = replica.incoming_path();
            if offset == 0 {
                let file = std::fs::File::create(&path)
                    .map_err(|e| Refusal::BadSnapshot(format!("{}: {e}", path.display())))?;
                replica.incoming = Some((file, commits, total_bytes, 0));
            }
            let Some((file, c, total, got)) = replica.incoming.as_mut() else {
                return Err(Refusal::BadSnapshot(format!(
                    "a chunk at offset {offset} without the chunk at offset 0"
                )));
            };
            if (*c, *total, *got) != (commits, total_bytes, offset)
                || offset + bytes.len() as u64 > total_bytes
            {
                return Err(Refusal::BadSnapshot(format!(
                    "chunk of commit {commits} at offset {offset} ({} bytes of {total_bytes}) \
                     does not follow the {got} bytes of commit {c} received",
                    bytes.len()
                )));
            }
            use std::io::Write;
            file.write_all(&bytes)
                .map_err(|e| Refusal::BadSnapshot(format!("{}: {e}", path.display())))?;
            *got += bytes.len() as u64;
            if *got < *total {
                return Ok(());
            }
            let (file, _, _, _) = replica.incoming.take().expect("checked above");
            drop(file);
            install(replica, &path, commits)?;
            let at = replica
                .position()
                .map_err(|e| Refusal::BadSnapshot(e.to_string()))?;
            replica.tip = Some(at);
            s.out
                .write(
                    &mut s.wr,
                    &Message::State {
                        epoch: replica.epoch,
                        at,
                        nonce: [0; 16],
                    },
                )
                .await
                .map_err(|e| Refusal::Protocol(e.to_string()))
        }
        Message::Fetch { commit_no } => {
            s.fetched = true;
            let (before, batch, from) = match replica.kept.get(commit_no) {
                Some((before, batch)) => (Some(before), Some(batch), "memory"),
                None => match replica.journaled(commit_no) {
                    Some((before, batch)) => (Some(before), Some(batch), "journal"),
                    None => (None, None, "nowhere"),
                },
            };
            tracing::info!(
                primary = %s.from,
                commit_no,
                kept = batch.is_some(),
                from,
                "the restarted primary asks for a batch back"
            );
            s.out
                .write(&mut s.wr, &Message::Fetched { before, batch })
                .await
                .map_err(|e| Refusal::Protocol(e.to_string()))
        }
        other => Err(Refusal::Protocol(format!(
            "a primary sent {} after the handshake",
            other.name()
        ))),
    }
}

/// Checks the received copy and puts it in place of the replica.
fn install(replica: &mut Replica, copy: &Path, commits: u64) -> Result<(), Refusal> {
    let checked = (|| {
        let reader = Reader::open(copy).map_err(|e| e.to_string())?;
        let meta = reader.meta().map_err(|e| e.to_string())?;
        if meta.process_id != replica.process.as_str() || meta.commits != commits {
            return Err(format!(
                "the copy is process `{}` at commit {}, announced `{}` at commit {commits}",
                meta.process_id, meta.commits, replica.process
            ));
        }
        let problems = reader.verify().map_err(|e| e.to_string())?;
        if let Some(p) = problems.first() {
            return Err(format!("the copy does not verify: {p:?}"));
        }
        Ok(())
    })();
    if let Err(e) = checked {
        let _ = std::fs::remove_file(copy);
        return Err(Refusal::BadSnapshot(e));
    }
    // Close the replica (its lock too), put the copy in its place, reopen.
    replica.store = None;
    let installed = ken_store::install_copy(&replica.path, copy)
        .map_err(|e| e.to_string())
        .and_then(|_| replica.open().map_err(|e| e.to_string()));
    match installed {
        Ok(()) => {
            replica.stats.snapshots_installed += 1;
            tracing::info!(commits, epoch = replica.epoch, "snapshot installed");
            Ok(())
        }
        Err(e) => {
            tracing::error!("installing the snapshot failed: {e}");
            Err(Refusal::BadSnapshot(format!("install failed: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Ship without a key whose batch has one value byte altered on the way: version 2
    /// refuses it (its CRC32), while the same bytes without the check (wire version 1, the
    /// negative control) decode as a valid batch with another value, which a standby would
    /// have committed.
    #[test]
    fn an_altered_value_without_a_key_fails_the_checksum_and_decodes_silently_without_it() {
        let batch = Batch {
            now_ms: 1,
            turns: 1,
            table_writes: vec![ken_store::TableWrite {
                table: "t".into(),
                key: b"k".to_vec(),
                value: Some(b"balance=100".to_vec()),
            }],
            ..Batch::default()
        };
        let sent = Message::Ship {
            commit_no: 7,
            batch: Arc::new(batch),
        };
        let mut frame = Framing::new(None, true).encode(&sent).unwrap();
        let at = frame
            .windows(3)
            .position(|w| w == b"100")
            .expect("the value is in the frame");
        frame[at] = b'9';
        let message = frame.split_off(4);
        let refused = Framing::new(None, false).decode(message.clone());
        assert!(
            matches!(refused, Err(WireError::BadChecksum)),
            "{refused:?}"
        );
        // The control: the body alone, as wire version 1 read it, decodes to another batch.
        let body = &message[1..message.len() - CRC_BYTES];
        let (got, _): (Message, usize) =
            bincode::serde::decode_from_slice(body, bincode::config::standard()).unwrap();
        let Message::Ship { batch, .. } = &got else {
            panic!("not a Ship: {got:?}")
        };
        assert_eq!(
            batch.table_writes[0].value.as_deref(),
            Some(&b"balance=900"[..])
        );
        assert_ne!(got, sent);
    }
}
