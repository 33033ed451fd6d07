//! A deterministic, seeded simulation of a Ken cluster in one thread.
//!
//! Several engines with real stores (SQLite files in a temporary directory, on tmpfs when
//! available), hosted by [`ken::testing::Cluster`] with held commits: a network that loses,
//! duplicates, corrupts and truncates datagrams (the cluster's random faults) and reorders
//! them (each step delivers a random one), virtual time, and random crashes: a crash throws
//! the engine away and reloads it from its store, losing everything uncommitted (a commit in
//! progress either lands or not). Every step is chosen by the cluster's one seeded
//! generator, so a run replays exactly from its seed.
//!
//! After every step the [`Checker`] verifies, from what was actually committed and released:
//! - **output validity**: every data frame released carries a message its sender committed
//!   (same sequence number, same bytes); every acknowledgement covers only messages the
//!   receiver consumed in committed turns;
//! - **exactly-once, FIFO per pair**: the committed turns of a receiver consume each sender's
//!   messages as 1, 2, 3, ... with no gap and no repeat, across any number of crashes, and
//!   only messages the sender committed;
//! - the engines' own invariants ([`ken::Engine::check_invariants`], run by the cluster);
//! - the application's invariants ([`SimApp::check`]) over the committed state.
//!
//! At the end the network heals, crashed processes restart, and the run must quiesce
//! (liveness) within a bound of virtual time, then pass the application's final check.
//!
//! With [`Sim::set_standby`] (issue 18, `ken/STANDBY.md`) some processes have a standby
//! (the cluster's model: the replica commits each batch before it is reported durable, and
//! is reseeded at the process's start), and each is promoted once, at a random step of the
//! faulty phase: its store is deleted for good and it restarts from the replica at the next
//! epoch. The checks above run unchanged across the promotion: the replica holds every batch
//! whose outputs anyone saw, so to the checker too it is a crash-restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use ken::engine::EngineConfig;
use ken::store::Batch;
use ken::testing::{Cluster, Commits, Event, Faults};
use ken::transport::{Frame, FrameKind};
use ken::{Handler, ProcessId, Time, Tuning};
use rand::Rng;

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
pub trait SimApp: 'static {
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
    /// Batches committed, and the turns in them (a batch that landed as its process
    /// crashed included).
    pub commits: u64,
    pub turns: u64,
    pub frames_sent: u64,
    pub frames_delivered: u64,
    pub frames_dropped: u64,
    pub frames_junk: u64,
    pub virtual_ms: u64,
    /// Standbys promoted ([`Sim::set_standby`]).
    pub promotions: u64,
    /// Of which while the application's work was not done ([`SimApp::done`] false).
    pub promotions_mid_work: u64,
    /// Promotions of a down process whose replica lacked a batch its store held (one that
    /// released nothing).
    pub unreplicated_lost: u64,
    /// Replicas seeded with a copy of their process's store (at set-up and after a crash
    /// that left the replica behind).
    pub reseeds: u64,
    /// Batches a crash or a promotion left in a replica and not in its process's store (the
    /// local commit cut short): taken back at the restart, or kept by the promotion.
    pub shipped_only: u64,
}

/// Standbys under simulation ([`Sim::set_standby`]).
#[derive(Debug, Clone, Default)]
pub struct StandbyPlan {
    /// The processes (indexes) that get a standby; each is promoted once.
    pub nodes: Vec<usize>,
    /// The negative control: probability that a batch is reported durable (its outputs
    /// released) before its replica holds it ([`Cluster::set_standby_release_early`]).
    /// 0 in every real run.
    pub release_early: f64,
    /// The negative control of the take-back: a restarted process drops the batches its
    /// replica holds beyond its store instead of taking them back
    /// ([`Cluster::set_standby_skip_take_back`]). False in every real run.
    pub skip_take_back: bool,
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
    pub(crate) fn violation(&mut self, what: String) {
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

    /// `node`'s committed `batch` is gone (a promoted standby never had it; it released
    /// nothing): forget the messages it committed and the consumption it recorded.
    pub fn forget(&mut self, node: &str, batch: &Batch) {
        for row in &batch.outbox_appends {
            if let Some(msgs) = self
                .committed
                .get_mut(&(node.to_string(), row.peer.clone()))
            {
                msgs.remove(&row.seq);
            }
        }
        for e in &batch.turn_log {
            if e.input_kind != "message" && e.input_kind != "undecodable" {
                continue;
            }
            let key = (e.input_source.clone(), node.to_string());
            if let Some(last) = self.consumed.get_mut(&key) {
                *last = (*last).min(e.input_seq.saturating_sub(1));
            }
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

/// A running simulation: a [`Cluster`] with held commits, the hostile network as the
/// cluster's random faults, and the crash schedule drawn from the cluster's generator.
pub struct Sim<A: SimApp> {
    app: Rc<A>,
    config: SimConfig,
    cluster: Cluster<A::H>,
    /// When each crashed process comes back.
    down_until: Vec<Option<Time>>,
    world: World,
    checker: Checker,
    report: SimReport,
    faults_on: bool,
    /// Standbys still to promote: (faulty step at or after which, process).
    promote_at: Vec<(u64, usize)>,
    /// Per process: the batch its store holds and its replica lacks (landed by a crash,
    /// never shipped, so it released nothing), with the process's model before it. A
    /// promotion before the restart (which reseeds the replica) loses that batch, and the
    /// checker's model forgets it.
    unreplicated: Vec<Option<(NodeModel, Batch)>>,
}

impl<A: SimApp> std::fmt::Debug for Sim<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .field("cluster", &self.cluster)
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

pub(crate) const T0_MS: u64 = 1_700_000_000_000;

impl<A: SimApp> Sim<A> {
    pub fn new(app: A, config: SimConfig) -> Sim<A> {
        let app = Rc::new(app);
        let mut cluster = Cluster::new(fast_tempdir(), Time::from_millis(T0_MS), config.seed);
        cluster.set_commits(Commits::Held);
        cluster.record_events(true);
        cluster.tolerate_stops();
        cluster.set_faults(network_faults(&config.faults));
        let ids = app.ids();
        for id in &ids {
            let config = EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: config.tuning.clone(),
                seed: 0, // drawn at every start
            };
            let (app, id) = (Rc::clone(&app), id.clone());
            cluster.add(config, move || app.handler(&id));
        }
        let mut sim = Sim {
            app,
            down_until: vec![None; ids.len()],
            report: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
            config,
            cluster,
            world: World::default(),
            checker: Checker::default(),
            faults_on: true,
            promote_at: Vec::new(),
            unreplicated: vec![None; ids.len()],
        };
        for i in 0..ids.len() {
            sim.boot(i);
        }
        sim
    }

    /// Gives the processes of `plan` a standby each (seeded now with a copy of their
    /// store), to be promoted at a random step of the faulty phase.
    pub fn set_standby(&mut self, plan: &StandbyPlan) {
        self.cluster.set_standby_release_early(plan.release_early);
        self.cluster.set_standby_skip_take_back(plan.skip_take_back);
        let steps = self.config.steps.max(10);
        for &i in &plan.nodes {
            let path =
                (self.cluster.dir()).join(format!("{}.standby.ken", self.cluster.node(i).id()));
            self.cluster.set_standby(i, path);
            let at = self.cluster.rng().gen_range(steps / 10..steps * 9 / 10);
            self.promote_at.push((at, i));
        }
    }

    /// Promotes every standby whose step has come, whether its process is up (crashed by
    /// the promotion) or down (its replica possibly behind its store by a batch that
    /// released nothing: lost with the store, and forgotten by the checker's model).
    fn promote_due(&mut self, step: u64) {
        let due: Vec<usize> = self
            .promote_at
            .iter()
            .filter(|(at, _)| *at <= step)
            .map(|&(_, i)| i)
            .collect();
        for i in due {
            self.promote_at.retain(|&(_, j)| j != i);
            // A commit in progress at the crash reached both disks, neither, only the store
            // about to be destroyed (then it released nothing, and is lost), or only the
            // replica (which the promotion keeps).
            if self.cluster.node(i).is_up() {
                let landed = match self.cluster.rng().gen_range(0..4) {
                    0 => false,
                    1 => self.cluster.land_pending(i),
                    2 => {
                        let landed = self.cluster.land_pending_shipped_only(i);
                        self.report.shipped_only += u64::from(landed);
                        landed
                    }
                    _ => self.land_unshipped(i),
                };
                if landed {
                    self.absorb();
                }
            }
            if let Some((before, batch)) = self.unreplicated[i].take() {
                let name = self.cluster.node(i).id().to_string();
                self.checker.forget(&name, &batch);
                self.world.nodes.insert(name, before);
                self.report.unreplicated_lost += 1;
            }
            self.report.reseeds += self.cluster.node(i).standby_reseeds();
            self.cluster.config_mut(i).seed = self.cluster.rng().gen();
            self.cluster.promote(i);
            self.down_until[i] = None;
            self.report.promotions += 1;
            if !self.app.done(&self.world) {
                self.report.promotions_mid_work += 1;
            }
            self.absorb();
        }
    }

    /// Lands process `i`'s batch in progress in its store only, not in its replica
    /// ([`Cluster::land_pending_unshipped`]), remembering it and the model before it.
    fn land_unshipped(&mut self, i: usize) -> bool {
        let name = self.cluster.node(i).id().to_string();
        let before = self.world.nodes.get(&name).cloned().unwrap_or_default();
        let batch = self.cluster.node(i).pending_batch().cloned();
        let landed = self.cluster.land_pending_unshipped(i);
        if let (true, Some(batch)) = (landed, batch) {
            self.unreplicated[i] = Some((before, batch));
        }
        landed
    }

    fn boot(&mut self, i: usize) {
        self.cluster.config_mut(i).seed = self.cluster.rng().gen();
        self.cluster.start(i);
        self.unreplicated[i] = None; // the start reseeded the replica
        self.down_until[i] = None;
        self.absorb();
    }

    fn crash(&mut self, i: usize) {
        let land = self.cluster.rng().gen_bool(0.5);
        if !self.cluster.node(i).is_up() {
            return;
        }
        // A commit in progress when the process dies either reached the disk or not; with a
        // standby, the replica may lack it (the shipment was cut short: caught up or
        // reseeded at restart), or hold it while the store lacks it (the local commit was cut
        // short: taken back from the standby at restart).
        if land {
            let standby = self.cluster.node(i).standby_path().is_some();
            let landed = match self.cluster.rng().gen_range(0..3) {
                0 if standby => self.land_unshipped(i),
                1 if standby => {
                    let landed = self.cluster.land_pending_shipped_only(i);
                    self.report.shipped_only += u64::from(landed);
                    landed
                }
                _ => self.cluster.land_pending(i),
            };
            if landed {
                self.absorb();
            }
        }
        self.cluster.crash(i);
        let down_ms = self.cluster.rng().gen_range(0..300);
        self.down_until[i] = Some(self.cluster.now().plus(Duration::from_millis(down_ms)));
        self.report.crashes += 1;
    }

    fn complete_commit(&mut self, i: usize) {
        if self.cluster.complete_commit(i) {
            self.absorb();
            self.check_app(false);
        }
    }

    /// Checks and models what the cluster's engines did since the last call.
    fn absorb(&mut self) {
        for event in self.cluster.take_events() {
            let name = |node: usize| self.cluster.node(node).id().to_string();
            match event {
                Event::Committed { node, batch, .. } => {
                    let name = name(node);
                    self.report.commits += 1;
                    self.report.turns += batch.turns;
                    self.checker.on_commit(&name, &batch);
                    apply_to_model(self.world.nodes.entry(name).or_default(), &batch);
                }
                Event::Sent { node, frame } => {
                    if self.config.check_sends {
                        self.checker.on_send(&name(node), &frame);
                    }
                }
                Event::Emitted { node, line } => {
                    let model = self.world.nodes.entry(name(node)).or_default();
                    model.emitted.push(line);
                }
                Event::Finished { node, report } => {
                    self.world.nodes.entry(name(node)).or_default().finished = Some(report);
                }
                Event::Stopped { node, error } => {
                    let what = format!("{} stopped: {error}", name(node));
                    self.checker.violation(what);
                }
            }
        }
    }

    fn deliver(&mut self, k: usize) {
        self.cluster.deliver(k);
        self.absorb();
    }

    fn advance(&mut self, ms: u64) {
        self.cluster.advance(Duration::from_millis(ms));
        let now = self.cluster.now();
        for i in 0..self.cluster.len() {
            let Some(engine) = self.cluster.node(i).engine() else {
                if self.down_until[i].is_some_and(|t| t <= now) {
                    self.boot(i);
                }
                continue;
            };
            if engine.next_deadline().is_some_and(|d| d <= now) {
                self.cluster.tick(i);
                self.absorb();
            }
        }
    }

    fn check_app(&mut self, at_end: bool) {
        for v in self.app.check(&self.world, at_end) {
            self.checker.violation(v);
        }
    }

    fn step(&mut self) {
        let roll: f64 = self.cluster.rng().gen();
        let n = self.cluster.len();
        if self.faults_on && roll < self.config.faults.crash {
            let i = self.cluster.rng().gen_range(0..n);
            self.crash(i);
        } else if roll < 0.45 && !self.cluster.in_flight().is_empty() {
            // Random pick from the network: reordering.
            let len = self.cluster.in_flight().len();
            let k = self.cluster.rng().gen_range(0..len);
            self.deliver(k);
        } else if roll < 0.75 {
            let i = self.cluster.rng().gen_range(0..n);
            self.complete_commit(i);
        } else {
            let ms = self.cluster.rng().gen_range(0..15);
            self.advance(ms);
        }
    }

    fn quiet(&self) -> bool {
        let c = &self.cluster;
        c.in_flight().is_empty()
            && (0..c.len()).all(|i| {
                c.node(i).engine().is_some_and(|e| {
                    !e.is_committing() && e.peer_status().iter().all(|p| p.outbox == 0)
                })
            })
    }

    /// Runs the faulty phase, heals, and waits for quiescence. Returns the report.
    pub fn run(mut self) -> SimReport {
        for _ in 0..self.config.steps {
            self.step();
            self.promote_due(self.report.steps);
            self.report.steps += 1;
            if !self.checker.violations.is_empty() {
                break;
            }
        }
        // Heal: no more faults; restart everything that is down; run to quiescence.
        self.faults_on = false;
        self.cluster.set_faults(Faults::default());
        let deadline = self
            .cluster
            .now()
            .plus(Duration::from_millis(self.config.quiesce_ms));
        while self.checker.violations.is_empty() {
            for i in 0..self.cluster.len() {
                if !self.cluster.node(i).is_up() {
                    self.boot(i);
                }
            }
            self.promote_due(u64::MAX);
            while !self.cluster.in_flight().is_empty() {
                self.deliver(0);
            }
            for i in 0..self.cluster.len() {
                self.complete_commit(i);
            }
            if self.quiet() && self.app.done(&self.world) {
                break;
            }
            if self.cluster.now() >= deadline {
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
        let net = self.cluster.net_stats();
        self.report.frames_sent = net.sent;
        self.report.frames_delivered = net.delivered;
        self.report.frames_dropped = net.lost + net.undeliverable;
        self.report.frames_junk = net.junk;
        self.report.virtual_ms = self.cluster.now().as_millis() - T0_MS;
        for i in 0..self.cluster.len() {
            self.report.reseeds += self.cluster.node(i).standby_reseeds();
        }
        self.report.violations = std::mem::take(&mut self.checker.violations);
        self.report
    }
}

/// The simulation's hostile network as the cluster's random faults.
pub(crate) fn network_faults(f: &SimFaults) -> Faults {
    Faults {
        drop: f.drop,
        corrupt: f.corrupt,
        truncate: f.truncate,
        duplicate: f.duplicate,
        delay_max: Duration::ZERO,
    }
}

/// Applies a committed batch to a model of the store's data.
pub(crate) fn apply_to_model(model: &mut NodeModel, batch: &Batch) {
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
