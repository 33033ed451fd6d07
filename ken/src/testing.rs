//! A test tool: a deterministic host for a cluster of engines. Never used by [`crate::run`].
//!
//! [`Cluster`] runs several [`Engine`]s in one thread, each over a real store (a SQLite file
//! in a directory the test owns), in virtual time, over a network the test controls. It is
//! the one drain loop of the tests (the simulation, the FUSE cluster tests, the lock tests,
//! the inspect tests), as turmoil has one `Sim`: perform an engine's commands, feed back
//! the results, and nothing else.
//!
//! Invariants it keeps, as the driver does:
//! - **Output commit.** An engine's batch is committed to its store (one at a time) before
//!   [`Engine::commit_done`]; every frame and line is released only once the batch it
//!   depends on is durable (asserted, unless the test-only early-release switch is on).
//! - **Crash = lose what was not committed.** [`Cluster::crash`] drops the engine and its
//!   store handle; [`Cluster::start`] reopens the store and recovers from it alone.
//! - **Determinism.** Time moves only when the test moves it; every random choice (network
//!   faults, and the test's own through [`Cluster::rng`]) comes from one seeded generator,
//!   printed the first time it is used, so a run replays from its seed.
//! - [`Engine::check_invariants`] runs after every batch of commands.
//!
//! Commits complete at once by default (the driver's inline path);
//! [`Commits::Held`] keeps each batch committing until the test calls
//! [`Cluster::complete_commit`], to interleave commits with everything else. An engine that
//! stops fails the test unless it calls [`Cluster::tolerate_stops`].
//!
//! **Standbys** (a model of `ken::standby`, `ken/STANDBY.md`): [`Cluster::set_standby`]
//! gives a node a replica store, committed with every batch of the node *before* the batch
//! is reported durable (the release gate), and brought to the node's exact commit (a
//! consistent copy of the node's store) at each start of the node, before it runs, as the
//! real shipper reseeds a replica that is behind; a batch that reached the replica and not
//! the node's store ([`Cluster::land_pending_shipped_only`]) is taken back into the store at
//! the node's next start, as the driver's `standby::take_back` does. [`Cluster::promote`]
//! destroys the node's store for good and restarts the node from its replica at the next
//! epoch. The invariant
//! kept: every batch whose outputs were released is in the replica.
//! [`Cluster::set_standby_release_early`] breaks it on purpose (a negative control).
//!
//! ```
//! use std::time::Duration;
//! use ken::testing::Cluster;
//! use ken::engine::EngineConfig;
//! use ken::{Handler, Input, ProcessId, Time, Tuning, Turn};
//!
//! /// `a` sends `b` one message; `b` counts what it receives.
//! struct Hello;
//! impl Handler for Hello {
//!     const APP: &'static str = "hello";
//!     type State = u64;
//!     type Message = String;
//!     type Request = ();
//!     type Reply = ();
//!     fn on_turn(&self, got: &mut u64, turn: &mut Turn<'_, String>, input: Input<String>) {
//!         match input {
//!             Input::Start if turn.id().as_str() == "a" => {
//!                 turn.send(&ProcessId::new("b").unwrap(), &"hello".to_string()).unwrap();
//!             }
//!             Input::Message { .. } => *got += 1,
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut c = Cluster::new(dir, Time::from_millis(1_700_000_000_000), 7);
//! let ids = [ProcessId::new("a").unwrap(), ProcessId::new("b").unwrap()];
//! for id in &ids {
//!     let peers = ids.iter().filter(|p| *p != id).cloned().collect();
//!     let config = EngineConfig { id: id.clone(), peers, tuning: Tuning::default(), seed: 1 };
//!     c.add(config, || Hello);
//! }
//! c.crash(1); // b is down when a starts: a retransmits until it is back
//! c.start(0);
//! c.run_for(Duration::from_secs(1));
//! c.start(1);
//! let took = c.run_until(Duration::from_secs(5), |c| *c.state(1) == 1);
//! assert!(took < Duration::from_secs(5));
//! c.run_for(Duration::from_secs(1));
//! assert_eq!(*c.state(1), 1, "exactly once");
//! assert_eq!(c.engine(0).peer_status()[0].outbox, 0, "acknowledged");
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ken_store::{Batch, Reader, Recovered, Store};
use ken_transport::{Frame, FrameKind, ProcessId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::{BatchId, Command, Engine, EngineConfig, EngineError};
use crate::{ClientId, Handler, Time};

/// How a node's batches commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// Each batch is committed and reported durable as soon as the engine hands it out.
    AtOnce,
    /// Each batch stays committing until [`Cluster::complete_commit`] (a slow disk): turns
    /// run into the next batch meanwhile, and a crash may come before or after the fsync.
    Held,
}

/// Random faults applied to every datagram, drawn from the cluster's generator. A
/// probability of 0 draws nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability that a datagram is lost.
    pub drop: f64,
    /// Probability that one bit of a datagram is flipped.
    pub corrupt: f64,
    /// Probability that a datagram not corrupted is cut short.
    pub truncate: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Each datagram is delayed by a uniform random time up to this (so datagrams reorder).
    pub delay_max: Duration,
}

/// What the network does with one datagram, as a test's filter decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// On to the random faults and the wire.
    Pass,
    /// Lost.
    Drop,
    /// Kept aside until the test takes it ([`Cluster::take_held`]).
    Hold,
}

/// One datagram between two nodes of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: usize,
    pub to: usize,
    /// The kind of the frame as sent (the bytes may since have been damaged).
    pub kind: FrameKind,
    pub bytes: Vec<u8>,
    /// Not delivered before this time.
    pub due: Time,
}

/// Counts of what the network did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the engines released, to nodes and to clients.
    pub sent: u64,
    /// Lost to a cut link, a filter or a random drop.
    pub lost: u64,
    /// Arrived at a node that was down.
    pub undeliverable: u64,
    /// Handed to an engine.
    pub delivered: u64,
    /// Arrived but did not decode (corrupted or truncated).
    pub junk: u64,
}

/// Something an engine did, in the order it did it. Recorded only while
/// [`Cluster::record_events`] is on.
#[derive(Debug, Clone)]
pub enum Event {
    /// A batch reached the node's store.
    Committed { node: usize, at: Time, batch: Batch },
    /// A frame was released (before the network touched it).
    Sent { node: usize, frame: Frame },
    /// A line was released.
    Emitted { node: usize, line: String },
    /// The handler reported its work done.
    Finished { node: usize, report: String },
    /// The engine stopped; it ignores every event from now on.
    Stopped { node: usize, error: EngineError },
}

/// The filter a test puts on the network.
type Filter = Box<dyn FnMut(&Datagram) -> Fate>;

/// One process of the cluster: its configuration, and its engine and store while it is up.
pub struct Node<H: Handler> {
    config: EngineConfig,
    handler: Box<dyn Fn() -> H>,
    path: PathBuf,
    engine: Option<Engine<H>>,
    store: Option<Store>,
    /// The batch committing, in [`Commits::Held`] mode.
    pending: Option<(BatchId, Batch)>,
    life: u32,
    lines: Vec<(u32, String)>,
    finished: Option<String>,
    replies: Vec<Frame>,
    stopped: Option<EngineError>,
    tasks_started: Vec<TaskAttempt>,
    standby: Option<Standby>,
}

/// A node's standby: its replica store (open while the standby "runs", which is always,
/// except while it is reseeded).
struct Standby {
    path: PathBuf,
    store: Option<Store>,
    /// Batches reported durable but not yet in the replica: only with
    /// [`Cluster::set_standby_release_early`]; committed (in order) before the next batch.
    unshipped: Vec<Batch>,
    /// Batches in the replica and not in the node's store (the standby committed them, the
    /// node's own commit was cut short by a crash: [`Cluster::land_pending_shipped_only`]),
    /// taken back into the store at the node's next start, as `standby::take_back` does.
    ahead: Vec<Batch>,
    reseeds: u64,
}

impl Standby {
    /// Commits the batches deferred by the negative control, then `batch`, to the replica.
    fn commit(&mut self, batch: &Batch) {
        let store = self
            .store
            .as_mut()
            .expect("a standby is seeded before its node runs");
        for b in self
            .unshipped
            .drain(..)
            .chain(std::iter::once(batch.clone()))
        {
            if let Err(e) = store.commit(&b) {
                panic!("commit to the replica {}: {e}", self.path.display());
            }
        }
    }
}

/// A task attempt an engine handed out ([`Command::StartTask`]). The cluster runs no task
/// function: the test finishes attempts by hand with [`Cluster::finish_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAttempt {
    /// The life of the node that started it.
    pub life: u32,
    pub id: crate::TaskId,
    pub name: String,
    pub payload: Vec<u8>,
    pub key: String,
    pub attempt: u32,
}

impl<H: Handler> std::fmt::Debug for Node<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("up", &self.engine.is_some())
            .field("life", &self.life)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Node<H> {
    pub fn id(&self) -> &ProcessId {
        &self.config.id
    }

    /// The configuration its next life starts with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Its store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    pub fn engine(&self) -> Option<&Engine<H>> {
        self.engine.as_ref()
    }

    /// Lives started so far (1 during the first).
    pub fn life(&self) -> u32 {
        self.life
    }

    /// Released lines, over all lives, each with the life that released it.
    pub fn lines(&self) -> &[(u32, String)] {
        &self.lines
    }

    /// The last report released with [`Command::Finished`], over all lives.
    pub fn finished(&self) -> Option<&str> {
        self.finished.as_deref()
    }

    /// Frames released to clients (replies and rejects), over all lives.
    pub fn replies(&self) -> &[Frame] {
        &self.replies
    }

    /// Why the engine of this life stopped, if it did.
    pub fn stopped(&self) -> Option<&EngineError> {
        self.stopped.as_ref()
    }

    /// Task attempts started, over all lives, in order.
    pub fn tasks_started(&self) -> &[TaskAttempt] {
        &self.tasks_started
    }

    /// The batch committing, in [`Commits::Held`] mode (what [`Cluster::land_pending`]
    /// would land).
    pub fn pending_batch(&self) -> Option<&Batch> {
        self.pending.as_ref().map(|(_, b)| b)
    }

    /// Its standby's replica store, if it has a standby ([`Cluster::set_standby`]).
    pub fn standby_path(&self) -> Option<&Path> {
        self.standby.as_ref().map(|s| s.path.as_path())
    }

    /// How many times its replica was seeded with a copy of its store (0 without a standby).
    pub fn standby_reseeds(&self) -> u64 {
        self.standby.as_ref().map_or(0, |s| s.reseeds)
    }
}

/// A cluster of engines over real stores, in virtual time. See the module docs.
pub struct Cluster<H: Handler> {
    dir: Box<dyn AsRef<Path>>,
    now: Time,
    step: Duration,
    seed: u64,
    rng: ChaCha8Rng,
    seed_printed: bool,
    commits: Commits,
    nodes: Vec<Node<H>>,
    in_flight: VecDeque<Datagram>,
    held: Vec<Datagram>,
    cut: BTreeSet<(usize, usize)>,
    faults: Faults,
    filter: Option<Filter>,
    stats: NetStats,
    events: Option<Vec<Event>>,
    stops_tolerated: bool,
    /// [`Cluster::set_standby_release_early`].
    standby_early: f64,
    /// [`Cluster::set_standby_skip_take_back`].
    skip_take_back: bool,
}

impl<H: Handler> std::fmt::Debug for Cluster<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (seed, now) = (self.seed, self.now);
        write!(
            f,
            "Cluster {{ seed: {seed}, now: {now:?}, nodes: {:?} }}",
            self.nodes
        )
    }
}

impl<H: Handler> Cluster<H> {
    /// An empty cluster whose stores go in `dir` (a path, or a `tempfile::TempDir` that the
    /// cluster keeps until it is dropped), its clock at `start`, its generator seeded with
    /// `seed`. Steps are 5 ms; commits complete at once; the network delivers everything,
    /// in order.
    pub fn new(dir: impl AsRef<Path> + 'static, start: Time, seed: u64) -> Cluster<H> {
        Cluster {
            dir: Box::new(dir),
            now: start,
            step: Duration::from_millis(5),
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed_printed: false,
            commits: Commits::AtOnce,
            nodes: Vec::new(),
            in_flight: VecDeque::new(),
            held: Vec::new(),
            cut: BTreeSet::new(),
            faults: Faults::default(),
            filter: None,
            stats: NetStats::default(),
            events: None,
            stops_tolerated: false,
            standby_early: 0.0,
            skip_take_back: false,
        }
    }

    /// Adds a node, down (see [`Cluster::start`]); returns its index. Its store is
    /// `DIR/ID.ken`; `handler` builds its handler at every start.
    pub fn add(&mut self, config: EngineConfig, handler: impl Fn() -> H + 'static) -> usize {
        assert!(
            self.index(&config.id).is_none(),
            "{} added twice",
            config.id
        );
        self.nodes.push(Node {
            path: (*self.dir).as_ref().join(format!("{}.ken", config.id)),
            config,
            handler: Box::new(handler),
            engine: None,
            store: None,
            pending: None,
            life: 0,
            lines: Vec::new(),
            finished: None,
            replies: Vec::new(),
            stopped: None,
            tasks_started: Vec::new(),
            standby: None,
        });
        self.nodes.len() - 1
    }

    /// The length of [`Cluster::step`] (5 ms unless set).
    pub fn set_step(&mut self, step: Duration) {
        self.step = step;
    }

    pub fn set_commits(&mut self, commits: Commits) {
        self.commits = commits;
    }

    /// The directory the stores are in.
    pub fn dir(&self) -> &Path {
        (*self.dir).as_ref()
    }

    /// Gives node `i` a standby whose replica store is `replica` (a path that is absent or
    /// holds an earlier replica of this node). The replica is seeded with a consistent copy
    /// of the node's store now if the node is up, else at its next start; from then on every
    /// batch of the node is committed to the replica before it is reported durable.
    ///
    /// # Panics
    /// If the node already has a standby, or the copy fails.
    pub fn set_standby(&mut self, i: usize, replica: impl Into<PathBuf>) {
        let node = &mut self.nodes[i];
        assert!(node.standby.is_none(), "{} has a standby", node.config.id);
        node.standby = Some(Standby {
            path: replica.into(),
            store: None,
            unshipped: Vec::new(),
            ahead: Vec::new(),
            reseeds: 0,
        });
        if node.is_up() {
            self.seed_standby(i);
        }
    }

    /// The negative control of the release gate: with probability `p` a batch is reported
    /// durable (its outputs released) while the replica does not hold it yet; it reaches the
    /// replica only with the node's next batch, so a promotion in between loses it. 0 (the
    /// default) keeps the gate.
    pub fn set_standby_release_early(&mut self, p: f64) {
        self.standby_early = p;
    }

    /// The negative control of the take-back: a node restarted after
    /// [`Cluster::land_pending_shipped_only`] drops the batches its replica holds beyond its
    /// store (the replica is then reseeded from the store at the start) instead of taking
    /// them back. Never set in a real run.
    pub fn set_standby_skip_take_back(&mut self, skip: bool) {
        self.skip_take_back = skip;
    }

    /// Starts recording [`Event`]s (and clears what was recorded), or stops.
    pub fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// An engine that stops ([`Command::Fatal`]) is recorded ([`Node::stopped`],
    /// [`Event::Stopped`]) instead of failing the test with a panic.
    pub fn tolerate_stops(&mut self) {
        self.stops_tolerated = true;
    }

    /// The events recorded and not yet taken.
    pub fn events(&self) -> &[Event] {
        self.events.as_deref().unwrap_or_default()
    }

    /// Takes the events recorded since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    // ---- processes ----

    /// Starts node `i`: opens its store, recovers the engine from it (with the node's
    /// current [`Cluster::config_mut`]), starts it and performs its commands.
    ///
    /// # Panics
    /// If the node is up, or its store does not open or recover.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.engine.is_none(), "{} is already up", node.config.id);
        let (mut store, mut recovered) = open_store(
            &node.path,
            node.config.id.as_str(),
            &crate::upgrade::identity::<H>(),
        );
        // Batches its standby committed and it lost in the crash come back first (the
        // driver's `standby::take_back`), then the store is opened again.
        let ahead = node
            .standby
            .as_mut()
            .map(|s| std::mem::take(&mut s.ahead))
            .unwrap_or_default();
        if !ahead.is_empty() && !self.skip_take_back {
            for b in &ahead {
                if let Err(e) = store.commit(b) {
                    panic!("take back into {}: {e}", node.path.display());
                }
            }
            drop(store);
            (store, recovered) = open_store(
                &node.path,
                node.config.id.as_str(),
                &crate::upgrade::identity::<H>(),
            );
        }
        let handler = (node.handler)();
        crate::upgrade::apply(
            &mut store,
            &mut recovered,
            &handler,
            &crate::crash::CrashPoints::default(),
        )
        .unwrap_or_else(|e| panic!("migrate {}: {e}", node.config.id));
        let reader = Reader::open(&node.path)
            .unwrap_or_else(|e| panic!("open a reader on {}: {e}", node.path.display()));
        let tables = crate::engine::tables::StoreTables::new(&store, reader);
        let mut engine = Engine::recover(node.config.clone(), handler, recovered, Box::new(tables))
            .unwrap_or_else(|e| panic!("recover {}: {e}", node.config.id));
        node.store = Some(store);
        // Nothing runs until the replica holds every commit of the store (the real primary
        // waits for its shipper's reseed the same way).
        self.seed_standby(i);
        engine.start(self.now);
        let node = &mut self.nodes[i];
        node.engine = Some(engine);
        node.stopped = None;
        node.life += 1;
        self.drain(i);
    }

    /// Brings node `i`'s replica to the exact commit of its store (which must exist) if it
    /// is not there (absent, behind, another incarnation): a consistent copy of the store
    /// put in the replica's place, then the replica reopened.
    fn seed_standby(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(standby) = node.standby.as_mut() else {
            return;
        };
        let meta = |path: &Path| Reader::open(path).ok().and_then(|r| r.meta().ok());
        let primary = meta(&node.path).unwrap_or_else(|| {
            panic!("read the store {} to seed its standby", node.path.display())
        });
        standby.unshipped.clear();
        let in_step = standby.path.exists()
            && meta(&standby.path).is_some_and(|m| {
                m.incarnation == primary.incarnation && m.commits == primary.commits
            });
        if !in_step {
            standby.store = None;
            let mut copy = standby.path.clone().into_os_string();
            copy.push(".seed");
            let copy = PathBuf::from(copy);
            let _ = std::fs::remove_file(&copy);
            Reader::open(&node.path)
                .map_err(|e| e.to_string())
                .and_then(|r| r.copy_into(&copy).map_err(|e| e.to_string()))
                .unwrap_or_else(|e| panic!("copy {}: {e}", node.path.display()));
            ken_store::install_copy(&standby.path, &copy)
                .unwrap_or_else(|e| panic!("install the copy at {}: {e}", standby.path.display()));
            standby.reseeds += 1;
        }
        if standby.store.is_none() {
            let app = crate::upgrade::identity::<H>();
            standby.store = Some(open_store(&standby.path, node.config.id.as_str(), &app).0);
        }
    }

    /// Promotes node `i`'s standby, as an operator would once the node's disk is gone for
    /// good: crashes the node (a batch committing is lost; call [`Cluster::land_pending`]
    /// first to land it), deletes its store's files, makes the replica its store
    /// ([`Node::path`] is the replica's path from now on), adds one to the replica's epoch
    /// ([`crate::standby::promote`]) and starts the node from it. The node has no standby
    /// afterwards. Returns the new epoch.
    ///
    /// # Panics
    /// If the node has no standby, or a file operation fails.
    pub fn promote(&mut self, i: usize) -> u64 {
        self.crash(i);
        let node = &mut self.nodes[i];
        let standby = node
            .standby
            .take()
            .unwrap_or_else(|| panic!("{} has no standby to promote", node.config.id));
        drop(standby.store);
        // Unshipped batches (the negative control) are lost with the disk.
        let old = node.path.clone();
        let name = old
            .file_name()
            .expect("a store file")
            .to_string_lossy()
            .to_string();
        let dir = old.parent().expect("a store directory");
        for entry in std::fs::read_dir(dir).expect("list the store directory") {
            let entry = entry.expect("a directory entry");
            let file = entry.file_name().to_string_lossy().to_string();
            let rest = file.strip_prefix(&name);
            if rest.is_some_and(|r| r.is_empty() || r.starts_with('-') || r.starts_with('.')) {
                std::fs::remove_file(entry.path())
                    .unwrap_or_else(|e| panic!("delete {}: {e}", entry.path().display()));
            }
        }
        assert!(!old.exists() && !ken_store::wal_path(&old).exists());
        node.path = standby.path;
        let epoch = crate::standby::promote(&node.path)
            .unwrap_or_else(|e| panic!("promote {}: {e}", node.path.display()));
        self.start(i);
        epoch
    }

    /// Starts every node that is down, in order.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_up() {
                self.start(i);
            }
        }
    }

    /// Kills node `i` as SIGKILL would: its engine and store handle are dropped, and with
    /// them every turn not committed (a held batch too: see [`Cluster::land_pending`]).
    /// Frames in flight to it are lost when they arrive. A node already down stays down.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.engine = None;
        node.store = None;
        node.pending = None;
    }

    /// Crash and start again at once.
    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        self.start(i);
    }

    /// Writes node `i`'s held batch to its store without reporting it durable to the
    /// engine: the fsync finished, then the process died before releasing anything. Call
    /// [`Cluster::crash`] next. False if no batch was committing.
    pub fn land_pending(&mut self, i: usize) -> bool {
        let Some((_, batch)) = self.nodes[i].pending.take() else {
            return false;
        };
        self.commit_to_store(i, batch);
        true
    }

    /// As [`Cluster::land_pending`], but the batch reaches node `i`'s store only, not its
    /// standby's replica (the local fsync finished, the shipment did not): the replica is
    /// behind until the node's next start reseeds it. Without a standby, the same as
    /// [`Cluster::land_pending`].
    pub fn land_pending_unshipped(&mut self, i: usize) -> bool {
        let Some((_, batch)) = self.nodes[i].pending.take() else {
            return false;
        };
        self.commit_locally(i, batch);
        true
    }

    /// As [`Cluster::land_pending`], but the batch reaches node `i`'s standby's replica only,
    /// not its store (the standby committed it, the node's own commit was cut short): the
    /// node takes it back from the standby at its next start, before it recovers (as the
    /// driver's `standby::take_back` does); a promotion finds it in the replica. It counts as
    /// committed from now on (recorded as [`Event::Committed`]): it is durable in the
    /// replica. Call [`Cluster::crash`] (or [`Cluster::promote`]) next. False if no batch was
    /// committing or the node has no standby (then nothing landed).
    pub fn land_pending_shipped_only(&mut self, i: usize) -> bool {
        if self.nodes[i].standby.is_none() {
            return false;
        }
        let Some((_, batch)) = self.nodes[i].pending.take() else {
            return false;
        };
        let node = &mut self.nodes[i];
        let standby = node.standby.as_mut().expect("checked");
        standby.commit(&batch);
        standby.ahead.push(batch.clone());
        let at = self.now;
        self.record(Event::Committed { node: i, at, batch });
        true
    }

    /// Commits node `i`'s held batch, reports it durable and performs what that releases.
    /// False if no batch was committing.
    pub fn complete_commit(&mut self, i: usize) -> bool {
        let Some((id, batch)) = self.nodes[i].pending.take() else {
            return false;
        };
        self.commit_to_store(i, batch);
        let engine = self.nodes[i]
            .engine
            .as_mut()
            .expect("a held batch has an engine");
        engine.commit_done(self.now, id);
        self.drain(i);
        true
    }

    /// Hands node `i`'s engine the result of attempt `attempt` of task `id` (as the driver
    /// does when a task function returns) and performs what follows.
    ///
    /// # Panics
    /// If the node is down.
    pub fn finish_task(
        &mut self,
        i: usize,
        id: crate::TaskId,
        attempt: u32,
        result: crate::TaskResult,
    ) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(engine) = node.engine.as_mut() else {
            panic!("{} is down", node.config.id);
        };
        engine.task_finished(now, id, attempt, result);
        self.drain(i);
    }

    /// Node `i`'s engine configuration, used from its next start on (to change the seed
    /// of the next life, say).
    pub fn config_mut(&mut self, i: usize) -> &mut EngineConfig {
        &mut self.nodes[i].config
    }

    // ---- time ----

    pub fn now(&self) -> Time {
        self.now
    }

    /// Moves the clock only: nothing is delivered or ticked.
    pub fn advance(&mut self, by: Duration) {
        self.now = self.now.plus(by);
    }

    /// Ticks node `i` (timers, retransmissions, FUSE) if it is up, and performs the
    /// commands.
    pub fn tick(&mut self, i: usize) {
        if let Some(engine) = self.nodes[i].engine.as_mut() {
            engine.tick(self.now);
            self.drain(i);
        }
    }

    /// One step: delivers every datagram that is due (and those they cause), then moves
    /// the clock one step and ticks every node that is up.
    pub fn step(&mut self) {
        self.deliver_due();
        self.advance(self.step);
        for i in 0..self.nodes.len() {
            self.tick(i);
        }
    }

    /// Steps until `by` of virtual time has passed.
    pub fn run_for(&mut self, by: Duration) {
        let end = self.now.plus(by);
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `done` holds; returns the virtual time it took.
    ///
    /// # Panics
    /// If `done` does not hold within `within` of virtual time.
    pub fn run_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Cluster<H>) -> bool,
    ) -> Duration {
        let start = self.now;
        let end = start.plus(within);
        while !done(self) {
            assert!(
                self.now < end,
                "not done within {within:?} of virtual time (seed {})",
                self.seed
            );
            self.step();
        }
        self.now.since(start)
    }

    // ---- network ----

    /// Delivers datagram `k` of [`Cluster::in_flight`] (whether due or not) and performs
    /// what the receiver does.
    pub fn deliver(&mut self, k: usize) {
        let Some(d) = self.in_flight.remove(k) else {
            return;
        };
        let Some(engine) = self.nodes[d.to].engine.as_mut() else {
            self.stats.undeliverable += 1;
            return;
        };
        match Frame::decode(&d.bytes) {
            Ok(frame) => {
                self.stats.delivered += 1;
                engine.handle_frame(self.now, frame);
                self.drain(d.to);
            }
            Err(_) => self.stats.junk += 1,
        }
    }

    /// Delivers every due datagram in the order sent, including those sent meanwhile.
    pub fn deliver_due(&mut self) {
        while let Some(k) = self.in_flight.iter().position(|d| d.due <= self.now) {
            self.deliver(k);
        }
    }

    /// Hands node `i` a request from `client`, as if it came over the network (the engine
    /// answers through [`Node::replies`] once the turn commits). Lost if the node is down.
    pub fn request(&mut self, i: usize, client: ClientId, request_no: u64, request: &H::Request) {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        // First sent now: inside the engine's retry window.
        let payload = ken_store::codec::encode(&crate::client::RequestEnvelope {
            sent_ms: self.now.as_millis(),
            request: ken_store::codec::encode(request),
            padding: Vec::new(),
        });
        let frame = Frame {
            kind: FrameKind::ClientRequest,
            auth: ken_transport::Auth::None,
            from: client.to_process_id(),
            from_incarnation: ken_transport::Incarnation(0),
            to: engine.id().clone(),
            to_incarnation: ken_transport::Incarnation(0),
            seq: ken_transport::Seq(request_no),
            ack: ken_transport::Seq(0),
            acked: ken_transport::Seq(0),
            payload,
        };
        engine.handle_frame(self.now, frame);
        self.drain(i);
    }

    /// Datagrams on the wire, oldest first; the test may reorder, drop or add.
    pub fn in_flight_mut(&mut self) -> &mut VecDeque<Datagram> {
        &mut self.in_flight
    }

    pub fn in_flight(&self) -> &VecDeque<Datagram> {
        &self.in_flight
    }

    /// Takes the datagrams held on the link `from -> to`, oldest first (put them in
    /// [`Cluster::in_flight_mut`] to deliver them).
    pub fn take_held(&mut self, from: usize, to: usize) -> Vec<Datagram> {
        let (taken, kept) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|d| d.from == from && d.to == to);
        self.held = kept;
        taken
    }

    /// Everything sent on the link `from -> to` is lost until [`Cluster::heal`].
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// Everything node `i` sends is lost (it still hears the others).
    pub fn mute(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            self.cut(i, j);
        }
    }

    /// Everything node `i` sends or is sent is lost.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            self.cut(i, j);
            self.cut(j, i);
        }
    }

    /// Nothing crosses between the two sides.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &l in left {
            for &r in right {
                self.cut(l, r);
                self.cut(r, l);
            }
        }
    }

    /// Reconnects every cut link (faults and filter stay).
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Decides each datagram's fate before the random faults (a cut link comes first).
    pub fn set_filter(&mut self, filter: impl FnMut(&Datagram) -> Fate + 'static) {
        self.filter = Some(Box::new(filter));
    }

    /// Every datagram passes the filter again.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    pub fn net_stats(&self) -> &NetStats {
        &self.stats
    }

    // ---- access ----

    /// The cluster's generator (network faults draw from it too): a test that draws its
    /// own choices from it replays them with the cluster's seed.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        if !self.seed_printed {
            self.seed_printed = true;
            println!("ken::testing cluster: seed {}", self.seed);
        }
        &mut self.rng
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node<H> {
        &self.nodes[i]
    }

    /// The index of the node called `id`.
    pub fn index(&self, id: &ProcessId) -> Option<usize> {
        self.nodes.iter().position(|n| n.config.id == *id)
    }

    /// Node `i`'s engine: its state, stats, peer status, groups.
    ///
    /// # Panics
    /// If the node is down.
    pub fn engine(&self, i: usize) -> &Engine<H> {
        self.nodes[i]
            .engine
            .as_ref()
            .unwrap_or_else(|| panic!("{} is down", self.nodes[i].config.id))
    }

    /// Node `i`'s handler state, including turns not yet committed.
    pub fn state(&self, i: usize) -> &H::State {
        self.engine(i).state()
    }

    // ---- the drain loop ----

    /// Performs node `i`'s commands until it has none.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(engine) = self.nodes[i].engine.as_mut() else {
                return;
            };
            let commands = engine.take_commands();
            engine.check_invariants();
            if commands.is_empty() {
                return;
            }
            for command in commands {
                self.perform(i, command);
            }
        }
    }

    fn perform(&mut self, i: usize, command: Command) {
        match command {
            Command::Commit { id, batch } => match self.commits {
                Commits::AtOnce => {
                    self.commit_to_store(i, batch);
                    let engine = self.nodes[i].engine.as_mut().expect("up");
                    engine.commit_done(self.now, id);
                }
                Commits::Held => {
                    let node = &mut self.nodes[i];
                    assert!(node.pending.is_none(), "one commit at a time");
                    node.pending = Some((id, batch));
                }
            },
            Command::Send { to, frame, after } => {
                self.assert_durable(i, after);
                self.send(i, &to, frame);
            }
            Command::Emit { line, after } => {
                self.assert_durable(i, after);
                let node = &mut self.nodes[i];
                node.lines.push((node.life, line.clone()));
                self.record(Event::Emitted { node: i, line });
            }
            Command::StartTask {
                id,
                name,
                payload,
                key,
                attempt,
                after,
            } => {
                self.assert_durable(i, after);
                let node = &mut self.nodes[i];
                node.tasks_started.push(TaskAttempt {
                    life: node.life,
                    id,
                    name,
                    payload,
                    key,
                    attempt,
                });
            }
            Command::Finished { report } => {
                self.nodes[i].finished = Some(report.clone());
                self.record(Event::Finished { node: i, report });
            }
            Command::Fatal { error } => {
                let id = &self.nodes[i].config.id;
                assert!(self.stops_tolerated, "{id} stopped: {error}");
                self.nodes[i].stopped = Some(error.clone());
                self.record(Event::Stopped { node: i, error });
            }
        }
    }

    /// The driver's check: an output leaves only after the batch it depends on.
    fn assert_durable(&self, i: usize, after: BatchId) {
        let engine = self.nodes[i].engine.as_ref().expect("up");
        let early = self.nodes[i].config.tuning.releases_before_commit();
        assert!(
            after <= engine.durable_batch() || early,
            "output commit violated by {}: depends on batch {after}, durable is {}",
            self.nodes[i].config.id,
            engine.durable_batch()
        );
    }

    /// Commits `batch` to node `i`'s standby's replica (if any), then to its store.
    fn commit_to_store(&mut self, i: usize, batch: Batch) {
        self.ship(i, &batch);
        self.commit_locally(i, batch);
    }

    /// The release gate's other half: `batch` in the replica before it is reported durable
    /// (unless the negative control defers it).
    fn ship(&mut self, i: usize, batch: &Batch) {
        if self.nodes[i].standby.is_none() {
            return;
        }
        let early = self.standby_early;
        let defer = self.chance(early);
        let node = &mut self.nodes[i];
        let standby = node.standby.as_mut().expect("checked");
        if defer {
            standby.unshipped.push(batch.clone());
            return;
        }
        standby.commit(batch);
    }

    fn commit_locally(&mut self, i: usize, batch: Batch) {
        let node = &mut self.nodes[i];
        let store = node.store.as_mut().expect("a committing node has a store");
        if let Err(e) = store.commit(&batch) {
            panic!("commit to {}: {e}", node.path.display());
        }
        let at = self.now;
        self.record(Event::Committed { node: i, at, batch });
    }

    fn send(&mut self, from: usize, to: &ProcessId, frame: Frame) {
        self.stats.sent += 1;
        let to = self.index(to);
        let kind = frame.kind;
        let bytes = frame.encode().expect("engine frames encode");
        let Some(to) = to else {
            if ClientId::from_process_id(&frame.to).is_some() {
                self.nodes[from].replies.push(frame.clone());
            }
            self.record(Event::Sent { node: from, frame });
            return;
        };
        self.record(Event::Sent { node: from, frame });
        let d = Datagram {
            from,
            to,
            kind,
            bytes,
            due: self.now,
        };
        if self.cut.contains(&(from, to)) {
            self.stats.lost += 1;
            return;
        }
        match self.filter.as_mut().map_or(Fate::Pass, |f| f(&d)) {
            Fate::Pass => {}
            Fate::Drop => {
                self.stats.lost += 1;
                return;
            }
            Fate::Hold => {
                self.held.push(d);
                return;
            }
        }
        self.wire(d);
    }

    /// The random faults, then the wire.
    fn wire(&mut self, mut d: Datagram) {
        let f = self.faults.clone();
        if self.chance(f.drop) {
            self.stats.lost += 1;
            return;
        }
        if self.chance(f.corrupt) {
            let bit = self.rng().gen_range(0..d.bytes.len() * 8);
            d.bytes[bit / 8] ^= 1 << (bit % 8);
        } else if self.chance(f.truncate) {
            let len = self.rng().gen_range(0..d.bytes.len());
            d.bytes.truncate(len);
        }
        if self.chance(f.duplicate) {
            let copy = self.delayed(d.clone(), f.delay_max);
            self.in_flight.push_back(copy);
        }
        let d = self.delayed(d, f.delay_max);
        self.in_flight.push_back(d);
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng().gen_bool(p)
    }

    fn delayed(&mut self, mut d: Datagram, max: Duration) -> Datagram {
        if !max.is_zero() {
            let us = self.rng().gen_range(0..=max.as_micros() as u64);
            d.due = d.due.plus(Duration::from_micros(us));
        }
        d
    }

    fn record(&mut self, event: Event) {
        if let Some(events) = self.events.as_mut() {
            events.push(event);
        }
    }
}

/// Opens a store, retrying briefly an `InUse` held by this very process: a child forked by
/// another test thread holds a copy of the just-closed lock descriptor until it execs (the
/// owner lock is an `flock`, shared by forked descriptors).
fn open_store(path: &Path, id: &str, app: &ken_store::AppIdentity) -> (Store, Recovered) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open_for_app(path, id, &ken_store::StoreOptions::default(), app) {
            Ok(opened) => return opened,
            Err(ken_store::OpenError::InUse { holder_pid, .. })
                if holder_pid == Some(std::process::id())
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("open store {}: {e}", path.display()),
        }
    }
}

/// The environment variable that overrides the seed of every randomized test.
pub const SEED_ENV: &str = "KEN_SEED";

/// The seed for the randomized run `label`: `KEN_SEED` if set (decimal or `0x` hex),
/// otherwise a fresh random one. Prints it either way, with the line that replays it.
///
/// # Panics
/// If `KEN_SEED` is set but not a number (a mistyped replay must not silently run a random
/// seed).
pub fn seed(label: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => parse_seed(&text).unwrap_or_else(|| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{label}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}
