//! Outside work: tasks a turn starts and whose results come back as inputs.
//!
//! A handler may not do I/O. When it needs some (call an API, run a command, write to a
//! database), a turn starts a **task** ([`crate::Turn::start_task`]): the name of an async
//! function registered with the runtime ([`crate::Config::task`]) and a payload. The task
//! is recorded durably in the turn's commit ([`TASKS_TABLE`]) and started only after that
//! commit; it runs outside the turn (on the driver's tokio runtime, at most
//! [`crate::Tuning::task_running_max`] at once) and may do anything.
//!
//! **At least once, with a stable key; the result is delivered exactly once.**
//! - A task runs *at least once*: if it fails (returns `Err`, or panics) it is retried after
//!   an exponential backoff ([`crate::limits::TASK_BACKOFF_INITIAL`] doubled up to
//!   [`crate::limits::TASK_BACKOFF_MAX`], forever); if the process crashes while it runs, or
//!   before its result was committed, it is started again after the restart. So an attempt
//!   may have had its effect outside even though its result was lost. Every attempt of a
//!   task carries the same [`TaskContext::key`] (the process, its store's incarnation and
//!   the [`TaskId`]): pass it to the outside system as an idempotency key so a repeated
//!   attempt is recognised there.
//! - Its result is *delivered exactly once*: the first successful attempt's result becomes
//!   one [`crate::Input::TaskDone`] turn, whose commit deletes the task's record. A result
//!   arriving for a task that is no longer recorded (delivered already) is ignored, and a
//!   crash before that commit rolls the turn back with everything else (the task is then run
//!   again and its new result delivered, once).
//!
//! Failed attempts are counted in the record with the last error (`ken inspect STORE
//! tasks`). A task whose [`crate::Input::TaskDone`] turn panics is held for the rest of the
//! process's life (recorded in `ken.poison`, like any poison input) and run again after a
//! restart.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Incarnation, ProcessId};

/// The runtime's table of pending tasks: key [`TaskId::key_bytes`], value an encoded
/// [`TaskRecord`]. Written by the turn that starts a task, rewritten when an attempt fails,
/// deleted by the turn that consumes its result.
pub const TASKS_TABLE: &str = "ken.tasks";

/// A task's id: the turn that started it and its index among that turn's tasks. Unique over
/// the life of a store (turn numbers are; a rolled-back turn's tasks were never started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl TaskId {
    /// The id of the `index`th task started by turn `turn`.
    pub fn new(turn: u64, index: u32) -> TaskId {
        assert!(index < crate::limits::TASKS_PER_TURN_MAX);
        TaskId((turn << 16) | u64::from(index))
    }

    /// The turn that started the task.
    pub fn turn(self) -> u64 {
        self.0 >> 16
    }

    /// The task's index among its turn's tasks.
    pub fn index(self) -> u32 {
        (self.0 & 0xffff) as u32
    }

    /// Its key in [`TASKS_TABLE`]: the id, 8 bytes big-endian (so rows sort by id).
    pub fn key_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The id a [`TASKS_TABLE`] key names, if it is one.
    pub fn from_key(key: &[u8]) -> Option<TaskId> {
        Some(TaskId(u64::from_be_bytes(key.try_into().ok()?)))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.turn(), self.index())
    }
}

/// A pending task, as [`TASKS_TABLE`] stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The registered function to run.
    pub name: String,
    pub payload: Vec<u8>,
    /// When the starting turn ran (ms since the epoch).
    pub created_ms: u64,
    /// Attempts that failed and were recorded (an attempt cut short by a crash is not).
    pub failures: u32,
    /// The last failure's error (cut to [`crate::limits::TASK_ERROR_BYTES_MAX`] bytes).
    pub last_error: Option<String>,
    /// When the last failure was recorded (ms since the epoch; 0 if none).
    pub last_error_ms: u64,
}

/// The idempotency key of every attempt of task `id` of process `process` whose store has
/// incarnation `incarnation`: `PROCESS/INCARNATION/TURN.INDEX`, the incarnation in hex.
/// Stable across crashes and restarts; another store (a new incarnation) never repeats it.
pub fn task_key(process: &ProcessId, incarnation: Incarnation, id: TaskId) -> String {
    format!("{process}/{:016x}/{id}", incarnation.0)
}

/// What an attempt of a task is told besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContext {
    pub id: TaskId,
    /// The idempotency key ([`task_key`]): the same for every attempt of this task.
    pub key: String,
    /// This attempt's number, from 1: failures recorded before it, plus one (attempts cut
    /// short by a crash are not counted, so it may repeat after a restart).
    pub attempt: u32,
}

/// What an attempt returns: the result bytes for [`crate::Input::TaskDone`], or an error
/// (the task is retried after a backoff).
pub type TaskResult = Result<Vec<u8>, String>;

/// The boxed future of one attempt.
pub type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

/// A registered task function.
pub type TaskFn = dyn Fn(TaskContext, Vec<u8>) -> TaskFuture + Send + Sync;

/// The task functions of a process by name ([`crate::Config::task`]).
#[derive(Clone, Default)]
pub struct TaskRegistry {
    pub(crate) fns: std::collections::BTreeMap<String, Arc<TaskFn>>,
}

impl fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.fns.keys()).finish()
    }
}

impl TaskRegistry {
    /// Registers `f` under `name` (replacing any earlier one).
    pub fn register<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(TaskContext, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let f = Arc::new(move |cx: TaskContext, payload: Vec<u8>| -> TaskFuture {
            Box::pin(f(cx, payload))
        });
        self.fns.insert(name.to_string(), f);
    }

    /// The function registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<TaskFn>> {
        self.fns.get(name).cloned()
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fns.keys().map(String::as_str)
    }
}
