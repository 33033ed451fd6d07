//! The application's side of Ken: the [`Handler`] trait, its [`Input`]s and the [`Turn`]
//! context through which a turn does everything it does.
//!
//! A turn is one call of [`Handler::on_turn`] with one input. Everything the handler does
//! goes through the `Turn`: messages ([`Turn::send`]), timers, table writes, outputs. None of
//! it is visible outside the process until the turn's batch is committed; if the process
//! crashes first, the turn never happened. The handler is synchronous and must not block or
//! do its own I/O: that is the one rule that makes crash-restart invisible. Work that needs
//! I/O is started as a task ([`Turn::start_task`]), whose result comes back as an input.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::tables::TableOverlay;
use crate::fuse_types::{FuseError, GroupId};
use crate::limits;
use crate::task::TaskId;
use crate::{ProcessId, Seq, Time};

/// An application: a pure function of (state, input) to (state, effects), run one input at
/// a time. `&self` holds immutable configuration; all mutable state lives in `State` (the
/// durable root, encoded with bincode and written when it changes) and in tables.
pub trait Handler: 'static {
    /// The application's name, recorded in every store it creates: a store of another
    /// application is refused at open (`ken_store::OpenError::WrongApp`).
    const APP: &'static str;
    /// The version of the application's data: its `State`, table values and `Message`
    /// types. Raise it by one whenever their encoding changes, and add a [`Handler::migrate`]
    /// step (and, for messages, an [`Handler::upgrade_message`] case). A store of a newer
    /// version is refused (a downgrade); an older one is migrated at open. See UPGRADES.md.
    const SCHEMA_VERSION: u32 = 1;

    /// The durable root state. Keep it small: large data belongs in tables.
    type State: Serialize + DeserializeOwned + Default;
    /// The messages processes of this application send each other.
    type Message: Serialize + DeserializeOwned;
    /// The requests clients outside Ken send this process (`()` if it serves none). A request
    /// that does not decode as this type is answered with an error and not applied
    /// ([`crate::ClientError::BadRequest`] at the client); the handler never sees it.
    type Request: Serialize + DeserializeOwned;
    /// The answer to a [`Handler::Request`], given with [`Turn::reply`] (`()` if none).
    type Reply: Serialize + DeserializeOwned;

    /// Runs one turn. Must not block, must not do I/O of its own.
    fn on_turn(
        &self,
        state: &mut Self::State,
        turn: &mut Turn<'_, Self::Message, Self::Reply>,
        input: Input<Self::Message, Self::Request>,
    );

    /// Migrates the store's data from schema version `from_version` to `from_version + 1`
    /// (read the old types from `m`, write the new ones). Run at open for each version
    /// between the store's and [`Handler::SCHEMA_VERSION`]; all steps commit in one
    /// transaction with the new version, before the first turn. An error refuses to start,
    /// nothing written. The default has no steps: it fails.
    fn migrate(&self, from_version: u32, _m: &mut crate::Migration<'_>) -> Result<(), String> {
        Err(format!(
            "{} has no migration step from schema version {from_version}",
            Self::APP
        ))
    }

    /// Decodes a message a peer of the older schema version `from_version` sent. The
    /// default decodes it as the current `Message` type (right when the message encoding did
    /// not change). An error sends the message to the dead-letter table
    /// (`ken.dead_letters`), acknowledged and kept for an operator.
    fn upgrade_message(&self, from_version: u32, bytes: &[u8]) -> Result<Self::Message, String> {
        ken_store::codec::decode(bytes)
            .map_err(|e| format!("a message of schema version {from_version} does not decode: {e}"))
    }

    /// Called only on committed state with nothing in flight (every outbox empty): returns
    /// a final report when the process's work is done, and the driver then prints it and
    /// exits 0. Most services never finish; the default is `None`.
    fn finished(&self, _state: &Self::State) -> Option<String> {
        None
    }
}

/// The one input of a turn: `M` is the handler's message type, `Q` its client request type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input<M, Q = ()> {
    /// The first turn of a fresh process (its store was just created).
    Start,
    /// A message from a peer, delivered exactly once and in order per sender.
    Message {
        from: ProcessId,
        seq: Seq,
        message: M,
    },
    /// A durable timer set with [`Turn::set_timer`] or [`Turn::set_timer_with`] fired:
    /// `payload` is the bytes it was set with (empty for `set_timer`).
    Timer { name: String, payload: Vec<u8> },
    /// A request from a client outside Ken, applied exactly once per (client, number). The
    /// handler answers with [`Turn::reply`]; the reply leaves after this turn commits.
    Request {
        client: crate::ClientId,
        request_no: u64,
        request: Q,
    },
    /// A FUSE group this process belongs to failed. Heard exactly once per group, whether
    /// or not [`Input::FuseJoined`] or [`Input::FuseLive`] came first (a group can fail
    /// while it is being created). Never heard for a group this process never recorded:
    /// a member that was down for the whole creation never hears of that group at all (see
    /// "Joining, and groups that failed before you joined" in the [`crate::Turn::fuse_create`]
    /// docs).
    FuseFailure { group: GroupId },
    /// This process was made a member of a FUSE group another process (`creator`)
    /// created, and has recorded it: from now on it monitors the group and hears its
    /// failure. Heard exactly once per group, in a turn that commits with the membership
    /// record (never at the creator, whose own turn created the group). `members` is every
    /// member, this process and the creator included, sorted.
    FuseJoined {
        group: GroupId,
        creator: ProcessId,
        members: Vec<ProcessId>,
    },
    /// A FUSE group this process belongs to became live here: every member has recorded
    /// it (at the creator: all confirmed; at a member: the creator said so). Heard at most
    /// once per group, in a turn that commits with the group's new state; never for a group
    /// that failed first. From this point a failure of any member is guaranteed to reach
    /// every live member within the bound.
    FuseLive { group: GroupId },
    /// A task this process started ([`Turn::start_task`]) succeeded: `result` is what its
    /// successful attempt returned. Delivered exactly once per task (the task itself ran at
    /// least once; see [`crate::task`]).
    TaskDone {
        id: TaskId,
        name: String,
        result: Vec<u8>,
    },
}

/// Why [`Turn::send`] refused a message. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("unknown peer `{0}`: it is not in this process's address book")]
    UnknownPeer(ProcessId),
    #[error("a process cannot send a message to itself")]
    ToSelf,
    #[error("message of {bytes} bytes exceeds the {max_bytes}-byte limit of one datagram")]
    TooLarge { bytes: usize, max_bytes: usize },
}

/// A timer operation requested by a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerOp {
    Set {
        name: String,
        due: Time,
        payload: Vec<u8>,
    },
    Cancel {
        name: String,
    },
}

/// What a turn did, collected for the engine.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub sends: Vec<(ProcessId, Vec<u8>)>,
    pub timers: Vec<TimerOp>,
    /// This turn's table writes: table -> key -> value (`None` = delete). Last write wins.
    pub writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    pub emits: Vec<String>,
    /// The reply to the request of this turn, if it is one.
    pub reply: Option<Vec<u8>>,
    pub fuse_creates: Vec<(GroupId, Vec<ProcessId>)>,
    pub fuse_signals: Vec<GroupId>,
    pub forget: Vec<ProcessId>,
    /// Tasks started: id, name, payload.
    pub tasks: Vec<(TaskId, String, Vec<u8>)>,
    /// A store read failed or a stored value did not decode: the process must stop.
    pub fault: Option<String>,
}

/// What a turn may know about the peers: ids and outbox depths.
pub(crate) trait PeerView {
    fn is_peer(&self, id: &ProcessId) -> bool;
    fn outbox_depth(&self, id: &ProcessId) -> usize;
}

/// The context of one turn. Created by the engine, handed to [`Handler::on_turn`]. `M` is
/// the handler's message type, `R` the type of its replies to clients.
pub struct Turn<'a, M, R = ()> {
    pub(crate) now: Time,
    pub(crate) id: &'a ProcessId,
    pub(crate) turn_no: u64,
    pub(crate) tables: &'a mut TableOverlay,
    pub(crate) peers: &'a dyn PeerView,
    pub(crate) rng: &'a mut ChaCha8Rng,
    /// Tasks started by earlier turns and not yet delivered.
    pub(crate) tasks_pending: usize,
    pub(crate) effects: Effects,
    pub(crate) _types: PhantomData<fn(M, R)>,
}

impl<M, R> std::fmt::Debug for Turn<'_, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("id", self.id)
            .field("turn_no", &self.turn_no)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<'a, M: Serialize, R: Serialize> Turn<'a, M, R> {
    /// The time of this turn, handed in by the runtime (wall clock in production).
    pub fn now(&self) -> Time {
        self.now
    }

    /// This process's id.
    pub fn id(&self) -> &ProcessId {
        self.id
    }

    /// The number of this turn over the life of the store (1-based).
    pub fn turn_number(&self) -> u64 {
        self.turn_no
    }

    /// Queues `message` for `to`. It is committed with this turn, then transmitted and
    /// retransmitted until `to` acknowledges it; `to` consumes it exactly once, in order.
    pub fn send(&mut self, to: &ProcessId, message: &M) -> Result<(), SendError> {
        if to == self.id {
            return Err(SendError::ToSelf);
        }
        if !self.peers.is_peer(to) {
            return Err(SendError::UnknownPeer(to.clone()));
        }
        let bytes = ken_store::codec::encode(message);
        if bytes.len() > limits::MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: bytes.len(),
                max_bytes: limits::MESSAGE_BYTES_MAX,
            });
        }
        self.effects.sends.push((to.clone(), bytes));
        Ok(())
    }

    /// Messages to `peer` not yet acknowledged, including those this turn queued: for flow
    /// control (stop producing when a peer falls behind).
    pub fn outbox_depth(&self, peer: &ProcessId) -> usize {
        let queued = self
            .effects
            .sends
            .iter()
            .filter(|(to, _)| to == peer)
            .count();
        self.peers.outbox_depth(peer) + queued
    }

    /// Sets (or resets) the durable timer `name` to fire after `after`. It survives restarts;
    /// a timer that came due while the process was down fires at restart.
    ///
    /// # Panics
    /// If `name` is longer than [`limits::TIMER_NAME_BYTES_MAX`].
    pub fn set_timer(&mut self, name: &str, after: Duration) {
        self.push_timer(name, after, Vec::new());
    }

    /// As [`Turn::set_timer`], with `payload`: the bytes come back in the [`Input::Timer`]
    /// when it fires (stored with the timer, so they survive restarts like it). Setting the
    /// timer again replaces its payload (`set_timer` sets an empty one). For the few bytes
    /// that say what the timer is for (an id, a lease number), so the name can stay a name.
    ///
    /// # Errors
    /// [`SendError::TooLarge`] if `payload` exceeds [`limits::TIMER_PAYLOAD_BYTES_MAX`]
    /// (nothing recorded): keep larger data in a table and put its key here.
    ///
    /// # Panics
    /// If `name` is longer than [`limits::TIMER_NAME_BYTES_MAX`].
    pub fn set_timer_with(
        &mut self,
        name: &str,
        after: Duration,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if payload.len() > limits::TIMER_PAYLOAD_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: payload.len(),
                max_bytes: limits::TIMER_PAYLOAD_BYTES_MAX,
            });
        }
        self.push_timer(name, after, payload.to_vec());
        Ok(())
    }

    fn push_timer(&mut self, name: &str, after: Duration, payload: Vec<u8>) {
        assert!(
            name.len() <= limits::TIMER_NAME_BYTES_MAX,
            "timer name longer than {} bytes",
            limits::TIMER_NAME_BYTES_MAX
        );
        self.effects.timers.push(TimerOp::Set {
            name: name.to_string(),
            due: self.now.plus(after),
            payload,
        });
    }

    /// Cancels the timer `name` if it is set.
    pub fn cancel_timer(&mut self, name: &str) {
        self.effects.timers.push(TimerOp::Cancel {
            name: name.to_string(),
        });
    }

    /// A line of output for whoever runs the process (its standard output), released only
    /// after this turn commits.
    ///
    /// At most once: a crash between the commit and the print loses the line, and the turn is
    /// not run again (standard output is not a peer that acknowledges). Output that must
    /// not be lost belongs in a table (read it with `ken inspect STORE table NAME`) or in a
    /// message to a peer; harnesses reading these lines (`ken torture`, the ken-lock audit)
    /// excuse a missing line only where a kill explains it.
    pub fn emit(&mut self, line: impl Into<String>) {
        self.effects.emits.push(line.into());
    }

    /// Answers the client request this turn is running. The reply is cached durably with
    /// the turn and sent once it commits; a retry of the request gets the cached reply.
    /// Ignored in turns that are not requests; a request turn that never replies answers
    /// with an empty body, which the client decodes only if `R` is `()`. A reply encoding
    /// to more than [`limits::REPLY_BYTES_MAX`] bytes is refused (nothing recorded): answer
    /// with something smaller, such as an error.
    pub fn reply(&mut self, reply: &R) -> Result<(), SendError> {
        let bytes = ken_store::codec::encode(reply);
        if bytes.len() > limits::REPLY_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: bytes.len(),
                max_bytes: limits::REPLY_BYTES_MAX,
            });
        }
        self.effects.reply = Some(bytes);
        Ok(())
    }

    /// Creates a FUSE group of `members` (this process is always a member). Every member
    /// records it and confirms; if one does not within the creation timeout, the group
    /// fails. Once created, the failure of any member, or a partition between members, or any
    /// member's [`Turn::fuse_signal`], becomes an [`Input::FuseFailure`] at every live member,
    /// exactly once, within a bound.
    ///
    /// # A group's life, as the handler hears it
    ///
    /// - The creator's turn returns the id. Each other member, once it has recorded the
    ///   group, hears [`Input::FuseJoined`] (with the creator and the members).
    ///   Every member, the creator included, hears [`Input::FuseLive`] once every member
    ///   has recorded it. Then [`Input::FuseFailure`], exactly once, when it fails. Each of
    ///   these turns commits with the group's new state, so none is heard twice or lost
    ///   across crash-restarts.
    /// - A group can fail before it is live (a member did not confirm within the creation
    ///   timeout, [`crate::limits::FUSE_CREATE_TIMEOUT`]): the creator and the members that
    ///   joined hear the failure without a `FuseLive` before it.
    ///
    /// # Joining, and groups that failed before you joined
    ///
    /// A member that was down for the whole creation never records the group, so it never
    /// hears of it: not `FuseJoined`, not `FuseFailure`. A protocol that hands a member
    /// something under a group (a lock, a lease, a job) must therefore not let the member
    /// depend on hearing that group's failure unless it joined. The pattern: **the creator
    /// acts on `FuseLive`, not on the create.** It creates the group, waits for
    /// [`Input::FuseLive`] of that group, and only then sends the member what the group
    /// guards (a grant naming the group). A member that receives it has, by then, recorded
    /// the group, and will hear its failure. If the group fails first, the creator hears
    /// [`Input::FuseFailure`] without `FuseLive` and tells the member to ask again (or
    /// retries later): nothing was handed out under a group the member does not know.
    /// The lock app (`apps/src/lock.rs`) works this way.
    ///
    /// # What detection assumes
    ///
    /// Failure detection runs in the live members: a member is declared failed after
    /// silence of [`crate::limits::FUSE_T_FAIL`] plus two heartbeats *as measured by the
    /// detecting process while it is up*. Liveness clocks are not durable: a detector that
    /// restarts starts its silence clocks again from its restart, so a member that died
    /// while the detector was down is declared failed up to one full bound after the
    /// detector comes back, not after the death. Crash-restarts of the *monitored* member
    /// shorter than about `0.9 x FUSE_T_FAIL` are masked (its groups are durable).
    ///
    /// # A durable lease timer, or a FUSE group?
    ///
    /// Use a **timer** ([`Turn::set_timer`]) when one process alone decides that time ran
    /// out (a lease it granted, a job it gave a deadline): timers are durable, fire once, and
    /// need nothing from anyone else, but the other side learns of the expiry only if told,
    /// and a holder cannot release early without a message. Use a **FUSE group** when every
    /// party must hear, within a bound, that the relationship ended, whoever ended it and
    /// however (a crash for good, a partition, an explicit [`Turn::fuse_signal`]): no
    /// deadlines to choose, no renewals to send, and the notification reaches every live
    /// member even if messages are lost. A group costs a heartbeat per peer pair (shared by
    /// all groups of the pair), a timer nothing until it fires.
    pub fn fuse_create(&mut self, members: &[ProcessId]) -> Result<GroupId, FuseError> {
        if members.len() + 1 > limits::GROUP_MEMBERS_MAX {
            return Err(FuseError::TooManyMembers {
                got: members.len() + 1,
                max: limits::GROUP_MEMBERS_MAX,
            });
        }
        for m in members {
            if m != self.id && !self.peers.is_peer(m) {
                return Err(FuseError::UnknownMember(m.clone()));
            }
        }
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let id = GroupId(id);
        self.effects.fuse_creates.push((id, members.to_vec()));
        Ok(id)
    }

    /// Fails group `group` on purpose: every member (this one included) hears it.
    pub fn fuse_signal(&mut self, group: GroupId) {
        self.effects.fuse_signals.push(group);
    }

    /// Gives up on `peer`: withdraws every unacknowledged message earlier turns sent it
    /// (typically after a FUSE notification). Messages sent from this turn on (before or
    /// after this call in the turn) are queued and sent as usual. If the peer comes back, it
    /// is told to skip the withdrawn ones (a `Skip` frame, repeated until acknowledged) and
    /// goes on with the later ones: none of them is lost, none of the withdrawn ones is ever
    /// delivered. Logged as a warning and counted (`messages_withdrawn`).
    pub fn forget_peer(&mut self, peer: &ProcessId) {
        self.effects.forget.push(peer.clone());
    }

    /// Starts task `name` (a function registered with [`crate::Config::task`]) with
    /// `payload`, outside the turn, for work a handler may not do itself (any I/O).
    ///
    /// The task is recorded with this turn and started only once the turn's batch is
    /// durable (never if the turn is rolled back). It runs **at least once, with a stable
    /// key; the result is delivered exactly once**: a failed attempt (an `Err`, a panic, an
    /// unknown name) is retried after an exponential backoff, an attempt cut short by a
    /// crash is run again after the restart, and every attempt gets the same idempotency key
    /// ([`crate::task::TaskContext::key`]); its first successful result comes back as one
    /// [`Input::TaskDone`] with the returned id. See [`crate::task`].
    ///
    /// # Errors
    /// [`SendError::TooLarge`] if `payload` exceeds [`limits::TASK_PAYLOAD_BYTES_MAX`]
    /// (nothing recorded).
    ///
    /// # Panics
    /// If `name` is empty or longer than [`limits::TASK_NAME_BYTES_MAX`], or this turn
    /// already started [`limits::TASKS_PER_TURN_MAX`] tasks.
    pub fn start_task(&mut self, name: &str, payload: &[u8]) -> Result<TaskId, SendError> {
        assert!(
            !name.is_empty() && name.len() <= limits::TASK_NAME_BYTES_MAX,
            "task name must be 1 to {} bytes",
            limits::TASK_NAME_BYTES_MAX
        );
        if payload.len() > limits::TASK_PAYLOAD_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: payload.len(),
                max_bytes: limits::TASK_PAYLOAD_BYTES_MAX,
            });
        }
        let index = self.effects.tasks.len() as u32;
        assert!(
            index < limits::TASKS_PER_TURN_MAX,
            "a turn may start at most {} tasks",
            limits::TASKS_PER_TURN_MAX
        );
        let id = TaskId::new(self.turn_no, index);
        self.effects
            .tasks
            .push((id, name.to_string(), payload.to_vec()));
        Ok(id)
    }

    /// Tasks started (by earlier turns and this one) whose result no turn consumed yet: for
    /// flow control (each is a row in the store until its result is consumed; stop starting
    /// tasks when too many wait).
    pub fn tasks_pending(&self) -> usize {
        self.tasks_pending + self.effects.tasks.len()
    }

    /// A random number from the engine's seeded generator (deterministic in simulation).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A random number in `0..n` (`n > 0`).
    pub fn random_below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "random_below(0)");
        // Rejection sampling keeps it unbiased.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let r = self.rng.next_u64();
            if r < zone {
                return r % n;
            }
        }
    }

    /// A durable table: a keyed map written incrementally (a turn's commit cost is the keys
    /// it touched). Reads see this turn's writes and those of earlier uncommitted turns.
    ///
    /// # Panics
    /// If `name` is empty or longer than [`limits::TABLE_NAME_BYTES_MAX`], or starts with
    /// `ken.` (the runtime's own tables: dead letters, poison inputs).
    pub fn table(&mut self, name: &str) -> Table<'_, 'a, M, R> {
        assert!(
            !name.is_empty() && name.len() <= limits::TABLE_NAME_BYTES_MAX,
            "table name must be 1 to {} bytes",
            limits::TABLE_NAME_BYTES_MAX
        );
        assert!(
            !name.starts_with(crate::living::RESERVED_TABLE_PREFIX),
            "table names starting with `{}` belong to the runtime",
            crate::living::RESERVED_TABLE_PREFIX
        );
        Table {
            turn: self,
            name: name.to_string(),
        }
    }

    fn read_raw(&mut self, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(v) = self.effects.writes.get(table).and_then(|t| t.get(key)) {
            return v.clone();
        }
        match self.tables.get(table, key) {
            Ok(v) => v,
            Err(e) => {
                self.fault(format!("reading table `{table}`: {e}"));
                None
            }
        }
    }

    fn scan_raw(
        &mut self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let own: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .effects
            .writes
            .get(table)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let hidden = own.iter().filter(|(_, v)| v.is_none()).count() as u32;
        let base = match self
            .tables
            .scan(table, prefix, after, limit.saturating_add(hidden))
        {
            Ok(rows) => rows,
            Err(e) => {
                self.fault(format!("scanning table `{table}`: {e}"));
                return Vec::new();
            }
        };
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        merged.extend(own);
        merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit as usize)
            .collect()
    }

    fn fault(&mut self, what: String) {
        if self.effects.fault.is_none() {
            self.effects.fault = Some(what);
        }
    }
}

/// A durable table seen from a turn. Keys are bytes (at most
/// [`limits::TABLE_KEY_BYTES_MAX`]); values are serde types encoded with bincode.
pub struct Table<'t, 'a, M, R = ()> {
    turn: &'t mut Turn<'a, M, R>,
    name: String,
}

impl<M, R> std::fmt::Debug for Table<'_, '_, M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish()
    }
}

impl<M: Serialize, R: Serialize> Table<'_, '_, M, R> {
    /// The value at `key`, if any. A value that cannot be read or decoded stops the process
    /// after this turn (the turn is discarded) with an error naming the table and key.
    pub fn get<V: DeserializeOwned>(&mut self, key: impl AsRef<[u8]>) -> Option<V> {
        let key = key.as_ref();
        let bytes = self.turn.read_raw(&self.name, key)?;
        match ken_store::codec::decode(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                let what = format!(
                    "table `{}` key {}: stored value does not decode as the requested type: {e}",
                    self.name,
                    ken_store::codec::printable_key(key)
                );
                self.turn.fault(what);
                None
            }
        }
    }

    /// Up to `limit` rows whose key starts with `prefix`, in key order, with this turn's
    /// and earlier uncommitted turns' writes applied. A row that cannot be read or decoded
    /// stops the process after this turn, as in [`Table::get`].
    pub fn scan<V: DeserializeOwned>(
        &mut self,
        prefix: impl AsRef<[u8]>,
        limit: u32,
    ) -> Vec<(Vec<u8>, V)> {
        self.scan_after(prefix, None::<&[u8]>, limit)
    }

    /// As [`Table::scan`], but only keys greater than `after` (if given): pages through a
    /// table of any keys, dense or not, by passing the last key of one page as `after` of the
    /// next. This turn's own writes are seen as in `scan`.
    pub fn scan_after<V: DeserializeOwned>(
        &mut self,
        prefix: impl AsRef<[u8]>,
        after: Option<impl AsRef<[u8]>>,
        limit: u32,
    ) -> Vec<(Vec<u8>, V)> {
        let after = after.as_ref().map(AsRef::as_ref);
        let rows = self
            .turn
            .scan_raw(&self.name, prefix.as_ref(), after, limit);
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            match ken_store::codec::decode(&v) {
                Ok(v) => out.push((k, v)),
                Err(e) => {
                    let what = format!(
                        "table `{}` key {}: stored value does not decode as the requested type: {e}",
                        self.name,
                        ken_store::codec::printable_key(&k)
                    );
                    self.turn.fault(what);
                    return Vec::new();
                }
            }
        }
        out
    }

    /// True if `key` has a value.
    pub fn contains(&mut self, key: impl AsRef<[u8]>) -> bool {
        self.turn.read_raw(&self.name, key.as_ref()).is_some()
    }

    /// Writes `value` at `key`.
    ///
    /// # Panics
    /// If the key is longer than [`limits::TABLE_KEY_BYTES_MAX`].
    pub fn put<V: Serialize + ?Sized>(&mut self, key: impl AsRef<[u8]>, value: &V) {
        let key = key.as_ref();
        assert!(
            key.len() <= limits::TABLE_KEY_BYTES_MAX,
            "table key longer than {} bytes",
            limits::TABLE_KEY_BYTES_MAX
        );
        let bytes = ken_store::codec::encode(value);
        self.turn
            .effects
            .writes
            .entry(self.name.clone())
            .or_default()
            .insert(key.to_vec(), Some(bytes));
    }

    /// Deletes `key` (a no-op if absent).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.turn
            .effects
            .writes
            .entry(self.name.clone())
            .or_default()
            .insert(key.as_ref().to_vec(), None);
    }
}
