//! Components composed in one process (`ken::compose`, issue 15): the job queue of the
//! issue split into a `queue` and a `metrics` component in one process, with `worker`
//! components in two worker processes, run through the test host with crashes and a
//! hostile network: every job is executed exactly once, the metrics component's count
//! equals the queue's, and namespaced timers, tables and client requests reach their own
//! component.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ken::compose::{
    self, AppName, Component, ComponentInput, ComponentTurn, Composite, CompositeState,
};
use ken::engine::EngineConfig;
use ken::store::{codec, Reader};
use ken::testing::{Cluster, Commits, Faults};
use ken::transport::FrameKind;
use ken::{ClientId, ProcessId, Time, Tuning};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;
const QUEUE: &str = "q";
const WORKERS: [&str; 2] = ["w1", "w2"];

struct Jobs;
impl AppName for Jobs {
    const APP: &'static str = "jobs";
}

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

// ---- the queue component ----

/// Hands out `total` jobs, `per_batch` per `gen` timer, round robin over the workers; records
/// each `Done` once and tells the local `metrics` component.
struct Queue {
    total: u64,
    per_batch: u64,
    /// The negative control: tell metrics through memory shared between the components
    /// instead of a local message (what composing handlers without the runtime would do).
    shared: Option<Shared>,
}

/// Memory two components share outside the runtime (the negative control).
type Shared = std::rc::Rc<std::cell::RefCell<Vec<u64>>>;

#[derive(Default, Serialize, Deserialize)]
struct QueueState {
    next: u64,
    batches: u64,
    done: u64,
    /// A `Done` for a job already done (must stay 0).
    duplicate_done: u64,
    /// A `gen` timer whose payload was not the batch number it was set with (must stay 0).
    bad_payloads: u64,
}

/// What the queue receives.
#[derive(Serialize, Deserialize)]
enum QueueMsg {
    Done { job: u64, by: ProcessId },
}

impl Component for Queue {
    type State = QueueState;
    type Message = QueueMsg;
    type Request = ();
    type Reply = u64;
    fn on_turn(
        &self,
        s: &mut QueueState,
        turn: &mut ComponentTurn<'_, '_, u64>,
        input: ComponentInput<QueueMsg>,
    ) {
        match input {
            ComponentInput::Start => {
                turn.set_timer_with("gen", Duration::from_millis(5), &0u64.to_be_bytes())
                    .unwrap();
            }
            ComponentInput::Timer { name, payload } => {
                assert_eq!(name, "gen");
                if payload != s.batches.to_be_bytes() {
                    s.bad_payloads += 1;
                }
                s.batches += 1;
                for _ in 0..self.per_batch {
                    if s.next == self.total {
                        break;
                    }
                    let worker = pid(WORKERS[(s.next % WORKERS.len() as u64) as usize]);
                    turn.send(&worker, "worker", &WorkerMsg::Job(s.next))
                        .unwrap();
                    turn.table("assigned").put(s.next.to_be_bytes(), &worker);
                    s.next += 1;
                }
                if s.next < self.total {
                    turn.set_timer_with("gen", Duration::from_millis(5), &s.batches.to_be_bytes())
                        .unwrap();
                }
            }
            ComponentInput::Message {
                from,
                message: QueueMsg::Done { job, by },
            } => {
                assert_eq!((from.component.as_str(), &from.process), ("worker", &by));
                let key = job.to_be_bytes();
                if turn.table("done").contains(key) {
                    s.duplicate_done += 1;
                    return;
                }
                turn.table("done").put(key, &by);
                s.done += 1;
                match &self.shared {
                    None => turn.send_local("metrics", &MetricsMsg::Done(job)).unwrap(),
                    Some(shared) => shared.borrow_mut().push(job),
                }
            }
            ComponentInput::Request { .. } => turn.reply(&s.done).unwrap(),
            _ => {}
        }
    }
}

// ---- the metrics component ----

/// Counts the jobs the queue reports done; keeps a timer of the same name as the queue's
/// (`gen`), with its own payload, to show that timers are per component.
struct Metrics {
    shared: Option<Shared>,
}

#[derive(Default, Serialize, Deserialize)]
struct MetricsState {
    counted: u64,
    /// A job reported twice (must stay 0).
    duplicates: u64,
    ticks: u64,
    bad_payloads: u64,
}

#[derive(Serialize, Deserialize)]
enum MetricsMsg {
    Done(u64),
}

impl Component for Metrics {
    type State = MetricsState;
    type Message = MetricsMsg;
    type Request = ();
    type Reply = (u64, u64);
    fn on_turn(
        &self,
        s: &mut MetricsState,
        turn: &mut ComponentTurn<'_, '_, (u64, u64)>,
        input: ComponentInput<MetricsMsg>,
    ) {
        match input {
            ComponentInput::Start => turn
                .set_timer_with("gen", Duration::from_millis(50), b"m")
                .unwrap(),
            ComponentInput::Timer { name, payload } => {
                assert_eq!(name, "gen");
                if payload != b"m" {
                    s.bad_payloads += 1;
                }
                s.ticks += 1;
                if let Some(shared) = &self.shared {
                    for job in shared.borrow_mut().drain(..) {
                        if turn.table("seen").contains(job.to_be_bytes()) {
                            s.duplicates += 1;
                        } else {
                            turn.table("seen").put(job.to_be_bytes(), &());
                            s.counted += 1;
                        }
                    }
                }
                turn.set_timer_with("gen", Duration::from_millis(50), b"m")
                    .unwrap();
            }
            ComponentInput::Message {
                from,
                message: MetricsMsg::Done(job),
            } => {
                assert_eq!(from.component, "queue");
                assert_eq!(&from.process, turn.id(), "a local message");
                let key = job.to_be_bytes();
                if turn.table("seen").contains(key) {
                    s.duplicates += 1;
                } else {
                    turn.table("seen").put(key, &());
                    s.counted += 1;
                }
            }
            ComponentInput::Request { .. } => turn.reply(&(s.counted, s.ticks)).unwrap(),
            _ => {}
        }
    }
}

// ---- the worker component ----

/// Executes each job it is sent (counts executions per job in its table) and reports it
/// done to the queue.
struct Worker;

#[derive(Serialize, Deserialize)]
enum WorkerMsg {
    Job(u64),
}

impl Component for Worker {
    type State = u64;
    type Message = WorkerMsg;
    type Request = ();
    type Reply = ();
    fn on_turn(
        &self,
        executed: &mut u64,
        turn: &mut ComponentTurn<'_, '_, ()>,
        input: ComponentInput<WorkerMsg>,
    ) {
        if let ComponentInput::Message {
            from,
            message: WorkerMsg::Job(job),
        } = input
        {
            let key = job.to_be_bytes();
            let n: u32 = turn.table("executed").get(key).unwrap_or(0);
            turn.table("executed").put(key, &(n + 1));
            *executed += 1;
            let by = turn.id().clone();
            turn.send(&from.process, &from.component, &QueueMsg::Done { job, by })
                .unwrap();
        }
    }
}

fn cluster(
    dir: impl AsRef<Path> + 'static,
    seed: u64,
    total: u64,
    per_batch: u64,
) -> Cluster<Composite<Jobs>> {
    cluster_with(dir, seed, total, per_batch, false)
}

/// With `shared`, the queue tells metrics through shared memory (the negative control).
fn cluster_with(
    dir: impl AsRef<Path> + 'static,
    seed: u64,
    total: u64,
    per_batch: u64,
    shared: bool,
) -> Cluster<Composite<Jobs>> {
    let mut c = Cluster::new(dir, Time::from_millis(T0), seed);
    let all: Vec<ProcessId> = std::iter::once(QUEUE).chain(WORKERS).map(pid).collect();
    for id in &all {
        let config = EngineConfig {
            id: id.clone(),
            peers: all.iter().filter(|p| *p != id).cloned().collect(),
            tuning: Tuning::default(),
            seed,
        };
        if id.as_str() == QUEUE {
            c.add(config, move || {
                // A new life, a new memory: what a crash does to it.
                let shared = shared.then(Shared::default);
                Composite::new()
                    .with(
                        "queue",
                        Queue {
                            total,
                            per_batch,
                            shared: shared.clone(),
                        },
                    )
                    .with("metrics", Metrics { shared })
            });
        } else {
            c.add(config, || Composite::new().with("worker", Worker));
        }
    }
    c
}

fn component<S: serde::de::DeserializeOwned + Default>(s: &CompositeState, name: &str) -> S {
    s.components
        .get(name)
        .map(|b| codec::decode(b).unwrap())
        .unwrap_or_default()
}

/// Every row of `table` in node `i`'s store, decoded.
fn rows<V: serde::de::DeserializeOwned>(
    c: &Cluster<Composite<Jobs>>,
    i: usize,
    table: &str,
) -> BTreeMap<u64, V> {
    let reader = Reader::open(c.node(i).path()).unwrap();
    reader
        .table_scan(table, b"", None, u32::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                u64::from_be_bytes(k.try_into().unwrap()),
                codec::decode(&v).unwrap(),
            )
        })
        .collect()
}

/// The decoded replies node 0 released to `client`, in order.
fn replies(c: &Cluster<Composite<Jobs>>, client: ClientId) -> Vec<compose::RoutedReply> {
    c.node(0)
        .replies()
        .iter()
        .filter(|f| f.kind == FrameKind::ClientReply && f.to == client.to_process_id())
        .map(|f| match codec::decode(&f.payload).unwrap() {
            ken::client::ReplyBody::Ok(bytes) => codec::decode(&bytes).unwrap(),
            other => panic!("not an applied request: {other:?}"),
        })
        .collect()
}

fn done(c: &Cluster<Composite<Jobs>>, total: u64) -> bool {
    (0..c.len()).all(|i| c.node(i).is_up()) && {
        let s = c.state(0);
        let q: QueueState = component(s, "queue");
        let m: MetricsState = component(s, "metrics");
        q.done == total && m.counted == total && s.local.is_empty()
    }
}

/// What a crash run of the job queue ended with.
struct Outcome {
    c: Cluster<Composite<Jobs>>,
    seed: u64,
    total: u64,
    queue: QueueState,
    metrics: MetricsState,
}

/// Runs the job queue under crashes (held commits, a hostile network) until the queue has
/// every job done and metrics has counted as many (or, when they never agree, until the
/// queue is done and quiet).
fn crash_run(seed: u64, shared: bool) -> Outcome {
    let total = 1500;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster_with(dir, seed, total, 3, shared);
    // Slow disks: turns run into the next batch while one commits, and a crash loses them.
    c.set_commits(Commits::Held);
    c.set_faults(Faults {
        drop: 0.05,
        corrupt: 0.01,
        truncate: 0.01,
        duplicate: 0.05,
        delay_max: Duration::from_millis(5),
    });
    c.start_all();
    let mut crashes = 0;
    let mut queue_crashes = 0;
    let mut rolled_back = 0;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let deadline = Duration::from_secs(120);
    let mut elapsed = Duration::ZERO;
    let mut quiet_done = Duration::ZERO;
    while !done(&c, total) {
        if shared && elapsed > Duration::from_secs(20) {
            // The control's counts may never agree: stop once the queue is done and metrics
            // had a second to catch up.
            if component::<QueueState>(c.state(0), "queue").done == total {
                quiet_done += Duration::from_millis(1);
                if quiet_done > Duration::from_millis(200) {
                    break;
                }
            }
        }
        assert!(
            elapsed < deadline,
            "seed {seed}: not done after {elapsed:?} of virtual time"
        );
        let step = Duration::from_millis(rng.gen_range(1..10));
        c.run_for(step);
        elapsed += step;
        if elapsed < Duration::from_secs(20) && rng.gen_bool(0.1) {
            let i = rng.gen_range(0..c.len());
            if c.node(i).is_up() {
                // The fsync of the committing batch landed or not; the filling one is lost.
                let committing = c.engine(i).is_committing();
                let landed = rng.gen_bool(0.5) && c.land_pending(i);
                if committing && !landed {
                    rolled_back += 1;
                }
                c.crash(i);
                crashes += 1;
                queue_crashes += usize::from(i == 0);
            }
        }
        for i in 0..c.len() {
            if c.node(i).is_up() && rng.gen_bool(0.7) {
                c.complete_commit(i);
            }
        }
        for i in 0..c.len() {
            if !c.node(i).is_up() && rng.gen_bool(0.3) {
                c.start(i);
            }
        }
    }
    c.set_commits(Commits::AtOnce);
    for i in 0..c.len() {
        c.complete_commit(i);
    }
    c.run_for(Duration::from_millis(200));

    let s = c.state(0).clone();
    let q: QueueState = component(&s, "queue");
    let m: MetricsState = component(&s, "metrics");
    assert_eq!(s.undeliverable, 0);
    println!(
        "seed {seed}: {crashes} crashes ({queue_crashes} of the queue process, {rolled_back} \
         with turns not yet durable), {elapsed:?} virtual, metrics ticks {}, undeliverable {}",
        m.ticks, s.undeliverable
    );
    assert!(
        crashes >= 10 && queue_crashes >= 3 && rolled_back >= 3,
        "seed {seed}: only {crashes} crashes ({queue_crashes} of the queue, {rolled_back} \
         rolling back)"
    );
    Outcome {
        c,
        seed,
        total,
        queue: q,
        metrics: m,
    }
}

#[test]
fn a_job_queue_of_two_components_keeps_exactly_once_and_equal_counts_under_crashes() {
    let Outcome {
        mut c,
        seed,
        total,
        queue: q,
        metrics: m,
    } = crash_run(ken::testing::seed("compose job queue"), false);
    let s = c.state(0).clone();
    // Every job handed out once, done once, executed once, counted once.
    assert_eq!(q.next, total);
    assert_eq!((q.done, q.duplicate_done, q.bad_payloads), (total, 0, 0));
    assert_eq!(
        (m.counted, m.duplicates, m.bad_payloads),
        (q.done, 0, 0),
        "seed {seed}: the metrics component's count differs from the queue's"
    );
    assert!(m.ticks > 0, "the metrics timer never fired");
    assert_eq!(s.undeliverable, 0);
    let assigned: BTreeMap<u64, ProcessId> = rows(&c, 0, "queue/assigned");
    let done_by: BTreeMap<u64, ProcessId> = rows(&c, 0, "queue/done");
    let seen: BTreeMap<u64, ()> = rows(&c, 0, "metrics/seen");
    assert_eq!(assigned.len() as u64, total);
    assert_eq!(
        assigned, done_by,
        "each job done by the worker it was sent to"
    );
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        done_by.keys().collect::<Vec<_>>()
    );
    let mut executed = 0;
    for (w, name) in WORKERS.iter().enumerate() {
        let i = w + 1;
        let rows: BTreeMap<u64, u32> = rows(&c, i, "worker/executed");
        for (job, n) in &rows {
            assert_eq!(*n, 1, "seed {seed}: job {job} executed {n} times on {name}");
            assert_eq!(assigned[job].as_str(), *name);
        }
        let count: u64 = component(c.state(i), "worker");
        assert_eq!(count, rows.len() as u64);
        executed += rows.len() as u64;
    }
    assert_eq!(executed, total);

    // Client requests are routed by component name.
    let client = ClientId([9; 16]);
    c.request(0, client, 1, &compose::request("metrics", &()));
    c.request(0, client, 2, &compose::request("queue", &()));
    c.request(0, client, 3, &compose::request("nobody", &()));
    c.run_for(Duration::from_millis(100));
    let r = replies(&c, client);
    assert_eq!(r.len(), 3, "{r:?}");
    let (counted, _ticks): (u64, u64) = compose::decode_reply(r[0].clone()).unwrap();
    assert_eq!(counted, total);
    assert_eq!(compose::decode_reply::<u64>(r[1].clone()), Ok(total));
    let e = compose::decode_reply::<()>(r[2].clone()).unwrap_err();
    assert!(e.contains("no component `nobody`"), "{e}");
}

/// A local message is delivered in a turn of its own, after the sending turn: a crash
/// after the sending turn's commit and before the delivery's keeps it queued in the
/// committed root state, and it is delivered once after the restart.
#[test]
fn a_local_message_waits_durably_and_is_delivered_once_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir, 3, 1, 1);
    c.set_commits(Commits::Held);
    c.start(0);
    c.start(1);
    let queue_done =
        |c: &Cluster<Composite<Jobs>>| component::<QueueState>(c.state(0), "queue").done;
    let mut steps = 0;
    while queue_done(&c) == 0 {
        steps += 1;
        assert!(steps < 5_000, "the job was never done");
        for i in 0..2 {
            c.complete_commit(i);
        }
        c.run_for(Duration::from_millis(1));
    }
    // The Done turn ran with nothing committing, so it is alone in the committing batch; the
    // local delivery, if it ran yet, is in the filling one. The fsync lands, then a crash.
    assert!(c.engine(0).is_committing());
    assert!(c.land_pending(0));
    c.crash(0);
    let root: CompositeState = {
        let reader = Reader::open(c.node(0).path()).unwrap();
        codec::decode(&reader.root().unwrap().unwrap()).unwrap()
    };
    let stored: MetricsState = component(&root, "metrics");
    assert_eq!(
        (root.local.len(), stored.counted),
        (1, 0),
        "the local message is queued durably, not yet delivered"
    );
    c.set_commits(Commits::AtOnce);
    c.start(0);
    c.run_for(Duration::from_millis(100));
    let s = c.state(0);
    let m: MetricsState = component(s, "metrics");
    assert_eq!((m.counted, m.duplicates), (1, 0));
    assert!(s.local.is_empty());
}

/// The negative control: the same run with the queue telling metrics through memory the
/// two components share (not a local message) loses or doubles counts across crashes, and
/// the check above sees it. A fixed seed, so that the control is deterministic.
#[test]
fn negative_control_shared_memory_between_components_breaks_the_counts() {
    let seed = 1;
    println!("compose negative control: seed {seed}");
    let o = crash_run(seed, true);
    assert_eq!(
        o.queue.done, o.total,
        "the queue itself is still exactly once"
    );
    assert_ne!(
        o.metrics.counted, o.queue.done,
        "seed {}: shared memory kept the counts equal; the check would not see a broken \
         composition",
        o.seed
    );
    println!(
        "negative control: queue done {}, metrics counted {}",
        o.queue.done, o.metrics.counted
    );
}

/// Sends `b` two local messages at start, ticks a timer of its own every 10 ms.
struct Sender;

impl Component for Sender {
    type State = u64;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(
        &self,
        ticks: &mut u64,
        turn: &mut ComponentTurn<'_, '_, ()>,
        input: ComponentInput<()>,
    ) {
        match input {
            ComponentInput::Start => {
                turn.send_local("b", &"poison".to_string()).unwrap();
                turn.send_local("b", &"fine".to_string()).unwrap();
                turn.set_timer("tick", Duration::from_millis(10));
            }
            ComponentInput::Timer { .. } => {
                *ticks += 1;
                turn.set_timer("tick", Duration::from_millis(10));
            }
            _ => {}
        }
    }
}

/// Records the messages it gets; panics on `poison` while `buggy`, counting the attempts.
struct Receiver {
    buggy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Component for Receiver {
    type State = Vec<String>;
    type Message = String;
    type Request = ();
    type Reply = ();
    fn on_turn(
        &self,
        got: &mut Vec<String>,
        _turn: &mut ComponentTurn<'_, '_, ()>,
        input: ComponentInput<String>,
    ) {
        use std::sync::atomic::Ordering;
        if let ComponentInput::Message { message, .. } = input {
            if message == "poison" {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                if self.buggy.load(Ordering::SeqCst) {
                    panic!("a poison local message");
                }
            }
            got.push(message);
        }
    }
}

/// A local message whose delivery panics holds the local queue for the rest of the life
/// (later local messages wait behind it, in order), is not run again by the turns of other
/// inputs, and is delivered once after a restart with the bug fixed.
#[test]
fn a_panicking_local_message_holds_the_local_queue_until_a_restart() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let buggy = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicU32::new(0));
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir, Time::from_millis(T0), 4);
    let config = EngineConfig {
        id: pid("solo"),
        peers: Vec::new(),
        tuning: Tuning::default(),
        seed: 4,
    };
    let (b, a) = (Arc::clone(&buggy), Arc::clone(&attempts));
    c.add(config, move || {
        Composite::<Jobs>::new().with("a", Sender).with(
            "b",
            Receiver {
                buggy: Arc::clone(&b),
                attempts: Arc::clone(&a),
            },
        )
    });
    c.start(0);
    c.run_for(Duration::from_millis(200));
    let s = c.state(0);
    let ticks: u64 = component(s, "a");
    let got: Vec<String> = component(s, "b");
    assert!(ticks >= 10, "other inputs kept running: {ticks} ticks");
    assert!(got.is_empty(), "nothing delivered past the poison: {got:?}");
    assert_eq!(s.local.len(), 2);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "the poison message ran again in the same life"
    );
    buggy.store(false, Ordering::SeqCst);
    c.restart(0);
    c.run_for(Duration::from_millis(100));
    let s = c.state(0);
    let got: Vec<String> = component(s, "b");
    assert_eq!(got, ["poison", "fine"]);
    assert!(s.local.is_empty());
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}
