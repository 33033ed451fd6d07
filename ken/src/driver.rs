//! The tokio driver: wires an [`Engine`] to a [`ken_store::Store`] and a UDP
//! [`Endpoint`].
//!
//! One current-thread tokio runtime runs the engine loop; the store has its own thread
//! (commits block on fsync) that talks to the loop through two bounded channels, so that
//! turns keep running into the next batch while one commits; a batch of a few turns with no
//! frame waiting is committed on the loop thread instead, while commits are fast (see
//! `INLINE_COMMIT_TURNS_MAX` and `INLINE_COMMIT_SLOW`: a lone round trip then skips two
//! thread hand-offs; with a standby (`Config::standby`) the loop first yields to the shipper
//! task, which writes the batch to the standby's socket, so the standby's copy and the local
//! commit run at once either way). A
//! receive task feeds frames (taken
//! with `recvmmsg`, several per system call) through a bounded channel that the loop stops
//! reading when the engine applies backpressure.
//!
//! Invariant (output commit, the driver's half): a [`Command::Send`] or [`Command::Emit`] is
//! executed only if the batch it depends on (`after`) has been committed: reported durable
//! by the store thread, or committed inline. The driver asserts it, independently of the
//! engine's own assertions.
//!
//! Security: with a cluster key ([`Config::key`]) the endpoint tags every peer frame with
//! it and drops, counted, every peer frame not tagged with it (or an older key still
//! accepted, [`Config::accepted_keys`]); clients need a credential. Without a key, [`run`]
//! logs one loud warning at start: anyone who can send a datagram to the process can speak
//! as any peer or client (SECURITY.md).
//!
//! Operators: an `AdminRequest` frame (`ken status`, `ken admit --cluster`) is answered by
//! the loop itself from counters (`crate::admin::AdminDesk`), never by a turn; with
//! [`Config::metrics`] the same counters are served to Prometheus (`crate::metrics`).
//!
//! Failure policy: a failed commit stops the process (exit code non-zero, clear message); it
//! is never retried. Restart = run the same command again.
//!
//! Observability for harnesses (`ken torture`), off unless set in the environment:
//! `KEN_ANNOUNCE=1` sets [`Config::announce`] (through [`Config::with_env_switches`]), and
//! [`Config::stats_interval`] (the app binaries: `--stats-interval-ms`, the cluster file, else
//! `KEN_STATS_INTERVAL_MS=N`) prints one line
//! `{"event":"stats","turns":..,"messages_sent":..,"retransmits":..,"duplicates_dropped":..,
//! "frames_in":..,"frames_sent":..,"junk_dropped":..,"heartbeats_sent":..,
//! "liveness_bytes_sent":..,"fuse_bytes_sent":..,"fuse_notifications":..,"faults_dropped":..,
//! "untagged_dropped":..,"unknown_key_dropped":..,"bad_tag_dropped":..,"old_key_frames":..,
//! "messages_held":..,
//! "dead_letters":..,"turns_panicked":..,"held":..,"wal_bytes":..,"db_bytes":..,"syncs":..,
//! "tasks_started":..,"task_attempts":..,"task_failures":..,"task_results_delivered":..,
//! "at_ms":..}` (`held`: input sources held now, see `ken::living`; the task counters: tasks
//! recorded by turns, attempts started, attempts that failed (an error or a panic), results
//! delivered as `Input::TaskDone`; `wal_bytes`, `db_bytes`,
//! `syncs`: what the store wrote to its WAL and database file and how many syncs, counted by
//! its VFS shim, `ken_store::vfs::WriteCounters`) to stderr every N ms and when the loop ends (a SIGKILLed life loses the counts
//! since its last line). Counters are per life; `at_ms` is the wall clock (ms since the epoch)
//! when the line was printed, so rates can be taken between two lines.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ken_store::{Batch, CommitError, Store, StoreOptions};
use ken_transport::{
    Auth, ClusterKey, Endpoint, EndpointOptions, FaultConfig, FaultsFile, Frame, FrameKind,
    KeyFileError, Keyring, ProcessId,
};
use tokio::sync::mpsc;

use crate::admin::AdminDesk;
use crate::cluster::PeerAddress;
use crate::crash::CrashPoints;
use crate::engine::{BatchId, Command, Engine, EngineConfig, EngineError, Security};
use crate::task::{TaskContext, TaskId, TaskRegistry, TaskResult};
use crate::watch::{Action, PeerWatch};
use crate::{Handler, Time, Tuning};

/// Frames buffered between the receive task and the engine loop.
const FRAME_QUEUE_MAX: usize = 4096;

/// Name resolutions finished and not yet taken by the engine loop.
const RESOLVE_QUEUE_MAX: usize = 64;

/// How often the loop looks for quiet peers (`watch.rs`).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Frames the engine loop handles before it looks at other events again.
const FRAMES_PER_WAKEUP_MAX: usize = 256;

/// Admin replies waiting to be sent; requests beyond it in one wakeup are dropped (the
/// operator's tool retries).
const ADMIN_REPLIES_QUEUED_MAX: usize = 64;

/// How a process is run.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: ProcessId,
    /// UDP address to listen on (port 0 picks one; see [`Config::bound`]).
    pub listen: SocketAddr,
    /// The store file (created if missing).
    pub store: PathBuf,
    /// Address book: where each peer listens.
    pub peers: BTreeMap<ProcessId, SocketAddr>,
    pub tuning: Tuning,
    /// Network faults to inject (tests). `None`: read `KEN_FAULTS` from the environment.
    pub faults: Option<FaultConfig>,
    /// After the handler reports its work finished, keep answering (re-acknowledging
    /// retransmissions) this long before exiting, so peers waiting on a lost final
    /// acknowledgement get it.
    pub finish_linger: Duration,
    pub store_options: StoreOptions,
    /// Print a line `{"event":"listening","id":..,"addr":..}` to stderr once bound.
    pub announce: bool,
    /// Receives the bound address once the endpoint is up (for in-process hosts and tests
    /// that listen on port 0).
    pub bound: Option<std::sync::mpsc::Sender<SocketAddr>>,
    /// Observation of message timing, for measurements (`ken bench`); `None` (the default)
    /// tracks nothing. When set, the driver calls the observer once per message to a peer,
    /// when its acknowledgement arrives, with the message's [`MessageTimes`]: its turn's
    /// time, its first transmission, its acknowledgement. Messages already in the outbox at
    /// recovery are not reported. It runs on the engine loop, so it must be quick.
    pub observe: Option<Observer>,
    /// The cluster key: every peer frame is tagged with it, frames not tagged with it (or
    /// with one of `accepted_keys`) are dropped, and clients need a credential issued from
    /// it. `None`: unauthenticated mode, announced by a loud warning at start.
    pub key: Option<ClusterKey>,
    /// Older keys still accepted (a rotation in progress: every process runs with the new
    /// key and accepts the old one, then the old one is dropped).
    pub accepted_keys: Vec<ClusterKey>,
    /// Encrypt the payload of every peer frame (needs `key`). Frames are accepted encrypted
    /// or not either way, so a cluster can switch this on one process at a time.
    pub encrypt: bool,
    /// Peers given by host name ([`Config::add_peer`]): resolved again when the peer has
    /// acknowledged nothing for a while (`watch.rs`), and, for those not in `peers` because
    /// their name did not resolve at start, until it does. Every key here is a peer.
    pub peer_hosts: BTreeMap<ProcessId, PeerAddress>,
    /// Print a stats line this often (module docs); `Some(ZERO)`: never. `None`: read
    /// `KEN_STATS_INTERVAL_MS` if `read_env`.
    pub stats_interval: Option<Duration>,
    /// Read the environment fallbacks in [`run`]: `KEN_FUSE_*` into the tuning (overriding
    /// it) and `KEN_STATS_INTERVAL_MS`. True by default; false when the caller resolved them
    /// already (a cluster file or flags, which take precedence over the variables).
    pub read_env: bool,
    /// Print one human-readable line to stderr once the process is up (the app binaries
    /// do): id, listening address, fresh or recovered store, turns and outbox recovered,
    /// recovery time.
    pub ready_line: bool,
    /// How host names are resolved (tests inject one); `None`: the system resolver.
    pub resolver: Option<Resolver>,
    /// The task functions turns may start ([`Config::task`], [`crate::Turn::start_task`]).
    pub tasks: TaskRegistry,
    /// Serve Prometheus metrics over HTTP here (`GET /metrics`; `ken/METRICS.md`). `None`:
    /// no endpoint.
    pub metrics: Option<SocketAddr>,
    /// Where this process's standby listens for batches (`host:port`, TCP; issue 18,
    /// `crate::standby`). Each committed batch is shipped there while it commits locally,
    /// and its outputs leave only when both the local commit and the standby's
    /// acknowledgement are done; at start nothing runs until the standby holds every commit
    /// of the store. `None`: no standby (the process runs alone).
    pub standby: Option<String>,
    /// Where a peer's standby will listen for frames once promoted (the cluster file's
    /// `standby.address`): a frame of the peer from that address (an IP address) moves it
    /// there at once, and a peer that stays quiet is tried at its standby address and back,
    /// one quiet period each (see `watch`), so a promoted standby is found without
    /// restarting anyone.
    pub peer_standbys: BTreeMap<ProcessId, PeerAddress>,
    /// The standby the cluster file declares and this run does not use because of a one-run
    /// override (`--no-standby`): only reported (`ken status`, logged at start). A store
    /// detached on the record (`ken standby detach`) needs no flag: [`run`] reads it.
    pub standby_skipped: Option<String>,
}

/// The function inside a [`Resolver`].
pub type ResolveFn = dyn Fn(&PeerAddress) -> std::io::Result<SocketAddr> + Send + Sync;

/// A host-name resolver for [`Config::resolver`]: called off the engine loop, may block.
#[derive(Clone)]
pub struct Resolver(pub Arc<ResolveFn>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver(..)")
    }
}

impl Resolver {
    fn resolve(&self, address: &PeerAddress) -> std::io::Result<SocketAddr> {
        (self.0)(address)
    }
}

impl Config {
    /// A config with default tuning.
    pub fn new(id: ProcessId, listen: SocketAddr, store: impl Into<PathBuf>) -> Config {
        Config {
            id,
            listen,
            store: store.into(),
            peers: BTreeMap::new(),
            tuning: Tuning::default(),
            faults: None,
            finish_linger: Duration::from_millis(1500),
            store_options: StoreOptions::default(),
            announce: false,
            bound: None,
            observe: None,
            key: None,
            accepted_keys: Vec::new(),
            encrypt: false,
            peer_hosts: BTreeMap::new(),
            stats_interval: None,
            read_env: true,
            ready_line: false,
            resolver: None,
            tasks: TaskRegistry::default(),
            metrics: None,
            standby: None,
            peer_standbys: BTreeMap::new(),
            standby_skipped: None,
        }
    }

    /// Registers the async function `f` as task `name`, which turns start with
    /// [`crate::Turn::start_task`]. Each attempt is called with a [`TaskContext`] (the task's
    /// id, its idempotency key, the attempt number) and the payload, runs on this process's
    /// tokio runtime outside any turn (it may do any I/O; at most
    /// [`Tuning::task_running_max`] run at once), and returns the result bytes or an error.
    /// The runtime is single-threaded and shared with the engine loop: an attempt must not
    /// block the thread (await I/O; put blocking work in `tokio::task::spawn_blocking`).
    ///
    /// **At least once, with a stable key; the result is delivered exactly once.** An
    /// attempt that fails (`Err`, a panic) is retried after an exponential backoff; one cut
    /// short by a crash is run again after the restart, so the outside world may see a task
    /// more than once: give it [`TaskContext::key`] (the same for every attempt) to
    /// recognise repeats. The first success becomes one [`crate::Input::TaskDone`]. A task
    /// started under a name not registered here fails every attempt (logged) until a process
    /// that registers it runs. See [`crate::task`].
    pub fn task<F, Fut>(&mut self, name: &str, f: F) -> &mut Config
    where
        F: Fn(TaskContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = TaskResult> + Send + 'static,
    {
        self.tasks.register(name, f);
        self
    }

    /// Adds peer `id` at `address`: an IP address goes straight into [`Config::peers`]; a
    /// host name is resolved now (blocking; with [`Config::resolver`] if set) and kept in
    /// [`Config::peer_hosts`] to be resolved again later. A name that does not resolve now
    /// is not an error: [`run`] keeps trying (a peer's name may appear only once it runs,
    /// as in a Kubernetes headless service) and warns while messages wait for it.
    pub fn add_peer(&mut self, id: ProcessId, address: PeerAddress) {
        if let Some(addr) = address.literal() {
            self.peers.insert(id.clone(), addr);
            self.peer_hosts.remove(&id);
            return;
        }
        let resolved = match &self.resolver {
            Some(r) => r.resolve(&address),
            None => address.resolve(),
        };
        match resolved {
            Ok(addr) => {
                self.peers.insert(id.clone(), addr);
            }
            Err(e) => {
                tracing::warn!(peer = %id, address = %address, error = %e,
                    "peer's host name does not resolve yet; will keep trying");
                self.peers.remove(&id);
            }
        }
        self.peer_hosts.insert(id, address);
    }

    /// Uses the cluster key in `path` (see [`Config::key`]).
    pub fn key_file(mut self, path: &std::path::Path) -> Result<Config, KeyFileError> {
        self.key = Some(ClusterKey::load(path)?);
        Ok(self)
    }

    /// Also accepts frames and credentials of the key in `path` (a rotation in progress).
    pub fn accept_key_file(mut self, path: &std::path::Path) -> Result<Config, KeyFileError> {
        self.accepted_keys.push(ClusterKey::load(path)?);
        Ok(self)
    }

    /// Applies the environment switches for harnesses: `KEN_ANNOUNCE=1`, and, only in builds
    /// with the test-only cargo feature `unsafe-release-before-commit`,
    /// `KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1` and `KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1`, and with `unsafe-drop-held`,
    /// `KEN_UNSAFE_DROP_HELD=1` (see [`Tuning`]).
    pub fn with_env_switches(mut self) -> Config {
        #[cfg(feature = "unsafe-release-before-commit")]
        if std::env::var("KEN_UNSAFE_RELEASE_BEFORE_COMMIT").is_ok_and(|v| v == "1") {
            tracing::warn!(
                "KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1: outputs leave before commit (test only)"
            );
            self.tuning.release_before_commit = true;
        }
        #[cfg(feature = "unsafe-release-before-commit")]
        if std::env::var("KEN_UNSAFE_RELEASE_BEFORE_STANDBY").is_ok_and(|v| v == "1") {
            tracing::warn!(
                "KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1: outputs leave before the standby holds them (test only)"
            );
            self.tuning.release_before_standby = true;
        }
        #[cfg(feature = "unsafe-drop-held")]
        if std::env::var("KEN_UNSAFE_DROP_HELD").is_ok_and(|v| v == "1") {
            tracing::warn!("KEN_UNSAFE_DROP_HELD=1: newer-version messages dropped (test only)");
            self.tuning.drop_held_messages = true;
        }
        if std::env::var("KEN_ANNOUNCE").is_ok_and(|v| v == "1") {
            self.announce = true;
        }
        self
    }
}

/// When one message to a peer was sent, transmitted and acknowledged ([`Config::observe`]),
/// all read from the wall clock by the engine loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTimes {
    pub to: ProcessId,
    pub seq: u64,
    /// The time handed to the engine event whose turn sent it (the turn's `Turn::now`).
    pub sent: Time,
    /// Just after its first data frame was handed to the socket (after the commit of its
    /// turn); `None` if this life never transmitted it.
    pub transmitted: Option<Time>,
    /// The time handed to the engine with the frame whose cumulative acknowledgement covers
    /// it (taken from the receive queue just before).
    pub acknowledged: Time,
}

/// The callback of [`Config::observe`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(&MessageTimes) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer(..)")
    }
}

/// The driver's half of [`Config::observe`]: the open messages' times, learned from the
/// engine's peer counters after every event (a turn that sent raised `next_seq`; a frame
/// that acknowledged raised `acked`). Holds at most the messages in the outboxes.
struct Observation {
    observer: Observer,
    /// Per peer: `next_seq` and `acked` as last seen.
    seen: HashMap<ProcessId, (u64, u64)>,
    /// (peer, seq) -> (sent, first transmission) of messages not yet acknowledged.
    open: HashMap<(ProcessId, u64), (Time, Option<Time>)>,
}

impl Observation {
    /// Starts from the engine's current counters: what is in the outboxes now is not tracked.
    fn new<H: Handler>(observer: Observer, engine: &Engine<H>) -> Observation {
        let seen = engine
            .peer_status()
            .into_iter()
            .map(|p| (p.id, (p.next_seq, p.acked)))
            .collect();
        Observation {
            observer,
            seen,
            open: HashMap::new(),
        }
    }

    /// After an engine event handed `now`: messages sent by it were sent at `now`, messages
    /// it acknowledged were acknowledged at `now`.
    fn after_event<H: Handler>(&mut self, engine: &Engine<H>, now: Time) {
        for p in engine.peer_status() {
            let (next_seq, acked) = self
                .seen
                .entry(p.id.clone())
                .or_insert((p.next_seq, p.acked));
            for seq in (*next_seq).max(1)..p.next_seq {
                self.open.insert((p.id.clone(), seq), (now, None));
            }
            *next_seq = (*next_seq).max(p.next_seq);
            for seq in *acked + 1..=p.acked {
                if let Some((sent, transmitted)) = self.open.remove(&(p.id.clone(), seq)) {
                    (self.observer.0)(&MessageTimes {
                        to: p.id.clone(),
                        seq,
                        sent,
                        transmitted,
                        acknowledged: now,
                    });
                }
            }
            *acked = (*acked).max(p.acked);
            if p.outbox == 0 {
                // Nothing is unacknowledged: what is still open was dropped (forget_peer).
                self.open.retain(|(to, _), _| *to != p.id);
            }
        }
    }

    /// A frame to `to` was handed to the socket at `at`.
    fn transmitted(&mut self, to: &ProcessId, frame: &Frame, at: Time) {
        if frame.kind == FrameKind::Data {
            if let Some((_, t)) = self.open.get_mut(&(to.clone(), frame.seq.0)) {
                t.get_or_insert(at);
            }
        }
    }
}

/// How [`run`] ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The handler reported its work finished (the report was printed to stdout).
    Finished { report: String },
}

/// Why a process stopped. Each is printed as one line; the process exits non-zero and may
/// be restarted with the same command (committed data is intact) once the cause is fixed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("cannot open store: {0}")]
    Open(#[from] ken_store::OpenError),
    /// The store's schema migration failed; nothing was written (see the message).
    #[error("{0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("cannot serve metrics on TCP {addr}: {source} (choose another --metrics address)")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad KEN_FAULTS: {0}")]
    Faults(String),
    #[error("{0}")]
    CrashPoints(#[from] crate::crash::CrashParseError),
    #[error("commit failed, stopping (restart the process to recover from the last commit): {0}")]
    Commit(#[from] CommitError),
    #[error("stopping: {0}")]
    Engine(#[from] EngineError),
    #[error("bad tuning: {0}")]
    Tuning(#[from] crate::tuning::TuningError),
    #[error("bad keys: {0}")]
    Keys(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the store thread died unexpectedly")]
    StoreThread,
}

/// Runs a process until its handler reports it finished (most never do) or it fails.
/// Restart after a crash is the same call: recovery from the store, then retransmission of
/// the outbox.
pub fn run<H: Handler>(config: Config, handler: H) -> Result<Exit, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(run_async(config, handler))
}

/// The store, shared by the store thread and the engine loop: the loop commits a small batch
/// itself when nothing else is waiting (see [`INLINE_COMMIT_TURNS_MAX`]); everything else goes
/// to the store thread. At most one batch commits at a time either way, so the mutex is never
/// contended.
type SharedStore = Arc<std::sync::Mutex<Store>>;

struct StoreThread {
    store: SharedStore,
    commits: std::sync::mpsc::SyncSender<(BatchId, Arc<Batch>)>,
    done: mpsc::Receiver<(BatchId, Result<Duration, CommitError>)>,
    /// Joined when the loop ends, so that the store is closed when `run` returns.
    thread: std::thread::JoinHandle<()>,
}

/// A batch of at most this many turns is committed on the engine loop's own thread when no
/// frame is waiting: a lone turn (a round trip, a request) then costs one fsync plus the
/// transaction, without two thread hand-offs. Bigger batches, or any batch while frames are
/// queued, go to the store thread so that turns keep running into the next batch meanwhile
/// (pipelined group commit).
const INLINE_COMMIT_TURNS_MAX: u64 = 4;

/// ... and only while commits are fast: the loop receives nothing while it commits, so a
/// commit that blocks it longer than this (a disk whose fsync takes milliseconds) would delay
/// every frame that arrives meanwhile by as much, for a saving of two thread hand-offs (tens
/// of microseconds). Judged by a moving average of recent commit times, both paths.
const INLINE_COMMIT_SLOW: Duration = Duration::from_millis(1);

/// One commit with its crash points; shared by both commit paths. Returns how long the
/// transaction took.
fn commit_one(
    store: &SharedStore,
    crash: &CrashPoints,
    batch: &Batch,
) -> Result<Duration, CommitError> {
    crash.pass("before_commit");
    let started = std::time::Instant::now();
    let result = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .commit(batch)
        .map(|_| started.elapsed());
    if result.is_ok() {
        crash.pass("after_commit");
    }
    result
}

fn spawn_store_thread(store: Store, crash: Arc<CrashPoints>) -> StoreThread {
    let store: SharedStore = Arc::new(std::sync::Mutex::new(store));
    let (commit_tx, commit_rx) = std::sync::mpsc::sync_channel::<(BatchId, Arc<Batch>)>(1);
    let (done_tx, done_rx) = mpsc::channel(2);
    let shared = Arc::clone(&store);
    let thread = std::thread::Builder::new()
        .name("ken-store".into())
        .spawn(move || {
            while let Ok((id, batch)) = commit_rx.recv() {
                let result = commit_one(&shared, &crash, &batch);
                let failed = result.is_err();
                if done_tx.blocking_send((id, result)).is_err() || failed {
                    break;
                }
            }
        })
        .expect("spawn the store thread");
    StoreThread {
        store,
        commits: commit_tx,
        done: done_rx,
        thread,
    }
}

async fn run_async<H: Handler>(mut config: Config, handler: H) -> Result<Exit, RunError> {
    let started = std::time::Instant::now();
    if config.read_env {
        config.tuning.apply_env()?;
    }
    config.tuning.check()?;
    let crash = Arc::new(CrashPoints::from_env()?);
    let open = |config: &Config| {
        Store::open_for_app(
            &config.store,
            config.id.as_str(),
            &config.store_options,
            &crate::upgrade::identity::<H>(),
        )
    };
    let (mut store, mut recovered) = open(&config)?;
    // Batches the standby committed and this process lost in a crash come back first (not
    // for a store detached on the record: it runs alone).
    if let Some(target) = config.standby.clone() {
        if crate::standby::store_role(&store)?.detached.is_none() {
            let cfg = crate::standby::ShipperConfig {
                process: config.id.clone(),
                store: config.store.clone(),
                standby: target,
                key: config.key.clone(),
                encrypt: config.encrypt && config.key.is_some(),
            };
            if crate::standby::take_back(&cfg, &mut store).await? > 0 {
                drop(store);
                (store, recovered) = open(&config)?;
            }
        }
    }
    crate::upgrade::apply(&mut store, &mut recovered, &handler, &crash)?;
    // Batch `id` of this life becomes the store's commit `commits_at_start + id`.
    let commits_at_start = store.commits();
    // A store detached on the record runs alone, loudly (ken/STANDBY.md).
    let role = crate::standby::store_role(&store)?;
    let standby_unused = crate::standby::apply_role(&role, &mut config);
    let reader = ken_store::Reader::open(&config.store)?;
    tracing::info!(
        id = %config.id,
        incarnation = recovered.incarnation,
        created = recovered.created,
        turns = recovered.turns_committed,
        outbox = recovered.outbox.len(),
        "recovered"
    );
    let faults = match &config.faults {
        Some(f) => Some(f.clone()),
        None => FaultConfig::from_env().map_err(|e| RunError::Faults(e.to_string()))?,
    };
    let keys = match &config.key {
        Some(key) => Some(Arc::new(
            Keyring::new(key, &config.accepted_keys, config.encrypt)
                .map_err(|e| RunError::Keys(e.to_string()))?,
        )),
        None if config.encrypt || !config.accepted_keys.is_empty() => {
            return Err(RunError::Keys(
                "encryption and accepted keys need a cluster key".into(),
            ))
        }
        None => None,
    };
    match &keys {
        Some(keys) => tracing::info!(
            id = %config.id,
            key = %keys.current(),
            accepted = config.accepted_keys.len(),
            encrypt = keys.encrypts(),
            "frames authenticated with the cluster key"
        ),
        None => tracing::warn!(
            id = %config.id,
            "NO CLUSTER KEY: frames are not authenticated. Anyone who can send this process \
             a datagram can speak as any peer or client (forge messages and acks, take over \
             clients, keep dead peers alive). Run with a key (ken keygen FILE); see SECURITY.md"
        ),
    }
    let endpoint = Endpoint::bind_with_options(
        config.listen,
        EndpointOptions {
            faults: faults.unwrap_or_default(),
            faults_file: FaultsFile::FromEnv,
            keys,
        },
    )
    .map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    let endpoint = Arc::new(endpoint);
    if let Some(tx) = &config.bound {
        let _ = tx.send(endpoint.local_addr());
    }
    if config.announce {
        eprintln!(
            "{{\"event\":\"listening\",\"id\":\"{}\",\"addr\":\"{}\"}}",
            config.id,
            endpoint.local_addr()
        );
    }

    let fresh = recovered.created;
    let recovered_turns = recovered.turns_committed;
    let recovered_outbox = recovered.outbox.len();
    let incarnation = recovered.incarnation;
    let mut all_peers: Vec<ProcessId> = config.peers.keys().cloned().collect();
    all_peers.extend(config.peer_hosts.keys().cloned());
    all_peers.sort();
    all_peers.dedup();
    let engine_config = EngineConfig {
        id: config.id.clone(),
        peers: all_peers,
        tuning: config.tuning.clone(),
        seed: rand::random(),
    };
    let security = Security {
        authenticated: config.key.is_some(),
    };
    assert_eq!(
        store.commits(),
        commits_at_start,
        "nothing commits before the engine starts"
    );
    let tables = crate::engine::tables::StoreTables::new(&store, reader);
    let mut engine = Engine::recover(engine_config, handler, recovered, Box::new(tables))?
        .with_security(security);
    crash.pass("recovery");
    if config.ready_line {
        eprintln!(
            "ready: {} listening on {} ({}), store {} {} (incarnation {:016x}, {} turns, {} messages in the outbox) in {} ms",
            config.id,
            endpoint.local_addr(),
            if config.key.is_some() { "frames authenticated" } else { "NO cluster key" },
            config.store.display(),
            if fresh { "created fresh" } else { "recovered" },
            incarnation,
            recovered_turns,
            recovered_outbox,
            started.elapsed().as_millis()
        );
    }
    let ready_after = started.elapsed();
    let mut store = spawn_store_thread(store, Arc::clone(&crash));
    let mut watch = PeerWatch::new(
        config.tuning.rto_max * crate::limits::PEER_QUIET_CEILINGS,
        crate::limits::PEER_QUIET_WARN_INTERVAL,
        engine.peer_status().into_iter().map(|p| {
            // A peer with a standby is watched like one given by name, so that a quiet
            // period makes the driver try its other address (below).
            let host = config.peer_hosts.get(&p.id).cloned().or_else(|| {
                let at = config.peers.get(&p.id)?;
                config
                    .peer_standbys
                    .contains_key(&p.id)
                    .then(|| PeerAddress {
                        host: at.ip().to_string(),
                        port: at.port(),
                    })
            });
            let known = config.peers.contains_key(&p.id);
            (p.id, host, known)
        }),
    );
    let resolver = config
        .resolver
        .clone()
        .unwrap_or_else(|| Resolver(Arc::new(|a: &PeerAddress| a.resolve())));
    let (resolved_tx, mut resolved_rx) =
        mpsc::channel::<(ProcessId, PeerAddress, std::io::Result<SocketAddr>)>(RESOLVE_QUEUE_MAX);
    let mut resolving: std::collections::HashSet<ProcessId> = Default::default();

    let (frame_tx, mut frame_rx) = mpsc::channel(FRAME_QUEUE_MAX);
    let recv_endpoint = Arc::clone(&endpoint);
    let receiver = tokio::spawn(async move {
        let mut buffers = recv_endpoint.recv_buffers();
        let mut frames = Vec::with_capacity(ken_transport::RECV_BATCH_MAX);
        loop {
            match recv_endpoint.recv_many(&mut buffers, &mut frames).await {
                Ok(()) => {
                    for (frame, from) in frames.drain(..) {
                        if frame_tx.send((frame, from)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "receive error"),
            }
        }
    });

    // Every running attempt sends one result; at most `task_running_max` run.
    let (task_tx, mut task_rx) =
        mpsc::channel::<(TaskId, u32, TaskResult)>(config.tuning.task_running_max);
    let mut out = Out {
        tasks: &config.tasks,
        task_tx,
        endpoint: &endpoint,
        peers: config.peers.clone(),
        peer_hosts: &config.peer_hosts,
        durable: 0,
        committing: false,
        allow_early_release: config.tuning.releases_before_commit(),
        finish_linger: config.finish_linger,
        finished: None,
        crash: &crash,
        client_addrs: HashMap::new(),
        observation: config.observe.clone().map(|o| Observation::new(o, &engine)),
        commit_avg: Duration::ZERO,
        anonymous_addrs: HashMap::new(),
        desk: AdminDesk::new::<H>(started, config.key.is_some(), &config.store)
            .with_role(role, standby_unused),
        admin_replies: Vec::new(),
        standby: None,
        standby_addrs: config
            .peer_standbys
            .iter()
            .filter_map(|(id, a)| Some((id.clone(), a.literal()?)))
            .collect(),
        primary_addrs: config
            .peer_standbys
            .keys()
            .filter_map(|id| Some((id.clone(), *config.peers.get(id)?)))
            .collect(),
        standby_heard: HashMap::new(),
        quiet_after: config.tuning.rto_max * crate::limits::PEER_QUIET_CEILINGS,
        at_standby: Default::default(),
    };
    if let Some(addr) = config.metrics {
        let (metrics, bound) = crate::metrics::serve(addr)
            .await
            .map_err(|source| RunError::Metrics { addr, source })?;
        metrics.recovered(ready_after);
        eprintln!("metrics: http://{bound}/metrics");
        out.desk.metrics = Some(metrics);
    }
    // Set when a batch was released: its outputs go out at the top of the next iteration.
    let mut released = false;
    let stats_interval = match config.stats_interval {
        Some(i) => Some(i).filter(|i| !i.is_zero()),
        None if config.read_env => stats_interval_from_env(),
        None => None,
    };
    let mut stats_due = stats_interval.map(|i| Time::now_wall().plus(i));
    let mut watch_due = Time::now_wall();
    let mut ship_events = None;
    if let Some(target) = &config.standby {
        let (ship, mut events) = crate::standby::start(crate::standby::ShipperConfig {
            process: config.id.clone(),
            store: config.store.clone(),
            standby: target.clone(),
            key: config.key.clone(),
            encrypt: config.encrypt && config.key.is_some(),
        });
        sync_standby(target, commits_at_start, &mut events).await;
        out.desk.standby = Some(crate::admin::StandbyReport {
            target: target.clone(),
            commits: commits_at_start,
            acked: commits_at_start,
            connected: true,
            fenced: false,
        });
        out.standby = Some(StandbyGate {
            ship,
            base: commits_at_start,
            acked: commits_at_start,
            local_done: None,
            early: config.tuning.releases_before_standby(),
        });
        ship_events = Some(events);
    }
    let now = Time::now_wall();
    engine.start(now);
    out.observe(&engine, now);
    let result = loop {
        if let (Some(due), Some(interval)) = (stats_due, stats_interval) {
            if Time::now_wall() >= due {
                print_stats(engine.stats(), engine.held().len(), &endpoint);
                // A fixed schedule (no drift), skipping beats the loop missed.
                let mut next = due.plus(interval);
                while next <= Time::now_wall() {
                    next = next.plus(interval);
                }
                stats_due = Some(next);
            }
        }
        if Time::now_wall() >= watch_due {
            let now = Time::now_wall();
            let status = engine.peer_status();
            let actions = watch.check(
                now,
                status.iter().map(|p| (p.id.clone(), p.acked, p.outbox)),
            );
            for action in actions {
                match action {
                    Action::Warn {
                        peer,
                        quiet_for,
                        waiting,
                    } => {
                        let at = match (out.peers.get(&peer), config.peer_hosts.get(&peer)) {
                            (Some(addr), Some(host)) => format!("{addr} (resolved from {host})"),
                            (Some(addr), None) => addr.to_string(),
                            (None, Some(host)) => format!("{host}, which does not resolve"),
                            (None, None) => "no known address".to_string(),
                        };
                        tracing::warn!(
                            "peer {peer} at {at} has acknowledged nothing for {} s ({waiting} messages waiting): is it running, is that its address (the same address family as it listens on), and has it the same cluster key? (warned again every {} s while it lasts)",
                            quiet_for.as_secs(),
                            crate::limits::PEER_QUIET_WARN_INTERVAL.as_secs()
                        );
                    }
                    Action::Answers { peer, quiet_for } => tracing::warn!(
                        "peer {peer} acknowledges again after {} s of silence",
                        quiet_for.as_secs()
                    ),
                    Action::Resolve { peer, address } => {
                        // A quiet peer with a standby: its standby may have been promoted
                        // (or demoted back); try the other address for a quiet period.
                        let address = match config.peer_standbys.get(&peer) {
                            Some(standby) => {
                                if out.at_standby.remove(&peer) {
                                    address
                                } else {
                                    out.at_standby.insert(peer.clone());
                                    standby.clone()
                                }
                            }
                            None => address,
                        };
                        if resolving.insert(peer.clone()) {
                            let (tx, r) = (resolved_tx.clone(), resolver.clone());
                            tokio::task::spawn_blocking(move || {
                                let result = r.resolve(&address);
                                let _ = tx.try_send((peer, address, result));
                            });
                        }
                    }
                }
            }
            watch_due = now.plus(WATCH_INTERVAL);
            out.desk
                .sample_turns(std::time::Instant::now(), engine.stats().turns);
            out.desk
                .refresh_metrics(&engine, &out.peers, &endpoint.stats());
        }
        for (to, reply) in std::mem::take(&mut out.admin_replies) {
            if let Err(e) = endpoint.send(to, &reply).await {
                tracing::debug!(to = %to, error = %e, "admin reply not sent");
            }
        }
        match out.execute(&mut engine, &store, frame_rx.is_empty()).await {
            Err(e) => break Err(e),
            // Committed on this thread: release its outputs before anything else.
            Ok(true) => {
                released = true;
                continue;
            }
            Ok(false) => {}
        }
        if std::mem::take(&mut released) {
            crash.pass("after_release");
        }
        if let Some((report, until)) = &out.finished {
            if Time::now_wall() >= *until {
                break Ok(Exit::Finished {
                    report: report.clone(),
                });
            }
        }
        let now = Time::now_wall();
        let mut wake = engine.next_deadline();
        if let Some((_, until)) = &out.finished {
            wake = Some(wake.map_or(*until, |w| w.min(*until)));
        }
        if let Some(due) = stats_due {
            wake = Some(wake.map_or(due, |w| w.min(due)));
        }
        wake = Some(wake.map_or(watch_due, |w| w.min(watch_due)));
        let sleep_for = wake.map(|w| w.since(now));
        if sleep_for == Some(Duration::ZERO) {
            engine.tick(now);
            out.observe(&engine, now);
            continue;
        }
        let accepting = engine.accepting_input();
        tokio::select! {
            biased;
            done = store.done.recv() => {
                let Some((id, result)) = done else { break Err(RunError::StoreThread) };
                match result {
                    Ok(took) => out.commit_took(took),
                    Err(e) => break Err(RunError::Commit(e)),
                }
                released = out.local_done(&mut engine, id);
            }
            event = next_ship_event(&mut ship_events) => {
                let Some(event) = event else { break Err(RunError::StoreThread) };
                released = out.standby_event(&mut engine, event);
            }
            Some((id, attempt, result)) = task_rx.recv() => {
                let now = Time::now_wall();
                engine.task_finished(now, id, attempt, result);
                out.observe(&engine, now);
            }
            Some((peer, address, result)) = resolved_rx.recv() => {
                resolving.remove(&peer);
                watch.resolved(&peer, result.is_ok());
                match result {
                    Ok(addr) => {
                        let old = out.peers.insert(peer.clone(), addr);
                        if old != Some(addr) {
                            tracing::warn!(
                                "peer {peer}: {address} now resolves to {addr} (was {}); sending there",
                                old.map_or("unresolved".to_string(), |a| a.to_string())
                            );
                        }
                    }
                    Err(e) => tracing::warn!("peer {peer}: cannot resolve {address}: {e}"),
                }
            }
            frame = frame_rx.recv(), if accepting => {
                let Some((frame, from)) = frame else { break Err(RunError::StoreThread) };
                let now = Time::now_wall();
                out.take_frame(&mut engine, now, frame, from);
                let mut n = 1;
                while n < FRAMES_PER_WAKEUP_MAX && engine.accepting_input() {
                    match frame_rx.try_recv() {
                        Ok((frame, from)) => out.take_frame(&mut engine, now, frame, from),
                        Err(_) => break,
                    }
                    n += 1;
                }
                out.observe(&engine, now);
            }
            _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::from_secs(3600))) => {
                let now = Time::now_wall();
                engine.tick(now);
                out.observe(&engine, now);
            }
        }
    };
    if stats_interval.is_some() {
        print_stats(engine.stats(), engine.held().len(), &endpoint);
    }
    receiver.abort();
    // Let the store thread go and wait for it: the store closes with its last handle (its
    // WAL checkpointed, the owner lock released) before `run` returns, so a caller in the
    // same process may open the store at once (a test rolling it back did, and a close
    // still running on the detached thread checkpointed the newer WAL over its copy).
    drop(store.commits);
    drop(store.done);
    drop(store.store);
    let _ = store.thread.join();
    result
}

/// `KEN_STATS_INTERVAL_MS` (module docs); unset, unparsable or 0 = no stats lines.
pub(crate) fn stats_interval_from_env() -> Option<Duration> {
    std::env::var("KEN_STATS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Prints the stats line (module docs) to stderr.
fn print_stats(engine: &crate::engine::EngineStats, held: usize, endpoint: &Endpoint) {
    let ep = endpoint.stats();
    let io = ken_store::vfs::write_counters();
    eprintln!(
        "{{\"event\":\"stats\",\"turns\":{},\"messages_sent\":{},\"retransmits\":{},\"duplicates_dropped\":{},\"frames_in\":{},\"frames_sent\":{},\"junk_dropped\":{},\"heartbeats_sent\":{},\"liveness_bytes_sent\":{},\"fuse_bytes_sent\":{},\"fuse_notifications\":{},\"faults_dropped\":{},\"untagged_dropped\":{},\"unknown_key_dropped\":{},\"bad_tag_dropped\":{},\"old_key_frames\":{},\"messages_held\":{},\"dead_letters\":{},\"turns_panicked\":{},\"held\":{},\"wal_bytes\":{},\"db_bytes\":{},\"syncs\":{},\"tasks_started\":{},\"task_attempts\":{},\"task_failures\":{},\"task_results_delivered\":{},\"at_ms\":{}}}",
        engine.turns,
        engine.messages_sent,
        engine.retransmits,
        engine.duplicates_dropped,
        engine.frames_in,
        ep.frames_sent,
        ep.junk_dropped,
        engine.heartbeats_sent,
        engine.liveness_bytes_sent,
        engine.fuse_bytes_sent,
        engine.fuse_notifications,
        ep.faults_dropped,
        ep.untagged_dropped,
        ep.unknown_key_dropped,
        ep.bad_tag_dropped,
        ep.old_key_frames,
        engine.messages_held,
        engine.dead_letters,
        engine.turns_panicked,
        held,
        io.wal_bytes,
        io.db_bytes,
        io.syncs,
        engine.tasks_started,
        engine.task_attempts,
        engine.task_failures,
        engine.task_results_delivered,
        Time::now_wall().as_millis()
    );
}

/// Executes engine commands against the world, checking output commit on the way.
struct Out<'a> {
    endpoint: &'a Endpoint,
    /// Where each peer is sent to now (host names resolved again update it).
    peers: BTreeMap<ProcessId, SocketAddr>,
    /// Peers given by name (for the message when one has no address).
    peer_hosts: &'a BTreeMap<ProcessId, PeerAddress>,
    /// Newest batch the store thread reported durable.
    durable: BatchId,
    committing: bool,
    allow_early_release: bool,
    finish_linger: Duration,
    /// The finished report and when to exit (after lingering).
    finished: Option<(String, Time)>,
    crash: &'a CrashPoints,
    /// The registered task functions.
    tasks: &'a TaskRegistry,
    /// Where task attempts send their results to the engine loop.
    task_tx: mpsc::Sender<(TaskId, u32, TaskResult)>,
    /// Where each credentialed client's requests came from, for its replies: learned only
    /// from requests its credential tagged. Bounded.
    client_addrs: HashMap<ProcessId, SocketAddr>,
    /// [`Config::observe`], when set.
    observation: Option<Observation>,
    /// Moving average (1/8 weight per sample) of commit times, both paths: decides whether a
    /// small batch may be committed inline ([`INLINE_COMMIT_SLOW`]).
    commit_avg: Duration,
    /// The same for requests without a credential (anyone may send one in any client's
    /// name: kept apart, so such a request cannot divert a credentialed client's replies).
    anonymous_addrs: HashMap<ProcessId, SocketAddr>,
    /// Answers administrative requests (`crate::admin`).
    desk: AdminDesk,
    /// Admin replies to send, with their return addresses (sent at the top of the loop).
    admin_replies: Vec<(SocketAddr, Frame)>,
    /// The standby's side of releasing a batch, when the process has one.
    standby: Option<StandbyGate>,
    /// Peers' standby addresses given as IP addresses (`Config::peer_standbys`).
    standby_addrs: BTreeMap<ProcessId, SocketAddr>,
    /// Peers being sent to at their standby's address now.
    at_standby: std::collections::HashSet<ProcessId>,
    /// The primary addresses (IP addresses) of peers with a standby.
    primary_addrs: BTreeMap<ProcessId, SocketAddr>,
    /// When each peer was last heard from at its standby's address.
    standby_heard: HashMap<ProcessId, std::time::Instant>,
    /// The quiet-peer period (`PEER_QUIET_CEILINGS` x `rto_max`).
    quiet_after: Duration,
}

/// A batch's outputs leave when both its local commit and the standby's acknowledgement
/// are done (`Config::standby`): the two run at once, as group commit pipelines batches.
struct StandbyGate {
    ship: crate::standby::ShipperHandle,
    /// The store's commits when this life began: batch `id` is commit `base + id`.
    base: u64,
    /// The standby holds every commit up to this one.
    acked: u64,
    /// The batch committed locally and waiting for the standby.
    local_done: Option<BatchId>,
    /// The test-only switch: release on the local commit alone (`Tuning`).
    early: bool,
}

/// Waits until the standby holds every commit of the store (`commits`) before anything of
/// this life runs: a restarted primary's outbox holds batches the standby may lack, and
/// retransmitting them would show peers outputs a promoted standby never had.
async fn sync_standby(
    target: &str,
    commits: u64,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::standby::ShipEvent>,
) {
    use crate::standby::ShipEvent;
    tracing::info!("waiting for the standby at {target} to hold all {commits} commits");
    let started = std::time::Instant::now();
    while let Some(event) = events.recv().await {
        match event {
            ShipEvent::Acked(n) if n >= commits => {
                tracing::info!(
                    "standby at {target} holds all {commits} commits ({} ms)",
                    started.elapsed().as_millis()
                );
                return;
            }
            ShipEvent::Acked(_) => {}
            ShipEvent::Fenced {
                standby_epoch,
                ours,
            } => tracing::error!(
                "FENCED: the standby at {target} is at epoch {standby_epoch}, this process at \
                 {ours}: another copy of this process was promoted. This one will release \
                 nothing; stop it (its store is out of date)"
            ),
            ShipEvent::Disconnected(why) => {
                tracing::warn!("standby at {target} not reachable ({why}); waiting for it")
            }
        }
    }
}

/// The next shipping event (never, without a standby). `None`: the shipper is gone.
async fn next_ship_event(
    events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<crate::standby::ShipEvent>>,
) -> Option<crate::standby::ShipEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Out<'_> {
    /// Runs attempt `attempt` of task `id` on its own tokio task; its result (a panic is an
    /// error naming it) goes back to the engine loop through `task_tx`.
    fn start_task(&self, id: TaskId, name: String, payload: Vec<u8>, key: String, attempt: u32) {
        let tx = self.task_tx.clone();
        let Some(f) = self.tasks.get(&name) else {
            let error = format!(
                "no task named `{name}` is registered with this process: register it with \
                 Config::task before ken::run (retried with backoff until one is)"
            );
            tracing::error!(task = %id, %name, "{error}");
            // Never full: the channel holds one result per running attempt.
            let _ = tx.try_send((id, attempt, Err(error)));
            return;
        };
        tracing::debug!(task = %id, %name, attempt, "task attempt started");
        let cx = TaskContext { id, key, attempt };
        tokio::spawn(async move {
            // The function is called inside the inner task, so a panic while building the
            // future is caught as well as one while it runs.
            let result = match tokio::spawn(async move { f(cx, payload).await }).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(format!(
                    "the task panicked: {}",
                    crate::living::panic_message(&*e.into_panic())
                )),
                Err(e) => Err(format!("the task was cancelled: {e}")),
            };
            let _ = tx.send((id, attempt, result)).await;
        });
    }

    /// A frame from the receive queue: an admin request is answered by the runtime (never
    /// the engine's turn machinery, never the handler); every other frame goes to the engine.
    fn take_frame<H: Handler>(
        &mut self,
        engine: &mut Engine<H>,
        now: Time,
        frame: Frame,
        from: SocketAddr,
    ) {
        if frame.kind == FrameKind::AdminRequest {
            if self.admin_replies.len() < ADMIN_REPLIES_QUEUED_MAX {
                let stats = self.endpoint.stats();
                if let Some(reply) = self.desk.handle(engine, &frame, &self.peers, &stats) {
                    self.admin_replies.push((from, reply));
                }
            }
            return;
        }
        self.learn(&frame, from);
        self.follow_promotion(&frame, from);
        engine.handle_frame(now, frame);
    }

    /// A peer with a standby (`Config::peer_standbys`) is sent to where it speaks from
    /// (ken/STANDBY.md): a frame from its declared standby address moves it there at once (its
    /// standby was promoted); a frame from its primary address moves it back, unless the
    /// standby address was heard from within a quiet period (a fenced old primary may still
    /// be sending; the promoted copy wins, and peers stop the old one as rolled back). So a
    /// peer that was tried at its standby address while it was only restarting is found
    /// again at its first frame, even with nothing waiting for it (nothing else would move
    /// it back: the quiet-peer watch needs messages waiting). Only the two declared
    /// addresses count, and frames are authenticated when the cluster is keyed.
    fn follow_promotion(&mut self, frame: &Frame, from: SocketAddr) {
        if frame.kind == FrameKind::ClientRequest || frame.kind == FrameKind::AdminRequest {
            return;
        }
        let Some(standby) = self.standby_addrs.get(&frame.from).copied() else {
            return;
        };
        let current = self.peers.get(&frame.from).copied();
        if from == standby {
            self.standby_heard
                .insert(frame.from.clone(), std::time::Instant::now());
            if current != Some(standby) {
                tracing::warn!(
                    "peer {}: heard from its standby's address {standby}: its standby was promoted; sending there",
                    frame.from
                );
                self.peers.insert(frame.from.clone(), standby);
                self.at_standby.insert(frame.from.clone());
            }
            return;
        }
        let Some(primary) = self.primary_addrs.get(&frame.from).copied() else {
            return;
        };
        let standby_recent = self
            .standby_heard
            .get(&frame.from)
            .is_some_and(|t| t.elapsed() < self.quiet_after);
        if from == primary && current == Some(standby) && !standby_recent {
            tracing::warn!(
                "peer {}: heard from its own address {primary} again (its standby's address is silent); sending there",
                frame.from
            );
            self.peers.insert(frame.from.clone(), primary);
            self.at_standby.remove(&frame.from);
        }
    }

    /// Remembers the return address of a client request.
    fn learn(&mut self, frame: &Frame, from: SocketAddr) {
        if frame.kind != FrameKind::ClientRequest {
            return;
        }
        let addrs = match frame.auth {
            Auth::Client { .. } => &mut self.client_addrs,
            _ => &mut self.anonymous_addrs,
        };
        if addrs.len() >= crate::limits::CLIENT_ADDRS_MAX && !addrs.contains_key(&frame.from) {
            // Forget everyone: active clients are learned again from their next retry.
            addrs.clear();
        }
        addrs.insert(frame.from.clone(), from);
    }

    /// A commit (either path) took `took`.
    fn commit_took(&mut self, took: Duration) {
        self.commit_avg = (self.commit_avg * 7 + took) / 8;
        self.desk.commit_took(took);
    }

    /// The store thread committed batch `id`: it is durable if no standby must hold it too,
    /// or the standby has acknowledged it already. True if it was released.
    fn local_done<H: Handler>(&mut self, engine: &mut Engine<H>, id: BatchId) -> bool {
        if let Some(gate) = &mut self.standby {
            if gate.acked < gate.base + id && !gate.early {
                gate.local_done = Some(id);
                return false;
            }
        }
        self.committed(engine, id);
        true
    }

    /// An event of the shipper. True if a batch was released.
    fn standby_event<H: Handler>(
        &mut self,
        engine: &mut Engine<H>,
        event: crate::standby::ShipEvent,
    ) -> bool {
        use crate::standby::ShipEvent;
        let Some(gate) = &mut self.standby else {
            return false;
        };
        if let Some(r) = &mut self.desk.standby {
            r.connected = matches!(event, ShipEvent::Acked(_));
            r.fenced = matches!(event, ShipEvent::Fenced { .. });
        }
        match event {
            ShipEvent::Acked(n) => {
                gate.acked = gate.acked.max(n);
                if let Some(r) = &mut self.desk.standby {
                    r.acked = gate.acked;
                }
                if let Some(id) = gate.local_done.filter(|id| gate.acked >= gate.base + id) {
                    gate.local_done = None;
                    self.committed(engine, id);
                    return true;
                }
            }
            ShipEvent::Fenced {
                standby_epoch,
                ours,
            } => tracing::error!(
                "FENCED: the standby is at epoch {standby_epoch}, this process at {ours}: \
                 another copy of this process was promoted. This one releases nothing more; \
                 stop it (its store is out of date)"
            ),
            ShipEvent::Disconnected(why) => tracing::warn!(
                "standby not reachable ({why}); outputs wait until it holds their batch"
            ),
        }
        false
    }

    /// Batch `id` is durable (committed by either path): its outputs may leave.
    fn committed<H: Handler>(&mut self, engine: &mut Engine<H>, id: BatchId) {
        self.durable = id;
        if let (Some(r), Some(gate)) = (&mut self.desk.standby, &self.standby) {
            r.commits = gate.base + id;
        }
        self.committing = false;
        let now = Time::now_wall();
        engine.commit_done(now, id);
        self.observe(engine, now);
    }

    /// [`Config::observe`]: after an engine event handed `now`.
    fn observe<H: Handler>(&mut self, engine: &Engine<H>, now: Time) {
        if let Some(o) = &mut self.observation {
            o.after_event(engine, now);
        }
    }

    /// Executes the engine's pending commands. `Ok(true)`: a batch was committed inline
    /// (`idle`: no frame is waiting), so there are new commands (its release) to execute.
    async fn execute<H: Handler>(
        &mut self,
        engine: &mut Engine<H>,
        store: &StoreThread,
        idle: bool,
    ) -> Result<bool, RunError> {
        let mut inline = false;
        for cmd in engine.take_commands() {
            match cmd {
                Command::Commit { id, batch } => {
                    assert!(!self.committing, "at most one batch commits at a time");
                    self.desk.batch(batch.turns);
                    assert_eq!(id, self.durable + 1, "batches commit in order");
                    // Shared, not copied, with the shipper, a task of this loop: the yield
                    // lets it write the batch to the standby's socket before the commit
                    // below blocks this thread, so the two copies are made at once.
                    let batch = Arc::new(batch);
                    if let Some(gate) = &self.standby {
                        gate.ship.ship(gate.base + id, Arc::clone(&batch));
                        tokio::task::yield_now().await;
                    }
                    if idle
                        && batch.turns <= INLINE_COMMIT_TURNS_MAX
                        && self.commit_avg <= INLINE_COMMIT_SLOW
                    {
                        self.committing = true;
                        let took = commit_one(&store.store, self.crash, &batch)?;
                        self.commit_took(took);
                        // With a standby, released only once it has acknowledged too.
                        inline = self.local_done(engine, id);
                    } else {
                        self.committing = true;
                        store
                            .commits
                            .try_send((id, batch))
                            .map_err(|_| RunError::StoreThread)?;
                    }
                }
                Command::Send { to, frame, after } => {
                    self.crash.pass("mid_release");
                    assert!(
                        after <= self.durable || self.allow_early_release,
                        "output commit violated: frame depends on batch {after}, durable is {}",
                        self.durable
                    );
                    let clients = match frame.kind {
                        FrameKind::ClientReply | FrameKind::Reject
                            if matches!(frame.auth, Auth::Client { .. }) =>
                        {
                            &self.client_addrs
                        }
                        _ => &self.anonymous_addrs,
                    };
                    let Some(addr) = self.peers.get(&to).or_else(|| clients.get(&to)) else {
                        // A peer whose name does not resolve yet: the watch says so, rate
                        // limited; the engine retransmits once it has an address.
                        if self.peer_hosts.contains_key(&to) {
                            tracing::debug!(peer = %to, "peer's name not resolved; frame dropped");
                        } else {
                            tracing::warn!(peer = %to, "no address for peer; frame dropped");
                        }
                        continue;
                    };
                    if let Err(e) = self.endpoint.send(*addr, &frame).await {
                        tracing::debug!(peer = %to, error = %e, "send failed");
                    }
                    if let Some(o) = &mut self.observation {
                        o.transmitted(&to, &frame, Time::now_wall());
                    }
                }
                Command::Emit { line, after } => {
                    assert!(
                        after <= self.durable || self.allow_early_release,
                        "output commit violated: emit depends on batch {after}, durable is {}",
                        self.durable
                    );
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                }
                Command::StartTask {
                    id,
                    name,
                    payload,
                    key,
                    attempt,
                    after,
                } => {
                    assert!(
                        after <= self.durable || self.allow_early_release,
                        "output commit violated: task {id} depends on batch {after}, durable is {}",
                        self.durable
                    );
                    self.start_task(id, name, payload, key, attempt);
                }
                Command::Finished { report } => {
                    {
                        let mut stdout = std::io::stdout().lock();
                        let _ = writeln!(stdout, "{report}");
                        let _ = stdout.flush();
                    }
                    let until = Time::now_wall().plus(self.finish_linger);
                    self.finished = Some((report, until));
                }
                Command::Fatal { error } => return Err(RunError::Engine(error)),
            }
        }
        Ok(inline)
    }
}
