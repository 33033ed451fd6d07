//! The pingpong kill-and-restart harness: two real pingpong processes (`ken app pingpong`) on loopback,
//! SIGKILLed at seeded random moments and restarted with the same command, checked for
//! exactly-once delivery.
//!
//! What is checked, and where a failure shows up as a [`Violation`]:
//! - every stdout line of every life is a report `{"id","received","gaps","repeats"}` with
//!   the process's id, `gaps == 0`, `repeats == 0` and `received` equal to the number of
//!   balls it must receive (`count / 2` for the hitter, `(count + 1) / 2` for the server);
//! - a life ends only by our SIGKILL or by exit code 0 after printing its report;
//! - while the processes run, every 25 ms, no store holds an acknowledgement beyond what
//!   the peer's store consumed ([`crate::stores`]), and at the end both stores are
//!   quiescent;
//! - both finish before the deadline.
//!
//! The killer. At seeded random intervals (`kill_interval_ms`) it draws a victim and a
//! restart delay (`restart_delay_ms`), SIGKILLs the victim and restarts it with the same
//! command after the delay, until `kills_target` kills or the end of the volley (both
//! processes reported once). Kills stay spread: no side gets 3 kills ahead of the other. A
//! victim that is down when drawn is killed once it has run again for the shortest interval
//! (so some kills land in a recovery). On a fast disk the volley could end before the
//! target; so kill k is brought forward once the volley (as read from the stores) has
//! consumed `(k + 2)` slots of `count / (kills_target + CATCH_UP_SPARE_SLOTS)` balls
//! ([`Outcome::catch_up_kills`]). The draws replay from the seed; which process a draw hits
//! when, relative to the volley, depends on the scheduler.
//!
//! Why a lost message is detected in the stores, not in the reports: pingpong's handler is
//! deterministic, so a process that rolls back and re-runs its inputs re-sends the same
//! values under the same sequence numbers, and its peer drops them as duplicates. A runtime
//! that breaks output commit does not show a gap or a repeat: it loses a message (its peer
//! saw the acknowledgement of a turn that was rolled back and dropped the message from its
//! outbox), and the volley stalls forever. The stores show the loss at once, specifically:
//! the sender's `acked` is beyond the receiver's `delivered`.
//!
//! The operator rule. A finished process lingers (about 1.5 s) re-acknowledging
//! retransmissions, then exits 0. If its peer is killed and restarted after that, the peer
//! may retransmit its last message forever with no one to acknowledge it: the runtime never
//! gives up on its own. An operator would restart the finished process, which prints its
//! report again at once and lingers again, re-acknowledging. The harness does exactly that:
//! whenever one process has exited 0 while its peer runs without having reported in its
//! current life, the finished one is restarted (counted in [`Outcome::operator_restarts`]).
//!
//! Ports: two free loopback ports are picked by binding port 0. If a life fails to bind its
//! port (someone else took it), both processes get fresh ports: the running one is
//! SIGKILLed and both restart with the new address book (addresses are not durable state).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ken_apps::pingpong::{expected_received, Report};
use ken_tools::harness::{self, End, Life, Process, Spec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::stores::{self, StoreRef, StoreViolation};

/// How one run is set up.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The last value of the volley (`--count`).
    pub count: u64,
    /// Kill until this many kills happened (or the volley is over).
    pub kills_target: u32,
    /// Time between kills, milliseconds, drawn uniformly.
    pub kill_interval_ms: Range<u64>,
    /// Time a killed process stays down before its restart, milliseconds, drawn uniformly.
    pub restart_delay_ms: Range<u64>,
    /// The whole run must end within this.
    pub deadline: Duration,
    /// Run the runtime with `KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1` (negative controls only).
    pub unsafe_release_before_commit: bool,
    /// Stop at the first violation instead of waiting for the end or the deadline.
    pub stop_at_first_violation: bool,
    /// Cross-store checks this often while the processes run.
    pub store_check_interval: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            count: 2000,
            kills_target: 20,
            kill_interval_ms: 20..150,
            restart_delay_ms: 0..100,
            deadline: Duration::from_secs(120),
            unsafe_release_before_commit: false,
            stop_at_first_violation: true,
            store_check_interval: Duration::from_millis(25),
        }
    }
}

/// A broken promise of the runtime (or of the harness's environment), found by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A report with gaps, repeats, a wrong received count or a wrong id.
    BadReport {
        id: String,
        life: u32,
        line: String,
        problem: String,
    },
    /// A stdout line that is not a report.
    BadOutput { id: String, life: u32, line: String },
    /// A life ended neither by our SIGKILL nor by exit 0.
    UnexpectedExit {
        id: String,
        life: u32,
        status: String,
        stderr_tail: String,
    },
    /// A life exited 0 without printing its report.
    ExitWithoutReport { id: String, life: u32 },
    /// A cross-store invariant broke.
    Store(StoreViolation),
    /// The stores could not be read after the run.
    StoreUnreadable(String),
    /// The run did not finish in time.
    Deadline { after: Duration },
}

impl Violation {
    /// True for violations that name exactly what went wrong with the messages: a gap, a
    /// repeat, a wrong received count, or a message acknowledged but never consumed.
    /// (A deadline or an unexpected exit says something is wrong, not what.)
    pub fn is_specific(&self) -> bool {
        matches!(
            self,
            Violation::BadReport { .. }
                | Violation::Store(StoreViolation::AckedNotDelivered { .. })
                | Violation::Store(StoreViolation::DeliveredMismatch { .. })
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BadReport {
                id,
                life,
                line,
                problem,
            } => write!(f, "{id} life {life}: bad report {line}: {problem}"),
            Violation::BadOutput { id, life, line } => {
                write!(f, "{id} life {life}: unexpected stdout line {line:?}")
            }
            Violation::UnexpectedExit {
                id,
                life,
                status,
                stderr_tail,
            } => write!(
                f,
                "{id} life {life} ended with {status}, not by our SIGKILL; stderr tail:\n{stderr_tail}"
            ),
            Violation::ExitWithoutReport { id, life } => {
                write!(f, "{id} life {life} exited 0 without printing its report")
            }
            Violation::Store(v) => write!(f, "{v}"),
            Violation::StoreUnreadable(e) => write!(f, "stores unreadable after the run: {e}"),
            Violation::Deadline { after } => write!(f, "not finished after {after:?}"),
        }
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub elapsed: Duration,
    /// SIGKILLs per process id.
    pub kills: BTreeMap<String, u32>,
    /// Restarts of a finished process for its peer's sake (see the module docs).
    pub operator_restarts: u32,
    /// Kills brought forward to the shortest interval because the volley was outrunning the
    /// killer.
    pub catch_up_kills: u32,
    /// Times both processes were moved to fresh ports after a bind failure.
    pub port_changes: u32,
    /// Cross-store checks done while running, and how many could not read a store (for
    /// example one being created).
    pub store_checks: u32,
    pub store_check_errors: u32,
    /// Both processes exited 0 after reporting, with every check passing.
    pub finished: bool,
    pub violations: Vec<Violation>,
    /// Every life of both processes, with stderr tails, for failure messages.
    pub diagnostics: String,
}

impl Outcome {
    pub fn total_kills(&self) -> u32 {
        self.kills.values().sum()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "seed {} elapsed {:.2} s kills {:?} (total {}, {} at catch-up pace) operator \
             restarts {} port changes {} store checks {} ({} unreadable) finished {} violations {}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.kills,
            self.total_kills(),
            self.catch_up_kills,
            self.operator_restarts,
            self.port_changes,
            self.store_checks,
            self.store_check_errors,
            self.finished,
            self.violations.len()
        )
    }
}

/// The killer's progress slots: kill k is brought forward once the volley has consumed
/// `(k + 2) * count / (kills_target + CATCH_UP_SPARE_SLOTS)` balls (see
/// [`Outcome::catch_up_kills`]), so the target is reached before the volley ends.
pub const CATCH_UP_SPARE_SLOTS: u32 = 5;

/// One player: its id, whether it serves, its store, its process and what we saw of it.
#[derive(Debug)]
struct Player {
    id: String,
    serve: bool,
    store: PathBuf,
    proc: Process,
    /// Stdout lines already checked, per life number.
    lines_checked: BTreeMap<u32, usize>,
    /// A report was printed in the current life.
    reported_this_life: bool,
    reported_ever: bool,
    /// Down after our kill, to be restarted at this instant.
    restart_at: Option<Instant>,
    /// The last life exited 0 after reporting.
    finished: bool,
}

fn player_args(id: &str, serve: bool, store: &Path, ports: [u16; 2], count: u64) -> Vec<OsString> {
    let [listen, peer_port] = ports;
    let peer_id = if serve { "a" } else { "b" };
    let mut a: Vec<OsString> = vec![
        "app".into(),
        "pingpong".into(),
        "--id".into(),
        id.into(),
        "--listen".into(),
        harness::loopback(listen).to_string().into(),
        "--store".into(),
        store.into(),
        "--peer".into(),
        format!("{peer_id}={}", harness::loopback(peer_port)).into(),
        "--count".into(),
        count.to_string().into(),
    ];
    if serve {
        a.push("--serve".into());
    }
    a
}

/// The mutable state of one run.
struct Run<'a> {
    scenario: &'a Scenario,
    players: Vec<Player>,
    violations: Vec<Violation>,
    operator_restarts: u32,
    port_changes: u32,
    /// A life failed to bind its port: move both to fresh ports.
    rebind: bool,
    /// What the harness did, and when (since `started`).
    events: Vec<(Duration, String)>,
    started: Instant,
}

/// Runs `scenario` with `seed` in a fresh temporary directory, running the players with the
/// `ken` binary at `binary` (`ken app pingpong ..`). A runtime misbehaviour never panics here: everything found is in the
/// returned [`Outcome`]. `Err` only for failures of the harness's own I/O (spawn, wait).
pub fn run(binary: &Path, scenario: &Scenario, seed: u64) -> std::io::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("ken-pingpong-kill-")
        .tempdir()?;
    // Every life of a run runs the same build: a private copy, immune to a rebuild of the
    // target directory while the run lasts (cargo replaces the file, briefly removing it).
    let binary = {
        let copy = dir.path().join("ken");
        std::fs::copy(binary, &copy).map_err(|e| {
            let what = format!("copy {} to the run directory: {e}", binary.display());
            std::io::Error::new(e.kind(), what)
        })?;
        copy
    };
    let binary = binary.as_path();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let deadline = started + scenario.deadline;
    let mut envs: Vec<(OsString, OsString)> = Vec::new();
    if scenario.unsafe_release_before_commit {
        envs.push(("KEN_UNSAFE_RELEASE_BEFORE_COMMIT".into(), "1".into()));
    }

    // Index 0 serves (b), index 1 hits (a). The server starts first so that the first ball
    // usually finds it listening (if not, the hitter retransmits).
    let ports = harness::free_ports(2)?;
    let mut players = Vec::new();
    for (i, (id, serve)) in [("b", true), ("a", false)].into_iter().enumerate() {
        let store = dir.path().join(format!("{id}.db"));
        let spec = Spec {
            name: id.to_string(),
            program: binary.to_path_buf(),
            args: player_args(id, serve, &store, [ports[i], ports[1 - i]], scenario.count),
            envs: envs.clone(),
            env_remove: Vec::new(),
            log_dir: dir.path().to_path_buf(),
        };
        players.push(Player {
            id: id.to_string(),
            serve,
            store,
            proc: Process::start(spec)?,
            lines_checked: BTreeMap::new(),
            reported_this_life: false,
            reported_ever: false,
            restart_at: None,
            finished: false,
        });
    }
    let stores: Vec<StoreRef> = players
        .iter()
        .map(|p| StoreRef {
            id: p.id.clone(),
            path: p.store.clone(),
        })
        .collect();
    let mut run = Run {
        scenario,
        players,
        violations: Vec::new(),
        operator_restarts: 0,
        port_changes: 0,
        rebind: false,
        events: Vec::new(),
        started,
    };

    let mut next_kill =
        Instant::now() + Duration::from_millis(rng.gen_range(scenario.kill_interval_ms.clone()));
    let mut next_store_check = Instant::now();
    let (mut store_checks, mut store_check_errors) = (0u32, 0u32);
    // Balls consumed by committed turns, both directions, as of the last store check.
    let mut delivered_total = 0u64;
    let mut catch_up_kills = 0u32;
    let mut last_kill = started;
    let mut last_store_check = started;
    // A kill drawn but not done yet: (victim, restart delay, drawn while catching up).
    let mut pending_kill: Option<(usize, Duration, bool)> = None;
    let mut finished = false;
    loop {
        let now = Instant::now();
        for i in 0..2 {
            if let Some(end) = run.players[i].proc.poll()? {
                run.life_ended(i, end);
            }
            run.check_new_lines(i);
        }
        if run.rebind {
            run.move_to_fresh_ports()?;
        }
        if scenario.stop_at_first_violation && !run.violations.is_empty() {
            break;
        }
        if run
            .players
            .iter()
            .all(|p| p.finished && !p.proc.is_running() && p.restart_at.is_none())
        {
            match stores::check_quiescent(&stores) {
                Ok(v) => run.violations.extend(v.into_iter().map(Violation::Store)),
                Err(e) => run.violations.push(Violation::StoreUnreadable(e)),
            }
            finished = run.violations.is_empty();
            break;
        }
        if now >= deadline {
            run.violations.push(Violation::Deadline {
                after: now - started,
            });
            break;
        }

        // Restarts of killed processes that are due.
        for p in &mut run.players {
            if p.restart_at.is_some_and(|t| t <= now) {
                p.restart_at = None;
                p.reported_this_life = false;
                p.proc.restart()?;
                let msg = format!("restart {} (life {})", p.id, life(&p.proc).number);
                run.events.push((now - started, msg));
            }
        }

        // The killer: while the volley is in progress and fewer than the target kills.
        let kills: u32 = run.players.iter().map(|p| p.proc.kills()).sum();
        let volley_over = run.players.iter().all(|p| p.reported_ever);
        // Catch-up: the volley must not end before the target kills, whatever the speed of
        // the disk. Kill k (from 0) is due at the latest once the volley has consumed
        // (k + 2) slots of count / (kills_target + CATCH_UP_SPARE_SLOTS) balls: then it is
        // done at once, as soon as a store check newer than the last kill confirms it.
        let slot = scenario.count / u64::from(scenario.kills_target + CATCH_UP_SPARE_SLOTS);
        let behind = delivered_total >= (u64::from(kills) + 2) * slot;
        let due = if behind && last_store_check > last_kill {
            now.min(next_kill)
        } else {
            next_kill
        };
        if kills < scenario.kills_target && !volley_over && pending_kill.is_none() && now >= due {
            if behind && now < next_kill {
                catch_up_kills += 1;
            }
            last_kill = now;
            next_kill =
                now + Duration::from_millis(rng.gen_range(scenario.kill_interval_ms.clone()));
            let delay = Duration::from_millis(rng.gen_range(scenario.restart_delay_ms.clone()));
            let mut victim = rng.gen_range(0..2usize);
            // Keep the kills spread: never let one side get 3 kills ahead.
            let other = 1 - victim;
            if run.players[victim].proc.kills() >= run.players[other].proc.kills() + 3 {
                victim = other;
            }
            pending_kill = Some((victim, delay, behind));
        }
        // A victim that is down is killed once it has run again for the shortest kill
        // interval (in or just after its recovery).
        if let Some((victim, delay, behind)) = pending_kill {
            let v = &run.players[victim];
            let min_life = Duration::from_millis(scenario.kill_interval_ms.start);
            if v.proc.is_running() && now >= life(&v.proc).started + min_life {
                pending_kill = None;
                let msg = format!(
                    "kill {} (life {}), restart in {} ms, balls consumed {delivered_total}{}",
                    run.players[victim].id,
                    life(&run.players[victim].proc).number,
                    delay.as_millis(),
                    if behind { ", catching up" } else { "" }
                );
                run.events.push((now - started, msg));
                match run.players[victim].proc.kill()? {
                    End::KilledByUs => run.players[victim].restart_at = Some(now + delay),
                    end => run.life_ended(victim, end),
                }
            } else if !v.proc.is_running() && v.restart_at.is_none() {
                // Down for good (finished, or failed): give up this kill.
                pending_kill = None;
            }
        }

        // The operator rule (module docs): restart a finished process whose peer runs and
        // still waits.
        for i in 0..2 {
            let peer = &run.players[1 - i];
            let peer_waits = peer.proc.is_running() && !peer.reported_this_life;
            let p = &mut run.players[i];
            if p.finished && !p.proc.is_running() && p.restart_at.is_none() && peer_waits {
                p.finished = false;
                p.reported_this_life = false;
                p.proc.restart()?;
                run.operator_restarts += 1;
                let msg = format!(
                    "operator restart of finished {} (life {}): its peer waits",
                    p.id,
                    life(&p.proc).number
                );
                run.events.push((now - started, msg));
            }
        }

        if now >= next_store_check {
            next_store_check = now + scenario.store_check_interval;
            last_store_check = now;
            store_checks += 1;
            let check_started = Instant::now();
            let counters = stores::read_counters(&stores);
            let took = check_started.elapsed();
            if took > Duration::from_millis(50) {
                let msg = format!(
                    "store check took {} ms: {:?}",
                    took.as_millis(),
                    counters.as_ref().err()
                );
                run.events.push((now - started, msg));
            }
            match counters {
                Ok(pairs) => {
                    delivered_total = pairs.iter().map(|p| p.delivered).sum();
                    let found = stores::acked_not_delivered(&pairs);
                    run.violations
                        .extend(found.into_iter().map(Violation::Store));
                }
                Err(_) => store_check_errors += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    let elapsed = started.elapsed();
    let mut diagnostics = run
        .players
        .iter()
        .map(|p| p.proc.report(3, 30))
        .collect::<Vec<_>>()
        .join("");
    diagnostics.push_str("harness events:\n");
    for (at, what) in &run.events {
        diagnostics.push_str(&format!("  {:>7.3} s  {what}\n", at.as_secs_f64()));
    }
    let kills = run
        .players
        .iter()
        .map(|p| (p.id.clone(), p.proc.kills()))
        .collect();
    let outcome = Outcome {
        seed,
        elapsed,
        kills,
        operator_restarts: run.operator_restarts,
        catch_up_kills,
        port_changes: run.port_changes,
        store_checks,
        store_check_errors,
        finished,
        violations: run.violations,
        diagnostics,
    };
    // Dropping the players SIGKILLs whatever still runs; then the directory goes.
    drop(run.players);
    drop(dir);
    Ok(outcome)
}

impl Run<'_> {
    /// A life of player `i` ended on its own (exit, or a signal we did not send).
    fn life_ended(&mut self, i: usize, end: End) {
        self.check_new_lines(i);
        let p = &mut self.players[i];
        let life = life(&p.proc);
        self.events.push((
            self.started.elapsed(),
            format!("{} (life {}) ended on its own: {end:?}", p.id, life.number),
        ));
        match end {
            End::KilledByUs => unreachable!("poll and kill report our kills separately"),
            End::Finished => {
                if p.reported_this_life {
                    p.finished = true;
                } else {
                    self.violations.push(Violation::ExitWithoutReport {
                        id: p.id.clone(),
                        life: life.number,
                    });
                }
            }
            End::BindError => self.rebind = true,
            end => self.violations.push(Violation::UnexpectedExit {
                id: p.id.clone(),
                life: life.number,
                status: format!("{end:?}"),
                stderr_tail: life.stderr_tail(30),
            }),
        }
    }

    /// Checks the stdout lines of player `i` not checked yet, of every life.
    fn check_new_lines(&mut self, i: usize) {
        let expected = expected_received(self.scenario.count, self.players[i].serve);
        let p = &mut self.players[i];
        let current = life(&p.proc).number;
        for life in p.proc.lives() {
            let lines = life.stdout_lines();
            let checked = p.lines_checked.entry(life.number).or_insert(0);
            for line in &lines[*checked..] {
                if life.number == current {
                    p.reported_this_life = true;
                }
                p.reported_ever = true;
                let Ok(report) = serde_json::from_str::<Report>(line) else {
                    self.violations.push(Violation::BadOutput {
                        id: p.id.clone(),
                        life: life.number,
                        line: line.clone(),
                    });
                    continue;
                };
                let mut problems = Vec::new();
                if report.id != p.id {
                    problems.push(format!("id {} instead of {}", report.id, p.id));
                }
                if report.gaps != 0 {
                    problems.push(format!("{} gaps", report.gaps));
                }
                if report.repeats != 0 {
                    problems.push(format!("{} repeats", report.repeats));
                }
                if report.received != expected {
                    problems.push(format!(
                        "received {} instead of {expected}",
                        report.received
                    ));
                }
                if !problems.is_empty() {
                    self.violations.push(Violation::BadReport {
                        id: p.id.clone(),
                        life: life.number,
                        line: line.clone(),
                        problem: problems.join(", "),
                    });
                }
            }
            *checked = lines.len();
        }
    }

    /// After a bind failure: fresh ports for both, the running one SIGKILLed, both restarted.
    fn move_to_fresh_ports(&mut self) -> std::io::Result<()> {
        self.rebind = false;
        self.port_changes += 1;
        let ports = harness::free_ports(2)?;
        self.events.push((
            self.started.elapsed(),
            format!("a port was taken: both move to ports {ports:?}"),
        ));
        for i in 0..2 {
            let count = self.scenario.count;
            let p = &mut self.players[i];
            if p.proc.is_running() {
                let end = p.proc.kill()?;
                if end != End::KilledByUs {
                    // It ended on its own just before our signal: judge that life.
                    self.life_ended(i, end);
                }
            }
            let p = &mut self.players[i];
            let args = player_args(&p.id, p.serve, &p.store, [ports[i], ports[1 - i]], count);
            p.proc.set_args(args);
        }
        for p in &mut self.players {
            p.restart_at = None;
            p.reported_this_life = false;
            p.finished = false;
            p.proc.restart()?;
        }
        Ok(())
    }
}

/// The newest life of a started process.
fn life(p: &Process) -> &Life {
    p.current_life().expect("the player was started")
}
