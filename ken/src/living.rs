//! The runtime's records of inputs it could not run: dead letters and poison inputs, kept
//! in application tables of the store whose names start with [`RESERVED_TABLE_PREFIX`]
//! (handlers cannot open them), and the held inputs of a process.
//!
//! - A **dead letter** is a peer message of a schema version this process knows that does
//!   not decode (as the current `Message`, or through [`crate::Handler::upgrade_message`]).
//!   It is consumed and acknowledged like any message, and recorded whole in
//!   [`DEAD_LETTERS_TABLE`] with the error: never silently dropped.
//! - A **poison input** is one whose turn panicked. The turn is discarded (its effects never
//!   applied, the state restored), the input is recorded in [`POISON_TABLE`] with the panic
//!   message, and its source is *held* for the rest of the process's life: a peer's
//!   messages are neither consumed nor acknowledged (the sender retransmits them), a timer
//!   stays set but does not fire; a client request is answered `Panicked` and not applied.
//!   A restart (typically with a fixed binary) runs the held input again; or an operator
//!   moves a poison message to the dead letters offline ([`poison_dead_letter`]).
//! - A message of a **newer schema version** than the process knows holds its pair the same
//!   way (nothing recorded: it is a deployment still in progress, not an error).
//!
//! Records are written with the batch of the turn that found them, so they are exactly as
//! durable as the turns around them. Keys sort by source then sequence.

use serde::{Deserialize, Serialize};

use crate::{ProcessId, Time};

/// Application tables whose name starts with this belong to the runtime.
pub const RESERVED_TABLE_PREFIX: &str = "ken.";

/// Dead letters: key [`dead_letter_key`], value [`DeadLetter`].
pub const DEAD_LETTERS_TABLE: &str = "ken.dead_letters";

/// Dead letters an operator queued for replay ([`dead_letter_action`]): same key and value
/// as [`DEAD_LETTERS_TABLE`]. The next start of the process decodes each (through
/// [`crate::Handler::upgrade_message`] if older) and runs it as a message turn, deleting the
/// row in the same batch; one that still does not decode goes back to the dead letters.
pub const REPLAY_TABLE: &str = "ken.replay";

/// Poison messages an operator moved to the dead letters ([`poison_dead_letter`]): key
/// [`dead_letter_key`], value [`PoisonSkip`]. When the process next has that message to
/// deliver (its pair's next one), it consumes it without running it: acknowledged, recorded
/// in [`DEAD_LETTERS_TABLE`] with the panic's message as its error, and the row deleted, in
/// one batch (turn-log kind `dead_letter`, note `operator: ...`). A row whose message was
/// consumed already (a fixed binary ran it first) is deleted at start.
pub const SKIP_POISON_TABLE: &str = "ken.skip_poison";

/// A [`SKIP_POISON_TABLE`] row: why the message is to be dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonSkip {
    /// The error its dead letter records (the panic's message).
    pub error: String,
    pub at_ms: u64,
}

/// Operator admissions of a replaced peer (`ken admit`): key the peer's id, value an
/// encoded [`Admission`]. The engine admits the next new incarnation of that peer it hears
/// and deletes the row in the same batch.
pub const ADMIT_TABLE: &str = "ken.admit";

/// Why an [`ADMIT_TABLE`] row was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// Free text: who or what admitted (for example `ken admit`).
    pub by: String,
    pub at_ms: u64,
}

/// Peer pairs held because their next message is of a newer schema version than the
/// process's own: key the peer's id, value [`HeldPair`]. Written with the next batch when a
/// hold starts (a binary that holds the same message again after a restart keeps the row and
/// its `since_ms`), deleted in the batch that consumes that message (a binary that reads it
/// ran it, or it was dead-lettered) or withdraws it (the peer forgot this process or was
/// replaced). It is a record for operators (`ken inspect STORE peers` shows it on a live or
/// dead store); the engine decides holds from the message itself, never from this table.
/// Poison holds need no row of their own: a [`POISON_TABLE`] row whose message is not yet
/// delivered is one.
pub const HELD_TABLE: &str = "ken.held";

/// A [`HELD_TABLE`] row: the held message and the versions on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPair {
    /// The held message's sequence number (the pair's next to deliver).
    pub seq: u64,
    /// The message's schema version.
    pub version: u32,
    /// The schema version of the binary that held it (the newest that held it, if several).
    pub known: u32,
    /// When the hold of this message started, first seen (ms since the Unix epoch).
    pub since_ms: u64,
}

/// Poison inputs: key [`poison_key`], value [`Poison`].
pub const POISON_TABLE: &str = "ken.poison";

/// A peer message of a known schema version that did not decode (durable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub peer: String,
    pub seq: u64,
    /// The sender's schema version (0 if the payload was shorter than its envelope).
    pub version: u32,
    pub error: String,
    /// The message bytes (without the envelope).
    pub bytes: Vec<u8>,
    pub at_ms: u64,
}

/// `peer` then 0 then `seq` big-endian: a peer's dead letters in order.
pub fn dead_letter_key(peer: &str, seq: u64) -> Vec<u8> {
    let mut key = peer.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// An input whose turn panicked (durable; one row per panic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poison {
    /// `message`, `request` or `timer`.
    pub kind: String,
    /// The peer, the client or the timer's name.
    pub source: String,
    /// The message's sequence number or the request's number (0 for a timer).
    pub seq: u64,
    /// The panic's message.
    pub message: String,
    pub at_ms: u64,
}

/// `kind` 0 `source` 0 `seq` BE, then the time BE (a panic after a restart is a row of its
/// own).
pub fn poison_key(p: &Poison) -> Vec<u8> {
    let mut key = p.kind.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(p.source.as_bytes());
    key.push(0);
    key.extend_from_slice(&p.seq.to_be_bytes());
    key.extend_from_slice(&p.at_ms.to_be_bytes());
    key
}

/// Why an input is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldReason {
    /// The message's schema version is newer than this process's.
    NewerVersion { version: u32 },
    /// Its turn panicked.
    Panicked { message: String },
}

/// A source whose inputs are held in this process's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldSource {
    /// A peer pair: message `seq` and everything after it wait.
    Peer { peer: ProcessId, seq: u64 },
    /// A timer.
    Timer { name: String },
    /// A client request (answered `Panicked` on every retry).
    Request {
        client: crate::ClientId,
        request_no: u64,
    },
}

/// One held source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub source: HeldSource,
    pub reason: HeldReason,
    pub since: Time,
}

/// The message of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// What an operator does with one dead letter ([`dead_letter_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterAction {
    /// Queue it for delivery by the next start of the process (normally a fixed binary):
    /// moved to [`REPLAY_TABLE`].
    Replay,
    /// Delete it for good.
    Discard,
}

/// Replays or discards dead letter (`peer`, `seq`) of the store at `path`, on the record:
/// one commit holding the table change and a turn-log entry (kind `dead_letter_replay` or
/// `dead_letter_discard`, note naming the operator action). The store is opened as its
/// owner, so this is refused while a process runs on it (its owner lock is held): stop the
/// process first; the replay runs when it starts again. Returns a one-line account of what
/// was done, or a one-line error (nothing written).
pub fn dead_letter_action(
    path: &std::path::Path,
    peer: &str,
    seq: u64,
    action: DeadLetterAction,
) -> Result<String, String> {
    let (mut store, recovered) = open_stopped(path).map_err(|e| e.to_string())?;
    let key = dead_letter_key(peer, seq);
    let Some(value) = store
        .table_get(DEAD_LETTERS_TABLE, &key)
        .map_err(|e| format!("reading {DEAD_LETTERS_TABLE}: {e}"))?
    else {
        return Err(format!(
            "{}: no dead letter from `{peer}` with sequence number {seq} (list them with `ken inspect {} dead-letters`)",
            path.display(),
            path.display()
        ));
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut writes = vec![ken_store::TableWrite {
        table: DEAD_LETTERS_TABLE.to_string(),
        key: key.clone(),
        value: None,
    }];
    let (kind, done) = match action {
        DeadLetterAction::Replay => {
            writes.push(ken_store::TableWrite {
                table: REPLAY_TABLE.to_string(),
                key,
                value: Some(value),
            });
            (
                "dead_letter_replay",
                "queued for replay at the process's next start",
            )
        }
        DeadLetterAction::Discard => ("dead_letter_discard", "discarded"),
    };
    let batch = ken_store::Batch {
        now_ms,
        turns: 1,
        table_writes: writes,
        turn_log: vec![ken_store::TurnLogEntry {
            turn: recovered.turns_committed + 1,
            at_ms: now_ms,
            input_kind: kind.to_string(),
            input_source: peer.to_string(),
            input_seq: seq,
            messages_out: 0,
            outputs: 0,
            bytes_written: 0,
            note: format!("operator: dead letter {done}"),
        }],
        ..Default::default()
    };
    store
        .commit(&batch)
        .map_err(|e| format!("{}: commit: {e}", path.display()))?;
    Ok(format!(
        "{}: dead letter from `{peer}` seq {seq} {done} (turn {})",
        path.display(),
        recovered.turns_committed + 1
    ))
}

/// Moves poison message (`peer`, `seq`) of the store at `path` to the dead letters, on the
/// record: the message whose turn panicked (a `message` row of [`POISON_TABLE`]) is marked
/// in [`SKIP_POISON_TABLE`], with a turn-log entry (kind `poison_dead_letter`), in one
/// commit. At its next start the process consumes the message as a dead letter instead of
/// running it (see [`SKIP_POISON_TABLE`]), so the pair flows again even on the same
/// binary; the letter can later be replayed ([`dead_letter_action`]). Refused while the
/// process runs (its owner lock is held), for a message that is not poison, and for one
/// consumed already. Returns a one-line account, or a one-line error (nothing written).
pub fn poison_dead_letter(path: &std::path::Path, peer: &str, seq: u64) -> Result<String, String> {
    let shown = path.display();
    // The owner lock first: everything read below cannot change until the commit.
    let (mut store, recovered) = open_stopped(path).map_err(|e| e.to_string())?;
    let reader = ken_store::Reader::open(path).map_err(|e| e.to_string())?;
    let mut prefix = b"message".to_vec();
    prefix.push(0);
    prefix.extend_from_slice(peer.as_bytes());
    prefix.push(0);
    prefix.extend_from_slice(&seq.to_be_bytes());
    let rows = reader
        .table_scan(POISON_TABLE, &prefix, None, ken_store::MAX_SCAN_ROWS)
        .map_err(|e| format!("{shown}: reading {POISON_TABLE}: {e}"))?;
    // Keys end with the time: the last row is the latest panic.
    let Some((_, value)) = rows.last() else {
        return Err(format!(
            "{shown}: no poison message from `{peer}` with sequence number {seq} (list them with `ken inspect {shown} poison`)"
        ));
    };
    let poison: Poison = ken_store::codec::decode(value)
        .map_err(|e| format!("{shown}: a {POISON_TABLE} row does not decode: {e}"))?;
    let delivered = recovered
        .peers
        .iter()
        .find(|r| r.peer == peer)
        .map_or(0, |r| r.delivered);
    if delivered >= seq {
        return Err(format!(
            "{shown}: message {seq} from `{peer}` was consumed already (delivered up to {delivered}): nothing to move"
        ));
    }
    let key = dead_letter_key(peer, seq);
    if reader
        .table_get(SKIP_POISON_TABLE, &key)
        .map_err(|e| format!("{shown}: reading {SKIP_POISON_TABLE}: {e}"))?
        .is_some()
    {
        return Err(format!(
            "{shown}: message {seq} from `{peer}` is already to be dead-lettered at the process's next start"
        ));
    }
    drop(reader);
    let now_ms = Time::now_wall().as_millis();
    let turn = recovered.turns_committed + 1;
    let batch = ken_store::Batch {
        now_ms,
        turns: 1,
        table_writes: vec![ken_store::TableWrite {
            table: SKIP_POISON_TABLE.to_string(),
            key,
            value: Some(ken_store::codec::encode(&PoisonSkip {
                error: poison.message.clone(),
                at_ms: now_ms,
            })),
        }],
        turn_log: vec![ken_store::TurnLogEntry {
            turn,
            at_ms: now_ms,
            input_kind: "poison_dead_letter".to_string(),
            input_source: peer.to_string(),
            input_seq: seq,
            messages_out: 0,
            outputs: 0,
            bytes_written: 0,
            note: "operator: poison message to be dead-lettered at the process's next start"
                .to_string(),
        }],
        ..Default::default()
    };
    store
        .commit(&batch)
        .map_err(|e| format!("{shown}: commit: {e}"))?;
    Ok(format!(
        "{shown}: poison message from `{peer}` seq {seq} (panicked: {}) will be dead-lettered at the process's next start (turn {turn})",
        poison.message
    ))
}

/// Why [`admit_offline`] wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// The store could not be opened (in use by its running process, damaged, absent...).
    #[error("{0}")]
    Open(#[from] ken_store::OpenError),
    /// The store could not be read.
    #[error("{0}")]
    Read(#[from] ken_store::ReadError),
    /// The peer is not one this store has ever exchanged messages with.
    #[error(
        "{store} (process {process}) has no peer `{peer}`; its peers are: {known}; check the \
         store and the peer's id"
    )]
    UnknownPeer {
        store: String,
        process: String,
        peer: String,
        known: String,
    },
    /// The commit failed (nothing was written).
    #[error("{0}")]
    Commit(#[from] ken_store::CommitError),
}

/// Records, in the store at `path`, that an operator admits the next new incarnation of
/// `peer` (a replacement with a fresh store: its old incarnation is gone). The process that
/// owns the store must be stopped (its owner lock is taken; a running owner makes this
/// `OpenError::InUse`, and nothing is written). When the process runs again and hears the
/// new incarnation, it admits it as a fresh peer and deletes the row in the same batch
/// (turn-log entry `admit`). Returns the incarnation the store knew for the peer.
pub fn admit_offline(
    path: &std::path::Path,
    peer: &ProcessId,
    by: &str,
) -> Result<u64, AdmitError> {
    let (mut store, recovered) = open_stopped(path)?;
    let process = recovered.process_id.clone();
    let Some(row) = recovered.peers.iter().find(|r| r.peer == peer.as_str()) else {
        return Err(AdmitError::UnknownPeer {
            store: path.display().to_string(),
            process,
            peer: peer.to_string(),
            known: recovered
                .peers
                .iter()
                .map(|r| r.peer.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let known = row.incarnation;
    let now_ms = Time::now_wall().as_millis();
    store.commit(&ken_store::Batch {
        now_ms,
        table_writes: vec![ken_store::TableWrite {
            table: ADMIT_TABLE.to_string(),
            key: peer.as_str().as_bytes().to_vec(),
            value: Some(ken_store::codec::encode(&Admission {
                by: by.to_string(),
                at_ms: now_ms,
            })),
        }],
        ..ken_store::Batch::default()
    })?;
    Ok(known)
}

/// Opens the store at `path` as its owner for an operator command (`ken admit`, `ken
/// dead-letters`, `ken poison`), whatever its process id: refused with
/// `OpenError::InUse` while its process runs.
fn open_stopped(
    path: &std::path::Path,
) -> Result<(ken_store::Store, ken_store::Recovered), AdmitError> {
    let process = ken_store::Reader::open(path)?.meta()?.process_id;
    Ok(ken_store::Store::open(path, &process)?)
}
