//! A deterministic, seeded simulation of a Ken cluster in one thread.
//!
//! Several [`Engine`]s with real stores (SQLite files in a temporary directory, on tmpfs when
//! available), a simulated network that loses, duplicates, reorders, corrupts and truncates
//! datagrams, virtual time, and random crashes: a crash throws the engine away and reloads it
//! from its store, losing everything uncommitted (a commit in progress either lands or not).
//! Every step is chosen by one seeded generator, so a run replays exactly from its seed.
//!
//! After every step the [`Checker`] verifies, from what was actually committed and released:
//! - **output validity**: every data frame released carries a message its sender committed
//!   (same sequence number, same bytes); every acknowledgement covers only messages the
//!   receiver consumed in committed turns;
//! - **exactly-once, FIFO per pair**: the committed turns of a receiver consume each sender's
//!   messages as 1, 2, 3, ... with no gap and no repeat, across any number of crashes, and
//!   only messages the sender committed;
//! - the engines' own invariants ([`Engine::check_invariants`]);
//! - the application's invariants ([`SimApp::check`]) over the committed state.
//!
//! At the end the network heals, crashed processes restart, and the run must quiesce
//! (liveness) within a bound of virtual time, then pass the application's final check.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use ken::engine::{BatchId, Command};
use ken::engine::{Engine, EngineConfig};
use ken::store::{Batch, Store};
use ken::transport::{Frame, FrameKind};
use ken::{Handler, ProcessId, Time, Tuning};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fault rates of the simulated network and the crash rate.
#[derive(Debug, Clone)]
pub struct SimFaults {
    pub drop: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    pub truncate: f64,
    /// Probability per step that a live process crashes.
    pub crash: f64,
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            drop: 0.1,
            duplicate: 0.05,
            corrupt: 0.02,
            truncate: 0.01,
            crash: 0.01,
        }
    }
}

/// One simulation run's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Steps with faults, before healing.
    pub steps: u64,
    pub faults: SimFaults,
    pub tuning: Tuning,
    /// Virtual time allowed to quiesce after healing.
    pub quiesce_ms: u64,
    /// Check every released frame against committed state. Off only in the negative control
    /// that shows the end-to-end checks (exactly-once, app invariants) catch bugs on their own.
    pub check_sends: bool,
}

/// The committed state of one process, rebuilt from the batches it committed.
#[derive(Debug, Clone, Default)]
pub struct NodeModel {
    pub root: Option<Vec<u8>>,
    pub tables: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// The last report the process released with `Finished`, if any.
    pub finished: Option<String>,
    /// Lines released with `Emit`.
    pub emitted: Vec<String>,
}

/// What the application invariants are checked over.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub nodes: BTreeMap<String, NodeModel>,
}

/// An application under simulation.
pub trait SimApp {
    type H: Handler;
    fn ids(&self) -> Vec<ProcessId>;
    fn handler(&self, id: &ProcessId) -> Self::H;
    /// Invariants over committed state; `at_end` after quiescence. One line per violation.
    fn check(&self, world: &World, at_end: bool) -> Vec<String>;
    /// True when the application's work is complete (quiescence may be declared).
    fn done(&self, world: &World) -> bool;
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub violations: Vec<String>,
    pub crashes: u64,
    pub commits: u64,
    pub turns: u64,
    pub frames_sent: u64,
    pub frames_delivered: u64,
    pub frames_dropped: u64,
    pub frames_junk: u64,
    pub virtual_ms: u64,
}

/// Output validity and exactly-once bookkeeping over committed batches and released frames.
#[derive(Debug, Default)]
pub struct Checker {
    /// (sender, receiver) -> seq -> payload, as committed by the sender.
    committed: BTreeMap<(String, String), BTreeMap<u64, Vec<u8>>>,
    /// (sender, receiver) -> highest seq consumed by a committed turn of the receiver.
    consumed: BTreeMap<(String, String), u64>,
    pub violations: Vec<String>,
}

impl Checker {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }

    /// `node` committed `batch`.
    pub fn on_commit(&mut self, node: &str, batch: &Batch) {
        for row in &batch.outbox_appends {
            let msgs = self
                .committed
                .entry((node.to_string(), row.peer.clone()))
                .or_default();
            let reused = msgs.get(&row.seq).is_some_and(|old| *old != row.payload);
            msgs.insert(row.seq, row.payload.clone());
            if reused {
                self.violation(format!(
                    "{node} committed a different message under seq {} to {}",
                    row.seq, row.peer
                ));
            }
        }
        for e in &batch.turn_log {
            if e.input_kind != "message" && e.input_kind != "undecodable" {
                continue;
            }
            let key = (e.input_source.clone(), node.to_string());
            let last = self.consumed.get(&key).copied().unwrap_or(0);
            if e.input_seq != last + 1 {
                self.violation(format!(
                    "{node} consumed {}'s message {} after {last} (exactly-once/FIFO violated)",
                    e.input_source, e.input_seq
                ));
            }
            let sender_committed = self
                .committed
                .get(&key)
                .is_some_and(|m| m.contains_key(&e.input_seq));
            if !sender_committed {
                self.violation(format!(
                    "{node} consumed {}'s message {} which {} never committed (output validity violated)",
                    e.input_source, e.input_seq, e.input_source
                ));
            }
            self.consumed.insert(key, e.input_seq.max(last));
        }
    }

    /// `node` released `frame`.
    pub fn on_send(&mut self, node: &str, frame: &Frame) {
        let to = frame.to.to_string();
        if frame.kind == FrameKind::Data {
            let committed = self
                .committed
                .get(&(node.to_string(), to.clone()))
                .and_then(|m| m.get(&frame.seq.0));
            match committed {
                Some(p) if *p == frame.payload => {}
                Some(_) => self.violation(format!(
                    "{node} released message {} to {to} with bytes other than committed",
                    frame.seq
                )),
                None => self.violation(format!(
                    "{node} released message {} to {to} before committing it (output validity violated)",
                    frame.seq
                )),
            }
        }
        if matches!(frame.kind, FrameKind::Data | FrameKind::Ack) {
            let consumed = self
                .consumed
                .get(&(to.clone(), node.to_string()))
                .copied()
                .unwrap_or(0);
            if frame.ack.0 > consumed {
                self.violation(format!(
                    "{node} acknowledged {to}'s message {} but committed consumption only up to {consumed}",
                    frame.ack
                ));
            }
        }
    }
}

struct Node<H: Handler> {
    id: ProcessId,
    path: PathBuf,
    engine: Option<Engine<H>>,
    store: Option<Store>,
    pending: Option<(BatchId, Batch)>,
    down_until: Option<Time>,
}

struct InFlight {
    to: usize,
    bytes: Vec<u8>,
}

/// A running simulation.
pub struct Sim<A: SimApp> {
    app: A,
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    nodes: Vec<Node<A::H>>,
    net: VecDeque<InFlight>,
    world: World,
    checker: Checker,
    report: SimReport,
    faults_on: bool,
    _dir: tempfile::TempDir,
}

impl<A: SimApp> std::fmt::Debug for Sim<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .field("now", &self.now)
            .field("in_flight", &self.net.len())
            .finish_non_exhaustive()
    }
}

/// A temporary directory on tmpfs when there is one (fsync there is cheap, and the
/// simulation models crashes itself), else in the default temp dir.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("ken-sim-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("ken-sim-")
        .tempdir()
        .expect("create a temporary directory")
}

impl<A: SimApp> Sim<A> {
    pub fn new(app: A, config: SimConfig) -> Sim<A> {
        let dir = fast_tempdir();
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let nodes = app
            .ids()
            .into_iter()
            .map(|id| Node {
                path: dir.path().join(format!("{id}.db")),
                id,
                engine: None,
                store: None,
                pending: None,
                down_until: None,
            })
            .collect();
        let mut sim = Sim {
            app,
            config,
            rng,
            now: Time::from_millis(1_700_000_000_000),
            nodes,
            net: VecDeque::new(),
            world: World::default(),
            checker: Checker::default(),
            report: SimReport::default(),
            faults_on: true,
            _dir: dir,
        };
        sim.report.seed = sim.config.seed;
        for i in 0..sim.nodes.len() {
            sim.boot(i);
        }
        sim
    }

    fn boot(&mut self, i: usize) {
        let ids = self.app.ids();
        let node = &mut self.nodes[i];
        let (store, recovered) = open_store(&node.path, node.id.as_str());
        let reader = ken::store::Reader::open(&node.path).expect("open reader");
        let config = EngineConfig {
            id: node.id.clone(),
            peers: ids.iter().filter(|p| **p != node.id).cloned().collect(),
            tuning: self.config.tuning.clone(),
            seed: self.rng.gen(),
        };
        let handler = self.app.handler(&node.id);
        let mut engine =
            Engine::recover(config, handler, recovered, Box::new(reader)).expect("recover");
        engine.start(self.now);
        node.engine = Some(engine);
        node.store = Some(store);
        node.down_until = None;
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        let land = self.rng.gen_bool(0.5);
        let node = &mut self.nodes[i];
        if node.engine.is_none() {
            return;
        }
        // A commit in progress when the process dies either reached the disk or not.
        if let Some((_, batch)) = node.pending.take() {
            if land {
                let store = node.store.as_mut().expect("live node has a store");
                store.commit(&batch).expect("commit");
                self.checker.on_commit(node.id.as_str(), &batch);
                apply_to_model(
                    self.world.nodes.entry(node.id.to_string()).or_default(),
                    &batch,
                );
                self.report.commits += 1;
            }
        }
        node.engine = None;
        node.store = None;
        let down_ms = self.rng.gen_range(0..300);
        node.down_until = Some(self.now.plus(std::time::Duration::from_millis(down_ms)));
        self.report.crashes += 1;
    }

    fn complete_commit(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some((id, batch)) = node.pending.take() else {
            return;
        };
        let store = node.store.as_mut().expect("live node has a store");
        store.commit(&batch).expect("commit");
        self.report.commits += 1;
        self.report.turns += batch.turns;
        self.checker.on_commit(node.id.as_str(), &batch);
        apply_to_model(
            self.world.nodes.entry(node.id.to_string()).or_default(),
            &batch,
        );
        node.engine
            .as_mut()
            .expect("live node has an engine")
            .commit_done(self.now, id);
        self.drain(i);
        self.check_app(false);
    }

    /// Executes node `i`'s commands.
    fn drain(&mut self, i: usize) {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        let cmds = engine.take_commands();
        engine.check_invariants();
        let name = self.nodes[i].id.to_string();
        for cmd in cmds {
            match cmd {
                Command::Commit { id, batch } => {
                    assert!(self.nodes[i].pending.is_none(), "one commit at a time");
                    self.nodes[i].pending = Some((id, batch));
                }
                Command::Send { to, frame, .. } => {
                    if self.config.check_sends {
                        self.checker.on_send(&name, &frame);
                    }
                    self.report.frames_sent += 1;
                    let Some(to) = self.nodes.iter().position(|n| n.id == to) else {
                        continue;
                    };
                    let mut bytes = frame.encode().expect("engine frames encode");
                    if self.faults_on {
                        let f = self.config.faults.clone();
                        if self.rng.gen_bool(f.drop) {
                            self.report.frames_dropped += 1;
                            continue;
                        }
                        if self.rng.gen_bool(f.corrupt) {
                            let bit = self.rng.gen_range(0..bytes.len() * 8);
                            bytes[bit / 8] ^= 1 << (bit % 8);
                        } else if self.rng.gen_bool(f.truncate) {
                            let len = self.rng.gen_range(0..bytes.len());
                            bytes.truncate(len);
                        }
                        if self.rng.gen_bool(f.duplicate) {
                            self.net.push_back(InFlight {
                                to,
                                bytes: bytes.clone(),
                            });
                        }
                    }
                    self.net.push_back(InFlight { to, bytes });
                }
                Command::Emit { line, .. } => {
                    self.world
                        .nodes
                        .entry(name.clone())
                        .or_default()
                        .emitted
                        .push(line);
                }
                Command::Finished { report } => {
                    self.world.nodes.entry(name.clone()).or_default().finished = Some(report);
                }
                Command::Fatal { error } => {
                    self.checker.violation(format!("{name} stopped: {error}"));
                }
            }
        }
    }

    fn deliver(&mut self, k: usize) {
        let Some(f) = self.net.remove(k) else { return };
        let Some(engine) = self.nodes[f.to].engine.as_mut() else {
            self.report.frames_dropped += 1;
            return;
        };
        match Frame::decode(&f.bytes) {
            Ok(frame) => {
                self.report.frames_delivered += 1;
                engine.handle_frame(self.now, frame);
                self.drain(f.to);
            }
            Err(_) => self.report.frames_junk += 1,
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.plus(std::time::Duration::from_millis(ms));
        for i in 0..self.nodes.len() {
            if self.nodes[i].engine.is_none() {
                if self.nodes[i].down_until.is_some_and(|t| t <= self.now) {
                    self.boot(i);
                }
                continue;
            }
            let engine = self.nodes[i].engine.as_mut().expect("checked");
            if engine.next_deadline().is_some_and(|d| d <= self.now) {
                engine.tick(self.now);
                self.drain(i);
            }
        }
    }

    fn check_app(&mut self, at_end: bool) {
        for v in self.app.check(&self.world, at_end) {
            self.checker.violation(v);
        }
    }

    fn step(&mut self) {
        let roll: f64 = self.rng.gen();
        let n = self.nodes.len();
        if self.faults_on && roll < self.config.faults.crash {
            let i = self.rng.gen_range(0..n);
            self.crash(i);
        } else if roll < 0.45 && !self.net.is_empty() {
            // Random pick from the network: reordering.
            let k = self.rng.gen_range(0..self.net.len());
            self.deliver(k);
        } else if roll < 0.75 {
            let i = self.rng.gen_range(0..n);
            self.complete_commit(i);
        } else {
            let ms = self.rng.gen_range(0..15);
            self.advance(ms);
        }
    }

    fn quiet(&self) -> bool {
        self.net.is_empty()
            && self.nodes.iter().all(|n| {
                n.pending.is_none()
                    && n.engine.as_ref().is_some_and(|e| {
                        !e.is_committing() && e.peer_status().iter().all(|p| p.outbox == 0)
                    })
            })
    }

    /// Runs the faulty phase, heals, and waits for quiescence. Returns the report.
    pub fn run(mut self) -> SimReport {
        for _ in 0..self.config.steps {
            self.step();
            self.report.steps += 1;
            if !self.checker.violations.is_empty() {
                break;
            }
        }
        // Heal: no more faults; restart everything that is down; run to quiescence.
        self.faults_on = false;
        let deadline = self
            .now
            .plus(std::time::Duration::from_millis(self.config.quiesce_ms));
        while self.checker.violations.is_empty() {
            for i in 0..self.nodes.len() {
                if self.nodes[i].engine.is_none() {
                    self.boot(i);
                }
            }
            while !self.net.is_empty() {
                self.deliver(0);
            }
            for i in 0..self.nodes.len() {
                self.complete_commit(i);
            }
            if self.quiet() && self.app.done(&self.world) {
                break;
            }
            if self.now >= deadline {
                self.checker.violation(format!(
                    "no quiescence within {} ms of virtual time after healing",
                    self.config.quiesce_ms
                ));
                break;
            }
            self.advance(5);
        }
        if self.checker.violations.is_empty() {
            self.check_app(true);
        }
        self.report.virtual_ms = self.now.as_millis() - 1_700_000_000_000;
        self.report.violations = std::mem::take(&mut self.checker.violations);
        self.report
    }
}

/// Opens a store, retrying briefly an `InUse` held by this very process: a child forked by
/// another test thread holds a copy of the just-closed lock descriptor until it execs (the
/// owner lock is an `flock`, shared by forked descriptors).
fn open_store(path: &Path, id: &str) -> (Store, ken::store::Recovered) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(path, id) {
            Ok(opened) => return opened,
            Err(ken::store::OpenError::InUse { holder_pid, .. })
                if holder_pid == Some(std::process::id())
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("open store {}: {e}", path.display()),
        }
    }
}

/// Applies a committed batch to a model of the store's data.
fn apply_to_model(model: &mut NodeModel, batch: &Batch) {
    if let Some(root) = &batch.root {
        model.root = Some(root.clone());
    }
    for w in &batch.table_writes {
        let t = model.tables.entry(w.table.clone()).or_default();
        match &w.value {
            Some(v) => {
                t.insert(w.key.clone(), v.clone());
            }
            None => {
                t.remove(&w.key);
            }
        }
    }
}
