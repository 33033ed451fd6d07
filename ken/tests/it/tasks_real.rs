//! Tasks in a real process, SIGKILLed while they run (issue 15): a worker (this test binary
//! re-run as a child, sled-style) starts `TASKS` tasks over several turns; each attempt
//! appends `KEY ATTEMPT PAYLOAD` to a file, sleeps, fails (an error or a panic) now and
//! then, and returns three times its payload. The parent kills the worker with SIGKILL at seeded moments while
//! attempts run, restarts it, and finally lets it finish. Then: every task's `TaskDone` was
//! applied exactly once (read from the store's committed state) with the right result, no
//! task record is left, every attempt of a task carried the same key, no two tasks shared a
//! key, and some attempt really was cut short by a kill and run again (so the test could
//! have seen a duplicate).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ken::store::{codec, Reader};
use ken::task::TASKS_TABLE;
use ken::{Config, Handler, Input, ProcessId, TaskContext, Tuning, Turn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const TASKS: u64 = 40;
const PER_TURN: u64 = 4;
const KILLS: usize = 8;

struct Worker;

#[derive(Default, Serialize, Deserialize)]
struct WorkerState {
    next: u64,
    /// Payload -> (TaskDone turns that consumed it, the result they saw).
    done: BTreeMap<u64, (u32, u64)>,
}

impl Handler for Worker {
    const APP: &'static str = "task-worker";
    type State = WorkerState;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut WorkerState, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start => turn.set_timer("go", Duration::from_millis(5)),
            Input::Timer { .. } => {
                for _ in 0..PER_TURN.min(TASKS - s.next) {
                    turn.start_task("work", &s.next.to_be_bytes()).unwrap();
                    s.next += 1;
                }
                if s.next < TASKS {
                    turn.set_timer("go", Duration::from_millis(30));
                }
            }
            Input::TaskDone { result, .. } => {
                let (payload, value): (u64, u64) = codec::decode(&result).unwrap();
                let e = s.done.entry(payload).or_default();
                e.0 += 1;
                e.1 = value;
            }
            _ => {}
        }
    }
    fn finished(&self, s: &WorkerState) -> Option<String> {
        (s.done.len() as u64 == TASKS).then(|| format!("all {TASKS} tasks done"))
    }
}

/// A deterministic draw in `0..n` from the run's seed and an attempt.
fn draw(seed: u64, key: &str, attempt: u32, n: u64) -> u64 {
    let mut h = seed ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: every input bit reaches the low bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) % n
}

/// Child mode: the worker on the store and attempt log named by the environment.
#[test]
fn tasks_child() {
    let (Ok(store), Ok(log), Ok(seed)) = (
        std::env::var("KEN_TEST_TASKS_STORE"),
        std::env::var("KEN_TEST_TASKS_LOG"),
        std::env::var("KEN_TEST_TASKS_SEED"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let mut config = Config::new(
        ProcessId::new("worker").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        store,
    );
    config.finish_linger = Duration::ZERO;
    // One stats line, when the loop ends (the last life's counters).
    config.stats_interval = Some(Duration::from_secs(3600));
    config.tuning = Tuning {
        task_running_max: 6,
        task_backoff_initial: Duration::from_millis(10),
        task_backoff_max: Duration::from_millis(80),
        ..Tuning::default()
    };
    config.task("work", move |cx: TaskContext, payload: Vec<u8>| {
        let log = log.clone();
        async move {
            let n = u64::from_be_bytes(payload.try_into().map_err(|_| "bad payload")?);
            {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(|e| e.to_string())?;
                // One write per line: O_APPEND keeps lines whole across processes.
                f.write_all(format!("{} {} {n}\n", cx.key, cx.attempt).as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            let ms = 20 + draw(seed, &cx.key, cx.attempt, 100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            match draw(seed ^ 1, &cx.key, cx.attempt, 10) {
                0 => return Err(format!("attempt {} of {n} failed on purpose", cx.attempt)),
                1 => panic!("attempt {} of {n} panicked on purpose", cx.attempt),
                _ => {}
            }
            Ok(codec::encode(&(n, 3 * n)))
        }
    });
    if let Err(e) = ken::run(config, Worker) {
        panic!("run failed: {e}");
    }
}

fn spawn(dir: &Path, life: usize, seed: u64) -> Child {
    let out = std::fs::File::create(dir.join(format!("life{life}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("life{life}.err"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tasks_real::tasks_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEN_TEST_TASKS_STORE", dir.join("worker.db"))
        .env("KEN_TEST_TASKS_LOG", dir.join("attempts.log"))
        .env("KEN_TEST_TASKS_SEED", seed.to_string())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn the worker")
}

fn log_lines(dir: &Path) -> Vec<(String, u32, u64)> {
    let text = std::fs::read_to_string(dir.join("attempts.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "a torn line in the attempt log: {l:?}");
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn tasks_sigkilled_while_they_run_deliver_each_result_exactly_once_with_one_key() {
    let seed = ken::testing::seed("tasks_real");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    for life in 0..KILLS {
        let lines_before = log_lines(dir.path()).len();
        let mut child = spawn(dir.path(), life, seed);
        // Kill while attempts run: after this life's first attempt began, plus a little.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log_lines(dir.path()).len() == lines_before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "life {life}: the worker exited before any attempt (see {})",
                dir.path().display()
            );
            assert!(Instant::now() < deadline, "life {life}: no attempt started");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..60)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "life {life}: {status:?}");
    }
    let done_before = {
        let reader = Reader::open(&dir.path().join("worker.db")).unwrap();
        let state: WorkerState = reader
            .root()
            .unwrap()
            .map_or_else(WorkerState::default, |b| codec::decode(&b).unwrap());
        state.done.len() as u64
    };
    let mut child = spawn(dir.path(), KILLS, seed);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the last life did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::fs::read_to_string(dir.path().join(format!("life{KILLS}.out"))).unwrap();
    assert!(
        status.success() && out.contains(&format!("all {TASKS} tasks done")),
        "{status:?}: {out}"
    );

    // The last life's stats line counts what it did with tasks: it delivered exactly the
    // results the earlier lives had not, and ran at least one attempt per result.
    let err = std::fs::read_to_string(dir.path().join(format!("life{KILLS}.err"))).unwrap();
    let stats = err
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"stats\""))
        .unwrap_or_else(|| panic!("no stats line: {err}"));
    let field = |name: &str| -> u64 {
        let at = stats
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("{name}: {stats}"));
        let rest = &stats[at + name.len() + 3..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    assert_eq!(
        field("task_results_delivered"),
        TASKS - done_before,
        "{stats}"
    );
    assert!(
        field("task_attempts") >= field("task_results_delivered"),
        "{stats}"
    );
    assert!(field("task_failures") <= field("task_attempts"), "{stats}");

    // Exactly once, from the committed state.
    let reader = Reader::open(&dir.path().join("worker.db")).unwrap();
    let state: WorkerState = codec::decode(&reader.root().unwrap().unwrap()).unwrap();
    assert_eq!(state.done.len() as u64, TASKS);
    for (n, (times, value)) in &state.done {
        assert_eq!(*times, 1, "task {n}'s result was applied {times} times");
        assert_eq!(*value, 3 * n, "task {n}'s result");
    }
    let left = reader.table_scan(TASKS_TABLE, b"", None, 100).unwrap();
    assert!(left.is_empty(), "task records left: {}", left.len());

    // One key per task, every attempt.
    let lines = log_lines(dir.path());
    let mut keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut attempts: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (key, attempt, n) in &lines {
        keys.entry(*n).or_default().insert(key.clone());
        attempts.entry(*n).or_default().push(*attempt);
    }
    assert_eq!(keys.len() as u64, TASKS, "tasks that ran");
    for (n, k) in &keys {
        assert_eq!(k.len(), 1, "task {n} ran under several keys: {k:?}");
    }
    let distinct: BTreeSet<&String> = keys.values().flatten().collect();
    assert_eq!(distinct.len() as u64, TASKS, "two tasks shared a key");
    // The run could have failed: some attempt was cut short by a kill and run again under
    // the same number (failures raise it), and some failed and were retried.
    let rerun = attempts
        .values()
        .filter(|a| a.len() != a.iter().collect::<BTreeSet<_>>().len())
        .count();
    let retried = attempts
        .values()
        .filter(|a| a.iter().any(|x| *x > 1))
        .count();
    println!(
        "tasks_real: {} attempts for {TASKS} tasks over {} lives; {rerun} tasks re-run after a kill, {retried} retried after a failure",
        lines.len(),
        KILLS + 1
    );
    assert!(
        rerun > 0,
        "no attempt was cut short by a kill: the test proved nothing"
    );
    assert!(
        retried > 0,
        "no attempt failed: the retry path was not exercised"
    );
    let panics = (0..=KILLS)
        .map(|life| std::fs::read_to_string(dir.path().join(format!("life{life}.err"))).unwrap())
        .filter(|e| e.contains("panicked on purpose"))
        .count();
    println!("tasks_real: lives with a panicking attempt: {panics}");
}
