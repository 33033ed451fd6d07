//! A rolling upgrade in the deterministic simulation: bank schema 1 to schema 2, one member
//! at a time, in the middle of the faulty phase, so that old and new versions run side by
//! side for a while under crashes and a hostile network.
//!
//! The two versions are different handler types, so the run holds two
//! [`ken::testing::Cluster`]s over the same directory and the same members, in the same
//! order: a member is *owned* by the old cluster until its upgrade, then by the new one
//! (the upgrade is a crash in the old cluster, then a start of the schema-2 handler on the
//! same store in the new one, which migrates it). Every datagram a cluster's engines release
//! to a member the other cluster owns is moved to the other's network before anything is
//! delivered, and both clocks move together, so to the engines it is one network and one
//! time. One seeded generator (the old cluster's) draws every step; the new cluster's
//! faults draw from its own generator, seeded from the run's seed. A run replays exactly
//! from its seed.
//!
//! The same [`Checker`] as [`crate::sim`] sees every committed batch and every released
//! frame of both clusters (output validity, exactly-once and FIFO per pair across the
//! upgrade), and the bank's invariants (conservation, every transfer applied once) are
//! checked over the committed state of both versions after every commit and at the end.
//! A migration commits outside the engine (before recovery), so the model of an upgraded
//! member is read back from its store at its first schema-2 start.

use std::path::Path;
use std::time::Duration;

use ken::engine::EngineConfig;
use ken::testing::{Cluster, Commits, Event, Faults};
use ken::{Handler, Time};
use ken_apps::bank::{Bank, BankV2};
use rand::Rng;

use crate::sim::{
    apply_to_model, fast_tempdir, network_faults, Checker, SimApp, SimConfig, SimReport, World,
    T0_MS,
};
use crate::sim_apps::BankSim;

/// Which version runs a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

/// The result of a mixed-version run.
#[derive(Debug, Clone, Default)]
pub struct MixedReport {
    pub report: SimReport,
    /// Members upgraded (each once).
    pub upgrades: u64,
    /// Data frames not delivered because their pair was held (a newer schema version):
    /// evidence that the versions did run side by side with traffic between them.
    pub messages_held: u64,
    /// Steps during which at least one member ran each version.
    pub mixed_steps: u64,
}

/// A rolling-upgrade simulation of [`BankSim`].
pub struct MixedSim {
    app: BankSim,
    config: SimConfig,
    old: Cluster<Bank>,
    new: Cluster<BankV2>,
    side: Vec<Side>,
    /// The step of the faulty phase at which each member is upgraded.
    upgrade_at: Vec<u64>,
    down_until: Vec<Option<Time>>,
    world: World,
    checker: Checker,
    report: MixedReport,
    faults_on: bool,
    // Last: the clusters' stores live in it.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for MixedSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedSim")
            .field("seed", &self.config.seed)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

fn new_cluster<H: Handler>(dir: &Path, seed: u64, config: &SimConfig) -> Cluster<H> {
    let mut c = Cluster::new(
        std::path::PathBuf::from(dir),
        Time::from_millis(T0_MS),
        seed,
    );
    c.set_commits(Commits::Held);
    c.record_events(true);
    c.tolerate_stops();
    c.set_faults(network_faults(&config.faults));
    c
}

impl MixedSim {
    /// Every member starts at schema 1; member `i` of `n` is upgraded at step
    /// `(i + 1) * steps / (n + 1)` of the faulty phase.
    pub fn new(app: BankSim, config: SimConfig) -> MixedSim {
        let dir = fast_tempdir();
        let mut old = new_cluster::<Bank>(dir.path(), config.seed, &config);
        let mut new = new_cluster::<BankV2>(dir.path(), config.seed ^ 0x6b65_6e32, &config);
        let ids = app.ids();
        for id in &ids {
            let engine_config = EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: config.tuning.clone(),
                seed: 0, // drawn at every start
            };
            let (a, i) = (app.clone(), id.clone());
            old.add(engine_config.clone(), move || a.handler(&i));
            let (a, i) = (app.clone(), id.clone());
            new.add(engine_config, move || a.handler_v2(&i));
        }
        let n = ids.len() as u64;
        let mut sim = MixedSim {
            upgrade_at: (0..n).map(|i| (i + 1) * config.steps / (n + 1)).collect(),
            side: vec![Side::Old; ids.len()],
            down_until: vec![None; ids.len()],
            report: MixedReport {
                report: SimReport {
                    seed: config.seed,
                    ..SimReport::default()
                },
                ..MixedReport::default()
            },
            app,
            config,
            old,
            new,
            world: World::default(),
            checker: Checker::default(),
            faults_on: true,
            _dir: dir,
        };
        for i in 0..ids.len() {
            sim.boot(i);
        }
        sim
    }

    fn len(&self) -> usize {
        self.side.len()
    }

    fn now(&self) -> Time {
        self.old.now()
    }

    fn is_up(&self, i: usize) -> bool {
        match self.side[i] {
            Side::Old => self.old.node(i).is_up(),
            Side::New => self.new.node(i).is_up(),
        }
    }

    /// (next deadline, committing, outbox total, messages held) of member `i` if it is up.
    fn engine_view(&self, i: usize) -> Option<(Option<Time>, bool, u64, u64)> {
        fn view<H: Handler>(c: &Cluster<H>, i: usize) -> Option<(Option<Time>, bool, u64, u64)> {
            c.node(i).engine().map(|e| {
                (
                    e.next_deadline(),
                    e.is_committing(),
                    e.peer_status().iter().map(|p| p.outbox as u64).sum(),
                    e.stats().messages_held,
                )
            })
        }
        match self.side[i] {
            Side::Old => view(&self.old, i),
            Side::New => view(&self.new, i),
        }
    }

    fn boot(&mut self, i: usize) {
        let seed = self.old.rng().gen();
        let first_new_life = match self.side[i] {
            Side::Old => {
                self.old.config_mut(i).seed = seed;
                self.old.start(i);
                false
            }
            Side::New => {
                self.new.config_mut(i).seed = seed;
                let first = self.new.node(i).life() == 0;
                self.new.start(i);
                first
            }
        };
        self.down_until[i] = None;
        if first_new_life {
            // The migration committed before the engine recovered (no batch of it was
            // seen): read the member's model back from its store.
            let name = self.new.node(i).id().to_string();
            let path = self.new.node(i).path().to_path_buf();
            match model_from_store(&path) {
                Ok((root, tables)) => {
                    let model = self.world.nodes.entry(name).or_default();
                    model.root = root;
                    model.tables = tables;
                }
                Err(e) => self
                    .checker
                    .violation(format!("{name}: the migrated store does not read: {e}")),
            }
        }
        self.absorb();
    }

    fn crash(&mut self, i: usize) {
        if !self.is_up(i) {
            return;
        }
        let land = self.old.rng().gen_bool(0.5);
        if let Some((_, _, _, held)) = self.engine_view(i) {
            self.report.messages_held += held;
        }
        // A commit in progress when the process dies either reached the disk or not.
        let landed = match self.side[i] {
            Side::Old => land && self.old.land_pending(i),
            Side::New => land && self.new.land_pending(i),
        };
        if landed {
            self.absorb();
        }
        match self.side[i] {
            Side::Old => self.old.crash(i),
            Side::New => self.new.crash(i),
        }
        let down_ms = self.old.rng().gen_range(0..300);
        self.down_until[i] = Some(self.now().plus(Duration::from_millis(down_ms)));
        self.report.report.crashes += 1;
    }

    /// The rolling upgrade's step for member `i`: SIGKILL its schema-1 process, start the
    /// schema-2 binary on the same store after a random pause.
    fn upgrade(&mut self, i: usize) {
        if self.is_up(i) {
            self.crash(i);
            self.report.report.crashes -= 1; // an upgrade, counted as such
        }
        self.side[i] = Side::New;
        let down_ms = self.old.rng().gen_range(0..300);
        self.down_until[i] = Some(self.now().plus(Duration::from_millis(down_ms)));
        self.report.upgrades += 1;
    }

    fn complete_commit(&mut self, i: usize) {
        let done = match self.side[i] {
            Side::Old => self.old.complete_commit(i),
            Side::New => self.new.complete_commit(i),
        };
        if done {
            self.absorb();
            self.check_app(false);
        }
    }

    /// Checks and models what either cluster's engines did since the last call, then moves
    /// every datagram to the cluster that owns its receiver.
    fn absorb(&mut self) {
        let mut events = self.old.take_events();
        events.extend(self.new.take_events());
        for event in events {
            let name = |node: usize| self.old.node(node).id().to_string();
            match event {
                Event::Committed { node, batch, .. } => {
                    let name = name(node);
                    self.report.report.commits += 1;
                    self.report.report.turns += batch.turns;
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
        self.route();
    }

    /// Moves every datagram in flight in one cluster to a member the other owns.
    fn route(&mut self) {
        let side = self.side.clone();
        let to_new: Vec<_> = {
            let q = self.old.in_flight_mut();
            let (go, stay): (Vec<_>, Vec<_>) = q.drain(..).partition(|d| side[d.to] == Side::New);
            q.extend(stay);
            go
        };
        let to_old: Vec<_> = {
            let q = self.new.in_flight_mut();
            let (go, stay): (Vec<_>, Vec<_>) = q.drain(..).partition(|d| side[d.to] == Side::Old);
            q.extend(stay);
            go
        };
        self.new.in_flight_mut().extend(to_new);
        self.old.in_flight_mut().extend(to_old);
    }

    fn in_flight(&self) -> usize {
        self.old.in_flight().len() + self.new.in_flight().len()
    }

    /// Delivers datagram `k` of the two networks taken as one (old's first).
    fn deliver(&mut self, k: usize) {
        let in_old = self.old.in_flight().len();
        if k < in_old {
            self.old.deliver(k);
        } else {
            self.new.deliver(k - in_old);
        }
        self.absorb();
    }

    fn advance(&mut self, ms: u64) {
        self.old.advance(Duration::from_millis(ms));
        self.new.advance(Duration::from_millis(ms));
        let now = self.now();
        for i in 0..self.len() {
            match self.engine_view(i) {
                None => {
                    if self.down_until[i].is_some_and(|t| t <= now) {
                        self.boot(i);
                    }
                }
                Some((deadline, ..)) => {
                    if deadline.is_some_and(|d| d <= now) {
                        match self.side[i] {
                            Side::Old => self.old.tick(i),
                            Side::New => self.new.tick(i),
                        }
                        self.absorb();
                    }
                }
            }
        }
    }

    fn check_app(&mut self, at_end: bool) {
        for v in self.app.check(&self.world, at_end) {
            self.checker.violation(v);
        }
    }

    fn step(&mut self, step: u64) {
        for i in 0..self.len() {
            if self.upgrade_at[i] == step && self.side[i] == Side::Old {
                self.upgrade(i);
            }
        }
        if self.side.contains(&Side::Old) && self.side.contains(&Side::New) {
            self.report.mixed_steps += 1;
        }
        let roll: f64 = self.old.rng().gen();
        let n = self.len();
        if self.faults_on && roll < self.config.faults.crash {
            let i = self.old.rng().gen_range(0..n);
            self.crash(i);
        } else if roll < 0.45 && self.in_flight() > 0 {
            // Random pick from the network: reordering.
            let len = self.in_flight();
            let k = self.old.rng().gen_range(0..len);
            self.deliver(k);
        } else if roll < 0.75 {
            let i = self.old.rng().gen_range(0..n);
            self.complete_commit(i);
        } else {
            let ms = self.old.rng().gen_range(0..15);
            self.advance(ms);
        }
    }

    fn quiet(&self) -> bool {
        self.in_flight() == 0
            && (0..self.len()).all(|i| {
                self.engine_view(i)
                    .is_some_and(|(_, committing, outbox, _)| !committing && outbox == 0)
            })
    }

    /// Runs the faulty phase (upgrading every member on the way), heals, and waits for
    /// quiescence. Returns the report.
    pub fn run(mut self) -> MixedReport {
        for step in 0..self.config.steps {
            self.step(step);
            self.report.report.steps += 1;
            if !self.checker.violations.is_empty() {
                break;
            }
        }
        // Members whose upgrade step was not reached (a violation stopped the run early)
        // stay where they are; the others all run schema 2 from here on.
        self.faults_on = false;
        self.old.set_faults(Faults::default());
        self.new.set_faults(Faults::default());
        let deadline = self
            .now()
            .plus(Duration::from_millis(self.config.quiesce_ms));
        while self.checker.violations.is_empty() {
            for i in 0..self.len() {
                if !self.is_up(i) {
                    self.boot(i);
                }
            }
            while self.in_flight() > 0 {
                self.deliver(0);
            }
            for i in 0..self.len() {
                self.complete_commit(i);
            }
            if self.quiet() && self.app.done(&self.world) {
                break;
            }
            if self.now() >= deadline {
                let nodes: Vec<String> = (0..self.len())
                    .map(|i| {
                        let engine = match self.side[i] {
                            Side::Old => self
                                .old
                                .node(i)
                                .engine()
                                .map(|e| format!("{:?}", e.state())),
                            Side::New => self
                                .new
                                .node(i)
                                .engine()
                                .map(|e| format!("{:?} {:?}", e.state(), e.peer_status())),
                        };
                        format!("{:?} {:?} {engine:?}", self.side[i], self.engine_view(i))
                    })
                    .collect();
                let views = self.app.world_views(&self.world).map(|vs| {
                    vs.iter()
                        .map(|v| {
                            format!(
                                "{}: started {} sent {} applied {}",
                                v.id,
                                v.state.transfers_started,
                                v.sent.len(),
                                v.applied.len()
                            )
                        })
                        .collect::<Vec<_>>()
                });
                self.checker.violation(format!(
                    "no quiescence within {} ms of virtual time after healing: nodes \
                     (deadline, committing, outbox, held) {nodes:?}; {views:?}",
                    self.config.quiesce_ms
                ));
                break;
            }
            self.advance(5);
        }
        if self.checker.violations.is_empty() {
            self.check_app(true);
            if self.side.contains(&Side::Old) {
                self.checker
                    .violation("a member was never upgraded to schema 2".to_string());
            }
        }
        for i in 0..self.len() {
            if let Some((_, _, _, held)) = self.engine_view(i) {
                self.report.messages_held += held;
            }
        }
        let r = &mut self.report.report;
        for net in [self.old.net_stats(), self.new.net_stats()] {
            r.frames_sent += net.sent;
            r.frames_delivered += net.delivered;
            r.frames_dropped += net.lost + net.undeliverable;
            r.frames_junk += net.junk;
        }
        r.virtual_ms = self.old.now().as_millis() - T0_MS;
        r.violations = std::mem::take(&mut self.checker.violations);
        self.report
    }
}

/// The root and every table of the store at `path`, as committed.
type Tables = std::collections::BTreeMap<String, std::collections::BTreeMap<Vec<u8>, Vec<u8>>>;

fn model_from_store(path: &Path) -> Result<(Option<Vec<u8>>, Tables), String> {
    let reader = ken::store::Reader::open(path).map_err(|e| e.to_string())?;
    let root = reader.root().map_err(|e| e.to_string())?;
    let mut tables = Tables::new();
    for t in reader.tables().map_err(|e| e.to_string())? {
        let rows = tables.entry(t.name.clone()).or_default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = reader
                .table_scan(&t.name, b"", after.as_deref(), 1000)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            rows.extend(page);
        }
    }
    Ok((root, tables))
}
