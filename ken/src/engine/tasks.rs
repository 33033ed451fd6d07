//! The task machine: which pending tasks may start, which run, which wait for a backoff,
//! and which results wait for their turn. A state machine of its own (it knows nothing of
//! `Engine`, `Handler` or frames; time comes with every event that needs it), composed by
//! the engine: the engine records a turn's tasks with its batch, reports batches durable,
//! turns the machine's starts into [`super::Command::StartTask`], runs a turn per result the
//! machine hands out, and writes the records it reports changed.
//!
//! A task's life: `Uncommitted` (its turn's batch is not durable: never started, and gone
//! with the batch if the process crashes) -> `Waiting` (durable; starts when its time comes
//! and fewer than `running_max` run) -> `Running(attempt)` -> `Finished` (result queued for
//! a turn) or `Waiting` again after a failure (exponential backoff). A recovered record
//! starts `Waiting`, due at once. `Held`: its result's turn panicked; not run again in this
//! life.
//!
//! Invariants (checked by [`Tasks::check`]): `running` counts the tasks in `Running`; every
//! `Waiting` task is in `ready` with its due time and nothing else is; a result is accepted
//! only from the attempt running (so a late or duplicate result is ignored).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::engine::BatchId;
use crate::task::{TaskId, TaskRecord, TaskResult};
use crate::{limits, Time};

/// Where a task is in its life (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskPhase {
    /// Recorded by a turn of batch `batch`, which is not durable yet.
    Uncommitted { batch: BatchId },
    /// Durable; starts at `at` (once fewer than the maximum run).
    Waiting { at: Time },
    /// Attempt `attempt` runs.
    Running { attempt: u32 },
    /// Succeeded; its result waits for its turn.
    Finished,
    /// Its result's turn panicked: not run again in this life.
    Held,
}

/// A task as the engine shows it (tests, tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub id: TaskId,
    pub phase: TaskPhase,
    /// The durable record as of the last write this engine made or recovered.
    pub record: TaskRecord,
    /// Attempts started in this life.
    pub started: u32,
}

/// An attempt to start, for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: TaskId,
    pub name: String,
    pub payload: Vec<u8>,
    pub attempt: u32,
}

/// What became of a result handed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not from the attempt running (a late or duplicate result, or a task delivered
    /// already): nothing changed.
    Ignored,
    /// Success: the result waits for its turn ([`Tasks::next_result`]).
    Queued,
    /// Failure: the record changed (write it with the filling batch); retried at `retry_at`.
    Failed { record: TaskRecord, retry_at: Time },
}

#[derive(Debug)]
struct Task {
    phase: TaskPhase,
    record: TaskRecord,
    started: u32,
}

/// The task machine of one engine.
#[derive(Debug)]
pub struct Tasks {
    running_max: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    tasks: BTreeMap<TaskId, Task>,
    /// Waiting tasks by due time.
    ready: BTreeSet<(Time, TaskId)>,
    running: usize,
    /// Successful results waiting for their turn, in arrival order.
    results: VecDeque<(TaskId, Vec<u8>)>,
}

impl Tasks {
    pub fn new(running_max: usize, backoff_initial: Duration, backoff_max: Duration) -> Tasks {
        assert!(running_max > 0 && backoff_initial <= backoff_max);
        Tasks {
            running_max,
            backoff_initial,
            backoff_max,
            tasks: BTreeMap::new(),
            ready: BTreeSet::new(),
            running: 0,
            results: VecDeque::new(),
        }
    }

    /// A turn of batch `batch` started task `id`.
    pub fn recorded(&mut self, id: TaskId, record: TaskRecord, batch: BatchId) {
        let old = self.tasks.insert(
            id,
            Task {
                phase: TaskPhase::Uncommitted { batch },
                record,
                started: 0,
            },
        );
        assert!(old.is_none(), "task {id} recorded twice");
    }

    /// A record read from the store at start: due at `now`. (A record of a task this
    /// engine already knows is ignored.)
    pub fn recovered(&mut self, now: Time, id: TaskId, record: TaskRecord) {
        if self.tasks.contains_key(&id) {
            return;
        }
        self.tasks.insert(
            id,
            Task {
                phase: TaskPhase::Waiting { at: now },
                record,
                started: 0,
            },
        );
        self.ready.insert((now, id));
    }

    /// Batch `batch` is durable: its tasks may start from `now`.
    pub fn durable(&mut self, now: Time, batch: BatchId) {
        for (id, t) in &mut self.tasks {
            if matches!(t.phase, TaskPhase::Uncommitted { batch: b } if b <= batch) {
                t.phase = TaskPhase::Waiting { at: now };
                self.ready.insert((now, *id));
            }
        }
    }

    /// The attempts to start now: due tasks while fewer than the maximum run.
    pub fn due(&mut self, now: Time) -> Vec<Start> {
        let mut out = Vec::new();
        while self.running < self.running_max {
            let Some(&(at, id)) = self.ready.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.ready.remove(&(at, id));
            let t = self.tasks.get_mut(&id).expect("a ready task is known");
            t.started += 1;
            let attempt = t.record.failures + 1;
            t.phase = TaskPhase::Running { attempt };
            self.running += 1;
            out.push(Start {
                id,
                name: t.record.name.clone(),
                payload: t.record.payload.clone(),
                attempt,
            });
        }
        out
    }

    /// Attempt `attempt` of task `id` ended with `result` at `now`.
    pub fn finished(&mut self, now: Time, id: TaskId, attempt: u32, result: TaskResult) -> Outcome {
        let Some(t) = self.tasks.get_mut(&id) else {
            return Outcome::Ignored;
        };
        if t.phase != (TaskPhase::Running { attempt }) {
            return Outcome::Ignored;
        }
        self.running -= 1;
        match result {
            Ok(bytes) => {
                t.phase = TaskPhase::Finished;
                self.results.push_back((id, bytes));
                Outcome::Queued
            }
            Err(mut error) => {
                if error.len() > limits::TASK_ERROR_BYTES_MAX {
                    let mut cut = limits::TASK_ERROR_BYTES_MAX;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                t.record.failures = t.record.failures.saturating_add(1);
                t.record.last_error = Some(error);
                t.record.last_error_ms = now.as_millis();
                let retry_at = now.plus(backoff(
                    self.backoff_initial,
                    self.backoff_max,
                    t.record.failures,
                ));
                t.phase = TaskPhase::Waiting { at: retry_at };
                self.ready.insert((retry_at, id));
                Outcome::Failed {
                    record: t.record.clone(),
                    retry_at,
                }
            }
        }
    }

    /// The next result to deliver: the task's id, name and result bytes. The caller runs its
    /// turn and then calls [`Tasks::delivered`] or [`Tasks::hold`].
    pub fn next_result(&mut self) -> Option<(TaskId, String, Vec<u8>)> {
        let (id, bytes) = self.results.pop_front()?;
        let name = self.tasks[&id].record.name.clone();
        Some((id, name, bytes))
    }

    /// The result of `id` was consumed by a turn (whose batch deletes the record).
    pub fn delivered(&mut self, id: TaskId) {
        let t = self.tasks.remove(&id).expect("a delivered task is known");
        assert_eq!(t.phase, TaskPhase::Finished);
    }

    /// The turn of `id`'s result panicked: held for the rest of this life.
    pub fn hold(&mut self, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("a held task is known");
        t.phase = TaskPhase::Held;
    }

    /// When the next waiting task is due, if one could start then.
    pub fn deadline(&self) -> Option<Time> {
        if self.running >= self.running_max {
            return None;
        }
        self.ready.first().map(|(at, _)| *at)
    }

    /// True if a result waits for its turn.
    pub fn has_results(&self) -> bool {
        !self.results.is_empty()
    }

    /// Tasks not yet delivered (held ones included).
    pub fn pending(&self) -> usize {
        self.tasks.len()
    }

    /// Attempts running now.
    pub fn running(&self) -> usize {
        self.running
    }

    pub fn status(&self) -> Vec<TaskStatus> {
        self.tasks
            .iter()
            .map(|(id, t)| TaskStatus {
                id: *id,
                phase: t.phase.clone(),
                record: t.record.clone(),
                started: t.started,
            })
            .collect()
    }

    /// Checks the module's invariants.
    pub fn check(&self) {
        let running = self
            .tasks
            .values()
            .filter(|t| matches!(t.phase, TaskPhase::Running { .. }))
            .count();
        assert_eq!(running, self.running);
        let waiting: BTreeSet<(Time, TaskId)> = self
            .tasks
            .iter()
            .filter_map(|(id, t)| match t.phase {
                TaskPhase::Waiting { at } => Some((at, *id)),
                _ => None,
            })
            .collect();
        assert_eq!(waiting, self.ready);
        for (id, _) in &self.results {
            assert_eq!(self.tasks[id].phase, TaskPhase::Finished);
        }
    }
}

/// The wait after the `failures`th failure: `initial * 2^(failures-1)`, at most `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1 << shift).min(max)
}
