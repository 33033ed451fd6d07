//! Tasks (outside work, issue 15), exact-command engine tests through the one test host:
//! a task starts only after its turn's commit, never for a rolled-back turn, again after a
//! crash with the same key, is retried with backoff when it fails, runs within the
//! concurrency bound, and its result is delivered exactly once (a late or duplicate result is
//! ignored). The real-process test, SIGKILLed while tasks run, is `tasks_real.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ken::engine::tasks::TaskPhase;
use ken::engine::EngineConfig;
use ken::store::{codec, Reader};
use ken::task::{TaskRecord, TASKS_TABLE};
use ken::testing::{Cluster, Commits};
use ken::{Handler, Input, ProcessId, TaskId, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;

/// Starts `per_turn` tasks `work` per timer turn (payload: a running number) until it has
/// started `n`; counts each task's `TaskDone`. While `buggy`, a result `panic` panics.
#[derive(Clone, Default)]
struct Jobs {
    n: u64,
    per_turn: u64,
    buggy: Arc<AtomicBool>,
}

#[derive(Default, Serialize, Deserialize)]
struct JobsState {
    next: u64,
    /// Task id -> payload number.
    started: BTreeMap<u64, u64>,
    /// Task id -> TaskDone turns that consumed it.
    done: BTreeMap<u64, u32>,
    results: BTreeMap<u64, Vec<u8>>,
    /// `Turn::tasks_pending` at the end of the last timer turn.
    pending_seen: usize,
}

impl Handler for Jobs {
    const APP: &'static str = "jobs";
    type State = JobsState;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut JobsState, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start => turn.set_timer("go", Duration::from_millis(10)),
            Input::Timer { .. } => {
                for _ in 0..self.per_turn {
                    if s.next == self.n {
                        break;
                    }
                    let id = turn.start_task("work", &s.next.to_be_bytes()).unwrap();
                    s.started.insert(id.0, s.next);
                    s.next += 1;
                }
                if s.next < self.n {
                    turn.set_timer("go", Duration::from_millis(10));
                }
                s.pending_seen = turn.tasks_pending();
            }
            Input::TaskDone { id, name, result } => {
                assert_eq!(name, "work");
                *s.done.entry(id.0).or_default() += 1;
                if result == b"panic" && self.buggy.load(Ordering::SeqCst) {
                    panic!("a buggy result");
                }
                s.results.insert(id.0, result);
            }
            _ => {}
        }
    }
}

fn cluster(jobs: Jobs, tuning: Tuning, commits: Commits) -> Cluster<Jobs> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir, Time::from_millis(T0), 11);
    c.set_commits(commits);
    let config = EngineConfig {
        id: ProcessId::new("solo").unwrap(),
        peers: Vec::new(),
        tuning,
        seed: 1,
    };
    c.add(config, move || jobs.clone());
    c
}

/// The task records in node 0's store.
fn stored(c: &Cluster<Jobs>) -> BTreeMap<TaskId, TaskRecord> {
    let reader = Reader::open(c.node(0).path()).unwrap();
    reader
        .table_scan(TASKS_TABLE, b"", None, u32::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                TaskId::from_key(&k).unwrap(),
                codec::decode::<TaskRecord>(&v).unwrap(),
            )
        })
        .collect()
}

fn jobs(n: u64, per_turn: u64) -> Jobs {
    Jobs {
        n,
        per_turn,
        ..Jobs::default()
    }
}

#[test]
fn a_task_starts_only_after_its_turns_commit_and_its_result_is_delivered_once() {
    let mut c = cluster(jobs(1, 1), Tuning::default(), Commits::Held);
    c.start(0);
    assert!(c.complete_commit(0), "the start turn commits");
    c.run_until(Duration::from_secs(1), |c| c.engine(0).is_committing());
    // The timer turn that started the task is committing: nothing started yet.
    assert_eq!(c.engine(0).tasks().len(), 1);
    assert!(matches!(
        c.engine(0).tasks()[0].phase,
        TaskPhase::Uncommitted { .. }
    ));
    c.run_for(Duration::from_millis(100));
    assert!(
        c.node(0).tasks_started().is_empty(),
        "started before commit"
    );
    assert!(c.complete_commit(0));
    let started = c.node(0).tasks_started().to_vec();
    assert_eq!(started.len(), 1, "{started:?}");
    let a = &started[0];
    assert_eq!((a.name.as_str(), a.attempt), ("work", 1));
    assert_eq!(a.payload, 0u64.to_be_bytes());
    assert_eq!(
        a.key,
        format!("solo/{:016x}/{}", c.engine(0).incarnation().0, a.id)
    );
    assert_eq!(stored(&c).len(), 1, "recorded in the store");
    // The result: one turn, whose commit deletes the record.
    c.finish_task(0, a.id, 1, Ok(b"forty-two".to_vec()));
    assert_eq!(c.state(0).done.get(&a.id.0), Some(&1));
    assert_eq!(stored(&c).len(), 1, "deleted only with the commit");
    assert!(c.complete_commit(0));
    assert!(stored(&c).is_empty());
    // A duplicate of the same attempt, and a late one of another, are ignored.
    c.finish_task(0, a.id, 1, Ok(b"again".to_vec()));
    c.finish_task(0, a.id, 2, Ok(b"late".to_vec()));
    c.run_for(Duration::from_millis(100));
    assert_eq!(c.state(0).done.get(&a.id.0), Some(&1), "delivered twice");
    assert_eq!(c.state(0).results[&a.id.0], b"forty-two");
    assert_eq!(c.engine(0).stats().task_results_ignored, 2);
    assert!(c.engine(0).tasks().is_empty());
}

#[test]
fn a_rolled_back_turns_task_never_starts() {
    let mut c = cluster(jobs(1, 1), Tuning::default(), Commits::Held);
    c.start(0);
    assert!(c.complete_commit(0));
    c.run_until(Duration::from_secs(1), |c| c.engine(0).is_committing());
    assert_eq!(c.engine(0).tasks().len(), 1);
    c.crash(0); // before the timer turn's fsync
    assert!(c.node(0).tasks_started().is_empty());
    assert!(stored(&c).is_empty());
    c.start(0);
    assert!(
        c.engine(0).tasks().is_empty(),
        "the rolled-back task came back"
    );
    assert!(c.node(0).tasks_started().is_empty());
    // The timer fires again in the new life; that task starts once its turn commits.
    c.run_until(Duration::from_secs(1), |c| c.engine(0).is_committing());
    assert!(c.node(0).tasks_started().is_empty());
    assert!(c.complete_commit(0));
    let started = c.node(0).tasks_started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].life, 2);
}

#[test]
fn a_crash_while_a_task_runs_starts_it_again_with_the_same_key_and_delivers_once() {
    let mut c = cluster(jobs(3, 3), Tuning::default(), Commits::AtOnce);
    c.start(0);
    c.run_until(Duration::from_secs(1), |c| {
        c.node(0).tasks_started().len() == 3
    });
    let first: Vec<_> = c.node(0).tasks_started().to_vec();
    // One result is consumed and committed; then a crash with the other two running.
    c.finish_task(0, first[0].id, 1, Ok(b"r0".to_vec()));
    assert_eq!(stored(&c).len(), 2);
    c.crash(0);
    // A result of the dead life arriving now would go nowhere: the host is gone.
    c.start(0);
    let again: Vec<_> = c.node(0).tasks_started()[3..].to_vec();
    assert_eq!(
        again.len(),
        2,
        "the two pending tasks start again at recovery"
    );
    for a in &again {
        let before = first.iter().find(|f| f.id == a.id).unwrap();
        assert_eq!(a.key, before.key, "the key changed across the crash");
        assert_eq!(a.attempt, 1, "no failure was recorded");
        assert_eq!(a.life, 2);
    }
    for a in &again {
        c.finish_task(0, a.id, a.attempt, Ok(format!("r-{}", a.id).into_bytes()));
    }
    c.run_for(Duration::from_millis(100));
    let s = c.state(0);
    assert_eq!(s.done.len(), 3);
    assert!(s.done.values().all(|n| *n == 1), "{:?}", s.done);
    assert!(stored(&c).is_empty());
    // And after another restart nothing runs again.
    c.restart(0);
    assert_eq!(c.node(0).tasks_started().len(), 5);
    assert_eq!(c.state(0).done.len(), 3);
}

#[test]
fn a_failed_attempt_is_recorded_and_retried_after_an_exponential_backoff() {
    let tuning = Tuning {
        task_backoff_initial: Duration::from_millis(100),
        task_backoff_max: Duration::from_millis(300),
        ..Tuning::default()
    };
    let mut c = cluster(jobs(1, 1), tuning, Commits::AtOnce);
    c.set_step(Duration::from_millis(1));
    c.start(0);
    c.run_until(Duration::from_secs(1), |c| {
        c.node(0).tasks_started().len() == 1
    });
    let id = c.node(0).tasks_started()[0].id;
    let key = c.node(0).tasks_started()[0].key.clone();
    // Three failures: waits of 100, 200, then 300 (the ceiling) ms.
    for (failure, wait_ms) in [(1u32, 100u64), (2, 200), (3, 300)] {
        let at = c.now();
        c.finish_task(0, id, failure, Err(format!("boom {failure}")));
        let rec = &stored(&c)[&id];
        assert_eq!(rec.failures, failure);
        assert_eq!(rec.last_error.as_deref(), Some(&*format!("boom {failure}")));
        let took = c.run_until(Duration::from_secs(2), |c| {
            c.node(0).tasks_started().len() == failure as usize + 1
        });
        let waited = c.now().since(at);
        assert!(
            waited >= Duration::from_millis(wait_ms)
                && waited <= Duration::from_millis(wait_ms + 2),
            "failure {failure}: retried after {waited:?} ({took:?}), expected {wait_ms} ms"
        );
        let a = c.node(0).tasks_started().last().unwrap().clone();
        assert_eq!((a.id, a.attempt), (id, failure + 1));
        assert_eq!(a.key, key, "every attempt carries the same key");
    }
    // Then a success.
    c.finish_task(0, id, 4, Ok(b"done".to_vec()));
    assert_eq!(c.state(0).done[&id.0], 1);
    assert!(stored(&c).is_empty());
    assert_eq!(c.engine(0).stats().task_failures, 3);
}

#[test]
fn at_most_task_running_max_attempts_run_at_once() {
    let tuning = Tuning {
        task_running_max: 2,
        ..Tuning::default()
    };
    let mut c = cluster(jobs(6, 3), tuning, Commits::AtOnce);
    c.start(0);
    c.run_until(Duration::from_secs(1), |c| {
        !c.node(0).tasks_started().is_empty()
    });
    c.run_for(Duration::from_millis(200));
    assert_eq!(c.node(0).tasks_started().len(), 2, "the bound was not kept");
    assert_eq!(
        c.state(0).pending_seen,
        6,
        "Turn::tasks_pending counts earlier turns' tasks"
    );
    let mut finished = 0;
    while finished < 6 {
        let started = c.node(0).tasks_started().to_vec();
        let running = started.len() - finished;
        assert!(running <= 2, "{running} attempts ran at once");
        let a = &started[finished];
        c.finish_task(0, a.id, a.attempt, Ok(Vec::new()));
        finished += 1;
        assert_eq!(c.node(0).tasks_started().len(), (finished + 2).min(6));
    }
    assert_eq!(c.state(0).done.len(), 6);
}

#[test]
fn a_panicking_result_turn_holds_the_task_until_a_restart_runs_it_again() {
    let j = jobs(1, 1);
    j.buggy.store(true, Ordering::SeqCst);
    let buggy = Arc::clone(&j.buggy);
    let mut c = cluster(j, Tuning::default(), Commits::AtOnce);
    c.start(0);
    c.run_until(Duration::from_secs(1), |c| {
        c.node(0).tasks_started().len() == 1
    });
    let a = c.node(0).tasks_started()[0].clone();
    c.finish_task(0, a.id, 1, Ok(b"panic".to_vec()));
    assert!(
        c.state(0).done.is_empty(),
        "the panicking turn's state survived"
    );
    assert_eq!(c.engine(0).tasks()[0].phase, TaskPhase::Held);
    assert_eq!(stored(&c).len(), 1, "the record stays");
    c.run_for(Duration::from_secs(1));
    assert_eq!(c.node(0).tasks_started().len(), 1, "a held task ran again");
    // A fixed handler after a restart: the task runs again and its result is delivered.
    buggy.store(false, Ordering::SeqCst);
    c.restart(0);
    let again = c.node(0).tasks_started().last().unwrap().clone();
    assert_eq!((again.id, again.key.as_str()), (a.id, a.key.as_str()));
    c.finish_task(0, again.id, again.attempt, Ok(b"panic".to_vec()));
    assert_eq!(c.state(0).done[&a.id.0], 1);
    assert!(stored(&c).is_empty());
}

#[test]
fn task_ids_are_turn_and_index_and_render_so() {
    let id = TaskId::new(7, 3);
    assert_eq!((id.turn(), id.index()), (7, 3));
    assert_eq!(id.to_string(), "7.3");
    assert_eq!(TaskId::from_key(&id.key_bytes()), Some(id));
    assert_eq!(TaskId::from_key(b"short"), None);
}
