//! Every limit of the runtime, in one place, with the assertions that relate them.
//!
//! Limits are defaults; [`crate::Tuning`] carries the values a process actually uses, and
//! [`crate::Tuning::validate`] checks the relations below.

use std::time::Duration;

/// Turns per commit batch. A full batch waits for the one committing before it.
pub const BATCH_TURNS_MAX: u32 = 4096;

/// Bytes of state and messages per commit batch.
pub const BATCH_BYTES_MAX: usize = 8 << 20;

/// Messages in flight (sent, not acknowledged) per peer; the rest wait in the outbox.
pub const WINDOW_MESSAGES_MAX: usize = 256;

/// Out-of-order arrivals held per peer; later ones are dropped (the sender retransmits).
pub const REORDER_BUFFER_MAX: u64 = 512;

/// Retransmission timeout before the first round-trip sample.
pub const RTO_INITIAL: Duration = Duration::from_millis(200);

/// Smallest retransmission timeout (round trips include the peer's commit).
pub const RTO_MIN: Duration = Duration::from_millis(20);

/// Ceiling of the retransmission timeout after exponential backoff. The runtime never gives
/// up on a peer on its own; it retransmits at this interval forever.
pub const RTO_MAX: Duration = Duration::from_secs(1);

/// Longest timer name, in bytes.
pub const TIMER_NAME_BYTES_MAX: usize = 128;

/// Longest table name, in bytes.
pub const TABLE_NAME_BYTES_MAX: usize = 128;

/// Longest table key, in bytes.
pub const TABLE_KEY_BYTES_MAX: usize = 1024;

/// Largest encoded root state, in bytes. Large state belongs in tables.
pub const ROOT_BYTES_MAX: usize = 16 << 20;

/// Clients remembered by the reply cache (per client: last request and its reply).
pub const CLIENTS_MAX: usize = 10_000;

/// A client idle this long may be evicted from a full reply cache. Clients must not retry a
/// request for longer than this.
pub const CLIENT_IDLE_EVICT: Duration = Duration::from_secs(3600);

/// Client return addresses the driver remembers.
pub const CLIENT_ADDRS_MAX: usize = 2 * CLIENTS_MAX;

/// Members of one FUSE group.
pub const GROUP_MEMBERS_MAX: usize = 64;

/// Interval between two FUSE heartbeats to a peer sharing groups.
pub const FUSE_HEARTBEAT: Duration = Duration::from_millis(200);

/// The FUSE failure bound. A peer is failed after hearing nothing from it for
/// `FUSE_T_FAIL + 2 x FUSE_HEARTBEAT` (the slack covers the heartbeat period it may have been
/// silent before a crash and a lost heartbeat), so a crash-restart with downtime up to
/// `0.9 x FUSE_T_FAIL` is masked, and every live member hears of a permanent failure within
/// `FUSE_T_FAIL + 2 x FUSE_HEARTBEAT` of the failed member's last frame (plus a commit).
pub const FUSE_T_FAIL: Duration = Duration::from_secs(3);

/// A group whose members have not all confirmed within this fails.
pub const FUSE_CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound on a data frame's payload (an encoded message), set by the datagram limit
/// and the longest ids.
pub const MESSAGE_BYTES_MAX: usize =
    ken_transport::frame::MAX_FRAME_BYTES - 2 * ken_transport::frame::MAX_ID_BYTES - 64;

/// Largest reply to a client request: a message less the reply envelope's tag and length.
pub const REPLY_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 16;

const _: () = assert!(RTO_MIN.as_millis() <= RTO_INITIAL.as_millis());
const _: () = assert!(RTO_INITIAL.as_millis() <= RTO_MAX.as_millis());
const _: () = assert!(WINDOW_MESSAGES_MAX as u64 <= REORDER_BUFFER_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX < BATCH_BYTES_MAX);
const _: () = assert!(10 * FUSE_HEARTBEAT.as_millis() < FUSE_T_FAIL.as_millis());
