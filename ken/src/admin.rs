//! Administrative requests: what an operator asks a running process (`ken status`, `ken
//! admit --cluster`), answered by the runtime from its own counters, never by the
//! application (no turn runs, the handler is not called).
//!
//! On the wire (FRAME.md, kinds 9 and 10): an `AdminRequest` frame from the operator tool
//! (`from` a throwaway id, incarnation 0, `seq` the request number) and an `AdminReply` back
//! to the datagram's source address with the same `seq`. Both under the cluster's frame key
//! when the process has one: an operator holds the key file, and an untagged request to a
//! keyed process is dropped by its endpoint like any untagged peer frame (counted as
//! `untagged_dropped`). The payload is [`ADMIN_VERSION`] (u16, little-endian) followed by
//! the bincode encoding ([`ken_store::codec`]) of a [`PaddedRequest`] (the request and
//! zeros) or an [`AdminReply`]; a request of another version, or one that does not decode,
//! is dropped and counted (`admin_malformed` in [`StatusReport::frames_dropped`]), and so is
//! one whose reply would be more than [`crate::limits::AMPLIFICATION_MAX`] times its
//! datagram ([`ask`] pads every request to [`ADMIN_REQUEST_BYTES`]): a request with a
//! forged or replayed source address cannot turn a process into an amplifier.
//!
//! The driver's half is [`AdminDesk`]; the client's half is [`ask`]. The engine's half is a
//! read-only snapshot ([`crate::engine::Engine::snapshot`]) and the online admission
//! ([`crate::engine::Engine::admit_online`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ken_transport::{
    Auth, EndpointStats, Frame, FrameKind, Incarnation, Keyring, NoKeys, ProcessId, Seq,
};
use serde::{Deserialize, Serialize};

use crate::engine::operator::EngineSnapshot;
use crate::engine::Engine;
use crate::living::HeldReason;
use crate::{Handler, Time};

/// Version of the admin payloads written by this build; a request of another version is
/// dropped as malformed, a reply of another version is reported by [`ask`].
pub const ADMIN_VERSION: u16 = 3;

/// Peers listed in one status reply (the rest are counted in `peers_not_listed`), so that
/// the reply always fits in one datagram (a listed peer takes at most about 700 bytes: a
/// 64-byte id, its address, a quoted panic of [`HELD_TEXT_CHARS_MAX`] characters, counters).
pub const STATUS_PEERS_MAX: usize = 64;

/// Commit times kept for the latency percentiles (the most recent ones).
pub const COMMIT_SAMPLES_MAX: usize = 1024;

/// Dead letters counted per status request (one bounded read of the store).
pub const DEAD_LETTERS_COUNTED_MAX: u32 = 1000;

/// Characters of a panic message quoted in a status reply (per held peer).
pub const HELD_TEXT_CHARS_MAX: usize = 120;

/// Turn-count samples kept for the recent turn rate, one per driver watch interval (1 s).
const TURN_SAMPLES_MAX: usize = 11;

/// What an operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The process's status ([`StatusReport`]).
    Status,
    /// Admit the next new incarnation of `peer` (a replaced node) as a fresh peer: what `ken
    /// admit STORE PEER` does offline, on the running process.
    Admit { peer: String },
}

/// An [`AdminRequest`] on the wire, with zeros that make its datagram at least
/// [`ADMIN_REQUEST_BYTES`]: a process answers only when its reply is at most
/// [`crate::limits::AMPLIFICATION_MAX`] times the request's datagram, so that a request with
/// a forged source address (or a replayed one) cannot make it flood someone else with
/// replies larger than what was sent. [`ask`] pads every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaddedRequest {
    pub request: AdminRequest,
    pub padding: Vec<u8>,
}

/// The smallest admin request [`ask`] sends: large enough that the largest reply (one
/// datagram) is within [`crate::limits::AMPLIFICATION_MAX`] times it.
pub const ADMIN_REQUEST_BYTES: usize =
    ken_transport::frame::MAX_FRAME_BYTES.div_ceil(crate::limits::AMPLIFICATION_MAX);

/// Bytes sealing may add to a reply (the nonce and the tag).
const SEAL_BYTES_MAX: usize = 64;

/// What the runtime answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminReply {
    Status(Box<StatusReport>),
    /// The admission is recorded (written with the next batch); the peer's next frame from a
    /// new incarnation admits it. `known_incarnation`: the one known until then.
    Admitted {
        peer: String,
        known_incarnation: u64,
    },
    /// The request was understood and refused (one line saying why and what to do).
    Refused {
        reason: String,
    },
    /// The answer of a standby (`ken standby serve`) to [`AdminRequest::Status`]: it runs no
    /// engine, so it answers with its replica's state ([`answer_standby`]).
    Standby(Box<StandbyStatus>),
}

/// A standby's status (`ken standby serve`), as `ken status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// The process whose store the standby replicates.
    pub id: String,
    /// Always `standby`.
    pub role: String,
    /// The highest epoch it accepts from (its replica's, `--min-epoch`, or a primary's).
    pub epoch: u64,
    /// The replica's incarnation (hex) and commits (0: no replica yet).
    pub incarnation: String,
    pub commits: u64,
    pub turns_committed: u64,
    /// The primary connection being served now, or the last one (its address).
    pub primary: Option<String>,
    /// A primary is connected now.
    pub connected: bool,
    /// Batches applied since start, and since the last one (`None`: none yet).
    pub batches_applied: u64,
    pub last_batch_age_ms: Option<u64>,
    /// Snapshots installed since start.
    pub snapshots_installed: u64,
    /// Primaries refused since start (another process, an old epoch: fenced).
    pub refused: u64,
    pub uptime_ms: u64,
    /// Its stream and this answer are authenticated with a cluster key.
    pub authenticated: bool,
}

/// A process's role (ken/STANDBY.md) in a [`StatusReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReport {
    /// `primary`, or `promoted` once its store's epoch is above 0
    /// ([`crate::standby::Role::name`]).
    pub role: String,
    /// The store's epoch.
    pub epoch: u64,
    /// The operator's detach record (`ken standby detach`, or a promotion): the process runs
    /// alone.
    pub detached: Option<crate::standby::Detached>,
    /// Why it runs without the standby its cluster file declares: `detached` (on the
    /// record) or `--no-standby` (this run only, not recorded); `None`: it does not.
    pub alone: Option<String>,
    /// That standby's address.
    pub standby_unused: Option<String>,
}

/// Recent commit times (the transaction and its fsync), in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Commits the figures are taken over (the most recent, at most [`COMMIT_SAMPLES_MAX`]).
    pub samples: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// One peer in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub id: String,
    /// Its incarnation as known here, hex (`0000000000000000`: never heard).
    pub incarnation: String,
    /// Where frames to it go now (`None`: its host name does not resolve).
    pub address: Option<String>,
    /// Messages to it not yet acknowledged.
    pub outbox: u64,
    pub in_flight: u64,
    pub acked: u64,
    /// Its messages consumed here by durable turns.
    pub delivered: u64,
    pub oldest_unacked_seq: Option<u64>,
    /// Since the oldest unacknowledged message was first transmitted in this life.
    pub oldest_unacked_age_ms: Option<u64>,
    /// Why its messages are held here, if they are (a newer schema version, a panic).
    pub held: Option<String>,
    /// Its messages kept as dead letters in the store.
    pub dead_letters: u64,
    /// A new incarnation of it was seen and is refused until admitted.
    pub awaiting_admission: bool,
    /// It refuses this process (it knew an earlier incarnation of it).
    pub refuses_us: bool,
    /// Smoothed round trip, once measured.
    pub srtt_us: Option<u64>,
    /// Data frames retransmitted to it in this life.
    pub retransmits: u64,
}

/// A process's status, as `ken status` prints it. Counters are per life unless named
/// `_total`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub id: String,
    /// Hex, as the ready line and `ken inspect` print it.
    pub incarnation: String,
    pub app: String,
    pub schema_version: u32,
    /// Frames are authenticated with a cluster key.
    pub authenticated: bool,
    pub uptime_ms: u64,
    /// Turns over the life of the store.
    pub turns_total: u64,
    pub turns: u64,
    pub commits: u64,
    /// Turns per second over the last `rate_window_ms` (up to about 10 s; since start when
    /// younger).
    pub turns_per_s: f64,
    pub rate_window_ms: u64,
    pub commit_latency: Latency,
    pub peers: Vec<PeerReport>,
    /// Peers beyond [`STATUS_PEERS_MAX`], not listed.
    pub peers_not_listed: u64,
    /// Input sources held for a newer schema version.
    pub held: u64,
    /// Input sources held because their turn panicked (poison).
    pub poisoned: u64,
    /// Dead letters kept in the store (counted up to [`DEAD_LETTERS_COUNTED_MAX`]).
    pub dead_letters: u64,
    pub dead_letters_capped: bool,
    /// FUSE groups by state (`creating`, `joined`, `live`, `failed`).
    pub fuse_groups: BTreeMap<String, u64>,
    /// Clients in the reply cache, and the bytes of replies it holds in memory.
    pub clients_cached: u64,
    pub reply_cache_bytes: u64,
    /// Frames dropped in this life, by reason (the endpoint's and the engine's).
    pub frames_dropped: BTreeMap<String, u64>,
    /// Retransmissions in this life.
    pub retransmits: u64,
    /// Admin requests answered in this life (this one included).
    pub admin_requests: u64,
    /// The standby, when the process has one (`crate::standby`, ken/STANDBY.md).
    pub standby: Option<StandbyReport>,
    /// Its role, epoch and detach record.
    pub role: RoleReport,
}

/// A primary's view of its standby in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyReport {
    /// Where batches are shipped (`host:port`).
    pub target: String,
    /// The store's commits (local, durable).
    pub commits: u64,
    /// The last commit the standby acknowledged holding.
    pub acked: u64,
    /// The last shipping event was an acknowledgement (false: disconnected or fenced).
    pub connected: bool,
    /// The standby refused this process as older than a promoted copy.
    pub fenced: bool,
}

impl StandbyReport {
    /// Commits the standby lacks (0: it holds everything committed here).
    pub fn lag(&self) -> u64 {
        self.commits.saturating_sub(self.acked)
    }
}

impl StatusReport {
    /// Messages waiting in every outbox.
    pub fn outbox_total(&self) -> u64 {
        self.peers.iter().map(|p| p.outbox).sum()
    }

    /// The oldest unacknowledged message's age over every peer.
    pub fn oldest_unacked_age_ms(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter_map(|p| p.oldest_unacked_age_ms)
            .max()
    }
}

/// Why an admin payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    #[error("admin payload of {0} bytes is too short for its version")]
    TooShort(usize),
    #[error(
        "admin version {theirs} (this build speaks {ADMIN_VERSION}): use the same Ken release"
    )]
    Version { theirs: u16 },
    #[error("admin payload does not decode: {0}")]
    Undecodable(String),
}

/// Encodes an admin payload: [`ADMIN_VERSION`] then the bincode body.
pub fn encode_payload<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = ADMIN_VERSION.to_le_bytes().to_vec();
    out.extend(ken_store::codec::encode(body));
    out
}

/// Decodes an admin payload written by [`encode_payload`] of this version.
pub fn decode_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    let Some((version, body)) = bytes.split_first_chunk::<2>() else {
        return Err(PayloadError::TooShort(bytes.len()));
    };
    let theirs = u16::from_le_bytes(*version);
    if theirs != ADMIN_VERSION {
        return Err(PayloadError::Version { theirs });
    }
    ken_store::codec::decode(body).map_err(|e| PayloadError::Undecodable(e.to_string()))
}

/// The driver's half: the counters the engine does not keep (uptime, commit times, the
/// recent turn rate) and the answer to each admin request.
pub(crate) struct AdminDesk {
    started: Instant,
    app: &'static str,
    schema_version: u32,
    authenticated: bool,
    commit_us: VecDeque<u64>,
    turn_samples: VecDeque<(Instant, u64)>,
    /// Counts dead letters (a second read-only handle; `None` if it would not open).
    reader: Option<ken_store::Reader>,
    answered: u64,
    malformed: u64,
    /// The Prometheus metrics, when served ([`crate::Config::metrics`]).
    pub(crate) metrics: Option<crate::metrics::Metrics>,
    /// The standby's state, kept up to date by the driver.
    pub(crate) standby: Option<StandbyReport>,
    /// The role read at start ([`AdminDesk::with_role`]).
    role: RoleReport,
}

impl AdminDesk {
    pub(crate) fn new<H: Handler>(
        started: Instant,
        authenticated: bool,
        store: &std::path::Path,
    ) -> AdminDesk {
        AdminDesk {
            started,
            app: H::APP,
            schema_version: H::SCHEMA_VERSION,
            authenticated,
            commit_us: VecDeque::with_capacity(COMMIT_SAMPLES_MAX),
            turn_samples: VecDeque::with_capacity(TURN_SAMPLES_MAX),
            reader: ken_store::Reader::open(store).ok(),
            answered: 0,
            malformed: 0,
            metrics: None,
            standby: None,
            role: RoleReport::default(),
        }
    }

    /// The store's role as read at start, and why the process runs without the standby it
    /// declares, if it does ([`crate::standby::apply_role`]).
    pub(crate) fn with_role(
        mut self,
        role: crate::standby::Role,
        alone: Option<(&'static str, String)>,
    ) -> AdminDesk {
        self.role = RoleReport {
            role: role.name().to_string(),
            epoch: role.epoch,
            detached: role.detached,
            alone: alone.as_ref().map(|(why, _)| why.to_string()),
            standby_unused: alone.map(|(_, at)| at),
        };
        self
    }

    /// A commit (either path) took `took`.
    pub(crate) fn commit_took(&mut self, took: Duration) {
        if self.commit_us.len() == COMMIT_SAMPLES_MAX {
            self.commit_us.pop_front();
        }
        self.commit_us.push_back(took.as_micros() as u64);
        if let Some(m) = &self.metrics {
            m.commit_took(took);
        }
    }

    /// A batch of `turns` turns goes to the store.
    pub(crate) fn batch(&self, turns: u64) {
        if let Some(m) = &self.metrics {
            m.batch(turns);
        }
    }

    /// Refreshes the metrics, if served, from the engine's counters (once a second).
    pub(crate) fn refresh_metrics<H: Handler>(
        &self,
        engine: &Engine<H>,
        peers: &BTreeMap<ProcessId, SocketAddr>,
        endpoint: &EndpointStats,
    ) {
        if let Some(m) = &self.metrics {
            m.refresh(
                &self.status(engine.snapshot(), peers, endpoint),
                engine.stats(),
            );
        }
    }

    /// The engine had run `turns` turns at `now` (called about once a second).
    pub(crate) fn sample_turns(&mut self, now: Instant, turns: u64) {
        if self.turn_samples.len() == TURN_SAMPLES_MAX {
            self.turn_samples.pop_front();
        }
        self.turn_samples.push_back((now, turns));
    }

    /// Answers an `AdminRequest` frame: the reply frame to send to its source, or `None`
    /// (dropped and counted). `peers`: where frames to each peer go now.
    pub(crate) fn handle<H: Handler>(
        &mut self,
        engine: &mut Engine<H>,
        frame: &Frame,
        peers: &BTreeMap<ProcessId, SocketAddr>,
        endpoint: &EndpointStats,
    ) -> Option<Frame> {
        debug_assert_eq!(frame.kind, FrameKind::AdminRequest);
        // The endpoint drops untagged frames when keyed; checked again here.
        if self.authenticated && frame.auth != Auth::Cluster {
            self.malformed += 1;
            return None;
        }
        let request: AdminRequest = match decode_payload::<PaddedRequest>(&frame.payload) {
            Ok(r) => r.request,
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(from = %frame.from, error = %e, "admin request dropped");
                return None;
            }
        };
        self.answered += 1;
        let now = Time::now_wall();
        let reply = match request {
            AdminRequest::Status => {
                AdminReply::Status(Box::new(self.status(engine.snapshot(), peers, endpoint)))
            }
            AdminRequest::Admit { .. } if frame.to != *engine.id() => AdminReply::Refused {
                reason: format!(
                    "this is {}, not {}: check the cluster file's address for {}",
                    engine.id(),
                    frame.to,
                    frame.to
                ),
            },
            AdminRequest::Admit { peer } => match ProcessId::new(&peer) {
                Err(e) => AdminReply::Refused {
                    reason: format!("`{peer}` is not a process id: {e}"),
                },
                Ok(pid) => match engine.admit_online(now, &pid, "ken admit --cluster") {
                    Ok(known) => {
                        tracing::warn!(peer = %pid, known = %known,
                            "an operator ordered the next new incarnation of a peer admitted");
                        AdminReply::Admitted {
                            peer,
                            known_incarnation: known.0,
                        }
                    }
                    Err(e) => AdminReply::Refused {
                        reason: e.to_string(),
                    },
                },
            },
        };
        let Some(reply) = reply_frame(
            frame,
            frame.encoded_len(),
            (engine.id(), engine.incarnation()),
            self.authenticated,
            &reply,
        ) else {
            self.malformed += 1;
            tracing::debug!(
                from = %frame.from,
                request_bytes = frame.encoded_len(),
                "admin request too small for its reply (requests are padded to \
                 ADMIN_REQUEST_BYTES): dropped, as a reply to a forged source would flood it"
            );
            return None;
        };
        Some(reply)
    }

    fn status(
        &self,
        snap: EngineSnapshot,
        peers: &BTreeMap<ProcessId, SocketAddr>,
        endpoint: &EndpointStats,
    ) -> StatusReport {
        let now = Time::now_wall();
        let now_instant = Instant::now();
        let (dead_by_peer, dead_letters, dead_letters_capped) = self.dead_letters();
        let mut held_by_peer = BTreeMap::new();
        let (mut held, mut poisoned) = (0, 0);
        for h in &snap.held {
            let why = match &h.reason {
                HeldReason::NewerVersion { version } => {
                    held += 1;
                    format!("newer schema version {version}")
                }
                HeldReason::Panicked { message } => {
                    poisoned += 1;
                    // Bounded, so that the reply fits in a datagram whatever the panic said.
                    let short: String = message.chars().take(HELD_TEXT_CHARS_MAX).collect();
                    let more = if short.len() < message.len() {
                        "..."
                    } else {
                        ""
                    };
                    format!("poison: {short}{more}")
                }
            };
            if let crate::living::HeldSource::Peer { peer, seq } = &h.source {
                held_by_peer.insert(peer.clone(), format!("from seq {seq}: {why}"));
            }
        }
        let listed = snap.peers.len().min(STATUS_PEERS_MAX);
        let peer_reports = snap.peers[..listed]
            .iter()
            .map(|p| PeerReport {
                id: p.id.to_string(),
                incarnation: p.incarnation.to_string(),
                address: peers.get(&p.id).map(ToString::to_string),
                outbox: p.outbox as u64,
                in_flight: p.in_flight as u64,
                acked: p.acked,
                delivered: p.delivered,
                oldest_unacked_seq: p.oldest_unacked.map(|(seq, _)| seq),
                oldest_unacked_age_ms: p
                    .oldest_unacked
                    .and_then(|(_, first)| first)
                    .map(|first| now.since(first).as_millis() as u64),
                held: held_by_peer.get(&p.id).cloned(),
                dead_letters: dead_by_peer.get(p.id.as_str()).copied().unwrap_or(0),
                awaiting_admission: p.awaiting_admission,
                refuses_us: p.refuses_us,
                srtt_us: p.srtt.map(|d| d.as_micros() as u64),
                retransmits: p.retransmits,
            })
            .collect();
        let (turns_per_s, rate_window) = match self.turn_samples.front() {
            Some(&(at, turns)) if now_instant > at => (
                snap.stats.turns.saturating_sub(turns),
                now_instant.duration_since(at),
            ),
            _ => (snap.stats.turns, self.started.elapsed()),
        };
        let turns_per_s = if rate_window.is_zero() {
            0.0
        } else {
            turns_per_s as f64 / rate_window.as_secs_f64()
        };
        let s = &snap.stats;
        let frames_dropped: BTreeMap<String, u64> = [
            ("junk", endpoint.junk_dropped),
            ("untagged", endpoint.untagged_dropped),
            ("unknown_key", endpoint.unknown_key_dropped),
            ("bad_tag", endpoint.bad_tag_dropped),
            ("misaddressed", s.misaddressed_frames),
            ("unknown_peer", s.unknown_peer_frames),
            ("unsupported", s.unsupported_frames),
            ("malformed", s.malformed_frames),
            ("stale_incarnation", s.stale_incarnation_frames),
            ("unauthenticated", s.unauthenticated_frames),
            ("out_of_range", s.out_of_range_frames),
            ("admin_malformed", self.malformed),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        StatusReport {
            id: snap.id.to_string(),
            incarnation: snap.incarnation.to_string(),
            app: self.app.to_string(),
            schema_version: self.schema_version,
            authenticated: self.authenticated,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            turns_total: snap.turns_total,
            turns: s.turns,
            commits: s.commits,
            turns_per_s,
            rate_window_ms: rate_window.as_millis() as u64,
            commit_latency: self.latency(),
            peers_not_listed: (snap.peers.len() - listed) as u64,
            peers: peer_reports,
            held,
            poisoned,
            dead_letters,
            dead_letters_capped,
            fuse_groups: snap
                .groups
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            clients_cached: snap.clients_cached as u64,
            reply_cache_bytes: snap.reply_cache_inline_bytes as u64,
            frames_dropped,
            retransmits: s.retransmits,
            admin_requests: self.answered,
            standby: self.standby.clone(),
            role: self.role.clone(),
        }
    }

    fn latency(&self) -> Latency {
        if self.commit_us.is_empty() {
            return Latency::default();
        }
        let mut sorted: Vec<u64> = self.commit_us.iter().copied().collect();
        sorted.sort_unstable();
        let n = sorted.len();
        let at = |q: usize| sorted[((n * q).div_ceil(100)).clamp(1, n) - 1];
        Latency {
            samples: n as u64,
            mean_us: sorted.iter().sum::<u64>() / n as u64,
            p50_us: at(50),
            p99_us: at(99),
            max_us: sorted[n - 1],
        }
    }

    /// Dead letters in the store, by peer: (by peer, total, capped).
    fn dead_letters(&self) -> (BTreeMap<String, u64>, u64, bool) {
        let mut by_peer = BTreeMap::new();
        let Some(reader) = &self.reader else {
            return (by_peer, 0, false);
        };
        let rows = match reader.table_scan(
            crate::living::DEAD_LETTERS_TABLE,
            b"",
            None,
            DEAD_LETTERS_COUNTED_MAX,
        ) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "status: cannot count the dead letters");
                return (by_peer, 0, false);
            }
        };
        for row in &rows {
            let peer = row.0.split(|b| *b == 0).next().unwrap_or_default();
            *by_peer
                .entry(String::from_utf8_lossy(peer).into_owned())
                .or_insert(0) += 1;
        }
        let n = rows.len() as u64;
        (by_peer, n, n >= u64::from(DEAD_LETTERS_COUNTED_MAX))
    }
}

/// The standby's half (`ken standby serve`, which runs no engine): answers one admin
/// request datagram received on its UDP port. A status request gets `status()` as
/// [`AdminReply::Standby`]; any other request a [`AdminReply::Refused`] (a standby takes no
/// orders: ask its primary). Dropped (`None`), as a process drops them: a datagram that does
/// not open under `keys` (untagged when keyed, another key), that is not an admin request
/// for `process`, that does not decode, or whose reply would be more than
/// [`crate::limits::AMPLIFICATION_MAX`] times it. Returns the sealed reply.
pub fn answer_standby(
    datagram: &[u8],
    keys: Option<&Keyring>,
    process: &ProcessId,
    status: impl FnOnce() -> StandbyStatus,
) -> Option<Vec<u8>> {
    let frame = match keys {
        Some(k) => Frame::open(datagram, k),
        None => Frame::open(datagram, &NoKeys),
    }
    .ok()?;
    if frame.kind != FrameKind::AdminRequest
        || (keys.is_some() && frame.auth != Auth::Cluster)
        || frame.to != *process
    {
        return None;
    }
    let request = decode_payload::<PaddedRequest>(&frame.payload)
        .ok()?
        .request;
    let reply = match request {
        AdminRequest::Status => AdminReply::Standby(Box::new(status())),
        AdminRequest::Admit { .. } => AdminReply::Refused {
            reason: format!(
                "this is the standby of {process}, which runs no application: ask the primary"
            ),
        },
    };
    let reply = reply_frame(
        &frame,
        datagram.len(),
        (process, Incarnation(0)),
        keys.is_some(),
        &reply,
    )?;
    match keys {
        Some(k) => k.seal(&reply).ok(),
        None => reply.encode().ok(),
    }
}

/// The frame answering admin request `request` (`request_bytes` long on the wire) with
/// `reply`, from `from` (id, incarnation), under the cluster key when `keyed`; `None` when it
/// would be more than [`crate::limits::AMPLIFICATION_MAX`] times the request (requests are
/// padded to `ADMIN_REQUEST_BYTES`; a large reply to a forged source would flood it).
fn reply_frame(
    request: &Frame,
    request_bytes: usize,
    (from, from_incarnation): (&ProcessId, Incarnation),
    keyed: bool,
    reply: &AdminReply,
) -> Option<Frame> {
    let frame = Frame {
        kind: FrameKind::AdminReply,
        auth: if keyed { Auth::Cluster } else { Auth::None },
        from: from.clone(),
        from_incarnation,
        to: request.from.clone(),
        to_incarnation: Incarnation(0),
        seq: request.seq,
        ack: Seq(0),
        acked: Seq(0),
        payload: encode_payload(reply),
    };
    let cap = request_bytes.saturating_mul(crate::limits::AMPLIFICATION_MAX);
    (frame.encoded_len() + SEAL_BYTES_MAX <= cap).then_some(frame)
}

/// Why [`ask`] got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// Nothing came back in time: the process is down, the address is wrong, or the keys
    /// differ (a keyed process drops an unkeyed request; an unkeyed one drops a keyed one).
    #[error("no answer in {} ms", .0.as_millis())]
    NoAnswer(Duration),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Payload(#[from] PayloadError),
    #[error("cannot seal the request: {0}")]
    Seal(#[from] ken_transport::EncodeError),
}

/// Interval between retransmissions of an admin request that got no answer yet.
const ASK_RETRY: Duration = Duration::from_millis(200);

/// Asks the process `to` at `addr` one admin request and waits up to `timeout` for its
/// answer, resending every 200 ms. With `keys`, the request is sealed with the cluster key
/// and only a reply tagged with it is taken; without, both go untagged.
pub async fn ask(
    addr: SocketAddr,
    to: &ProcessId,
    keys: Option<&Keyring>,
    request: &AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, AskError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    let me = ProcessId::new(format!("admin-{:016x}", rand::random::<u64>()))
        .expect("a valid process id");
    let seq = Seq(rand::random::<u32>() as u64 + 1);
    let frame = Frame {
        kind: FrameKind::AdminRequest,
        auth: if keys.is_some() {
            Auth::Cluster
        } else {
            Auth::None
        },
        from: me.clone(),
        from_incarnation: Incarnation(0),
        to: to.clone(),
        to_incarnation: Incarnation(0),
        seq,
        ack: Seq(0),
        acked: Seq(0),
        payload: encode_payload(&PaddedRequest {
            request: request.clone(),
            padding: vec![0; ADMIN_REQUEST_BYTES],
        }),
    };
    let bytes = match keys {
        Some(k) => k.seal(&frame)?,
        None => frame.encode()?,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; ken_transport::frame::MAX_FRAME_BYTES + 1];
    loop {
        // A send error (no route, refused by ICMP) is retried like a loss until the deadline.
        let _ = socket.send_to(&bytes, addr).await;
        let next = (tokio::time::Instant::now() + ASK_RETRY).min(deadline);
        loop {
            let got = tokio::time::timeout_at(next, socket.recv_from(&mut buf)).await;
            let Ok(got) = got else { break };
            let Ok((n, source)) = got else { continue };
            if source != addr {
                continue;
            }
            let opened = match keys {
                Some(k) => Frame::open(&buf[..n], k),
                None => Frame::open(&buf[..n], &NoKeys),
            };
            let Ok(reply) = opened else { continue };
            if reply.kind != FrameKind::AdminReply || reply.seq != seq || reply.to != me {
                continue;
            }
            return Ok(decode_payload(&reply.payload)?);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AskError::NoAnswer(timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_say_why() {
        let request = AdminRequest::Admit { peer: "b".into() };
        let bytes = encode_payload(&request);
        assert_eq!(&bytes[..2], &ADMIN_VERSION.to_le_bytes());
        assert_eq!(decode_payload::<AdminRequest>(&bytes), Ok(request));
        assert_eq!(
            decode_payload::<AdminRequest>(&[1]),
            Err(PayloadError::TooShort(1))
        );
        let mut other = bytes.clone();
        other[..2].copy_from_slice(&(ADMIN_VERSION + 1).to_le_bytes());
        assert_eq!(
            decode_payload::<AdminRequest>(&other),
            Err(PayloadError::Version {
                theirs: ADMIN_VERSION + 1
            })
        );
        let mut junk = ADMIN_VERSION.to_le_bytes().to_vec();
        junk.extend([0xff; 9]);
        assert!(matches!(
            decode_payload::<AdminRequest>(&junk),
            Err(PayloadError::Undecodable(_))
        ));
        // Trailing bytes are not ignored.
        let mut long = encode_payload(&AdminRequest::Status);
        long.push(0);
        assert!(decode_payload::<AdminRequest>(&long).is_err());
    }

    #[test]
    fn the_largest_status_reply_fits_in_a_frame() {
        let id = "x".repeat(ken_transport::frame::MAX_ID_BYTES);
        let panic: String = "\u{1F600}".repeat(HELD_TEXT_CHARS_MAX);
        let peer = PeerReport {
            id: id.clone(),
            incarnation: format!("{:016x}", u64::MAX),
            address: Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into()),
            outbox: u64::MAX,
            in_flight: u64::MAX,
            acked: u64::MAX,
            delivered: u64::MAX,
            oldest_unacked_seq: Some(u64::MAX),
            oldest_unacked_age_ms: Some(u64::MAX),
            held: Some(format!("from seq {}: poison: {panic}...", u64::MAX)),
            dead_letters: u64::MAX,
            awaiting_admission: true,
            refuses_us: true,
            srtt_us: Some(u64::MAX),
            retransmits: u64::MAX,
        };
        let report = StatusReport {
            id,
            incarnation: format!("{:016x}", u64::MAX),
            app: "a".repeat(64),
            schema_version: u32::MAX,
            authenticated: true,
            uptime_ms: u64::MAX,
            turns_total: u64::MAX,
            turns: u64::MAX,
            commits: u64::MAX,
            turns_per_s: f64::MAX,
            rate_window_ms: u64::MAX,
            commit_latency: Latency {
                samples: u64::MAX,
                mean_us: u64::MAX,
                p50_us: u64::MAX,
                p99_us: u64::MAX,
                max_us: u64::MAX,
            },
            peers: vec![peer; STATUS_PEERS_MAX],
            peers_not_listed: u64::MAX,
            held: u64::MAX,
            poisoned: u64::MAX,
            dead_letters: u64::MAX,
            dead_letters_capped: true,
            fuse_groups: ["creating", "joined", "live", "failed"]
                .into_iter()
                .map(|k| (k.to_string(), u64::MAX))
                .collect(),
            clients_cached: u64::MAX,
            reply_cache_bytes: u64::MAX,
            frames_dropped: (0..20)
                .map(|i| (format!("reason_{i:020}"), u64::MAX))
                .collect(),
            retransmits: u64::MAX,
            admin_requests: u64::MAX,
            // A host name of at most 253 bytes and a port.
            standby: Some(StandbyReport {
                target: format!("{}:65535", "h".repeat(253)),
                commits: u64::MAX,
                acked: u64::MAX,
                connected: true,
                fenced: true,
            }),
            role: RoleReport {
                role: "promoted".into(),
                epoch: u64::MAX,
                detached: Some(crate::standby::Detached {
                    by: "b".repeat(crate::standby::DETACH_REASON_BYTES_MAX),
                    at_ms: u64::MAX,
                    reason: "r".repeat(crate::standby::DETACH_REASON_BYTES_MAX),
                }),
                alone: Some("--no-standby".into()),
                standby_unused: Some(format!("{}:65535", "h".repeat(253))),
            },
        };
        let bytes = encode_payload(&AdminReply::Status(Box::new(report)));
        assert!(
            bytes.len() <= ken_transport::frame::MIN_PAYLOAD_CAPACITY_BYTES,
            "{} bytes",
            bytes.len()
        );
    }

    #[test]
    fn latency_percentiles_of_recent_commits() {
        let mut desk = AdminDesk {
            started: Instant::now(),
            app: "t",
            schema_version: 1,
            authenticated: false,
            commit_us: VecDeque::new(),
            turn_samples: VecDeque::new(),
            reader: None,
            answered: 0,
            malformed: 0,
            metrics: None,
            standby: None,
            role: RoleReport::default(),
        };
        assert_eq!(desk.latency(), Latency::default());
        for us in 1..=(COMMIT_SAMPLES_MAX as u64 + 100) {
            desk.commit_took(Duration::from_micros(us));
        }
        let l = desk.latency();
        assert_eq!(l.samples, COMMIT_SAMPLES_MAX as u64);
        // The oldest 100 samples (1..=100 us) fell out.
        assert_eq!(l.max_us, COMMIT_SAMPLES_MAX as u64 + 100);
        assert_eq!(l.p50_us, 100 + 512);
        assert_eq!(l.p99_us, 100 + 1014);
    }
}
