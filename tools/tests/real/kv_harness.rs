//! The kv kill harness: one real kv process (`ken app kv serve`) on loopback, SIGKILLed at seeded random
//! moments and restarted with the same command, while client threads (each a
//! [`ken::BlockingClient`] with its own [`ken::ClientId`]) send it requests with retries.
//!
//! Each client thread sends, one at a time, `incr` of one of a few counter keys (by a
//! random amount in 1..=5, so that a double application shows as a wrong sum) or a `put` of
//! a key of its own that was never written before. A call that times out is retried with the
//! same request number ([`ken_apps::kv::retry_last`]) until it is answered or fails with
//! another typed error, for at most [`Scenario::request_deadline`]; one that never got an
//! answer is counted apart ([`Outcome::unanswered`]): it may or may not have been applied.
//!
//! Checks, each a [`Violation`]:
//! - every answer is the right kind of reply; a `put` of a fresh key answers `previous:
//!   None` (a second application would answer the value of the first);
//! - the values a client sees for one counter strictly increase (increments are positive
//!   and a client's requests are applied in its order): a counter never goes backwards;
//! - the process ends a life only by our SIGKILL (a bind failure moves it to a fresh port);
//! - after the last kill, with the process running: every acknowledged `put` is present
//!   with its value (read back with `get` by the client that wrote it), and each counter
//!   equals the sum of its acknowledged increments, exactly when no request went unanswered
//!   (otherwise within the unanswered increments).
//!
//! The killer runs on the calling thread: after a seeded random interval it SIGKILLs the
//! process and restarts it after a seeded random delay, until [`Scenario::kills_target`]
//! kills; the clients go on until the kills are done and they sent at least
//! [`Scenario::requests_min`] requests in all. The draws replay from the seed; what each
//! kill interrupts depends on the scheduler.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ken::{BlockingClient, ClientError, ClientId, ClientOptions};
use ken_apps::kv::{Reply, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ken_tools::harness::{self, End, Process, Spec};

/// How one run is set up.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Client threads, each with its own client id.
    pub clients: usize,
    /// Counter keys the `incr`s are spread over.
    pub counters: usize,
    /// Fraction of requests that are `incr` (the rest are `put`s of fresh keys).
    pub incr_fraction: f64,
    /// The clients stop once the kills are done and they sent at least this many requests.
    pub requests_min: u64,
    /// SIGKILLs to do.
    pub kills_target: u32,
    /// Time between kills (from the restart), milliseconds, drawn uniformly.
    pub kill_interval_ms: Range<u64>,
    /// Time the killed process stays down, milliseconds, drawn uniformly.
    pub restart_delay_ms: Range<u64>,
    /// One call's retry policy (a timeout is then retried with the same number).
    pub call_options: ClientOptions,
    /// A request unanswered for this long is given up (counted in [`Outcome::unanswered`]).
    pub request_deadline: Duration,
    /// The whole run (traffic and checks) must end within this.
    pub deadline: Duration,
    /// Run the server with `KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1` (negative controls only).
    pub unsafe_release_before_commit: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            clients: 4,
            counters: 3,
            incr_fraction: 0.5,
            requests_min: 4000,
            kills_target: 25,
            kill_interval_ms: 50..400,
            restart_delay_ms: 50..250,
            // Shorter than a kill and restart, so that calls time out and are retried with
            // the same number (`retry_last`), the path under test.
            call_options: ClientOptions {
                retry_initial: Duration::from_millis(20),
                retry_max: Duration::from_millis(50),
                deadline: Duration::from_millis(150),
                ..ClientOptions::default()
            },
            request_deadline: Duration::from_secs(30),
            deadline: Duration::from_secs(60),
            unsafe_release_before_commit: false,
        }
    }
}

/// A broken promise found by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged put is missing or holds another value.
    LostPut {
        key: String,
        value: String,
        found: Option<String>,
    },
    /// A counter differs from the sum of its acknowledged increments.
    CounterMismatch {
        key: String,
        found: i64,
        acked_sum: i64,
        unanswered_sum: i64,
    },
    /// A client saw a counter's value not increase between two of its increments.
    CounterBackwards {
        client: usize,
        key: String,
        before: i64,
        after: i64,
    },
    /// A put of a fresh key answered that it replaced a value: applied twice.
    PutAppliedTwice { key: String, previous: String },
    /// A reply of the wrong kind, or an error reply.
    BadReply { request: String, reply: String },
    /// A call failed with a typed error other than a timeout.
    ClientError { client: usize, error: String },
    /// The process ended a life on its own.
    UnexpectedExit {
        life: u32,
        status: String,
        stderr_tail: String,
    },
    /// Traffic or the final checks did not finish in time.
    Deadline { what: String },
}

impl Violation {
    /// True for violations that show a request lost or applied twice (what the negative
    /// control must find), as opposed to a crash or a deadline.
    pub fn is_specific(&self) -> bool {
        matches!(
            self,
            Violation::LostPut { .. }
                | Violation::CounterMismatch { .. }
                | Violation::CounterBackwards { .. }
                | Violation::PutAppliedTwice { .. }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LostPut { key, value, found } => write!(
                f,
                "acknowledged put {key}={value} lost: the store holds {found:?}"
            ),
            Violation::CounterMismatch {
                key,
                found,
                acked_sum,
                unanswered_sum,
            } => write!(
                f,
                "counter {key} is {found}, but its acknowledged increments sum to {acked_sum} \
                 (plus up to {unanswered_sum} unanswered)"
            ),
            Violation::CounterBackwards {
                client,
                key,
                before,
                after,
            } => write!(
                f,
                "client {client}: counter {key} went from {before} to {after} between two of its increments"
            ),
            Violation::PutAppliedTwice { key, previous } => write!(
                f,
                "put of fresh key {key} answered previous value {previous:?}: applied twice"
            ),
            Violation::BadReply { request, reply } => {
                write!(f, "request {request} got reply {reply}")
            }
            Violation::ClientError { client, error } => {
                write!(f, "client {client}: typed error {error}")
            }
            Violation::UnexpectedExit {
                life,
                status,
                stderr_tail,
            } => write!(
                f,
                "kv life {life} ended with {status}, not by our SIGKILL; stderr tail:\n{stderr_tail}"
            ),
            Violation::Deadline { what } => write!(f, "deadline: {what}"),
        }
    }
}

/// What a run did and found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub elapsed: Duration,
    pub kills: u32,
    /// Requests sent (each counted once, however often retried).
    pub requests: u64,
    /// Requests answered.
    pub answered: u64,
    /// Requests answered only after at least one timeout (retried with the same number).
    pub answered_after_timeout: u64,
    /// Timeouts seen in all (each followed by a retry of the same request).
    pub timeouts: u64,
    /// Requests given up unanswered after [`Scenario::request_deadline`].
    pub unanswered: u64,
    /// Acknowledged puts, all read back at the end.
    pub acked_puts: u64,
    /// Acknowledged increments, and the counters' final values.
    pub acked_incrs: u64,
    pub counters: BTreeMap<String, i64>,
    pub port_changes: u32,
    pub violations: Vec<Violation>,
    /// Every life of the process with stderr tails, and the harness's events.
    pub diagnostics: String,
}

impl Outcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "seed {} elapsed {:.2} s kills {} requests {} answered {} ({} after a timeout, {} \
             timeouts) unanswered {} acked puts {} acked incrs {} counters {:?} port changes {} \
             violations {}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.kills,
            self.requests,
            self.answered,
            self.answered_after_timeout,
            self.timeouts,
            self.unanswered,
            self.acked_puts,
            self.acked_incrs,
            self.counters,
            self.port_changes,
            self.violations.len()
        )
    }
}

/// What one client thread saw.
#[derive(Debug, Default)]
struct ClientLog {
    requests: u64,
    answered: u64,
    answered_after_timeout: u64,
    timeouts: u64,
    unanswered: u64,
    /// key -> value of acknowledged puts.
    acked_puts: Vec<(String, String)>,
    /// counter -> acknowledged increments, and unanswered ones.
    acked_incr: BTreeMap<String, (u64, i64)>,
    unanswered_incr: BTreeMap<String, i64>,
    violations: Vec<Violation>,
}

/// Shared between the killer and the clients.
struct Shared {
    /// Where the server listens (changes only after a bind failure).
    server: Mutex<SocketAddr>,
    /// The killer is done (its kills or the deadline): finish once `requests_min` is met.
    kills_done: AtomicBool,
    /// Stop sending new requests now.
    stop: AtomicBool,
    /// The process is running with no more kills: read back.
    healed: AtomicBool,
    requests: AtomicU64,
}

impl Shared {
    fn server(&self) -> SocketAddr {
        *self.server.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn counter_key(i: usize) -> String {
    format!("counter-{i}")
}

fn serve_args(store: &Path, port: u16) -> Vec<OsString> {
    vec![
        "app".into(),
        "kv".into(),
        "serve".into(),
        "--id".into(),
        "kv1".into(),
        "--listen".into(),
        harness::loopback(port).to_string().into(),
        "--store".into(),
        store.into(),
    ]
}

/// Runs `scenario` with `seed` against the kv service run by the `ken` binary at `binary`
/// (`ken app kv serve ..`), in a fresh
/// temporary directory. Violations are in the [`Outcome`]; `Err` only for failures of the
/// harness's own I/O.
pub fn run(binary: &Path, scenario: &Scenario, seed: u64) -> std::io::Result<Outcome> {
    let dir = tempfile::Builder::new().prefix("ken-kv-kill-").tempdir()?;
    // A private copy: immune to a rebuild of the target directory during the run.
    let binary = {
        let copy = dir.path().join("ken");
        std::fs::copy(binary, &copy).map_err(|e| {
            let what = format!("copy {} to the run directory: {e}", binary.display());
            std::io::Error::new(e.kind(), what)
        })?;
        copy
    };
    let started = Instant::now();
    let deadline = started + scenario.deadline;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let store = dir.path().join("kv1.db");
    let mut envs: Vec<(OsString, OsString)> = Vec::new();
    if scenario.unsafe_release_before_commit {
        envs.push(("KEN_UNSAFE_RELEASE_BEFORE_COMMIT".into(), "1".into()));
    }
    let port = harness::free_ports(1)?[0];
    let mut proc = Process::start(Spec {
        name: "kv1".into(),
        program: binary.clone(),
        args: serve_args(&store, port),
        envs,
        env_remove: Vec::new(),
        log_dir: dir.path().to_path_buf(),
    })?;
    let shared = Arc::new(Shared {
        server: Mutex::new(harness::loopback(port)),
        kills_done: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        healed: AtomicBool::new(false),
        requests: AtomicU64::new(0),
    });

    let clients: Vec<_> = (0..scenario.clients)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let scenario = scenario.clone();
            let client_seed = rng.gen::<u64>();
            std::thread::Builder::new()
                .name(format!("kv-client-{i}"))
                .spawn(move || client_thread(i, &scenario, client_seed, &shared, deadline))
        })
        .collect::<Result<_, _>>()?;

    let mut violations = Vec::new();
    let mut events: Vec<(Duration, String)> = Vec::new();
    let mut port_changes = 0;
    let mut restart_at: Option<Instant> = None;
    let mut next_kill =
        Instant::now() + Duration::from_millis(rng.gen_range(scenario.kill_interval_ms.clone()));
    loop {
        let now = Instant::now();
        if let Some(end) = proc.poll()? {
            let life = proc.current_life().expect("started");
            if end == End::BindError {
                let port = harness::free_ports(1)?[0];
                port_changes += 1;
                events.push((now - started, format!("port taken: move to {port}")));
                proc.set_args(serve_args(&store, port));
                *shared.server.lock().unwrap_or_else(|e| e.into_inner()) = harness::loopback(port);
                proc.restart()?;
            } else {
                violations.push(Violation::UnexpectedExit {
                    life: life.number,
                    status: format!("{end:?}"),
                    stderr_tail: life.stderr_tail(30),
                });
                break;
            }
        }
        if restart_at.is_some_and(|t| t <= now) {
            restart_at = None;
            proc.restart()?;
            let msg = format!(
                "restart (life {})",
                proc.current_life().expect("started").number
            );
            events.push((now - started, msg));
            next_kill =
                now + Duration::from_millis(rng.gen_range(scenario.kill_interval_ms.clone()));
        }
        if proc.kills() >= scenario.kills_target && restart_at.is_none() {
            break;
        }
        if now >= deadline {
            violations.push(Violation::Deadline {
                what: format!(
                    "only {} of {} kills done",
                    proc.kills(),
                    scenario.kills_target
                ),
            });
            break;
        }
        if restart_at.is_none() && proc.is_running() && now >= next_kill {
            let delay = Duration::from_millis(rng.gen_range(scenario.restart_delay_ms.clone()));
            let msg = format!(
                "kill (life {}) after {} requests, restart in {} ms",
                proc.current_life().expect("started").number,
                shared.requests.load(Ordering::Relaxed),
                delay.as_millis()
            );
            events.push((now - started, msg));
            match proc.kill()? {
                End::KilledByUs => restart_at = Some(now + delay),
                end => {
                    let life = proc.current_life().expect("started");
                    violations.push(Violation::UnexpectedExit {
                        life: life.number,
                        status: format!("{end:?}"),
                        stderr_tail: life.stderr_tail(30),
                    });
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if !violations.is_empty() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    shared.kills_done.store(true, Ordering::Relaxed);
    events.push((
        started.elapsed(),
        format!(
            "kills done ({}), {} requests sent",
            proc.kills(),
            shared.requests.load(Ordering::Relaxed)
        ),
    ));
    // From here the process runs for good (unless it fails, which the clients see as
    // unanswered requests and the last poll below reports).
    shared.healed.store(proc.is_running(), Ordering::Relaxed);
    let logs: Vec<ClientLog> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread panicked"))
        .collect();
    if let Some(end) = proc.poll()? {
        let life = proc.current_life().expect("started");
        violations.push(Violation::UnexpectedExit {
            life: life.number,
            status: format!("{end:?}"),
            stderr_tail: life.stderr_tail(30),
        });
    }

    // Counters: read once, compared with what was acknowledged.
    let mut acked: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut unanswered: BTreeMap<String, i64> = BTreeMap::new();
    for log in &logs {
        for (k, (n, sum)) in &log.acked_incr {
            let e = acked.entry(k.clone()).or_default();
            e.0 += n;
            e.1 += sum;
        }
        for (k, sum) in &log.unanswered_incr {
            *unanswered.entry(k.clone()).or_default() += sum;
        }
    }
    let mut counters = BTreeMap::new();
    if violations.is_empty() {
        let mut reader =
            BlockingClient::with_id(ClientId::random(), 1, scenario.call_options.clone())
                .map_err(std::io::Error::other)?;
        for i in 0..scenario.counters {
            let key = counter_key(i);
            let request = Request::Get { key: key.clone() };
            let (result, _) = reader.call_until_answered(shared.server(), &request, 30);
            let found = match result {
                Ok(Reply::Value(None)) => 0,
                Ok(Reply::Value(Some(v))) => match v.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => {
                        violations.push(Violation::BadReply {
                            request: format!("{request:?}"),
                            reply: v,
                        });
                        continue;
                    }
                },
                Ok(other) => {
                    violations.push(Violation::BadReply {
                        request: format!("{request:?}"),
                        reply: format!("{other:?}"),
                    });
                    continue;
                }
                Err(e) => {
                    violations.push(Violation::Deadline {
                        what: format!("reading {key} back: {e}"),
                    });
                    continue;
                }
            };
            counters.insert(key.clone(), found);
            let acked_sum = acked.get(&key).map_or(0, |a| a.1);
            let unanswered_sum = unanswered.get(&key).copied().unwrap_or(0);
            if found < acked_sum || found > acked_sum + unanswered_sum {
                violations.push(Violation::CounterMismatch {
                    key,
                    found,
                    acked_sum,
                    unanswered_sum,
                });
            }
        }
    }
    for log in &logs {
        violations.extend(log.violations.iter().cloned());
    }

    let sum = |f: fn(&ClientLog) -> u64| logs.iter().map(f).sum::<u64>();
    let mut diagnostics = proc.report(3, 30);
    diagnostics.push_str("harness events:\n");
    for (at, what) in &events {
        diagnostics.push_str(&format!("  {:>7.3} s  {what}\n", at.as_secs_f64()));
    }
    let outcome = Outcome {
        seed,
        elapsed: started.elapsed(),
        kills: proc.kills(),
        requests: sum(|l| l.requests),
        answered: sum(|l| l.answered),
        answered_after_timeout: sum(|l| l.answered_after_timeout),
        timeouts: sum(|l| l.timeouts),
        unanswered: sum(|l| l.unanswered),
        acked_puts: sum(|l| l.acked_puts.len() as u64),
        acked_incrs: acked.values().map(|a| a.0).sum(),
        counters,
        port_changes,
        violations,
        diagnostics,
    };
    drop(proc);
    drop(dir);
    Ok(outcome)
}

/// One client thread: requests until told to stop, then reads its puts back.
fn client_thread(
    index: usize,
    scenario: &Scenario,
    seed: u64,
    shared: &Shared,
    deadline: Instant,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client =
        match BlockingClient::with_id(ClientId::random(), 1, scenario.call_options.clone()) {
            Ok(c) => c,
            Err(e) => {
                log.violations.push(Violation::ClientError {
                    client: index,
                    error: format!("cannot create the client: {e}"),
                });
                return log;
            }
        };
    let mut last_seen: BTreeMap<String, i64> = BTreeMap::new();
    let per_request_attempts = (scenario.request_deadline.as_millis()
        / scenario.call_options.deadline.as_millis().max(1))
    .max(1) as u32;
    let mut n = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if shared.kills_done.load(Ordering::Relaxed)
            && shared.requests.load(Ordering::Relaxed) >= scenario.requests_min
        {
            break;
        }
        n += 1;
        let request = if rng.gen_bool(scenario.incr_fraction) {
            Request::Incr {
                key: counter_key(rng.gen_range(0..scenario.counters)),
                by: rng.gen_range(1..=5),
            }
        } else {
            Request::Put {
                key: format!("c{index}-{n:06}"),
                value: format!("{}", rng.gen::<u32>()),
            }
        };
        log.requests += 1;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let (result, timeouts) =
            client.call_until_answered(shared.server(), &request, per_request_attempts);
        log.timeouts += u64::from(timeouts);
        let reply = match result {
            Ok(reply) => reply,
            Err(ClientError::Timeout { .. }) => {
                log.unanswered += 1;
                if let Request::Incr { key, by } = &request {
                    *log.unanswered_incr.entry(key.clone()).or_default() += by;
                }
                continue;
            }
            Err(e) => {
                log.violations.push(Violation::ClientError {
                    client: index,
                    error: e.to_string(),
                });
                continue;
            }
        };
        log.answered += 1;
        if timeouts > 0 {
            log.answered_after_timeout += 1;
        }
        match (&request, reply) {
            (Request::Incr { key, by }, Reply::Incr(value)) => {
                let e = log.acked_incr.entry(key.clone()).or_default();
                e.0 += 1;
                e.1 += by;
                if let Some(&before) = last_seen.get(key) {
                    if value <= before {
                        log.violations.push(Violation::CounterBackwards {
                            client: index,
                            key: key.clone(),
                            before,
                            after: value,
                        });
                    }
                }
                last_seen.insert(key.clone(), value);
            }
            (Request::Put { key, value }, Reply::Put { previous }) => {
                if let Some(previous) = previous {
                    log.violations.push(Violation::PutAppliedTwice {
                        key: key.clone(),
                        previous,
                    });
                }
                log.acked_puts.push((key.clone(), value.clone()));
            }
            (request, reply) => log.violations.push(Violation::BadReply {
                request: format!("{request:?}"),
                reply: format!("{reply:?}"),
            }),
        }
    }
    // Read back every acknowledged put, once the process runs for good.
    while !shared.healed.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if shared.stop.load(Ordering::Relaxed) {
        return log;
    }
    for (key, value) in std::mem::take(&mut log.acked_puts) {
        let request = Request::Get { key: key.clone() };
        let (result, _) = client.call_until_answered(shared.server(), &request, 30);
        match result {
            Ok(Reply::Value(found)) if found.as_deref() == Some(value.as_str()) => {}
            Ok(Reply::Value(found)) => log.violations.push(Violation::LostPut {
                key: key.clone(),
                value: value.clone(),
                found,
            }),
            Ok(other) => log.violations.push(Violation::BadReply {
                request: format!("{request:?}"),
                reply: format!("{other:?}"),
            }),
            Err(e) => log.violations.push(Violation::Deadline {
                what: format!("client {index} reading {key} back: {e}"),
            }),
        }
        log.acked_puts.push((key, value));
    }
    log
}
