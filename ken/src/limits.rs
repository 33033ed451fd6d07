//! Every limit of the runtime, in one place, with the assertions that relate them.
//!
//! Limits are defaults; [`crate::Tuning`] carries the values a process actually uses, and
//! [`crate::Tuning::validate`] checks the relations below.

use std::time::Duration;

/// Defines a limit from one literal, and appends its value to its rustdoc from that same
/// literal (rustdoc shows no value for a `Duration` constant, and a value typed twice
/// drifts): `limit! { /// doc\n pub const NAME: Duration = 200 ms; }` (units `ms`, `s`),
/// or `pub const NAME: T = EXPR;` for a number (the expression as written).
macro_rules! limit {
    ($(#[$attr:meta])* pub const $name:ident: Duration = $n:literal ms;) => {
        $(#[$attr])*
        #[doc = concat!("\n\nValue: **", stringify!($n), " ms**.")]
        pub const $name: Duration = Duration::from_millis($n);
    };
    ($(#[$attr:meta])* pub const $name:ident: Duration = $n:literal s;) => {
        $(#[$attr])*
        #[doc = concat!("\n\nValue: **", stringify!($n), " s**.")]
        pub const $name: Duration = Duration::from_secs($n);
    };
    ($(#[$attr:meta])* pub const $name:ident: $t:ty = $v:expr;) => {
        $(#[$attr])*
        #[doc = concat!("\n\nValue: `", stringify!($v), "`.")]
        pub const $name: $t = $v;
    };
}

limit! {
    /// Turns per commit batch. A full batch waits for the one committing before it.
    pub const BATCH_TURNS_MAX: u32 = 4096;
}

limit! {
    /// Bytes of state and messages per commit batch.
    pub const BATCH_BYTES_MAX: usize = 8 << 20;
}

limit! {
    /// Messages in flight (sent, not acknowledged) per peer; the rest wait in the outbox.
    pub const WINDOW_MESSAGES_MAX: usize = 256;
}

limit! {
    /// Out-of-order arrivals held per peer; later ones are dropped (the sender
    /// retransmits).
    pub const REORDER_BUFFER_MAX: u64 = 512;
}

limit! {
    /// Retransmission timeout before the first round-trip sample.
    pub const RTO_INITIAL: Duration = 200 ms;
}

limit! {
    /// Smallest retransmission timeout (round trips include the peer's commit).
    pub const RTO_MIN: Duration = 20 ms;
}

limit! {
    /// Ceiling of the retransmission timeout after exponential backoff. The runtime never gives
    /// up on a peer on its own; it retransmits at this interval forever.
    pub const RTO_MAX: Duration = 1 s;
}

limit! {
    /// Longest timer name.
    pub const TIMER_NAME_BYTES_MAX: usize = 128;
}

limit! {
    /// Largest timer payload ([`crate::Turn::set_timer_with`]). Set timers are kept in
    /// memory as well as in the store, so a payload is a few bytes that say what the timer is
    /// for; larger data belongs in a table row whose key the payload names.
    pub const TIMER_PAYLOAD_BYTES_MAX: usize = 1 << 10;
}

limit! {
    /// Longest table name.
    pub const TABLE_NAME_BYTES_MAX: usize = 128;
}

limit! {
    /// Longest table key.
    pub const TABLE_KEY_BYTES_MAX: usize = 1024;
}

limit! {
    /// Longest task name ([`crate::Turn::start_task`]).
    pub const TASK_NAME_BYTES_MAX: usize = 128;
}

limit! {
    /// Largest task payload. A task that needs more reads it from where the handler
    /// put it (a table row written by the same turn, an outside store).
    pub const TASK_PAYLOAD_BYTES_MAX: usize = 64 << 10;
}

limit! {
    /// Tasks one turn may start (a task id is the turn number and an index below this).
    pub const TASKS_PER_TURN_MAX: u32 = 1024;
}

limit! {
    /// Tasks running at once in one process by default; the rest wait their turn.
    pub const TASKS_RUNNING_MAX: usize = 16;
}

limit! {
    /// Wait before a failed task's second attempt; doubled after each further
    /// failure up to [`TASK_BACKOFF_MAX`].
    pub const TASK_BACKOFF_INITIAL: Duration = 100 ms;
}

limit! {
    /// Ceiling of a failed task's backoff. A task is retried at this interval forever
    /// (until it succeeds); `ken inspect STORE tasks` shows its attempts and last error.
    pub const TASK_BACKOFF_MAX: Duration = 30 s;
}

limit! {
    /// Longest error text of a failed task kept in its record (longer ones are cut).
    pub const TASK_ERROR_BYTES_MAX: usize = 1024;
}

limit! {
    /// Largest encoded root state. Large state belongs in tables.
    pub const ROOT_BYTES_MAX: usize = 16 << 20;
}

limit! {
    /// Clients remembered by the reply cache (per client: last request and its reply).
    pub const CLIENTS_MAX: usize = 10_000;
}

limit! {
    /// The client retry window: a client retries a request for at most this long after it first
    /// sent it (a request carries that moment, `RequestEnvelope::sent_ms`). A process applies a
    /// request only if it was first sent within this window (and [`CLIENT_CLOCK_SKEW_MAX`]); an
    /// older one is answered `Expired`, never applied.
    pub const CLIENT_RETRY_WINDOW: Duration = 60 s;
}

limit! {
    /// How far a client's clock may be from the process's: a request stamped further in the
    /// future, or older than the retry window by more than this, is answered `Expired`.
    pub const CLIENT_CLOCK_SKEW_MAX: Duration = 30 s;
}

limit! {
    /// A client idle this long (since its last applied request), may be evicted from a full reply
    /// cache, least recently used first. Longer than the retry window plus twice the clock skew,
    /// so no copy of a request applied before the eviction can still be fresh afterwards: a
    /// forgotten client's next fresh request is new, whatever its number, and nothing is ever
    /// applied twice (the argument is in `client.rs`).
    pub const CLIENT_IDLE_EVICT: Duration = 121 s;
}

limit! {
    /// A reply to a request without a credential is at most this many times the size of the
    /// request's datagram (a spoofed small request cannot aim a large reply at someone else). A
    /// larger reply is answered `Pad`: the client resends the request padded (the
    /// [`crate::Client`] does it by itself) and gets the reply from the cache.
    pub const AMPLIFICATION_MAX: usize = 4;
}

limit! {
    /// Largest request number and sequence number taken from the network: the store keeps them
    /// in SQLite `INTEGER` columns (signed 64-bit). Larger ones are dropped and counted.
    pub const WIRE_NUMBER_MAX: u64 = i64::MAX as u64;
}

limit! {
    /// Client return addresses the driver remembers.
    pub const CLIENT_ADDRS_MAX: usize = 2 * CLIENTS_MAX;
}

limit! {
    /// Members of one FUSE group.
    pub const GROUP_MEMBERS_MAX: usize = 64;
}

limit! {
    /// Interval between two FUSE heartbeats to a peer sharing groups.
    pub const FUSE_HEARTBEAT: Duration = 200 ms;
}

limit! {
    /// The FUSE failure bound, `T_fail`. A peer is failed after hearing nothing from it for
    /// `FUSE_T_FAIL + 2 x FUSE_HEARTBEAT` (the slack covers the heartbeat period it may have been
    /// silent before a crash and a lost heartbeat), so a crash-restart with downtime up to
    /// `0.9 x FUSE_T_FAIL` is masked, and every live member hears of a permanent failure within
    /// `FUSE_T_FAIL + 2 x FUSE_HEARTBEAT` of the failed member's last frame (plus a commit).
    pub const FUSE_T_FAIL: Duration = 3 s;
}

limit! {
    /// A group whose members have not all confirmed within this fails.
    pub const FUSE_CREATE_TIMEOUT: Duration = 3 s;
}

limit! {
    /// Upper bound on an encoded message (a data frame's payload less its envelope):
    /// what a tagged frame between the longest ids carries, less the envelope that names the
    /// sender's schema version ([`MESSAGE_ENVELOPE_BYTES`]).
    pub const MESSAGE_BYTES_MAX: usize =
        ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES - MESSAGE_ENVELOPE_BYTES;
}

limit! {
    /// The envelope of a peer message in the outbox and on the wire: its sender's schema version
    /// (u32 LE, `ken_store::wrap_payload`).
    pub const MESSAGE_ENVELOPE_BYTES: usize = 4;
}

limit! {
    /// Largest reply to a client request: a message less the reply envelope's tag and length.
    pub const REPLY_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 16;
}

limit! {
    /// Largest encoded client request: a message less the request envelope (first-send time,
    /// lengths and an empty padding).
    pub const REQUEST_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 32;
}

const _: () = assert!(RTO_MIN.as_millis() <= RTO_INITIAL.as_millis());
const _: () = assert!(RTO_INITIAL.as_millis() <= RTO_MAX.as_millis());
const _: () = assert!(WINDOW_MESSAGES_MAX as u64 <= REORDER_BUFFER_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX < BATCH_BYTES_MAX);
// A message of the largest size fits a frame between any two ids: the 64 bytes above cover
// the frame's fixed header and trailer (54 bytes in wire version 2; a header field added
// later must still fit, or this fails to compile).
const _: () = assert!(MESSAGE_BYTES_MAX <= ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES);
const _: () = assert!(10 * FUSE_HEARTBEAT.as_millis() < FUSE_T_FAIL.as_millis());
const _: () = assert!(
    CLIENT_IDLE_EVICT.as_millis()
        > CLIENT_RETRY_WINDOW.as_millis() + 2 * CLIENT_CLOCK_SKEW_MAX.as_millis()
);
const _: () = assert!(AMPLIFICATION_MAX >= 2);
// The eviction age is the retry window plus twice the skew, plus a second.
const _: () = assert!(
    CLIENT_IDLE_EVICT.as_secs()
        == CLIENT_RETRY_WINDOW.as_secs() + 2 * CLIENT_CLOCK_SKEW_MAX.as_secs() + 1
);

limit! {
    /// A peer is *quiet* when messages wait for it and it has acknowledged none for this many
    /// retransmission ceilings (`Tuning::rto_max`): the driver then warns (naming the peer, its
    /// address and how long) and resolves its host name again.
    pub const PEER_QUIET_CEILINGS: u32 = 5;
}

limit! {
    /// While a peer stays quiet, the warning about it is repeated at most this often.
    pub const PEER_QUIET_WARN_INTERVAL: Duration = 60 s;
}

limit! {
    /// Largest message of the standby stream (`standby`), length prefix excluded: a shipped
    /// batch (at most [`BATCH_BYTES_MAX`] of state and messages, with its row overhead) or a
    /// snapshot chunk.
    pub const STANDBY_MESSAGE_BYTES_MAX: u32 = 64 << 20;
}

limit! {
    /// Bytes of the store copy per `Snapshot` message of the standby stream.
    pub const STANDBY_SNAPSHOT_CHUNK_BYTES: u32 = 4 << 20;
}

limit! {
    /// The primary's first wait before connecting to its standby again, doubled after each
    /// failure up to [`STANDBY_RETRY_MAX`].
    pub const STANDBY_RETRY_MIN: Duration = 100 ms;
}

limit! {
    /// The longest wait between the primary's attempts to reach its standby (it never gives
    /// up: a primary never drops its standby by itself).
    pub const STANDBY_RETRY_MAX: Duration = 5 s;
}

limit! {
    /// How long either end of the standby stream waits for an expected message (the
    /// handshake's reply, the standby's `State` after a snapshot, an acknowledgement while
    /// batches wait for one) before it closes the connection.
    pub const STANDBY_REPLY_TIMEOUT: Duration = 30 s;
}

limit! {
    /// How long a restarting primary waits for each answer of its standby while it takes back
    /// the batches the standby holds and it lost (`standby::take_back`): a standby that does not
    /// answer within it is left to the shipper, which reseeds it if its replica is ahead. Short,
    /// because the process's start waits for it.
    pub const STANDBY_TAKE_BACK_TIMEOUT: Duration = 1 s;
}

limit! {
    /// Batches a standby keeps in memory after applying them, newest last, for a primary that
    /// restarts and lost their local commits (`standby::take_back`): the replica can be
    /// ahead of a crashed primary only by the batches it shipped and had not yet committed
    /// itself, a few at most.
    pub const STANDBY_KEPT_BATCHES: usize = 16;
}

limit! {
    /// ... and at most about this many bytes of them (keys, values, payloads, rows).
    pub const STANDBY_KEPT_BYTES_MAX: usize = 64 << 20;
}

const _: () = assert!(STANDBY_SNAPSHOT_CHUNK_BYTES * 2 <= STANDBY_MESSAGE_BYTES_MAX);
const _: () = assert!((BATCH_BYTES_MAX as u64) * 4 <= STANDBY_MESSAGE_BYTES_MAX as u64);
const _: () = assert!(STANDBY_RETRY_MIN.as_millis() < STANDBY_RETRY_MAX.as_millis());
