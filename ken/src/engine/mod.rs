//! The Ken protocol as a state machine with no I/O.
//!
//! Events in: [`Engine::start`], [`Engine::handle_frame`], [`Engine::tick`] (time passed:
//! timers and retransmissions), [`Engine::commit_done`]. Commands out
//! ([`Engine::take_commands`]): [`Command::Commit`] a batch, [`Command::Send`] a frame,
//! [`Command::Emit`] a line of output, [`Command::StartTask`] (whose result comes back
//! through [`Engine::task_finished`]), [`Command::Finished`], [`Command::Fatal`]. The
//! engine never reads a clock, a socket or a file: time comes with every event, randomness
//! from a seed, committed table rows through a [`tables::TableSource`]. A test
//! (`engine_is_sans_io`) greps this module for forbidden imports.
//!
//! Pipelined group commit: turns run into the *filling* batch; when no batch is
//! *committing*, the filling batch is sealed and handed out as [`Command::Commit`] at once
//! (an isolated turn is committed immediately). While it commits, turns keep running into the
//! next batch. Only [`Engine::commit_done`] releases a batch's outputs: its messages become
//! transmittable, the inputs it consumed are acknowledged, its emitted lines are released.
//!
//! FUSE is a machine of its own ([`fuse::Fuse`], `fuse/`), composed here as foca composes
//! its members and probe: the engine hands it a turn's group effects, FUSE frames, time and
//! each seal and commit; it turns the machine's outputs into frames (to the peer's known
//! incarnation, `after` the newest durable batch), runs a notification turn per failed
//! group it hands out, and commits a batch whenever the machine reports group changes.
//!
//! Tasks ([`crate::task`]) are a machine of their own too ([`tasks::Tasks`]): the engine
//! records a turn's tasks in `ken.tasks` with its batch, hands out [`Command::StartTask`]
//! only once that batch is durable (within `Tuning::task_running_max`), runs one
//! [`Input::TaskDone`] turn per successful result (deleting the row in the same batch),
//! writes a failure into the row and retries after a backoff, and starts every row again at
//! [`Engine::start`].
//!
//! Security ([`Security`], set by the host with [`Engine::with_security`]): the engine holds
//! no key; the host opens every datagram (checking its tag) before it hands the frame in and
//! seals every frame the engine hands out as its [`Frame::auth`] says. With
//! `authenticated`, the engine accepts only peer frames the cluster key vouched for (so a
//! first contact, an ack or a FUSE message cannot be forged), only client requests with a
//! credential, and FUSE liveness only from fresh stamps. Either way it drops and counts
//! request and sequence numbers the store cannot hold, applies a request only if it was
//! first sent within the client retry window, evicts idle clients from a full reply cache
//! least recently used first, and caps replies to requests without a credential.
//!
//! Invariants (asserted here, checked again by the driver and the simulation):
//! - Output commit: a data frame carries a message only if the batch that created it is
//!   durable; an acknowledgement never exceeds what durable turns consumed; FUSE messages
//!   leave only once the group states they speak of are durable (the machine holds them
//!   until [`fuse::Fuse::durable`]).
//! - At most one batch commits at a time; batch ids are consecutive.
//! - Per peer: see `peer.rs`; per FUSE peer: see `fuse/liveness.rs`.
//! - History is never silently lost: a data or ack frame whose view of the pair (`ack`,
//!   `acked`) is ahead of this store proves the store rolled back; the engine sends the peer
//!   a `Reject` from its unchanged incarnation and stops ([`EngineError::RolledBack`]). A
//!   restarted engine (a store it did not create) probes every peer (an `Ack` with `seq`
//!   [`PROBE_SEQ`]) until it has checked a frame from it, so a quiet pair is checked too.
//!
//! Replaced peers. A frame from a new incarnation of a known peer means the old incarnation's
//! store is gone (a destroyed disk, a node replaced): a permanent failure. The first such
//! frame of a life fails every FUSE group shared with the peer (the application hears
//! `FuseFailure`, as for any permanent failure). The new incarnation is then refused (a
//! `Reject` with `seq` [`REJECT_NOT_ADMITTED`], whose text names this process and the command
//! to run; the refused process logs it once) until it is admitted: by an operator (`ken admit
//! STORE PEER` while this process is stopped writes a row in [`crate::living::ADMIT_TABLE`],
//! consumed at admission) or at once with [`Tuning::admit_replaced_peers`]. Admission makes
//! it a fresh peer: every message the old incarnation had not acknowledged is withdrawn
//! (counted in `messages_withdrawn`; a message sent before the new incarnation was first
//! heard is among them), the new one is told to skip every sequence number used so far
//! (`Skip`), the receiving side starts from zero, and a turn-log entry `admit` records it.
//! Why refuse by default: admitting is declaring the old incarnation dead; a second live copy
//! of a process (two hosts with the same id) must not silently take over a pair.

pub mod fuse;
pub mod operator;
pub(crate) mod peer;
pub mod tables;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use ken_store::{
    Batch, ClientChange, ClientRow, OutboxAck, OutboxRow, PeerRow, Recovered, TableWrite,
    TimerChange, TurnLogEntry,
};
use ken_transport::{Auth, Frame, FrameKind, Incarnation, ProcessId, Seq};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::client::{ClientId, ReplyBody, RequestEnvelope};
use crate::handler::{Effects, Handler, Input, PeerView, TimerOp, Turn};
use crate::living::{self, DeadLetter, Held, HeldPair, HeldReason, HeldSource, Poison, PoisonSkip};
use crate::task::{self, TaskId, TaskRecord, TaskResult};
use crate::{limits, Time, Tuning};
use fuse::{Fuse, FuseOutput, SealToken};
pub use peer::RollbackEvidence;
use peer::{OutEntry, Peer};
use tables::{TableOverlay, TableSource};
use tasks::Tasks;

/// The `seq` of an `Ack` frame that asks the receiver to answer with its view of the pair (a
/// restarted process probes its peers; see `FRAME.md`). A plain `Ack` has `seq` 0.
pub const PROBE_SEQ: u64 = 1;

/// The `seq` of a `Reject` that refuses a new incarnation of the receiver: the sender knew
/// an earlier incarnation (whose store is gone) and has not admitted this one (FRAME.md).
/// Other rejects carry 0 (a rollback) or [`REJECT_STALE_INCARNATION`].
pub const REJECT_NOT_ADMITTED: u64 = 1;

/// The `seq` of a `Reject` that answers a frame addressed to an earlier incarnation of the
/// sender (FRAME.md). (Older builds sent 0, like a rollback.)
pub const REJECT_STALE_INCARNATION: u64 = 2;

/// Identifies a commit batch of this engine's life (1, 2, 3, ...). Not durable.
pub type BatchId = u64;

/// What the engine asks its host to do.
#[derive(Debug)]
pub enum Command {
    /// Commit this batch durably, then call [`Engine::commit_done`] with its id. At most one
    /// is outstanding.
    Commit { id: BatchId, batch: Batch },
    /// Transmit this frame. `after` is the newest batch whose durability it depends on: the
    /// host must have seen `commit_done(after)` (the driver asserts it).
    Send {
        to: ProcessId,
        frame: Frame,
        after: BatchId,
    },
    /// Release a line of output (emitted by a committed turn).
    Emit { line: String, after: BatchId },
    /// Start attempt `attempt` of task `id`: run the function registered as `name` with
    /// `payload` and idempotency key `key` outside the engine, then hand the result to
    /// [`Engine::task_finished`]. `after` is the batch that made the task durable (the host
    /// asserts it is).
    StartTask {
        id: TaskId,
        name: String,
        payload: Vec<u8>,
        key: String,
        attempt: u32,
        after: BatchId,
    },
    /// The handler reported its work done on committed state with every outbox empty.
    Finished { report: String },
    /// The process must stop: nothing further will be committed or released.
    Fatal { error: EngineError },
}

/// Why the engine stopped. After any of these the engine ignores every event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("the stored root state does not decode as this application's state type: {0}")]
    RootDecode(String),
    #[error(
        "root state of {bytes} bytes exceeds the {max_bytes}-byte limit; keep large data in tables"
    )]
    RootTooLarge { bytes: usize, max_bytes: usize },
    #[error("turn {turn} failed and was discarded: {what}")]
    TurnFault { turn: u64, what: String },
    #[error("recovered outbox for peer `{peer}` is inconsistent: {what}; run `ken inspect STORE verify`")]
    BadOutbox { peer: String, what: String },
    /// The handler panicked in a turn that cannot be held (the `Start` turn, a FUSE failure
    /// notification). Nothing of the turn was committed or released.
    #[error("the handler panicked on its {input} turn: {message}; fix the handler (the turn runs again at the next start)")]
    Panicked { input: String, message: String },
    #[error("invalid process id `{0}` in the store")]
    BadPeerId(String),
    #[error("a stored FUSE group does not decode: {0}; run `ken inspect STORE verify`")]
    BadGroup(String),
    /// A frame from `peer` proves that this process's store lost committed history (a
    /// deleted or damaged `-wal`, an older copy of the store put in its place): its view of
    /// the pair is ahead of what this store holds. The engine told the peer (a `Reject`)
    /// and stopped; nothing was committed or released after the evidence arrived.
    #[error(
        "this process's store lost committed history: peer `{peer}` {evidence}; the store was \
         rolled back (a deleted or damaged -wal file, an older copy of the store); do not run \
         from it: restore it from a standby or backup, or audit it against its peers' stores \
         (`ken audit`)"
    )]
    RolledBack {
        peer: String,
        evidence: RollbackEvidence,
    },
}

/// Counters over the life of an engine (not durable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub turns: u64,
    pub commits: u64,
    pub messages_sent: u64,
    pub retransmits: u64,
    pub acks_sent: u64,
    pub frames_in: u64,
    pub duplicates_dropped: u64,
    pub out_of_order_buffered: u64,
    pub out_of_order_dropped: u64,
    pub backpressure_dropped: u64,
    pub undecodable_messages: u64,
    pub misaddressed_frames: u64,
    pub unknown_peer_frames: u64,
    pub unsupported_frames: u64,
    pub malformed_frames: u64,
    /// Frames addressed to another incarnation of this process (answered with a reject).
    pub stale_incarnation_frames: u64,
    /// Frames from a peer whose incarnation differs from the one we know (wiped store).
    pub foreign_incarnation_frames: u64,
    /// Rejects sent to a new incarnation of a peer that is not admitted.
    pub admission_refusals_sent: u64,
    /// Rejects received saying a peer does not admit this (new) incarnation.
    pub admission_refusals: u64,
    /// New incarnations of peers admitted as fresh peers.
    pub peers_admitted: u64,
    /// Rejects received: a peer says our frames address an incarnation it no longer is.
    pub rejects_received: u64,
    /// Client requests applied (turns run).
    pub requests_applied: u64,
    /// Retried requests answered from the reply cache.
    pub requests_replayed: u64,
    /// Requests older than the cache's last for their client (answered `TooOld`).
    pub requests_too_old: u64,
    /// Requests refused (the reply cache is full of recently active clients).
    pub requests_refused: u64,
    /// Requests whose payload did not decode as the handler's request type (answered
    /// `BadRequest`, not applied).
    pub requests_undecodable: u64,
    /// FUSE failure notifications delivered to the handler.
    pub fuse_notifications: u64,
    pub fuse_messages_sent: u64,
    pub fuse_list_exchanges: u64,
    /// FUSE lists that omitted a group but were older than the group's state here (see
    /// `FuseMsg::List`): not counted against the group.
    pub fuse_stale_lists: u64,
    pub heartbeats_sent: u64,
    /// Bytes (whole datagrams) of the heartbeat and list frames sent: the cost of shared
    /// liveness, the same for one group as for ten thousand over the same peers.
    pub liveness_bytes_sent: u64,
    /// Bytes (whole datagrams) of every FUSE frame sent: liveness plus creation and `Fail`.
    pub fuse_bytes_sent: u64,
    /// Peer frames without the cluster key's tag reaching an engine that requires it (the
    /// endpoint drops them first; counted here if a host hands one in anyway).
    pub unauthenticated_frames: u64,
    /// Frames with a number the store cannot hold (a request number or sequence number above
    /// [`limits::WIRE_NUMBER_MAX`]): dropped.
    pub out_of_range_frames: u64,
    /// FUSE heartbeats and lists not credited as proof of life: their stamp was not newer
    /// than the last heard from the peer (a replay, or reordering). Only with a cluster key.
    pub stale_stamps: u64,
    /// Requests without a credential refused by a process with a cluster key.
    pub requests_unauthorized: u64,
    /// Requests first sent outside the retry window (answered `Expired`, not applied).
    pub requests_expired: u64,
    /// Replies to requests without a credential too large for them (answered `Pad`).
    pub replies_padded: u64,
    /// Idle clients evicted from a full reply cache.
    pub clients_evicted: u64,
    /// Peers that told us (with a `Reject` from their known incarnation) that their store
    /// rolled back and they stopped.
    pub peer_rollbacks: u64,
    /// Probes sent after a restart (an `Ack` with `seq` 1: "tell me your view of the pair").
    pub probes_sent: u64,
    /// Probes from peers answered.
    pub probes_answered: u64,
    /// Unacknowledged messages withdrawn by `forget_peer`.
    pub messages_withdrawn: u64,
    /// `Skip` frames sent (a peer told to skip withdrawn messages).
    pub skips_sent: u64,
    /// Messages of peers skipped on their `Skip` (never delivered: the peer withdrew them).
    pub messages_skipped: u64,
    /// Data frames not delivered because their pair is held (a newer schema version, or a
    /// poison message): neither consumed nor acknowledged; the sender retransmits.
    pub messages_held: u64,
    /// Messages of a known version that did not decode, recorded in the dead-letter table.
    pub dead_letters: u64,
    /// Turns that panicked (discarded, their input recorded and held).
    pub turns_panicked: u64,
    /// Tasks started by turns (recorded; each starts once its batch is durable).
    pub tasks_started: u64,
    /// Task attempts handed to the host ([`Command::StartTask`]).
    pub task_attempts: u64,
    /// Task attempts that failed (retried after a backoff).
    pub task_failures: u64,
    /// Task results consumed by a turn.
    pub task_results_delivered: u64,
    /// Task results ignored: not from the attempt running (duplicate or late).
    pub task_results_ignored: u64,
}

/// How the host protects this engine's frames: set once, before [`Engine::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Security {
    /// Every peer frame handed in was opened with the cluster key (the endpoint dropped the
    /// rest), and every peer frame the engine makes is to be sealed with it. Also: clients
    /// must hold a credential, and FUSE liveness is credited only for fresh stamps.
    pub authenticated: bool,
}

/// Static configuration of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub id: ProcessId,
    /// The peers this process may exchange messages with.
    pub peers: Vec<ProcessId>,
    pub tuning: Tuning,
    /// Seed of the generator behind [`Turn::random_u64`].
    pub seed: u64,
}

#[derive(Debug, Default)]
struct Filling {
    batch: Batch,
    turns: u32,
    bytes: usize,
    emits: Vec<String>,
    /// Client replies (client, request number, encoded reply body).
    replies: Vec<(ClientId, u64, Vec<u8>, ReplyTo)>,
    /// Anything to commit: a turn ran, or peer counters changed (FUSE group changes are
    /// reported by [`Fuse::needs_seal`]).
    nonempty: bool,
}

#[derive(Debug)]
struct Committing {
    id: BatchId,
    /// Per peer changed in the batch: (next_seq, delivered) as of the seal.
    /// Per dirty peer: `next_seq`, `delivered` and `forgotten` as the batch writes them.
    snapshot: Vec<(ProcessId, u64, u64, u64, u32)>,
    emits: Vec<String>,
    replies: Vec<(ClientId, u64, Vec<u8>, ReplyTo)>,
    /// The FUSE machine's share of the batch.
    fuse: SealToken,
}

/// Why [`Engine::run_turn`] did not complete a turn.
#[derive(Debug)]
enum TurnFailed {
    /// A store read failed or a value did not decode: the engine failed.
    Fault,
    /// The handler panicked (the message): the turn was discarded.
    Panicked(String),
}

/// How to answer a request: the reply mirrors its protection, and a reply to a request
/// without a credential is capped by the request's size.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    auth: Auth,
    request_bytes: usize,
}

/// The reply cache entry of one client.
#[derive(Debug, Clone)]
struct ClientEntry {
    /// The last request applied (possibly by an uncommitted turn).
    last: u64,
    updated: Time,
    /// The last request applied by a durable turn.
    durable_last: u64,
    /// Its encoded reply body if at most [`REPLY_INLINE_MAX`] bytes; a larger one (and any
    /// after a restart) is read from the store when a retry needs it, so the cache's memory
    /// does not grow with reply sizes.
    durable_reply: Option<Vec<u8>>,
}

/// Replies up to this many bytes stay in the reply cache's memory (most replies of small
/// requests: an acknowledgement, a number); larger ones are read back from the store.
pub const REPLY_INLINE_MAX: usize = 64;

struct PeerDepths<'a>(&'a BTreeMap<ProcessId, Peer>);

impl PeerView for PeerDepths<'_> {
    fn is_peer(&self, id: &ProcessId) -> bool {
        self.0.contains_key(id)
    }
    fn outbox_depth(&self, id: &ProcessId) -> usize {
        self.0.get(id).map_or(0, |p| p.outbox.len())
    }
}

/// The two ends of a pair, for building frames to the peer.
struct Header {
    auth: Auth,
    from: ProcessId,
    from_incarnation: Incarnation,
    to: ProcessId,
    to_incarnation: Incarnation,
}

/// How peer frames are to be sealed under `security`.
fn peer_auth(security: Security) -> Auth {
    if security.authenticated {
        Auth::Cluster
    } else {
        Auth::None
    }
}

impl Header {
    fn of(id: &ProcessId, incarnation: Incarnation, peer: &Peer, security: Security) -> Header {
        Header {
            auth: peer_auth(security),
            from: id.clone(),
            from_incarnation: incarnation,
            to: peer.id.clone(),
            to_incarnation: peer.incarnation,
        }
    }

    fn frame(&self, kind: FrameKind, seq: u64, ack: u64, acked: u64, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            auth: self.auth,
            from: self.from.clone(),
            from_incarnation: self.from_incarnation,
            to: self.to.clone(),
            to_incarnation: self.to_incarnation,
            seq: Seq(seq),
            ack: Seq(ack),
            acked: Seq(acked),
            payload,
        }
    }
}

/// A summary of one peer's protocol state, for tests, stats and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: ProcessId,
    pub incarnation: Incarnation,
    pub next_seq: u64,
    pub acked: u64,
    pub delivered: u64,
    pub delivered_committed: u64,
    pub outbox: usize,
    pub in_flight: usize,
}

/// The Ken engine of one process running handler `H`.
pub struct Engine<H: Handler> {
    id: ProcessId,
    incarnation: Incarnation,
    tuning: Tuning,
    handler: H,
    state: H::State,
    rng: ChaCha8Rng,
    peers: BTreeMap<ProcessId, Peer>,
    /// Set timers: name -> (due, payload).
    timers: BTreeMap<String, (Time, Vec<u8>)>,
    timer_queue: BTreeSet<(Time, String)>,
    clients: BTreeMap<ClientId, ClientEntry>,
    /// The reply cache's clients by last use, oldest first (the LRU order of eviction).
    clients_lru: BTreeSet<(Time, ClientId)>,
    security: Security,
    /// FUSE groups and shared liveness, a machine of its own (`fuse/`).
    fuse: Fuse,
    /// Pending tasks, a machine of its own (`tasks.rs`).
    tasks: Tasks,
    tables: TableOverlay,
    last_root: Vec<u8>,
    /// The encoded state as of the end of the last turn: what a panicking turn restores,
    /// and what the seal writes.
    state_bytes: Vec<u8>,
    /// Peer pairs held in this life, by peer.
    held_peers: BTreeMap<ProcessId, Held>,
    /// Peers that refused this incarnation (logged once each).
    refused_by: BTreeSet<ProcessId>,
    /// Poison messages an operator moved to the dead letters
    /// ([`living::SKIP_POISON_TABLE`]), loaded at start: consumed as dead letters when
    /// delivered.
    poison_skips: BTreeMap<(ProcessId, u64), PoisonSkip>,
    /// The rows of [`living::HELD_TABLE`] (loaded at start, kept with every write): pairs
    /// held for a newer schema version, as operators see them.
    held_rows: BTreeMap<ProcessId, HeldPair>,
    /// Timers whose turn panicked: still set durably, not fired in this life (name -> due).
    held_timers: BTreeMap<String, (Time, Held)>,
    /// Client requests whose turn panicked, with the panic message.
    poisoned_requests: BTreeMap<(ClientId, u64), Held>,
    /// Turns over the life of the store, including uncommitted ones.
    turns_total: u64,
    needs_start: bool,
    /// The store was not created by this life: probe every peer for its view of the pair.
    restarted: bool,
    /// Id of the filling batch.
    next_batch: BatchId,
    /// Newest durable batch.
    durable: BatchId,
    filling: Filling,
    committing: Option<Committing>,
    commands: Vec<Command>,
    stats: EngineStats,
    finished_reported: bool,
    failed: bool,
}

impl<H: Handler> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .field("durable", &self.durable)
            .field("turns_total", &self.turns_total)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Engine<H> {
    /// Builds an engine from what the store recovered. Call [`Engine::start`] next.
    pub fn recover(
        config: EngineConfig,
        handler: H,
        recovered: Recovered,
        source: Box<dyn TableSource>,
    ) -> Result<Engine<H>, EngineError> {
        config.tuning.validate();
        let state = match &recovered.root {
            Some(bytes) => ken_store::codec::decode::<H::State>(bytes)
                .map_err(|e| EngineError::RootDecode(e.to_string()))?,
            None => H::State::default(),
        };
        let mut peers = BTreeMap::new();
        for id in &config.peers {
            if *id != config.id {
                peers.insert(id.clone(), Peer::new(id.clone(), &config.tuning));
            }
        }
        for row in &recovered.peers {
            let id = ProcessId::new(row.peer.clone())
                .map_err(|_| EngineError::BadPeerId(row.peer.clone()))?;
            let p = peers
                .entry(id.clone())
                .or_insert_with(|| Peer::new(id, &config.tuning));
            p.incarnation = Incarnation(row.incarnation);
            p.next_seq = row.next_seq.max(1);
            p.committed_next_seq = p.next_seq;
            p.forgotten = row.forgotten;
            p.forgotten_durable = row.forgotten;
            p.acked = row.acked.max(row.forgotten);
            p.acked_stored = p.acked;
            p.peer_acked = row.acked;
            p.delivered = row.delivered;
            p.delivered_committed = row.delivered;
            p.ack_sent = 0;
            if p.acked >= p.next_seq {
                return Err(EngineError::BadOutbox {
                    peer: row.peer.clone(),
                    what: format!("acked {} >= next_seq {}", p.acked, p.next_seq),
                });
            }
        }
        for row in &recovered.outbox {
            let id = ProcessId::new(row.peer.clone())
                .map_err(|_| EngineError::BadPeerId(row.peer.clone()))?;
            let Some(p) = peers.get_mut(&id) else {
                return Err(EngineError::BadOutbox {
                    peer: row.peer.clone(),
                    what: "outbox rows without a peer row".into(),
                });
            };
            let expected = p.acked + 1 + p.outbox.len() as u64;
            if row.seq != expected {
                return Err(EngineError::BadOutbox {
                    peer: row.peer.clone(),
                    what: format!("expected seq {expected}, found {}", row.seq),
                });
            }
            p.outbox.push_back(OutEntry {
                seq: row.seq,
                payload: row.payload.clone(),
                first_sent: None,
                last_sent: Time::ZERO,
                transmissions: 0,
            });
        }
        for p in peers.values() {
            if p.outbox.len() as u64 != p.next_seq - 1 - p.acked {
                return Err(EngineError::BadOutbox {
                    peer: p.id.to_string(),
                    what: format!(
                        "{} rows, but counters say {} (acked {}, next_seq {})",
                        p.outbox.len(),
                        p.next_seq - 1 - p.acked,
                        p.acked,
                        p.next_seq
                    ),
                });
            }
        }
        let mut timers = BTreeMap::new();
        let mut timer_queue = BTreeSet::new();
        for t in &recovered.timers {
            let due = Time::from_millis(t.due_ms);
            timers.insert(t.name.clone(), (due, t.payload.clone()));
            timer_queue.insert((due, t.name.clone()));
        }
        let mut clients = BTreeMap::new();
        let mut clients_lru = BTreeSet::new();
        for row in &recovered.clients {
            clients_lru.insert((Time::from_millis(row.updated_ms), ClientId(row.client)));
            clients.insert(
                ClientId(row.client),
                ClientEntry {
                    last: row.request_no,
                    updated: Time::from_millis(row.updated_ms),
                    durable_last: row.request_no,
                    // A store's recovery leaves replies in the store (empty here); a host
                    // that passes a small one keeps it inline.
                    durable_reply: (!row.reply.is_empty() && row.reply.len() <= REPLY_INLINE_MAX)
                        .then(|| row.reply.clone()),
                },
            );
        }
        let fuse = Fuse::recover(config.id.clone(), &config.tuning, &recovered.groups)
            .map_err(|e| EngineError::BadGroup(e.to_string()))?;
        let state_bytes = ken_store::codec::encode(&state);
        let tasks = Tasks::new(
            config.tuning.task_running_max,
            config.tuning.task_backoff_initial,
            config.tuning.task_backoff_max,
        );
        let engine = Engine {
            id: config.id,
            incarnation: Incarnation(recovered.incarnation),
            tuning: config.tuning,
            handler,
            state,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            peers,
            timers,
            timer_queue,
            clients,
            clients_lru,
            security: Security::default(),
            fuse,
            tasks,
            tables: TableOverlay::new(source),
            last_root: recovered.root.unwrap_or_default(),
            state_bytes,
            held_peers: BTreeMap::new(),
            refused_by: BTreeSet::new(),
            poison_skips: BTreeMap::new(),
            held_rows: BTreeMap::new(),
            held_timers: BTreeMap::new(),
            poisoned_requests: BTreeMap::new(),
            turns_total: recovered.turns_committed,
            needs_start: recovered.turns_committed == 0,
            restarted: !recovered.created,
            next_batch: 1,
            durable: 0,
            filling: Filling::default(),
            committing: None,
            commands: Vec::new(),
            stats: EngineStats::default(),
            finished_reported: false,
            failed: false,
        };
        Ok(engine)
    }

    /// Sets how the host protects frames (default: unauthenticated). Call before
    /// [`Engine::start`].
    pub fn with_security(mut self, security: Security) -> Engine<H> {
        self.security = security;
        self.fuse.require_fresh_stamps(security.authenticated);
        self
    }

    /// How the host protects frames.
    pub fn security(&self) -> Security {
        self.security
    }

    /// Starts the process: the `Start` turn of a fresh process, then transmission of the
    /// recovered outbox.
    pub fn start(&mut self, now: Time) {
        if self.failed {
            return;
        }
        self.fuse.start(now);
        if self.needs_start {
            self.needs_start = false;
            if let Err(TurnFailed::Panicked(message)) =
                self.run_turn(now, Input::Start, "start", String::new(), 0)
            {
                self.fail(EngineError::Panicked {
                    input: "start".into(),
                    message,
                });
                return;
            }
        }
        self.load_poison_skips();
        self.load_held_rows();
        self.replay_dead_letters(now);
        self.load_tasks(now);
        if self.failed {
            return;
        }
        let ids: Vec<ProcessId> = self.peers.keys().cloned().collect();
        if self.restarted {
            // A store that lost history looks like a healthy older one: ask every peer for
            // its view of the pair at once (a quiet pair would never show it otherwise).
            for id in &ids {
                let p = self.peers.get_mut(id).expect("known peer");
                p.probe_interval = self.tuning.rto_initial;
                p.probe_at = Some(now);
            }
            self.send_probes(now);
        }
        for id in &ids {
            let p = self.peers.get_mut(id).expect("known peer");
            if p.forgotten_durable > p.peer_acked {
                p.skip_at = Some(now);
            }
        }
        self.send_skips(now);
        for id in &ids {
            self.pump(now, id);
        }
        self.after_event(now);
    }

    /// A frame arrived from the network.
    pub fn handle_frame(&mut self, now: Time, frame: Frame) {
        if self.failed {
            return;
        }
        self.stats.frames_in += 1;
        self.on_frame(now, frame);
        self.after_event(now);
    }

    /// Time passed: fires due timers (while input is accepted) and retransmits.
    pub fn tick(&mut self, now: Time) {
        if self.failed {
            return;
        }
        while self.accepting_input() && !self.failed {
            let Some((due, name)) = self.timer_queue.first().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            self.timer_queue.remove(&(due, name.clone()));
            let payload = self
                .timers
                .remove(&name)
                .map(|(_, payload)| payload)
                .unwrap_or_default();
            self.filling
                .batch
                .timers
                .push(TimerChange::Cancel { name: name.clone() });
            let input = Input::Timer {
                name: name.clone(),
                payload: payload.clone(),
            };
            match self.run_turn(now, input, "timer", name.clone(), 0) {
                Ok(_) | Err(TurnFailed::Fault) => {}
                Err(TurnFailed::Panicked(message)) => {
                    // Still set durably (set again after its cancel); not fired again in
                    // this life.
                    self.filling.batch.timers.push(TimerChange::Set {
                        name: name.clone(),
                        due_ms: due.as_millis(),
                        payload,
                    });
                    self.record_poison(now, "timer", &name, 0, &message);
                    let held = Held {
                        source: HeldSource::Timer { name: name.clone() },
                        reason: HeldReason::Panicked { message },
                        since: now,
                    };
                    self.held_timers.insert(name, (due, held));
                }
            }
        }
        self.start_due_tasks(now);
        self.fuse.tick(now);
        self.send_fuse_outputs();
        let due: Vec<ProcessId> = self
            .peers
            .values()
            .filter(|p| p.retransmit_at.is_some_and(|t| t <= now))
            .map(|p| p.id.clone())
            .collect();
        for id in &due {
            self.retransmit(now, id);
        }
        self.send_probes(now);
        self.send_skips(now);
        self.after_event(now);
    }

    /// The store reports batch `id` durable: release its outputs.
    ///
    /// # Panics
    /// If `id` is not the batch committing (a host bug).
    pub fn commit_done(&mut self, now: Time, id: BatchId) {
        if self.failed {
            return;
        }
        let c = self
            .committing
            .take()
            .expect("commit_done without a batch committing");
        assert_eq!(
            c.id, id,
            "commit_done for batch {id}, but {} is committing",
            c.id
        );
        assert_eq!(self.durable + 1, id, "batches commit in order");
        self.durable = id;
        self.stats.commits += 1;
        self.tables.batch_durable(id);
        for (pid, next_seq, delivered, forgotten, epoch) in &c.snapshot {
            let p = self
                .peers
                .get_mut(pid)
                .expect("snapshot names a known peer");
            if *epoch != p.epoch {
                // Sealed before a new incarnation of the peer was admitted: its counters
                // speak of the old pair (the admission's own batch carries the new ones).
                continue;
            }
            assert!(*next_seq <= p.next_seq && *delivered <= p.delivered);
            // (Under the test-only early-release switch the counters ran ahead already.)
            assert!(
                self.tuning.releases_before_commit()
                    || (*next_seq >= p.committed_next_seq && *delivered >= p.delivered_committed)
            );
            p.committed_next_seq = p.committed_next_seq.max(*next_seq);
            p.delivered_committed = p.delivered_committed.max(*delivered);
            if *forgotten > p.forgotten_durable {
                p.forgotten_durable = *forgotten;
                if p.forgotten_durable > p.peer_acked {
                    p.skip_interval = self.tuning.rto_initial;
                    p.skip_at = Some(now);
                }
            }
        }
        self.send_skips(now);
        for (pid, _, _, _, _) in &c.snapshot {
            self.pump(now, pid);
            self.ack_if_owed(pid);
        }
        for line in c.emits {
            self.commands.push(Command::Emit {
                line,
                after: self.durable,
            });
        }
        self.release_replies(c.replies);
        self.fuse.durable(c.fuse);
        self.send_fuse_outputs();
        self.tasks.durable(now, id);
        self.start_due_tasks(now);
        self.after_event(now);
    }

    /// Attempt `attempt` of task `id` (from [`Command::StartTask`]) ended with `result`.
    /// A success is delivered as one [`Input::TaskDone`] turn (now, or as soon as input is
    /// accepted) whose batch deletes the task's record; a failure is recorded with the
    /// filling batch and retried after a backoff. A result not from the attempt running (a
    /// duplicate, a late one, one for a task delivered already) is ignored and counted
    /// (`task_results_ignored`).
    pub fn task_finished(&mut self, now: Time, id: TaskId, attempt: u32, result: TaskResult) {
        if self.failed {
            return;
        }
        match self.tasks.finished(now, id, attempt, result) {
            tasks::Outcome::Ignored => self.stats.task_results_ignored += 1,
            tasks::Outcome::Queued => {}
            tasks::Outcome::Failed { record, retry_at } => {
                self.stats.task_failures += 1;
                tracing::warn!(
                    process = %self.id,
                    task = %id,
                    name = %record.name,
                    attempt,
                    error = record.last_error.as_deref().unwrap_or(""),
                    retry_in_ms = retry_at.since(now).as_millis() as u64,
                    "a task attempt failed; retried after a backoff"
                );
                self.runtime_write(
                    task::TASKS_TABLE,
                    id.key_bytes().to_vec(),
                    ken_store::codec::encode(&record),
                );
            }
        }
        self.start_due_tasks(now);
        self.after_event(now);
    }

    /// Every task not yet delivered, with its phase and record (tests and tools).
    pub fn tasks(&self) -> Vec<tasks::TaskStatus> {
        self.tasks.status()
    }

    /// Commands produced so far, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// When [`Engine::tick`] should next be called, if anything is scheduled.
    pub fn next_deadline(&self) -> Option<Time> {
        let timer = self.timer_queue.first().map(|(t, _)| *t);
        let rexmit = self.peers.values().filter_map(|p| p.retransmit_at).min();
        let probe = self.peers.values().filter_map(|p| p.probe_at).min();
        let skip = self.peers.values().filter_map(|p| p.skip_at).min();
        [
            timer,
            rexmit,
            probe,
            skip,
            self.fuse.deadline(),
            self.tasks.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// False when both the committing and the filling batch are full: the host should stop
    /// reading input until a commit finishes (frames that still arrive are dropped and
    /// retransmitted by their senders).
    pub fn accepting_input(&self) -> bool {
        self.committing.is_none()
            || (self.filling.turns < self.tuning.batch_turns_max
                && self.filling.bytes < self.tuning.batch_bytes_max)
    }

    /// True while a batch is committing.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    pub fn id(&self) -> &ProcessId {
        &self.id
    }

    /// Bytes of replies the reply cache holds in memory: only replies of at most
    /// [`REPLY_INLINE_MAX`] bytes (larger ones, and every reply after a restart, are read
    /// from the store when a retry needs them), so this never exceeds `REPLY_INLINE_MAX`
    /// per cached client whatever the replies' sizes.
    pub fn reply_cache_inline_bytes(&self) -> usize {
        self.clients
            .values()
            .filter_map(|e| e.durable_reply.as_ref().map(Vec::len))
            .sum()
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The handler's state, including effects of turns not yet committed.
    pub fn state(&self) -> &H::State {
        &self.state
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Every FUSE group, for tests and tools.
    pub fn groups(&self) -> Vec<fuse::GroupStatus> {
        self.fuse.groups()
    }

    /// Newest durable batch of this engine's life.
    pub fn durable_batch(&self) -> BatchId {
        self.durable
    }

    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|p| PeerStatus {
                id: p.id.clone(),
                incarnation: p.incarnation,
                next_seq: p.next_seq,
                acked: p.acked,
                delivered: p.delivered,
                delivered_committed: p.delivered_committed,
                outbox: p.outbox.len(),
                in_flight: p.in_flight,
            })
            .collect()
    }

    /// Every input source held in this life: peer pairs (a newer schema version, a poison
    /// message), poison timers and poison client requests (see [`crate::living`]).
    pub fn held(&self) -> Vec<Held> {
        let mut out: Vec<Held> = self.held_peers.values().cloned().collect();
        out.extend(self.held_timers.values().map(|(_, h)| h.clone()));
        out.extend(self.poisoned_requests.values().cloned());
        out
    }

    /// Smoothed round-trip time to `peer` (send to acknowledgement), once measured.
    pub fn srtt(&self, peer: &ProcessId) -> Option<std::time::Duration> {
        self.peers.get(peer).and_then(|p| p.rto.srtt())
    }

    /// Checks every internal invariant. Cheap (FUSE's costs peers x groups); the simulation
    /// calls it after every step.
    pub fn check_invariants(&self) {
        self.fuse.check_invariants();
        self.tasks.check();
        for p in self.peers.values() {
            p.check(self.tuning.reorder_buffer_max);
        }
        assert_eq!(self.timers.len(), self.timer_queue.len());
        if let Some(c) = &self.committing {
            assert_eq!(c.id, self.durable + 1);
            assert_eq!(self.next_batch, c.id + 1);
        } else {
            assert_eq!(self.next_batch, self.durable + 1);
        }
    }

    // ---- internals ----

    fn after_event(&mut self, now: Time) {
        if self.failed {
            return;
        }
        self.run_fuse_notifications(now);
        self.deliver_task_results(now);
        self.maybe_commit(now);
        self.check_finished();
    }

    fn fail(&mut self, error: EngineError) {
        if !self.failed {
            self.failed = true;
            self.commands.push(Command::Fatal { error });
        }
    }

    fn on_frame(&mut self, now: Time, frame: Frame) {
        if frame.kind == FrameKind::ClientRequest {
            // Clients address the process by its network address; `to` is not checked.
            self.on_request(now, frame);
            return;
        }
        // With a key, a peer frame counts only if the cluster key's tag vouched for it: this
        // is what makes first contact from an unknown incarnation, acks and FUSE messages
        // trustworthy. (The endpoint drops the rest before they get here.)
        if self.security.authenticated && frame.auth != Auth::Cluster {
            self.stats.unauthenticated_frames += 1;
            return;
        }
        if frame.to != self.id {
            self.stats.misaddressed_frames += 1;
            return;
        }
        if frame.seq.0 > limits::WIRE_NUMBER_MAX || frame.ack.0 > limits::WIRE_NUMBER_MAX {
            self.stats.out_of_range_frames += 1;
            return;
        }
        if matches!(frame.kind, FrameKind::Heartbeat | FrameKind::Fuse) {
            if !self.peers.contains_key(&frame.from) {
                self.stats.unknown_peer_frames += 1;
                return;
            }
            if frame.to_incarnation.0 != 0 && frame.to_incarnation != self.incarnation {
                self.stats.stale_incarnation_frames += 1;
                return;
            }
            // (Frames from a replaced peer are accepted: its lists will lack our groups,
            // which fails them, as it should.)
            self.fuse.heard(now, &frame.from);
            self.on_fuse_frame(now, frame);
            return;
        }
        match frame.kind {
            FrameKind::Data | FrameKind::Ack | FrameKind::Skip => {}
            FrameKind::Reject => {
                self.stats.rejects_received += 1;
                if frame.seq.0 == REJECT_NOT_ADMITTED && frame.to_incarnation == self.incarnation {
                    self.stats.admission_refusals += 1;
                    if self.refused_by.insert(frame.from.clone()) {
                        tracing::error!(
                            peer = %frame.from,
                            incarnation = %self.incarnation,
                            said = %String::from_utf8_lossy(&frame.payload),
                            "a peer refuses this process: it knew an earlier incarnation of \
                             it (this store is new, so the old one is gone); nothing flows \
                             between them until the peer admits this incarnation"
                        );
                    }
                    return;
                }
                let known = self.peers.get(&frame.from).map(|p| p.incarnation);
                if frame.seq.0 != REJECT_STALE_INCARNATION
                    && known.is_some_and(|k| k.0 != 0 && k == frame.from_incarnation)
                    && frame.to_incarnation == self.incarnation
                {
                    // The peer we know, same store, says it lost history and stopped.
                    self.stats.peer_rollbacks += 1;
                    tracing::error!(
                        peer = %frame.from,
                        its_ack = frame.ack.0,
                        its_acked = frame.acked.0,
                        said = %String::from_utf8_lossy(&frame.payload),
                        "peer's store rolled back (lost committed history); it stopped and \
                         needs its store restored"
                    );
                    return;
                }
                tracing::error!(
                    peer = %frame.from,
                    "peer rejects our frames: they address an incarnation it no longer is \
                     (its store was replaced); messages to it cannot be delivered"
                );
                return;
            }
            _ => {
                self.stats.unsupported_frames += 1;
                return;
            }
        }
        if frame.from_incarnation.0 == 0 {
            self.stats.malformed_frames += 1;
            return;
        }
        if !self.peers.contains_key(&frame.from) {
            self.stats.unknown_peer_frames += 1;
            return;
        }
        if frame.to_incarnation.0 != 0 && frame.to_incarnation != self.incarnation {
            self.stats.stale_incarnation_frames += 1;
            let why = format!(
                "frame addressed incarnation {}, this process is incarnation {}",
                frame.to_incarnation, self.incarnation
            );
            self.send_reject(
                frame.from,
                frame.from_incarnation,
                REJECT_STALE_INCARNATION,
                why,
            );
            return;
        }
        let p = self.peers.get_mut(&frame.from).expect("checked above");
        if p.incarnation.0 == 0 {
            // Persisted with the next batch; not worth a commit of its own (if lost in a
            // crash, it is learned again from the next frame).
            p.incarnation = frame.from_incarnation;
            p.dirty = true;
        } else if p.incarnation != frame.from_incarnation {
            self.stats.foreign_incarnation_frames += 1;
            if !self.replaced_peer(now, &frame) {
                return;
            }
        }
        let p = self.peers.get_mut(&frame.from).expect("checked above");
        let from = frame.from.clone();
        if let Some(evidence) = p.rollback_evidence(frame.ack.0, frame.acked.0) {
            self.rolled_back(&from, evidence);
            return;
        }
        // The peer's view of the pair checks out: no more probes to it.
        p.probe_at = None;
        let probe = frame.kind == FrameKind::Ack && frame.seq.0 == PROBE_SEQ;
        self.fuse.heard(now, &from);
        self.on_ack(now, &from, frame.ack.0);
        if probe {
            self.stats.probes_answered += 1;
            self.send_ack(&from);
        }
        match frame.kind {
            FrameKind::Data => self.on_data(now, &from, frame.seq.0, frame.payload),
            FrameKind::Skip => self.on_skip(now, &from, frame.seq.0),
            _ => {}
        }
    }

    // ---- FUSE: the machine's events in, its outputs out ----

    /// A heartbeat or FUSE frame from a known peer (addressing checked by the caller).
    fn on_fuse_frame(&mut self, now: Time, frame: Frame) {
        let from = &frame.from;
        if frame.kind == FrameKind::Heartbeat {
            match fuse::Heartbeat::decode(&frame.payload) {
                Ok(hb) => self.fuse.on_heartbeat(now, from, hb),
                Err(_) => self.stats.malformed_frames += 1,
            }
        } else {
            match fuse::FuseMsg::decode(&frame.payload) {
                Ok(msg) => {
                    let fuse::Malformed(parts) = self.fuse.on_message(now, from, msg);
                    self.stats.malformed_frames += u64::from(parts);
                }
                Err(_) => self.stats.malformed_frames += 1,
            }
        }
        self.send_fuse_outputs();
    }

    /// Turns what the FUSE machine asks to transmit into frames to the peers' known
    /// incarnations (control messages only to peers in the address book), and copies its
    /// counters into the engine's.
    fn send_fuse_outputs(&mut self) {
        for out in self.fuse.take_outputs() {
            let (to, kind, payload, liveness) = match out {
                FuseOutput::Send { to, msg } => {
                    if !self.peers.contains_key(&to) {
                        continue;
                    }
                    let list = matches!(msg, fuse::FuseMsg::List { .. });
                    self.stats.fuse_messages_sent += 1;
                    (to, FrameKind::Fuse, msg.encode(), list)
                }
                FuseOutput::Heartbeat { to, hb } => {
                    self.stats.heartbeats_sent += 1;
                    (to, FrameKind::Heartbeat, hb.encode(), true)
                }
            };
            let frame = Frame {
                kind,
                auth: peer_auth(self.security),
                from: self.id.clone(),
                from_incarnation: self.incarnation,
                to: to.clone(),
                to_incarnation: self
                    .peers
                    .get(&to)
                    .map_or(Incarnation(0), |p| p.incarnation),
                seq: Seq(0),
                ack: Seq(0),
                acked: Seq(0),
                payload,
            };
            let bytes = frame.encoded_len() as u64;
            self.stats.fuse_bytes_sent += bytes;
            if liveness {
                self.stats.liveness_bytes_sent += bytes;
            }
            self.commands.push(Command::Send {
                to,
                frame,
                after: self.durable,
            });
        }
        self.copy_fuse_stats();
    }

    fn copy_fuse_stats(&mut self) {
        let f = self.fuse.stats();
        self.stats.fuse_notifications = f.notifications;
        self.stats.fuse_list_exchanges = f.list_exchanges;
        self.stats.fuse_stale_lists = f.stale_lists;
        self.stats.stale_stamps = f.stale_stamps;
    }

    /// Runs the notification turns of failed groups (one per group, exactly once: the turn
    /// and the group's `notified` flag commit together).
    fn run_fuse_notifications(&mut self, now: Time) {
        while !self.failed {
            if let Some((id, change)) = self.fuse.next_lifecycle() {
                self.run_fuse_lifecycle(now, id, change);
                continue;
            }
            let Some(id) = self.fuse.next_notification() else {
                break;
            };
            if let Err(TurnFailed::Panicked(message)) = self.run_turn(
                now,
                Input::FuseFailure { group: id },
                "fuse",
                id.to_string(),
                0,
            ) {
                self.fail(EngineError::Panicked {
                    input: format!("FUSE failure notification of group {id}"),
                    message,
                });
            }
        }
        self.copy_fuse_stats();
    }

    /// Runs the lifecycle turn of group `id` (joined here, or live here) into the filling
    /// batch, which also records the change: exactly once, with no flag of its own.
    fn run_fuse_lifecycle(&mut self, now: Time, id: crate::GroupId, change: fuse::Lifecycle) {
        let Some(g) = self.fuse.group(id) else {
            return;
        };
        let (input, kind) = match change {
            fuse::Lifecycle::Joined => (
                Input::FuseJoined {
                    group: id,
                    creator: g.creator,
                    members: g.members,
                },
                "fuse_joined",
            ),
            fuse::Lifecycle::Live => (Input::FuseLive { group: id }, "fuse_live"),
        };
        if let Err(TurnFailed::Panicked(message)) =
            self.run_turn(now, input, kind, id.to_string(), 0)
        {
            self.fail(EngineError::Panicked {
                input: format!("FUSE {kind} notification of group {id}"),
                message,
            });
        }
    }

    /// Anything to commit: a turn ran, peer counters changed, or FUSE groups changed.
    fn filling_nonempty(&self) -> bool {
        self.filling.nonempty || self.fuse.needs_seal()
    }

    /// A turn gave up on `peer`: withdraw every message queued to it so far (earlier turns'
    /// messages; this turn's are queued after). Their sequence numbers stay used: once this
    /// is durable the peer is sent a `Skip` up to the last of them, so that when it comes
    /// back it goes on from there instead of waiting for them.
    fn forget_peer(&mut self, peer: &ProcessId) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let through = p.next_seq - 1;
        if through <= p.acked {
            return; // nothing unacknowledged
        }
        let withdrawn = through - p.acked;
        p.outbox.clear();
        p.in_flight = 0;
        p.retransmit_at = None;
        p.forgotten = through;
        p.acked = through;
        // Withdrawn messages need no commit: none of them may ever be sent.
        p.committed_next_seq = p.next_seq;
        p.acked_stored = p.acked;
        p.dirty = true;
        self.stats.messages_withdrawn += withdrawn;
        tracing::warn!(
            peer = %peer,
            withdrawn,
            through,
            "forget_peer: unacknowledged messages to the peer withdrawn; it will be told to \
             skip them (Skip) and later messages reach it as usual"
        );
        self.filling.batch.outbox_acks.push(OutboxAck {
            peer: peer.to_string(),
            up_to: through,
        });
        self.filling.nonempty = true;
    }

    /// A frame from a new incarnation of a known peer: the old incarnation's store is gone,
    /// a permanent failure. The first time in this life, every FUSE group shared with the
    /// peer fails. Then the new incarnation is admitted if the tuning says so
    /// (`admit_replaced_peers`) or an operator did (`ken admit`: a row in
    /// [`living::ADMIT_TABLE`]); otherwise the frame is refused with a `Reject` that tells
    /// the new process who refuses it and what to run. Returns whether it was admitted (the
    /// frame is then handled as usual).
    fn replaced_peer(&mut self, now: Time, frame: &Frame) -> bool {
        let pid = frame.from.clone();
        let p = self.peers.get_mut(&pid).expect("known peer");
        let known = p.incarnation;
        let first = !p.foreign_incarnation_seen;
        p.foreign_incarnation_seen = true;
        if first {
            self.fuse.peer_replaced(&pid);
        }
        let by_operator = match self
            .tables
            .get(living::ADMIT_TABLE, pid.as_str().as_bytes())
        {
            Ok(row) => row.is_some(),
            Err(e) => {
                self.fail(EngineError::TurnFault {
                    turn: self.turns_total,
                    what: format!("reading {}: {e}", living::ADMIT_TABLE),
                });
                return false;
            }
        };
        if self.tuning.admit_replaced_peers || by_operator {
            self.admit(now, &pid, frame.from_incarnation, by_operator);
            return true;
        }
        let how = format!(
            "stop {me}, run `ken admit STORE_OF_{me} {pid}`, and start {me} again (or run {me} \
             with --admit-replaced-peers)",
            me = self.id
        );
        if first {
            tracing::error!(
                peer = %pid,
                known = %known,
                seen = %frame.from_incarnation,
                "a peer came back as a new incarnation (its store was replaced): the old one \
                 is gone for good, so the FUSE groups shared with it failed; the new one's \
                 frames are refused until an operator admits it: {how}"
            );
        }
        self.stats.admission_refusals_sent += 1;
        let why = format!(
            "{me} knew incarnation {known} of {pid}, whose store is gone; to admit incarnation \
             {new}: {how}",
            me = self.id,
            new = frame.from_incarnation
        );
        self.send_reject(pid, frame.from_incarnation, REJECT_NOT_ADMITTED, why);
        false
    }

    /// Sends a `Reject` (reason `reason`, FRAME.md) to incarnation `to_incarnation` of `to`,
    /// with `why` as its text.
    fn send_reject(
        &mut self,
        to: ProcessId,
        to_incarnation: Incarnation,
        reason: u64,
        why: String,
    ) {
        let reject = Frame {
            kind: FrameKind::Reject,
            auth: peer_auth(self.security),
            from: self.id.clone(),
            from_incarnation: self.incarnation,
            to: to.clone(),
            to_incarnation,
            seq: Seq(reason),
            ack: Seq(0),
            acked: Seq(0),
            payload: why.into_bytes(),
        };
        self.commands.push(Command::Send {
            to,
            frame: reject,
            after: self.durable,
        });
    }

    /// Admits a new incarnation of `pid` as a fresh peer: what the old incarnation never
    /// acknowledged is withdrawn (it is gone; the application heard of it through its FUSE
    /// groups), the new one is told to skip every sequence number used so far (`Skip`), and
    /// the receiving side starts from nothing. On the record: a turn-log entry `admit`, and
    /// the operator's [`living::ADMIT_TABLE`] row (if any) is deleted in the same batch.
    fn admit(&mut self, now: Time, pid: &ProcessId, incarnation: Incarnation, by_operator: bool) {
        let withdrawn_before = self.stats.messages_withdrawn;
        self.forget_peer(pid);
        let withdrawn = self.stats.messages_withdrawn - withdrawn_before;
        let p = self.peers.get_mut(pid).expect("known peer");
        let through = p.next_seq - 1;
        // The new incarnation starts after every number used with the old one.
        p.forgotten = p.forgotten.max(through);
        p.acked = p.acked.max(through);
        let old = p.incarnation;
        p.incarnation = incarnation;
        p.delivered = 0;
        p.delivered_committed = 0;
        p.ack_sent = 0;
        p.peer_acked = 0;
        p.reorder.clear();
        p.probe_at = None;
        p.foreign_incarnation_seen = false;
        p.skip_interval = self.tuning.rto_initial;
        p.epoch += 1;
        p.dirty = true;
        self.held_peers.remove(pid);
        self.release_held_row(pid, u64::MAX);
        // The old incarnation's messages are gone: an operator's order naming one of them
        // must not consume the new incarnation's message of the same number.
        self.drop_poison_skips(pid, u64::MAX);
        self.refused_by.remove(pid);
        if by_operator {
            self.tables.write(
                self.next_batch,
                living::ADMIT_TABLE,
                pid.as_str().as_bytes().to_vec(),
                None,
            );
            self.filling.batch.table_writes.push(TableWrite {
                table: living::ADMIT_TABLE.to_string(),
                key: pid.as_str().as_bytes().to_vec(),
                value: None,
            });
        }
        self.stats.peers_admitted += 1;
        tracing::warn!(
            peer = %pid,
            old = %old,
            new = %incarnation,
            withdrawn,
            by = if by_operator { "ken admit" } else { "admit_replaced_peers" },
            "admitted a new incarnation of a peer as a fresh peer"
        );
        let note = format!(
            "incarnation {old} replaced by {incarnation}; {withdrawn} unacknowledged messages \
             withdrawn; sequence numbers through {through} skipped"
        );
        self.log_runtime_turn(now, "admit", pid, 0, note);
    }

    /// Sends the due `Skip` frames: a peer that has not acknowledged the last withdrawn
    /// message is told to treat the withdrawn ones as consumed (see [`Engine::forget_peer`]).
    fn send_skips(&mut self, now: Time) {
        let ceiling = self.tuning.rto_max;
        for p in self.peers.values_mut() {
            if p.skip_at.is_none_or(|t| t > now) {
                continue;
            }
            if p.peer_acked >= p.forgotten_durable {
                p.skip_at = None;
                continue;
            }
            let frame = Header::of(&self.id, self.incarnation, p, self.security).frame(
                FrameKind::Skip,
                p.forgotten_durable,
                p.delivered_committed,
                p.peer_acked,
                Vec::new(),
            );
            p.ack_sent = p.ack_sent.max(p.delivered_committed);
            p.skip_at = Some(now.plus(p.skip_interval));
            p.skip_interval = (p.skip_interval * 2).min(ceiling);
            self.stats.skips_sent += 1;
            self.commands.push(Command::Send {
                to: p.id.clone(),
                frame,
                after: self.durable,
            });
        }
    }

    /// A data or `Skip` frame from `pid` up to `seq`, already consumed: dropped, and
    /// acknowledged again once durable (our earlier acknowledgement may have been lost).
    fn drop_duplicate(&mut self, pid: &ProcessId, seq: u64) {
        self.stats.duplicates_dropped += 1;
        if seq <= self.peers[pid].delivered_committed {
            self.send_ack(pid);
        }
    }

    /// A `Skip` from `pid`: its messages up to `through` were withdrawn. Those not consumed
    /// count as consumed (durably, with the next batch); buffered later ones are delivered.
    fn on_skip(&mut self, now: Time, pid: &ProcessId, through: u64) {
        let p = self.peers.get_mut(pid).expect("known peer");
        if through <= p.delivered {
            self.drop_duplicate(pid, through);
            return;
        }
        let skipped = through - p.delivered;
        tracing::warn!(
            peer = %pid,
            from = p.delivered + 1,
            through,
            "the peer withdrew messages it had not delivered (its application forgot this \
             process); they are skipped"
        );
        self.stats.messages_skipped += skipped;
        p.reorder.retain(|&s, _| s > through);
        p.delivered = through;
        p.dirty = true;
        self.filling.nonempty = true;
        // A pair held at the old `delivered + 1` (newer version, poison) held a withdrawn
        // message: nothing to wait for any more.
        self.held_peers.remove(pid);
        self.release_held_row(pid, through);
        self.drop_poison_skips(pid, through);
        self.deliver_buffered(now, pid);
    }

    /// Deletes (with the filling batch) the operator's orders to dead-letter poison
    /// messages of `pid` numbered up to `through`: those messages will never be delivered.
    fn drop_poison_skips(&mut self, pid: &ProcessId, through: u64) {
        if self.poison_skips.is_empty() {
            return;
        }
        let gone: Vec<u64> = self
            .poison_skips
            .range((pid.clone(), 0)..=(pid.clone(), through))
            .map(|((_, seq), _)| *seq)
            .collect();
        for seq in gone {
            self.poison_skips.remove(&(pid.clone(), seq));
            tracing::info!(peer = %pid, seq, "the poison message to dead-letter was withdrawn; order deleted");
            self.runtime_delete(
                living::SKIP_POISON_TABLE,
                living::dead_letter_key(pid.as_str(), seq),
            );
        }
    }

    fn on_request(&mut self, now: Time, frame: Frame) {
        let (Some(client), n) = (ClientId::from_process_id(&frame.from), frame.seq.0) else {
            self.stats.malformed_frames += 1;
            return;
        };
        if n == 0 {
            self.stats.malformed_frames += 1;
            return;
        }
        if n > limits::WIRE_NUMBER_MAX {
            // The store could not hold it; no client numbers that far.
            self.stats.out_of_range_frames += 1;
            return;
        }
        let to = ReplyTo {
            auth: frame.auth,
            request_bytes: frame.encoded_len(),
        };
        let credentialed = matches!(frame.auth, Auth::Client { .. });
        if self.security.authenticated && !credentialed {
            self.stats.requests_unauthorized += 1;
            let body = ken_store::codec::encode(&ReplyBody::Unauthorized(
                "this cluster has a key: use a client credential (ken client-credential)".into(),
            ));
            self.send_client(client, n, FrameKind::ClientReply, body, to);
            return;
        }
        if !self.security.authenticated && frame.auth != Auth::None {
            // Only a host with keys can vouch for a tag.
            self.stats.malformed_frames += 1;
            return;
        }
        if frame.to_incarnation.0 != 0 && frame.to_incarnation != self.incarnation {
            self.stats.stale_incarnation_frames += 1;
            self.send_client(client, n, FrameKind::Reject, b"store replaced".to_vec(), to);
            return;
        }
        let envelope = match ken_store::codec::decode::<RequestEnvelope>(&frame.payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.stats.requests_undecodable += 1;
                let body = ken_store::codec::encode(&ReplyBody::BadRequest(format!(
                    "not a Ken client request (a client of another version?): {e}"
                )));
                self.send_client(client, n, FrameKind::ClientReply, body, to);
                return;
            }
        };
        if let Some(e) = self.clients.get(&client) {
            if n <= e.last {
                if n == e.durable_last {
                    // A retry of the last durable request: the cached reply, not a new turn.
                    let inline = e.durable_reply.clone();
                    let reply = match inline {
                        Some(reply) => reply,
                        None => match self.tables.client(&client.0) {
                            Ok(Some((m, reply))) if m == n => reply,
                            // The row moved on (the client's next request committed since):
                            // a stale retry, whose reply the client already had.
                            Ok(_) => ken_store::codec::encode(&ReplyBody::TooOld { last: n }),
                            Err(e) => {
                                self.fail(EngineError::TurnFault {
                                    turn: self.turns_total,
                                    what: format!("reading the reply cache: {e}"),
                                });
                                return;
                            }
                        },
                    };
                    self.stats.requests_replayed += 1;
                    self.send_client(client, n, FrameKind::ClientReply, reply, to);
                } else if n < e.durable_last {
                    self.stats.requests_too_old += 1;
                    let body = ken_store::codec::encode(&ReplyBody::TooOld {
                        last: e.durable_last,
                    });
                    self.send_client(client, n, FrameKind::ClientReply, body, to);
                }
                // Otherwise applied by a turn not yet durable: its reply follows the commit.
                return;
            }
        }
        // A new request: applied only if first sent within the retry window (client.rs
        // says why this makes eviction safe).
        let sent = Time::from_millis(envelope.sent_ms);
        let oldest = Time(now.0.saturating_sub(
            (limits::CLIENT_RETRY_WINDOW + limits::CLIENT_CLOCK_SKEW_MAX).as_micros() as u64,
        ));
        if sent < oldest || sent > now.plus(limits::CLIENT_CLOCK_SKEW_MAX) {
            self.stats.requests_expired += 1;
            let body = ken_store::codec::encode(&ReplyBody::Expired {
                sent_ms: envelope.sent_ms,
                now_ms: now.as_millis(),
            });
            self.send_client(client, n, FrameKind::ClientReply, body, to);
            return;
        }
        if !self.accepting_input() {
            self.stats.backpressure_dropped += 1;
            return;
        }
        if !self.clients.contains_key(&client) && !self.make_room_for_client(now) {
            self.stats.requests_refused += 1;
            let body = ken_store::codec::encode(&ReplyBody::Refused(format!(
                "reply cache full ({} clients active within {:?}); retry later",
                limits::CLIENTS_MAX,
                limits::CLIENT_IDLE_EVICT
            )));
            self.send_client(client, n, FrameKind::ClientReply, body, to);
            return;
        }
        let request = match ken_store::codec::decode::<H::Request>(&envelope.request) {
            Ok(request) => request,
            Err(e) => {
                // Not applied and not cached: no turn ran. A client of another application
                // (or of a newer version) learns why at once instead of timing out.
                self.stats.requests_undecodable += 1;
                let body = ken_store::codec::encode(&ReplyBody::BadRequest(format!(
                    "the request does not decode as this process's request type: {e}"
                )));
                self.send_client(client, n, FrameKind::ClientReply, body, to);
                return;
            }
        };
        if let Some(held) = self.poisoned_requests.get(&(client, n)) {
            let HeldReason::Panicked { message } = &held.reason else {
                unreachable!("requests are held only for panics")
            };
            let body = ken_store::codec::encode(&ReplyBody::Panicked(message.clone()));
            self.send_client(client, n, FrameKind::ClientReply, body, to);
            return;
        }
        let input = Input::Request {
            client,
            request_no: n,
            request,
        };
        let reply = match self.run_turn(now, input, "request", client.to_string(), n) {
            Ok(reply) => reply,
            Err(TurnFailed::Fault) => return,
            Err(TurnFailed::Panicked(message)) => {
                // Not applied, not cached: answered at once, and the same on every retry
                // in this life.
                self.record_poison(now, "request", &client.to_string(), n, &message);
                let body = ken_store::codec::encode(&ReplyBody::Panicked(message.clone()));
                self.poisoned_requests.insert(
                    (client, n),
                    Held {
                        source: HeldSource::Request {
                            client,
                            request_no: n,
                        },
                        reason: HeldReason::Panicked { message },
                        since: now,
                    },
                );
                self.send_client(client, n, FrameKind::ClientReply, body, to);
                return;
            }
        };
        self.stats.requests_applied += 1;
        let body = ken_store::codec::encode(&ReplyBody::Ok(reply));
        let e = self.clients.entry(client).or_insert(ClientEntry {
            last: 0,
            updated: now,
            durable_last: 0,
            durable_reply: None,
        });
        self.clients_lru.remove(&(e.updated, client));
        e.last = n;
        e.updated = now;
        self.clients_lru.insert((now, client));
        self.filling
            .batch
            .clients
            .push(ClientChange::Put(ClientRow {
                client: client.0,
                request_no: n,
                reply: body.clone(),
                updated_ms: now.as_millis(),
            }));
        self.filling.replies.push((client, n, body, to));
        if self.tuning.releases_before_commit() {
            self.release_before_commit(now);
        }
    }

    /// Makes room for a new client in a full reply cache: evicts the least recently used
    /// client idle for at least [`limits::CLIENT_IDLE_EVICT`] whose last request is durable.
    /// False if every client was active more recently.
    fn make_room_for_client(&mut self, now: Time) -> bool {
        if self.clients.len() < limits::CLIENTS_MAX {
            return true;
        }
        let evictable = self
            .clients_lru
            .iter()
            .take_while(|(updated, _)| now.since(*updated) >= limits::CLIENT_IDLE_EVICT)
            .find(|(_, c)| {
                self.clients
                    .get(c)
                    .is_some_and(|e| e.last == e.durable_last)
            })
            .copied();
        let Some((updated, client)) = evictable else {
            return false;
        };
        self.clients_lru.remove(&(updated, client));
        self.clients.remove(&client);
        self.stats.clients_evicted += 1;
        self.filling
            .batch
            .clients
            .push(ClientChange::Evict { client: client.0 });
        true
    }

    /// Releases the replies of a durable batch (or, under the test-only switch, early).
    fn release_replies(&mut self, replies: Vec<(ClientId, u64, Vec<u8>, ReplyTo)>) {
        for (client, n, body, to) in replies {
            if let Some(e) = self.clients.get_mut(&client) {
                if n >= e.durable_last {
                    e.durable_last = n;
                    e.durable_reply = (body.len() <= REPLY_INLINE_MAX).then(|| body.clone());
                }
            }
            self.send_client(client, n, FrameKind::ClientReply, body, to);
        }
    }

    /// Answers request `n` of `client`, protected as the request was. A reply to a request
    /// without a credential larger than [`limits::AMPLIFICATION_MAX`] times the request is
    /// replaced by `Pad` (the client resends the request padded, and the reply comes from the
    /// cache, or is made again if it was not cached).
    fn send_client(
        &mut self,
        client: ClientId,
        n: u64,
        kind: FrameKind,
        payload: Vec<u8>,
        to: ReplyTo,
    ) {
        let mut frame = Frame {
            kind,
            auth: to.auth,
            from: self.id.clone(),
            from_incarnation: self.incarnation,
            to: client.to_process_id(),
            to_incarnation: Incarnation(0),
            seq: Seq(n),
            ack: Seq(0),
            acked: Seq(0),
            payload,
        };
        if to.auth == Auth::None {
            let cap = to.request_bytes.saturating_mul(limits::AMPLIFICATION_MAX);
            if frame.encoded_len() > cap {
                self.stats.replies_padded += 1;
                let needed = frame.encoded_len().div_ceil(limits::AMPLIFICATION_MAX);
                frame.kind = FrameKind::ClientReply;
                frame.payload = ken_store::codec::encode(&ReplyBody::Pad {
                    datagram_bytes: u32::try_from(needed).unwrap_or(u32::MAX),
                });
                // Every request is larger than a `Pad` reply's quarter: the header of a
                // request names a 34-byte client id, the reply's a process id of at most
                // 64 bytes, and the request's envelope outweighs the `Pad` body.
                debug_assert!(frame.encoded_len() <= cap, "a Pad reply fits the cap");
                if frame.encoded_len() > cap {
                    return;
                }
            }
        }
        self.commands.push(Command::Send {
            to: frame.to.clone(),
            frame,
            after: self.durable,
        });
    }

    fn on_ack(&mut self, now: Time, pid: &ProcessId, ack: u64) {
        let p = self.peers.get_mut(pid).expect("known peer");
        // (An ack of a message never committed was refused by the pair check already.)
        debug_assert!(ack < p.committed_next_seq);
        if ack > p.peer_acked {
            p.peer_acked = ack;
            if p.peer_acked >= p.forgotten_durable {
                p.skip_at = None;
            }
            if ack <= p.acked {
                // Only after a forget: the stored acknowledgement still grows.
                p.dirty = true;
                self.filling.nonempty = true;
            }
        }
        if ack <= p.acked {
            return;
        }
        let mut sample = None;
        while p.outbox.front().is_some_and(|e| e.seq <= ack) {
            let e = p.outbox.pop_front().expect("front exists");
            // The in-flight messages are a prefix of the outbox.
            p.in_flight = p.in_flight.saturating_sub(1);
            if e.transmissions == 1 {
                if let Some(first) = e.first_sent {
                    sample = Some(now.since(first));
                }
            }
        }
        p.acked = ack;
        p.dirty = true;
        self.filling.nonempty = true;
        if let Some(s) = sample {
            p.rto.sample(s);
        }
        p.rto.reset_backoff();
        p.retransmit_at = (p.in_flight > 0).then(|| now.plus(p.rto.current()));
        self.pump(now, pid);
    }

    fn on_data(&mut self, now: Time, pid: &ProcessId, seq: u64, payload: Vec<u8>) {
        if seq == 0 {
            self.stats.malformed_frames += 1;
            return;
        }
        let accepting = self.accepting_input();
        let reorder_max = self.tuning.reorder_buffer_max;
        let p = self.peers.get_mut(pid).expect("known peer");
        if seq <= p.delivered {
            self.drop_duplicate(pid, seq);
            return;
        }
        if !accepting {
            self.stats.backpressure_dropped += 1;
            return;
        }
        if seq > p.delivered + 1 {
            if seq <= p.delivered + reorder_max && !p.reorder.contains_key(&seq) {
                p.reorder.insert(seq, payload);
                self.stats.out_of_order_buffered += 1;
            } else {
                self.stats.out_of_order_dropped += 1;
            }
            return;
        }
        if !self.deliver(now, pid, seq, payload) {
            return;
        }
        self.deliver_buffered(now, pid);
    }

    /// Delivers the buffered arrivals that now follow `delivered` without a gap, until one is
    /// not consumed (its pair is held).
    fn deliver_buffered(&mut self, now: Time, pid: &ProcessId) {
        loop {
            if self.failed {
                return;
            }
            let p = self.peers.get_mut(pid).expect("known peer");
            let next = p.delivered + 1;
            let Some(payload) = p.reorder.remove(&next) else {
                break;
            };
            if !self.deliver(now, pid, next, payload) {
                break;
            }
        }
    }

    /// Delivers message `seq` of `pid` (the next one expected). False if it was not
    /// consumed: its pair is held (or the engine failed); later messages must wait.
    fn deliver(&mut self, now: Time, pid: &ProcessId, seq: u64, payload: Vec<u8>) -> bool {
        let p = self.peers.get(pid).expect("known peer");
        assert_eq!(seq, p.delivered + 1, "deliver in order");
        if self.held_peers.contains_key(pid) {
            self.stats.messages_held += 1;
            return false;
        }
        let skip = if self.poison_skips.is_empty() {
            None
        } else {
            self.poison_skips.remove(&(pid.clone(), seq))
        };
        if let Some(skip) = skip {
            // An operator moved this poison message to the dead letters: consumed without
            // running it, the order's row deleted in the same batch.
            self.runtime_delete(
                living::SKIP_POISON_TABLE,
                living::dead_letter_key(pid.as_str(), seq),
            );
            let (version, bytes) = match ken_store::unwrap_payload(&payload) {
                Some((version, bytes)) => (version, bytes.to_vec()),
                None => (0, payload.clone()),
            };
            return self.dead_letter(
                now,
                pid,
                seq,
                version,
                bytes,
                skip.error,
                "operator: poison message dead-lettered".to_string(),
            );
        }
        let decoded = match ken_store::unwrap_payload(&payload) {
            None => Err((
                0,
                Vec::new(),
                "the payload is shorter than its version envelope".to_string(),
            )),
            Some((version, bytes)) if version > H::SCHEMA_VERSION => {
                if self.tuning.drops_held_messages() {
                    // TEST ONLY (negative control): consumed and dropped, as before.
                    Err((version, bytes.to_vec(), "newer version dropped".to_string()))
                } else {
                    self.stats.messages_held += 1;
                    tracing::warn!(
                        peer = %pid,
                        seq,
                        version,
                        known = H::SCHEMA_VERSION,
                        "message of a newer schema version held (not acknowledged) until this \
                         process runs a binary that reads it"
                    );
                    self.held_peers.insert(
                        pid.clone(),
                        Held {
                            source: HeldSource::Peer {
                                peer: pid.clone(),
                                seq,
                            },
                            reason: HeldReason::NewerVersion { version },
                            since: now,
                        },
                    );
                    self.record_held_row(now, pid, seq, version);
                    return false;
                }
            }
            Some((version, bytes)) if version == H::SCHEMA_VERSION => {
                ken_store::codec::decode::<H::Message>(bytes)
                    .map_err(|e| (version, bytes.to_vec(), e.to_string()))
            }
            Some((version, bytes)) => self
                .handler
                .upgrade_message(version, bytes)
                .map_err(|e| (version, bytes.to_vec(), e)),
        };
        match decoded {
            Ok(message) => {
                let input = Input::Message {
                    from: pid.clone(),
                    seq: Seq(seq),
                    message,
                };
                let p = self.peers.get_mut(pid).expect("known peer");
                p.delivered = seq;
                p.dirty = true;
                match self.run_turn(now, input, "message", pid.to_string(), seq) {
                    Ok(_) => {
                        self.release_held_row(pid, seq);
                        true
                    }
                    Err(TurnFailed::Fault) => false,
                    Err(TurnFailed::Panicked(message)) => {
                        // Not consumed: neither delivered nor acknowledged.
                        self.peers.get_mut(pid).expect("known peer").delivered = seq - 1;
                        self.record_poison(now, "message", pid.as_str(), seq, &message);
                        self.held_peers.insert(
                            pid.clone(),
                            Held {
                                source: HeldSource::Peer {
                                    peer: pid.clone(),
                                    seq,
                                },
                                reason: HeldReason::Panicked { message },
                                since: now,
                            },
                        );
                        false
                    }
                }
            }
            Err((version, bytes, error)) => {
                let note = error.clone();
                self.stats.undecodable_messages += 1;
                self.dead_letter(now, pid, seq, version, bytes, error, note)
            }
        }
    }

    /// Consumes message `seq` of `pid` without calling the handler: acknowledged, and
    /// recorded whole in the dead-letter table (never silently dropped), with a turn-log
    /// entry. Returns true (consumed).
    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &mut self,
        now: Time,
        pid: &ProcessId,
        seq: u64,
        version: u32,
        bytes: Vec<u8>,
        error: String,
        note: String,
    ) -> bool {
        let p = self.peers.get_mut(pid).expect("known peer");
        p.delivered = seq;
        p.dirty = true;
        self.release_held_row(pid, seq);
        let dropped = self.tuning.drops_held_messages() && version > H::SCHEMA_VERSION;
        if !dropped {
            self.stats.dead_letters += 1;
            tracing::warn!(peer = %pid, seq, version, %error, %note, "message dead-lettered");
            let letter = DeadLetter {
                peer: pid.to_string(),
                seq,
                version,
                error: error.clone(),
                bytes,
                at_ms: now.as_millis(),
            };
            self.runtime_write(
                living::DEAD_LETTERS_TABLE,
                living::dead_letter_key(pid.as_str(), seq),
                ken_store::codec::encode(&letter),
            );
        }
        let kind = if dropped { "dropped" } else { "dead_letter" };
        self.log_runtime_turn(now, kind, pid, seq, note);
        true
    }

    /// Counts an input the runtime consumed without calling the handler (a dead letter, an
    /// admission) as a turn of the filling batch, with its turn-log entry.
    fn log_runtime_turn(
        &mut self,
        now: Time,
        kind: &str,
        source: &ProcessId,
        seq: u64,
        note: String,
    ) {
        self.turns_total += 1;
        self.filling.turns += 1;
        self.filling.nonempty = true;
        self.filling.batch.turn_log.push(TurnLogEntry {
            turn: self.turns_total,
            at_ms: now.as_millis(),
            input_kind: kind.into(),
            input_source: source.to_string(),
            input_seq: seq,
            messages_out: 0,
            outputs: 0,
            bytes_written: 0,
            note,
        });
    }

    /// Loads the poison messages an operator moved to the dead letters
    /// ([`living::SKIP_POISON_TABLE`]); deletes (with the filling batch) those whose message
    /// was consumed already.
    fn load_poison_skips(&mut self) {
        let Some(rows) = self.runtime_rows(living::SKIP_POISON_TABLE) else {
            return;
        };
        for (key, value) in rows {
            let parsed = key
                .iter()
                .position(|b| *b == 0)
                .filter(|at| key.len() == at + 9)
                .and_then(|at| {
                    let peer = ProcessId::new(String::from_utf8(key[..at].to_vec()).ok()?).ok()?;
                    let seq = u64::from_be_bytes(key[at + 1..].try_into().ok()?);
                    Some((peer, seq))
                });
            let (Some((peer, seq)), Ok(skip)) =
                (parsed, ken_store::codec::decode::<PoisonSkip>(&value))
            else {
                tracing::error!(
                    table = living::SKIP_POISON_TABLE,
                    "a row does not decode; left in place"
                );
                continue;
            };
            if self.peers.get(&peer).is_some_and(|p| p.delivered >= seq) {
                tracing::info!(%peer, seq, "the poison message to dead-letter was consumed already; order deleted");
                self.runtime_delete(living::SKIP_POISON_TABLE, key);
                continue;
            }
            self.poison_skips.insert((peer, seq), skip);
        }
    }

    /// Loads the rows of [`living::HELD_TABLE`]; deletes (with the filling batch) those whose
    /// message was consumed already or whose peer is no longer known.
    fn load_held_rows(&mut self) {
        let Some(rows) = self.runtime_rows(living::HELD_TABLE) else {
            return;
        };
        for (key, value) in rows {
            let peer = String::from_utf8(key.clone())
                .ok()
                .and_then(|k| ProcessId::new(k).ok());
            let (Some(peer), Ok(row)) = (peer, ken_store::codec::decode::<HeldPair>(&value)) else {
                tracing::error!(
                    table = living::HELD_TABLE,
                    "a row does not decode; left in place"
                );
                continue;
            };
            if self.peers.get(&peer).is_none_or(|p| p.delivered >= row.seq) {
                self.runtime_delete(living::HELD_TABLE, key);
                continue;
            }
            self.held_rows.insert(peer, row);
        }
    }

    /// Records (with the filling batch) that message `seq` of `pid`, of schema `version`, is
    /// held: once per message and binary version, the first `since_ms` kept.
    fn record_held_row(&mut self, now: Time, pid: &ProcessId, seq: u64, version: u32) {
        let since_ms = match self.held_rows.get(pid) {
            Some(r) if r.seq == seq && r.version == version && r.known == H::SCHEMA_VERSION => {
                return;
            }
            Some(r) if r.seq == seq => r.since_ms,
            _ => now.as_millis(),
        };
        let row = HeldPair {
            seq,
            version,
            known: H::SCHEMA_VERSION,
            since_ms,
        };
        self.runtime_write(
            living::HELD_TABLE,
            pid.as_str().as_bytes().to_vec(),
            ken_store::codec::encode(&row),
        );
        self.held_rows.insert(pid.clone(), row);
    }

    /// Deletes (with the filling batch) the hold record of `pid` if its message, numbered up
    /// to `through`, was consumed or withdrawn.
    fn release_held_row(&mut self, pid: &ProcessId, through: u64) {
        if self.held_rows.get(pid).is_some_and(|r| r.seq <= through) {
            self.held_rows.remove(pid);
            self.runtime_delete(living::HELD_TABLE, pid.as_str().as_bytes().to_vec());
        }
    }

    /// Runs the dead letters an operator queued for replay ([`living::REPLAY_TABLE`], see
    /// [`living::dead_letter_action`]), in key order, each as a message turn of its peer and
    /// sequence number, its row deleted in the same batch. One of a newer schema version
    /// stays queued; one that still does not decode goes back to the dead letters with the
    /// new error; one whose turn panics stays queued (recorded as poison, tried again at the
    /// next start).
    fn replay_dead_letters(&mut self, now: Time) {
        let Some(rows) = self.runtime_rows(living::REPLAY_TABLE) else {
            return;
        };
        for (key, value) in rows {
            let letter = match ken_store::codec::decode::<DeadLetter>(&value) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "a queued replay does not decode; left in place");
                    continue;
                }
            };
            let Ok(pid) = ProcessId::new(letter.peer.clone()) else {
                tracing::error!(peer = %letter.peer, "a queued replay names an invalid peer; left in place");
                continue;
            };
            let decoded = if letter.version > H::SCHEMA_VERSION {
                tracing::warn!(
                    peer = %pid,
                    seq = letter.seq,
                    version = letter.version,
                    "a queued replay is of a newer schema version; left queued"
                );
                continue;
            } else if letter.version == H::SCHEMA_VERSION {
                ken_store::codec::decode::<H::Message>(&letter.bytes).map_err(|e| e.to_string())
            } else {
                self.handler.upgrade_message(letter.version, &letter.bytes)
            };
            let message = match decoded {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(peer = %pid, seq = letter.seq, %error, "a replayed dead letter still does not decode: dead-lettered again");
                    self.runtime_delete(living::REPLAY_TABLE, key.clone());
                    let again = DeadLetter {
                        error: error.clone(),
                        at_ms: now.as_millis(),
                        ..letter.clone()
                    };
                    self.runtime_write(
                        living::DEAD_LETTERS_TABLE,
                        key,
                        ken_store::codec::encode(&again),
                    );
                    self.stats.dead_letters += 1;
                    let note = format!("replay: {error}");
                    self.log_runtime_turn(now, "dead_letter", &pid, letter.seq, note);
                    continue;
                }
            };
            let input = Input::Message {
                from: pid.clone(),
                seq: Seq(letter.seq),
                message,
            };
            match self.run_turn(now, input, "replay", pid.to_string(), letter.seq) {
                Ok(_) => self.runtime_delete(living::REPLAY_TABLE, key),
                Err(TurnFailed::Fault) => return,
                Err(TurnFailed::Panicked(message)) => {
                    self.record_poison(now, "replay", pid.as_str(), letter.seq, &message);
                }
            }
        }
    }

    /// Loads the pending tasks ([`task::TASKS_TABLE`]): each is due at once (its earlier
    /// attempts, if any, were cut short by the crash or the stop).
    fn load_tasks(&mut self, now: Time) {
        let Some(rows) = self.runtime_rows(task::TASKS_TABLE) else {
            return;
        };
        for (key, value) in rows {
            match (
                TaskId::from_key(&key),
                ken_store::codec::decode::<TaskRecord>(&value),
            ) {
                (Some(id), Ok(record)) => self.tasks.recovered(now, id, record),
                // As the other runtime tables: named loudly, left in place for an operator
                // (`ken inspect STORE tasks` names it as corrupted).
                _ => tracing::error!(
                    table = task::TASKS_TABLE,
                    key = %ken_store::codec::printable_key(&key),
                    "a row is not a task record; left in place, not run"
                ),
            }
        }
        self.start_due_tasks(now);
    }

    /// Hands out the task attempts due now (within the concurrency bound).
    fn start_due_tasks(&mut self, now: Time) {
        if self.failed {
            return;
        }
        for start in self.tasks.due(now) {
            self.stats.task_attempts += 1;
            self.commands.push(Command::StartTask {
                key: task::task_key(&self.id, self.incarnation, start.id),
                id: start.id,
                name: start.name,
                payload: start.payload,
                attempt: start.attempt,
                after: self.durable,
            });
        }
    }

    /// Runs a turn per task result waiting, while input is accepted: each deletes its
    /// task's record in the same batch, so it is consumed exactly once. A panicking turn
    /// holds the task for the rest of this life (recorded as poison; run again after a
    /// restart).
    fn deliver_task_results(&mut self, now: Time) {
        while self.accepting_input() && !self.failed && self.tasks.has_results() {
            let (id, name, result) = self.tasks.next_result().expect("a result waits");
            let input = Input::TaskDone {
                id,
                name: name.clone(),
                result,
            };
            match self.run_turn(now, input, "task", name.clone(), id.0) {
                Ok(_) => {
                    self.runtime_delete(task::TASKS_TABLE, id.key_bytes().to_vec());
                    self.tasks.delivered(id);
                    self.stats.task_results_delivered += 1;
                }
                Err(TurnFailed::Fault) => return,
                Err(TurnFailed::Panicked(message)) => {
                    self.record_poison(now, "task", &name, id.0, &message);
                    self.tasks.hold(id);
                }
            }
        }
    }

    /// Every committed row of runtime table `table`; `None` (the engine has failed) if the
    /// store cannot be read.
    fn runtime_rows(&mut self, table: &str) -> Option<tables::Rows> {
        match self.tables.scan(table, b"", None, u32::MAX) {
            Ok(rows) => Some(rows),
            Err(e) => {
                self.fail(EngineError::TurnFault {
                    turn: self.turns_total,
                    what: format!("reading {table}: {e}"),
                });
                None
            }
        }
    }

    /// Deletes a row of a runtime table (`ken.*`) with the filling batch.
    fn runtime_delete(&mut self, table: &str, key: Vec<u8>) {
        self.tables.write(self.next_batch, table, key.clone(), None);
        self.filling.batch.table_writes.push(TableWrite {
            table: table.to_string(),
            key,
            value: None,
        });
        self.filling.nonempty = true;
    }

    /// A row of a runtime table (`ken.*`) written with the filling batch.
    fn runtime_write(&mut self, table: &str, key: Vec<u8>, value: Vec<u8>) {
        self.tables
            .write(self.next_batch, table, key.clone(), Some(value.clone()));
        self.filling.batch.table_writes.push(TableWrite {
            table: table.to_string(),
            key,
            value: Some(value),
        });
        self.filling.nonempty = true;
    }

    /// Records a poison input durably (with the filling batch) and counts it.
    fn record_poison(&mut self, now: Time, kind: &str, source: &str, seq: u64, message: &str) {
        self.stats.turns_panicked += 1;
        tracing::error!(
            process = %self.id,
            kind,
            source,
            seq,
            panic = message,
            "the handler panicked: turn discarded, input recorded (ken.poison) and held until \
             a restart (deploy a fixed binary)"
        );
        let p = Poison {
            kind: kind.to_string(),
            source: source.to_string(),
            seq,
            message: message.to_string(),
            at_ms: now.as_millis(),
        };
        self.runtime_write(
            living::POISON_TABLE,
            living::poison_key(&p),
            ken_store::codec::encode(&p),
        );
    }

    /// Runs one turn into the filling batch. Returns the turn's reply (empty if it gave
    /// none), or why it failed: a fault (the engine has failed then), or a panic (the turn
    /// was discarded: none of its effects applied, the state restored; the caller holds the
    /// input).
    fn run_turn(
        &mut self,
        now: Time,
        input: Input<H::Message, H::Request>,
        kind: &str,
        source: String,
        seq: u64,
    ) -> Result<Vec<u8>, TurnFailed> {
        self.turns_total += 1;
        let turn_no = self.turns_total;
        let batch_id = self.next_batch;
        let span = tracing::trace_span!("turn", process = %self.id, turn = turn_no, kind);
        let _guard = span.enter();
        let view = PeerDepths(&self.peers);
        let mut turn: Turn<'_, H::Message, H::Reply> = Turn {
            now,
            id: &self.id,
            turn_no,
            tables: &mut self.tables,
            peers: &view,
            rng: &mut self.rng,
            tasks_pending: self.tasks.pending(),
            effects: Effects::default(),
            _types: PhantomData,
        };
        let handler = &self.handler;
        let state = &mut self.state;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.on_turn(state, &mut turn, input);
        }));
        let effects = turn.effects;
        if let Err(payload) = ran {
            // Discarded: the effects are dropped unapplied, the state is what the last turn
            // left (re-decoded from its encoding), the turn number is given back.
            self.turns_total -= 1;
            match ken_store::codec::decode::<H::State>(&self.state_bytes) {
                Ok(state) => self.state = state,
                Err(e) => {
                    self.fail(EngineError::RootDecode(format!(
                        "restoring the state after a panic: {e}"
                    )));
                    return Err(TurnFailed::Fault);
                }
            }
            return Err(TurnFailed::Panicked(living::panic_message(&*payload)));
        }
        if let Some(what) = effects.fault {
            self.fail(EngineError::TurnFault {
                turn: turn_no,
                what,
            });
            return Err(TurnFailed::Fault);
        }
        self.state_bytes = ken_store::codec::encode(&self.state);
        let mut bytes_written = 0usize;
        for (table, rows) in effects.writes {
            for (key, value) in rows {
                bytes_written += key.len() + value.as_ref().map_or(0, Vec::len);
                self.tables
                    .write(batch_id, &table, key.clone(), value.clone());
                self.filling.batch.table_writes.push(TableWrite {
                    table: table.clone(),
                    key,
                    value,
                });
            }
        }
        // Forgets first: they withdraw what earlier turns queued, never this turn's sends.
        for peer in &effects.forget {
            self.forget_peer(peer);
        }
        let messages_out = effects.sends.len() as u32;
        for (to, payload) in effects.sends {
            let p = self.peers.get_mut(&to).expect("Turn::send checks the peer");
            let seq = p.next_seq;
            p.next_seq += 1;
            p.dirty = true;
            bytes_written += payload.len();
            let payload = ken_store::wrap_payload(H::SCHEMA_VERSION, &payload);
            self.filling.batch.outbox_appends.push(OutboxRow {
                peer: to.to_string(),
                seq,
                payload: payload.clone(),
                created_ms: now.as_millis(),
            });
            p.outbox.push_back(OutEntry {
                seq,
                payload,
                first_sent: None,
                last_sent: Time::ZERO,
                transmissions: 0,
            });
        }
        for op in effects.timers {
            match op {
                TimerOp::Set { name, due, payload } => {
                    self.held_timers.remove(&name);
                    if let Some((old, _)) = self.timers.insert(name.clone(), (due, payload.clone()))
                    {
                        self.timer_queue.remove(&(old, name.clone()));
                    }
                    self.timer_queue.insert((due, name.clone()));
                    self.filling.batch.timers.push(TimerChange::Set {
                        name,
                        due_ms: due.as_millis(),
                        payload,
                    });
                }
                TimerOp::Cancel { name } => {
                    self.held_timers.remove(&name);
                    if let Some((old, _)) = self.timers.remove(&name) {
                        self.timer_queue.remove(&(old, name.clone()));
                    }
                    self.filling.batch.timers.push(TimerChange::Cancel { name });
                }
            }
        }
        for (id, members) in effects.fuse_creates {
            self.fuse.created(now, id, members);
        }
        for id in effects.fuse_signals {
            self.fuse.signal(id);
        }
        for (id, name, payload) in effects.tasks {
            let record = TaskRecord {
                name,
                payload,
                created_ms: now.as_millis(),
                failures: 0,
                last_error: None,
                last_error_ms: 0,
            };
            let bytes = ken_store::codec::encode(&record);
            bytes_written += bytes.len();
            self.runtime_write(task::TASKS_TABLE, id.key_bytes().to_vec(), bytes);
            self.tasks.recorded(id, record, batch_id);
            self.stats.tasks_started += 1;
        }
        let outputs = effects.emits.len() as u32 + u32::from(effects.reply.is_some());
        self.filling.emits.extend(effects.emits);
        self.filling.batch.turn_log.push(TurnLogEntry {
            turn: turn_no,
            at_ms: now.as_millis(),
            input_kind: kind.to_string(),
            input_source: source,
            input_seq: seq,
            messages_out,
            outputs,
            bytes_written: bytes_written as u64,
            note: String::new(),
        });
        self.filling.turns += 1;
        self.filling.bytes += bytes_written;
        self.filling.nonempty = true;
        self.stats.turns += 1;
        if self.tuning.releases_before_commit() {
            self.release_before_commit(now);
        }
        Ok(effects.reply.unwrap_or_default())
    }

    /// TEST ONLY (negative control): behave as if the filling batch were durable already.
    fn release_before_commit(&mut self, now: Time) {
        let ids: Vec<ProcessId> = self.peers.keys().cloned().collect();
        for id in &ids {
            let p = self.peers.get_mut(id).expect("known peer");
            p.committed_next_seq = p.next_seq;
            p.delivered_committed = p.delivered;
            self.pump(now, id);
            self.ack_if_owed(id);
        }
        for line in std::mem::take(&mut self.filling.emits) {
            self.commands.push(Command::Emit {
                line,
                after: self.durable,
            });
        }
        let replies = std::mem::take(&mut self.filling.replies);
        self.release_replies(replies);
    }

    fn maybe_commit(&mut self, now: Time) {
        if self.committing.is_some() || !self.filling_nonempty() || self.failed {
            return;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        let filling = std::mem::take(&mut self.filling);
        let mut batch = filling.batch;
        batch.now_ms = now.as_millis();
        batch.turns = filling.turns as u64;
        if filling.turns > 0 {
            let root = self.state_bytes.clone();
            if root.len() > limits::ROOT_BYTES_MAX {
                self.fail(EngineError::RootTooLarge {
                    bytes: root.len(),
                    max_bytes: limits::ROOT_BYTES_MAX,
                });
                return;
            }
            if root != self.last_root {
                batch.root = Some(root.clone());
                self.last_root = root;
            }
        }
        let mut snapshot = Vec::new();
        for p in self.peers.values_mut().filter(|p| p.dirty) {
            p.dirty = false;
            if p.acked > p.acked_stored {
                batch.outbox_acks.push(OutboxAck {
                    peer: p.id.to_string(),
                    up_to: p.acked,
                });
                p.acked_stored = p.acked;
            }
            batch.peers.push(PeerRow {
                peer: p.id.to_string(),
                incarnation: p.incarnation.0,
                next_seq: p.next_seq,
                // The peer's real acknowledgement; the outbox floor is max(acked, forgotten).
                acked: p.peer_acked,
                delivered: p.delivered,
                forgotten: p.forgotten,
            });
            snapshot.push((p.id.clone(), p.next_seq, p.delivered, p.forgotten, p.epoch));
        }
        assert!(
            !self.fuse.lifecycle_pending(),
            "a FUSE lifecycle turn runs into the batch that records its change, before the seal"
        );
        let (groups, fuse) = self.fuse.seal();
        batch.groups = groups;
        self.committing = Some(Committing {
            id,
            snapshot,
            emits: filling.emits,
            replies: filling.replies,
            fuse,
        });
        self.commands.push(Command::Commit { id, batch });
    }

    fn check_finished(&mut self) {
        if self.finished_reported
            || self.committing.is_some()
            || self.filling_nonempty()
            || self.needs_start
            || self.tasks.pending() > 0
            || self.peers.values().any(|p| !p.outbox.is_empty())
        {
            return;
        }
        if let Some(report) = self.handler.finished(&self.state) {
            self.finished_reported = true;
            self.commands.push(Command::Finished { report });
        }
    }

    /// Transmits committed, untransmitted messages to `pid` while the window allows.
    fn pump(&mut self, now: Time, pid: &ProcessId) {
        let window = self.tuning.window_messages_max;
        let p = self.peers.get_mut(pid).expect("known peer");
        while p.in_flight < window && p.in_flight < p.outbox.len() {
            let idx = p.in_flight;
            let seq = p.outbox[idx].seq;
            if seq >= p.committed_next_seq {
                break;
            }
            let ack = p.delivered_committed;
            let frame = Header::of(&self.id, self.incarnation, p, self.security).frame(
                FrameKind::Data,
                seq,
                ack,
                p.peer_acked,
                p.outbox[idx].payload.clone(),
            );
            let e = &mut p.outbox[idx];
            assert_eq!(e.transmissions, 0);
            e.transmissions = 1;
            e.first_sent = Some(now);
            e.last_sent = now;
            p.in_flight += 1;
            p.ack_sent = p.ack_sent.max(ack);
            if p.retransmit_at.is_none() {
                p.retransmit_at = Some(now.plus(p.rto.current()));
            }
            self.stats.messages_sent += 1;
            self.commands.push(Command::Send {
                to: pid.clone(),
                frame,
                after: self.durable,
            });
        }
    }

    fn retransmit(&mut self, now: Time, pid: &ProcessId) {
        let p = self.peers.get_mut(pid).expect("known peer");
        let rto = p.rto.current();
        let ack = p.delivered_committed;
        let acked = p.peer_acked;
        let header = Header::of(&self.id, self.incarnation, p, self.security);
        for i in 0..p.in_flight {
            let e = &mut p.outbox[i];
            assert!(
                e.seq < p.committed_next_seq,
                "only committed messages are in flight"
            );
            if e.last_sent.plus(rto) > now {
                continue;
            }
            e.transmissions += 1;
            e.last_sent = now;
            let frame = header.frame(FrameKind::Data, e.seq, ack, acked, e.payload.clone());
            self.stats.retransmits += 1;
            p.retransmits += 1;
            self.commands.push(Command::Send {
                to: pid.clone(),
                frame,
                after: self.durable,
            });
        }
        p.ack_sent = p.ack_sent.max(ack);
        p.rto.back_off();
        p.retransmit_at = (p.in_flight > 0).then(|| now.plus(p.rto.current()));
    }

    /// Sends the due probes: an `Ack` with `seq` [`PROBE_SEQ`] asks the peer to answer with
    /// its view of the pair, which the pair check then compares with this store.
    fn send_probes(&mut self, now: Time) {
        let ceiling = self.tuning.rto_max;
        for p in self.peers.values_mut() {
            if p.probe_at.is_none_or(|t| t > now) {
                continue;
            }
            let frame = Header::of(&self.id, self.incarnation, p, self.security).frame(
                FrameKind::Ack,
                PROBE_SEQ,
                p.delivered_committed,
                p.peer_acked,
                Vec::new(),
            );
            p.probe_at = Some(now.plus(p.probe_interval));
            p.probe_interval = (p.probe_interval * 2).min(ceiling);
            self.stats.probes_sent += 1;
            self.commands.push(Command::Send {
                to: p.id.clone(),
                frame,
                after: self.durable,
            });
        }
    }

    /// A frame from `pid` proved that this store lost history: tell the peer (a `Reject`
    /// from our unchanged incarnation, with our view of the pair) and stop.
    fn rolled_back(&mut self, pid: &ProcessId, evidence: RollbackEvidence) {
        let p = self.peers.get(pid).expect("known peer");
        tracing::error!(peer = %pid, %evidence, "this store lost committed history; stopping");
        let reject = Header::of(&self.id, self.incarnation, p, self.security).frame(
            FrameKind::Reject,
            0,
            p.delivered_committed,
            p.peer_acked,
            format!(
                "{} stopped: your view of the pair proves its store rolled back: you {evidence}",
                self.id
            )
            .into_bytes(),
        );
        self.commands.push(Command::Send {
            to: pid.clone(),
            frame: reject,
            after: self.durable,
        });
        self.fail(EngineError::RolledBack {
            peer: pid.to_string(),
            evidence,
        });
    }

    fn ack_if_owed(&mut self, pid: &ProcessId) {
        let p = &self.peers[pid];
        if p.delivered_committed > p.ack_sent {
            self.send_ack(pid);
        }
    }

    fn send_ack(&mut self, pid: &ProcessId) {
        let p = self.peers.get_mut(pid).expect("known peer");
        let ack = p.delivered_committed;
        p.ack_sent = p.ack_sent.max(ack);
        let frame = Header::of(&self.id, self.incarnation, p, self.security).frame(
            FrameKind::Ack,
            0,
            ack,
            p.peer_acked,
            Vec::new(),
        );
        self.stats.acks_sent += 1;
        self.commands.push(Command::Send {
            to: pid.clone(),
            frame,
            after: self.durable,
        });
    }
}
