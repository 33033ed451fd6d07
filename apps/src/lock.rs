//! A lock service whose locks are released when the holder's FUSE group fails: no leases
//! and no timeouts in the app; FUSE (Dunagan et al., OSDI 2004) is the failure detector.
//!
//! One **server** and any number of **holders**, all Ken processes. A holder sends
//! `Acquire { lock, round }`; the server, if the lock is free, creates a FUSE group
//! {server, holder} and records a pending grant; once the group is live
//! ([`Input::FuseLive`]: the holder has recorded it) it gives the grant the next token and
//! answers `Granted { lock, round, token, group }`; if the lock is taken it queues the
//! holder (FIFO, bounded, at most one entry per holder). The holder releases by signalling
//! the group ([`ken::Turn::fuse_signal`]); both sides then hear [`Input::FuseFailure`]. The
//! server frees the lock and grants the next waiter under a new group. If the holder dies,
//! or the network between them fails for longer than FUSE's bound, the group fails just the
//! same and the lock is freed: a dead holder never keeps a lock.
//!
//! Granting on `FuseLive` is the rejoin pattern of [`ken::Turn::fuse_create`]: nothing is
//! handed out under a group the holder has not recorded, so the holder always hears the
//! failure of the group it holds under. A group that fails before it is live (the holder
//! was down for the whole creation timeout) was never handed out: the server answers
//! `Refused` and the holder asks again for the same round. (Before FUSE had lifecycle
//! inputs the server granted at once and had to send `Freed` for grants whose group failed
//! during creation, and holders had to signal again a group whose `Create` the grant had
//! overtaken; neither can happen now.)
//!
//! # Messages
//!
//! - holder -> server: [`Msg::Acquire`].
//! - server -> holder: [`Msg::Granted`] once the grant's group is live; [`Msg::Refused`]
//!   when the request cannot be queued (queue full, too many locks, a bad lock name) or its
//!   group failed before it was live: the holder retries the same round after
//!   [`HolderConfig::retry_after`]. [`Msg::Freed`] is no longer sent (holders still accept
//!   one from an older server).
//!
//! # Emitted lines (stdout, one JSON object each, only from committed turns)
//!
//! Server: `{"event":"granted","lock","holder","round","token","group","at_ms"}`,
//! `{"event":"freed",...same fields}`, `{"event":"queued","lock","holder","round",
//! "position","at_ms"}`, `{"event":"refused","lock","holder","round","reason","at_ms"}`,
//! `{"event":"ignored",...same fields as refused}` (an `Acquire` whose round is not above
//! the last one accepted from that holder; nothing is sent back).
//! Holder: `{"event":"holding","lock","holder","round","token","group","at_ms"}`,
//! `{"event":"released"|"lost",...same fields}` ("released" if it had signalled the group,
//! "lost" if not: the server or the network failed, or the group failed before the grant
//! arrived), `{"event":"refused","lock","holder","round","reason","at_ms"}`, and with
//! `rounds` set a final report `{"event":"done","holder","lock","rounds","released","lost",
//! "refused","last_token"}` printed by the runtime before the process exits 0. `group` is
//! [`GroupId`]'s display form (`g-` and 32 hex digits); `at_ms` is the turn's time
//! ([`ken::Turn::now`]) in Unix milliseconds.
//!
//! # Invariants (checked by the tests in this module, `tools/tests/real/lock.rs` and `ken torture --app lock`)
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
//! Lines are at most once: a SIGKILL after a commit and before the print loses that turn's
//! lines (the turn is not run again), so a checker may miss the last lines of a killed life,
//! never others, and never sees a line twice or out of commit order. [`audit_server`]
//! checks invariants 1 and 2 on the server's lines with that in mind.
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
//!   timeout): nothing was granted; the server refuses the round (the holder asks again)
//!   and serves the next waiter. The pending grant's token is not used: tokens stay
//!   consecutive.
//! - A holder's signal is repeated every [`HolderConfig::retry_after`] until it hears the
//!   failure (a grant from an older server may have overtaken the group's `Create`).
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// Wait after a `Refused` before asking again, and between two signals of a group
    /// whose failure has not been heard yet.
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

/// The [`Grant::token`] of a grant whose FUSE group is still being created: nothing has
/// been handed out yet (tokens start at 1).
pub const PENDING: u64 = 0;

/// A grant at the server: pending while its group is created, then live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub holder: String,
    pub round: u64,
    /// The fencing token; [`PENDING`] until the group is live.
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
    const APP: &'static str = "lock";
    type State = State;
    type Message = Msg;
    type Request = ();
    type Reply = ();

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
        Input::FuseLive { group } => on_group_live(turn, group),
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
        let why = format!(
            "round {round} is not above round {last_round}, the last accepted from this holder \
             (a duplicate, or the holder's store was replaced: give it a new id)"
        );
        turn.emit(
            json!({"event": "ignored", "lock": lock, "holder": holder.as_str(), "round": round,
                   "reason": why, "at_ms": turn.now().as_millis()})
            .to_string(),
        );
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

/// Starts granting `lock` to `waiter`: creates the FUSE group {server, waiter} and records
/// the grant as pending ([`PENDING`] token). Nothing is handed out until the group is live
/// ([`on_group_live`]): by then the holder has recorded the group, so it will hear its
/// failure. False (nothing changed, a `refused` emitted) if the waiter is not in the
/// address book any more.
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
    entry.grant = Some(Grant {
        holder: waiter.holder.clone(),
        round: waiter.round,
        token: PENDING,
        group,
        at_ms: turn.now().as_millis(),
    });
    turn.table(GRANTS_TABLE).put(group.0, &lock.to_string());
    true
}

/// A group became live: if it is a pending grant's, the holder has recorded it, so the
/// grant is made (the next token) and handed out.
fn on_group_live(turn: T<'_, '_>, group: GroupId) {
    let Some(lock) = turn.table(GRANTS_TABLE).get::<String>(group.0) else {
        return;
    };
    let Some(mut entry) = turn.table(LOCKS_TABLE).get::<LockEntry>(&lock) else {
        tracing::warn!(%group, lock, "a grant names a lock the server does not know");
        return;
    };
    let Some(g) = entry
        .grant
        .as_mut()
        .filter(|g| g.group == group && g.token == PENDING)
    else {
        return;
    };
    let token = entry.next_token;
    assert!(token >= 1, "tokens start at 1");
    entry.next_token = token + 1;
    g.token = token;
    g.at_ms = turn.now().as_millis();
    let (holder_id, round, at_ms) = (g.holder.clone(), g.round, g.at_ms);
    turn.table(LOCKS_TABLE).put(&lock, &entry);
    let Ok(holder) = ProcessId::new(holder_id.clone()) else {
        tracing::warn!(holder = holder_id, "a stored grant has a bad holder id");
        return;
    };
    let msg = Msg::Granted {
        lock: lock.clone(),
        round,
        token,
        group,
    };
    turn.send(&holder, &msg)
        .expect("the holder is in the address book (fuse_create checked) and a grant is small");
    turn.emit(
        json!({"event": "granted", "lock": lock, "holder": holder_id, "round": round,
               "token": token, "group": group.to_string(), "at_ms": at_ms})
        .to_string(),
    );
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
    if g.token == PENDING {
        // The group failed before it was live (the holder did not record it within the
        // creation timeout): nothing was handed out. The holder is told to ask again, for
        // the same round.
        if let Ok(holder) = ProcessId::new(g.holder.clone()) {
            turn.table(ROUNDS_TABLE)
                .put(holder.as_str(), &g.round.saturating_sub(1));
            let why = "the holder did not join the lock's FUSE group within the creation \
                       timeout; ask again"
                .to_string();
            refuse(turn, &holder, &lock, g.round, why);
        }
    } else {
        // The holder recorded the group before the grant left (it was live), so it hears
        // the failure itself: no message needed.
        turn.emit(
            json!({"event": "freed", "lock": lock, "holder": g.holder, "round": g.round,
                   "token": g.token, "group": group.to_string(),
                   "at_ms": turn.now().as_millis()})
            .to_string(),
        );
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
        Input::Timer { name, .. } if name == HOLD_TIMER => {
            if let Phase::Holding {
                group, signalled, ..
            } = &mut h.phase
            {
                // Signal until the failure is heard: a signal of a group this process has
                // not recorded yet (the grant overtook FUSE's `Create`) does nothing.
                *signalled = true;
                turn.fuse_signal(*group);
                turn.set_timer(HOLD_TIMER, config.retry_after);
            }
        }
        Input::Timer { name, .. } if name == RETRY_TIMER && h.phase == Phase::Waiting => {
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

// ---------------------------------------------------------------------------------------
// Audit.

/// What [`audit_server`] found in a server's event lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// `granted` lines, over every lock.
    pub granted: u64,
    /// `freed` lines.
    pub freed: u64,
    /// Places where a line the invariant needs is missing and a kill of the server between
    /// the lines explains it (its line died with the life): not checkable from lines.
    pub unconfirmed: u64,
    /// Per lock, the highest token granted.
    pub last_token: BTreeMap<String, u64>,
    /// Broken invariants.
    pub violations: Vec<AuditViolation>,
}

/// Which invariant an [`AuditViolation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuditKind {
    /// A line that is not a JSON event.
    NotJson,
    /// Invariant 1: a token not above the last one granted for its lock.
    Tokens,
    /// Invariant 2: two grants of one lock live at once, or a `freed` that does not match
    /// the live grant (another token or group, none live, or freed twice).
    OneGrant,
}

/// One broken invariant, where it was seen: `line` is the 1-based index into the lines
/// given to [`audit_server`], `life` the life that printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditViolation {
    pub kind: AuditKind,
    pub line: usize,
    pub life: u32,
    /// What is wrong, in words.
    pub text: String,
}

impl std::fmt::Display for AuditViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} (life {}): {}", self.line, self.life, self.text)
    }
}

#[derive(Debug, Deserialize)]
struct EventLine {
    event: String,
    #[serde(default)]
    lock: String,
    #[serde(default)]
    token: u64,
    #[serde(default)]
    group: String,
}

#[derive(Debug, Default)]
struct LockAudit {
    last_token: u64,
    /// The live grant per the lines: (token, group, life of its line).
    live: Option<(u64, String, u32)>,
    freed: BTreeSet<u64>,
}

/// Checks a server's stdout lines, each with the number of the life that printed it (as
/// the process harness, `ken_tools::harness::Process::stdout_lines`, gives them), in order:
/// per lock, tokens strictly increase (so none is granted twice), at most one grant is live
/// at a time (a `granted` while another is live, or a `freed` of an older token after a
/// newer `granted`, is a violation), and each `freed` matches the live grant's group. A
/// missing line is excused only where a kill between the lines explains it (see the module
/// docs), and counted in [`Audit::unconfirmed`]. Lines other than `granted` and `freed` are
/// skipped; a line that is not a JSON event is a violation. `ken torture --app lock` and
/// the real-process lock tests both check the server with this.
pub fn audit_server(lines: &[(u32, String)]) -> Audit {
    let mut audit = Audit::default();
    let mut locks: BTreeMap<String, LockAudit> = BTreeMap::new();
    for (i, (life, line)) in lines.iter().enumerate() {
        let mut violation = |kind: AuditKind, text: String| {
            audit.violations.push(AuditViolation {
                kind,
                line: i + 1,
                life: *life,
                text,
            })
        };
        let e: EventLine = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(err) => {
                violation(
                    AuditKind::NotJson,
                    format!("not a JSON event ({err}): {line}"),
                );
                continue;
            }
        };
        let l = locks.entry(e.lock.clone()).or_default();
        match e.event.as_str() {
            "granted" => {
                audit.granted += 1;
                if e.token <= l.last_token {
                    violation(
                        AuditKind::Tokens,
                        format!(
                            "lock {:?} token {} granted after token {}: fencing tokens must strictly increase",
                            e.lock, e.token, l.last_token
                        ),
                    );
                }
                if let Some((live, _, live_life)) = &l.live {
                    if *live_life == *life {
                        violation(
                            AuditKind::OneGrant,
                            format!(
                                "lock {:?} token {} granted while token {live} is live: two live grants",
                                e.lock, e.token
                            ),
                        );
                    } else {
                        audit.unconfirmed += 1;
                    }
                }
                l.last_token = l.last_token.max(e.token);
                l.live = Some((e.token, e.group, *life));
            }
            "freed" => {
                audit.freed += 1;
                if !l.freed.insert(e.token) {
                    violation(
                        AuditKind::OneGrant,
                        format!("lock {:?} token {} freed twice", e.lock, e.token),
                    );
                    continue;
                }
                match l.live.take() {
                    Some((live, group, _)) if live == e.token => {
                        if group != e.group {
                            violation(
                                AuditKind::OneGrant,
                                format!(
                                    "lock {:?} token {} freed under group {} but granted under {group}",
                                    e.lock, e.token, e.group
                                ),
                            );
                        }
                    }
                    Some((live, _, _)) if live > e.token => violation(
                        AuditKind::OneGrant,
                        format!(
                            "lock {:?} token {} freed after token {live} was granted: two live grants",
                            e.lock, e.token
                        ),
                    ),
                    // The `granted` line of this token is missing: it died with a life.
                    Some((_, _, live_life)) if live_life != *life => audit.unconfirmed += 1,
                    Some((live, _, _)) => violation(
                        AuditKind::OneGrant,
                        format!(
                            "lock {:?} token {} freed, but token {live} is the live grant",
                            e.lock, e.token
                        ),
                    ),
                    None if e.token > l.last_token && *life > 1 => {
                        audit.unconfirmed += 1;
                        l.last_token = e.token;
                    }
                    None => violation(
                        AuditKind::OneGrant,
                        format!(
                            "lock {:?} token {} freed but not live (last granted {})",
                            e.lock, e.token, l.last_token
                        ),
                    ),
                }
            }
            _ => {}
        }
    }
    audit.last_token = locks
        .into_iter()
        .map(|(lock, l)| (lock, l.last_token))
        .collect();
    audit
}

#[cfg(test)]
mod tests {
    //! The handler in a small deterministic cluster ([`ken::testing::Cluster`]): real
    //! stores, virtual time, a network that delivers everything in order (or loses an
    //! isolated node's frames), crashes that lose nothing committed (commits complete at
    //! once here).

    use super::*;
    use ken::engine::EngineConfig;
    use ken::testing::{self, Fate};
    use ken::{Time, Tuning};
    use serde_json::Value;

    const T0_MS: u64 = 1_700_000_000_000;
    const HEARTBEAT_MS: u64 = 100;
    const T_FAIL_MS: u64 = 1000;
    const CREATE_TIMEOUT_MS: u64 = 1000;

    /// Server `s` (node 0) and holders `h1`, `h2`, ...; [`LockCluster`] holds what the
    /// tests read and do.
    type Cluster = testing::Cluster<Lock>;

    fn pid(s: &str) -> ProcessId {
        ProcessId::new(s).unwrap()
    }

    fn holder(lock: &str, hold_ms: u64, rounds: Option<u64>) -> Role {
        Role::Holder(HolderConfig {
            server: pid("s"),
            lock: lock.into(),
            hold: (hold_ms > 0).then(|| Duration::from_millis(hold_ms)),
            rounds,
            retry_after: Duration::from_millis(200),
        })
    }

    /// Node 0 is the server `s`; the holders are `h1`, `h2`, ... started in order.
    fn cluster(server: ServerConfig, holders: Vec<Role>) -> Cluster {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let mut c = Cluster::new(dir, Time::from_millis(T0_MS), 0);
        let holder_ids: Vec<ProcessId> =
            (1..=holders.len()).map(|i| pid(&format!("h{i}"))).collect();
        let roles = std::iter::once((pid("s"), Role::Server(server)))
            .chain(holder_ids.iter().cloned().zip(holders));
        for (id, role) in roles {
            let peers = if id.as_str() == "s" {
                holder_ids.clone()
            } else {
                vec![pid("s")]
            };
            let tuning = Tuning {
                fuse_heartbeat: Duration::from_millis(HEARTBEAT_MS),
                fuse_t_fail: Duration::from_millis(T_FAIL_MS),
                fuse_create_timeout: Duration::from_millis(CREATE_TIMEOUT_MS),
                ..Tuning::default()
            };
            let config = EngineConfig {
                id: id.clone(),
                peers,
                tuning,
                seed: 0, // set at every boot
            };
            c.add(config, move || Lock {
                id: id.clone(),
                role: role.clone(),
            });
        }
        for i in 0..c.len() {
            c.boot(i);
        }
        c
    }

    /// What the tests read and do on the cluster.
    trait LockCluster {
        /// Starts node `i` with a fresh generator per life, as the driver's random seed:
        /// group ids differ.
        fn boot(&mut self, i: usize);
        /// Advances virtual time by `ms`, 5 ms at a time, delivering everything.
        fn run(&mut self, ms: u64);
        /// Runs until `done` holds, for at most `max_ms`; the virtual time it took.
        fn run_until_ms(&mut self, max_ms: u64, done: impl FnMut(&Self) -> bool) -> u64;
        fn emitted(&self, i: usize, event: &str) -> Vec<Value>;
        fn holders_finished(&self) -> bool;
    }

    impl LockCluster for testing::Cluster<Lock> {
        fn boot(&mut self, i: usize) {
            let boots: u64 = (0..self.len())
                .map(|j| u64::from(self.node(j).life()))
                .sum();
            self.config_mut(i).seed = boots + 1;
            self.start(i);
        }

        fn run(&mut self, ms: u64) {
            self.run_for(Duration::from_millis(ms));
        }

        fn run_until_ms(&mut self, max_ms: u64, done: impl FnMut(&Self) -> bool) -> u64 {
            let took = self.run_until(Duration::from_millis(max_ms), done);
            took.as_millis() as u64
        }

        fn emitted(&self, i: usize, event: &str) -> Vec<Value> {
            self.node(i)
                .lines()
                .iter()
                .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["event"] == event)
                .collect()
        }

        fn holders_finished(&self) -> bool {
            (1..self.len()).all(|i| self.node(i).finished().is_some())
        }
    }

    fn tokens(events: &[Value]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e["token"].as_u64().unwrap())
            .collect()
    }

    fn clean_audit(c: &Cluster) -> Audit {
        let audit = audit_server(c.node(0).lines());
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        audit
    }

    #[test]
    fn two_holders_take_turns_and_tokens_strictly_increase() {
        let mut c = cluster(
            ServerConfig::default(),
            vec![holder("L", 50, Some(4)), holder("L", 50, Some(4))],
        );
        c.run_until_ms(20_000, |c| {
            c.holders_finished() && c.emitted(0, "freed").len() == 8
        });
        assert_eq!(
            tokens(&c.emitted(0, "granted")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(tokens(&c.emitted(0, "freed")), (1..=8).collect::<Vec<_>>());
        let audit = clean_audit(&c);
        assert_eq!((audit.granted, audit.freed, audit.unconfirmed), (8, 8, 0));
        for i in 1..=2 {
            let report: Report = serde_json::from_str(c.node(i).finished().unwrap()).unwrap();
            assert_eq!(
                (report.rounds, report.released, report.lost),
                (4, 4, 0),
                "{report:?}"
            );
            let held = tokens(&c.emitted(i, "holding"));
            assert_eq!(held.len(), 4);
            assert!(held.windows(2).all(|w| w[0] < w[1]), "{held:?}");
            assert_eq!(tokens(&c.emitted(i, "released")), held);
        }
        // Each grant went to a waiter: they alternate (FIFO), h1 first.
        let order: Vec<Value> = c
            .emitted(0, "granted")
            .iter()
            .map(|e| e["holder"].clone())
            .collect();
        assert_eq!(
            order,
            ["h1", "h2", "h1", "h2", "h1", "h2", "h1", "h2"].map(Value::from)
        );
    }

    #[test]
    fn crash_restarts_of_server_and_holders_are_masked() {
        let mut c = cluster(
            ServerConfig::default(),
            vec![holder("L", 300, Some(3)), holder("L", 300, Some(3))],
        );
        // Each process down for 0.3 x T_fail at a different point of the rounds.
        for (victim, at_ms) in [(0, 100), (1, 500), (2, 900), (0, 1300), (1, 1650)] {
            let elapsed_ms = c.now().as_millis() - T0_MS;
            c.run(at_ms - elapsed_ms.min(at_ms));
            c.crash(victim);
            c.run(T_FAIL_MS * 3 / 10);
            c.boot(victim);
        }
        c.run_until_ms(30_000, |c| c.holders_finished());
        let audit = clean_audit(&c);
        assert_eq!(audit.last_token["L"], 6);
        for i in 1..=2 {
            let h = &c.state(i).holder;
            assert_eq!((h.rounds_done, h.released, h.lost), (3, 3, 0), "{h:?}");
        }
    }

    #[test]
    fn a_dead_holder_loses_its_lock_within_the_bound_and_the_waiter_gets_it() {
        let mut c = cluster(
            ServerConfig::default(),
            vec![holder("L", 0, None), holder("L", 0, None)],
        );
        c.run_until_ms(1_000, |c| {
            !c.emitted(2, "holding").is_empty() || !c.emitted(1, "holding").is_empty()
        });
        let first = if c.emitted(1, "holding").is_empty() {
            2
        } else {
            1
        };
        let other = 3 - first;
        c.crash(first);
        let took = c.run_until_ms(10_000, |c| !c.emitted(0, "freed").is_empty());
        let bound = T_FAIL_MS + 2 * HEARTBEAT_MS + 10;
        assert!(
            took <= bound,
            "freed {took} ms after the kill, bound {bound} ms"
        );
        c.run_until_ms(1_000, |c| !c.emitted(other, "holding").is_empty());
        assert_eq!(tokens(&c.emitted(other, "holding")), vec![2]);
        assert_eq!(tokens(&c.emitted(0, "freed")), vec![1]);
        clean_audit(&c);
    }

    /// The rejoin pattern: a grant whose group fails during creation (its holder was down
    /// for the whole creation, so it never recorded the group and would never hear its
    /// failure) is never handed out; the holder is refused, asks again, and gets the next
    /// token once its group is live.
    #[test]
    fn a_grant_whose_group_fails_during_creation_is_never_handed_out_and_the_holder_asks_again() {
        let mut c = cluster(
            ServerConfig::default(),
            vec![holder("L", 0, None), holder("L", 100, Some(1))],
        );
        c.run_until_ms(1_000, |c| !c.emitted(1, "holding").is_empty());
        // h2 is queued behind h1 and goes down; then h1 goes silent (muted), so its group
        // fails by silence and the server starts granting h2, whose group creation times
        // out while h2 is down.
        c.run_until_ms(1_000, |c| !c.emitted(0, "queued").is_empty());
        c.crash(2);
        c.isolate(1);
        c.run_until_ms(10_000, |c| !c.emitted(0, "refused").is_empty());
        assert_eq!(
            tokens(&c.emitted(0, "freed")),
            vec![1],
            "only h1's grant was made"
        );
        assert_eq!(
            tokens(&c.emitted(0, "granted")),
            vec![1],
            "h2 was never granted"
        );
        assert_eq!(c.emitted(0, "refused")[0]["holder"], "h2");
        c.boot(2);
        c.run_until_ms(5_000, |c| c.node(2).finished().is_some());
        assert!(
            !c.emitted(2, "refused").is_empty(),
            "h2 heard it must ask again"
        );
        assert_eq!(tokens(&c.emitted(2, "holding")), vec![2], "the next token");
        assert_eq!(tokens(&c.emitted(2, "released")), vec![2]);
        assert_eq!(c.state(2).holder.lost, 0, "nothing handed out was lost");
        clean_audit(&c);
    }

    /// A holder that cannot hear FUSE (its control frames are lost) never joins its group,
    /// so it is never granted: a grant leaves only once the group is live, that is once the
    /// holder has recorded it and will hear its failure. Once FUSE gets through, it gets in.
    #[test]
    fn a_holder_that_cannot_join_its_group_is_never_granted_until_it_can() {
        let mut c = cluster(ServerConfig::default(), vec![holder("L", 50, Some(2))]);
        c.set_filter(|d| {
            if d.to == 1 && d.kind == ken::transport::FrameKind::Fuse {
                Fate::Drop
            } else {
                Fate::Pass
            }
        });
        c.run_until_ms(10_000, |c| !c.emitted(0, "refused").is_empty());
        assert!(c.emitted(0, "granted").is_empty());
        assert!(c.emitted(1, "holding").is_empty());
        c.clear_filter();
        c.run_until_ms(10_000, |c| c.node(1).finished().is_some());
        assert_eq!(tokens(&c.emitted(1, "released")), vec![1, 2]);
        assert_eq!(c.state(1).holder.lost, 0);
        clean_audit(&c);
    }

    #[test]
    fn a_full_queue_refuses_and_the_refused_holder_gets_in_later() {
        let mut c = cluster(
            ServerConfig { queue_max: 1 },
            vec![
                holder("L", 300, Some(1)),
                holder("L", 300, Some(1)),
                holder("L", 300, Some(1)),
            ],
        );
        c.run_until_ms(10_000, |c| c.holders_finished());
        let refused = c.emitted(0, "refused");
        assert!(
            !refused.is_empty(),
            "one of three must be refused with a queue of 1"
        );
        let who = refused[0]["holder"].as_str().unwrap().to_string();
        let i: usize = who[1..].parse().unwrap();
        assert!(c.emitted(i, "refused").len() == refused.len());
        assert_eq!(c.state(i).holder.refused, refused.len() as u64);
        assert_eq!(tokens(&c.emitted(0, "granted")), vec![1, 2, 3]);
        clean_audit(&c);
    }

    #[test]
    fn a_lock_name_too_long_is_refused_with_the_reason() {
        let long = "x".repeat(LOCK_NAME_BYTES_MAX + 1);
        let mut c = cluster(ServerConfig::default(), vec![holder(&long, 100, Some(1))]);
        c.run(200);
        let refused = c.emitted(0, "refused");
        assert_eq!(refused.len(), 1);
        assert!(refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("1 to 128 bytes"));
        assert!(c.emitted(0, "granted").is_empty());
        assert!(check_lock_name("").is_err() && check_lock_name("ok").is_ok());
    }

    #[test]
    fn the_audit_catches_double_grants_and_excuses_only_lines_lost_with_a_life() {
        let g = |t: u64| format!(r#"{{"event":"granted","lock":"L","token":{t},"group":"g{t}"}}"#);
        let f = |t: u64| format!(r#"{{"event":"freed","lock":"L","token":{t},"group":"g{t}"}}"#);
        let ok = [(1, g(1)), (1, f(1)), (1, g(2)), (2, f(2)), (2, g(3))];
        let a = audit_server(&ok);
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!((a.granted, a.freed, a.unconfirmed), (3, 2, 0));
        // Two live grants in one life.
        assert_eq!(audit_server(&[(1, g(1)), (1, g(2))]).violations.len(), 1);
        // The freed line of 1 died with life 1: excused, counted.
        let a = audit_server(&[(1, g(1)), (2, g(2))]);
        assert!(a.violations.is_empty() && a.unconfirmed == 1, "{a:?}");
        // ... but a later freed of 1 proves both were live.
        assert_eq!(
            audit_server(&[(1, g(1)), (2, g(2)), (2, f(1))])
                .violations
                .len(),
            1
        );
        // Tokens going backwards or repeating.
        assert!(!audit_server(&[(1, g(2)), (1, f(2)), (1, g(2))])
            .violations
            .is_empty());
        assert!(!audit_server(&[(1, g(2)), (1, f(2)), (1, g(1))])
            .violations
            .is_empty());
        // Freed twice, and junk.
        assert!(!audit_server(&[(1, g(1)), (1, f(1)), (1, f(1))])
            .violations
            .is_empty());
        assert!(!audit_server(&[(1, "not json".into())])
            .violations
            .is_empty());
    }
}
