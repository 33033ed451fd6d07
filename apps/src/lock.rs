//! A lock service whose locks are released when the holder's FUSE group fails: no leases
//! and no timeouts in the app; FUSE (Dunagan et al., OSDI 2004) is the failure detector.
//!
//! One **server** and any number of **holders**, all Ken processes. A holder sends
//! `Acquire { lock, round }`; the server, if the lock is free, creates a FUSE group
//! {server, holder}, records the grant and answers `Granted { lock, round, token, group }`;
//! otherwise it queues the holder (FIFO, bounded, at most one entry per holder). The holder
//! releases by signalling the group ([`ken::Turn::fuse_signal`]); both sides then hear
//! [`Input::FuseFailure`]. The server frees the lock, tells the holder (`Freed`) and grants
//! the next waiter under a new group with the next token. If the holder dies, or the
//! network between them fails for longer than FUSE's bound, the group fails just the same
//! and the lock is freed: a dead holder never keeps a lock.
//!
//! # Messages
//!
//! - holder -> server: [`Msg::Acquire`].
//! - server -> holder: [`Msg::Granted`]; [`Msg::Freed`] once the server freed that grant (the
//!   holder usually heard the group fail first and ignores it; it matters when the group
//!   failed during creation, before the holder ever recorded it, so that FUSE will never
//!   notify the holder); [`Msg::Refused`] when the request cannot be queued (queue full, too
//!   many locks, a bad lock name): the holder retries the same round after
//!   [`HolderConfig::retry_after`].
//!
//! # Emitted lines (stdout, one JSON object each, only from committed turns)
//!
//! Server: `{"event":"granted","lock","holder","round","token","group","at_ms"}`,
//! `{"event":"freed",...same fields}`, `{"event":"queued","lock","holder","round",
//! "position","at_ms"}`, `{"event":"refused","lock","holder","round","reason","at_ms"}`.
//! Holder: `{"event":"holding","lock","holder","round","token","group","at_ms"}`,
//! `{"event":"released"|"lost",...same fields}` ("released" if it had signalled the group,
//! "lost" if not: the server or the network failed, or the group failed before the grant
//! arrived), `{"event":"refused","lock","holder","round","reason","at_ms"}`, and with
//! `rounds` set a final report `{"event":"done","holder","lock","rounds","released","lost",
//! "refused","last_token"}` printed by the runtime before the process exits 0. `group` is
//! [`GroupId`]'s display form (`g-` and 32 hex digits); `at_ms` is the turn's time
//! ([`ken::Turn::now`]) in Unix milliseconds.
//!
//! # Invariants (checked by the tests in this module and `tests/tests/real/lock.rs`)
//!
//! 1. Per lock, tokens strictly increase and each token is granted once (the server's
//!    `next_token` is durable and only grows: a fencing token).
//! 2. At most one grant per lock is live at the server at a time (`LockEntry::grant` is one
//!    `Option`; a lock is granted again only after the server heard its group fail).
//! 3. A holder SIGKILLed for good has its lock freed at the server within
//!    `T_fail + 2 x heartbeat` (plus a commit) of its death, and the next waiter gets it.
//! 4. A holder crash-restarted within well under `T_fail` keeps its lock: groups are
//!    durable, so FUSE masks the outage and no `freed` is emitted for its token.
//! 5. Nothing a process emits comes from a rolled-back turn (the runtime's output commit:
//!    lines are printed after their turn's batch is durable).
//!
//! # Races handled
//!
//! - A `Granted` whose group the holder already heard fail (the failure notification can
//!   overtake the grant: FUSE traffic and messages travel separately): the holder remembers
//!   the last [`FAILED_GROUPS_MAX`] groups it heard fail and reports such a grant `lost`
//!   at once, then acquires its next round.
//! - A `Granted` for another round than the one the holder waits for (a bug or an old
//!   store) is ignored; messages are exactly-once and FIFO, so it does not happen.
//! - The group failing during creation (the holder was down longer than the creation
//!   timeout): the holder never hears of the group from FUSE, so the server's `Freed`
//!   ends the grant at the holder.
//! - A new `Acquire` from the current holder of the lock (it heard its group fail before
//!   the server did): it is queued like any other and served once the server hears it.
//! - Acquire is idempotent per (holder, round): a round at or below the highest one the
//!   server accepted from that holder is ignored.
//! - Crash-restart of either side: every piece of state above is durable (root state,
//!   tables, timers, FUSE groups), and the hold timer survives the restart.
//!
//! # Bounds
//!
//! Waiters per lock ([`ServerConfig::queue_max`], default [`QUEUE_MAX`]), distinct locks
//! ([`LOCKS_MAX`]), lock name length ([`LOCK_NAME_BYTES_MAX`]), remembered failed groups at
//! a holder ([`FAILED_GROUPS_MAX`]).

use std::collections::VecDeque;
use std::time::Duration;

use ken::{GroupId, Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Waiters queued per lock by default; more are refused.
pub const QUEUE_MAX: usize = 64;

/// Distinct lock names a server tracks (a lock's token counter is kept forever).
pub const LOCKS_MAX: u32 = 10_000;

/// Longest lock name, in bytes.
pub const LOCK_NAME_BYTES_MAX: usize = 128;

/// Failed groups a holder remembers, to recognise a grant that arrives after its group
/// failed. Only the groups of grants still in flight matter, and a holder has at most one.
pub const FAILED_GROUPS_MAX: usize = 32;

/// Server table: lock name (UTF-8) -> [`LockEntry`].
pub const LOCKS_TABLE: &str = "locks";
/// Server table: group id (16 bytes) -> the lock name (`String`) granted under it.
pub const GRANTS_TABLE: &str = "grants";
/// Server table: holder id (UTF-8) -> the highest round accepted from it (`u64`).
pub const ROUNDS_TABLE: &str = "rounds";

const HOLD_TIMER: &str = "hold";
const RETRY_TIMER: &str = "retry";

/// The lock service handler: a server or a holder.
#[derive(Debug, Clone)]
pub struct Lock {
    /// This process's id (for the final report).
    pub id: ProcessId,
    pub role: Role,
}

/// What this process does.
#[derive(Debug, Clone)]
pub enum Role {
    Server(ServerConfig),
    Holder(HolderConfig),
}

/// A server's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Waiters queued per lock; the next one is refused.
    pub queue_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            queue_max: QUEUE_MAX,
        }
    }
}

/// A holder's configuration.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    pub server: ProcessId,
    pub lock: String,
    /// How long to hold each grant before releasing it; `None`: until the group fails.
    pub hold: Option<Duration>,
    /// Rounds (acquire, hold, release) to do before finishing; `None`: forever.
    pub rounds: Option<u64>,
    /// Wait after a `Refused` before asking again.
    pub retry_after: Duration,
}

/// Checks a lock name: 1 to [`LOCK_NAME_BYTES_MAX`] bytes.
pub fn check_lock_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > LOCK_NAME_BYTES_MAX {
        return Err(format!(
            "a lock name must be 1 to {LOCK_NAME_BYTES_MAX} bytes, got {} bytes",
            name.len()
        ));
    }
    Ok(())
}

/// The lock service's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// holder -> server: grant me `lock` for my round `round`.
    Acquire { lock: String, round: u64 },
    /// server -> holder: you hold `lock` with fencing token `token` until `group` fails.
    Granted {
        lock: String,
        round: u64,
        token: u64,
        group: GroupId,
    },
    /// server -> holder: the server freed this grant (its group failed).
    Freed {
        lock: String,
        round: u64,
        token: u64,
        group: GroupId,
    },
    /// server -> holder: the request was not queued; ask again later.
    Refused {
        lock: String,
        round: u64,
        reason: String,
    },
}

/// The durable root state (one type for both roles; each uses its own part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Server: rows in the `locks` table (bounded by [`LOCKS_MAX`]).
    pub locks_known: u32,
    /// Holder: where it stands.
    pub holder: HolderState,
}

/// A holder's durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderState {
    /// The current round (1-based; 0 before the first).
    pub round: u64,
    pub phase: Phase,
    /// Rounds ended (released or lost).
    pub rounds_done: u64,
    pub released: u64,
    pub lost: u64,
    pub refused: u64,
    /// The highest token this holder was granted.
    pub last_token: u64,
    /// Groups heard failing, newest last, at most [`FAILED_GROUPS_MAX`].
    pub failed_groups: VecDeque<GroupId>,
}

/// Where a holder's current round stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not acquiring (before the start, or every round done).
    #[default]
    Idle,
    /// `Acquire` sent for the current round.
    Waiting,
    /// Granted: holding until `group` fails.
    Holding {
        token: u64,
        group: GroupId,
        /// The holder signalled the group (it is releasing).
        signalled: bool,
    },
}

/// A lock at the server (table `locks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    /// The token of the next grant (starts at 1, only grows).
    pub next_token: u64,
    /// The live grant, if any.
    pub grant: Option<Grant>,
    /// Waiters, first come first served, one per holder.
    pub queue: VecDeque<Waiter>,
}

/// A live grant at the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub holder: String,
    pub round: u64,
    pub token: u64,
    pub group: GroupId,
    pub at_ms: u64,
}

/// A queued request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub holder: String,
    pub round: u64,
}

/// The final report of a holder with a number of rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub event: String,
    pub holder: String,
    pub lock: String,
    pub rounds: u64,
    pub released: u64,
    pub lost: u64,
    pub refused: u64,
    pub last_token: u64,
}

type T<'a, 'b> = &'a mut Turn<'b, Msg>;

impl Handler for Lock {
    type State = State;
    type Message = Msg;

    fn on_turn(&self, state: &mut State, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        match &self.role {
            Role::Server(config) => server_turn(config, state, turn, input),
            Role::Holder(config) => holder_turn(config, &mut state.holder, turn, input),
        }
    }

    fn finished(&self, state: &State) -> Option<String> {
        let Role::Holder(config) = &self.role else {
            return None;
        };
        let rounds = config.rounds?;
        let h = &state.holder;
        (h.rounds_done >= rounds && h.phase == Phase::Idle).then(|| {
            serde_json::to_string(&Report {
                event: "done".into(),
                holder: self.id.to_string(),
                lock: config.lock.clone(),
                rounds: h.rounds_done,
                released: h.released,
                lost: h.lost,
                refused: h.refused,
                last_token: h.last_token,
            })
            .expect("report serializes")
        })
    }
}

// ---------------------------------------------------------------------------------------
// Server.

fn server_turn(config: &ServerConfig, state: &mut State, turn: T<'_, '_>, input: Input<Msg>) {
    match input {
        Input::Message {
            from,
            message: Msg::Acquire { lock, round },
            ..
        } => on_acquire(config, state, turn, &from, lock, round),
        Input::FuseFailure { group } => on_group_failed(turn, group),
        Input::Message { from, message, .. } => {
            tracing::warn!(%from, ?message, "the lock server ignores a message meant for a holder");
        }
        _ => {}
    }
}

fn refuse(turn: T<'_, '_>, holder: &ProcessId, lock: &str, round: u64, reason: String) {
    turn.emit(
        json!({"event": "refused", "lock": lock, "holder": holder.as_str(), "round": round,
               "reason": reason, "at_ms": turn.now().as_millis()})
        .to_string(),
    );
    let msg = Msg::Refused {
        lock: lock.to_string(),
        round,
        reason,
    };
    if let Err(e) = turn.send(holder, &msg) {
        tracing::warn!(%holder, error = %e, "cannot answer a refused acquire");
    }
}

fn on_acquire(
    config: &ServerConfig,
    state: &mut State,
    turn: T<'_, '_>,
    holder: &ProcessId,
    lock: String,
    round: u64,
) {
    if let Err(why) = check_lock_name(&lock) {
        let lock: String = lock.chars().take(32).collect();
        return refuse(turn, holder, &lock, round, why);
    }
    let last_round: u64 = turn.table(ROUNDS_TABLE).get(holder.as_str()).unwrap_or(0);
    if round <= last_round {
        tracing::debug!(%holder, round, last_round, "duplicate or stale acquire ignored");
        return;
    }
    let existing: Option<LockEntry> = turn.table(LOCKS_TABLE).get(&lock);
    let mut entry = match existing {
        Some(e) => e,
        None if state.locks_known >= LOCKS_MAX => {
            let why = format!("the server tracks at most {LOCKS_MAX} locks");
            return refuse(turn, holder, &lock, round, why);
        }
        None => {
            state.locks_known += 1;
            LockEntry {
                next_token: 1,
                ..LockEntry::default()
            }
        }
    };
    if let Some(w) = entry.queue.iter_mut().find(|w| w.holder == holder.as_str()) {
        // One entry per holder: a newer round replaces the older one in place.
        w.round = round;
    } else if entry.grant.is_none() {
        assert!(entry.queue.is_empty(), "a free lock has no waiters");
        let waiter = Waiter {
            holder: holder.to_string(),
            round,
        };
        if !grant(turn, &lock, &mut entry, waiter) {
            turn.table(LOCKS_TABLE).put(&lock, &entry);
            return;
        }
    } else if entry.queue.len() >= config.queue_max {
        turn.table(LOCKS_TABLE).put(&lock, &entry);
        let why = format!(
            "{} holders already wait for this lock (the limit)",
            config.queue_max
        );
        return refuse(turn, holder, &lock, round, why);
    } else {
        entry.queue.push_back(Waiter {
            holder: holder.to_string(),
            round,
        });
        turn.emit(
            json!({"event": "queued", "lock": lock, "holder": holder.as_str(), "round": round,
                   "position": entry.queue.len(), "at_ms": turn.now().as_millis()})
            .to_string(),
        );
    }
    turn.table(ROUNDS_TABLE).put(holder.as_str(), &round);
    turn.table(LOCKS_TABLE).put(&lock, &entry);
}

/// Grants `lock` to `waiter` under a new group and the next token. False (nothing changed,
/// a `refused` emitted) if the waiter is not in the address book any more.
fn grant(turn: T<'_, '_>, lock: &str, entry: &mut LockEntry, waiter: Waiter) -> bool {
    assert!(entry.grant.is_none(), "at most one live grant per lock");
    let holder = match ProcessId::new(waiter.holder.clone()) {
        Ok(h) => h,
        Err(_) => {
            tracing::warn!(holder = %waiter.holder, "a stored waiter has a bad id; dropped");
            return false;
        }
    };
    let group = match turn.fuse_create(std::slice::from_ref(&holder)) {
        Ok(g) => g,
        Err(e) => {
            let why = format!("cannot create a FUSE group with the holder: {e}");
            refuse(turn, &holder, lock, waiter.round, why);
            return false;
        }
    };
    let token = entry.next_token;
    assert!(token >= 1, "tokens start at 1");
    entry.next_token = token + 1;
    let at_ms = turn.now().as_millis();
    entry.grant = Some(Grant {
        holder: waiter.holder.clone(),
        round: waiter.round,
        token,
        group,
        at_ms,
    });
    turn.table(GRANTS_TABLE).put(group.0, &lock.to_string());
    let msg = Msg::Granted {
        lock: lock.to_string(),
        round: waiter.round,
        token,
        group,
    };
    turn.send(&holder, &msg)
        .expect("the holder is in the address book (fuse_create checked) and a grant is small");
    turn.emit(
        json!({"event": "granted", "lock": lock, "holder": waiter.holder, "round": waiter.round,
               "token": token, "group": group.to_string(), "at_ms": at_ms})
        .to_string(),
    );
    true
}

fn on_group_failed(turn: T<'_, '_>, group: GroupId) {
    let Some(lock) = turn.table(GRANTS_TABLE).get::<String>(group.0) else {
        return;
    };
    turn.table(GRANTS_TABLE).delete(group.0);
    let Some(mut entry) = turn.table(LOCKS_TABLE).get::<LockEntry>(&lock) else {
        tracing::warn!(%group, lock, "a grant names a lock the server does not know");
        return;
    };
    let Some(g) = entry.grant.take() else {
        tracing::warn!(%group, lock, "a grant row for a free lock");
        return;
    };
    assert_eq!(
        g.group, group,
        "the grants table and the lock agree on the live group"
    );
    turn.emit(
        json!({"event": "freed", "lock": lock, "holder": g.holder, "round": g.round,
               "token": g.token, "group": group.to_string(), "at_ms": turn.now().as_millis()})
        .to_string(),
    );
    if let Ok(holder) = ProcessId::new(g.holder.clone()) {
        let msg = Msg::Freed {
            lock: lock.clone(),
            round: g.round,
            token: g.token,
            group,
        };
        if let Err(e) = turn.send(&holder, &msg) {
            tracing::warn!(%holder, error = %e, "cannot tell the holder its grant was freed");
        }
    }
    while let Some(next) = entry.queue.pop_front() {
        if grant(turn, &lock, &mut entry, next) {
            break;
        }
    }
    turn.table(LOCKS_TABLE).put(&lock, &entry);
}

// ---------------------------------------------------------------------------------------
// Holder.

fn holder_turn(config: &HolderConfig, h: &mut HolderState, turn: T<'_, '_>, input: Input<Msg>) {
    match input {
        Input::Start if config.rounds != Some(0) => start_round(config, h, turn, 1),
        Input::Message { from, message, .. } if from == config.server => match message {
            Msg::Granted {
                lock,
                round,
                token,
                group,
            } => on_granted(config, h, turn, lock, round, token, group),
            Msg::Freed { group, .. } => {
                if matches!(h.phase, Phase::Holding { group: g, .. } if g == group) {
                    end_grant(config, h, turn);
                }
            }
            Msg::Refused {
                lock,
                round,
                reason,
            } => {
                if lock != config.lock || round != h.round || h.phase != Phase::Waiting {
                    return;
                }
                h.refused += 1;
                turn.emit(
                    json!({"event": "refused", "lock": lock, "holder": turn.id().as_str(),
                           "round": round, "reason": reason, "at_ms": turn.now().as_millis()})
                    .to_string(),
                );
                turn.set_timer(RETRY_TIMER, config.retry_after);
            }
            Msg::Acquire { .. } => tracing::warn!("a holder ignores Acquire"),
        },
        Input::Message { from, .. } => {
            tracing::warn!(%from, "a message from a process that is not the server; ignored");
        }
        Input::Timer { name } if name == HOLD_TIMER => {
            if let Phase::Holding {
                group, signalled, ..
            } = &mut h.phase
            {
                if !*signalled {
                    *signalled = true;
                    turn.fuse_signal(*group);
                }
            }
        }
        Input::Timer { name } if name == RETRY_TIMER && h.phase == Phase::Waiting => {
            send_acquire(config, turn, h.round);
        }
        Input::FuseFailure { group } => {
            if matches!(h.phase, Phase::Holding { group: g, .. } if g == group) {
                end_grant(config, h, turn);
            } else {
                remember_failed(h, group);
            }
        }
        _ => {}
    }
}

fn send_acquire(config: &HolderConfig, turn: T<'_, '_>, round: u64) {
    let msg = Msg::Acquire {
        lock: config.lock.clone(),
        round,
    };
    turn.send(&config.server, &msg)
        .expect("the server is in the address book (checked by the command line)");
}

fn start_round(config: &HolderConfig, h: &mut HolderState, turn: T<'_, '_>, round: u64) {
    h.round = round;
    h.phase = Phase::Waiting;
    send_acquire(config, turn, round);
}

fn remember_failed(h: &mut HolderState, group: GroupId) {
    if h.failed_groups.contains(&group) {
        return;
    }
    if h.failed_groups.len() >= FAILED_GROUPS_MAX {
        h.failed_groups.pop_front();
    }
    h.failed_groups.push_back(group);
}

#[allow(clippy::too_many_arguments)]
fn on_granted(
    config: &HolderConfig,
    h: &mut HolderState,
    turn: T<'_, '_>,
    lock: String,
    round: u64,
    token: u64,
    group: GroupId,
) {
    if lock != config.lock || round != h.round || h.phase != Phase::Waiting {
        tracing::warn!(lock, round, token, phase = ?h.phase, "a grant for another round; ignored");
        return;
    }
    if token <= h.last_token {
        tracing::warn!(
            token,
            last = h.last_token,
            "a grant with an old token; ignored"
        );
        return;
    }
    h.last_token = token;
    turn.cancel_timer(RETRY_TIMER);
    h.phase = Phase::Holding {
        token,
        group,
        signalled: false,
    };
    if h.failed_groups.contains(&group) {
        // The group failed before the grant arrived: lost before it was ever held.
        return end_grant(config, h, turn);
    }
    turn.emit(event_line("holding", config, turn, round, token, group));
    if let Some(hold) = config.hold {
        turn.set_timer(HOLD_TIMER, hold);
    }
}

/// The current grant ended (its group failed): report it, then the next round if any.
fn end_grant(config: &HolderConfig, h: &mut HolderState, turn: T<'_, '_>) {
    let Phase::Holding {
        token,
        group,
        signalled,
    } = h.phase
    else {
        unreachable!("end_grant while not holding");
    };
    let event = if signalled { "released" } else { "lost" };
    turn.emit(event_line(event, config, turn, h.round, token, group));
    if signalled {
        h.released += 1;
    } else {
        h.lost += 1;
    }
    remember_failed(h, group);
    turn.cancel_timer(HOLD_TIMER);
    h.rounds_done += 1;
    h.phase = Phase::Idle;
    if config.rounds.is_none_or(|r| h.rounds_done < r) {
        start_round(config, h, turn, h.round + 1);
    }
}

fn event_line(
    event: &str,
    config: &HolderConfig,
    turn: &Turn<'_, Msg>,
    round: u64,
    token: u64,
    group: GroupId,
) -> String {
    json!({"event": event, "lock": config.lock, "holder": turn.id().as_str(), "round": round,
           "token": token, "group": group.to_string(), "at_ms": turn.now().as_millis()})
    .to_string()
}
