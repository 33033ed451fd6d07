//! The documents `ken inspect --json` prints: one type per view. These field names are a
//! stable interface (scripts and tests parse them); `ken/inspect/INSPECT.md` lists them too.
//! Change a name only with a note there, add fields freely.
//!
//! Conventions, everywhere:
//! - times are `*_ms`, milliseconds since the Unix epoch as the runtime wrote them; ages and
//!   delays are `*_age_ms` / `*_in_ms`, relative to `now_ms`, this machine's clock when the
//!   view was read;
//! - sizes are `*bytes`, exact;
//! - 64-bit identifiers (incarnations) and 16-byte ids (clients, groups) are strings:
//!   `"0x"` and lower-case hex, since JSON readers lose precision above 2^53;
//! - an optional value is `null` when absent, never omitted;
//! - stored byte strings are [`Blob`]s (a bounded preview, and the decoded value when an app
//!   binary supplied its types).

use serde::Serialize;
use serde_json::Value;

/// A stored byte string: its size, a preview of its first
/// [`PREVIEW_BYTES`](super::decode::PREVIEW_BYTES) bytes, and its decoded value when the
/// app's types are known (`ken-bank inspect`; always `null` from the generic `ken inspect`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blob {
    /// Size of the whole value (envelope excluded).
    pub bytes: u64,
    /// The first bytes as lower-case hex, no prefix.
    pub hex: String,
    /// The first bytes as one line of ASCII: printable characters as is, `\\`, `\n`, `\r`,
    /// `\t`, else `\xNN`.
    pub text: String,
    /// The whole value decoded with the app's type, as JSON; `null` when no type is known or
    /// it did not decode.
    pub decoded: Option<Value>,
    /// Why the value did not decode with the app's type (`null` if it did, or no type is
    /// known).
    pub decode_error: Option<String>,
}

/// The default view: `ken inspect STORE [--json]`.
///
/// Each part is read with its own query (a reader never holds a read transaction across
/// queries, so that the running owner is never delayed): the parts are each consistent, but
/// a commit may land between two of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The store path as given.
    pub store: String,
    pub process_id: String,
    /// The application that wrote the store (`null` in a store no application adopted yet).
    pub app: Option<String>,
    /// The schema version of its data (`null` as `app`).
    pub schema_version: Option<u32>,
    /// Rows of the dead-letter table (messages that did not decode; `dead-letters` view).
    pub dead_letters: u64,
    /// Rows of the poison table (inputs whose turn panicked; `poison` view).
    pub poison_inputs: u64,
    /// Rows of the replay queue (dead letters to run at the next start; `replay` view).
    pub replays_queued: u64,
    /// Poison messages an operator moved to the dead letters, still to be consumed at the
    /// next start (rows of `ken.skip_poison`).
    pub poison_to_dead_letter: u64,
    /// Peer pairs whose next message is held (a newer schema version, or its turn panicked
    /// and it is not yet delivered); the peers view says which and since when.
    pub held_pairs: u64,
    /// Tasks started by committed turns whose result no turn consumed yet (rows of
    /// `ken.tasks`; `tasks` view).
    pub tasks_pending: u64,
    /// Random id of this store's life, `"0x"` + 16 hex digits.
    pub incarnation: String,
    /// The store's epoch (`ken.role`, ken/STANDBY.md): 0 until a standby's replica of it
    /// was promoted, one more at each promotion; `null` if unreadable.
    pub epoch: Option<u64>,
    /// What the store can tell of its role: `promoted` (epoch above 0) or `primary` (a
    /// standby's replica is an exact copy of its primary's store and reads the same);
    /// `null` if the `ken.role` table is unreadable.
    pub role: Option<String>,
    /// The operator's detach record (`ken standby detach`, or a promotion), when the store
    /// has one: its process runs alone, without the standby its cluster file declares.
    pub detached: Option<DetachedInfo>,
    pub format_version: u32,
    pub created_ms: u64,
    /// Turns committed over the life of the store.
    pub turns_committed: u64,
    /// Commits (group commits of one or more turns, or of acknowledgements only).
    pub commits: u64,
    /// When the last commit ran, 0 before the first.
    pub last_commit_ms: u64,
    /// `now_ms - last_commit_ms`; `null` before the first commit.
    pub last_commit_age_ms: Option<u64>,
    pub now_ms: u64,
    /// Size of the encoded root state; `null` if there is none yet (or it is unreadable, see
    /// `errors`).
    pub root_bytes: Option<u64>,
    /// Every application table that has rows.
    pub tables: Vec<TableInfo>,
    /// Every peer with counters or unacknowledged messages.
    pub peers: Vec<PeerInfo>,
    /// Unacknowledged messages to all peers.
    pub outbox_depth: u64,
    /// Durable timers.
    pub timers: u64,
    /// Timers whose due time has passed (`due_ms <= now_ms`).
    pub timers_due: u64,
    /// The earliest due time of any timer, `null` if there is none.
    pub next_timer_due_ms: Option<u64>,
    /// FUSE groups this process is a member of; `null` if unreadable.
    pub groups: Option<u64>,
    /// Those groups counted by state (`undecodable` records are listed in `errors` too);
    /// `null` if unreadable.
    pub groups_by_state: Option<GroupCounts>,
    /// Clients in the reply cache; `null` if unreadable.
    pub clients: Option<u64>,
    pub file: FileInfo,
    /// Parts that could not be read (a corrupt record, for example); the rest is shown.
    pub errors: Vec<SectionError>,
}

/// A store's detach record in the summary ([`ken::standby::Detached`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetachedInfo {
    /// Who detached it (the command and the operator).
    pub by: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub reason: String,
}

/// Sizes of the store's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    /// The database file.
    pub db_bytes: u64,
    /// The write-ahead log (`STORE-wal`), 0 if there is none.
    pub wal_bytes: u64,
}

/// One part of a view that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionError {
    /// `root`, `tables`, `peers`, `outbox`, `timers`, `groups`, `clients`, `files`, or
    /// `table:<name>` in the state view.
    pub section: String,
    /// The one-line error, naming the table and key of a corrupt record.
    pub error: String,
}

/// One application table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub rows: u64,
    /// Stored bytes of keys and values (value envelopes included).
    pub bytes: u64,
}

/// The counters and outbox of one peer (this process -> `peer`, and back).
///
/// The counter fields are `null` only for a peer that has outbox rows but no counters row (a
/// damaged store: `verify` reports it) or when the counters could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub peer: String,
    /// The peer's incarnation as last seen in a frame from it (`"0x0000000000000000"` =
    /// not yet known).
    pub incarnation: Option<String>,
    /// Sequence number the next message to the peer gets (the first is 1), so `next_seq - 1`
    /// messages were sent to it.
    pub next_seq: Option<u64>,
    /// Highest sequence number the peer acknowledged (cumulative).
    pub acked: Option<u64>,
    /// Highest sequence number from the peer consumed by a committed turn.
    pub delivered: Option<u64>,
    /// Unacknowledged messages to the peer.
    pub outbox_depth: u64,
    /// Their stored payload bytes (envelopes included).
    pub outbox_bytes: u64,
    /// Lowest and highest unacknowledged sequence numbers, `null` when the outbox is empty.
    pub outbox_min_seq: Option<u64>,
    pub outbox_max_seq: Option<u64>,
    /// When the oldest unacknowledged message was produced, and how long ago; `null` when
    /// the outbox is empty.
    pub oldest_unacked_ms: Option<u64>,
    pub oldest_unacked_age_ms: Option<u64>,
    /// The pair's next message is held (not delivered, not acknowledged), `null` if not.
    pub held: Option<HeldInfo>,
}

/// Why a peer pair is held, from the runtime's records (`ken.held` for a newer schema
/// version, `ken.poison` for a message whose turn panicked and is not yet delivered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldInfo {
    /// The held message (the pair's next to deliver); later ones wait behind it.
    pub seq: u64,
    /// `newer_version` or `panicked`.
    pub reason: String,
    /// For `newer_version`: the message's schema version and the one of the binary that
    /// held it.
    pub version: Option<u32>,
    pub known: Option<u32>,
    /// For `panicked`: the panic's message.
    pub panic: Option<String>,
    /// When the hold started (ms since the Unix epoch) and how long ago.
    pub since_ms: u64,
    pub age_ms: u64,
}

/// `ken inspect STORE peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeersView {
    pub now_ms: u64,
    pub peers: Vec<PeerInfo>,
}

/// `ken inspect STORE outbox [--peer ID] [--limit N]`: unacknowledged messages in (peer,
/// seq) order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxView {
    /// The `--peer` filter, `null` for all peers.
    pub peer: Option<String>,
    pub limit: u32,
    /// True if there are more messages than `limit`.
    pub truncated: bool,
    pub now_ms: u64,
    pub messages: Vec<OutboxMessage>,
}

/// One unacknowledged message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxMessage {
    pub peer: String,
    pub seq: u64,
    /// When the turn that produced it ran.
    pub created_ms: u64,
    pub age_ms: u64,
    /// The sender's schema version from the payload's envelope (`null` in a store written
    /// before application identities, whose payloads have none).
    pub version: Option<u32>,
    /// The message, without its envelope (decoded with the app's message type when known).
    pub payload: Blob,
}

/// `ken inspect STORE dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLettersView {
    pub dead_letters: Vec<DeadLetterInfo>,
}

/// A peer message that did not decode, kept by the runtime (`ken.dead_letters`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterInfo {
    pub peer: String,
    pub seq: u64,
    /// The sender's schema version (0: shorter than the envelope).
    pub version: u32,
    pub error: String,
    pub at_ms: u64,
    pub message: Blob,
}

/// `ken inspect STORE replay`: dead letters an operator queued for replay
/// (`ken.replay`), run at the process's next start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayView {
    pub replay: Vec<DeadLetterInfo>,
}

/// `ken inspect STORE tasks`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TasksView {
    pub tasks: Vec<TaskInfo>,
}

/// A pending task (`ken.tasks`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// `TURN.INDEX`: the turn that started it and its index in that turn.
    pub id: String,
    /// The registered task function.
    pub name: String,
    pub payload_bytes: u64,
    /// When the starting turn ran.
    pub created_ms: u64,
    /// Attempts that failed and were recorded (one cut short by a crash is not).
    pub failures: u32,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// When it was recorded (0 if none).
    pub last_error_ms: u64,
}

/// `ken inspect STORE poison`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoisonView {
    pub poison: Vec<PoisonInfo>,
}

/// An input whose turn panicked (`ken.poison`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoisonInfo {
    /// `message`, `request` or `timer`.
    pub kind: String,
    /// The peer, client or timer name.
    pub source: String,
    /// Sequence or request number (0 for a timer).
    pub seq: u64,
    /// The panic's message.
    pub message: String,
    pub at_ms: u64,
}

/// `ken inspect STORE timers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimersView {
    pub now_ms: u64,
    pub timers: Vec<TimerInfo>,
}

/// One durable timer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimerInfo {
    pub name: String,
    pub due_ms: u64,
    /// `due_ms - now_ms`: negative when overdue.
    pub due_in_ms: i64,
    /// `due_ms <= now_ms`.
    pub due: bool,
    pub payload: Blob,
}

/// `ken inspect STORE tables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablesView {
    pub tables: Vec<TableInfo>,
}

/// `ken inspect STORE table NAME [--prefix K] [--limit N]`: rows in key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableView {
    pub table: String,
    /// The `--prefix` as hex (`""` for none).
    pub prefix_hex: String,
    pub limit: u32,
    /// True if more rows match than `limit`.
    pub truncated: bool,
    pub entries: Vec<Entry>,
}

/// One table row. A row whose record fails its check is listed with `value: null` and the
/// reason in `error`; the rows around it are read as usual.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The key, printable: UTF-8 text as is, else `0x` + hex.
    pub key: String,
    /// The whole key as hex, no prefix.
    pub key_hex: String,
    /// The key decoded with the app's key layout, `null` when unknown.
    pub key_decoded: Option<Value>,
    pub value: Option<Blob>,
    pub error: Option<String>,
}

/// `ken inspect STORE turns [--last N]`: the newest turns, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnsView {
    pub turns: Vec<TurnInfo>,
}

/// One turn from the store's bounded turn log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnInfo {
    /// Turn number, 1-based over the life of the store.
    pub turn: u64,
    pub at_ms: u64,
    /// `start`, `message`, `timer`, `request`, `fuse`, `undecodable`.
    pub input_kind: String,
    /// Peer id, timer name or client id; may be empty.
    pub input_source: String,
    /// Sequence number of the consumed message, 0 for other inputs.
    pub input_seq: u64,
    /// Messages the turn sent.
    pub messages_out: u32,
    /// Outputs the turn released, as the runtime counts them (the store's
    /// `TurnLogEntry::outputs`).
    pub outputs: u32,
    /// Bytes of state and messages the turn wrote.
    pub bytes_written: u64,
    pub note: String,
}

/// The FUSE groups of a store counted by state (the summary's `groups_by_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GroupCounts {
    /// At the creator, until every member confirmed (or the creation timeout fails it).
    pub creating: u64,
    /// At a member, recorded and confirmed, not yet known to be established.
    pub joined: u64,
    pub live: u64,
    pub failed: u64,
    /// Failed groups whose notification turn has not committed yet (`notified` false): the
    /// handler will hear them at its next turns (after a restart if the process is down).
    pub failed_unnotified: u64,
    /// Records that do not decode as a group record (damage: each is also in `errors`).
    pub undecodable: u64,
}

/// `ken inspect STORE groups`: every FUSE group this process belongs to, by group id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupsView {
    pub now_ms: u64,
    pub groups: Vec<GroupInfo>,
}

/// One FUSE group record, decoded with the runtime's own type (`ken`'s `GroupRecord`).
///
/// The decoded fields are `null` only when the record does not decode (then `error` says
/// why, and the record is damage: the view exits 1 and `verify` names it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupInfo {
    /// `"0x"` + 32 hex digits (how errors and `verify` name the record).
    pub group: String,
    /// `"g-"` + the same 32 hex digits: how the runtime's logs print the group.
    pub display: String,
    /// `creating` (at the creator, until every member confirmed), `joined` (at another
    /// member, confirmed), `live` (established) or `failed` (one-shot, forever).
    pub state: Option<String>,
    /// The process that created the group.
    pub creator: Option<String>,
    /// Every member, sorted, this process and the creator included.
    pub members: Option<Vec<String>>,
    /// The handler heard the failure (`Input::FuseFailure`): set by the notification turn's
    /// own commit, so true exactly once the notification was consumed. Only ever true when
    /// `state` is `failed`.
    pub notified: Option<bool>,
    /// When this process recorded the group (the creator: the creating turn; a member: when
    /// the creator's `Create` arrived), milliseconds since the Unix epoch.
    pub created_ms: Option<u64>,
    /// `now_ms - created_ms`.
    pub created_age_ms: Option<u64>,
    /// The stored body (envelope excluded), previewed.
    pub record: Blob,
    /// Why the record does not decode; `null` when it does.
    pub error: Option<String>,
}

/// `ken inspect STORE clients`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientsView {
    pub now_ms: u64,
    pub clients: Vec<ClientInfo>,
}

/// One client in the reply cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientInfo {
    /// `"0x"` + 32 hex digits.
    pub client: String,
    /// The last request applied for the client.
    pub request_no: u64,
    pub updated_ms: u64,
    /// The cached reply, as the runtime stores it (its reply envelope around the app's
    /// reply; decoded by an app's own `inspect`).
    pub reply: Blob,
}

/// `ken inspect STORE state [--limit N]`: the root state and the first rows of every table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateView {
    /// `null` if there is no root state yet (or it is unreadable, see `errors`).
    pub root: Option<Blob>,
    /// Rows shown per table at most.
    pub limit: u32,
    pub tables: Vec<TableState>,
    pub errors: Vec<SectionError>,
}

/// One table in the state view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableState {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    /// True if the table has more rows than shown.
    pub truncated: bool,
    pub entries: Vec<Entry>,
}

/// `ken inspect STORE verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyView {
    /// No problem found (exit status 0).
    pub clean: bool,
    pub problems: Vec<ProblemInfo>,
    /// The write-ahead log as SQLite would read it.
    pub wal: WalInfo,
    /// What the owner lock file witnesses (`null`: no lock file, or one that witnesses
    /// nothing).
    pub witness: Option<WitnessInfo>,
    /// The store's own commit counter (read after the witness).
    pub commits: u64,
}

/// The `-wal` file as `verify` found it (see `ken_store::wal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalInfo {
    /// False when there is no `-wal` file (a checkpointed, cleanly closed store).
    pub exists: bool,
    pub bytes: u64,
    /// `"empty"` (no log: a missing, short or zeroed header), `"valid"`, or `"invalid: WHY"`.
    pub header: String,
    /// SQLite's checkpoint sequence number: which generation of the log this is (`null`
    /// without a valid header).
    pub generation: Option<u32>,
    /// Frames SQLite reads (the unbroken chain from the header).
    pub frames_valid: u64,
    /// Committed transactions among them.
    pub commits: u64,
    /// 1-based index of the last commit frame SQLite recovers (0: none).
    pub last_commit_frame: u64,
    /// Frames of this generation after the last commit, which SQLite ignores: a torn or
    /// unfinished last transaction (normal after a crash), or lost ones when `damaged`.
    pub frames_past_commit: u64,
    /// Committed history after a bad frame: the first bad frame, and how many commits
    /// SQLite would silently drop (`null` when sound).
    pub damage: Option<WalDamageInfo>,
}

/// Damage in the middle of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalDamageInfo {
    /// 1-based index of the first frame SQLite rejects (0: the header).
    pub frame: u64,
    pub offset: u64,
    /// A later frame of the same generation that proves it.
    pub proof_frame: u64,
    pub commits_lost: u64,
    pub detail: String,
}

/// The owner lock file's commit witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WitnessInfo {
    /// The pid that wrote it last.
    pub pid: u32,
    /// `"0x"` + 16 hex digits: the incarnation the count belongs to.
    pub incarnation: String,
    /// Commits the store had made durable, at least.
    pub commits: u64,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemInfo {
    /// The store table: `kv:<name>` for application tables, `fuse_groups` for group
    /// records (keyed by `"0x"` + the group id's hex), `sqlite` for the file itself.
    pub table: String,
    /// The key, printable.
    pub key: String,
    pub what: String,
}

/// One refresh of `ken inspect STORE watch --json` (one JSON document per line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchTick {
    /// 1 for the first refresh.
    pub refresh: u64,
    /// Time since the previous refresh, `null` on the first.
    pub elapsed_ms: Option<u64>,
    /// Committed turns per second since the previous refresh (`null` on the first).
    pub turns_per_sec: Option<f64>,
    /// Commits per second since the previous refresh.
    pub commits_per_sec: Option<f64>,
    /// Change of the total outbox depth per second (negative when it drains).
    pub outbox_growth_per_sec: Option<f64>,
    pub summary: Summary,
}
